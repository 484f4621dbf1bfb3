"""What the tests of every part share; the fixtures that hand these out live in tests/conftest.py.

- :class:`PkiFactory`: a tiny trustme-like PKI (a CA, device pairs written as the platform names
  them). Certificates are made at test time, never committed.
- :func:`association_csv`: a valid association CSV, written by the firmware helpers' own writer
  (tests that feed the parser odd bytes on purpose build those by hand, and say so).
- :func:`wait_for`: go on the moment a state the code under test reaches holds (bounded).
- :func:`create_account` and :class:`Platform`: an account of its own on a running reference
  server, with an eligible product and a CA registered with proof of possession
  (:meth:`PlatformClient.register_ca_with_proof`), so tests sharing one server stay isolated.
"""

from __future__ import annotations

import itertools
import os
import time
import urllib.parse
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from device_sdk import Credentials, DeviceClient
from device_sdk.naming import DeviceFileName
from firmware_helpers.association_csv import Association, render
from firmware_helpers.pki import CertifiedKey, create_ca, generate_rsa_key, issue_device_certificate
from firmware_helpers.platform_client import PlatformClient, UploadFile
from server_stub.datadir import DataDir
from server_stub.launcher import RunningServer
from server_stub.registry import Registry
from server_stub.store import SqliteStore


class PkiFactory:
    """A CA, and device pairs written as the platform names them (``[PK]_[DN]_[CA_SN]``)."""

    #: Not a test class, whatever name a test module imports it under (``TestPKI``).
    __test__ = False

    def __init__(self, root: Path) -> None:
        self.root = root
        self._key_pool = [generate_rsa_key() for _ in range(2)]  # [1]: an impostor CA's key
        self.ca = create_ca("Test Private CA", key=self._key_pool[0])

    def new_ca(self, common_name: str = "Test Private CA") -> CertifiedKey:
        return create_ca(common_name)

    def device(
        self, product_key: str, device_name: str, ca: CertifiedKey | None = None, **kwargs: object
    ) -> CertifiedKey:
        return issue_device_certificate(
            ca or self.ca,
            device_name,
            product_key=product_key,
            **kwargs,  # type: ignore[arg-type]
        )

    def write_device(
        self,
        product_key: str,
        device_name: str,
        ca: CertifiedKey | None = None,
        directory: Path | None = None,
        **kwargs: object,
    ) -> tuple[Path, Path, CertifiedKey]:
        ca = ca or self.ca
        pair = self.device(product_key, device_name, ca, **kwargs)
        names = DeviceFileName(product_key, device_name, ca.sn)
        directory = directory or self.root
        directory.mkdir(parents=True, exist_ok=True)
        cert_path, key_path = directory / names.cert_name, directory / names.key_name
        pair.write(cert_path, key_path)
        return cert_path, key_path, pair


def association_csv(rows: Iterable[tuple[str, str, str]]) -> bytes:
    """``ProductKey,DeviceName,CertSN`` rows as the file the platform imports."""
    return render([Association(pk, dn, sn) for pk, dn, sn in rows])


def wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
    """Whether ``predicate`` (a state the code under test reaches, such as a message the server
    recorded) holds within ``timeout``; polled, so the test goes on the moment it does."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


_account_numbers = itertools.count(1)


def create_account(server: RunningServer, prefix: str = "test") -> str:
    """A new account on ``server`` and its API token, made as ``iotx509 server account create``
    does (the registry on the data directory's database, beside the running server), without
    starting a process for it. The name is unique within the test run."""
    name = f"{prefix}-{os.getpid()}-{next(_account_numbers)}"
    store = SqliteStore(DataDir(server.data_dir).database)
    try:
        return Registry(store).create_account(name)[1]
    finally:
        store.close()


def account_view(server: RunningServer, prefix: str = "test") -> RunningServer:
    """``server`` as seen by a new account: the same process, ports and CA; its own token."""
    if server.process.poll() is not None:  # shared by the session: say so once it is gone
        raise AssertionError(
            f"the session's reference server exited with status {server.process.returncode}; "
            f"its log:\n{server.log()[-4000:]}"
        )
    return replace(server, token=create_account(server, prefix))


def same_ports(server: RunningServer) -> list[str]:
    """``iotx509 server run`` options that start a server again on ``server``'s ports, as a
    restart that devices and API clients reach at the addresses they already have."""
    http_port = urllib.parse.urlsplit(server.http_url).port
    return ["--http-port", str(http_port), "--mqtt-port", str(server.mqtt_port)]


@dataclass
class Device:
    name: str
    cert: Path
    key: Path
    pair: CertifiedKey


@dataclass
class Platform:
    """One account's console steps on a running server: product, CAs, devices, associations.

    ``server.token`` is this account's token, not the server's admin account.
    """

    server: RunningServer
    api: PlatformClient
    product_key: str
    ca: CertifiedKey
    workdir: Path
    devices: dict[str, Device] = field(default_factory=dict)

    def device_client(self, credentials: Credentials, **options: Any) -> DeviceClient:
        """An SDK client for this server's MQTT endpoint, trusting its server CA."""
        return DeviceClient(
            self.server.mqtt_host,
            self.server.mqtt_port,
            credentials,
            server_ca=self.server.server_ca,
            **options,
        )

    def device_args(self, cert: Path, key: Path) -> list[str]:
        """What a device program (``iotx509 device connect``, the examples) is told to reach
        this server: ``--cert --key --server-ca --host --port``."""
        return [
            *("--cert", str(cert), "--key", str(key)),
            *("--server-ca", str(self.server.server_ca)),
            *("--host", self.server.mqtt_host, "--port", str(self.server.mqtt_port)),
        ]

    def register_ca(self, ca: CertifiedKey, name: str) -> str:
        """Register with proof of possession; a device may connect once this returns (new TLS
        handshakes take the registry's trust snapshot of their moment: server_stub/mqtt/tls.py).
        """
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
        body = association_csv([(self.product_key, device_name, cert_sn)])
        assert self.api.associate(ca.sn, UploadFile("devices.csv", body, "text/csv")) == 1


def setup_platform(
    server: RunningServer, workdir: Path, ca: CertifiedKey | None = None
) -> Platform:
    """``server``'s own account (its ``token``) with a new product and a registered CA."""
    api = PlatformClient(server.http_url, server.token)
    product = api.create_product("tests")
    platform = Platform(
        server, api, str(product["productKey"]), ca or create_ca("Test Platform CA"), workdir
    )
    platform.register_ca(platform.ca, "test_platform_ca")
    return platform
