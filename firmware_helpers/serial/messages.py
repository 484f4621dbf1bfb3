"""The provisioning protocol's wire format: versions, message types, error codes, messages.

The bytes both sides agree on and nothing else: each message is a frozen value, and
:func:`encode_message` / :func:`decode_message` turn it into a frame (:mod:`.framing`) and back.
The two sides' state machines live in :mod:`.host_machine` and :mod:`.board_machine`;
:mod:`.protocol` gathers all three as the protocol's one import. See ``docs/serial-protocol.md``.
"""

from __future__ import annotations

import enum
import hashlib
import struct
from dataclasses import dataclass

from firmware_helpers.defaults import DEFAULT_KEY_SIZE
from firmware_helpers.errors import ProtocolError
from firmware_helpers.serial.framing import MAX_PAYLOAD, Frame, encode_frame

#: The highest version this code speaks; version 2 adds key generation on the board.
PROTOCOL_VERSION = 2
#: Every version this code speaks (a host offers the highest and falls back to the board's).
SUPPORTED_VERSIONS = (1, 2)
#: First version with GENKEY / CSR.
KEYGEN_VERSION = 2
#: HELLO_REPLY ``features`` bit (version 2): the board generates key pairs and returns a CSR.
FEATURE_KEYGEN = 0x01
#: HELLO_REPLY ``features`` bit (version 2): the board generates in the background -- a GENKEY
#: with the DEFER flag is acknowledged at once, the line stays open for other objects (the
#: server CA) while the key is made, and GET_CSR fetches the request when it is ready.
FEATURE_KEYGEN_DEFERRED = 0x02
#: GENKEY ``flags`` bit: acknowledge now, answer GET_CSR later (needs FEATURE_KEYGEN_DEFERRED).
GENKEY_DEFER = 0x01
#: Sequence number of frames that answer nothing: NAKs of corrupt frames, boot announcements.
NO_SEQ = 0xFFFF
DATA_HEADER = struct.Struct(">I")
BEGIN_STRUCT = struct.Struct(">BI32s")
DEFAULT_MAX_CHUNK = 4096
MAX_CHUNK = MAX_PAYLOAD - DATA_HEADER.size
MAX_TEXT = 200


class MessageType(enum.IntEnum):
    HELLO = 0x01
    HELLO_REPLY = 0x02
    BEGIN = 0x10
    DATA = 0x11
    COMMIT = 0x12
    ABORT = 0x13
    INFO = 0x20
    INFO_REPLY = 0x21
    GENKEY = 0x30
    CSR = 0x31
    GET_CSR = 0x32
    ACK = 0x40
    NAK = 0x41


class ObjectType(enum.IntEnum):
    CERTIFICATE = 1
    PRIVATE_KEY = 2
    SERVER_CA = 3

    @property
    def label(self) -> str:
        return self.name.lower().replace("_", " ")


class ErrorCode(enum.IntEnum):
    """Numbered errors a board answers with (NAK), modelled on modem credential stores."""

    BAD_CRC = 1
    BAD_SEQUENCE = 2
    MALFORMED = 3
    UNKNOWN_TYPE = 4
    UNSUPPORTED_VERSION = 5
    NO_SESSION = 6
    BAD_STATE = 7
    UNSUPPORTED_OBJECT = 8
    TOO_LARGE = 9
    STORAGE_FULL = 10
    VERIFY_FAILED = 11
    INCOMPLETE = 12
    INVALID_CREDENTIALS = 13
    BUSY = 14
    STORAGE_ERROR = 15
    NOT_FOUND = 16

    @property
    def description(self) -> str:
        return _DESCRIPTIONS[self]


_DESCRIPTIONS = {
    ErrorCode.BAD_CRC: "frame corrupted on the line (bad CRC)",
    ErrorCode.BAD_SEQUENCE: "unexpected sequence number",
    ErrorCode.MALFORMED: "malformed message",
    ErrorCode.UNKNOWN_TYPE: "unknown message type",
    ErrorCode.UNSUPPORTED_VERSION: "unsupported protocol version",
    ErrorCode.NO_SESSION: "no session (send HELLO first; the board may have rebooted)",
    ErrorCode.BAD_STATE: "request not allowed in the board's current state",
    ErrorCode.UNSUPPORTED_OBJECT: "unsupported object type",
    ErrorCode.TOO_LARGE: "chunk or object larger than the board accepts",
    ErrorCode.STORAGE_FULL: "storage full",
    ErrorCode.VERIFY_FAILED: "SHA-256 verification failed",
    ErrorCode.INCOMPLETE: "transaction incomplete",
    ErrorCode.INVALID_CREDENTIALS: "credentials rejected by the board",
    ErrorCode.BUSY: "board busy",
    ErrorCode.STORAGE_ERROR: "storage write failed",
    ErrorCode.NOT_FOUND: "object not found",
}

