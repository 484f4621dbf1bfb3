"""The main job, run as a user runs it: ``iotx509 demo`` exits 0 after the whole flow."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path


def test_demo_runs_the_whole_flow_and_reports_each_identity(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "iotx509", "demo", "--devices", "2", "--data-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    product_key = re.search(r"created product (\w+)", out)
    assert product_key, out
    pk = product_key.group(1)
    # The table maps each certificate SN to the identity the platform told the device.
    rows = re.findall(rf"^\s+([0-9a-f]+)\s+{pk}\s+(sensor-\d{{4}})\s*$", out, re.MULTILINE)
    assert sorted(dn for _, dn in rows) == ["sensor-0001", "sensor-0002"], out
    # The files on disk follow [ProductKey]_[DeviceName]_[CA_SN].cer and carry those SNs.
    ca_sn = re.search(r"as caSn ([0-9a-f]+)", out)
    assert ca_sn
    for sn, dn in rows:
        cert = tmp_path / "devices" / f"{pk}_{dn}_{ca_sn.group(1)}.cer"
        assert cert.exists()
        serial = subprocess.run(
            ["openssl", "x509", "-noout", "-serial", "-in", str(cert)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert int(serial.strip().split("=")[1], 16) == int(sn, 16)
    assert out.count("device->cloud") == 2 and "done:" in out
    # The endpoint came from the server (GET /api/v1/endpoint), on the port it really chose.
    assert re.search(r"the platform says devices connect to mqtts://127\.0\.0\.1:\d+ ", out), out


def test_demo_refuses_a_silly_device_count() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "iotx509", "demo", "--devices", "0"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert result.stderr.strip() == "error: --devices must be between 1 and 1000"
