"""One simulated device on gevent, built from the device SDK's own parts.

Why not ``device_sdk.DeviceClient`` itself: its network thread runs paho's ``loop()``, i.e.
``select()`` -- under gevent that stops at about 340 devices per process (FD_SETSIZE, see
:mod:`simulator.gevent_loop`; measured: 341 of 600, the rest reported as
``CertificateRejectedError``), and it costs a thread per device. Until the SDK accepts an external
network loop, this class composes the SDK's public pieces and drives paho from
:class:`~simulator.gevent_loop.GeventLoop`:

- :class:`device_sdk.Credentials` (checks), :func:`device_sdk.tls.build_ssl_context` (TLS >= 1.2,
  server verified, key loaded from memory), :func:`device_sdk.tls.map_connect_error` (TLS alerts
  and resets -> ``CertificateRejectedError`` & co., with the SDK's messages);
- :mod:`device_sdk.platform` conventions (client id ``{sn}|securemode=2|``, username
  ``DeviceName&ProductKey`` once known, keep-alive, the identity topic), :class:`Identity`;
- :class:`device_sdk.backoff.Backoff` (full jitter; refusals retried at the cap at most).

The SDK's own client is available with ``--device-client sdk`` (:mod:`simulator.sdk_device`):
same events, a few hundred devices per process.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gevent
import paho.mqtt.client as mqtt
from gevent.event import AsyncResult, Event
from paho.mqtt.enums import CallbackAPIVersion

from device_sdk.backoff import Backoff, BackoffPolicy
from device_sdk.credentials import Credentials
from device_sdk.errors import (
    CertificateRejectedError,
    ClockError,
    ConnectionFailedError,
    ConnectionRefusedByServerError,
    ConnectTimeoutError,
    CredentialError,
    DeviceSDKError,
    IdentityTimeoutError,
    InvalidNameError,
    NotAuthorizedError,
    NotConnectedError,
    ServerUntrustedError,
)
from device_sdk.identity import Identity
from device_sdk.platform import IDENTITY_TOPIC, KEEPALIVE_DEFAULT, ClientId, format_username
from device_sdk.tls import build_ssl_context, map_connect_error
from simulator.gevent_loop import GeventLoop, shared_loop

log = logging.getLogger(__name__)

#: Refusals a quick retry cannot fix: the SDK's own list.
PERMANENT_ERRORS: tuple[type[DeviceSDKError], ...] = (
    CertificateRejectedError, NotAuthorizedError, ServerUntrustedError, ClockError,
    CredentialError, IdentityTimeoutError, ConnectionRefusedByServerError,
)
_RC_NOT_AUTHORIZED = 135
_RC_BAD_USERNAME = 134


class IdentityMismatchError(DeviceSDKError):
    """The platform told the device another identity than the fleet expects."""


@dataclass(frozen=True, slots=True)
class ConnectTiming:
    """Seconds from the start of the attempt to CONNACK, and from CONNACK to the identity."""

    connect: float
    identity: float
    identity_value: Identity


class _SocketErrors(logging.Handler):
    """paho logs the socket exception and returns a bare code; keep the exception."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.error: BaseException | None = None

    def emit(self, record: logging.LogRecord) -> None:
        args = record.args if isinstance(record.args, tuple) else ()
        for arg in args:
            if isinstance(arg, BaseException):
                self.error = arg


EventSink = Callable[[str, float, BaseException | None], None]
"""``sink(name, seconds, error)``: where a device reports what happened (Locust's request event)."""


