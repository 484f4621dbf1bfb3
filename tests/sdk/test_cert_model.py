"""The shared certificate model: loading, SNs, names, RSA rule, validity, key identity."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
from cryptography.x509.name import _ASN1Type
from cryptography.x509.oid import NameOID
from hypothesis import given, settings
from hypothesis import strategies as st

from device_sdk import certs, der
from device_sdk.certificate import Certificate
from device_sdk.der import DERError
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


# --- the DER model reads what cryptography reads ------------------------------------------------
#
# One model: every rule reads device_sdk.certificate's fields, for files on a board and for the
# server's cryptography objects alike. cryptography still parses what the kit verifies, so the
# two readers must agree: the same fields from every certificate both accept, the same refusals.
# Allowed differences: the model does not decode what only verification uses, the contents of
# extensions other than basicConstraints and the signature algorithms' parameters (RSASSA-PSS
# and the others, in the certificate and in its TBS part: only verification reads them):
# cryptography's business, checked by load_certificates on the kit's side.


def _cryptography_view(data: bytes) -> tuple[dict[str, object] | None, str]:
    try:
        cert = x509.load_der_x509_certificate(data)
        view: dict[str, object] = {
            "serial": cert.serial_number,
            "version": cert.version.value,
            "not_before": cert.not_valid_before_utc,
            "not_after": cert.not_valid_after_utc,
            "subject": cert.subject.rfc4514_string(),
            "issuer": cert.issuer.rfc4514_string(),
            "subject_cn": certs_common_name_by_cryptography(cert.subject),
            "signature_algorithm": cert.signature_algorithm_oid.dotted_string,
            "tbs": cert.tbs_certificate_bytes,
            "signature": cert.signature,
        }
    except Exception as exc:
        return None, f"certificate: {exc!r}"
    try:
        extensions = cert.extensions
    except Exception as exc:
        return None, f"extension contents: {exc!r}"
    try:
        constraints = extensions.get_extension_for_class(x509.BasicConstraints).value
        view["basic_constraints"] = (constraints.ca, constraints.path_length)
    except x509.ExtensionNotFound:
        view["basic_constraints"] = None
    view["extensions"] = [(e.oid.dotted_string, e.critical) for e in extensions]
    try:
        key = cert.public_key()
    except Exception:
        key = None
    if isinstance(key, rsa.RSAPublicKey):
        numbers = key.public_numbers()
        view["rsa"] = (numbers.n, numbers.e, key.key_size)
    else:
        view["rsa"] = None
    return view, ""


def certs_common_name_by_cryptography(name: x509.Name) -> str | None:
    attrs = name.get_attributes_for_oid(NameOID.COMMON_NAME)
    if not attrs:
        return None
    value = attrs[0].value
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def _model_view(data: bytes) -> tuple[dict[str, object] | None, str]:
    try:
        cert = Certificate.from_der(data)
    except DERError as exc:
        return None, str(exc)
    key = cert.public_key_info
    return {
        "serial": cert.serial_number,
        "version": cert.version,
        "not_before": cert.not_valid_before_utc,
        "not_after": cert.not_valid_after_utc,
        "subject": cert.subject.rfc4514_string(),
        "issuer": cert.issuer.rfc4514_string(),
        "subject_cn": cert.subject.common_name,
        "signature_algorithm": cert.signature_algorithm_oid,
        "tbs": cert.tbs_certificate_bytes,
        "signature": cert.signature,
        "basic_constraints": cert.basic_constraints,
        "extensions": [(e.oid, e.critical) for e in cert.extensions],
        "rsa": (key.rsa_modulus, key.rsa_exponent, key.rsa_key_size) if key.is_rsa else None,
    }, ""


def _assert_readers_agree(data: bytes) -> bool:
    """True when both accepted (fields equal); a refusal by one only is a failure, except
    cryptography's of what the model does not read (see above)."""
    theirs, their_error = _cryptography_view(data)
    ours, our_error = _model_view(data)
    if theirs is not None:
        assert ours == theirs, our_error
        return True
    if ours is not None:
        unread = (
            their_error.startswith("extension contents")
            or "signature_alg" in their_error  # the signature algorithm's parameters
            or ("AlgorithmIdentifier::params" in their_error and "RsaPssParameters" in their_error)
        )
        assert unread, their_error
    return False


