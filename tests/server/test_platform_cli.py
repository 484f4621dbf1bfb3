"""``iotx509 platform ...`` against the real server process, with certificates made by openssl."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from iotx509.cli import main
from server_stub.launcher import RunningServer
from tests.server.conftest import openssl_ca, openssl_device_cert, openssl_verification_cert

Cli = Callable[..., tuple[str, str]]


@pytest.fixture
def cli(
    server: RunningServer, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> Cli:
    monkeypatch.setenv("IOTX509_SERVER", server.http_url)
    monkeypatch.setenv("IOTX509_TOKEN", server.token)

    def run(*args: str, ok: bool = True) -> tuple[str, str]:
        status = main(list(args))
        out, err = capsys.readouterr()
        assert (status == 0) == ok, (status, out, err)
        return out, err

    return run


def test_console_steps_with_openssl_certificates(cli: Cli, tmp_path: Path) -> None:
    code = cli("platform", "registration-code")[0].strip()
    assert len(code) == 64
    pk = cli("platform", "product", "create", "--name", "Smart Meter")[0].split()[-1]
    shown = json.loads(cli("platform", "product", "show", pk, "--json")[0])
    assert (shown["authType"], shown["privateCa"], shown["network"]) == ("x509", True, "mqtt")

    ca = openssl_ca(tmp_path / "ca", cn="Meter Factory CA")
    ver = openssl_verification_cert(tmp_path / "ver", ca, code)
    out, _ = cli(
        "platform",
        "register-ca",
        "--name",
        "Meter_Factory",
        "--ca",
        str(ca.cert),
        "--verification-cert",
        str(ver),
    )
    ca_sn = out.split()[-1]
    assert "registered CA Meter_Factory (CN=Meter Factory CA)" in out
    listed = json.loads(cli("platform", "ca", "list", "--json")[0])
    assert ca_sn in [c["caSn"] for c in listed]
    assert f"caSn: {ca_sn}" in cli("platform", "ca", "show", ca_sn)[0]

    template = tmp_path / "assoc.csv"
    cli("platform", "association-template", ca_sn, "--out", str(template))
    assert template.read_bytes() == b"ProductKey,DeviceName,CertSN\r\n"
    openssl_device_cert(tmp_path / "dev", ca, "meter-0001", "0ABC01")
    with template.open("a", newline="") as fh:
        fh.write(f"{pk},meter-0001,0ABC01\r\n{pk},meter-0002,0abc02\r\n")
    out, _ = cli("platform", "associate", ca_sn, str(template))
    assert out.strip() == f"associated 2 devices with CA {ca_sn}"
    assert f"{pk},meter-0001,abc01" in cli("platform", "ca", "associations", ca_sn)[0]

    device = json.loads(cli("platform", "device", "show", pk, "meter-0001", "--json")[0])
    assert (device["certSn"], device["status"], device["online"]) == ("abc01", "enabled", False)
    assert "status: disabled" in cli("platform", "device", "disable", pk, "meter-0001")[0]
    assert "status: enabled" in cli("platform", "device", "enable", pk, "meter-0001")[0]
    assert cli("platform", "ca", "disable", ca_sn)[0].strip() == f"CA {ca_sn} is now inactive"
    assert cli("platform", "ca", "enable", ca_sn)[0].strip() == f"CA {ca_sn} is now active"

    bad = tmp_path / "bad.csv"
    bad.write_text(f"ProductKey,DeviceName,CertSN\n{pk},meter-0003,abc01\n{pk},m3,77\n")
    _out, err = cli("platform", "associate", ca_sn, str(bad), ok=False)
    assert "error: 2 of 2 rows are invalid; nothing was saved" in err
    assert "  row 1: CertSN abc01 is already bound to device" in err
    assert "  row 2: DeviceName 'm3' must be 4-32 characters" in err

    _out, err = cli(
        "platform",
        "register-ca",
        "--name",
        "Meter_Again",
        "--ca",
        str(ca.cert),
        "--verification-cert",
        str(ver),
        ok=False,
    )
    assert "is already registered in this account as 'Meter_Factory'" in err


def test_client_errors_are_messages_not_tracebacks(cli: Cli, tmp_path: Path) -> None:
    _o, err = cli("platform", "ca", "show", "abcdef", ok=False)
    assert err.strip() == "error: no CA certificate with caSn abcdef in this account"
    _o, err = cli("platform", "registration-code", "--token", "wrong", ok=False)
    assert "the API token is not valid for any account" in err
    _o, err = cli("platform", "registration-code", "--server", "http://127.0.0.1:9", ok=False)
    assert "cannot reach the server at http://127.0.0.1:9" in err
    _o, err = cli("platform", "associate", "abc", str(tmp_path / "missing.csv"), ok=False)
    assert "cannot read the CSV file" in err
    _o, err = cli("platform", "product", "create", "--name", "x", "--network", "nbiot", ok=False)
    assert "network 'nbiot' is not one of mqtt, lorawan" in err


def test_missing_token_is_explained(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("IOTX509_TOKEN", raising=False)
    assert main(["platform", "registration-code", "--server", "http://127.0.0.1:9"]) == 1
    assert "no API token: pass --token or set IOTX509_TOKEN" in capsys.readouterr().err


def test_the_installed_command_prints_the_servers_message(server: RunningServer) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "iotx509",
            "platform",
            "ca",
            "disable",
            "123",
            "--server",
            server.http_url,
            "--token",
            server.token,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert result.stderr.strip() == "error: no CA certificate with caSn 123 in this account"
    assert "Traceback" not in result.stderr


def test_platform_client_works_without_the_server_extra(server: RunningServer) -> None:
    """A base install has no web stack: block it and the console steps still work."""
    script = (
        "import sys\n"
        "for name in ('fastapi', 'uvicorn', 'starlette', 'pydantic', 'uvloop', 'httpx'):\n"
        "    sys.modules[name] = None\n"
        "from iotx509.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            script,
            "platform",
            "registration-code",
            "--server",
            server.http_url,
            "--token",
            server.token,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.strip()) == 64
