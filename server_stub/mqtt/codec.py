"""MQTT 3.1.1 packets as frozen dataclasses, their encoding, and an incremental decoder. No I/O.

Bytes in, packets out (:class:`Decoder`), and packets back to bytes (:func:`encode`). Covers
CONNECT/CONNACK, PUBLISH (QoS 0, 1 and the QoS 2 header), PUBACK, SUBSCRIBE/SUBACK,
UNSUBSCRIBE/UNSUBACK, PINGREQ/PINGRESP and DISCONNECT. Anything else -- reserved flag bits set,
a 5-byte remaining length, a packet larger than the limit, bad UTF-8 or U+0000 in a string, a
wrong protocol name, wildcards in a PUBLISH topic, trailing bytes inside a packet -- raises
:class:`~server_stub.mqtt.errors.MqttProtocolError`. The decoder checks the size limit on the
remaining length *before* buffering the body, so a peer cannot make the server hold a large
buffer by announcing one.

Why one module of ~600 lines (over the ~500 the code aims for): it has one job, the MQTT 3.1.1
wire format, and its three parts are one table read three ways. Each packet type appears as a
value class, an ``encode`` branch and a ``decode_packet`` branch; a reader checking a rule of the
specification (a flag bit, a field order) reads those three side by side, and the tests
(``tests/server/test_mqtt_codec.py``) round-trip every type through both directions. Split into
packets/encode/decode modules, every packet change would touch three files sharing the packet
classes and type constants, for no caller's benefit: the endpoint, the benchmarks' raw clients
and the tests all use both directions. It stays free of sockets, clocks and state other than the
decoder's buffer: the sans-IO model (h11) it follows.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from server_stub.mqtt.errors import MqttProtocolError, UnacceptableProtocolLevelError
from server_stub.mqtt.topics import validate_topic_filter, validate_topic_name

PROTOCOL_NAME = "MQTT"
PROTOCOL_LEVEL = 4  # MQTT 3.1.1
MAX_REMAINING_LENGTH = 268_435_455  # 4 bytes of variable-length encoding
DEFAULT_MAX_PACKET_SIZE = 256 * 1024

# packet types (high nibble of the first byte)
CONNECT, CONNACK, PUBLISH, PUBACK = 1, 2, 3, 4
SUBSCRIBE, SUBACK, UNSUBSCRIBE, UNSUBACK = 8, 9, 10, 11
PINGREQ, PINGRESP, DISCONNECT = 12, 13, 14

# CONNACK return codes
CONNACK_ACCEPTED = 0
CONNACK_UNACCEPTABLE_PROTOCOL = 1
CONNACK_IDENTIFIER_REJECTED = 2
CONNACK_SERVER_UNAVAILABLE = 3
CONNACK_BAD_USERNAME_OR_PASSWORD = 4
CONNACK_NOT_AUTHORIZED = 5
SUBACK_FAILURE = 0x80


@dataclass(frozen=True, slots=True)
class Will:
    topic: str
    payload: bytes
    qos: int = 0
    retain: bool = False


@dataclass(frozen=True, slots=True)
class Connect:
    client_id: str
    keep_alive: int
    clean_session: bool = True
    username: str | None = None
    password: bytes | None = None
    will: Will | None = None


@dataclass(frozen=True, slots=True)
class Connack:
    return_code: int
    session_present: bool = False


@dataclass(frozen=True, slots=True)
class Publish:
    topic: str
    payload: bytes
    qos: int = 0
    retain: bool = False
    dup: bool = False
    packet_id: int | None = None
    """Present exactly when ``qos`` > 0."""


@dataclass(frozen=True, slots=True)
class Puback:
    packet_id: int


@dataclass(frozen=True, slots=True)
class Subscribe:
    packet_id: int
    topics: tuple[tuple[str, int], ...]
    """(filter, requested QoS) pairs; at least one."""


@dataclass(frozen=True, slots=True)
class Suback:
    packet_id: int
    return_codes: tuple[int, ...]
    """Granted QoS (0, 1, 2) or 0x80 (failure) per requested filter."""


@dataclass(frozen=True, slots=True)
class Unsubscribe:
    packet_id: int
    topics: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Unsuback:
    packet_id: int


@dataclass(frozen=True, slots=True)
class Pingreq:
    pass


@dataclass(frozen=True, slots=True)
class Pingresp:
    pass


@dataclass(frozen=True, slots=True)
class Disconnect:
    pass


Packet = (
    Connect
    | Connack
    | Publish
    | Puback
    | Subscribe
    | Suback
    | Unsubscribe
    | Unsuback
    | Pingreq
    | Pingresp
    | Disconnect
)

PINGREQ_BYTES = b"\xc0\x00"
PINGRESP_BYTES = b"\xd0\x00"
DISCONNECT_BYTES = b"\xe0\x00"


# --- encoding ----------------------------------------------------------------------------------


def encode_remaining_length(length: int) -> bytes:
    if not 0 <= length <= MAX_REMAINING_LENGTH:
        raise MqttProtocolError(f"remaining length {length} cannot be encoded")
    out = bytearray()
    while True:
        digit = length & 0x7F
        length >>= 7
        if length:
            out.append(digit | 0x80)
        else:
            out.append(digit)
            return bytes(out)


def _string(text: str) -> bytes:
    if "\x00" in text:
        raise MqttProtocolError(f"string {text!r} contains U+0000")
    try:
        data = text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise MqttProtocolError(f"string {text!r} is not encodable as UTF-8") from exc
    return _binary(data)


def _binary(data: bytes) -> bytes:
    if len(data) > 0xFFFF:
        raise MqttProtocolError(f"field of {len(data)} bytes exceeds 65535")
    return struct.pack("!H", len(data)) + data


def _packet_id(packet_id: int | None) -> bytes:
    if packet_id is None or not 1 <= packet_id <= 0xFFFF:
        raise MqttProtocolError(f"packet identifier {packet_id!r} must be 1..65535")
    return struct.pack("!H", packet_id)


def _frame(first: int, body: bytes) -> bytes:
    return bytes((first,)) + encode_remaining_length(len(body)) + body


def _check_qos(qos: int, what: str) -> None:
    if qos not in (0, 1, 2):
        raise MqttProtocolError(f"{what} QoS {qos} is not 0, 1 or 2")


def encode(packet: Packet) -> bytes:
    """The wire form of ``packet``; raises :class:`MqttProtocolError` for impossible values."""
    if isinstance(packet, Publish):
        return _encode_publish(packet)
    if isinstance(packet, Puback):
        return _frame(PUBACK << 4, _packet_id(packet.packet_id))
    if isinstance(packet, Connack):
        if not 0 <= packet.return_code <= 255:
            raise MqttProtocolError(f"CONNACK return code {packet.return_code} is not a byte")
        return bytes((CONNACK << 4, 2, int(packet.session_present), packet.return_code))
    if isinstance(packet, Pingreq):
        return PINGREQ_BYTES
    if isinstance(packet, Pingresp):
        return PINGRESP_BYTES
    if isinstance(packet, Disconnect):
        return DISCONNECT_BYTES
    if isinstance(packet, Connect):
        return _encode_connect(packet)
    if isinstance(packet, Subscribe):
        if not packet.topics:
            raise MqttProtocolError("SUBSCRIBE needs at least one topic filter")
        body = bytearray(_packet_id(packet.packet_id))
        for topic_filter, qos in packet.topics:
            validate_topic_filter(topic_filter)
            _check_qos(qos, "requested")
            body += _string(topic_filter) + bytes((qos,))
        return _frame((SUBSCRIBE << 4) | 0x02, bytes(body))
    if isinstance(packet, Suback):
        if not packet.return_codes:
            raise MqttProtocolError("SUBACK needs at least one return code")
        for code in packet.return_codes:
            if code not in (0, 1, 2, SUBACK_FAILURE):
                raise MqttProtocolError(f"SUBACK return code {code:#x} is not 0, 1, 2 or 0x80")
        return _frame(SUBACK << 4, _packet_id(packet.packet_id) + bytes(packet.return_codes))
    if isinstance(packet, Unsubscribe):
        if not packet.topics:
            raise MqttProtocolError("UNSUBSCRIBE needs at least one topic filter")
        body = bytearray(_packet_id(packet.packet_id))
        for topic_filter in packet.topics:
            validate_topic_filter(topic_filter)
            body += _string(topic_filter)
        return _frame((UNSUBSCRIBE << 4) | 0x02, bytes(body))
    if isinstance(packet, Unsuback):
        return _frame(UNSUBACK << 4, _packet_id(packet.packet_id))
    raise MqttProtocolError(f"cannot encode {type(packet).__name__}")


def _encode_publish(packet: Publish) -> bytes:
    _check_qos(packet.qos, "PUBLISH")
    validate_topic_name(packet.topic)
    first = (PUBLISH << 4) | (packet.qos << 1) | int(packet.retain) | (int(packet.dup) << 3)
    if packet.qos == 0:
        if packet.packet_id is not None:
            raise MqttProtocolError("a QoS 0 PUBLISH carries no packet identifier")
        if packet.dup:
            raise MqttProtocolError("a QoS 0 PUBLISH cannot have the DUP flag")
        return _frame(first, _string(packet.topic) + packet.payload)
    return _frame(first, _string(packet.topic) + _packet_id(packet.packet_id) + packet.payload)


def _encode_connect(packet: Connect) -> bytes:
    if not 0 <= packet.keep_alive <= 0xFFFF:
        raise MqttProtocolError(f"keep-alive {packet.keep_alive} is not 0..65535")
    flags = 0x02 if packet.clean_session else 0
    payload = bytearray(_string(packet.client_id))
    if packet.will is not None:
        _check_qos(packet.will.qos, "will")
        validate_topic_name(packet.will.topic)
        flags |= 0x04 | (packet.will.qos << 3) | (0x20 if packet.will.retain else 0)
        payload += _string(packet.will.topic) + _binary(packet.will.payload)
    if packet.username is not None:
        flags |= 0x80
        payload += _string(packet.username)
    if packet.password is not None:
        if packet.username is None:
            raise MqttProtocolError("MQTT 3.1.1 allows a password only with a username")
        flags |= 0x40
        payload += _binary(packet.password)
    variable = (
        _string(PROTOCOL_NAME)
        + bytes((PROTOCOL_LEVEL, flags))
        + struct.pack("!H", packet.keep_alive)
    )
    return _frame(CONNECT << 4, variable + bytes(payload))


# --- decoding ----------------------------------------------------------------------------------


class _Reader:
    """Cursor over one packet's body; every read checks that the bytes are there."""

    __slots__ = ("data", "pos", "what")

    def __init__(self, data: bytes, what: str) -> None:
        self.data = data
        self.pos = 0
        self.what = what

    def remaining(self) -> int:
        return len(self.data) - self.pos

    def byte(self, field: str) -> int:
        if self.pos >= len(self.data):
            raise MqttProtocolError(f"{self.what}: packet ends before {field}")
        value = self.data[self.pos]
        self.pos += 1
        return value

    def u16(self, field: str) -> int:
        if self.pos + 2 > len(self.data):
            raise MqttProtocolError(f"{self.what}: packet ends before {field}")
        value: int = struct.unpack_from("!H", self.data, self.pos)[0]
        self.pos += 2
        return value

    def binary(self, field: str) -> bytes:
        length = self.u16(f"the length of {field}")
        if self.pos + length > len(self.data):
            raise MqttProtocolError(
                f"{self.what}: {field} announces {length} bytes, packet has {self.remaining()}"
            )
        value = self.data[self.pos : self.pos + length]
        self.pos += length
        return value

    def string(self, field: str) -> str:
        raw = self.binary(field)
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise MqttProtocolError(f"{self.what}: {field} is not valid UTF-8") from exc
        if "\x00" in text:
            raise MqttProtocolError(f"{self.what}: {field} contains U+0000")
        return text

    def rest(self) -> bytes:
        value = self.data[self.pos :]
        self.pos = len(self.data)
        return value

    def end(self) -> None:
        if self.pos != len(self.data):
            raise MqttProtocolError(
                f"{self.what}: {len(self.data) - self.pos} unexpected bytes at the end of the packet"
            )