_TYPES = list(_ASN1Type)
_ODD_VALUES = ["plain", "a,b+c;d", "#hash", " lead", "trail ", 'q"<>\\', "nul\0x", "Zürich 東京"]


def _odd_name(n: int) -> x509.Name:
    """Names of every string type, odd characters, several and multi-valued RDNs."""
    value = _ODD_VALUES[n % len(_ODD_VALUES)]
    kind = [
        _ASN1Type.UTF8String,
        _ASN1Type.BMPString,
        _ASN1Type.UniversalString,
        _ASN1Type.T61String,
        _ASN1Type.PrintableString,
        _ASN1Type.IA5String,
    ][n % 6]
    if kind in (_ASN1Type.PrintableString, _ASN1Type.IA5String, _ASN1Type.T61String):
        value = "Printable Name " + str(n)
    rdns = [
        x509.RelativeDistinguishedName([x509.NameAttribute(NameOID.COMMON_NAME, value, kind)]),
        x509.RelativeDistinguishedName(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, f"Org {n}"),
                x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, f"Unit+{n}"),
            ]
        ),
    ]
    if n % 3 == 0:
        rdns.insert(
            0, x509.RelativeDistinguishedName([x509.NameAttribute(NameOID.COUNTRY_NAME, "DE")])
        )
    if n % 4 == 1:
        rdns.append(
            x509.RelativeDistinguishedName(
                [x509.NameAttribute(NameOID.DOMAIN_COMPONENT, "example", _ASN1Type.IA5String)]
            )
        )
    if n % 5 == 2:
        rdns.append(
            x509.RelativeDistinguishedName(
                [
                    x509.NameAttribute(
                        NameOID.X500_UNIQUE_IDENTIFIER, b"\x00\xab", _ASN1Type.BitString
                    )
                ]
            )
        )
    if n % 7 == 3:
        rdns = []  # an empty name
    return x509.Name(rdns)


@pytest.fixture(scope="module")
def odd_certificates() -> list[bytes]:
    """40 certificates across key types and sizes, serials, dates, names and extensions."""
    keys: list[CertificateIssuerPrivateKeyTypes] = [
        rsa.generate_private_key(65537, 2048),
        rsa.generate_private_key(3, 1024),
        ec.generate_private_key(ec.SECP256R1()),
        ec.generate_private_key(ec.SECP384R1()),
        ed25519.Ed25519PrivateKey.generate(),
    ]
    serials = [1, 127, 128, 255, 256, 2**63, 2**64 + 1, 2**159 - 1, 0x00FF00FF00FF00FF00FF]
    dates = [
        (datetime(1950, 1, 1, tzinfo=UTC), datetime(2049, 12, 31, 23, 59, 59, tzinfo=UTC)),
        (datetime(1950, 6, 1, tzinfo=UTC), datetime(2050, 1, 1, tzinfo=UTC)),
        (
            datetime(2024, 2, 29, 12, 0, 1, tzinfo=UTC),
            datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC),
        ),
    ]
    made = []
    for n in range(40):
        subject_key, issuer_key = keys[n % 5], keys[(n // 5) % 5]
        algorithm: hashes.SHA256 | hashes.SHA384 | hashes.SHA512 | None
        if isinstance(issuer_key, ed25519.Ed25519PrivateKey):
            algorithm = None
        elif isinstance(issuer_key, rsa.RSAPrivateKey) and n % 3 == 0:
            algorithm = hashes.SHA384()
        else:
            algorithm = hashes.SHA256() if n % 2 == 0 else hashes.SHA512()
        not_before, not_after = dates[n % 3]
        builder = (
            x509.CertificateBuilder()
            .subject_name(_odd_name(n))
            .issuer_name(_odd_name(n + 1))
            .public_key(subject_key.public_key())
            .serial_number(serials[n % len(serials)])
            .not_valid_before(not_before)
            .not_valid_after(not_after)
        )
        if n % 4 != 3:
            builder = builder.add_extension(
                x509.BasicConstraints(ca=n % 2 == 0, path_length=(n % 3 if n % 4 == 0 else None)),
                critical=n % 2 == 0,
            )
        if n % 3 == 1:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.DNSName(f"d{n}.example")]), critical=False
            )
            builder = builder.add_extension(
                x509.SubjectKeyIdentifier.from_public_key(subject_key.public_key()),
                critical=False,
            )
        if n % 5 == 4:
            builder = builder.add_extension(
                x509.UnrecognizedExtension(
                    x509.ObjectIdentifier("1.3.6.1.4.1.99999.1"), b"\x05\x00"
                ),
                critical=False,
            )
        pss = isinstance(issuer_key, rsa.RSAPrivateKey) and n % 6 == 2
        cert = builder.sign(
            issuer_key,
            algorithm,
            rsa_padding=padding.PSS(padding.MGF1(hashes.SHA256()), 32) if pss else None,
        )
        made.append(cert.public_bytes(serialization.Encoding.DER))
    return made


