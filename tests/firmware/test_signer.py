"""The renewal signer (``iotx509 ca signer``) against the real server process, over HTTP only.

The signer trusts nothing the platform hands it: requests with a bad CSR are queued here
straight into the server's store (what a compromised or older platform could send), and the
signer must refuse them itself. Requests with a good CSR are issued by the platform's rules
(SN in the CA's ledger first) and the result is verified with the real ``openssl`` command.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from device_sdk.renewal_protocol import new_request_id
from firmware_helpers.ledger import SerialLedger
from firmware_helpers.pki import create_ca, generate_rsa_key, issue_device_certificate
from firmware_helpers.platform_client import UploadFile
from firmware_helpers.signer import RoundReport, Signer, SignerError
from server_stub.datadir import DataDir
from server_stub.store import SqliteStore
from server_stub.store.base import NewRenewal
from tests.firmware.cert_helpers import needs_openssl, openssl, write_ca
from tests.renewal_support import RenewalEnv, csr_pem, renewal_env, signer_command


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RenewalEnv]:
    root = tmp_path_factory.mktemp("signer")
    with renewal_env(
        root, product="signed_meters", ca_name="signer_ca", ca_cn="Signer Test CA"
    ) as made:
        yield made


def queued(env: RenewalEnv, csr: str, name: str | None = None) -> tuple[str, str, str]:
    """A device associated under the CA, and a renewal request for it written straight into the
    server's store (no CSR check on the way in). Returns (DeviceName, request id, old SN)."""
    name = name or env.name("signed")
    pair = issue_device_certificate(env.ca, name, product_key=env.product_key)
    env.client.associate(
        env.ca.sn,
        UploadFile(
            "a.csv", f"ProductKey,DeviceName,CertSN\n{env.product_key},{name},{pair.sn}\n".encode()
        ),
    )
    store = SqliteStore(DataDir(env.server.data_dir).database)
    try:
        account = store.account_by_token_hash(_token_hash(env.server.token))
        assert account is not None
        ca = store.ca(account[0].id, env.ca.sn)
        state = store.association_state(ca.id, pair.sn) if ca else None
        assert ca is not None and state is not None
        request_id = new_request_id()
        store.insert_renewal(
            NewRenewal(
                request_id, account[0].id, ca.id, state.device_id, "dev-req", pair.sn, csr, 1.0
            )
        )
    finally:
        store.close()
    return name, request_id, pair.sn


def _token_hash(token: str) -> str:
    from server_stub.registry.accounts import hash_token

    return hash_token(token)


def status_of(env: RenewalEnv, request_id: str) -> tuple[str, str]:
    store = SqliteStore(DataDir(env.server.data_dir).database)
    try:
        account = store.account_by_token_hash(_token_hash(env.server.token))
        assert account is not None
        record = store.renewal(account[0].id, request_id)
        assert record is not None
        return record.status, record.reason
    finally:
        store.close()


def answer(report: RoundReport, request_id: str) -> Any:
    [found] = [a for a in report.answers if a.request_id == request_id]
    return found


@needs_openssl
def test_a_good_request_is_issued_by_the_platforms_rules(env: RenewalEnv, tmp_path: Path) -> None:
    key = generate_rsa_key()
    name, request_id, old_sn = queued(env, csr_pem(key))
    ledger = tmp_path / "ledger.jsonl"
    out = tmp_path / "out"
    out.mkdir()
    done = answer(env.signer(ledger_path=ledger, out_dir=out, days=90).run_once(), request_id)
    assert (done.device_name, done.status) == (name, "issued")
    # the SN was recorded in the CA's ledger, under this CA, for this device
    with SerialLedger(ledger) as book:
        [entry] = [e for e in book.entries_for(env.ca.sn) if e.sn == done.cert_sn]
    assert (entry.product_key, entry.device_name) == (env.product_key, name)
    # the file as 'certs issue' names it, verified by openssl against the CA
    cert_file = out / f"{env.product_key}_{name}_{env.ca.sn}.cer"
    ca_file, _ = write_ca(env.ca, tmp_path / "ca")
    verified = openssl("verify", "-CAfile", ca_file, "-purpose", "sslclient", cert_file)
    assert verified.stdout.strip().endswith(": OK")
    cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
    assert cert.public_key().public_numbers() == key.public_key().public_numbers()  # type: ignore[union-attr]
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == name
    life = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert life.days in (89, 90, 91)
    assert status_of(env, request_id)[0] == "issued"
    rows = [a["certSn"] for a in env.client.associations(env.ca.sn) if a["deviceName"] == name]
    assert sorted(rows) == sorted([old_sn, done.cert_sn])


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (lambda: csr_pem(ec.generate_private_key(ec.SECP256R1())), "key is EC, not RSA"),
        (lambda: csr_pem(generate_rsa_key(), "someone-else"), "names device 'someone-else'"),
        (
            lambda: (
                "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n"
            ),
            "not a readable PKCS#10 CSR",
        ),
    ],
    ids=["ec-key", "other-device", "garbage"],
)
def test_the_signer_checks_the_csr_itself_and_refuses_with_the_reason(
    env: RenewalEnv, make: Any, expected: str, tmp_path: Path
) -> None:
    _name, request_id, old_sn = queued(env, make())
    ledger = tmp_path / "ledger.jsonl"
    done = answer(env.signer(ledger_path=ledger).run_once(), request_id)
    assert done.status == "refused" and expected in done.reason
    status, reason = status_of(env, request_id)
    assert status == "refused" and expected in reason
    assert not ledger.exists() or ledger.read_text() == ""  # no SN spent on a refusal
    assert [a["certSn"] for a in env.client.associations(env.ca.sn) if a["certSn"] == old_sn]


