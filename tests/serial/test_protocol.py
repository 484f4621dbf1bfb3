"""Protocol messages and both state machines, without any I/O."""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from firmware_helpers.errors import (
    LinkTimeoutError,
    ProtocolError,
    ProtocolVersionError,
    RetriesExhaustedError,
)
from firmware_helpers.serial.framing import Frame, FrameDecoder, encode_frame
from firmware_helpers.serial.protocol import (
    FEATURE_KEYGEN,
    FEATURE_KEYGEN_DEFERRED,
    NO_SEQ,
    Abort,
    Ack,
    Answer,
    Begin,
    BoardMachine,
    BoardState,
    Commit,
    CommitRequested,
    Csr,
    Data,
    ErrorCode,
    GenKey,
    GetCsr,
    Hello,
    HelloReply,
    HostMachine,
    Ignored,
    Info,
    InfoReply,
    InfoRequested,
    KeyRequested,
    KeyType,
    LineError,
    Message,
    Nak,
    ObjectInfo,
    ObjectType,
    Resend,
    Restart,
    Send,
    decode_message,
    encode_message,
    sha256,
)

CERT = b"-----BEGIN CERTIFICATE-----\n" + b"A" * 900 + b"\n-----END CERTIFICATE-----\n"
KEY = b"-----BEGIN RSA PRIVATE KEY-----\n" + b"B" * 1500 + b"\n-----END RSA PRIVATE KEY-----\n"

MESSAGES: list[Message] = [
    Hello(4096),
    HelloReply(4096, 65536, "SIM-0001"),
    Begin(ObjectType.PRIVATE_KEY, 1679, bytes(range(32))),
    Data(1024, b"\x00chunk\x00"),
    Commit(),
    Abort(),
    Info(),
    InfoReply("board-7", (ObjectInfo(ObjectType.CERTIFICATE, 1111, b"\x01" * 32),)),
    Ack(),
    Nak(ErrorCode.VERIFY_FAILED, "certificate: SHA-256 does not match BEGIN"),
]


def _decode_one(wire: bytes) -> tuple[Frame, Message]:
    (frame,) = FrameDecoder().feed(wire)
    assert isinstance(frame, Frame)
    return frame, decode_message(frame)


@pytest.mark.parametrize("version", [1, 2])
@pytest.mark.parametrize("msg", MESSAGES, ids=lambda m: type(m).__name__)
def test_every_message_round_trips(msg: Message, version: int) -> None:
    frame, decoded = _decode_one(encode_message(msg, 42, version=version))
    assert decoded == msg and frame.seq == 42 and frame.version == version


@pytest.mark.parametrize(
    "msg",
    [
        GenKey(KeyType.RSA, 2048),
        GenKey(KeyType.RSA, 2048, defer=True),
        GetCsr(),
        Csr(b"0\x82\x02I..."),
        HelloReply(4096, 65536, "board-7", FEATURE_KEYGEN),
        HelloReply(4096, 65536, "board-7", FEATURE_KEYGEN | FEATURE_KEYGEN_DEFERRED),
    ],
    ids=lambda m: type(m).__name__,
)
def test_version_2_messages_round_trip(msg: Message) -> None:
    frame, decoded = _decode_one(encode_message(msg, 7, version=2))
    assert decoded == msg and frame.version == 2


def test_version_1_has_no_key_generation() -> None:
    with pytest.raises(ProtocolError, match="needs protocol version 2"):
        encode_message(GenKey(), 1, version=1)
    with pytest.raises(ProtocolError, match="needs protocol version 2"):
        encode_message(GetCsr(), 1, version=1)
    with pytest.raises(ProtocolError, match="unknown message type 0x32 in version 1"):
        decode_message(Frame(1, 0x32, 1, b""))
    with pytest.raises(ProtocolError, match="unknown GENKEY flags 0x02"):
        decode_message(Frame(2, 0x30, 1, b"\x01\x08\x00\x02"))
    with pytest.raises(ProtocolError, match="unknown message type 0x30 in version 1"):
        decode_message(Frame(1, 0x30, 1, b"\x01\x08\x00"))
    # a version 1 HELLO_REPLY carries no features byte: a version 1 board cannot generate keys
    _, reply = _decode_one(encode_message(HelloReply(1, 2, "b", FEATURE_KEYGEN), 1, version=1))
    assert reply == HelloReply(1, 2, "b", 0) and not reply.can_generate_keys