def _nonzero_packet_id(reader: _Reader) -> int:
    packet_id = reader.u16("the packet identifier")
    if packet_id == 0:
        raise MqttProtocolError(f"{reader.what}: packet identifier 0 is not allowed")
    return packet_id


def _decode_connect(flags: int, body: bytes) -> Connect:
    r = _Reader(body, "CONNECT")
    name = r.string("the protocol name")
    if name != PROTOCOL_NAME:
        raise MqttProtocolError(f"CONNECT: protocol name {name!r} is not 'MQTT' (MQTT 3.1.1)")
    level = r.byte("the protocol level")
    if level != PROTOCOL_LEVEL:
        raise UnacceptableProtocolLevelError(
            f"CONNECT: protocol level {level} is not 4 (MQTT 3.1.1)", level=level
        )
    cflags = r.byte("the connect flags")
    if cflags & 0x01:
        raise MqttProtocolError("CONNECT: the reserved connect flag bit is set")
    keep_alive = r.u16("the keep-alive")
    client_id = r.string("the client identifier")
    will_flag, will_qos, will_retain = (
        bool(cflags & 0x04),
        (cflags >> 3) & 0x03,
        bool(cflags & 0x20),
    )
    will = None
    if will_flag:
        if will_qos == 3:
            raise MqttProtocolError("CONNECT: will QoS 3 is not allowed")
        topic = r.string("the will topic")
        try:
            validate_topic_name(topic)
        except MqttProtocolError as exc:
            raise MqttProtocolError(f"CONNECT: will {exc}") from exc
        will = Will(topic, r.binary("the will message"), will_qos, will_retain)
    elif will_qos or will_retain:
        raise MqttProtocolError("CONNECT: will QoS/retain set without the will flag")
    username = r.string("the username") if cflags & 0x80 else None
    if cflags & 0x40 and not cflags & 0x80:
        raise MqttProtocolError("CONNECT: password flag set without the username flag")
    password = r.binary("the password") if cflags & 0x40 else None
    r.end()
    return Connect(client_id, keep_alive, bool(cflags & 0x02), username, password, will)


