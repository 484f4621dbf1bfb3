"""The renewal rules of the registry (server_stub.registry.renewals), fed the wrong thing.

Driven directly, with a clock of their own (bounds in time, grace period), on the real registry
and SQLite store; every refusal's message is checked. The same rules over real MQTT and HTTP are
in test_renewal_e2e.py.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from device_sdk.renewal_protocol import RenewalRequest, renew_reply_topic, renew_topic
from firmware_helpers.pki import (
    CertifiedKey,
    build_device_certificate,
    create_ca,
    generate_rsa_key,
    issue_device_certificate,
)
from server_stub.config import RenewalSettings
from server_stub.errors import (
    ConflictError,
    InvalidFieldError,
    NotFoundError,
    RenewalCertificateRejectedError,
)
from server_stub.ports import AuthenticatedDevice
from server_stub.registry import Registry
from server_stub.registry.renewals import DAY, Outgoing, RenewalDesk, Renewals
from server_stub.store import SqliteStore
from server_stub.store.base import AccountRecord, NewRenewal, ProductRecord
from server_stub.store.sqlite import CLOSED_RENEWALS_KEPT
from tests.server.conftest import csv_bytes, register


class Clock:
    def __init__(self) -> None:
        self.now = datetime.now(UTC).timestamp()

    def __call__(self) -> float:
        return self.now


@dataclass
class World:
    registry: Registry
    renewals: Renewals
    clock: Clock
    account: AccountRecord
    product: ProductRecord
    ca: CertifiedKey
    ca_sn: str
    key: rsa.RSAPrivateKey

    def device(self, name: str) -> tuple[AuthenticatedDevice, CertifiedKey]:
        pair = issue_device_certificate(
            self.ca, name, product_key=self.product.product_key, key=self.key
        )
        self.registry.associate(
            self.account, self.ca_sn, csv_bytes([(self.product.product_key, name, pair.sn)])
        )
        decision = self.registry.authenticate(pair.certificate)
        assert isinstance(decision, AuthenticatedDevice), decision
        return decision, pair

    def ask(self, device: AuthenticatedDevice, payload: bytes | dict[str, Any]) -> Outgoing | None:
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        return self.renewals.submit(
            device, renew_topic(device.product_key, device.device_name), data
        )


SETTINGS = RenewalSettings(grace=3600.0, min_interval=60.0, max_open_per_account=3)


@pytest.fixture(scope="module")
def device_ca() -> CertifiedKey:
    return create_ca("Renewal Rules CA")


@pytest.fixture(scope="module")
def new_key() -> rsa.RSAPrivateKey:
    return generate_rsa_key()


@pytest.fixture
def world(
    store: SqliteStore,
    account: AccountRecord,
    product: ProductRecord,
    device_ca: CertifiedKey,
    new_key: rsa.RSAPrivateKey,
) -> World:
    clock = Clock()
    registry = Registry(store, clock=clock)
    ca = register(registry, account, device_ca)
    return World(
        registry,
        Renewals(registry, SETTINGS, clock=clock),
        clock,
        account,
        product,
        device_ca,
        ca.ca_sn,
        new_key,
    )


def csr(key: Any, cn: str | None = None, *, extension: bool = False) -> str:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)] if cn else [])
    builder = x509.CertificateSigningRequestBuilder().subject_name(name)
    if extension:
        builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
    return builder.sign(key, hashes.SHA256()).public_bytes(Encoding.PEM).decode()


def reply_of(out: Outgoing | None) -> tuple[str, str]:
    assert out is not None
    return out.reply.status.value, out.reply.reason


def queue(world: World, name: str, key: Any = None) -> tuple[AuthenticatedDevice, str]:
    """A device with a queued request; returns it and the signer-facing request id."""
    device, _pair = world.device(name)
    out = world.ask(device, RenewalRequest("r1", csr(key or world.key)).to_json())
    assert reply_of(out)[0] == "queued"
    [pending] = [
        r for r in world.renewals.pending(world.account, world.ca_sn, 100) if r.device_name == name
    ]
    return device, pending.request_id


def certificate_for(world: World, name: str, key: Any = None, **kwargs: Any) -> str:
    cert = build_device_certificate(
        kwargs.pop("ca", world.ca),
        (key or world.key).public_key(),
        kwargs.pop("cn", name),
        product_key=world.product.product_key,
        **kwargs,
    )
    return cert.public_bytes(Encoding.PEM).decode()


# --- the request, as the device sends it ---------------------------------------------------------


def test_a_request_is_queued_bound_to_the_session_and_its_ca(world: World) -> None:
    device, request_id = queue(world, "dev-ok")
    record = world.registry.store.renewal(world.account.id, request_id)
    assert record is not None
    assert (record.device_name, record.old_cert_sn, record.ca_sn, record.status) == (
        "dev-ok",
        device.cert_sn,
        world.ca_sn,
        "pending",
    )


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (lambda w: csr(ec.generate_private_key(ec.SECP256R1())), "key is EC, not RSA"),
        (lambda w: csr(rsa.generate_private_key(65537, 1024)), "has 1024 bits; at least 2048"),
        (lambda w: csr(rsa.generate_private_key(3, 2048)), "exponent is 3; only 65537"),
        (lambda w: csr(w.key, "another-device"), "names device 'another-device'"),
        (lambda w: csr(w.key, extension=True), "carries extensions or attributes"),
    ],
    ids=["ec-key", "rsa-1024", "exponent-3", "other-device", "extensions"],
)
def test_a_bad_csr_is_refused_with_the_reason_and_logged(
    world: World, make: Any, expected: str, caplog: pytest.LogCaptureFixture
) -> None:
    device, _ = world.device("dev-bad")
    with caplog.at_level(logging.WARNING, "server_stub.renewal"):
        status, reason = reply_of(world.ask(device, {"id": "bad-1", "csr": make(world)}))
    assert status == "refused" and expected in reason
    assert f"refused a request of {device.product_key}/dev-bad" in caplog.text
    assert world.renewals.pending(world.account, world.ca_sn) == []


def test_a_csr_whose_signature_does_not_verify_is_refused(world: World) -> None:
    device, _ = world.device("dev-forged")
    der = bytearray(x509.load_pem_x509_csr(csr(world.key).encode()).public_bytes(Encoding.DER))
    der[-1] ^= 0x01  # the signature is the last field: it no longer proves possession
    body = base64.encodebytes(bytes(der)).decode()
    pem = f"-----BEGIN CERTIFICATE REQUEST-----\n{body}-----END CERTIFICATE REQUEST-----\n"
    status, reason = reply_of(world.ask(device, {"id": "forged", "csr": pem}))
    assert status == "refused" and "does not verify with its own public key" in reason


def test_another_devices_topic_is_refused_and_logged(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    victim, _ = world.device("victim")
    intruder, _ = world.device("intruder")
    payload = RenewalRequest("steal", csr(world.key)).to_payload()
    with caplog.at_level(logging.WARNING, "server_stub.renewal"):
        out = world.renewals.submit(
            intruder, renew_topic(victim.product_key, victim.device_name), payload
        )
    status, reason = reply_of(out)
    assert out is not None and out.device_name == "intruder"  # answered to the sender only
    assert status == "refused" and "a device renews its own certificate only" in reason
    assert "sent by" in caplog.text and "intruder's session" in caplog.text
    assert world.renewals.pending(world.account, world.ca_sn) == []


@pytest.mark.parametrize(
    ("payload", "answered", "expected"),
    [
        (b"not json", False, "is not JSON"),
        (b'{"id": "bad id!", "csr": "x"}', False, "must be 1-64 characters"),
        (b'{"id": "ok-id", "csr": "not a pem"}', True, "must be one PEM block"),
        (b'{"id": "ok-id"}', True, "must be PEM text"),
    ],
    ids=["not-json", "bad-id", "not-pem", "no-csr"],
)
def test_a_malformed_request_is_refused_and_logged(
    world: World,
    payload: bytes,
    answered: bool,
    expected: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    device, _ = world.device("dev-malformed")
    with caplog.at_level(logging.WARNING, "server_stub.renewal"):
        out = world.ask(device, payload)
    assert expected in caplog.text
    if answered:
        assert reply_of(out)[0] == "refused" and expected in reply_of(out)[1]
    else:
        assert out is None  # no usable id to answer to


def test_a_csr_over_the_size_bound_is_refused(world: World) -> None:
    small = Renewals(world.registry, RenewalSettings(max_csr_bytes=600), clock=world.clock)
    device, _ = world.device("dev-big")
    out = small.submit(
        device,
        renew_topic(device.product_key, "dev-big"),
        RenewalRequest("big", csr(world.key)).to_payload(),
    )
    status, reason = reply_of(out)
    assert status == "refused" and "at most 600 accepted" in reason


def test_one_request_per_device_per_interval_and_a_new_one_replaces_the_unanswered(
    world: World,
) -> None:
    device, first = queue(world, "dev-rate")
    status, reason = reply_of(world.ask(device, RenewalRequest("r2", csr(world.key)).to_json()))
    assert status == "failed" and "one renewal request per 60 s per device; retry in 60 s" in reason
    world.clock.now += 61
    assert reply_of(world.ask(device, RenewalRequest("r3", csr(world.key)).to_json()))[0] == (
        "queued"
    )
    pending = [
        r for r in world.renewals.pending(world.account, world.ca_sn) if r.device_name == "dev-rate"
    ]
    assert [r.device_request_id for r in pending] == ["r3"]
    old = world.registry.store.renewal(world.account.id, first)
    assert old is not None and old.status == "superseded"


def test_the_accounts_queue_is_bounded(world: World) -> None:
    for n in range(3):
        queue(world, f"dev-cap-{n}")
    device, _ = world.device("dev-cap-3")
    status, reason = reply_of(world.ask(device, RenewalRequest("x", csr(world.key)).to_json()))
    assert status == "failed" and "signer queue is full (3 requests wait; max 3)" in reason


# --- the signer's answer -----------------------------------------------------------------------


def test_the_new_sn_joins_the_old_one_in_one_transaction(world: World) -> None:
    device, request_id = queue(world, "dev-issue")
    pem = certificate_for(world, "dev-issue")
    _record, out = world.renewals.post_certificate(world.account, world.ca_sn, request_id, pem)
    assert out.reply.status == "issued" and out.reply.certificate == pem
    rows = {a.cert_sn: a for a in world.registry.list_associations(world.account, world.ca_sn)}
    new_sn = out.reply.cert_sn
    assert new_sn is not None and {device.cert_sn, new_sn} <= set(rows)
    assert rows[device.cert_sn].retire_at == world.clock.now + SETTINGS.grace
    assert rows[new_sn].retire_at is None and rows[new_sn].not_after is not None
    # both SNs authenticate as the same device during the change-over
    new = x509.load_pem_x509_certificate(pem.encode())
    decision = world.registry.authenticate(new)
    assert isinstance(decision, AuthenticatedDevice)
    assert (decision.device_name, decision.cert_sn) == ("dev-issue", new_sn)
    assert world.registry.device(world.account, device.product_key, "dev-issue").cert_sn == new_sn
    with pytest.raises(ConflictError, match="already answered \\(status issued\\)"):
        world.renewals.post_certificate(world.account, world.ca_sn, request_id, pem)


def _rejected(world: World, name: str, pem: str | None = None, **kwargs: Any) -> str:
    device, request_id = queue(world, name)
    pem = pem or certificate_for(world, name, **kwargs)
    with pytest.raises(RenewalCertificateRejectedError) as caught:
        world.renewals.post_certificate(world.account, world.ca_sn, request_id, pem)
    # nothing changed: the request still waits, the device holds its one SN
    record = world.registry.store.renewal(world.account.id, request_id)
    assert record is not None and record.status == "pending"
    rows = [
        (a.cert_sn, a.retire_at)
        for a in world.registry.list_associations(world.account, world.ca_sn)
        if a.device_name == name
    ]
    assert rows == [(device.cert_sn, None)]
    return str(caught.value)


def test_a_certificate_of_another_ca_key_is_refused(world: World) -> None:
    other = create_ca("Renewal Rules CA", key=generate_rsa_key())  # same name, other key
    message = _rejected(world, "dev-other-ca", ca=other)
    assert f"it is not signed by the key of CA {world.ca_sn}" in message


def test_a_certificate_for_another_key_than_the_csrs_is_refused(world: World) -> None:
    message = _rejected(world, "dev-other-key", key=generate_rsa_key())
    assert "its public key is not the one of the device's CSR" in message


def test_a_certificate_naming_another_device_is_refused(world: World) -> None:
    message = _rejected(world, "dev-cn", cn="someone-else")
    assert "its subject CN 'someone-else' names another device than dev-cn" in message


def test_an_expired_certificate_is_refused(world: World) -> None:
    past = datetime.now(UTC) - timedelta(days=30)
    message = _rejected(world, "dev-expired", days=1, now=past)
    assert "has expired" in message


def test_an_sn_taken_in_the_account_is_refused(world: World) -> None:
    holder, _ = world.device("dev-holder")
    message = _rejected(world, "dev-dup-sn", serial=int(holder.cert_sn, 16))
    assert f"SN {holder.cert_sn} is already associated in this account" in message
    assert "device " + f"{holder.product_key}/dev-holder" in message


def test_a_chain_or_garbage_is_refused(world: World) -> None:
    chain = certificate_for(world, "dev-chain") + world.ca.cert_pem().decode()
    assert "must be one PEM block, not several" in _rejected(world, "dev-chain", chain)
    garbage = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"
    assert "refused" in _rejected(world, "dev-garbage", garbage)


def test_a_failure_inside_the_transaction_leaves_everything_as_it_was(world: World) -> None:
    """The SN check passed, then another association took the SN before the write: the insert
    fails, and the request's status and the old SN's retire_at are rolled back with it."""
    device, request_id = queue(world, "dev-race")
    holder, _ = world.device("dev-race-holder")
    store = world.registry.store
    record = store.renewal(world.account.id, request_id)
    assert record is not None
    with pytest.raises(ConflictError, match=f"SN {holder.cert_sn} is already associated"):
        store.issue_renewal(record, holder.cert_sn, "pem", 1e10, 1e10, world.clock.now)
    again = store.renewal(world.account.id, request_id)
    assert again is not None and again.status == "pending"
    state = store.association_state(record.ca_id, device.cert_sn)
    assert state is not None and state.retire_at is None


def test_a_refusal_needs_a_reason_and_answers_once(world: World) -> None:
    _device, request_id = queue(world, "dev-refuse")
    with pytest.raises(InvalidFieldError, match="reason must say why"):
        world.renewals.refuse(world.account, world.ca_sn, request_id, " \n ")
    _record, out = world.renewals.refuse(world.account, world.ca_sn, request_id, "policy\nsays no")
    assert out.reply.status == "refused" and out.reply.reason == "signer: policy says no"
    with pytest.raises(ConflictError, match="already answered"):
        world.renewals.refuse(world.account, world.ca_sn, request_id, "again")


def test_another_account_sees_no_request(world: World) -> None:
    _device, request_id = queue(world, "dev-private")
    mallory = world.registry.create_account("mallory")[0]
    register(world.registry, mallory, create_ca("Mallory CA"), name="mallory_ca")
    for call in (
        lambda: world.renewals.pending(mallory, world.ca_sn),
        lambda: world.renewals.refuse(mallory, world.ca_sn, request_id, "mine now"),
        lambda: world.renewals.post_certificate(
            mallory, world.ca_sn, request_id, certificate_for(world, "dev-private")
        ),
    ):
        with pytest.raises(NotFoundError, match=f"no CA certificate with caSn {world.ca_sn}"):
            call()
    assert world.renewals.expiring(mallory, 36500) == []


def test_a_request_id_under_another_ca_of_the_account_is_not_found(world: World) -> None:
    _device, request_id = queue(world, "dev-wrong-ca")
    second = register(world.registry, world.account, create_ca("Second CA"), name="second_ca")
    with pytest.raises(NotFoundError, match=f"no renewal request '{request_id}' for CA"):
        world.renewals.refuse(world.account, second.ca_sn, request_id, "x")


# --- the change-over -----------------------------------------------------------------------------


def _issued(world: World, name: str) -> tuple[AuthenticatedDevice, AuthenticatedDevice]:
    old, request_id = queue(world, name)
    pem = certificate_for(world, name)
    world.renewals.post_certificate(world.account, world.ca_sn, request_id, pem)
    new = world.registry.authenticate(x509.load_pem_x509_certificate(pem.encode()))
    assert isinstance(new, AuthenticatedDevice)
    return old, new


def _sns(world: World, name: str) -> list[str]:
    return [
        a.cert_sn
        for a in world.registry.list_associations(world.account, world.ca_sn)
        if a.device_name == name
    ]


def test_connecting_with_the_old_sn_gets_the_certificate_again(world: World) -> None:
    old, new = _issued(world, "dev-again")
    [out] = world.renewals.connected(old, 2e9)
    assert out.reply.status == "issued" and out.reply.cert_sn == new.cert_sn
    assert out.reply.id == "r1"
    assert sorted(_sns(world, "dev-again")) == sorted([old.cert_sn, new.cert_sn])


def test_the_first_connect_with_the_new_sn_retires_the_old_one(world: World) -> None:
    old, new = _issued(world, "dev-switch")
    generation = world.registry.trust_generation
    assert world.renewals.connected(new, 2e9) == []
    assert _sns(world, "dev-switch") == [new.cert_sn]
    assert world.registry.trust_generation > generation  # live sessions are re-checked
    assert not world.registry.is_current(old)
    record = world.registry.store.undelivered_renewals(
        world.registry.store.association_state(
            world.registry.ca(world.account, world.ca_sn).id, new.cert_sn
        ).device_id  # type: ignore[union-attr]
    )
    assert record == []  # completed: never sent again


def test_the_grace_period_retires_the_old_sn_without_a_connect(world: World) -> None:
    old, new = _issued(world, "dev-grace")
    world.clock.now += SETTINGS.grace - 1
    assert world.renewals.sweep() == 0 and old.cert_sn in _sns(world, "dev-grace")
    world.clock.now += 2
    assert world.renewals.sweep() == 1
    assert _sns(world, "dev-grace") == [new.cert_sn]
    assert not world.registry.is_current(old)


def test_connect_records_notafter_and_expiry_lists_the_current_certificate(world: World) -> None:
    device, pair = world.device("dev-expiry")
    not_after = pair.certificate.not_valid_after_utc.timestamp()
    assert world.renewals.expiring(world.account, 36500) == []  # not seen yet
    world.renewals.connected(device, not_after)
    days = (not_after - world.clock.now) / 86400
    [row] = world.renewals.expiring(world.account, days + 1)
    assert (row.row.device_name, row.row.cert_sn, row.row.not_after) == (
        "dev-expiry",
        device.cert_sn,
        not_after,
    )
    assert world.renewals.expiring(world.account, days - 1) == []
    # the console's device list shows it too, from the store (after a restart as well)
    _total, listed = world.registry.list_devices(world.account, text="dev-expiry")
    assert [r.cert_not_after for r in listed] == [not_after]
    with pytest.raises(InvalidFieldError, match=r"expiringWithinDays -1 must be 0\.\.36500"):
        world.renewals.expiring(world.account, -1)


def test_a_store_rejects_a_second_request_id(store: SqliteStore, world: World) -> None:
    _device, request_id = queue(world, "dev-dup-id")
    record = store.renewal(world.account.id, request_id)
    assert record is not None
    with pytest.raises(ConflictError, match="conflicting renewal request"):
        store.insert_renewal(
            NewRenewal(
                request_id, world.account.id, record.ca_id, record.device_id, "x", "1", "c", 0.0
            )
        )


def test_a_certificate_for_an_sn_removed_meanwhile_closes_the_request(world: World) -> None:
    device, request_id = queue(world, "dev-removed")
    world.registry.delete_association(world.account, world.ca_sn, device.cert_sn)
    with pytest.raises(ConflictError, match=f"SN {device.cert_sn}, from which the device"):
        world.renewals.post_certificate(
            world.account, world.ca_sn, request_id, certificate_for(world, "dev-removed")
        )
    record = world.registry.store.renewal(world.account.id, request_id)
    assert record is not None and record.status == "refused"
    assert world.registry.store.open_renewals(world.account.id) == 0
    assert _sns(world, "dev-removed") == []


class Recorder:
    """A DeviceMessaging that records what the desk sends (every device counts as online)."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes]] = []
        self.done = asyncio.Event()

    def is_online(self, product_key: str, device_name: str) -> bool:
        return True

    def deliver(
        self, product_key: str, device_name: str, topic: str, payload: bytes, qos: int
    ) -> bool:
        self.sent.append((topic, payload))
        self.done.set()
        return True

    def recent_messages(self, product_key: str, device_name: str, limit: int = 100) -> list[Any]:
        return []


