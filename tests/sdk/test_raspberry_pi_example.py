"""examples/raspberry-pi: the device program against the real reference server, and the systemd
unit checked by systemd's own verifier."""

from __future__ import annotations

import configparser
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.sdk.platform_setup import Platform, platform_server

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "raspberry-pi"


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    with platform_server(tmp_path_factory.mktemp("pi")) as p:
        yield p


def test_device_program_publishes_readings(platform: Platform, tmp_path: Path) -> None:
    dev = platform.issue("pi-sensor01")
    identity_file = tmp_path / "identity.json"
    result = subprocess.run(
        [sys.executable, str(EXAMPLE / "device.py"), "--cert", str(dev.cert), "--key",
         str(dev.key), "--server-ca", str(platform.server.server_ca), "--host", "127.0.0.1",
         "--port", str(platform.server.mqtt_port), "--identity-store", str(identity_file),
         "--interval", "0.1", "--count", "3"],
        capture_output=True, text=True, timeout=60, cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(identity_file.read_text())["deviceName"] == "pi-sensor01"
    deadline = time.monotonic() + 10
    while True:
        seqs = [json.loads(m["payload"])["seq"] for m in
                platform.api.device_messages(platform.product_key, "pi-sensor01")
                if m["topic"].endswith("/user/update")]
        if seqs == [0, 1, 2] or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert seqs == [0, 1, 2]


def test_device_program_exits_non_zero_with_the_reason(platform: Platform) -> None:
    dev = platform.issue("pi-sensor02", associate=False)
    result = subprocess.run(
        [sys.executable, str(EXAMPLE / "device.py"), "--cert", str(dev.cert), "--key",
         str(dev.key), "--server-ca", str(platform.server.server_ca), "--host", "127.0.0.1",
         "--port", str(platform.server.mqtt_port), "--identity-store", "/dev/null/x"],
        capture_output=True, text=True, timeout=60, cwd=ROOT,
    )
    assert result.returncode == 1 and "associated with a device" in result.stderr


def test_systemd_unit_restarts_on_failure_and_waits_for_time_sync(tmp_path: Path) -> None:
    unit_text = (EXAMPLE / "iotx509-device.service").read_text()
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read_string(unit_text)
    assert unit["Service"]["Restart"] == "on-failure"
    for key in ("After", "Wants"):
        assert {"time-sync.target", "network-online.target"} <= set(unit["Unit"][key].split())
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed")
    # systemd's verifier, with the paths of this checkout instead of /opt/iotx509
    local = tmp_path / "iotx509-device.service"
    local.write_text(unit_text.replace("/opt/iotx509/venv/bin/python", sys.executable)
                     .replace("/opt/iotx509/device.py", str(EXAMPLE / "device.py")))
    result = subprocess.run(["systemd-analyze", "verify", str(local)], capture_output=True,
                            text=True, timeout=60)
    problems = [line for line in (result.stdout + result.stderr).splitlines()
                if "iotx509-device.service" in line]
    assert result.returncode == 0 and not problems, result.stdout + result.stderr
