"""The real registry on a temporary SQLite file, driven through its own API.

The MQTT endpoint's tests and the connection benchmark authenticate devices against this, not
against an in-memory stand-in: every rule the registry applies (attribution by key, CA status,
certificate validity, product eligibility, device status, tenant scoping) is the one production
applies, because it is production's code. Setup goes through the same steps a customer takes:
an account, an eligible product, a CA registered with its proof of possession (verification
certificate with CN = the account's registration code) and an association CSV.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import rsa

from device_sdk.naming import validate_product_key
from firmware_helpers.association_csv import MAX_ROWS_PER_FILE, Association, render
from firmware_helpers.pki import CertifiedKey, issue_verification_certificate
from server_stub.registry import Registry
from server_stub.registry.products import validate_product_settings
from server_stub.store import SqliteStore
from server_stub.store.base import AccountRecord, ProductRecord

_names = itertools.count(1)


class Tenant:
    """One account of a :class:`RealRegistry`, with one product eligible for private-CA devices."""

    def __init__(
        self,
        registry: Registry,
        name: str,
        proof_key: rsa.RSAPrivateKey | None = None,
        product_key: str | None = None,
    ) -> None:
        self.registry = registry
        self.account: AccountRecord
        self.account, self.token = registry.create_account(name)
        self._proof_key = proof_key
        self.product: ProductRecord = (
            registry.create_product(self.account, name=f"{name} devices")
            if product_key is None
            else self._product_with_key(product_key, f"{name} devices")
        )

    def _product_with_key(self, product_key: str, name: str) -> ProductRecord:
        """An eligible product with a chosen ProductKey (the registry draws one at random), so
        tests can spell topics and identities as constants. Same settings check and row as
        :meth:`Registry.create_product`; only the key is not drawn."""
        clean = validate_product_settings(name, "x509", True, "mqtt")
        validate_product_key(product_key)
        store = self.registry.store
        with store.atomic():
            if store.product_key_exists(product_key):
                raise ValueError(f"ProductKey {product_key} exists already in this registry")
            return store.insert_product(
                self.account.id, product_key, clean, "x509", True, "mqtt", time.time()
            )

    @property
    def product_key(self) -> str:
        return self.product.product_key

    def create_product(
        self, name: str, *, auth_type: str = "x509", private_ca: bool = True, network: str = "mqtt"
    ) -> ProductRecord:
        """Another product of this account."""
        return self.registry.create_product(
            self.account, name=name, auth_type=auth_type, private_ca=private_ca, network=network
        )

    def register_ca(self, ca: CertifiedKey, name: str | None = None) -> str:
        """Register ``ca`` with proof of possession, as the console does; return its caSn."""
        proof = issue_verification_certificate(
            ca, self.registry.registration_code(self.account), key=self._proof_key
        )
        record = self.registry.register_ca(
            self.account,
            name=name or f"ca_{next(_names)}",
            ca_data=ca.cert_pem(),
            verification_data=proof.cert_pem(),
        )
        return record.ca_sn

    def associate(
        self, ca_sn: str, devices: Mapping[str, str], product_key: str | None = None
    ) -> int:
        """Associate ``{cert SN: device name}`` with the CA through association CSVs (<= 10,000
        rows each, as the platform takes them); return the number of rows."""
        rows = [
            Association(product_key or self.product_key, name, sn) for sn, name in devices.items()
        ]
        for start in range(0, len(rows), MAX_ROWS_PER_FILE):
            self.registry.associate(
                self.account, ca_sn, render(rows[start : start + MAX_ROWS_PER_FILE])
            )
        return len(rows)

    def set_ca_active(self, ca_sn: str, active: bool) -> None:
        self.registry.set_ca_status(self.account, ca_sn, "active" if active else "inactive")

    def delete_ca(self, ca_sn: str) -> None:
        self.registry.delete_ca(self.account, ca_sn)

    def set_device_enabled(self, device_name: str, enabled: bool, product_key: str = "") -> None:
        self.registry.set_device_status(
            self.account,
            product_key or self.product_key,
            device_name,
            "enabled" if enabled else "disabled",
        )

    def delete_association(self, ca_sn: str, cert_sn: str) -> None:
        self.registry.delete_association(self.account, ca_sn, cert_sn)


class RealRegistry:
    """A :class:`Registry` on ``directory/registry.sqlite3``; :meth:`tenant` adds accounts.

    ``registry`` is what the MQTT endpoint takes as its ``DeviceDirectory``. ``proof_key``: one
    RSA key for every verification certificate (a test-speed choice; the registry does not care
    which key a proof certificate has).
    """

    def __init__(
        self,
        directory: Path,
        *,
        clock: Callable[[], float] = time.time,
        proof_key: rsa.RSAPrivateKey | None = None,
    ) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / "registry.sqlite3"
        self.store = SqliteStore(self.path)
        self.registry = Registry(self.store, clock=clock)
        self._proof_key = proof_key

    def tenant(self, name: str, product_key: str | None = None) -> Tenant:
        """A new account with one eligible product (``product_key``: chosen, else drawn)."""
        return Tenant(self.registry, name, self._proof_key, product_key)

    def close(self) -> None:
        self.store.close()

    def __enter__(self) -> RealRegistry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
