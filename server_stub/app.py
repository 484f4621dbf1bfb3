"""The reference server process: HTTP API and MQTT device endpoint on ONE asyncio loop.

:class:`ServerProcess` is importable and testable (``await start()`` / ``await stop()``);
:func:`run` is what ``iotx509 server run`` calls: it uses uvloop when installed, prints one
machine-readable ready line, writes ``DATA_DIR/ports.json`` and stops cleanly on SIGTERM/SIGINT.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import signal
import socket
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import uvicorn

from device_sdk.fileio import atomic_write, open_no_follow
from server_stub.api import create_app
from server_stub.api.endpoint import DeviceEndpoint
from server_stub.config import ServerConfig
from server_stub.datadir import DataDir, ensure_default_account, server_identity
from server_stub.errors import ServerStartupError
from server_stub.mqtt.service import MqttService
from server_stub.ports import DeviceMessaging
from server_stub.registry import Registry
from server_stub.registry.renewals import RenewalDesk, Renewals
from server_stub.store import SqliteStore

log = logging.getLogger("server_stub")

#: Seconds between two sweeps for old SNs past their grace period (shorter when the grace is).
RENEWAL_SWEEP_INTERVAL = 30.0


class _EmbeddedUvicorn(uvicorn.Server):
    """uvicorn without its own signal handling: the process owns SIGTERM/SIGINT."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(1024)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise ServerStartupError(
            f"cannot listen for HTTP on {host}:{port}: {exc.strerror or exc}"
        ) from exc
    return sock


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


