"""Association CSV files: parsing and every rule that does not need the store.

The whole file is read and checked before anything is saved: one bad row rejects the file, and
the rejection lists every bad row. Data rows are numbered from 1 (the header is row 0); blank
lines are ignored but keep their number, so a row number points at the same line in an editor
(line = row + 1).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping
from dataclasses import dataclass

from device_sdk.csvsafe import csv_text
from device_sdk.errors import InvalidNameError, InvalidSerialNumberError
from device_sdk.naming import validate_new_device_name, validate_product_key
from device_sdk.serials import normalize_sn
from server_stub.errors import AssociationRejectedError, CsvRejectedError, RowError
from server_stub.store.base import DeviceBinding, SnBinding

HEADER = ("ProductKey", "DeviceName", "CertSN")
HEADER_LINE = ",".join(HEADER)
MAX_ROWS = 10_000


def template() -> str:
    """The association template: the header row, nothing else (written like every kit CSV)."""
    return csv_text([HEADER])


@dataclass(frozen=True, slots=True)
class AssociationRow:
    row: int
    device_name: str
    cert_sn: str


@dataclass(frozen=True, slots=True)
class ParsedAssociations:
    """The file's product (from its first good row), its good rows and its bad ones."""

    product_key: str | None
    rows: list[AssociationRow]
    errors: list[RowError]
    total: int

    def raise_if_errors(self, more: list[RowError] | None = None) -> None:
        errors = [*self.errors, *(more or [])]
        if errors:
            raise _reject(errors, self.total)


def _decode(data: bytes) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise CsvRejectedError(
            f"the file is not UTF-8 text (invalid byte at offset {exc.start}); save it as CSV UTF-8"
        ) from exc


def _reject(errors: list[RowError], total: int) -> AssociationRejectedError:
    errors.sort(key=lambda e: e.row)
    verb = "is" if len(errors) == 1 else "are"
    return AssociationRejectedError(
        f"{len(errors)} of {total} rows {verb} invalid; nothing was saved", errors
    )


def parse_associations(data: bytes) -> ParsedAssociations:
    """Parse and check a whole file; raise with every bad row, or return the clean rows."""
    parsed = read_associations(data)
    parsed.raise_if_errors()
    return parsed


def read_associations(data: bytes) -> ParsedAssociations:
    """Parse a whole file: file-level problems raise; row problems are collected."""
    text = _decode(data)
    if "\x00" in text:
        raise CsvRejectedError("the file contains NUL characters; it is not a CSV text file")
    records = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        header = next(records, None)
        if header is None:
            raise CsvRejectedError(
                f"the file is empty; it needs the header {HEADER_LINE} and 1 to {MAX_ROWS:,} rows"
            )
        if tuple(field.strip() for field in header) != HEADER:
            raise CsvRejectedError(
                f"the header must be exactly {HEADER_LINE} (found {','.join(header)!r}); "
                "download the association template"
            )
        raw: list[tuple[int, list[str]]] = []
        for number, record in enumerate(records, start=1):
            if not record or (len(record) == 1 and not record[0].strip()):
                continue
            raw.append((number, record))
            if len(raw) > MAX_ROWS:
                raise CsvRejectedError(
                    f"the file has more than {MAX_ROWS:,} data rows; split it into files of at "
                    f"most {MAX_ROWS:,}"
                )
    except csv.Error as exc:
        raise CsvRejectedError(f"the file is not valid CSV: {exc}") from exc
    if not raw:
        raise CsvRejectedError(f"the file has no data rows (1 to {MAX_ROWS:,} are needed)")
    return _check_rows(raw)


def _check_rows(raw: list[tuple[int, list[str]]]) -> ParsedAssociations:
    errors: list[RowError] = []
    product_key: str | None = None
    product_row = 0
    seen_devices: dict[str, int] = {}
    seen_sns: dict[str, int] = {}
    rows: list[AssociationRow] = []
    for number, record in raw:
        if len(record) != len(HEADER):
            errors.append(
                RowError(number, f"expected 3 fields ({HEADER_LINE}), found {len(record)}")
            )
            continue
        pk, dn, sn_text = (field.strip() for field in record)
        problems: list[str] = []
        if product_key is None:
            try:
                product_key = validate_product_key(pk)
                product_row = number
            except InvalidNameError as exc:
                problems.append(str(exc))
        elif pk != product_key:
            problems.append(
                f"ProductKey {pk!r} differs from {product_key!r} (row {product_row}); all "
                "devices in one file must belong to one product"
            )
        try:
            validate_new_device_name(dn)
        except InvalidNameError as exc:
            problems.append(str(exc))
        else:
            first = seen_devices.setdefault(dn, number)
            if first != number:
                problems.append(f"DeviceName {dn!r} already appears in row {first}")
        sn = ""
        try:
            sn = normalize_sn(sn_text) if sn_text else ""
            if not sn:
                problems.append("CertSN is empty")
        except InvalidSerialNumberError as exc:
            problems.append(f"CertSN: {exc}")
        if sn:
            first = seen_sns.setdefault(sn, number)
            if first != number:
                problems.append(f"CertSN {sn} already appears in row {first}")
        if problems:
            errors.append(RowError(number, "; ".join(problems)))
        else:
            rows.append(AssociationRow(number, dn, sn))
    return ParsedAssociations(product_key, rows, errors, len(raw))


def check_bindings(
    parsed: ParsedAssociations,
    ca_id: int,
    sn_bindings: Mapping[str, SnBinding],
    device_bindings: Mapping[str, DeviceBinding],
) -> tuple[list[AssociationRow], list[RowError]]:
    """Check rows against what the account already holds: (rows still to insert, row errors).

    A row that repeats an existing association exactly (same device, SN and CA) is accepted and
    not inserted again, so uploading the same file twice is harmless.
    """
    pk = parsed.product_key
    errors: list[RowError] = []
    new_rows: list[AssociationRow] = []
    for row in parsed.rows:
        sn_bound = sn_bindings.get(row.cert_sn)
        device = device_bindings.get(row.device_name)
        same = (
            sn_bound is not None
            and sn_bound.ca_id == ca_id
            and sn_bound.product_key == pk
            and sn_bound.device_name == row.device_name
        )
        if same:
            continue
        problems = []
        if sn_bound is not None:
            problems.append(
                f"CertSN {row.cert_sn} is already bound to device "
                f"{sn_bound.product_key}/{sn_bound.device_name} (CA {sn_bound.ca_sn}); an SN is "
                "unique among all device certificates of the account"
            )
        if device is not None and device.cert_sn is not None:
            problems.append(
                f"device {pk}/{row.device_name} is already bound to CertSN {device.cert_sn}; "
                "remove that association first"
            )
        if problems:
            errors.append(RowError(row.row, "; ".join(problems)))
        else:
            new_rows.append(row)
    return new_rows, errors
