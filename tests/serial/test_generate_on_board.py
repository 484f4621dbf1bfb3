"""Keys that never leave the board (protocol version 2), over real pseudo-terminals.

The board generates its RSA key and returns a CSR; the host issues the certificate by the
platform's rules and the board commits all or nothing. The proof that no private key byte
crosses the line: every byte of both directions is recorded, every frame decoded, and no
16-byte window of the key's secret numbers (d, p, q, in any of its encodings) appears in
either -- while the public modulus does (the check can find what is there).
"""

from __future__ import annotations

import base64
import csv
import subprocess
import sys
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from device_sdk.certs import (
    certificate_sn,
    issued_by,
    key_matches_certificate,
    read_certificates,
    read_private_key,
)
from firmware_helpers.association_csv import read_associations
from firmware_helpers.ledger import SerialLedger
from firmware_helpers.serial.framing import Frame, FrameDecoder
from firmware_helpers.serial.protocol import Data, MessageType, encode_message
from firmware_helpers.serial.simboard import FaultPlan, SimBoard
from tests.conftest import TestPKI
from tests.firmware.cert_helpers import write_ca
from tests.serial.conftest import PairFiles, snapshot

CLI = [sys.executable, "-m", "iotx509", "provision"]
PK = "a1OnBoard01"


def _provision_pair(
    sim: SimBoard, pair: PairFiles, report: Path
) -> subprocess.CompletedProcess[str]:
    """``iotx509 provision`` of an issued pair (key made on the host) onto ``sim``."""
    files = ["--cert", str(pair.cert), "--key", str(pair.key), "--report", str(report)]
    return subprocess.run(
        [*CLI, "--port", sim.port, *files],
        capture_output=True,
        text=True,
        timeout=120,
    )


def _batch_command(
    ports: Sequence[str], ca: tuple[Path, Path], prefix: str, out: Path, max_boards: int
) -> list[str]:
    """``iotx509 provision --batch --generate-on-board``: one board per port in parallel."""
    port_args = [arg for port in ports for arg in ("--port", port)]
    issuer = ["--ca", str(ca[0]), "--ca-key", str(ca[1]), "--product-key", PK]
    batch = ["--prefix", prefix, "--out", str(out), "--max-boards", str(max_boards)]
    return [
        *CLI,
        *port_args,
        "--batch",
        "--generate-on-board",
        *issuer,
        *batch,
        "--board-timeout",
        "60",
    ]


def _generate(
    sim: SimBoard, ca: tuple[Path, Path], out: Path, server_ca: Path, dn: str, *extra: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            *CLI,
            "--port",
            sim.port,
            "--generate-on-board",
            "--ca",
            str(ca[0]),
            "--ca-key",
            str(ca[1]),
            "--product-key",
            PK,
            "--device-name",
            dn,
            "--server-ca",
            str(server_ca),
            "--out",
            str(out),
            *extra,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )


def _payloads(wire: bytes | bytearray) -> bytes:
    frames = [f for f in FrameDecoder().feed(bytes(wire)) if isinstance(f, Frame)]
    assert frames, "the recording holds frames"
    return b"".join(f.payload for f in frames)


def _windows(secret: bytes, size: int = 16) -> set[bytes]:
    return {secret[i : i + size] for i in range(len(secret) - size + 1)}


def _secret_windows(key: rsa.RSAPrivateKey) -> set[bytes]:
    """16-byte windows of the key's secret numbers, raw and base64 (at each of the 3 byte
    alignments, as in a PEM or base64 file): the public modulus and exponent are left out."""
    n = key.private_numbers()
    found: set[bytes] = set()
    for number in (n.d, n.p, n.q, n.dmp1, n.dmq1, n.iqmp):
        raw = _int_bytes(number)
        found |= _windows(raw)
        for shift in range(3):
            found |= _windows(base64.b64encode(raw[shift:])[:-4])
    return found


def _leaks(windows: set[bytes], data: bytes) -> bool:
    return any(w in data for w in windows)


