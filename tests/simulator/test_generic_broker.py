"""A fleet made without a platform, run under real Locust against a real Mosquitto that requires
client certificates (``cafile`` = the fleet's CA), one certificate per device."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from simulator.fleet import Fleet
from tests.sdk.brokers import run_mosquitto
from tests.simulator.conftest import explain, locust_env, read_failures, read_stats, write_template

DEVICES = 6


def iotx509(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = locust_env()
    env.pop("IOTX509_SERVER", None)
    return subprocess.run(
        [sys.executable, "-m", "iotx509", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


@pytest.fixture(scope="module")
def broker_fleet(tmp_path_factory: pytest.TempPathFactory) -> Fleet:
    """DEVICES + 1 devices: the last one is the watcher (mosquitto_sub) below."""
    out = tmp_path_factory.mktemp("broker-fleet") / "fleet"
    # The broker's port is not known yet: any endpoint will do, --host overrides it per run.
    result = iotx509(
        "fleet",
        "create",
        "--no-platform",
        "--count",
        str(DEVICES + 1),
        "--out",
        str(out),
        "--mqtt",
        "mqtts://127.0.0.1:1",
        "--jobs",
        "1",
    )
    assert result.returncode == 0, result.stderr
    assert "no platform: the broker must trust ca/ca.cer" in result.stdout
    return Fleet.load(out)


def test_no_platform_fleet_has_certificates_and_no_http(broker_fleet: Fleet) -> None:
    data = json.loads((broker_fleet.directory / "fleet.json").read_text())
    assert data["endpoint"]["http"] is None
    assert data["ca"]["registered"] is False
    assert not (broker_fleet.directory / "api-token").exists()
    assert len(broker_fleet.devices) == DEVICES + 1
    assert len({d.cert_sn for d in broker_fleet.devices}) == DEVICES + 1
    for device in broker_fleet.devices:
        assert broker_fleet.path(device.cert).name.startswith(
            f"{device.product_key}_{device.device_name}_"
        )
        assert not device.associated


def test_a_platform_fleet_directory_is_not_reused_without_platform(
    broker_fleet: Fleet, tmp_path: Path
) -> None:
    data = json.loads((broker_fleet.directory / "fleet.json").read_text())
    data["endpoint"]["http"] = "http://127.0.0.1:1"
    other = tmp_path / "fleet"
    other.mkdir()
    (other / "fleet.json").write_text(json.dumps(data))
    result = iotx509(
        "fleet",
        "create",
        "--no-platform",
        "--count",
        "1",
        "--out",
        str(other),
        "--mqtt",
        "mqtts://127.0.0.1:1",
    )
    assert result.returncode != 0
    assert "is a fleet on the platform http://127.0.0.1:1" in result.stderr


def test_locust_runs_the_fleet_against_mosquitto_one_certificate_per_device(
    broker_fleet: Fleet, tmp_path: Path
) -> None:
    ca_pem = broker_fleet.path("ca/ca.cer").read_bytes()
    watcher = broker_fleet.devices[-1]
    pk = watcher.product_key
    with run_mosquitto(tmp_path / "mosquitto", ca_pem) as broker:
        # The watcher (a real mosquitto_sub with its own device certificate) counts who published.
        sub = subprocess.Popen(
            [
                "mosquitto_sub",
                "-h",
                "127.0.0.1",
                "-p",
                str(broker.port),
                "--cafile",
                str(broker.server_ca_path),
                "--cert",
                str(broker_fleet.path(watcher.cert)),
                "--key",
                str(broker_fleet.path(watcher.key)),
                "-t",
                f"/{pk}/+/user/update",
                "-v",
                "-C",
                str(DEVICES),
                "-W",
                "120",
                "-i",
                "watcher",
                "-q",
                "1",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            csv = tmp_path / "run"
            result = iotx509(
                "fleet",
                "run",
                str(broker_fleet.directory),
                "--no-identity",
                "--server-ca",
                str(broker.server_ca_path),
                "--template",
                str(write_template(tmp_path)),
                "--summary-every",
                "0",
                "--",
                "--headless",
                "-u",
                str(DEVICES),
                "-r",
                str(DEVICES),
                "-t",
                "6s",
                "--csv",
                str(csv),
                "--only-summary",
                "--loglevel",
                "INFO",
                "--host",
                f"mqtts://127.0.0.1:{broker.port}",
            )
            out, err = sub.communicate(timeout=120)
        finally:
            if sub.poll() is None:
                sub.kill()
                sub.wait()
        assert result.returncode == 0, explain(result) + broker.log()
    stats = read_stats(csv)
    assert read_failures(csv) == [], explain(result)
    assert stats["connect"].requests == DEVICES and stats["connect"].failures == 0
    assert "identity" not in stats  # --no-identity: nobody waits for one
    assert stats["publish"].requests >= DEVICES and stats["publish"].failures == 0
    # One certificate per device: each device published under its own /PK/DN/ topic.
    publishers = {line.split()[0].split("/")[2] for line in out.splitlines() if line.strip()}
    assert len(publishers) == DEVICES, (out, err)
    assert publishers <= {d.device_name for d in broker_fleet.devices[:DEVICES]}
    # One summary line instead of one line per device connection.
    assert "accepted the connection" not in result.stderr, explain(result)
    assert f"devices, whole run: connect {DEVICES} ok/0 failed" in result.stderr, explain(result)


def test_failures_name_the_simulator_options(broker_fleet: Fleet, tmp_path: Path) -> None:
    """A wrong server CA: the SDK's hint names --server-ca (the option), not server_ca=."""
    ca_pem = broker_fleet.path("ca/ca.cer").read_bytes()
    with run_mosquitto(tmp_path / "mosquitto", ca_pem) as broker:
        csv = tmp_path / "run"
        result = iotx509(
            "fleet",
            "run",
            str(broker_fleet.directory),
            "--no-identity",
            "--server-ca",
            str(broker_fleet.path("ca/ca.cer")),
            "--template",
            str(write_template(tmp_path)),
            "--",
            "--headless",
            "-u",
            "1",
            "-r",
            "1",
            "-t",
            "3s",
            "--csv",
            str(csv),
            "--only-summary",
            "--host",
            f"mqtts://127.0.0.1:{broker.port}",
        )
    failures = read_failures(csv)
    assert any(
        f["Name"] == "connect"
        and "ServerUntrustedError" in f["Error"]
        and "Is --server-ca the CA" in f["Error"]
        for f in failures
    ), explain(result)
