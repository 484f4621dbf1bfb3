"""Spreadsheet-safe CSV cells: the kit's one rule against formula injection.

Spreadsheet programs run a cell that begins with ``=``, ``+``, ``-`` or ``@`` as a formula (and
some also after a leading tab or carriage return), so a CSV the kit writes must never carry such
a cell from a source it does not control: a board's self-reported id in the provisioning report
could otherwise become ``=HYPERLINK(...)`` on the operator's screen. Every CSV the kit writes goes
through :func:`safe_cells` (or :func:`csv_text`): such a cell gets a leading apostrophe, which
spreadsheets show as text and hide. A cell that already begins with an apostrophe gets one too,
so that :func:`restore_cell` gives back exactly what was written (the kit reads its own
provisioning report back).

It lives in the SDK, the base every part builds on, because two parts need the same characters:
the firmware helpers and the server write CSV files, and :mod:`device_sdk.naming` refuses a
DeviceName that begins with one of them, so that no name can need escaping in an association
CSV (which the platform reads as data, escapes included).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable

#: A cell beginning with one of these is a formula (or may become one) in spreadsheet programs.
FORMULA_LEADING = ("=", "+", "-", "@", "\t", "\r")
#: What a neutralised cell begins with.
ESCAPE = "'"


def neutralise_cell(value: object) -> str:
    """``value`` as a cell no spreadsheet runs as a formula (reversible: :func:`restore_cell`)."""
    text = "" if value is None else str(value)
    if text.startswith((*FORMULA_LEADING, ESCAPE)):
        return ESCAPE + text
    return text


def restore_cell(text: str) -> str:
    """The value a cell written with :func:`neutralise_cell` had."""
    return text[1:] if text.startswith(ESCAPE) else text


def safe_cells(row: Iterable[object]) -> list[str]:
    """One CSV row with every cell neutralised."""
    return [neutralise_cell(value) for value in row]


def csv_text(rows: Iterable[Iterable[object]], *, lineterminator: str = "\r\n") -> str:
    """Whole CSV text (RFC 4180 quoting) with every cell neutralised."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator=lineterminator)
    writer.writerows(safe_cells(row) for row in rows)
    return buffer.getvalue()
