"""Factory batch: provision one board after another from a directory of issued pairs.

The report CSV is the memory of the batch. Every board that got a pair -- or may have got one,
when the line failed after COMMIT was sent -- is appended and fsync'd before the next board, and
the file is read at start, so a pair is never used twice, even across restarts of the batch.
"""

from __future__ import annotations

import csv
import logging
import os
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from cryptography.x509.oid import NameOID

from device_sdk.certs import certificate_sn, read_certificates
from device_sdk.csvsafe import restore_cell, safe_cells
from device_sdk.errors import CredentialError, InvalidNameError
from device_sdk.fileio import open_no_follow
from device_sdk.naming import CERT_SUFFIX, DeviceFileName
from firmware_helpers.errors import (
    BatchError,
    LinkError,
    PairInUseError,
    ProvisioningInputError,
    SerialProvisioningError,
)
from firmware_helpers.serial.host import Host, ProvisionResult, load_credentials
from firmware_helpers.serial.protocol import HelloReply, ObjectType

log = logging.getLogger(__name__)

REPORT_FIELDS = ("BoardId", "ProductKey", "DeviceName", "CertSN", "Time", "Status")
#: The report's default name, in the directory of the pairs: every mode records there.
REPORT_NAME = "provisioning-report.csv"
STATUS_OK = "ok"
STATUS_UNCERTAIN = "uncertain"


@dataclass(frozen=True)
class Pair:
    """An issued ``[PK]_[DN]_[CA_SN].cer`` / ``.key`` pair."""

    name: DeviceFileName
    cert: Path
    key: Path
    cert_sn: str

    @property
    def ident(self) -> tuple[str, str, str]:
        return (self.name.product_key, self.name.device_name, self.cert_sn)


def find_pairs(directory: str | Path) -> list[Pair]:
    """Every complete pair in ``directory``, in name order; other files are ignored."""
    directory = Path(directory)
    if not directory.is_dir():
        raise BatchError(f"{directory} is not a directory of issued certificates")
    pairs = []
    for cert in sorted(directory.glob("*" + CERT_SUFFIX)):
        name = DeviceFileName.try_parse(cert.name)
        if name is None:
            log.debug("skipping %s: not [ProductKey]_[DeviceName]_[CA_SN].cer", cert.name)
            continue
        key = directory / name.key_name
        if not key.exists():
            log.warning("skipping %s: no %s beside it", cert.name, name.key_name)
            continue
        try:
            sn = certificate_sn(read_certificates(cert)[0])
        except CredentialError as exc:
            raise BatchError(f"unreadable certificate in the batch: {exc}") from exc
        pairs.append(Pair(name, cert, key, sn))
    return pairs


def pair_of(cert: str | Path, key: str | Path) -> Pair:
    """The pair a single-mode ``provision`` sends, named as the report records it.

    The device is named by the file name (``[PK]_[DN]_[CA_SN].cer``, as ``certs issue`` writes
    it), else by the certificate's subject (O = ProductKey, CN = DeviceName, as the kit issues
    it); a certificate that names no device cannot be recorded, so it is refused.
    """
    cert, key = Path(cert), Path(key)
    try:
        certificate = read_certificates(cert)[0]
    except CredentialError as exc:
        raise ProvisioningInputError(f"not provisioning: {exc}") from exc
    name = DeviceFileName.try_parse(cert.name)
    if name is None:
        subject = certificate.subject
        cns = subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        orgs = subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
        try:
            name = DeviceFileName(str(orgs[0].value), str(cns[0].value), "0")
        except (IndexError, InvalidNameError, ValueError) as exc:
            raise ProvisioningInputError(
                f"cannot tell which device {cert} is for: its name does not follow "
                "[ProductKey]_[DeviceName]_[CA_SN].cer and its subject has no valid O=ProductKey "
                "and CN=DeviceName; the provisioning report must record which device each board "
                "got. Name the files as 'iotx509 certs issue' does."
            ) from exc
    return Pair(name, cert, key, certificate_sn(certificate))


