"""The host side: validate the files, then send them to a board with stop-and-wait.

The retry policy lives in :class:`~firmware_helpers.serial.protocol.HostMachine`; this module
only owns the clock and the port. A transaction is HELLO, then BEGIN + DATA... for each object,
then one COMMIT: the board stores nothing before COMMIT, so an interruption at any point leaves
its previous credentials in place.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from device_sdk.certs import (
    load_certificates,
    load_private_key,
    require_key_matches,
    require_rsa,
    require_rsa_key,
)
from device_sdk.errors import CredentialError
from firmware_helpers.errors import (
    BoardRebootedError,
    LinkTimeoutError,
    ProtocolError,
    ProvisioningInputError,
    RetriesExhaustedError,
)
from firmware_helpers.serial.link import DEFAULT_BAUD, Link
from firmware_helpers.serial.protocol import (
    DEFAULT_MAX_CHUNK,
    Abort,
    Ack,
    Answer,
    Begin,
    Commit,
    Data,
    Hello,
    HelloReply,
    HostMachine,
    Ignored,
    Info,
    InfoReply,
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


def load_credentials(
    cert: str | Path, key: str | Path, server_ca: str | Path | None = None
) -> dict[ObjectType, bytes]:
    """Read and check the files with the shared model before anything goes on the line."""
    objects: dict[ObjectType, bytes] = {}
    paths = {ObjectType.CERTIFICATE: cert, ObjectType.PRIVATE_KEY: key}
    if server_ca is not None:
        paths[ObjectType.SERVER_CA] = server_ca
    for obj, path in paths.items():
        try:
            objects[obj] = Path(path).read_bytes()
        except OSError as exc:
            raise ProvisioningInputError(
                f"cannot read {obj.label} file {path}: {exc.strerror or exc}"
            ) from exc
    try:
        certs = load_certificates(objects[ObjectType.CERTIFICATE], source=str(cert))
        require_rsa(certs[0], what=f"{cert}")
        private = require_rsa_key(
            load_private_key(objects[ObjectType.PRIVATE_KEY], source=str(key)), source=str(key)
        )
        require_key_matches(private, certs[0], source=str(key))
        if server_ca is not None:
            load_certificates(objects[ObjectType.SERVER_CA], source=str(server_ca))
    except CredentialError as exc:
        raise ProvisioningInputError(f"not provisioning: {exc}") from exc
    return objects


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
        self.board: HelloReply | None = None

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

    def probe(self, *, timeout: float = 0.5) -> HelloReply | None:
        """One HELLO without retries: the board's reply, or None if nothing answered."""
        saved = self.machine.max_retries
        self.machine.max_retries = 0
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

    def provision(self, objects: Mapping[ObjectType, bytes]) -> ProvisionResult:
        """Send the set and commit it; restart from HELLO if the board loses the session."""
        start = time.monotonic()
        restarts = 0
        self.commit_sent = False
        try:
            while True:
                try:
                    board = self._transaction(objects)
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
        return ProvisionResult(
            board_id=board.board_id,
            payload_bytes=sum(len(d) for d in objects.values()),
            wire_bytes=self.wire_bytes,
            retransmissions=self.machine.retransmissions,
            restarts=restarts,
            seconds=time.monotonic() - start,
        )

    def _transaction(self, objects: Mapping[ObjectType, bytes]) -> HelloReply:
        board = self.hello()
        chunk = max(1, min(self.max_chunk, board.max_chunk))
        total = sum(len(d) for d in objects.values())
        sent = 0
        for obj in SEND_ORDER:
            if obj not in objects:
                continue
            data = objects[obj]
            self._expect_ack(Begin(obj, len(data), sha256(data)), f"BEGIN {obj.label}")
            for offset in range(0, len(data), chunk):
                part = data[offset : offset + chunk]
                self._expect_ack(Data(offset, part), f"DATA of the {obj.label} at {offset}")
                sent += len(part)
                if self.progress is not None:
                    self.progress(obj.label, sent, total)
        self.commit_sent = True
        self._expect_ack(Commit(), "COMMIT", timeout=self.commit_timeout)
        return board
