"""Tenants are isolated by key, not by name (issue 10, part 1), over real TLS on loopback.

The registry is the real one (SQLite store, registration with proof of possession); the MQTT
endpoint runs on its own event loop thread; devices connect with paho-mqtt, mosquitto_sub or a
raw TLS client. What must hold: nothing account B registers, enables, disables or deletes
changes whether account A's device authenticates or which identity it is told; a certificate
that verifies under more than one registered CA key is refused and logged as such.

No sleeps: a new handshake takes the registry's trust index current when it is accepted, so a
registry change made before a connection starts is in force for it.
"""

from __future__ import annotations

import json
import logging
import shutil
import socket
import ssl
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from device_sdk.certs import (
    fingerprint_sha256,
    load_certificate,
    load_private_key,
    require_rsa_key,
    signed_by,
)
from device_sdk.platform import IDENTITY_TOPIC
from firmware_helpers.pki import (
    CertifiedKey,
    create_ca,
    generate_rsa_key,
    issue_device_certificate,
    issue_server_certificate,
    random_serial,
)
from server_stub.errors import CaCertificateRejectedError, DuplicateCaError
from server_stub.mqtt import codec
from testkit.registry import RealRegistry, Tenant
from tests.server.conftest import openssl
from tests.server.mqtt_harness import Device, Paho, RawClient, ServerThread, wait_for

MOSQUITTO_SUB = shutil.which("mosquitto_sub") or "/usr/bin/mosquitto_sub"
README_CA_NAME = "My Device CA"


