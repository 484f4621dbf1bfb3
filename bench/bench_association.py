"""Time a 10,000-row association upload end to end, against the registry alone.

Starts the real server (``python -m iotx509 server run`` on free loopback ports), registers a CA
and uploads association CSVs through the HTTP API with the stdlib platform client; then times
the same import on the registry in-process, and parsing alone, side by side in one run. Target:
the end-to-end upload well under 1 s.

    python bench/bench_association.py [--rows 10000] [--runs 5]
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
from server_stub.registry import Registry
from server_stub.registry.associations import parse_associations
from server_stub.store import SqliteStore


def make_csv(product_key: str, rows: int, offset: int) -> bytes:
    lines = ["ProductKey,DeviceName,CertSN"]
    lines += [
        f"{product_key},device-{offset + i:07d},{0x10_0000_0000 + offset + i:X}"
        for i in range(rows)
    ]
    return ("\r\n".join(lines) + "\r\n").encode()


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def summary(name: str, samples: list[float]) -> str:
    return (
        f"{name:<34} median {statistics.median(samples) * 1000:7.1f} ms   "
        f"min {min(samples) * 1000:7.1f} ms   max {max(samples) * 1000:7.1f} ms"
    )


def bench_http(rows: int, runs: int, work: Path) -> tuple[list[float], list[float]]:
    ca = create_ca("Bench CA")
    with running_server(work / "server") as server:
        client = PlatformClient(server.http_url, server.token)
        ver = issue_verification_certificate(ca, client.registration_code())
        ca_sn = client.register_ca(
            "bench_ca", UploadFile("ca.pem", ca.cert_pem()), UploadFile("v.crt", ver.cert_pem())
        )["caSn"]
        uploads, rejects = [], []
        for run in range(runs):
            pk = client.create_product(f"bench {run}")["productKey"]
            data = make_csv(pk, rows, run * rows)
            print(f"  HTTP run {run + 1}/{runs}: {len(data):,} bytes", file=sys.stderr)
            uploads.append(timed(partial(client.associate, ca_sn, UploadFile("a.csv", data))))
            bad = make_csv(pk, rows, (runs + run) * rows).replace(b",device-", b",d!", 1)

            def reject(b: bytes = bad) -> None:
                try:
                    client.associate(ca_sn, UploadFile("bad.csv", b))
                except Exception as exc:  # the rejection is what is timed
                    assert "nothing was saved" in str(exc)
                else:
                    raise AssertionError("the bad file was accepted")

            rejects.append(timed(reject))
    return uploads, rejects


def bench_registry(rows: int, runs: int, work: Path) -> tuple[list[float], list[float]]:
    store = SqliteStore(work / "direct.sqlite3")
    registry = Registry(store)
    account, _ = registry.create_account("bench")
    ca = create_ca("Bench CA direct")
    ver = issue_verification_certificate(ca, registry.registration_code(account))
    record = registry.register_ca(
        account, name="bench_ca", ca_data=ca.cert_pem(), verification_data=ver.cert_pem()
    )
    imports, parses = [], []
    try:
        for run in range(runs):
            pk = registry.create_product(account, name=f"bench {run}").product_key
            data = make_csv(pk, rows, run * rows)
            parses.append(timed(partial(parse_associations, data)))
            imports.append(timed(partial(registry.associate, account, record.ca_sn, data)))
    finally:
        store.close()
    return imports, parses


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-assoc-") as tmp:
        work = Path(tmp)
        print(f"association upload, {args.rows:,} rows, {args.runs} runs each", file=sys.stderr)
        uploads, rejects = bench_http(args.rows, args.runs, work)
        imports, parses = bench_registry(args.rows, args.runs, work)
    print(f"\n{args.rows:,}-row association CSV ({args.runs} runs each)")
    print(summary("HTTP upload, accepted (end to end)", uploads))
    print(summary("HTTP upload, rejected (1 bad row)", rejects))
    print(summary("registry.associate (in-process)", imports))
    print(summary("CSV parse + row checks only", parses))
    e2e, direct, parse = (statistics.median(x) for x in (uploads, imports, parses))
    print(
        f"ratios: end-to-end / registry = {e2e / direct:.2f}x, "
        f"registry / parse-only = {direct / parse:.2f}x"
    )
    verdict = "PASS" if e2e < 1.0 else "FAIL"
    print(f"target end-to-end < 1 s: {verdict} (median {e2e * 1000:.0f} ms)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