class SimDevice:
    """A device: connect (timed), identity (checked), publish (timed to PUBACK), commands."""

    def __init__(
        self,
        host: str,
        port: int,
        credentials: Credentials,
        *,
        server_ca: Path | None,
        expected: Identity | None = None,
        keepalive: int = KEEPALIVE_DEFAULT,
        backoff: BackoffPolicy | None = None,
        rng: random.Random | None = None,
        loop: GeventLoop | None = None,
        on_event: EventSink | None = None,
        attempt_timeout: float = 10.0,
        identity_timeout: float = 10.0,
    ) -> None:
        self.host = host
        self.port = port
        self.credentials = credentials
        self.expected = expected
        self.keepalive = keepalive
        self.attempt_timeout = attempt_timeout
        self.identity_timeout = identity_timeout
        self.on_event = on_event or (lambda name, seconds, error: None)
        self.identity: Identity | None = None
        self.last_error: DeviceSDKError | None = None
        self.connection_attempts = 0
        self._backoff = Backoff(backoff or BackoffPolicy(), rng=rng)
        self._loop = loop or shared_loop()
        self._online = Event()
        self._offline = Event()
        self._offline.set()
        self._closing = False
        self._connack: AsyncResult | None = None
        self._identity_result: AsyncResult | None = None
        self._acks: dict[int, AsyncResult] = {}
        self._early_acks: set[int] = set()
        self._subscriptions: dict[str, Callable[[bytes], None]] = {}
        self._reconnector: gevent.Greenlet | None = None
        self._lost_at: float | None = None
        self._errors = _SocketErrors()
        self._client = self._make_client(server_ca)

    # --- setup ---------------------------------------------------------------------------------

    def _make_client(self, server_ca: Path | None) -> mqtt.Client:
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=str(ClientId.for_x509(self.credentials.sn)),
            clean_session=True,
            protocol=mqtt.MQTTv311,
        )
        client.tls_set_context(build_ssl_context(self.credentials, server_ca))
        client.connect_timeout = self.attempt_timeout
        client.max_queued_messages_set(0)
        paho_log = logging.Logger("simulator.paho")
        paho_log.propagate = False
        paho_log.addHandler(self._errors)
        paho_log.setLevel(logging.ERROR)
        client.enable_logger(paho_log)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_publish = self._on_publish
        self._loop.attach(client)
        return client

    @property
    def online(self) -> bool:
        return bool(self._online.is_set())

    # --- connecting ----------------------------------------------------------------------------

    def connect(self) -> ConnectTiming:
        """One attempt: TLS + CONNECT/CONNACK, then the identity; raises an SDK error."""
        self.connection_attempts += 1
        self._errors.error = None
        self._connack = AsyncResult()
        self._identity_result = AsyncResult()
        username = format_username(self.identity) if self.identity else None
        self._client.username_pw_set(username, None)
        started = time.perf_counter()
        try:
            self.credentials.check_validity()
            self._client.connect(self.host, self.port, self.keepalive)
        except DeviceSDKError:
            raise
        except (OSError, ValueError) as exc:
            raise map_connect_error(exc, self.host, self.port) from exc
        try:
            outcome = self._connack.get(timeout=self.attempt_timeout)
        except gevent.Timeout:
            self._drop()
            raise ConnectTimeoutError(
                f"no CONNACK from {self.host}:{self.port} within {self.attempt_timeout:g} s "
                "after the TLS handshake", host=self.host, port=self.port,
            ) from None
        if isinstance(outcome, DeviceSDKError):
            self._drop()
            raise outcome
        connacked = time.perf_counter()
        try:
            identity = self._identity_result.get(timeout=self.identity_timeout)
        except gevent.Timeout:
            self._drop()
            raise IdentityTimeoutError(
                f"connected to {self.host}:{self.port} but the platform did not send this "
                f"device's identity within {self.identity_timeout:g} s"
            ) from None
        if isinstance(identity, DeviceSDKError):
            self._drop()
            raise identity
        got = time.perf_counter()
        self.identity = identity
        self._backoff.connected()
        self._offline.clear()
        self._online.set()
        self._lost_at = None
        self._resubscribe()
        if self.expected is not None and identity != self.expected:
            raise IdentityMismatchError(
                f"the platform says this device is {identity.product_key}/"
                f"{identity.device_name}; the fleet expects {self.expected.product_key}/"
                f"{self.expected.device_name}"
            )
        return ConnectTiming(connacked - started, got - connacked, identity)

    def connect_and_report(self, name: str = "connect") -> bool:
        """``connect()``, reporting ``connect``/``identity`` events; True when online."""
        started = time.perf_counter()
        try:
            timing = self.connect()
        except IdentityMismatchError as exc:
            self.last_error = exc
            self.on_event(name, time.perf_counter() - started, None)
            self.on_event("identity", time.perf_counter() - started, exc)
            return True
        except DeviceSDKError as exc:
            self.last_error = exc
            self.on_event(name, time.perf_counter() - started, exc)
            return False
        self.on_event(name, timing.connect, None)
        self.on_event("identity", timing.identity, None)
        return True

    def keep_connected(self) -> None:
        """Connect now and, whenever the link is lost, again with the SDK's backoff."""
        if self._reconnector is None or self._reconnector.dead:
            self._reconnector = gevent.spawn(self._reconnect_loop)

    def _reconnect_loop(self) -> None:
        first = True
        while not self._closing:
            if not self._online.is_set():
                name = "connect" if first else "reconnect"
                lost_at = self._lost_at
                started = time.perf_counter()
                try:
                    timing = self.connect()
                except IdentityMismatchError as exc:
                    self.on_event("identity", time.perf_counter() - started, exc)
                    first = False
                    continue
                except DeviceSDKError as exc:
                    self.last_error = exc
                    self.on_event(name, time.perf_counter() - started, exc)
                    first = False
                    self._backoff.disconnected()
                    delay = self._backoff.next_delay(permanent=isinstance(exc, PERMANENT_ERRORS))
                    gevent.sleep(delay)
                    continue
                if first:
                    self.on_event("connect", timing.connect, None)
                else:
                    # A reconnect's time is the whole outage: from the loss to being back.
                    outage = time.perf_counter() - lost_at if lost_at else timing.connect
                    self.on_event("reconnect", outage, None)
                self.on_event("identity", timing.identity, None)
                first = False
            self._wait_offline()
            if not self._closing:
                self._backoff.disconnected()
                delay = self._backoff.next_delay(
                    permanent=isinstance(self.last_error, PERMANENT_ERRORS)
                )
                gevent.sleep(delay)

    def _wait_offline(self) -> None:
        self._offline.wait()

    def _drop(self) -> None:
        self._online.clear()
        self._offline.set()
        try:
            self._client.disconnect()
        except Exception:  # pragma: no cover - the socket is already gone
            pass

    def close(self) -> None:
        """Stop reconnecting and say goodbye (DISCONNECT)."""
        self._closing = True
        self._offline.set()
        if self._reconnector is not None:
            self._reconnector.kill(block=False)
        self._drop()

    # --- paho callbacks (gevent hub greenlets) -------------------------------------------------

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason_code: Any,
                    properties: Any) -> None:
        result = self._connack
        if result is None or result.ready():
            return
        if not reason_code.is_failure:
            result.set(True)
            return
        value = int(reason_code.value)
        where = f"{self.host}:{self.port}"
        if value == _RC_NOT_AUTHORIZED:
            result.set(NotAuthorizedError(
                f"the server at {where} accepted the TLS handshake but refused the device "
                f"(CONNACK 5, not authorised): is this certificate's SN ({self.credentials.sn}) "
                "associated with a device, and is that device enabled?",
                host=self.host, port=self.port))
        else:
            if value == _RC_BAD_USERNAME:
                self.identity = None  # stale identity: let the platform tell us again
            result.set(ConnectionRefusedByServerError(
                f"the server at {where} refused the connection (CONNACK reason {value})",
                code=value, host=self.host, port=self.port))

    def _on_disconnect(self, client: Any, userdata: Any, flags: Any, reason_code: Any,
                       properties: Any) -> None:
        was_online = self._online.is_set()
        self._online.clear()
        self._offline.set()
        cause = self._errors.error
        for pending in (self._connack, self._identity_result):
            if pending is not None and not pending.ready():
                pending.set(map_connect_error(
                    cause or ConnectionResetError("connection closed by the server"),
                    self.host, self.port, after_handshake=True))
        for ack in self._acks.values():
            if not ack.ready():
                ack.set(NotConnectedError(f"connection to {self.host}:{self.port} lost "
                                          "before PUBACK"))
        self._acks.clear()
        if was_online and not self._closing:
            self._lost_at = time.perf_counter()
            error = ConnectionFailedError(
                f"connection to {self.host}:{self.port} lost"
                + (f" ({cause})" if cause else " (closed by the server)"),
                host=self.host, port=self.port)
            self.last_error = error
            self.on_event("connection lost", 0.0, error)

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        if msg.topic == IDENTITY_TOPIC:
            result = self._identity_result
            try:
                identity: Identity | DeviceSDKError = Identity.from_json(bytes(msg.payload))
            except InvalidNameError as exc:
                identity = exc
            if result is not None and not result.ready():
                result.set(identity)
            return
        for topic, callback in list(self._subscriptions.items()):
            if self.identity and mqtt.topic_matches_sub(self.identity.topic(topic), msg.topic):
                gevent.spawn(callback, bytes(msg.payload))

    def _on_publish(self, client: Any, userdata: Any, mid: int, reason_code: Any,
                    properties: Any) -> None:
        result = self._acks.pop(mid, None)
        if result is None:
            self._early_acks.add(mid)
        else:
            result.set(True)

    # --- messaging -----------------------------------------------------------------------------

    def publish(self, topic: str, payload: bytes, qos: int = 1, timeout: float = 30.0) -> float:
        """Publish to a topic relative to the identity; seconds until PUBACK (QoS 1)."""
        if not self._online.is_set() or self.identity is None:
            cause = f" ({self.last_error})" if self.last_error else ""
            raise NotConnectedError(f"the device is offline{cause}")
        started = time.perf_counter()
        info = self._client.publish(self.identity.topic(topic), payload, qos=qos)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            raise NotConnectedError(f"publish failed: {mqtt.error_string(info.rc)}")
        if qos == 0:
            return time.perf_counter() - started
        if info.mid in self._early_acks:
            self._early_acks.discard(info.mid)
            return time.perf_counter() - started
        result: AsyncResult = AsyncResult()
        self._acks[info.mid] = result
        try:
            outcome = result.get(timeout=timeout)
        except gevent.Timeout:
            self._acks.pop(info.mid, None)
            raise ConnectTimeoutError(
                f"no PUBACK within {timeout:g} s", host=self.host, port=self.port
            ) from None
        if isinstance(outcome, DeviceSDKError):
            raise outcome
        return time.perf_counter() - started

    def subscribe(self, topic: str, callback: Callable[[bytes], None]) -> None:
        """Receive messages on ``topic`` (relative to the identity); renewed on reconnection."""
        self._subscriptions[topic] = callback
        if self._online.is_set() and self.identity is not None:
            self._client.subscribe(self.identity.topic(topic), 1)

    def _resubscribe(self) -> None:
        assert self.identity is not None
        for topic in self._subscriptions:
            self._client.subscribe(self.identity.topic(topic), 1)
