"""The board's side of version 2: make a key pair where it will live, and a CSR signed by it.

The key never leaves this module's caller except into the board's own store, at COMMIT: the
host gets only the CSR. The CSR carries the public key and the signature that proves the board
holds the private key -- nothing else: an empty subject and no attributes or extensions, since
the host names the device and decides every field of the certificate.

A board whose key lives in a secure element or a TPM implements the same message with the
element: it asks the element to generate the key in a slot (the "key" kept staged is then the
slot's reference, not key material), has the element sign the CSR's to-be-signed bytes, and at
COMMIT binds the slot to the received certificate. See ``docs/serial-protocol.md``.
"""

from __future__ import annotations

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from device_sdk.certs import rsa_key_pkcs1_pem


def generate_key_and_csr(bits: int) -> tuple[bytes, bytes]:
    """(PKCS#1 PEM of a new RSA key, DER of a PKCS#10 request signed with it)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .sign(key, hashes.SHA256())
    )
    return rsa_key_pkcs1_pem(key), csr.public_bytes(serialization.Encoding.DER)
