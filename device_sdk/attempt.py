"""One connection attempt as a sans-IO state machine: events in, a state and an error out.

A device's connection goes TCP + TLS handshake -> CONNECT/CONNACK -> (on the platform) the
identity message -> online -> closed. Each step has its own failure and its own deadline. This
module holds that logic free of sockets, threads and clocks (as h11 does for HTTP): the client
feeds :class:`Attempt` the events it observes -- each carrying the time it happened -- and acts
on the resulting :class:`AttemptState`. Time passing is an event too (:class:`Tick`), so a test
drives an attempt through every path with a fake clock.

    HANDSHAKE --TlsOk--> AWAIT_CONNACK --Connack(0)--> AWAIT_IDENTITY --IdentityReceived--> ONLINE
        every state --(failure, deadline, Closed, Stop)--> ENDED (with the error that ended it)

With ``expect_identity=False`` CONNACK 0 leads straight to ONLINE. CONNACK may be read before the
connecting thread reports the handshake done (the network thread is fast): it is accepted in
HANDSHAKE too.
"""

from __future__ import annotations

import enum
from typing import NamedTuple

from device_sdk import values
from device_sdk.errors import DeviceSDKError, NotConnectedError
from device_sdk.refusals import CONNACK_ACCEPTED, USERNAME_REFUSALS, Refusals


class AttemptState(enum.Enum):
    HANDSHAKE = "handshake"
    """TCP connect + TLS handshake in progress (blocking, on the connecting thread)."""
    AWAIT_CONNACK = "await-connack"
    AWAIT_IDENTITY = "await-identity"
    """CONNACK 0 arrived; waiting for the platform's identity message."""
    ONLINE = "online"
    ENDED = "ended"


# --- events ------------------------------------------------------------------------------------


class TlsOk(NamedTuple):
    """The TCP connection and the TLS handshake succeeded."""

    at: float


class Failed(NamedTuple):
    """The attempt could not start or connect: ``error`` is raw (``ssl``/``OSError``, mapped
    here) or already an SDK error (e.g. the certificate is no longer valid).

    ``after_handshake``: the TLS handshake had completed when ``error`` was raised (e.g. by
    the write of CONNECT that follows it at once). With TLS 1.3 the server judges the client
    certificate only then, and its close may reach the client as an EOF on that write."""

    error: BaseException
    at: float
    after_handshake: bool = False


class Connack(NamedTuple):
    """The server's answer: an MQTT 3.1.1 return code (0 accepted)."""

    code: int
    at: float


class IdentityReceived(NamedTuple):
    at: float


class Closed(NamedTuple):
    """The socket closed (by the server, the network, or a keep-alive timeout); ``cause`` is
    the socket error seen, if any."""

    at: float
    cause: BaseException | None = None


class Stop(NamedTuple):
    """The application disconnects."""

    at: float


class Tick(NamedTuple):
    """Time passed (a deadline may have expired)."""

    at: float


Event = TlsOk | Failed | Connack | IdentityReceived | Closed | Stop | Tick


class ConnectTiming(NamedTuple):
    """How long the last successful connection took, measured by the client (seconds).

    ``handshake``: TCP connect + TLS handshake; ``connect``: from the start of the attempt until
    CONNACK (handshake included); ``identity``: from CONNACK until the platform's identity
    message (None with ``expect_identity=False``).
    """

    handshake: float
    connect: float
    identity: float | None


class AttemptSettings(NamedTuple):
    expect_identity: bool
    attempt_timeout: float
    """Seconds from the end of the handshake until CONNACK."""
    identity_timeout: float
    """Seconds from CONNACK until the identity message."""


values.compare_by_type(
    TlsOk, Failed, Connack, IdentityReceived, Closed, Stop, Tick, ConnectTiming, AttemptSettings
)