def test_documented_hello_vector() -> None:
    """docs/serial-protocol.md, "Test vectors"."""
    wire = encode_message(Hello(4096), 0x1234, version=1)
    assert wire.hex(" ") == "05 01 01 12 34 03 02 10 03 86 8d 00"
    assert _decode_one(wire) == (Frame(1, 0x01, 0x1234, b"\x10\x00"), Hello(4096))


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 255), st.binary(max_size=300))
def test_random_payloads_only_raise_protocol_error(kind: int, payload: bytes) -> None:
    try:
        decode_message(Frame(1, kind, 0, payload))
    except ProtocolError:
        pass


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 2**32 - 1), st.binary(max_size=4000))
def test_data_round_trip(offset: int, chunk: bytes) -> None:
    assert _decode_one(encode_message(Data(offset, chunk), 1))[1] == Data(offset, chunk)


def test_error_codes_are_stable_numbers() -> None:
    """The numbers are the protocol: they are documented and must never be renumbered."""
    assert [(c.name, int(c)) for c in ErrorCode][:6] == [
        ("BAD_CRC", 1),
        ("BAD_SEQUENCE", 2),
        ("MALFORMED", 3),
        ("UNKNOWN_TYPE", 4),
        ("UNSUPPORTED_VERSION", 5),
        ("NO_SESSION", 6),
    ]
    assert ErrorCode.STORAGE_FULL.value == 10 and ErrorCode.VERIFY_FAILED.value == 11
    assert ErrorCode.BUSY.value == 14 and ErrorCode.NOT_FOUND.value == 16


# --- board machine -----------------------------------------------------------------------------


class BoardDriver:
    """Sends requests to a BoardMachine with explicit sequence numbers; decodes its replies."""

    def __init__(self, **kwargs: int) -> None:
        self.board = BoardMachine("board-1", **kwargs)
        self.seq = 100

    def send(self, msg: Message, seq: int | None = None) -> list[object]:
        if seq is None:
            self.seq = self.seq + 1 if not isinstance(msg, Hello) else 100
            seq = self.seq
        out: list[object] = []
        for event in self.board.receive_data(encode_message(msg, seq)):
            out.append(_decode_one(event.data)[1] if isinstance(event, Send) else event)
        return out

    def reply(self, msg: Message, seq: int | None = None) -> object:
        events = self.send(msg, seq)
        return events[-1]


def _session(**kwargs: int) -> BoardDriver:
    d = BoardDriver(**kwargs)
    assert isinstance(d.reply(Hello(4096)), HelloReply)
    return d


def _send_object(d: BoardDriver, obj: ObjectType, data: bytes, chunk: int = 512) -> None:
    assert d.reply(Begin(obj, len(data), sha256(data))) == Ack()
    for off in range(0, len(data), chunk):
        assert d.reply(Data(off, data[off : off + chunk])) == Ack()


def test_board_commits_a_complete_set() -> None:
    d = _session()
    _send_object(d, ObjectType.CERTIFICATE, CERT)
    _send_object(d, ObjectType.PRIVATE_KEY, KEY)
    (event,) = d.send(Commit())
    assert isinstance(event, CommitRequested)
    assert event.objects == {ObjectType.CERTIFICATE: CERT, ObjectType.PRIVATE_KEY: KEY}
    states = [d.board.state]
    assert _decode_one(d.board.commit_done())[1] == Ack()
    states.append(d.board.state)
    assert states == [BoardState.COMMITTING, BoardState.READY] and d.board.staged_types == ()


