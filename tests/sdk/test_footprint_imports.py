"""The device's connect path never imports ``cryptography`` (issue 16: its second OpenSSL is most of
the SDK's memory beyond paho's). Checked in a fresh interpreter: import the SDK, load and check a
pair, build the TLS context, connect to a real Mosquitto; then look at ``sys.modules``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from cryptography.hazmat.primitives import serialization

from tests.common import PkiFactory
from tests.sdk.brokers import Mosquitto
from tests.sdk.conftest import PK

ROOT = Path(__file__).resolve().parents[2]

CHILD = r"""
import json, sys
cert, key, server_ca, port = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
password = sys.argv[5] if len(sys.argv) > 5 else None
from device_sdk import Credentials, DeviceClient
creds = Credentials.from_files(cert, key, password, check_key=password is None)
steps = {"loaded": "cryptography" in sys.modules}
if port != "-":
    client = DeviceClient("127.0.0.1", int(port), creds, server_ca=server_ca,
                          expect_identity=False, client_id="no-crypto")
    client.connect(timeout=10)
    client.disconnect()
    steps["connected"] = "cryptography" in sys.modules
steps["modules"] = sorted(m for m in sys.modules if m.split(".")[0] in ("cryptography", "OpenSSL"))
print(json.dumps(steps))
"""


def _run(*args: str) -> dict[str, object]:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, *args], capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert out.returncode == 0, out.stderr
    result: dict[str, object] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def test_loading_checking_and_connecting_never_import_cryptography(
    pki: PkiFactory, device_files: tuple[Path, Path], mosquitto: Mosquitto
) -> None:
    cert, key = device_files
    result = _run(str(cert), str(key), str(mosquitto.server_ca_path), str(mosquitto.port))
    assert result == {"loaded": False, "connected": False, "modules": []}


def test_the_check_still_refuses_a_wrong_key_without_cryptography(
    pki: PkiFactory, device_files: tuple[Path, Path], tmp_path: Path
) -> None:
    cert, _key = device_files
    other = pki.device(PK, "sensor40")
    wrong = tmp_path / "other.key"
    wrong.write_bytes(other.key_pem())
    wrong.chmod(0o600)
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(cert), str(wrong), "-", "-"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert out.returncode != 0
    assert "KeyMismatchError" in out.stderr and "does not belong to the certificate" in out.stderr


def test_an_encrypted_key_reaches_openssl_without_cryptography(
    pki: PkiFactory, tmp_path: Path
) -> None:
    """``check_key=False``: OpenSSL decrypts the key; nothing else reads it."""
    dev = pki.device(PK, "sensor41")
    cert, key = tmp_path / "d.cer", tmp_path / "d.key"
    cert.write_bytes(dev.cert_pem())
    key.write_bytes(
        dev.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"pw"),
        )
    )
    key.chmod(0o600)
    assert _run(str(cert), str(key), "-", "-", "pw") == {"loaded": False, "modules": []}
