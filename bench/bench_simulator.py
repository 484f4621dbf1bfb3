"""Fleet simulator benchmark: what one Locust worker process does, beside a raw client ceiling.

Against the real reference server on this machine (client and server share its cores), in one
run:

1. ceiling -- a minimal client: plain ``ssl`` sockets in a few threads, full mutual-TLS
   handshake + MQTT CONNECT until CONNACK, then close. Connections/s and client CPU per
   connection: the most a Python client process gets out of this server here;
2. connection rate -- one Locust process (the simulator's ``DeviceUser`` and its own connection,
   ``simulator/link.py``: each device's certificate and key loaded from its files, TLS, CONNECT,
   the identity) connecting ``--rate-devices`` devices as fast as it can; target: at least 90%
   of the ceiling. Ceiling and rate alternate ``--rounds`` times (median and range reported:
   the machine is shared, and both sides use the same cores). A second reference row is the
   same minimal client loading each device's certificate and key files per connection, as a
   client of many devices must once per device (the ceiling loads its 200 before the clock);
3. hold -- one Locust process with ``--devices`` devices connected, each publishing (QoS 1) every
   10 s for ``--hold-seconds``, ``--hold-rounds`` times; target: at least 5,000 devices with at
   most 50 KiB of worker memory per device.

    python bench/bench_simulator.py                      # 5,000 devices, ~5 min (fleet cached)
    python bench/bench_simulator.py --devices 2000 --hold-rounds 1

The fleet (certificates issued and associated) and the server's data directory are kept in
``--workdir`` so later runs skip issuance; delete the directory to start afresh.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from device_sdk.credentials import Credentials  # noqa: E402
from device_sdk.platform import ClientId  # noqa: E402
from device_sdk.tls import build_ssl_context  # noqa: E402
from server_stub.launcher import RunningServer, running_server  # noqa: E402
from server_stub.mqtt import codec  # noqa: E402
from simulator.fleet import Fleet  # noqa: E402
from simulator.fleet_create import CreateOptions, TextProgress, create_fleet  # noqa: E402

LOCUSTFILE = ROOT / "bench" / "simulator_locustfile.py"


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def prepare(workdir: Path, count: int) -> tuple[Path, Path]:
    data, fleet_dir = workdir / "data", workdir / "fleet"
    if fleet_dir.exists() and not data.exists():
        shutil.rmtree(fleet_dir)
    return data, fleet_dir


# --- 1. the ceiling ----------------------------------------------------------------------------


def ceiling(
    server: RunningServer,
    fleet: Fleet,
    seconds: float,
    concurrency: int,
    contexts: int,
    *,
    load_per_connect: bool = False,
) -> dict[str, float]:
    """A minimal client: asyncio (uvloop) + ``ssl``, ``concurrency`` connections in flight, each
    a full mutual-TLS handshake + CONNECT until CONNACK, then DISCONNECT and close.

    ``load_per_connect``: each connection gets a fresh context that loads its device's
    certificate and key files first (what any client of many devices does once per device);
    otherwise ``contexts`` contexts are made before the clock starts and used in turn."""
    import asyncio

    import uvloop

    assert server.mqtt_port is not None
    port = server.mqtt_port
    prepared = []
    for device in fleet.devices[:contexts]:
        creds = Credentials.from_files(
            fleet.path(device.cert), fleet.path(device.key), check_key=False
        )
        ctx = build_ssl_context(creds, fleet.server_ca_path)
        connect = codec.encode(codec.Connect(str(ClientId.for_x509(creds.sn)), 300))
        prepared.append((ctx, connect, fleet.path(device.cert), fleet.path(device.key)))
    server_ca = fleet.server_ca_path.read_text() if fleet.server_ca_path else None

    def fresh(cert: Path, key: Path) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_verify_locations(cadata=server_ca)
        ctx.load_cert_chain(cert, key)
        return ctx

    counts = [0]
    errors: list[str] = []

    async def one(ctx: ssl.SSLContext, connect: bytes) -> None:
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=ctx, server_hostname="127.0.0.1"
        )
        try:
            writer.write(connect)
            got = await reader.readexactly(4)
            if got[0] != 0x20 or got[3] != 0:
                raise ConnectionError(f"CONNACK {got.hex()}")
            writer.write(b"\xe0\x00")
            await writer.drain()
        finally:
            writer.close()

    async def worker(slot: int, stop: float) -> None:
        mine = prepared[slot::concurrency] or prepared
        i = 0
        while time.monotonic() < stop:
            prepared_ctx, connect, cert, key = mine[i % len(mine)]
            i += 1
            ctx: ssl.SSLContext = fresh(cert, key) if load_per_connect else prepared_ctx
            try:
                await one(ctx, connect)
                counts[0] += 1
            except (OSError, ssl.SSLError, ConnectionError, asyncio.IncompleteReadError) as exc:
                errors.append(repr(exc))

    async def run() -> float:
        started = time.monotonic()
        await asyncio.gather(*(worker(n, started + seconds) for n in range(concurrency)))
        return time.monotonic() - started

    cpu0 = time.process_time()
    wall = uvloop.run(run())
    cpu = time.process_time() - cpu0
    total = counts[0]
    if errors:
        log(f"  ceiling: {len(errors)} errors, e.g. {errors[0]}")
    return {
        "connections": total,
        "per_second": total / wall,
        "cpu_ms": 1000 * cpu / max(total, 1),
        "errors": len(errors),
    }


# --- 2./3. Locust ------------------------------------------------------------------------------


def run_locust(
    fleet_dir: Path,
    host: str,
    users: int,
    spawn_rate: float,
    run_time: int,
    template: Path,
    out_dir: Path,
    tag: str,
    hold: float = 0.0,
    extra: tuple[str, ...] = (),
) -> dict[str, Any]:
    out = out_dir / f"{tag}.json"
    env = {
        **os.environ,
        "BENCH_SIM_OUT": str(out),
        "BENCH_SIM_TARGET": str(users),
        "BENCH_SIM_HOLD": str(hold),
        "PYTHONPATH": str(ROOT),
    }
    env.pop("IOTX509_TOKEN", None)
    cmd = [
        sys.executable,
        "-m",
        "locust",
        "-f",
        str(LOCUSTFILE),
        "--headless",
        "-u",
        str(users),
        "-r",
        str(spawn_rate),
        "-t",
        f"{run_time}s",
        "--fleet",
        str(fleet_dir),
        "--host",
        host,
        "--template",
        str(template),
        "--csv",
        str(out_dir / tag),
        "--only-summary",
        "--loglevel",
        "WARNING",
        "--stop-timeout",
        "5",
        *extra,
    ]
    started = time.monotonic()
    result = subprocess.run(
        cmd, capture_output=True, text=True, timeout=run_time + 300, env=env, cwd=out_dir
    )
    if not out.exists():
        raise SystemExit(
            f"locust ({tag}) wrote no measurements; exit {result.returncode}\n"
            f"{result.stderr[-3000:]}"
        )
    data: dict[str, Any] = json.loads(out.read_text())
    data["wall"] = time.monotonic() - started
    data["exit"] = result.returncode
    return data


def template_file(directory: Path, interval: float) -> Path:
    path = directory / f"template-{interval:g}.json"
    path.write_text(
        json.dumps(
            {
                "seed": 1,
                "telemetry": {"interval": interval, "topic": "user/update", "qos": 1},
                "fields": {
                    "temperature": {"type": "sinusoid", "mean": 21, "amplitude": 3, "period": 600},
                    "humidity": {"type": "random", "min": 30, "max": 60},
                },
                "commands": {"share": 0},
            }
        )
    )
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--devices",
        type=int,
        default=5000,
        help="devices one worker holds in the hold phase (default 5000)",
    )
    parser.add_argument(
        "--rate-devices",
        type=int,
        default=1000,
        help="devices connected as fast as possible in the rate phase",
    )
    parser.add_argument(
        "--hold-seconds",
        type=int,
        default=45,
        help="how long the hold phase keeps every device publishing",
    )
    parser.add_argument("--ceiling-seconds", type=float, default=5.0)
    parser.add_argument(
        "--rounds", type=int, default=3, help="ceiling/rate rounds, alternating (default 3)"
    )
    parser.add_argument("--hold-rounds", type=int, default=2, help="hold runs (default 2)")
    parser.add_argument(
        "--ceiling-concurrency",
        type=int,
        default=64,
        help="connections the minimal client keeps in flight",
    )
    parser.add_argument(
        "--workdir", type=Path, default=Path(tempfile.gettempdir()) / "iotx509-bench-simulator"
    )
    parser.add_argument(
        "--tls-engine",
        choices=["auto", "system", "pyopenssl"],
        default="auto",
        help="the reference server's --tls-engine (its CPU per first connection differs)",
    )
    args = parser.parse_args()
    count = max(args.devices, args.rate_devices)
    data, fleet_dir = prepare(args.workdir, count)
    out_dir = args.workdir / "runs"
    out_dir.mkdir(parents=True, exist_ok=True)

    extra = [] if args.tls_engine == "auto" else ["--tls-engine", args.tls_engine]
    with running_server(data, extra_args=extra) as server:
        host = f"mqtts://127.0.0.1:{server.mqtt_port}"
        log(f"server {server.http_url} {host}; fleet of {count} devices in {fleet_dir}")
        started = time.monotonic()
        fleet = create_fleet(
            CreateOptions(
                server=server.http_url,
                token=server.token,
                count=count,
                out=fleet_dir,
                server_ca=server.server_ca,
                mqtt=host,
            ),
            TextProgress(),
        )
        log(f"fleet ready in {time.monotonic() - started:.0f} s")

        ceilings: list[dict[str, float]] = []
        loading: list[dict[str, float]] = []
        rates: list[dict[str, float]] = []
        for n in range(1, args.rounds + 1):
            log(
                f"round {n}/{args.rounds}: ceiling (minimal asyncio ssl client, "
                f"{args.ceiling_concurrency} in flight, {args.ceiling_seconds:g} s), then one "
                f"Locust process connects {args.rate_devices} devices"
            )
            ceilings.append(
                ceiling(server, fleet, args.ceiling_seconds, args.ceiling_concurrency, 200)
            )
            loading.append(
                ceiling(
                    server,
                    fleet,
                    args.ceiling_seconds,
                    args.ceiling_concurrency,
                    200,
                    load_per_connect=True,
                )
            )
            run = run_locust(
                fleet_dir,
                host,
                args.rate_devices,
                10_000,
                30,
                template_file(out_dir, 3600),
                out_dir,
                f"rate-{n}",
                hold=1.0,  # done once every device connected
                # as many connections in flight as the ceiling's client
                extra=("--max-connecting", str(args.ceiling_concurrency)),
            )
            span = (run["last"] or 0) - (run["first"] or 0)
            connects = max(run["connects"] - 1, 1)
            rates.append(
                {
                    "per_second": (run["connects"] - 1) / span if span > 0 else 0.0,
                    "cpu_ms": 1000 * ((run["cpu_last"] or 0) - (run["cpu_first"] or 0)) / connects,
                    "failures": run["connect_failures"],
                }
            )
        holds = []
        for n in range(1, args.hold_rounds + 1):
            log(
                f"hold {n}/{args.hold_rounds}: {args.devices} devices publishing every 10 s for "
                f"{args.hold_seconds} s"
            )
            ramp = max(50, args.devices // 20)
            holds.append(
                run_locust(
                    fleet_dir,
                    host,
                    args.devices,
                    ramp,
                    # At most: the ramp, its time again for a busy machine, the hold. The run
                    # ends args.hold_seconds after the last device connected.
                    2 * (args.devices // ramp) + args.hold_seconds + 120,
                    template_file(out_dir, 10),
                    out_dir,
                    f"hold-{n}",
                    hold=args.hold_seconds,
                )
            )
    report(args, ceilings, loading, rates, holds)
    return 0


def _spread(values: list[float], fmt: str) -> str:
    ordered = sorted(values)
    median = ordered[len(ordered) // 2]
    return f"{median:{fmt}} (range {ordered[0]:{fmt}}-{ordered[-1]:{fmt}})"


def report(
    args: argparse.Namespace,
    ceilings: list[dict[str, float]],
    loading: list[dict[str, float]],
    rates: list[dict[str, float]],
    holds: list[dict[str, Any]],
) -> None:
    ratios = [
        r["per_second"] / c["per_second"] if c["per_second"] else 0.0
        for c, r in zip(ceilings, rates, strict=True)
    ]
    per_device = [
        ((h["rss_connected"] or h["rss_end"]) - h["rss_start"]) / max(h["connects"], 1) / 1024
        for h in holds
    ]
    print()
    print("Fleet simulator on this machine (server and clients share the cores)")
    print(
        f"  ceiling, minimal asyncio ssl client:  "
        f"{_spread([c['per_second'] for c in ceilings], '.1f')} mTLS connects/s, "
        f"{_spread([c['cpu_ms'] for c in ceilings], '.2f')} ms client CPU each, "
        f"{sum(int(c['errors']) for c in ceilings)} errors"
    )
    print(
        f"  the same, loading each device's files: "
        f"{_spread([c['per_second'] for c in loading], '.1f')} mTLS connects/s, "
        f"{_spread([c['cpu_ms'] for c in loading], '.2f')} ms client CPU each "
        f"(a fresh context per connection)"
    )
    print(
        f"  one Locust worker (DeviceUser):       "
        f"{_spread([r['per_second'] for r in rates], '.1f')} connects/s (CONNACK + identity), "
        f"{_spread([r['cpu_ms'] for r in rates], '.2f')} ms CPU each, "
        f"{sum(int(r['failures']) for r in rates)} failures"
    )
    print(
        f"  ratio worker / ceiling, per round:    "
        f"{', '.join(f'{x:.0%}' for x in ratios)}; median {sorted(ratios)[len(ratios) // 2]:.0%}"
        f"   (target >= 90%)"
    )
    loaded = [
        r["per_second"] / c["per_second"] if c["per_second"] else 0.0
        for c, r in zip(loading, rates, strict=True)
    ]
    print(
        f"  worker / client loading its files:    "
        f"{', '.join(f'{x:.0%}' for x in loaded)}; median {sorted(loaded)[len(loaded) // 2]:.0%}"
    )
    for n, (hold, kib) in enumerate(zip(holds, per_device, strict=True), 1):
        publish_avg = hold["publish_ms"] / max(hold["publishes"], 1)
        print(
            f"  hold {n}: devices held by one worker:   {hold['online_peak']:5d} of {args.devices} "
            f"(target >= 5,000); connect failures {hold['connect_failures']}, lost {hold['lost']}; "
            f"publishes {hold['publishes']} (QoS 1, every 10 s), "
            f"{hold['publish_failures']} failed, avg {publish_avg:.1f} ms to PUBACK"
        )
        print(
            f"  hold {n}: memory per device in the worker: {kib:5.1f} KiB (target <= 50; RSS "
            f"{hold['rss_start'] / 2**20:.0f} -> "
            f"{(hold['rss_connected'] or hold['rss_end']) / 2**20:.0f} MiB)"
        )


if __name__ == "__main__":
    sys.exit(main())
