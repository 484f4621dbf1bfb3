"""Resumption benchmark: server CPU of devices returning after a network blip, side by side.

N devices (default 1,000) connect with mutual TLS and hold their connections; then the network
"blips": every client drops its connection at once (RST), and every device reconnects at once
while the server stays up. Each blip is measured as the server CPU (psutil, user + system) from
just before the drop until all N are accepted again, divided by N. Blips, on one run:

- ``today``: the endpoint as it was before issue 16 (``--today-ref``, default the commit before
  session tickets; its ``server_stub/mqtt`` is laid over this checkout's ``server_stub``, so it
  serves the same registry file): every reconnect a full RSA mTLS handshake, every CONNECT a
  registry lookup in an executor -- "today's server CPU";
- ``ours, tickets off``: this endpoint with session tickets turned off;
- ``ours, full``: the endpoint with session tickets, devices reconnecting without a session;
- ``ours, resumed``: the same endpoint, devices offering the session of their last connection;
- ``mosquitto, full`` / ``mosquitto, resumed``: Mosquitto 2 with the same certificates (its
  OpenSSL defaults issue tickets; whether its sessions resume is reported, not assumed).

Ratios: resumed / full on the same server (target <= 0.6x), and ours resumed / today (the
blip's cost against today's, target <= 0.5x). Each blip runs ``--rounds`` times; the table
shows the median and the spread. The load generator is the same for every server: worker
processes, each an asyncio (uvloop) loop doing TLS over memory BIOs (``ssl.SSLObject``, the
only asyncio-compatible way to pass ``session=``) and sending one MQTT CONNECT made by the
server's codec.

    python bench/bench_resumption.py                 # 1,000 devices, 3 rounds
    python bench/bench_resumption.py --devices 2000 --rounds 5
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import ssl
import statistics
import subprocess
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
    mosquitto,
    open_and_connack,
    raise_nofile,
    serve_endpoint,
    spawn_worker,
    stop_workers,
    worker_loop,
)

#: The endpoint before issue 16 (no session tickets, CONNECT always through the executor).
TODAY_REF = "7e5d323c0d7936fc2ebd1941905bf79edb56ea65"


# --- load generator ----------------------------------------------------------------------------


class _TlsClient(asyncio.Protocol):
    """TLS over memory BIOs (so that a session can be offered), then CONNECT, then CONNACK."""

    def __init__(
        self,
        ctx: ssl.SSLContext,
        session: ssl.SSLSession | None,
        connect: bytes,
        done: asyncio.Future[int],
    ) -> None:
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = ctx.wrap_bio(
            self.incoming, self.outgoing, server_hostname="127.0.0.1", session=session
        )
        self.connect = connect
        self.done = done
        self.handshaken = False
        self.buf = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self._step()

    def data_received(self, data: bytes) -> None:
        self.incoming.write(data)
        self._step()

    def _step(self) -> None:
        try:
            if not self.handshaken:
                self.tls.do_handshake()
                self.handshaken = True
                self.tls.write(self.connect)
            while True:
                self.buf += self.tls.read(65536)
        except ssl.SSLWantReadError:
            pass
        except (ssl.SSLError, ssl.SSLEOFError) as exc:
            if not self.done.done():
                self.done.set_exception(exc)
        out = self.outgoing.read()
        if out and self.transport is not None:
            self.transport.write(out)
        if not self.done.done() and len(self.buf) >= 4:
            self.done.set_result(self.buf[3] if self.buf[0] == 0x20 else 255)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_exception(ConnectionError(f"closed before CONNACK: {exc}"))


def _worker(conn: Connection, jobs: list[tuple[str, str]], server_ca: str, port: int) -> None:
    """One load-generator process: one context and one session per device, on command."""
    loop = worker_loop()
    ctxs = [client_context(server_ca, cert, key) for cert, key in jobs]
    sessions: list[ssl.SSLSession | None] = [None] * len(jobs)
    held: list[asyncio.BaseTransport] = []

    async def one(i: int, offer: bool, sem: asyncio.Semaphore, errors: list[str]) -> int:
        """0: failed, 1: full handshake, 2: resumed."""
        async with sem:
            fut: asyncio.Future[int] = loop.create_future()
            proto = _TlsClient(
                ctxs[i], sessions[i] if offer else None, connect_packet(jobs[i][0]), fut
            )
            transport, ok = await open_and_connack(loop, lambda: proto, port, fut, errors, 60)
            if transport is not None:
                held.append(transport)
            if not ok:
                return 0
            sessions[i] = proto.tls.session
            return 2 if proto.tls.session_reused else 1

    async def run(offer: bool, concurrency: int) -> dict[str, Any]:
        sem = asyncio.Semaphore(concurrency)
        errors: list[str] = []
        results = await asyncio.gather(*(one(i, offer, sem, errors) for i in range(len(jobs))))
        return {
            "ok": sum(1 for r in results if r),
            "resumed": sum(1 for r in results if r == 2),
            "errors": errors,
        }

    conn.send(("ready",))
    while True:
        msg = conn.recv()
        if msg[0] == "connect":
            conn.send(("result", loop.run_until_complete(run(msg[1], msg[2]))))
        elif msg[0] == "drop":  # the blip: every connection reset at once
            for t in held:
                t.abort()  # type: ignore[attr-defined]
            held.clear()
            loop.run_until_complete(asyncio.sleep(0))
            conn.send(("dropped",))
        elif msg[0] == "forget":
            sessions = [None] * len(jobs)
            conn.send(("forgotten",))
        else:
            break
    loop.close()


class Devices:
    """The fleet's load generator: ``workers`` processes sharing the devices."""

    def __init__(self, fleet: Fleet, keys: int, server_ca: Path, port: int, workers: int) -> None:
        self.procs = [
            spawn_worker(_worker, jobs, str(server_ca), port)
            for jobs in fleet.shares(keys, workers)
        ]
        for _, pipe in self.procs:
            assert pipe.recv()[0] == "ready"

    def _all(self, msg: tuple[Any, ...]) -> list[Any]:
        for _, pipe in self.procs:
            pipe.send(msg)
        return [pipe.recv()[-1] for _, pipe in self.procs]

    def connect(self, offer_sessions: bool, concurrency: int) -> dict[str, Any]:
        results = self._all(("connect", offer_sessions, concurrency))
        return {
            "ok": sum(r["ok"] for r in results),
            "resumed": sum(r["resumed"] for r in results),
            "errors": [e for r in results for e in r["errors"]],
        }

    def drop(self) -> None:
        self._all(("drop",))

    def forget_sessions(self) -> None:
        self._all(("forget",))

    def shutdown(self) -> None:
        stop_workers(self.procs)


