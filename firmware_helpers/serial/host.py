"""The host side: validate the files, then send them to a board with stop-and-wait.

The retry policy lives in :class:`~firmware_helpers.serial.protocol.HostMachine`; this module
only owns the clock and the port. A transaction is HELLO, then BEGIN + DATA... for each object,
then one COMMIT: the board stores nothing before COMMIT, so an interruption at any point leaves
its previous credentials in place.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa

from device_sdk.certs import (
    load_certificates,
    load_private_key,
    require_key_matches,
    require_rsa,
    require_rsa_key,
    rsa_key_pkcs1_pem,
    to_pem,
)
from device_sdk.errors import CredentialError, CsrRejectedError, KeyPasswordError
from firmware_helpers.defaults import DEFAULT_KEY_SIZE
from firmware_helpers.errors import (
    BoardRebootedError,
    LinkError,
    LinkTimeoutError,
    ProtocolError,
    ProtocolVersionError,
    ProvisioningInputError,
    RetriesExhaustedError,
    SerialProvisioningError,
)
from firmware_helpers.serial.link import DEFAULT_BAUD, Link
from firmware_helpers.serial.protocol import (
    DEFAULT_MAX_CHUNK,
    KEYGEN_VERSION,
    SUPPORTED_VERSIONS,
    Abort,
    Ack,
    Answer,
    Begin,
    Commit,
    Csr,
    Data,
    GenKey,
    GetCsr,
    Hello,
    HelloReply,
    HostMachine,
    Ignored,
    Info,
    InfoReply,
    KeyType,
    Message,
    Nak,
    ObjectType,
    Resend,
    Restart,
    board_error,
    sha256,
)

log = logging.getLogger(__name__)

#: progress(what, bytes_sent, bytes_total) after every acknowledged chunk.
Progress = Callable[[str, int, int], None]

SEND_ORDER = (ObjectType.CERTIFICATE, ObjectType.PRIVATE_KEY, ObjectType.SERVER_CA)


#: Environment variable read for the password of an encrypted device key.
KEY_PASSWORD_ENV = "IOTX509_KEY_PASSWORD"
#: The hint every "give the password" error carries, naming the CLI's own ways.
KEY_PASSWORD_HINT = f"give --key-password-file FILE or set {KEY_PASSWORD_ENV}"


def read_password_file(path: str | Path) -> bytes:
    """The first line of ``path`` (a trailing newline is not part of the password)."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ProvisioningInputError(
            f"cannot read the key password file {path}: {exc.strerror or exc}"
        ) from exc
    password = data.splitlines()[0] if data.strip(b"\r\n") else b""
    if not password:
        raise ProvisioningInputError(f"the key password file {path} is empty")
    return password


def load_credentials(
    cert: str | Path,
    key: str | Path,
    server_ca: str | Path | None = None,
    *,
    password: bytes | str | None = None,
) -> dict[ObjectType, bytes]:
    """Read and check the files with the shared model before anything goes on the line.

    What goes on the line is what the board stores, in the forms the device SDK and the
    platform document: certificates as PEM (a DER file is converted), the key as unencrypted
    PKCS#1 PEM (an encrypted key is decrypted here with ``password``; the board has no way to
    ask for one).
    """
    raw: dict[ObjectType, bytes] = {}
    paths = {ObjectType.CERTIFICATE: cert, ObjectType.PRIVATE_KEY: key}
    if server_ca is not None:
        paths[ObjectType.SERVER_CA] = server_ca
    for obj, path in paths.items():
        try:
            raw[obj] = Path(path).read_bytes()
        except OSError as exc:
            raise ProvisioningInputError(
                f"cannot read {obj.label} file {path}: {exc.strerror or exc}"
            ) from exc
    objects: dict[ObjectType, bytes] = {}
    try:
        certs = load_certificates(raw[ObjectType.CERTIFICATE], source=str(cert))
        require_rsa(certs[0], what=f"{cert}")
        private = require_rsa_key(
            load_private_key(raw[ObjectType.PRIVATE_KEY], source=str(key), password=password),
            source=str(key),
        )
        require_key_matches(private, certs[0], source=str(key))
        objects[ObjectType.CERTIFICATE] = _as_pem(raw[ObjectType.CERTIFICATE], certs)
        objects[ObjectType.PRIVATE_KEY] = _as_pkcs1(raw[ObjectType.PRIVATE_KEY], private)
        if server_ca is not None:
            cas = load_certificates(raw[ObjectType.SERVER_CA], source=str(server_ca))
            objects[ObjectType.SERVER_CA] = _as_pem(raw[ObjectType.SERVER_CA], cas)
    except KeyPasswordError as exc:
        hint = (
            f"; {KEY_PASSWORD_HINT}"
            if "give its password" in str(exc)
            else (f" (the password came from --key-password-file or {KEY_PASSWORD_ENV})")
        )
        raise ProvisioningInputError(f"not provisioning: {exc}{hint}") from exc
    except CredentialError as exc:
        raise ProvisioningInputError(f"not provisioning: {exc}") from exc
    return objects


