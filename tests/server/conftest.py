"""Server fixtures: a registry on a temporary SQLite store, and certificates made by the real
``openssl`` command line exactly as the platform's documentation shows. The real server process
(``python -m iotx509 server run``) is the root conftest's ``server``: an account of the test's
own on the session's server."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from firmware_helpers.pki import CertifiedKey, create_ca, issue_verification_certificate
from server_stub.registry import Registry
from server_stub.store import SqliteStore
from server_stub.store.base import AccountRecord, CaRecord, ProductRecord

OPENSSL = shutil.which("openssl")


def openssl(*args: str, cwd: Path) -> None:
    if OPENSSL is None:
        pytest.skip("the openssl command line is not installed")
    result = subprocess.run([OPENSSL, *args], cwd=cwd, capture_output=True, text=True)
    assert result.returncode == 0, f"openssl {' '.join(args)} failed: {result.stderr}"


@dataclass(frozen=True)
class OpensslCa:
    """A CA made with openssl: its certificate file and key file."""

    cert: Path
    key: Path


def openssl_ca(directory: Path, cn: str = "My Private CA", name: str = "yourCA") -> OpensslCa:
    directory.mkdir(parents=True, exist_ok=True)
    openssl("genrsa", "-out", f"{name}.key", "2048", cwd=directory)
    openssl(
        "req",
        "-x509",
        "-new",
        "-key",
        f"{name}.key",
        "-out",
        f"{name}.cer",
        "-days",
        "365",
        "-sha256",
        "-subj",
        f"/CN={cn}",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
        cwd=directory,
    )
    return OpensslCa(directory / f"{name}.cer", directory / f"{name}.key")


def openssl_verification_cert(directory: Path, ca: OpensslCa, code: str) -> Path:
    """The platform's documented three commands, verbatim (CN = registration code)."""
    directory.mkdir(parents=True, exist_ok=True)
    openssl("genrsa", "-out", "verificationCert.key", "2048", cwd=directory)
    openssl(
        "req",
        "-new",
        "-key",
        "verificationCert.key",
        "-out",
        "verificationCert.csr",
        "-subj",
        f"/CN={code}",
        cwd=directory,
    )
    openssl(
        "x509",
        "-req",
        "-in",
        "verificationCert.csr",
        "-CA",
        str(ca.cert),
        "-CAkey",
        str(ca.key),
        "-CAcreateserial",
        "-out",
        "verificationCert.crt",
        "-days",
        "300",
        "-sha512",
        cwd=directory,
    )
    return directory / "verificationCert.crt"


def openssl_device_cert(directory: Path, ca: OpensslCa, cn: str, serial_hex: str) -> Path:
    """A device certificate as a customer's openssl script makes it (version 1, given SN)."""
    directory.mkdir(parents=True, exist_ok=True)
    openssl("genrsa", "-out", f"{cn}.key", "2048", cwd=directory)
    openssl(
        "req", "-new", "-key", f"{cn}.key", "-out", f"{cn}.csr", "-subj", f"/CN={cn}", cwd=directory
    )
    openssl(
        "x509",
        "-req",
        "-in",
        f"{cn}.csr",
        "-CA",
        str(ca.cert),
        "-CAkey",
        str(ca.key),
        "-set_serial",
        f"0x{serial_hex}",
        "-out",
        f"{cn}.cer",
        "-days",
        "30",
        "-sha256",
        cwd=directory,
    )
    return directory / f"{cn}.cer"


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteStore]:
    s = SqliteStore(tmp_path / "registry.sqlite3")
    yield s
    s.close()


@pytest.fixture
def registry(store: SqliteStore) -> Registry:
    return Registry(store)


@pytest.fixture
def account(registry: Registry) -> AccountRecord:
    return registry.create_account("alice")[0]


@pytest.fixture
def product(registry: Registry, account: AccountRecord) -> ProductRecord:
    return registry.create_product(account, name="thermostats")


@pytest.fixture(scope="session")
def test_ca() -> CertifiedKey:
    return create_ca("Registry Test CA")


def register(
    registry: Registry, account: AccountRecord, ca: CertifiedKey, name: str = "my_ca"
) -> CaRecord:
    """Register ``ca`` the honest way: with a verification certificate for the account."""
    code = registry.registration_code(account)
    verification = issue_verification_certificate(ca, code)
    return registry.register_ca(
        account,
        name=name,
        ca_data=ca.cert_pem(),
        verification_data=verification.cert_pem(),
        ca_filename="ca.pem",
        verification_filename="verification.crt",
    )


@pytest.fixture
def registered_ca(registry: Registry, account: AccountRecord, test_ca: CertifiedKey) -> CaRecord:
    return register(registry, account, test_ca)


def csv_bytes(
    rows: list[tuple[str, str, str]],
    *,
    header: str = "ProductKey,DeviceName,CertSN",
    newline: str = "\n",
    bom: bool = False,
) -> bytes:
    """Raw bytes for the parser's tests: other line ends, a BOM, another header, invalid rows,
    exactly as given. A valid file as the kit writes it: :func:`tests.common.association_csv`."""
    text = newline.join([header, *(",".join(r) for r in rows)]) + newline
    return (b"\xef\xbb\xbf" if bom else b"") + text.encode()
