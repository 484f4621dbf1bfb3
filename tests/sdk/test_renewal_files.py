"""The renewal's files beside the current pair (docs/renewal.md, "Device"): each on-disk state,
what recover() makes of a step a kill interrupted, damaged or foreign state, permissions."""

from __future__ import annotations

import json
import logging
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from device_sdk.errors import RenewalStateError
from device_sdk.renewal import RenewalState
from device_sdk.renewal_files import RenewalFiles
from device_sdk.renewal_protocol import RenewalRequest
from tests.conftest import TestPKI

PK = "a1B2c3D4e5F"
CSR = "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n"
REQUEST = RenewalRequest("req-1", CSR)


@pytest.fixture
def files(pki: TestPKI, tmp_path: Path) -> RenewalFiles:
    cert, key, _pair = pki.write_device(PK, "files-01", directory=tmp_path)
    return RenewalFiles.for_files(cert, key)


def test_renewal_lives_beside_the_certificate(files: RenewalFiles) -> None:
    assert files.directory == files.cert.with_name(files.cert.name + ".renewal")
    store = RenewalFiles.for_store("/data/creds")
    assert store.directory == Path("/data/creds/renewal")
    assert store.key == Path("/data/creds/device.key")


def test_requested_then_received_then_promoted(files: RenewalFiles, pki: TestPKI) -> None:
    new = pki.device(PK, "files-01")
    old_cert, old_key = files.cert.read_bytes(), files.key.read_bytes()
    files.begin(REQUEST, new.key_pem(), old_cert_sn="1a")
    assert stat.S_IMODE(files.directory.stat().st_mode) == 0o700
    assert stat.S_IMODE(files.new_key.stat().st_mode) == 0o600
    assert stat.S_IMODE(files.state_path.stat().st_mode) == 0o600
    name, disk = files.read()
    assert name == "requested" and disk.request == REQUEST and disk.old_cert_sn == "1a"
    assert files.recover().state is RenewalState.REQUESTED
    files.store_certificate(new.cert_pem(), new.sn)
    name, disk = files.read()
    assert name == "received" and disk.cert_sn == new.sn and disk.request == REQUEST
    assert (files.cert.read_bytes(), files.key.read_bytes()) == (old_cert, old_key)
    files.promote()
    assert (files.cert.read_bytes(), files.key.read_bytes()) == (new.cert_pem(), new.key_pem())
    assert stat.S_IMODE(files.key.stat().st_mode) == 0o600
    assert not files.directory.exists()
    assert files.recover().state is RenewalState.IDLE


def test_recover_finishes_an_interrupted_promotion(files: RenewalFiles, pki: TestPKI) -> None:
    new = pki.device(PK, "files-01")
    files.begin(REQUEST, new.key_pem(), old_cert_sn="1a")
    files.store_certificate(new.cert_pem(), new.sn)
    # killed after the state said "accepted" and the key was replaced, before the certificate
    files._write_state({"state": "accepted", "certSn": new.sn, "oldCertSn": "1a"})
    files.key.write_bytes(new.key_pem())
    assert files.recover().state is RenewalState.IDLE
    assert (files.cert.read_bytes(), files.key.read_bytes()) == (new.cert_pem(), new.key_pem())
    assert not files.directory.exists()


def test_recover_steps_back_from_unfinished_steps(files: RenewalFiles, pki: TestPKI) -> None:
    new = pki.device(PK, "files-01")
    files.begin(REQUEST, new.key_pem(), old_cert_sn="1a")
    files.new_key.unlink()  # a state naming a key that is not there: abandoned
    assert files.recover().state is RenewalState.IDLE
    assert not files.directory.exists()
    files.begin(REQUEST, new.key_pem(), old_cert_sn="1a")
    files._write_state({"state": "received", "request": REQUEST.to_json(), "certSn": new.sn})
    # "received" without new.cer: back to requested (the platform sends the certificate again)
    disk = files.recover()
    assert disk.state is RenewalState.REQUESTED and disk.request == REQUEST


