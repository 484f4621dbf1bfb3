"""Provisioning over real pseudo-terminals: the library, the CLI, and the board agent command."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import threading
import tty
from pathlib import Path

import pytest

from device_sdk import store_layout
from device_sdk.certs import load_certificate
from firmware_helpers.errors import ProvisioningInputError
from firmware_helpers.serial.host import Host, load_credentials
from firmware_helpers.serial.link import FdLink, SerialLink
from firmware_helpers.serial.protocol import ObjectType
from firmware_helpers.serial.simboard import SimBoard
from tests.serial.conftest import PairFiles, snapshot

CLI = [sys.executable, "-m", "iotx509"]


def _provision(sim: SimBoard, pair: PairFiles) -> None:
    link = SerialLink.open(sim.port)
    try:
        Host(link).provision(pair.objects())
    finally:
        link.close()


def test_provision_writes_the_store_layout(
    tmp_path: Path, pairs: tuple[PairFiles, PairFiles]
) -> None:
    a, _ = pairs
    store = tmp_path / "store"
    progress: list[tuple[str, int, int]] = []
    with SimBoard(store) as sim:
        assert sim.port.startswith("/dev/pts/")
        link = SerialLink.open(sim.port)
        host = Host(link, progress=lambda *p: progress.append(p))
        result = host.provision(load_credentials(a.cert, a.key, a.server_ca))
        info = host.info()
        link.close()
    assert result.board_id == sim.base_id and result.retransmissions == 0
    assert (store / store_layout.CERTIFICATE_FILE).read_bytes() == a.cert.read_bytes()
    assert (store / store_layout.PRIVATE_KEY_FILE).read_bytes() == a.key.read_bytes()
    assert (store / store_layout.SERVER_CA_FILE).read_bytes() == a.server_ca.read_bytes()
    assert (store.stat().st_mode & 0o777) == 0o700
    assert ((store / store_layout.PRIVATE_KEY_FILE).stat().st_mode & 0o777) == 0o600
    manifest = json.loads((store / store_layout.MANIFEST_FILE).read_text())["files"]
    assert manifest["device.key"]["sha256"] == hashlib.sha256(a.key.read_bytes()).hexdigest()
    assert not (store / ".staging").exists() and not (store / ".commit.json").exists()
    # INFO gives digests only, and they match the files
    digests = {o.object_type: o.sha256 for o in info.objects}
    assert digests[ObjectType.PRIVATE_KEY] == hashlib.sha256(a.key.read_bytes()).digest()
    # progress went up to 100%
    assert progress[-1][1] == progress[-1][2] == result.payload_bytes


def test_store_is_what_the_sdk_reads(tmp_path: Path, pairs: tuple[PairFiles, PairFiles]) -> None:
    credentials = pytest.importorskip("device_sdk.credentials")
    a, _ = pairs
    with SimBoard(tmp_path / "store") as sim:
        _provision(sim, a)
    creds = credentials.Credentials.from_store(tmp_path / "store")
    assert creds.certificate == load_certificate(a.cert.read_bytes())
    assert creds.server_ca == tmp_path / "store" / store_layout.SERVER_CA_FILE


def test_second_provisioning_replaces_the_set(
    tmp_path: Path, pairs: tuple[PairFiles, PairFiles]
) -> None:
    a, b = pairs
    with SimBoard(tmp_path / "store") as sim:
        _provision(sim, a)
        _provision(sim, b)
    assert (tmp_path / "store" / "device.cer").read_bytes() == b.cert.read_bytes()
    assert (tmp_path / "store" / "device.key").read_bytes() == b.key.read_bytes()


def test_cli_provision_success(tmp_path: Path, pairs: tuple[PairFiles, PairFiles]) -> None:
    a, _ = pairs
    with SimBoard(tmp_path / "store") as sim:
        proc = subprocess.run(
            [
                *CLI,
                "provision",
                "--port",
                sim.port,
                "--cert",
                str(a.cert),
                "--key",
                str(a.key),
                "--server-ca",
                str(a.server_ca),
                "--report",
                str(tmp_path / "report.csv"),
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert proc.returncode == 0, proc.stderr
    assert f"provisioned board {sim.base_id}" in proc.stdout
    assert "(100%)" in proc.stderr
    assert (tmp_path / "store" / "device.key").read_bytes() == a.key.read_bytes()


def test_cli_refuses_mismatched_files_before_touching_the_board(
    tmp_path: Path, pairs: tuple[PairFiles, PairFiles]
) -> None:
    a, b = pairs
    with SimBoard(tmp_path / "store") as sim:
        proc = subprocess.run(
            [*CLI, "provision", "--port", sim.port, "--cert", str(a.cert), "--key", str(b.key)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert sim.stats.frames_in == 0
    assert proc.returncode == 2
    assert "does not belong to the certificate" in proc.stderr


@pytest.mark.parametrize(
    ("which", "message"),
    [("missing", "cannot read certificate file"), ("key-as-cert", "no CERTIFICATE block")],
)
def test_bad_input_files(
    tmp_path: Path, pairs: tuple[PairFiles, PairFiles], which: str, message: str
) -> None:
    a, _ = pairs
    cert = tmp_path / "nope.cer" if which == "missing" else a.key
    with pytest.raises(ProvisioningInputError, match=message):
        load_credentials(cert, a.key)


def test_cli_reports_an_unopenable_port(tmp_path: Path, pairs: tuple[PairFiles, PairFiles]) -> None:
    a, _ = pairs
    proc = subprocess.run(
        [
            *CLI,
            "provision",
            "--port",
            str(tmp_path / "ttyNOPE"),
            "--cert",
            str(a.cert),
            "--key",
            str(a.key),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 4 and "cannot open serial port" in proc.stderr


def test_device_agent_command_over_a_pty(
    tmp_path: Path, pairs: tuple[PairFiles, PairFiles]
) -> None:
    """``iotx509 device agent`` on the slave side; the host drives the master side."""
    a, _ = pairs
    master, slave = os.openpty()
    tty.setraw(master)
    tty.setraw(slave)
    store = tmp_path / "agent-store"
    agent = subprocess.Popen(
        [
            *CLI,
            "device",
            "agent",
            "--port",
            os.ttyname(slave),
            "--store",
            str(store),
            "--board-id",
            "pi-0001",
        ],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert agent.stderr is not None
        assert "answering on" in agent.stderr.readline()
        host = Host(FdLink(master))
        result = host.provision(a.objects())
        assert result.board_id == "pi-0001"
        # one more exchange: the agent settles a commit before it reads the next request
        assert len(host.info().objects) == 3
    finally:
        agent.terminate()
        agent.wait(timeout=10)
        os.close(master)
        os.close(slave)
    assert (store / "device.cer").read_bytes() == a.cert.read_bytes()
    assert snapshot(store).keys() == {"device.cer", "device.key", "server-ca.pem", "manifest.json"}


def test_loop_url_opens(tmp_path: Path) -> None:
    """``loop://`` goes through serial_for_url too: a board-less line times out cleanly."""
    from firmware_helpers.errors import LinkTimeoutError

    link = SerialLink.open("loop://")
    try:
        host = Host(link, max_retries=1, base_timeout=0.1)
        # loop:// echoes our own HELLO back: it is not a reply, so the host keeps waiting
        with pytest.raises(LinkTimeoutError, match="did not answer HELLO"):
            host.hello()
    finally:
        link.close()


