"""The certificate model every part of the kit shares, and the rules that read it.

Certificates are read by one reader, :mod:`device_sdk.certificate` (DER, no dependency): every
rule here -- the SN rule, RSA only, validity against a clock, the CA flag, names -- reads its
fields, whether the certificate is a :class:`~device_sdk.certificate.Certificate` read from a
device's file or a ``cryptography`` certificate held by the server (read again by its DER bytes,
:func:`~device_sdk.certificate.as_model`). The SDK's connect path never imports ``cryptography``:
it would bring a second OpenSSL into a board's memory (issue 16).

Why it is one module of about 500 lines: it is the one home of every certificate rule of the
kit (issue 12), and each rule is small; splitting it would give callers several places to look
for "the rule" and invite a second copy.

``cryptography`` stays for what signs or verifies: :func:`signed_by` (the one signature check
that identifies an issuing CA *by its key*, never by its subject name alone), private key
objects, and :func:`load_certificates` for the parts that hand certificates to it (the server,
the firmware helpers). It is imported inside those functions, on first use.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from device_sdk import values
from device_sdk.certificate import Certificate, Name, as_model, foreign_der, pem_blocks
from device_sdk.der import DERError
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

if TYPE_CHECKING:
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.hazmat.primitives.asymmetric.types import (
        CertificateIssuerPublicKeyTypes,
        PrivateKeyTypes,
    )

    CertLike = Certificate | x509.Certificate
    NameLike = Name | x509.Name

PEM_CERT_BEGIN = b"-----BEGIN CERTIFICATE-----"
PEM_CERT_END = b"-----END CERTIFICATE-----"

#: Larger inputs are refused before parsing: no real certificate chain comes near this.
MAX_CERTIFICATE_FILE_BYTES = 1024 * 1024
MAX_CERTIFICATES_PER_FILE = 16


# --- reading certificate files -----------------------------------------------------------------


def parse_certificates(data: bytes, *, source: str = "certificate") -> list[Certificate]:
    """Every certificate in ``data``: PEM (one or more blocks, leaf first) or one DER.

    The one reader of certificate files in the kit (the model; no ``cryptography``).
    """
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
            blocks = pem_blocks(data, b"CERTIFICATE")
        except ValueError as exc:
            raise CertificateFormatError(
                f"{source}: not a readable PEM certificate ({exc})", source=source
            ) from exc
        if not blocks:
            raise CertificateFormatError(
                f"{source}: not a readable PEM certificate (no complete CERTIFICATE block)",
                source=source,
            )
        result = []
        for number, block in enumerate(blocks, 1):
            try:
                result.append(Certificate.from_der(block))
            except DERError as exc:
                where = f"block {number}: " if len(blocks) > 1 else ""
                raise CertificateFormatError(
                    f"{source}: not a readable PEM certificate ({where}{exc})", source=source
                ) from exc
        return result
    try:
        return [Certificate.from_der(data)]
    except DERError as exc:
        raise CertificateFormatError(
            f"{source}: neither a PEM nor a DER certificate ({exc})", source=source
        ) from exc


def parse_certificate(data: bytes, *, source: str = "certificate") -> Certificate:
    """The first (leaf) certificate of ``data``, as the model."""
    return parse_certificates(data, source=source)[0]


def read_certificate_file(path: str | Path) -> list[Certificate]:
    """:func:`parse_certificates` of a file; an unreadable file is a CertificateFormatError."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CertificateFormatError(
            f"cannot read certificate file {path}: {exc.strerror or exc}", source=str(path)
        ) from exc
    return parse_certificates(data, source=str(path))


def load_certificates(data: bytes, *, source: str = "certificate") -> list[x509.Certificate]:
    """:func:`parse_certificates`, as ``cryptography`` objects: for parts that verify or sign.

    Read by the model first (one reader decides what a certificate file holds), then handed to
    ``cryptography``, which must accept the same bytes and every extension in them.
    """
    return [_to_cryptography(c, source) for c in parse_certificates(data, source=source)]


