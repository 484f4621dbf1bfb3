"""The ``renewal`` simulator scenario under a real Locust run against the real reference server:
a fleet whose certificates are near expiry renews (the SDK's policy decides), the customer's
signer runs on the Locust master with the fleet's CA key, and no connection fails. The run
ends on the event "every device renewed" (``-t`` is only the safety limit)."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import Encoding

from device_sdk.certs import certificate_sn, read_certificates
from device_sdk.fileio import PUBLIC_FILE_MODE, atomic_write
from firmware_helpers.issuing import load_issuing_ca
from firmware_helpers.pki import build_device_certificate
from firmware_helpers.platform_client import PlatformClient
from server_stub.launcher import RunningServer
from simulator.fleet import Fleet
from tests.simulator.conftest import iotx509, new_fleet

DEVICES = 12


def make_near_expiry(fleet: Fleet) -> dict[str, str]:
    """Re-issue every device's certificate with the fleet's CA (same key, same SN, so the
    association holds) valid 10 days of which 9 are gone; returns the SNs by device name."""
    assert fleet.ca is not None
    ca = load_issuing_ca(fleet.path(fleet.ca.cert), fleet.path(fleet.ca.key))
    now = datetime.now(UTC) - timedelta(days=9)
    sns = {}
    for device in fleet.devices:
        cert_path = fleet.path(device.cert)
        key = read_certificates(cert_path)[0].public_key()
        assert isinstance(key, rsa.RSAPublicKey)
        cert = build_device_certificate(
            ca,
            key,
            device.device_name,
            product_key=device.product_key,
            serial=int(device.cert_sn, 16),
            days=10,
            now=now,
        )
        atomic_write(cert_path, cert.public_bytes(Encoding.PEM), mode=PUBLIC_FILE_MODE)
        sns[device.device_name] = device.cert_sn
    return sns


@pytest.mark.heavy
def test_fleet_near_expiry_renews_under_locust_without_a_failed_connection(
    server: RunningServer, tmp_path: Path
) -> None:
    fleet = new_fleet(server, tmp_path / "fleet", DEVICES)
    old_sns = make_near_expiry(fleet)
    done = iotx509(
        *("fleet", "run", str(fleet.directory), "--scenario", "renewal", "--"),
        *("--headless", "-u", str(DEVICES), "-r", str(DEVICES), "-t", "120s"),
        *("--json", "--only-summary", "--loglevel", "WARNING"),
        timeout=240,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    # Locust's final numbers (--json prints them at shutdown; the CSV is written periodically)
    stats = {(e["method"], e["name"]): e for e in json.loads(done.stdout)}
    renewals, connects = stats[("RENEWAL", "renewal")], stats[("RENEWAL", "connect")]
    assert renewals["num_requests"] == DEVICES and renewals["num_failures"] == 0, stats
    # two sessions per device (the current pair, then the new one), none failed
    assert connects["num_requests"] == 2 * DEVICES and connects["num_failures"] == 0, stats
    summary = re.search(
        r"renewal: (\d+) renewed, ([\d.?]+) renewals/s, latency median ([\d.]+) s, "
        r"p95 ([\d.]+) s, max ([\d.]+) s; failed connections (\d+)",
        done.stderr,
    )
    assert summary is not None, done.stderr[-3000:]
    assert int(summary.group(1)) == DEVICES and summary.group(6) == "0"
    print(
        f"renewal scenario, {DEVICES} devices: {summary.group(2)} renewals/s, latency median "
        f"{summary.group(3)} s, p95 {summary.group(4)} s, max {summary.group(5)} s"
    )
    # each device holds a new certificate in place, and the platform only its new SN
    api = PlatformClient(server.http_url, server.token)
    assert fleet.ca is not None
    held = {a["deviceName"]: a["certSn"] for a in api.associations(fleet.ca.ca_sn)}
    for device in Fleet.load(fleet.directory).devices:
        new_sn = certificate_sn(read_certificates(fleet.path(device.cert))[0])
        assert new_sn != old_sns[device.device_name]
        assert held[device.device_name] == new_sn
