"""The provisioning protocol, whole and without I/O: the one import for it.

It is three modules, each with one job, gathered here so that a reader (or a firmware writer
porting the board side) finds every name of the protocol in one place:

- :mod:`.messages`: the wire format -- versions, message types, error codes, the frozen message
  values and their encoding into frames;
- :mod:`.host_machine`: :class:`HostMachine`, which numbers requests, matches replies and decides
  when to retransmit (bounded retries) or restart;
- :mod:`.board_machine`: :class:`BoardMachine`, which checks sequence numbers, stages objects in
  memory, answers duplicates from a reply cache (so a lost ACK never applies a chunk twice), and
  asks its caller to store the set only at COMMIT.

Like h11, the machines take bytes and return events; the caller owns the port, the clock and the
storage. See ``docs/serial-protocol.md``.
"""

from __future__ import annotations

from firmware_helpers.errors import FrameError
from firmware_helpers.serial.board_machine import (
    KEYGEN_BITS,
    REQUIRED_OBJECTS,
    BoardEvent,
    BoardMachine,
    BoardState,
    CommitRequested,
    InfoRequested,
    KeyRequested,
    LineError,
    Send,
    SessionStarted,
)
from firmware_helpers.serial.host_machine import (
    Answer,
    HostEvent,
    HostMachine,
    HostState,
    Ignored,
    Resend,
    Restart,
    board_error,
)
from firmware_helpers.serial.messages import (
    DEFAULT_MAX_CHUNK,
    FEATURE_KEYGEN,
    FEATURE_KEYGEN_DEFERRED,
    GENKEY_DEFER,
    KEYGEN_VERSION,
    MAX_CHUNK,
    MESSAGE_TYPES,
    NO_SEQ,
    PROTOCOL_VERSION,
    RESTART,
    RETRYABLE,
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
    MessageType,
    Nak,
    ObjectInfo,
    ObjectType,
    decode_message,
    encode_message,
    encode_payload,
    sha256,
)

__all__ = [
    "DEFAULT_MAX_CHUNK",
    "FEATURE_KEYGEN",
    "FEATURE_KEYGEN_DEFERRED",
    "GENKEY_DEFER",
    "KEYGEN_BITS",
    "KEYGEN_VERSION",
    "MAX_CHUNK",
    "MESSAGE_TYPES",
    "NO_SEQ",
    "PROTOCOL_VERSION",
    "REQUIRED_OBJECTS",
    "RESTART",
    "RETRYABLE",
    "SUPPORTED_VERSIONS",
    "Abort",
    "Ack",
    "Answer",
    "Begin",
    "BoardEvent",
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
    "HostEvent",
    "HostMachine",
    "HostState",
    "Ignored",
    "Info",
    "InfoReply",
    "InfoRequested",
    "KeyRequested",
    "KeyType",
    "LineError",
    "Message",
    "MessageType",
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
    "encode_payload",
    "sha256",
]