def test_duplicate_data_is_answered_from_cache_not_applied_twice() -> None:
    d = _session()
    assert d.reply(Begin(ObjectType.CERTIFICATE, len(CERT), sha256(CERT))) == Ack()
    assert d.reply(Data(0, CERT[:500])) == Ack()
    assert d.reply(Data(0, CERT[:500]), seq=d.seq) == Ack()  # the host lost our ACK
    assert d.reply(Data(500, CERT[500:])) == Ack()  # so the object still verifies


def test_board_errors() -> None:
    d = BoardDriver()
    nak = d.reply(Begin(ObjectType.CERTIFICATE, 10, b"\x00" * 32))
    assert isinstance(nak, Nak) and nak.code is ErrorCode.NO_SESSION
    d = _session(capacity=1000)
    nak = d.reply(Begin(ObjectType.PRIVATE_KEY, len(KEY), sha256(KEY)))
    assert (
        isinstance(nak, Nak) and nak.code is ErrorCode.STORAGE_FULL and "does not fit" in nak.text
    )
    nak = d.reply(Data(0, b"x"))
    assert isinstance(nak, Nak) and nak.code is ErrorCode.BAD_STATE
    nak = d.reply(Commit(), seq=d.seq + 5)
    assert (
        isinstance(nak, Nak) and nak.code is ErrorCode.BAD_SEQUENCE and "expected seq" in nak.text
    )
    nak = d.reply(Commit())
    assert isinstance(nak, Nak) and nak.code is ErrorCode.INCOMPLETE and "certificate" in nak.text


def test_board_refuses_a_wrong_digest_and_keeps_nothing() -> None:
    d = _session()
    assert d.reply(Begin(ObjectType.CERTIFICATE, len(CERT), sha256(b"other"))) == Ack()
    nak = d.reply(Data(0, CERT))
    assert isinstance(nak, Nak) and nak.code is ErrorCode.VERIFY_FAILED
    assert d.board.staged_types == ()


def test_board_refuses_oversized_chunks_and_extra_data() -> None:
    d = _session(max_chunk=256)
    assert d.reply(Begin(ObjectType.CERTIFICATE, 300, sha256(CERT[:300]))) == Ack()
    nak = d.reply(Data(0, CERT[:300]))
    assert isinstance(nak, Nak) and nak.code is ErrorCode.TOO_LARGE
    assert d.reply(Data(0, CERT[:256])) == Ack()
    nak = d.reply(Data(256, CERT[256:400]))
    assert isinstance(nak, Nak) and nak.code is ErrorCode.TOO_LARGE


def test_busy_while_committing_and_info_reply() -> None:
    d = _session()
    _send_object(d, ObjectType.CERTIFICATE, CERT)
    _send_object(d, ObjectType.PRIVATE_KEY, KEY)
    assert isinstance(d.send(Commit())[0], CommitRequested)
    nak = d.reply(Info())
    assert isinstance(nak, Nak) and nak.code is ErrorCode.BUSY
    d.board.commit_done(ErrorCode.STORAGE_FULL, "disk full")
    assert d.board.staged_types == ()
    assert isinstance(d.send(Info(), seq=d.seq)[0], InfoRequested)  # the host's retransmission
    info = _decode_one(d.board.info_done((ObjectInfo(ObjectType.PRIVATE_KEY, 5, b"\x02" * 32),)))
    assert info[1] == InfoReply("board-1", (ObjectInfo(ObjectType.PRIVATE_KEY, 5, b"\x02" * 32),))


