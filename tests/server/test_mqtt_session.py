"""The per-connection session machine and the recent-messages store, fed events: no sockets."""

from __future__ import annotations

import pytest

from server_stub.config import MqttLimits
from server_stub.mqtt import codec
from server_stub.mqtt.errors import MqttProtocolError
from server_stub.mqtt.recent import RecentMessages, message_size
from server_stub.mqtt.session import (
    MAX_PACKET_ID,
    Closed,
    ConnectAccepted,
    ConnectReceived,
    Expired,
    HandshakeDone,
    PacketReceived,
    Session,
    State,
    Tick,
    WillDue,
)
from server_stub.mqtt.topics import device_prefixes
from server_stub.ports import AuthenticatedDevice, DeviceMessage

LIMITS = MqttLimits(
    handshake_timeout=10,
    connect_timeout=5,
    max_filters_per_session=3,
    max_filter_levels=6,
    max_filter_bytes=40,
)
DEVICE = AuthenticatedDevice(1, "pk", "dev", "CA1", "01")
WILL = codec.Will("/pk/dev/user/will", b"gone", 1)


def connected(limits: MqttLimits = LIMITS, will: codec.Will | None = WILL) -> Session:
    s = Session(limits, now=100.0)
    s.handle(HandshakeDone(101.0))
    s.handle(PacketReceived(102.0, codec.Connect("c", 60)))
    s.handle(ConnectReceived(102.0))
    s.handle(ConnectAccepted(102.0, DEVICE, device_prefixes("pk", "dev"), 60, will))
    return s


def test_states_and_deadlines_in_order() -> None:
    s = Session(LIMITS, now=100.0)
    assert (s.state, s.deadline, s.authenticated) == (State.HANDSHAKE, 110.0, False)
    assert s.handle(Tick(109.9)) is None
    assert s.handle(Tick(110.0)) == Expired("no TLS handshake within 10 s", tls_shutdown=False)
    s.handle(HandshakeDone(101.0))
    assert (s.state, s.deadline) == (State.AWAIT_CONNECT, 106.0)
    assert s.handle(Tick(106.0)) == Expired("no CONNECT within 5 s after the handshake", True)
    s.handle(PacketReceived(102.0, codec.Connect("c", 60)))
    s.handle(ConnectReceived(102.0))
    assert s.state is State.AUTHENTICATING and not s.authenticated
    assert s.handle(Tick(1e9)) is None  # the registry lookup is not timed out by the sweep
    s.handle(ConnectAccepted(102.0, DEVICE, device_prefixes("pk", "dev"), 60, None))
    assert (s.state, s.deadline, s.authenticated, s.device) == (
        State.CONNECTED,
        192.0,
        True,
        DEVICE,
    )
    s.handle(PacketReceived(150.0, codec.Pingreq()))
    assert s.deadline == 240.0
    assert s.handle(Tick(239.0)) is None
    assert s.handle(Tick(240.0)) == Expired("keep-alive: nothing received for 1.5 x 60 s", True)


@pytest.mark.parametrize(
    "packet",
    [codec.Pingreq(), codec.Subscribe(1, (("/pk/dev/a", 0),)), codec.Publish("/pk/dev/a", b"")],
)
def test_packets_before_connect_are_protocol_errors(packet: codec.Packet) -> None:
    s = Session(LIMITS, now=0.0)
    s.handle(HandshakeDone(0.0))
    with pytest.raises(MqttProtocolError, match="before CONNECT"):
        s.handle(PacketReceived(0.0, packet))


def test_second_connect_and_out_of_order_events_are_refused() -> None:
    s = connected()
    with pytest.raises(MqttProtocolError, match="second CONNECT"):
        s.handle(PacketReceived(103.0, codec.Connect("c", 60)))
    with pytest.raises(MqttProtocolError, match="HandshakeDone in state connected"):
        s.handle(HandshakeDone(0.0))
    fresh = Session(LIMITS, now=0.0)
    with pytest.raises(MqttProtocolError, match="ConnectAccepted in state handshake"):
        fresh.handle(ConnectAccepted(0.0, DEVICE, ("a", "b"), 60, None))


def test_will_is_due_only_when_a_connected_session_ends_without_disconnect() -> None:
    s = connected()
    assert s.handle(Closed()) == WillDue(WILL)
    assert s.state is State.CLOSED
    assert s.handle(Closed()) is None and s.handle(Tick(1e9)) is None  # closed ignores all
    polite = connected()
    polite.handle(PacketReceived(103.0, codec.Disconnect()))
    assert polite.handle(Closed()) is None
    early = Session(LIMITS, now=0.0)
    assert early.handle(Closed()) is None


