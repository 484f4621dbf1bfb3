"""The device's new key and its CSR, made on the device when it renews.

``cryptography`` is imported here, inside the functions, only when a renewal actually starts:
the SDK's connect path does not load it (issue 16), and a device that never renews never pays
for it. The key is RSA-2048 with exponent 65537 (what the platform's renewal accepts:
:mod:`device_sdk.csr`), written as PKCS#1 PEM like every device key of the platform
(encrypted with the current key's password when it has one). The CSR names the device
(``CN=DeviceName``), which the platform allows and checks; the issuer decides everything else.
"""

from __future__ import annotations

from dataclasses import dataclass, field

RENEWAL_KEY_BITS = 2048
RENEWAL_KEY_EXPONENT = 65537


@dataclass(frozen=True, slots=True)
class NewKey:
    key_pem: bytes = field(repr=False)
    """PKCS#1 PEM (encrypted with the password, if one was given)."""
    csr_pem: str


def generate_key_and_csr(
    device_name: str | None,
    *,
    password: bytes | str | None = None,
    bits: int = RENEWAL_KEY_BITS,
) -> NewKey:
    """A fresh RSA key and a CSR signed with it (proof of possession), CN = DeviceName.

    The one builder of a device's key and CSR: on-board provisioning
    (:mod:`firmware_helpers.serial.keygen`) calls it too, with ``device_name=None`` (an empty
    subject: the board has no name yet) and the ``bits`` the host asked for."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    key = rsa.generate_private_key(public_exponent=RENEWAL_KEY_EXPONENT, key_size=bits)
    names = [] if device_name is None else [x509.NameAttribute(NameOID.COMMON_NAME, device_name)]
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name(names))
        .sign(key, hashes.SHA256())
    )
    encryption: serialization.KeySerializationEncryption = serialization.NoEncryption()
    if password:
        secret = password.encode() if isinstance(password, str) else password
        encryption = serialization.BestAvailableEncryption(secret)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, encryption
    )
    return NewKey(key_pem, csr.public_bytes(serialization.Encoding.PEM).decode("ascii"))
