"""One device connection's MQTT session as a sans-IO machine: events in, outcomes out.

Why a machine of its own: the endpoint's rules about *when* something may happen (no packet
before CONNECT, one CONNECT, deadlines for the handshake, the CONNECT and the keep-alive, the will
on an abrupt end) and about *how much* a client may hold (filters, levels and bytes per filter,
QoS 1 packet ids in flight) live here once, free of sockets, TLS and clocks, and are tested by
feeding events (``tests/server/test_mqtt_session.py``), in the way of h11 and of the serial
``HostMachine``. The connection (TLS + asyncio) and the broker (registry, routing,
authentication) only feed events and act on what comes back.

States::

    HANDSHAKE --HandshakeDone--> AWAIT_CONNECT --ConnectReceived--> AUTHENTICATING
        AUTHENTICATING --ConnectAccepted--> CONNECTED
        any --Closed--> CLOSED  (returns the will when a CONNECTED session ends without DISCONNECT)

``Tick`` returns :class:`Expired` once the current state's deadline has passed; every state but
CONNECTED is "not authenticated yet" (:attr:`Session.authenticated`), which the broker's budget
for unauthenticated connections counts.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from server_stub.config import MqttLimits
from server_stub.mqtt import codec
from server_stub.mqtt.errors import MqttProtocolError
from server_stub.mqtt.topics import device_may_use
from server_stub.ports import AuthenticatedDevice

#: Packet ids are 1..65535; a client that acknowledges nothing can hold at most this many.
MAX_PACKET_ID = 0xFFFF


class State(enum.Enum):
    HANDSHAKE = "handshake"
    AWAIT_CONNECT = "await-connect"
    AUTHENTICATING = "authenticating"
    CONNECTED = "connected"
    CLOSED = "closed"


# --- events ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HandshakeDone:
    now: float


@dataclass(frozen=True, slots=True)
class ConnectReceived:
    """A CONNECT whose fields passed the broker's checks; the registry is asked next."""

    now: float


@dataclass(frozen=True, slots=True)
class ConnectAccepted:
    now: float
    device: AuthenticatedDevice
    prefixes: tuple[str, str]
    keep_alive: int
    will: codec.Will | None


@dataclass(frozen=True, slots=True)
class PacketReceived:
    """Any decoded packet; raises :class:`MqttProtocolError` when its kind is out of order."""

    now: float
    packet: codec.Packet


@dataclass(frozen=True, slots=True)
class Tick:
    now: float


@dataclass(frozen=True, slots=True)
class Closed:
    """The connection ends (for whatever reason); afterwards every event is ignored."""


Event = HandshakeDone | ConnectReceived | ConnectAccepted | PacketReceived | Tick | Closed


# --- outcomes ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Expired:
    """The state's deadline passed: close the connection with this reason."""

    reason: str
    tls_shutdown: bool


@dataclass(frozen=True, slots=True)
class WillDue:
    """The session ended without DISCONNECT: the broker publishes (and checks) this will."""

    will: codec.Will


Outcome = Expired | WillDue | None


@dataclass(frozen=True, slots=True)
class SubscribeResult:
    """What one SUBSCRIBE changed: filters to (re)register with their QoS, SUBACK codes, refusals."""

    granted: tuple[tuple[str, int], ...]
    codes: tuple[int, ...]
    refused: tuple[str, ...]
    """One reason per refused filter, for the single log line the broker writes."""


