"""The MQTT endpoint with real clients on loopback: paho-mqtt 2.x, mosquitto_pub/_sub, raw TLS.

The registry is the real one on a temporary SQLite file (CAs registered with their proof of
possession, devices associated by CSV: :class:`EndpointRegistry`); end-to-end tests through
``iotx509 server run`` live in test_mqtt_e2e.py.
"""

from __future__ import annotations

import logging
import sqlite3
import ssl
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from device_sdk.platform import IDENTITY_TOPIC
from firmware_helpers.pki import (
    CertifiedKey,
    create_ca,
    issue_device_certificate,
    random_serial,
)
from server_stub.mqtt import codec
from tests.server.mqtt_harness import (
    MOSQUITTO_PUB,
    MOSQUITTO_SUB,
    PK,
    Device,
    EndpointRegistry,
    Paho,
    RawClient,
    ServerThread,
    World,
    wait_for,
)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    return World(tmp_path_factory.mktemp("mqtt"))


@pytest.fixture
def directory(world: World) -> Iterator[EndpointRegistry]:
    d = EndpointRegistry(world, [world.ca])
    yield d
    d.close()


@pytest.fixture
def server(world: World, directory: EndpointRegistry) -> Iterator[ServerThread]:
    with ServerThread(directory.registry, world.server) as st:
        yield st


# --- accepted connections --------------------------------------------------------------------


def test_paho_first_connection_receives_its_identity(
    world: World, directory: EndpointRegistry, server: ServerThread
) -> None:
    dev = directory.device("paho-first")
    client = Paho(server.port, world.server_ca_file, dev).start()
    try:
        assert client.connected.wait(5)
        assert client.reason is not None and client.reason.value == 0
        msg = client.wait_message(IDENTITY_TOPIC)
        assert msg.payload == b'{"productKey":"pk1","deviceName":"paho-first"}'
        assert server.call(server.service.is_online, PK, "paho-first")  # type: ignore[union-attr]
    finally:
        client.stop()
    assert wait_for(lambda: not server.call(server.service.is_online, PK, "paho-first"))  # type: ignore[union-attr]


def test_paho_with_username_routes_messages_both_ways(
    world: World, directory: EndpointRegistry, server: ServerThread
) -> None:
    dev = directory.device("paho-user")
    client = Paho(server.port, world.server_ca_file, dev, username=f"paho-user&{PK}").start()
    svc = server.service
    assert svc is not None
    try:
        assert client.connected.wait(5) and client.reason is not None and client.reason.value == 0
        assert client.subscribe(f"/{PK}/paho-user/user/#", 1) == [1]
        client.client.publish(f"/{PK}/paho-user/user/up", b"telemetry", qos=1).wait_for_publish(5)
        echoed = client.wait_message(f"/{PK}/paho-user/user/up")
        assert echoed.payload == b"telemetry" and echoed.qos == 1
        recent = server.call(svc.recent_messages, PK, "paho-user")
        assert [(m.topic, m.payload, m.qos) for m in recent] == [
            (f"/{PK}/paho-user/user/up", b"telemetry", 1)
        ]
        assert server.call(svc.deliver, PK, "paho-user", f"/{PK}/paho-user/user/down", b"cmd", 1)
        assert client.wait_message(f"/{PK}/paho-user/user/down").payload == b"cmd"
        assert not server.call(svc.deliver, PK, "nobody", f"/{PK}/nobody/user/x", b"", 0)
    finally:
        client.stop()


