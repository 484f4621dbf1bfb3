"""Helpers for the certificate tests: the real ``openssl`` command line and a CA on disk."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from firmware_helpers.pki import CertifiedKey

OPENSSL = shutil.which("openssl")
needs_openssl = pytest.mark.skipif(OPENSSL is None, reason="the openssl command is not installed")


def openssl(*args: str | Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    assert OPENSSL is not None
    return subprocess.run(
        [OPENSSL, *map(str, args)], capture_output=True, text=True, check=check, timeout=60
    )


def openssl_serial(cert: Path) -> int:
    """The SN as ``openssl x509 -noout -serial`` prints it (``serial=HEX``), as a number."""
    out = openssl("x509", "-noout", "-serial", "-in", cert).stdout.strip()
    assert out.startswith("serial="), out
    return int(out.removeprefix("serial="), 16)


def write_ca(ca: CertifiedKey, directory: Path) -> tuple[Path, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    cert, key = directory / "ca.cer", directory / "ca.key"
    ca.write(cert, key)
    return cert, key