def test_the_desk_works_on_one_request_per_device_at_a_time(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    """A second PUBLISH while the first is in the thread pool is dropped (logged), so a device
    cannot pile work onto the server; the first is answered to the device's reply topic."""
    device, _ = world.device("dev-desk")
    payload = RenewalRequest("first", csr(world.key)).to_payload()
    topic = renew_topic(device.product_key, "dev-desk")

    async def scenario() -> Recorder:
        recorder = Recorder()
        desk = RenewalDesk(world.renewals, recorder)
        desk.on_publish(device, topic, payload)  # goes to the thread pool
        desk.on_publish(device, topic, RenewalRequest("second", csr(world.key)).to_payload())
        desk.on_publish(device, f"/sys/{device.product_key}/dev-desk/thing/other", b"x")
        await asyncio.wait_for(recorder.done.wait(), 30)
        return recorder

    with caplog.at_level(logging.WARNING, "server_stub.renewal"):
        recorder = asyncio.run(scenario())
    [(sent_topic, sent)] = recorder.sent
    assert sent_topic == renew_reply_topic(device.product_key, "dev-desk")
    assert json.loads(sent) == {"id": "first", "status": "queued"}
    assert "sent a request while its previous one is being handled; dropped" in caplog.text


def test_a_certificate_whose_association_was_removed_is_not_sent_again(world: World) -> None:
    old, new = _issued(world, "dev-unassociated")
    world.registry.delete_association(world.account, world.ca_sn, new.cert_sn)
    assert world.renewals.connected(old, 2e9) == []  # the old SN still works in its grace
    assert _sns(world, "dev-unassociated") == [old.cert_sn]


def test_a_refused_request_counts_against_the_rate_too(world: World) -> None:
    """Else a device could make the server parse CSRs at line rate by sending bad ones."""
    device, _ = world.device("dev-spam")
    bad = RenewalRequest("bad", csr(world.key, "someone-else")).to_json()
    assert reply_of(world.ask(device, bad))[0] == "refused"
    status, reason = reply_of(world.ask(device, RenewalRequest("good", csr(world.key)).to_json()))
    assert status == "failed" and "retry in 60 s" in reason


def test_a_device_keeps_only_its_last_few_closed_requests(world: World) -> None:
    device, _ = world.device("dev-history")
    for n in range(12):
        world.clock.now += 61
        payload = RenewalRequest(f"r{n}", csr(world.key, "x" if n % 2 else None)).to_json()
        world.ask(device, payload)
    counts = world.registry.store.row_counts()
    assert counts["renewals"] == 1 + CLOSED_RENEWALS_KEPT  # the open one and the last closed
    [pending] = world.renewals.pending(world.account, world.ca_sn)
    assert pending.device_request_id == "r10"


# --- the CONNECT path: nothing looked up for a device with nothing to do (issue 16) -------------


class CountingStore:
    """Counts the store's per-CONNECT lookups (the rest passes through to the real store)."""

    def __init__(self, world: World) -> None:
        self.lookups = 0
        real = world.registry.store.connect_state

        def connect_state(ca_id: int, cert_sn: str) -> Any:
            self.lookups += 1
            return real(ca_id, cert_sn)

        world.registry.store.connect_state = connect_state  # type: ignore[method-assign]


def test_a_quiet_device_is_looked_up_again_only_after_a_change(world: World) -> None:
    device, pair = world.device("dev-quiet")
    not_after = pair.certificate.not_valid_after_utc.timestamp()
    assert not world.renewals.is_quiet(device, not_after)  # never seen
    assert world.renewals.connected(device, not_after) == []
    assert world.renewals.is_quiet(device, not_after)
    assert not world.renewals.is_quiet(device, not_after + 1)  # another notAfter is recorded
    world.device("dev-quiet-other")  # any registry change (a new trust generation)
    assert not world.renewals.is_quiet(device, not_after)
    world.renewals.connected(device, not_after)
    assert world.renewals.is_quiet(device, not_after)


def test_an_issued_certificate_ends_the_quiet_so_the_old_sn_gets_it(world: World) -> None:
    old, request_id = queue(world, "dev-quiet-issued")
    assert world.renewals.connected(old, 2e9) == []
    assert world.renewals.is_quiet(old, 2e9)
    pem = certificate_for(world, "dev-quiet-issued")
    world.renewals.post_certificate(world.account, world.ca_sn, request_id, pem)
    assert not world.renewals.is_quiet(old, 2e9)
    [out] = world.renewals.connected(old, 2e9)
    assert out.reply.status == "issued"
    assert not world.renewals.is_quiet(old, 2e9)  # still something to do at its next CONNECT


def test_a_read_made_before_an_issued_certificate_is_not_remembered(world: World) -> None:
    """A CONNECT handled in the thread pool while a signer posts: what it read before the
    certificate was issued must not make the device quiet afterwards."""
    old, request_id = queue(world, "dev-quiet-race")
    pem = certificate_for(world, "dev-quiet-race")
    real = world.registry.store.connect_state

    def connect_state(ca_id: int, cert_sn: str) -> Any:
        state = real(ca_id, cert_sn)  # read first, then the signer's certificate lands
        world.renewals.post_certificate(world.account, world.ca_sn, request_id, pem)
        return state

    world.registry.store.connect_state = connect_state  # type: ignore[method-assign]
    assert world.renewals.connected(old, 2e9) == []  # it read the state before the issue
    assert not world.renewals.is_quiet(old, 2e9)


def test_connects_in_one_batch_share_a_transaction_and_a_failure_stays_with_its_device(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    devices = [world.device(f"dev-batch-{i}") for i in range(3)]
    arrivals = [(d, p.certificate.not_valid_after_utc.timestamp()) for d, p in devices]
    real = world.registry.store.connect_state
    broken = devices[1][0].cert_sn

    def connect_state(ca_id: int, cert_sn: str) -> Any:
        if cert_sn == broken:
            raise RuntimeError("disk on fire")
        return real(ca_id, cert_sn)

    world.registry.store.connect_state = connect_state  # type: ignore[method-assign]
    with caplog.at_level(logging.ERROR, "server_stub.renewal"):
        assert world.renewals.connected_many(arrivals) == []
    assert "recording the connection of" in caplog.text and "dev-batch-1" in caplog.text
    assert "disk on fire" in caplog.text
    horizon = max(n for _, n in arrivals) - world.clock.now
    listed = {r.row.device_name for r in world.renewals.expiring(world.account, horizon / DAY + 1)}
    assert listed == {"dev-batch-0", "dev-batch-2"}
    assert world.renewals.is_quiet(*arrivals[0]) and not world.renewals.is_quiet(*arrivals[1])


def test_the_desk_skips_quiet_devices_and_sends_what_a_connect_finds(world: World) -> None:
    quiet, pair = world.device("dev-desk-quiet")
    quiet_not_after = pair.certificate.not_valid_after_utc.timestamp()
    old, _new = _issued(world, "dev-desk-issued")
    counting = CountingStore(world)

    async def scenario() -> Recorder:
        recorder = Recorder()
        desk = RenewalDesk(world.renewals, recorder)
        desk.on_connected(quiet, quiet_not_after)
        desk.on_connected(old, 2e9)  # joins the batch (or the next one)
        await asyncio.wait_for(recorder.done.wait(), 30)
        assert counting.lookups == 2
        desk.on_connected(quiet, quiet_not_after)  # quiet now: no lookup, nothing sent
        recorder.done.clear()
        desk.on_connected(old, 2e9)  # a certificate waits: looked up and sent again
        await asyncio.wait_for(recorder.done.wait(), 30)
        return recorder

    recorder = asyncio.run(scenario())
    assert counting.lookups == 3
    assert [topic for topic, _ in recorder.sent] == [
        renew_reply_topic(old.product_key, "dev-desk-issued")
    ] * 2
    assert all(json.loads(p)["status"] == "issued" for _, p in recorder.sent)
