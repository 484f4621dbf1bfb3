"""The host's side of the provisioning protocol as a sans-IO machine (no port, no clock).

:class:`HostMachine` numbers requests, matches replies to them and owns each request's retry
budget: the caller writes the bytes it returns, feeds it what the line delivers, and acts on the
events (:class:`Answer`, :class:`Resend`, :class:`Restart`, :class:`Ignored`); the port and the
clock stay in :mod:`.host`. Like h11's connection object.
"""

from __future__ import annotations

import enum
import random
from dataclasses import dataclass

from firmware_helpers.errors import (
    BoardError,
    LinkTimeoutError,
    ProtocolError,
    ProtocolVersionError,
    RetriesExhaustedError,
)
from firmware_helpers.serial.framing import CorruptFrame, Frame, FrameDecoder
from firmware_helpers.serial.messages import (
    MESSAGE_TYPES,
    NO_SEQ,
    PROTOCOL_VERSION,
    RESTART,
    RETRYABLE,
    SUPPORTED_VERSIONS,
    Abort,
    Begin,
    Commit,
    Data,
    ErrorCode,
    GenKey,
    GetCsr,
    Hello,
    HelloReply,
    Info,
    Message,
    Nak,
    decode_message,
    encode_message,
)


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
        name = MESSAGE_TYPES[type(self._pending)].name if self._pending is not None else "nothing"
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
