"""The issuing engine's Python API: progress, resume after a crash, SN draws, directory rules."""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import psutil
import pytest

from device_sdk.certs import (
    certificate_sn,
    issued_by,
    key_matches_certificate,
    read_certificates,
    read_private_key,
)
from device_sdk.naming import DeviceFileName
from firmware_helpers.association_csv import read_associations
from firmware_helpers.errors import (
    DuplicateSerialError,
    InvalidCAError,
    InvalidInputError,
    IssuanceError,
)
from firmware_helpers.issuing import (
    generate_key_material,
    issue_devices,
    load_issuing_ca,
    names_from_count,
)
from firmware_helpers.ledger import SerialLedger
from firmware_helpers.pki import CertifiedKey, create_ca
from testkit.cli_args import certs_issue_args
from tests.firmware.cert_helpers import write_ca

if TYPE_CHECKING:
    from tests.common import PkiFactory

PK = "a1B2c3D4e5F"


@pytest.fixture(scope="module")
def one_key() -> Callable[[], tuple[bytes, bytes]]:
    """Test hook: one pre-made key reused for many certificates, to keep tests fast."""
    material = generate_key_material()
    return lambda: material


def _check_directory(out: Path, ca_cert: Path, expected: list[str]) -> None:
    """Every expected device has a complete, matching pair; SNs unique, in CSV and ledger."""
    ca = read_certificates(ca_cert)[0]
    ca_sn = certificate_sn(ca)
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
    certs = sorted(out.glob("*.cer"))
    keys = sorted(out.glob("*.key"))
    assert [p.stem for p in certs] == [p.stem for p in keys]
    assert sorted(DeviceFileName.parse(p).device_name for p in certs) == sorted(expected)
    sns = {}
    for cert_path in certs:
        cert = read_certificates(cert_path)[0]
        assert issued_by(cert, ca)
        assert key_matches_certificate(read_private_key(cert_path.with_suffix(".key")), cert)
        sns[DeviceFileName.parse(cert_path).device_name] = certificate_sn(cert)
    assert len(set(sns.values())) == len(sns)
    rows = read_associations(out / "associations.csv")
    assert {r.device_name: r.cert_sn for r in rows} == sns
    with SerialLedger(out / "sn-ledger.jsonl") as ledger:
        entries = ledger.entries_for(ca_sn)
    assert set(sns.values()) <= {e.sn for e in entries}
    assert len({e.sn for e in entries}) == len(entries)


def test_python_api_reports_progress_and_devices(pki: PkiFactory, tmp_path: Path) -> None:
    calls: list[tuple[int, int]] = []
    names = names_from_count("api-", 4)
    report = issue_devices(
        pki.ca,
        PK,
        names,
        tmp_path / "out",
        jobs=2,
        progress=lambda done, total: calls.append((done, total)),
    )
    assert calls[0] == (0, 4) and calls[-1] == (4, 4)
    assert [c[0] for c in calls] == [0, 1, 2, 3, 4]
    assert [d.device_name for d in report.devices] == names
    assert len(report.issued) == 4 and report.skipped == []
    assert report.csv_files == [tmp_path / "out" / "associations.csv"]
    assert report.rate > 0
    ca_cert, _ = write_ca(pki.ca, tmp_path / "ca")
    _check_directory(tmp_path / "out", ca_cert, names)
    # every device got its own key
    moduli = {
        read_private_key(d.key_path).public_key().public_numbers().n  # type: ignore[union-attr]
        for d in report.devices
    }
    assert len(moduli) == 4


def test_resume_removes_leftovers_and_csv_covers_the_whole_directory(
    pki: PkiFactory, tmp_path: Path, one_key: Callable[[], tuple[bytes, bytes]]
) -> None:
    out = tmp_path / "out"
    issue_devices(pki.ca, PK, ["old-0001", "old-0002"], out, _key_source=one_key)
    # leftovers of an interrupted run: a key without its certificate, a certificate without its
    # key, and temporary files of atomic writes
    orphan_key = out / DeviceFileName(PK, "new-0001", pki.ca.sn).key_name
    orphan_key.write_bytes(b"half")
    lone_cert = out / DeviceFileName(PK, "new-0002", pki.ca.sn).cert_name
    lone_cert.write_bytes(b"half")
    temp = out / f".{DeviceFileName(PK, 'new-0003', pki.ca.sn).key_name}.abc123_x.tmp"
    temp.write_bytes(b"half")
    unrelated = out / "notes.txt"
    unrelated.write_text("keep me")

    report = issue_devices(
        pki.ca, PK, ["new-0001", "new-0002", "new-0003", "old-0001"], out, _key_source=one_key
    )
    assert sorted(p.name for p in report.removed) == sorted(
        [orphan_key.name, lone_cert.name, temp.name]
    )
    assert report.skipped == ["old-0001"]
    assert sorted(d.device_name for d in report.issued) == ["new-0001", "new-0002", "new-0003"]
    assert unrelated.read_text() == "keep me"
    ca_cert, _ = write_ca(pki.ca, tmp_path / "ca")
    _check_directory(out, ca_cert, ["new-0001", "new-0002", "new-0003", "old-0001", "old-0002"])