def _to_cryptography(model: Certificate, source: str) -> x509.Certificate:
    from cryptography import x509

    try:
        cert = x509.load_der_x509_certificate(model.der)
        # cryptography decodes names and extensions on first access and raises then; found by
        # fuzzing (fuzz/targets.py certificate_upload): a corrupt extension escaped as a server
        # error. Parse them now, so a malformed one is refused here.
        cert.subject, cert.issuer, cert.extensions  # noqa: B018 (access parses them)
    except Exception as exc:  # ValueError, InvalidVersion, DuplicateExtension...
        raise CertificateFormatError(
            f"{source}: malformed certificate contents ({exc!r})", source=source
        ) from exc
    return cert


def load_certificate(data: bytes, *, source: str = "certificate") -> x509.Certificate:
    """The first (leaf) certificate of ``data``, as a ``cryptography`` object."""
    return load_certificates(data, source=source)[0]


def read_certificates(path: str | Path) -> list[x509.Certificate]:
    path = Path(path)
    return [_to_cryptography(c, str(path)) for c in read_certificate_file(path)]


# --- the rules ---------------------------------------------------------------------------------


def certificate_sn(cert: CertLike) -> str:
    """The certificate's SN in the kit's canonical form (lowercase hex, no leading zeros)."""
    return normalize_sn(as_model(cert).serial_number)


def common_name(name: NameLike) -> str | None:
    if not isinstance(name, Name):
        name = Name.from_der(name.public_bytes())
    return name.common_name


def _der(cert: CertLike) -> bytes:
    if isinstance(cert, Certificate):
        return cert.der
    data = foreign_der(cert)
    if data is None:
        raise TypeError(f"not a certificate: {type(cert).__name__}")
    return data


def fingerprint_sha256(cert: CertLike) -> str:
    return hashlib.sha256(_der(cert)).hexdigest()


def public_key_spki(cert: CertLike) -> bytes:
    """The certificate's public key as DER SubjectPublicKeyInfo: equal bytes, equal key."""
    return as_model(cert).public_key_info.der


def to_pem(certs: CertLike | Iterable[CertLike]) -> bytes:
    if isinstance(certs, Certificate) or foreign_der(certs) is not None:
        certs = [certs]  # type: ignore[list-item]
    return b"".join(
        Certificate.pem_of(_der(c))
        for c in certs  # type: ignore[union-attr]
    )


def is_ca(cert: CertLike) -> bool:
    return as_model(cert).is_ca


def device_certificate_problem(cert: CertLike) -> str | None:
    """Why ``cert`` cannot be a device certificate, or None when it can.

    Checked by the server before it looks for the issuing CA, on every handshake, so it returns
    the reason instead of raising. A device certificate must not be a CA (basicConstraints
    CA:TRUE): a CA certificate presented as a device could issue "devices" of its own. A
    version-1 certificate without extensions (what ``openssl x509 -req`` makes) is fine. Its SN
    must follow the kit's one SN rule (:func:`device_sdk.serials.normalize_sn`: positive, at
    most 20 bytes), because the SN is how the platform finds the device.
    """
    try:
        model = as_model(cert)
        ca = model.is_ca
    except DERError as exc:  # a basicConstraints the model cannot read: not a device's
        return f"the device certificate cannot be read: {exc}"
    if ca:
        return "the device certificate is a CA certificate (basicConstraints CA:TRUE)"
    try:
        normalize_sn(model.serial_number)
    except ValueError as exc:
        return f"the device certificate's serial number is unusable: {exc}"
    return None


def is_rsa(cert: CertLike) -> bool:
    return as_model(cert).public_key_info.is_rsa


def require_rsa(cert: CertLike, *, what: str = "certificate") -> None:
    """The platform supports only RSA device certificates (and CA keys that sign them)."""
    key = as_model(cert).public_key_info
    if not key.is_rsa:
        raise UnsupportedKeyTypeError(
            f"{what} has a {key.kind} key; the platform supports only RSA certificates"
        )


def check_validity(
    cert: CertLike, *, now: datetime | None = None, what: str = "certificate"
) -> None:
    """Raise :class:`ClockError` unless ``now`` lies in the certificate's validity window."""
    model = as_model(cert)
    now = now or datetime.now(UTC)
    not_before, not_after = model.not_valid_before_utc, model.not_valid_after_utc
    if not_before <= now <= not_after:
        return
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
    raise ClockError(
        f"{what} has expired: {window}, {clock}. Issue a new certificate, or check the clock.",
        now=now,
        not_before=not_before,
        not_after=not_after,
    )


