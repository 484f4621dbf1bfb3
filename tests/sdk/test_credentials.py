"""Credentials.from_files / from_pem / from_store: every way a device's pair can be wrong."""

from __future__ import annotations

import logging
import os
import warnings
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from device_sdk import Credentials, Identity
from device_sdk.errors import (
    CertificateFormatError,
    ClockError,
    CredentialError,
    InsecureKeyFileWarning,
    KeyFormatError,
    KeyMismatchError,
    KeyPasswordError,
    UnsupportedKeyTypeError,
)
from device_sdk.fileio import PRIVATE_FILE_MODE, atomic_write
from device_sdk.store_layout import CERTIFICATE_FILE, PRIVATE_KEY_FILE, SERVER_CA_FILE
from tests.sdk.conftest import PK


def _write(path: Path, data: bytes, mode: int = PRIVATE_FILE_MODE) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, data, mode=mode)
    return path


def test_platform_named_pem_pair_loads_with_file_name_hints(
    pki: Any, device_files: tuple[Path, Path]
) -> None:
    cert, key = device_files
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a 0600 key must not warn
        creds = Credentials.from_files(cert, key)
    assert creds.sn == format(creds.certificate.serial_number, "x")
    assert creds.file_name is not None
    assert (creds.file_name.product_key, creds.file_name.device_name) == (PK, "sensor01")
    assert creds.file_name.ca_sn == pki.ca.sn
    assert creds.hinted_identity == Identity(PK, "sensor01")
    assert creds.intermediates == ()
    assert "PRIVATE" not in repr(creds) and creds.sn in repr(creds)


def test_der_certificate_and_encrypted_pkcs8_key(pki: Any, tmp_path: Path) -> None:
    dev = pki.device(PK, "sensor02")
    der = dev.certificate.public_bytes(serialization.Encoding.DER)
    enc = dev.key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"s3cret"),
    )
    cert = _write(tmp_path / "device.der", der, 0o644)
    key = _write(tmp_path / "device.p8", enc)
    for password in (b"s3cret", "s3cret"):
        creds = Credentials.from_files(cert, key, password=password)
        assert creds.certificate == dev.certificate
    assert creds.file_name is None and creds.hinted_identity is None


def test_intermediates_after_the_leaf_are_kept(pki: Any) -> None:
    dev = pki.device(PK, "sensor03")
    creds = Credentials.from_pem(dev.cert_pem() + pki.ca.cert_pem(), dev.key_pem())
    assert creds.certificate == dev.certificate
    assert creds.intermediates == (pki.ca.certificate,)


def test_missing_files_name_the_file(tmp_path: Path, device_files: tuple[Path, Path]) -> None:
    cert, key = device_files
    with pytest.raises(CertificateFormatError, match=r"cannot read certificate file .*nope\.cer"):
        Credentials.from_files(tmp_path / "nope.cer", key)
    with pytest.raises(KeyFormatError, match=r"cannot read key file .*nope\.key"):
        Credentials.from_files(cert, tmp_path / "nope.key")


def test_swapped_or_garbage_files(tmp_path: Path, device_files: tuple[Path, Path]) -> None:
    cert, key = device_files
    with pytest.raises(CertificateFormatError, match="no CERTIFICATE block"):
        Credentials.from_files(key, key)
    with pytest.raises(KeyFormatError, match="no PRIVATE KEY block"):
        Credentials.from_files(cert, cert)
    garbage = _write(tmp_path / "garbage.cer", b"\x00\x01 not a certificate")
    with pytest.raises(CertificateFormatError, match="neither a PEM nor a DER"):
        Credentials.from_files(garbage, key)
    empty = _write(tmp_path / "empty.key", b"")
    with pytest.raises(KeyFormatError, match="empty"):
        Credentials.from_files(cert, empty)


def test_encrypted_key_without_or_with_wrong_password(pki: Any, tmp_path: Path) -> None:
    dev = pki.device(PK, "sensor04")
    enc = dev.key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"right"),
    )
    cert = _write(tmp_path / "d.cer", dev.cert_pem(), 0o644)
    key = _write(tmp_path / "d.key", enc)
    with pytest.raises(KeyPasswordError, match="encrypted; give its password"):
        Credentials.from_files(cert, key)
    with pytest.raises(KeyPasswordError, match="wrong password"):
        Credentials.from_files(cert, key, password="wrong")
    plain = _write(tmp_path / "p.key", dev.key_pem())
    with pytest.raises(KeyPasswordError, match="not encrypted, but a password was given"):
        Credentials.from_files(cert, plain, password="x")