def _int_bytes(n: int) -> bytes:
    return n.to_bytes((n.bit_length() + 7) // 8, "big")


@pytest.fixture
def ca_files(pki: TestPKI, tmp_path: Path) -> tuple[Path, Path]:
    return write_ca(pki.ca, tmp_path / "ca")


def test_no_private_key_byte_crosses_the_line_and_none_exists_on_the_host(
    tmp_path: Path,
    ca_files: tuple[Path, Path],
    pairs: tuple[PairFiles, PairFiles],
    pki: TestPKI,
) -> None:
    out, store = tmp_path / "host-out", tmp_path / "board-store"
    with SimBoard(store, board_id="KEYGEN-1", record_wire=True) as sim:
        proc = _generate(sim, ca_files, out, pairs[0].server_ca, "keygen-0001")
        assert sim.agent.keys_generated == 1
    assert proc.returncode == 0, proc.stderr
    assert "with a key it generated itself" in proc.stdout

    # The board holds a key it made, and the certificate the host issued for it.
    key = read_private_key(store / "device.key")
    assert isinstance(key, rsa.RSAPrivateKey) and key.key_size == 2048
    (cert_path,) = out.glob("*.cer")
    assert cert_path.name == f"{PK}_keygen-0001_{pki.ca.sn}.cer"
    cert = read_certificates(cert_path)[0]
    assert (store / "device.cer").read_bytes() == cert_path.read_bytes()
    assert key_matches_certificate(key, cert) and issued_by(cert, pki.ca.certificate)
    assert (store / "server-ca.pem").read_bytes() == pairs[0].server_ca.read_bytes()

    # No byte of the private key crossed the line, in either direction, raw or decoded.
    secret = _secret_windows(key)
    line = [
        bytes(sim.wire_in),
        bytes(sim.wire_out),
        _payloads(sim.wire_in),
        _payloads(sim.wire_out),
    ]
    for data in line:
        assert not _leaks(secret, data), "private key bytes on the line"
    # The check finds a key wherever it is: in the key file (PEM), its DER, a frame carrying it
    der = key.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    assert _leaks(secret, (store / "device.key").read_bytes()) and _leaks(secret, der)
    assert _leaks(secret, encode_message(Data(0, (store / "device.key").read_bytes()), 1))
    # ... and the public modulus did cross the line, in the CSR (DER) from the board
    modulus = _int_bytes(key.private_numbers().public_numbers.n)
    assert modulus in _payloads(sim.wire_out)

    # No .key file on the host, and no file there holds a private key.
    host_files = [p for p in tmp_path.rglob("*") if p.is_file() and store not in p.parents]
    assert not [p for p in host_files if p.suffix == ".key" and p.parent != ca_files[1].parent]
    for path in host_files:
        if path.parent == ca_files[1].parent:
            continue  # the CA's own key
        assert b"PRIVATE KEY" not in path.read_bytes(), path

    # Platform rules: SN in the ledger, one association row, one report row.
    sn = certificate_sn(cert)
    with SerialLedger(out / "sn-ledger.jsonl") as ledger:
        assert [e.sn for e in ledger.entries_for(pki.ca.sn)] == [sn]
    assert [(r.device_name, r.cert_sn) for r in read_associations(out / "associations.csv")] == [
        ("keygen-0001", sn)
    ]
    with (out / "provisioning-report.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [(r["BoardId"], r["DeviceName"], r["CertSN"], r["Status"]) for r in rows] == [
        ("KEYGEN-1", "keygen-0001", sn, "ok")
    ]

    # A second board gets the next device: one more row each, the first kept.
    with SimBoard(tmp_path / "store-2", board_id="KEYGEN-2") as sim:
        proc = _generate(sim, ca_files, out, pairs[0].server_ca, "keygen-0002")
    assert proc.returncode == 0, proc.stderr
    assert [r.device_name for r in read_associations(out / "associations.csv")] == [
        "keygen-0001",
        "keygen-0002",
    ]
    # The same DeviceName twice is refused before the line is touched.
    with SimBoard(tmp_path / "store-3") as sim:
        proc = _generate(sim, ca_files, out, pairs[0].server_ca, "keygen-0002")
        assert sim.stats.frames_in == 0
    assert proc.returncode == 2 and "already exists" in proc.stderr


def _requests(wire: bytes | bytearray) -> list[str]:
    """The host's requests in the order they crossed the line (retransmissions once)."""
    frames = [f for f in FrameDecoder().feed(bytes(wire)) if isinstance(f, Frame)]
    seen: list[tuple[int, int]] = []
    for f in frames:
        if not seen or seen[-1] != (f.seq, f.type):
            seen.append((f.seq, f.type))
    return [MessageType(kind).name for _seq, kind in seen]


@pytest.mark.parametrize("background", [True, False], ids=["pipelined", "answers-when-done"])
def test_the_server_ca_crosses_the_line_while_the_board_makes_its_key(
    tmp_path: Path,
    ca_files: tuple[Path, Path],
    pairs: tuple[PairFiles, PairFiles],
    background: bool,
) -> None:
    """A board that generates in the background is sent the server CA meanwhile (GENKEY with
    DEFER, then GET_CSR); one that answers GENKEY only when done gets the version 2 flow."""
    store = tmp_path / "store"
    with SimBoard(store, record_wire=True, background_keygen=background) as sim:
        proc = _generate(sim, ca_files, tmp_path / "out", pairs[0].server_ca, "pipe-0001")
    assert proc.returncode == 0, proc.stderr
    requests = _requests(sim.wire_in)
    assert requests[-1] == "COMMIT"
    if background:
        assert requests[-8:] == [
            "HELLO", "GENKEY", "BEGIN", "DATA", "GET_CSR", "BEGIN", "DATA", "COMMIT"
        ]  # fmt: skip
    else:
        assert requests[-7:] == ["HELLO", "GENKEY", "BEGIN", "DATA", "BEGIN", "DATA", "COMMIT"]
    assert (store / "server-ca.pem").read_bytes() == pairs[0].server_ca.read_bytes()
    cert = read_certificates(store / "device.cer")[0]
    assert key_matches_certificate(read_private_key(store / "device.key"), cert)


def test_power_cut_while_the_key_is_made_in_the_background_forgets_that_key(
    tmp_path: Path, ca_files: tuple[Path, Path], pairs: tuple[PairFiles, PairFiles]
) -> None:
    store, out = tmp_path / "store", tmp_path / "out"
    # HELLO, GENKEY (acknowledged, key being made), BEGIN server CA <- the power goes here once
    plan = FaultPlan(reboot_after=3)
    with SimBoard(store, faults=plan) as sim:
        proc = _generate(sim, ca_files, out, pairs[0].server_ca, "cut-0001")
    assert proc.returncode == 0, proc.stderr
    assert sim.stats.reboots == 1
    # the board holds the key of the second session, which the certificate certifies
    cert = read_certificates(store / "device.cer")[0]
    assert key_matches_certificate(read_private_key(store / "device.key"), cert)
    assert (store / "device.cer").read_bytes() == next(out.glob("*.cer")).read_bytes()


def test_an_old_board_is_told_apart_and_still_provisioned_with_a_pair(
    tmp_path: Path,
    ca_files: tuple[Path, Path],
    pairs: tuple[PairFiles, PairFiles],
) -> None:
    a = pairs[0]
    with SimBoard(tmp_path / "old", faults=FaultPlan(protocol_version=1)) as sim:
        proc = _generate(sim, ca_files, tmp_path / "out", a.server_ca, "old-0001")
        assert sim.agent.keys_generated == 0
    assert proc.returncode == 2
    assert "protocol version 1, which has no key generation" in proc.stderr
    assert "--cert and --key" in proc.stderr
    assert not list((tmp_path / "out").glob("*.cer"))  # nothing issued for it

    with SimBoard(tmp_path / "old", faults=FaultPlan(protocol_version=1)) as sim:
        proc = _provision_pair(sim, a, tmp_path / "report.csv")
    assert proc.returncode == 0, proc.stderr
    assert "speaks serial protocol version 1 only" in proc.stdout
    assert (tmp_path / "old" / "device.key").read_bytes() == a.key.read_bytes()


def test_a_board_that_keeps_losing_power_keeps_its_credentials_and_burns_its_sns(
    tmp_path: Path,
    ca_files: tuple[Path, Path],
    pairs: tuple[PairFiles, PairFiles],
    pki: TestPKI,
) -> None:
    """Power lost after the CSR, while the certificate arrives: every attempt burns its SN."""
    store = tmp_path / "store"
    with SimBoard(store, board_id="FLAKY") as sim:  # first, credentials of pair A
        proc = _provision_pair(sim, pairs[0], tmp_path / "r.csv")
        assert proc.returncode == 0, proc.stderr
    before = snapshot(store)
    out = tmp_path / "out"
    # HELLO, GENKEY (acknowledged; the key is made in the background), BEGIN server CA, DATA
    # server CA, GET_CSR (answered with the CSR), BEGIN cert <- the power goes here, at every boot
    plan = FaultPlan(reboot_after=6, reboot_times=100)
    with SimBoard(store, board_id="FLAKY", faults=plan) as sim:
        proc = _generate(sim, ca_files, out, pairs[0].server_ca, "flaky-0001")
    assert proc.returncode == 4 and "lost the session" in proc.stderr
    assert snapshot(store) == before
    assert not list(out.glob("*.cer")) and not (out / "associations.csv").exists()
    with SerialLedger(out / "sn-ledger.jsonl") as ledger:
        burnt = ledger.entries_for(pki.ca.sn)
    assert len(burnt) == 3 and len({e.sn for e in burnt}) == 3  # first try + 2 restarts
    assert not (out / "provisioning-report.csv").exists() or not list(
        csv.DictReader((out / "provisioning-report.csv").open())
    )


# --- CSRs (the rules themselves: tests/sdk/test_csr.py) ------------------------------------------


def _csr(
    key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey,
    *,
    subject: x509.Name | None = None,
    extension: bool = False,
) -> x509.CertificateSigningRequest:
    builder = x509.CertificateSigningRequestBuilder().subject_name(subject or x509.Name([]))
    if extension:
        builder = builder.add_extension(
            x509.BasicConstraints(ca=True, path_length=None), critical=True
        )
    return builder.sign(key, hashes.SHA256())


def _der(csr: x509.CertificateSigningRequest) -> bytes:
    return csr.public_bytes(serialization.Encoding.DER)


def test_not_after_is_the_hosts_choice(
    tmp_path: Path, ca_files: tuple[Path, Path], pairs: tuple[PairFiles, PairFiles]
) -> None:
    with SimBoard(tmp_path / "store") as sim:
        proc = _generate(
            sim, ca_files, tmp_path / "out", pairs[0].server_ca, "days-0001", "--days", "30"
        )
    assert proc.returncode == 0, proc.stderr
    cert = read_certificates(next((tmp_path / "out").glob("*.cer")))[0]
    lifetime = cert.not_valid_after_utc - datetime.now(UTC)
    assert timedelta(days=29) < lifetime <= timedelta(days=31)


# --- boards that misbehave between CSR and commit -------------------------------------------


@pytest.fixture
def provisioned_store(tmp_path: Path, pairs: tuple[PairFiles, PairFiles]) -> Path:
    store = tmp_path / "store"
    with SimBoard(store) as sim:
        proc = _provision_pair(sim, pairs[0], tmp_path / "r.csv")
    assert proc.returncode == 0, proc.stderr
    return store


def test_board_unplugged_after_its_csr_keeps_its_credentials(
    tmp_path: Path,
    ca_files: tuple[Path, Path],
    pairs: tuple[PairFiles, PairFiles],
    provisioned_store: Path,
    pki: TestPKI,
) -> None:
    before = snapshot(provisioned_store)
    out = tmp_path / "out"
    # HELLO, GENKEY, BEGIN server CA, DATA server CA, GET_CSR (answered with a CSR),
    # BEGIN cert <- unplugged here
    with SimBoard(provisioned_store, faults=FaultPlan(unplug_after=6)) as sim:
        proc = _generate(sim, ca_files, out, pairs[0].server_ca, "gone-0001")
    assert proc.returncode == 4 and "went away" in proc.stderr
    assert snapshot(provisioned_store) == before
    assert not list(out.glob("*.cer")) and not (out / "associations.csv").exists()
    with SerialLedger(out / "sn-ledger.jsonl") as ledger:
        assert len(ledger.entries_for(pki.ca.sn)) == 1  # its SN is burnt, never reused


@pytest.mark.parametrize(
    ("csr", "message"),
    [
        (b"\x30\x03abc", "not a readable PKCS#10 CSR"),
        (None, "asks for the subject 'CN=board-chooses'"),
    ],
    ids=["garbage", "own-name"],
)
def test_board_with_a_bad_csr_gets_nothing(
    tmp_path: Path,
    ca_files: tuple[Path, Path],
    pairs: tuple[PairFiles, PairFiles],
    provisioned_store: Path,
    csr: bytes | None,
    message: str,
) -> None:
    before = snapshot(provisioned_store)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    named = _der(
        _csr(
            key, subject=x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "board-chooses")])
        )
    )
    out = tmp_path / "out"
    with SimBoard(provisioned_store) as sim:
        sim.agent.keygen = lambda bits: (b"staged key", csr if csr is not None else named)
        proc = _generate(sim, ca_files, out, pairs[0].server_ca, "bad-0001")
        assert sim.wait(lambda s: not sim.agent.machine.staged_types, timeout=30)  # ABORTed
    assert proc.returncode == 3 and message in proc.stderr
    assert snapshot(provisioned_store) == before
    assert not list(out.glob("*.cer"))
    assert not (out / "sn-ledger.jsonl").exists() or not (out / "sn-ledger.jsonl").read_bytes()