def _mosquitto_tool(
    tool: str, server: ServerThread, world: World, dev: Device | None, *args: str
) -> subprocess.CompletedProcess[str]:
    """Run mosquitto_pub/sub against the endpoint over TLS (MQTT 3.1.1), with ``dev``'s
    certificate and key (none: no client certificate), then ``args``."""
    pair = [] if dev is None else ["--cert", str(dev.cert), "--key", str(dev.key)]
    return subprocess.run(
        [
            tool,
            "-h",
            "127.0.0.1",
            "-p",
            str(server.port),
            "--cafile",
            str(world.server_ca_file),
            *pair,
            "-V",
            "mqttv311",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=20,
    )


def test_mosquitto_sub_and_pub_clients(
    world: World, directory: EndpointRegistry, server: ServerThread
) -> None:
    dev = directory.device("mosq-dev")
    # mosquitto_sub prints every message it receives, subscribed or not: the identity comes first
    sub = _mosquitto_tool(
        MOSQUITTO_SUB,
        server,
        world,
        dev,
        "-i",
        "mosq-sub|securemode=2|",
        "-t",
        f"/{PK}/mosq-dev/user/#",
        "-C",
        "1",
        "-v",
        "-W",
        "10",
    )
    assert sub.returncode == 0, sub.stderr
    assert sub.stdout.strip() == (
        f'{IDENTITY_TOPIC} {{"productKey":"{PK}","deviceName":"mosq-dev"}}'
    )
    pub = _mosquitto_tool(
        MOSQUITTO_PUB,
        server,
        world,
        dev,
        "-i",
        "mosq-pub|securemode=2|",
        "-u",
        f"mosq-dev&{PK}",
        "-t",
        f"/{PK}/mosq-dev/user/up",
        "-m",
        "from mosquitto_pub",
        "-q",
        "1",
    )
    assert pub.returncode == 0, pub.stderr
    svc = server.service
    assert svc is not None
    recent = server.call(svc.recent_messages, PK, "mosq-dev")
    assert [m.payload for m in recent] == [b"from mosquitto_pub"]


def test_mosquitto_pub_without_certificate_is_refused_by_tls(
    world: World, server: ServerThread, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "server_stub.mqtt")
    pub = _mosquitto_tool(
        MOSQUITTO_PUB, server, world, None, "-i", "nocert|securemode=2|", "-t", "/a/b", "-m", "x"
    )
    assert pub.returncode != 0
    assert wait_for(lambda: "TLS handshake refused" in caplog.text)
    assert "CERTIFICATE" in caplog.text.upper()


# --- refusals ------------------------------------------------------------------------------


def _refused_line(caplog: pytest.LogCaptureFixture, needle: str) -> str:
    assert wait_for(lambda: needle in caplog.text), caplog.text
    lines = [r.getMessage() for r in caplog.records if needle in r.getMessage()]
    assert len(lines) >= 1
    return lines[0]


def _connack_code(server: ServerThread, world: World, dev: Device, **kw: object) -> int:
    client = RawClient(server.port, world.server_ca_file, dev.cert, dev.key)
    try:
        ack = client.connect(**kw)  # type: ignore[arg-type]
        if ack.return_code:
            assert client.closed_by_server()
        return ack.return_code
    finally:
        client.close()


def test_unassociated_sn_gets_connack_5_and_one_log_line(
    world: World, server: ServerThread, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "server_stub.mqtt")
    dev = world.device("not-assoc")  # signed by the registered CA, SN never associated
    assert _connack_code(server, world, dev) == codec.CONNACK_NOT_AUTHORIZED
    line = _refused_line(caplog, "CONNACK 5")
    assert "not associated" in line
    assert f"cert SN {dev.pair.sn}" in line
    assert "issuer CN=Device CA" in line


def test_paho_sees_not_authorised(world: World, server: ServerThread) -> None:
    dev = world.device("paho-noauth")
    client = Paho(server.port, world.server_ca_file, dev).start()
    try:
        assert client.connected.wait(5)
        # paho 2.x maps the MQTT 3.1.1 CONNACK code 5 to reason code 135 "Not authorized"
        assert client.reason is not None and str(client.reason) == "Not authorized"
        assert client.disconnected.wait(5)
    finally:
        client.client.loop_stop()


def test_disabled_device_is_refused_and_its_session_closed(
    world: World,
    directory: EndpointRegistry,
    server: ServerThread,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, "server_stub.mqtt")
    dev = directory.device("to-disable")
    live = RawClient(server.port, world.server_ca_file, dev.cert, dev.key)
    assert live.connect().return_code == 0
    directory.set_device_enabled("to-disable", False)
    server.refresh()
    assert live.closed_by_server()
    assert "no longer accepts" in caplog.text
    assert _connack_code(server, world, dev) == codec.CONNACK_NOT_AUTHORIZED
    assert "is disabled" in _refused_line(caplog, "CONNACK 5")


def test_non_rsa_device_certificate_is_refused(
    world: World,
    directory: EndpointRegistry,
    server: ServerThread,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, "server_stub.mqtt")
    ec_key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "ec-dev")]))
        .issuer_name(world.ca.certificate.subject)
        .public_key(ec_key.public_key())
        .serial_number(random_serial())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .sign(world.ca.key, hashes.SHA256())
    )
    directory.associate(world.ca, cert, "ec-dev")
    cert_path, key_path = world.root / "ec.cer", world.root / "ec.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        ec_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    client = RawClient(server.port, world.server_ca_file, cert_path, key_path)
    try:
        assert client.connect().return_code == codec.CONNACK_NOT_AUTHORIZED
    finally:
        client.close()
    assert "not RSA" in _refused_line(caplog, "CONNACK 5")