def test_board_answers_corruption_and_other_versions() -> None:
    board = BoardMachine("b", version=1)
    (line_error, send) = board.receive_data(b"\x05garbage\x00")
    assert isinstance(line_error, LineError)
    frame, nak = _decode_one(send.data)  # type: ignore[union-attr]
    assert frame.seq == NO_SEQ and isinstance(nak, Nak) and nak.code is ErrorCode.BAD_CRC
    events = board.receive_data(encode_message(Hello(), 3, version=2))
    frame, nak = _decode_one(events[-1].data)  # type: ignore[union-attr]
    assert isinstance(nak, Nak) and nak.code is ErrorCode.UNSUPPORTED_VERSION
    assert "version 1, not 2" in nak.text and frame.version == 1  # in the board's own version
    events = board.receive_data(encode_frame(Frame(1, 0x77, 1, b"")))
    _, nak = _decode_one(events[-1].data)  # type: ignore[union-attr]
    assert isinstance(nak, Nak) and nak.code is ErrorCode.UNKNOWN_TYPE


def test_hello_discards_a_half_finished_transaction() -> None:
    d = _session()
    _send_object(d, ObjectType.CERTIFICATE, CERT)
    staged = [d.board.staged_types]
    d.reply(Hello())
    staged.append(d.board.staged_types)
    assert staged == [(ObjectType.CERTIFICATE,), ()]


# --- key generation in the background (deferred GENKEY, GET_CSR) -------------------------------

PIPELINED = FEATURE_KEYGEN | FEATURE_KEYGEN_DEFERRED
SERVER_CA = b"-----BEGIN CERTIFICATE-----\n" + b"C" * 700 + b"\n-----END CERTIFICATE-----\n"
NEW_KEY = b"the staged key (stays on the board)"
CSR_DER = b"0\x82 a CSR"


def _deferred_genkey(d: BoardDriver) -> int:
    """GENKEY with DEFER: a KeyRequested for the caller's background work, and an ACK at once."""
    request, ack = d.send(GenKey(KeyType.RSA, 2048, defer=True))
    assert isinstance(request, KeyRequested) and request.deferred and ack == Ack()
    assert d.board.state is BoardState.READY  # the line stays open while the key is made
    return request.ticket


def test_the_line_works_while_the_board_makes_its_key() -> None:
    d = _session(features=PIPELINED)
    ticket = _deferred_genkey(d)
    _send_object(d, ObjectType.SERVER_CA, SERVER_CA)  # meanwhile
    assert d.send(GetCsr()) == []  # not ready: the answer waits for the key
    get_csr_seq = d.seq
    assert d.send(GetCsr(), seq=get_csr_seq) == []  # a retransmission waits too
    frame, csr = _decode_one(d.board.keygen_done(NEW_KEY, CSR_DER, ticket=ticket))
    assert csr == Csr(CSR_DER) and frame.seq == get_csr_seq
    _send_object(d, ObjectType.CERTIFICATE, CERT)
    (event,) = d.send(Commit())
    assert isinstance(event, CommitRequested)
    assert event.objects == {
        ObjectType.SERVER_CA: SERVER_CA,
        ObjectType.PRIVATE_KEY: NEW_KEY,
        ObjectType.CERTIFICATE: CERT,
    }


def test_a_csr_made_before_it_is_asked_for_is_kept_for_get_csr() -> None:
    d = _session(features=PIPELINED)
    ticket = _deferred_genkey(d)
    assert d.board.keygen_done(NEW_KEY, CSR_DER, ticket=ticket) == b""  # nobody asked yet
    assert d.reply(GetCsr()) == Csr(CSR_DER)
    assert d.reply(GetCsr(), seq=d.seq) == Csr(CSR_DER)  # lost answer: the same CSR again


def test_a_key_finished_after_its_session_ended_is_forgotten() -> None:
    d = _session(features=PIPELINED)
    ticket = _deferred_genkey(d)
    d.reply(Hello())  # the host started over (or ABORTed) while the key was being made
    assert d.board.keygen_done(NEW_KEY, CSR_DER, ticket=ticket) == b""
    assert d.board.staged_types == ()
    nak = d.reply(GetCsr())
    assert isinstance(nak, Nak) and nak.code is ErrorCode.BAD_STATE and "GENKEY" in nak.text
    ticket = _deferred_genkey(d)
    d.reply(Abort())
    assert d.board.keygen_done(NEW_KEY, CSR_DER, ticket=ticket) == b""
    assert d.board.staged_types == ()


