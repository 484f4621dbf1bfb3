"""A real Mosquitto 2 broker on a free loopback port, requiring client certificates.

Used by the SDK and simulator tests (generic-broker path) and by ``bench/bench_sdk_footprint.py``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from firmware_helpers.pki import CertifiedKey, create_ca, issue_server_certificate

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(
    port: int, timeout: float = 10.0, proc: subprocess.Popen[bytes] | None = None
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


@dataclass
class Mosquitto:
    port: int
    server_ca_path: Path
    proc: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@contextlib.contextmanager
def run_mosquitto(
    workdir: Path,
    client_ca_pem: bytes,
    *,
    server_ca: CertifiedKey | None = None,
    tls_version: str | None = None,
    port: int | None = None,
) -> Iterator[Mosquitto]:
    """Mosquitto with ``require_certificate true`` trusting ``client_ca_pem`` for devices.

    ``port``: listen there (a restart on the port a client knows); default: a free port.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    server_ca = server_ca or create_ca("Test Server CA")
    server = issue_server_certificate(server_ca)
    (workdir / "client-ca.pem").write_bytes(client_ca_pem)
    (workdir / "server-ca.pem").write_bytes(server_ca.cert_pem())
    server.write(workdir / "server.pem", workdir / "server.key")
    os.chmod(workdir, 0o755)  # mosquitto may drop privileges; the files are test-only
    os.chmod(workdir / "server.key", 0o644)
    last_error: Exception | None = None
    fixed_port = port
    for _ in range(5):
        port = fixed_port or free_port()
        conf = workdir / "mosquitto.conf"
        lines = [
            "per_listener_settings false",
            "allow_anonymous true",
            "persistence false",
            "log_dest stderr",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "user root" if os.geteuid() == 0 else "",
            f"listener {port} 127.0.0.1",
            f"cafile {workdir / 'client-ca.pem'}",
            f"certfile {workdir / 'server.pem'}",
            f"keyfile {workdir / 'server.key'}",
            "require_certificate true",
        ]
        if tls_version:
            lines.append(f"tls_version {tls_version}")
        conf.write_text("\n".join(lines) + "\n")
        log_path = workdir / "mosquitto.log"
        with log_path.open("wb") as log_file:
            proc = subprocess.Popen(
                [MOSQUITTO, "-c", str(conf)], stdout=log_file, stderr=subprocess.STDOUT
            )
        try:
            wait_for_port(port, proc=proc)
            assert port is not None
        except (RuntimeError, TimeoutError) as exc:
            last_error = exc
            proc.kill()
            proc.wait()
            continue
        try:
            yield Mosquitto(port, workdir / "server-ca.pem", proc, log_path)
        finally:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        return
    raise RuntimeError(f"mosquitto did not start: {last_error}; log: {log_path.read_text()}")
