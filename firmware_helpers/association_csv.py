"""The association CSV the platform imports: ``ProductKey,DeviceName,CertSN``.

The platform takes at most 10,000 records per file, all of one product, and parses and checks the
whole file. Up to 10,000 rows go to ``associations.csv``; more are split into
``associations-0001.csv``, ``associations-0002.csv``, ... of at most 10,000 rows each. Files are
written atomically and files of an earlier, differently split run are removed, so the directory
always holds exactly one consistent set.
"""

from __future__ import annotations

import contextlib
import csv
import io
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from device_sdk.csvsafe import csv_text
from device_sdk.fileio import atomic_write
from device_sdk.naming import validate_new_device_name, validate_product_key
from device_sdk.serials import normalize_sn
from firmware_helpers.errors import InvalidInputError

MAX_ROWS_PER_FILE = 10_000
HEADER = ("ProductKey", "DeviceName", "CertSN")
SINGLE_NAME = "associations.csv"
_PART_RE = re.compile(r"associations-\d{4,}\.csv")


@dataclass(frozen=True, slots=True, order=True)
class Association:
    product_key: str
    device_name: str
    cert_sn: str


def part_names(row_count: int, max_rows: int = MAX_ROWS_PER_FILE) -> list[str]:
    """The file names a set of ``row_count`` rows is written to."""
    if row_count <= max_rows:
        return [SINGLE_NAME]
    parts = -(-row_count // max_rows)
    return [f"associations-{index:04d}.csv" for index in range(1, parts + 1)]


def split_rows(
    rows: Sequence[Association], max_rows: int = MAX_ROWS_PER_FILE
) -> list[tuple[str, Sequence[Association]]]:
    """Pair each file name with its rows (in the given order)."""
    names = part_names(len(rows), max_rows)
    return [(name, rows[i * max_rows : (i + 1) * max_rows]) for i, name in enumerate(names)]


def render(rows: Sequence[Association]) -> bytes:
    """The file's bytes; cells are neutralised like every CSV the kit writes (a no-op for rows
    that passed :func:`_check`: no valid cell begins with a formula character)."""
    table = [HEADER, *((row.product_key, row.device_name, row.cert_sn) for row in rows)]
    return csv_text(table, lineterminator="\n").encode()


def _check(rows: Sequence[Association]) -> None:
    products = {row.product_key for row in rows}
    if len(products) > 1:
        raise InvalidInputError(
            f"an association file belongs to one product, got {len(products)}: "
            f"{', '.join(sorted(products))}"
        )
    seen: set[str] = set()
    for row in rows:
        validate_product_key(row.product_key)
        validate_new_device_name(row.device_name)
        if row.device_name in seen:
            raise InvalidInputError(f"DeviceName {row.device_name!r} appears twice")
        seen.add(row.device_name)
        if normalize_sn(row.cert_sn) != row.cert_sn:
            raise InvalidInputError(f"CertSN {row.cert_sn!r} is not in canonical form")


def write_associations(
    directory: str | Path, rows: Sequence[Association], *, max_rows: int = MAX_ROWS_PER_FILE
) -> list[Path]:
    """Write ``rows`` (one product) as one or more CSVs in ``directory``; return their paths.

    Association files from an earlier run that are not part of the new set are removed after the
    new files are in place.
    """
    if max_rows < 1:
        raise InvalidInputError("max_rows must be at least 1")
    _check(rows)
    directory = Path(directory)
    written: list[Path] = []
    for name, part in split_rows(rows, max_rows):
        path = directory / name
        atomic_write(path, render(part))
        written.append(path)
    keep = {path.name for path in written}
    for stale in existing_association_files(directory):
        if stale.name not in keep:
            with contextlib.suppress(FileNotFoundError):
                stale.unlink()
    return written


def existing_association_files(directory: str | Path) -> list[Path]:
    directory = Path(directory)
    found = [
        p
        for p in directory.glob("associations*.csv")
        if p.name == SINGLE_NAME or _PART_RE.fullmatch(p.name)
    ]
    return sorted(found)


def read_associations(path: str | Path) -> list[Association]:
    """Read one association CSV back (for checks and tests); the header must be exact."""
    text = Path(path).read_text(encoding="utf-8")
    reader = csv.reader(io.StringIO(text))
    header = next(reader, None)
    if header is None or tuple(header) != HEADER:
        raise InvalidInputError(f"{path}: the header must be {','.join(HEADER)}")
    rows = []
    for number, record in enumerate(reader, start=2):
        if len(record) != 3:
            raise InvalidInputError(f"{path}, line {number}: expected 3 columns")
        rows.append(Association(record[0], record[1], record[2]))
    return rows
