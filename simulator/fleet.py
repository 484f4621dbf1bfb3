"""A fleet: the devices a simulation may use, as ``FLEET/fleet.json`` describes them.

``iotx509 fleet create`` writes the file (atomically, after every step, so an interrupted run
resumes where it stopped); the Locust side only reads it. Paths inside are relative to the fleet
directory, so a fleet can be copied to the machines of a distributed run.

::

    {
      "version": 1,
      "endpoint": {"mqtt": "mqtts://127.0.0.1:8883", "http": "http://127.0.0.1:8080"},
      "serverCa": "server-ca.pem",
      "productKey": "a1B2c3D4e5F",
      "ca": {"caSn": "8f..", "name": "simfleet_..", "cert": "ca/ca.cer", "key": "ca/ca.key",
             "registered": true},
      "devices": [
        {"index": 0, "productKey": "a1B2c3D4e5F", "deviceName": "sim-000000", "certSn": "9a..",
         "caSn": "8f..", "cert": "devices/a1B2c3D4e5F_sim-000000_8f...cer",
         "key": "devices/a1B2c3D4e5F_sim-000000_8f...key", "associated": true}
      ]
    }

The API token is not in ``fleet.json``: it lives in ``FLEET/api-token`` (mode 0600). A fleet made
with ``--no-platform`` for a generic broker has ``"http": null`` and unregistered CA.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from device_sdk.fileio import PRIVATE_FILE_MODE, PUBLIC_FILE_MODE, atomic_write
from device_sdk.identity import Identity
from device_sdk.naming import validate_device_name, validate_product_key
from device_sdk.platform import DEFAULT_MQTT_PORT
from device_sdk.serials import normalize_sn
from simulator.errors import FleetError

FLEET_FILE = "fleet.json"
TOKEN_FILE = "api-token"
FLEET_VERSION = 1


@dataclass(frozen=True)
class MqttEndpoint:
    host: str
    port: int

    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"mqtts://{host}:{self.port}"

    @classmethod
    def parse(cls, text: str) -> MqttEndpoint:
        """``mqtts://H:P`` (also ``ssl://`` or ``tls://``, or bare ``H:P``); port 8883 if omitted."""
        candidate = text if "://" in text else f"mqtts://{text}"
        parts = urlsplit(candidate)
        if parts.scheme not in ("mqtts", "ssl", "tls"):
            raise FleetError(
                f"endpoint {text!r}: use mqtts://HOST:PORT (the devices connect over TLS only)"
            )
        try:
            port = parts.port or DEFAULT_MQTT_PORT
        except ValueError as exc:
            raise FleetError(f"endpoint {text!r}: the port is not a number 1-65535") from exc
        if not parts.hostname:
            raise FleetError(f"endpoint {text!r} names no host")
        if parts.path not in ("", "/"):
            raise FleetError(f"endpoint {text!r}: an MQTT endpoint has no path")
        return cls(parts.hostname, port)


@dataclass(frozen=True)
class FleetDevice:
    index: int
    product_key: str
    device_name: str
    cert_sn: str
    ca_sn: str
    cert: str
    key: str
    associated: bool = False

    @property
    def identity(self) -> Identity:
        """Who the platform should say this device is."""
        return Identity(self.product_key, self.device_name)

    def to_json(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "productKey": self.product_key,
            "deviceName": self.device_name,
            "certSn": self.cert_sn,
            "caSn": self.ca_sn,
            "cert": self.cert,
            "key": self.key,
            "associated": self.associated,
        }

    @classmethod
    def from_json(cls, data: Any, where: str) -> FleetDevice:
        if not isinstance(data, dict):
            raise FleetError(f"{where} must be a JSON object")
        try:
            device = cls(
                index=_int(data["index"], f"{where}.index"),
                product_key=validate_product_key(_str(data["productKey"], f"{where}.productKey")),
                device_name=validate_device_name(_str(data["deviceName"], f"{where}.deviceName")),
                cert_sn=normalize_sn(_str(data["certSn"], f"{where}.certSn")),
                ca_sn=normalize_sn(_str(data["caSn"], f"{where}.caSn")),
                cert=_str(data["cert"], f"{where}.cert"),
                key=_str(data["key"], f"{where}.key"),
                associated=bool(data.get("associated", False)),
            )
        except KeyError as exc:
            raise FleetError(f"{where}: missing field {exc.args[0]!r}") from exc
        except ValueError as exc:  # the SDK's name and SN errors are ValueErrors too
            raise FleetError(f"{where}: {exc}") from exc
        return device


@dataclass(frozen=True)
class FleetCA:
    ca_sn: str
    name: str
    cert: str
    key: str
    registered: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "caSn": self.ca_sn,
            "name": self.name,
            "cert": self.cert,
            "key": self.key,
            "registered": self.registered,
        }

    @classmethod
    def from_json(cls, data: Any, where: str) -> FleetCA:
        if not isinstance(data, dict):
            raise FleetError(f"{where} must be a JSON object")
        try:
            return cls(
                ca_sn=normalize_sn(_str(data["caSn"], f"{where}.caSn")),
                name=_str(data["name"], f"{where}.name"),
                cert=_str(data["cert"], f"{where}.cert"),
                key=_str(data["key"], f"{where}.key"),
                registered=bool(data.get("registered", False)),
            )
        except KeyError as exc:
            raise FleetError(f"{where}: missing field {exc.args[0]!r}") from exc
        except ValueError as exc:
            raise FleetError(f"{where}: {exc}") from exc