class _SocketLink:
    """The board side of a TCP connection (as a serial-to-network bridge would give it)."""

    def __init__(self, conn: socket.socket) -> None:
        self.conn = conn

    def read(self, timeout: float) -> bytes:
        self.conn.settimeout(timeout)
        try:
            return self.conn.recv(65536)
        except TimeoutError:
            return b""

    def write(self, data: bytes) -> None:
        self.conn.sendall(data)

    def close(self) -> None:
        self.conn.close()


def test_socket_url(tmp_path: Path, pairs: tuple[PairFiles, PairFiles]) -> None:
    """``socket://127.0.0.1:PORT``: the host side goes through serial_for_url unchanged."""
    from firmware_helpers.serial.agent import BoardAgent
    from firmware_helpers.serial.board import CredentialStore

    a, _ = pairs
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    stop = threading.Event()

    def board() -> None:
        conn, _ = server.accept()
        link = _SocketLink(conn)
        try:
            BoardAgent(CredentialStore(tmp_path / "net-store"), "bridge-1").serve(link, stop)
        finally:
            link.close()

    thread = threading.Thread(target=board, daemon=True)
    thread.start()
    link = SerialLink.open(f"socket://127.0.0.1:{port}")
    try:
        result = Host(link).provision(a.objects())
    finally:
        link.close()
        stop.set()
        thread.join(timeout=10)
        server.close()
    assert result.board_id == "bridge-1"
    assert (tmp_path / "net-store" / "device.key").read_bytes() == a.key.read_bytes()


