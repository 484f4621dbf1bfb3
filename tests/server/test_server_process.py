"""``iotx509 server run`` as a real process: first start, restart, signals, accounts, errors."""

from __future__ import annotations

import json
import socket
import stat
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from cryptography import x509

from device_sdk.certs import is_ca, issued_by
from firmware_helpers.platform_client import PlatformClient
from server_stub.errors import ServerStartupError
from server_stub.launcher import running_server, server_command


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _sans(path: Path) -> set[str]:
    cert = x509.load_pem_x509_certificate(path.read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return {
        *san.get_values_for_type(x509.DNSName),
        *(str(ip) for ip in san.get_values_for_type(x509.IPAddress)),
    }


def test_first_start_restart_and_clean_stop(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with running_server(data, extra_args=["--hostname", "broker.example"]) as server:
        assert _mode(data) == 0o700
        assert _mode(data / "admin-token") == 0o600
        assert (
            _mode(data / "tls" / "ca.key") == 0o600 and _mode(data / "tls" / "server.key") == 0o600
        )
        ca = x509.load_pem_x509_certificate(server.server_ca.read_bytes())
        leaf = x509.load_pem_x509_certificate((data / "tls" / "server.pem").read_bytes())
        assert is_ca(ca) and issued_by(leaf, ca)
        assert _sans(data / "tls" / "server.pem") == {
            "localhost",
            "127.0.0.1",
            "::1",
            "broker.example",
        }
        ports = json.loads((data / "ports.json").read_text())
        assert ports["httpUrl"] == server.http_url and ports["mqtt"] == server.mqtt_port
        client = PlatformClient(server.http_url, server.token)
        code = client.registration_code()
        pk = client.create_product("kept")["productKey"]
        token, ca_pem = server.token, server.server_ca.read_bytes()
        assert server.stop() == 0
        assert not (data / "ports.json").exists()

    with running_server(data, extra_args=["--hostname", "other.example"]) as again:
        assert again.token == token and again.server_ca.read_bytes() == ca_pem
        client = PlatformClient(again.http_url, again.token)
        assert client.registration_code() == code
        assert client.product(pk)["name"] == "kept"
        assert "other.example" in _sans(data / "tls" / "server.pem")


def _create_account(data: Path, name: str) -> subprocess.CompletedProcess[str]:
    """``iotx509 server account create NAME`` on ``data``, as an operator runs it."""
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "iotx509",
            "server",
            "account",
            "create",
            name,
            "--data-dir",
            str(data),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_account_create_prints_a_working_token(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with running_server(data) as server:
        result = _create_account(data, "bob")
        assert result.returncode == 0, result.stderr
        token = result.stdout.split()[-1]
        bob = PlatformClient(server.http_url, token)
        admin = PlatformClient(server.http_url, server.token)
        assert bob.registration_code() != admin.registration_code()
        again = _create_account(data, "bob")
        assert again.returncode == 1
        assert again.stderr.strip() == "error: an account named 'bob' already exists"


def test_a_second_server_on_the_same_data_dir_is_refused(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with running_server(data), pytest.raises(ServerStartupError) as exc, running_server(data):
        pass
    assert "another server is already running with the data directory" in str(exc.value)


def test_a_busy_port_is_a_clear_error(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        cmd = server_command(tmp_path / "data")
        cmd[cmd.index("--http-port") + 1] = str(port)
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert (
        f"error: cannot listen for HTTP on 127.0.0.1:{port}: Address already in use"
        in result.stderr
    )
    assert "Traceback" not in result.stderr


def test_openapi_is_served(tmp_path: Path) -> None:
    with running_server(tmp_path / "data") as server:
        with urllib.request.urlopen(server.http_url + "/openapi.json", timeout=10) as resp:
            spec = json.load(resp)
        assert "/api/v1/ca-certificates/{caSn}/associations" in spec["paths"]


def test_sigint_stops_the_server_cleanly(tmp_path: Path) -> None:
    import signal

    with running_server(tmp_path / "data") as server:
        server.process.send_signal(signal.SIGINT)
        assert server.process.wait(30) == 0
        assert "Traceback" not in server.log()