def test_an_sn_already_in_the_ledger_is_never_issued_again(env: RenewalEnv, tmp_path: Path) -> None:
    _name, request_id, _ = queued(env, csr_pem(generate_rsa_key()))
    ledger = tmp_path / "ledger.jsonl"
    with SerialLedger(ledger) as book:
        book.reserve(env.ca.sn, 0x8000000000000001, env.product_key, "earlier")
    draws = iter([0x8000000000000001, 0x8000000000000002])
    done = answer(
        env.signer(ledger_path=ledger, serial_source=lambda: next(draws)).run_once(), request_id
    )
    assert (done.status, done.cert_sn) == ("issued", "8000000000000002")


def test_a_certificate_the_platform_refuses_is_refused_towards_the_device(
    env: RenewalEnv, tmp_path: Path
) -> None:
    """An SN this ledger never saw but the account already uses (issued from another ledger):
    the platform answers 422, and the signer tells the device instead of leaving it waiting."""
    holder = issue_device_certificate(env.ca, "holder", product_key=env.product_key)
    env.client.associate(
        env.ca.sn,
        UploadFile(
            "h.csv",
            f"ProductKey,DeviceName,CertSN\n{env.product_key},holder,{holder.sn}\n".encode(),
        ),
    )
    _name, request_id, _ = queued(env, csr_pem(generate_rsa_key()))
    taken = int(holder.sn, 16)
    done = answer(
        env.signer(ledger_path=tmp_path / "l.jsonl", serial_source=lambda: taken).run_once(),
        request_id,
    )
    assert done.status == "refused"
    assert f"SN {holder.sn} is already associated in this account" in done.reason
    assert status_of(env, request_id)[0] == "refused"


def test_the_signer_refuses_to_work_for_a_ca_the_account_does_not_hold(env: RenewalEnv) -> None:
    stranger = create_ca("Stranger CA")
    with pytest.raises(SignerError, match=f"CA {stranger.sn} .* is not registered in the account"):
        Signer(env.client, stranger, ledger_path=env.root / "x.jsonl").check_registered()
    env.signer().check_registered()  # the registered one is accepted


def test_serve_polls_until_stopped(env: RenewalEnv, tmp_path: Path) -> None:
    _name, request_id, _ = queued(env, csr_pem(generate_rsa_key()))
    stop = threading.Event()
    seen: list[str] = []

    def on_round(report: RoundReport) -> None:
        seen.extend(a.request_id for a in report.answers)
        if request_id in seen:
            stop.set()

    env.signer(ledger_path=tmp_path / "l.jsonl").serve(stop, interval=0.05, on_round=on_round)
    assert request_id in seen


def test_the_command_refuses_a_key_that_is_not_the_cas(env: RenewalEnv, tmp_path: Path) -> None:
    ca_file, _ = write_ca(env.ca, tmp_path / "ca")
    _, other_key = write_ca(create_ca("Other"), tmp_path / "other")
    given = ["--ca", str(ca_file), "--ca-key", str(other_key), "--server", env.server.http_url]
    done = signer_command(*given, token=env.server.token)
    assert done.returncode != 0
    assert "is not the private key of the CA certificate" in done.stderr
    no_token = signer_command(*given, token=None)
    assert no_token.returncode != 0 and "no API token" in no_token.stderr


def test_the_signer_refuses_settings_it_cannot_work_with(env: RenewalEnv) -> None:
    with pytest.raises(SignerError, match=r"--parallel must be 1\.\.32, got 0"):
        env.signer(parallel=0)
    with pytest.raises(SignerError, match="--days must be at least 1, got 0"):
        env.signer(days=0)
    with pytest.raises(SignerError, match="--interval must be more than 0 seconds, got -1"):
        env.signer().serve(threading.Event(), interval=-1)