class ShiftedClock:
    """The registry's clock, moved by hand (the TLS handshake keeps OpenSSL's real clock)."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset

    def set(self, when: datetime) -> None:
        self.offset = when.timestamp() - time.time()


@pytest.mark.parametrize("edge", ["expired", "not yet valid"])
def test_certificate_out_of_its_dates_at_connect_is_refused_with_the_reason(
    world: World, edge: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The handshake checks the dates, but a resumed TLS session skips that check and CONNECT
    comes after the handshake: the registry checks them again, with its own clock. Here that
    clock is past the end (before the start) of a certificate that was in date at the handshake."""
    caplog.set_level(logging.WARNING, "server_stub.mqtt")
    clock = ShiftedClock()
    directory = EndpointRegistry(world, [world.ca], clock=clock)
    dev = directory.device(f"dates-{edge.replace(' ', '-')}")
    cert = dev.pair.certificate
    try:
        with ServerThread(directory.registry, world.server) as server:
            client = RawClient(server.port, world.server_ca_file, dev.cert, dev.key)  # handshake
            try:
                if edge == "expired":
                    clock.set(cert.not_valid_after_utc + timedelta(minutes=1))
                else:
                    clock.set(cert.not_valid_before_utc - timedelta(minutes=1))
                assert client.connect().return_code == codec.CONNACK_NOT_AUTHORIZED
            finally:
                client.close()
            line = _refused_line(caplog, "CONNACK 5")
            state = "has expired" if edge == "expired" else "is not yet valid"
            assert f"device certificate {state}: valid from" in line
            assert "the server's clock says" in line
            assert f"cert SN {dev.pair.sn}" in line
            clock.offset = 0.0  # back in its dates: the same certificate is accepted
            assert _connack_code(server, world, dev) == 0
    finally:
        directory.close()


def test_expired_certificate_fails_the_handshake(
    world: World,
    directory: EndpointRegistry,
    server: ServerThread,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, "server_stub.mqtt")
    old = world._write(
        "old-dev",
        issue_device_certificate(
            world.ca,
            "old-dev",
            product_key=PK,
            key=world._device_key,
            days=1,
            now=datetime.now(UTC) - timedelta(days=30),
        ),
    )
    directory.associate(world.ca, old.pair.certificate, "old-dev")
    with pytest.raises((ssl.SSLError, ConnectionError)):
        RawClient(server.port, world.server_ca_file, old.cert, old.key).connect()
    line = _refused_line(caplog, "TLS handshake refused")
    assert "certificate has expired" in line and f"cert SN {old.pair.sn}" in line


