"""``iotx509 certs export``: the C header compiles and holds the exact bytes; the blob parses."""

from __future__ import annotations

import shutil
import stat
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from device_sdk.certs import load_private_key, read_private_key, rsa_key_pkcs1_pem
from firmware_helpers.credential_blob import parse_blob
from firmware_helpers.export import ExportBundle, c_string_literal_lines, render_c_header
from iotx509.cli import main
from tests.firmware.cert_helpers import write_ca

if TYPE_CHECKING:
    from tests.common import PkiFactory

CC = shutil.which("cc") or shutil.which("gcc")
needs_cc = pytest.mark.skipif(CC is None, reason="no C compiler")

DUMP_PROGRAM = r"""
#include <stdio.h>
#include <string.h>
#include "%(header)s"
#include "%(header)s" /* the include guard makes a second include harmless */

static int dump(const char *path, const char *data, size_t len) {
    FILE *f = fopen(path, "wb");
    if (!f) return 1;
    fwrite(data, 1, len, f);
    fclose(f);
    return 0;
}

int main(int argc, char **argv) {
    (void)argc;
    if (IOTX509_DEVICE_CERT_LEN != strlen(IOTX509_DEVICE_CERT)) return 2;
    if (dump(argv[1], IOTX509_DEVICE_CERT, IOTX509_DEVICE_CERT_LEN)) return 3;
    if (dump(argv[2], IOTX509_DEVICE_KEY, IOTX509_DEVICE_KEY_LEN)) return 3;
#if IOTX509_HAS_SERVER_CA
    if (dump(argv[3], IOTX509_SERVER_CA, IOTX509_SERVER_CA_LEN)) return 3;
#endif
    return 0;
}
"""


