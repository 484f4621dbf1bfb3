"""The board's side of the provisioning protocol as a sans-IO machine (no port, no storage).

:class:`BoardMachine` checks sequence numbers, stages objects in memory, answers duplicates from
a reply cache (so a lost ACK never applies a chunk twice), and asks its caller, by events, to
store the set at COMMIT, to answer INFO, and to generate a key (GENKEY; in the background when
deferred, the key handed back with its ticket). The caller (:mod:`.agent`) owns the link and the
credential store.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field

from firmware_helpers.defaults import ALLOWED_KEY_SIZES
from firmware_helpers.errors import ProtocolError
from firmware_helpers.serial.framing import MAX_PAYLOAD, CorruptFrame, Frame, FrameDecoder
from firmware_helpers.serial.messages import (
    DEFAULT_MAX_CHUNK,
    FEATURE_KEYGEN,
    FEATURE_KEYGEN_DEFERRED,
    KEYGEN_VERSION,
    MAX_CHUNK,
    NO_SEQ,
    SUPPORTED_VERSIONS,
    Abort,
    Ack,
    Begin,
    Commit,
    Csr,
    Data,
    ErrorCode,
    GenKey,
    GetCsr,
    Hello,
    HelloReply,
    Info,
    InfoReply,
    KeyType,
    Message,
    Nak,
    ObjectInfo,
    ObjectType,
    decode_message,
    encode_message,
    sha256,
)


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
#: RSA key sizes a board is asked to generate (the kit's one list: :mod:`firmware_helpers.defaults`).
KEYGEN_BITS = ALLOWED_KEY_SIZES


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