def test_a_failed_background_key_answers_get_csr_with_its_error() -> None:
    d = _session(features=PIPELINED)
    ticket = _deferred_genkey(d)
    assert d.send(GetCsr()) == []
    reply = d.board.keygen_failed(ErrorCode.STORAGE_ERROR, "no entropy", ticket=ticket)
    _, nak = _decode_one(reply)
    assert isinstance(nak, Nak) and nak.code is ErrorCode.STORAGE_ERROR and nak.text == "no entropy"


def test_what_a_board_refuses_around_a_background_key() -> None:
    d = _session(features=PIPELINED)
    nak = d.reply(GetCsr())
    assert isinstance(nak, Nak) and nak.code is ErrorCode.BAD_STATE
    _deferred_genkey(d)
    nak = d.reply(Begin(ObjectType.PRIVATE_KEY, len(KEY), sha256(KEY)))
    assert isinstance(nak, Nak) and nak.code is ErrorCode.BAD_STATE and "generated" in nak.text
    _send_object(d, ObjectType.CERTIFICATE, CERT)
    nak = d.reply(Commit())
    assert isinstance(nak, Nak) and nak.code is ErrorCode.INCOMPLETE
    assert "still being generated" in nak.text
    # a board without the feature refuses DEFER and still answers a plain GENKEY
    d = _session(features=FEATURE_KEYGEN)
    nak = d.reply(GenKey(KeyType.RSA, 2048, defer=True))
    assert isinstance(nak, Nak) and nak.code is ErrorCode.UNSUPPORTED_OBJECT
    (request,) = d.send(GenKey(KeyType.RSA, 2048))
    assert isinstance(request, KeyRequested) and not request.deferred


# --- host machine ------------------------------------------------------------------------------


def test_host_matches_replies_and_ignores_stale_ones() -> None:
    host = HostMachine(rng=random.Random(1))
    host.request(Hello())
    seq = host.current_seq
    events = host.receive_data(encode_message(Ack(), (seq - 1) % NO_SEQ))
    assert isinstance(events[0], Ignored) and "stale" in events[0].reason
    (answer,) = host.receive_data(encode_message(HelloReply(512, 1, "b"), seq))
    assert answer == Answer(HelloReply(512, 1, "b"))


def test_host_resends_on_corruption_and_gives_up() -> None:
    host = HostMachine(max_retries=2)
    wire = host.request(Commit())
    (ev,) = host.receive_data(b"\x07junk\x00")
    assert isinstance(ev, Resend) and ev.data == wire
    (ev,) = host.receive_data(encode_message(Nak(ErrorCode.BAD_CRC), NO_SEQ))
    assert isinstance(ev, Resend)
    with pytest.raises(RetriesExhaustedError, match=r"COMMIT .* gave up after 3 attempts"):
        host.receive_data(encode_message(Nak(ErrorCode.BUSY), host.current_seq))


def test_host_timeout_budget() -> None:
    host = HostMachine(max_retries=1)
    wire = host.request(Info())
    assert host.timeout() == wire
    with pytest.raises(LinkTimeoutError, match="did not answer INFO"):
        host.timeout()


def test_host_restarts_when_the_board_reboots() -> None:
    host = HostMachine()
    host.request(Data(0, b"x"))
    (ev,) = host.receive_data(encode_message(HelloReply(1, 1, "b"), NO_SEQ))
    assert isinstance(ev, Restart) and "rebooted" in ev.reason
    host.request(Data(0, b"x"))
    (ev,) = host.receive_data(encode_message(Nak(ErrorCode.NO_SESSION), host.current_seq))
    assert isinstance(ev, Restart)


