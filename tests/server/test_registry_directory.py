"""The registry as the MQTT endpoint's DeviceDirectory: who is this certificate, still?"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from firmware_helpers.pki import CertifiedKey, create_ca, issue_device_certificate
from server_stub.ports import AuthenticatedDevice, AuthRefused
from server_stub.registry import Registry
from server_stub.store import SqliteStore
from server_stub.store.base import AccountRecord, CaRecord, ProductRecord
from tests.server.conftest import (
    csv_bytes,
    openssl_ca,
    openssl_device_cert,
    openssl_verification_cert,
    register,
)


def _accepted(decision: object) -> AuthenticatedDevice:
    assert isinstance(decision, AuthenticatedDevice), decision
    return decision


def _refused(decision: object) -> str:
    assert isinstance(decision, AuthRefused), decision
    return decision.reason


@pytest.fixture
def device(
    registry: Registry,
    account: AccountRecord,
    product: ProductRecord,
    registered_ca: CaRecord,
    test_ca: CertifiedKey,
) -> CertifiedKey:
    pair = issue_device_certificate(test_ca, "dev-0001", product_key=product.product_key)
    registry.associate(
        account,
        registered_ca.ca_sn,
        csv_bytes([(product.product_key, "dev-0001", pair.sn.upper())]),
    )
    return pair


def test_openssl_made_ca_and_version1_device_certificate_authenticate(
    registry: Registry, account: AccountRecord, product: ProductRecord, tmp_path: Path
) -> None:
    ca = openssl_ca(tmp_path / "ca")
    ver = openssl_verification_cert(tmp_path / "v", ca, registry.registration_code(account))
    record = registry.register_ca(
        account, name="openssl_ca", ca_data=ca.cert.read_bytes(), verification_data=ver.read_bytes()
    )
    cert_path = openssl_device_cert(tmp_path / "d", ca, "sensor-01", "00C0FFEE")
    leaf = x509.load_pem_x509_certificate(cert_path.read_bytes())
    assert leaf.version == x509.Version.v1
    registry.associate(
        account, record.ca_sn, csv_bytes([(product.product_key, "sensor-01", "c0ffee")])
    )
    got = _accepted(registry.authenticate(leaf))
    assert got == AuthenticatedDevice(
        account.id, product.product_key, "sensor-01", record.ca_sn, "c0ffee"
    )
    assert registry.is_current(got)


def test_two_cas_with_the_same_subject_are_told_apart_by_key(registry: Registry) -> None:
    """Both accounts' CAs are named alike and both devices have SN 1: only keys decide."""
    results = []
    for name in ("acct_one", "acct_two"):
        acct, _ = registry.create_account(name)
        prod = registry.create_product(acct, name="p")
        ca = create_ca("Same Name CA")
        rec = register(registry, acct, ca, name=f"{name}_ca")
        registry.associate(acct, rec.ca_sn, csv_bytes([(prod.product_key, f"{name}-dev", "1")]))
        leaf = issue_device_certificate(ca, f"{name}-dev", serial=1).certificate
        results.append((acct, prod, rec, leaf))
    assert results[0][3].issuer == results[1][3].issuer
    for acct, prod, rec, leaf in results:
        got = _accepted(registry.authenticate(leaf))
        assert (got.account_id, got.product_key, got.ca_sn) == (
            acct.id,
            prod.product_key,
            rec.ca_sn,
        )


def test_unknown_issuer_and_impostor_key_are_refused(
    registry: Registry, device: CertifiedKey, test_ca: CertifiedKey
) -> None:
    stranger = issue_device_certificate(create_ca("Stranger CA"), "dev-0001").certificate
    assert "no registered CA has the subject 'CN=Stranger CA'" in _refused(
        registry.authenticate(stranger)
    )
    impostor_ca = create_ca("Registry Test CA")
    forged = issue_device_certificate(impostor_ca, "dev-0001", serial=int(device.sn, 16))
    decision = registry.authenticate(forged.certificate)
    assert _refused(decision) == (
        "the signature does not verify with the key of any of the 1 registered CA(s) "
        "named 'CN=Registry Test CA'"
    )
    assert isinstance(decision, AuthRefused) and decision.cert_sn == device.sn


def test_unassociated_sn_is_refused(
    registry: Registry, device: CertifiedKey, test_ca: CertifiedKey, registered_ca: CaRecord
) -> None:
    other = issue_device_certificate(test_ca, "dev-0002")
    assert _refused(registry.authenticate(other.certificate)) == (
        f"certificate SN {other.sn} is not associated with CA {registered_ca.ca_sn}"
    )


