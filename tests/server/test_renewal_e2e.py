"""Certificate renewal end to end on the real server process (HTTP + MQTT over mutual TLS).

Devices are real paho-mqtt clients with certificates made here; the customer's side is the real
signer (:class:`firmware_helpers.signer.Signer`, and once the ``iotx509 ca signer`` command) talking
to the HTTP API only. Each test waits for what the code under test does (a message, a changed
association), never for time to pass.
"""

from __future__ import annotations

import json
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from device_sdk.certs import certificate_sn
from device_sdk.platform import IDENTITY_TOPIC
from device_sdk.renewal_protocol import RenewalReply, RenewalRequest, renew_reply_topic, renew_topic
from firmware_helpers.pki import CertifiedKey, generate_rsa_key, issue_device_certificate
from firmware_helpers.platform_client import PlatformAPIError, PlatformClient, UploadFile
from firmware_helpers.signer import Signer
from tests.renewal_support import RenewalEnv, csr_pem, renewal_env, signer_command


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RenewalEnv]:
    # no per-device interval here: tests ask several times for one device (the bound is tested
    # on the registry, with a clock of its own)
    with renewal_env(
        tmp_path_factory.mktemp("renewal"),
        product="renewing_meters",
        ca_name="renewal_ca",
        ca_cn="Renewal Test CA",
        server_args=["--renewal-min-interval", "0"],
    ) as made:
        yield made


@dataclass
class Dev:
    name: str
    pair: CertifiedKey
    cert: Path
    key: Path


def new_device(env: RenewalEnv, prefix: str = "meter", days: int = 3650) -> Dev:
    name = env.name(prefix)
    pair = issue_device_certificate(env.ca, name, product_key=env.product_key, days=days)
    env.client.associate(
        env.ca.sn,
        UploadFile(
            "a.csv",
            f"ProductKey,DeviceName,CertSN\n{env.product_key},{name},{pair.sn}\n".encode(),
            "text/csv",
        ),
    )
    return write_pair(env, name, pair)


def write_pair(env: RenewalEnv, name: str, pair: CertifiedKey) -> Dev:
    env.n += 1
    cert, key = env.root / f"{name}-{env.n}.cer", env.root / f"{name}-{env.n}.key"
    pair.write(cert, key)
    return Dev(name, pair, cert, key)


class Session:
    """A paho-mqtt 2.x device session that records what it receives."""

    def __init__(self, env: RenewalEnv, dev: Dev) -> None:
        self.messages: list[mqtt.MQTTMessage] = []
        self.cond = threading.Condition()
        self.connack: ReasonCode | None = None
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"{dev.name}|securemode=2,signmethod=x509|",
            protocol=mqtt.MQTTv311,
        )
        self.client.tls_set(
            ca_certs=str(env.server.server_ca),
            certfile=str(dev.cert),
            keyfile=str(dev.key),
            tls_version=ssl.PROTOCOL_TLS_CLIENT,
        )
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", env.server.mqtt_port, 60)
        self.client.loop_start()

    def _on_connect(self, _c: object, _u: object, _f: object, rc: ReasonCode, _p: object) -> None:
        with self.cond:
            self.connack = rc
            self.cond.notify_all()

    def _on_message(self, _c: object, _u: object, msg: mqtt.MQTTMessage) -> None:
        with self.cond:
            self.messages.append(msg)
            self.cond.notify_all()

    def wait(self, predicate: Callable[[], bool], what: str, timeout: float = 15) -> None:
        with self.cond:
            assert self.cond.wait_for(predicate, timeout), f"no {what}; got {self.topics()}"

    def topics(self) -> list[str]:
        return [m.topic for m in self.messages]

    def identity(self) -> dict[str, str]:
        self.wait(lambda: IDENTITY_TOPIC in self.topics(), "identity message")
        found = next(m for m in self.messages if m.topic == IDENTITY_TOPIC)
        return dict(json.loads(found.payload))

    def replies(self, product_key: str, device_name: str) -> list[RenewalReply]:
        topic = renew_reply_topic(product_key, device_name)
        return [RenewalReply.from_json(m.payload) for m in self.messages if m.topic == topic]

    def reply(self, product_key: str, device_name: str, status: str) -> RenewalReply:
        self.wait(
            lambda: any(r.status == status for r in self.replies(product_key, device_name)),
            f"{status!r} renewal reply",
        )
        return next(r for r in self.replies(product_key, device_name) if r.status == status)

    def refused(self) -> bool:
        with self.cond:
            self.cond.wait_for(lambda: self.connack is not None, 15)
        return self.connack is not None and self.connack.is_failure

    def publish(self, topic: str, payload: bytes) -> None:
        self.client.publish(topic, payload, qos=1).wait_for_publish(10)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def request(
    session: Session, env: RenewalEnv, dev: Dev, key: Any, request_id: str, cn: str | None = None
) -> None:
    payload = RenewalRequest(request_id, csr_pem(key, cn)).to_payload()
    session.publish(renew_topic(env.product_key, dev.name), payload)


