"""Fixtures for the hardening tests: a real server process and accounts set up through the API."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from firmware_helpers import pki
from firmware_helpers.platform_client import PlatformClient, UploadFile
from server_stub.launcher import RunningServer, running_server


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    with running_server(tmp_path_factory.mktemp("server") / "data") as srv:
        yield srv


def create_account(data_dir: Path, name: str) -> str:
    """A new account's token, made the way an operator does it (the CLI on the data dir)."""
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "iotx509",
            "server",
            "account",
            "create",
            name,
            "--data-dir",
            str(data_dir),
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return out.split()[-1]


@dataclass
class Tenant:
    """An account with one eligible product, one registered CA and some associated devices."""

    client: PlatformClient
    token: str
    product_key: str
    ca: pki.CertifiedKey
    ca_sn: str
    devices: dict[str, int]  # device name -> certificate SN (as int)


def csv_for(product_key: str, devices: dict[str, int]) -> bytes:
    rows = [f"{product_key},{name},{sn:x}" for name, sn in devices.items()]
    return ("ProductKey,DeviceName,CertSN\r\n" + "\r\n".join(rows) + "\r\n").encode()


def make_tenant(
    http_url: str,
    token: str,
    *,
    ca: pki.CertifiedKey | None = None,
    devices: dict[str, int] | None = None,
    ca_name: str = "tenant_ca",
) -> Tenant:
    client = PlatformClient(http_url, token)
    product_key = str(client.create_product("hardening")["productKey"])
    ca = ca or pki.create_ca("Hardening CA")
    ca_sn = client.register_ca_with_proof(ca_name, ca).ca_sn
    devices = devices if devices is not None else {"dev-0001": 0x1001, "dev-0002": 0x1002}
    if devices:
        client.associate(ca_sn, UploadFile("devices.csv", csv_for(product_key, devices)))
    return Tenant(client, token, product_key, ca, ca_sn, devices)