def test_colliding_sn_is_redrawn_and_never_reused(
    pki: PkiFactory, tmp_path: Path, one_key: Callable[[], tuple[bytes, bytes]]
) -> None:
    out = tmp_path / "out"
    first = issue_devices(pki.ca, PK, ["dev-0001"], out, _key_source=one_key)
    taken = int(first.issued[0].sn, 16)
    draws = iter([taken, taken, taken + 1])
    second = issue_devices(
        pki.ca, PK, ["dev-0002"], out, _key_source=one_key, _serial_source=lambda: next(draws)
    )
    assert second.issued[0].sn == format(taken + 1, "x")

    with pytest.raises(DuplicateSerialError, match="not random"):
        issue_devices(
            pki.ca, PK, ["dev-0003"], out, _key_source=one_key, _serial_source=lambda: taken
        )
    # the SN is reserved before anything is written: no file for dev-0003
    assert not list(out.glob("*dev-0003*"))


def test_ledger_shared_across_directories_keeps_sns_unique(
    pki: PkiFactory, tmp_path: Path, one_key: Callable[[], tuple[bytes, bytes]]
) -> None:
    ledger = tmp_path / "ledger.jsonl"
    counter = itertools.count(0x8000000000000000)
    fixed = [next(counter) for _ in range(3)]
    # both batches draw from the same short sequence: the second must skip what the first used
    issue_devices(
        pki.ca,
        PK,
        ["a-0001", "a-0002"],
        tmp_path / "a",
        ledger_path=ledger,
        _key_source=one_key,
        _serial_source=iter(fixed).__next__,
    )
    report = issue_devices(
        pki.ca,
        PK,
        ["b-0001"],
        tmp_path / "b",
        ledger_path=ledger,
        _key_source=one_key,
        _serial_source=iter(fixed).__next__,
    )
    assert report.issued[0].sn == format(fixed[2], "x")


def test_certificate_named_for_this_ca_but_signed_by_another_is_refused(
    pki: PkiFactory, tmp_path: Path, one_key: Callable[[], tuple[bytes, bytes]]
) -> None:
    out = tmp_path / "out"
    impostor = create_ca("Test Private CA", key=pki._key_pool[1])
    pair = pki.device(PK, "dev-0001", ca=impostor)
    names = DeviceFileName(PK, "dev-0001", pki.ca.sn)  # claims our CA's SN in its name
    out.mkdir()
    pair.write(out / names.cert_name, out / names.key_name)
    with pytest.raises(InvalidCAError, match="not signed by this CA's key"):
        issue_devices(pki.ca, PK, ["dev-0002"], out, _key_source=one_key)


def test_api_validates_options(pki: PkiFactory, tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="key size 1024"):
        issue_devices(pki.ca, PK, ["dev-0001"], tmp_path, key_size=1024)
    with pytest.raises(InvalidInputError, match="--jobs"):
        issue_devices(pki.ca, PK, ["dev-0001"], tmp_path, jobs=0)
    with pytest.raises(InvalidInputError, match="--days"):
        issue_devices(pki.ca, PK, ["dev-0001"], tmp_path, days=0)
    with pytest.raises(InvalidInputError, match="no device names"):
        issue_devices(pki.ca, PK, [], tmp_path)
    assert not list(tmp_path.iterdir())


def test_api_refuses_a_ca_that_cannot_issue(pki: PkiFactory, tmp_path: Path) -> None:
    """issue_devices calls the one issuing-CA check (check_issuing_ca), as the loaders do."""
    wrong_key = CertifiedKey(pki.ca.certificate, pki._key_pool[1])
    with pytest.raises(InvalidCAError, match="is not the private key of the CA certificate"):
        issue_devices(wrong_key, PK, ["dev-0001"], tmp_path)
    not_a_ca = pki.device(PK, "dev-0001")  # a device certificate and its own key
    with pytest.raises(InvalidCAError, match="is not a CA certificate"):
        issue_devices(not_a_ca, PK, ["dev-0001"], tmp_path)
    assert not list(tmp_path.iterdir())