# --- what the host accepts, and what the board gets -------------------------------------------


def _run_provision(
    sim: SimBoard,
    cert: Path,
    key: Path,
    tmp_path: Path,
    *extra: str,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            *CLI,
            "provision",
            "--port",
            sim.port,
            "--cert",
            str(cert),
            "--key",
            str(key),
            "--report",
            str(tmp_path / "report.csv"),
            *extra,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})} if env is not None else _env_without_password(),
    )


def _env_without_password() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "IOTX509_KEY_PASSWORD"}


@pytest.fixture
def encrypted_key(tmp_path: Path, pairs: tuple[PairFiles, PairFiles]) -> Path:
    """Pair A's key as an encrypted PKCS#8 PEM (password ``s3cret pass``)."""
    from cryptography.hazmat.primitives import serialization

    from device_sdk.certs import read_private_key

    key = read_private_key(pairs[0].key)
    path = tmp_path / "encrypted.key"
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"s3cret pass"),
        )
    )
    return path


def test_cli_decrypts_a_key_with_the_password_file(
    tmp_path: Path, pairs: tuple[PairFiles, PairFiles], encrypted_key: Path
) -> None:
    a, _ = pairs
    password = tmp_path / "password.txt"
    password.write_text("s3cret pass\n")  # the trailing newline is not part of it
    with SimBoard(tmp_path / "store") as sim:
        proc = _run_provision(
            sim, a.cert, encrypted_key, tmp_path, "--key-password-file", str(password)
        )
    assert proc.returncode == 0, proc.stderr
    # the board gets the platform's form: unencrypted PKCS#1, the same key as pair A's
    assert (tmp_path / "store" / "device.key").read_bytes() == a.key.read_bytes()


def test_cli_decrypts_a_key_with_the_environment_variable(
    tmp_path: Path, pairs: tuple[PairFiles, PairFiles], encrypted_key: Path
) -> None:
    a, _ = pairs
    with SimBoard(tmp_path / "store") as sim:
        proc = _run_provision(
            sim, a.cert, encrypted_key, tmp_path, env={"IOTX509_KEY_PASSWORD": "s3cret pass"}
        )
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "store" / "device.key").read_bytes() == a.key.read_bytes()


