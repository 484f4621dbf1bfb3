"""The certificate commands' files, end to end through the reference server's registry: register
the CA with the verification certificate, upload the association CSV, authenticate each device."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from device_sdk.certs import read_certificates
from iotx509.cli import main

pytest.importorskip("fastapi")  # the server extra
from server_stub.ports import AuthenticatedDevice
from server_stub.registry import Registry
from server_stub.store import SqliteStore


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[Registry]:
    store = SqliteStore(tmp_path / "registry.sqlite3")
    yield Registry(store)
    store.close()


def test_ca_verification_cert_issue_and_csv_are_accepted_by_the_reference_server(
    registry: Registry, tmp_path: Path
) -> None:
    reg = registry
    account = reg.create_account("factory")[0]
    product = reg.create_product(account, name="thermostats")
    code = reg.registration_code(account)

    ca_dir, vc_dir, out = tmp_path / "ca", tmp_path / "vc", tmp_path / "out"
    assert main(["ca", "create", "--cn", "Factory CA", "--out", str(ca_dir)]) == 0
    assert (
        main(
            [
                "ca",
                "verification-cert",
                "--ca",
                str(ca_dir / "ca.cer"),
                "--ca-key",
                str(ca_dir / "ca.key"),
                "--code",
                code,
                "--out",
                str(vc_dir),
            ]
        )
        == 0
    )
    record = reg.register_ca(
        account,
        name="factory_ca",
        ca_data=(ca_dir / "ca.cer").read_bytes(),
        verification_data=(vc_dir / "verificationCert.crt").read_bytes(),
        ca_filename="ca.cer",
        verification_filename="verificationCert.crt",
    )
    assert (
        main(
            [
                "certs",
                "issue",
                "--ca",
                str(ca_dir / "ca.cer"),
                "--ca-key",
                str(ca_dir / "ca.key"),
                "--product-key",
                product.product_key,
                "--count",
                "3",
                "--prefix",
                "thermo-",
                "--out",
                str(out),
                "--jobs",
                "2",
            ]
        )
        == 0
    )
    assert reg.associate(account, record.ca_sn, (out / "associations.csv").read_bytes()) == 3

    for cert_path in sorted(out.glob("*.cer")):
        decision = reg.authenticate(read_certificates(cert_path)[0])
        assert isinstance(decision, AuthenticatedDevice), decision
        assert decision.product_key == product.product_key
        assert cert_path.name == (
            f"{product.product_key}_{decision.device_name}_{record.ca_sn}.cer"
        )
