"""The shared certificate model: loading, SNs, names, RSA rule, validity, key identity."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from device_sdk import certs
from device_sdk.errors import (
    CertificateFormatError,
    ClockError,
    InvalidNameError,
    InvalidSerialNumberError,
    KeyFormatError,
    KeyMismatchError,
    KeyPasswordError,
    UnsupportedKeyTypeError,
)
from device_sdk.naming import DeviceFileName, validate_ca_name, validate_device_name
from device_sdk.platform import ClientId, parse_username
from device_sdk.serials import normalize_sn
from firmware_helpers.pki import create_ca


@pytest.mark.parametrize(
    ("given", "canonical"),
    [("00AB", "ab"), ("0xab", "ab"), ("AB", "ab"), ("01:ab", "1ab"), (171, "ab"), ("0", "0")],
)
def test_sn_forms_normalise_to_one(given: str | int, canonical: str) -> None:
    assert normalize_sn(given) == canonical


@pytest.mark.parametrize("bad", ["", "xyz", "12 34", "-1", "0x", "g1", "a" * 41])
def test_bad_sn_is_refused_with_its_value(bad: str) -> None:
    with pytest.raises(InvalidSerialNumberError, match="SN"):
        normalize_sn(bad)


def test_file_name_rule_round_trips_and_allows_underscore_in_device_name() -> None:
    name = DeviceFileName.parse("dir/a1B2c3D4e5F_sensor_01_1A2B.cer")
    assert (name.product_key, name.device_name, name.ca_sn) == ("a1B2c3D4e5F", "sensor_01", "1a2b")
    assert name.cert_name == "a1B2c3D4e5F_sensor_01_1a2b.cer"
    assert DeviceFileName.parse(name.key_name) == name


@pytest.mark.parametrize(
    "bad",
    ["device.cer", "pk_dn.cer", "pk__1a.cer", "p-k_dev01_1a.cer", "pk_dev01_zz.cer", "pk_d_1a.cer"],
)
def test_file_name_that_breaks_the_rule_is_refused(bad: str) -> None:
    with pytest.raises(InvalidNameError, match=r"\[ProductKey\]_\[DeviceName\]_\[CA_SN\]"):
        DeviceFileName.parse(bad)


def test_name_rules() -> None:
    validate_device_name("dev-1_@.:x")
    with pytest.raises(InvalidNameError, match="4-32"):
        validate_device_name("abc")
    with pytest.raises(InvalidNameError, match="4-32"):
        validate_device_name("a" * 33)
    validate_ca_name("my_CA_1")
    with pytest.raises(InvalidNameError, match="4-30"):
        validate_ca_name("my-ca")


def test_pem_chain_der_and_garbage(pki) -> None:  # type: ignore[no-untyped-def]
    dev = pki.device("a1B2c3D4e5F", "sensor01")
    pem = dev.cert_pem() + pki.ca.cert_pem()
    chain = certs.load_certificates(pem)
    assert [c.serial_number for c in chain] == [
        dev.certificate.serial_number,
        pki.ca.certificate.serial_number,
    ]
    der = dev.certificate.public_bytes(serialization.Encoding.DER)
    assert certs.load_certificate(der) == dev.certificate
    with pytest.raises(CertificateFormatError, match="neither a PEM nor a DER"):
        certs.load_certificates(b"\x30\x82garbage")
    with pytest.raises(CertificateFormatError, match="no CERTIFICATE block"):
        certs.load_certificates(dev.key_pem())
    with pytest.raises(CertificateFormatError, match="empty"):
        certs.load_certificates(b"  \n")


def test_key_formats_and_passwords(pki) -> None:  # type: ignore[no-untyped-def]
    dev = pki.device("a1B2c3D4e5F", "sensor02")
    pkcs8 = dev.key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    enc = dev.key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"pw"),
    )
    assert dev.key_pem().startswith(b"-----BEGIN RSA PRIVATE KEY-----")
    for blob, pw in [(dev.key_pem(), None), (pkcs8, None), (enc, b"pw")]:
        key = certs.load_private_key(blob, password=pw)
        certs.require_key_matches(key, dev.certificate, source="k")
    with pytest.raises(KeyPasswordError, match="give its password"):
        certs.load_private_key(enc)
    with pytest.raises(KeyPasswordError, match="wrong password"):
        certs.load_private_key(enc, password=b"nope")
    with pytest.raises(KeyFormatError, match="no PRIVATE KEY block"):
        certs.load_private_key(dev.cert_pem())
    other = pki.device("a1B2c3D4e5F", "sensor03")
    with pytest.raises(KeyMismatchError, match="does not belong"):
        certs.require_key_matches(other.key, dev.certificate, source="k")


def test_rsa_rule_and_ec_key_refused() -> None:
    ec_key = ec.generate_private_key(ec.SECP256R1())
    with pytest.raises(UnsupportedKeyTypeError, match="only RSA"):
        certs.require_rsa_key(ec_key)


def test_validity_names_both_times_and_hints_at_the_clock(pki) -> None:  # type: ignore[no-untyped-def]
    dev = pki.device("a1B2c3D4e5F", "sensor04")
    certs.check_validity(dev.certificate)
    with pytest.raises(ClockError, match="1970") as info:
        certs.check_validity(dev.certificate, now=datetime(1970, 1, 1, tzinfo=UTC))
    assert "not yet valid" in str(info.value) and "clock may be wrong" in str(info.value)
    later = datetime.now(UTC) + timedelta(days=20 * 365)
    with pytest.raises(ClockError, match="expired"):
        certs.check_validity(dev.certificate, now=later)


def test_issuer_is_found_by_key_not_by_name(pki) -> None:  # type: ignore[no-untyped-def]
    twin = create_ca(pki.ca.certificate.subject.rfc4514_string().removeprefix("CN="))
    assert twin.certificate.subject == pki.ca.certificate.subject
    dev = pki.device("a1B2c3D4e5F", "sensor05")
    assert certs.issued_by(dev.certificate, pki.ca.certificate)
    assert not certs.issued_by(dev.certificate, twin.certificate)


def test_client_id_and_username_conventions() -> None:
    cid = ClientId.parse("dev01|securemode=2,signmethod=hmacsha1|")
    assert cid.id == "dev01" and cid.param("securemode") == "2"
    assert str(ClientId.for_x509("abc")) == "abc|securemode=2|"
    with pytest.raises(InvalidNameError):
        ClientId.parse("dev|securemode=2")
    ident = parse_username("sensor01&a1B2c3D4e5F")
    assert ident is not None and ident.product_key == "a1B2c3D4e5F"
    assert parse_username("") is None
    with pytest.raises(InvalidNameError, match="DeviceName&ProductKey"):
        parse_username("justaname")