def test_disabled_device_is_refused_and_live_session_is_no_longer_current(
    registry: Registry, account: AccountRecord, product: ProductRecord, device: CertifiedKey
) -> None:
    session = _accepted(registry.authenticate(device.certificate))
    g0 = registry.trust_generation
    registry.set_device_status(account, product.product_key, "dev-0001", "disabled")
    assert registry.trust_generation != g0
    assert not registry.is_current(session)
    assert _refused(registry.authenticate(device.certificate)) == (
        f"device {product.product_key}/dev-0001 is disabled"
    )
    registry.set_device_status(account, product.product_key, "dev-0001", "enabled")
    assert registry.is_current(session)


def test_inactive_or_deleted_ca_stops_its_devices(
    registry: Registry, account: AccountRecord, registered_ca: CaRecord, device: CertifiedKey
) -> None:
    session = _accepted(registry.authenticate(device.certificate))
    registry.set_ca_status(account, registered_ca.ca_sn, "inactive")
    assert not registry.is_current(session)
    assert f"CA {registered_ca.ca_sn} is disabled" in _refused(
        registry.authenticate(device.certificate)
    )
    registry.set_ca_status(account, registered_ca.ca_sn, "active")
    assert registry.is_current(session)
    registry.delete_association(account, registered_ca.ca_sn, device.sn)
    assert not registry.is_current(session)
    registry.delete_ca(account, registered_ca.ca_sn)
    assert registry.active_ca_certificates() == ()


def test_non_rsa_device_certificate_is_refused(
    registry: Registry,
    account: AccountRecord,
    product: ProductRecord,
    registered_ca: CaRecord,
    test_ca: CertifiedKey,
) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ec-dev")]))
        .issuer_name(test_ca.certificate.subject)
        .public_key(key.public_key())
        .serial_number(0xEC)
        .not_valid_before(now - timedelta(hours=1))
        .not_valid_after(now + timedelta(days=1))
        .sign(test_ca.key, hashes.SHA256())
    )
    registry.associate(
        account, registered_ca.ca_sn, csv_bytes([(product.product_key, "ec-dev", "ec")])
    )
    assert _refused(registry.authenticate(leaf)) == (
        "the device certificate's key is not RSA; only RSA is supported"
    )


def test_expired_device_certificate_is_refused(
    registry: Registry,
    account: AccountRecord,
    product: ProductRecord,
    registered_ca: CaRecord,
    test_ca: CertifiedKey,
) -> None:
    old = issue_device_certificate(test_ca, "old-dev", days=1, now=datetime(2021, 1, 1, tzinfo=UTC))
    registry.associate(
        account, registered_ca.ca_sn, csv_bytes([(product.product_key, "old-dev", old.sn)])
    )
    assert _refused(registry.authenticate(old.certificate)).startswith(
        "device certificate has expired"
    )


def test_product_no_longer_eligible_is_refused(
    registry: Registry, store: SqliteStore, product: ProductRecord, device: CertifiedKey
) -> None:
    session = _accepted(registry.authenticate(device.certificate))
    with store.atomic():
        store._conn().execute("UPDATE products SET network = 'lorawan' WHERE id = ?", (product.id,))
    assert _refused(registry.authenticate(device.certificate)) == (
        f"product {product.product_key} cannot take private-CA devices: network is lorawan (needs mqtt)"
    )
    assert not registry.is_current(session)


def test_active_ca_certificates_follow_the_generation(
    registry: Registry, account: AccountRecord, test_ca: CertifiedKey
) -> None:
    assert registry.active_ca_certificates() == ()
    g0 = registry.trust_generation
    register(registry, account, test_ca)
    assert registry.trust_generation > g0
    assert list(registry.active_ca_certificates()) == [test_ca.certificate]


def test_authenticate_on_one_thread_while_another_writes(
    registry: Registry,
    account: AccountRecord,
    product: ProductRecord,
    registered_ca: CaRecord,
    device: CertifiedKey,
) -> None:
    """The MQTT loop thread authenticates while HTTP worker threads import associations."""
    import threading

    errors: list[BaseException] = []

    def writer() -> None:
        try:
            for batch in range(5):
                rows = [
                    (
                        product.product_key,
                        f"bulk-{batch}-{i:04d}",
                        format(0xB0000 + batch * 1000 + i, "x"),
                    )
                    for i in range(200)
                ]
                registry.associate(account, registered_ca.ca_sn, csv_bytes(rows))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    thread = threading.Thread(target=writer)
    thread.start()
    decisions = []
    while thread.is_alive():
        decisions.append(registry.authenticate(device.certificate))
    thread.join()
    assert not errors
    assert decisions and all(isinstance(d, AuthenticatedDevice) for d in decisions)
    assert len(registry.list_associations(account, registered_ca.ca_sn)) == 1001