def _decode_publish(flags: int, body: bytes) -> Publish:
    qos = (flags >> 1) & 0x03
    if qos == 3:
        raise MqttProtocolError("PUBLISH: QoS 3 is not allowed")
    dup = bool(flags & 0x08)
    if qos == 0 and dup:
        raise MqttProtocolError("PUBLISH: DUP flag set on a QoS 0 message")
    r = _Reader(body, "PUBLISH")
    topic = r.string("the topic name")
    validate_topic_name(topic)
    packet_id = _nonzero_packet_id(r) if qos else None
    return Publish(topic, r.rest(), qos, bool(flags & 0x01), dup, packet_id)


def _decode_subscribe(body: bytes) -> Subscribe:
    r = _Reader(body, "SUBSCRIBE")
    packet_id = _nonzero_packet_id(r)
    topics: list[tuple[str, int]] = []
    while r.remaining():
        topic_filter = r.string("a topic filter")
        validate_topic_filter(topic_filter)
        qos = r.byte("the requested QoS")
        if qos & 0xFC:
            raise MqttProtocolError(f"SUBSCRIBE: requested QoS byte {qos:#04x} is not 0, 1 or 2")
        if qos == 3:
            raise MqttProtocolError("SUBSCRIBE: requested QoS 3 is not allowed")
        topics.append((topic_filter, qos))
    if not topics:
        raise MqttProtocolError("SUBSCRIBE: no topic filter")
    return Subscribe(packet_id, tuple(topics))