def test_subscribe_limits_filters_levels_bytes_and_topic_space() -> None:
    s = connected()
    result = s.subscribe(
        (
            ("/pk/dev/a", 1),
            ("/pk/dev/b", 2),
            ("/pk/other/x", 0),
            ("/pk/dev/" + "x" * 40, 0),
            ("/pk/dev/1/2/3/4", 0),
            ("/pk/dev/c", 0),
            ("/pk/dev/d", 0),
        )
    )
    assert result.codes == (1, 1, 0x80, 0x80, 0x80, 0, 0x80)
    assert result.granted == (("/pk/dev/a", 1), ("/pk/dev/b", 1), ("/pk/dev/c", 0))
    assert len(result.refused) == 4
    assert "outside the device's topics" in result.refused[0]
    assert "48 bytes (max_filter_bytes 40)" in result.refused[1]
    assert "7 levels (max_filter_levels 6)" in result.refused[2]
    assert "max_filters_per_session 3" in result.refused[3]
    # re-subscribing a held filter is not a new filter; unsubscribing frees a place
    assert s.subscribe((("/pk/dev/a", 0),)).codes == (0,)
    assert s.unsubscribe(("/pk/dev/a", "/pk/dev/none")) == ["/pk/dev/a"]
    assert s.subscribe((("/pk/dev/d", 0),)).codes == (0,)
    assert set(s.filters) == {"/pk/dev/b", "/pk/dev/c", "/pk/dev/d"}


def test_oversized_filter_is_refused_without_being_logged_whole() -> None:
    s = connected()
    huge = "/pk/dev/x" + "/" * 65_000
    result = s.subscribe(((huge, 0),))
    assert result.codes == (0x80,) and s.filters == {}
    assert len(result.refused[0]) < 100


def test_packet_ids_are_allocated_and_freed_and_bounded() -> None:
    s = connected()
    first = s.allocate_packet_id()
    assert first == 1 and s.allocate_packet_id() == 2
    s.handle(PacketReceived(103.0, codec.Puback(1)))
    assert s.inflight == {2}
    s.inflight = set(range(1, MAX_PACKET_ID + 1))
    assert s.allocate_packet_id() is None
    s.inflight.discard(7)
    assert s.allocate_packet_id() == 7


# --- the recent-messages store ---------------------------------------------------------------


def msg(topic: str, size: int) -> DeviceMessage:
    return DeviceMessage(topic, b"x" * size, 0, 0.0)


def test_store_keeps_per_device_count_and_bytes() -> None:
    store = RecentMessages(
        MqttLimits(
            recent_messages_per_device=3, recent_bytes_per_device=1000, recent_bytes_total=10_000
        )
    )
    for i in range(5):
        store.add(("pk", "a"), msg(f"/t{i}", 100))
    assert [m.topic for m in store.get(("pk", "a"), 100)] == ["/t2", "/t3", "/t4"]
    store.add(("pk", "a"), msg("/big", 900))  # 903 bytes: the three older ones must go
    assert [m.topic for m in store.get(("pk", "a"), 100)] == ["/big"]
    assert store.total_bytes == 904 and len(store) == 1
    store.add(("pk", "a"), msg("/toolarge", 1001))  # could never be kept: ignored
    assert [m.topic for m in store.get(("pk", "a"), 100)] == ["/big"]


def test_store_global_budget_drops_the_oldest_of_all() -> None:
    store = RecentMessages(
        MqttLimits(
            recent_messages_per_device=100, recent_bytes_per_device=10_000, recent_bytes_total=1_000
        )
    )
    for i in range(8):
        for dev in ("a", "b"):
            store.add(("pk", dev), msg(f"/{dev}{i}", 97))  # 100 bytes each
    assert store.total_bytes == 1_000 and len(store) == 10
    assert [m.topic for m in store.get(("pk", "a"), 100)] == ["/a3", "/a4", "/a5", "/a6", "/a7"]
    assert sum(message_size(m) for d in ("a", "b") for m in store.get(("pk", d), 100)) == 1_000


def test_store_forgets_devices_that_left_after_retention() -> None:
    store = RecentMessages(MqttLimits(recent_retention=60))
    store.add(("pk", "gone"), msg("/g", 10))
    store.add(("pk", "back"), msg("/b", 10))
    store.add(("pk", "stays"), msg("/s", 10))
    store.left(("pk", "gone"), 100.0)
    store.left(("pk", "back"), 100.0)
    store.returned(("pk", "back"))
    assert store.expire(159.0) == 0
    assert store.expire(160.0) == 1
    assert store.get(("pk", "gone"), 10) == [] and len(store) == 2
    assert store.total_bytes == 2 * 12


def test_store_bookkeeping_stays_bounded_under_churn() -> None:
    store = RecentMessages(MqttLimits(recent_messages_per_device=2))
    for i in range(20_000):
        store.add(("pk", f"d{i % 10}"), msg("/t", 1))
    assert len(store) == 20
    assert len(store._order) <= 2 * len(store) + 1024
