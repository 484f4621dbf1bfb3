"""The board agent: the protocol's board side over a link, storing into a credential store.

``iotx509 device agent --port URL --store DIR`` runs it on a Linux board; the simulated board
(:mod:`firmware_helpers.serial.simboard`) runs the same class on a pseudo-terminal.

A deferred GENKEY (protocol version 2, FEATURE_KEYGEN_DEFERRED) is generated on a worker thread
while the agent goes on answering the line (the host sends the server CA meanwhile); the CSR is
written by that thread through :attr:`BoardAgent.emit` when a GET_CSR already waits for it. One
lock keeps the machine's state consistent between the two threads.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from firmware_helpers.errors import StoreError
from firmware_helpers.serial.board import CommitRefused, CredentialStore, check_credentials
from firmware_helpers.serial.keygen import generate_key_and_csr
from firmware_helpers.serial.link import Link
from firmware_helpers.serial.protocol import (
    DEFAULT_MAX_CHUNK,
    FEATURE_KEYGEN,
    FEATURE_KEYGEN_DEFERRED,
    BoardMachine,
    CommitRequested,
    ErrorCode,
    InfoRequested,
    KeyRequested,
    LineError,
    ObjectType,
    Send,
    SessionStarted,
)

log = logging.getLogger(__name__)


def default_board_id() -> str:
    """``/etc/machine-id`` (first 16 characters) or the host name: stable across reboots."""
    try:
        machine_id = Path("/etc/machine-id").read_text().strip()
        if machine_id:
            return machine_id[:16]
    except OSError:
        pass
    return socket.gethostname()


class BoardAgent:
    """One board: a :class:`BoardMachine` (RAM) in front of a :class:`CredentialStore` (flash)."""

    def __init__(
        self,
        store: CredentialStore,
        board_id: str,
        *,
        max_chunk: int = DEFAULT_MAX_CHUNK,
        capacity: int = 64 * 1024,
        version: int | None = None,
        keygen: Callable[[int], tuple[bytes, bytes]] | None = generate_key_and_csr,
        background_keygen: bool = True,
    ) -> None:
        """``version``: speak only that protocol version (default: all); ``keygen(bits)`` makes
        (key, CSR DER) for GENKEY (None: a board that cannot generate keys);
        ``background_keygen``: announce FEATURE_KEYGEN_DEFERRED and generate on a thread."""
        self.store = store
        self.board_id = board_id
        self.max_chunk = max_chunk
        self.capacity = capacity
        self.version = version
        self.keygen = keygen
        self.background_keygen = background_keygen
        self.keys_generated = 0
        #: writes bytes to the line from the keygen thread (set by whoever runs the agent)
        self.emit: Callable[[bytes], None] | None = None
        self.lock = threading.RLock()
        self.machine = self._new_machine()
        self.commits = 0
        self.last_commit_seconds = 0.0
        self.line_errors = 0

    def _new_machine(self) -> BoardMachine:
        return BoardMachine(
            self.board_id,
            max_chunk=self.max_chunk,
            capacity=self.capacity,
            version=self.version,
            features=self._features(),
        )

    def _features(self) -> int:
        if self.keygen is None:
            return 0
        return FEATURE_KEYGEN | (FEATURE_KEYGEN_DEFERRED if self.background_keygen else 0)

    def boot(self) -> bytes:
        """Start (or restart) as after power-on: RAM state lost, store recovered; announce."""
        with self.lock:
            outcome = self.store.recover()
            if outcome != "clean":
                log.warning("credential store %s: %s", self.store.root, outcome)
            self.machine = self._new_machine()
            return self.machine.announce()

    def handle(self, data: bytes) -> list[bytes]:
        """Feed received bytes; return what to write back, in order."""
        with self.lock:
            return self._handle(data)

    def _handle(self, data: bytes) -> list[bytes]:
        out: list[bytes] = []
        for event in self.machine.receive_data(data):
            match event:
                case Send(payload):
                    out.append(payload)
                case CommitRequested(objects):
                    out.append(self._commit(objects))
                case InfoRequested():
                    try:
                        inventory = self.store.inventory()
                    except StoreError as exc:
                        log.error("%s", exc)
                        inventory = ()
                    out.append(self.machine.info_done(inventory))
                case KeyRequested(_key_type, bits, True, ticket):
                    self._start_background(bits, ticket)
                case KeyRequested(_key_type, bits):
                    out.append(self._generate(bits))
                case SessionStarted():
                    log.info("session started")
                case LineError(reason):
                    self.line_errors += 1
                    log.debug("line error: %s", reason)
        return out

    def _commit(self, objects: Mapping[ObjectType, bytes]) -> bytes:
        start = time.perf_counter()
        try:
            check_credentials(objects)
            self.store.commit(objects)
            self.last_commit_seconds = time.perf_counter() - start
        except CommitRefused as exc:
            log.warning("commit refused: %s", exc.text)
            return self.machine.commit_done(exc.code, exc.text)
        except (StoreError, OSError) as exc:
            log.error("commit failed: %s", exc)
            return self.machine.commit_done(ErrorCode.STORAGE_ERROR, str(exc))
        self.commits += 1
        log.info(
            "stored %s in %.1f ms",
            ", ".join(sorted(o.label for o in objects)),
            self.last_commit_seconds * 1000,
        )
        return self.machine.commit_done()

    def _generate(self, bits: int) -> bytes:
        """The key stays here, staged in RAM until COMMIT stores it; the host gets the CSR."""
        made = self._make_key(bits)
        if isinstance(made, str):
            return self.machine.keygen_failed(ErrorCode.STORAGE_ERROR, made)
        return self.machine.keygen_done(*made)

    def _make_key(self, bits: int) -> tuple[bytes, bytes] | str:
        """(key, CSR DER), or the reason it failed."""
        assert self.keygen is not None  # the machine only asks when FEATURE_KEYGEN was announced
        start = time.perf_counter()
        try:
            key, csr = self.keygen(bits)
        except (ValueError, OSError) as exc:
            log.error("key generation failed: %s", exc)
            return f"key generation: {exc}"
        self.keys_generated += 1
        log.info(
            "generated an RSA-%d key in %.1f ms; CSR of %d bytes%s",
            bits,
            (time.perf_counter() - start) * 1000,
            len(csr),
            getattr(self.keygen, "log_note", ""),
        )
        return key, csr

    def _start_background(self, bits: int, ticket: int) -> None:
        machine = self.machine
        worker = threading.Thread(
            target=self._generate_background,
            args=(machine, bits, ticket),
            name=f"keygen {self.board_id}",
            daemon=True,
        )
        worker.start()

    def _generate_background(self, machine: BoardMachine, bits: int, ticket: int) -> None:
        """The worker: make the key, hand it to the machine of the session that asked (a
        reboot meanwhile replaced the machine: the key is forgotten), write a waiting answer."""
        made = self._make_key(bits)
        with self.lock:
            if machine is not self.machine:
                return
            if isinstance(made, str):
                reply = machine.keygen_failed(ErrorCode.STORAGE_ERROR, made, ticket=ticket)
            else:
                reply = machine.keygen_done(*made, ticket=ticket)
            if reply and self.emit is not None:
                self.emit(reply)

    def after_replies(self) -> None:
        """Once the replies are on the line: make a commit durable and retire its journal."""
        if self.store.unsettled:
            try:
                self.store.settle()
            except OSError as exc:
                log.error("could not settle the commit (finished at next start): %s", exc)

    def serve(self, link: Link, stop: threading.Event | None = None) -> None:
        """Answer on ``link`` until ``stop`` is set (or the link goes away)."""
        stop = stop or threading.Event()
        self.emit = link.write
        with self.lock:
            link.write(self.boot())
        while not stop.is_set():
            data = link.read(0.2)
            if data:
                with self.lock:  # the keygen thread writes under it too: frames never interleave
                    for reply in self.handle(data):
                        link.write(reply)
                self.after_replies()
