"""``DeviceClient``: an MQTT device that authenticates with its X.509 certificate.

It wraps paho-mqtt 2.x (callback API version 2) and adds what devices of a private-CA platform
need and paho does not do:

- **Identity**: after CONNACK the platform publishes ``{"productKey", "deviceName"}`` to
  ``/ext/auth/identity/response`` without a subscription. The client takes it, exposes it as
  :attr:`DeviceClient.identity`, persists it, sends ``DeviceName&ProductKey`` as username next
  time, and resolves relative topics (``user/update`` -> ``/{pk}/{dn}/user/update``).
- **Errors that say what to do**: TLS alerts, resets and CONNACK codes become
  :class:`~device_sdk.errors.CertificateRejectedError`, :class:`NotAuthorizedError`, ...
- **Its own reconnect loop** (paho's doubling without jitter causes reconnect storms): full
  jitter backoff (:mod:`device_sdk.backoff`), reset only after a stable connection, and at most
  one retry per ``cap`` for refusals that retrying cannot fix.
- **An offline queue** for QoS 1 publishes (:mod:`device_sdk.offline_queue`).

Threads: socket I/O is done by a network driver (:mod:`device_sdk.network`), by default one
thread with one epoll selector shared by every client of the process -- no ``select()``, so no
limit at file descriptor 1024, and no I/O thread per client. paho's callbacks, hence the
application's ``on_message`` and ``on_identity_changed``, run on that network thread and must not
block (a slow callback delays every client of the driver). Each client also has a connection
thread that makes the blocking TCP connect + TLS handshake, watches the CONNACK/identity deadlines
and sleeps through the backoff; ``on_connection_state`` runs there, or on the network thread for
ONLINE. ``publish``/``subscribe``/``disconnect`` may be called from any thread (also from a
callback).
"""

from __future__ import annotations

import enum
import logging
import os
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode

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
    IdentityStoreError,
    IdentityTimeoutError,
    InvalidNameError,
    NotAuthorizedError,
    NotConnectedError,
    ServerUntrustedError,
)
from device_sdk.identity import Identity
from device_sdk.identity_store import IdentityStore
from device_sdk.network import NetworkDriver, default_driver
from device_sdk.offline_queue import DropPolicy, OfflineQueue, QueuedMessage
from device_sdk.platform import (
    IDENTITY_TOPIC,
    KEEPALIVE_DEFAULT,
    ClientId,
    format_username,
    validate_keepalive,
)
from device_sdk.tls import build_ssl_context, map_connect_error

log = logging.getLogger(__name__)

#: Refusals that a quick retry cannot fix: reported, then retried at most once per ``cap``.
PERMANENT_ERRORS: tuple[type[DeviceSDKError], ...] = (
    CertificateRejectedError,
    NotAuthorizedError,
    ServerUntrustedError,
    ClockError,
    CredentialError,
    IdentityTimeoutError,
    ConnectionRefusedByServerError,
)

# MQTT 3.1.1 CONNACK return codes as paho 2.x reports them (MQTT 5 reason code values).
_RC_UNSUPPORTED_PROTOCOL = 132
_RC_IDENTIFIER_REJECTED = 133
_RC_BAD_USERNAME_OR_PASSWORD = 134
_RC_NOT_AUTHORIZED = 135
_RC_SERVER_UNAVAILABLE = 136
_V311_CODE = {
    _RC_UNSUPPORTED_PROTOCOL: 1,
    _RC_IDENTIFIER_REJECTED: 2,
    _RC_SERVER_UNAVAILABLE: 3,
    _RC_BAD_USERNAME_OR_PASSWORD: 4,
    _RC_NOT_AUTHORIZED: 5,
}

#: How long a goodbye (DISCONNECT) may take before the socket is closed without it.
_GOODBYE_TIMEOUT = 2.0


class ConnectionState(enum.Enum):
    CONNECTING = "connecting"
    ONLINE = "online"
    """Connected and (unless ``expect_identity=False``) told its identity."""
    OFFLINE = "offline"
    """Not connected; a retry is scheduled."""
    STOPPED = "stopped"


