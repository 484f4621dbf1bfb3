"""Renewal end to end from the device's side: the real reference server (HTTP API + MQTT over
mutual TLS), the customer's real signer (a thread polling the HTTP API; once the
``iotx509 ca signer --once`` command), and the real SDK (DeviceClient + Renewal) that renews and
reconnects with its new certificate; the old SN is retired. Every wait is for an event of the
code (a report, a line, a state), never a sleep."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from device_sdk.certs import certificate_sn, read_certificates
from device_sdk.client import ConnectionState, DeviceClient
from device_sdk.credentials import Credentials
from device_sdk.errors import ConnectionFailedError
from device_sdk.renewal import RenewalPolicy, ReportKind
from device_sdk.renewal_manager import Renewal
from tests.sdk.renewal_platform import RenewalPlatform, renewal_platform

ROOT = Path(__file__).resolve().parents[2]
WAIT = 60.0


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RenewalPlatform]:
    with renewal_platform(tmp_path_factory.mktemp("sdk-renewal")) as p:
        yield p


def client_for(platform: RenewalPlatform, credentials: Credentials, **kw: object) -> DeviceClient:
    return DeviceClient(
        platform.server.mqtt_host,
        platform.server.mqtt_port,
        credentials,
        server_ca=platform.server.server_ca,
        **kw,  # type: ignore[arg-type]
    )


def sn_of(path: Path) -> str:
    return certificate_sn(read_certificates(path)[0])


def test_device_renews_through_server_and_signer_and_the_old_sn_is_retired(
    platform: RenewalPlatform, tmp_path: Path
) -> None:
    name, cert, key, _pair = platform.device("e2e")
    old = Credentials.from_files(cert, key)  # kept in memory: the files will be replaced
    renewal = Renewal.for_files(cert, key)  # the default policy: renew when < 20% is left
    client = client_for(platform, renewal.credentials, identity_store=tmp_path / "identity.json")
    renewal.attach(client)
    started = time.monotonic()
    client.connect(timeout=WAIT)
    try:
        report = renewal.wait((ReportKind.RENEWED, ReportKind.REFUSED), WAIT)
        latency = time.monotonic() - started
        assert report is not None and report.kind is ReportKind.RENEWED, renewal.reports
        assert client.state is ConnectionState.ONLINE
        new_sn = client.credentials.sn
    finally:
        client.disconnect()
        renewal.close()
    print(f"renewal latency (connect to renewed, signer polling every 0.1 s): {latency:.2f} s")
    assert new_sn != old.sn and sn_of(cert) == new_sn
    assert [r.kind for r in renewal.reports] == [
        ReportKind.STARTED,
        ReportKind.QUEUED,
        ReportKind.ISSUED,
        ReportKind.RENEWED,
    ]
    # the platform: one association, the new SN; the old SN no longer connects
    assert platform.settled_sns(name, {new_sn}) == {new_sn}
    with pytest.raises(ConnectionFailedError):
        client_for(platform, old).connect(timeout=20)
    # the identity file follows the certificate: the next start uses it at once
    stored = json.loads((tmp_path / "identity.json").read_text())
    assert stored["certSn"] == new_sn and stored["deviceName"] == name
    # and the renewed pair connects after a restart
    again = client_for(platform, Credentials.from_files(cert, key))
    assert again.connect(timeout=WAIT) is not None
    again.disconnect()


def test_serial_provisioned_store_renews_the_same_way(
    platform: RenewalPlatform, tmp_path: Path
) -> None:
    """The store is written by the board agent's own code (what serial provisioning commits),
    renewed through the real server and signer; the board's inventory and manifest then
    describe the new files."""
    from firmware_helpers.serial.board import CredentialStore
    from firmware_helpers.serial.protocol import ObjectType

    name, cert, key, pair = platform.device("store", directory=tmp_path / "issued")
    store = CredentialStore(tmp_path / "store")
    store.commit(
        {
            ObjectType.CERTIFICATE: cert.read_bytes(),
            ObjectType.PRIVATE_KEY: key.read_bytes(),
            ObjectType.SERVER_CA: platform.server.server_ca.read_bytes(),
        }
    )
    store.settle()
    renewal = Renewal.for_store(store.root, policy=RenewalPolicy(automatic=False))
    client = DeviceClient(
        platform.server.mqtt_host, platform.server.mqtt_port, renewal.credentials
    )  # server CA from the store
    renewal.attach(client)
    client.connect(timeout=WAIT)
    try:
        client.renew_now()
        report = renewal.wait((ReportKind.RENEWED, ReportKind.REFUSED), WAIT)
        assert report is not None and report.kind is ReportKind.RENEWED, renewal.reports
    finally:
        client.disconnect()
        renewal.close()
    renewed = Credentials.from_store(store.root)
    assert renewed.sn != pair.sn
    assert platform.settled_sns(name, {renewed.sn}) == {renewed.sn}
    assert not (store.root / "renewal").exists()
    manifest = json.loads((store.root / "manifest.json").read_text())["files"]
    for info in store.inventory():
        file_name = store.path_of(info.object_type).name
        assert manifest[file_name]["sha256"] == info.sha256.hex()


def test_signer_refusing_keeps_the_current_pair_and_reports_why(
    platform: RenewalPlatform, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server refuses a CSR naming another device: refused, reason given, nothing replaced.
    (A device's SDK never makes such a CSR: this one is patched to, as a hostile firmware.)"""
    from device_sdk import renewal_keys

    name, cert, key, _pair = platform.device("refused")
    before = (cert.read_bytes(), key.read_bytes())
    renewal = Renewal.for_files(cert, key, policy=RenewalPolicy(automatic=False))
    client = client_for(platform, renewal.credentials)
    renewal.attach(client)
    real = renewal_keys.generate_key_and_csr
    monkeypatch.setattr(
        renewal_keys, "generate_key_and_csr", lambda _dn, **kw: real("someone-else", **kw)
    )
    try:
        client.connect(timeout=WAIT)
        client.renew_now()
        report = renewal.wait((ReportKind.RENEWED, ReportKind.REFUSED), WAIT)
    finally:
        client.disconnect()
        renewal.close()
    assert report is not None and report.kind is ReportKind.REFUSED
    assert "someone-else" in report.reason
    assert (cert.read_bytes(), key.read_bytes()) == before
    assert not renewal.files.directory.exists()
    assert platform.settled_sns(name, {sn_of(cert)}) == {sn_of(cert)}


