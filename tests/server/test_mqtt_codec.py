"""The MQTT 3.1.1 codec: whole, byte at a time, trailing garbage, round trips, malformed input."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from server_stub.mqtt import codec
from server_stub.mqtt.codec import (
    Connack,
    Connect,
    Decoder,
    Disconnect,
    Pingreq,
    Pingresp,
    Puback,
    Publish,
    Suback,
    Subscribe,
    Unsuback,
    Unsubscribe,
    Will,
    encode,
)
from server_stub.mqtt.errors import (
    InvalidTopicError,
    MqttError,
    MqttProtocolError,
    UnacceptableProtocolLevelError,
)

SAMPLES: list[codec.Packet] = [
    Connect("dev|securemode=2,signmethod=sha256|", 300),
    Connect("x", 60, False, "dev01&pk1", b"ignored", Will("/pk1/dev01/will", b"bye", 1, True)),
    Connack(0),
    Connack(5, True),
    Publish("/pk/dev/user/a", b"hello"),
    Publish("/pk/dev/user/a", b"\x00" * 300, 1, retain=True, dup=True, packet_id=65535),
    Puback(7),
    Subscribe(1, (("/pk/dev/#", 1), ("/pk/+/x", 0), ("a", 2))),
    Suback(1, (0, 1, 0x80)),
    Unsubscribe(2, ("/pk/dev/#", "b")),
    Unsuback(2),
    Pingreq(),
    Pingresp(),
    Disconnect(),
]


def _stream() -> bytes:
    return b"".join(encode(p) for p in SAMPLES)


def test_whole_stream_decodes_every_packet() -> None:
    assert Decoder().feed(_stream()) == SAMPLES


def test_byte_at_a_time_gives_the_same_packets() -> None:
    decoder, out = Decoder(), []
    for b in _stream():
        out += decoder.feed(bytes([b]))
    assert out == SAMPLES
    assert decoder.buffered == 0


def test_incomplete_tail_is_kept_for_the_next_feed() -> None:
    data = encode(SAMPLES[5])
    decoder = Decoder()
    assert decoder.feed(data[:-1]) == []
    assert decoder.buffered == len(data) - 1
    assert decoder.feed(data[-1:] + encode(Pingreq())) == [SAMPLES[5], Pingreq()]


def test_trailing_garbage_after_valid_packets_raises_after_them() -> None:
    decoder = Decoder()
    good = encode(Pingreq()) + encode(Puback(3))
    with pytest.raises(MqttProtocolError, match="reserved or not supported"):
        decoder.feed(good + b"\xf0\x00")
    # the decoder stays broken: the stream cannot be framed any more
    with pytest.raises(MqttProtocolError):
        decoder.feed(encode(Pingreq()))


def test_incomplete_garbage_waits_then_fails() -> None:
    decoder = Decoder()
    assert decoder.feed(encode(Pingreq()) + b"\x30") == [Pingreq()]
    with pytest.raises(MqttProtocolError, match="topic name"):
        decoder.feed(b"\x03\x00\x05a")  # topic length 5, only 1 byte present


# --- property-based round trips ---------------------------------------------------------------

_level = st.text(
    alphabet=st.characters(blacklist_characters="/+#\x00", blacklist_categories=["Cs"]),
    max_size=8,
)
topic_names = st.lists(_level, min_size=1, max_size=5).map("/".join).filter(bool)
topic_filters = st.builds(
    lambda levels, tail: "/".join(levels + tail),
    st.lists(st.one_of(_level, st.just("+")), min_size=1, max_size=5),
    st.sampled_from([[], ["#"]]),
).filter(bool)
texts = st.text(
    alphabet=st.characters(blacklist_characters="\x00", blacklist_categories=["Cs"]), max_size=30
)
packet_ids = st.integers(1, 0xFFFF)
payloads = st.binary(max_size=300)


@st.composite
def publishes(draw: st.DrawFn) -> Publish:
    qos = draw(st.integers(0, 2))
    return Publish(
        draw(topic_names),
        draw(payloads),
        qos,
        draw(st.booleans()),
        draw(st.booleans()) if qos else False,
        draw(packet_ids) if qos else None,
    )


@st.composite
def connects(draw: st.DrawFn) -> Connect:
    username = draw(st.one_of(st.none(), texts))
    password = draw(st.one_of(st.none(), st.binary(max_size=20))) if username is not None else None
    will = draw(
        st.one_of(
            st.none(), st.builds(Will, topic_names, payloads, st.integers(0, 2), st.booleans())
        )
    )
    return Connect(
        draw(texts), draw(st.integers(0, 0xFFFF)), draw(st.booleans()), username, password, will
    )


packets = st.one_of(
    connects(),
    st.builds(Connack, st.integers(0, 5), st.booleans()),
    publishes(),
    st.builds(Puback, packet_ids),
    st.builds(
        Subscribe,
        packet_ids,
        st.lists(st.tuples(topic_filters, st.integers(0, 2)), min_size=1, max_size=4).map(tuple),
    ),
    st.builds(
        Suback,
        packet_ids,
        st.lists(st.sampled_from([0, 1, 2, 0x80]), min_size=1, max_size=4).map(tuple),
    ),
    st.builds(Unsubscribe, packet_ids, st.lists(topic_filters, min_size=1, max_size=4).map(tuple)),
    st.builds(Unsuback, packet_ids),
    st.just(Pingreq()),
    st.just(Pingresp()),
    st.just(Disconnect()),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(packets, min_size=1, max_size=5), st.integers(1, 7))
def test_round_trip_of_every_packet_type(sample: list[codec.Packet], step: int) -> None:
    data = b"".join(encode(p) for p in sample)
    assert Decoder().feed(data) == sample
    decoder, out = Decoder(), []
    for i in range(0, len(data), step):
        out += decoder.feed(data[i : i + step])
    assert out == sample


@given(st.integers(1, codec.MAX_REMAINING_LENGTH))
def test_remaining_length_round_trip(n: int) -> None:
    encoded = codec.encode_remaining_length(n)
    assert 1 <= len(encoded) <= 4
    # decode through a PUBLISH header: the decoder must read the same length back
    decoder = Decoder(max_packet_size=codec.MAX_REMAINING_LENGTH)
    assert decoder.feed(b"\x30" + encoded) == []
    assert decoder.buffered == 1 + len(encoded)


# --- malformed input: each raises the one protocol error type ---------------------------------


def _connect_body(
    name: bytes = b"\x00\x04MQTT",
    level: int = 4,
    flags: int = 0x02,
    keep_alive: bytes = b"\x01\x2c",
    rest: bytes = b"\x00\x01a",
) -> bytes:
    body = name + bytes((level, flags)) + keep_alive + rest
    return bytes((0x10, len(body))) + body


MALFORMED = {
    "five-byte remaining length": (b"\x30\xff\xff\xff\xff\x01", "more than 4 bytes"),
    "reserved packet type 0": (b"\x00\x00", "reserved or not supported"),
    "reserved packet type 15": (b"\xf0\x00", "reserved or not supported"),
    "PUBREC (QoS 2 flow)": (b"\x50\x02\x00\x01", "reserved or not supported"),
    "SUBSCRIBE without flag bit 1": (b"\x80\x06\x00\x01\x00\x01a\x00", "fixed-header flags"),
    "PINGREQ with flags": (b"\xc1\x00", "fixed-header flags"),
    "PINGREQ with a body": (b"\xc0\x01\x00", "must have no body"),
    "DISCONNECT with a body": (b"\xe0\x01\x00", "must have no body"),
    "PUBLISH QoS 3": (b"\x36\x05\x00\x01a\x00\x01", "QoS 3"),
    "PUBLISH QoS 0 with DUP": (b"\x38\x03\x00\x01a", "DUP"),
    "PUBLISH with + in topic": (b"\x30\x03\x00\x01+", "wildcard"),
    "PUBLISH with # in topic": (b"\x30\x05\x00\x03a/#", "wildcard"),
    "PUBLISH with empty topic": (b"\x30\x02\x00\x00", "empty"),
    "PUBLISH with bad UTF-8": (b"\x30\x04\x00\x02\xc3\x28", "UTF-8"),
    "PUBLISH with U+0000": (b"\x30\x04\x00\x02a\x00", "U\\+0000"),
    "PUBLISH with surrogate": (b"\x30\x05\x00\x03\xed\xa0\x80", "UTF-8"),
    "PUBLISH QoS 1 packet id 0": (b"\x32\x05\x00\x01a\x00\x00", "identifier 0"),
    "PUBLISH QoS 1 without packet id": (b"\x32\x03\x00\x01a", "ends before"),
    "PUBACK too long": (b"\x40\x03\x00\x01\x00", "unexpected bytes"),
    "PUBACK too short": (b"\x40\x01\x00", "ends before"),
    "SUBSCRIBE without filters": (b"\x82\x02\x00\x01", "no topic filter"),
    "SUBSCRIBE with QoS 3": (b"\x82\x06\x00\x01\x00\x01a\x03", "QoS 3"),
    "SUBSCRIBE with reserved QoS bits": (b"\x82\x06\x00\x01\x00\x01a\x40", "requested QoS"),
    "SUBSCRIBE with a/#/b": (b"\x82\x0a\x00\x01\x00\x05a/#/b\x00", "whole last level"),
    "SUBSCRIBE with a+": (b"\x82\x07\x00\x01\x00\x02a+\x00", "whole level"),
    "UNSUBSCRIBE without filters": (b"\xa2\x02\x00\x01", "no topic filter"),
    "CONNACK reserved flags": (b"\x20\x02\x02\x00", "reserved acknowledge"),
    "SUBACK bad code": (b"\x90\x03\x00\x01\x03", "return code"),
    "CONNECT protocol name MQIsdp": (_connect_body(name=b"\x00\x06MQIsdp"), "protocol name"),
    "CONNECT reserved flag": (_connect_body(flags=0x03), "reserved connect flag"),
    "CONNECT will QoS without will": (_connect_body(flags=0x0A), "without the will flag"),
    "CONNECT will QoS 3": (_connect_body(flags=0x1E), "will QoS 3"),
    "CONNECT password without username": (
        _connect_body(flags=0x42, rest=b"\x00\x01a\x00\x01p"),
        "password flag",
    ),
    "CONNECT trailing bytes": (_connect_body(rest=b"\x00\x01ab"), "unexpected bytes"),
    "CONNECT client id truncated": (_connect_body(rest=b"\x00\x05a"), "announces 5 bytes"),
    "CONNECT client id with U+0000": (_connect_body(rest=b"\x00\x01\x00"), "U\\+0000"),
}


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_malformed_input_raises_protocol_error(name: str) -> None:
    data, message = MALFORMED[name]
    with pytest.raises(MqttProtocolError, match=message):
        Decoder().feed(data)
    # and byte at a time: same error, never a different exception type
    decoder = Decoder()
    with pytest.raises(MqttProtocolError, match=message):
        for b in data:
            decoder.feed(bytes([b]))


def test_other_protocol_level_is_a_distinct_protocol_error() -> None:
    with pytest.raises(UnacceptableProtocolLevelError, match="level 5") as info:
        Decoder().feed(_connect_body(level=5))
    assert info.value.level == 5
    assert isinstance(info.value, MqttProtocolError)


def test_size_limit_is_enforced_on_the_header_before_the_body_arrives() -> None:
    decoder = Decoder(max_packet_size=1024)
    header = b"\x30" + codec.encode_remaining_length(1025)
    with pytest.raises(MqttProtocolError, match="1025 bytes exceeds the limit of 1024"):
        decoder.feed(header)  # no body sent at all
    assert decoder.buffered == 0


def test_packet_at_the_limit_is_accepted() -> None:
    packet = Publish("t", b"x" * (1024 - 3))
    assert Decoder(max_packet_size=1024).feed(encode(packet)) == [packet]


@given(st.binary(max_size=64))
def test_arbitrary_bytes_never_raise_anything_but_protocol_errors(data: bytes) -> None:
    try:
        Decoder(max_packet_size=1000).feed(data)
    except MqttProtocolError:
        pass


ENCODE_ERRORS = [
    (Publish("a/+", b""), InvalidTopicError),
    (Publish("a", b"", 0, packet_id=3), MqttProtocolError),
    (Publish("a", b"", 1), MqttProtocolError),
    (Publish("a", b"", 3, packet_id=1), MqttProtocolError),
    (Subscribe(1, ()), MqttProtocolError),
    (Subscribe(0, (("a", 0),)), MqttProtocolError),
    (Suback(1, (3,)), MqttProtocolError),
    (Connect("a", 70000), MqttProtocolError),
    (Connect("a", 30, password=b"p"), MqttProtocolError),
    (Connect("a\x00", 30), MqttProtocolError),
]


@pytest.mark.parametrize(("packet", "error"), ENCODE_ERRORS)
def test_encoder_refuses_packets_that_cannot_exist(packet: codec.Packet, error: type) -> None:
    with pytest.raises(error):
        encode(packet)
    assert issubclass(error, MqttError)
