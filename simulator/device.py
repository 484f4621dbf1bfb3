"""One simulated device: a :class:`~simulator.link.DeviceLink` plus Locust event timing.

The connection's logic is the SDK's -- one attempt is :class:`device_sdk.attempt.Attempt`,
retries are :class:`device_sdk.reconnect.Reconnector` with the full-jitter backoff, every error
message comes from :class:`device_sdk.refusals.Refusals` -- driven by the simulator's own small
I/O shell on gevent's hub (:mod:`simulator.link`, why: memory per device in a Locust worker).

What is simulator-specific stays here: turning state changes and the attempt's
:class:`~device_sdk.ConnectTiming` into Locust events (``connect``, ``identity``, ``connection
lost``, ``reconnect``), checking the identity against the fleet, timing publishes to PUBACK.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import cast

from device_sdk.attempt import AttemptSettings
from device_sdk.backoff import Backoff, BackoffPolicy
from device_sdk.client import ConnectionState
from device_sdk.defaults import DEFAULT_ATTEMPT_TIMEOUT, DEFAULT_IDENTITY_TIMEOUT, DEFAULT_KEEPALIVE
from device_sdk.errors import DeviceSDKError
from device_sdk.identity import Identity
from device_sdk.platform import ClientId, validate_keepalive
from device_sdk.reconnect import Reconnector
from device_sdk.refusals import HintNames, Refusals
from simulator.device_tls import DeviceTls
from simulator.errors import SimulatorError
from simulator.link import DeviceLink


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

    __slots__ = (
        "_attempt_started",
        "_closing",
        "_lost_at",
        "_online_now",
        "_was_online",
        "expect_identity",
        "expected",
        "link",
        "on_event",
    )

    def __init__(
        self,
        host: str,
        port: int,
        cert: Path,
        key: Path,
        cert_sn: str,
        *,
        server_ca: Path | None,
        expected: Identity | None = None,
        expect_identity: bool = True,
        keepalive: int = DEFAULT_KEEPALIVE,
        backoff: BackoffPolicy | None = None,
        rng: random.Random | str | None = None,
        on_event: EventSink | None = None,
        attempt_timeout: float = DEFAULT_ATTEMPT_TIMEOUT,
        identity_timeout: float = DEFAULT_IDENTITY_TIMEOUT,
    ) -> None:
        self.expected = expected
        self.expect_identity = expect_identity
        self.on_event = on_event or _ignore
        self._closing = False
        self._was_online = False
        self._online_now = False
        self._attempt_started = time.perf_counter()
        self._lost_at: float | None = None
        keepalive = validate_keepalive(keepalive)
        client_id = str(ClientId.for_x509(cert_sn))
        refusals = Refusals(host, port, None, client_id, keepalive, cert_sn, SIMULATOR_HINTS)
        self.link = DeviceLink(
            host,
            port,
            DeviceTls(cert, key, server_ca),
            client_id,
            keepalive=keepalive,
            settings=AttemptSettings(expect_identity, attempt_timeout, identity_timeout),
            refusals=refusals,
            reconnect=Reconnector(Backoff(backoff or BackoffPolicy(), rng=_rng(rng)), refusals),
            on_state=self._on_state,
        )

    @property
    def online(self) -> bool:
        return self.link.online

    @property
    def identity(self) -> Identity | None:
        return self.link.identity

    @property
    def last_error(self) -> DeviceSDKError | None:
        return self.link.last_error

    def keep_connected(self) -> None:
        """Connect in the background and stay connected (the SDK's backoff between attempts)."""
        self.link.start()

    def close(self) -> None:
        """Stop reconnecting and say goodbye (DISCONNECT)."""
        self._closing = True
        self.link.close()

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
        timing = self.link.last_timing
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
        identity = self.link.identity
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
        started = time.perf_counter()
        self.link.publish(self._topic(topic), payload, qos, timeout)
        return time.perf_counter() - started

    def subscribe(self, topic: str, callback: Callable[[bytes], None]) -> None:
        """Receive messages on ``topic`` (relative to the identity); renewed on reconnection.

        ``callback`` runs in its own greenlet: it may publish and wait for the PUBACK.
        """
        self.link.subscribe(self._topic(topic), 1, callback)

    def _topic(self, topic: str) -> str:
        """Relative topics resolve under the identity; without one (a generic broker, no
        identity message) under the identity the fleet gave this device."""
        if (
            self.expect_identity
            or topic.startswith("/")
            or self.link.identity is not None
            or self.expected is None
        ):
            return topic
        return self.expected.topic(topic)


def _rng(rng: random.Random | str | None) -> random.Random | None:
    """A seed string becomes a :class:`SeededJitter` (a device's reproducible backoff)."""
    if isinstance(rng, str):
        # Backoff draws with uniform() only; SeededJitter has it without the 2.5 KiB state.
        return cast("random.Random", SeededJitter(rng))
    return rng


class SeededJitter:
    """Reproducible draws for one device's backoff, without a Mersenne Twister per device.

    ``random.Random(seed)`` keeps 2.5 KiB of state: with 5,000 devices per worker that is
    12 MiB for numbers drawn only when a device reconnects. The n-th draw here is the first
    number of ``random.Random(f"{seed}:{n}")``, made when needed and dropped.
    """

    __slots__ = ("_draws", "_seed")

    def __init__(self, seed: str) -> None:
        self._seed = seed
        self._draws = 0

    def random(self) -> float:
        self._draws += 1
        return random.Random(f"{self._seed}:{self._draws}").random()

    def uniform(self, a: float, b: float) -> float:
        return a + (b - a) * self.random()


def _ignore(name: str, seconds: float, error: BaseException | None) -> None:
    """The default event sink."""
