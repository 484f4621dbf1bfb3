"""What the device SDK costs on a board, beside bare paho-mqtt: import time and resident memory.

Each run is a fresh Python subprocess that imports, connects to a local Mosquitto 2
(``require_certificate true``, mutual TLS on loopback) and reports:

- import time: the ``import`` statements only (not interpreter start-up),
- RSS after connecting (VmRSS from /proc/self/status, once CONNACK arrived).

``paho`` imports ``paho.mqtt.client`` and connects with an ``ssl.SSLContext`` built from the
certificate and key files; ``sdk`` imports ``device_sdk`` and connects with
``Credentials.from_files`` + ``DeviceClient.connect`` (``expect_identity=False``: Mosquitto does
not publish identities). Runs alternate between the two; medians are reported with the deltas.
Target: the SDK adds at most 5 MB and 150 ms.

    python bench/bench_sdk_footprint.py            # 7 runs of each (~20 s)
    python bench/bench_sdk_footprint.py --runs 15
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from firmware_helpers.pki import create_ca, issue_device_certificate  # noqa: E402
from testkit.mosquitto import run_mosquitto  # noqa: E402

TARGET_MB = 5.0
TARGET_MS = 150.0

CHILD_COMMON = r"""
import json, sys, time
def status_mb(field):
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")
port, server_ca, cert, key = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
"""

CHILD_PAHO = (
    CHILD_COMMON
    + r"""
t0 = time.perf_counter()
import ssl, threading
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
with_crypto = "--with-cryptography" in sys.argv
if with_crypto:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
import_s = time.perf_counter() - t0
t1 = time.perf_counter()
if with_crypto:  # what the certificate model does with the pair: parse both, check the key
    x509.load_pem_x509_certificate(open(cert, "rb").read())
    serialization.load_pem_private_key(open(key, "rb").read(), password=None)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.minimum_version = ssl.TLSVersion.TLSv1_2
ctx.load_verify_locations(server_ca)
ctx.load_cert_chain(cert, key)
done = threading.Event()
client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-paho")
client.tls_set_context(ctx)
client.on_connect = lambda *a: done.set()
client.connect("127.0.0.1", port, 300)
client.loop_start()
if not done.wait(10):
    sys.exit("no CONNACK")
connect_s = time.perf_counter() - t1
rss, anon = status_mb("VmRSS"), status_mb("RssAnon")
client.disconnect(); client.loop_stop()
print(json.dumps({"import_ms": import_s * 1000, "connect_ms": connect_s * 1000, "rss_mb": rss,
                  "anon_mb": anon}))
"""
)

CHILD_SDK = (
    CHILD_COMMON
    + r"""
t0 = time.perf_counter()
from device_sdk import Credentials, DeviceClient
import device_sdk.client, device_sdk.credentials  # the lazy exports, loaded now
import_s = time.perf_counter() - t0
t1 = time.perf_counter()
creds = Credentials.from_files(cert, key)
client = DeviceClient("127.0.0.1", port, creds, server_ca=server_ca, expect_identity=False,
                      client_id="bench-sdk")
client.connect(timeout=10)
connect_s = time.perf_counter() - t1
rss, anon = status_mb("VmRSS"), status_mb("RssAnon")
client.disconnect()
print(json.dumps({"import_ms": import_s * 1000, "connect_ms": connect_s * 1000, "rss_mb": rss,
                  "anon_mb": anon}))
"""
)


def run_child(code: str, args: list[str]) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    if out.returncode != 0:
        raise SystemExit(f"benchmark child failed:\n{out.stderr}")
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=7, help="runs of each side (default 7)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-sdk-") as tmp:
        work = Path(tmp)
        ca = create_ca("Bench Device CA")
        device = issue_device_certificate(ca, "bench01", product_key="a1B2c3D4e5F")
        cert, key = work / "device.cer", work / "device.key"
        device.write(cert, key)
        with run_mosquitto(work / "mosquitto", ca.cert_pem()) as broker:
            child_args = [str(broker.port), str(broker.server_ca_path), str(cert), str(key)]
            sides = {
                "paho": (CHILD_PAHO, []),
                "sdk": (CHILD_SDK, []),
                "paho+crypto": (CHILD_PAHO, ["--with-cryptography"]),
            }
            results: dict[str, list[dict[str, float]]] = {name: [] for name in sides}
            for code, extra in sides.values():  # warm the page cache before measuring
                run_child(code, child_args + extra)
            started = time.monotonic()
            for n in range(args.runs):
                for name, (code, extra) in sides.items():
                    results[name].append(run_child(code, child_args + extra))
                print(
                    f"run {n + 1}/{args.runs} done ({time.monotonic() - started:.1f} s)",
                    file=sys.stderr,
                )

    def median(side: str, key: str) -> float:
        return statistics.median(r[key] for r in results[side])

    print(
        f"\nSDK footprint vs bare paho-mqtt, median of {args.runs} fresh processes each "
        "(mutual TLS to a local Mosquitto 2)"
    )
    print(
        f"{'':26}{'paho-mqtt':>11}{'device_sdk':>11}{'delta':>9}{'target':>9}"
        f"{'paho+crypto':>13}{'SDK beyond it':>15}"
    )
    rows = [
        ("import time (ms)", "import_ms", TARGET_MS),
        ("RSS after connect (MB)", "rss_mb", TARGET_MB),
        ("  private (RssAnon, MB)", "anon_mb", None),
        ("connect (ms)", "connect_ms", None),
    ]
    verdicts = []
    for label, field, target in rows:
        paho, sdk, crypto = (
            median("paho", field),
            median("sdk", field),
            median("paho+crypto", field),
        )
        delta = sdk - paho
        target_text = f"<={target:g}" if target is not None else "-"
        print(
            f"{label:26}{paho:11.1f}{sdk:11.1f}{delta:+9.1f}{target_text:>9}"
            f"{crypto:13.1f}{sdk - crypto:+15.1f}"
        )
        if target is not None:
            verdicts.append(delta <= target)
    print(
        "\n'paho+crypto' is paho-mqtt plus the cryptography package loading the same certificate"
        "\nand key: the part of the SDK's cost that is its certificate-model dependency."
    )
    print("within target" if all(verdicts) else "OVER TARGET (see the columns for where it goes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