class ServerProcess:
    """One reference server: registry + HTTP API + MQTT endpoint, sharing the running loop."""

    def __init__(self, config: ServerConfig, *, log_level: str = "warning") -> None:
        self.config = config
        self.data = DataDir(Path(config.data_dir))
        self._log_level = log_level
        self._lock_file: IO[bytes] | None = None
        self.store: SqliteStore | None = None
        self.registry: Registry | None = None
        self.admin_token = ""
        self._mqtt: MqttService | None = None
        self._http: _EmbeddedUvicorn | None = None
        self._http_task: asyncio.Task[None] | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self.http_port = 0
        self.mqtt_port: int | None = None

    @property
    def server_ca_path(self) -> Path:
        return self.data.server_ca

    @property
    def http_url(self) -> str:
        return f"http://{_url_host(self.config.host)}:{self.http_port}"

    @property
    def mqtt_url(self) -> str | None:
        if self.mqtt_port is None:
            return None
        return f"mqtts://{_url_host(self.config.host)}:{self.mqtt_port}"

    def _lock_data_dir(self) -> None:
        try:
            fd = open_no_follow(self.data.lock, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        except OSError as exc:
            raise ServerStartupError(
                f"cannot lock the data directory with {self.data.lock}: {exc.strerror or exc}"
            ) from exc
        handle = os.fdopen(fd, "ab")  # held for the process's life
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            handle.close()
            raise ServerStartupError(
                f"another server is already running with the data directory {self.data.root}"
            ) from exc
        self._lock_file = handle

    async def start(self) -> None:
        self.data.create()
        self._lock_data_dir()
        try:
            await self._start()
        except BaseException:
            await self.stop()
            raise

    async def _start(self) -> None:
        self.store = SqliteStore(self.data.database)
        registry = self.registry = Registry(self.store)
        self.admin_token = ensure_default_account(registry, self.data)
        identity = server_identity(self.data, self.config.hostnames)
        messaging = await self._start_mqtt(registry, identity.cert_pem(), identity.key_pem())
        renewals = Renewals(registry, self.config.renewal)
        if self._mqtt is not None:
            self._mqtt.broker.renewals = RenewalDesk(renewals, messaging)
        self._sweeper = asyncio.get_running_loop().create_task(self._sweep_renewals(renewals))
        app = create_app(
            registry,
            messaging,
            max_upload_bytes=self.config.max_upload_bytes,
            renewals=renewals,
        )
        if self.mqtt_port is not None:  # GET /api/v1/endpoint tells clients where devices connect
            app.state.endpoint = DeviceEndpoint(
                self.mqtt_port, self.server_ca_path.read_text("ascii")
            )
        sock = _listen(self.config.host, self.config.http_port)
        self.http_port = int(sock.getsockname()[1])
        uv_config = uvicorn.Config(
            app,
            lifespan="off",
            log_config=None,
            log_level=self._log_level,
            access_log=False,
            server_header=False,
        )
        self._http = _EmbeddedUvicorn(uv_config)
        self._http_task = asyncio.get_running_loop().create_task(self._http.serve([sock]))
        while not self._http.started:
            if self._http_task.done():
                self._http_task.result()
                raise ServerStartupError("the HTTP server stopped while starting")
            await asyncio.sleep(0.01)
        self._write_ports()
        log.info("serving HTTP on %s, MQTT on %s", self.http_url, self.mqtt_url)

    async def _start_mqtt(
        self, registry: Registry, cert_pem: bytes, key_pem: bytes
    ) -> DeviceMessaging:
        service = MqttService(
            directory=registry,
            cert_pem=cert_pem,
            key_pem=key_pem,
            host=self.config.host,
            port=self.config.mqtt_port,
            limits=self.config.mqtt,
        )
        await service.start()
        self._mqtt = service
        self.mqtt_port = int(service.port)
        messaging: DeviceMessaging = service
        return messaging

    async def _sweep_renewals(self, renewals: Renewals) -> None:
        """Retire old SNs whose grace period ended (docs/renewal.md), every few seconds."""
        interval = min(RENEWAL_SWEEP_INTERVAL, max(self.config.renewal.grace / 4, 0.25))
        while True:
            await asyncio.sleep(interval)
            try:
                await asyncio.to_thread(renewals.sweep)
            except Exception:
                log.exception("renewal: retiring expired old SNs failed")

    def _write_ports(self) -> None:
        info = {
            "host": self.config.host,
            "http": self.http_port,
            "mqtt": self.mqtt_port,
            "httpUrl": self.http_url,
            "mqttUrl": self.mqtt_url,
            "pid": os.getpid(),
            "serverCa": str(self.server_ca_path),
        }
        atomic_write(self.data.ports, (json.dumps(info, indent=2) + "\n").encode())

    def ready_line(self) -> str:
        return f"ready http={self.http_url} mqtt={self.mqtt_url} data={self.data.root}"

    async def stop(self) -> None:
        """Stop accepting, close sessions, close the database; safe to call more than once."""
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None
        if self._http is not None and self._http_task is not None:
            self._http.should_exit = True
            with contextlib.suppress(Exception):
                await self._http_task
            self._http = self._http_task = None
        if self._mqtt is not None:
            try:
                await self._mqtt.stop()
            finally:
                self._mqtt = None
        if self.store is not None:
            self.store.close()
            self.store = None
        if self._lock_file is not None:
            with contextlib.suppress(FileNotFoundError):
                self.data.ports.unlink()
            self._lock_file.close()
            self._lock_file = None


async def serve(config: ServerConfig, *, log_level: str = "warning") -> None:
    """Run until SIGTERM or SIGINT; print the ready line once both endpoints listen."""
    server = ServerProcess(config, log_level=log_level)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await server.start()
        log.info("event loop: %s.%s", type(loop).__module__, type(loop).__name__)
        print(server.ready_line(), flush=True)
        await stop.wait()
        log.info("stopping")
    finally:
        await server.stop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)


def run(config: ServerConfig, *, log_level: str = "warning") -> int:
    """``iotx509 server run``: one event loop (uvloop when available) for HTTP and MQTT."""
    try:
        import uvloop
    except ImportError:
        loop_factory = None
    else:
        loop_factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(serve(config, log_level=log_level))
    print("stopped", file=sys.stderr, flush=True)
    return 0