def _as_pem(data: bytes, certs: Sequence[x509.Certificate]) -> bytes:
    """PEM files are sent as they are (comments and chain order kept); DER becomes PEM."""
    return data if b"-----BEGIN" in data else to_pem(certs)


def _as_pkcs1(data: bytes, key: rsa.RSAPrivateKey) -> bytes:
    """An unencrypted PKCS#1 PEM file is sent as it is; any other form is re-encoded."""
    if data.lstrip().startswith(b"-----BEGIN RSA PRIVATE KEY-----") and b"ENCRYPTED" not in data:
        return data
    return rsa_key_pkcs1_pem(key)


@dataclass(frozen=True)
class ProvisionResult:
    board_id: str
    payload_bytes: int
    wire_bytes: int
    retransmissions: int
    restarts: int
    seconds: float


class _RestartNeeded(Exception):
    pass


class Host:
    """Talks to one board over ``link``."""

    def __init__(
        self,
        link: Link,
        *,
        baud: int = DEFAULT_BAUD,
        max_chunk: int = DEFAULT_MAX_CHUNK,
        max_retries: int = 6,
        base_timeout: float = 0.5,
        commit_timeout: float = 10.0,
        max_restarts: int = 2,
        progress: Progress | None = None,
        genkey_timeout: float = 60.0,
    ) -> None:
        self.link = link
        self.baud = baud
        self.max_chunk = max_chunk
        self.base_timeout = base_timeout
        self.commit_timeout = commit_timeout
        self.max_restarts = max_restarts
        self.progress = progress
        self.machine = HostMachine(max_retries=max_retries)
        self.wire_bytes = 0
        self.commit_sent = False
        self.sent_bytes = 0
        self.board: HelloReply | None = None
        #: the older protocol version the host fell back to for this board, if it did
        self.fell_back_to: int | None = None
        self.genkey_timeout = genkey_timeout

    # --- one request --------------------------------------------------------------------------

    def _line_time(self, nbytes: int) -> float:
        return nbytes * 10 / self.baud

    def _write(self, data: bytes) -> None:
        self.wire_bytes += len(data)
        self.link.write(data)

    def exchange(self, msg: Message, *, timeout: float | None = None) -> Message:
        """Send ``msg`` and return the board's answer, retrying and resending as the machine says."""
        data = self.machine.request(msg)
        # Allow for the request and a reply of similar size to cross the line.
        wait = timeout or self.base_timeout + 2 * self._line_time(len(data) + 64)
        self._write(data)
        deadline = time.monotonic() + wait
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self._write(self.machine.timeout())
                deadline = time.monotonic() + wait
                continue
            chunk = self.link.read(remaining)
            if not chunk:
                continue
            for event in self.machine.receive_data(chunk):
                match event:
                    case Answer(message):
                        return message
                    case Resend(again, reason):
                        log.debug("resending: %s", reason)
                        self._write(again)
                        deadline = time.monotonic() + wait
                    case Restart(reason):
                        log.info("restarting the transaction: %s", reason)
                        raise _RestartNeeded(reason)
                    case Ignored(reason):
                        log.debug("ignored: %s", reason)

    def _expect_ack(self, msg: Message, during: str, *, timeout: float | None = None) -> None:
        answer = self.exchange(msg, timeout=timeout)
        if isinstance(answer, Nak):
            raise board_error(answer, during=during)
        if not isinstance(answer, Ack):
            raise ProtocolError(f"expected ACK to {during}, got {type(answer).__name__}")

    # --- operations ---------------------------------------------------------------------------

    def hello(self, *, timeout: float | None = None) -> HelloReply:
        """Start a session, in the highest version both sides speak.

        The host offers its own version; a board that answers in an older version the host
        also speaks (an old board's NAK UNSUPPORTED_VERSION) is greeted again in that one, and
        :attr:`fell_back_to` says so. Any other version is :class:`ProtocolVersionError`.
        """
        try:
            answer = self.exchange(Hello(self.max_chunk), timeout=timeout)
        except ProtocolVersionError as exc:
            remote = exc.remote_version
            if remote not in SUPPORTED_VERSIONS or remote == self.machine.version:
                raise
            log.warning(
                "board speaks protocol version %d: using the version %d flow", remote, remote
            )
            self.machine.version = remote
            self.fell_back_to = remote
            answer = self.exchange(Hello(self.max_chunk), timeout=timeout)
        if isinstance(answer, Nak):
            raise board_error(answer, during="HELLO")
        if not isinstance(answer, HelloReply):
            raise ProtocolError(f"expected HELLO_REPLY, got {type(answer).__name__}")
        self.board = answer
        return answer

    def info(self) -> InfoReply:
        for _ in range(self.max_restarts + 1):
            try:
                self.hello()
                answer = self.exchange(Info())
            except _RestartNeeded:
                continue
            if isinstance(answer, Nak):
                raise board_error(answer, during="INFO")
            if not isinstance(answer, InfoReply):
                raise ProtocolError(f"expected INFO_REPLY, got {type(answer).__name__}")
            return answer
        raise BoardRebootedError("the board kept restarting while asked for INFO")

    def probe(self, *, timeout: float = 0.5, retries: int = 0) -> HelloReply | None:
        """A HELLO with ``retries`` retries: the board's reply, or None if nothing answered."""
        saved = self.machine.max_retries
        self.machine.max_retries = retries
        try:
            return self.hello(timeout=timeout)
        except (LinkTimeoutError, RetriesExhaustedError, _RestartNeeded):
            return None
        finally:
            self.machine.max_retries = saved

    def abort(self) -> None:
        """Best effort: tell the board to drop what it staged (it would anyway at next HELLO)."""
        saved = self.machine.max_retries
        self.machine.max_retries = 0
        try:
            self.exchange(Abort(), timeout=0.3)
        except Exception as exc:  # the line may be the reason we abort; never mask the cause
            log.debug("abort not acknowledged: %s", exc)
        finally:
            self.machine.max_retries = saved

    def provision(
        self,
        objects: Mapping[ObjectType, bytes],
        *,
        on_board: Callable[[HelloReply], None] | None = None,
    ) -> ProvisionResult:
        """Send the set and commit it; restart from HELLO if the board loses the session.

        ``on_board(reply)`` is called after each HELLO, before anything is sent: it may raise to
        refuse the board that answered (the provisioning report does, for a pair already on
        another board).
        """
        return self._run(objects, on_board)

    def provision_generated(
        self,
        issue: Callable[[HelloReply, bytes], Mapping[ObjectType, bytes]],
        *,
        bits: int = DEFAULT_KEY_SIZE,
        on_board: Callable[[HelloReply], None] | None = None,
        early: Mapping[ObjectType, bytes] | None = None,
    ) -> ProvisionResult:
        """Protocol version 2: the board generates the key and returns a CSR (DER); ``issue``
        turns it into the objects to send (certificate, server CA), then the board commits.

        ``early``: objects that do not depend on the key (the server CA). To a board that
        generates in the background they are sent while it makes the key (GENKEY with DEFER,
        then GET_CSR), so the line works while the board computes; to any other board they
        are sent after the certificate, as ``issue``'s objects are. No private key crosses
        the line. A restart (the board lost its session, and with it the staged key) asks for
        a new key and calls ``issue`` again.
        """

        def plan(board: HelloReply) -> Mapping[ObjectType, bytes]:
            if not board.can_generate_keys:
                why = (
                    f"it speaks protocol version {self.machine.version}, which has no key "
                    "generation"
                    if self.machine.version < KEYGEN_VERSION
                    else "it says it cannot generate keys"
                )
                raise ProvisioningInputError(
                    f"board {board.board_id} cannot generate its key: {why}. Provision it with "
                    "an issued pair instead (--cert and --key)."
                )
            sent: Mapping[ObjectType, bytes] = {}
            if early and board.can_generate_in_background:
                self._expect_ack(GenKey(KeyType.RSA, bits, defer=True), "GENKEY")
                self._send_objects(early, board)  # while the board makes its key
                sent = early
                answer = self.exchange(GetCsr(), timeout=self.genkey_timeout)
                during = "GET_CSR"
            else:
                answer = self.exchange(GenKey(KeyType.RSA, bits), timeout=self.genkey_timeout)
                during = "GENKEY"
            if isinstance(answer, Nak):
                raise board_error(answer, during=during)
            if not isinstance(answer, Csr):
                raise ProtocolError(f"expected CSR, got {type(answer).__name__}")
            objects = {**(early or {}), **issue(board, answer.der)}
            return {t: d for t, d in objects.items() if sent.get(t) != d}

        return self._run(plan, on_board)

    def _run(
        self,
        plan: Mapping[ObjectType, bytes] | Callable[[HelloReply], Mapping[ObjectType, bytes]],
        on_board: Callable[[HelloReply], None] | None,
    ) -> ProvisionResult:
        start = time.monotonic()
        restarts = 0
        self.commit_sent = False
        self.sent_bytes = 0
        try:
            while True:
                try:
                    board = self._transaction(plan, on_board)
                    break
                except _RestartNeeded as exc:
                    restarts += 1
                    if restarts > self.max_restarts:
                        raise BoardRebootedError(
                            f"the board lost the session {restarts} times ({exc}); its previous "
                            "credentials are unchanged. Check its power supply and cable."
                        ) from exc
        except KeyboardInterrupt:
            if not self.commit_sent:
                self.abort()
            raise
        except (SerialProvisioningError, CsrRejectedError) as exc:
            # Refused on our side (a bad CSR, a board already holding the pair) or by the board:
            # the line works, so tell the board to drop what it staged (a generated key too).
            if not self.commit_sent and not isinstance(exc, LinkError):
                self.abort()
            raise
        return ProvisionResult(
            board_id=board.board_id,
            payload_bytes=self.sent_bytes,
            wire_bytes=self.wire_bytes,
            retransmissions=self.machine.retransmissions,
            restarts=restarts,
            seconds=time.monotonic() - start,
        )

    def _transaction(
        self,
        plan: Mapping[ObjectType, bytes] | Callable[[HelloReply], Mapping[ObjectType, bytes]],
        on_board: Callable[[HelloReply], None] | None,
    ) -> HelloReply:
        board = self.hello()
        self.sent_bytes = 0
        if on_board is not None:
            on_board(board)
        objects = plan(board) if callable(plan) else plan
        self._send_objects(objects, board)
        self.commit_sent = True
        self._expect_ack(Commit(), "COMMIT", timeout=self.commit_timeout)
        return board

    def _send_objects(self, objects: Mapping[ObjectType, bytes], board: HelloReply) -> None:
        """BEGIN + DATA... for each object, in :data:`SEND_ORDER`; ``sent_bytes`` counts them."""
        chunk = max(1, min(self.max_chunk, board.max_chunk))
        total = self.sent_bytes + sum(len(d) for d in objects.values())
        for obj in SEND_ORDER:
            if obj not in objects:
                continue
            data = objects[obj]
            self._expect_ack(Begin(obj, len(data), sha256(data)), f"BEGIN {obj.label}")
            for offset in range(0, len(data), chunk):
                part = data[offset : offset + chunk]
                self._expect_ack(Data(offset, part), f"DATA of the {obj.label} at {offset}")
                self.sent_bytes += len(part)
                if self.progress is not None:
                    self.progress(obj.label, self.sent_bytes, total)
