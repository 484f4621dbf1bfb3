"""``fleet create`` against the real reference server: create, grow, resume, refuse."""

from __future__ import annotations

import json
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from device_sdk.certs import certificate_sn, read_certificates
from firmware_helpers.pki import create_ca
from firmware_helpers.platform_client import PlatformClient
from server_stub.launcher import RunningServer
from simulator.errors import FleetCreateError
from simulator.fleet import Fleet, MqttEndpoint
from simulator.fleet_create import CreateOptions, create_fleet
from tests.simulator.conftest import locust_env


def _options(server: RunningServer, out: Path, count: int, **kw: object) -> CreateOptions:
    return CreateOptions(
        server=server.http_url,
        token=server.token,
        count=count,
        out=out,
        jobs=1,
        **kw,  # type: ignore[arg-type]
    )


def test_create_then_grow_never_reissues_and_associates_in_chunks(
    shared_server: RunningServer, tmp_path: Path
) -> None:
    out = tmp_path / "fleet"
    steps: list[tuple[str, int, int]] = []
    fleet = create_fleet(
        _options(shared_server, out, 4, rows_per_file=3),
        lambda step, done, total: steps.append((step, done, total)),
    )
    assert len(fleet) == 4 and all(d.associated for d in fleet.devices)
    assert ("associate", 3, 4) in steps and ("associate", 4, 4) in steps  # two files: 3 + 1
    assert ("issue", 4, 4) in steps
    client = PlatformClient(shared_server.http_url, shared_server.token)
    for device in fleet.devices:
        assert (
            client.device(device.product_key, device.device_name)["deviceName"]
            == device.device_name
        )
        cert = read_certificates(fleet.path(device.cert))[0]
        assert certificate_sn(cert) == device.cert_sn
        assert stat.S_IMODE(fleet.path(device.key).stat().st_mode) == 0o600
    assert stat.S_IMODE(out.stat().st_mode) == 0o700
    assert stat.S_IMODE((out / "api-token").stat().st_mode) == 0o600
    # No --mqtt, no --server-ca: both learned from GET /api/v1/endpoint (the port is not 8883).
    assert shared_server.mqtt_port != 8883
    assert fleet.mqtt == MqttEndpoint("127.0.0.1", shared_server.mqtt_port)
    assert fleet.server_ca_path is not None
    assert fleet.server_ca_path.read_bytes() == shared_server.server_ca.read_bytes()
    before = {d.device_name: fleet.path(d.cert).read_bytes() for d in fleet.devices}

    grown = create_fleet(_options(shared_server, out, 6, rows_per_file=3))
    assert [d.device_name for d in grown.devices] == [f"sim-{i:06d}" for i in range(6)]
    assert grown.devices[:4] == fleet.devices
    assert {d.device_name: grown.path(d.cert).read_bytes() for d in grown.devices[:4]} == before
    assert all(d.associated for d in grown.devices)
    assert len({d.cert_sn for d in grown.devices}) == 6
    again = create_fleet(_options(shared_server, out, 6))
    assert again.devices == grown.devices
    smaller = create_fleet(_options(shared_server, out, 2))  # never shrinks
    assert len(smaller) == 6


def test_an_interrupted_run_resumes_without_reissuing(
    shared_server: RunningServer, tmp_path: Path
) -> None:
    out = tmp_path / "fleet"
    fleet = create_fleet(_options(shared_server, out, 2))
    # As if the process died after issuing devices 2 and 3 but before fleet.json said so.
    from firmware_helpers.issuing import issue_devices, load_issuing_ca

    assert fleet.ca is not None and fleet.product_key is not None
    ca = load_issuing_ca(fleet.path(fleet.ca.cert), fleet.path(fleet.ca.key))
    report = issue_devices(
        ca,
        fleet.product_key,
        ["sim-000002", "sim-000003"],
        out / "devices",
        jobs=1,
        write_csv=False,
    )
    issued = {d.device_name: d.sn for d in report.issued}
    resumed = create_fleet(_options(shared_server, out, 4))
    assert {d.device_name: d.cert_sn for d in resumed.devices[2:]} == issued
    assert all(d.associated for d in resumed.devices)


