"""Making certificates: private CAs, verification certificates, device and server certificates.

Reading and checking certificates is the shared model in :mod:`device_sdk.certs`; this module
only *makes* them, with ``cryptography``. Everything returns a :class:`CertifiedKey` (a
certificate with its RSA key) that knows how to write itself in the platform's file formats.
"""

from __future__ import annotations

import ipaddress
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from device_sdk.certs import certificate_sn, rsa_key_pkcs1_pem
from device_sdk.fileio import PRIVATE_FILE_MODE, PUBLIC_FILE_MODE, atomic_write
from firmware_helpers.defaults import DEFAULT_CERT_DAYS, DEFAULT_KEY_SIZE

#: Backdating absorbs small clock differences between the issuer and the verifier.
BACKDATE = timedelta(minutes=5)


def generate_rsa_key(key_size: int = DEFAULT_KEY_SIZE) -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=key_size)


def random_serial(bits: int = 64) -> int:
    """A random positive SN of exactly ``bits`` bits (top bit set, so never shorter)."""
    return secrets.randbits(bits - 1) | (1 << (bits - 1))


@dataclass(frozen=True)
class CertifiedKey:
    """A certificate and the RSA private key that belongs to it."""

    certificate: x509.Certificate
    key: rsa.RSAPrivateKey

    @property
    def sn(self) -> str:
        return certificate_sn(self.certificate)

    def cert_pem(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    def key_pem(self) -> bytes:
        """PKCS#1 (``-----BEGIN RSA PRIVATE KEY-----``), the platform's documented form."""
        return rsa_key_pkcs1_pem(self.key)

    def write(self, cert_path: str | Path, key_path: str | Path) -> None:
        """Key first (0600), then certificate (0644), each atomically."""
        atomic_write(key_path, self.key_pem(), mode=PRIVATE_FILE_MODE)
        atomic_write(cert_path, self.cert_pem(), mode=PUBLIC_FILE_MODE)


def _name(common_name: str, organization: str | None = None) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    if organization:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization))
    return x509.Name(attrs)


def _window(days: int, now: datetime | None) -> tuple[datetime, datetime]:
    start = (now or datetime.now(UTC)) - BACKDATE
    return start, start + BACKDATE + timedelta(days=days)


def create_ca(
    common_name: str,
    *,
    key_size: int = DEFAULT_KEY_SIZE,
    days: int = DEFAULT_CERT_DAYS,
    key: rsa.RSAPrivateKey | None = None,
    serial: int | None = None,
    organization: str | None = None,
    now: datetime | None = None,
) -> CertifiedKey:
    """A self-signed RSA CA (CA=true, keyCertSign, cRLSign) for private-CA device certificates."""
    key = key or generate_rsa_key(key_size)
    subject = _name(common_name, organization)
    not_before, not_after = _window(days, now)
    public = key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(public)
        .serial_number(serial or random_serial())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )
    return CertifiedKey(cert, key)


def _leaf_builder(
    ca: CertifiedKey,
    subject: x509.Name,
    public: rsa.RSAPublicKey,
    serial: int,
    not_before: datetime,
    not_after: datetime,
) -> x509.CertificateBuilder:
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca.certificate.subject)
        .public_key(public)
        .serial_number(serial)
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_authority_key_id(ca), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
    )


def _authority_key_id(ca: CertifiedKey) -> x509.AuthorityKeyIdentifier:
    """RFC 5280 4.2.1.1: every certificate but a self-signed root names its issuer's key.

    Taken from the CA's own Subject Key Identifier when it has one (so chain builders match
    them), else computed from the CA's public key, as RFC 5280 4.2.1.2 method (1) does.
    """
    try:
        ski = ca.certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    except x509.ExtensionNotFound:
        return x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key())
    return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski.value)


def issue_verification_certificate(
    ca: CertifiedKey,
    registration_code: str,
    *,
    key: rsa.RSAPrivateKey | None = None,
    days: int = 300,
    now: datetime | None = None,
) -> CertifiedKey:
    """What ``openssl genrsa`` + ``req`` (CN = registration code) + ``x509 -req -sha512`` make.

    Unlike ``openssl x509 -req`` without an extensions file (a version 1 certificate, which the
    registry also accepts and the tests feed it through the real ``openssl`` command line), it
    carries the two key identifiers, so that it passes an RFC 5280 linter: the Authority Key
    Identifier (required in every certificate not self-signed) and the Subject Key Identifier.
    """
    key = key or generate_rsa_key()
    not_before, not_after = _window(days, now)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(registration_code))
        .issuer_name(ca.certificate.subject)
        .public_key(key.public_key())
        .serial_number(random_serial())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(_authority_key_id(ca), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(ca.key, hashes.SHA512())
    )
    return CertifiedKey(cert, key)


def issue_device_certificate(
    ca: CertifiedKey,
    device_name: str,
    *,
    product_key: str | None = None,
    key: rsa.RSAPrivateKey | None = None,
    key_size: int = DEFAULT_KEY_SIZE,
    serial: int | None = None,
    days: int = DEFAULT_CERT_DAYS,
    now: datetime | None = None,
) -> CertifiedKey:
    """An RSA client certificate (clientAuth) for one device, signed by ``ca``."""
    key = key or generate_rsa_key(key_size)
    cert = build_device_certificate(
        ca,
        key.public_key(),
        device_name,
        product_key=product_key,
        serial=serial,
        days=days,
        now=now,
    )
    return CertifiedKey(cert, key)


def build_device_certificate(
    ca: CertifiedKey,
    public_key: rsa.RSAPublicKey,
    device_name: str,
    *,
    product_key: str | None = None,
    serial: int | None = None,
    days: int = DEFAULT_CERT_DAYS,
    now: datetime | None = None,
) -> x509.Certificate:
    """The device certificate for ``public_key``, signed by ``ca``.

    Separate from :func:`issue_device_certificate` so that batch issuance can generate keys in
    worker processes and sign here without ever moving a private key between processes.
    """
    not_before, not_after = _window(days, now)
    return (
        _leaf_builder(
            ca,
            _name(device_name, product_key),
            public_key,
            serial or random_serial(),
            not_before,
            not_after,
        )
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=True,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(ca.key, hashes.SHA256())
    )


def issue_server_certificate(
    ca: CertifiedKey,
    hostnames: Iterable[str] = ("localhost", "127.0.0.1", "::1"),
    *,
    key_size: int = DEFAULT_KEY_SIZE,
    days: int = 825,
    now: datetime | None = None,
) -> CertifiedKey:
    """A TLS server certificate with the given DNS names and IP addresses as SANs."""
    names: list[x509.GeneralName] = []
    seen: set[str] = set()
    for host in hostnames:
        if host in seen:
            continue
        seen.add(host)
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    key = generate_rsa_key(key_size)
    not_before, not_after = _window(days, now)
    first = next(iter(seen), "localhost")
    cert = (
        _leaf_builder(ca, _name(first), key.public_key(), random_serial(), not_before, not_after)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca.key, hashes.SHA256())
    )
    return CertifiedKey(cert, key)
