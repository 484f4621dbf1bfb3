"""Boards on several ports at once, each generating its own key (protocol version 2).

``iotx509 provision --batch --generate-on-board --prefix P --port A --port B ...`` runs one
thread per port. Each waits for a board that is not yet done, names its device from the next
free DeviceName, and provisions it with :func:`~firmware_helpers.serial.onboard.provision_generated`.

What the threads share goes through one lock: the SN ledger (which a process opens once at a
time), the association CSV, the provisioning report and the name allocator. A DeviceName is
never given twice, even across runs: names in the ledger (also those whose SN was burnt by a
failed board), in the output directory and in the report are taken, and a re-run goes on from
the next free one.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from device_sdk.errors import CsrRejectedError
from device_sdk.naming import DeviceFileName, validate_new_device_name
from firmware_helpers.defaults import DEFAULT_CERT_DAYS, DEFAULT_KEY_SIZE
from firmware_helpers.errors import (
    InvalidInputError,
    ProvisioningInputError,
)
from firmware_helpers.errors import SerialProvisioningError as _SPE
from firmware_helpers.ledger import SerialLedger
from firmware_helpers.pki import CertifiedKey
from firmware_helpers.serial.batch import Report
from firmware_helpers.serial.host import Host
from firmware_helpers.serial.onboard import OnBoardIssuer, provision_generated
from firmware_helpers.serial.protocol import HelloReply

log = logging.getLogger(__name__)

NAME_DIGITS = 4


class NameAllocator:
    """``PREFIX0001``, ``PREFIX0002``, ...: the next name nobody has had (see module doc)."""

    def __init__(
        self,
        prefix: str,
        ca: CertifiedKey,
        out_dir: Path,
        ledger_path: Path,
        report: Report,
        product_key: str,
    ) -> None:
        try:
            validate_new_device_name(f"{prefix}{1:0{NAME_DIGITS}d}")
        except ValueError as exc:
            raise ProvisioningInputError(f"--prefix {prefix!r}: {exc}") from exc
        self.prefix = prefix
        self.taken: set[str] = set()
        if ledger_path.exists():
            with SerialLedger(ledger_path) as ledger:
                self.taken |= {e.device_name for e in ledger.entries_for(ca.sn)}
        for cert in out_dir.glob("*.cer"):
            name = DeviceFileName.try_parse(cert.name)
            if name is not None and name.product_key == product_key:
                self.taken.add(name.device_name)
        self.taken |= {dn for pk, dn, _sn in report.used_pairs if pk == product_key}
        self._next = 1

    def next(self) -> str:
        while True:
            name = f"{self.prefix}{self._next:0{NAME_DIGITS}d}"
            self._next += 1
            if name not in self.taken:
                self.taken.add(name)
                return name


@dataclass
class PortResult:
    port: str
    provisioned: list[tuple[str, str, str]] = field(default_factory=list)  # board, DN, SN
    failed: list[tuple[str, str, str]] = field(default_factory=list)  # board, DN, error


@dataclass
class ParallelSummary:
    ports: list[PortResult]

    @property
    def provisioned(self) -> int:
        return sum(len(p.provisioned) for p in self.ports)

    @property
    def failed(self) -> int:
        return sum(len(p.failed) for p in self.ports)


@dataclass
class ParallelBatch:
    """One thread per ``(port, host)``; see the module doc."""

    hosts: list[tuple[str, Host]]
    ca: CertifiedKey
    product_key: str
    prefix: str
    out_dir: Path
    ledger_path: Path
    report: Report
    server_ca_pem: bytes | None = None
    days: int = DEFAULT_CERT_DAYS
    bits: int = DEFAULT_KEY_SIZE
    max_boards: int | None = None
    board_timeout: float | None = None
    poll_interval: float = 0.3
    say: Callable[[str], None] = print
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        if not self.hosts:
            raise InvalidInputError("no --port given")
        self.names = NameAllocator(
            self.prefix, self.ca, self.out_dir, self.ledger_path, self.report, self.product_key
        )
        self._started = 0
        self._tried: set[str] = set()

    def run(self) -> ParallelSummary:
        results = [PortResult(port) for port, _host in self.hosts]
        threads = [
            threading.Thread(target=self._serve, args=(host, result), name=f"port {port}")
            for (port, host), result in zip(self.hosts, results, strict=True)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return ParallelSummary(results)

    def _claim(self, board: HelloReply) -> str | None:
        """A new board on some port: its DeviceName, or None when the batch is full."""
        with self.lock:
            if self.max_boards is not None and self._started >= self.max_boards:
                return None
            if board.board_id in self.report.boards or board.board_id in self._tried:
                return ""
            self._started += 1
            self._tried.add(board.board_id)
            return self.names.next()

    def _full(self) -> bool:
        with self.lock:
            return self.max_boards is not None and self._started >= self.max_boards

    def _serve(self, host: Host, result: PortResult) -> None:
        port = result.port
        while not self._full():
            board, name = self._next_board(host, port)
            if board is None or name is None:
                break
            issuer = OnBoardIssuer(
                self.ca,
                self.product_key,
                name,
                self.out_dir,
                self.ledger_path,
                server_ca_pem=self.server_ca_pem,
                days=self.days,
            )
            self.say(f"[{port}] board {board.board_id}: generating a key for {name}")
            try:
                done = provision_generated(
                    host, issuer, self.report, bits=self.bits, lock=self.lock
                )
            except (_SPE, CsrRejectedError) as exc:
                result.failed.append((board.board_id, name, str(exc)))
                self.say(f"[{port}] board {board.board_id}: FAILED ({name}): {exc}")
                continue
            result.provisioned.append((done.board_id, name, issuer.sn))
            self.say(
                f"[{port}] board {done.board_id}: {name} (SN {issuer.sn}) ok in "
                f"{done.seconds:.2f} s"
            )

    def _next_board(self, host: Host, port: str) -> tuple[HelloReply | None, str | None]:
        deadline = None if self.board_timeout is None else time.monotonic() + self.board_timeout
        while deadline is None or time.monotonic() < deadline:
            if self._full():
                return None, None
            board = host.probe(timeout=self.poll_interval)
            if board is not None:
                name = self._claim(board)
                if name is None:
                    return None, None
                if name:
                    return board, name
                time.sleep(self.poll_interval)  # a board already done is still on the fixture
        self.say(f"[{port}] no new board appeared; stopping")
        return None, None
