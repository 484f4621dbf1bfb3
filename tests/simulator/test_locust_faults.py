"""Fault scenarios under real Locust against the real reference server.

- reconnect storm: the server process is stopped and started again (same ports, same data)
  mid-run; devices report the loss, fail to reconnect during the outage, then all come back.
- revocation: the simulator disables the fleet's CA mid-run; devices report the SDK's refusal,
  and a TCP forwarder between them and the server counts that they do not hammer it.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from server_stub.launcher import running_server
from tests.simulator.conftest import (
    explain,
    locust_command,
    locust_env,
    new_fleet,
    ports_args,
    read_failures,
    read_history,
    read_stats,
    run_locust,
    write_template,
)
from tests.simulator.tcp_proxy import CountingProxy

DEVICES = 10


@pytest.mark.heavy
def test_reconnect_storm_shows_the_outage_and_every_device_comes_back(tmp_path: Path) -> None:
    data = tmp_path / "data"
    flag = tmp_path / "restart-now"
    with running_server(data) as first:
        fleet = new_fleet(first, tmp_path / "fleet", DEVICES)
        ports = ports_args(first)
        locust = subprocess.Popen(
            locust_command(
                fleet.directory,
                tmp_path / "run",
                "--headless",
                "-u",
                str(DEVICES),
                "-r",
                str(DEVICES),
                "-t",
                "30s",
                "--template",
                str(write_template(tmp_path)),
                "--scenario",
                "reconnect-storm",
                "--fault-at",
                "6",
                "--fault-command",
                f"touch {flag}",
                "--reconnect-base",
                "0.5",
                "--reconnect-cap",
                "4",
                "--csv-full-history",
            ),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=locust_env(),
            cwd=tmp_path,
        )
        deadline = time.monotonic() + 30
        while not flag.exists() and time.monotonic() < deadline and locust.poll() is None:
            time.sleep(0.1)
        assert flag.exists(), "the scenario never ran its --fault-command"
        first.stop()
    time.sleep(2.0)  # the outage: nothing listens on the MQTT port
    with running_server(data, extra_args=ports):
        stdout, stderr = locust.communicate(timeout=90)
    result = subprocess.CompletedProcess(locust.args, locust.returncode, stdout, stderr)
    stats = read_stats(tmp_path / "run")
    assert stats["endpoint restart"].failures == 0, explain(result)
    # The outage: every device lost its connection and some reconnects failed meanwhile.
    assert stats["connection lost"].failures == DEVICES, explain(result)
    assert stats["reconnect"].failures >= 1, explain(result)
    failures = read_failures(tmp_path / "run")
    assert any(f["Name"] == "reconnect" and "connection refused" in f["Error"] for f in failures), (
        failures
    )
    # The recovery: every device back (a success per device), then telemetry flowing again.
    assert stats["reconnect"].requests - stats["reconnect"].failures == DEVICES, explain(result)
    assert stats["connect"].failures == 0
    history = read_history(tmp_path / "run", "reconnect")
    recovered_at = min(
        int(r["Timestamp"])
        for r in history
        if int(r["Total Request Count"]) - int(r["Total Failure Count"]) == DEVICES
    )
    publishes = read_history(tmp_path / "run", "publish")
    at_recovery = max(
        int(r["Total Request Count"]) for r in publishes if int(r["Timestamp"]) <= recovered_at
    )
    assert max(int(r["Total Request Count"]) for r in publishes) >= at_recovery + DEVICES * 3


@pytest.mark.heavy
def test_revocation_refuses_the_devices_and_they_do_not_hammer(tmp_path: Path) -> None:
    with running_server(tmp_path / "data") as server:
        fleet = new_fleet(server, tmp_path / "fleet", DEVICES)
        assert server.mqtt_port is not None
        with CountingProxy("127.0.0.1", server.mqtt_port).running() as proxy:
            started = time.monotonic()
            result = run_locust(
                fleet.directory,
                tmp_path / "run",
                "-u",
                str(DEVICES),
                "-r",
                str(DEVICES),
                "-t",
                "25s",
                "--host",
                f"mqtts://127.0.0.1:{proxy.port}",
                "--template",
                str(write_template(tmp_path)),
                "--scenario",
                "revocation",
                "--fault-at",
                "5",
                "--reconnect-base",
                "0.5",
                "--reconnect-cap",
                "30",
            )
            after_fault = proxy.connections_since(started + 5)
        stats = read_stats(tmp_path / "run")
        assert stats["CA disabled"].failures == 0, explain(result)
        assert stats["connect"].failures == 0
        assert stats["connection lost"].failures == DEVICES, explain(result)
        failures = read_failures(tmp_path / "run")
        refusals = [f for f in failures if f["Name"] == "reconnect"]
        assert refusals, failures
        assert all(
            "CertificateRejectedError" in f["Error"] or "NotAuthorizedError" in f["Error"]
            for f in refusals
        ), refusals
        assert stats["reconnect"].requests == stats["reconnect"].failures  # nobody got back in
        # One quick retry after the loss, then at most one per 30 s cap: within the 20 s after
        # the fault that is at most 2 attempts per device. Hammering would be hundreds.
        assert DEVICES <= after_fault <= 2 * DEVICES, after_fault


@pytest.mark.heavy
def test_revocation_with_restore_lets_every_device_back_in(tmp_path: Path) -> None:
    with running_server(tmp_path / "data") as server:
        fleet = new_fleet(server, tmp_path / "fleet", DEVICES)
        result = run_locust(
            fleet.directory,
            tmp_path / "run",
            "-u",
            str(DEVICES),
            "-r",
            str(DEVICES),
            "-t",
            "22s",
            "--template",
            str(write_template(tmp_path)),
            "--scenario",
            "revocation",
            "--fault-at",
            "4",
            "--restore-at",
            "9",
            "--reconnect-base",
            "0.5",
            "--reconnect-cap",
            "3",
        )
    stats = read_stats(tmp_path / "run")
    assert stats["CA disabled"].failures == 0 and stats["CA enabled"].failures == 0, explain(result)
    assert stats["connection lost"].failures == DEVICES
    assert stats["reconnect"].failures >= DEVICES  # refused while the CA was inactive
    assert stats["reconnect"].requests - stats["reconnect"].failures == DEVICES, explain(result)
