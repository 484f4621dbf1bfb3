"""The certificate model every part of the kit shares.

Loading certificates (PEM with any number of certificates, or DER) and private keys (PKCS#1,
PKCS#8, SEC1; encrypted or not), the RSA rule, validity against a clock, key/certificate
matching, and the one signature check that identifies an issuing CA *by its key*, never by its
subject name alone. The server uses it to check uploads and to authenticate devices, the SDK to
load a device's pair, the firmware helpers to issue and export.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificateIssuerPublicKeyTypes,
    PrivateKeyTypes,
)
from cryptography.x509.oid import NameOID

from device_sdk.errors import (
    CertificateFormatError,
    ClockError,
    CredentialError,
    KeyFormatError,
    KeyMismatchError,
    KeyPasswordError,
    UnsupportedKeyTypeError,
)
from device_sdk.serials import normalize_sn

PEM_CERT_BEGIN = b"-----BEGIN CERTIFICATE-----"
PEM_CERT_END = b"-----END CERTIFICATE-----"

#: Larger inputs are refused before parsing: no real certificate chain comes near this.
MAX_CERTIFICATE_FILE_BYTES = 1024 * 1024
MAX_CERTIFICATES_PER_FILE = 16


# --- certificates ------------------------------------------------------------------------------


def load_certificates(data: bytes, *, source: str = "certificate") -> list[x509.Certificate]:
    """Parse every certificate in ``data``: PEM (one or more blocks, leaf first) or one DER."""
    if len(data) > MAX_CERTIFICATE_FILE_BYTES:
        raise CertificateFormatError(
            f"{source}: {len(data)} bytes is too large for a certificate file "
            f"(limit {MAX_CERTIFICATE_FILE_BYTES})",
            source=source,
        )
    if not data.strip():
        raise CertificateFormatError(f"{source}: the file is empty", source=source)
    if b"-----BEGIN" in data:
        if PEM_CERT_BEGIN not in data:
            raise CertificateFormatError(
                f"{source}: PEM file holds no CERTIFICATE block (is it a key or a CSR?)",
                source=source,
            )
        if data.count(PEM_CERT_BEGIN) > MAX_CERTIFICATES_PER_FILE:
            raise CertificateFormatError(
                f"{source}: more than {MAX_CERTIFICATES_PER_FILE} certificates in one file",
                source=source,
            )
        try:
            certs = x509.load_pem_x509_certificates(data)
        except (ValueError, x509.InvalidVersion) as exc:
            raise CertificateFormatError(
                f"{source}: not a readable PEM certificate ({exc})", source=source
            ) from exc
        return _fully_parsed(certs, source)
    try:
        cert = x509.load_der_x509_certificate(data)
    except (ValueError, x509.InvalidVersion) as exc:
        raise CertificateFormatError(
            f"{source}: neither a PEM nor a DER certificate", source=source
        ) from exc
    return _fully_parsed([cert], source)


def _fully_parsed(certs: list[x509.Certificate], source: str) -> list[x509.Certificate]:
    """Parse the lazily decoded parts now, so a malformed extension or name is refused here.

    ``cryptography`` decodes names and extensions on first access and raises ``ValueError``
    then; found by fuzzing (fuzz/targets.py certificate_upload): a CA upload with a corrupt
    basicConstraints reached ``is_ca`` and escaped as a server error.
    """
    for cert in certs:
        try:
            cert.subject, cert.issuer, cert.extensions  # noqa: B018 (access parses them)
        except Exception as exc:  # ValueError, KeyError (unknown string tag), DuplicateExtension...
            raise CertificateFormatError(
                f"{source}: malformed certificate contents ({exc!r})", source=source
            ) from exc
    return certs


def load_certificate(data: bytes, *, source: str = "certificate") -> x509.Certificate:
    """The first (leaf) certificate of ``data``."""
    return load_certificates(data, source=source)[0]


def read_certificates(path: str | Path) -> list[x509.Certificate]:
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CertificateFormatError(
            f"cannot read certificate file {path}: {exc.strerror or exc}", source=str(path)
        ) from exc
    return load_certificates(data, source=str(path))


def certificate_sn(cert: x509.Certificate) -> str:
    """The certificate's SN in the kit's canonical form (lowercase hex, no leading zeros)."""
    return normalize_sn(cert.serial_number)


def common_name(name: x509.Name) -> str | None:
    attrs = name.get_attributes_for_oid(NameOID.COMMON_NAME)
    if not attrs:
        return None
    value = attrs[0].value
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def fingerprint_sha256(cert: x509.Certificate) -> str:
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def public_key_spki(cert: x509.Certificate) -> bytes:
    """The certificate's public key as DER SubjectPublicKeyInfo: equal bytes, equal key."""
    return cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def to_pem(certs: x509.Certificate | Sequence[x509.Certificate]) -> bytes:
    if isinstance(certs, x509.Certificate):
        certs = [certs]
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