def test_a_given_product_and_ca_are_used(shared_server: RunningServer, tmp_path: Path) -> None:
    client = PlatformClient(shared_server.http_url, shared_server.token)
    product_key = client.create_product("given_product")["productKey"]
    ca = create_ca("Given Test CA")
    ca.write(tmp_path / "ca.cer", tmp_path / "ca.key")
    fleet = create_fleet(
        _options(
            shared_server,
            tmp_path / "fleet",
            2,
            product_key=product_key,
            ca_cert=tmp_path / "ca.cer",
            ca_key=tmp_path / "ca.key",
        )
    )
    assert fleet.product_key == product_key
    assert fleet.ca is not None and fleet.ca.ca_sn == ca.sn and fleet.ca.registered
    assert client.ca_certificate(ca.sn)["status"] == "active"
    other = create_ca("Other Test CA")
    other.write(tmp_path / "other.cer", tmp_path / "other.key")
    with pytest.raises(FleetCreateError, match="one fleet has one CA"):
        create_fleet(
            _options(
                shared_server,
                tmp_path / "fleet",
                3,
                product_key=product_key,
                ca_cert=tmp_path / "other.cer",
                ca_key=tmp_path / "other.key",
            )
        )
    with pytest.raises(FleetCreateError, match="is a fleet of product"):
        create_fleet(_options(shared_server, tmp_path / "fleet", 3, product_key="zzzz1111"))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"count": 0}, "--count must be 1.."),
        ({"ca_cert": Path("ca.cer")}, "give both --ca and --ca-key"),
        ({"product_key": "bad-key!"}, "letters and digits"),
        ({"prefix": "a b"}, "makes invalid DeviceNames"),
        ({"server": "ftp://x"}, "must be the HTTP API's URL"),
    ],
)
def test_bad_options_are_refused_before_anything_happens(
    shared_server: RunningServer, tmp_path: Path, change: dict[str, object], message: str
) -> None:
    options = _options(shared_server, tmp_path / "fleet", 2)
    options = CreateOptions(**{**options.__dict__, **change})
    with pytest.raises(FleetCreateError, match=message):
        create_fleet(options)
    assert not (tmp_path / "fleet").exists()


def test_platform_refusals_name_the_step(shared_server: RunningServer, tmp_path: Path) -> None:
    options = CreateOptions(
        server=shared_server.http_url, token="wrong-token", count=1, out=tmp_path / "fleet"
    )
    with pytest.raises(FleetCreateError) as caught:
        create_fleet(options)
    assert caught.value.step == "endpoint"  # the first question to the platform
    assert "asking the platform for its device endpoint" in str(caught.value)
    assert "token" in str(caught.value)
    assert getattr(caught.value.__cause__, "status", None) == 401
    unknown = _options(shared_server, tmp_path / "fleet2", 1, product_key="nosuchproduct1")
    with pytest.raises(FleetCreateError, match="checking the product") as caught:
        create_fleet(unknown)
    assert getattr(caught.value.__cause__, "status", None) == 404


def test_the_cli_creates_a_fleet_and_shows_progress(
    shared_server: RunningServer, tmp_path: Path
) -> None:
    out = tmp_path / "fleet"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "iotx509",
            "fleet",
            "create",
            "--server",
            shared_server.http_url,
            "--token",
            shared_server.token,
            "--count",
            "3",
            "--out",
            str(out),
            "--jobs",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=locust_env(),
    )
    assert result.returncode == 0, result.stderr
    assert "issue: 3/3 (100%)" in result.stderr and "associate: 3/3" in result.stderr
    assert "3 devices of product" in result.stdout
    data = json.loads((out / "fleet.json").read_text())
    assert data["endpoint"]["mqtt"] == f"mqtts://127.0.0.1:{shared_server.mqtt_port}"
    assert Fleet.load(out).server_ca_path == (out / "server-ca.pem").resolve()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--count", "2", "--out", "f", "--token", "t"], "--server URL"),
        (
            ["--count", "2", "--out", "f", "--no-platform"],
            "--no-platform: give the broker's endpoint with --mqtt",
        ),
        (
            ["--count", "2", "--out", "f", "--no-platform", "--mqtt", "http://h:1"],
            "use mqtts://HOST:PORT",
        ),
        (["--count", "2", "--out", "f", "--server", "http://127.0.0.1:1"], "--token T"),
        (
            ["--count", "2", "--out", "f", "--server", "http://127.0.0.1:1", "--token", "t"],
            "cannot reach the server at http://127.0.0.1:1",
        ),
    ],
)
def test_the_cli_prints_one_line_errors(tmp_path: Path, args: list[str], message: str) -> None:
    env = locust_env()
    env.pop("IOTX509_SERVER", None)
    result = subprocess.run(
        [sys.executable, "-m", "iotx509", "fleet", "create", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=tmp_path,
    )
    assert result.returncode != 0
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_fleet_run_passes_its_arguments_to_locust(shared_fleet: Fleet, tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "iotx509",
            "fleet",
            "run",
            str(shared_fleet.directory),
            "--",
            "--headless",
            "-u",
            "2",
            "-r",
            "2",
            "-t",
            "3s",
            "--csv",
            str(tmp_path / "run"),
            "--only-summary",
        ],
        capture_output=True,
        text=True,
        timeout=90,
        env=locust_env(),
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "connect" in (tmp_path / "run_stats.csv").read_text()
