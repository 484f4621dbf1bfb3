"""What the connection benchmarks share: the fleet, the servers they start and the load generator's
pieces. ``bench_connections`` and ``bench_resumption`` measure different things over the same
devices and servers; each rule for making and starting those lives here once."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
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
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

import psutil

from firmware_helpers.pki import (
    CertifiedKey,
    create_ca,
    generate_rsa_key,
    issue_device_certificate,
    issue_server_certificate,
)
from server_stub.mqtt import codec

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
#: At most this many error texts are kept per run: the first few say what went wrong.
MAX_ERRORS = 5


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


def wait_port(port: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port}")


def cpu_seconds(p: psutil.Process) -> float:
    """A server's CPU so far (user + system): the benchmarks report its growth over a phase."""
    t = p.cpu_times()
    return float(t.user + t.system)


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

    def shares(self, keys: int, workers: int) -> list[list[tuple[str, str]]]:
        """The (certificate, key) files of each load-generator process, in contiguous slices."""
        n = len(self.names)
        per = (n + workers - 1) // workers
        return [
            [(self.cert(i), self.key(i, keys)) for i in range(w * per, min(n, (w + 1) * per))]
            for w in range(workers)
        ]


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


def worker_loop() -> asyncio.AbstractEventLoop:
    """A load-generator process's event loop (uvloop where installed), with descriptors raised."""
    try:
        import uvloop

        loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    except ImportError:
        loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    raise_nofile()
    return loop


def client_context(server_ca: str, cert: str, key: str) -> ssl.SSLContext:
    """One device's mutual-TLS context."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(server_ca)
    ctx.load_cert_chain(cert, key)
    return ctx


def connect_packet(cert: str) -> bytes:
    """The MQTT CONNECT a device sends, made by the server's own codec (client id = file stem)."""
    return codec.encode(codec.Connect(f"{Path(cert).stem}|securemode=2|", 1200))


async def open_and_connack(
    loop: asyncio.AbstractEventLoop,
    factory: Callable[[], asyncio.BaseProtocol],
    port: int,
    done: asyncio.Future[int],
    errors: list[str],
    timeout: float,
    **kwargs: Any,
) -> tuple[asyncio.BaseTransport | None, bool]:
    """Open one connection and wait for its CONNACK: (the transport if one opened, accepted).
    The first few failures are noted in ``errors``."""
    try:
        transport, _ = await asyncio.wait_for(
            loop.create_connection(factory, "127.0.0.1", port, **kwargs), timeout
        )
        code = await asyncio.wait_for(done, timeout)
    except (TimeoutError, OSError, ssl.SSLError, ConnectionError) as exc:
        if len(errors) < MAX_ERRORS:
            errors.append(repr(exc))
        return None, False
    if code != 0:
        if len(errors) < MAX_ERRORS:
            errors.append(f"CONNACK {code}")
        return transport, False
    return transport, True


def spawn_worker(target: Callable[..., None], *args: Any) -> tuple[BaseProcess, Connection]:
    """A load-generator process (spawned, so it starts clean) and the parent's end of its pipe;
    ``target`` gets the child's end first."""
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=target, args=(child, *args), daemon=True)
    proc.start()
    return proc, parent


def stop_workers(workers: list[tuple[BaseProcess, Connection]]) -> None:
    for proc, pipe in workers:
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


def _stop(proc: subprocess.Popen[Any]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()


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
        _stop(proc)


def endpoint_data(d: Path, root: Path, n: int, keys: int) -> Fleet:
    """The endpoint-alone server's directory ``d``: the real registry (CA registered with its
    proof, SNs associated, through ``testkit.registry``), its server certificate, and the fleet."""
    from testkit.registry import RealRegistry

    d.mkdir(mode=0o700)
    with RealRegistry(d / "registry") as real:
        tenant = real.tenant("bench")
        log(f"making {n} device certificates ({keys} shared RSA keys)")
        fleet = make_fleet(root, n, keys, tenant.product_key)
        tenant.associate(
            tenant.register_ca(fleet.ca), dict(zip(fleet.sns, fleet.names, strict=True))
        )
    server_ca = create_ca("Bench server CA")
    (d / "server-ca.pem").write_bytes(server_ca.cert_pem())
    issue_server_certificate(server_ca).write(d / "server.pem", d / "server.key")
    return fleet


def serve_endpoint(data: Path, ticket_lifetime: float | None = None) -> None:
    """Child process: the MQTT endpoint alone, on the real registry's SQLite file in ``data``
    (no HTTP server in the process). ``ticket_lifetime`` None: the endpoint's default limits;
    otherwise that session-ticket lifetime, where the endpoint has tickets at all."""
    import uvloop

    from server_stub.config import MqttLimits
    from server_stub.mqtt.service import MqttService
    from server_stub.registry import Registry
    from server_stub.store import SqliteStore

    raise_nofile()
    directory = Registry(SqliteStore(data / "registry" / "registry.sqlite3"))
    fields = {f.name for f in dataclasses.fields(MqttLimits)}
    limits: Any = (
        MqttLimits(session_ticket_lifetime=ticket_lifetime)
        if ticket_lifetime is not None and "session_ticket_lifetime" in fields
        else MqttLimits()
    )

    async def main() -> None:
        svc = MqttService(
            directory,
            (data / "server.pem").read_bytes(),
            (data / "server.key").read_bytes(),
            "127.0.0.1",
            0,
            limits,
        )
        await svc.start()
        print(f"PORT {svc.port}", flush=True)
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()
        await svc.stop()

    uvloop.run(main())


@contextlib.contextmanager
def endpoint_process(
    command: list[str], name: str, server_ca: Path, **popen: Any
) -> Iterator[Target]:
    """Start ``command`` (a script's ``--serve-endpoint`` child), read the port it prints, stop it
    at the end."""
    proc = subprocess.Popen([sys.executable, *command], stdout=subprocess.PIPE, text=True, **popen)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line.startswith("PORT "):
            raise RuntimeError(f"{name}: endpoint did not start: {line!r}")
        yield Target(name, proc.pid, int(line.split()[1]), server_ca)
    finally:
        _stop(proc)
