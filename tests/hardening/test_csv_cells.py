"""No CSV the kit writes carries a live spreadsheet formula.

A board reports its own id over the serial line, so a hostile (or badly flashed) board can call
itself ``=HYPERLINK(...)``; the provisioning report must show that as text. DeviceNames that
begin with a formula character are refused where the kit issues, writes or registers them (the
rule lives in ``device_sdk.naming.validate_new_device_name``; the characters in
``device_sdk.csvsafe``), with a message giving the reason.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from device_sdk.csvsafe import FORMULA_LEADING, csv_text, neutralise_cell, restore_cell
from device_sdk.errors import InvalidNameError
from device_sdk.identity import Identity
from device_sdk.naming import validate_device_name, validate_new_device_name
from firmware_helpers.association_csv import Association, render, write_associations
from firmware_helpers.serial.batch import Batch, Report
from firmware_helpers.serial.host import Host
from firmware_helpers.serial.link import SerialLink
from firmware_helpers.serial.simboard import SimBoard
from iotx509.cli import main
from testkit.cli_args import certs_issue_args
from tests.firmware.cert_helpers import needs_openssl, write_ca
from tests.hardening.reliability import record

if TYPE_CHECKING:
    from tests.common import PkiFactory

PK = "PKcsv0001"
HOSTILE_BOARD_IDS = [
    '=HYPERLINK("http://evil.example/x","click")',
    "@SUM(1+1)*cmd|' /C calc'!A0",
    "+1+1",
    "-2+3",
    "\t=1+1",
    "'already quoted",
]
#: '=' and '+' are not in the platform's DeviceName alphabet at all; '@' and '-' are.
HOSTILE_NAMES = ["@dev-0001", "-dev-0001", "@A1:B2", "-A1.5"]


def _answering(*answers: str) -> Callable[[str], str]:
    """An ``ask`` giving these answers in turn, whatever the prompt."""
    remaining = iter(answers)
    return lambda _prompt: next(remaining)


def _cells(text: str) -> list[list[str]]:
    return list(csv.reader(io.StringIO(text, newline="")))


def test_every_formula_lead_is_neutralised_and_restored() -> None:
    values = [*HOSTILE_BOARD_IDS, "\rx", "plain", "", "a=b", "dev-1"]
    text = csv_text([values])
    (row,) = _cells(text)
    assert not any(cell.startswith(FORMULA_LEADING) for cell in row)
    assert [restore_cell(cell) for cell in row] == values
    assert row[values.index("plain")] == "plain" and row[values.index("a=b")] == "a=b"
    assert neutralise_cell("=1+1") == "'=1+1" and neutralise_cell("'x") == "''x"


def test_hostile_board_ids_are_text_in_the_provisioning_report(
    pki: PkiFactory, tmp_path: Path
) -> None:
    pairs = tmp_path / "pairs"
    for i in range(len(HOSTILE_BOARD_IDS)):
        pki.write_device(PK, f"csv-dev{i:03d}", directory=pairs)
    report_path = tmp_path / "provisioning-report.csv"
    for i, board_id in enumerate(HOSTILE_BOARD_IDS):
        with SimBoard(tmp_path / f"board{i}", board_id=board_id) as sim:
            link = SerialLink.open(sim.port)
            try:
                summary = Batch(
                    Host(link),
                    pairs,
                    Report.open(report_path),
                    mode="prompt",
                    ask=_answering("", "q"),
                    say=lambda _: None,
                ).run()
            finally:
                link.close()
        assert [b for b, _ in summary.provisioned] == [board_id]

    text = report_path.read_text(encoding="utf-8")
    rows = _cells(text)
    assert len(rows) == 1 + len(HOSTILE_BOARD_IDS)
    offending = [cell for row in rows for cell in row if cell.startswith(FORMULA_LEADING)]
    assert offending == [], f"live formula cells in the report: {offending}"
    assert [row[0] for row in rows[1:]] == [f"'{b}" for b in HOSTILE_BOARD_IDS]
    # Read back as written: every board is known as done, every pair as used.
    again = Report.open(report_path)
    assert again.boards == set(HOSTILE_BOARD_IDS)
    assert len(again.used_pairs) == len(HOSTILE_BOARD_IDS)
    record(
        "escape-csv-board-id",
        threat="board reporting a spreadsheet formula as its id (provisioning report CSV)",
        tried="batch provisioning over a real pty with board ids beginning with = @ + - tab and '",
        count=len(HOSTILE_BOARD_IDS),
        result="every id written as text ('-prefixed), no cell of the report begins with a "
        "formula character; read back unchanged, so resume still knows the boards",
    )


def test_device_names_with_a_formula_lead_are_refused_everywhere(
    pki: PkiFactory, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from server_stub.errors import AssociationRejectedError
    from server_stub.registry.associations import parse_associations

    refused = 0
    for name in ("=dev0001", "+dev0001"):
        with pytest.raises(InvalidNameError, match="4-32 characters of letters, digits"):
            validate_new_device_name(name)
    for name in HOSTILE_NAMES:
        with pytest.raises(InvalidNameError, match=r"spreadsheet programs run a cell"):
            validate_new_device_name(name)
        # kit's association CSV writer
        with pytest.raises(InvalidNameError, match=f"must not begin with '{name[0]}'"):
            write_associations(tmp_path / "csv", [Association(PK, name, "1f")])
        # the server's association upload: the same rule, with the row number
        body = f"ProductKey,DeviceName,CertSN\n{PK},dev-0001,1e\n{PK},{name},1f\n"
        with pytest.raises(AssociationRejectedError) as info:
            parse_associations(body.encode())
        assert [(e.row, e.message) for e in info.value.rows] == [
            (
                2,
                f"DeviceName {name!r} must not begin with {name[0]!r}: DeviceNames go into CSV "
                "files, and spreadsheet programs run a cell beginning with = + - @ as a formula "
                "(the kit is stricter than the platform here); start it with a letter, a digit "
                "or one of _.:",
            )
        ]
        refused += 3
    assert not (tmp_path / "csv").exists() or not list((tmp_path / "csv").iterdir())
    # The platform allows '@' and '-' first: a device is still told such an identity.
    for name in ("@dev-0001", "-dev-0001"):
        assert validate_device_name(name) == name
        assert Identity(PK, name).device_name == name
    assert render([Association(PK, "dev@0001", "1f")]) == (
        b"ProductKey,DeviceName,CertSN\n" + PK.encode() + b",dev@0001,1f\n"
    )
    record(
        "escape-csv-device-name",
        threat="DeviceName beginning with a formula character "
        "in association CSVs (- and @ are allowed first by the platform's rule)",
        tried=f"{len(HOSTILE_NAMES)} names through the "
        "naming rule, the kit's CSV writer and the server's CSV upload parser",
        count=refused,
        result="refused each time with the spreadsheet-formula reason (and the row number "
        "on upload); nothing written",
    )


@needs_openssl
def test_certs_issue_refuses_a_formula_device_name(
    pki: PkiFactory, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ca_cert, ca_key = write_ca(pki.ca, tmp_path / "ca")
    out = tmp_path / "out"
    status = main(certs_issue_args(ca_cert, ca_key, PK, out, "--device-name", "@evil-01"))
    err = capsys.readouterr().err
    assert status != 0
    assert "DeviceName '@evil-01' must not begin with '@'" in err
    assert "spreadsheet programs run a cell" in err
    assert not out.exists() or not list(out.glob("*.cer"))
