"""The SN ledger: every SN issued under a CA, so that no SN is ever issued twice.

The platform requires device certificate SNs to be unique among all certificates a user issued.
Random 64-bit SNs almost never collide, but "almost" is not "never", and a run interrupted and
resumed, or two batches into two directories with a shared ``--ledger``, must not repeat one. So
an SN is *reserved* here -- appended and fsync'd -- before the certificate carrying it is
written; a crash after the reservation only burns the SN, it can never reuse it.

Format: one JSON object per line (UTF-8), append-only::

    {"ca_sn": "5f1c...", "sn": "9a3e...", "product_key": "a1B2c3", "device_name": "dev-0001",
     "time": "2026-11-27T18:30:00Z"}

SNs are in the kit's canonical form (lowercase hex, no leading zeros). Uniqueness is checked on
``(ca_sn, sn)``; two different CAs sharing an SN would only make the ledger over-cautious. A last
line without its newline is a reservation that never completed (the process died inside the
write); it is cut off when the ledger is next opened, but only after every complete line has
been read and checked, and only when it is the start of a record (``{"ca_sn":``): a file that is
not a ledger is refused untouched. Any other unreadable line is an error: the ledger is never
silently repaired. The ledger is opened with :func:`device_sdk.fileio.open_no_follow`: a
symbolic link at its path is refused, never appended to or truncated through. An exclusive
``flock`` keeps two runs from sharing a ledger at the same time.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
from collections.abc import Iterable, Iterator
from contextlib import suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType

from device_sdk.errors import InvalidSerialNumberError
from device_sdk.fileio import open_no_follow
from device_sdk.serials import normalize_sn
from firmware_helpers.errors import DuplicateSerialError, LedgerError

log = logging.getLogger(__name__)

DEFAULT_LEDGER_NAME = "sn-ledger.jsonl"
_FIELDS = ("ca_sn", "sn", "product_key", "device_name", "time")
#: How every record line starts (``to_line`` writes the fields in ``_FIELDS`` order).
_RECORD_START = b'{"ca_sn":'


@dataclass(frozen=True, slots=True)
class LedgerEntry:
    ca_sn: str
    sn: str
    product_key: str
    device_name: str
    time: str

    def to_line(self) -> bytes:
        record = {name: getattr(self, name) for name in _FIELDS}
        return (json.dumps(record, separators=(",", ":")) + "\n").encode()


class SerialLedger:
    """An open, locked ledger. Use as a context manager, or call :meth:`close`."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._entries: dict[tuple[str, str], LedgerEntry] = {}
        self._fd = self._open_locked()
        try:
            self._load()
        except BaseException:
            self.close()
            raise

    # --- opening -------------------------------------------------------------------------------

    def _open_locked(self) -> int:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = open_no_follow(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        except OSError as exc:
            raise LedgerError(
                f"cannot open the SN ledger {self.path}: {exc.strerror or exc}", path=str(self.path)
            ) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            raise LedgerError(
                f"the SN ledger {self.path} is in use by another issuing run; wait for it to "
                "finish (two runs sharing a ledger at once could not keep SNs unique)",
                path=str(self.path),
            ) from exc
        return fd

    def _load(self) -> None:
        data = _read_fd(self._fd)
        complete = data.rfind(b"\n") + 1
        for number, raw in enumerate(data[:complete].splitlines(), start=1):
            if not raw.strip():
                continue
            entry = self._parse_line(raw, number)
            self._entries[(entry.ca_sn, entry.sn)] = entry
        tail = data[complete:]
        if tail:
            # Validated before truncating: only the start of a record is an interrupted write.
            if not (tail.startswith(_RECORD_START) or _RECORD_START.startswith(tail)):
                line = data[:complete].count(b"\n") + 1
                raise LedgerError(
                    f"{self.path}, line {line} is not a ledger "
                    "record and has no line end; the file is not an SN ledger (or is damaged) "
                    "and was left untouched: give --ledger the ledger's own path",
                    path=str(self.path),
                )
            log.warning(
                "%s: dropping an unfinished last line (a reservation interrupted mid-write)",
                self.path,
            )
            os.ftruncate(self._fd, complete)
            os.fsync(self._fd)

    def _parse_line(self, raw: bytes, number: int) -> LedgerEntry:
        where = f"{self.path}, line {number}"
        try:
            record = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise LedgerError(
                f"{where} is not valid JSON; the ledger is corrupt and is never repaired "
                "automatically: restore it from a backup or fix the line by hand",
                path=str(self.path),
            ) from exc
        if not isinstance(record, dict) or any(
            not isinstance(record.get(name), str) for name in _FIELDS
        ):
            raise LedgerError(
                f"{where} lacks one of the fields {', '.join(_FIELDS)}", path=str(self.path)
            )
        try:
            ca_sn, sn = normalize_sn(record["ca_sn"]), normalize_sn(record["sn"])
        except InvalidSerialNumberError as exc:
            raise LedgerError(f"{where}: {exc}", path=str(self.path)) from exc
        return LedgerEntry(ca_sn, sn, record["product_key"], record["device_name"], record["time"])

    # --- use -----------------------------------------------------------------------------------

    def __contains__(self, key: object) -> bool:
        if not isinstance(key, tuple) or len(key) != 2:
            return False
        try:
            return (normalize_sn(key[0]), normalize_sn(key[1])) in self._entries
        except InvalidSerialNumberError:
            return False

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[LedgerEntry]:
        return iter(list(self._entries.values()))

    def entries_for(self, ca_sn: str | int) -> list[LedgerEntry]:
        ca = normalize_sn(ca_sn)
        return [e for e in self._entries.values() if e.ca_sn == ca]

    def reserve(
        self, ca_sn: str | int, sn: str | int, product_key: str, device_name: str
    ) -> LedgerEntry:
        """Record ``sn`` as issued under ``ca_sn`` (durably) or raise DuplicateSerialError."""
        return self.reserve_many([(ca_sn, sn, product_key, device_name)])[0]

    def reserve_many(
        self, items: Iterable[tuple[str | int, str | int, str, str]]
    ) -> list[LedgerEntry]:
        """Reserve several SNs with one write and one fsync; all or none are recorded."""
        if self._fd < 0:
            raise LedgerError(f"the SN ledger {self.path} is closed", path=str(self.path))
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        batch: dict[tuple[str, str], LedgerEntry] = {}
        for ca_sn, sn, product_key, device_name in items:
            key = (normalize_sn(ca_sn), normalize_sn(sn))
            if key in self._entries or key in batch:
                previous = self._entries.get(key) or batch[key]
                raise DuplicateSerialError(
                    f"SN {key[1]} was already issued under the CA with SN {key[0]} "
                    f"(to {previous.product_key}/{previous.device_name} at {previous.time}, "
                    f"recorded in {self.path}); an SN is never issued twice",
                    sn=key[1],
                    ca_sn=key[0],
                )
            batch[key] = LedgerEntry(key[0], key[1], product_key, device_name, now)
        if not batch:
            return []
        payload = b"".join(entry.to_line() for entry in batch.values())
        try:
            written = os.write(self._fd, payload)
            if written != len(payload):
                raise OSError(f"short write ({written} of {len(payload)} bytes)")
            os.fsync(self._fd)
        except OSError as exc:
            raise LedgerError(
                f"cannot record SNs in the ledger {self.path}: {exc}", path=str(self.path)
            ) from exc
        self._entries.update(batch)
        return list(batch.values())

    def close(self) -> None:
        if self._fd >= 0:
            with suppress(OSError):
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> SerialLedger:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _read_fd(fd: int) -> bytes:
    """The whole file behind ``fd`` (the one that was opened and locked, not the path again)."""
    chunks = []
    offset = 0
    while chunk := os.pread(fd, 1 << 20, offset):
        chunks.append(chunk)
        offset += len(chunk)
    return b"".join(chunks)