@pytest.mark.parametrize(
    ("how", "message"),
    [
        (
            "none",
            "the key is encrypted; give its password; give --key-password-file FILE or set "
            "IOTX509_KEY_PASSWORD",
        ),
        ("wrong-file", "wrong password for the encrypted key"),
        ("wrong-env", "wrong password for the encrypted key"),
        ("empty-file", "is empty"),
        ("missing-file", "cannot read the key password file"),
    ],
)
def test_cli_password_errors_touch_nothing(
    tmp_path: Path,
    pairs: tuple[PairFiles, PairFiles],
    encrypted_key: Path,
    how: str,
    message: str,
) -> None:
    a, _ = pairs
    password = tmp_path / "password.txt"
    extra: list[str] = []
    env = None
    if how == "wrong-file":
        password.write_text("not it\n")
        extra = ["--key-password-file", str(password)]
    elif how == "empty-file":
        password.write_text("\n")
        extra = ["--key-password-file", str(password)]
    elif how == "missing-file":
        extra = ["--key-password-file", str(tmp_path / "nope.txt")]
    elif how == "wrong-env":
        env = {"IOTX509_KEY_PASSWORD": "not it"}
    with SimBoard(tmp_path / "store") as sim:
        proc = _run_provision(sim, a.cert, encrypted_key, tmp_path, *extra, env=env)
        assert sim.stats.frames_in == 0  # refused before the line was touched
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "store" / "device.key").exists()


def test_der_certificates_are_stored_as_pem(
    tmp_path: Path, pairs: tuple[PairFiles, PairFiles]
) -> None:
    from cryptography.hazmat.primitives import serialization

    from device_sdk.certs import read_certificates

    a, _ = pairs
    cert, server_ca = read_certificates(a.cert)[0], read_certificates(a.server_ca)[0]
    der_cert, der_ca = tmp_path / "device.der", tmp_path / "server-ca.der"
    der_cert.write_bytes(cert.public_bytes(serialization.Encoding.DER))
    der_ca.write_bytes(server_ca.public_bytes(serialization.Encoding.DER))
    with SimBoard(tmp_path / "store") as sim:
        proc = _run_provision(sim, der_cert, a.key, tmp_path, "--server-ca", str(der_ca))
    assert proc.returncode == 0, proc.stderr
    stored = (tmp_path / "store" / store_layout.CERTIFICATE_FILE).read_bytes()
    assert stored.startswith(b"-----BEGIN CERTIFICATE-----")
    assert stored == cert.public_bytes(serialization.Encoding.PEM)
    stored_ca = (tmp_path / "store" / store_layout.SERVER_CA_FILE).read_bytes()
    assert stored_ca == server_ca.public_bytes(serialization.Encoding.PEM)


# --- the line speed ----------------------------------------------------------------------------


def test_silent_line_names_the_baud_rate(tmp_path: Path) -> None:
    """Nothing answers (no board, or one at another speed that never sends a delimiter)."""
    from firmware_helpers.errors import LinkTimeoutError

    master, slave = os.openpty()
    tty.setraw(master)
    tty.setraw(slave)
    try:
        link = SerialLink.open(os.ttyname(slave))
        with pytest.raises(LinkTimeoutError) as caught:
            Host(link, max_retries=1, base_timeout=0.1).hello()
        link.close()
    finally:
        os.close(master)
        os.close(slave)
    assert "did not answer HELLO" in str(caught.value)
    assert "--baud must also match the board's line speed" in str(caught.value)


def test_garbage_on_the_line_points_at_the_baud_rate(tmp_path: Path) -> None:
    """A board at another line speed answers, but what arrives is garbage."""
    import random

    from firmware_helpers.errors import LinkError

    master, slave = os.openpty()
    tty.setraw(master)
    tty.setraw(slave)
    stop = threading.Event()
    rng = random.Random(7)

    def wrong_speed_board() -> None:
        link = FdLink(master)
        while not stop.is_set():
            if link.read(0.05):
                link.write(rng.randbytes(40) + b"\x00" + rng.randbytes(20))

    thread = threading.Thread(target=wrong_speed_board, daemon=True)
    thread.start()
    try:
        link = SerialLink.open(os.ttyname(slave))
        with pytest.raises(LinkError) as caught:
            Host(link, max_retries=2, base_timeout=0.3).hello()
        link.close()
    finally:
        stop.set()
        thread.join(timeout=10)
        os.close(master)
        os.close(slave)
    text = str(caught.value)
    assert "arrived but not one valid frame" in text
    assert "--baud most likely differs from the board's line speed" in text
