"""Fixtures for the serial provisioning tests: issued pairs on disk and store snapshots."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import pytest

from firmware_helpers.serial.protocol import ObjectType
from tests.common import PkiFactory


@dataclass(frozen=True)
class PairFiles:
    cert: Path
    key: Path
    server_ca: Path

    def objects(self) -> dict[ObjectType, bytes]:
        return {
            ObjectType.CERTIFICATE: self.cert.read_bytes(),
            ObjectType.PRIVATE_KEY: self.key.read_bytes(),
            ObjectType.SERVER_CA: self.server_ca.read_bytes(),
        }


@pytest.fixture(scope="session")
def pairs(pki: PkiFactory, tmp_path_factory: pytest.TempPathFactory) -> tuple[PairFiles, PairFiles]:
    """Two devices' pairs (A and B) and a server CA, written as the platform names them."""
    directory = tmp_path_factory.mktemp("serial-pairs")
    server_ca = directory / "server-ca.pem"
    server_ca.write_bytes(pki.new_ca("Test Server CA").cert_pem())
    made = []
    for name in ("devA0001", "devB0002"):
        cert, key, _ = pki.write_device("PKserial01", name, directory=directory)
        made.append(PairFiles(cert, key, server_ca))
    return made[0], made[1]


def snapshot(store: Path) -> dict[str, str]:
    """SHA-256 of every file in a store (staging and journal included, to see leftovers)."""
    return {
        str(p.relative_to(store)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(store.rglob("*"))
        if p.is_file()
    }
