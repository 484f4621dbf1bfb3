"""The MQTT device endpoint as one object the server process starts and stops.

``MqttService`` binds a plain TCP listener (TLS runs inside each connection, see
:mod:`server_stub.mqtt.connection`), and runs one housekeeping task that, every 0.25 s, follows
the registry's trust generation (new SSLContext for new handshakes, re-check of live sessions)
and, every second, closes connections past a deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from server_stub.config import MqttLimits
from server_stub.mqtt.activity import LastConnection, SecondSample
from server_stub.mqtt.broker import Broker
from server_stub.mqtt.connection import MqttConnection
from server_stub.mqtt.errors import MqttServiceError
from server_stub.mqtt.tls import ServerTls
from server_stub.ports import DeviceDirectory, DeviceMessage

log = logging.getLogger("server_stub.mqtt")

TRUST_POLL_INTERVAL = 0.25
SWEEP_INTERVAL = 1.0
LISTEN_BACKLOG = 4096


class MqttService:
    """MQTT 3.1.1 over mutual TLS; implements :class:`server_stub.ports.DeviceMessaging`."""

    def __init__(
        self,
        directory: DeviceDirectory,
        cert_pem: bytes,
        key_pem: bytes,
        host: str,
        port: int,
        limits: MqttLimits,
    ) -> None:
        self._directory = directory
        self._cert_pem = cert_pem
        self._key_pem = key_pem
        self._host = host
        self._limits = limits
        self.port = port
        self._generation = directory.trust_generation
        self.broker = Broker(
            directory,
            ServerTls(
                cert_pem,
                key_pem,
                directory.trust_index,
                ticket_lifetime=limits.session_ticket_lifetime,
                engine=None if limits.tls_engine == "auto" else limits.tls_engine,
            ),
            limits,
        )
        self._server: asyncio.Server | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            self._server = await loop.create_server(
                lambda: MqttConnection(self.broker),
                self._host,
                self.port,
                backlog=LISTEN_BACKLOG,
                reuse_address=True,
            )
        except OSError as exc:
            raise MqttServiceError(
                f"cannot listen for MQTT on {self._host}:{self.port}: {exc.strerror or exc}"
            ) from exc
        self.port = self._server.sockets[0].getsockname()[1]
        self._task = loop.create_task(self._housekeeping())
        log.info(
            "mqtt: listening on %s:%d (TLS 1.2/1.3 on the %s engine, client certificate required)",
            self._host,
            self.port,
            self.broker.context.engine,
        )

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._server is not None:
            self._server.close()
            self.broker.close_all()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 5)
            self._server = None

    def refresh_trust(self) -> bool:
        """Follow the registry now; True when the trust generation had changed."""
        generation = self._directory.trust_generation
        if generation == self._generation:
            return False
        self._generation = generation
        # New handshakes already take the directory's current trust index (ServerTls.accept);
        # what is left is to re-check the sessions accepted under the previous one.
        self.broker.recheck()
        return True

    async def _housekeeping(self) -> None:
        loop = asyncio.get_running_loop()
        next_sweep = loop.time() + SWEEP_INTERVAL
        while True:
            await asyncio.sleep(TRUST_POLL_INTERVAL)
            try:
                self.refresh_trust()
                if loop.time() >= next_sweep:
                    next_sweep = loop.time() + SWEEP_INTERVAL
                    self.broker.sweep()
                    self.broker.activity.sample_online(self.online_by_account())
            except Exception:  # keep the endpoint alive; the log says what broke
                log.exception("mqtt: housekeeping failed")

    # --- DeviceMessaging -----------------------------------------------------------------------

    def is_online(self, product_key: str, device_name: str) -> bool:
        return self.broker.is_online(product_key, device_name)

    def deliver(
        self, product_key: str, device_name: str, topic: str, payload: bytes, qos: int
    ) -> bool:
        """Send to the device's live session; False when it is not connected.

        Raises :class:`~server_stub.mqtt.errors.InvalidTopicError` or
        :class:`~server_stub.mqtt.errors.InvalidMessageError` (both ``ValueError``) for a topic
        with wildcards, a QoS other than 0/1 or an oversized payload.
        """
        return self.broker.deliver(product_key, device_name, topic, payload, qos)

    def recent_messages(
        self, product_key: str, device_name: str, limit: int = 100
    ) -> list[DeviceMessage]:
        return self.broker.recent_messages(product_key, device_name, limit)

    # --- what the web console reads (server_stub.api.console_routes) ---------------------------

    def online_by_account(self) -> dict[int, int]:
        counts: dict[int, int] = {}
        for conn in self.broker.sessions.values():
            device = conn.session.device
            if device is not None:
                account_id = device.account_id
                counts[account_id] = counts.get(account_id, 0) + 1
        return counts

    def online_devices(self, account_id: int) -> list[tuple[str, str]]:
        """(ProductKey, DeviceName) of every device of the account that is connected now."""
        return [
            key
            for key, conn in self.broker.sessions.items()
            if (device := conn.session.device) is not None and device.account_id == account_id
        ]

    def last_connection(self, product_key: str, device_name: str) -> LastConnection | None:
        return self.broker.activity.last_connection(product_key, device_name)

    def timeline(self, account_id: int, seconds: int) -> list[SecondSample]:
        return self.broker.activity.timeline(account_id, seconds)

    def listen(
        self, product_key: str, device_name: str, listener: Callable[[DeviceMessage], None]
    ) -> Callable[[], None] | None:
        return self.broker.activity.listen((product_key, device_name), listener)
