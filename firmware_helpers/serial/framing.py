"""Frames on the serial line: COBS-delimited, with a fixed header and CRC-16/XMODEM. No I/O.

Why COBS rather than SLIP: COBS adds at most one byte per 254 (plus the 0x00 delimiter) whatever
the data, so the line overhead is fixed and small; SLIP doubles every 0xC0/0xDB byte, so binary
payloads (SHA-256 digests, DER) could grow by up to 100%. A 0x00 delimiter also resynchronises
after any corruption: the next frame starts after the next zero.

A frame before COBS encoding (all integers big-endian)::

    version:u8  type:u8  seq:u16  length:u16  payload:length bytes  crc:u16

``crc`` is CRC-16/XMODEM (poly 0x1021, init 0x0000, no reflection, no final XOR) over every byte
before it, i.e. ``binascii.crc_hqx(data, 0)``. Check value: ``crc16(b"123456789") == 0x31C3``.
Every protocol version keeps this header layout, so a peer speaking another version is reported
as such instead of being seen as line noise.
"""

from __future__ import annotations

import binascii
import struct
from dataclasses import dataclass

from firmware_helpers.errors import BadCRCError, FrameError

DELIMITER = b"\x00"
HEADER = struct.Struct(">BBHH")
CRC = struct.Struct(">H")
HEADER_SIZE = HEADER.size
CRC_SIZE = CRC.size
#: Largest payload of one frame; the chunk size a board advertises must leave room for DATA's
#: 4-byte offset.
MAX_PAYLOAD = 8192
MAX_RAW_FRAME = HEADER_SIZE + MAX_PAYLOAD + CRC_SIZE
#: COBS adds one byte per 254 plus one; anything longer between delimiters is not a frame.
MAX_ENCODED_FRAME = MAX_RAW_FRAME + MAX_RAW_FRAME // 254 + 2

CRC_CHECK_INPUT = b"123456789"
CRC_CHECK_VALUE = 0x31C3


def crc16(data: bytes) -> int:
    """CRC-16/XMODEM of ``data`` (``binascii.crc_hqx(data, 0)``; check value 0x31C3)."""
    return binascii.crc_hqx(data, 0)


def cobs_encode(data: bytes) -> bytes:
    """Consistent Overhead Byte Stuffing: the result contains no 0x00 byte."""
    out = bytearray()
    for part in data.split(b"\x00"):
        # Each part was followed by a zero (except the last); a code byte below 255 stands for
        # "this many bytes minus one, then a zero", 255 for "254 bytes, no zero".
        while len(part) >= 254:
            out.append(255)
            out += part[:254]
            part = part[254:]
        out.append(len(part) + 1)
        out += part
    return bytes(out)


def cobs_decode(data: bytes) -> bytes:
    """Undo :func:`cobs_encode`; raise :class:`FrameError` on anything it cannot have made."""
    out = bytearray()
    index = 0
    length = len(data)
    if length == 0:
        raise FrameError("empty frame")
    while index < length:
        code = data[index]
        if code == 0:
            raise FrameError("zero byte inside a COBS frame")
        end = index + code
        if end > length:
            raise FrameError("COBS block runs past the end of the frame")
        block = data[index + 1 : end]
        if 0 in block:
            raise FrameError("zero byte inside a COBS frame")
        out += block
        index = end
        if code != 255 and index < length:
            out.append(0)
    return bytes(out)


@dataclass(frozen=True, slots=True)
class Frame:
    """One decoded frame: the protocol layer gives ``type`` and ``payload`` their meaning."""

    version: int
    type: int
    seq: int
    payload: bytes = b""

    def __post_init__(self) -> None:
        if not 0 <= self.version <= 0xFF or not 0 <= self.type <= 0xFF:
            raise ValueError("version and type are single bytes")
        if not 0 <= self.seq <= 0xFFFF:
            raise ValueError("seq is a 16-bit number")
        if len(self.payload) > MAX_PAYLOAD:
            raise ValueError(f"payload of {len(self.payload)} bytes exceeds {MAX_PAYLOAD}")


def pack_frame(frame: Frame) -> bytes:
    """The raw frame (header, payload, CRC) before COBS."""
    body = HEADER.pack(frame.version, frame.type, frame.seq, len(frame.payload)) + frame.payload
    return body + CRC.pack(crc16(body))


def unpack_frame(raw: bytes) -> Frame:
    """Parse a raw (COBS-decoded) frame; raise :class:`FrameError` / :class:`BadCRCError`."""
    if len(raw) < HEADER_SIZE + CRC_SIZE:
        raise FrameError(f"frame of {len(raw)} bytes is shorter than header and CRC")
    if len(raw) > MAX_RAW_FRAME:
        raise FrameError(f"frame of {len(raw)} bytes is longer than {MAX_RAW_FRAME}")
    body, (crc,) = raw[:-CRC_SIZE], CRC.unpack(raw[-CRC_SIZE:])
    if crc16(body) != crc:
        raise BadCRCError(f"bad CRC: frame says {crc:#06x}, contents give {crc16(body):#06x}")
    version, type_, seq, length = HEADER.unpack(body[:HEADER_SIZE])
    payload = body[HEADER_SIZE:]
    if length != len(payload):
        raise FrameError(f"length field says {length} bytes, frame holds {len(payload)}")
    return Frame(version, type_, seq, bytes(payload))


def encode_frame(frame: Frame) -> bytes:
    """The bytes to put on the line: COBS(raw frame) followed by the 0x00 delimiter."""
    return cobs_encode(pack_frame(frame)) + DELIMITER


def decode_frame(packet: bytes) -> Frame:
    """Decode one COBS packet (without its delimiter)."""
    if len(packet) > MAX_ENCODED_FRAME:
        raise FrameError(f"{len(packet)} bytes between delimiters is longer than any frame")
    return unpack_frame(cobs_decode(packet))


@dataclass(frozen=True, slots=True)
class CorruptFrame:
    """What the decoder reports for bytes between delimiters that are not a frame."""

    error: FrameError

    @property
    def bad_crc(self) -> bool:
        return isinstance(self.error, BadCRCError)


class FrameDecoder:
    """Stream decoder: feed any slices of the byte stream, get frames and corruption reports.

    It never raises on input: corruption is reported as :class:`CorruptFrame` and the decoder
    resynchronises at the next delimiter. Bytes after the last delimiter wait for more input.
    """

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._overflowed = False

    @property
    def pending(self) -> int:
        """Bytes received since the last delimiter."""
        return len(self._buffer)

    def reset(self) -> None:
        self._buffer.clear()
        self._overflowed = False

    def feed(self, data: bytes) -> list[Frame | CorruptFrame]:
        events: list[Frame | CorruptFrame] = []
        start = 0
        while start <= len(data):
            end = data.find(0, start)
            if end < 0:
                self._take(data[start:])
                break
            self._take(data[start:end])
            events.extend(self._finish())
            start = end + 1
        return events

    def _take(self, part: bytes) -> None:
        if self._overflowed:
            return
        self._buffer += part
        if len(self._buffer) > MAX_ENCODED_FRAME:
            self._buffer.clear()
            self._overflowed = True

    def _finish(self) -> list[Frame | CorruptFrame]:
        if self._overflowed:
            self._overflowed = False
            return [CorruptFrame(FrameError("too many bytes without a delimiter"))]
        if not self._buffer:
            return []  # back-to-back delimiters: idle line or resynchronisation
        packet = bytes(self._buffer)
        self._buffer.clear()
        try:
            return [decode_frame(packet)]
        except FrameError as exc:
            return [CorruptFrame(exc)]