def test_model_reads_what_cryptography_reads(odd_certificates: list[bytes], pki) -> None:  # type: ignore[no-untyped-def]
    device = pki.device("a1B2c3D4e5F", "sensor30")
    for data in [*odd_certificates, device.certificate.public_bytes(serialization.Encoding.DER)]:
        assert _assert_readers_agree(data)


def test_rules_read_the_model_for_cryptography_objects_too(odd_certificates: list[bytes]) -> None:
    for data in odd_certificates:
        theirs, ours = x509.load_der_x509_certificate(data), Certificate.from_der(data)
        assert ours == theirs and theirs == ours and hash(ours) == hash(Certificate.from_der(data))
        for rule in (certs.is_ca, certs.is_rsa, certs.fingerprint_sha256, certs.public_key_spki):
            assert rule(theirs) == rule(ours)
        assert certs.common_name(theirs.subject) == ours.subject.common_name
        assert (
            certs.to_pem(theirs)
            == certs.to_pem(ours)
            == theirs.public_bytes(serialization.Encoding.PEM)
        )
        problem = certs.device_certificate_problem(ours)
        assert problem == certs.device_certificate_problem(theirs)
        if not certs.is_rsa(ours):
            with pytest.raises(
                UnsupportedKeyTypeError, match=r"has a (EC \(secp\d+r1\)|Ed25519) key"
            ):
                certs.require_rsa(ours)


@settings(max_examples=400, deadline=None)
@given(
    which=st.integers(min_value=0, max_value=39),
    changes=st.lists(
        st.tuples(st.integers(min_value=0), st.integers(min_value=0, max_value=255)),
        min_size=1,
        max_size=3,
    ),
)
def test_readers_agree_on_damaged_certificates(
    odd_certificates: list[bytes], which: int, changes: list[tuple[int, int]]
) -> None:
    data = bytearray(odd_certificates[which])
    for position, byte in changes:
        data[position % len(data)] = byte
    _assert_readers_agree(bytes(data))


@settings(max_examples=200, deadline=None)
@given(which=st.integers(min_value=0, max_value=39), cut=st.integers(min_value=0))
def test_readers_agree_on_cut_certificates(
    odd_certificates: list[bytes], which: int, cut: int
) -> None:
    data = odd_certificates[which]
    _assert_readers_agree(data[: cut % len(data)])


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2048))
def test_readers_agree_on_random_bytes(data: bytes) -> None:
    _assert_readers_agree(b"\x30\x82" + len(data).to_bytes(2, "big") + data)
    _assert_readers_agree(data)


