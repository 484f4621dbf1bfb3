"""Renewal over real MQTT and TLS: the SDK (DeviceClient + Renewal) against a real Mosquitto
requiring client certificates, with a renewal responder on the same broker signing with the
test CA (tests/sdk/renewal_responder.py). Every wait is for an event of the code (a report, a
state change), never a sleep."""

from __future__ import annotations

import json
import logging
import stat
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from device_sdk.backoff import BackoffPolicy
from device_sdk.certs import certificate_sn, read_certificates
from device_sdk.client import ConnectionState, DeviceClient
from device_sdk.credentials import Credentials
from device_sdk.errors import ClockError, DeviceSDKError, NotConnectedError
from device_sdk.identity import Identity
from device_sdk.renewal import RenewalPolicy, ReportKind
from device_sdk.renewal_manager import Renewal
from device_sdk.store_layout import (
    CERTIFICATE_FILE,
    MANIFEST_FILE,
    PRIVATE_KEY_FILE,
    SERVER_CA_FILE,
)
from firmware_helpers.pki import issue_device_certificate
from tests.conftest import TestPKI
from tests.sdk.brokers import Mosquitto
from tests.sdk.renewal_responder import Responder, start_responder

PK = "a1B2c3D4e5F"
FAST = RenewalPolicy(
    reply_timeout=2.0,
    issue_timeout=5.0,
    resume_wait=0.5,
    retry=BackoffPolicy(base=0.05, cap=0.2, stable_period=0.0),
)
WAIT = 30.0


@pytest.fixture
def responder(
    request: pytest.FixtureRequest, mosquitto: Mosquitto, pki: TestPKI, tmp_path: Path
) -> Iterator[Responder]:
    mode = getattr(request, "param", "issue")
    r = start_responder(
        "127.0.0.1", mosquitto.port, mosquitto.server_ca_path, pki.ca, tmp_path / "resp", mode
    )
    yield r
    r.client.disconnect()


def near_expiry_pair(
    pki: TestPKI, directory: Path, name: str, left: float = 0.1
) -> tuple[Path, Path]:
    """A pair with ``left`` of its 10-day validity remaining (files as the platform names them)."""
    now = datetime.now(UTC) - timedelta(days=10 * (1 - left))
    cert, key, _pair = pki.write_device(PK, name, directory=directory, days=10, now=now)
    return cert, key


def plain_device(mosquitto: Mosquitto, credentials: Credentials, **kwargs: object) -> DeviceClient:
    """A client of the local Mosquitto (a generic broker: no identity message), no renewal."""
    return DeviceClient(
        "127.0.0.1",
        mosquitto.port,
        credentials,
        server_ca=mosquitto.server_ca_path,
        expect_identity=False,
        **kwargs,  # type: ignore[arg-type]
    )


def device(mosquitto: Mosquitto, renewal: Renewal, **kwargs: object) -> DeviceClient:
    """A client of the local Mosquitto with ``renewal`` attached."""
    client = plain_device(mosquitto, renewal.credentials, **kwargs)
    renewal.attach(client)
    return client


def sn_of(path: Path) -> str:
    return certificate_sn(read_certificates(path)[0])


# --- renewing ----------------------------------------------------------------------------------


def test_files_pair_renews_by_policy_and_reconnects_with_the_new_pair(
    mosquitto: Mosquitto, responder: Responder, pki: TestPKI, tmp_path: Path
) -> None:
    cert, key = near_expiry_pair(pki, tmp_path / "creds", "sensor-r1")
    old_sn = sn_of(cert)
    steps: list[str] = []
    renewal = Renewal.for_files(
        cert,
        key,
        policy=FAST,
        identity=Identity(PK, "sensor-r1"),
        subscribe_reply=True,
        on_step=steps.append,
    )
    online_sns: list[str] = []
    client = device(mosquitto, renewal)
    client.add_state_hook(
        lambda state, _e: (
            online_sns.append(client.credentials.sn) if state is ConnectionState.ONLINE else None
        )
    )
    client.connect(timeout=WAIT)
    try:
        report = renewal.wait((ReportKind.RENEWED, ReportKind.FAILED, ReportKind.REFUSED), WAIT)
        assert report is not None and report.kind is ReportKind.RENEWED, renewal.reports
    finally:
        client.disconnect()
        renewal.close()
    new_sn = sn_of(cert)
    assert new_sn != old_sn and responder.issued == [new_sn]
    assert Credentials.from_files(cert, key).sn == new_sn  # the files are a matching pair
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert not renewal.files.directory.exists()
    assert online_sns == [old_sn, new_sn]
    assert steps == [
        "key-generated",
        "key-stored",
        "request-sent",
        "certificate-stored",
        "online-new",
        "promoted",
    ]
    kinds = [r.kind for r in renewal.reports]
    assert kinds == [ReportKind.STARTED, ReportKind.QUEUED, ReportKind.ISSUED, ReportKind.RENEWED]
    # the new key was made on the device: RSA-2048, and the CSR named the device
    request = responder.requests[-1]
    assert "CERTIFICATE REQUEST" in request.csr
    assert Credentials.from_files(cert, key).private_key.key_size == 2048


