"""Regression tests for what fuzzing found in certificate uploads (see docs/reliability.md).

Each input parsed as a certificate but broke on first access to a lazily decoded part, so a CA
upload escaped as a server error. Each is now refused with the kit's own error type.
"""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.serialization import Encoding

from device_sdk.certs import load_certificates
from device_sdk.errors import CertificateFormatError
from fuzz import seeds
from server_stub.errors import CaCertificateRejectedError
from server_stub.registry.cas import check_ca_upload


def _ca_der() -> bytes:
    return seeds.test_ca().certificate.public_bytes(Encoding.DER)


def _replace_once(data: bytes, old: bytes, new: bytes) -> bytes:
    assert data.count(old) == 1, (old, data.count(old))
    return data.replace(old, new)


MUTATIONS = {
    # version [0] INTEGER 2 -> 96
    "invalid X.509 version": (b"\xa0\x03\x02\x01\x02", b"\xa0\x03\x02\x01\x60"),
    # basicConstraints cA BOOLEAN TRUE (0xff) -> 0xfe, not valid DER
    "corrupt basicConstraints": (b"\x30\x03\x01\x01\xff", b"\x30\x03\x01\x01\xfe"),
    # basicConstraints OID 2.5.29.19 -> 2.5.29.15: two keyUsage extensions
    "duplicate extension": (b"\x06\x03\x55\x1d\x13", b"\x06\x03\x55\x1d\x0f"),
}


@pytest.mark.parametrize("name", list(MUTATIONS))
def test_found_inputs_are_refused_with_our_errors(name: str) -> None:
    old, new = MUTATIONS[name]
    data = _replace_once(_ca_der(), old, new)
    with pytest.raises(CertificateFormatError, match="CA certificate: "):
        load_certificates(data, source="CA certificate")
    with pytest.raises(CaCertificateRejectedError):
        check_ca_upload(
            name="found_ca",
            ca_data=data,
            verification_data=seeds.verification().cert_pem(),
            registration_code=seeds.REGISTRATION_CODE,
        )


def test_the_unmutated_certificate_is_accepted() -> None:
    checked = check_ca_upload(
        name="found_ca",
        ca_data=_ca_der(),
        verification_data=seeds.verification().cert_pem(),
        registration_code=seeds.REGISTRATION_CODE,
    )
    assert checked.ca_sn
