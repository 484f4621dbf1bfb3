"""State files the kit changes in place are never opened through a symbolic link.

A link planted at ``sn-ledger.jsonl`` (or at the serial report, the board's commit temporary,
the simulator's lease log, the server's data-directory lock) must not make the kit append to or
truncate the file it points at: the run is refused with a message naming the path and the
reason, and the target keeps its bytes. The rule lives once, in
``device_sdk.fileio.open_no_follow``; these tests go through the real entry points.
"""

from __future__ import annotations

import os
import types
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from device_sdk.fileio import open_no_follow
from firmware_helpers.errors import LedgerError
from firmware_helpers.ledger import SerialLedger
from firmware_helpers.serial.board import CredentialStore
from firmware_helpers.serial.protocol import ObjectType
from iotx509.cli import main
from testkit.cli_args import certs_issue_args
from tests.firmware.cert_helpers import needs_openssl, write_ca
from tests.hardening.reliability import record

if TYPE_CHECKING:
    from tests.common import PkiFactory

PK = "a1B2c3D4e5F"
PRECIOUS = b"precious data of another file\nwithout a final newline"


def _precious(tmp_path: Path) -> tuple[Path, os.stat_result]:
    target = tmp_path / "elsewhere" / "precious.txt"
    target.parent.mkdir()
    target.write_bytes(PRECIOUS)
    return target, target.stat()


def _untouched(target: Path, before: os.stat_result) -> bool:
    after = target.stat()
    return target.read_bytes() == PRECIOUS and (after.st_size, after.st_mtime_ns) == (
        before.st_size,
        before.st_mtime_ns,
    )