@dataclass(frozen=True, slots=True)
class Message:
    """A message the device received on one of its subscriptions."""

    topic: str
    payload: bytes
    qos: int
    retain: bool


@dataclass(frozen=True, slots=True)
class ConnectTiming:
    """How long the last successful connection took, measured by the client (seconds).

    ``handshake``: TCP connect + TLS handshake; ``connect``: from the start of the attempt until
    CONNACK (handshake included); ``identity``: from CONNACK until the platform's identity
    message (None with ``expect_identity=False``).
    """

    handshake: float
    connect: float
    identity: float | None


MessageCallback = Callable[[Message], None]
IdentityChangedCallback = Callable[[Identity | None, Identity], None]
ConnectionStateCallback = Callable[[ConnectionState, DeviceSDKError | None], None]


class Delivery:
    """Tracks one publish: sent now, or queued while offline and sent after reconnection."""

    def __init__(self, topic: str, qos: int, *, queued: bool) -> None:
        self.topic = topic
        self.qos = qos
        self.queued = queued
        """True when the message waited in the offline queue."""
        self.dropped = False
        """True when the offline queue's policy dropped it (it will never be sent)."""
        self._done = threading.Event()

    @property
    def is_published(self) -> bool:
        """QoS 1: the server acknowledged it (PUBACK); QoS 0: it was written to the socket."""
        return self._done.is_set() and not self.dropped

    def wait(self, timeout: float | None = None) -> bool:
        """Block until published (or dropped); True when published."""
        self._done.wait(timeout)
        return self.is_published

    def _finish(self, *, dropped: bool = False) -> None:
        self.dropped = dropped
        self._done.set()

    def __repr__(self) -> str:
        state = "dropped" if self.dropped else "published" if self._done.is_set() else "pending"
        return f"Delivery(topic={self.topic!r}, qos={self.qos}, {state})"


@dataclass
class _Subscription:
    topic: str
    qos: int
    callback: MessageCallback
    resolved: str | None = None


@dataclass
class _Attempt:
    """What happened during one connection attempt (network thread only)."""

    sent_username: bool
    started: float = 0.0
    handshake_done: bool = False
    handshake_at: float = 0.0
    connack: bool = False
    online: bool = False
    closed: bool = False
    """paho reported the end of this connection (socket closed)."""
    refusal: DeviceSDKError | None = None
    connack_at: float = 0.0


class _LastSocketError(logging.Handler):
    """paho logs socket errors (with the exception object) and returns a bare code; keep the
    object so a TLS alert read after a TLS 1.3 handshake can be mapped to its real meaning.

    paho's records are passed on to the ``device_sdk.paho`` logger at DEBUG level at most: the
    SDK reports the failure itself, with a message that says what to do.
    """

    def __init__(self, forward_to: logging.Logger) -> None:
        super().__init__(logging.DEBUG)
        self.error: BaseException | None = None
        self._forward_to = forward_to

    def emit(self, record: logging.LogRecord) -> None:
        args = record.args if isinstance(record.args, tuple) else ()
        for arg in args:
            if isinstance(arg, BaseException):
                self.error = arg
        if self._forward_to.isEnabledFor(logging.DEBUG):
            self._forward_to.debug("%s", record.getMessage())