def test_iotx509_device_renew_renews_one_device_now(
    platform: RenewalPlatform, tmp_path: Path
) -> None:
    name, cert, key, _pair = platform.device("cli", left=0.9)  # not due: on demand
    old_sn = sn_of(cert)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "iotx509",
            "device",
            "renew",
            "--cert",
            str(cert),
            "--key",
            str(key),
            "--host",
            platform.server.mqtt_host,
            "--port",
            str(platform.server.mqtt_port),
            "--server-ca",
            str(platform.server.server_ca),
            "--timeout",
            "60",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        check=False,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["oldCertSn"] == old_sn and result["certSn"] == sn_of(cert) != old_sn
    assert result["deviceName"] == name and result["status"] == "renewed"
    assert platform.settled_sns(name, {result["certSn"]}) == {result["certSn"]}


@pytest.fixture(scope="module")
def platform_without_signer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RenewalPlatform]:
    with renewal_platform(tmp_path_factory.mktemp("sdk-renewal-nosigner"), serve=False) as p:
        yield p


def _renew_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "iotx509", "device", "renew", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        check=False,
    )


def test_device_renew_without_a_signer_keeps_the_pair_exits_69_and_resumes_later(
    platform_without_signer: RenewalPlatform,
) -> None:
    platform = platform_without_signer
    name, cert, key, _pair = platform.device("nosigner", left=0.9)
    before = (cert.read_bytes(), key.read_bytes())
    server = platform.server
    where = [
        *("--cert", str(cert), "--key", str(key), "--host", server.mqtt_host),
        *("--port", str(server.mqtt_port), "--server-ca", str(server.server_ca)),
    ]
    done = _renew_cli(*where, "--timeout", "3")
    assert done.returncode == 69, done.stderr
    assert "no new certificate within 3 s" in done.stderr
    assert "is the customer's signer, 'iotx509 ca signer', running?" in done.stderr
    assert (cert.read_bytes(), key.read_bytes()) == before
    assert cert.with_name(cert.name + ".renewal").is_dir()  # requested: resumed next time
    # the signer comes; the next run resumes the same request and finishes
    platform.signer.run_once()
    again = _renew_cli(*where, "--timeout", "60")
    assert again.returncode == 0, again.stderr
    result = json.loads(again.stdout)
    assert result["certSn"] == sn_of(cert) and platform.settled_sns(name, {result["certSn"]}) == {
        result["certSn"]
    }


def test_device_renew_usage_errors_exit_2() -> None:
    done = _renew_cli("--port", "8883")
    assert done.returncode == 2 and "give --cert and --key (or --store DIR)" in done.stderr
    done = _renew_cli("--store", "/nonexistent", "--cert", "c", "--key", "k")
    assert done.returncode == 2 and "either --store or --cert/--key" in done.stderr
