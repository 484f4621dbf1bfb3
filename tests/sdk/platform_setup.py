"""The console steps a customer performs before a device connects, through the real HTTP API of
a running reference server: product, CA registration with proof of possession, association."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from device_sdk.naming import DeviceFileName
from firmware_helpers.pki import CertifiedKey, create_ca, issue_device_certificate
from firmware_helpers.platform_client import PlatformClient, UploadFile
from server_stub.launcher import RunningServer, running_server


@dataclass
class Device:
    name: str
    cert: Path
    key: Path
    pair: CertifiedKey


@dataclass
class Platform:
    server: RunningServer
    api: PlatformClient
    product_key: str
    ca: CertifiedKey
    workdir: Path
    devices: dict[str, Device] = field(default_factory=dict)

    def register_ca(self, ca: CertifiedKey, name: str) -> str:
        # New TLS handshakes take the registry's trust snapshot of the moment they start
        # (server_stub/mqtt/tls.py), so a device may connect as soon as this call returns.
        return self.api.register_ca_with_proof(name, ca).ca_sn

    def issue(
        self, device_name: str, ca: CertifiedKey | None = None, *, associate: bool = True
    ) -> Device:
        """A device pair in platform file names; associated by CSV unless told otherwise."""
        ca = ca or self.ca
        pair = issue_device_certificate(ca, device_name, product_key=self.product_key)
        names = DeviceFileName(self.product_key, device_name, ca.sn)
        directory = self.workdir / "devices"
        directory.mkdir(parents=True, exist_ok=True)
        device = Device(device_name, directory / names.cert_name, directory / names.key_name, pair)
        pair.write(device.cert, device.key)
        if associate:
            self.associate(ca, device_name, pair.sn)
        self.devices[device_name] = device
        return device

    def associate(self, ca: CertifiedKey, device_name: str, cert_sn: str) -> None:
        csv = f"ProductKey,DeviceName,CertSN\n{self.product_key},{device_name},{cert_sn}\n"
        assert self.api.associate(ca.sn, UploadFile("devices.csv", csv.encode(), "text/csv")) == 1


def setup_platform(
    server: RunningServer, workdir: Path, ca: CertifiedKey | None = None
) -> Platform:
    api = PlatformClient(server.http_url, server.token)
    product = api.create_product("sdk-tests")
    platform = Platform(
        server, api, str(product["productKey"]), ca or create_ca("SDK Test CA"), workdir
    )
    platform.register_ca(platform.ca, "sdk_test_ca")
    return platform


@contextlib.contextmanager
def platform_server(workdir: Path, *, extra_args: tuple[str, ...] = ()) -> Iterator[Platform]:
    with running_server(workdir / "data", extra_args=extra_args) as server:
        yield setup_platform(server, workdir)
