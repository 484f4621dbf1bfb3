"""``DeviceLink``: one simulated device's MQTT connection over mutual TLS, on gevent's hub.

Why the simulator has its own connection (and no longer runs the SDK's ``DeviceClient`` per
device): a Locust worker holds thousands of devices in one process. ``DeviceClient`` is built
for one device per process -- a connection thread (a greenlet under Locust), locks, a paho client
with its queues and logger, parsed ``cryptography`` objects -- and cost 110.8 KiB per device; a
link keeps only what a connected device needs:

- no greenlet while online: reading is a callback of gevent's hub on the socket (an ``io``
  watcher); a short-lived greenlet exists only while an attempt connects or waits to retry;
- TLS straight on the socket, an ``ssl.SSLSocket`` in non-blocking mode read and written by the
  hub's callbacks (memory BIOs, as asyncio uses, cost 4.5 KiB more per connection);
- the device's certificate in a context shared by every device (:mod:`simulator.device_tls`);
- the attempt's logic is the SDK's, not a copy: :class:`~device_sdk.attempt.Attempt` (deadlines,
  CONNACK, identity), :class:`~device_sdk.reconnect.Reconnector` (full-jitter backoff, stale
  username, take-over), :class:`~device_sdk.refusals.Refusals` (every error message);
- TLS session resumption like the SDK: the last ``ssl.SSLSession`` is kept and offered on the
  next connection (``session=``), so a device returning after a blip costs the server a resumed
  handshake when the server issued a ticket (the session is read when the connection ends: a
  copy held while online would cost ~5 KiB per device);
- keep-alive PINGREQs for every link of the process from one greenlet (:class:`_KeepAlive`).

Runs under gevent only (Locust, or ``gevent.monkey.patch_all()``): every method is called from
greenlets or the hub of one thread, so nothing is locked.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import ssl
import time
from collections.abc import Callable

import gevent
from gevent.event import AsyncResult, Event
from gevent.hub import get_hub
from gevent.lock import BoundedSemaphore
from gevent.monkey import get_original
from gevent.socket import wait_read, wait_write
from paho.mqtt.client import topic_matches_sub

from device_sdk.attempt import (
    Attempt,
    AttemptSettings,
    AttemptState,
    Closed,
    Connack,
    ConnectTiming,
    Failed,
    IdentityReceived,
    Tick,
    TlsOk,
)
from device_sdk.client import ConnectionState
from device_sdk.errors import DeviceSDKError, InvalidNameError, NotConnectedError
from device_sdk.identity import Identity
from device_sdk.platform import IDENTITY_TOPIC, format_username
from device_sdk.reconnect import Reconnector
from device_sdk.refusals import Refusals
from simulator import mqtt_wire
from simulator.device_tls import DeviceTls
from simulator.errors import SimulatorError
from simulator.options import MAX_CONNECTING

log = logging.getLogger(__name__)

StateCallback = Callable[[ConnectionState, DeviceSDKError | None], None]
MessageCallback = Callable[[bytes], None]

_READ, _WRITE = 1, 2
_CHUNK = 16384
#: The standard library's socket class even under gevent's monkey-patching: the link waits on
#: the hub itself (the TLS socket wrapping it is gevent's, used non-blocking).
_Socket = get_original("socket", "socket")
_ADDRESSES: dict[tuple[str, int], tuple[int, tuple[object, ...]]] = {}
_GATE: list[BoundedSemaphore] = [BoundedSemaphore(MAX_CONNECTING)]


def set_max_connecting(count: int) -> None:
    """How many attempts of this process may be connecting at once (until CONNACK or failure);
    the rest wait their turn. A server bounds unauthenticated connections per source address,
    and a Locust worker is one address."""
    if count < 1:
        raise SimulatorError(f"--max-connecting must be >= 1, not {count}")
    _GATE[0] = BoundedSemaphore(count)


def _address(host: str, port: int) -> tuple[int, tuple[object, ...]]:
    """The first address of ``host`` (resolved once per process: a fleet has one endpoint)."""
    key = (host, port)
    found = _ADDRESSES.get(key)
    if found is None:
        family, _type, _proto, _name, sockaddr = socket.getaddrinfo(
            host, port, 0, socket.SOCK_STREAM
        )[0]
        found = _ADDRESSES[key] = (int(family), tuple(sockaddr))
    return found


class DeviceLink:
    """Connect, stay connected (the SDK's backoff), publish QoS 0/1, receive, resume TLS."""

    __slots__ = (
        "_acks",
        "_attempt",
        "_greenlet",
        "_identity",
        "_last_out",
        "_next_id",
        "_on_state",
        "_parser",
        "_pending",
        "_ping_sent",
        "_reader",
        "_reconnect",
        "_refusals",
        "_session",
        "_settings",
        "_subs",
        "_tls",
        "_tls_files",
        "_wake",
        "_writer",
        "client_id",
        "closing",
        "handshakes",
        "host",
        "keepalive",
        "last_error",
        "last_timing",
        "port",
        "resumed",
        "server_hostname",
        "state",
    )

    def __init__(
        self,
        host: str,
        port: int,
        tls: DeviceTls,
        client_id: str,
        *,
        keepalive: int,
        settings: AttemptSettings,
        refusals: Refusals,
        reconnect: Reconnector,
        on_state: StateCallback,
        server_hostname: str | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.client_id = client_id
        self.keepalive = keepalive
        self.server_hostname = server_hostname or host
        self.state = ConnectionState.STOPPED
        self.last_error: DeviceSDKError | None = None
        self.last_timing: ConnectTiming | None = None
        self.closing = False
        self.handshakes = 0
        """Completed TLS handshakes."""
        self.resumed = 0
        """Of those, how many resumed the previous TLS session."""
        self._tls_files = tls
        self._settings = settings
        self._refusals = refusals
        self._reconnect = reconnect
        self._on_state = on_state
        self._identity: Identity | None = None
        self._session: ssl.SSLSession | None = None
        self._attempt: Attempt | None = None
        self._greenlet: gevent.Greenlet | None = None
        self._wake: Event | None = None
        self._tls: ssl.SSLSocket | None = None
        self._parser: mqtt_wire.Parser | None = None
        self._reader: object | None = None
        self._writer: object | None = None
        self._pending: list[bytes] | None = None
        self._acks: dict[int, AsyncResult] = {}
        self._subs: list[tuple[str, int, MessageCallback]] = []
        self._next_id = 0
        self._last_out = 0.0
        self._ping_sent: float | None = None

    # --- public --------------------------------------------------------------------------------

    @property
    def identity(self) -> Identity | None:
        return self._identity

    @property
    def online(self) -> bool:
        return self.state is ConnectionState.ONLINE

    def fileno(self) -> int | None:
        """The connection's file descriptor (None while not connected)."""
        return self._tls.fileno() if self._tls is not None else None

    def start(self) -> None:
        """Connect in the background (a greenlet until online) and reconnect after losses."""
        self.closing = False
        if self._greenlet is None or self._greenlet.dead:
            self._greenlet = gevent.spawn(self._run, None)

    def close(self) -> None:
        """Stop reconnecting; say goodbye (DISCONNECT) when connected; close the socket."""
        self.closing = True
        greenlet, self._greenlet = self._greenlet, None
        if greenlet is not None and greenlet is not gevent.getcurrent():
            greenlet.kill(block=False)
        if self.state is ConnectionState.ONLINE:
            self._send(mqtt_wire.DISCONNECT_BYTES)  # best effort: written now or never
        self._close_socket(NotConnectedError("disconnected by the application"))
        self._set_state(ConnectionState.STOPPED, None)

    def subscribe(self, topic: str, qos: int, callback: MessageCallback) -> None:
        """``topic`` (relative topics resolve under the identity) is (re)subscribed whenever the
        device comes online; ``callback(payload)`` runs in a greenlet of its own."""
        self._subs.append((topic, qos, callback))
        if self.online:
            self._subscribe_one(topic, qos)

    def publish(self, topic: str, payload: bytes, qos: int, timeout: float) -> None:
        """Send; for QoS 1 wait (this greenlet) until the PUBACK. Offline: NotConnectedError."""
        if not self.online:
            cause = f" ({self.last_error})" if self.last_error else ""
            raise NotConnectedError(f"the device is offline{cause}")
        resolved = self.resolve(topic)
        if qos == 0:
            if not self._send(mqtt_wire.publish(resolved, payload, 0)):
                raise NotConnectedError(f"the connection ended ({self.last_error})")
            return
        packet_id = self._packet_id()
        waiter: AsyncResult = AsyncResult()
        self._acks[packet_id] = waiter
        try:
            self._send(mqtt_wire.publish(resolved, payload, 1, packet_id))  # a loss sets waiter
            outcome = waiter.get(timeout=timeout)
        except gevent.Timeout as exc:
            raise NotConnectedError(f"no PUBACK within {timeout:g} s") from exc
        finally:
            self._acks.pop(packet_id, None)
        if isinstance(outcome, BaseException):
            raise outcome

    def resolve(self, topic: str) -> str:
        """Relative topics live under the identity (as the SDK resolves them)."""
        if topic.startswith("/") or self._identity is None:
            return topic
        return self._identity.topic(topic)

    # --- the connecting greenlet ---------------------------------------------------------------

    def _run(self, previous: Attempt | None) -> None:
        """Retry after ``previous`` (the backoff), then attempt until one comes online."""
        attempt = previous
        try:
            while not self.closing:
                if attempt is not None:
                    step = self._reconnect.after(attempt, fail_fast=False)
                    if step.report:
                        log.debug("%s: %s; retrying in %.1f s", self.host, step.error, step.delay)
                        self._set_state(ConnectionState.OFFLINE, step.error)
                    if step.delay:
                        gevent.sleep(step.delay)
                    if self.closing:
                        return
                with _GATE[0]:
                    attempt = self._attempt_once()
                if attempt.state is AttemptState.ONLINE:
                    self._go_online(attempt)
                    return
        finally:
            if self._greenlet is gevent.getcurrent():
                self._greenlet = None

    def _attempt_once(self) -> Attempt:
        started = time.monotonic()
        username = self._reconnect.username(self._identity)
        attempt = Attempt(
            self._settings, self._refusals, started=started, sent_username=username is not None
        )
        self._attempt = attempt
        self._set_state(ConnectionState.CONNECTING, None)
        try:
            self._open(started + self._settings.attempt_timeout)
        except (OSError, ValueError, DeviceSDKError) as exc:  # ssl.SSLError is an OSError
            self._close_socket(None)
            attempt.handle(Failed(exc, time.monotonic()))
            return attempt
        except BaseException:
            self._close_socket(None)
            raise
        attempt.handle(TlsOk(time.monotonic()))
        wake = self._wake = Event()
        try:
            self._start_reading()
            self._send(
                mqtt_wire.connect(
                    self.client_id, self.keepalive, format_username(username) if username else None
                )
            )
            while attempt.state not in (AttemptState.ONLINE, AttemptState.ENDED):
                deadline = attempt.deadline
                wake.clear()
                if not wake.wait(
                    None if deadline is None else max(0.0, deadline - time.monotonic())
                ):
                    attempt.handle(Tick(time.monotonic()))
        except (OSError, ssl.SSLError) as exc:
            attempt.handle(Closed(time.monotonic(), exc))
        except BaseException:
            self._close_socket(None)
            raise
        finally:
            self._wake = None
        if attempt.state is AttemptState.ENDED:
            self._close_socket(attempt.error)
        return attempt

    def _open(self, deadline: float) -> None:
        """TCP connect and the TLS handshake (this greenlet waits; nothing else does)."""
        family, address = _address(self.host, self.port)
        sock = _Socket(family, socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            code = sock.connect_ex(address)
            if code not in (0, errno.EINPROGRESS):
                raise OSError(code, os.strerror(code))
            if code:
                wait_write(sock.fileno(), timeout=_remaining(deadline))
                code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if code:
                    raise OSError(code, os.strerror(code))
            tls = self._tls_files.wrap(
                sock, server_hostname=self.server_hostname, session=self._session
            )
        except BaseException:
            sock.close()
            raise
        self._tls = tls
        while True:
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                wait_read(tls.fileno(), timeout=_remaining(deadline))
            except ssl.SSLWantWriteError:
                wait_write(tls.fileno(), timeout=_remaining(deadline))
        self.handshakes += 1
        if tls.session_reused:
            self.resumed += 1
        self._parser = mqtt_wire.Parser()

    def _go_online(self, attempt: Attempt) -> None:
        self.last_timing = attempt.timing()
        self._session = None  # this connection's SSL holds its session; taken when it ends
        self._reconnect.online()
        for topic, qos, _callback in self._subs:
            self._subscribe_one(topic, qos)
        _KeepAlive.shared().add(self)
        self._set_state(ConnectionState.ONLINE, None)

    # --- the hub's callbacks (never block, never switch) ---------------------------------------

    def _start_reading(self) -> None:
        assert self._tls is not None
        reader = get_hub().loop.io(self._tls.fileno(), _READ)
        reader.start(self._on_readable)
        self._reader = reader

    def _on_readable(self) -> None:
        tls = self._tls
        if tls is None:
            return
        plain: list[bytes] = []
        error: BaseException | None = None
        ended = False
        try:
            while True:
                chunk = tls.recv(_CHUNK)
                if not chunk:
                    ended = True
                    break
                plain.append(chunk)
        except (ssl.SSLWantReadError, BlockingIOError, InterruptedError):
            pass
        except ssl.SSLWantWriteError:
            self._arm_writer()  # (TLS wants to write before it reads on)
        except OSError as exc:  # ssl.SSLError included
            error = exc
        if self._pending:
            self._flush()
        parser = self._parser
        if plain and parser is not None:
            try:
                for packet in parser.feed(b"".join(plain)):
                    self._on_packet(packet)
            except mqtt_wire.ServerPacketError as exc:
                error = error or exc
        if error is not None or ended:
            self._lost(error)

    def _on_writable(self) -> None:
        self._flush()

    def _on_packet(self, packet: mqtt_wire.Packet) -> None:
        if isinstance(packet, mqtt_wire.Publish):
            if packet.packet_id is not None:
                self._send(mqtt_wire.puback(packet.packet_id))
            if packet.topic == IDENTITY_TOPIC:
                self._on_identity(packet.payload)
            else:
                for pattern, callback in self._matching(packet.topic):
                    log.debug("message on %s for %s", packet.topic, pattern)
                    gevent.spawn(callback, packet.payload)
        elif isinstance(packet, mqtt_wire.Ack):
            if packet.kind == mqtt_wire.PUBACK:
                waiter = self._acks.pop(packet.packet_id, None)
                if waiter is not None:
                    waiter.set(True)
            elif packet.kind == mqtt_wire.SUBACK and b"\x80" in packet.codes:
                log.warning(
                    "%s refused a subscription of %s: devices may only subscribe under "
                    "/{productKey}/{deviceName}/ and /sys/...",
                    self._refusals.where,
                    self.client_id,
                )
        elif isinstance(packet, mqtt_wire.Connack):
            self._feed(Connack(packet.code, time.monotonic()))
        else:
            self._ping_sent = None

    def _on_identity(self, payload: bytes) -> None:
        try:
            new = Identity.from_json(payload)
        except InvalidNameError as exc:
            log.warning("ignored a malformed identity message from the server: %s", exc)
            return
        old, self._identity = self._identity, new
        self._reconnect.identity_received()
        attempt = self._attempt
        if attempt is not None and attempt.state is AttemptState.AWAIT_IDENTITY:
            self._feed(IdentityReceived(time.monotonic()))
        elif self.online and old != new:
            for topic, qos, _callback in self._subs:
                self._subscribe_one(topic, qos)  # a new identity: its topics

    def _matching(self, topic: str) -> list[tuple[str, MessageCallback]]:
        found = []
        for pattern, _qos, callback in self._subs:
            resolved = self.resolve(pattern)
            if topic_matches_sub(resolved, topic):
                found.append((resolved, callback))
        return found

    def _feed(self, event: Connack | IdentityReceived | Closed) -> None:
        attempt = self._attempt
        if attempt is None:
            return
        attempt.handle(event)
        if self._wake is not None:
            self._wake.set()

    def _lost(self, cause: BaseException | None) -> None:
        """The socket failed or closed: end the attempt; once online, start reconnecting."""
        if self._tls is None:
            return
        attempt = self._attempt
        was_online = self.online
        if was_online and self._tls is not None and not isinstance(cause, ssl.SSLError):
            # Kept for the next connection (resumption). Taken only now: a copy held while
            # online costs ~5 KiB per device. The socket ended under TLS, not TLS itself (a
            # TLS alert makes OpenSSL mark the session not resumable), so it is still valid.
            self._session = self._tls.session
        self._close_socket(self._refusals.lost(cause))
        if attempt is None:
            return
        attempt.handle(Closed(time.monotonic(), cause))
        if self._wake is not None:
            self._wake.set()  # the connecting greenlet ends the attempt
        elif was_online and not self.closing:
            self._greenlet = gevent.spawn(self._run, attempt)

    # --- sending -------------------------------------------------------------------------------

    def _send(self, data: bytes) -> bool:
        """Encrypt and write ``data`` (never blocks); False when the connection is gone."""
        if self._tls is None:
            return False
        if self._pending is None:
            self._pending = [data]
        else:
            self._pending.append(data)
        self._last_out = time.monotonic()
        self._flush()
        return self._tls is not None

    def _flush(self) -> None:
        """Write the pending messages; what the socket does not take now waits for a write
        watcher. A message TLS could not write is offered again as the same object (OpenSSL
        requires the retry to pass the same buffer)."""
        tls, pending = self._tls, self._pending
        if tls is None or not pending:
            return
        try:
            while pending:
                tls.send(pending[0])  # whole records: OpenSSL writes all or reports a retry
                pending.pop(0)
        except (ssl.SSLWantWriteError, BlockingIOError):
            self._arm_writer()
            return
        except ssl.SSLWantReadError:
            return  # retried after the next read
        except OSError as exc:  # ssl.SSLError included
            self._lost(exc)
            return
        self._pending = None
        if self._writer is not None:
            self._stop_watcher(self._writer)
            self._writer = None

    def _arm_writer(self) -> None:
        if self._writer is None and self._tls is not None:
            writer = get_hub().loop.io(self._tls.fileno(), _WRITE)
            writer.start(self._on_writable)
            self._writer = writer

    def _subscribe_one(self, topic: str, qos: int) -> None:
        self._send(mqtt_wire.subscribe(self._packet_id(), self.resolve(topic), qos))

    def _packet_id(self) -> int:
        self._next_id = self._next_id % 65535 + 1
        return self._next_id

    # --- keep-alive ----------------------------------------------------------------------------

    def keepalive_due(self, now: float) -> None:
        """Called about once a second while online: PINGREQ when idle, loss when unanswered."""
        if self._tls is None:
            return
        if self._ping_sent is not None and now - self._ping_sent >= self.keepalive:
            self._lost(TimeoutError(f"no PINGRESP within the keep-alive ({self.keepalive} s)"))
        elif now - self._last_out >= self.keepalive:
            self._ping_sent = now
            self._send(mqtt_wire.PINGREQ_BYTES)

    # --- state ---------------------------------------------------------------------------------

    def _close_socket(self, error: DeviceSDKError | None) -> None:
        """Forget the connection: watchers, socket, TLS state; waiting publishes fail."""
        _KeepAlive.shared().discard(self)
        for watcher in (self._reader, self._writer):
            if watcher is not None:
                self._stop_watcher(watcher)
        self._reader = self._writer = None
        if self._tls is not None:
            self._tls.close()
        self._tls = self._parser = None
        self._pending = None
        self._ping_sent = None
        if self._acks:
            failure = error or NotConnectedError("the connection ended")
            acks, self._acks = self._acks, {}
            for waiter in acks.values():
                waiter.set(failure)
        if self.state is ConnectionState.ONLINE:
            self.state = ConnectionState.OFFLINE

    @staticmethod
    def _stop_watcher(watcher: object) -> None:
        watcher.stop()  # type: ignore[attr-defined]
        watcher.close()  # type: ignore[attr-defined]

    def _set_state(self, state: ConnectionState, error: DeviceSDKError | None) -> None:
        changed = state is not self.state or error is not None
        self.state = state
        if error is not None:
            self.last_error = error
        if changed:
            try:
                self._on_state(state, error)
            except Exception:
                log.exception("connection state callback failed")


def _remaining(deadline: float) -> float:
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise TimeoutError("timed out")
    return remaining


class _KeepAlive:
    """One greenlet for the keep-alive of every online link of the process."""

    _shared: _KeepAlive | None = None

    def __init__(self, interval: float = 1.0) -> None:
        self.interval = interval
        self.links: set[DeviceLink] = set()
        self._greenlet: gevent.Greenlet | None = None

    @classmethod
    def shared(cls) -> _KeepAlive:
        if cls._shared is None:
            cls._shared = cls()
        return cls._shared

    def add(self, link: DeviceLink) -> None:
        self.links.add(link)
        if self._greenlet is None or self._greenlet.dead:
            self._greenlet = gevent.spawn(self._loop)

    def discard(self, link: DeviceLink) -> None:
        self.links.discard(link)

    def _loop(self) -> None:
        while self.links:
            gevent.sleep(self.interval)
            now = time.monotonic()
            for link in list(self.links):
                link.keepalive_due(now)
