"""SDK test fixtures: device credentials on disk and a real Mosquitto broker requiring
client certificates (the generic-broker path)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.common import PkiFactory
from tests.sdk.brokers import Mosquitto, run_mosquitto

PK = "a1B2c3D4e5F"


@pytest.fixture
def device_files(pki: PkiFactory, tmp_path: Path) -> tuple[Path, Path]:
    """A device's ``[PK]_[DN]_[CA_SN].cer/.key`` pair (key 0600), signed by the test CA."""
    cert, key, _pair = pki.write_device(PK, "sensor01", directory=tmp_path / "creds")
    return cert, key


@pytest.fixture(scope="module")
def mosquitto(pki: PkiFactory, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosquitto]:
    with run_mosquitto(tmp_path_factory.mktemp("mosquitto"), pki.ca.cert_pem()) as broker:
        yield broker
