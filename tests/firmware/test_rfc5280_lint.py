"""Every kind of certificate the kit makes passes pkilint's RFC 5280 linter with no error.

``lint_pkix_cert`` (pkilint, in the ``test`` extra) is the linter's own command line; its exit
code is the number of findings at or above the severity given. The certificates are made by the
kit's commands as a user runs them (``ca create``, ``ca verification-cert``, ``certs issue``).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from firmware_helpers.pki import CertifiedKey, create_ca, issue_server_certificate

LINTER = shutil.which("lint_pkix_cert")
pytestmark = pytest.mark.skipif(LINTER is None, reason="pkilint is not installed (test extra)")
CLI = [sys.executable, "-m", "iotx509"]


def lint(cert: Path, severity: str = "WARNING") -> tuple[int, str]:
    """(number of findings at or above ``severity``, the linter's report)."""
    assert LINTER is not None
    proc = subprocess.run(
        [LINTER, "lint", "-s", severity, "-f", "TEXT", str(cert)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "Failed to load" not in proc.stderr, proc.stderr
    return proc.returncode, proc.stdout.strip()


def _run(*args: str | Path) -> None:
    proc = subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


@pytest.fixture(scope="module")
def made_by_the_cli(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("lint")
    _run("ca", "create", "--cn", "Lint Test CA", "--out", root / "ca")
    ca_cert, ca_key = root / "ca" / "ca.cer", root / "ca" / "ca.key"
    _run(
        "ca",
        "verification-cert",
        "--ca",
        ca_cert,
        "--ca-key",
        ca_key,
        "--code",
        "ab" * 32,
        "--out",
        root / "verification",
    )
    _run(
        "certs",
        "issue",
        "--ca",
        ca_cert,
        "--ca-key",
        ca_key,
        "--product-key",
        "a1LintPK01",
        "--device-name",
        "lint-dev-0001",
        "--out",
        root / "devices",
        "--jobs",
        "1",
    )
    (device,) = (root / "devices").glob("*.cer")
    return {
        "ca": ca_cert,
        "verification": root / "verification" / "verificationCert.crt",
        "device": device,
    }


@pytest.mark.parametrize("kind", ["ca", "verification", "device"])
def test_cli_made_certificates_lint_clean(made_by_the_cli: dict[str, Path], kind: str) -> None:
    findings, text = lint(made_by_the_cli[kind])
    assert findings == 0, f"{kind} certificate:\n{text}"


def test_verification_certificate_names_its_issuer_key(made_by_the_cli: dict[str, Path]) -> None:
    """The finding that started this: the Authority Key Identifier is the CA's SKI."""
    from cryptography import x509

    from device_sdk.certs import read_certificates

    ca = read_certificates(made_by_the_cli["ca"])[0]
    verification = read_certificates(made_by_the_cli["verification"])[0]
    aki = verification.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    ski = ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert aki.key_identifier == ski.digest


def _write(cert: CertifiedKey, path: Path) -> Path:
    path.write_bytes(cert.cert_pem())
    return path


def test_server_certificate_lints_clean(tmp_path: Path) -> None:
    ca = create_ca("Lint Server CA")
    server = issue_server_certificate(ca, ["mqtt.example.com", "127.0.0.1", "::1"])
    findings, text = lint(_write(server, tmp_path / "server.pem"))
    assert findings == 0, text


def test_the_linter_would_catch_a_missing_authority_key_identifier(tmp_path: Path) -> None:
    """The linter really runs: a leaf without AKI (what verification-cert used to make) fails."""
    from datetime import UTC, datetime, timedelta

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import NameOID

    ca = create_ca("Lint Bad CA")
    now = datetime.now(UTC)
    bare = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "cd" * 32)]))
        .issuer_name(ca.certificate.subject)
        .public_key(ca.key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + timedelta(days=1))
        .sign(ca.key, hashes.SHA512())
    )
    path = tmp_path / "bare.pem"
    path.write_bytes(CertifiedKey(bare, ca.key).cert_pem())
    findings, text = lint(path, "ERROR")
    assert findings >= 1 and "authority_key_identifier_extension_absent" in text