@dataclass
class Report:
    """The append-only report CSV: one row per board that got (or may have got) a pair."""

    path: Path
    used_pairs: set[tuple[str, str, str]] = field(default_factory=set)
    boards: set[str] = field(default_factory=set)
    #: pair -> every board that got (or may have got) it
    holders: dict[tuple[str, str, str], set[str]] = field(default_factory=dict)

    @classmethod
    def open(cls, path: str | Path) -> Report:
        """Read the report back (cells as written, see :mod:`device_sdk.csvsafe`).

        A symbolic link at the report's path is refused here, before any board is touched:
        the report is appended to in place, never through a link.
        """
        report = cls(Path(path))
        try:
            fd = open_no_follow(report.path, os.O_RDONLY)
        except FileNotFoundError:
            return report
        except OSError as exc:
            raise BatchError(
                f"cannot use {report.path} as the provisioning report: {exc.strerror or exc}"
            ) from exc
        try:
            with os.fdopen(fd, newline="", encoding="utf-8") as fh:
                reader = csv.DictReader(fh)
                if reader.fieldnames is None:
                    return report  # an empty file: a report without rows yet
                if tuple(reader.fieldnames) != REPORT_FIELDS:
                    raise BatchError(
                        f"{report.path}: not a provisioning report (header must be "
                        f"{','.join(REPORT_FIELDS)}); give another --report file"
                    )
                for line, row in enumerate(reader, start=2):
                    if None in row.values() or None in row:
                        raise BatchError(f"{report.path}:{line}: wrong number of columns")
                    row = {name: restore_cell(value) for name, value in row.items()}
                    ident = (row["ProductKey"], row["DeviceName"], row["CertSN"])
                    report.used_pairs.add(ident)
                    report.holders.setdefault(ident, set()).add(row["BoardId"])
                    if row["Status"] == STATUS_OK:
                        report.boards.add(row["BoardId"])
        except (OSError, UnicodeDecodeError, csv.Error) as exc:
            raise BatchError(f"cannot read report {report.path}: {exc}") from exc
        return report

    def append(self, board_id: str, pair: Pair, status: str) -> None:
        """One row, fsync'd; every cell neutralised (a board's id is whatever it says)."""
        row = [
            board_id,
            pair.name.product_key,
            pair.name.device_name,
            pair.cert_sn,
            datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            status,
        ]
        try:
            fd = open_no_follow(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            with os.fdopen(fd, "a", newline="", encoding="utf-8") as fh:
                writer = csv.writer(fh)
                if os.fstat(fd).st_size == 0:
                    writer.writerow(safe_cells(REPORT_FIELDS))
                writer.writerow(safe_cells(row))
                fh.flush()
                os.fsync(fh.fileno())
        except OSError as exc:
            raise BatchError(f"cannot append to report {self.path}: {exc.strerror or exc}") from exc
        self.used_pairs.add(pair.ident)
        self.holders.setdefault(pair.ident, set()).add(board_id)
        if status == STATUS_OK:
            self.boards.add(board_id)


def provision_pair(
    host: Host, report: Report, pair: Pair, objects: Mapping[ObjectType, bytes]
) -> ProvisionResult:
    """Provision one pair and record it in ``report``: the one rule every mode follows.

    A pair the report already gives to another board is refused before anything is sent (the
    same board may get it again). Success is recorded as ``ok``; a line failure after COMMIT
    was sent as ``uncertain`` (the board may hold the pair), so no other board ever gets it.
    """

    def check(board: HelloReply) -> None:
        others = report.holders.get(pair.ident, set()) - {board.board_id}
        if others:
            raise PairInUseError(
                f"{pair.name.stem} (SN {pair.cert_sn}) is already on board "
                f"{', '.join(sorted(others))} according to {report.path}; two boards with one "
                "certificate kick each other off. Issue a new pair for board "
                f"{board.board_id}."
            )

    try:
        result = host.provision(objects, on_board=check)
    except (SerialProvisioningError, KeyboardInterrupt) as exc:
        doubtful = isinstance(exc, LinkError | KeyboardInterrupt)
        if host.commit_sent and doubtful and host.board is not None:
            # The board may have stored the pair: never hand it to another board.
            why = str(exc) if isinstance(exc, LinkError) else "interrupted after COMMIT was sent"
            report.append(host.board.board_id, pair, f"{STATUS_UNCERTAIN}: {why}")
        raise
    report.append(result.board_id, pair, STATUS_OK)
    return result


def check_report_writable(report: Report) -> None:
    """Refuse before the line is touched when the report could not record the result."""
    target = report.path if report.path.exists() else report.path.parent
    if not os.access(target, os.W_OK):
        raise BatchError(
            f"cannot write the provisioning report {report.path}: every provisioned pair must "
            "be recorded there; give --report FILE in a writable place"
        )


@dataclass
class BatchSummary:
    provisioned: list[tuple[str, Pair]] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    remaining: int = 0


class Batch:
    """Walks the unused pairs; ``wait`` polls for a new board, ``prompt`` asks the operator."""

    def __init__(
        self,
        host: Host,
        directory: str | Path,
        report: Report,
        *,
        server_ca: str | Path | None = None,
        password: bytes | None = None,
        mode: str = "wait",
        max_boards: int | None = None,
        board_timeout: float | None = None,
        poll_interval: float = 0.3,
        ask: Callable[[str], str] = input,
        say: Callable[[str], None] = print,
    ) -> None:
        if mode not in ("wait", "prompt"):
            raise BatchError(f"unknown batch mode {mode!r}")
        self.host = host
        self.directory = Path(directory)
        self.report = report
        self.server_ca = server_ca
        self.password = password
        self.mode = mode
        self.max_boards = max_boards
        self.board_timeout = board_timeout
        self.poll_interval = poll_interval
        self.ask = ask
        self.say = say
        self._tried: set[str] = set()

    def run(self) -> BatchSummary:
        all_pairs = find_pairs(self.directory)
        queue = deque(p for p in all_pairs if p.ident not in self.report.used_pairs)
        summary = BatchSummary()
        if not queue:
            raise BatchError(
                f"no unused pairs in {self.directory}: {len(all_pairs)} pair(s) found, all "
                f"recorded in {self.report.path}"
            )
        self.say(f"{len(queue)} unused pair(s) of {len(all_pairs)} in {self.directory}")
        while queue and (self.max_boards is None or len(summary.provisioned) < self.max_boards):
            board = self._next_board()
            if board is None:
                break
            pair = queue.popleft()
            objects = load_credentials(pair.cert, pair.key, self.server_ca, password=self.password)
            label = f"{pair.name.stem} (SN {pair.cert_sn})"
            self.say(f"board {board.board_id}: provisioning {label}")
            self._tried.add(board.board_id)
            try:
                result = provision_pair(self.host, self.report, pair, objects)
            except SerialProvisioningError as exc:
                if pair.ident not in self.report.used_pairs:
                    queue.appendleft(pair)  # nothing was stored: the pair is still fresh
                summary.failed.append((board.board_id, str(exc)))
                self.say(f"board {board.board_id}: FAILED: {exc}")
                continue
            summary.provisioned.append((result.board_id, pair))
            self.say(f"board {result.board_id}: ok in {result.seconds:.2f} s")
        summary.remaining = len(queue)
        return summary

    def _next_board(self) -> HelloReply | None:
        if self.mode == "prompt":
            return self._prompt()
        return self._wait()

    def _is_new(self, board: HelloReply) -> bool:
        return board.board_id not in self.report.boards and board.board_id not in self._tried

    def _wait(self) -> HelloReply | None:
        self.say("waiting for the next board ...")
        deadline = None if self.board_timeout is None else time.monotonic() + self.board_timeout
        while deadline is None or time.monotonic() < deadline:
            board = self.host.probe(timeout=self.poll_interval)
            if board is not None and self._is_new(board):
                return board
            if board is not None:
                time.sleep(self.poll_interval)
        self.say("no new board appeared; stopping")
        return None

    def _prompt(self) -> HelloReply | None:
        while True:
            try:
                answer = self.ask("Connect the next board and press Enter (q to stop): ")
            except EOFError:
                return None
            if answer.strip().lower() in ("q", "quit"):
                return None
            # The operator says a board is there: give it the host's whole retry budget.
            board = self.host.probe(timeout=1.0, retries=self.host.machine.max_retries)
            if board is None:
                self.say("no board answered; check the cable and that the board is powered")
            elif not self._is_new(board):
                self.say(f"board {board.board_id} is already done; connect another board")
            else:
                return board
