"""``iotx509 ca create`` and ``iotx509 ca verification-cert``, checked with the real openssl."""

from __future__ import annotations

import io
import secrets
import stat
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from device_sdk.certs import common_name, read_certificates
from firmware_helpers.cert_cli import check_registration_code
from firmware_helpers.errors import InvalidInputError
from iotx509.cli import main
from tests.firmware.cert_helpers import needs_openssl, openssl, write_ca

if TYPE_CHECKING:
    from tests.common import PkiFactory

pytestmark = needs_openssl


def _verification_cert_args(ca_cert: Path, ca_key: Path, code: str, out: Path | str) -> list[str]:
    """``ca verification-cert`` with its four options (each test varies one of them)."""
    return [
        "ca",
        "verification-cert",
        "--ca",
        str(ca_cert),
        "--ca-key",
        str(ca_key),
        "--code",
        code,
        "--out",
        str(out),
    ]


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_ca_create_writes_a_ca_openssl_accepts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "ca"
    assert main(["ca", "create", "--cn", "Factory CA", "--out", str(out), "--days", "30"]) == 0
    cert, key = out / "ca.cer", out / "ca.key"
    assert _mode(key) == 0o600
    assert _mode(out) == 0o700
    assert key.read_bytes().startswith(b"-----BEGIN RSA PRIVATE KEY-----")
    text = openssl("x509", "-noout", "-text", "-in", cert).stdout
    assert "CA:TRUE" in text
    assert "Certificate Sign" in text
    assert "Public-Key: (2048 bit)" in text
    assert "CN = Factory CA" in text
    openssl("rsa", "-check", "-noout", "-in", key)
    # self-signed: it verifies against itself
    assert openssl("verify", "-CAfile", cert, cert).stdout.strip().endswith("OK")
    assert "Factory CA" in capsys.readouterr().out


def test_ca_create_key_size_option(tmp_path: Path) -> None:
    assert (
        main(["ca", "create", "--cn", "Big CA", "--out", str(tmp_path), "--key-size", "3072"]) == 0
    )
    text = openssl("x509", "-noout", "-text", "-in", tmp_path / "ca.cer").stdout
    assert "Public-Key: (3072 bit)" in text


def test_ca_create_refuses_to_overwrite_unless_forced(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["ca", "create", "--cn", "One", "--out", str(tmp_path)]) == 0
    before = (tmp_path / "ca.key").read_bytes()
    capsys.readouterr()
    assert main(["ca", "create", "--cn", "Two", "--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "already exist" in err and "--force" in err
    assert (tmp_path / "ca.key").read_bytes() == before
    assert main(["ca", "create", "--cn", "Two", "--out", str(tmp_path), "--force"]) == 0
    assert (tmp_path / "ca.key").read_bytes() != before
    assert common_name(read_certificates(tmp_path / "ca.cer")[0].subject) == "Two"


def test_ca_create_rejects_bad_key_size(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        main(["ca", "create", "--cn", "X", "--out", str(tmp_path), "--key-size", "1024"])
    assert "invalid choice" in capsys.readouterr().err


def test_verification_cert_verifies_with_openssl_and_carries_the_code(
    pki: PkiFactory, tmp_path: Path
) -> None:
    ca_cert, ca_key = write_ca(pki.ca, tmp_path / "ca")
    code = secrets.token_hex(32)
    out = tmp_path / "vc"
    assert main(_verification_cert_args(ca_cert, ca_key, code, out)) == 0
    crt, key = out / "verificationCert.crt", out / "verificationCert.key"
    assert openssl("verify", "-CAfile", ca_cert, crt).stdout.strip() == f"{crt}: OK"
    subject = openssl("x509", "-noout", "-subject", "-nameopt", "RFC2253", "-in", crt).stdout
    assert subject.strip() == f"subject=CN={code}"
    text = openssl("x509", "-noout", "-text", "-in", crt).stdout
    assert "sha512WithRSAEncryption" in text
    openssl("rsa", "-check", "-noout", "-in", key)
    assert _mode(key) == 0o600
    # the key belongs to the certificate, as openssl genrsa + req would make it
    pub_from_key = openssl("rsa", "-in", key, "-pubout").stdout
    pub_from_cert = openssl("x509", "-in", crt, "-noout", "-pubkey").stdout
    assert pub_from_key == pub_from_cert


@pytest.mark.parametrize(
    ("code", "message"),
    [
        ("", "empty"),
        ("abc def", "whitespace"),
        ("a" * 64 + "\n", "whitespace"),
        ("a" * 65, "at most 64"),
        ("caf\u00e9", "unusual characters"),
    ],
)
def test_bad_registration_codes_are_refused(code: str, message: str) -> None:
    with pytest.raises(InvalidInputError, match=message):
        check_registration_code(code)


def test_unusual_code_shape_warns_but_is_used() -> None:
    warn = io.StringIO()
    assert check_registration_code("ABCDEF" * 10 + "ABCD", warn=warn) == "ABCDEF" * 10 + "ABCD"
    assert "upper-case" in warn.getvalue()
    warn = io.StringIO()
    check_registration_code("shortcode", warn=warn)
    assert "9 characters" in warn.getvalue()
    warn = io.StringIO()
    check_registration_code(secrets.token_hex(32), warn=warn)
    assert warn.getvalue() == ""


def test_verification_cert_cli_refuses_whitespace_code(
    pki: PkiFactory, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ca_cert, ca_key = write_ca(pki.ca, tmp_path / "ca")
    rc = main(
        _verification_cert_args(ca_cert, ca_key, " " + secrets.token_hex(32), tmp_path / "vc")
    )
    assert rc == 1
    assert "whitespace" in capsys.readouterr().err
    assert not (tmp_path / "vc").exists()


def test_verification_cert_refuses_non_ca_and_mismatched_key(
    pki: PkiFactory, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ca_cert, _ca_key = write_ca(pki.ca, tmp_path / "ca")
    dev_cert, dev_key, _ = pki.write_device("a1B2c3", "dev-0001", directory=tmp_path / "dev")
    code = secrets.token_hex(32)
    out = str(tmp_path / "vc")
    assert main(_verification_cert_args(dev_cert, dev_key, code, out)) == 1
    assert "not a CA certificate" in capsys.readouterr().err
    assert main(_verification_cert_args(ca_cert, dev_key, code, out)) == 1
    assert "is not the private key of the CA certificate" in capsys.readouterr().err
    assert not (tmp_path / "vc").exists()


def test_verification_cert_refuses_to_overwrite(
    pki: PkiFactory, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ca_cert, ca_key = write_ca(pki.ca, tmp_path / "ca")
    args = _verification_cert_args(ca_cert, ca_key, secrets.token_hex(32), tmp_path / "vc")
    assert main(args) == 0
    assert main(args) == 1
    assert "already exist" in capsys.readouterr().err
    assert main([*args, "--force"]) == 0