def signed_by(cert: CertLike, issuer_key: CertificateIssuerPublicKeyTypes | object) -> bool:
    """True when ``issuer_key`` verifies ``cert``'s signature.

    This is how the kit identifies an issuing CA: by the key that verifies the signature. Two CAs
    may share a subject name; only one of them holds the key.
    """
    from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
    from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

    if isinstance(cert, Certificate):
        cert = cert.to_cryptography()
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


def issued_by(cert: CertLike, issuer: CertLike) -> bool:
    """``issuer`` names ``cert``'s issuer *and* its key verifies ``cert``'s signature."""
    if as_model(cert).issuer != as_model(issuer).subject:
        return False
    issuer_cert = issuer.to_cryptography() if isinstance(issuer, Certificate) else issuer
    try:
        issuer_key = issuer_cert.public_key()
    except Exception:  # an unsupported key algorithm: it verifies nothing
        return False
    return signed_by(cert, issuer_key)


# --- private keys (cryptography objects: for the parts that sign) -----------------------------


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
    matches the one the provisioning host validated. (A device loading its own pair does not
    come here: :mod:`device_sdk.keyfile` reads it without ``cryptography``.)
    """
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization

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
    from cryptography.hazmat.primitives.asymmetric import rsa

    if not isinstance(key, rsa.RSAPrivateKey):
        kind = type(key).__name__.removeprefix("_").replace("PrivateKey", "")
        raise UnsupportedKeyTypeError(
            f"{source} is a {kind} key; the platform supports only RSA keys", source=source
        )
    return key


def key_matches_certificate(key: PrivateKeyTypes, cert: CertLike) -> bool:
    """The key's public half is the certificate's public key."""
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    info = as_model(cert).public_key_info
    try:
        public = key.public_key()
        if isinstance(public, rsa.RSAPublicKey):
            numbers = public.public_numbers()
            return (numbers.n, numbers.e) == (info.rsa_modulus, info.rsa_exponent)
        key_spki = public.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    except (ValueError, UnsupportedAlgorithm, AttributeError):
        return False
    return key_spki == info.der


def require_key_matches(key: PrivateKeyTypes, cert: CertLike, *, source: str) -> None:
    if not key_matches_certificate(key, cert):
        raise KeyMismatchError(mismatch_message(source, certificate_sn(cert)), source=source)


def mismatch_message(source: str, sn: str) -> str:
    """The one wording of "this key is not this certificate's" (both key readers use it)."""
    return (
        f"{source}: the private key does not belong to the certificate "
        f"(SN {sn}); are the .cer and .key files from the same device?"
    )


def rsa_key_pkcs1_pem(key: rsa.RSAPrivateKey) -> bytes:
    """``-----BEGIN RSA PRIVATE KEY-----``: the platform's documented device key format."""
    from cryptography.hazmat.primitives import serialization

    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )


# --- a certificate with its chain --------------------------------------------------------------


class CertificateChain(NamedTuple):
    """A leaf certificate with any intermediates that followed it in its file (the model)."""

    leaf: Certificate
    intermediates: tuple[Certificate, ...] = ()

    @classmethod
    def load(cls, data: bytes, *, source: str = "certificate") -> CertificateChain:
        certs = parse_certificates(data, source=source)
        return cls(certs[0], tuple(certs[1:]))

    @property
    def sn(self) -> str:
        return certificate_sn(self.leaf)

    def pem(self) -> bytes:
        return to_pem([self.leaf, *self.intermediates])


values.compare_by_type(CertificateChain)


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


__all__ = [
    "Certificate",
    "CertificateChain",
    "CredentialError",
    "Name",
    "certificate_sn",
    "check_validity",
    "common_name",
    "device_certificate_problem",
    "fingerprint_sha256",
    "is_ca",
    "is_rsa",
    "issued_by",
    "key_matches_certificate",
    "load_certificate",
    "load_certificates",
    "load_private_key",
    "parse_certificate",
    "parse_certificates",
    "public_key_spki",
    "read_certificate_file",
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