#: Codes a host answers by sending the same request again (bounded).
RETRYABLE = frozenset({ErrorCode.BAD_CRC, ErrorCode.BUSY})
#: Codes after which the host starts the transaction over with HELLO (bounded).
RESTART = frozenset({ErrorCode.NO_SESSION, ErrorCode.BAD_SEQUENCE})


# --- messages ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Hello:
    max_chunk: int = DEFAULT_MAX_CHUNK


@dataclass(frozen=True, slots=True)
class HelloReply:
    max_chunk: int
    capacity: int
    board_id: str
    #: version 2 only (a version 1 board has none): FEATURE_* bits
    features: int = 0

    @property
    def can_generate_keys(self) -> bool:
        return bool(self.features & FEATURE_KEYGEN)

    @property
    def can_generate_in_background(self) -> bool:
        return self.can_generate_keys and bool(self.features & FEATURE_KEYGEN_DEFERRED)


class KeyType(enum.IntEnum):
    RSA = 1


@dataclass(frozen=True, slots=True)
class GenKey:
    """Version 2: generate a key pair, stage it, and answer with a CSR signed by it.

    ``defer``: answer ACK at once and generate in the background; the CSR is fetched with
    :class:`GetCsr` (only to a board announcing FEATURE_KEYGEN_DEFERRED)."""

    key_type: KeyType = KeyType.RSA
    bits: int = DEFAULT_KEY_SIZE
    defer: bool = False


@dataclass(frozen=True, slots=True)
class GetCsr:
    """Version 2: the CSR of the key a deferred GENKEY is making; answered when it is ready."""


@dataclass(frozen=True, slots=True)
class Csr:
    """Version 2: the board's PKCS#10 request (DER) for the key it just staged."""

    der: bytes


@dataclass(frozen=True, slots=True)
class Begin:
    object_type: ObjectType
    total_length: int
    sha256: bytes


@dataclass(frozen=True, slots=True)
class Data:
    offset: int
    chunk: bytes


@dataclass(frozen=True, slots=True)
class Commit:
    pass


@dataclass(frozen=True, slots=True)
class Abort:
    pass


@dataclass(frozen=True, slots=True)
class Info:
    pass


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    """What a board tells about a stored object: never its contents, only size and digest."""

    object_type: ObjectType
    size: int
    sha256: bytes


@dataclass(frozen=True, slots=True)
class InfoReply:
    board_id: str
    objects: tuple[ObjectInfo, ...] = ()


@dataclass(frozen=True, slots=True)
class Ack:
    pass


@dataclass(frozen=True, slots=True)
class Nak:
    code: ErrorCode
    text: str = ""


Message = (
    Hello
    | HelloReply
    | Begin
    | Data
    | Commit
    | Abort
    | Info
    | InfoReply
    | GenKey
    | GetCsr
    | Csr
    | Ack
    | Nak
)
#: Message types that exist from version 2 on.
_V2_TYPES = (MessageType.GENKEY, MessageType.CSR, MessageType.GET_CSR)

#: The type number of each message class.
MESSAGE_TYPES: dict[type[object], MessageType] = {
    Hello: MessageType.HELLO,
    HelloReply: MessageType.HELLO_REPLY,
    Begin: MessageType.BEGIN,
    Data: MessageType.DATA,
    Commit: MessageType.COMMIT,
    Abort: MessageType.ABORT,
    Info: MessageType.INFO,
    InfoReply: MessageType.INFO_REPLY,
    GenKey: MessageType.GENKEY,
    GetCsr: MessageType.GET_CSR,
    Csr: MessageType.CSR,
    Ack: MessageType.ACK,
    Nak: MessageType.NAK,
}


def _short_text(text: str, limit: int = MAX_TEXT) -> bytes:
    return text.encode("utf-8")[:limit].decode("utf-8", "ignore").encode("utf-8")


def encode_payload(msg: Message, version: int = PROTOCOL_VERSION) -> bytes:
    match msg:
        case Hello(max_chunk):
            return struct.pack(">H", max_chunk)
        case HelloReply(max_chunk, capacity, board_id, features):
            ident = _short_text(board_id, 64)
            head = struct.pack(">HIB", max_chunk, capacity, len(ident)) + ident
            return head + struct.pack(">B", features) if version >= KEYGEN_VERSION else head
        case GenKey(key_type, bits, defer):
            head = struct.pack(">BH", int(key_type), bits)
            return head + struct.pack(">B", GENKEY_DEFER) if defer else head
        case Csr(der):
            return der
        case Begin(object_type, total, digest):
            return BEGIN_STRUCT.pack(int(object_type), total, digest)
        case Data(offset, chunk):
            return DATA_HEADER.pack(offset) + chunk
        case InfoReply(board_id, objects):
            ident = _short_text(board_id, 64)
            out = bytearray(struct.pack(">B", len(ident)) + ident + struct.pack(">B", len(objects)))
            for obj in objects:
                out += struct.pack(">BI32s", int(obj.object_type), obj.size, obj.sha256)
            return bytes(out)
        case Nak(code, text):
            return struct.pack(">B", int(code)) + _short_text(text)
        case _:
            return b""