def test_host_reports_another_protocol_version() -> None:
    host = HostMachine()
    host.request(Hello())
    reply = encode_message(HelloReply(1, 1, "b"), host.current_seq, version=3)
    with pytest.raises(
        ProtocolVersionError,
        match=r"version 3; this host speaks version 2 \(it knows versions 1, 2\)",
    ) as exc:
        host.receive_data(reply)
    assert exc.value.remote_version == 3


# --- both machines over a lossy in-memory line ------------------------------------------------


def _lossy_line(rng: random.Random, loss: float) -> Callable[[bytes], bytes]:
    """A line that loses a frame with probability ``loss / 2`` and flips one bit of it with the
    same probability (never its last byte, the frame's end)."""

    def line(data: bytes) -> bytes:
        roll = rng.random()
        if not data or roll < loss / 2:
            return b""  # frame lost
        if roll < loss:
            damaged = bytearray(data)
            damaged[rng.randrange(len(data) - 1)] ^= 1 << rng.randrange(8)
            return bytes(damaged)
        return data

    return line


def _exchange_over(
    line: Callable[[bytes], bytes],
    host: HostMachine,
    board: BoardMachine,
    stored: dict[ObjectType, bytes],
    msg: Message,
    *,
    on_event: Callable[[object], None] | None = None,
    board_cpu: Callable[[], list[bytes]] | None = None,
) -> Message | None:
    """One stop-and-wait request of ``host`` to ``board`` over ``line``, resent on the host's
    timeouts: the answer, or None when the host restarts the transaction. A commit stores into
    ``stored``; ``on_event`` sees the board's other events, ``board_cpu`` adds the board's own
    messages after each exchange."""
    wire = host.request(msg)
    while True:
        replies: list[bytes] = []
        for event in board.receive_data(line(wire)):
            if isinstance(event, Send):
                replies.append(event.data)
            elif isinstance(event, CommitRequested):
                stored.update(event.objects)
                replies.append(board.commit_done())
            elif on_event is not None:
                on_event(event)
        if board_cpu is not None:
            replies += board_cpu()
        wire = b""
        for host_event in host.receive_data(b"".join(line(r) for r in replies)):
            if isinstance(host_event, Answer):
                return host_event.message
            if isinstance(host_event, Restart):
                return None
            if isinstance(host_event, Resend):
                wire = host_event.data
                break
        if not wire:
            wire = host.timeout()


def _run_over_lossy_line(rng: random.Random, loss: float) -> dict[ObjectType, bytes] | str:
    """Stop-and-wait host against a board; the line flips bits or loses whole frames."""
    board = BoardMachine("mem", max_chunk=300)
    host = HostMachine(max_retries=8, rng=rng)
    line = _lossy_line(rng, loss)
    stored: dict[ObjectType, bytes] = {}

    def exchange(msg: Message) -> Message | None:
        return _exchange_over(line, host, board, stored, msg)

    try:
        for _ in range(3):
            if not isinstance(exchange(Hello(300)), HelloReply):
                continue
            ok = True
            for obj, data in ((ObjectType.CERTIFICATE, CERT), (ObjectType.PRIVATE_KEY, KEY)):
                ok = ok and exchange(Begin(obj, len(data), sha256(data))) == Ack()
                for off in range(0, len(data), 300):
                    ok = ok and exchange(Data(off, data[off : off + 300])) == Ack()
            if ok and exchange(Commit()) == Ack():
                return stored
        return "restarts used up"
    except (LinkTimeoutError, RetriesExhaustedError) as exc:
        assert not stored, "a failed transaction must not have committed"
        return str(exc)


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**32), st.sampled_from([0.0, 0.1, 0.3]))
def test_lossy_line_delivers_exactly_the_objects_or_nothing(seed: int, loss: float) -> None:
    result = _run_over_lossy_line(random.Random(seed), loss)
    if loss <= 0.1:
        assert result == {ObjectType.CERTIFICATE: CERT, ObjectType.PRIVATE_KEY: KEY}
    else:  # at 30% loss, either the exact objects or a clean failure
        assert result == {ObjectType.CERTIFICATE: CERT, ObjectType.PRIVATE_KEY: KEY} or (
            isinstance(result, str)
        )


