"""``fleet.json``: round trip, endpoint parsing, and a clear error for each inconsistency."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from simulator.errors import FleetError
from simulator.fleet import Fleet, FleetCA, FleetDevice, MqttEndpoint


def _device(i: int, **over: Any) -> dict[str, Any]:
    data = {
        "index": i,
        "productKey": "a1B2c3D4e5F",
        "deviceName": f"sim-{i:06d}",
        "certSn": format(0x8000 + i, "x"),
        "caSn": "abc",
        "cert": f"devices/{i}.cer",
        "key": f"devices/{i}.key",
        "associated": True,
    }
    data.update(over)
    return data


def _fleet_json(devices: list[dict[str, Any]] | None = None, **over: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "version": 1,
        "endpoint": {"mqtt": "mqtts://127.0.0.1:8883", "http": "http://127.0.0.1:8080"},
        "serverCa": "server-ca.pem",
        "productKey": "a1B2c3D4e5F",
        "ca": {
            "caSn": "ABC",
            "name": "simfleet_abc",
            "cert": "ca/ca.cer",
            "key": "ca/ca.key",
            "registered": True,
        },
        "devices": devices if devices is not None else [_device(0), _device(1)],
    }
    data.update(over)
    return data


def _write(tmp_path: Path, data: Any) -> Path:
    (tmp_path / "fleet.json").write_text(json.dumps(data))
    return tmp_path


def test_round_trip_keeps_everything_and_resolves_paths(tmp_path: Path) -> None:
    fleet = Fleet.load(_write(tmp_path, _fleet_json()))
    assert len(fleet) == 2
    assert fleet.ca == FleetCA("abc", "simfleet_abc", "ca/ca.cer", "ca/ca.key", True)
    assert fleet.devices[1].identity.device_name == "sim-000001"
    assert fleet.path(fleet.devices[0].cert) == (tmp_path / "devices/0.cer").resolve()
    assert fleet.server_ca_path == (tmp_path / "server-ca.pem").resolve()
    fleet.save()
    again = Fleet.load(tmp_path / "fleet.json")
    assert again == fleet


def test_the_token_file_is_private_and_the_environment_wins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fleet = Fleet.load(_write(tmp_path, _fleet_json()))
    monkeypatch.delenv("IOTX509_TOKEN", raising=False)
    assert fleet.api_token() is None
    fleet.save_token("secret-1")
    assert (tmp_path / "api-token").stat().st_mode & 0o777 == 0o600
    assert fleet.api_token() == "secret-1"
    monkeypatch.setenv("IOTX509_TOKEN", "from-env")
    assert fleet.api_token() == "from-env"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("mqtts://h.example:1883", MqttEndpoint("h.example", 1883)),
        ("ssl://127.0.0.1", MqttEndpoint("127.0.0.1", 8883)),
        ("localhost:9000", MqttEndpoint("localhost", 9000)),
        ("mqtts://[::1]:8883", MqttEndpoint("::1", 8883)),
    ],
)
def test_endpoints_parse(text: str, expected: MqttEndpoint) -> None:
    assert MqttEndpoint.parse(text) == expected
    assert MqttEndpoint.parse(expected.url()) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("mqtt://h:1883", "TLS only"),
        ("http://h:80", "TLS only"),
        ("mqtts://h:99999", "port is not a number"),
        ("mqtts://:8883", "names no host"),
        ("mqtts://h:8883/path", "has no path"),
    ],
)
def test_bad_endpoints_are_refused(text: str, message: str) -> None:
    with pytest.raises(FleetError, match=message):
        MqttEndpoint.parse(text)


def test_a_missing_fleet_says_how_to_create_one(tmp_path: Path) -> None:
    with pytest.raises(FleetError, match="iotx509 fleet create"):
        Fleet.load(tmp_path)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ("[]", "must be a JSON object"),
        ("{", "not valid JSON"),
        (json.dumps(_fleet_json(version=2)), "version 2 is not supported"),
        (json.dumps(_fleet_json(endpoint={"http": "x"})), "endpoint.mqtt"),
        (json.dumps(_fleet_json(endpoint={"mqtt": "mqtts://h:1"})), "endpoint.http"),
        (
            json.dumps(_fleet_json(devices=[_device(0), _device(1, deviceName="sim-000000")])),
            "appears twice",
        ),
        (json.dumps(_fleet_json(devices=[_device(0), _device(1, certSn="8000")])), "appears twice"),
        (json.dumps(_fleet_json(devices=[_device(1)])), "indexes must be 0, 1, 2"),
        (json.dumps(_fleet_json(devices=[_device(0, deviceName="x")])), "DeviceName 'x'"),
        (json.dumps(_fleet_json(devices=[_device(0, certSn="zz")])), "not a hexadecimal"),
        (json.dumps(_fleet_json(devices=[{"index": 0}])), "missing field 'productKey'"),
        (json.dumps(_fleet_json(devices=[_device(0, index=-1)])), "non-negative integer"),
        (json.dumps({**_fleet_json(), "devices": {}}), "devices must be a list"),
    ],
)
def test_inconsistent_fleets_are_refused_with_the_reason(
    tmp_path: Path, data: str, message: str
) -> None:
    (tmp_path / "fleet.json").write_text(data)
    with pytest.raises(FleetError) as caught:
        Fleet.load(tmp_path)
    assert message in str(caught.value)


def test_save_is_atomic_and_leaves_no_temporary_files(tmp_path: Path) -> None:
    fleet = Fleet.load(_write(tmp_path, _fleet_json()))
    more = fleet.with_devices((*fleet.devices, FleetDevice.from_json(_device(2), "d")))
    more.save()
    assert len(Fleet.load(tmp_path)) == 3
    assert sorted(os.listdir(tmp_path)) == ["fleet.json"]
