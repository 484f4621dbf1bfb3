"""CA certificate registration: proof of possession, checked before anything is stored.

The checks that need only the uploaded files live here (pure, no store); the account-wide rules
(at most 10 CAs, no CA registered twice anywhere, one caSn per account) are checked by the
registry inside the transaction that stores the CA.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import PurePath

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa

from device_sdk.certs import (
    certificate_sn,
    check_validity,
    common_name,
    fingerprint_sha256,
    is_ca,
    load_certificates,
    require_rsa,
    signed_by,
)
from device_sdk.errors import (
    ClockError,
    CredentialError,
    InvalidNameError,
    InvalidSerialNumberError,
)
from device_sdk.naming import CA_FILE_SUFFIXES, validate_ca_name
from server_stub.errors import CaCertificateRejectedError, InvalidFieldError

MAX_CAS_PER_ACCOUNT = 10
CA_STATUSES = ("active", "inactive")
#: The only RSA public exponent a registered CA key may have (see ``_check_ca_key``).
RSA_PUBLIC_EXPONENT = 65537
MIN_CA_RSA_BITS = 2048


@dataclass(frozen=True, slots=True)
class CheckedCa:
    """An uploaded CA that passed every check that depends only on the files."""

    name: str
    certificate: x509.Certificate
    ca_sn: str
    fingerprint: str
    subject: str


def colon_fingerprint(fingerprint: str) -> str:
    return ":".join(fingerprint[i : i + 2] for i in range(0, len(fingerprint), 2)).upper()


def _check_suffix(filename: str | None, what: str) -> None:
    if filename is None:
        return
    suffix = PurePath(filename).suffix.lower()
    if suffix not in CA_FILE_SUFFIXES:
        raise InvalidFieldError(
            f"{what} file {PurePath(filename).name!r} must end in "
            f"{', '.join(CA_FILE_SUFFIXES[:-1])} or {CA_FILE_SUFFIXES[-1]}"
        )


def _load(data: bytes, what: str) -> x509.Certificate:
    try:
        return load_certificates(data, source=what)[0]
    except CredentialError as exc:
        raise CaCertificateRejectedError(str(exc)) from exc


def _valid(cert: x509.Certificate, what: str, now: datetime | None) -> None:
    try:
        check_validity(cert, now=now, what=what)
    except ClockError as exc:
        raise CaCertificateRejectedError(str(exc)) from exc


def _check_ca_key(ca: x509.Certificate) -> None:
    """CA keys that make duplicate-signature key forgery cheap are refused.

    With a free choice of public exponent, anyone can build an RSA key under which someone
    else's device certificate signature also verifies (duplicate-signature key selection), and
    hold its private half for proof of possession. Fixing the exponent at 65537 and the modulus
    at 2048 bits or more closes that.
    """
    key = ca.public_key()
    assert isinstance(key, rsa.RSAPublicKey)  # require_rsa ran first
    numbers = key.public_numbers()
    if numbers.e != RSA_PUBLIC_EXPONENT:
        shown = (
            str(numbers.e)
            if numbers.e.bit_length() <= 64
            else (f"a {numbers.e.bit_length()}-bit number")
        )
        raise CaCertificateRejectedError(
            f"CA certificate's RSA public exponent is {shown}; the platform accepts only CA keys "
            f"with the public exponent {RSA_PUBLIC_EXPONENT} (exponent rule: any other exponent "
            "lets a look-alike key be built that verifies another CA's signatures). Generate the "
            "CA key with 'openssl genrsa' or 'iotx509 certs ca create'"
        )
    if key.key_size < MIN_CA_RSA_BITS:
        raise CaCertificateRejectedError(
            f"CA certificate's RSA key has {key.key_size} bits; the platform requires at least "
            f"{MIN_CA_RSA_BITS} bits"
        )


def _ca_serial(ca: x509.Certificate) -> str:
    """The CA's SN (caSn) in canonical form; RFC 5280: positive, at most 20 bytes."""
    try:
        return certificate_sn(ca)
    except InvalidSerialNumberError as exc:
        raise CaCertificateRejectedError(
            f"CA certificate's serial number cannot be used: {exc}. caSn names the CA in the API "
            "and in file names; issue the CA certificate with a positive serial number of at "
            "most 20 bytes"
        ) from exc


def check_ca_upload(
    *,
    name: str,
    ca_data: bytes,
    verification_data: bytes,
    registration_code: str,
    ca_filename: str | None = None,
    verification_filename: str | None = None,
    now: datetime | None = None,
) -> CheckedCa:
    """Apply every file-level registration rule, in the order a person would fix them."""
    try:
        validate_ca_name(name)
    except InvalidNameError as exc:
        raise InvalidFieldError(str(exc)) from exc
    _check_suffix(ca_filename, "CA certificate")
    _check_suffix(verification_filename, "verification certificate")

    ca = _load(ca_data, "CA certificate")
    if not is_ca(ca):
        raise CaCertificateRejectedError(
            "CA certificate is not a CA certificate: it lacks basicConstraints CA=true "
            "(did you upload a device or verification certificate?)"
        )
    try:
        require_rsa(ca, what="CA certificate")
    except CredentialError as exc:
        raise CaCertificateRejectedError(str(exc)) from exc
    _check_ca_key(ca)
    ca_sn = _ca_serial(ca)
    _valid(ca, "CA certificate", now)

    verification = _load(verification_data, "verification certificate")
    cn = common_name(verification.subject)
    if cn != registration_code:
        raise CaCertificateRejectedError(
            f"verification certificate's Common Name is {cn!r}, not this account's registration "
            f"code {registration_code} (get it with 'iotx509 platform registration-code')"
        )
    if not signed_by(verification, ca.public_key()):
        raise CaCertificateRejectedError(
            "verification certificate is not signed by this CA certificate's private key: sign "
            "its CSR with the CA's key (openssl x509 -req -CA <ca> -CAkey <ca key> ...)"
        )
    _valid(verification, "verification certificate", now)
    return CheckedCa(
        name=name,
        certificate=ca,
        ca_sn=ca_sn,
        fingerprint=fingerprint_sha256(ca),
        subject=ca.subject.rfc4514_string(),
    )