def test_leftovers_without_a_state_are_removed(files: RenewalFiles) -> None:
    files.directory.mkdir()
    (files.directory / "new.key").write_bytes(b"half a key")
    (files.directory / ".new.cer.xyz.tmp").write_bytes(b"half")
    assert files.recover().state is RenewalState.IDLE
    assert not files.directory.exists()


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b'{"state": "sideways"}',
        b'{"state": "requested"}',
        b'{"state": "requested", "request": {"id": "a b", "csr": "x"}}',
        b"x" * (70 * 1024),
    ],
)
def test_damaged_state_is_abandoned_with_a_warning_and_the_pair_kept(
    files: RenewalFiles, body: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "device_sdk.renewal_files")
    before = (files.cert.read_bytes(), files.key.read_bytes())
    files.directory.mkdir()
    (files.directory / "new.key").write_bytes(b"key")
    files.state_path.write_bytes(body)
    with pytest.raises(RenewalStateError, match="remove"):
        files.read()
    assert files.recover().state is RenewalState.IDLE
    assert "abandoning that renewal, the current pair is kept" in caplog.text
    assert not files.directory.exists()
    assert (files.cert.read_bytes(), files.key.read_bytes()) == before


def test_a_failed_write_keeps_the_current_pair(
    files: RenewalFiles, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The disk fills up while the key is written: a clear error, the current pair intact,
    nothing that recover() would take for a renewal."""
    from device_sdk import renewal_files

    before = (files.cert.read_bytes(), files.key.read_bytes())

    def full(*_a: object, **_k: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(renewal_files, "atomic_write", full)
    with pytest.raises(RenewalStateError, match="No space left on device"):
        files.begin(REQUEST, b"key", old_cert_sn="1a")
    monkeypatch.undo()
    assert files.recover().state is RenewalState.IDLE
    assert (files.cert.read_bytes(), files.key.read_bytes()) == before


def test_connect_path_and_an_idle_renewal_do_not_load_cryptography() -> None:
    """The new key is made with cryptography, imported only when a renewal starts."""
    code = (
        "import sys, device_sdk.client, device_sdk.renewal_manager, device_sdk.renewal_files;"
        "print('cryptography' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "False"


def test_state_file_is_plain_json_a_person_can_read(files: RenewalFiles, pki: TestPKI) -> None:
    files.begin(REQUEST, pki.device(PK, "files-01").key_pem(), old_cert_sn="1a")
    state = json.loads(files.state_path.read_text())
    assert state["state"] == "requested" and state["request"]["id"] == "req-1"


def test_new_key_is_rsa_2048_and_keeps_the_current_keys_password() -> None:
    from cryptography import x509

    from device_sdk.certs import load_private_key
    from device_sdk.csr import check_csr
    from device_sdk.errors import KeyPasswordError
    from device_sdk.renewal_keys import generate_key_and_csr

    made = generate_key_and_csr("files-01", password="s3cret")
    assert b"ENCRYPTED" in made.key_pem and b"BEGIN RSA PRIVATE KEY" in made.key_pem
    with pytest.raises(KeyPasswordError):
        load_private_key(made.key_pem)
    key = load_private_key(made.key_pem, password="s3cret")
    assert key.key_size == 2048  # type: ignore[union-attr]
    csr = x509.load_pem_x509_csr(made.csr_pem.encode())
    assert csr.public_key().public_numbers() == key.public_key().public_numbers()  # type: ignore[union-attr]
    check_csr(made.csr_pem, device_name="files-01")  # what the server and the signer accept
    plain = generate_key_and_csr("files-01")
    assert b"ENCRYPTED" not in plain.key_pem


def test_no_renewal_starts_over_an_unsettled_provisioning_commit(
    pki: TestPKI, tmp_path: Path
) -> None:
    """The board agent rewrites a store from its commit journal at its next start, which would
    undo a promotion: a renewal waits until the journal is settled."""
    from device_sdk.store_layout import CERTIFICATE_FILE, COMMIT_JOURNAL_FILE, PRIVATE_KEY_FILE

    root = tmp_path / "store"
    root.mkdir(mode=0o700)
    cert, key, _pair = pki.write_device(PK, "files-02", directory=tmp_path)
    (root / CERTIFICATE_FILE).write_bytes(cert.read_bytes())
    (root / PRIVATE_KEY_FILE).write_bytes(key.read_bytes())
    (root / COMMIT_JOURNAL_FILE).write_text("{}")
    files = RenewalFiles.for_store(root)
    with pytest.raises(RenewalStateError, match=r"unfinished provisioning commit .* board agent"):
        files.begin(REQUEST, b"key", old_cert_sn="1a")
    assert not files.directory.exists()
    (root / COMMIT_JOURNAL_FILE).unlink()
    files.begin(REQUEST, b"key", old_cert_sn="1a")
    assert files.read()[0] == "requested"