class Env:
    """The real registry (testkit's :class:`RealRegistry`) and the endpoint serving it."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.real = RealRegistry(root / "registry")
        self.store = self.real.store
        self.registry = self.real.registry
        server_ca = create_ca("Isolation test server CA")
        self.server_ca_file = root / "server-ca.pem"
        self.server_ca_file.write_bytes(server_ca.cert_pem())
        self.server = ServerThread(self.registry, issue_server_certificate(server_ca))
        self.key = generate_rsa_key()  # device key shared by the test devices (auth is by SN)
        self._count = 0

    def tenant(self, label: str) -> Tenant:
        self._count += 1
        return self.real.tenant(f"{label}{self._count}")

    def device(self, name: str, pair: CertifiedKey) -> Device:
        cert, key = self.root / f"{name}.cer", self.root / f"{name}.key"
        pair.write(cert, key)
        return Device(name, pair, cert, key)

    def identity(self, dev: Device) -> dict[str, str] | None:
        """What the endpoint tells the device it is, or None when it is refused (paho)."""
        client = Paho(self.server.port, self.server_ca_file, dev).start()
        try:
            if not client.connected.wait(10):
                return None
            assert client.reason is not None
            if client.reason.value != 0:
                return None
            got: dict[str, str] = json.loads(client.wait_message(IDENTITY_TOPIC).payload)
            return got
        finally:
            client.stop()

    def connack(self, dev: Device) -> int | None:
        """CONNACK code, or None when TLS refused the certificate."""
        try:
            client = RawClient(self.server.port, self.server_ca_file, dev.cert, dev.key)
            try:
                return client.connect().return_code
            finally:
                client.close()
        except (ssl.SSLError, ConnectionError):
            return None


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    e = Env(tmp_path_factory.mktemp("isolation"))
    with e.server:
        yield e
    e.real.close()


def ca_without_ski(common_name: str, key: rsa.RSAPrivateKey | None = None) -> CertifiedKey:
    """A CA certificate with no Subject Key Identifier (nothing tells chain builders apart)."""
    key = key or generate_rsa_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(random_serial())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    return CertifiedKey(cert, key)


def _refused(caplog: pytest.LogCaptureFixture, needle: str) -> list[str]:
    """The refusal lines containing ``needle``, once the server thread has logged one (the
    alert reaches the client before the server writes its log line)."""

    def lines() -> list[str]:
        return [
            r.getMessage()
            for r in caplog.records
            if "TLS handshake refused" in r.getMessage() and needle in r.getMessage()
        ]

    wait_for(lambda: bool(lines()))
    return lines()


# --- the look-alike CA of another account locks nobody out ------------------------------------


@pytest.mark.parametrize("order", ["lookalike-first", "victim-first"])
def test_look_alike_ca_of_another_account_changes_nothing(env: Env, order: str) -> None:
    """B registers a same-subject CA without SKI (the README's example name), associates the
    victim's SN with a device of its own, then enables, disables and deletes its CA: A's device,
    issued with the kit's own tools, is told A's identity every time."""
    a, b = env.tenant("a"), env.tenant("b")
    a_ca, b_ca = create_ca(README_CA_NAME), ca_without_ski(README_CA_NAME)
    if order == "lookalike-first":
        b_sn = b.register_ca(b_ca, "b_ca")
        a_sn = a.register_ca(a_ca, "a_ca")
    else:
        a_sn = a.register_ca(a_ca, "a_ca")
        b_sn = b.register_ca(b_ca, "b_ca")
    victim = env.device(
        f"victim-{order}",
        issue_device_certificate(a_ca, f"victim-{order}", product_key=a.product_key, key=env.key),
    )
    a.associate(a_sn, {victim.pair.sn: victim.name})
    b.associate(b_sn, {victim.pair.sn: f"thief-{order}"})  # B claims the victim's SN
    own = env.device(
        f"b-own-{order}",
        issue_device_certificate(b_ca, f"b-own-{order}", product_key=b.product_key, key=env.key),
    )
    b.associate(b_sn, {own.pair.sn: own.name})

    expected = {"productKey": a.product_key, "deviceName": victim.name}
    assert env.identity(victim) == expected
    assert env.identity(own) == {"productKey": b.product_key, "deviceName": own.name}
    env.registry.set_ca_status(b.account, b_sn, "inactive")
    assert env.identity(victim) == expected
    env.registry.set_ca_status(b.account, b_sn, "active")
    assert env.identity(victim) == expected
    env.registry.delete_ca(b.account, b_sn)
    assert env.identity(victim) == expected


def test_device_of_an_unrelated_ca_is_refused_with_unknown_ca(
    env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    """The alert stays *unknown CA*, which the SDK turns into "is the CA registered?"."""
    caplog.set_level(logging.WARNING, "server_stub.mqtt")
    stranger = env.device(
        "stranger",
        issue_device_certificate(ca_without_ski("Nobody Else CA"), "stranger", key=env.key),
    )
    client_error: Exception | None = None
    try:
        RawClient(env.server.port, env.server_ca_file, stranger.cert, stranger.key).connect()
    except (ssl.SSLError, ConnectionError) as exc:
        client_error = exc
    assert isinstance(client_error, ssl.SSLError) and "UNKNOWN_CA" in str(client_error).upper()
    assert _refused(caplog, "no registered CA has the subject 'CN=Nobody Else CA'")


# --- ambiguity: two registered rows share one key ---------------------------------------------


def _insert_ca_bypassing_rules(env: Env, tenant: Tenant, ca: CertifiedKey, name: str) -> str:
    """A CA row written straight into the store, as legacy data or a bug might leave it."""
    cert = ca.certificate
    env.store.insert_ca(
        tenant.account.id,
        format(cert.serial_number, "x"),
        name,
        cert.subject.rfc4514_string(),
        fingerprint_sha256(cert),
        cert.public_bytes(Encoding.DER),
        cert.not_valid_before_utc.timestamp(),
        cert.not_valid_after_utc.timestamp(),
        0.0,
    )
    ca_sn = format(cert.serial_number, "x")
    env.registry.set_ca_status(tenant.account, ca_sn, "active")  # moves the trust generation
    return ca_sn


def test_certificate_verifying_under_two_registered_keys_is_refused_and_logged(
    env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "server_stub.mqtt")
    a, b = env.tenant("a"), env.tenant("b")
    a_ca = create_ca("Shared Key CA")
    a_sn = a.register_ca(a_ca, "a_ca")
    dev = env.device(
        "ambiguous",
        issue_device_certificate(a_ca, "ambiguous", product_key=a.product_key, key=env.key),
    )
    a.associate(a_sn, {dev.pair.sn: dev.name})
    assert env.identity(dev) == {"productKey": a.product_key, "deviceName": dev.name}

    # The same key in another CA certificate: the registration rule refuses it ...
    twin = create_ca("Shared Key CA", key=a_ca.key)
    with pytest.raises(DuplicateCaError, match="public key is already registered;") as refused:
        b.register_ca(twin, "b_twin")
    assert a.account.name not in str(refused.value) and "a_ca" not in str(refused.value)
    # ... so it is written into the store directly: the device is now ambiguous.
    b_sn = _insert_ca_bypassing_rules(env, b, twin, "b_twin")
    b.associate(b_sn, {dev.pair.sn: "thief"})
    assert env.connack(dev) is None
    lines = _refused(caplog, "verifies under 2 registered CA keys: refused")
    assert lines and f"cert SN {dev.pair.sn}" in lines[-1]
    assert "connected" not in " ".join(
        r.getMessage() for r in caplog.records if "ambiguous&" in r.getMessage()
    )
    # Disabling the other row does not change the outcome (inactive CAs count as candidates).
    env.registry.set_ca_status(b.account, b_sn, "inactive")
    assert env.connack(dev) is None
    env.registry.delete_ca(b.account, b_sn)
    assert env.identity(dev) == {"productKey": a.product_key, "deviceName": dev.name}


# --- what a device certificate may be ---------------------------------------------------------


def test_device_certificate_that_is_a_ca_is_refused(
    env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "server_stub.mqtt")
    a = env.tenant("a")
    a_ca = create_ca("Leaf CA Test CA")
    a_sn = a.register_ca(a_ca, "a_ca")
    now = datetime.now(UTC)
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ca-leaf")]))
        .issuer_name(a_ca.certificate.subject)
        .public_key(env.key.public_key())
        .serial_number(random_serial())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(a_ca.key, hashes.SHA256())
    )
    dev = env.device("ca-leaf", CertifiedKey(leaf, env.key))
    a.associate(a_sn, {dev.pair.sn: dev.name})
    assert env.connack(dev) is None
    assert _refused(caplog, "is a CA certificate (basicConstraints CA:TRUE)")


def test_version_1_device_certificate_from_openssl_x509_req_is_accepted(
    env: Env, tmp_path: Path
) -> None:
    """``openssl x509 -req`` without an extensions file, as the platform documents it: a
    version-1 certificate with no extensions; mosquitto_sub receives its identity."""
    a = env.tenant("a")
    a_ca = create_ca("V1 Test CA")
    a_sn = a.register_ca(a_ca, "a_ca")
    a_ca.write(tmp_path / "ca.cer", tmp_path / "ca.key")
    openssl("genrsa", "-out", "v1.key", "2048", cwd=tmp_path)
    openssl(
        "req", "-new", "-key", "v1.key", "-out", "v1.csr", "-subj", "/CN=v1-device", cwd=tmp_path
    )
    openssl(
        "x509",
        "-req",
        "-in",
        "v1.csr",
        "-CA",
        "ca.cer",
        "-CAkey",
        "ca.key",
        "-set_serial",
        "0x5eed01",
        "-out",
        "v1.cer",
        "-days",
        "30",
        "-sha256",
        cwd=tmp_path,
    )
    cert = x509.load_pem_x509_certificate((tmp_path / "v1.cer").read_bytes())
    assert cert.version is x509.Version.v1 and len(cert.extensions) == 0
    a.associate(a_sn, {"5eed01": "v1-device"})
    result = subprocess.run(
        [
            MOSQUITTO_SUB,
            "-h",
            "127.0.0.1",
            "-p",
            str(env.server.port),
            "--cafile",
            str(env.server_ca_file),
            "--cert",
            str(tmp_path / "v1.cer"),
            "--key",
            str(tmp_path / "v1.key"),
            "-i",
            "v1|securemode=2|",
            "-V",
            "mqttv311",
            "-t",
            "/ignored/filter",
            "-C",
            "1",
            "-W",
            "10",
            "-v",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == (
        f'{IDENTITY_TOPIC} {{"productKey":"{a.product_key}","deviceName":"v1-device"}}'
    )


def test_device_certificate_with_a_negative_serial_is_refused_cleanly(
    env: Env, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    a = env.tenant("a")
    a_ca = create_ca("Negative SN Test CA")
    a.register_ca(a_ca, "a_ca")
    a_ca.write(tmp_path / "ca.cer", tmp_path / "ca.key")
    openssl("genrsa", "-out", "neg.key", "2048", cwd=tmp_path)
    openssl("req", "-new", "-key", "neg.key", "-out", "neg.csr", "-subj", "/CN=neg", cwd=tmp_path)
    openssl(
        "x509",
        "-req",
        "-in",
        "neg.csr",
        "-CA",
        "ca.cer",
        "-CAkey",
        "ca.key",
        "-set_serial",
        "-5",
        "-out",
        "neg.cer",
        "-days",
        "30",
        cwd=tmp_path,
    )
    dev = Device(
        "neg", CertifiedKey(a_ca.certificate, a_ca.key), tmp_path / "neg.cer", tmp_path / "neg.key"
    )
    assert env.connack(dev) is None
    lines = _refused(caplog, "serial number is unusable")
    assert lines and "SN -5 is negative" in lines[-1]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]


def test_device_of_a_disabled_ca_is_refused_at_the_handshake(env: Env) -> None:
    """Attributed (by key) to its own CA, which its account disabled: refused."""
    a = env.tenant("a")
    a_ca = create_ca("Never Connack CA")
    a_sn = a.register_ca(a_ca, "a_ca")
    dev = env.device(
        "never", issue_device_certificate(a_ca, "never", product_key=a.product_key, key=env.key)
    )
    a.associate(a_sn, {dev.pair.sn: dev.name})
    assert env.connack(dev) == codec.CONNACK_ACCEPTED
    env.registry.set_ca_status(a.account, a_sn, "inactive")
    assert env.connack(dev) is None


# --- the forged duplicate-signature key (fixture made once by scripts/make_dsks_fixture.py) ----

DSKS = Path(__file__).resolve().parent.parent / "fixtures" / "dsks"


def _fixture_pair(name: str) -> CertifiedKey:
    cert = load_certificate((DSKS / f"{name}.pem").read_bytes())
    key = require_rsa_key(load_private_key((DSKS / f"{name}.key").read_bytes()))
    return CertifiedKey(cert, key)


def test_forged_duplicate_signature_key_cannot_hijack_a_device(
    env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    """B's look-alike CA with a key under which the victim's signature also verifies: refused
    at registration by the exponent rule; written into the store anyway, it makes the victim's
    device ambiguous (refused, logged), never B's."""
    caplog.set_level(logging.WARNING, "server_stub.mqtt")
    victim_ca, forged, device = (
        _fixture_pair(n) for n in ("victim-ca", "forged-ca", "victim-device")
    )
    # The fixture is what it claims: same subject, a huge exponent, and the same signature
    # verifies under both keys.
    assert forged.certificate.subject == victim_ca.certificate.subject
    assert forged.key.public_key().public_numbers().e.bit_length() > 2000
    assert signed_by(device.certificate, victim_ca.certificate.public_key())
    assert signed_by(device.certificate, forged.certificate.public_key())

    a, b = env.tenant("a"), env.tenant("b")
    a_sn = a.register_ca(victim_ca, "victim_ca")
    dev = env.device("dsks-victim", device)
    a.associate(a_sn, {device.sn: dev.name})
    expected = {"productKey": a.product_key, "deviceName": dev.name}
    assert env.identity(dev) == expected

    with pytest.raises(CaCertificateRejectedError) as refused:
        b.register_ca(forged, "forged_ca")
    bits = forged.key.public_key().public_numbers().e.bit_length()
    assert (
        f"RSA public exponent is a {bits}-bit number; the platform accepts only CA keys with "
        "the public exponent 65537 (exponent rule"
    ) in str(refused.value)
    b_sn = _insert_ca_bypassing_rules(env, b, forged, "forged_ca")
    b.associate(b_sn, {device.sn: "thief"})
    assert env.connack(dev) is None
    lines = _refused(caplog, "verifies under 2 registered CA keys: refused")
    assert lines and f"cert SN {device.sn}" in lines[-1]
    assert not any("thief&" in r.getMessage() for r in caplog.records)
    env.registry.delete_ca(b.account, b_sn)
    assert env.identity(dev) == expected


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
def test_resumed_session_is_attributed_again_and_a_look_alike_ca_changes_nothing(
    env: Env, version: ssl.TLSVersion
) -> None:
    """A resumed session skips the verify callback, so the certificate kept in the ticket is
    attributed again, by key, against the registry as it is now (issue 16): B registering a
    same-subject CA without SKI after A's device got its ticket, and claiming its SN, does not
    change which identity the resumed device is told; A disabling its own CA refuses it."""
    a, b = env.tenant("a"), env.tenant("b")
    a_ca = create_ca(README_CA_NAME)
    a_sn = a.register_ca(a_ca, "a_ca")
    dev = env.device(
        f"resume-{version.name}",
        issue_device_certificate(
            a_ca, f"resume-{version.name}", product_key=a.product_key, key=env.key
        ),
    )
    a.associate(a_sn, {dev.pair.sn: dev.name})
    ctx = ssl.create_default_context(cafile=str(env.server_ca_file))
    ctx.minimum_version = ctx.maximum_version = version
    ctx.load_cert_chain(str(dev.cert), str(dev.key))

    def connect(
        session: ssl.SSLSession | None,
    ) -> tuple[bool, list[codec.Packet], ssl.SSLSession | None]:
        """(resumed, CONNACK and identity message or what came before the close, session)."""
        with (
            socket.create_connection(("127.0.0.1", env.server.port), timeout=5) as raw,
            ctx.wrap_socket(raw, server_hostname="127.0.0.1", session=session) as sock,
        ):
            decoder = codec.Decoder(max_packet_size=codec.MAX_REMAINING_LENGTH)
            packets: list[codec.Packet] = []
            try:
                sock.sendall(codec.encode(codec.Connect("r|securemode=2|", 300)))
                while len(packets) < 2 and (data := sock.recv(65536)):
                    packets.extend(decoder.feed(data))
            except (ConnectionError, ssl.SSLError):
                pass
            return bool(sock.session_reused), packets, sock.session

    expected = {"productKey": a.product_key, "deviceName": dev.name}
    reused, packets, ticket = connect(None)
    assert not reused and packets[0] == codec.Connack(codec.CONNACK_ACCEPTED)
    b_sn = b.register_ca(ca_without_ski(README_CA_NAME), "b_ca")
    b.associate(b_sn, {dev.pair.sn: f"thief-{version.name}"})
    reused, packets, _ = connect(ticket)
    assert reused
    assert packets[0] == codec.Connack(codec.CONNACK_ACCEPTED)
    assert isinstance(packets[1], codec.Publish) and json.loads(packets[1].payload) == expected
    a.set_ca_active(a_sn, False)
    reused, packets, _ = connect(ticket)
    assert packets == [], "a resumed session of a disabled CA was accepted"
    a.set_ca_active(a_sn, True)