def associations(
    env: RenewalEnv, device_name: str, client: PlatformClient | None = None
) -> list[dict[str, Any]]:
    rows = (client or env.client).associations(env.ca.sn)
    return [r for r in rows if r["deviceName"] == device_name]


def wait_until(predicate: Callable[[], bool], what: str, timeout: float = 15) -> None:
    """Poll the server's observable state until the change the code under test makes."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def signer(env: RenewalEnv) -> Signer:
    return env.signer(days=30)


def test_renewal_round_trip_then_the_old_sn_retires_at_the_first_connect_with_the_new(
    env: RenewalEnv,
) -> None:
    dev = new_device(env)
    old_sn = dev.pair.sn
    session = Session(env, dev)
    try:
        assert session.identity() == {"productKey": env.product_key, "deviceName": dev.name}
        new_key = generate_rsa_key()
        request(session, env, dev, new_key, "req-1")
        assert session.reply(env.product_key, dev.name, "queued").id == "req-1"
        pending = env.client.renewal_requests(env.ca.sn)
        [mine] = [r for r in pending if r["deviceName"] == dev.name]
        assert (mine["productKey"], mine["oldCertSn"]) == (env.product_key, old_sn)

        report = signer(env).run_once()
        assert [(a.device_name, a.status) for a in report.answers] == [(dev.name, "issued")]
        issued = session.reply(env.product_key, dev.name, "issued")
    finally:
        session.close()
    cert = x509.load_pem_x509_certificate(issued.certificate.encode())  # type: ignore[union-attr]
    assert issued.id == "req-1" and issued.cert_sn == certificate_sn(cert)
    assert cert.public_key().public_numbers() == new_key.public_key().public_numbers()  # type: ignore[union-attr]
    # the SN is in the CA's ledger (reserved before the certificate existed)
    assert issued.cert_sn in env.ledger.read_text()
    # during the change-over the device holds both SNs: the old one retiring
    rows = {r["certSn"]: r for r in associations(env, dev.name)}
    assert set(rows) == {old_sn, issued.cert_sn}
    assert rows[old_sn]["retireAt"] is not None and rows[issued.cert_sn]["retireAt"] is None
    assert rows[issued.cert_sn]["notAfter"] is not None

    # the old pair still connects until the new one was used
    again = Session(env, dev)
    try:
        assert again.identity()["deviceName"] == dev.name
    finally:
        again.close()

    renewed = write_pair(env, dev.name, CertifiedKey(cert, new_key))
    fresh = Session(env, renewed)
    try:
        assert fresh.identity() == {"productKey": env.product_key, "deviceName": dev.name}
        wait_until(
            lambda: [r["certSn"] for r in associations(env, dev.name)] == [issued.cert_sn],
            "the old SN to be retired",
        )
    finally:
        fresh.close()
    stale = Session(env, dev)
    try:
        assert stale.refused(), "the retired SN must no longer connect"
    finally:
        stale.close()
    assert f"certificate SN {old_sn} is not associated" in env.server.log()


def test_a_device_offline_at_issuance_gets_its_certificate_at_its_next_connect(
    env: RenewalEnv,
) -> None:
    dev = new_device(env)
    session = Session(env, dev)
    try:
        session.identity()
        request(session, env, dev, generate_rsa_key(), "offline-1", cn=dev.name)
        session.reply(env.product_key, dev.name, "queued")
    finally:
        session.close()
    assert signer(env).run_once().count("issued") >= 1
    back = Session(env, dev)
    try:
        back.identity()
        issued = back.reply(env.product_key, dev.name, "issued")
        assert issued.id == "offline-1"
    finally:
        back.close()


def test_no_signer_or_a_refusing_signer_leaves_the_current_association_untouched(
    env: RenewalEnv,
) -> None:
    dev = new_device(env)
    before = associations(env, dev.name)
    session = Session(env, dev)
    try:
        session.identity()
        request(session, env, dev, generate_rsa_key(), "waits")
        session.reply(env.product_key, dev.name, "queued")
        # nobody answers: the device keeps connecting with its one SN
        assert [r["certSn"] for r in associations(env, dev.name)] == [dev.pair.sn]
        [waiting] = [
            r for r in env.client.renewal_requests(env.ca.sn) if r["deviceName"] == dev.name
        ]
        env.client.refuse_renewal(env.ca.sn, waiting["requestId"], "maintenance window closed")
        refused = session.reply(env.product_key, dev.name, "refused")
        assert refused.id == "waits" and "maintenance window closed" in refused.reason
    finally:
        session.close()
    after = associations(env, dev.name)
    assert [(r["certSn"], r["retireAt"]) for r in after] == [(dev.pair.sn, None)]
    assert [r["certSn"] for r in before] == [dev.pair.sn]
    with pytest.raises(PlatformAPIError) as again:
        env.client.refuse_renewal(env.ca.sn, waiting["requestId"], "twice")
    assert again.value.status == 409 and "already answered" in str(again.value)


def test_a_device_renews_itself_only(env: RenewalEnv) -> None:
    """Another device's topic is dropped (logged); a CSR naming another device or with another
    key type is refused (reply and log); nothing is queued for the victim."""
    victim, intruder = new_device(env, "victim"), new_device(env, "intruder")
    session = Session(env, intruder)
    try:
        session.identity()
        # 1. the victim's renewal topic from the intruder's session
        forged = RenewalRequest("steal", csr_pem(generate_rsa_key())).to_payload()
        session.publish(renew_topic(env.product_key, victim.name), forged)
        # 2. a CSR naming the victim, on the intruder's own topic
        request(session, env, intruder, generate_rsa_key(), "named", cn=victim.name)
        named = session.reply(env.product_key, intruder.name, "refused")
        assert named.id == "named" and f"names device {victim.name!r}" in named.reason
        # 3. an EC key
        request(session, env, intruder, ec.generate_private_key(ec.SECP256R1()), "ec-key")
        session.wait(
            lambda: any(r.id == "ec-key" for r in session.replies(env.product_key, intruder.name)),
            "reply to the EC request",
        )
        [ec_reply] = [
            r for r in session.replies(env.product_key, intruder.name) if r.id == "ec-key"
        ]
        assert ec_reply.status == "refused" and "not RSA" in ec_reply.reason
    finally:
        session.close()
    log = env.server.log()
    assert f"PUBLISH to '{renew_topic(env.product_key, victim.name)}' dropped" in log
    assert f"renewal: refused a request of {env.product_key}/{intruder.name}" in log
    pending = env.client.renewal_requests(env.ca.sn, 100)
    assert not [r for r in pending if r["deviceName"] in (victim.name, intruder.name)]
    assert [r["certSn"] for r in associations(env, victim.name)] == [victim.pair.sn]


def test_a_second_account_neither_sees_nor_answers_the_requests(env: RenewalEnv) -> None:
    dev = new_device(env)
    session = Session(env, dev)
    try:
        session.identity()
        request(session, env, dev, generate_rsa_key(), "private")
        session.reply(env.product_key, dev.name, "queued")
    finally:
        session.close()
    [waiting] = [r for r in env.client.renewal_requests(env.ca.sn) if r["deviceName"] == dev.name]
    made = subprocess.run(
        [
            sys.executable,
            "-m",
            "iotx509",
            "server",
            "account",
            "create",
            env.name("mallory"),
            "--data-dir",
            str(env.server.data_dir),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    other = PlatformClient(env.server.http_url, made.stdout.split()[-1])
    forged = issue_device_certificate(env.ca, dev.name, product_key=env.product_key)
    for attempt in (
        lambda: other.renewal_requests(env.ca.sn),
        lambda: other.post_renewal_certificate(
            env.ca.sn, waiting["requestId"], forged.cert_pem().decode()
        ),
        lambda: other.refuse_renewal(env.ca.sn, waiting["requestId"], "not yours"),
    ):
        with pytest.raises(PlatformAPIError) as refused:
            attempt()
        assert refused.value.status == 404 and f"caSn {env.ca.sn}" in str(refused.value)
    assert other.expiring_devices(36500) == []
    still = [r for r in env.client.renewal_requests(env.ca.sn) if r["deviceName"] == dev.name]
    assert [r["requestId"] for r in still] == [waiting["requestId"]]


def test_expiring_lists_devices_by_the_notafter_seen_at_connect(env: RenewalEnv) -> None:
    dev = new_device(env, "short", days=10)
    session = Session(env, dev)
    try:
        session.identity()
    finally:
        session.close()
    not_after = dev.pair.certificate.not_valid_after_utc.strftime("%Y-%m-%dT%H:%M:%SZ")

    def listed(days: float) -> list[dict[str, Any]]:
        return [r for r in env.client.expiring_devices(days) if r["deviceName"] == dev.name]

    wait_until(lambda: bool(listed(11)), "the notAfter to be recorded")
    [row] = listed(11)
    assert (row["certSn"], row["caSn"], row["notAfter"]) == (dev.pair.sn, env.ca.sn, not_after)
    assert 9 < row["daysLeft"] <= 10
    assert listed(5) == []
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "iotx509",
            "platform",
            "certs",
            "expiring",
            "--days",
            "11",
            "--server",
            env.server.http_url,
            "--token",
            env.server.token,
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert f"{env.product_key}/{dev.name}" in out and f"cert SN {dev.pair.sn}" in out
    with pytest.raises(PlatformAPIError) as bad:
        env.client.expiring_devices(-1)
    assert bad.value.status == 400 and "expiringWithinDays -1 must be 0..36500" in str(bad.value)


def test_the_signer_command_answers_once_and_reports(env: RenewalEnv) -> None:
    dev = new_device(env)
    session = Session(env, dev)
    try:
        session.identity()
        request(session, env, dev, generate_rsa_key(), "by-cli")
        session.reply(env.product_key, dev.name, "queued")
        ca_cert, ca_key = env.root / "cli-ca.cer", env.root / "cli-ca.key"
        env.ca.write(ca_cert, ca_key)
        done = signer_command(
            "--ca",
            str(ca_cert),
            "--ca-key",
            str(ca_key),
            "--server",
            env.server.http_url,
            "--days",
            "30",
            token=env.server.token,
        )
        assert done.returncode == 0, done.stderr
        assert f"issued   {env.product_key}/{dev.name}" in done.stdout
        issued = session.reply(env.product_key, dev.name, "issued")
    finally:
        session.close()
    assert issued.cert_sn is not None and issued.cert_sn in env.ledger.read_text()


@pytest.mark.parametrize(
    ("option", "value", "expected"),
    [
        ("--renewal-grace", "0", "0.0 is not within 1..315360000"),
        ("--renewal-max-csr-bytes", "100000", "100000 is not within 256..8192"),
        ("--renewal-min-interval", "soon", "'soon' is not a number"),
    ],
)
def test_server_refuses_renewal_settings_out_of_bounds(
    tmp_path: Path, option: str, value: str, expected: str
) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "iotx509",
            "server",
            "run",
            "--data-dir",
            str(tmp_path / "d"),
            option,
            value,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2 and expected in done.stderr
    assert not (tmp_path / "d").exists()
