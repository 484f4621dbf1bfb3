"""The one home of the checks on a certificate signing request (PKCS#10 CSR) a device sends.

Three parties turn a device's CSR into a certificate, and all call :func:`check_csr`:

- on-board provisioning (``iotx509 provision --generate-on-board``,
  :mod:`firmware_helpers.serial.onboard`): the board generated its key and answers GENKEY
  with a CSR;
- the reference server, before it queues a renewal request (``docs/renewal.md``);
- the customer's signer (``iotx509 ca signer``), before it issues the renewed certificate.

What a CSR is trusted for is its public key, and only once its signature verifies with that key
(which proves that the sender holds the private key). The key must be RSA (the platform accepts
RSA device certificates only) of at least :data:`MIN_RSA_BITS` bits with the public exponent
:data:`RSA_EXPONENT`. Nothing else in it is trusted: the issuer sets the subject, the validity
and every extension. A CSR that asks for extensions or attributes is refused rather than
silently ignored, since it is a device (or firmware) that tries to choose what its certificate
says. The subject rule depends on who asks:

- provisioning (``device_name=None``): the board has no name yet, so the subject must be empty;
- renewal (``device_name="DN"``): the subject may be empty or be exactly ``CN=DN`` (a device
  that puts its own name in its request, as ``openssl req`` does); anything else names another
  device, or claims something the issuer decides, and is refused.

Every refusal is a :class:`~device_sdk.errors.CsrRejectedError` whose message says what is wrong
and whose ``reason`` is one of the stable codes below, for logs and reply messages. The device's
connect path never imports this module (it needs ``cryptography``'s X.509 parser only here).
"""

from __future__ import annotations

from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from device_sdk.errors import CsrRejectedError

#: The smallest RSA key a device may use, and the only public exponent accepted.
MIN_RSA_BITS: Final = 2048
RSA_EXPONENT: Final = 65537
#: The largest CSR read at all (PEM or DER). An RSA-4096 request in PEM is about 1.7 KiB; the
#: bound keeps a hostile sender from making the parser work on megabytes.
MAX_CSR_BYTES: Final = 8192

#: ``CsrRejectedError.reason`` values.
REASON_TOO_LARGE: Final = "too-large"
REASON_UNREADABLE: Final = "unreadable"
REASON_KEY_TYPE: Final = "key-type"
REASON_SIGNATURE: Final = "signature"
REASON_KEY_SIZE: Final = "key-size"
REASON_EXPONENT: Final = "exponent"
REASON_SUBJECT: Final = "subject"
REASON_OTHER_DEVICE: Final = "other-device"
REASON_EXTENSIONS: Final = "extensions"

_PEM_MARKER = b"-----BEGIN"


def load_csr(
    data: bytes | str, *, max_bytes: int = MAX_CSR_BYTES
) -> x509.CertificateSigningRequest:
    """Parse a CSR given as PEM (text or bytes) or DER; a clear error for anything else."""
    raw = data.encode("utf-8", "replace") if isinstance(data, str) else bytes(data)
    if len(raw) > max_bytes:
        raise CsrRejectedError(
            f"the CSR is {len(raw)} bytes; at most {max_bytes} are read",
            reason=REASON_TOO_LARGE,
        )
    try:
        if raw.lstrip().startswith(_PEM_MARKER):
            return x509.load_pem_x509_csr(raw)
        return x509.load_der_x509_csr(raw)
    except ValueError as exc:
        raise CsrRejectedError(
            f"the data is not a readable PKCS#10 CSR ({exc})", reason=REASON_UNREADABLE
        ) from exc


