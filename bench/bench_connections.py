"""Connection benchmark: this server's MQTT endpoint against Mosquitto 2, side by side.

Both servers get the same device certificates and the same load generator (worker processes,
each an asyncio/uvloop loop opening mutual-TLS connections and sending one raw MQTT CONNECT made
by the server's own codec). For each server it reports:

- accepted mTLS connections per second (wall clock, client and server on the same 2 cores),
- server CPU milliseconds per connection (psutil, user + system, across the connect phase),
- server RSS per idle authenticated connection (all N held open and idle, after a warm-up),

and the ratios ours / Mosquitto. Targets (issue 16): CPU <= 1.0x, memory <= 1.0x.

    python bench/bench_connections.py                       # 2,000 devices, real registry
    python bench/bench_connections.py --devices 10000       # hold 10,000 idle devices
    python bench/bench_connections.py --registry endpoint   # the endpoint alone, no HTTP server
    python bench/bench_connections.py --tls-engine pyopenssl  # the server's other TLS engine

``--registry real`` (default) runs ``iotx509 server run`` and registers the product, the CA
(with its verification certificate) and the associations through the HTTP API, so the
measured connect path includes the real registry's authentication. ``--registry endpoint`` runs
only the MQTT endpoint in a child process, on the same real registry (a temporary SQLite file
with the CA registered with its proof and the SNs associated, through ``testkit.registry``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import ssl
import sys
import tempfile
import time
from collections.abc import Iterator
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import psutil  # noqa: E402

from bench._common import (  # noqa: E402
    Fleet,
    Target,
    client_context,
    connect_packet,
    cpu_seconds,
    endpoint_data,
    endpoint_process,
    log,
    make_fleet,
    mosquitto,
    open_and_connack,
    raise_nofile,
    serve_endpoint,
    spawn_worker,
    stop_workers,
    worker_loop,
)
from firmware_helpers.pki import issue_verification_certificate  # noqa: E402

WARMUP = 50


# --- load generator ----------------------------------------------------------------------------


class _Client(asyncio.Protocol):
    def __init__(self, connect: bytes, done: asyncio.Future[int]) -> None:
        self.connect = connect
        self.done = done
        self.buf = b""
        self.transport: asyncio.BaseTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        transport.write(self.connect)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        if self.done.done():
            return  # the identity PUBLISH, or anything else: ignored
        self.buf += data
        if len(self.buf) >= 4:
            self.done.set_result(self.buf[3] if self.buf[0] == 0x20 else 255)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_exception(ConnectionError(f"closed before CONNACK: {exc}"))


def _worker(
    conn: Connection, jobs: list[tuple[str, str]], server_ca: str, port: int, concurrency: int
) -> None:
    """One load-generator process: prepare contexts, connect on command, hold, close."""
    loop = worker_loop()
    transports: list[asyncio.BaseTransport] = []

    async def one(
        cert: str, ctx: ssl.SSLContext, sem: asyncio.Semaphore, errors: list[str]
    ) -> bool:
        async with sem:
            fut: asyncio.Future[int] = loop.create_future()
            connect = connect_packet(cert)
            transport, ok = await open_and_connack(
                loop,
                lambda: _Client(connect, fut),
                port,
                fut,
                errors,
                30,
                ssl=ctx,
                server_hostname="127.0.0.1",
            )
            if transport is not None:
                if ok:
                    transports.append(transport)
                else:
                    transport.close()
            return ok

    async def run(part: list[tuple[str, str]]) -> dict[str, Any]:
        ctxs = [client_context(server_ca, cert, key) for cert, key in part]
        conn.send(("ready",))
        conn.recv()  # go
        sem = asyncio.Semaphore(concurrency)
        errors: list[str] = []
        t0 = time.monotonic()
        results = await asyncio.gather(
            *(one(job[0], c, sem, errors) for job, c in zip(part, ctxs, strict=True))
        )
        return {
            "ok": sum(results),
            "failed": len(results) - sum(results),
            "seconds": time.monotonic() - t0,
            "errors": errors,
        }

    while True:
        msg = conn.recv()
        if msg[0] == "connect":
            lo, hi = msg[1], msg[2]
            conn.send(("result", loop.run_until_complete(run(jobs[lo:hi]))))
        elif msg[0] == "close":
            for t in transports:
                t.close()
            transports.clear()
            loop.run_until_complete(asyncio.sleep(0.5))
            conn.send(("closed",))
        else:
            break
    loop.close()


class LoadGenerator:
    def __init__(
        self, fleet: Fleet, keys: int, server_ca: Path, port: int, workers: int, concurrency: int
    ) -> None:
        self.n = len(fleet.names)
        shares = fleet.shares(keys, workers)
        self.workers = [
            spawn_worker(_worker, jobs, str(server_ca), port, concurrency) for jobs in shares
        ]
        self.slices = [len(jobs) for jobs in shares]

    def connect(self, count_per_worker: list[int]) -> dict[str, Any]:
        for (_, pipe), count in zip(self.workers, count_per_worker, strict=True):
            pipe.send(("connect", 0, count))
        for _, pipe in self.workers:
            assert pipe.recv()[0] == "ready"
        t0 = time.monotonic()
        for _, pipe in self.workers:
            pipe.send(("go",))
        results = [pipe.recv()[1] for _, pipe in self.workers]
        elapsed = time.monotonic() - t0
        return {
            "ok": sum(r["ok"] for r in results),
            "failed": sum(r["failed"] for r in results),
            "seconds": elapsed,
            "errors": [e for r in results for e in r["errors"]],
        }

    def close_all(self) -> None:
        for _, pipe in self.workers:
            pipe.send(("close",))
        for _, pipe in self.workers:
            pipe.recv()

    def shutdown(self) -> None:
        stop_workers(self.workers)


# --- the servers -------------------------------------------------------------------------------


def _csv(product_key: str, fleet: Fleet, lo: int, hi: int) -> bytes:
    rows = ["ProductKey,DeviceName,CertSN"]
    rows += [f"{product_key},{fleet.names[i]},{fleet.sns[i]}" for i in range(lo, hi)]
    return ("\n".join(rows) + "\n").encode()


@contextlib.contextmanager
def ours_real(
    root: Path, n: int, keys: int, tls_engine: str = "auto"
) -> Iterator[tuple[Target, Fleet]]:
    from firmware_helpers.platform_client import PlatformClient, UploadFile
    from server_stub.launcher import running_server

    extra = [] if tls_engine == "auto" else ["--tls-engine", tls_engine]
    with running_server(root / "server-data", extra_args=extra) as srv:
        client = PlatformClient(srv.http_url, srv.token)
        product_key = str(client.create_product("bench")["productKey"])
        log(f"making {n} device certificates ({keys} shared RSA keys)")
        fleet = make_fleet(root, n, keys, product_key)
        proof = issue_verification_certificate(fleet.ca, client.registration_code())
        ca_sn = client.register_ca(
            "bench_ca",
            UploadFile("ca.pem", fleet.ca.cert_pem()),
            UploadFile("verification.pem", proof.cert_pem()),
        )["caSn"]
        for lo in range(0, n, 10_000):
            client.associate(
                ca_sn, UploadFile("devices.csv", _csv(product_key, fleet, lo, min(n, lo + 10_000)))
            )
        time.sleep(0.6)  # the endpoint follows the registry within 0.25 s
        assert srv.mqtt_port is not None
        name = "ours (real registry)" if tls_engine == "auto" else f"ours ({tls_engine} TLS)"
        yield Target(name, srv.process.pid, srv.mqtt_port, srv.server_ca), fleet


@contextlib.contextmanager
def ours_endpoint(root: Path, n: int, keys: int) -> Iterator[tuple[Target, Fleet]]:
    d = root / "ours-endpoint"
    fleet = endpoint_data(d, root, n, keys)
    with endpoint_process(
        [__file__, "--serve-endpoint", str(d)],
        "ours (endpoint on registry file)",
        d / "server-ca.pem",
    ) as target:
        yield target, fleet


# --- measuring ---------------------------------------------------------------------------------


def measure(
    target: Target, fleet: Fleet, keys: int, workers: int, concurrency: int
) -> dict[str, Any]:
    proc = psutil.Process(target.pid)
    gen = LoadGenerator(fleet, keys, target.server_ca, target.port, workers, concurrency)
    try:
        warm = [min(WARMUP // workers, s) for s in gen.slices]
        res = gen.connect(warm)
        if res["failed"]:
            raise RuntimeError(f"{target.name}: warm-up failed: {res['errors']}")
        gen.close_all()
        time.sleep(1.0)
        rss0, cpu0 = proc.memory_info().rss, cpu_seconds(proc)
        log(f"{target.name}: connecting {len(fleet.names)} devices")
        res = gen.connect(gen.slices)
        cpu1 = cpu_seconds(proc)
        time.sleep(2.0)  # idle: let the server settle
        rss1 = proc.memory_info().rss
        ok = res["ok"]
        out = {
            "server": target.name,
            "connected": ok,
            "failed": res["failed"],
            "errors": res["errors"],
            "seconds": res["seconds"],
            "conn_per_s": ok / res["seconds"] if res["seconds"] else 0.0,
            "cpu_ms_per_conn": (cpu1 - cpu0) * 1000 / ok if ok else float("nan"),
            "rss_kib_per_conn": (rss1 - rss0) / 1024 / ok if ok else float("nan"),
            "rss_mib_total": rss1 / 2**20,
        }
        log(
            f"{target.name}: {ok} connected, {res['failed']} failed in {res['seconds']:.1f} s; "
            f"RSS {rss1 / 2**20:.0f} MiB"
        )
        gen.close_all()
        return out
    finally:
        gen.shutdown()


def print_table(ours: dict[str, Any], mosq: dict[str, Any]) -> None:
    rows = [
        ("connections held (idle, authenticated)", "connected", "{:.0f}", None),
        ("failed connections", "failed", "{:.0f}", None),
        ("accepted mTLS connections / s", "conn_per_s", "{:.0f}", "higher is better"),
        ("server CPU ms / connection", "cpu_ms_per_conn", "{:.2f}", "target <= 1.0x"),
        ("server RSS KiB / idle connection", "rss_kib_per_conn", "{:.1f}", "target <= 1.0x"),
        ("server RSS MiB total (all held)", "rss_mib_total", "{:.0f}", None),
    ]
    w = 40
    print()
    print(f"{'':{w}} {'ours':>12} {'mosquitto':>12} {'ratio':>8}")
    for label, key, fmt, note in rows:
        a, b = ours[key], mosq[key]
        ratio = f"{a / b:.2f}x" if b else "-"
        print(
            f"{label:{w}} {fmt.format(a):>12} {fmt.format(b):>12} {ratio:>8}"
            + (f"  ({note})" if note else "")
        )
    print(f"\nours = {ours['server']}")
    for r in (ours, mosq):
        if r["errors"]:
            print(f"{r['server']} errors (first few): {r['errors']}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--devices",
        type=int,
        default=2000,
        help="connections opened and held idle (default 2000; try 10000)",
    )
    parser.add_argument("--workers", type=int, default=2, help="load-generator processes")
    parser.add_argument(
        "--concurrency", type=int, default=32, help="handshakes in flight per worker"
    )
    parser.add_argument("--keys", type=int, default=8, help="distinct RSA keys for the fleet")
    parser.add_argument("--registry", choices=["real", "endpoint"], default="real")
    parser.add_argument(
        "--tls-engine",
        choices=["auto", "system", "pyopenssl"],
        default="auto",
        help="the server's --tls-engine (real registry only; default: the server's default)",
    )
    parser.add_argument("--serve-endpoint", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_endpoint:
        serve_endpoint(args.serve_endpoint)
        return 0
    hard = raise_nofile()
    if hard < args.devices + 100:
        print(
            f"RLIMIT_NOFILE hard limit {hard} is below {args.devices} connections", file=sys.stderr
        )
        return 2
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench-conn-") as tmp:
        root = Path(tmp)
        server = (
            functools.partial(ours_real, tls_engine=args.tls_engine)
            if args.registry == "real"
            else ours_endpoint
        )
        with server(root, args.devices, args.keys) as (target, fleet):
            ours = measure(target, fleet, args.keys, args.workers, args.concurrency)
        with mosquitto(root, fleet) as target:
            mosq = measure(target, fleet, args.keys, args.workers, args.concurrency)
    print_table(ours, mosq)
    print(f"\ntotal run time {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
