"""Hostile certificate and key uploads: accepted, or refused with the kit's own error type.

Never another exception, never a hang (pytest-timeout guards the latter).
"""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives import serialization
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from device_sdk import certs
from device_sdk.errors import CertificateFormatError, CredentialError

PEM_ARMOUR = st.sampled_from(
    [b"-----BEGIN CERTIFICATE-----\n", b"-----END CERTIFICATE-----\n", b"\n", b"MII", b"=="]
)


@pytest.fixture(scope="module")
def good_pem(pki) -> bytes:  # type: ignore[no-untyped-def]
    return bytes(pki.ca.cert_pem())


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=4096))
def test_random_bytes_are_refused_with_our_error(data: bytes) -> None:
    try:
        result = certs.load_certificates(data)
    except CertificateFormatError:
        return
    assert result  # a random blob that happens to parse must still yield certificates


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(cut=st.integers(min_value=0, max_value=2000), noise=st.lists(PEM_ARMOUR, max_size=6))
def test_truncated_and_spliced_pem(good_pem: bytes, cut: int, noise: list[bytes]) -> None:
    data = good_pem[: cut % (len(good_pem) + 1)] + b"".join(noise)
    try:
        certs.load_certificates(data)
    except CertificateFormatError as exc:
        assert str(exc)


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(pos=st.integers(min_value=0), byte=st.integers(min_value=0, max_value=255))
def test_der_with_one_byte_changed(good_pem: bytes, pos: int, byte: int) -> None:
    der = bytearray(certs.load_certificate(good_pem).public_bytes(serialization.Encoding.DER))
    der[pos % len(der)] = byte
    try:
        certs.load_certificates(bytes(der))
    except CertificateFormatError:
        pass


def test_concatenated_pem_keeps_order_and_many_certificates_are_bounded(good_pem: bytes) -> None:
    assert len(certs.load_certificates(good_pem * 3)) == 3
    with pytest.raises(CertificateFormatError, match="more than 16 certificates"):
        certs.load_certificates(good_pem * 17)


def test_huge_file_is_refused_before_parsing() -> None:
    with pytest.raises(CertificateFormatError, match="too large"):
        certs.load_certificates(b"A" * (certs.MAX_CERTIFICATE_FILE_BYTES + 1))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=4096), st.one_of(st.none(), st.binary(max_size=8)))
def test_random_key_bytes_are_refused_with_our_error(data: bytes, password: bytes | None) -> None:
    try:
        certs.load_private_key(data, password=password)
    except CredentialError as exc:
        assert str(exc)