# --- DER is strict, and says where ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "says"),
    [
        (b"\x30\x80\x02\x01\x01\x00\x00", "indefinite length is BER"),
        (b"\x30\x81\x03\x02\x01\x01", "not minimally encoded"),
        (b"\x30\x04\x02\x02\x00\x01", "INTEGER is not minimally encoded"),
        (b"\x30\x03\x01\x01\x01", "BOOLEAN is one byte, 0x00 or 0xFF"),
        (b"\x30\x03\x02\x01\x01\x00", "unexpected bytes after"),
        (b"\x30\x05\x02\x01\x01", "5 bytes announced, 3 present"),
        (b"\x30\x03\x1f\x01\x01", "high tag number"),
        (b"\x30\x03\x06\x01\x80", "arc is not minimally encoded"),
    ],
)
def test_der_reader_refuses_ber_and_says_what(data: bytes, says: str) -> None:
    def read_all() -> None:
        outer = der.read_single(data, der.SEQUENCE, "test")
        reader = outer.reader()
        while not reader.at_end():
            element = reader.read()
            if element.tag == der.INTEGER:
                der.integer(element)
            elif element.tag == der.BOOLEAN:
                der.boolean(element)
            elif element.tag == der.OID:
                der.oid(element)

    with pytest.raises(DERError, match=re.escape(says)):
        read_all()


def test_model_refuses_what_cryptography_refuses_with_a_reason(pki) -> None:  # type: ignore[no-untyped-def]
    good = bytearray(pki.ca.certificate.public_bytes(serialization.Encoding.DER))
    version = good.index(b"\xa0\x03\x02\x01\x02")
    v2 = bytes(good[:version] + b"\xa0\x03\x02\x01\x01" + good[version + 5 :])
    for reader in (certs.parse_certificates, certs.load_certificates):
        with pytest.raises(CertificateFormatError, match=r"version: 1 is not X\.509 v1 or v3"):
            reader(v2)
    assert _cryptography_view(v2)[0] is None


def test_no_pem_block_and_broken_base64_are_refused(pki) -> None:  # type: ignore[no-untyped-def]
    pem = pki.ca.cert_pem()
    with pytest.raises(CertificateFormatError, match="not base64"):
        certs.parse_certificates(pem.replace(b"MII", b"M!I", 1))
    with pytest.raises(CertificateFormatError, match="no complete CERTIFICATE block"):
        certs.parse_certificates(pem[: len(pem) // 2])


def test_an_unreadable_basic_constraints_is_a_reason_not_an_exception(pki) -> None:  # type: ignore[no-untyped-def]
    """The server asks on every handshake; a certificate cryptography holds but whose
    basicConstraints the model cannot read (cA FALSE encoded) gets a reason back."""
    ca_der = pki.ca.certificate.public_bytes(serialization.Encoding.DER)
    constraints = b"\x30\x03\x01\x01\xff"  # SEQUENCE { cA TRUE }
    at = ca_der.index(constraints)
    broken = ca_der[:at] + b"\x30\x03\x01\x01\x00" + ca_der[at + len(constraints) :]
    cert = x509.load_der_x509_certificate(broken)  # lazily: the extension is not read yet
    problem = certs.device_certificate_problem(cert)
    assert problem is not None and "cannot be read: basicConstraints" in problem


def test_a_remembered_model_is_the_one_read_from_the_der_the_caller_holds() -> None:
    """The server reads the DER once per connection: the rules then see that model."""
    from device_sdk.certificate import as_model, remember_model

    ca = create_ca("Remembered Model CA")
    data = ca.certificate.public_bytes(serialization.Encoding.DER)
    leaf = x509.load_der_x509_certificate(data)
    model = remember_model(leaf, data)
    assert as_model(leaf) is model
    assert (model.der, model.serial_number, model.is_ca) == (data, leaf.serial_number, True)
    assert certs.device_certificate_problem(leaf) == (
        "the device certificate is a CA certificate (basicConstraints CA:TRUE)"
    )