def is_ca(cert: x509.Certificate) -> bool:
    try:
        bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        return False
    return bc.ca


def device_certificate_problem(cert: x509.Certificate) -> str | None:
    """Why ``cert`` cannot be a device certificate, or None when it can.

    Checked by the server before it looks for the issuing CA, on every handshake, so it returns
    the reason instead of raising. A device certificate must not be a CA (basicConstraints
    CA:TRUE): a CA certificate presented as a device could issue "devices" of its own. A
    version-1 certificate without extensions (what ``openssl x509 -req`` makes) is fine. Its SN
    must follow the kit's one SN rule (:func:`device_sdk.serials.normalize_sn`: positive, at
    most 20 bytes), because the SN is how the platform finds the device.
    """
    if is_ca(cert):
        return "the device certificate is a CA certificate (basicConstraints CA:TRUE)"
    try:
        normalize_sn(cert.serial_number)
    except ValueError as exc:
        return f"the device certificate's serial number is unusable: {exc}"
    return None


def is_rsa(cert: x509.Certificate) -> bool:
    try:
        return isinstance(cert.public_key(), rsa.RSAPublicKey)
    except (ValueError, UnsupportedAlgorithm):
        return False


def require_rsa(cert: x509.Certificate, *, what: str = "certificate") -> None:
    """The platform supports only RSA device certificates (and CA keys that sign them)."""
    if not is_rsa(cert):
        kind = _key_kind(cert)
        raise UnsupportedKeyTypeError(
            f"{what} has a {kind} key; the platform supports only RSA certificates"
        )


def _key_kind(cert: x509.Certificate) -> str:
    try:
        key = cert.public_key()
    except (ValueError, UnsupportedAlgorithm):
        return "unsupported"
    if isinstance(key, ec.EllipticCurvePublicKey):
        return f"EC ({key.curve.name})"
    return type(key).__name__.removeprefix("_").replace("PublicKey", "") or "non-RSA"


def check_validity(
    cert: x509.Certificate, *, now: datetime | None = None, what: str = "certificate"
) -> None:
    """Raise :class:`ClockError` unless ``now`` lies in the certificate's validity window."""
    now = now or datetime.now(UTC)
    not_before, not_after = cert.not_valid_before_utc, cert.not_valid_after_utc
    window = f"valid from {not_before:%Y-%m-%d %H:%M:%S}Z to {not_after:%Y-%m-%d %H:%M:%S}Z"
    clock = f"the system clock says {now:%Y-%m-%d %H:%M:%S}Z"
    if now < not_before:
        hint = (
            " The clock may be wrong: a board without a real-time clock often boots in 1970;"
            " wait for time synchronisation (NTP) before connecting."
            if now.year < 2000 or (not_before - now).days > 1
            else ""
        )
        raise ClockError(
            f"{what} is not yet valid: {window}, {clock}.{hint}",
            now=now,
            not_before=not_before,
            not_after=not_after,
        )
    if now > not_after:
        raise ClockError(
            f"{what} has expired: {window}, {clock}. Issue a new certificate, or check the clock.",
            now=now,
            not_before=not_before,
            not_after=not_after,
        )


def signed_by(cert: x509.Certificate, issuer_key: CertificateIssuerPublicKeyTypes | object) -> bool:
    """True when ``issuer_key`` verifies ``cert``'s signature.

    This is how the kit identifies an issuing CA: by the key that verifies the signature. Two CAs
    may share a subject name; only one of them holds the key.
    """
    try:
        if isinstance(issuer_key, rsa.RSAPublicKey):
            hash_alg = cert.signature_hash_algorithm
            if hash_alg is None:
                return False
            params = cert.signature_algorithm_parameters
            pad = params if isinstance(params, padding.PSS) else padding.PKCS1v15()
            issuer_key.verify(cert.signature, cert.tbs_certificate_bytes, pad, hash_alg)
        elif isinstance(issuer_key, ec.EllipticCurvePublicKey):
            hash_alg = cert.signature_hash_algorithm
            if hash_alg is None:
                return False
            issuer_key.verify(cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(hash_alg))
        else:
            return False
    except (InvalidSignature, ValueError, UnsupportedAlgorithm, TypeError):
        return False
    return True


def issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    """``issuer`` names ``cert``'s issuer *and* its key verifies ``cert``'s signature."""
    return cert.issuer == issuer.subject and signed_by(cert, issuer.public_key())


# --- private keys ------------------------------------------------------------------------------