class Session:
    """The per-connection state the broker and the connection share, changed only here."""

    __slots__ = (
        "_next_packet_id",
        "client_id",
        "deadline",
        "device",
        "filters",
        "inflight",
        "keep_alive",
        "limits",
        "prefixes",
        "state",
        "will",
    )

    def __init__(self, limits: MqttLimits, now: float) -> None:
        self.limits = limits
        self.state = State.HANDSHAKE
        self.deadline = now + limits.handshake_timeout
        self.keep_alive = 0
        self.client_id = ""
        self.device: AuthenticatedDevice | None = None
        self.prefixes: tuple[str, str] = ("\x00", "\x00")
        self.filters: dict[str, int] = {}
        self.inflight: set[int] = set()
        self.will: codec.Will | None = None
        self._next_packet_id = 0

    @property
    def authenticated(self) -> bool:
        return self.state is State.CONNECTED

    @property
    def closed(self) -> bool:
        return self.state is State.CLOSED

    # --- the transition function -----------------------------------------------------------------

    def handle(self, event: Event) -> Outcome:
        """Apply one event; the only place the state, the deadline and the will change."""
        state = self.state
        if state is State.CLOSED:
            return None
        if isinstance(event, PacketReceived):
            self._on_packet(event)
        elif isinstance(event, Tick):
            return self._on_tick(event.now)
        elif isinstance(event, Closed):
            will, self.will = self.will, None
            self.state = State.CLOSED
            self.filters = {}
            self.inflight = set()
            if will is not None and state is State.CONNECTED:
                return WillDue(will)
        elif isinstance(event, HandshakeDone):
            self._expect(State.HANDSHAKE, event)
            self.state = State.AWAIT_CONNECT
            self.deadline = event.now + self.limits.connect_timeout
        elif isinstance(event, ConnectReceived):
            self._expect(State.AWAIT_CONNECT, event)
            self.state = State.AUTHENTICATING
        else:
            self._expect(State.AUTHENTICATING, event)
            self.state = State.CONNECTED
            self.device = event.device
            self.prefixes = event.prefixes
            self.keep_alive = event.keep_alive
            self.will = event.will
            self.deadline = event.now + event.keep_alive * 1.5
        return None

    def _expect(self, state: State, event: Event) -> None:
        if self.state is not state:
            raise MqttProtocolError(
                f"{type(event).__name__} in state {self.state.value} (expected {state.value})"
            )

    def _on_packet(self, event: PacketReceived) -> None:
        packet = event.packet
        name = type(packet).__name__.upper()
        if self.state is State.CONNECTED:
            if isinstance(packet, codec.Connect):
                raise MqttProtocolError("a second CONNECT on one connection")
            self.deadline = event.now + self.keep_alive * 1.5
            if isinstance(packet, codec.Disconnect):
                self.will = None
            elif isinstance(packet, codec.Puback):
                self.inflight.discard(packet.packet_id)
        elif self.state is State.AWAIT_CONNECT:
            if not isinstance(packet, codec.Connect):
                raise MqttProtocolError(f"{name} before CONNECT")
        else:  # HANDSHAKE cannot decode packets; AUTHENTICATING holds them back
            raise MqttProtocolError(f"{name} while the session is {self.state.value}")

    def _on_tick(self, now: float) -> Outcome:
        if now < self.deadline:
            return None
        limits = self.limits
        if self.state is State.HANDSHAKE:
            return Expired(f"no TLS handshake within {limits.handshake_timeout:g} s", False)
        if self.state is State.AWAIT_CONNECT:
            return Expired(
                f"no CONNECT within {limits.connect_timeout:g} s after the handshake", True
            )
        if self.state is State.AUTHENTICATING:
            return None  # bounded by the registry lookup itself
        return Expired(f"keep-alive: nothing received for 1.5 x {self.keep_alive} s", True)

    # --- what a connected session holds ----------------------------------------------------------

    def subscribe(self, topics: tuple[tuple[str, int], ...]) -> SubscribeResult:
        """Grant or refuse each filter of one SUBSCRIBE against the session's limits."""
        self._require_connected("SUBSCRIBE")
        limits = self.limits
        granted: list[tuple[str, int]] = []
        codes: list[int] = []
        refused: list[str] = []
        for topic_filter, qos in topics:
            reason = None
            size = len(topic_filter.encode("utf-8", "surrogatepass"))
            if size > limits.max_filter_bytes:
                reason = f"{size} bytes (max_filter_bytes {limits.max_filter_bytes})"
            elif topic_filter.count("/") + 1 > limits.max_filter_levels:
                reason = (
                    f"{topic_filter.count('/') + 1} levels "
                    f"(max_filter_levels {limits.max_filter_levels})"
                )
            elif not device_may_use(self.prefixes, topic_filter):
                reason = f"{topic_filter!r} is outside the device's topics"
            elif (
                topic_filter not in self.filters
                and len(self.filters) >= limits.max_filters_per_session
            ):
                reason = (
                    f"{topic_filter!r}: the session holds {len(self.filters)} filters "
                    f"(max_filters_per_session {limits.max_filters_per_session})"
                )
            if reason is not None:
                refused.append(reason)
                codes.append(codec.SUBACK_FAILURE)
                continue
            level = min(qos, 1)
            self.filters[topic_filter] = level
            granted.append((topic_filter, level))
            codes.append(level)
        return SubscribeResult(tuple(granted), tuple(codes), tuple(refused))

    def unsubscribe(self, topics: tuple[str, ...]) -> list[str]:
        """Drop the filters the session held; returns those (to remove from the router)."""
        self._require_connected("UNSUBSCRIBE")
        return [f for f in topics if self.filters.pop(f, None) is not None]

    def allocate_packet_id(self) -> int | None:
        """A free packet id for an outgoing QoS 1 PUBLISH; None when all 65,535 are in flight."""
        if len(self.inflight) >= MAX_PACKET_ID:
            return None
        packet_id = self._next_packet_id
        while True:
            packet_id = packet_id % MAX_PACKET_ID + 1
            if packet_id not in self.inflight:
                break
        self._next_packet_id = packet_id
        self.inflight.add(packet_id)
        return packet_id

    def _require_connected(self, what: str) -> None:
        if self.state is not State.CONNECTED:
            raise MqttProtocolError(f"{what} while the session is {self.state.value}")