class DeviceClient:
    """An MQTT client for one device: mutual TLS, identity, reconnects, offline queue.

    ``server_ca``: file or PEM bytes of the CA that issued the server's certificate; default:
    the one that came with ``credentials`` (credential store), else the system trust store.
    ``server_hostname``: the name the server certificate must carry when it differs from
    ``host`` (e.g. connecting by IP address).
    ``identity_store``: JSON file for the identity (None: keep it in memory only).
    ``keepalive``: 30..1200 s (the platform refuses others). ``client_id``: the id before
    ``|securemode=2|``; default the certificate's SN.
    ``reconnect_base`` / ``reconnect_cap`` / ``stable_period``: the backoff (seconds; see
    :mod:`device_sdk.backoff`). ``offline_queue_size`` / ``offline_drop_policy``: the bounded
    queue for QoS 1 publishes made while offline (``drop-oldest``, ``drop-newest``, ``raise``).
    ``expect_identity``: False for generic brokers (Mosquitto) that never publish an identity;
    relative topics are then used as given while no identity is known.
    ``identity_timeout``: seconds after CONNACK to wait for the identity.
    ``attempt_timeout``: seconds for one attempt's TCP connect + TLS handshake, and again for
    CONNACK.
    ``on_identity_changed(old, new)``: the platform reported an identity other than the known
    one (``old`` is None when the device learns it for the first time); the new one wins and is
    stored.
    ``on_connection_state(state, error)``: every state change; ``error`` says why the device is
    offline (refusals that retrying cannot fix arrive here too, then are retried at the cap).
    ``rng``: a seeded ``random.Random`` makes the backoff reproducible (tests).
    ``network``: the :class:`~device_sdk.network.NetworkDriver` doing the socket I/O; default
    the process's shared epoll thread (:func:`~device_sdk.network.default_driver`). Event-loop
    applications (gevent, ...) pass their own.
    """

    def __init__(
        self,
        host: str,
        port: int,
        credentials: Credentials,
        *,
        server_ca: str | os.PathLike[str] | bytes | None = None,
        server_hostname: str | None = None,
        identity_store: str | os.PathLike[str] | None = None,
        keepalive: int = KEEPALIVE_DEFAULT,
        client_id: str | None = None,
        reconnect_base: float = 1.0,
        reconnect_cap: float = 120.0,
        stable_period: float = 30.0,
        offline_queue_size: int = 1000,
        offline_drop_policy: DropPolicy | str = DropPolicy.DROP_OLDEST,
        expect_identity: bool = True,
        identity_timeout: float = 10.0,
        attempt_timeout: float = 10.0,
        on_identity_changed: IdentityChangedCallback | None = None,
        on_connection_state: ConnectionStateCallback | None = None,
        rng: random.Random | None = None,
        network: NetworkDriver | None = None,
    ) -> None:
        if not 0 < port < 65536:
            raise ValueError(f"port {port} is not a TCP port (1-65535)")
        self.host = host
        self.port = port
        self.credentials = credentials
        self.keepalive = validate_keepalive(keepalive)
        self.client_id = ClientId.for_x509(client_id or credentials.sn)
        self.expect_identity = expect_identity
        self.identity_timeout = identity_timeout
        self.attempt_timeout = attempt_timeout
        self.server_hostname = server_hostname
        self.on_identity_changed = on_identity_changed
        self.on_connection_state = on_connection_state
        self._server_ca = server_ca if server_ca is not None else credentials.server_ca
        self._store = IdentityStore(identity_store) if identity_store is not None else None
        self._backoff = Backoff(
            BackoffPolicy(reconnect_base, reconnect_cap, stable_period), rng=rng
        )
        self._queue = OfflineQueue(offline_queue_size, offline_drop_policy)

        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._state = ConnectionState.STOPPED
        self._identity: Identity | None = self._store.load() if self._store else None
        self._stored_identity = self._identity
        self._last_error: DeviceSDKError | None = None
        self._error_serial = 0
        self._online_serial = 0
        self._subscriptions: dict[str, _Subscription] = {}
        self._skip_username = False
        self._retry_now = False
        self._stop = threading.Event()
        self._fail_fast = False
        self._thread: threading.Thread | None = None
        self._attempt: _Attempt | None = None
        self._last_timing: ConnectTiming | None = None
        self._network = network if network is not None else default_driver()
        self._network_thread: int | None = None

        self._deliveries: dict[int, Delivery] = {}
        self._early_acks: set[int] = set()
        self._delivery_lock = threading.Lock()

        self._mqtt = self._make_paho_client()

    # --- public API ----------------------------------------------------------------------------

    @property
    def identity(self) -> Identity | None:
        """What the platform says this device is (stored from an earlier connection or new)."""
        with self._lock:
            return self._identity

    @property
    def state(self) -> ConnectionState:
        with self._lock:
            return self._state

    @property
    def last_error(self) -> DeviceSDKError | None:
        """The error that ended the most recent connection attempt, if any."""
        with self._lock:
            return self._last_error

    @property
    def offline_queue(self) -> OfflineQueue:
        return self._queue

    @property
    def last_connect_timing(self) -> ConnectTiming | None:
        """Timing of the most recent connection that went online (set before the ONLINE state
        is reported, so ``on_connection_state`` can read it)."""
        with self._lock:
            return self._last_timing

    def start(self) -> None:
        """Connect in the background and stay connected; returns at once.

        Unlike :meth:`connect` it never raises for the server's answer: every attempt's outcome
        arrives through ``on_connection_state`` (ONLINE, or OFFLINE with the error), refusals
        that retrying cannot fix are retried at the backoff cap. Stop with :meth:`disconnect`.
        """
        with self._lock:
            self._fail_fast = False
            self._start()

    def connect(self, timeout: float = 10.0) -> Identity | None:
        """Connect and block until online (identity received); start reconnecting on loss.

        Raises at once on refusals that retrying cannot fix (certificate rejected, not
        authorised, server untrusted, clock, identity not delivered); keeps retrying other
        failures with backoff until ``timeout``, then raises :class:`ConnectTimeoutError` (its
        cause is the last failure). When it raises, the client is stopped.
        Returns the identity (None only with ``expect_identity=False`` and none known).
        """
        self.credentials.check_validity()
        deadline = time.monotonic() + timeout
        with self._lock:
            if self._state is ConnectionState.ONLINE:
                return self._identity
            error_serial = self._error_serial
            online_serial = self._online_serial
            self._fail_fast = True
            self._start()
            first_permanent: DeviceSDKError | None = None
            while True:
                if self._online_serial != online_serial:
                    self._fail_fast = False
                    return self._identity
                if self._error_serial != error_serial:
                    error_serial = self._error_serial
                    err = self._last_error
                    if err is not None and isinstance(err, PERMANENT_ERRORS):
                        first_permanent = err
                        break
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._changed.wait(remaining)
            attempt = self._attempt
            last = self._last_error
            self._fail_fast = False
        self._shutdown()
        if first_permanent is not None:
            raise first_permanent
        if attempt is not None and attempt.connack and self.expect_identity:
            raise IdentityTimeoutError(
                f"connected to {self.host}:{self.port} but the platform did not send this "
                f"device's identity within {timeout:g} s; if this is a generic MQTT broker, "
                f"connect with expect_identity=False"
            )
        detail = f": {last}" if last else ""
        raise ConnectTimeoutError(
            f"could not connect to {self.host}:{self.port} within {timeout:g} s{detail}",
            host=self.host, port=self.port,
        ) from last

    def disconnect(self, timeout: float = 5.0) -> None:
        """Say goodbye (DISCONNECT) and stop the network thread. Queued messages stay queued."""
        self._shutdown(timeout)

    def publish(
        self, topic: str, payload: bytes | bytearray | str = b"", qos: int = 0,
        retain: bool = False,
    ) -> Delivery:
        """Publish; relative topics are resolved to ``/{pk}/{dn}/...``.

        Offline, QoS 1 messages wait in the offline queue (see its drop policy) and QoS 0
        messages raise :class:`NotConnectedError`.
        """
        if qos not in (0, 1):
            raise ValueError(f"QoS {qos} is not supported; the platform accepts QoS 0 and 1")
        if not topic:
            raise ValueError("topic must not be empty")
        data = payload.encode() if isinstance(payload, str) else bytes(payload)
        with self._lock:
            online = self._state is ConnectionState.ONLINE
            resolved = self._resolve(topic) if online else None
        if resolved is not None:
            return self._send(resolved, data, qos, retain)
        if qos == 0:
            raise NotConnectedError(
                f"the device is offline; QoS 0 message to {topic!r} not sent (publish with qos=1 "
                f"to queue it until the connection is back)"
            )
        delivery = Delivery(topic, qos, queued=True)
        dropped = self._queue.put(QueuedMessage(topic, data, qos, retain, tag=delivery))
        if dropped is not None and isinstance(dropped.tag, Delivery):
            log.warning("offline queue full: dropped a message to %r", dropped.topic)
            dropped.tag._finish(dropped=True)
        if self.state is ConnectionState.ONLINE:
            # The client came online between the check above and the put: send it now
            # (paho accepts publishes from any thread; the network thread writes them).
            self._drain()
        return delivery

    def subscribe(self, topic: str, callback: MessageCallback, qos: int = 1) -> None:
        """Receive messages on ``topic`` (relative or absolute, may hold ``+``/``#``).

        Subscriptions are kept and renewed after every reconnection.
        """
        if qos not in (0, 1):
            raise ValueError(f"QoS {qos} is not supported; the platform accepts QoS 0 and 1")
        with self._lock:
            sub = _Subscription(topic, qos, callback)
            self._subscriptions[topic] = sub
            if self._state is ConnectionState.ONLINE:
                sub.resolved = self._resolve(topic)
                self._mqtt.subscribe(sub.resolved, qos)

    def unsubscribe(self, topic: str) -> None:
        with self._lock:
            sub = self._subscriptions.pop(topic, None)
            if sub is not None and sub.resolved and self._state is ConnectionState.ONLINE:
                self._mqtt.unsubscribe(sub.resolved)

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until the offline queue is empty and every QoS 1 publish is acknowledged."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._delivery_lock:
                all_acknowledged = not self._deliveries
            if all_acknowledged and len(self._queue) == 0:
                return True
            time.sleep(0.02)
        return False

    def topic(self, relative: str) -> str:
        """The absolute topic for ``relative`` under this device's identity."""
        with self._lock:
            return self._resolve(relative)

    def __enter__(self) -> DeviceClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.disconnect()

    # --- paho plumbing -------------------------------------------------------------------------

    def _make_paho_client(self) -> mqtt.Client:
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=str(self.client_id),
            clean_session=True,
            protocol=mqtt.MQTTv311,
        )
        client.tls_set_context(
            build_ssl_context(
                self.credentials, self._server_ca, server_hostname=self.server_hostname
            )
        )
        client.connect_timeout = self.attempt_timeout
        client.max_queued_messages_set(0)
        forward_to = logging.getLogger("device_sdk.paho")
        self._socket_error = _LastSocketError(forward_to)
        # A private logger (not registered with logging): it exists to catch paho's socket
        # errors for this client only; DEBUG records only when someone listens for them.
        paho_log = logging.Logger("device_sdk.paho.client")
        paho_log.propagate = False
        paho_log.addHandler(self._socket_error)
        paho_log.setLevel(logging.DEBUG if forward_to.isEnabledFor(logging.DEBUG) else logging.ERROR)
        client.enable_logger(paho_log)
        client.on_connect = self._on_connect
        client.on_message = self._on_message
        client.on_publish = self._on_publish
        client.on_subscribe = self._on_subscribe
        client.on_disconnect = self._on_disconnect
        # The driver installs paho's external-loop socket callbacks: only its thread reads and
        # writes the TLS socket (paho then never writes from the application's thread either).
        self._network.attach(client)
        return client

    def _start(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._run, name=f"iotx509-device-{self.client_id.id}", daemon=True
        )
        self._thread.start()

    def _shutdown(self, timeout: float = 5.0) -> None:
        self._stop.set()
        with self._lock:
            self._changed.notify_all()
        thread = self._thread
        current = threading.current_thread()
        on_network = threading.get_ident() == self._network_thread
        if thread is not None and thread is not current and not on_network:
            # (From a callback on the network thread the goodbye needs that very thread: the
            # connection thread finishes it on its own.)
            thread.join(timeout)
        self._thread = None

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                error = self._session()
                self._backoff.disconnected()
                if self._stop.is_set():
                    break
                if self._retry_now:
                    self._retry_now = False
                    self._set_state(ConnectionState.CONNECTING, error, notify_error=False)
                    continue
                permanent = isinstance(error, PERMANENT_ERRORS)
                if permanent and self._fail_fast:
                    # connect() is waiting: it raises this error and stops the client.
                    self._set_state(ConnectionState.OFFLINE, error)
                    break
                delay = self._backoff.next_delay(permanent=permanent)
                log.warning(
                    "%s:%d: %s; retrying in %.1f s", self.host, self.port, error, delay
                )
                self._set_state(ConnectionState.OFFLINE, error)
                if self._stop.wait(delay):
                    break
        except Exception:  # the network thread must never die silently
            log.exception("device network thread failed")
            raise
        finally:
            self._set_state(ConnectionState.STOPPED, None, notify_error=False)

    def _session(self) -> DeviceSDKError:
        """One connection: connect, wait until it ends, return why it ended."""
        with self._lock:
            identity = self._identity if not self._skip_username else None
        self._set_state(ConnectionState.CONNECTING, None, notify_error=False)
        attempt = _Attempt(sent_username=identity is not None, started=time.monotonic())
        self._attempt = attempt
        self._socket_error.error = None
        self._mqtt.username_pw_set(format_username(identity) if identity else None, None)
        try:
            self.credentials.check_validity()
            # Blocking TCP connect + TLS handshake on this (connection) thread; paho then hands
            # the non-blocking socket to the network driver and queues CONNECT.
            self._mqtt.connect(self.host, self.port, self.keepalive)
        except DeviceSDKError as exc:
            return exc
        except (OSError, ValueError) as exc:
            return map_connect_error(exc, self.host, self.port,
                                     server_hostname=self.server_hostname)
        with self._lock:
            attempt.handshake_done = True
            if not attempt.handshake_at:  # (CONNACK may already be in: then it was set there)
                attempt.handshake_at = time.monotonic()
        ended = self._wait_until_ended(attempt)
        if self._stop.is_set() and not attempt.closed:
            self._goodbye(attempt)
            return NotConnectedError("disconnected by the application")
        if not attempt.closed:
            self._goodbye(attempt)
        if attempt.refusal is not None:
            return attempt.refusal
        if ended is not None:
            return ended
        if self._stop.is_set():
            return NotConnectedError("disconnected by the application")
        cause = self._socket_error.error
        if not attempt.connack:
            return map_connect_error(
                cause or ConnectionResetError("connection closed by the server"),
                self.host, self.port, after_handshake=True,
                server_hostname=self.server_hostname,
            )
        error = ConnectionFailedError(
            f"connection to {self.host}:{self.port} lost"
            + (f" ({cause})" if cause else " (closed by the server)"),
            host=self.host, port=self.port,
        )
        if cause is not None:
            error.__cause__ = cause
        return error

    def _wait_until_ended(self, attempt: _Attempt) -> DeviceSDKError | None:
        """Sleep until the connection closes, the application stops, or a deadline (CONNACK,
        identity) passes; the deadline's error, else None."""
        with self._lock:
            while not attempt.closed and not self._stop.is_set():
                now = time.monotonic()
                deadline: float | None = None
                if not attempt.connack:
                    deadline = attempt.handshake_at + self.attempt_timeout
                    if now >= deadline:
                        return ConnectTimeoutError(
                            f"no CONNACK from {self.host}:{self.port} within "
                            f"{self.attempt_timeout:g} s after the TLS handshake; is this an MQTT "
                            f"server?", host=self.host, port=self.port,
                        )
                elif not attempt.online and self.expect_identity:
                    deadline = attempt.connack_at + self.identity_timeout
                    if now >= deadline:
                        return IdentityTimeoutError(
                            f"connected to {self.host}:{self.port} but the platform did not send "
                            f"this device's identity within {self.identity_timeout:g} s; for a "
                            f"generic MQTT broker use expect_identity=False"
                        )
                self._changed.wait(None if deadline is None else deadline - now)
        return None

    def _goodbye(self, attempt: _Attempt) -> None:
        """Send DISCONNECT (the driver writes it, then paho closes the socket); close the
        socket without it when that does not happen within ``_GOODBYE_TIMEOUT``."""
        if self._mqtt.socket() is None:
            return
        try:
            self._mqtt.disconnect()
        except Exception:  # best effort: the link may already be gone
            pass
        deadline = time.monotonic() + _GOODBYE_TIMEOUT
        with self._lock:
            while not attempt.closed and self._mqtt.socket() is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._changed.wait(remaining)
        # After writing DISCONNECT paho reports the end first and closes the socket right after,
        # on the network thread: let it finish so that the socket is gone when we return.
        while self._mqtt.socket() is not None and time.monotonic() < deadline:
            time.sleep(0.002)
        if self._mqtt.socket() is not None:
            try:
                # paho has no public "close now"; its own close tells the driver first.
                self._mqtt._sock_close()
            except OSError:
                pass

    # --- paho callbacks (network thread) -------------------------------------------------------

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any,
                    properties: Any) -> None:
        self._network_thread = threading.get_ident()
        attempt = self._attempt
        if attempt is None:
            return
        if reason_code.is_failure:
            with self._lock:
                attempt.refusal = self._connack_error(int(reason_code.value), attempt)
                self._changed.notify_all()
            return
        with self._lock:
            attempt.connack = True
            attempt.connack_at = time.monotonic()
            if not attempt.handshake_at:
                attempt.handshake_at = attempt.connack_at
            self._changed.notify_all()
        log.info("%s:%d accepted the connection (client id %s)", self.host, self.port,
                 self.client_id)
        if not self.expect_identity:
            self._go_online(attempt)

    def _connack_error(self, value: int, attempt: _Attempt) -> DeviceSDKError:
        code = _V311_CODE.get(value, value)
        where = f"{self.host}:{self.port}"
        if value in (_RC_NOT_AUTHORIZED, _RC_BAD_USERNAME_OR_PASSWORD) and attempt.sent_username:
            # The stored identity may be stale (the platform re-associated the certificate):
            # retry at once with an empty username and let the platform tell us who we are.
            log.warning("%s refused the stored identity as username (CONNACK %d); retrying "
                        "without it", where, code)
            self._skip_username = True
            self._retry_now = True
        if value == _RC_NOT_AUTHORIZED:
            return NotAuthorizedError(
                f"the server at {where} accepted the TLS handshake but refused the device (CONNACK "
                f"5, not authorised): is this certificate's SN ({self.credentials.sn}) associated "
                f"with a device, and is that device enabled?",
                host=self.host, port=self.port,
            )
        if value == _RC_BAD_USERNAME_OR_PASSWORD:
            return ConnectionRefusedByServerError(
                f"the server at {where} refused the username (CONNACK 4): the stored identity "
                f"does not match this certificate",
                code=4, host=self.host, port=self.port,
            )
        if value == _RC_IDENTIFIER_REJECTED:
            return ConnectionRefusedByServerError(
                f"the server at {where} rejected the client id {str(self.client_id)!r} or the "
                f"keep-alive {self.keepalive} s (CONNACK 2, identifier rejected)",
                code=2, host=self.host, port=self.port,
            )
        if value == _RC_SERVER_UNAVAILABLE:
            return ConnectionFailedError(
                f"the server at {where} is unavailable (CONNACK 3); will retry",
                host=self.host, port=self.port,
            )
        return ConnectionRefusedByServerError(
            f"the server at {where} refused the connection (CONNACK {code})",
            code=code, host=self.host, port=self.port,
        )

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any,
                       properties: Any) -> None:
        """The socket is closed (by either side, or a keep-alive timeout): the session ends."""
        attempt = self._attempt
        if attempt is None:
            return
        with self._lock:
            attempt.closed = True
            self._changed.notify_all()

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        self._network_thread = threading.get_ident()
        if msg.topic == IDENTITY_TOPIC:
            self._on_identity(bytes(msg.payload))
            return
        message = Message(msg.topic, bytes(msg.payload), msg.qos, bool(msg.retain))
        with self._lock:
            targets = [s for s in self._subscriptions.values()
                       if s.resolved and mqtt.topic_matches_sub(s.resolved, msg.topic)]
        for sub in targets:
            try:
                sub.callback(message)
            except Exception:
                log.exception("message callback for %r failed", sub.topic)

    def _on_identity(self, payload: bytes) -> None:
        try:
            new = Identity.from_json(payload)
        except InvalidNameError as exc:
            log.warning("ignored a malformed identity message from the server: %s", exc)
            return
        with self._lock:
            old = self._identity
            self._identity = new
            self._skip_username = False
            if old is not None and old != new:
                # Relative subscriptions move to the new identity's topics.
                for sub in self._subscriptions.values():
                    if sub.resolved and self._state is ConnectionState.ONLINE:
                        self._mqtt.unsubscribe(sub.resolved)
                        sub.resolved = None
        if self._store is not None and new != self._stored_identity:
            try:
                self._store.save(new)
                self._stored_identity = new
            except IdentityStoreError as exc:
                log.error("%s", exc)
        if old is not None and old != new:
            log.warning("the platform reports a new identity for this device: %s/%s -> %s/%s",
                        old.product_key, old.device_name, new.product_key, new.device_name)
            self._call_user(self.on_identity_changed, old, new)
        elif old is None and self.on_identity_changed is not None:
            self._call_user(self.on_identity_changed, None, new)
        attempt = self._attempt
        if attempt is not None and attempt.connack:
            if attempt.online:
                self._resubscribe()
            else:
                self._go_online(attempt)

    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int, reason_code: Any,
                    properties: Any) -> None:
        with self._delivery_lock:
            delivery = self._deliveries.pop(mid, None)
            if delivery is None:
                self._early_acks.add(mid)
                return
        delivery._finish()

    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int,
                      reason_codes: list[Any], properties: Any) -> None:
        for rc in reason_codes:
            if rc.is_failure:
                log.warning("the server refused a subscription (mid %d): devices may only "
                            "subscribe under /{productKey}/{deviceName}/ and /sys/...", mid)

    # --- online ------------------------------------------------------------------------------------

    def _go_online(self, attempt: _Attempt) -> None:
        now = time.monotonic()
        attempt.online = True
        self._backoff.connected()
        self._resubscribe()
        with self._lock:
            self._last_timing = ConnectTiming(
                handshake=attempt.handshake_at - attempt.started,
                connect=attempt.connack_at - attempt.started,
                identity=now - attempt.connack_at if self.expect_identity else None,
            )
            self._online_serial += 1
        self._set_state(ConnectionState.ONLINE, None, notify_error=False)
        self._drain()

    def _resubscribe(self) -> None:
        with self._lock:
            for sub in self._subscriptions.values():
                try:
                    sub.resolved = self._resolve(sub.topic)
                except NotConnectedError:
                    continue
                self._mqtt.subscribe(sub.resolved, sub.qos)

    def _drain(self) -> None:
        """Send what waited in the offline queue (network thread, once online)."""
        while True:
            with self._lock:
                if self._state is not ConnectionState.ONLINE:
                    return
            item = self._queue.pop()
            if item is None:
                return
            with self._lock:
                resolved = self._resolve(item.topic)
            delivery = item.tag if isinstance(item.tag, Delivery) else None
            self._send(resolved, item.payload, item.qos, item.retain, delivery)

    def _send(self, topic: str, payload: bytes, qos: int, retain: bool,
              delivery: Delivery | None = None) -> Delivery:
        delivery = delivery or Delivery(topic, qos, queued=False)
        info = self._mqtt.publish(topic, payload, qos=qos, retain=retain)
        if info.rc == MQTTErrorCode.MQTT_ERR_NO_CONN and qos == 0:
            delivery._finish(dropped=True)
            return delivery
        with self._delivery_lock:
            if info.mid in self._early_acks:
                self._early_acks.discard(info.mid)
                done = True
            else:
                self._deliveries[info.mid] = delivery
                done = False
        if done:
            delivery._finish()
        return delivery

    def _resolve(self, topic: str) -> str:
        if topic.startswith("/"):
            return topic
        if self._identity is not None:
            return self._identity.topic(topic)
        if not self.expect_identity:
            return topic
        raise NotConnectedError(
            f"relative topic {topic!r} needs the device's identity; connect first or use an "
            f"absolute topic"
        )

    # --- state and callbacks -------------------------------------------------------------------

    def _set_state(self, state: ConnectionState, error: DeviceSDKError | None, *,
                   notify_error: bool = True) -> None:
        with self._lock:
            changed = state is not self._state or (error is not None and notify_error)
            self._state = state
            if error is not None and notify_error:
                self._last_error = error
                self._error_serial += 1
            self._changed.notify_all()
        if changed:
            self._call_user(self.on_connection_state, state, error if notify_error else None)

    def _call_user(self, callback: Callable[..., None] | None, *args: Any) -> None:
        if callback is None:
            return
        try:
            callback(*args)
        except Exception:
            log.exception("application callback %r failed", callback)

