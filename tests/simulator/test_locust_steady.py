"""Real Locust, headless, against the real reference server: the steady scenario."""

from __future__ import annotations

from pathlib import Path

from simulator.fleet import Fleet
from tests.simulator.conftest import (
    explain,
    lease_lines,
    read_failures,
    read_stats,
    run_locust,
    write_template,
)


def test_steady_telemetry_and_commands_run_without_failures(
    shared_fleet: Fleet, tmp_path: Path
) -> None:
    template = write_template(tmp_path)
    leases = tmp_path / "leases.txt"
    result = run_locust(
        shared_fleet.directory,
        tmp_path / "run",
        "-u",
        "12",
        "-r",
        "12",
        "-t",
        "12s",
        "--template",
        str(template),
        "--lease-log",
        str(leases),
    )
    assert result.returncode == 0, explain(result)
    stats = read_stats(tmp_path / "run")
    assert read_failures(tmp_path / "run") == [], explain(result)
    assert stats["Aggregated"].failures == 0
    assert stats["connect"].requests == 12
    assert stats["identity"].requests == 12
    # 12 devices publishing every second for ~11 s; commands from the answering half.
    assert stats["publish"].requests >= 12 * 5
    assert stats["command"].requests >= 3
    used = lease_lines(leases)
    assert sorted(index for _pid, index, _name in used) == list(range(12))
    assert {name for _pid, index, name in used} == {
        shared_fleet.devices[i].device_name for i in range(12)
    }


def test_more_users_than_devices_is_refused_up_front_with_one_line(
    shared_fleet: Fleet, tmp_path: Path
) -> None:
    result = run_locust(
        shared_fleet.directory,
        tmp_path / "run",
        "-u",
        "32",
        "-r",
        "32",
        "-t",
        "4s",
        "--template",
        str(write_template(tmp_path)),
    )
    assert result.returncode != 0, explain(result)
    errors = [line for line in result.stderr.splitlines() if "error" in line.lower()]
    assert errors == [
        f"error: 32 users but the fleet {shared_fleet.directory} has 30 devices (one device per "
        f"user): use -u 30 or grow the fleet with 'iotx509 fleet create --count 32 --out "
        f"{shared_fleet.directory} ...'"
    ], explain(result)
    assert "Traceback" not in result.stderr
    # Refused before any user started: no device connected, no lease was attempted.
    stats = read_stats(tmp_path / "run") if (tmp_path / "run_stats.csv").exists() else {}
    assert "connect" not in stats and "lease" not in stats


def test_host_option_overrides_the_fleet_endpoint(shared_fleet: Fleet, tmp_path: Path) -> None:
    # Nothing listens on port 9 of loopback: every device must report the SDK's refusal.
    result = run_locust(
        shared_fleet.directory,
        tmp_path / "run",
        "-u",
        "3",
        "-r",
        "3",
        "-t",
        "3s",
        "--host",
        "mqtts://127.0.0.1:9",
        "--template",
        str(write_template(tmp_path)),
    )
    assert result.returncode != 0 or read_stats(tmp_path / "run")["connect"].failures, explain(
        result
    )
    failures = read_failures(tmp_path / "run")
    assert any(
        f["Name"] == "connect"
        and "127.0.0.1:9" in f["Error"]
        and "connection refused" in f["Error"]
        for f in failures
    ), failures


def test_without_a_fleet_locust_stops_with_a_clear_message(tmp_path: Path) -> None:
    import subprocess
    import sys

    from tests.simulator.conftest import LOCUSTFILE, locust_env

    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "locust",
            "-f",
            str(LOCUSTFILE),
            "--headless",
            "-u",
            "1",
            "-t",
            "2s",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=locust_env(),
        cwd=tmp_path,
    )
    assert result.returncode != 0
    assert "--fleet FLEET is required" in result.stderr