def encode_message(msg: Message, seq: int, *, version: int = PROTOCOL_VERSION) -> bytes:
    """The line bytes of ``msg`` with sequence number ``seq``."""
    if isinstance(msg, GenKey | GetCsr | Csr) and version < KEYGEN_VERSION:
        raise ProtocolError(f"{type(msg).__name__} needs protocol version {KEYGEN_VERSION}")
    return encode_frame(Frame(version, MESSAGE_TYPES[type(msg)], seq, encode_payload(msg, version)))


def decode_message(frame: Frame) -> Message:
    """Parse a frame's payload; raise :class:`ProtocolError` when it does not fit its type."""
    try:
        kind = MessageType(frame.type)
    except ValueError as exc:
        raise ProtocolError(f"unknown message type {frame.type:#04x}") from exc
    p = frame.payload
    if kind in _V2_TYPES and frame.version < KEYGEN_VERSION:
        raise ProtocolError(f"unknown message type {frame.type:#04x} in version {frame.version}")
    try:
        return _decode(kind, p, frame.version)
    except (struct.error, ValueError, IndexError, UnicodeDecodeError) as exc:
        raise ProtocolError(f"malformed {kind.name} payload ({len(p)} bytes): {exc}") from exc


def _decode(kind: MessageType, p: bytes, version: int = PROTOCOL_VERSION) -> Message:
    empty: dict[MessageType, Message] = {
        MessageType.COMMIT: Commit(),
        MessageType.ABORT: Abort(),
        MessageType.INFO: Info(),
        MessageType.ACK: Ack(),
        MessageType.GET_CSR: GetCsr(),
    }
    if kind in empty:
        if p:
            raise ValueError("payload must be empty")
        return empty[kind]
    if kind is MessageType.HELLO:
        (max_chunk,) = struct.unpack(">H", p)
        return Hello(max_chunk)
    if kind is MessageType.HELLO_REPLY:
        max_chunk, capacity, n = struct.unpack(">HIB", p[:7])
        extra = 1 if version >= KEYGEN_VERSION else 0
        if len(p) != 7 + n + extra:
            raise ValueError("board id length does not match")
        features = p[7 + n] if extra else 0
        return HelloReply(max_chunk, capacity, p[7 : 7 + n].decode("utf-8"), features)
    if kind is MessageType.GENKEY:
        return _decode_genkey(p)
    if kind is MessageType.CSR:
        if not p:
            raise ValueError("empty CSR")
        return Csr(p)
    if kind is MessageType.BEGIN:
        obj, total, digest = BEGIN_STRUCT.unpack(p)
        return Begin(ObjectType(obj), total, digest)
    if kind is MessageType.DATA:
        if len(p) < DATA_HEADER.size:
            raise ValueError("DATA shorter than its offset")
        (offset,) = DATA_HEADER.unpack(p[: DATA_HEADER.size])
        return Data(offset, p[DATA_HEADER.size :])
    if kind is MessageType.INFO_REPLY:
        n = p[0]
        board_id = p[1 : 1 + n].decode("utf-8")
        count = p[1 + n]
        rest = p[2 + n :]
        if len(rest) != count * 37:
            raise ValueError("object list length does not match")
        objects = tuple(
            ObjectInfo(ObjectType(t), size, digest)
            for t, size, digest in struct.iter_unpack(">BI32s", rest)
        )
        return InfoReply(board_id, objects)
    # NAK
    code = ErrorCode(p[0])
    return Nak(code, p[1:].decode("utf-8", "replace"))


def _decode_genkey(p: bytes) -> GenKey:
    """Key type and bits; a fourth byte, when present, holds the flags (GENKEY_DEFER)."""
    key_type, bits = struct.unpack(">BH", p[:3])
    if len(p) == 3:
        return GenKey(KeyType(key_type), bits)
    (flags,) = struct.unpack(">B", p[3:])
    if flags & ~GENKEY_DEFER:
        raise ValueError(f"unknown GENKEY flags {flags:#04x}")
    return GenKey(KeyType(key_type), bits, defer=bool(flags & GENKEY_DEFER))


def sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()
