"""Time the console's Devices page queries at 10,000 devices, beside fetching the whole list.

Starts the real server, associates 10,000 devices with one CA, then times through HTTP: a page of
50 (first and last page), a filter, the "offline" state filter (which passes the set of connected
devices into the query), and -- the reference -- fetching every association of the CA at once,
which is what filtering in the browser would need. Ratios are page time / whole-list time.

    python bench/bench_console.py [--devices 10000] [--runs 20]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

from firmware_helpers.pki import create_ca, issue_verification_certificate
from firmware_helpers.platform_client import PlatformClient, UploadFile
from server_stub.launcher import running_server


def timed(fn: Callable[[], object], runs: int) -> list[float]:
    fn()  # warm-up (connections, SQLite page cache)
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return samples


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    n = args.devices
    with (
        tempfile.TemporaryDirectory(prefix="bench-console-") as tmp,
        running_server(Path(tmp) / "server") as server,
    ):
        api = PlatformClient(server.http_url, server.token)
        pk = api.create_product("bench")["productKey"]
        ca = create_ca("Bench Console CA")
        ver = issue_verification_certificate(ca, api.registration_code())
        ca_sn = api.register_ca(
            "bench_ca", UploadFile("ca.pem", ca.cert_pem()), UploadFile("v.pem", ver.cert_pem())
        )["caSn"]
        rows = "".join(f"{pk},dev-{i:06d},{0x100000 + i:X}\n" for i in range(n))
        api.associate(
            ca_sn, UploadFile("a.csv", ("ProductKey,DeviceName,CertSN\n" + rows).encode())
        )
        last = (n + 49) // 50
        cases = {
            "page 1 of 50 rows": "/devices?pageSize=50",
            f"page {last} (last) of 50 rows": f"/devices?pageSize=50&page={last}",
            "filter q=dev-00999 (10 matches)": "/devices?q=dev-00999",
            "filter q=zzz (no match)": "/devices?q=zzz",
            "state=offline, page 1": "/devices?state=offline&pageSize=50",
            "reference: whole list (associations)": f"/ca-certificates/{ca_sn}/associations",
        }
        results = {
            name: timed(partial(api.request, "GET", path), args.runs)
            for name, path in cases.items()
        }
    reference = statistics.median(results["reference: whole list (associations)"])
    print(f"\nconsole Devices queries at {n:,} devices, HTTP end to end ({args.runs} runs each)")
    for name, samples in results.items():
        median = statistics.median(samples)
        print(
            f"{name:<40} median {median * 1000:7.1f} ms   max {max(samples) * 1000:7.1f} ms"
            f"   ratio to whole list {median / reference:5.2f}x"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
