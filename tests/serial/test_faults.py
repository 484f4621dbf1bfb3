"""Injected faults over real pseudo-terminals: recover by retrying, or fail with the right error
and leave the board's previous credentials exactly as they were."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from device_sdk import fileio
from firmware_helpers.errors import (
    BoardDisconnectedError,
    BoardError,
    BoardRebootedError,
    LinkTimeoutError,
    ProtocolVersionError,
    RetriesExhaustedError,
    SerialProvisioningError,
)
from firmware_helpers.serial.framing import Frame
from firmware_helpers.serial.host import Host, ProvisionResult
from firmware_helpers.serial.link import SerialLink
from firmware_helpers.serial.protocol import ErrorCode, MessageType, ObjectType
from firmware_helpers.serial.simboard import FaultPlan, SimBoard
from tests.serial.conftest import PairFiles, snapshot


@pytest.fixture
def store_with_a(tmp_path: Path, pairs: tuple[PairFiles, PairFiles]) -> tuple[Path, dict[str, str]]:
    """A board that was provisioned once with pair A; the snapshot of its store."""
    store = tmp_path / "store"
    with SimBoard(store) as sim:
        link = SerialLink.open(sim.port)
        Host(link).provision(pairs[0].objects())
        link.close()
    return store, snapshot(store)


def _provision(sim: SimBoard, objects: dict[ObjectType, bytes], **host: float) -> ProvisionResult:
    link = SerialLink.open(sim.port)
    try:
        return Host(link, **host).provision(objects)  # type: ignore[arg-type]
    finally:
        link.close()


@pytest.mark.parametrize(
    "plan",
    [
        FaultPlan(flip_rate=0.2, seed=3),
        FaultPlan(drop_rate=0.2, seed=5),
        FaultPlan(flip_rate=0.1, drop_rate=0.1, seed=11),
        # the board holds frame 3 until the host has sent it again: a retry, on any machine load
        FaultPlan(pause_after=3, resume_after_resends=1),
        FaultPlan(reboot_after=4),
    ],
    ids=["flipped-bits", "dropped-bytes", "both", "stalled-line", "reboot-mid-transfer"],
)
def test_recoverable_faults_end_with_the_new_set(
    store_with_a: tuple[Path, dict[str, str]], pairs: tuple[PairFiles, PairFiles], plan: FaultPlan
) -> None:
    store, _ = store_with_a
    b = pairs[1]
    with SimBoard(store, faults=plan, max_chunk=512) as sim:
        result = _provision(sim, b.objects(), max_chunk=512)
    assert (store / "device.cer").read_bytes() == b.cert.read_bytes()
    assert (store / "device.key").read_bytes() == b.key.read_bytes()
    injected = sim.stats.flipped + sim.stats.dropped + sim.stats.stalls + sim.stats.reboots
    assert injected > 0, "the fault must actually have happened"
    assert result.retransmissions + result.restarts > 0
    if plan.reboot_after:
        assert result.restarts == 1


@pytest.mark.parametrize(
    ("plan", "host", "error", "message"),
    [
        (FaultPlan(flip_rate=1.0), {"max_retries": 3}, RetriesExhaustedError, "gave up after 4"),
        (
            FaultPlan(pause_after=3),
            {"max_retries": 2, "base_timeout": 0.3},
            LinkTimeoutError,
            "did not answer",
        ),
        (FaultPlan(reboot_after=3, reboot_times=100), {}, BoardRebootedError, "lost the session"),
        (FaultPlan(unplug_after=4), {}, BoardDisconnectedError, "went away"),
        (
            FaultPlan(protocol_version=3),
            {},
            ProtocolVersionError,
            "board speaks serial protocol version 3; this host speaks version 2",
        ),
    ],
    ids=["always-corrupt", "stalled-for-good", "reboot-loop", "usb-unplugged", "other-version"],
)
def test_fatal_faults_keep_the_previous_credentials(
    store_with_a: tuple[Path, dict[str, str]],
    pairs: tuple[PairFiles, PairFiles],
    plan: FaultPlan,
    host: dict[str, float],
    error: type[SerialProvisioningError],
    message: str,
) -> None:
    store, before = store_with_a
    with SimBoard(store, faults=plan, max_chunk=512) as sim, pytest.raises(error, match=message):
        _provision(sim, pairs[1].objects(), max_chunk=512, **host)
    assert snapshot(store) == before


def test_board_refuses_a_mismatched_pair_and_keeps_the_old_one(
    store_with_a: tuple[Path, dict[str, str]], pairs: tuple[PairFiles, PairFiles]
) -> None:
    store, before = store_with_a
    a, b = pairs
    objects = {
        ObjectType.CERTIFICATE: b.cert.read_bytes(),
        ObjectType.PRIVATE_KEY: a.key.read_bytes(),
    }
    with SimBoard(store) as sim, pytest.raises(BoardError) as caught:
        _provision(sim, objects)  # skipping the host's own check, as a buggy tool would
    assert caught.value.code == ErrorCode.INVALID_CREDENTIALS
    assert ErrorCode.INVALID_CREDENTIALS.value == 13
    assert "error 13 INVALID_CREDENTIALS" in str(caught.value)
    assert "does not belong to the certificate" in caught.value.board_message
    assert snapshot(store) == before


def test_cli_other_version_exits_with_a_clear_message(
    store_with_a: tuple[Path, dict[str, str]], pairs: tuple[PairFiles, PairFiles]
) -> None:
    store, before = store_with_a
    b = pairs[1]
    with SimBoard(store, faults=FaultPlan(protocol_version=7)) as sim:
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "iotx509",
                "provision",
                "--port",
                sim.port,
                "--cert",
                str(b.cert),
                "--key",
                str(b.key),
                "--report",
                str(store.parent / "r.csv"),
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert proc.returncode == 5
    assert "version 7; this host speaks version 2 (it knows versions 1, 2)" in proc.stderr
    assert snapshot(store) == before


def test_ctrl_c_on_the_host_keeps_the_previous_credentials(
    store_with_a: tuple[Path, dict[str, str]], pairs: tuple[PairFiles, PairFiles], tmp_path: Path
) -> None:
    store, before = store_with_a
    b = pairs[1]

    # The board pauses when BEGIN of the key arrives (the certificate is staged) and answers
    # nothing until resumed, so the Ctrl-C lands mid-transfer whatever the machine's load: the
    # moment is an event of the board, not a sleep. The host's timeout is long enough that it
    # is still waiting for that ACK, not giving up, when the signal comes.
    def begin_key(frame: Frame) -> bool:
        return frame.type == MessageType.BEGIN and frame.payload[0] == ObjectType.PRIVATE_KEY

    with SimBoard(store, faults=FaultPlan(pause_when=begin_key)) as sim:
        host = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "iotx509",
                "provision",
                "--port",
                sim.port,
                "--timeout",
                "600",
                "--report",
                str(tmp_path / "report.csv"),
                "--cert",
                str(b.cert),
                "--key",
                str(b.key),
                "--server-ca",
                str(b.server_ca),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert sim.wait(lambda s: s.paused, timeout=60)
            assert sim.agent.machine.staged_types == (ObjectType.CERTIFICATE,)
            os.kill(host.pid, signal.SIGINT)
            _, err = host.communicate(timeout=60)
        finally:
            if host.poll() is None:
                host.kill()
                host.communicate()
        sim.resume()  # the board now reads BEGIN key, then the host's ABORT
        assert sim.wait(lambda s: not sim.agent.machine.staged_types, timeout=60)
        assert sim.agent.commits == 0
    assert host.returncode == 130 and "interrupted" in err
    assert snapshot(store) == before
    assert not (tmp_path / "report.csv").exists()  # nothing was committed: nothing recorded


class _PowerCut(Exception):
    pass


def test_power_cut_after_the_commit_point_rolls_forward(
    store_with_a: tuple[Path, dict[str, str]],
    pairs: tuple[PairFiles, PairFiles],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from firmware_helpers.serial.board import CredentialStore

    store, _ = store_with_a
    b = pairs[1]
    renames = 0
    real_replace = os.replace

    def replace_then_die(src: str, dst: str) -> None:
        """The power goes after the first live file was replaced."""
        nonlocal renames
        if str(src).endswith(".commit.tmp"):
            renames += 1
            if renames > 1:
                raise _PowerCut
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace_then_die)
    with pytest.raises(_PowerCut):
        CredentialStore(store).commit(b.objects())
    monkeypatch.setattr(os, "replace", real_replace)
    assert (store / ".commit.json").exists()
    assert ((store / ".commit.json").stat().st_mode & 0o777) == 0o600
    # the certificate is new, the key still old: exactly the state the journal exists for
    assert (store / "device.cer").read_bytes() == b.cert.read_bytes()
    assert (store / "device.key").read_bytes() != b.key.read_bytes()
    outcome = CredentialStore(store).recover()
    assert outcome.startswith("finished an interrupted commit")
    assert (store / "device.cer").read_bytes() == b.cert.read_bytes()
    assert (store / "device.key").read_bytes() == b.key.read_bytes()
    assert ((store / "device.key").stat().st_mode & 0o777) == 0o600
    assert set(snapshot(store)) == {"device.cer", "device.key", "server-ca.pem", "manifest.json"}


def test_unsynced_live_file_lost_in_a_crash_is_rewritten_from_the_journal(
    store_with_a: tuple[Path, dict[str, str]], pairs: tuple[PairFiles, PairFiles]
) -> None:
    from firmware_helpers.serial.board import CredentialStore

    store, _ = store_with_a
    b = pairs[1]
    CredentialStore(store).commit(b.objects())  # committed, not settled
    (store / "device.key").write_bytes(b"")  # what a crash may leave of an unsynced file
    assert "1 file(s) rewritten" in CredentialStore(store).recover()
    assert (store / "device.key").read_bytes() == b.key.read_bytes()
    assert not (store / ".commit.json").exists()


def test_power_cut_before_the_commit_point_keeps_the_old_set(
    store_with_a: tuple[Path, dict[str, str]],
    pairs: tuple[PairFiles, PairFiles],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from firmware_helpers.serial import board as board_module
    from firmware_helpers.serial.board import CredentialStore

    store, before = store_with_a
    real_write = fileio.atomic_write  # board.py imports it from here; its name is patched below

    def die_writing_the_journal(path: Path, data: bytes, *, mode: int = 0o644) -> None:
        if Path(path).name == ".commit.json":
            raise _PowerCut
        real_write(path, data, mode=mode)

    monkeypatch.setattr(board_module, "atomic_write", die_writing_the_journal)
    with pytest.raises(_PowerCut):
        CredentialStore(store).commit(pairs[1].objects())
    monkeypatch.setattr(board_module, "atomic_write", real_write)
    assert CredentialStore(store).recover() == "clean"
    assert snapshot(store) == before
