"""Serial provisioning time beside the raw line time, at a simulated baud rate.

One device certificate + RSA-2048 key + server CA are provisioned onto the simulated board
(``iotx509 sim board`` in its own process, as a real board is its own device; a real
pseudo-terminal; the board paces both directions at ``--baud``, 8N1 = 10 bits per byte) with the
real host code. The reference is the raw line time of the objects alone:
``payload bytes * 10 / baud``. The ratio is the protocol's total overhead: framing, headers,
acknowledgements, round trips, and the board's verification and atomic commit.
Target: at most 1.15.

    python bench/bench_provisioning.py [--baud 115200] [--runs 5] [--chunk 4096]
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

# run as a script (``python bench/...``): the checkout's packages and testkit, not an installed copy
ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from firmware_helpers.pki import create_ca, issue_device_certificate  # noqa: E402
from firmware_helpers.serial.host import Host, ProvisionResult  # noqa: E402
from firmware_helpers.serial.link import SerialLink  # noqa: E402
from firmware_helpers.serial.protocol import ObjectType  # noqa: E402
from testkit.board_process import BoardProcess  # noqa: E402

TARGET_RATIO = 1.15


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baud", type=int, default=115200)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--chunk", type=int, default=4096, help="max DATA chunk (both sides)")
    args = parser.parse_args(argv)

    ca = create_ca("Bench Device CA")
    server_ca = create_ca("Bench Server CA")
    device = issue_device_certificate(ca, "bench-0001", product_key="PKbench01")
    objects = {
        ObjectType.CERTIFICATE: device.cert_pem(),
        ObjectType.PRIVATE_KEY: device.key_pem(),
        ObjectType.SERVER_CA: server_ca.cert_pem(),
    }
    payload = sum(len(d) for d in objects.values())
    raw = payload * 10 / args.baud
    print(
        f"objects: certificate {len(objects[ObjectType.CERTIFICATE])} B, key "
        f"{len(objects[ObjectType.PRIVATE_KEY])} B, server CA "
        f"{len(objects[ObjectType.SERVER_CA])} B = {payload} B"
    )
    print(f"raw line time at {args.baud} baud (8N1): {raw * 1000:.1f} ms")

    times, commits, wire = [], [], 0
    with tempfile.TemporaryDirectory() as tmp:
        for run in range(args.runs):
            elapsed, commit, result = _one_run(Path(tmp) / f"store-{run}", objects, args)
            if result.retransmissions:
                print(f"  run {run + 1}: {result.retransmissions} retransmissions (unexpected)")
            times.append(elapsed)
            commits.append(commit)
            wire = result.wire_bytes
            print(
                f"  run {run + 1}: {elapsed * 1000:.1f} ms (ratio {elapsed / raw:.3f}; board "
                f"verify + commit {commit * 1000:.1f} ms)"
            )

    median = statistics.median(times)
    ratio = median / raw
    print(f"host->board bytes on the wire: {wire} ({wire / payload - 1:+.1%} vs payload)")
    print(
        f"provisioning time, median of {args.runs}: {median * 1000:.1f} ms (board commit "
        f"median {statistics.median(commits) * 1000:.1f} ms)"
    )
    print(
        f"ratio provisioning / raw line time: {ratio:.3f} (overhead {ratio - 1:.1%}; "
        f"target <= {TARGET_RATIO - 1:.0%}) -> {'OK' if ratio <= TARGET_RATIO else 'MISSED'}"
    )
    return 0


def _one_run(
    store: Path, objects: dict[ObjectType, bytes], args: argparse.Namespace
) -> tuple[float, float, ProvisionResult]:
    """The board is its own process (as a real board is its own device): no shared GIL."""
    board = BoardProcess(store, baud=args.baud, max_chunk=args.chunk)
    try:
        link = SerialLink.open(board.port, baud=args.baud)
        try:
            host = Host(link, baud=args.baud, max_chunk=args.chunk)
            time.sleep(0.1)  # let the board's boot announcement pass
            start = time.perf_counter()
            result = host.provision(objects)
            elapsed = time.perf_counter() - start
        finally:
            link.close()
    finally:
        err = board.stop()
    found = re.search(r"stored .* in ([0-9.]+) ms", err)
    return elapsed, float(found.group(1)) / 1000 if found else float("nan"), result


if __name__ == "__main__":
    sys.exit(main())
