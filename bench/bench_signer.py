"""Renewal signer throughput beside the bare RSA signing ceiling of this machine (issue 14).

Measured side by side, in one run, as ratios (absolute rates drift on shared machines):

- ceiling: bare RSA-2048 PKCS#1 v1.5 / SHA-256 signatures per second with the CA key, one core
  (``cryptography``, nothing else); and whole device certificates built and signed per second
  (``firmware_helpers.pki.build_device_certificate``), the most any issuer can do;
- ours: :class:`firmware_helpers.signer.Signer` answering ``--count`` pending renewal requests of
  the real server process (``iotx509 server run`` on loopback): list over HTTP, check each CSR,
  reserve the round's SNs in the fsync'd ledger, sign, POST each certificate, which the server
  checks (CA key, CSR key, SN unique) and associates in one SQLite transaction.

The requests are written straight into the server's store before each round (queueing is the
MQTT side's work and not measured here). Ceiling and signer alternate for ``--rounds`` rounds;
medians are compared.

    python bench/bench_signer.py [--count 300] [--rounds 3]
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.hazmat.primitives.serialization import Encoding

from device_sdk.renewal_protocol import new_request_id
from firmware_helpers.pki import (
    CertifiedKey,
    build_device_certificate,
    create_ca,
    generate_rsa_key,
)
from firmware_helpers.platform_client import PlatformClient, UploadFile
from firmware_helpers.signer import Signer
from server_stub.datadir import DataDir
from server_stub.launcher import RunningServer, running_server
from server_stub.registry.accounts import hash_token
from server_stub.store import SqliteStore
from server_stub.store.base import NewRenewal


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def bare_signatures(ca: CertifiedKey, seconds: float = 1.0) -> float:
    """RSA signatures per second with the CA key on this core."""
    data = b"x" * 512
    count, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        for _ in range(50):
            ca.key.sign(data, padding.PKCS1v15(), hashes.SHA256())
        count += 50
    return count / (time.perf_counter() - started)


def bare_certificates(ca: CertifiedKey, public: object, seconds: float = 1.0) -> float:
    """Device certificates built and signed per second (no ledger, no network)."""
    count, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        for _ in range(20):
            build_device_certificate(ca, public, "bench-dev", product_key="a1B2c3D4e5F")  # type: ignore[arg-type]
        count += 20
    return count / (time.perf_counter() - started)


class Fleet:
    """``count`` devices of one product, associated under the registered CA."""

    def __init__(self, server: RunningServer, count: int) -> None:
        self.server = server
        self.client = PlatformClient(server.http_url, server.token, timeout=120)
        self.product_key = str(self.client.create_product("bench_signer")["productKey"])
        self.ca = create_ca("Bench Signer CA")
        self.client.register_ca_with_proof("bench_signer_ca", self.ca)
        keys = [generate_rsa_key() for _ in range(4)]  # devices may share keys here
        self.names = [f"bench-{n:05d}" for n in range(count)]
        rows = ["ProductKey,DeviceName,CertSN"]
        self.old_sns: list[str] = []
        for n, name in enumerate(self.names):
            cert = build_device_certificate(
                self.ca, keys[n % 4].public_key(), name, product_key=self.product_key
            )
            sn = format(cert.serial_number, "x")
            self.old_sns.append(sn)
            rows.append(f"{self.product_key},{name},{sn}")
        self.client.associate(self.ca.sn, UploadFile("a.csv", ("\n".join(rows) + "\n").encode()))
        self.csrs = [
            x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([]))
            .sign(keys[n % 4], hashes.SHA256())
            .public_bytes(Encoding.PEM)
            .decode()
            for n in range(len(keys))
        ]
        self.keys = keys

    def queue_all(self) -> None:
        """One pending request per device, written into the server's store."""
        store = SqliteStore(DataDir(self.server.data_dir).database)
        try:
            found = store.account_by_token_hash(hash_token(self.server.token))
            assert found is not None
            account = found[0]
            ca = store.ca(account.id, self.ca.sn)
            assert ca is not None
            with store.atomic():
                for n, name in enumerate(self.names):
                    current = store.device(account.id, self.product_key, name)
                    assert current is not None and current.cert_sn is not None
                    state = store.association_state(ca.id, current.cert_sn)
                    assert state is not None
                    store.insert_renewal(
                        NewRenewal(
                            new_request_id(),
                            account.id,
                            ca.id,
                            state.device_id,
                            f"bench-{n}",
                            current.cert_sn,
                            self.csrs[n % len(self.csrs)],
                            time.time(),
                        )
                    )
        finally:
            store.close()


def signer_round(fleet: Fleet, ledger: Path) -> tuple[float, float]:
    """(certificates per second, signer CPU ms per certificate) for one full queue."""
    fleet.queue_all()
    signer = Signer(fleet.client, fleet.ca, ledger_path=ledger, days=365, batch=100)
    cpu, started = _cpu(), time.perf_counter()
    report = signer.run_once()
    elapsed = time.perf_counter() - started
    issued = report.count("issued")
    assert issued == len(fleet.names), (issued, len(fleet.names), report.answers[:3])
    return issued / elapsed, (_cpu() - cpu) / issued * 1e3


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp, running_server(Path(tmp) / "data") as server:
        fleet = Fleet(server, args.count)
        ledger = Path(tmp) / "sn-ledger.jsonl"
        sigs, certs, ours, cpu = [], [], [], []
        for _ in range(args.rounds):
            sigs.append(bare_signatures(fleet.ca))
            certs.append(bare_certificates(fleet.ca, fleet.keys[0].public_key()))
            rate, ms = signer_round(fleet, ledger)
            ours.append(rate)
            cpu.append(ms)
    sig, cert, mine = (statistics.median(v) for v in (sigs, certs, ours))
    print(f"signer throughput, {args.count} requests x {args.rounds} rounds (medians)")
    print(f"{'':<44}{'per s':>10}{'ratio':>9}")
    print(f"{'bare RSA-2048 signatures (ceiling, 1 core)':<44}{sig:>10.0f}{1.0:>9.2f}")
    print(f"{'bare certificates built + signed':<44}{cert:>10.0f}{cert / sig:>9.2f}")
    print(f"{'signer (HTTP + checks + ledger + server)':<44}{mine:>10.0f}{mine / sig:>9.3f}")
    print(f"signer process CPU per certificate: {statistics.median(cpu):.2f} ms")
    print(f"signer / bare certificates: {mine / cert:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