def _decode_unsubscribe(body: bytes) -> Unsubscribe:
    r = _Reader(body, "UNSUBSCRIBE")
    packet_id = _nonzero_packet_id(r)
    topics: list[str] = []
    while r.remaining():
        topic_filter = r.string("a topic filter")
        validate_topic_filter(topic_filter)
        topics.append(topic_filter)
    if not topics:
        raise MqttProtocolError("UNSUBSCRIBE: no topic filter")
    return Unsubscribe(packet_id, tuple(topics))


def _decode_suback(body: bytes) -> Suback:
    r = _Reader(body, "SUBACK")
    packet_id = _nonzero_packet_id(r)
    codes = tuple(r.rest())
    if not codes:
        raise MqttProtocolError("SUBACK: no return code")
    for code in codes:
        if code not in (0, 1, 2, SUBACK_FAILURE):
            raise MqttProtocolError(f"SUBACK: return code {code:#04x} is not 0, 1, 2 or 0x80")
    return Suback(packet_id, codes)


def _decode_id_only(name: str, body: bytes) -> int:
    r = _Reader(body, name)
    packet_id = _nonzero_packet_id(r)
    r.end()
    return packet_id


def _decode_connack(body: bytes) -> Connack:
    r = _Reader(body, "CONNACK")
    ack_flags = r.byte("the acknowledge flags")
    if ack_flags & 0xFE:
        raise MqttProtocolError("CONNACK: reserved acknowledge flag bits are set")
    code = r.byte("the return code")
    r.end()
    return Connack(code, bool(ack_flags & 0x01))