def _write_store(pki: TestPKI, root: Path, name: str, mosquitto: Mosquitto) -> None:
    import hashlib

    root.mkdir(mode=0o700, parents=True)
    now = datetime.now(UTC) - timedelta(days=9)
    pair = issue_device_certificate(pki.ca, name, product_key=PK, days=10, now=now)
    pair.write(root / CERTIFICATE_FILE, root / PRIVATE_KEY_FILE)
    (root / SERVER_CA_FILE).write_bytes(mosquitto.server_ca_path.read_bytes())
    files = {
        n: {"sha256": hashlib.sha256((root / n).read_bytes()).hexdigest()}
        for n in (CERTIFICATE_FILE, PRIVATE_KEY_FILE, SERVER_CA_FILE)
    }
    (root / MANIFEST_FILE).write_text(json.dumps({"files": files}))


def test_credential_store_renews_on_demand_the_same_way(
    mosquitto: Mosquitto, responder: Responder, pki: TestPKI, tmp_path: Path
) -> None:
    import hashlib

    root = tmp_path / "store"
    _write_store(pki, root, "board-77", mosquitto)
    old_sn = sn_of(root / CERTIFICATE_FILE)
    renewal = Renewal.for_store(
        root,
        policy=RenewalPolicy(automatic=False, reply_timeout=5.0),
        identity=Identity(PK, "board-77"),
        subscribe_reply=True,
    )
    client = DeviceClient(
        "127.0.0.1", mosquitto.port, renewal.credentials, expect_identity=False
    )  # the store's server-ca.pem
    renewal.attach(client)
    client.connect(timeout=WAIT)
    try:
        client.renew_now()
        report = renewal.wait((ReportKind.RENEWED, ReportKind.FAILED), WAIT)
        assert report is not None and report.kind is ReportKind.RENEWED, renewal.reports
    finally:
        client.disconnect()
        renewal.close()
    creds = Credentials.from_store(root)
    assert creds.sn != old_sn and creds.sn == responder.issued[-1]
    assert not (root / "renewal").exists()
    manifest = json.loads((root / MANIFEST_FILE).read_text())["files"]
    for name in (CERTIFICATE_FILE, PRIVATE_KEY_FILE):
        assert manifest[name]["sha256"] == hashlib.sha256((root / name).read_bytes()).hexdigest()


def test_renew_now_without_a_renewal_says_how_to_attach_one(
    mosquitto: Mosquitto, pki: TestPKI, tmp_path: Path
) -> None:
    cert, key = near_expiry_pair(pki, tmp_path, "sensor-r0", left=0.9)
    client = DeviceClient("127.0.0.1", mosquitto.port, Credentials.from_files(cert, key))
    with pytest.raises(NotConnectedError, match="no renewal is attached"):
        client.renew_now()


# --- the signer refuses, fails, is silent, sends a wrong certificate -----------------------------


