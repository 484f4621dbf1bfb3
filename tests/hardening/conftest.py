"""Fixtures for the hardening tests: accounts set up through the API of the real server.

``server`` (an account of the test's own on the session's server process) comes from the root
conftest; tests that need a server with other settings start their own and say why.
"""

from __future__ import annotations

from dataclasses import dataclass

from firmware_helpers import pki
from firmware_helpers.platform_client import PlatformClient, UploadFile
from tests.common import association_csv


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
    return association_csv((product_key, name, f"{sn:x}") for name, sn in devices.items())


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