def test_load_issuing_ca_maps_unreadable_files(tmp_path: Path) -> None:
    bad = tmp_path / "ca.cer"
    bad.write_text("-----BEGIN RSA PRIVATE KEY-----\nxx\n-----END RSA PRIVATE KEY-----\n")
    with pytest.raises(InvalidCAError, match="no CERTIFICATE block"):
        load_issuing_ca(bad, bad)


def test_a_certificate_whose_key_lives_on_its_board_is_kept_and_associated(
    pki: PkiFactory, tmp_path: Path, one_key: Callable[[], tuple[bytes, bytes]]
) -> None:
    """``provision --generate-on-board`` leaves a .cer without .key: not a leftover."""
    out = tmp_path / "out"
    cert, key, _ = pki.write_device(PK, "onboard-0001", directory=out)
    key.unlink()
    report = issue_devices(pki.ca, PK, ["dev-0001"], out, _key_source=one_key)
    assert cert.exists() and report.removed == []
    sns = {r.device_name: r.cert_sn for r in read_associations(out / "associations.csv")}
    assert sns == {
        "onboard-0001": certificate_sn(read_certificates(cert)[0]),
        "dev-0001": report.issued[0].sn,
    }


# --- interrupted runs (real subprocesses) ------------------------------------------------------
#
# The moment a run is interrupted is an event of the run itself, never a sleep: the command runs
# with a hook that, after the Nth pair is written, says so on a pipe and waits (blocked on its
# stdin). The test signals it only then, so however loaded the machine, the run is mid-way.

_PAUSING_RUN = """
import os, sys
from firmware_helpers import issuing

pause_after, ready_fd = int(sys.argv[1]), int(sys.argv[2])
real_write_pair = issuing._write_pair
written = 0

def write_pair(*args, **kwargs):
    global written
    device = real_write_pair(*args, **kwargs)
    written += 1
    if written == pause_after:
        os.write(ready_fd, b"paused\\n")
        sys.stdin.readline()  # held here until the test acts (or closes stdin)
    return device

issuing._write_pair = write_pair
from iotx509.cli import main
sys.argv = ["iotx509", *sys.argv[3:]]
sys.exit(main())
"""


class _PausedRun:
    """``iotx509 certs issue ...`` paused after ``pause_after`` pairs are written."""

    def __init__(
        self, ca_cert: Path, ca_key: Path, out: Path, count: int, pause_after: int
    ) -> None:
        ready_r, ready_w = os.pipe()
        self.ready = os.fdopen(ready_r, "rb")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-c",
                _PAUSING_RUN,
                str(pause_after),
                str(ready_w),
                *_issue_args(ca_cert, ca_key, out, count),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
            pass_fds=(ready_w,),
        )
        os.close(ready_w)

    def wait_paused(self) -> None:
        line = self.ready.readline()  # EOF if the run ended without pausing
        assert line == b"paused\n", self.proc.communicate()

    def close(self) -> None:
        self.ready.close()
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.communicate()


def _issue_args(ca_cert: Path, ca_key: Path, out: Path, count: int) -> list[str]:
    return certs_issue_args(
        ca_cert, ca_key, PK, out, "--count", str(count), "--prefix", "kill-", "--jobs", "2"
    )


def _start_issue(ca_cert: Path, ca_key: Path, out: Path, count: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "iotx509", *_issue_args(ca_cert, ca_key, out, count)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )


def test_sigkill_mid_run_then_rerun_completes_every_pair(pki: PkiFactory, tmp_path: Path) -> None:
    ca_cert, ca_key = write_ca(pki.ca, tmp_path / "ca")
    out = tmp_path / "out"
    count = 48
    run = _PausedRun(ca_cert, ca_key, out, count, pause_after=3)
    try:
        run.wait_paused()
        workers = psutil.Process(run.proc.pid).children(recursive=True)
        assert workers, "the run should generate keys in worker processes"
        os.kill(run.proc.pid, signal.SIGKILL)  # the run only, not its workers
        run.proc.wait(timeout=30)
        # the key-generation workers notice their parent is gone and exit by themselves
        _gone, alive = psutil.wait_procs(workers, timeout=15)
        assert not alive
    finally:
        run.close()
    assert len(list(out.glob("*.cer"))) == 3
    for cert in out.glob("*.cer"):  # key first, certificate last: no certificate without key
        assert cert.with_suffix(".key").exists()

    rerun = _start_issue(ca_cert, ca_key, out, count)
    stdout, stderr = rerun.communicate(timeout=240)
    assert rerun.returncode == 0, stderr.decode()
    assert "3 already present" in stdout.decode()
    _check_directory(out, ca_cert, names_from_count("kill-", count))