def _renew_expecting(
    mosquitto: Mosquitto, pki: TestPKI, tmp_path: Path, name: str, kind: ReportKind, count: int = 1
) -> tuple[Renewal, Path, Path, str]:
    cert, key = near_expiry_pair(pki, tmp_path / "creds", name)
    before = (cert.read_bytes(), key.read_bytes())
    renewal = Renewal.for_files(
        cert, key, policy=FAST, identity=Identity(PK, name), subscribe_reply=True
    )
    client = device(mosquitto, renewal)
    client.connect(timeout=WAIT)
    try:
        seen = 0
        reason = ""
        for _ in range(count):
            report = renewal.wait((kind,), WAIT, since=seen)
            assert report is not None, renewal.reports
            seen = renewal.reports.index(report) + 1
            reason = report.reason
        assert client.state is ConnectionState.ONLINE
        assert client.credentials.sn == sn_of(cert)  # still the current pair
    finally:
        client.disconnect()
        renewal.close()
    assert (cert.read_bytes(), key.read_bytes()) == before  # nothing half-replaced
    return renewal, cert, key, reason


@pytest.mark.parametrize("responder", ["refuse"], indirect=True)
def test_refusal_keeps_the_pair_and_reports_the_reason_without_resending(
    mosquitto: Mosquitto,
    responder: Responder,
    pki: TestPKI,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, "device_sdk.renewal_manager")
    renewal, _cert, _key, reason = _renew_expecting(
        mosquitto, pki, tmp_path, "sensor-r2", ReportKind.REFUSED
    )
    assert reason == "CSR key is not RSA-2048"
    assert "certificate renewal refused" in caplog.text and reason in caplog.text
    assert not renewal.files.directory.exists()
    assert len(responder.requests) == 1


@pytest.mark.parametrize("responder", ["fail"], indirect=True)
def test_failed_replies_are_retried_with_backoff_with_the_same_request(
    mosquitto: Mosquitto, responder: Responder, pki: TestPKI, tmp_path: Path
) -> None:
    renewal, _cert, _key, reason = _renew_expecting(
        mosquitto, pki, tmp_path, "sensor-r3", ReportKind.FAILED, count=3
    )
    assert reason == "signer unreachable"
    assert len({r.id for r in responder.requests}) == 1 and len(responder.requests) >= 3
    failures = [r for r in renewal.reports if r.kind is ReportKind.FAILED]
    assert all(r.retry_in is not None and r.retry_in <= 0.2 for r in failures)


@pytest.mark.parametrize("responder", ["silent"], indirect=True)
def test_no_answer_is_reported_and_retried(
    mosquitto: Mosquitto, responder: Responder, pki: TestPKI, tmp_path: Path
) -> None:
    _renewal, _cert, _key, reason = _renew_expecting(
        mosquitto, pki, tmp_path, "sensor-r4", ReportKind.FAILED, count=2
    )
    assert reason == "no answer from the platform within 2 s"
    assert len(responder.requests) >= 2


@pytest.mark.parametrize("responder", ["foreign"], indirect=True)
def test_a_certificate_for_another_key_is_not_stored(
    mosquitto: Mosquitto, responder: Responder, pki: TestPKI, tmp_path: Path
) -> None:
    renewal, _cert, _key, reason = _renew_expecting(
        mosquitto, pki, tmp_path, "sensor-r5", ReportKind.FAILED
    )
    assert "the issued certificate cannot be used" in reason
    assert "does not belong" in reason or "match" in reason
    assert not renewal.files.new_cert.exists()


@pytest.mark.parametrize("responder", ["untrusted"], indirect=True)
def test_a_refused_new_pair_falls_back_to_the_current_one_at_once(
    mosquitto: Mosquitto, responder: Responder, pki: TestPKI, tmp_path: Path
) -> None:
    cert, key = near_expiry_pair(pki, tmp_path / "creds", "sensor-r8")
    before = (cert.read_bytes(), key.read_bytes())
    renewal = Renewal.for_files(
        cert, key, policy=FAST, identity=Identity(PK, "sensor-r8"), subscribe_reply=True
    )
    sessions: list[str] = []
    back = threading.Event()
    client = device(mosquitto, renewal)

    def on_state(state: ConnectionState, error: DeviceSDKError | None) -> None:
        if state is ConnectionState.ONLINE:
            sessions.append(client.credentials.sn)
            if len(sessions) >= 2:
                back.set()

    client.add_state_hook(on_state)
    client.connect(timeout=WAIT)
    try:
        report = renewal.wait((ReportKind.FAILED,), WAIT)
        assert report is not None, renewal.reports
        assert back.wait(WAIT)
    finally:
        client.disconnect()
        renewal.close()
    assert "the platform refused the new certificate" in report.reason
    assert sessions[:2] == [sn_of(cert), sn_of(cert)]  # the current pair, and again after it
    assert (cert.read_bytes(), key.read_bytes()) == before
    assert not renewal.files.new_cert.exists()