def load_private_key(
    data: bytes,
    *,
    password: bytes | str | None = None,
    source: str = "private key",
    check_rsa_key: bool = True,
) -> PrivateKeyTypes:
    """Parse a private key: PEM (PKCS#1, PKCS#8, SEC1) or DER, encrypted or not.

    ``check_rsa_key=False`` skips OpenSSL's RSA consistency check (~27 ms per 2048-bit key); use
    it only for bytes already checked elsewhere, e.g. a board receiving a key whose SHA-256
    matches the one the provisioning host validated.
    """
    if isinstance(password, str):
        password = password.encode()
    if not data.strip():
        raise KeyFormatError(f"{source}: the file is empty", source=source)
    is_pem = b"-----BEGIN" in data
    if is_pem and b"PRIVATE KEY-----" not in data:
        raise KeyFormatError(
            f"{source}: PEM file holds no PRIVATE KEY block (is it a certificate?)", source=source
        )
    loader = serialization.load_pem_private_key if is_pem else serialization.load_der_private_key
    try:
        return loader(data, password=password, unsafe_skip_rsa_key_validation=not check_rsa_key)
    except TypeError as exc:
        if password is None:
            raise KeyPasswordError(
                f"{source}: the key is encrypted; give its password", source=source
            ) from exc
        raise KeyPasswordError(
            f"{source}: the key is not encrypted, but a password was given", source=source
        ) from exc
    except ValueError as exc:
        encrypted = b"ENCRYPTED" in data or (not is_pem and password is not None)
        if encrypted and password is not None:
            raise KeyPasswordError(
                f"{source}: wrong password for the encrypted key", source=source
            ) from exc
        if b"ENCRYPTED" in data:
            raise KeyPasswordError(
                f"{source}: the key is encrypted; give its password", source=source
            ) from exc
        raise KeyFormatError(
            f"{source}: not a readable private key (PKCS#1, PKCS#8 or SEC1, PEM or DER)",
            source=source,
        ) from exc
    except UnsupportedAlgorithm as exc:
        raise KeyFormatError(f"{source}: unsupported key algorithm ({exc})", source=source) from exc


def read_private_key(
    path: str | Path, *, password: bytes | str | None = None, check_rsa_key: bool = True
) -> PrivateKeyTypes:
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise KeyFormatError(
            f"cannot read key file {path}: {exc.strerror or exc}", source=str(path)
        ) from exc
    return load_private_key(data, password=password, source=str(path), check_rsa_key=check_rsa_key)


def require_rsa_key(key: PrivateKeyTypes, *, source: str = "private key") -> rsa.RSAPrivateKey:
    if not isinstance(key, rsa.RSAPrivateKey):
        kind = type(key).__name__.removeprefix("_").replace("PrivateKey", "")
        raise UnsupportedKeyTypeError(
            f"{source} is a {kind} key; the platform supports only RSA keys", source=source
        )
    return key


def key_matches_certificate(key: PrivateKeyTypes, cert: x509.Certificate) -> bool:
    try:
        cert_pub = cert.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        key_pub = key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    except (ValueError, UnsupportedAlgorithm, AttributeError):
        return False
    return cert_pub == key_pub


def require_key_matches(key: PrivateKeyTypes, cert: x509.Certificate, *, source: str) -> None:
    if not key_matches_certificate(key, cert):
        raise KeyMismatchError(
            f"{source}: the private key does not belong to the certificate "
            f"(SN {certificate_sn(cert)}); are the .cer and .key files from the same device?",
            source=source,
        )


def rsa_key_pkcs1_pem(key: rsa.RSAPrivateKey) -> bytes:
    """``-----BEGIN RSA PRIVATE KEY-----``: the platform's documented device key format."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )


# --- a certificate with its chain and key ------------------------------------------------------


@dataclass(frozen=True)
class CertificateChain:
    """A leaf certificate with any intermediates that followed it in its file."""

    leaf: x509.Certificate
    intermediates: tuple[x509.Certificate, ...] = ()

    @classmethod
    def load(cls, data: bytes, *, source: str = "certificate") -> CertificateChain:
        certs = load_certificates(data, source=source)
        return cls(certs[0], tuple(certs[1:]))

    @property
    def sn(self) -> str:
        return certificate_sn(self.leaf)

    def pem(self) -> bytes:
        return to_pem([self.leaf, *self.intermediates])


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


__all__ = [
    "CertificateChain",
    "CredentialError",
    "certificate_sn",
    "check_validity",
    "common_name",
    "fingerprint_sha256",
    "is_ca",
    "is_rsa",
    "issued_by",
    "key_matches_certificate",
    "load_certificate",
    "load_certificates",
    "load_private_key",
    "read_certificates",
    "read_private_key",
    "require_key_matches",
    "require_rsa",
    "require_rsa_key",
    "rsa_key_pkcs1_pem",
    "sha256_hex",
    "signed_by",
    "to_pem",
]