def _empty(name: str, body: bytes, packet: Packet) -> Packet:
    if body:
        raise MqttProtocolError(f"{name}: must have no body, got {len(body)} bytes")
    return packet


#: The fixed-header flag bits every packet type but PUBLISH must carry (section 2.2.2).
_REQUIRED_FLAGS = {
    CONNECT: 0,
    CONNACK: 0,
    PUBACK: 0,
    SUBSCRIBE: 2,
    SUBACK: 0,
    UNSUBSCRIBE: 2,
    UNSUBACK: 0,
    PINGREQ: 0,
    PINGRESP: 0,
    DISCONNECT: 0,
}
_NAMES = {
    CONNECT: "CONNECT",
    CONNACK: "CONNACK",
    PUBLISH: "PUBLISH",
    PUBACK: "PUBACK",
    SUBSCRIBE: "SUBSCRIBE",
    SUBACK: "SUBACK",
    UNSUBSCRIBE: "UNSUBSCRIBE",
    UNSUBACK: "UNSUBACK",
    PINGREQ: "PINGREQ",
    PINGRESP: "PINGRESP",
    DISCONNECT: "DISCONNECT",
}


def decode_packet(first: int, body: bytes) -> Packet:
    """One packet from its first byte and its body (the bytes after the remaining length)."""
    ptype, flags = first >> 4, first & 0x0F
    if ptype == PUBLISH:
        return _decode_publish(flags, body)
    name = _NAMES.get(ptype)
    if name is None:
        raise MqttProtocolError(f"packet type {ptype} is reserved or not supported (QoS 2 flow)")
    if flags != _REQUIRED_FLAGS[ptype]:
        raise MqttProtocolError(
            f"{name}: fixed-header flags {flags:#03x} must be {_REQUIRED_FLAGS[ptype]:#03x}"
        )
    if ptype == PUBACK:
        return Puback(_decode_id_only(name, body))
    if ptype == PINGREQ:
        return _empty(name, body, Pingreq())
    if ptype == SUBSCRIBE:
        return _decode_subscribe(body)
    if ptype == CONNECT:
        return _decode_connect(flags, body)
    if ptype == UNSUBSCRIBE:
        return _decode_unsubscribe(body)
    if ptype == DISCONNECT:
        return _empty(name, body, Disconnect())
    if ptype == PINGRESP:
        return _empty(name, body, Pingresp())
    if ptype == CONNACK:
        return _decode_connack(body)
    if ptype == SUBACK:
        return _decode_suback(body)
    return Unsuback(_decode_id_only(name, body))


class Decoder:
    """Incremental decoder: ``feed(bytes) -> [packets]``, for bytes arriving in any pieces.

    After an error the decoder stays broken (every later ``feed`` raises again): the stream can
    no longer be framed, so the connection must close.
    """

    __slots__ = ("_buf", "_error", "max_packet_size")

    def __init__(self, max_packet_size: int = DEFAULT_MAX_PACKET_SIZE) -> None:
        self.max_packet_size = max_packet_size
        self._buf = bytearray()
        self._error: MqttProtocolError | None = None

    @property
    def buffered(self) -> int:
        """Bytes held for an incomplete packet."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[Packet]:
        if self._error is not None:
            raise self._error
        buf = self._buf
        buf += data
        packets: list[Packet] = []
        pos = 0
        try:
            while True:
                avail = len(buf) - pos
                if avail < 2:
                    break
                first = buf[pos]
                # variable-length remaining length: 1..4 bytes
                length = 0
                multiplier = 1
                i = pos + 1
                while True:
                    if i >= len(buf):
                        length = -1
                        break
                    digit = buf[i]
                    length += (digit & 0x7F) * multiplier
                    i += 1
                    if not digit & 0x80:
                        break
                    multiplier <<= 7
                    if i - pos - 1 >= 4:
                        raise MqttProtocolError(
                            "remaining length uses more than 4 bytes (malformed packet)"
                        )
                if length < 0:
                    break
                if length > self.max_packet_size:
                    raise MqttProtocolError(
                        f"packet of {length} bytes exceeds the limit of {self.max_packet_size}"
                    )
                if len(buf) - i < length:
                    break
                body = bytes(buf[i : i + length])
                pos = i + length
                packets.append(decode_packet(first, body))
        except MqttProtocolError as exc:
            self._error = exc
            self._buf = bytearray()
            raise
        if pos:
            del buf[:pos]
        return packets