@pytest.mark.parametrize("responder", ["noisy"], indirect=True)
def test_malformed_and_foreign_replies_are_ignored_and_logged(
    mosquitto: Mosquitto,
    responder: Responder,
    pki: TestPKI,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, "device_sdk.renewal_manager")
    cert, key = near_expiry_pair(pki, tmp_path / "creds", "sensor-r9")
    renewal = Renewal.for_files(
        cert, key, policy=FAST, identity=Identity(PK, "sensor-r9"), subscribe_reply=True
    )
    client = device(mosquitto, renewal)
    client.connect(timeout=WAIT)
    try:
        report = renewal.wait((ReportKind.RENEWED, ReportKind.REFUSED, ReportKind.FAILED), WAIT)
    finally:
        client.disconnect()
        renewal.close()
    assert report is not None and report.kind is ReportKind.RENEWED, renewal.reports
    assert "needs certificate and certSn" in caplog.text  # the 'issued' without a certificate
    assert "renewal reply is 100000 bytes; at most" in caplog.text  # refused unparsed
    assert sn_of(cert) == responder.issued[-1]


# --- expiry ------------------------------------------------------------------------------------


def test_near_expiry_without_renewal_warns_by_log_and_callback(
    mosquitto: Mosquitto, pki: TestPKI, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "device_sdk.client")
    cert, key = near_expiry_pair(pki, tmp_path, "sensor-r6", left=0.15)
    warned: list[float] = []
    client = plain_device(
        mosquitto,
        Credentials.from_files(cert, key),
        on_certificate_expiring=lambda _creds, days: warned.append(days),
    )
    client.connect(timeout=WAIT)
    client.disconnect()
    assert len(warned) == 1 and 1.0 < warned[0] < 2.0
    assert "expires in 1.5 days and no renewal is configured" in caplog.text


def test_near_expiry_during_a_session_warns_once_when_the_moment_comes(
    mosquitto: Mosquitto, pki: TestPKI, tmp_path: Path
) -> None:
    # a 5-minute certificate (pki backdates 5 min) ending in 66 s: 20% left from 6 s from now
    end = datetime.now(UTC) + timedelta(seconds=66)
    cert, key, _pair = pki.write_device(PK, "sensor-r10", directory=tmp_path, days=0, now=end)
    warned = threading.Event()
    seen: list[float] = []

    def on_expiring(_creds: Credentials, days: float) -> None:
        seen.append(days)
        warned.set()

    client = plain_device(
        mosquitto, Credentials.from_files(cert, key), on_certificate_expiring=on_expiring
    )
    client.connect(timeout=WAIT)
    try:
        assert warned.wait(WAIT)
        assert client.state is ConnectionState.ONLINE  # a warning, not the end of the session
    finally:
        client.disconnect()
    assert len(seen) == 1 and 0 < seen[0] * 86400 <= 60.5  # (less than 20% of 300 s left)


def test_session_ends_when_the_certificate_expires_and_no_new_one_is_made(
    mosquitto: Mosquitto, pki: TestPKI, tmp_path: Path
) -> None:
    # valid for 4 more seconds: the session is online, then the expiry ends it
    now = datetime.now(UTC) - timedelta(days=1) + timedelta(seconds=4)
    cert, key, _pair = pki.write_device(PK, "sensor-r7", directory=tmp_path, days=1, now=now)
    offline = threading.Event()
    errors: list[DeviceSDKError | None] = []

    def on_state(state: ConnectionState, error: DeviceSDKError | None) -> None:
        if state is ConnectionState.OFFLINE:
            errors.append(error)
            offline.set()

    client = plain_device(
        mosquitto, Credentials.from_files(cert, key), on_connection_state=on_state
    )
    client.connect(timeout=WAIT)
    try:
        assert offline.wait(WAIT)
    finally:
        client.disconnect()
    assert isinstance(errors[0], ClockError) and errors[0].expired
    assert "has expired" in str(errors[0])
    # and the one validity check refuses the pair from now on, before any network traffic
    with pytest.raises(ClockError, match="has expired"):
        Credentials.from_files(cert, key)
