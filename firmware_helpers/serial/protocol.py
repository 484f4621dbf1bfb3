"""The provisioning protocol: messages, error codes and both sides' state machines. No I/O.

Like h11, the machines take bytes and return events; the caller owns the port, the clock and the
storage. :class:`HostMachine` numbers requests, matches replies, and decides when to retransmit
(bounded retries); :class:`BoardMachine` checks sequence numbers, stages objects in memory,
answers duplicates from a reply cache (so a lost ACK never applies a chunk twice), and asks its
caller to store the set only at COMMIT. See ``docs/serial-protocol.md``.
"""

from __future__ import annotations

import enum
import hashlib
import random
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field

from firmware_helpers.errors import (
    BoardError,
    FrameError,
    LinkTimeoutError,
    ProtocolError,
    ProtocolVersionError,
    RetriesExhaustedError,
)
from firmware_helpers.serial.framing import (
    MAX_PAYLOAD,
    CorruptFrame,
    Frame,
    FrameDecoder,
    encode_frame,
)

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
    bits: int = 2048
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

_TYPE_OF: dict[type[object], MessageType] = {
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
    return encode_frame(Frame(version, _TYPE_OF[type(msg)], seq, encode_payload(msg, version)))


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


# --- host side ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Answer:
    """The reply to the current request (anything but a retryable or restart NAK)."""

    message: Message


@dataclass(frozen=True, slots=True)
class Resend:
    """Send these bytes (the current request again): corruption or a retryable NAK."""

    data: bytes
    reason: str


@dataclass(frozen=True, slots=True)
class Restart:
    """The board lost the session (rebooted, or out of step): start over with HELLO."""

    reason: str


@dataclass(frozen=True, slots=True)
class Ignored:
    """A stale reply (to an earlier request) or a frame of no interest; nothing to do."""

    reason: str


HostEvent = Answer | Resend | Restart | Ignored


class HostState(enum.Enum):
    IDLE = "idle"
    AWAITING_REPLY = "awaiting reply"


class HostMachine:
    """Numbers requests, matches replies to them, and owns the retry budget of each request."""

    def __init__(
        self,
        *,
        max_retries: int = 6,
        rng: random.Random | None = None,
        version: int = PROTOCOL_VERSION,
    ) -> None:
        self.max_retries = max_retries
        #: the version requests are sent in; :meth:`Host.hello` lowers it to an older board's
        self.version = version
        self._rng = rng or random.Random()
        self._decoder = FrameDecoder()
        self._seq = self._rng.randrange(0, NO_SEQ)
        self.state = HostState.IDLE
        self._pending: Message | None = None
        self._pending_bytes = b""
        self.attempts = 0
        self.retransmissions = 0
        #: bytes received since the current request, and whether any of them was a valid frame
        self.bytes_received = 0
        self.valid_frames = 0

    @property
    def current_seq(self) -> int:
        return self._seq

    @property
    def pending(self) -> Message | None:
        return self._pending

    def request(self, msg: Message) -> bytes:
        """Bytes of a new request; a HELLO starts a new sequence at a random number."""
        if isinstance(msg, Hello):
            self._seq = self._rng.randrange(0, NO_SEQ)
        else:
            self._seq = (self._seq + 1) % NO_SEQ
        self._pending = msg
        self._pending_bytes = encode_message(msg, self._seq, version=self.version)
        self.attempts = 1
        self.bytes_received = 0
        self.valid_frames = 0
        self.state = HostState.AWAITING_REPLY
        return self._pending_bytes

    def retransmit(self, reason: str) -> bytes:
        """The current request again; raise when the retry budget is used up."""
        if self.state is not HostState.AWAITING_REPLY:
            raise ProtocolError("no request to retransmit")
        if self.attempts > self.max_retries:
            raise RetriesExhaustedError(
                f"{self._describe()}: gave up after {self.attempts} attempts (last: {reason})"
                f"{self._line_hint()}"
            )
        self.attempts += 1
        self.retransmissions += 1
        return self._pending_bytes

    def timeout(self) -> bytes:
        """The reply did not come in time: the request again, or :class:`LinkTimeoutError`."""
        try:
            return self.retransmit("no answer within the timeout")
        except RetriesExhaustedError as exc:
            raise LinkTimeoutError(
                f"the board did not answer {self._describe()} after {self.attempts} attempts"
                f"{self._line_hint()}"
            ) from exc

    def _line_hint(self) -> str:
        """What to check, from what the line carried: garbage points at the line speed."""
        if self.bytes_received and not self.valid_frames:
            return (
                f"; {self.bytes_received} byte(s) arrived but not one valid frame: the host's "
                "--baud most likely differs from the board's line speed (both sides must use "
                "the same --baud; the agent's default is 115200)"
            )
        if not self.bytes_received:
            return (
                "; is the board connected, powered and running the agent? The host's --baud "
                "must also match the board's line speed (the agent's --baud)"
            )
        return ""

    def _describe(self) -> str:
        name = _TYPE_OF[type(self._pending)].name if self._pending is not None else "nothing"
        return f"{name} (seq {self._seq})"

    def receive_data(self, data: bytes) -> list[HostEvent]:
        events: list[HostEvent] = []
        self.bytes_received += len(data)
        for item in self._decoder.feed(data):
            if isinstance(item, Frame):
                self.valid_frames += 1
            if self.state is not HostState.AWAITING_REPLY:
                events.append(Ignored("no request outstanding"))
                continue
            event = self._on_frame(item)
            events.append(event)
            if isinstance(event, Answer | Restart):
                self.state = HostState.IDLE
                break  # later bytes belong to no request; drop them with the decoder's buffer
        if self.state is HostState.IDLE:
            self._decoder.reset()
        return events

    def _on_frame(self, item: Frame | CorruptFrame) -> HostEvent:
        if isinstance(item, CorruptFrame):
            return Resend(self.retransmit(f"corrupt reply: {item.error}"), str(item.error))
        if item.version != self.version:
            spoken = ", ".join(map(str, SUPPORTED_VERSIONS))
            raise ProtocolVersionError(
                f"the board speaks serial protocol version {item.version}; this host speaks "
                f"version {self.version} (it knows versions {spoken}). Update the host tool or "
                "the board firmware so that both speak a common version.",
                local_version=self.version,
                remote_version=item.version,
            )
        try:
            msg = decode_message(item)
        except ProtocolError as exc:
            return Resend(self.retransmit(f"unreadable reply: {exc}"), str(exc))
        if isinstance(msg, Hello | Begin | Data | Commit | Abort | Info | GenKey | GetCsr):
            return Ignored("a request, not a reply: is the line echoing?")
        if item.seq == NO_SEQ:
            if isinstance(msg, HelloReply):
                if isinstance(self._pending, Hello):
                    return Ignored("boot announcement while saying HELLO")
                return Restart(f"board {msg.board_id!r} rebooted")
            if isinstance(msg, Nak) and msg.code in RETRYABLE:
                return Resend(self.retransmit(msg.code.description), msg.code.description)
            if isinstance(msg, Nak) and msg.code is ErrorCode.UNSUPPORTED_VERSION:
                return Answer(msg)
            return Ignored(f"unsolicited {type(msg).__name__}")
        if item.seq != self._seq:
            return Ignored(f"stale reply to seq {item.seq}")
        if isinstance(msg, Nak):
            if msg.code in RETRYABLE:
                return Resend(self.retransmit(msg.code.description), msg.code.description)
            if msg.code in RESTART:
                return Restart(f"{msg.code.description}: {msg.text}")
        return Answer(msg)


def board_error(nak: Nak, *, during: str) -> BoardError:
    """The exception for a fatal NAK, with the board's own words."""
    text = f": {nak.text}" if nak.text else ""
    return BoardError(
        f"the board refused {during}: error {int(nak.code)} {nak.code.name} "
        f"({nak.code.description}){text}",
        code=int(nak.code),
        code_name=nak.code.name,
        board_message=nak.text,
    )


# --- board side --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Send:
    """Bytes the board must write to the line."""

    data: bytes


@dataclass(frozen=True, slots=True)
class CommitRequested:
    """Every staged object is complete and verified: store the set, then call ``commit_done``."""

    objects: Mapping[ObjectType, bytes]


@dataclass(frozen=True, slots=True)
class InfoRequested:
    """Answer with :meth:`BoardMachine.info_done` and what the store holds."""


@dataclass(frozen=True, slots=True)
class KeyRequested:
    """GENKEY: generate a key pair, then call :meth:`BoardMachine.keygen_done` with the key
    (kept staged on the board: never sent) and a CSR signed with it.

    ``deferred``: the GENKEY was already acknowledged and the machine goes on answering other
    requests; generate in the background and pass ``ticket`` to ``keygen_done`` (a key whose
    session ended meanwhile is dropped, never staged)."""

    key_type: KeyType
    bits: int
    deferred: bool = False
    ticket: int = 0


@dataclass(frozen=True, slots=True)
class SessionStarted:
    host_max_chunk: int


@dataclass(frozen=True, slots=True)
class LineError:
    """A corrupt or unreadable frame arrived (for logs and counters)."""

    reason: str


BoardEvent = Send | CommitRequested | InfoRequested | KeyRequested | SessionStarted | LineError


class BoardState(enum.Enum):
    NO_SESSION = "no session"
    READY = "ready"
    RECEIVING = "receiving"
    COMMITTING = "committing"
    INFO = "answering info"
    GENERATING = "generating a key"


@dataclass
class _Deferred:
    """A key being generated in the background, and what became of it."""

    ticket: int
    csr: bytes | None = None
    failure: tuple[ErrorCode, str] | None = None
    #: the seq of a GET_CSR that waits for the key
    waiting: int | None = None


@dataclass
class _Staged:
    total: int
    digest: bytes
    data: bytearray = field(default_factory=bytearray)

    @property
    def complete(self) -> bool:
        return len(self.data) == self.total


REQUIRED_OBJECTS = (ObjectType.CERTIFICATE, ObjectType.PRIVATE_KEY)
#: RSA key sizes a board is asked to generate (the platform accepts RSA device certificates).
KEYGEN_BITS = (2048, 3072, 4096)


class BoardMachine:
    """The board's side: staging in memory, reply cache for duplicates, commit by the caller."""

    def __init__(
        self,
        board_id: str,
        *,
        max_chunk: int = DEFAULT_MAX_CHUNK,
        capacity: int = 64 * 1024,
        version: int | None = None,
        features: int = 0,
    ) -> None:
        """``version``: speak only that version (a simulated old board); default: every
        supported one, each request answered in its own version. ``features``: FEATURE_* bits
        announced in a version 2 HELLO_REPLY (the caller must be able to do what they say)."""
        if not 1 <= max_chunk <= MAX_CHUNK:
            raise ValueError(f"max_chunk must be 1..{MAX_CHUNK}")
        self.board_id = board_id
        self.max_chunk = max_chunk
        self.capacity = capacity
        self.versions = (version,) if version is not None else SUPPORTED_VERSIONS
        self.version = max(self.versions)  # of the current frame (announcements: the highest)
        self.features = features
        self._generated = False
        self._deferred: _Deferred | None = None
        self._tickets = 0
        self.state = BoardState.NO_SESSION
        self._decoder = FrameDecoder()
        self._last_seq: int | None = None
        self._last_reply = b""
        self._pending_seq = 0
        self._staged: dict[ObjectType, _Staged] = {}
        self._current: ObjectType | None = None
        self._chunk = max_chunk

    @property
    def staged_types(self) -> tuple[ObjectType, ...]:
        return tuple(self._staged)

    def announce(self) -> bytes:
        """The unsolicited HELLO_REPLY a board sends when it boots (seq = NO_SEQ)."""
        self.version = max(self.versions)
        return self._encode(self._hello_reply(), NO_SEQ)

    def _hello_reply(self) -> HelloReply:
        features = self.features if self.version >= KEYGEN_VERSION else 0
        return HelloReply(self.max_chunk, self.capacity, self.board_id, features)

    def _encode(self, msg: Message, seq: int) -> bytes:
        return encode_message(msg, seq, version=self.version)

    def receive_data(self, data: bytes) -> list[BoardEvent]:
        events: list[BoardEvent] = []
        for item in self._decoder.feed(data):
            events.extend(self._on_frame(item))
        return events

    def _reply(self, seq: int, msg: Message) -> Send:
        data = self._encode(msg, seq)
        self._last_seq, self._last_reply = seq, data
        return Send(data)

    def _nak(self, seq: int, code: ErrorCode, text: str = "") -> Send:
        return self._reply(seq, Nak(code, text or code.description))

    def _on_frame(self, item: Frame | CorruptFrame) -> list[BoardEvent]:
        if isinstance(item, CorruptFrame):
            nak = Nak(ErrorCode.BAD_CRC, str(item.error))
            return [LineError(str(item.error)), Send(self._encode(nak, NO_SEQ))]
        if item.version not in self.versions:
            spoken = " and ".join(map(str, self.versions))
            nak = Nak(
                ErrorCode.UNSUPPORTED_VERSION,
                f"board speaks protocol version {spoken}, not {item.version}",
            )
            self.version = max(self.versions)
            return [LineError(f"version {item.version}"), Send(self._encode(nak, item.seq))]
        self.version = item.version  # every answer goes in the request's version
        if self.state in (BoardState.COMMITTING, BoardState.INFO, BoardState.GENERATING):
            return [Send(self._encode(Nak(ErrorCode.BUSY, "storing"), item.seq))]
        try:
            msg = decode_message(item)
        except ProtocolError as exc:
            code = (
                ErrorCode.UNKNOWN_TYPE
                if "unknown message type" in str(exc)
                else (ErrorCode.MALFORMED)
            )
            return [LineError(str(exc)), Send(self._encode(Nak(code, str(exc)), item.seq))]
        if isinstance(msg, Hello):
            return self._hello(item.seq, msg)
        if self.state is BoardState.NO_SESSION:
            return [Send(self._encode(Nak(ErrorCode.NO_SESSION, "send HELLO first"), item.seq))]
        if item.seq == self._last_seq:
            return [Send(self._last_reply)]  # a retransmission: same answer, applied once
        expected = ((self._last_seq or 0) + 1) % NO_SEQ
        if item.seq != expected:
            text = f"expected seq {expected}, got {item.seq}"
            return [Send(self._encode(Nak(ErrorCode.BAD_SEQUENCE, text), item.seq))]
        return self._request(item.seq, msg)

    def _hello(self, seq: int, msg: Hello) -> list[BoardEvent]:
        self._discard()
        self.state = BoardState.READY
        self._chunk = max(1, min(self.max_chunk, msg.max_chunk))
        reply = self._reply(seq, self._hello_reply())
        return [SessionStarted(msg.max_chunk), reply]

    def _discard(self) -> None:
        self._staged.clear()
        self._current = None
        self._generated = False  # a generated key that was never committed is gone for good
        self._deferred = None  # and one being generated is dropped when it is done

    def _request(self, seq: int, msg: Message) -> list[BoardEvent]:
        match msg:
            case Begin():
                return [self._begin(seq, msg)]
            case Data():
                return [self._data(seq, msg)]
            case Commit():
                return self._commit(seq)
            case Abort():
                self._discard()
                self.state = BoardState.READY
                return [self._reply(seq, Ack())]
            case Info():
                self.state = BoardState.INFO
                self._pending_seq = seq
                return [InfoRequested()]
            case GenKey():
                return self._genkey(seq, msg)
            case GetCsr():
                return self._get_csr(seq)
            case _:
                text = f"{type(msg).__name__} is not a request"
                return [self._nak(seq, ErrorCode.BAD_STATE, text)]

    def _genkey(self, seq: int, msg: GenKey) -> list[BoardEvent]:
        if not self.features & FEATURE_KEYGEN:
            return [self._nak(seq, ErrorCode.UNSUPPORTED_OBJECT, "this board cannot generate keys")]
        if msg.key_type is not KeyType.RSA or msg.bits not in KEYGEN_BITS:
            return [
                self._nak(
                    seq,
                    ErrorCode.MALFORMED,
                    f"cannot generate {msg.key_type.name}-{msg.bits}: RSA with "
                    f"{', '.join(map(str, KEYGEN_BITS))} bits only",
                )
            ]
        if self.state is BoardState.RECEIVING and self._current is not None:
            self._staged.pop(self._current, None)
        self._current = None
        self._staged.pop(ObjectType.PRIVATE_KEY, None)
        self._generated = False
        self._deferred = None
        if msg.defer:
            if not self.features & FEATURE_KEYGEN_DEFERRED:
                text = "this board does not generate keys in the background"
                return [self._nak(seq, ErrorCode.UNSUPPORTED_OBJECT, text)]
            self._tickets += 1
            self._deferred = _Deferred(self._tickets)
            self.state = BoardState.READY
            event = KeyRequested(msg.key_type, msg.bits, deferred=True, ticket=self._tickets)
            return [event, self._reply(seq, Ack())]
        self.state = BoardState.GENERATING
        self._pending_seq = seq
        return [KeyRequested(msg.key_type, msg.bits)]

    def _get_csr(self, seq: int) -> list[BoardEvent]:
        deferred = self._deferred
        if deferred is None:
            text = "no key is being generated in this session (send GENKEY with DEFER first)"
            return [self._nak(seq, ErrorCode.BAD_STATE, text)]
        if deferred.csr is not None:
            return [self._reply(seq, Csr(deferred.csr))]
        if deferred.failure is not None:
            return [self._nak(seq, *deferred.failure)]
        deferred.waiting = seq  # answered by keygen_done / keygen_failed
        return []

    def keygen_done(self, key: bytes, csr_der: bytes, *, ticket: int | None = None) -> bytes:
        """Stage the new ``key`` (it stays on the board) and answer with the CSR.

        With the ``ticket`` of a deferred request: the CSR answers a waiting GET_CSR, or is
        kept for the next one (then nothing is returned); a key whose session ended meanwhile
        (HELLO, ABORT, another GENKEY) is dropped and nothing is returned.
        """
        if ticket is not None:
            return self._deferred_done(ticket, key, csr_der)
        if self.state is not BoardState.GENERATING:
            raise ProtocolError("keygen_done without a KeyRequested")
        self.state = BoardState.READY
        if len(csr_der) > MAX_PAYLOAD:
            return self._nak(self._pending_seq, ErrorCode.TOO_LARGE, "CSR larger than a frame").data
        self._staged[ObjectType.PRIVATE_KEY] = _Staged(len(key), sha256(key), bytearray(key))
        self._generated = True
        return self._reply(self._pending_seq, Csr(csr_der)).data

    def keygen_failed(self, code: ErrorCode, text: str, *, ticket: int | None = None) -> bytes:
        if ticket is not None:
            return self._deferred_failed(ticket, code, text)
        if self.state is not BoardState.GENERATING:
            raise ProtocolError("keygen_failed without a KeyRequested")
        self.state = BoardState.READY
        return self._nak(self._pending_seq, code, text).data

    def _deferred_done(self, ticket: int, key: bytes, csr_der: bytes) -> bytes:
        deferred = self._deferred
        if deferred is None or deferred.ticket != ticket:
            return b""  # the session it was made for is over: the key is forgotten
        if len(csr_der) > MAX_PAYLOAD:
            return self._deferred_failed(ticket, ErrorCode.TOO_LARGE, "CSR larger than a frame")
        self._staged[ObjectType.PRIVATE_KEY] = _Staged(len(key), sha256(key), bytearray(key))
        self._generated = True
        deferred.csr = csr_der
        if deferred.waiting is None:
            return b""
        seq, deferred.waiting = deferred.waiting, None
        return self._reply(seq, Csr(csr_der)).data

    def _deferred_failed(self, ticket: int, code: ErrorCode, text: str) -> bytes:
        deferred = self._deferred
        if deferred is None or deferred.ticket != ticket:
            return b""
        deferred.failure = (code, text)
        if deferred.waiting is None:
            return b""
        seq, deferred.waiting = deferred.waiting, None
        return self._nak(seq, code, text).data

    def _begin(self, seq: int, msg: Begin) -> Send:
        if self.state is BoardState.RECEIVING and self._current is not None:
            self._staged.pop(self._current, None)  # an unfinished object is abandoned
        self._current = None
        self.state = BoardState.READY
        if msg.object_type is ObjectType.PRIVATE_KEY and (self._generated or self._deferred):
            return self._nak(
                seq,
                ErrorCode.BAD_STATE,
                "this session's key was generated on the board; it is not replaced over the line",
            )
        if msg.total_length == 0:
            return self._nak(seq, ErrorCode.MALFORMED, "an object cannot be empty")
        others = sum(s.total for t, s in self._staged.items() if t is not msg.object_type)
        if others + msg.total_length > self.capacity:
            return self._nak(
                seq,
                ErrorCode.STORAGE_FULL,
                f"{msg.object_type.label} of {msg.total_length} bytes does not fit: "
                f"{self.capacity - others} bytes free",
            )
        self._staged[msg.object_type] = _Staged(msg.total_length, msg.sha256)
        self._current = msg.object_type
        self.state = BoardState.RECEIVING
        return self._reply(seq, Ack())

    def _data(self, seq: int, msg: Data) -> Send:
        if self.state is not BoardState.RECEIVING or self._current is None:
            return self._nak(seq, ErrorCode.BAD_STATE, "DATA without BEGIN")
        staged = self._staged[self._current]
        if len(msg.chunk) > self._chunk:
            return self._nak(seq, ErrorCode.TOO_LARGE, f"chunk larger than {self._chunk} bytes")
        if msg.offset != len(staged.data):
            return self._nak(
                seq, ErrorCode.BAD_SEQUENCE, f"offset {msg.offset}, expected {len(staged.data)}"
            )
        if len(staged.data) + len(msg.chunk) > staged.total:
            return self._nak(seq, ErrorCode.TOO_LARGE, "more data than BEGIN announced")
        staged.data += msg.chunk
        if staged.complete:
            obj = self._current
            self._current = None
            self.state = BoardState.READY
            if sha256(bytes(staged.data)) != staged.digest:
                del self._staged[obj]
                return self._nak(
                    seq, ErrorCode.VERIFY_FAILED, f"{obj.label}: SHA-256 does not match BEGIN"
                )
        return self._reply(seq, Ack())

    def _commit(self, seq: int) -> list[BoardEvent]:
        if self.state is BoardState.RECEIVING:
            return [self._nak(seq, ErrorCode.INCOMPLETE, "an object is still being received")]
        missing = [t.label for t in REQUIRED_OBJECTS if t not in self._staged]
        if self._deferred is not None and self._deferred.csr is None:
            text = "the key is still being generated (fetch its CSR with GET_CSR first)"
            return [self._nak(seq, ErrorCode.INCOMPLETE, text)]
        if missing:
            return [self._nak(seq, ErrorCode.INCOMPLETE, "missing " + " and ".join(missing))]
        for obj, staged in self._staged.items():
            if not staged.complete or sha256(bytes(staged.data)) != staged.digest:
                return [self._nak(seq, ErrorCode.VERIFY_FAILED, f"{obj.label} does not verify")]
        self.state = BoardState.COMMITTING
        self._pending_seq = seq
        return [CommitRequested({t: bytes(s.data) for t, s in self._staged.items()})]

    def commit_done(self, error: ErrorCode | None = None, text: str = "") -> bytes:
        """The store's verdict on the set; the staging is discarded either way."""
        if self.state is not BoardState.COMMITTING:
            raise ProtocolError("commit_done without a CommitRequested")
        self._discard()
        self.state = BoardState.READY
        if error is None:
            return self._reply(self._pending_seq, Ack()).data
        return self._nak(self._pending_seq, error, text).data

    def info_done(self, objects: tuple[ObjectInfo, ...]) -> bytes:
        if self.state is not BoardState.INFO:
            raise ProtocolError("info_done without an InfoRequested")
        self.state = BoardState.RECEIVING if self._current is not None else BoardState.READY
        return self._reply(self._pending_seq, InfoReply(self.board_id, objects)).data


__all__ = [
    "FEATURE_KEYGEN",
    "FEATURE_KEYGEN_DEFERRED",
    "NO_SEQ",
    "PROTOCOL_VERSION",
    "SUPPORTED_VERSIONS",
    "Abort",
    "Ack",
    "Answer",
    "Begin",
    "BoardMachine",
    "BoardState",
    "Commit",
    "CommitRequested",
    "Csr",
    "Data",
    "ErrorCode",
    "FrameError",
    "GenKey",
    "GetCsr",
    "Hello",
    "HelloReply",
    "HostMachine",
    "HostState",
    "Ignored",
    "Info",
    "InfoReply",
    "InfoRequested",
    "KeyRequested",
    "KeyType",
    "LineError",
    "Nak",
    "ObjectInfo",
    "ObjectType",
    "Resend",
    "Restart",
    "Send",
    "SessionStarted",
    "board_error",
    "decode_message",
    "encode_message",
]