def test_key_of_another_device_is_refused(pki: Any) -> None:
    dev, other = pki.device(PK, "sensor05"), pki.device(PK, "sensor06")
    with pytest.raises(KeyMismatchError, match="does not belong to the certificate"):
        Credentials.from_pem(dev.cert_pem(), other.key_pem())


def _ec_certificate(key: ec.EllipticCurvePrivateKey) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ec-device")])
    now = datetime.now(UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(0xEC01)
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=1))
        .sign(key, hashes.SHA256())
    )


def test_ec_certificate_or_key_is_refused(pki: Any) -> None:
    ec_key = ec.generate_private_key(ec.SECP256R1())
    ec_cert = _ec_certificate(ec_key)
    ec_key_pem = ec_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    ec_cert_pem = ec_cert.public_bytes(serialization.Encoding.PEM)
    with pytest.raises(UnsupportedKeyTypeError, match=r"EC .*only RSA"):
        Credentials.from_pem(ec_cert_pem, ec_key_pem)
    dev = pki.device(PK, "sensor07")
    with pytest.raises(UnsupportedKeyTypeError, match="only RSA keys"):
        Credentials.from_pem(dev.cert_pem(), ec_key_pem)
    assert issubclass(UnsupportedKeyTypeError, CredentialError)


def test_clock_before_the_certificate_shows_both_times(pki: Any) -> None:
    dev = pki.device(PK, "sensor08")
    boot = datetime(1970, 1, 1, 0, 0, 5, tzinfo=UTC)
    with pytest.raises(ClockError) as info:
        Credentials.from_pem(dev.cert_pem(), dev.key_pem(), now=boot)
    message = str(info.value)
    assert "not yet valid" in message and "1970-01-01 00:00:05Z" in message
    assert f"{dev.certificate.not_valid_before_utc:%Y-%m-%d %H:%M:%S}Z" in message
    assert "clock may be wrong" in message
    assert info.value.now == boot


def test_expired_certificate(pki: Any) -> None:
    old = pki.device(PK, "sensor09", days=1, now=datetime.now(UTC) - timedelta(days=10))
    with pytest.raises(ClockError, match="has expired"):
        Credentials.from_pem(old.cert_pem(), old.key_pem())


def test_loose_key_permissions_warn_with_the_fix(
    device_files: tuple[Path, Path], caplog: pytest.LogCaptureFixture
) -> None:
    cert, key = device_files
    os.chmod(key, 0o644)
    with (
        caplog.at_level(logging.WARNING, logger="device_sdk"),
        pytest.warns(InsecureKeyFileWarning, match=r"mode 0644.*chmod 600") as record,
    ):
        Credentials.from_files(cert, key)
    # said once: as a warning, not also as a log record (the CLI printed it twice)
    assert len(record) == 1
    assert not any("accessible by group or others" in r.getMessage() for r in caplog.records)
    os.chmod(key, 0o600)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Credentials.from_files(cert, key)


def test_from_store_reads_the_provisioned_layout(pki: Any, tmp_path: Path) -> None:
    dev = pki.device(PK, "sensor10")
    store = tmp_path / "store"
    store.mkdir(mode=0o700)
    _write(store / CERTIFICATE_FILE, dev.cert_pem(), 0o644)
    _write(store / PRIVATE_KEY_FILE, dev.key_pem())
    creds = Credentials.from_store(store)
    assert creds.certificate == dev.certificate and creds.server_ca is None
    _write(store / SERVER_CA_FILE, pki.ca.cert_pem(), 0o644)
    assert Credentials.from_store(store).server_ca == store / SERVER_CA_FILE


def test_from_store_missing_directory_or_file(tmp_path: Path) -> None:
    with pytest.raises(CredentialError, match=r"does not exist.*provision the board first"):
        Credentials.from_store(tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CertificateFormatError, match=r"device\.cer"):
        Credentials.from_store(tmp_path / "empty")


