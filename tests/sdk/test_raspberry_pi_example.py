"""examples/raspberry-pi: the device program against the real reference server, and the systemd
unit checked by systemd's own verifier."""

from __future__ import annotations

import configparser
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from device_sdk.exit_codes import PERMANENT_EXIT_CODES, ExitCode
from server_stub.launcher import running_server
from tests.common import Device, Platform, same_ports, wait_for
from tests.sdk.platform_setup import platform_server

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "raspberry-pi"

# ``platform``: an account of the test's own on the session's server (tests/conftest.py).


def device_program(platform: Platform, dev: Device, identity_store: Path, *args: str) -> list[str]:
    """The example program's command line for ``dev`` on ``platform``'s server."""
    return [
        sys.executable,
        str(EXAMPLE / "device.py"),
        *platform.device_args(dev.cert, dev.key),
        *("--identity-store", str(identity_store)),
        *args,
    ]


def test_device_program_publishes_readings(platform: Platform, tmp_path: Path) -> None:
    dev = platform.issue("pi-sensor01")
    identity_file = tmp_path / "identity.json"
    result = subprocess.run(
        device_program(platform, dev, identity_file, "--interval", "0.1", "--count", "3"),
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(identity_file.read_text())["deviceName"] == "pi-sensor01"
    assert wait_for(lambda: _readings(platform, "pi-sensor01") == [0, 1, 2]), _readings(
        platform, "pi-sensor01"
    )


def _readings(platform: Platform, device_name: str) -> list[int]:
    """The ``seq`` of each reading the server recorded from the device, oldest first."""
    return [
        json.loads(m["payload"])["seq"]
        for m in platform.api.device_messages(platform.product_key, device_name)
        if m["topic"].endswith("/user/update")
    ]


def test_device_program_stops_with_the_refusals_status(platform: Platform) -> None:
    dev = platform.issue("pi-sensor02", associate=False)
    result = subprocess.run(
        device_program(platform, dev, Path("/dev/null/x")),
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    # not authorised needs a person: a status the systemd unit does not restart on
    assert result.returncode == ExitCode.NOT_AUTHORISED, result.stderr
    assert "associated with a device" in result.stderr
    assert str(int(ExitCode.NOT_AUTHORISED)) in _unit()["Service"]["RestartPreventExitStatus"]


def test_device_program_boots_offline_and_delivers_once_the_server_is_up(tmp_path: Path) -> None:
    """The server is down when the board boots: the program keeps measuring, queues the
    readings, and delivers them in order once the server is back. A server of its own: it is
    stopped and started again on its data directory and ports."""
    with platform_server(tmp_path / "first") as platform:
        dev = platform.issue("pi-offline01")
        data_dir = platform.server.data_dir
        ports = same_ports(platform.server)
        options = [
            "--interval",
            "0.05",
            "--count",
            "3",
            "--reconnect-cap",
            "1",
            "--flush-timeout",
            "60",
        ]
        command = device_program(platform, dev, tmp_path / "identity.json", *options)
    # the server is stopped: boot the device now
    proc = subprocess.Popen(
        command, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, cwd=ROOT
    )
    try:
        assert proc.stderr is not None
        queued = []
        for line in proc.stderr:  # the device's own report is the moment to go on
            if "queued until the device is online" in line:
                queued.append(line)
            if len(queued) == 3:
                break
        assert len(queued) == 3 and proc.poll() is None
        with running_server(data_dir, extra_args=ports):
            assert proc.wait(timeout=90) == 0, proc.stderr.read()
            assert _readings(platform, "pi-offline01") == [0, 1, 2]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert json.loads((tmp_path / "identity.json").read_text())["deviceName"] == "pi-offline01"


def _unit() -> configparser.ConfigParser:
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read_string((EXAMPLE / "iotx509-device.service").read_text())
    return unit


def test_systemd_unit_restarts_on_failure_and_waits_for_time_sync(tmp_path: Path) -> None:
    unit_text = (EXAMPLE / "iotx509-device.service").read_text()
    unit = _unit()
    assert unit["Service"]["Restart"] == "on-failure"
    # permanent failures stop the restarts; the clock (75) and the network (69) do not
    assert {
        int(c) for c in unit["Service"]["RestartPreventExitStatus"].split()
    } == PERMANENT_EXIT_CODES
    for key in ("After", "Wants"):
        assert {"time-sync.target", "network-online.target"} <= set(unit["Unit"][key].split())
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed")
    # systemd's verifier, with the paths of this checkout instead of /opt/iotx509
    local = tmp_path / "iotx509-device.service"
    local.write_text(
        unit_text.replace("/opt/iotx509/venv/bin/python", sys.executable).replace(
            "/opt/iotx509/device.py", str(EXAMPLE / "device.py")
        )
    )
    result = subprocess.run(
        ["systemd-analyze", "verify", str(local)], capture_output=True, text=True, timeout=60
    )
    problems = [
        line
        for line in (result.stdout + result.stderr).splitlines()
        if "iotx509-device.service" in line
    ]
    assert result.returncode == 0 and not problems, result.stdout + result.stderr
