"""SIGKILL in the middle of writes: the store holds all or none of each, and stays intact.

The real server process is killed (SIGKILL, no clean-up of any kind) at spread-out moments
while it imports a 10,000-row association file, and while it registers a CA; after each kill
the store is checked with ``PRAGMA integrity_check`` and the server is started again on the same
data directory, where the import's devices and associations must number 0 or 10,000 and the CA
must be either fully there or absent.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from firmware_helpers import pki
from firmware_helpers.platform_client import PlatformAPIError, PlatformClient, UploadFile
from server_stub.launcher import running_server

from .conftest import make_tenant
from .reliability import record

ROWS = 10_000
IMPORT_KILLS = 12
CA_KILLS = 12
SPREAD = (0.05, 2.5)
"""Kill moments, as fractions of a whole request's time on a freshly started server."""


def _csv(product_key: str, prefix: str, base_sn: int) -> bytes:
    lines = ["ProductKey,DeviceName,CertSN"]
    lines += [f"{product_key},{prefix}-{i:05d},{base_sn + i:x}" for i in range(ROWS)]
    return ("\r\n".join(lines) + "\r\n").encode()


def _db(data_dir: Path) -> Path:
    return data_dir / "registry.sqlite3"


def _integrity_and_counts(data_dir: Path, prefix: str) -> tuple[str, int, int]:
    con = sqlite3.connect(_db(data_dir))
    try:
        status = con.execute("PRAGMA integrity_check").fetchone()[0]
        devices = con.execute(
            "SELECT count(*) FROM devices WHERE device_name LIKE ?", (prefix + "-%",)
        ).fetchone()[0]
        assoc = con.execute(
            "SELECT count(*) FROM associations a JOIN devices d ON d.id = a.device_id "
            "WHERE d.device_name LIKE ?",
            (prefix + "-%",),
        ).fetchone()[0]
        return str(status), int(devices), int(assoc)
    finally:
        con.close()


def _upload_in_thread(client: PlatformClient, ca_sn: str, data: bytes) -> threading.Thread:
    def run() -> None:
        try:
            client.associate(ca_sn, UploadFile("big.csv", data))
        except PlatformAPIError:
            pass  # the server died under it: expected

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


@pytest.mark.heavy
@pytest.mark.timeout(300)
def test_sigkill_during_association_import(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    with running_server(data_dir) as srv:
        tenant = make_tenant(srv.http_url, srv.token, devices={})
    with running_server(data_dir) as srv:  # timed like the kill runs: a freshly started server
        calibration = _csv(tenant.product_key, "cal", 1 << 40)
        client = PlatformClient(srv.http_url, srv.token)
        started = time.monotonic()
        assert client.associate(tenant.ca_sn, UploadFile("cal.csv", calibration)) == ROWS
        full_time = time.monotonic() - started
    outcomes: Counter[str] = Counter()
    for i in range(IMPORT_KILLS):
        prefix = f"k{i}"
        data = _csv(tenant.product_key, prefix, (i + 2) << 40)
        # kill moments spread from before the request arrives to well past its usual end
        delay = full_time * SPREAD[0] + full_time * (SPREAD[1] - SPREAD[0]) * i / (IMPORT_KILLS - 1)
        with running_server(data_dir) as srv:
            client = PlatformClient(srv.http_url, srv.token)
            thread = _upload_in_thread(client, tenant.ca_sn, data)
            time.sleep(delay)
            srv.process.kill()
            srv.process.wait()
            thread.join(30)
        status, devices, assoc = _integrity_and_counts(data_dir, prefix)
        assert status == "ok", status
        assert (devices, assoc) in ((0, 0), (ROWS, ROWS)), (i, delay, devices, assoc)
        with running_server(data_dir) as srv:  # restarts, and the API agrees with the store
            listed = PlatformClient(srv.http_url, srv.token).associations(tenant.ca_sn)
            names = {
                row["deviceName"]
                for row in listed
                if str(row["deviceName"]).startswith(prefix + "-")
            }
            assert len(names) == assoc, (len(names), assoc)
        outcomes["all" if assoc else "none"] += 1
    record(
        "crash-association-import",
        threat="server killed (SIGKILL) during a 10,000-row association import",
        tried=f"{IMPORT_KILLS} kills spread over {SPREAD[0]:.0%}..{SPREAD[1]:.0%} of an upload's "
        f"{full_time:.2f} s (request + import), restart on the same data dir",
        count=IMPORT_KILLS,
        result=f"all-or-none every time ({outcomes['all']} all, {outcomes['none']} none); "
        "integrity_check ok; server restarts",
    )
    assert sum(outcomes.values()) == IMPORT_KILLS


@pytest.mark.heavy
@pytest.mark.timeout(300)
def test_sigkill_during_ca_registration(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    cas = [pki.create_ca(f"Crash CA {i}") for i in range(CA_KILLS + 1)]
    with running_server(data_dir) as srv:
        code = PlatformClient(srv.http_url, srv.token).registration_code()
    verifications = [pki.issue_verification_certificate(ca, code) for ca in cas]
    with running_server(data_dir) as srv:  # timed like the kill runs: a freshly started server
        client = PlatformClient(srv.http_url, srv.token)
        started = time.monotonic()
        first = client.register_ca(
            "calibration",
            UploadFile("ca.pem", cas[0].cert_pem()),
            UploadFile("v.crt", verifications[0].cert_pem()),
        )
        full_time = time.monotonic() - started
        client.delete_ca(str(first["caSn"]))
    outcomes: Counter[str] = Counter()
    for i in range(1, CA_KILLS + 1):
        sn = format(cas[i].certificate.serial_number, "x")
        delay = full_time * SPREAD[0] + full_time * (SPREAD[1] - SPREAD[0]) * (i - 1) / (
            CA_KILLS - 1
        )
        with running_server(data_dir) as srv:
            client = PlatformClient(srv.http_url, srv.token)

            def register(index: int = i, c: PlatformClient = client) -> None:
                try:
                    c.register_ca(
                        f"crash_{index}",
                        UploadFile("ca.pem", cas[index].cert_pem()),
                        UploadFile("v.crt", verifications[index].cert_pem()),
                    )
                except PlatformAPIError:
                    pass

            thread = threading.Thread(target=register, daemon=True)
            thread.start()
            time.sleep(delay)
            srv.process.kill()
            srv.process.wait()
            thread.join(30)
        con = sqlite3.connect(_db(data_dir))
        try:
            assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        finally:
            con.close()
        with running_server(data_dir) as srv:
            client = PlatformClient(srv.http_url, srv.token)
            listed = {c["caSn"]: c for c in client.ca_certificates()}
            if sn in listed:
                whole = client.ca_certificate(sn)
                assert whole["name"] == f"crash_{i}" and whole["status"] == "active", whole
                assert whole["notBefore"] and whole["notAfter"] and whole["subject"]
                client.delete_ca(sn)
                outcomes["all"] += 1
            else:
                outcomes["none"] += 1
    record(
        "crash-ca-registration",
        threat="server killed (SIGKILL) during a CA registration",
        tried=f"{CA_KILLS} kills spread over {SPREAD[0]:.0%}..{SPREAD[1]:.0%} of a registration's "
        f"{full_time * 1000:.0f} ms (request + checks + store)",
        count=CA_KILLS,
        result=f"all-or-none every time ({outcomes['all']} stored whole, {outcomes['none']} "
        "absent); integrity_check ok; server restarts",
    )