@needs_openssl
def test_certs_issue_refuses_a_symlinked_ledger(
    pki: PkiFactory, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ca_cert, ca_key = write_ca(pki.ca, tmp_path / "ca")
    target, before = _precious(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    (out / "sn-ledger.jsonl").symlink_to(target)

    status = main(certs_issue_args(ca_cert, ca_key, PK, out, "--device-name", "dev-0001"))

    err = capsys.readouterr().err
    assert status != 0
    assert "sn-ledger.jsonl" in err and "symbolic link" in err
    assert _untouched(target, before)
    assert not list(out.glob("*.cer")), "nothing may be issued without a usable ledger"
    record(
        "escape-ledger-symlink",
        threat="symbolic link planted at sn-ledger.jsonl "
        "(certs issue would append to or truncate its target)",
        tried="`iotx509 certs issue` with the ledger path a link to another file whose "
        "last line has no newline",
        count=1,
        result="refused before issuing, message names the ledger and 'symbolic link'; "
        "target byte-for-byte and mtime unchanged",
    )


def test_ledger_that_is_not_a_ledger_is_never_truncated(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_bytes(PRECIOUS)  # complete lines are checked first: not JSON
    with pytest.raises(LedgerError, match="is not valid JSON"):
        SerialLedger(path)
    assert path.read_bytes() == PRECIOUS
    one_line = b"a single line of notes, no newline"
    path.write_bytes(one_line)  # only a last line without newline, and no ledger record
    with pytest.raises(LedgerError, match=r"line 1 is not a ledger record .* left untouched"):
        SerialLedger(path)
    assert path.read_bytes() == one_line
    path.write_bytes(b"")
    with SerialLedger(path) as ledger:  # an empty file is an empty ledger
        ledger.reserve("ca", 0x10, PK, "dev-0001")
    record(
        "escape-ledger-validate",
        threat="--ledger pointed at a file that is not an SN ledger (last line without newline)",
        tried="open it as the SN ledger: a text file; one line with no newline",
        count=2,
        result="refused with 'not a ledger record ... left untouched'; no byte cut",
    )


def test_open_no_follow_refuses_links_and_fifos(tmp_path: Path) -> None:
    target, before = _precious(tmp_path)
    link = tmp_path / "state"
    link.symlink_to(target)
    for flags in (os.O_RDWR | os.O_APPEND, os.O_WRONLY | os.O_TRUNC, os.O_RDWR | os.O_CREAT):
        with pytest.raises(OSError, match="symbolic link") as info:
            open_no_follow(link, flags)
        assert info.value.filename == str(link)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(OSError, match="not a regular file"):  # would block without O_NONBLOCK
        open_no_follow(fifo, os.O_WRONLY | os.O_APPEND)
    assert _untouched(target, before)
    fd = open_no_follow(tmp_path / "fresh", os.O_RDWR | os.O_CREAT | os.O_APPEND)
    try:
        os.write(fd, b"ok\n")
    finally:
        os.close(fd)
    assert (tmp_path / "fresh").read_bytes() == b"ok\n"


def test_board_commit_never_truncates_through_a_planted_temporary(
    pki: PkiFactory, tmp_path: Path
) -> None:
    target, before = _precious(tmp_path)
    store = CredentialStore(tmp_path / "board")
    pair = pki.device(PK, "dev-0001")
    # the store's predictable temporary name for the certificate
    (store.root / ".device.cer.commit.tmp").symlink_to(target)
    store.commit({ObjectType.CERTIFICATE: pair.cert_pem(), ObjectType.PRIVATE_KEY: pair.key_pem()})
    store.settle()
    assert store.path_of(ObjectType.CERTIFICATE).read_bytes() == pair.cert_pem()
    assert not store.path_of(ObjectType.CERTIFICATE).is_symlink()
    assert _untouched(target, before)
    record(
        "escape-board-journal-symlink",
        threat="symbolic link planted at the board "
        "store's commit temporary (.device.cer.commit.tmp)",
        tried="commit a credential set over it",
        count=1,
        result="link refused, the commit finishes through its journal; target unchanged",
    )


def test_lease_log_symlink_is_refused(tmp_path: Path) -> None:
    from simulator.config import SimulationConfig
    from simulator.errors import SimulatorError

    target, before = _precious(tmp_path)
    log = tmp_path / "leases.log"
    log.symlink_to(target)
    config = types.SimpleNamespace(lease_log=log)
    with pytest.raises(SimulatorError, match=r"leases\.log: it is a symbolic link"):
        SimulationConfig.record_lease(config, 1, "dev-0001")  # type: ignore[arg-type]
    assert _untouched(target, before)
    log.unlink()
    SimulationConfig.record_lease(config, 1, "dev-0001")  # type: ignore[arg-type]
    assert log.read_text() == f"{os.getpid()} 1 dev-0001\n"
    record(
        "escape-lease-log-symlink",
        threat="symbolic link at the simulator's lease log",
        tried="record a lease through it",
        count=1,
        result="SimulatorError naming the log and 'symbolic link'; target unchanged",
    )


def test_server_data_dir_lock_symlink_is_refused(tmp_path: Path) -> None:
    pytest.importorskip("fastapi")
    from server_stub.app import ServerProcess
    from server_stub.config import ServerConfig
    from server_stub.errors import ServerStartupError

    target, before = _precious(tmp_path)
    server = ServerProcess(ServerConfig(data_dir=tmp_path / "data"))
    server.data.create()
    server.data.lock.symlink_to(target)
    with pytest.raises(ServerStartupError, match="symbolic link"):
        server._lock_data_dir()
    assert _untouched(target, before)


def test_provisioning_report_symlink_is_refused_before_any_board(tmp_path: Path) -> None:
    from firmware_helpers.errors import BatchError
    from firmware_helpers.serial.batch import Report

    target, before = _precious(tmp_path)
    path = tmp_path / "provisioning-report.csv"
    path.symlink_to(target)
    with pytest.raises(BatchError, match=r"provisioning-report\.csv .*symbolic link"):
        Report.open(path)
    assert _untouched(target, before)
    record(
        "escape-report-symlink",
        threat="symbolic link at the serial provisioning report",
        tried="open the report for a batch",
        count=1,
        result="BatchError naming the report and 'symbolic link' before any board is "
        "touched; target unchanged",
    )