def test_ctrl_c_stops_cleanly_and_says_how_to_resume(pki: PkiFactory, tmp_path: Path) -> None:
    ca_cert, ca_key = write_ca(pki.ca, tmp_path / "ca")
    out = tmp_path / "out"
    run = _PausedRun(ca_cert, ca_key, out, 40, pause_after=2)
    try:
        run.wait_paused()
        os.killpg(run.proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does: the whole group
        _stdout, stderr = run.proc.communicate(timeout=60)
    finally:
        run.close()
    assert run.proc.returncode == 130
    text = stderr.decode()
    assert "run the same command again to resume" in text
    assert "Traceback" not in text
    assert len(list(out.glob("*.cer"))) == 2  # nothing after the interrupt
    for cert in out.glob("*.cer"):
        assert cert.with_suffix(".key").exists()
    for key in out.glob("*.key"):  # Ctrl-C finishes the pair in hand: no orphan key either
        assert key.with_suffix(".cer").exists()


# --- a worker killed mid-run -------------------------------------------------------------------
#
# The pool reports a dead worker from ``result()`` of a job that was running, or from
# ``submit()`` once it has marked itself broken. Each path is made certain by an event, not a
# sleep: for ``result()`` every job is in flight and all but the first are held in the workers
# until the pool is torn down; for ``submit()`` the test waits until the pool is marked broken.

_GATE: Path | None = None


def _gated_key(key_size: int) -> tuple[bytes, bytes]:
    """Runs in a worker: the first job makes a key, every other one waits for ever."""
    assert _GATE is not None
    try:
        os.close(os.open(_GATE / "first", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        while True:  # ended by the pool, which terminates its workers once broken
            time.sleep(0.05)
    return _real_generate_key_material(key_size)


_real_generate_key_material = generate_key_material


@pytest.mark.parametrize("path", ["noticed-by-result", "noticed-by-submit"])
def test_a_worker_killed_mid_run_is_a_clear_error_and_loses_nothing(
    pki: PkiFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, path: str
) -> None:
    import multiprocessing

    from firmware_helpers import keypool

    pools: list[object] = []
    real_make_pool = keypool.make_pool

    def recording_pool(jobs: int) -> object:
        pools.append(real_make_pool(jobs))
        return pools[-1]

    # fork, so that the workers inherit the gate below whatever threads the test runner has
    monkeypatch.setattr(keypool, "_pool_context", lambda: multiprocessing.get_context("fork"))
    monkeypatch.setattr(keypool, "make_pool", recording_pool)
    if path == "noticed-by-result":
        count = 2 * keypool.IN_FLIGHT_PER_JOB  # every job submitted before the first finishes
        monkeypatch.setattr(sys.modules[__name__], "_GATE", tmp_path)
        monkeypatch.setattr(keypool, "generate_key_material", _gated_key)
    else:
        count = 30
    before = {p.pid for p in psutil.Process().children()}
    killed: list[int] = []

    def kill_a_worker(done: int, _total: int) -> None:
        if done == 1 and not killed:
            for child in psutil.Process().children():
                if child.pid not in before:
                    child.kill()
                    killed.append(child.pid)
                    break
            if path == "noticed-by-submit":
                deadline = time.monotonic() + 60
                while not getattr(pools[0], "_broken", False):
                    assert time.monotonic() < deadline, "the pool never noticed the dead worker"
                    time.sleep(0.01)

    out = tmp_path / "out"
    with pytest.raises(IssuanceError, match="worker process died") as caught:
        issue_devices(
            pki.ca, PK, names_from_count("w-", count), out, jobs=2, progress=kill_a_worker
        )
    assert killed
    # the cause shows which path reported it: result() of a running job, or submit()
    cause = str(caught.value.__cause__)
    assert (
        "while the future was running or pending"
        if path == "noticed-by-result"
        else "not usable anymore"
    ) in cause, cause
    assert len(list(out.glob("*.cer"))) >= 1
    for key in out.glob("*.key"):
        assert key.with_suffix(".cer").exists()
    monkeypatch.undo()
    report = issue_devices(pki.ca, PK, names_from_count("w-", count), out, jobs=2)
    assert len(report.skipped) >= 1
    ca_cert, _ = write_ca(pki.ca, tmp_path / "ca")
    _check_directory(out, ca_cert, names_from_count("w-", count))


def test_unreadable_existing_certificate_is_reported_not_overwritten(
    pki: PkiFactory, tmp_path: Path, one_key: Callable[[], tuple[bytes, bytes]]
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    names = DeviceFileName(PK, "dev-0001", pki.ca.sn)
    (out / names.cert_name).write_bytes(b"garbage")
    (out / names.key_name).write_bytes(b"key")
    with pytest.raises(IssuanceError, match="cannot be read"):
        issue_devices(pki.ca, PK, ["dev-0002"], out, _key_source=one_key)
    assert (out / names.cert_name).read_bytes() == b"garbage"