class Attempt:
    """One connection attempt; :meth:`handle` is its only transition function."""

    def __init__(
        self, settings: AttemptSettings, refusals: Refusals, *, started: float, sent_username: bool
    ) -> None:
        self.settings = settings
        self.refusals = refusals
        self.started = started
        self.sent_username = sent_username
        self.state = AttemptState.HANDSHAKE
        self.error: DeviceSDKError | None = None
        """Why the attempt ended (set with ENDED)."""
        self.refused_code: int | None = None
        """The CONNACK code when the server refused."""
        self.handshake_at: float | None = None
        self.connack_at: float | None = None
        self.online_at: float | None = None
        self.ended_at: float | None = None
        self.socket_closed = False
        """The socket is gone (no DISCONNECT needed to end the session)."""
        self.stopped = False
        """The application ended it."""
        self.ended_by_close = False
        """The socket closed under it (server, network), rather than a refusal or deadline."""

    # --- the transition function ---------------------------------------------------------------

    def handle(self, event: Event) -> AttemptState:
        """Apply ``event``; return the (possibly new) state. Events after ENDED change nothing
        but the record that the socket closed."""
        if isinstance(event, Closed):
            self.socket_closed = True
        if self.state is AttemptState.ENDED:
            return self.state
        state = self.state
        if isinstance(event, Stop):
            self.stopped = True
            self._end(event.at, NotConnectedError("disconnected by the application"))
        elif isinstance(event, Failed):
            error = event.error
            self._end(
                event.at,
                error
                if isinstance(error, DeviceSDKError)
                else self.refusals.tls(error, after_handshake=event.after_handshake),
            )
        elif isinstance(event, TlsOk):
            if state is AttemptState.HANDSHAKE:
                self.handshake_at = event.at
                self.state = AttemptState.AWAIT_CONNACK
        elif isinstance(event, Connack):
            if state in (AttemptState.HANDSHAKE, AttemptState.AWAIT_CONNACK):
                self._connack(event)
        elif isinstance(event, IdentityReceived):
            if state is AttemptState.AWAIT_IDENTITY:
                self._online(event.at)
        elif isinstance(event, Closed):
            self._closed(event)
        elif isinstance(event, Tick):
            self._tick(event.at)
        return self.state

    def _connack(self, event: Connack) -> None:
        if self.handshake_at is None:
            self.handshake_at = event.at
        if event.code != CONNACK_ACCEPTED:
            self.refused_code = event.code
            self._end(event.at, self.refusals.connack(event.code))
            return
        self.connack_at = event.at
        if self.settings.expect_identity:
            self.state = AttemptState.AWAIT_IDENTITY
        else:
            self._online(event.at)

    def _closed(self, event: Closed) -> None:
        self.ended_by_close = True
        if self.state in (AttemptState.HANDSHAKE, AttemptState.AWAIT_CONNACK):
            # Before CONNACK a close is the server's (TLS 1.3) verdict on the certificate.
            cause = event.cause or ConnectionResetError("connection closed by the server")
            self._end(event.at, self.refusals.tls(cause, after_handshake=True))
        else:
            self._end(event.at, self.refusals.lost(event.cause))

    def _tick(self, now: float) -> None:
        deadline = self.deadline
        if deadline is None or now < deadline:
            return
        if self.state is AttemptState.AWAIT_CONNACK:
            self._end(now, self.refusals.connack_timeout(self.settings.attempt_timeout))
        elif self.state is AttemptState.AWAIT_IDENTITY:
            self._end(now, self.refusals.identity_timeout(self.settings.identity_timeout))

    def _online(self, at: float) -> None:
        self.online_at = at
        self.state = AttemptState.ONLINE

    def _end(self, at: float, error: DeviceSDKError) -> None:
        self.ended_at = at
        self.error = error
        self.state = AttemptState.ENDED

    # --- views ---------------------------------------------------------------------------------

    @property
    def deadline(self) -> float | None:
        """When a :class:`Tick` may end the attempt (None: no deadline in this state)."""
        if self.state is AttemptState.AWAIT_CONNACK and self.handshake_at is not None:
            return self.handshake_at + self.settings.attempt_timeout
        if self.state is AttemptState.AWAIT_IDENTITY and self.connack_at is not None:
            return self.connack_at + self.settings.identity_timeout
        return None

    @property
    def socket_open(self) -> bool:
        """The attempt's connection exists and its end has not been reported yet: before the
        next attempt, close it (DISCONNECT) and wait for that report -- a late one would be
        taken for the next attempt's."""
        return self.handshake_at is not None and not self.socket_closed

    @property
    def refused_username(self) -> bool:
        """The server refused while a stored identity was sent as username: it may be stale."""
        return self.sent_username and self.refused_code in USERNAME_REFUSALS

    @property
    def accepted_for(self) -> float | None:
        """How long the session lasted after CONNACK 0 (None: never accepted, or not ended)."""
        if self.connack_at is None or self.ended_at is None:
            return None
        return self.ended_at - self.connack_at

    @property
    def closed_by_server(self) -> bool:
        """An accepted session that ended because the socket closed under it."""
        return self.connack_at is not None and self.ended_by_close

    def timing(self) -> ConnectTiming | None:
        if self.online_at is None or self.connack_at is None or self.handshake_at is None:
            return None
        return ConnectTiming(
            handshake=self.handshake_at - self.started,
            connect=self.connack_at - self.started,
            identity=self.online_at - self.connack_at if self.settings.expect_identity else None,
        )