# --- several ports at once ---------------------------------------------------------------------


def test_boards_on_two_ports_are_provisioned_in_parallel_and_never_named_twice(
    tmp_path: Path,
    ca_files: tuple[Path, Path],
    pairs: tuple[PairFiles, PairFiles],
) -> None:
    out = tmp_path / "out"

    def run(*ports: str, max_boards: int) -> subprocess.Popen[str]:
        command = _batch_command(ports, ca_files, "line3-", out, max_boards)
        return subprocess.Popen(
            [*command, "--server-ca", str(pairs[0].server_ca)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    # Port A's first board holds its first GENKEY until resumed: port B finishing a board
    # meanwhile proves the ports run in parallel -- an event, not a timing.
    genkey = FaultPlan(pause_when=lambda frame: frame.type == MessageType.GENKEY)
    with (
        SimBoard(tmp_path / "a", boards=2, faults=genkey) as sim_a,
        SimBoard(tmp_path / "b", boards=2) as sim_b,
    ):
        proc = run(sim_a.port, sim_b.port, max_boards=4)
        try:
            assert sim_a.wait(lambda s: s.paused, timeout=60)
            assert sim_b.wait(lambda s: len(s.boards_served) >= 2, timeout=60)  # B committed
            assert sim_a.stats.paused and sim_a.agent.commits == 0
            sim_a.resume()
            stdout, stderr = proc.communicate(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
        served = sim_a.stats.boards_served[:2] + sim_b.stats.boards_served[:2]
    assert proc.returncode == 0, stderr + stdout
    assert "4 board(s) provisioned with keys they generated, 0 failed" in stdout

    with (out / "provisioning-report.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    names = sorted(r["DeviceName"] for r in rows)
    assert names == [f"line3-{i:04d}" for i in range(1, 5)]
    assert sorted(r["BoardId"] for r in rows) == sorted(served)
    assert all(r["Status"] == "ok" for r in rows) and len({r["CertSN"] for r in rows}) == 4
    assert sorted(r.device_name for r in read_associations(out / "associations.csv")) == names
    assert not list(out.glob("*.key"))
    for row in rows:  # each board holds the certificate issued for its DeviceName
        board_store = next(
            p
            for p in (tmp_path / "a" / row["BoardId"], tmp_path / "b" / row["BoardId"])
            if p.exists()
        )
        cert = next(out.glob(f"{PK}_{row['DeviceName']}_*.cer"))
        assert (board_store / "device.cer").read_bytes() == cert.read_bytes()
        assert key_matches_certificate(
            read_private_key(board_store / "device.key"), read_certificates(cert)[0]
        )

    # A re-run on a new board resumes with the next free name.
    with SimBoard(tmp_path / "c") as sim_c:
        proc = run(sim_c.port, max_boards=1)
        stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr
    assert "line3-0005" in stdout


def test_a_failed_board_burns_its_name_and_sn_and_the_next_run_skips_both(
    tmp_path: Path,
    ca_files: tuple[Path, Path],
    pairs: tuple[PairFiles, PairFiles],
    pki: TestPKI,
) -> None:
    out = tmp_path / "out"

    def run(port: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            _batch_command([port], ca_files, "line4-", out, max_boards=1),
            capture_output=True,
            text=True,
            timeout=120,
        )

    # probe HELLO, HELLO, GENKEY, BEGIN certificate <- unplugged
    with SimBoard(tmp_path / "a", faults=FaultPlan(unplug_after=4)) as sim:
        proc = run(sim.port)
    assert proc.returncode == 1 and "FAILED (line4-0001)" in proc.stdout
    assert "0 board(s) provisioned with keys they generated, 1 failed" in proc.stdout
    with SimBoard(tmp_path / "b") as sim:
        proc = run(sim.port)
    assert proc.returncode == 0, proc.stderr
    assert "line4-0002" in proc.stdout
    with SerialLedger(out / "sn-ledger.jsonl") as ledger:
        entries = ledger.entries_for(pki.ca.sn)
    assert [e.device_name for e in entries] == ["line4-0001", "line4-0002"]
    assert [r.device_name for r in read_associations(out / "associations.csv")] == ["line4-0002"]


def test_days_below_one_is_refused_before_any_board_or_file_is_touched(
    tmp_path: Path, ca_files: tuple[Path, Path]
) -> None:
    out = tmp_path / "out"
    proc = subprocess.run(
        [
            *CLI,
            "--port",
            str(tmp_path / "no-such-port"),
            "--generate-on-board",
            "--ca",
            str(ca_files[0]),
            "--ca-key",
            str(ca_files[1]),
            "--product-key",
            PK,
            "--device-name",
            "days-0001",
            "--out",
            str(out),
            "--days",
            "0",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0
    assert "--days must be at least 1, got 0" in proc.stderr
    assert not out.exists()
