"""``iotx509 certs issue`` end to end: real keys, checked with the real ``openssl`` command line."""

from __future__ import annotations

import json
import stat
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from device_sdk.naming import DeviceFileName
from firmware_helpers.association_csv import read_associations
from iotx509.cli import main
from testkit.cli_args import certs_issue_args
from tests.firmware.cert_helpers import needs_openssl, openssl, openssl_serial, write_ca

if TYPE_CHECKING:
    from tests.common import PkiFactory

pytestmark = needs_openssl
PK = "a1B2c3D4e5F"


@pytest.fixture
def ca_files(pki: PkiFactory, tmp_path: Path) -> tuple[Path, Path]:
    return write_ca(pki.ca, tmp_path / "ca")


def _issue(ca_files: tuple[Path, Path], out: Path, *extra: str) -> int:
    return main(certs_issue_args(*ca_files, PK, out, *extra))


def test_issued_pairs_are_accepted_by_openssl(
    pki: PkiFactory, ca_files: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    names = ["dev-0001", "sensor_01", "mac:00:11:22"]
    args = [arg for name in names for arg in ("--device-name", name)]
    assert _issue(ca_files, out, *args, "--jobs", "2") == 0
    assert "issued 3 device certificate(s)" in capsys.readouterr().out
    assert stat.S_IMODE(out.stat().st_mode) == 0o700

    rows = read_associations(out / "associations.csv")
    assert [r.device_name for r in rows] == sorted(names)
    sns = set()
    for row in rows:
        file_name = DeviceFileName(PK, row.device_name, pki.ca.sn)
        cert, key = out / file_name.cert_name, out / file_name.key_name
        assert f"{PK}_{row.device_name}_{pki.ca.sn}.cer" == cert.name
        assert openssl("verify", "-CAfile", ca_files[0], cert).stdout.strip() == f"{cert}: OK"
        openssl("rsa", "-check", "-noout", "-in", key)
        assert key.read_bytes().startswith(b"-----BEGIN RSA PRIVATE KEY-----\n")
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
        assert cert.read_bytes().startswith(b"-----BEGIN CERTIFICATE-----\n")
        # key and certificate belong together
        assert (
            openssl("rsa", "-in", key, "-pubout").stdout
            == openssl("x509", "-in", cert, "-noout", "-pubkey").stdout
        )
        # the CSV's SN is the certificate's SN, compared as numbers
        serial = openssl_serial(cert)
        assert serial == int(row.cert_sn, 16)
        assert row.product_key == PK
        assert serial.bit_length() >= 64
        text = openssl("x509", "-noout", "-text", "-in", cert).stdout
        assert "TLS Web Client Authentication" in text
        assert "Public-Key: (2048 bit)" in text
        sns.add(serial)
    assert len(sns) == 3

    ledger = [json.loads(line) for line in (out / "sn-ledger.jsonl").read_text().splitlines()]
    assert {int(entry["sn"], 16) for entry in ledger} == sns
    assert {entry["ca_sn"] for entry in ledger} == {pki.ca.sn}
    assert {entry["device_name"] for entry in ledger} == set(names)
    assert all(entry["product_key"] == PK and entry["time"].endswith("Z") for entry in ledger)


def test_names_file_count_prefix_and_resume(
    pki: PkiFactory,
    ca_files: tuple[Path, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / "out"
    assert _issue(ca_files, out, "--count", "2", "--prefix", "node-", "--jobs", "1") == 0
    first = {p.name: p.read_bytes() for p in out.glob("*.cer")}
    assert sorted(first) == [f"{PK}_node-0001_{pki.ca.sn}.cer", f"{PK}_node-0002_{pki.ca.sn}.cer"]
    names_file = tmp_path / "names.txt"
    names_file.write_text("# factory batch 7\n\nnode-0001\n  node-0002  \nnode-0003\n")
    capsys.readouterr()
    assert _issue(ca_files, out, "--names-file", str(names_file), "--jobs", "2") == 0
    report = capsys.readouterr().out
    assert "issued 1 device certificate(s)" in report
    assert "2 already present (kept)" in report
    # the existing pairs were not touched
    assert {p.name: p.read_bytes() for p in out.glob("*node-000[12]*.cer")} == first
    rows = read_associations(out / "associations.csv")
    assert [r.device_name for r in rows] == ["node-0001", "node-0002", "node-0003"]
    assert len({r.cert_sn for r in rows}) == 3


def test_separate_ledger_file(ca_files: tuple[Path, Path], tmp_path: Path) -> None:
    ledger = tmp_path / "shared" / "ledger.jsonl"
    for batch in ("a", "b"):
        assert (
            _issue(
                ca_files,
                tmp_path / batch,
                "--device-name",
                f"dev-{batch}000",
                "--ledger",
                str(ledger),
                "--jobs",
                "1",
            )
            == 0
        )
    lines = ledger.read_text().splitlines()
    assert len(lines) == 2
    assert not (tmp_path / "a" / "sn-ledger.jsonl").exists()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--product-key", "bad-pk!"], "ProductKey 'bad-pk!' must be letters and digits"),
        (["--device-name", "ab"], "DeviceName 'ab' must be 4-32 characters"),
        (["--device-name", "dev 0001"], "DeviceName 'dev 0001'"),
        (["--device-name", "dev-0001", "--device-name", "dev-0001"], "given twice"),
        (["--count", "3"], "--count needs --prefix"),
        (["--count", "0", "--prefix", "d-"], "--count must be at least 1"),
        (["--count", "2", "--prefix", "x" * 30], "must be 4-32 characters"),
    ],
)
def test_wrong_inputs_fail_before_anything_is_written(
    ca_files: tuple[Path, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    extra: list[str],
    message: str,
) -> None:
    ca_cert, ca_key = ca_files
    out = tmp_path / "out"
    args = ["certs", "issue", "--ca", str(ca_cert), "--ca-key", str(ca_key), "--out", str(out)]
    if "--product-key" not in extra:
        args += ["--product-key", PK]
    if not any(a in extra for a in ("--device-name", "--count")):
        args += ["--device-name", "dev-0001"]
    assert main([*args, *extra]) == 1
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_bad_names_file_lists_every_bad_name(
    ca_files: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    names_file = tmp_path / "names.txt"
    names_file.write_text("good-0001\nbad name\nx\ngood-0002\n")
    assert _issue(ca_files, tmp_path / "out", "--names-file", str(names_file)) == 1
    err = capsys.readouterr().err
    assert "2 problem(s)" in err and "'bad name'" in err and "'x'" in err
    assert not (tmp_path / "out").exists()


def test_non_ca_and_mismatched_ca_key_are_refused(
    pki: PkiFactory,
    ca_files: tuple[Path, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    dev_cert, dev_key, _ = pki.write_device(PK, "dev-9999", directory=tmp_path / "dev")
    out = tmp_path / "out"
    base = ["certs", "issue", "--product-key", PK, "--device-name", "dev-0001", "--out", str(out)]
    assert main([*base, "--ca", str(dev_cert), "--ca-key", str(dev_key)]) == 1
    assert "is not a CA certificate" in capsys.readouterr().err
    assert main([*base, "--ca", str(ca_files[0]), "--ca-key", str(dev_key)]) == 1
    assert "is not the private key of the CA certificate" in capsys.readouterr().err
    assert main([*base, "--ca", str(ca_files[0]), "--ca-key", str(tmp_path / "missing.key")]) == 1
    assert "cannot read key file" in capsys.readouterr().err
    assert not out.exists()


def test_directory_of_another_product_is_refused(
    ca_files: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    assert _issue(ca_files, out, "--device-name", "dev-0001", "--jobs", "1") == 0
    rc = main(certs_issue_args(*ca_files, "OtherProduct1", out, "--device-name", "dev-0002"))
    assert rc == 1
    assert "another product or CA" in capsys.readouterr().err
    assert len(list(out.glob("*.cer"))) == 1


def test_progress_line_on_request(
    ca_files: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert (
        _issue(
            ca_files,
            tmp_path / "out",
            "--count",
            "2",
            "--prefix",
            "prog-",
            "--jobs",
            "1",
            "--progress",
        )
        == 0
    )
    err = capsys.readouterr().err
    assert "2/2" in err and "keys/s" in err and "ETA" in err
    # not a terminal and no --progress: quiet
    assert _issue(ca_files, tmp_path / "out2", "--device-name", "quiet-01", "--jobs", "1") == 0
    assert capsys.readouterr().err == ""


def test_progress_line_format() -> None:
    import io

    from firmware_helpers.cert_cli import ProgressLine

    stream = io.StringIO()
    line = ProgressLine(stream, interval=0.0)
    line.started -= 10  # pretend 10 s have passed
    line(0, 100)
    line(50, 100)
    line(100, 100)
    text = stream.getvalue()
    assert "\r   50/100     5.0 keys/s  ETA     10s" in text
    assert text.endswith("100/100    10.0 keys/s  ETA      0s\n")


def test_output_path_that_is_a_file_is_a_clear_error(
    ca_files: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert _issue(ca_files, blocker, "--device-name", "dev-0001") == 1
    assert "cannot create the output directory" in capsys.readouterr().err
    assert main(["ca", "create", "--cn", "X", "--out", str(blocker)]) == 1
    assert "cannot create the output directory" in capsys.readouterr().err


def test_a_ca_made_with_openssl_issues_devices_openssl_accepts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Customers bring CAs made with openssl: v3 with CA:TRUE and a PKCS#8 key, or a version 1
    self-signed root (no extensions at all), which OpenSSL treats as a CA too."""
    v3 = (tmp_path / "v3.cer", tmp_path / "v3.key")
    openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        v3[1],
        "-out",
        v3[0],
        "-subj",
        "/CN=OpenSSL v3 CA",
        "-days",
        "30",
    )
    assert v3[1].read_text().startswith("-----BEGIN PRIVATE KEY-----")
    v1 = (tmp_path / "v1.cer", tmp_path / "v1.key")
    openssl("genrsa", "-out", v1[1], "2048")
    openssl("req", "-new", "-key", v1[1], "-out", tmp_path / "v1.csr", "-subj", "/CN=OpenSSL v1")
    openssl(
        "x509", "-req", "-in", tmp_path / "v1.csr", "-signkey", v1[1], "-out", v1[0], "-days", "30"
    )
    assert "Version: 1 (0x0)" in openssl("x509", "-noout", "-text", "-in", v1[0]).stdout
    for ca in (v3, v1):
        out = tmp_path / ca[0].stem
        assert _issue(ca, out, "--device-name", "dev-0001", "--jobs", "1") == 0
        (cert,) = out.glob("*.cer")
        assert openssl("verify", "-CAfile", ca[0], cert).stdout.strip() == f"{cert}: OK"
        rows = read_associations(out / "associations.csv")
        assert int(rows[0].cert_sn, 16) == openssl_serial(cert)


def test_a_version_1_leaf_is_not_taken_for_a_ca(
    ca_files: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The verification certificate is version 1 too, but not self-signed: not a CA."""
    key, csr, crt = tmp_path / "v.key", tmp_path / "v.csr", tmp_path / "v.crt"
    openssl("genrsa", "-out", key, "2048")
    openssl("req", "-new", "-key", key, "-out", csr, "-subj", "/CN=" + "ab" * 32)
    openssl(
        "x509",
        "-req",
        "-in",
        csr,
        "-CA",
        ca_files[0],
        "-CAkey",
        ca_files[1],
        "-CAcreateserial",
        "-CAserial",
        tmp_path / "ca.srl",
        "-out",
        crt,
        "-days",
        "300",
        "-sha512",
    )
    assert _issue((crt, key), tmp_path / "out", "--device-name", "dev-0001") == 1
    assert "is not a CA certificate" in capsys.readouterr().err
