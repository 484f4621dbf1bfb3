"""``DeviceClient``: an MQTT device that authenticates with its X.509 certificate.

It wraps paho-mqtt 2.x (callback API version 2) and adds what devices of a private-CA platform
need and paho does not do:

- **Identity**: after CONNACK the platform publishes ``{"productKey", "deviceName"}`` to
  ``/ext/auth/identity/response`` without a subscription. The client takes it, exposes it as
  :attr:`DeviceClient.identity`, persists it (bound to this certificate), sends
  ``DeviceName&ProductKey`` as username next time, and resolves relative topics
  (``user/update`` -> ``/{pk}/{dn}/user/update``).
- **Errors that say what to do**: every refusal is mapped once, in :mod:`device_sdk.refusals`.
- **Its own reconnect loop** (paho's doubling without jitter causes reconnect storms):
  :mod:`device_sdk.reconnect` decides, with the full-jitter :mod:`device_sdk.backoff`.
- **An offline queue** for QoS 1 publishes, and delivery tracking (:mod:`device_sdk.delivery`).

This module is the I/O shell around sans-IO parts: one connection attempt is the state machine
:class:`~device_sdk.attempt.Attempt`, fed the events paho reports; between attempts
:class:`~device_sdk.reconnect.Reconnector` decides; subscriptions (:mod:`device_sdk.subscriptions`)
and the paho set-up (:mod:`device_sdk.paho_glue`) live apart. Why it is still over 500 lines: a
third of it is the public API's documentation, and what remains is the one place where threads,
the lock and paho's callbacks meet -- splitting that further would spread the locking rules
over several files.

Threads: socket I/O is done by a network driver (:mod:`device_sdk.network`), by default one
thread with one epoll selector shared by every client of the process. paho's callbacks, hence
the application's ``on_message`` and ``on_identity_changed``, run on that network thread and must
not block (a slow callback delays every client of the driver). Each client also has a
connection thread that makes the blocking TCP connect + TLS handshake, watches the attempt's
deadlines (CONNACK, identity) and sleeps through the backoff; ``on_connection_state`` runs there,
or on the network thread for ONLINE. ``publish``/``subscribe``/``disconnect`` may be called from
any thread (also from a callback).
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
from typing import Any, Protocol

import paho.mqtt.client as mqtt
from paho.mqtt.enums import MQTTErrorCode

from device_sdk import delivery as _delivery
from device_sdk.attempt import (
    Attempt,
    AttemptSettings,
    AttemptState,
    Closed,
    Connack,
    ConnectTiming,
    Event,
    Failed,
    IdentityReceived,
    Stop,
    Tick,
    TlsOk,
)
from device_sdk.backoff import Backoff, BackoffPolicy
from device_sdk.credentials import Credentials
from device_sdk.defaults import (
    DEFAULT_ATTEMPT_TIMEOUT,
    DEFAULT_IDENTITY_TIMEOUT,
    DEFAULT_KEEPALIVE,
    DEFAULT_OFFLINE_QUEUE_SIZE,
    DEFAULT_RECONNECT_BASE,
    DEFAULT_RECONNECT_CAP,
    DEFAULT_STABLE_PERIOD,
)
from device_sdk.delivery import Deliveries, Delivery
from device_sdk.errors import (
    DeviceSDKError,
    IdentityStoreError,
    InvalidNameError,
    NotConnectedError,
)
from device_sdk.identity import Identity
from device_sdk.identity_store import IdentityStore
from device_sdk.network import NetworkDriver, default_driver
from device_sdk.offline_queue import DropPolicy, OfflineQueue, QueuedMessage
from device_sdk.paho_glue import new_paho_client
from device_sdk.platform import IDENTITY_TOPIC, ClientId, format_username, validate_keepalive
from device_sdk.reconnect import Reconnector
from device_sdk.refusals import PERMANENT_ERRORS, SDK_HINTS, HintNames, Refusals, connack_code
from device_sdk.renewal_expiry import ExpiryNotice, ExpiryWatch, Validity
from device_sdk.subscriptions import Message, MessageCallback, Subscriptions, deliver
from device_sdk.tls import DeviceTLSContext, build_ssl_context

log = logging.getLogger(__name__)

#: How long a goodbye (DISCONNECT) may take before the socket is closed without it.
_GOODBYE_TIMEOUT = 2.0


class ConnectionState(enum.Enum):
    CONNECTING = "connecting"
    ONLINE = "online"
    """Connected and (unless ``expect_identity=False``) told its identity."""
    OFFLINE = "offline"
    """Not connected; a retry is scheduled."""
    STOPPED = "stopped"


IdentityChangedCallback = Callable[[Identity | None, Identity], None]
ConnectionStateCallback = Callable[[ConnectionState, DeviceSDKError | None], None]
CertificateExpiringCallback = Callable[[Credentials, float], None]
MessageHook = Callable[[str, bytes], bool]
"""Sees every incoming message first (network thread); True: consumed (renewal replies)."""
AttemptHook = Callable[[DeviceSDKError | None], None]
"""Told how each attempt ended (connection thread), before the client decides what is next:
it may call :meth:`DeviceClient.use_credentials` to connect again at once with another pair."""


class RenewalHook(Protocol):
    """What the client asks of an attached renewal (:mod:`device_sdk.renewal_manager`)."""

    def renew_now(self) -> None: ...


@dataclass
class _ConnectWaiter:
    """A ``connect()`` call waiting: the loop stops at a permanent refusal and hands it over."""

    online: bool = False
    error: DeviceSDKError | None = None


class DeviceClient:
    """An MQTT client for one device: mutual TLS, identity, reconnects, offline queue.

    ``server_ca``: file or PEM bytes of the CA that issued the server's certificate; default:
    the one that came with ``credentials`` (credential store), else the system trust store.
    ``server_hostname``: the name the server certificate must carry when it differs from
    ``host`` (e.g. connecting by IP address).
    ``identity_store``: JSON file for the identity (None: keep it in memory only); it records
    the certificate it belongs to, and an identity stored for another certificate is ignored.
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
    ``hints``: how error messages name the settings to change (default: these keywords;
    the ``iotx509`` command passes its flags, :data:`~device_sdk.refusals.CLI_HINTS`).
    ``on_certificate_expiring(credentials, days_left)``: the certificate has less than 20% of
    its validity left and no renewal is attached (:mod:`device_sdk.renewal_manager`); also
    logged as a warning, once per certificate. When the certificate expires the session is
    ended and the client refuses to connect with it (``ClockError``).
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
        keepalive: int = DEFAULT_KEEPALIVE,
        client_id: str | None = None,
        reconnect_base: float = DEFAULT_RECONNECT_BASE,
        reconnect_cap: float = DEFAULT_RECONNECT_CAP,
        stable_period: float = DEFAULT_STABLE_PERIOD,
        offline_queue_size: int = DEFAULT_OFFLINE_QUEUE_SIZE,
        offline_drop_policy: DropPolicy | str = DropPolicy.DROP_OLDEST,
        expect_identity: bool = True,
        identity_timeout: float = DEFAULT_IDENTITY_TIMEOUT,
        attempt_timeout: float = DEFAULT_ATTEMPT_TIMEOUT,
        on_identity_changed: IdentityChangedCallback | None = None,
        on_connection_state: ConnectionStateCallback | None = None,
        rng: random.Random | None = None,
        network: NetworkDriver | None = None,
        hints: HintNames = SDK_HINTS,
        on_certificate_expiring: CertificateExpiringCallback | None = None,
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
        self.on_certificate_expiring = on_certificate_expiring
        self._explicit_client_id = client_id
        self._hints = hints
        self._expiry = ExpiryWatch(Validity.of(credentials.certificate))
        self._message_hooks: list[MessageHook] = []
        self._state_hooks: list[ConnectionStateCallback] = []
        self._attempt_hooks: list[AttemptHook] = []
        self._renewal: RenewalHook | None = None
        self._switch_to: Credentials | None = None
        self._server_ca = server_ca if server_ca is not None else credentials.server_ca
        self._refusals = Refusals(
            host, port, server_hostname, str(self.client_id), self.keepalive, credentials.sn, hints
        )
        self._settings = AttemptSettings(expect_identity, attempt_timeout, identity_timeout)
        self._reconnect = Reconnector(
            Backoff(BackoffPolicy(reconnect_base, reconnect_cap, stable_period), rng=rng),
            self._refusals,
        )
        self._queue = OfflineQueue(offline_queue_size, offline_drop_policy)
        self._deliveries = Deliveries()
        self._store = IdentityStore(identity_store) if identity_store is not None else None
        stored = self._store.load(credentials.certificate) if self._store else None

        # Everything below is guarded by _lock; _changed wakes the connection thread and
        # connect() when the attempt or the state changes.
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._state = ConnectionState.STOPPED
        self._identity: Identity | None = stored
        self._stored_identity = stored
        self._last_error: DeviceSDKError | None = None
        self._last_timing: ConnectTiming | None = None
        self._subscriptions = Subscriptions()
        self._attempt: Attempt | None = None
        self._waiter: _ConnectWaiter | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

        self._network = network if network is not None else default_driver()
        self._network_thread: int | None = None
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
    def tls_context(self) -> DeviceTLSContext:
        """The TLS context of this device's connections: its sessions and handshake counts
        (full or resumed, :class:`~device_sdk.tls.DeviceTLSContext`)."""
        return self._tls_context

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
        that retrying cannot fix are retried at the backoff cap. A device may boot offline this
        way: QoS 1 publishes wait in the offline queue until the first connection. Stop with
        :meth:`disconnect`.
        """
        with self._lock:
            self._start()

    def connect(self, timeout: float = DEFAULT_ATTEMPT_TIMEOUT) -> Identity | None:
        """Connect and block until online (identity received); start reconnecting on loss.

        Raises at once on refusals that retrying cannot fix (certificate rejected or no longer
        valid, not authorised, server untrusted, identity not delivered); keeps retrying other
        failures with backoff until ``timeout``, then raises :class:`ConnectTimeoutError` (its
        cause is the last failure). When it raises, the client is stopped.
        Returns the identity (None only with ``expect_identity=False`` and none known).
        """
        deadline = time.monotonic() + timeout
        with self._lock:
            if self._state is ConnectionState.ONLINE:
                return self._identity
            waiter = _ConnectWaiter()
            self._waiter = waiter
            self._start()
            while not waiter.online and waiter.error is None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._changed.wait(remaining)
            self._waiter = None
            if waiter.online:
                return self._identity
            attempt = self._attempt
            last = self._last_error
        self._shutdown()
        if waiter.error is not None:
            raise waiter.error
        if attempt is not None and attempt.state is AttemptState.AWAIT_IDENTITY:
            raise self._refusals.identity_timeout(timeout)
        raise self._refusals.connect_timeout(timeout, last)

    def disconnect(self, timeout: float = 5.0) -> None:
        """Say goodbye (DISCONNECT) and stop the connection thread. Queued messages stay
        queued."""
        self._shutdown(timeout)

    def publish(
        self,
        topic: str,
        payload: bytes | bytearray | str = b"",
        qos: int = 0,
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
        delivery = self._deliveries.new(topic, qos, queued=True)
        try:
            dropped = self._queue.put(QueuedMessage(topic, data, qos, retain, tag=delivery))
        except DeviceSDKError:
            self._deliveries.finish(delivery, dropped=True)
            raise
        if dropped is not None and isinstance(dropped.tag, Delivery):
            log.warning("offline queue full: dropped a message to %r", dropped.topic)
            self._deliveries.finish(dropped.tag, dropped=True)
        if self.state is ConnectionState.ONLINE:
            # The client came online between the check above and the put: send it now.
            self._drain()
        return delivery

    def subscribe(self, topic: str, callback: MessageCallback, qos: int = 1) -> None:
        """Receive messages on ``topic`` (relative or absolute, may hold ``+``/``#``).

        Subscriptions are kept and renewed after every reconnection.
        """
        if qos not in (0, 1):
            raise ValueError(f"QoS {qos} is not supported; the platform accepts QoS 0 and 1")
        with self._lock:
            sub = self._subscriptions.add(topic, qos, callback)
            if self._state is ConnectionState.ONLINE:
                sub.resolved = self._resolve(topic)
                self._mqtt.subscribe(sub.resolved, qos)

    def unsubscribe(self, topic: str) -> None:
        with self._lock:
            resolved = self._subscriptions.remove(topic)
            if resolved and self._state is ConnectionState.ONLINE:
                self._mqtt.unsubscribe(resolved)

    def flush(self, timeout: float = DEFAULT_ATTEMPT_TIMEOUT) -> bool:
        """Wait until every publish so far is acknowledged (or dropped by the offline queue's
        policy), queued ones included; False on timeout."""
        return self._deliveries.wait_idle(timeout)

    def topic(self, relative: str) -> str:
        """The absolute topic for ``relative`` under this device's identity."""
        with self._lock:
            return self._resolve(relative)

    # --- renewal hooks (device_sdk.renewal_manager) -------------------------------------------

    def renew_now(self) -> None:
        """Renew the certificate now (the renewal attached to this client does the work and
        reports through its ``on_renewal`` callback); raises when no renewal is attached."""
        renewal = self._renewal
        if renewal is None:
            raise NotConnectedError(
                "no renewal is attached to this client: create it with "
                "device_sdk.renewal_manager.Renewal(...).attach(client)"
            )
        renewal.renew_now()

    def attach_renewal(self, renewal: RenewalHook) -> None:
        """Attach the renewal that :meth:`renew_now` drives; it renews instead of warning."""
        with self._lock:
            self._renewal = renewal
            self._expiry.renewal_configured = True

    def add_message_hook(self, hook: MessageHook) -> None:
        """``hook(topic, payload)`` sees every incoming message before the subscriptions
        (network thread; must not block); returning True consumes it."""
        with self._lock:
            self._message_hooks.append(hook)

    def add_state_hook(self, hook: ConnectionStateCallback) -> None:
        """``hook(state, error)`` is told every state change, like ``on_connection_state``."""
        with self._lock:
            self._state_hooks.append(hook)

    def add_attempt_hook(self, hook: AttemptHook) -> None:
        """``hook(error)`` is told how each attempt ended, before the reconnect decision
        (connection thread); a renewal falls back to the current pair from here."""
        with self._lock:
            self._attempt_hooks.append(hook)

    def use_credentials(self, credentials: Credentials) -> None:
        """Connect with ``credentials`` from now on: a running session is ended at once and
        the client connects again with the new pair (no backoff); stopped, the next
        :meth:`connect`/:meth:`start` uses them."""
        with self._lock:
            self._switch_to = credentials
            attempt = self._attempt
            running = self._thread is not None and self._thread.is_alive()
            if not running:
                self._apply_switch()
                return
        if attempt is not None:
            self._feed(attempt, Stop(time.monotonic()))

    def _apply_switch(self) -> bool:
        """Between attempts (connection thread, or stopped): take the pending credentials."""
        with self._lock:
            credentials, self._switch_to = self._switch_to, None
            if credentials is None:
                return False
            self.credentials = credentials
            self.client_id = ClientId.for_x509(self._explicit_client_id or credentials.sn)
            # (the server and its CA stay: a renewed pair talks to the same server)
            self._refusals = Refusals(
                self.host,
                self.port,
                self.server_hostname,
                str(self.client_id),
                self.keepalive,
                credentials.sn,
                self._hints,
            )
            self._reconnect.refusals = self._refusals
            watch = ExpiryWatch(Validity.of(credentials.certificate))
            watch.renewal_configured = self._expiry.renewal_configured
            self._expiry = watch
            # the identity file is bound to a certificate: store it again for the new one
            self._stored_identity = None
            self._mqtt = self._make_paho_client()
        return True

    def __enter__(self) -> DeviceClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.disconnect()

    # --- paho plumbing -------------------------------------------------------------------------

    def _make_paho_client(self) -> mqtt.Client:
        context = build_ssl_context(
            self.credentials, self._server_ca, server_hostname=self.server_hostname
        )
        self._tls_context = context
        client, self._socket_error = new_paho_client(
            str(self.client_id),
            context,
            connect_timeout=self.attempt_timeout,
            network=self._network,
        )
        client.on_connect = self._on_connect
        client.on_message = self._on_message
        client.on_publish = self._on_publish
        client.on_subscribe = self._on_subscribe
        client.on_disconnect = self._on_disconnect
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

    # --- the connection thread -----------------------------------------------------------------

    def _run(self) -> None:
        """Attempt, then let the reconnector say how long to wait; until stopped."""
        try:
            while not self._stop.is_set():
                attempt = self._session()
                if self._stop.is_set():
                    break
                with self._lock:
                    attempt_hooks = tuple(self._attempt_hooks)
                for hook in attempt_hooks:
                    self._call_user(hook, attempt.error)
                if self._apply_switch():
                    continue  # another pair (a renewal): connect again at once
                with self._lock:
                    waiter = self._waiter
                    step = self._reconnect.after(attempt, fail_fast=waiter is not None)
                if not step.report:
                    self._set_state(ConnectionState.CONNECTING, None)
                    continue
                if step.delay is None:
                    # connect() is waiting: it raises this error and stops the client.
                    with self._lock:
                        if waiter is not None:
                            waiter.error = step.error
                    self._set_state(ConnectionState.OFFLINE, step.error)
                    break
                log.warning(
                    "%s: %s; retrying in %.1f s", self._refusals.where, step.error, step.delay
                )
                self._set_state(ConnectionState.OFFLINE, step.error)
                if self._stop.wait(step.delay):
                    break
        except Exception:  # the connection thread must never die silently
            log.exception("device connection thread failed")
            raise
        finally:
            self._set_state(ConnectionState.STOPPED, None)

    def _session(self) -> Attempt:
        """One connection attempt, from the TLS handshake until it ended."""
        with self._lock:
            identity = self._reconnect.username(self._identity)
            attempt = Attempt(
                self._settings,
                self._refusals,
                started=time.monotonic(),
                sent_username=identity is not None,
            )
            self._attempt = attempt
        self._set_state(ConnectionState.CONNECTING, None)
        self._socket_error.error = None
        self._mqtt.username_pw_set(format_username(identity) if identity else None, None)
        handshakes = self._tls_context.handshakes_completed
        try:
            # The certificate may have expired since it was loaded (a long-running device).
            self.credentials.check_validity()
            # Blocking TCP connect + TLS handshake on this (connection) thread; paho then hands
            # the non-blocking socket to the network driver and queues CONNECT.
            self._mqtt.connect(self.host, self.port, self.keepalive)
        except (DeviceSDKError, OSError, ValueError) as exc:
            # paho writes CONNECT inside connect(), right after the handshake: an error there
            # may be a TLS 1.3 server's verdict on the certificate.
            after = self._tls_context.handshakes_completed > handshakes
            self._feed(attempt, Failed(exc, time.monotonic(), after_handshake=after))
            return attempt
        self._feed(attempt, TlsOk(time.monotonic()))
        with self._lock:
            while attempt.state is not AttemptState.ENDED:
                now = time.monotonic()
                if self._stop.is_set():
                    attempt.handle(Stop(now))
                    break
                deadline = attempt.deadline
                if deadline is not None and now >= deadline:
                    attempt.handle(Tick(now))
                    continue
                # The certificate's life: warn near its end, end the session when it expired.
                expiry_in = self._expiry.deadline - time.time()
                if expiry_in <= 0:
                    if self._check_expiry(attempt):
                        break
                    expiry_in = max(1.0, self._expiry.deadline - time.time())
                # (at most an hour ahead: the wall clock may be set meanwhile)
                expiry = now + min(3600.0, expiry_in)
                deadline = expiry if deadline is None else min(deadline, expiry)
                self._changed.wait(deadline - now)
        if attempt.socket_open:
            self._goodbye(attempt)
        return attempt

    def _feed(self, attempt: Attempt, event: Event) -> None:
        """Hand ``event`` to ``attempt`` (any thread); act on its coming online."""
        with self._lock:
            if attempt is not self._attempt:
                return
            before = attempt.state
            after = attempt.handle(event)
            self._changed.notify_all()
        if after is AttemptState.ONLINE and before is not AttemptState.ONLINE:
            self._go_online(attempt)

    def _goodbye(self, attempt: Attempt) -> None:
        """End the attempt's connection before the next attempt starts: send DISCONNECT (the
        driver writes it, then paho closes the socket) and wait until paho reported the end
        (``on_disconnect``) -- else that report could arrive during the next attempt and be
        taken for its end. When the server closed first, paho may have closed the socket but
        not reported it yet: wait for the report as well. Close the socket without goodbye
        when none of that happens within ``_GOODBYE_TIMEOUT``."""
        if self._mqtt.socket() is not None:
            try:
                self._mqtt.disconnect()
            except Exception:  # best effort: the link may already be gone
                pass
        deadline = time.monotonic() + _GOODBYE_TIMEOUT
        with self._lock:
            while not attempt.socket_closed:
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

    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any, properties: Any
    ) -> None:
        self._network_thread = threading.get_ident()
        attempt = self._attempt
        if attempt is None:
            return
        code = connack_code(int(reason_code.value)) if reason_code.is_failure else 0
        if code == 0:
            log.info(
                "%s accepted the connection (client id %s)", self._refusals.where, self.client_id
            )
        self._feed(attempt, Connack(code, time.monotonic()))

    def _on_disconnect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any, properties: Any
    ) -> None:
        """The socket is closed (by either side, or a keep-alive timeout): the session ends."""
        attempt = self._attempt
        if attempt is not None:
            self._feed(attempt, Closed(time.monotonic(), self._socket_error.error))

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        self._network_thread = threading.get_ident()
        if msg.topic == IDENTITY_TOPIC:
            self._on_identity(bytes(msg.payload))
            return
        with self._lock:
            hooks = tuple(self._message_hooks)
        for hook in hooks:
            try:
                if hook(msg.topic, bytes(msg.payload)):
                    return
            except Exception:
                log.exception("message hook %r failed", hook)
        with self._lock:
            targets = self._subscriptions.matching(msg.topic)
        deliver(targets, Message(msg.topic, bytes(msg.payload), msg.qos, bool(msg.retain)))

    def _on_identity(self, payload: bytes) -> None:
        try:
            new = Identity.from_json(payload)
        except InvalidNameError as exc:
            log.warning("ignored a malformed identity message from the server: %s", exc)
            return
        with self._lock:
            old = self._identity
            self._identity = new
            self._reconnect.identity_received()
            if old is not None and old != new and self._state is ConnectionState.ONLINE:
                # Relative subscriptions move to the new identity's topics.
                for resolved in self._subscriptions.release():
                    self._mqtt.unsubscribe(resolved)
        if self._store is not None and new != self._stored_identity:
            try:
                self._store.save(new, self.credentials.certificate)
                self._stored_identity = new
            except IdentityStoreError as exc:
                log.error("%s", exc)
        if old is not None and old != new:
            log.warning(
                "the platform reports a new identity for this device: %s/%s -> %s/%s",
                old.product_key,
                old.device_name,
                new.product_key,
                new.device_name,
            )
            self._call_user(self.on_identity_changed, old, new)
        elif old is None and self.on_identity_changed is not None:
            self._call_user(self.on_identity_changed, None, new)
        attempt = self._attempt
        if attempt is None:
            return
        if attempt.state is AttemptState.ONLINE:
            self._resubscribe()  # (a new identity while online: its topics)
        else:
            self._feed(attempt, IdentityReceived(time.monotonic()))

    def _on_publish(
        self, client: mqtt.Client, userdata: Any, mid: int, reason_code: Any, properties: Any
    ) -> None:
        self._deliveries.acked(mid)

    def _on_subscribe(
        self, client: mqtt.Client, userdata: Any, mid: int, reason_codes: list[Any], properties: Any
    ) -> None:
        for rc in reason_codes:
            if rc.is_failure:
                log.warning(
                    "the server refused a subscription (mid %d): devices may only "
                    "subscribe under /{productKey}/{deviceName}/ and /sys/...",
                    mid,
                )

    # --- online --------------------------------------------------------------------------------

    def _go_online(self, attempt: Attempt) -> None:
        """The attempt reached ONLINE (on the thread that fed the last event)."""
        self._reconnect.online()
        self._resubscribe()
        with self._lock:
            self._last_timing = attempt.timing()
            if self._waiter is not None:
                self._waiter.online = True
        self._set_state(ConnectionState.ONLINE, None)
        with self._lock:
            self._check_expiry(attempt)
        self._drain()

    def _resubscribe(self) -> None:
        with self._lock:
            for resolved, qos in self._subscriptions.renew(self._try_resolve):
                self._mqtt.subscribe(resolved, qos)

    def _try_resolve(self, topic: str) -> str | None:
        try:
            return self._resolve(topic)
        except NotConnectedError:  # relative, identity not known yet
            return None

    def _drain(self) -> None:
        """Send what waited in the offline queue (whichever thread found the client online)."""
        _delivery.drain(
            self._queue, online=lambda: self.state is ConnectionState.ONLINE, send=self._send_queued
        )

    def _send_queued(
        self, topic: str, payload: bytes, qos: int, retain: bool, delivery: Delivery | None
    ) -> None:
        with self._lock:
            resolved = self._resolve(topic)
        self._send(resolved, payload, qos, retain, delivery)

    def _send(
        self, topic: str, payload: bytes, qos: int, retain: bool, delivery: Delivery | None = None
    ) -> Delivery:
        delivery = delivery or self._deliveries.new(topic, qos, queued=False)
        info = self._mqtt.publish(topic, payload, qos=qos, retain=retain)
        if info.rc == MQTTErrorCode.MQTT_ERR_NO_CONN and qos == 0:
            self._deliveries.finish(delivery, dropped=True)
            return delivery
        self._deliveries.sent(info.mid, delivery)
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

    def _check_expiry(self, attempt: Attempt) -> bool:
        """The certificate's life reached a deadline (lock held): warn once near the end
        (no renewal attached), end the session once it expired -- the one validity check,
        ``Credentials.check_validity``, says so and gives the error. True: ended."""
        notice = self._expiry.check(time.time())
        if notice is ExpiryNotice.NEAR_EXPIRY:
            days = self._expiry.validity.days_left(time.time())
            log.warning(
                "%s: the device certificate (SN %s) expires in %.1f days and no renewal is "
                "configured; attach one (device_sdk.renewal_manager) or issue a new certificate",
                self._refusals.where,
                self.credentials.sn,
                days,
            )
            self._call_user(self.on_certificate_expiring, self.credentials, days)
        elif notice is ExpiryNotice.EXPIRED:
            try:
                self.credentials.check_validity()
            except DeviceSDKError as exc:
                log.error("%s: %s; ending the session", self._refusals.where, exc)
                attempt.handle(Failed(exc, time.monotonic()))
                self._changed.notify_all()
                return True
        return False

    # --- state and callbacks -------------------------------------------------------------------

    def _set_state(self, state: ConnectionState, error: DeviceSDKError | None) -> None:
        """Record ``state`` (and the error that led there) and tell the application."""
        with self._lock:
            changed = state is not self._state or error is not None
            self._state = state
            if error is not None:
                self._last_error = error
            self._changed.notify_all()
        if changed:
            with self._lock:
                hooks = tuple(self._state_hooks)
            for hook in hooks:
                self._call_user(hook, state, error)
            self._call_user(self.on_connection_state, state, error)

    def _call_user(self, callback: Callable[..., None] | None, *args: Any) -> None:
        if callback is None:
            return
        try:
            callback(*args)
        except Exception:
            log.exception("application callback %r failed", callback)


__all__ = [
    "PERMANENT_ERRORS",
    "ConnectTiming",
    "ConnectionState",
    "Delivery",
    "DeviceClient",
    "Message",
]
