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
import multiprocessing as mp
import os
import pwd
import resource
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import psutil  # noqa: E402

from firmware_helpers.pki import (  # noqa: E402
    CertifiedKey,
    create_ca,
    generate_rsa_key,
    issue_device_certificate,
    issue_server_certificate,
    issue_verification_certificate,
)
from server_stub.mqtt import codec  # noqa: E402

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
WARMUP = 50


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def raise_nofile() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


# --- certificates ------------------------------------------------------------------------------


def _gen_key(_: int) -> bytes:
    from device_sdk.certs import rsa_key_pkcs1_pem

    return rsa_key_pkcs1_pem(generate_rsa_key())


@dataclass
class Fleet:
    ca: CertifiedKey
    names: list[str]
    sns: list[str]
    cert_dir: Path

    def cert(self, i: int) -> str:
        return str(self.cert_dir / f"{i}.cer")

    def key(self, i: int, keys: int) -> str:
        return str(self.cert_dir / f"key{i % keys}.key")


def make_fleet(root: Path, n: int, keys: int, product_key: str) -> Fleet:
    """N device certificates signed by one CA; keys are shared (authentication is by SN)."""
    from cryptography.hazmat.primitives import serialization

    from device_sdk.certs import load_private_key, require_rsa_key

    cert_dir = root / "devices"
    cert_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    with ProcessPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        key_pems = list(pool.map(_gen_key, range(keys)))
    rsa_keys = [require_rsa_key(load_private_key(k)) for k in key_pems]
    for i, pem in enumerate(key_pems):
        path = cert_dir / f"key{i}.key"
        path.write_bytes(pem)
        path.chmod(0o600)
    ca = create_ca("Bench Private CA")
    names, sns = [], []
    for i in range(n):
        name = f"dev{i:05d}"
        pair = issue_device_certificate(ca, name, product_key=product_key, key=rsa_keys[i % keys])
        (cert_dir / f"{i}.cer").write_bytes(
            pair.certificate.public_bytes(serialization.Encoding.PEM)
        )
        names.append(name)
        sns.append(pair.sn)
    return Fleet(ca, names, sns, cert_dir)


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
    try:
        import uvloop

        loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    except ImportError:
        loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    raise_nofile()
    transports: list[asyncio.BaseTransport] = []

    def contexts(part: list[tuple[str, str]]) -> Iterator[ssl.SSLContext]:
        for cert, key in part:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.load_verify_locations(server_ca)
            ctx.load_cert_chain(cert, key)
            yield ctx

    async def one(
        client_id: str, ctx: ssl.SSLContext, sem: asyncio.Semaphore, errors: list[str]
    ) -> bool:
        async with sem:
            fut: asyncio.Future[int] = loop.create_future()
            connect = codec.encode(codec.Connect(f"{client_id}|securemode=2|", 1200))
            try:
                transport, _ = await asyncio.wait_for(
                    loop.create_connection(
                        lambda: _Client(connect, fut),
                        "127.0.0.1",
                        port,
                        ssl=ctx,
                        server_hostname="127.0.0.1",
                    ),
                    30,
                )
                code = await asyncio.wait_for(fut, 30)
            except (TimeoutError, OSError, ssl.SSLError, ConnectionError) as exc:
                if len(errors) < 5:
                    errors.append(repr(exc))
                return False
            if code != 0:
                if len(errors) < 5:
                    errors.append(f"CONNACK {code}")
                transport.close()
                return False
            transports.append(transport)
            return True

    async def run(part: list[tuple[str, str]]) -> dict[str, Any]:
        ctxs = list(contexts(part))
        conn.send(("ready",))
        conn.recv()  # go
        sem = asyncio.Semaphore(concurrency)
        errors: list[str] = []
        t0 = time.monotonic()
        results = await asyncio.gather(
            *(one(Path(job[0]).stem, c, sem, errors) for job, c in zip(part, ctxs, strict=True))
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
        ctx = mp.get_context("spawn")
        self.n = len(fleet.names)
        self.workers = []
        self.slices = []
        per = (self.n + workers - 1) // workers
        for w in range(workers):
            idx = list(range(w * per, min(self.n, (w + 1) * per)))
            jobs = [(fleet.cert(i), fleet.key(i, keys)) for i in idx]
            parent, child = ctx.Pipe()
            proc = ctx.Process(
                target=_worker, args=(child, jobs, str(server_ca), port, concurrency), daemon=True
            )
            proc.start()
            self.workers.append((proc, parent))
            self.slices.append(len(jobs))

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
        for proc, pipe in self.workers:
            with contextlib.suppress(OSError, BrokenPipeError):
                pipe.send(("exit",))
            proc.join(5)
            if proc.is_alive():
                proc.kill()


# --- the servers -------------------------------------------------------------------------------


@dataclass
class Target:
    name: str
    pid: int
    port: int
    server_ca: Path


def wait_port(port: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port}")


@contextlib.contextmanager
def mosquitto(root: Path, fleet: Fleet) -> Iterator[Target]:
    server_ca = create_ca("Bench Mosquitto server CA")
    server = issue_server_certificate(server_ca)
    d = root / "mosquitto"
    d.mkdir(mode=0o700)
    (d / "server-ca.pem").write_bytes(server_ca.cert_pem())
    (d / "device-ca.pem").write_bytes(fleet.ca.cert_pem())
    server.write(d / "server.pem", d / "server.key")
    port = free_port()
    conf = d / "mosquitto.conf"
    conf.write_text(
        "per_listener_settings true\n"
        f"listener {port} 127.0.0.1\n"
        "allow_anonymous true\n"
        f"cafile {d / 'device-ca.pem'}\n"
        f"certfile {d / 'server.pem'}\n"
        f"keyfile {d / 'server.key'}\n"
        "require_certificate true\n"
        "use_identity_as_username true\n"
        "max_connections -1\n"
        # as root, Mosquitto would switch to user "mosquitto", who cannot read this private dir
        f"user {pwd.getpwuid(os.getuid()).pw_name}\n"
        "log_type error\n"
        "persistence false\n"
    )
    err_path = d / "mosquitto.log"
    with err_path.open("wb") as err:
        proc = subprocess.Popen([MOSQUITTO, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=err)
    try:
        try:
            wait_port(port)
        except RuntimeError:
            proc.kill()
            proc.wait()
            raise RuntimeError(f"mosquitto did not start: {err_path.read_text()}") from None
        yield Target("mosquitto", proc.pid, port, d / "server-ca.pem")
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


def _csv(product_key: str, fleet: Fleet, lo: int, hi: int) -> bytes:
    rows = ["ProductKey,DeviceName,CertSN"]
    rows += [f"{product_key},{fleet.names[i]},{fleet.sns[i]}" for i in range(lo, hi)]
    return ("\n".join(rows) + "\n").encode()


@contextlib.contextmanager
def ours_real(root: Path, n: int, keys: int) -> Iterator[tuple[Target, Fleet]]:
    from firmware_helpers.platform_client import PlatformClient, UploadFile
    from server_stub.launcher import running_server

    with running_server(root / "server-data", extra_args=[]) as srv:
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
        yield Target("ours (real registry)", srv.process.pid, srv.mqtt_port, srv.server_ca), fleet


def _serve_endpoint(data: Path) -> None:
    """Entry point of the child process for ``--registry endpoint``: the endpoint alone, on the
    real registry's SQLite file the parent filled (no HTTP server in the process)."""
    import uvloop

    from server_stub.config import MqttLimits
    from server_stub.mqtt.service import MqttService
    from server_stub.registry import Registry
    from server_stub.store import SqliteStore

    raise_nofile()
    directory = Registry(SqliteStore(data / "registry" / "registry.sqlite3"))

    async def main() -> None:
        svc = MqttService(
            directory,
            (data / "server.pem").read_bytes(),
            (data / "server.key").read_bytes(),
            "127.0.0.1",
            0,
            MqttLimits(),
        )
        await svc.start()
        print(f"PORT {svc.port}", flush=True)
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()
        await svc.stop()

    uvloop.run(main())


@contextlib.contextmanager
def ours_endpoint(root: Path, n: int, keys: int) -> Iterator[tuple[Target, Fleet]]:
    from testkit.registry import RealRegistry

    d = root / "ours-endpoint"
    d.mkdir(mode=0o700)
    with RealRegistry(d / "registry") as real:
        tenant = real.tenant("bench")
        log(f"making {n} device certificates ({keys} shared RSA keys)")
        fleet = make_fleet(root, n, keys, tenant.product_key)
        tenant.associate(
            tenant.register_ca(fleet.ca), dict(zip(fleet.sns, fleet.names, strict=True))
        )
    server_ca = create_ca("Bench server CA")
    server_ca_path = d / "server-ca.pem"
    server_ca_path.write_bytes(server_ca.cert_pem())
    issue_server_certificate(server_ca).write(d / "server.pem", d / "server.key")
    proc = subprocess.Popen(
        [sys.executable, __file__, "--serve-endpoint", str(d)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line.startswith("PORT "):
            raise RuntimeError(f"endpoint-only server did not start: {line!r}")
        yield (
            Target(
                "ours (endpoint on registry file)", proc.pid, int(line.split()[1]), server_ca_path
            ),
            fleet,
        )
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


# --- measuring ---------------------------------------------------------------------------------


def _cpu(p: psutil.Process) -> float:
    t = p.cpu_times()
    return float(t.user + t.system)


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
        rss0, cpu0 = proc.memory_info().rss, _cpu(proc)
        log(f"{target.name}: connecting {len(fleet.names)} devices")
        res = gen.connect(gen.slices)
        cpu1 = _cpu(proc)
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
    parser.add_argument("--serve-endpoint", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_endpoint:
        _serve_endpoint(args.serve_endpoint)
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
        server = ours_real if args.registry == "real" else ours_endpoint
        with server(root, args.devices, args.keys) as (target, fleet):
            ours = measure(target, fleet, args.keys, args.workers, args.concurrency)
        with mosquitto(root, fleet) as target:
            mosq = measure(target, fleet, args.keys, args.workers, args.concurrency)
    print_table(ours, mosq)
    print(f"\ntotal run time {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
