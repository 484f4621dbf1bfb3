"""One simulated device: the SDK's own ``DeviceClient`` on gevent, plus Locust event timing.

The session -- mutual TLS, CONNACK mapping, waiting for the platform's identity, username from
the identity, full-jitter reconnects, refusals retried at the cap -- is
:class:`device_sdk.DeviceClient`, unchanged: the simulator dogfoods the SDK. Its socket I/O runs
on gevent's hub through :class:`~simulator.gevent_loop.GeventLoop` (the SDK's network-driver
interface), so one Locust process holds thousands of devices; the client's connection thread is a
greenlet under Locust's monkey-patching.

What is simulator-specific stays here: turning the client's state changes and its
:class:`~device_sdk.ConnectTiming` into Locust events (``connect``, ``identity``, ``connection
lost``, ``reconnect``), checking the identity against the fleet, timing publishes to PUBACK.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from pathlib import Path

import gevent

from device_sdk.backoff import BackoffPolicy
from device_sdk.client import ConnectionState, DeviceClient, Message
from device_sdk.credentials import Credentials
from device_sdk.defaults import DEFAULT_ATTEMPT_TIMEOUT, DEFAULT_IDENTITY_TIMEOUT, DEFAULT_KEEPALIVE
from device_sdk.errors import DeviceSDKError, NotConnectedError
from device_sdk.identity import Identity
from device_sdk.refusals import HintNames
from simulator.errors import SimulatorError
from simulator.gevent_loop import GeventLoop, shared_loop


class IdentityMismatchError(SimulatorError):
    """The platform told the device another identity than the fleet expects."""


#: Error messages name the simulator's own options (``--no-identity``, not ``expect_identity``).
SIMULATOR_HINTS = HintNames("--server-ca", "--host mqtts://NAME:PORT", "--no-identity")

EventSink = Callable[[str, float, BaseException | None], None]
"""``sink(name, seconds, error)``: where a device reports what happened (Locust's request event)."""


class SimDevice:
    """A device: connect (timed), identity (checked), publish (timed to PUBACK), commands.

    Events: ``connect`` (TLS + CONNECT until CONNACK, from the SDK's timing; a failed first
    attempt carries the SDK error), ``identity`` (CONNACK until the identity message; a failure
    when it is not the fleet's; none with ``expect_identity=False``), ``connection lost`` (failure only), ``reconnect`` (from the loss
    until the device is back, or a failed attempt's error).
    """

    def __init__(
        self,
        host: str,
        port: int,
        credentials: Credentials,
        *,
        server_ca: Path | None,
        expected: Identity | None = None,
        expect_identity: bool = True,
        keepalive: int = DEFAULT_KEEPALIVE,
        backoff: BackoffPolicy | None = None,
        rng: random.Random | None = None,
        loop: GeventLoop | None = None,
        on_event: EventSink | None = None,
        attempt_timeout: float = DEFAULT_ATTEMPT_TIMEOUT,
        identity_timeout: float = DEFAULT_IDENTITY_TIMEOUT,
    ) -> None:
        policy = backoff or BackoffPolicy()
        self.expected = expected
        self.expect_identity = expect_identity
        self.on_event = on_event or (lambda name, seconds, error: None)
        self._closing = False
        self._was_online = False
        self._online_now = False
        self._attempt_started = time.perf_counter()
        self._lost_at: float | None = None
        self.client = DeviceClient(
            host,
            port,
            credentials,
            server_ca=server_ca,
            keepalive=keepalive,
            reconnect_base=policy.base,
            reconnect_cap=policy.cap,
            stable_period=policy.stable_period,
            rng=rng,
            attempt_timeout=attempt_timeout,
            identity_timeout=identity_timeout,
            expect_identity=expect_identity,
            hints=SIMULATOR_HINTS,
            on_connection_state=self._on_state,
            network=loop or shared_loop(),
        )

    @property
    def online(self) -> bool:
        return self.client.state is ConnectionState.ONLINE

    @property
    def identity(self) -> Identity | None:
        return self.client.identity

    @property
    def last_error(self) -> DeviceSDKError | None:
        return self.client.last_error

    def keep_connected(self) -> None:
        """Connect in the background and stay connected (the SDK's reconnect loop)."""
        self.client.start()

    def close(self) -> None:
        """Stop reconnecting and say goodbye (DISCONNECT)."""
        self._closing = True
        self.client.disconnect()

    # --- the SDK's state changes -> Locust events ------------------------------------------------

    def _on_state(self, state: ConnectionState, error: DeviceSDKError | None) -> None:
        now = time.perf_counter()
        if state is ConnectionState.CONNECTING:
            self._attempt_started = now
        elif state is ConnectionState.ONLINE:
            self._went_online(now)
        elif state is ConnectionState.OFFLINE and error is not None and not self._closing:
            if self._online_now:
                self._online_now = False
                self._lost_at = now
                self.on_event("connection lost", 0.0, error)
            else:
                name = "reconnect" if self._was_online else "connect"
                self.on_event(name, now - self._attempt_started, error)

    def _went_online(self, now: float) -> None:
        timing = self.client.last_connect_timing
        connect = timing.connect if timing is not None else now - self._attempt_started
        if not self._was_online:
            self.on_event("connect", connect, None)
        else:
            # A reconnect's time is the whole outage: from the loss until the device is back.
            lost_at = self._lost_at
            self.on_event("reconnect", now - lost_at if lost_at is not None else connect, None)
        self._was_online = True
        self._online_now = True
        self._lost_at = None
        if not self.expect_identity:
            return  # a generic broker: no identity to time or check
        identity = self.client.identity
        mismatch = None
        if self.expected is not None and identity != self.expected:
            mismatch = IdentityMismatchError(
                f"the platform says this device is {identity}; the fleet expects {self.expected}"
            )
        seconds = timing.identity if timing is not None and timing.identity is not None else 0.0
        self.on_event("identity", seconds, mismatch)

    # --- messaging -----------------------------------------------------------------------------

    def publish(self, topic: str, payload: bytes, qos: int = 1, timeout: float = 30.0) -> float:
        """Publish to a topic relative to the identity; seconds until PUBACK (QoS 1)."""
        if not self.online:
            cause = f" ({self.last_error})" if self.last_error else ""
            raise NotConnectedError(f"the device is offline{cause}")
        started = time.perf_counter()
        delivery = self.client.publish(self._topic(topic), payload, qos=qos)
        if not delivery.wait(timeout):
            raise NotConnectedError(
                f"no PUBACK within {timeout:g} s"
                if not delivery.dropped
                else "the message was dropped"
            )
        return time.perf_counter() - started

    def subscribe(self, topic: str, callback: Callable[[bytes], None]) -> None:
        """Receive messages on ``topic`` (relative to the identity); renewed on reconnection.

        ``callback`` runs in its own greenlet: it may publish and wait for the PUBACK, which the
        network greenlet that delivered the message has to read.
        """

        def deliver(message: Message) -> None:
            gevent.spawn(callback, message.payload)

        self.client.subscribe(self._topic(topic), deliver)

    def _topic(self, topic: str) -> str:
        """Relative topics resolve under the identity; without one (a generic broker, no
        identity message) under the identity the fleet gave this device."""
        if (
            self.expect_identity
            or topic.startswith("/")
            or self.client.identity is not None
            or self.expected is None
        ):
            return topic
        return self.expected.topic(topic)
