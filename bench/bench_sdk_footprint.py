"""What the device SDK costs on a board, beside the AWS IoT Device SDK v2 and bare paho-mqtt.

Each run is a fresh Python subprocess that imports, connects to one local Mosquitto 2
(``require_certificate true``, mutual TLS on loopback, the same device pair for all) and reports:

- import time: the ``import`` statements only (not interpreter start-up), as CPU time (the
  target: on a shared machine other processes stretch wall time, on an idle board the two
  agree) and wall time,
- RSS after connecting (VmRSS from /proc/self/status, once CONNACK arrived),
- whether ``cryptography`` was imported (the SDK's connect path must not: issue 16).

Sides: ``sdk`` (``Credentials.from_files`` + ``DeviceClient.connect``, ``expect_identity=False``:
Mosquitto publishes no identity), ``awsiotsdk`` (``awsiot.mqtt_connection_builder.mtls_from_path``
on awscrt, the reference of issue 16), ``paho`` (``paho.mqtt.client`` with an ``ssl.SSLContext``
from the files: the floor). Runs alternate between the sides; medians, the spread (min-max) and
the ratios are reported. Targets (issue 16): the SDK's RSS and import time <= awsiotsdk's.

``awsiotsdk`` is installed for this benchmark only, with pip ``--target`` into a cache folder
(``~/.cache/iotx509-bench/awsiotsdk``, or ``$IOTX509_BENCH_DEPS``) that only its child process
sees (``PYTHONPATH``); the project's environment does not get it. When it cannot be installed,
the report says so and compares with paho alone.

    python bench/bench_sdk_footprint.py            # 9 runs of each side
    python bench/bench_sdk_footprint.py --runs 15
"""

from __future__ import annotations

import argparse
import json
import os
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

AWS_REQUIREMENT = "awsiotsdk==1.31.0"

CHILD_COMMON = r"""
import json, sys, time
def status_mb(field):
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")
def report(import_s, connect_s):
    print(json.dumps({"import_ms": import_s * 1000, "import_cpu_ms": import_cpu_s * 1000,
                      "connect_ms": connect_s * 1000,
                      "rss_mb": status_mb("VmRSS"), "anon_mb": status_mb("RssAnon"),
                      "cryptography": "cryptography" in sys.modules}))
port, server_ca, cert, key = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
"""


def child(imports: str, connect: str, close: str) -> str:
    """A child script: ``imports`` timed as the import cost, ``connect`` (up to the CONNACK) as
    the connect time, the report printed, then ``close``; every side measured by the same lines."""
    return (
        CHILD_COMMON
        + "c0 = time.process_time()\n"
        + "t0 = time.perf_counter()\n"
        + imports
        + "import_s = time.perf_counter() - t0\n"
        + "import_cpu_s = time.process_time() - c0\n"
        + "t1 = time.perf_counter()\n"
        + connect
        + "connect_s = time.perf_counter() - t1\n"
        + "report(import_s, connect_s)\n"
        + close
    )


CHILD_PAHO = child(
    r"""import ssl, threading
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
""",
    r"""ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
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
""",
    "client.disconnect(); client.loop_stop()\n",
)

CHILD_SDK = child(
    r"""from device_sdk import Credentials, DeviceClient
import device_sdk.client, device_sdk.credentials  # the lazy exports, loaded now
""",
    r"""creds = Credentials.from_files(cert, key)
client = DeviceClient("127.0.0.1", port, creds, server_ca=server_ca, expect_identity=False,
                      client_id="bench-sdk")
client.connect(timeout=10)
""",
    "client.disconnect()\n",
)

CHILD_AWS = child(
    r"""from awscrt import mqtt
from awsiot import mqtt_connection_builder
""",
    r"""connection = mqtt_connection_builder.mtls_from_path(
    endpoint="localhost", port=port, cert_filepath=cert, pri_key_filepath=key,
    ca_filepath=server_ca, client_id="bench-aws", clean_session=True, keep_alive_secs=300)
connection.connect().result(10)
""",
    "connection.disconnect().result(10)\n",
)


Sides = dict[str, tuple[str, dict[str, str]]]
Results = dict[str, list[dict[str, float]]]


def aws_sdk_path() -> tuple[Path | None, str]:
    """The folder holding awsiotsdk for the child, installed on first use; or None and why."""
    target = Path(os.environ.get("IOTX509_BENCH_DEPS", Path.home() / ".cache/iotx509-bench"))
    target = target / "awsiotsdk"
    marker = target / ".installed"
    if marker.is_file() and marker.read_text() == AWS_REQUIREMENT:
        return target, AWS_REQUIREMENT
    print(f"installing {AWS_REQUIREMENT} into {target} (this benchmark only)", file=sys.stderr)
    pip = [sys.executable, "-m", "pip", "install", "--quiet", "--upgrade", "--target"]
    proc = subprocess.run(
        [*pip, str(target), AWS_REQUIREMENT],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["pip failed"])[-1]
        return None, f"{AWS_REQUIREMENT} could not be installed here: {last}"
    marker.write_text(AWS_REQUIREMENT)
    return target, AWS_REQUIREMENT