def _compile_and_dump(header: Path, work: Path) -> dict[str, bytes | None]:
    assert CC is not None
    source = work / "dump.c"
    source.write_text(DUMP_PROGRAM % {"header": header.name})
    binary = work / "dump"
    subprocess.run(
        [
            CC,
            "-std=c99",
            "-Wall",
            "-Wextra",
            "-Werror",
            "-Wno-unused-variable",
            "-I",
            str(header.parent),
            "-o",
            str(binary),
            str(source),
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    outputs = [work / "cert.out", work / "key.out", work / "ca.out"]
    subprocess.run([str(binary), *map(str, outputs)], check=True, timeout=30)
    return {p.stem: (p.read_bytes() if p.exists() else None) for p in outputs}


def export(fmt: str, cert: Path, key: Path, out: Path, *extra: str) -> int:
    """``iotx509 certs export`` run in this process; its exit status."""
    args = ["--format", fmt, "--cert", str(cert), "--key", str(key), "--out", str(out), *extra]
    return main(["certs", "export", *args])


@pytest.fixture
def device_files(pki: PkiFactory, tmp_path: Path) -> tuple[Path, Path, Path]:
    cert, key, _ = pki.write_device("a1B2c3D4e5F", "dev-0001", directory=tmp_path / "dev")
    ca_cert, _ = write_ca(pki.ca, tmp_path / "ca")
    return cert, key, ca_cert


@needs_cc
def test_c_header_compiles_and_holds_the_exact_pem(
    device_files: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    cert, key, ca = device_files
    header = tmp_path / "credentials.h"
    assert export("c-header", cert, key, header, "--server-ca", str(ca)) == 0
    assert stat.S_IMODE(header.stat().st_mode) == 0o600
    text = header.read_text()
    assert "#ifndef IOTX509_CREDENTIALS_H" in text and "#endif" in text
    dumped = _compile_and_dump(header, tmp_path)
    assert dumped["cert"] == cert.read_bytes()
    assert dumped["key"] == key.read_bytes()
    assert dumped["key"] is not None and dumped["key"].startswith(b"-----BEGIN RSA PRIVATE KEY")
    assert dumped["ca"] == ca.read_bytes()


@needs_cc
def test_c_header_without_server_ca(device_files: tuple[Path, Path, Path], tmp_path: Path) -> None:
    cert, key, _ = device_files
    header = tmp_path / "creds.h"
    assert export("c-header", cert, key, header) == 0
    assert "#define IOTX509_HAS_SERVER_CA 0" in header.read_text()
    dumped = _compile_and_dump(header, tmp_path)
    assert dumped["cert"] == cert.read_bytes() and dumped["ca"] is None


@needs_cc
def test_c_escaping_survives_every_byte_and_trigraphs(tmp_path: Path) -> None:
    """Quotes, backslashes, trigraphs, octal-looking digits after escapes, and all bytes 1-255."""
    tricky = (
        b'say "hi" \\ back\\slash ??= ??/ ??\' ?\n\x01'
        + b"777\t\r\x7f\x80"
        + bytes(range(1, 256))
        + b"\nno newline at end"
    )
    bundle = ExportBundle(tricky, b"k\n", tricky[::-1], "1")
    header = tmp_path / "tricky.h"
    header.write_bytes(render_c_header(bundle))
    dumped = _compile_and_dump(header, tmp_path)
    assert dumped["cert"] == tricky
    assert dumped["ca"] == tricky[::-1]


def test_c_literals_split_at_newlines() -> None:
    assert c_string_literal_lines(b"ab\ncd\n") == ['"ab\\n"', '"cd\\n"']
    assert c_string_literal_lines(b"") == ['""']
    assert c_string_literal_lines(b'"\\?\x00') == ['"\\"\\\\\\?\\000"']


def test_tlv_export_parses_back(device_files: tuple[Path, Path, Path], tmp_path: Path) -> None:
    cert, key, ca = device_files
    out = tmp_path / "creds.bin"
    assert export("tlv", cert, key, out, "--server-ca", str(ca), "--align", "4096") == 0
    data = out.read_bytes()
    assert len(data) % 4096 == 0
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    blob = parse_blob(data)
    assert blob.device_cert == cert.read_bytes()
    assert blob.device_key == key.read_bytes()
    assert blob.server_ca == ca.read_bytes()


def test_export_normalises_a_pkcs8_key_to_pkcs1(
    device_files: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    cert, key, _ = device_files
    pkcs8 = tmp_path / "key.pk8"
    pkcs8.write_bytes(
        read_private_key(key).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    out = tmp_path / "creds.bin"
    assert export("tlv", cert, pkcs8, out) == 0
    exported = parse_blob(out.read_bytes()).device_key
    assert exported.startswith(b"-----BEGIN RSA PRIVATE KEY-----")
    assert exported == rsa_key_pkcs1_pem(load_private_key(key.read_bytes()))  # type: ignore[arg-type]


def test_export_refuses_wrong_inputs(
    pki: PkiFactory,
    device_files: tuple[Path, Path, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    cert, key, ca = device_files
    _other_cert, other_key, _ = pki.write_device(
        "a1B2c3D4e5F", "dev-0002", directory=tmp_path / "other"
    )
    out = tmp_path / "creds.bin"

    assert export("tlv", cert, other_key, out) == 1
    assert "does not belong to the certificate" in capsys.readouterr().err

    ec_key = tmp_path / "ec.key"
    ec_key.write_bytes(
        ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    assert export("tlv", cert, ec_key, out) == 1
    assert "only RSA keys" in capsys.readouterr().err

    assert export("tlv", key, key, out) == 1
    assert "no CERTIFICATE block" in capsys.readouterr().err

    assert export("tlv", cert, key, out, "--server-ca", str(tmp_path / "missing.pem")) == 1
    assert "cannot read the server CA" in capsys.readouterr().err

    assert export("tlv", cert, key, out, "--align", "3") == 1
    assert "power of two" in capsys.readouterr().err
    assert not out.exists()

    assert export("tlv", cert, key, out) == 0
    capsys.readouterr()
    assert export("tlv", cert, key, out) == 1
    assert "already exists; give --force" in capsys.readouterr().err
    assert export("tlv", cert, key, out, "--server-ca", str(ca), "--force") == 0

    assert export("c-header", cert, key, tmp_path / "x.h", "--symbol-prefix", "9bad") == 1
    assert "not a C identifier" in capsys.readouterr().err
