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


def _provision_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """``iotx509 provision ARGS`` in a child process, as a factory operator runs it."""
    return subprocess.run(
        [sys.executable, "-m", "iotx509", "provision", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _rows(report: Path) -> list[dict[str, str]]:
    with report.open(newline="") as fh:
        return list(csv.DictReader(fh))


def test_find_pairs_reads_names_and_serials(batch_dir: Path) -> None:
    pairs = find_pairs(batch_dir)
    assert [p.name.device_name for p in pairs] == [f"line1-dev{i:03d}" for i in range(4)]
    assert len({p.cert_sn for p in pairs}) == 4


def test_cli_batch_wait_mode_three_boards_then_resume(tmp_path: Path, batch_dir: Path) -> None:
    report = tmp_path / "report.csv"
    # The run stops because three boards are done (an event), not because a timeout expired:
    # --board-timeout is only a safety net, long enough for any machine load.
    with SimBoard(tmp_path / "boards", boards=3, swap_delay=0.2) as sim:
        proc = _provision_cli(
            "--batch",
            str(batch_dir),
            "--port",
            sim.port,
            "--report",
            str(report),
            "--wait",
            "--max-boards",
            "3",
            "--board-timeout",
            "60",
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
        assert (
            tmp_path / "boards" / row["BoardId"] / "device.cer"
        ).read_bytes() == cert.read_bytes()

    # A second run on new boards skips the three used pairs and uses the last one.
    with SimBoard(tmp_path / "more", boards=2) as sim:
        link = SerialLink.open(sim.port)
        summary = Batch(
            Host(link),
            batch_dir,
            Report.open(report),
            mode="wait",
            board_timeout=60,
            say=lambda _: None,
        ).run()
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
        summary = Batch(
            Host(link),
            batch_dir,
            report,
            mode="prompt",
            ask=lambda _: next(answers),
            say=said.append,
        ).run()
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
    proc = _provision_cli(
        "--batch", str(batch_dir), "--port", "loop://", "--cert", "x.cer", timeout=60
    )
    assert proc.returncode == 2 and "either --batch DIR or --cert" in proc.stderr


def test_not_a_directory(tmp_path: Path) -> None:
    with pytest.raises(BatchError, match="not a directory"):
        find_pairs(tmp_path / "missing")


# --- one record for every mode -----------------------------------------------------------------


@pytest.fixture
def line_dir(pki: PKI, tmp_path: Path) -> Path:
    directory = tmp_path / "pairs"
    for i in range(3):
        pki.write_device("PKline02", f"line2-dev{i:03d}", directory=directory)
    return directory


def _single(sim: SimBoard, cert: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    """``iotx509 provision --cert --key`` (by default the report goes beside the pairs)."""
    return _provision_cli(
        "--port", sim.port, "--cert", str(cert), "--key", str(cert.with_suffix(".key")), *extra
    )


def test_a_pair_provisioned_in_single_mode_is_never_given_to_another_board(
    tmp_path: Path, line_dir: Path
) -> None:
    first = sorted(line_dir.glob("*.cer"))[0]
    report = line_dir / "provisioning-report.csv"
    with SimBoard(tmp_path / "single", board_id="BENCH-7") as sim:
        proc = _single(sim, first)
    assert proc.returncode == 0, proc.stderr
    assert f"recorded in {report}" in proc.stdout
    (row,) = _rows(report)
    assert (row["BoardId"], row["Status"]) == ("BENCH-7", "ok")
    assert f"{row['ProductKey']}_{row['DeviceName']}_" in first.name

    # A batch over the same directory (default report: the same file) skips that pair and
    # that board, and gives the two other pairs to two new boards.
    with SimBoard(tmp_path / "boards", boards=3, swap_delay=0.2) as sim:
        proc = _provision_cli(
            "--batch", str(line_dir), "--port", sim.port, "--wait", "--board-timeout", "60"
        )
    assert proc.returncode == 0, proc.stderr + proc.stdout
    assert "2 unused pair(s) of 3" in proc.stdout
    assert "2 board(s) provisioned, 0 failed, 0 unused pair(s) left" in proc.stdout
    rows = _rows(report)
    assert len(rows) == 3 and len({r["CertSN"] for r in rows}) == 3
    holders = {r["CertSN"]: r["BoardId"] for r in rows}
    assert holders[row["CertSN"]] == "BENCH-7"
    for board in sim.stats.boards_served[:2]:
        assert (tmp_path / "boards" / board / "device.cer").read_bytes() != first.read_bytes()

    # Single mode honours the record too: the pair goes to no other board, the line untouched
    # beyond HELLO, and the message says where the pair is.
    with SimBoard(tmp_path / "other", board_id="BENCH-8") as sim:
        proc = _single(sim, first)
        assert sim.stats.frames_in == 2  # HELLO, then ABORT: nothing of the pair was sent
    assert proc.returncode == 2
    assert "is already on board BENCH-7" in proc.stderr and str(report) in proc.stderr
    assert not (tmp_path / "other" / "device.cer").exists()
    assert len(_rows(report)) == 3

    # The same board may get its own pair again (a re-run after a doubtful line).
    with SimBoard(tmp_path / "single", board_id="BENCH-7") as sim:
        proc = _single(sim, first)
    assert proc.returncode == 0, proc.stderr
    assert [r["BoardId"] for r in _rows(report) if r["CertSN"] == row["CertSN"]] == [
        "BENCH-7",
        "BENCH-7",
    ]


def test_single_mode_refuses_when_the_report_cannot_be_written(
    tmp_path: Path, line_dir: Path
) -> None:
    first = sorted(line_dir.glob("*.cer"))[0]
    with SimBoard(tmp_path / "store") as sim:
        proc = _single(sim, first, "--report", str(tmp_path / "missing-dir" / "report.csv"))
        assert sim.stats.frames_in == 0
    assert proc.returncode == 2 and "cannot write the provisioning report" in proc.stderr


def test_single_mode_names_a_pair_by_its_subject_when_the_file_name_does_not(
    tmp_path: Path, line_dir: Path
) -> None:
    import shutil

    from firmware_helpers.serial.batch import pair_of

    first = sorted(line_dir.glob("*.cer"))[0]
    cert, key = tmp_path / "device.cer", tmp_path / "device.key"
    shutil.copy(first, cert)
    shutil.copy(first.with_suffix(".key"), key)
    by_subject, by_name = pair_of(cert, key), pair_of(first, first.with_suffix(".key"))
    assert by_subject.ident == by_name.ident
