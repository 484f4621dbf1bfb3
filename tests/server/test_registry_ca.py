"""CA registration with proof of possession: the documented openssl steps, and every rule."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from firmware_helpers.pki import (
    CertifiedKey,
    create_ca,
    issue_device_certificate,
    issue_verification_certificate,
)
from server_stub.errors import (
    CaCertificateRejectedError,
    CaLimitError,
    ConflictError,
    DuplicateCaError,
    InvalidFieldError,
    NotFoundError,
)
from server_stub.registry import Registry
from server_stub.store import SqliteStore
from server_stub.store.base import AccountRecord, CaRecord
from tests.server.conftest import OPENSSL, openssl_ca, openssl_verification_cert, register


def _register(
    registry: Registry,
    account: AccountRecord,
    ca: bytes,
    verification: bytes,
    name: str = "my_ca",
    ca_file: str = "ca.cer",
    ver_file: str = "v.crt",
) -> CaRecord:
    return registry.register_ca(
        account,
        name=name,
        ca_data=ca,
        verification_data=verification,
        ca_filename=ca_file,
        verification_filename=ver_file,
    )


def _verification(registry: Registry, account: AccountRecord, ca: CertifiedKey) -> bytes:
    return issue_verification_certificate(ca, registry.registration_code(account)).cert_pem()


def test_documented_openssl_steps_register_a_ca(
    registry: Registry, account: AccountRecord, tmp_path: Path
) -> None:
    ca = openssl_ca(tmp_path / "ca")
    ver = openssl_verification_cert(tmp_path / "v", ca, registry.registration_code(account))
    assert x509.load_pem_x509_certificate(ver.read_bytes()).version == x509.Version.v1
    record = registry.register_ca(
        account,
        name="Factory_CA_1",
        ca_data=ca.cert.read_bytes(),
        verification_data=ver.read_bytes(),
        ca_filename=ca.cert.name,
        verification_filename=ver.name,
    )
    serial = (
        subprocess.run(
            [str(OPENSSL), "x509", "-in", str(ca.cert), "-noout", "-serial"],
            capture_output=True,
            text=True,
            check=True,
        )
        .stdout.strip()
        .split("=")[1]
    )
    assert record.ca_sn == serial.lower().lstrip("0")
    assert record.status == "active" and record.subject == "CN=My Private CA"
    assert registry.list_cas(account) == [record]


def test_der_ca_file_is_accepted(
    registry: Registry, account: AccountRecord, test_ca: CertifiedKey
) -> None:
    der = test_ca.certificate.public_bytes(serialization.Encoding.DER)
    record = _register(registry, account, der, _verification(registry, account, test_ca))
    assert record.ca_sn == test_ca.sn


@pytest.mark.parametrize("name", ["abc", "x" * 31, "has-dash", "with space", "ünï_code"])
def test_bad_ca_names_are_refused(
    registry: Registry, account: AccountRecord, test_ca: CertifiedKey, name: str
) -> None:
    with pytest.raises(
        InvalidFieldError, match="4-30 characters of letters, digits and underscore"
    ):
        _register(registry, account, test_ca.cert_pem(), b"", name=name)


@pytest.mark.parametrize(
    ("ca_file", "ver_file", "what"),
    [
        ("ca.txt", "v.crt", "CA certificate file 'ca.txt'"),
        ("ca.pem", "v.key", "verification certificate file 'v.key'"),
    ],
)
def test_file_types_other_than_cer_crt_pem_are_refused(
    registry: Registry,
    account: AccountRecord,
    test_ca: CertifiedKey,
    ca_file: str,
    ver_file: str,
    what: str,
) -> None:
    with pytest.raises(
        InvalidFieldError, match=re.escape(what) + r" must end in \.cer, \.crt or \.pem"
    ):
        _register(registry, account, test_ca.cert_pem(), b"x", ca_file=ca_file, ver_file=ver_file)


def test_unreadable_ca_file_is_refused(
    registry: Registry, account: AccountRecord, test_ca: CertifiedKey
) -> None:
    with pytest.raises(CaCertificateRejectedError, match="CA certificate: neither a PEM nor a DER"):
        _register(registry, account, b"garbage", b"")
    with pytest.raises(CaCertificateRejectedError, match=r"no CERTIFICATE block .is it a key"):
        _register(registry, account, test_ca.key_pem(), b"")


def test_a_non_ca_certificate_is_refused(
    registry: Registry, account: AccountRecord, test_ca: CertifiedKey
) -> None:
    device = issue_device_certificate(test_ca, "dev1")
    with pytest.raises(CaCertificateRejectedError, match="lacks basicConstraints CA=true"):
        _register(registry, account, device.cert_pem(), b"")


def _ec_ca() -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "EC CA")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(7)
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def test_a_non_rsa_ca_is_refused(registry: Registry, account: AccountRecord) -> None:
    cert, _key = _ec_ca()
    pem = cert.public_bytes(serialization.Encoding.PEM)
    with pytest.raises(
        CaCertificateRejectedError, match=r"EC \(secp256r1\) key; the platform supports only RSA"
    ):
        _register(registry, account, pem, b"")


def test_expired_and_not_yet_valid_cas_are_refused(
    registry: Registry, account: AccountRecord
) -> None:
    expired = create_ca("Old CA", days=1, now=datetime(2020, 1, 1, tzinfo=UTC))
    with pytest.raises(CaCertificateRejectedError, match="CA certificate has expired"):
        _register(registry, account, expired.cert_pem(), b"")
    future = create_ca("Future CA", days=10, now=datetime.now(UTC) + timedelta(days=5))
    with pytest.raises(CaCertificateRejectedError, match="CA certificate is not yet valid"):
        _register(registry, account, future.cert_pem(), b"")


def test_verification_cn_must_be_this_accounts_code(
    registry: Registry, account: AccountRecord, test_ca: CertifiedKey
) -> None:
    other, _ = registry.create_account("other")
    wrong = issue_verification_certificate(test_ca, registry.registration_code(other))
    with pytest.raises(
        CaCertificateRejectedError,
        match=r"Common Name is '[0-9a-f]{64}', not this account's registration code",
    ):
        _register(registry, account, test_ca.cert_pem(), wrong.cert_pem())


def test_verification_signed_by_another_key_with_the_same_ca_name_is_refused(
    registry: Registry, account: AccountRecord, test_ca: CertifiedKey
) -> None:
    impostor = create_ca(
        test_ca.certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value  # type: ignore[arg-type]
    )
    assert impostor.certificate.subject == test_ca.certificate.subject
    forged = issue_verification_certificate(impostor, registry.registration_code(account))
    with pytest.raises(
        CaCertificateRejectedError, match="not signed by this CA certificate's private key"
    ):
        _register(registry, account, test_ca.cert_pem(), forged.cert_pem())


def test_expired_verification_certificate_is_refused(
    registry: Registry, account: AccountRecord, test_ca: CertifiedKey
) -> None:
    old = issue_verification_certificate(
        test_ca,
        registry.registration_code(account),
        days=1,
        now=datetime.now(UTC) - timedelta(days=3),
    )
    with pytest.raises(CaCertificateRejectedError, match="verification certificate has expired"):
        _register(registry, account, test_ca.cert_pem(), old.cert_pem())


def test_unreadable_verification_file_is_refused(
    registry: Registry, account: AccountRecord, test_ca: CertifiedKey
) -> None:
    with pytest.raises(
        CaCertificateRejectedError, match="verification certificate: the file is empty"
    ):
        _register(registry, account, test_ca.cert_pem(), b"")


def test_same_ca_cannot_be_registered_twice_in_this_or_another_account(
    registry: Registry, account: AccountRecord, test_ca: CertifiedKey
) -> None:
    first = register(registry, account, test_ca, name="first_ca")
    with pytest.raises(
        DuplicateCaError,
        match=r"already registered in this account as 'first_ca' "
        rf"\(caSn {first.ca_sn}\)",
    ) as exc:
        register(registry, account, test_ca, name="again_ca")
    assert "SHA-256 fingerprint " + ":".join(
        first.fingerprint[i : i + 2] for i in range(0, 64, 2)
    ).upper() in str(exc.value)
    other, _ = registry.create_account("other")
    with pytest.raises(DuplicateCaError, match="already registered by another account"):
        register(registry, other, test_ca, name="their_ca")


def test_at_most_ten_cas_per_account(registry: Registry, account: AccountRecord) -> None:
    for i in range(10):
        register(registry, account, create_ca(f"CA {i}", key_size=2048), name=f"ca_{i:02d}")
    with pytest.raises(CaLimitError, match="already has 10 CA certificates, the maximum is 10"):
        register(registry, account, create_ca("CA 11"), name="ca_11")
    assert len(registry.list_cas(account)) == 10


def test_ca_sn_must_be_unique_in_the_account(registry: Registry, account: AccountRecord) -> None:
    register(registry, account, create_ca("One", serial=0x1234), name="one_ca")
    with pytest.raises(
        ConflictError, match="serial number 1234 is already registered in this account as 'one_ca'"
    ):
        register(registry, account, create_ca("Two", serial=0x1234), name="two_ca")


def test_rejected_registration_leaves_the_store_unchanged(
    registry: Registry, store: SqliteStore, account: AccountRecord, test_ca: CertifiedKey
) -> None:
    register(registry, account, test_ca)
    before = store.row_counts()
    generation = registry.trust_generation
    bad: list[Callable[[], object]] = [
        lambda: register(registry, account, test_ca, name="dup_ca"),
        lambda: _register(registry, account, create_ca("X").cert_pem(), b"nope"),
    ]
    for attempt in bad:
        with pytest.raises((DuplicateCaError, CaCertificateRejectedError)):
            attempt()
    assert store.row_counts() == before
    assert registry.trust_generation == generation


def test_status_changes_and_deletion(
    registry: Registry, account: AccountRecord, test_ca: CertifiedKey
) -> None:
    record = register(registry, account, test_ca)
    g0 = registry.trust_generation
    assert registry.set_ca_status(account, record.ca_sn, "inactive").status == "inactive"
    assert registry.trust_generation > g0
    assert registry.active_ca_certificates() == ()
    with pytest.raises(
        InvalidFieldError, match="CA status 'paused' is not one of active, inactive"
    ):
        registry.set_ca_status(account, record.ca_sn, "paused")
    assert registry.set_ca_status(account, "0" + record.ca_sn.upper(), "active").status == "active"
    assert list(registry.active_ca_certificates()) == [test_ca.certificate]
    registry.delete_ca(account, record.ca_sn)
    with pytest.raises(NotFoundError, match=f"no CA certificate with caSn {record.ca_sn}"):
        registry.ca(account, record.ca_sn)
    assert registry.active_ca_certificates() == ()


def test_cas_are_invisible_to_other_accounts(
    registry: Registry, account: AccountRecord, test_ca: CertifiedKey
) -> None:
    record = register(registry, account, test_ca)
    other, _ = registry.create_account("other")
    assert registry.list_cas(other) == []
    for call in (
        lambda: registry.ca(other, record.ca_sn),
        lambda: registry.set_ca_status(other, record.ca_sn, "inactive"),
        lambda: registry.delete_ca(other, record.ca_sn),
    ):
        with pytest.raises(NotFoundError):
            call()
    assert registry.ca(account, record.ca_sn).status == "active"


def test_malformed_ca_sn_is_not_found(registry: Registry, account: AccountRecord) -> None:
    with pytest.raises(NotFoundError, match="not a hexadecimal number"):
        registry.ca(account, "xyz")