# --- the servers -------------------------------------------------------------------------------


def today_tree(root: Path, ref: str) -> Path:
    """This checkout's ``server_stub`` with ``server_stub/mqtt`` as it was at ``ref``."""
    tree = root / "today"
    shutil.copytree(ROOT / "server_stub", tree / "server_stub")
    mqtt = tree / "server_stub" / "mqtt"
    shutil.rmtree(mqtt)
    mqtt.mkdir()
    names = subprocess.run(
        ["git", "-C", str(ROOT), "ls-tree", "--name-only", f"{ref}:server_stub/mqtt"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    for name in names:
        text = subprocess.run(
            ["git", "-C", str(ROOT), "show", f"{ref}:server_stub/mqtt/{name}"],
            check=True,
            capture_output=True,
        ).stdout
        (mqtt / name).write_bytes(text)
    return tree


def prepare(root: Path, n: int, keys: int) -> tuple[Path, Fleet]:
    """The real registry (CA registered with its proof, SNs associated) and the fleet."""
    d = root / "ours"
    return d, endpoint_data(d, root, n, keys)


@contextlib.contextmanager
def ours(d: Path, ticket_lifetime: float, tree: Path | None = None) -> Iterator[Target]:
    env = dict(os.environ)
    if tree is not None:  # today's endpoint: its server_stub first on the path
        env["PYTHONPATH"] = os.pathsep.join([str(tree), str(ROOT)])
    with endpoint_process(
        [__file__, "--serve-endpoint", str(d), "--ticket-lifetime", str(ticket_lifetime)],
        f"ours (tickets {'on' if ticket_lifetime else 'off'})",
        d / "server-ca.pem",
        env=env,
        cwd=str(tree or ROOT),
    ) as target:
        yield target


# --- measuring ---------------------------------------------------------------------------------


class Server:
    """One server under test with its own copy of the fleet's connections."""

    def __init__(self, label: str, target: Target, fleet: Fleet, args: argparse.Namespace) -> None:
        self.label = label
        self.target = target
        self.proc = psutil.Process(target.pid)
        self.n = len(fleet.names)
        self.devices = Devices(fleet, args.keys, target.server_ca, target.port, args.workers)
        first = self.devices.connect(False, args.concurrency)
        if first["ok"] != self.n:
            raise RuntimeError(f"{label}: initial connect failed: {first['errors']}")

    def blip(self, resumed: bool, concurrency: int) -> dict[str, Any]:
        """Drop every connection at once, reconnect all; server CPU per returning device."""
        cpu0, t0 = cpu_seconds(self.proc), time.monotonic()
        self.devices.drop()
        res = self.devices.connect(resumed, concurrency)
        cpu1, t1 = cpu_seconds(self.proc), time.monotonic()
        ok = res["ok"]
        return {
            "ok": ok,
            "resumed": res["resumed"],
            "errors": res["errors"],
            "cpu_ms_per_device": (cpu1 - cpu0) * 1000 / max(ok, 1),
            "seconds": t1 - t0,
        }

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.devices.drop()
        self.devices.shutdown()


def run_blips(
    servers: list[tuple[Server, str, bool]], args: argparse.Namespace
) -> dict[str, list[dict[str, Any]]]:
    """Round after round, one blip of each (server, kind), interleaved so that the machine's
    load drifts over all of them alike."""
    out: dict[str, list[dict[str, Any]]] = {name: [] for _, name, _ in servers}
    for r in range(args.rounds):
        for server, name, resumed in servers:
            time.sleep(0.5)  # let the previous blip's closes settle
            row = server.blip(resumed, args.concurrency)
            out[name].append(row)
            log(
                f"round {r + 1} {name}: {row['ok']}/{server.n} back ({row['resumed']} resumed) "
                f"in {row['seconds']:.1f} s, server CPU {row['cpu_ms_per_device']:.3f} ms/device"
                + (f"; errors {row['errors']}" if row["errors"] else "")
            )
    return out


def _med(rows: list[dict[str, Any]]) -> tuple[float, float, float]:
    values = [r["cpu_ms_per_device"] for r in rows]
    return statistics.median(values), min(values), max(values)


def report(results: dict[str, list[dict[str, Any]]], n: int) -> None:
    print()
    print(
        f"{'blip of ' + str(n) + ' devices':34} {'CPU ms/device':>14} {'min-max':>14} {'resumed':>9}"
    )
    for name, rows in results.items():
        med, lo, hi = _med(rows)
        resumed = statistics.median(r["resumed"] for r in rows)
        print(f"{name:34} {med:14.3f} {f'{lo:.3f}-{hi:.3f}':>14} {resumed:9.0f}")
    print()

    def ratio(a: str, b: str, label: str, target: str) -> None:
        if a not in results or b not in results:
            return
        ra = [r["cpu_ms_per_device"] for r in results[a]]
        rb = [r["cpu_ms_per_device"] for r in results[b]]
        per_round = [x / y for x, y in zip(ra, rb, strict=True) if y]
        print(
            f"{label:58} {statistics.median(ra) / statistics.median(rb):5.2f}x "
            f"(per round {min(per_round):.2f}-{max(per_round):.2f}x"
            + (f"; {target})" if target else ")")
        )

    ratio(
        "ours, resumed", "ours, full", "ours: resumed reconnect / full handshake", "target <= 0.6x"
    )
    ratio(
        "ours, resumed", "today", "blip: ours with resumption / today's endpoint", "target <= 0.5x"
    )
    ratio("ours, resumed", "ours, tickets off", "blip: ours with resumption / ours tickets off", "")
    ratio("ours, tickets off", "today", "blip: ours tickets off / today's endpoint", "")
    ratio(
        "ours, full",
        "ours, tickets off",
        "ours: full handshake, tickets on / off",
        "cost of issuing tickets",
    )
    ratio("mosquitto, resumed", "mosquitto, full", "mosquitto: resumed / full", "reference")
    ratio("ours, full", "mosquitto, full", "full handshake: ours / mosquitto", "reference")
    ratio("ours, resumed", "mosquitto, resumed", "resumed: ours / mosquitto", "reference")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2, help="load-generator processes")
    parser.add_argument(
        "--concurrency", type=int, default=32, help="handshakes in flight per worker"
    )
    parser.add_argument("--keys", type=int, default=8, help="distinct RSA keys for the fleet")
    parser.add_argument("--no-mosquitto", action="store_true")
    parser.add_argument(
        "--today-ref", default=TODAY_REF, help="git revision of today's endpoint (the baseline)"
    )
    parser.add_argument("--serve-endpoint", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--ticket-lifetime", type=float, default=3600.0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_endpoint:
        serve_endpoint(args.serve_endpoint, args.ticket_lifetime)
        return 0
    raise_nofile()
    started = time.monotonic()
    with (
        tempfile.TemporaryDirectory(prefix="bench-resume-") as tmp,
        contextlib.ExitStack() as stack,
    ):
        root = Path(tmp)
        d, fleet = prepare(root, args.devices, args.keys)
        servers: list[tuple[Server, str, bool]] = []

        def up(label: str, target: Target) -> Server:
            log(f"{label}: connecting {args.devices} devices")
            server = Server(label, target, fleet, args)
            stack.callback(server.close)
            return server

        today = up("today", stack.enter_context(ours(d, 0, today_tree(root, args.today_ref))))
        servers.append((today, "today", False))
        off = up("ours, tickets off", stack.enter_context(ours(d, 0)))
        on = up("ours, tickets on", stack.enter_context(ours(d, 3600)))
        servers += [(off, "ours, tickets off", False), (on, "ours, full", False)]
        servers.append((on, "ours, resumed", True))
        if not args.no_mosquitto:
            mosq = up("mosquitto", stack.enter_context(mosquitto(root, fleet)))
            servers += [(mosq, "mosquitto, full", False), (mosq, "mosquitto, resumed", True)]
        results = run_blips(servers, args)
    report(results, args.devices)
    print(f"\ntotal run time {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
