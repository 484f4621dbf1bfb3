"""Factory batch over a real pty: boards one after another, each pair used once, ever."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest

from firmware_helpers.errors import BatchError
from firmware_helpers.serial.batch import REPORT_FIELDS, Batch, Report, find_pairs
from firmware_helpers.serial.host import Host
from firmware_helpers.serial.link import SerialLink
from firmware_helpers.serial.simboard import SimBoard
from tests.conftest import TestPKI as PKI


@pytest.fixture(scope="module")
def batch_dir(pki: PKI, tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("batch")
    for i in range(4):
        pki.write_device("PKbatch01", f"line1-dev{i:03d}", directory=directory)
    (directory / "README.txt").write_text("not a pair")
    (directory / "ca.cer").write_bytes(pki.ca.cert_pem())  # does not match the naming: skipped
    return directory


def _rows(report: Path) -> list[dict[str, str]]:
    with report.open(newline="") as fh:
        return list(csv.DictReader(fh))


def test_find_pairs_reads_names_and_serials(batch_dir: Path) -> None:
    pairs = find_pairs(batch_dir)
    assert [p.name.device_name for p in pairs] == [f"line1-dev{i:03d}" for i in range(4)]
    assert len({p.cert_sn for p in pairs}) == 4


def test_cli_batch_wait_mode_three_boards_then_resume(tmp_path: Path, batch_dir: Path) -> None:
    report = tmp_path / "report.csv"
    with SimBoard(tmp_path / "boards", boards=3, swap_delay=0.2) as sim:
        proc = subprocess.run(
            [sys.executable, "-m", "iotx509", "provision", "--batch", str(batch_dir),
             "--port", sim.port, "--report", str(report), "--wait", "--board-timeout", "3"],
            capture_output=True, text=True, timeout=120,
        )
    assert proc.returncode == 0, proc.stderr + proc.stdout
    assert "3 board(s) provisioned, 0 failed, 1 unused pair(s) left" in proc.stdout
    rows = _rows(report)
    assert list(rows[0]) == list(REPORT_FIELDS)
    assert [r["BoardId"] for r in rows] == sim.stats.boards_served
    assert len({r["CertSN"] for r in rows}) == 3 and all(r["Status"] == "ok" for r in rows)
    for row in rows:  # each board holds exactly the pair the report says
        name = f"{row['ProductKey']}_{row['DeviceName']}_"
        cert = next(batch_dir.glob(name + "*.cer"))
        assert (tmp_path / "boards" / row["BoardId"] / "device.cer").read_bytes() == cert.read_bytes()

    # A second run on new boards skips the three used pairs and uses the last one.
    with SimBoard(tmp_path / "more", boards=2) as sim:
        link = SerialLink.open(sim.port)
        summary = Batch(Host(link), batch_dir, Report.open(report), mode="wait",
                        board_timeout=3, say=lambda _: None).run()
        link.close()
    assert [p.name.device_name for _, p in summary.provisioned] == ["line1-dev003"]
    assert len({r["CertSN"] for r in _rows(report)}) == 4

    # Nothing left: a third run refuses to start.
    with pytest.raises(BatchError, match=r"no unused pairs .* all recorded"):
        Batch(Host(link), batch_dir, Report.open(report)).run()


def test_prompt_mode_and_an_already_done_board(tmp_path: Path, batch_dir: Path) -> None:
    report = Report.open(tmp_path / "report.csv")
    said: list[str] = []
    answers = iter(["", "", "q"])
    with SimBoard(tmp_path / "board", board_id="BENCH-1") as sim:
        link = SerialLink.open(sim.port)
        summary = Batch(Host(link), batch_dir, report, mode="prompt",
                        ask=lambda _: next(answers), say=said.append).run()
        link.close()
    assert [b for b, _ in summary.provisioned] == ["BENCH-1"]
    assert any("BENCH-1 is already done" in line for line in said)
    assert summary.remaining == 3


def test_report_with_another_header_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "other.csv"
    bad.write_text("ProductKey,DeviceName,CertSN\nPK,dev1,ab\n")
    with pytest.raises(BatchError, match="not a provisioning report"):
        Report.open(bad)


def test_batch_and_cert_options_are_exclusive(tmp_path: Path, batch_dir: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "iotx509", "provision", "--batch", str(batch_dir), "--port",
         "loop://", "--cert", "x.cer"],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 2 and "either --batch DIR or --cert" in proc.stderr


def test_not_a_directory(tmp_path: Path) -> None:
    with pytest.raises(BatchError, match="not a directory"):
        find_pairs(tmp_path / "missing")