@dataclass(frozen=True)
class Fleet:
    """The parsed ``fleet.json`` plus the directory it came from (paths resolve against it)."""

    directory: Path
    mqtt: MqttEndpoint
    http_url: str | None
    """The platform's HTTP API; None for a ``--no-platform`` fleet (a generic broker)."""
    server_ca: str | None
    product_key: str | None = None
    ca: FleetCA | None = None
    devices: tuple[FleetDevice, ...] = field(default_factory=tuple)

    def __len__(self) -> int:
        return len(self.devices)

    def path(self, relative: str) -> Path:
        """A path from ``fleet.json``, resolved against the fleet directory."""
        return (self.directory / relative).resolve()

    @property
    def server_ca_path(self) -> Path | None:
        return None if self.server_ca is None else self.path(self.server_ca)

    def api_token(self) -> str | None:
        """``IOTX509_TOKEN`` if set, else ``FLEET/api-token`` if present."""
        env = os.environ.get("IOTX509_TOKEN")
        if env:
            return env
        token_file = self.directory / TOKEN_FILE
        try:
            return token_file.read_text(encoding="utf-8").strip() or None
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise FleetError(f"cannot read {token_file}: {exc.strerror or exc}") from exc

    def with_devices(self, devices: tuple[FleetDevice, ...]) -> Fleet:
        return replace(self, devices=devices)

    def to_json(self) -> dict[str, Any]:
        return {
            "version": FLEET_VERSION,
            "endpoint": {"mqtt": self.mqtt.url(), "http": self.http_url},
            "serverCa": self.server_ca,
            "productKey": self.product_key,
            "ca": None if self.ca is None else self.ca.to_json(),
            "devices": [d.to_json() for d in self.devices],
        }

    def save(self) -> None:
        """Write ``fleet.json`` atomically (a reader sees the old file or the new one)."""
        data = json.dumps(self.to_json(), indent=1).encode() + b"\n"
        atomic_write(self.directory / FLEET_FILE, data, mode=PUBLIC_FILE_MODE)

    def save_token(self, token: str) -> None:
        atomic_write(self.directory / TOKEN_FILE, token.encode() + b"\n", mode=PRIVATE_FILE_MODE)

    @classmethod
    def load(cls, directory: str | Path) -> Fleet:
        directory = Path(directory)
        source = directory / FLEET_FILE if directory.is_dir() else directory
        if source.name == FLEET_FILE:
            directory = source.parent
        try:
            text = source.read_text(encoding="utf-8")
        except FileNotFoundError as exc:
            raise FleetError(
                f"no fleet at {directory}: {FLEET_FILE} is missing "
                "(create one with: iotx509 fleet create --server URL --token T --count N "
                f"--out {directory})"
            ) from exc
        except OSError as exc:
            raise FleetError(f"cannot read {source}: {exc.strerror or exc}") from exc
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise FleetError(f"{source}: not valid JSON ({exc})") from exc
        return cls.from_json(data, directory=directory, source=str(source))

    @classmethod
    def from_json(cls, data: Any, *, directory: Path, source: str) -> Fleet:
        if not isinstance(data, dict):
            raise FleetError(f"{source}: must be a JSON object")
        if data.get("version") != FLEET_VERSION:
            raise FleetError(
                f"{source}: version {data.get('version')!r} is not supported "
                f"(this simulator reads version {FLEET_VERSION})"
            )
        endpoint = data.get("endpoint")
        if not isinstance(endpoint, dict) or not isinstance(endpoint.get("mqtt"), str):
            raise FleetError(f"{source}: endpoint.mqtt (mqtts://HOST:PORT) is missing")
        mqtt = MqttEndpoint.parse(endpoint["mqtt"])
        if "http" not in endpoint:
            raise FleetError(
                f"{source}: endpoint.http is missing (the platform's URL, or null "
                "for a fleet made with --no-platform)"
            )
        http_url = endpoint["http"]
        if http_url is not None and not isinstance(http_url, str):
            raise FleetError(f"{source}: endpoint.http must be the platform's URL or null")
        server_ca = data.get("serverCa")
        if server_ca is not None and not isinstance(server_ca, str):
            raise FleetError(f"{source}: serverCa must be a path or null")
        product_key = data.get("productKey")
        if product_key is not None:
            product_key = validate_product_key(_str(product_key, f"{source}: productKey"))
        ca = None if data.get("ca") is None else FleetCA.from_json(data["ca"], f"{source}: ca")
        raw_devices = data.get("devices", [])
        if not isinstance(raw_devices, list):
            raise FleetError(f"{source}: devices must be a list")
        devices = tuple(
            FleetDevice.from_json(d, f"{source}: devices[{i}]") for i, d in enumerate(raw_devices)
        )
        _check_unique(devices, source)
        return cls(directory, mqtt, http_url, server_ca, product_key, ca, devices)


def _check_unique(devices: tuple[FleetDevice, ...], source: str) -> None:
    seen_index: set[int] = set()
    seen_name: set[tuple[str, str]] = set()
    seen_sn: set[tuple[str, str]] = set()
    for position, device in enumerate(devices):
        if device.index != position:
            raise FleetError(
                f"{source}: devices[{position}] has index {device.index}; indexes must be "
                "0, 1, 2, ... in order"
            )
        name = (device.product_key, device.device_name)
        sn = (device.ca_sn, device.cert_sn)
        if device.index in seen_index or name in seen_name or sn in seen_sn:
            raise FleetError(
                f"{source}: device {device.device_name} (SN {device.cert_sn}) appears twice; "
                "two simulated users would share one device"
            )
        seen_index.add(device.index)
        seen_name.add(name)
        seen_sn.add(sn)


def _str(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise FleetError(f"{where} must be a non-empty string, not {value!r}")
    return value


def _int(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise FleetError(f"{where} must be a non-negative integer, not {value!r}")
    return value