def check_csr(
    data: bytes | str | x509.CertificateSigningRequest,
    *,
    device_name: str | None = None,
    max_bytes: int = MAX_CSR_BYTES,
) -> rsa.RSAPublicKey:
    """The CSR's public key, once it proves possession and asks for nothing (see module doc).

    ``data`` is PEM (text or bytes), DER, or an already parsed request. ``device_name`` selects
    the renewal rule for the subject: empty or exactly ``CN=device_name``; without it (on-board
    provisioning) the subject must be empty. Raises :class:`CsrRejectedError`.
    """
    csr = (
        data
        if isinstance(data, x509.CertificateSigningRequest)
        else load_csr(data, max_bytes=max_bytes)
    )
    public = _checked_key(csr)
    _check_subject(csr.subject, device_name)
    try:
        asks_more = bool(len(csr.extensions) or len(csr.attributes))
    except ValueError as exc:  # an extension or attribute cryptography cannot decode
        raise CsrRejectedError(
            f"the CSR carries extensions or attributes that cannot be read ({exc})",
            reason=REASON_EXTENSIONS,
        ) from exc
    if asks_more:
        raise CsrRejectedError(
            "the CSR carries extensions or attributes; the issuer decides every field of the "
            "certificate, so the request must hold nothing but the public key",
            reason=REASON_EXTENSIONS,
        )
    return public


def _checked_key(csr: x509.CertificateSigningRequest) -> rsa.RSAPublicKey:
    """The RSA key of a CSR whose signature verifies with it; refusals in the order a person
    fixes them (key type first: an EC signature is not worth checking against RSA rules)."""
    try:
        public = csr.public_key()
        valid = csr.is_signature_valid
    except Exception as exc:  # cryptography raises several types for unsupported key encodings
        raise CsrRejectedError(
            f"the CSR's key cannot be read ({exc})", reason=REASON_UNREADABLE
        ) from exc
    if not isinstance(public, rsa.RSAPublicKey):
        kind = type(public).__name__.removeprefix("_").replace("PublicKey", "")
        raise CsrRejectedError(
            f"the CSR's key is {kind}, not RSA; the platform accepts RSA device certificates only",
            reason=REASON_KEY_TYPE,
        )
    if not valid:
        raise CsrRejectedError(
            "the CSR's signature does not verify with its own public key: it does not prove "
            "that the sender holds the private key",
            reason=REASON_SIGNATURE,
        )
    if public.key_size < MIN_RSA_BITS:
        raise CsrRejectedError(
            f"the CSR's RSA key has {public.key_size} bits; at least {MIN_RSA_BITS} are required",
            reason=REASON_KEY_SIZE,
        )
    exponent = public.public_numbers().e
    if exponent != RSA_EXPONENT:
        raise CsrRejectedError(
            f"the CSR's RSA public exponent is {exponent}; only {RSA_EXPONENT} is accepted",
            reason=REASON_EXPONENT,
        )
    return public


def _check_subject(subject: x509.Name, device_name: str | None) -> None:
    if not len(subject):
        return
    try:
        shown = subject.rfc4514_string()
    except ValueError:  # pragma: no cover - a name cryptography parsed but cannot print
        shown = "<unprintable>"
    if device_name is None:
        raise CsrRejectedError(
            f"the CSR asks for the subject {shown!r}; the board does not choose its name (the "
            "host sets ProductKey and DeviceName), so the subject must be empty",
            reason=REASON_SUBJECT,
        )
    attributes = [a for rdn in subject.rdns for a in rdn]
    common_names = [a.value for a in attributes if a.oid == NameOID.COMMON_NAME]
    if common_names and any(cn != device_name for cn in common_names):
        other = next(cn for cn in common_names if cn != device_name)
        raise CsrRejectedError(
            f"the CSR names device {other!r} (subject {shown!r}), but it was sent for device "
            f"{device_name!r}: a device renews its own certificate only",
            reason=REASON_OTHER_DEVICE,
        )
    if len(attributes) != 1 or len(common_names) != 1:
        raise CsrRejectedError(
            f"the CSR asks for the subject {shown!r}; a renewal request's subject must be empty "
            f"or exactly 'CN={device_name}' (the issuer sets every other field)",
            reason=REASON_SUBJECT,
        )
