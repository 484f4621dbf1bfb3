"""What of a device's CSR is trusted: ``device_sdk.csr.check_csr``, the one home of the rules.

On-board provisioning (no subject at all), and renewal (empty subject or ``CN=`` the device's own
name). Each refusal is fed the wrong thing and its message and reason code are checked; the
serial tests check that a board sending such a CSR gets nothing (tests/serial).
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from device_sdk import csr as csr_rules
from device_sdk.csr import MAX_CSR_BYTES, check_csr
from device_sdk.errors import CsrRejectedError, DeviceSDKError, Iotx509Error

DN = "sensor-0001"
Key = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


def _csr(
    key: Key,
    *,
    subject: list[x509.NameAttribute[str]] | None = None,
    extension: bool = False,
    attribute: bool = False,
) -> x509.CertificateSigningRequest:
    builder = x509.CertificateSigningRequestBuilder().subject_name(x509.Name(subject or []))
    if extension:
        builder = builder.add_extension(
            x509.BasicConstraints(ca=True, path_length=None), critical=True
        )
    if attribute:
        builder = builder.add_attribute(x509.oid.AttributeOID.CHALLENGE_PASSWORD, b"let me in")
    return builder.sign(key, hashes.SHA256())


def _der(request: x509.CertificateSigningRequest) -> bytes:
    return request.public_bytes(serialization.Encoding.DER)


def _pem(request: x509.CertificateSigningRequest) -> bytes:
    return request.public_bytes(serialization.Encoding.PEM)


def _cn(name: str) -> list[x509.NameAttribute[str]]:
    return [x509.NameAttribute(NameOID.COMMON_NAME, name)]


@pytest.fixture(scope="module")
def key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


# --- what is accepted --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "encode",
    [_der, _pem, lambda r: _pem(r).decode(), lambda r: r],
    ids=["der", "pem-bytes", "pem-text", "parsed"],
)
def test_a_good_csr_gives_its_public_key(
    key: rsa.RSAPrivateKey, encode: Callable[[x509.CertificateSigningRequest], object]
) -> None:
    data = encode(_csr(key))
    assert isinstance(data, bytes | str | x509.CertificateSigningRequest)
    public = check_csr(data)
    assert public.public_numbers() == key.public_key().public_numbers()


def test_renewal_accepts_an_empty_subject_or_the_devices_own_name(key: rsa.RSAPrivateKey) -> None:
    for request in (_csr(key), _csr(key, subject=_cn(DN))):
        public = check_csr(_pem(request), device_name=DN)
        assert public.public_numbers() == key.public_key().public_numbers()


# --- what is refused ---------------------------------------------------------------------------


def _refused(data: bytes | str, *, device_name: str | None = None) -> CsrRejectedError:
    with pytest.raises(CsrRejectedError) as caught:
        check_csr(data, device_name=device_name)
    return caught.value


def test_csr_signed_by_another_key_is_refused(key: rsa.RSAPrivateKey) -> None:
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    mine, theirs = _der(_csr(key)), _der(_csr(other))
    forged = mine[:-256] + theirs[-256:]  # key's request, another key's signature
    error = _refused(forged)
    assert "does not prove that the sender holds the private key" in str(error)
    assert error.reason == csr_rules.REASON_SIGNATURE


@pytest.mark.parametrize(
    ("make", "message", "reason"),
    [
        (
            lambda k: _csr(ec.generate_private_key(ec.SECP256R1())),
            "key is EC, not RSA; the platform accepts RSA device certificates only",
            csr_rules.REASON_KEY_TYPE,
        ),
        (
            lambda k: _csr(rsa.generate_private_key(public_exponent=65537, key_size=1024)),
            "RSA key has 1024 bits; at least 2048 are required",
            csr_rules.REASON_KEY_SIZE,
        ),
        (
            lambda k: _csr(rsa.generate_private_key(public_exponent=3, key_size=2048)),
            "public exponent is 3; only 65537 is accepted",
            csr_rules.REASON_EXPONENT,
        ),
        (
            lambda k: _csr(k, extension=True),
            "carries extensions or attributes",
            csr_rules.REASON_EXTENSIONS,
        ),
        (
            lambda k: _csr(k, attribute=True),
            "carries extensions or attributes",
            csr_rules.REASON_EXTENSIONS,
        ),
    ],
    ids=["ec-key", "rsa-1024", "exponent-3", "extensions", "attributes"],
)
def test_bad_keys_and_requests_for_more_are_refused(
    key: rsa.RSAPrivateKey,
    make: Callable[[rsa.RSAPrivateKey], x509.CertificateSigningRequest],
    message: str,
    reason: str,
) -> None:
    request = make(key)
    for device_name in (None, DN):  # the same rules for provisioning and renewal
        error = _refused(_der(request), device_name=device_name)
        assert message in str(error)
        assert error.reason == reason


def test_a_board_may_not_choose_its_name(key: rsa.RSAPrivateKey) -> None:
    error = _refused(_der(_csr(key, subject=_cn("i-choose-my-name"))))
    assert "asks for the subject 'CN=i-choose-my-name'" in str(error)
    assert "subject must be empty" in str(error)
    assert error.reason == csr_rules.REASON_SUBJECT
    # ... not even the name the host will give it: at provisioning the host names the board
    assert _refused(_der(_csr(key, subject=_cn(DN)))).reason == csr_rules.REASON_SUBJECT


def test_renewal_for_another_device_is_refused(key: rsa.RSAPrivateKey) -> None:
    error = _refused(_pem(_csr(key, subject=_cn("sensor-0002"))), device_name=DN)
    assert "names device 'sensor-0002'" in str(error)
    assert f"sent for device '{DN}'" in str(error)
    assert "renews its own certificate only" in str(error)
    assert error.reason == csr_rules.REASON_OTHER_DEVICE


def test_renewal_subject_with_more_than_the_devices_name_is_refused(
    key: rsa.RSAPrivateKey,
) -> None:
    subject = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Mallory"), *_cn(DN)]
    error = _refused(_pem(_csr(key, subject=subject)), device_name=DN)
    assert f"must be empty or exactly 'CN={DN}'" in str(error)
    assert error.reason == csr_rules.REASON_SUBJECT
    no_cn = [x509.NameAttribute(NameOID.SERIAL_NUMBER, "0001")]
    assert _refused(_pem(_csr(key, subject=no_cn)), device_name=DN).reason == "subject"
    two_cns = [*_cn(DN), *_cn("sensor-0002")]
    error = _refused(_pem(_csr(key, subject=two_cns)), device_name=DN)
    assert error.reason == csr_rules.REASON_OTHER_DEVICE


@pytest.mark.parametrize(
    "garbage",
    [b"\x30\x03garbage", b"", "-----BEGIN CERTIFICATE REQUEST-----\nnot base64\n", b"\xff" * 40],
    ids=["der-garbage", "empty", "pem-garbage", "noise"],
)
def test_garbage_instead_of_a_csr_is_refused(garbage: bytes | str) -> None:
    error = _refused(garbage)
    assert "not a readable PKCS#10 CSR" in str(error)
    assert error.reason == csr_rules.REASON_UNREADABLE


def test_a_huge_csr_is_not_parsed(key: rsa.RSAPrivateKey) -> None:
    padded = _pem(_csr(key)) + b"\n" * MAX_CSR_BYTES
    error = _refused(padded)
    assert f"at most {MAX_CSR_BYTES} are read" in str(error)
    assert error.reason == csr_rules.REASON_TOO_LARGE


def test_refusals_hang_in_the_one_error_tree() -> None:
    assert issubclass(CsrRejectedError, DeviceSDKError)
    assert issubclass(CsrRejectedError, Iotx509Error)
    assert CsrRejectedError("x", reason="subject").exit_code == 3  # iotx509 provision's status