def child_env(pycache: Path, extra_path: Path | None = None) -> dict[str, str]:
    """The children's environment: bytecode cached (in ``pycache``, outside the checkout), as in
    an installed package: pip compiles what it installs, so a board imports .pyc files. (This
    machine sets PYTHONDONTWRITEBYTECODE: without the cache the SDK, a source checkout, would
    be compiled on every import while paho and awscrt are not.)"""
    env = {
        k: v for k, v in os.environ.items() if k not in ("PYTHONDONTWRITEBYTECODE", "PYTHONPATH")
    }
    env["PYTHONPYCACHEPREFIX"] = str(pycache)
    if extra_path is not None:
        env["PYTHONPATH"] = str(extra_path)  # awsiotsdk's folder only, not the project's
    return env


def run_child(code: str, args: list[str], env: dict[str, str]) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env=env,
        check=False,
    )
    if out.returncode != 0:
        raise SystemExit(f"benchmark child failed:\n{out.stderr}")
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=9, help="runs of each side (default 9)")
    args = parser.parse_args()
    aws_path, aws_note = aws_sdk_path()
    with tempfile.TemporaryDirectory(prefix="bench-sdk-pycache-") as pycache:
        sides: Sides = {
            "sdk": (CHILD_SDK, child_env(Path(pycache))),
            "paho": (CHILD_PAHO, child_env(Path(pycache))),
        }
        if aws_path is not None:
            sides["awsiotsdk"] = (CHILD_AWS, child_env(Path(pycache), aws_path))
        results = measure(sides, args.runs)
    return report(results, args.runs, aws_note)


def measure(sides: Sides, runs: int) -> Results:
    """``runs`` fresh processes per side, alternating, against one Mosquitto and one pair."""
    results: Results = {name: [] for name in sides}
    with tempfile.TemporaryDirectory(prefix="bench-sdk-") as tmp:
        work = Path(tmp)
        ca = create_ca("Bench Device CA")
        device = issue_device_certificate(ca, "bench01", product_key="a1B2c3D4e5F")
        cert, key = work / "device.cer", work / "device.key"
        device.write(cert, key)
        with run_mosquitto(work / "mosquitto", ca.cert_pem()) as broker:
            child_args = [str(broker.port), str(broker.server_ca_path), str(cert), str(key)]
            for code, env in sides.values():  # warm the page cache and write the .pyc files
                run_child(code, child_args, env)
            started = time.monotonic()
            for n in range(runs):
                order = list(sides.items())
                if n % 2:
                    order.reverse()
                for name, (code, env) in order:
                    results[name].append(run_child(code, child_args, env))
                print(
                    f"run {n + 1}/{runs} done ({time.monotonic() - started:.1f} s)",
                    file=sys.stderr,
                )
    return results


def report(results: Results, runs: int, aws_note: str) -> int:
    def values(side: str, field: str) -> list[float]:
        return [r[field] for r in results[side]]

    def median(side: str, field: str) -> float:
        return statistics.median(values(side, field))

    names = list(results)
    print(
        f"\nSDK footprint, median (min-max) of {runs} fresh processes per side, "
        "mutual TLS to one local Mosquitto 2, the same device pair"
    )
    print(f"reference: {aws_note}")
    header = f"{'':24}" + "".join(f"{name:>22}" for name in names)
    print(header)
    rows = [
        ("import CPU time (ms)", "import_cpu_ms"),
        ("RSS after connect (MB)", "rss_mb"),
        ("import wall time (ms)", "import_ms"),
        ("  private (RssAnon, MB)", "anon_mb"),
        ("connect (ms)", "connect_ms"),
    ]
    for label, field in rows:
        cells = []
        for name in names:
            vals = values(name, field)
            cells.append(f"{median(name, field):8.1f} ({min(vals):.1f}-{max(vals):.1f})")
        print(f"{label:24}" + "".join(f"{cell:>22}" for cell in cells))
    imported = any(r["cryptography"] for r in results["sdk"])
    print(f"\nSDK imported cryptography: {'YES (issue 16 regression)' if imported else 'no'}")
    verdicts = [not imported]
    for reference in ("awsiotsdk", "paho"):
        if reference not in results:
            continue
        ratios = [
            f"{label.split(' (')[0].strip()} {median('sdk', field) / median(reference, field):.2f}x"
            for label, field in rows[:2]
        ]
        print(f"sdk / {reference}: " + ", ".join(ratios))
    if "awsiotsdk" in results:
        for label, field in rows[:2]:
            ours, theirs = median("sdk", field), median("awsiotsdk", field)
            ok = ours <= theirs
            verdicts.append(ok)
            print(
                f"target {label.split(' (')[0]} <= awsiotsdk: {'PASS' if ok else 'FAIL'} "
                f"({ours:.1f} vs {theirs:.1f})"
            )
    else:
        print("target: not checked (no awsiotsdk here)")
    print("within target" if all(verdicts) else "OVER TARGET")
    return 0


if __name__ == "__main__":
    sys.exit(main())
