"""A device killed at each step of a renewal always comes back with a pair that connects
(issue 14, "must hold"), and finishes the renewal when it had got far enough.

The device is a real process (tests/sdk/renewal_device.py: the SDK's DeviceClient + Renewal);
the platform is the real reference server with the customer's real signer
(tests/sdk/renewal_platform.py). The process pauses dead right after the step under test and
says so on its stdout; only then does the test SIGKILL it (an event of the code, not a timer),
restarts it, and checks that it connects, with which pair, and what the platform holds.
"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from device_sdk.certs import certificate_sn, read_certificates
from device_sdk.credentials import Credentials
from device_sdk.store_layout import CERTIFICATE_FILE, PRIVATE_KEY_FILE, SERVER_CA_FILE
from tests.sdk.renewal_platform import RenewalPlatform, renewal_platform

ROOT = Path(__file__).resolve().parents[2]
LINE_TIMEOUT = 120.0  # a safety net against a hung process; the test waits for lines


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RenewalPlatform]:
    with renewal_platform(tmp_path_factory.mktemp("sdk-renewal-kill")) as p:
        yield p


class DeviceProcess:
    """The device process and the lines it prints, read by a thread into a queue."""

    def __init__(self, args: list[str]) -> None:
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.sdk.renewal_device", *args],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._queue.put(line.strip())
        self._queue.put(None)

    def wait_for(self, prefix: str) -> str:
        while True:
            line = self._queue.get(timeout=LINE_TIMEOUT)
            if line is None:
                raise AssertionError(
                    f"device exited ({self.proc.wait()}) before {prefix!r}; lines {self.lines}; "
                    f"stderr {self.proc.stderr.read() if self.proc.stderr else ''}"
                )
            self.lines.append(line)
            if line.startswith(prefix):
                return line

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(LINE_TIMEOUT)
        if self.proc.stderr is not None:
            self.proc.stderr.close()

    def finish(self) -> int:
        self.wait_for("DONE")
        return self.proc.wait(LINE_TIMEOUT)


def _device_args(platform: RenewalPlatform, source: list[str]) -> list[str]:
    server = platform.server
    return [
        *source,
        "--host", server.mqtt_host,
        "--port", str(server.mqtt_port),
        "--server-ca", str(server.server_ca),
    ]  # fmt: skip


#: step -> whether the restarted device ends with the new pair (else: the old one)
STEPS = {
    "key-generated": False,  # the key existed only in memory: nothing to resume
    "key-stored": True,  # after key generation (key and state on disk)
    "request-sent": True,  # after the request
    "certificate-stored": True,  # after the certificate was stored
    "online-new": True,  # after the reconnect with the new pair, before promotion
    "promote-key-written": True,  # in the promotion: new key in place, certificate not yet
}


def _kill_and_restart(
    platform: RenewalPlatform, name: str, cert: Path, source: list[str], step: str
) -> tuple[str, str, list[str]]:
    """Run the renewal, kill at ``step``, restart; returns (old SN, final SN, lines)."""
    old_sn = certificate_sn(read_certificates(cert)[0])
    first = DeviceProcess([*_device_args(platform, source), "--renew", "--pause-at", step])
    first.wait_for(f"PAUSED {step}")
    first.kill()
    second = DeviceProcess(_device_args(platform, source))
    online = second.wait_for("ONLINE")  # a pair that connects, first thing after the restart
    assert second.finish() == 0, second.lines
    final_sn = second.lines[-1].split()[1]
    assert online.split()[1] in (old_sn, final_sn)
    return old_sn, final_sn, first.lines + second.lines


@pytest.mark.parametrize("step", list(STEPS))
def test_files_pair_survives_a_kill_at_each_step(
    platform: RenewalPlatform, step: str, tmp_path: Path
) -> None:
    name, cert, key, _pair = platform.device("kill", left=0.9, directory=tmp_path)
    old_sn, final_sn, lines = _kill_and_restart(
        platform, name, cert, ["--cert", str(cert), "--key", str(key)], step
    )
    renewed = STEPS[step]
    assert (final_sn != old_sn) is renewed, lines
    # what is on disk is a matching pair, the one the device ended with, and nothing else
    creds = Credentials.from_files(cert, key)
    assert creds.sn == final_sn
    assert not cert.with_name(cert.name + ".renewal").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([cert.name, key.name])
    # the platform holds exactly that SN for the device (the old one retired when renewed)
    assert platform.settled_sns(name, {final_sn}) == {final_sn}


@pytest.mark.parametrize("step", ["request-sent", "online-new", "promote-key-written"])
def test_credential_store_survives_a_kill_at_each_step(
    platform: RenewalPlatform, step: str, tmp_path: Path
) -> None:
    name, cert, key, _pair = platform.device("skill", left=0.9, directory=tmp_path / "issued")
    store = tmp_path / "store"
    store.mkdir(mode=0o700)
    (store / CERTIFICATE_FILE).write_bytes(cert.read_bytes())
    (store / PRIVATE_KEY_FILE).write_bytes(key.read_bytes())
    (store / PRIVATE_KEY_FILE).chmod(0o600)
    (store / SERVER_CA_FILE).write_bytes(platform.server.server_ca.read_bytes())
    old_sn, final_sn, lines = _kill_and_restart(platform, name, cert, ["--store", str(store)], step)
    assert final_sn != old_sn, lines
    assert Credentials.from_store(store).sn == final_sn
    assert not (store / "renewal").exists()
    assert platform.settled_sns(name, {final_sn}) == {final_sn}