def _run_pipelined_over_lossy_line(
    rng: random.Random, loss: float
) -> dict[ObjectType, bytes] | str:
    """The pipelined flow (GENKEY with DEFER, server CA, GET_CSR, certificate, COMMIT) over a
    line that flips bits or loses frames, while the board's key is ready after a random number
    of line events (before or after GET_CSR arrives)."""
    board = BoardMachine("mem", max_chunk=300, features=PIPELINED)
    host = HostMachine(max_retries=8, rng=rng)
    ready_at = rng.randrange(0, 8)
    making: list[int] = []  # tickets of keys being made
    events = 0
    stored: dict[ObjectType, bytes] = {}

    line = _lossy_line(rng, loss)

    def board_cpu() -> list[bytes]:
        """The board's own CPU: a key being made is done once enough has happened."""
        nonlocal events
        events += 1
        if making and events >= ready_at:
            answer = board.keygen_done(NEW_KEY, CSR_DER, ticket=making.pop())
            return [answer] if answer else []
        return []

    def key_requested(event: object) -> None:
        if isinstance(event, KeyRequested):
            making.append(event.ticket)

    def exchange(msg: Message) -> Message | None:
        return _exchange_over(
            line, host, board, stored, msg, on_event=key_requested, board_cpu=board_cpu
        )

    def send(obj: ObjectType, data: bytes) -> bool:
        ok = exchange(Begin(obj, len(data), sha256(data))) == Ack()
        for off in range(0, len(data), 300):
            ok = ok and exchange(Data(off, data[off : off + 300])) == Ack()
        return ok

    try:
        for _ in range(3):
            if not isinstance(exchange(Hello(300)), HelloReply):
                continue
            if exchange(GenKey(KeyType.RSA, 2048, defer=True)) != Ack():
                continue
            if not send(ObjectType.SERVER_CA, SERVER_CA) or exchange(GetCsr()) != Csr(CSR_DER):
                continue
            if send(ObjectType.CERTIFICATE, CERT) and exchange(Commit()) == Ack():
                return stored
        return "restarts used up"
    except (LinkTimeoutError, RetriesExhaustedError) as exc:
        assert not stored, "a failed transaction must not have committed"
        return str(exc)


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**32), st.sampled_from([0.0, 0.1, 0.3]))
def test_lossy_line_pipelined_keygen_commits_the_generated_key_or_nothing(
    seed: int, loss: float
) -> None:
    result = _run_pipelined_over_lossy_line(random.Random(seed), loss)
    expected = {
        ObjectType.SERVER_CA: SERVER_CA,
        ObjectType.PRIVATE_KEY: NEW_KEY,
        ObjectType.CERTIFICATE: CERT,
    }
    if loss <= 0.1:
        assert result == expected
    else:  # at 30% loss, either the exact set or a clean failure
        assert result == expected or isinstance(result, str)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(max_size=200), max_size=6))
def test_machines_survive_random_bytes(chunks: list[bytes]) -> None:
    """Garbage never crashes the board; the host raises nothing but its own error types."""
    from firmware_helpers.errors import SerialProvisioningError

    board = BoardMachine("fuzz")
    host = HostMachine(max_retries=1000)
    host.request(Hello())
    for chunk in chunks:
        for event in board.receive_data(chunk):
            if isinstance(event, CommitRequested):
                board.commit_done()
            elif isinstance(event, InfoRequested):
                board.info_done(())
        try:
            host.receive_data(chunk)
        except SerialProvisioningError:
            host.request(Hello())
