"""Framing: COBS + header + CRC-16/XMODEM, whole, byte-at-a-time, with garbage, by property."""

from __future__ import annotations

import binascii

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from firmware_helpers.errors import BadCRCError, FrameError
from firmware_helpers.serial.framing import (
    CRC_CHECK_INPUT,
    CRC_CHECK_VALUE,
    MAX_ENCODED_FRAME,
    MAX_PAYLOAD,
    CorruptFrame,
    Frame,
    FrameDecoder,
    cobs_decode,
    cobs_encode,
    crc16,
    decode_frame,
    encode_frame,
    pack_frame,
)

FRAMES = [
    Frame(1, 0x01, 0, b"\x10\x00"),
    Frame(1, 0x11, 513, bytes(range(256)) * 3),
    Frame(1, 0x40, 0xFFFF, b""),
    Frame(2, 0x41, 7, b"\x00\x00\x00"),
]


def test_crc_is_xmodem_with_documented_check_value() -> None:
    assert CRC_CHECK_INPUT == b"123456789"
    assert crc16(CRC_CHECK_INPUT) == 0x31C3 == CRC_CHECK_VALUE
    assert crc16(CRC_CHECK_INPUT) == binascii.crc_hqx(b"123456789", 0)
    assert crc16(CRC_CHECK_INPUT) != 0x29B1  # CRC-16/CCITT-FALSE (init 0xFFFF) is another CRC


def test_documented_frame_vector() -> None:
    """The example frame in docs/serial-protocol.md, byte for byte."""
    frame = Frame(version=1, type=0x40, seq=0x0102, payload=b"")
    assert pack_frame(frame).hex() == "0140010200004c1c"
    assert crc16(bytes.fromhex("014001020000")) == 0x4C1C
    assert encode_frame(frame).hex() == "050140010201034c1c00"
    assert decode_frame(encode_frame(frame)[:-1]) == frame


@pytest.mark.parametrize(
    ("raw", "encoded"),
    [  # vectors from the COBS paper / common references
        (b"\x00", b"\x01\x01"),
        (b"\x00\x00", b"\x01\x01\x01"),
        (b"\x11\x22\x00\x33", b"\x03\x11\x22\x02\x33"),
        (b"\x11\x22\x33\x44", b"\x05\x11\x22\x33\x44"),
        (b"\x11\x00\x00\x00", b"\x02\x11\x01\x01\x01"),
        (bytes(range(1, 255)), b"\xff" + bytes(range(1, 255)) + b"\x01"),
    ],
)
def test_cobs_vectors(raw: bytes, encoded: bytes) -> None:
    assert cobs_encode(raw) == encoded
    assert cobs_decode(encoded) == raw


@pytest.mark.parametrize("frame", FRAMES)
def test_whole_frame_round_trip(frame: Frame) -> None:
    wire = encode_frame(frame)
    assert wire.count(0) == 1 and wire.endswith(b"\x00")
    assert FrameDecoder().feed(wire) == [frame]


def test_byte_at_a_time() -> None:
    wire = b"".join(encode_frame(f) for f in FRAMES)
    decoder = FrameDecoder()
    out = []
    for i in range(len(wire)):
        out.extend(decoder.feed(wire[i : i + 1]))
    assert out == FRAMES


def test_trailing_garbage_waits_and_leading_garbage_is_reported() -> None:
    decoder = FrameDecoder()
    assert decoder.feed(encode_frame(FRAMES[0]) + b"\x05\x01\x02") == [FRAMES[0]]
    assert decoder.pending == 3
    events = decoder.feed(b"\x00" + encode_frame(FRAMES[1]))
    assert isinstance(events[0], CorruptFrame) and events[1:] == [FRAMES[1]]


def test_flipped_bit_is_a_bad_crc() -> None:
    wire = bytearray(encode_frame(FRAMES[1]))
    wire[40] ^= 0x04
    (event,) = FrameDecoder().feed(bytes(wire))
    assert isinstance(event, CorruptFrame) and event.bad_crc
    with pytest.raises(BadCRCError, match="bad CRC"):
        decode_frame(bytes(wire[:-1]))


def test_overlong_run_without_delimiter_is_dropped_then_resyncs() -> None:
    decoder = FrameDecoder()
    assert decoder.feed(b"\x01" * (MAX_ENCODED_FRAME + 10)) == []
    events = decoder.feed(b"\x00" + encode_frame(FRAMES[0]))
    assert isinstance(events[0], CorruptFrame) and "delimiter" in str(events[0].error)
    assert events[1:] == [FRAMES[0]]


@pytest.mark.parametrize(
    ("packet", "message"),
    [
        (b"", "empty"),
        (b"\x05\x01", "past the end"),
        (cobs_encode(b"\x01\x02\x03"), "shorter than header"),
        (cobs_encode(bytes.fromhex("014001020005") + b"\x00\x00"), "bad CRC"),
    ],
)
def test_bad_packets_name_the_problem(packet: bytes, message: str) -> None:
    with pytest.raises(FrameError, match=message):
        decode_frame(packet)


def test_length_field_must_match() -> None:
    body = bytes.fromhex("014001020005") + b"ab"
    raw = body + crc16(body).to_bytes(2, "big")
    with pytest.raises(FrameError, match="length field says 5"):
        decode_frame(cobs_encode(raw))


def test_frame_refuses_out_of_range_fields() -> None:
    with pytest.raises(ValueError, match="payload"):
        Frame(1, 1, 0, b"x" * (MAX_PAYLOAD + 1))
    with pytest.raises(ValueError, match="16-bit"):
        Frame(1, 1, 0x10000)


frames = st.builds(
    Frame,
    version=st.integers(0, 255),
    type=st.integers(0, 255),
    seq=st.integers(0, 0xFFFF),
    payload=st.binary(max_size=600),
)


@settings(max_examples=150, deadline=None)
@given(st.lists(frames, min_size=1, max_size=5), st.data())
def test_round_trip_any_split(batch: list[Frame], data: st.DataObject) -> None:
    wire = b"".join(encode_frame(f) for f in batch)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(wire)), max_size=8)))
    decoder = FrameDecoder()
    out = []
    for start, end in zip([0, *cuts], [*cuts, len(wire)], strict=True):
        out.extend(decoder.feed(wire[start:end]))
    assert out == batch
    assert decoder.pending == 0


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2000))
def test_random_garbage_only_ever_raises_frame_error(garbage: bytes) -> None:
    try:
        decode_frame(garbage)
    except FrameError:
        pass
    events = FrameDecoder().feed(garbage)  # the stream decoder never raises at all
    assert all(isinstance(e, Frame | CorruptFrame) for e in events)


@settings(max_examples=200, deadline=None)
@given(frames, st.integers(0, 10_000), st.integers(0, 7))
def test_any_single_bit_flip_is_detected(frame: Frame, where: int, bit: int) -> None:
    raw = bytearray(pack_frame(frame))
    raw[where % len(raw)] ^= 1 << bit
    with pytest.raises(FrameError):
        decode_frame(cobs_encode(bytes(raw)))
