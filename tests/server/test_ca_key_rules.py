"""CA registration refuses keys and serials that break tenant isolation or the API (issue 10).

- an RSA public exponent other than 65537 (it makes duplicate-signature key forgery cheap);
- a modulus under 2048 bits;
- a CA serial longer than 20 bytes (it registered, then could never be read, disabled, deleted
  or used, while it stayed trusted) or a negative one (it gave HTTP 500);
- a public key already registered, by this account or any other (without naming the other).

CA files with odd serials are made with the real ``openssl`` command line; the refusals are
checked through the registry and, for the serials, through the real server's HTTP API.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from firmware_helpers.pki import create_ca, generate_rsa_key
from firmware_helpers.platform_client import PlatformAPIError, PlatformClient, UploadFile
from server_stub.errors import CaCertificateRejectedError, DuplicateCaError
from server_stub.launcher import RunningServer
from server_stub.registry import Registry
from server_stub.store.base import AccountRecord
from tests.server.conftest import openssl, register

LONG_SERIAL = "0x" + "01" + "23" * 20  # 21 bytes


def test_public_exponent_other_than_65537_is_refused(
    registry: Registry, account: AccountRecord
) -> None:
    ca = create_ca(
        "Exponent Three CA", key=rsa.generate_private_key(public_exponent=3, key_size=2048)
    )
    with pytest.raises(CaCertificateRejectedError) as refused:
        register(registry, account, ca)
    message = str(refused.value)
    assert "RSA public exponent is 3" in message
    assert "only CA keys with the public exponent 65537 (exponent rule" in message
    assert registry.list_cas(account) == []


def test_modulus_under_2048_bits_is_refused(registry: Registry, account: AccountRecord) -> None:
    ca = create_ca("Small Key CA", key=generate_rsa_key(1024))
    with pytest.raises(
        CaCertificateRejectedError,
        match="RSA key has 1024 bits; the platform requires at least 2048 bits",
    ):
        register(registry, account, ca)
    assert registry.list_cas(account) == []


def test_key_registered_by_another_account_is_refused_without_naming_it(
    registry: Registry, account: AccountRecord
) -> None:
    original = create_ca("Original CA")
    register(registry, account, original, name="original_ca")
    other, _ = registry.create_account("mallory")
    same_key = create_ca("Totally Different Name", key=original.key)
    with pytest.raises(DuplicateCaError) as refused:
        register(registry, other, same_key, name="copy_ca")
    message = str(refused.value)
    assert message.startswith("this CA certificate's public key is already registered; ")
    assert account.name not in message and "original_ca" not in message
    assert registry.list_cas(other) == []
    # In the account's own list, the message says where.
    with pytest.raises(
        DuplicateCaError, match="already registered in this account as 'original_ca'"
    ):
        register(registry, account, create_ca("Renamed", key=original.key), name="again_ca")


def _openssl_ca(directory: Path, serial: str, code: str) -> tuple[bytes, bytes]:
    """A CA with the given serial and its verification certificate, made with openssl."""
    directory.mkdir(parents=True, exist_ok=True)
    openssl("genrsa", "-out", "ca.key", "2048", cwd=directory)
    openssl(
        "req",
        "-x509",
        "-new",
        "-key",
        "ca.key",
        "-out",
        "ca.cer",
        "-days",
        "30",
        "-sha256",
        "-subj",
        "/CN=Odd Serial CA",
        "-set_serial",
        serial,
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
        cwd=directory,
    )
    openssl("genrsa", "-out", "v.key", "2048", cwd=directory)
    openssl("req", "-new", "-key", "v.key", "-out", "v.csr", "-subj", f"/CN={code}", cwd=directory)
    openssl(
        "x509",
        "-req",
        "-in",
        "v.csr",
        "-CA",
        "ca.cer",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "v.crt",
        "-days",
        "30",
        "-sha512",
        cwd=directory,
    )
    return (directory / "ca.cer").read_bytes(), (directory / "v.crt").read_bytes()


@pytest.mark.parametrize(
    ("serial", "expected"),
    [
        (LONG_SERIAL, "is 21 bytes long; RFC 5280 allows at most 20 bytes"),
        ("-5", "SN -5 is negative; RFC 5280 serial numbers are positive integers"),
    ],
)
def test_ca_serial_too_long_or_negative_is_refused(
    registry: Registry, account: AccountRecord, tmp_path: Path, serial: str, expected: str
) -> None:
    ca_pem, proof = _openssl_ca(tmp_path, serial, registry.registration_code(account))
    with pytest.raises(CaCertificateRejectedError) as refused:
        registry.register_ca(account, name="odd_ca", ca_data=ca_pem, verification_data=proof)
    assert str(refused.value).startswith("CA certificate's serial number cannot be used: ")
    assert expected in str(refused.value)
    assert registry.list_cas(account) == []


@pytest.mark.parametrize("serial", [LONG_SERIAL, "-5"])
def test_api_answers_odd_ca_serials_with_a_client_error(
    server: RunningServer, tmp_path: Path, serial: str
) -> None:
    api = PlatformClient(server.http_url, server.token)
    ca_pem, proof = _openssl_ca(tmp_path, serial, api.registration_code())
    before = api.request("GET", "/ca-certificates")
    with pytest.raises(PlatformAPIError) as refused:
        api.register_ca("odd_ca", UploadFile("ca.cer", ca_pem), UploadFile("v.crt", proof))
    assert 400 <= refused.value.status < 500
    assert "serial number cannot be used" in str(refused.value)
    assert api.request("GET", "/ca-certificates") == before