def test_product_that_cannot_take_private_ca_devices_is_refused_and_its_sessions_closed(
    world: World,
    directory: EndpointRegistry,
    server: ServerThread,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Rows that bypassed the association rules (legacy data, a manual edit of the database):
    the endpoint applies the product rule itself, at CONNECT and on every re-check."""
    caplog.set_level(logging.WARNING, "server_stub.mqtt")
    dev = directory.device("lora-dev")
    live = RawClient(server.port, world.server_ca_file, dev.cert, dev.key)
    try:
        assert live.connect().return_code == 0
        with sqlite3.connect(directory.real.path) as db:
            db.execute("UPDATE products SET network = 'lorawan' WHERE product_key = ?", (PK,))
        directory.set_ca_active(world.ca, True)  # any registry change re-checks live sessions
        server.refresh()
        assert live.closed_by_server()
    finally:
        live.close()
    assert "no longer accepts" in caplog.text
    assert _connack_code(server, world, dev) == codec.CONNACK_NOT_AUTHORIZED
    line = _refused_line(caplog, "CONNACK 5")
    assert f"product {PK} cannot take private-CA devices: network is lorawan (needs mqtt)" in line


def test_unregistered_ca_fails_the_handshake(
    world: World, server: ServerThread, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "server_stub.mqtt")
    dev = world.device("stranger-dev", world.stranger)
    with pytest.raises((ssl.SSLError, ConnectionError)):
        client = RawClient(server.port, world.server_ca_file, dev.cert, dev.key)
        client.connect()
    line = _refused_line(caplog, "TLS handshake refused")
    assert "no registered CA has the subject 'CN=Stranger CA'" in line
    assert "issuer CN=Stranger CA" in line


def test_client_without_certificate_fails_the_handshake(
    world: World, server: ServerThread, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "server_stub.mqtt")
    with pytest.raises((ssl.SSLError, ConnectionError)):
        client = RawClient(server.port, world.server_ca_file, None, None)
        client.connect()
    assert "CERTIFICATE" in _refused_line(caplog, "TLS handshake refused").upper()


def test_disabled_ca_is_refused_by_new_handshakes_and_its_sessions_closed(
    world: World, directory: EndpointRegistry, server: ServerThread
) -> None:
    ca = create_ca("Disable Me CA")
    directory.add_ca(ca)
    server.refresh()
    dev = directory.device("ca-off", ca)
    live = Paho(server.port, world.server_ca_file, dev).start()
    try:
        assert live.connected.wait(5) and live.reason is not None and live.reason.value == 0
        directory.set_ca_active(ca, False)
        # the service's own 0.25 s poll notices: no explicit refresh here
        assert live.disconnected.wait(3)
    finally:
        live.client.loop_stop()
    with pytest.raises((ssl.SSLError, ConnectionError)):
        RawClient(server.port, world.server_ca_file, dev.cert, dev.key).connect()
    directory.set_ca_active(ca, True)
    # re-enabled: the next handshake takes the registry's current trust index (no restart, no wait)
    assert _connack_code(server, world, dev) == 0


def test_ca_registered_after_start_is_trusted_without_restart(
    world: World, directory: EndpointRegistry, server: ServerThread
) -> None:
    ca = create_ca("Late CA")
    dev = world.device("late-dev", ca)
    with pytest.raises((ssl.SSLError, ConnectionError)):
        RawClient(server.port, world.server_ca_file, dev.cert, dev.key).connect()
    directory.add_ca(ca)
    directory.associate(ca, dev.pair.certificate, "late-dev")
    # the next handshake takes the registry's current trust index: no restart, no wait
    assert _connack_code(server, world, dev) == 0


def test_no_active_ca_fails_every_handshake_cleanly(world: World) -> None:
    empty = EndpointRegistry(world)
    with ServerThread(empty.registry, world.server) as st:
        dev = world.device("nobody")
        with pytest.raises((ssl.SSLError, ConnectionError)):
            RawClient(st.port, world.server_ca_file, dev.cert, dev.key).connect()
        # the server is still there for the next client
        with pytest.raises((ssl.SSLError, ConnectionError)):
            RawClient(st.port, world.server_ca_file, dev.cert, dev.key).connect()


def test_wrong_username_is_refused(
    world: World,
    directory: EndpointRegistry,
    server: ServerThread,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, "server_stub.mqtt")
    dev = directory.device("user-dev")
    directory.device("other-dev")
    assert _connack_code(server, world, dev, username=f"other-dev&{PK}") == 5
    assert "names another device" in _refused_line(caplog, "CONNACK 5")
    assert _connack_code(server, world, dev, username="no-ampersand") == 5
    assert _connack_code(server, world, dev, username=f"user-dev&{PK}") == 0


@pytest.mark.parametrize(("keep_alive", "code"), [(0, 2), (29, 2), (30, 0), (1200, 0), (1201, 2)])
def test_keep_alive_range(
    world: World, directory: EndpointRegistry, server: ServerThread, keep_alive: int, code: int
) -> None:
    dev = directory.device(f"ka-{keep_alive}")
    assert _connack_code(server, world, dev, keep_alive=keep_alive) == code


@pytest.mark.parametrize("client_id", ["id|securemode=3|", "id|securemode=2", "id|x|"])
def test_client_id_parameters(
    world: World, directory: EndpointRegistry, server: ServerThread, client_id: str
) -> None:
    dev = directory.device("cid-dev")
    assert _connack_code(server, world, dev, client_id=client_id) == 2


def test_plain_client_id_without_parameters_is_accepted(
    world: World, directory: EndpointRegistry, server: ServerThread
) -> None:
    dev = directory.device("plain-id")
    assert _connack_code(server, world, dev, client_id="AA:BB:CC:DD") == 0


def test_second_connection_of_a_device_replaces_the_first(
    world: World,
    directory: EndpointRegistry,
    server: ServerThread,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, "server_stub.mqtt")
    dev = directory.device("dup-dev")
    first = Paho(server.port, world.server_ca_file, dev, client_id="one|securemode=2|").start()
    try:
        assert first.connected.wait(5)
        second = RawClient(server.port, world.server_ca_file, dev.cert, dev.key)
        assert second.connect(client_id="two|securemode=2|").return_code == 0
        assert first.disconnected.wait(5)
        assert "replaced by a new connection" in caplog.text
        assert server.call(server.service.is_online, PK, "dup-dev")  # type: ignore[union-attr]
        assert isinstance(second.read(), codec.Publish)  # identity, on the surviving session
        second.send(codec.Pingreq())
        assert second.read() == codec.Pingresp()
        second.close()
    finally:
        first.client.loop_stop()


def test_forbidden_topics(
    world: World,
    directory: EndpointRegistry,
    server: ServerThread,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, "server_stub.mqtt")
    dev = directory.device("topic-dev")
    directory.device("victim")
    client = RawClient(server.port, world.server_ca_file, dev.cert, dev.key)
    try:
        assert client.connect().return_code == 0
        assert isinstance(client.read(), codec.Publish)  # identity
        client.send(
            codec.Subscribe(
                1,
                (
                    (f"/{PK}/topic-dev/user/#", 1),
                    (f"/{PK}/victim/user/#", 1),
                    ("#", 0),
                    (f"/sys/{PK}/topic-dev/thing/#", 2),
                    (f"/{PK}/+/user/x", 0),
                ),
            )
        )
        assert client.read() == codec.Suback(1, (1, 0x80, 0x80, 1, 0x80))
        client.send(codec.Publish(f"/{PK}/victim/user/in", b"spoof", 1, packet_id=5))
        assert client.read() == codec.Puback(5)  # acknowledged, but dropped
        client.send(codec.Publish(f"/{PK}/topic-dev/user/ok", b"fine", 0))
        got = client.read()
        assert isinstance(got, codec.Publish) and got.payload == b"fine"
    finally:
        client.close()
    assert "dropped: outside the device's topics" in caplog.text
    svc = server.service
    assert svc is not None
    assert server.call(svc.recent_messages, PK, "victim") == []
    assert [m.payload for m in server.call(svc.recent_messages, PK, "topic-dev")] == [b"fine"]


# --- look-alike CAs (same subject, different key) --------------------------------------------


def test_look_alike_ca_device_registered_only_with_the_other_is_refused(
    world: World,
    server: ServerThread,
    directory: EndpointRegistry,
) -> None:
    """A device of `twin` claims an association under `ca` (same subject): never accepted."""
    dev = world.device("twin-dev", world.twin)
    directory.associate(world.ca, dev.pair.certificate, "twin-dev")
    with pytest.raises((ssl.SSLError, ConnectionError)):
        RawClient(server.port, world.server_ca_file, dev.cert, dev.key).connect()


def test_look_alike_registered_too_refuses_by_key_not_name(
    world: World,
    directory: EndpointRegistry,
    server: ServerThread,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Both same-subject CAs registered; the device's SN is associated only under the other."""
    caplog.set_level(logging.WARNING, "server_stub.mqtt")
    directory.add_ca(world.twin)
    server.refresh()
    dev = world.device("twin-dev2", world.twin)
    directory.associate(world.ca, dev.pair.certificate, "twin-dev2")
    assert _connack_code(server, world, dev) == codec.CONNACK_NOT_AUTHORIZED
    line = _refused_line(caplog, "CONNACK 5")
    assert "not associated" in line


@pytest.mark.parametrize("order", ["registered-first", "twin-first"])
def test_device_of_a_ca_whose_look_alike_is_registered_still_works(
    world: World, order: str
) -> None:
    """OpenSSL picks the issuer by subject + authority key identifier (our certificates carry
    one), so the right CA verifies whichever order the trust store holds them in."""
    cas = [world.ca, world.twin] if order == "registered-first" else [world.twin, world.ca]
    directory = EndpointRegistry(world, cas)
    mine = directory.device(f"mine-{order}", world.ca)
    theirs = directory.device(f"theirs-{order}", world.twin)
    with ServerThread(directory.registry, world.server) as server:
        assert _connack_code(server, world, mine) == 0
        assert _connack_code(server, world, theirs) == 0


def _leaf_without_akid(world: World, ca: CertifiedKey, name: str) -> Device:
    """Like ``openssl x509 -req`` without an extensions file: no authority key identifier."""
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, name)]))
        .issuer_name(ca.certificate.subject)
        .public_key(world._device_key.public_key())
        .serial_number(random_serial())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .sign(ca.key, hashes.SHA256())
    )
    return world._write(name, CertifiedKey(cert, world._device_key))


