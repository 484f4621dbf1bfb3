"""Shared fixtures: certificates are made at test time, never committed."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from firmware_helpers.pki import CertifiedKey, create_ca, generate_rsa_key, issue_device_certificate


class TestPKI:
    """A tiny trustme-like factory: a CA, and device pairs written as the platform names them."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._key_pool = [generate_rsa_key() for _ in range(2)]
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
        from device_sdk.naming import DeviceFileName

        ca = ca or self.ca
        pair = self.device(product_key, device_name, ca, **kwargs)
        names = DeviceFileName(product_key, device_name, ca.sn)
        directory = directory or self.root
        directory.mkdir(parents=True, exist_ok=True)
        cert_path, key_path = directory / names.cert_name, directory / names.key_name
        pair.write(cert_path, key_path)
        return cert_path, key_path, pair


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestPKI]:
    yield TestPKI(tmp_path_factory.mktemp("pki"))
