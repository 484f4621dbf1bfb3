"""The MQTT 3.1.1 a simulated device speaks, sans-IO: packets to bytes, bytes to packets.

Why the simulator has its own (and does not drive paho): one Locust worker holds thousands of
devices, and a paho client per device costs a thread-safe client object, its own queues and a
logger, and a network greenlet. A device of the simulator needs a small, fixed part of MQTT --
CONNECT, PUBLISH QoS 0/1 both ways, PUBACK, SUBSCRIBE, PINGREQ, DISCONNECT -- which this module
encodes, and :class:`Parser` turns a byte stream into the packets a server sends. No sockets,
no clocks: :mod:`simulator.link` does the I/O.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from simulator.errors import SimulatorError

#: A server packet larger than this ends the connection (a device expects small messages).
MAX_PACKET = 256 * 1024

CONNACK, PUBLISH, PUBACK, SUBACK, UNSUBACK, PINGRESP = 2, 3, 4, 9, 11, 13
PINGREQ_BYTES = b"\xc0\x00"
DISCONNECT_BYTES = b"\xe0\x00"


class ServerPacketError(SimulatorError):
    """The server sent bytes that are not the MQTT 3.1.1 a device expects."""


@dataclass(frozen=True, slots=True)
class Connack:
    code: int


@dataclass(frozen=True, slots=True)
class Publish:
    topic: str
    payload: bytes
    qos: int
    packet_id: int | None


@dataclass(frozen=True, slots=True)
class Ack:
    """PUBACK, SUBACK or UNSUBACK (``kind`` is the packet type); SUBACK's return codes."""

    kind: int
    packet_id: int
    codes: bytes = b""


@dataclass(frozen=True, slots=True)
class PingResp:
    pass


Packet = Connack | Publish | Ack | PingResp


def _length(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | 0x80 if n else byte)
        if not n:
            return bytes(out)


def _text(value: str) -> bytes:
    data = value.encode()
    return struct.pack("!H", len(data)) + data


def connect(client_id: str, keepalive: int, username: str | None = None) -> bytes:
    """CONNECT, MQTT 3.1.1, clean session, an optional username, no password."""
    flags = 0x02 | (0x80 if username is not None else 0)
    body = b"\x00\x04MQTT\x04" + bytes((flags,)) + struct.pack("!H", keepalive)
    body += _text(client_id)
    if username is not None:
        body += _text(username)
    return b"\x10" + _length(len(body)) + body


def publish(topic: str, payload: bytes, qos: int, packet_id: int | None = None) -> bytes:
    if qos not in (0, 1):
        raise ValueError(f"QoS {qos} is not supported; the platform accepts QoS 0 and 1")
    body = _text(topic)
    if qos:
        if packet_id is None:
            raise ValueError("a QoS 1 PUBLISH needs a packet id")
        body += struct.pack("!H", packet_id)
    body += payload
    return bytes((0x30 | qos << 1,)) + _length(len(body)) + body


def puback(packet_id: int) -> bytes:
    return b"\x40\x02" + struct.pack("!H", packet_id)


def subscribe(packet_id: int, topic: str, qos: int) -> bytes:
    body = struct.pack("!H", packet_id) + _text(topic) + bytes((qos,))
    return b"\x82" + _length(len(body)) + body


class Parser:
    """Bytes in (:meth:`feed`), whole packets out; a partial packet waits for more bytes."""

    __slots__ = ("_buffer",)

    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, data: bytes) -> list[Packet]:
        buffer = self._buffer + data if self._buffer else data
        packets: list[Packet] = []
        offset = 0
        while True:
            header = _header(buffer, offset)
            if header is None:
                break
            start, size = header
            end = start + size
            if end > len(buffer):
                break
            packets.append(_decode(buffer[offset], buffer[start:end]))
            offset = end
        self._buffer = buffer[offset:]
        return packets


def _header(buffer: bytes, offset: int) -> tuple[int, int] | None:
    """(start of the body, its length), or None while the fixed header is incomplete."""
    size, multiplier = 0, 1
    for i in range(offset + 1, min(offset + 5, len(buffer))):
        byte = buffer[i]
        size += (byte & 0x7F) * multiplier
        if not byte & 0x80:
            if size > MAX_PACKET:
                raise ServerPacketError(
                    f"the server sent a {size}-byte packet (limit {MAX_PACKET})"
                )
            return i + 1, size
        multiplier *= 128
    if len(buffer) - offset >= 5:
        raise ServerPacketError("malformed remaining length in a packet from the server")
    return None


def _decode(first: int, body: bytes) -> Packet:
    kind = first >> 4
    try:
        if kind == CONNACK:
            return Connack(body[1])
        if kind == PUBLISH:
            qos = (first >> 1) & 3
            (length,) = struct.unpack_from("!H", body)
            topic = body[2 : 2 + length].decode()
            at = 2 + length
            packet_id = None
            if qos:
                (packet_id,) = struct.unpack_from("!H", body, at)
                at += 2
            return Publish(topic, body[at:], qos, packet_id)
        if kind in (PUBACK, SUBACK, UNSUBACK):
            (packet_id,) = struct.unpack_from("!H", body)
            return Ack(kind, packet_id, body[2:])
        if kind == PINGRESP:
            return PingResp()
    except (IndexError, struct.error, UnicodeDecodeError) as exc:
        raise ServerPacketError(f"malformed MQTT packet of type {kind} from the server") from exc
    raise ServerPacketError(
        f"the server sent an MQTT packet of type {kind}, which a device never gets"
    )