def _inconsistent_key_pem(key_pem: bytes) -> bytes:
    """The same public key with a corrupted CRT exponent: only OpenSSL's RSA check sees it."""
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = serialization.load_pem_private_key(key_pem, password=None)
    assert isinstance(key, rsa.RSAPrivateKey)
    n = key.private_numbers()
    broken = rsa.RSAPrivateNumbers(n.p, n.q, n.d, n.dmp1 ^ 2, n.dmq1, n.iqmp, n.public_numbers)
    return broken.private_key(unsafe_skip_rsa_key_validation=True).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def test_check_key_false_skips_only_the_rsa_consistency_check(pki: Any, tmp_path: Path) -> None:
    dev, other = pki.device(PK, "sensor20"), pki.device(PK, "sensor21")
    broken = _inconsistent_key_pem(dev.key_pem())
    with pytest.raises(KeyFormatError):
        Credentials.from_pem(dev.cert_pem(), broken)
    creds = Credentials.from_pem(dev.cert_pem(), broken, check_key=False)
    assert creds.sn == dev.sn
    cert = _write(tmp_path / "d.cer", dev.cert_pem(), 0o644)
    key = _write(tmp_path / "d.key", broken)
    with pytest.raises(KeyFormatError, match=str(key)):
        Credentials.from_files(cert, key)
    assert Credentials.from_files(cert, key, check_key=False).sn == dev.sn
    # the key must still belong to the certificate
    with pytest.raises(KeyMismatchError, match="does not belong to the certificate"):
        Credentials.from_pem(dev.cert_pem(), other.key_pem(), check_key=False)
    with pytest.raises(KeyMismatchError, match="does not belong to the certificate"):
        Credentials.from_files(cert, _write(tmp_path / "o.key", other.key_pem()), check_key=False)


# --- the device key without cryptography (device_sdk.keyfile) ----------------------------------


def _key_bytes(dev: Any, encoding: Any, fmt: Any, password: bytes | None = None) -> bytes:
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(password)
        if password
        else serialization.NoEncryption()
    )
    data: bytes = dev.key.private_bytes(encoding, fmt, encryption)
    return data


def test_every_key_format_loads_and_reaches_openssl(pki: Any) -> None:
    dev = pki.device(PK, "sensor22")
    der, pem = serialization.Encoding.DER, serialization.Encoding.PEM
    pkcs1, pkcs8 = serialization.PrivateFormat.TraditionalOpenSSL, serialization.PrivateFormat.PKCS8
    for key, password in [
        (_key_bytes(dev, der, pkcs1), None),
        (_key_bytes(dev, der, pkcs8), None),
        (_key_bytes(dev, der, pkcs8, b"pw"), b"pw"),
        (_key_bytes(dev, pem, pkcs1, b"pw"), b"pw"),  # Proc-Type: 4,ENCRYPTED
        (dev.cert_pem() + dev.key_pem(), None),  # a combined file: the key block is used
    ]:
        for check_key in (True, False):
            creds = Credentials.from_pem(dev.cert_pem(), key, password, check_key=check_key)
            assert creds.key.kind == ("RSA" if check_key or password is None else None)
            assert creds.private_key.public_key().public_numbers().n == (
                dev.key.public_key().public_numbers().n
            )


def test_a_wrong_password_is_found_by_openssl_too(pki: Any) -> None:
    dev = pki.device(PK, "sensor23")
    enc = _key_bytes(dev, serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, b"right")
    with pytest.raises(KeyPasswordError, match="wrong password"):
        Credentials.from_pem(dev.cert_pem(), enc, "wrong", check_key=False)
    with pytest.raises(KeyPasswordError, match="encrypted; give its password"):
        Credentials.from_pem(dev.cert_pem(), enc, check_key=False)


def test_an_ec_key_in_sec1_or_der_is_named(pki: Any) -> None:
    dev = pki.device(PK, "sensor24")
    ec_key = ec.generate_private_key(ec.SECP256R1())
    for fmt, encoding in [
        (serialization.PrivateFormat.TraditionalOpenSSL, serialization.Encoding.PEM),
        (serialization.PrivateFormat.TraditionalOpenSSL, serialization.Encoding.DER),
        (serialization.PrivateFormat.PKCS8, serialization.Encoding.DER),
    ]:
        data = ec_key.private_bytes(encoding, fmt, serialization.NoEncryption())
        with pytest.raises(
            UnsupportedKeyTypeError, match="is a EC key; the platform supports only"
        ):
            Credentials.from_pem(dev.cert_pem(), data)


def test_a_damaged_rsa_key_says_what_is_wrong(pki: Any) -> None:
    dev = pki.device(PK, "sensor25")
    with pytest.raises(KeyFormatError, match="RSA key is damaged: its CRT values are wrong"):
        Credentials.from_pem(dev.cert_pem(), _inconsistent_key_pem(dev.key_pem()))
    with pytest.raises(KeyFormatError, match=r"not a readable private key \(PKCS#1, PKCS#8"):
        Credentials.from_pem(dev.cert_pem(), dev.key_pem().replace(b"MII", b"MIJ", 1))
    with pytest.raises(KeyFormatError, match="not a readable private key"):
        Credentials.from_pem(dev.cert_pem(), b"\x30\x03\x02\x01\x05")