@pytest.mark.parametrize("order", ["registered-first", "look-alike-first"])
def test_look_alike_without_authority_key_id_locks_nobody_out(
    world: World, order: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Formerly pinned as "known OpenSSL behaviour": without an AKID in the leaf, OpenSSL built
    the chain with the *first* trusted CA of that subject, so whoever registered a same-subject
    CA first switched the other's devices off. The issuer is now attributed by key in the verify
    callback: both CAs' devices connect, each as itself, whichever CA came first."""
    caplog.set_level(logging.INFO, "server_stub.mqtt")
    cas = [world.ca, world.twin] if order == "registered-first" else [world.twin, world.ca]
    directory = EndpointRegistry(world, cas)
    first = _leaf_without_akid(world, world.ca, f"noakid-a-{order}")
    second = _leaf_without_akid(world, world.twin, f"noakid-b-{order}")
    directory.associate(world.ca, first.pair.certificate, f"noakid-a-{order}")
    directory.associate(world.twin, second.pair.certificate, f"noakid-b-{order}")
    with ServerThread(directory.registry, world.server) as server:
        assert _connack_code(server, world, first) == 0
        assert _connack_code(server, world, second) == 0
    assert f"noakid-a-{order}&{PK} connected" in caplog.text
    assert f"noakid-b-{order}&{PK} connected" in caplog.text
    assert "TLS handshake refused" not in caplog.text
