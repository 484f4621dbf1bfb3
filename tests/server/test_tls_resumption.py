"""TLS session resumption at the device endpoint (issue 16), over real TLS on loopback.

A device that returns with a session ticket skips the RSA signatures of a full handshake, but
never the rules: the certificate kept in the ticket is attributed again, by key, against the
registry's trust index as it is when the connection is accepted, and CONNECT goes through the
real registry (:mod:`testkit.registry`) as for any connection. What must hold:

- TLS 1.2 and 1.3 sessions resume (``session_reused``), with the same identity as before;
- a device disabled, or its CA disabled or deleted, since the ticket was issued is refused;
- another account registering a look-alike CA (same subject, its own key) after the ticket was
  issued changes nothing: the resumed device is told the identity it was told before;
- ticket keys rotate: a ticket from before a rotation makes a full handshake;
- with tickets turned off, nothing resumes.

Clients: Python's :mod:`ssl` (``session=``) and paho-mqtt (through an SSL context that offers
the last session). No sleeps: a registry change is in force for every connection accepted after
it.
"""

from __future__ import annotations

import json
import socket
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from device_sdk.platform import IDENTITY_TOPIC
from firmware_helpers.pki import CertifiedKey, create_ca, issue_device_certificate
from server_stub.config import MqttLimits
from server_stub.mqtt import codec
from server_stub.mqtt.decisions import Decisions
from server_stub.mqtt.tls import ENGINES, ServerTls
from server_stub.mqtt.tls_engine import TlsEngine
from server_stub.ports import AuthenticatedDevice, IssuingCa
from tests.server.mqtt_harness import PK, Device, EndpointRegistry, ServerThread, World

VERSIONS = [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    return World(tmp_path_factory.mktemp("resumption"))


@dataclass
class Endpoint:
    reg: EndpointRegistry
    server: ServerThread

    @property
    def tls(self) -> ServerTls:
        assert self.server.service is not None
        return self.server.service.broker.context


@pytest.fixture(params=ENGINES)
def engine(request: pytest.FixtureRequest) -> str:
    """Both TLS engines decide the same way (server_stub/mqtt/tls.py): each test runs on each."""
    name: str = request.param
    return name


@pytest.fixture
def endpoint(world: World, engine: str) -> Iterator[Endpoint]:
    reg = EndpointRegistry(world, [world.ca])
    with ServerThread(reg.registry, world.server, MqttLimits(tls_engine=engine)) as server:
        assert server.service is not None and server.service.broker.context.engine == engine
        yield Endpoint(reg, server)
    reg.close()


@dataclass
class Attempt:
    reused: bool
    connack: int | None
    """None: the server closed the connection without a CONNACK."""
    identity: dict[str, str] | None
    session: ssl.SSLSession | None


class Client:
    """One device's TLS client context (a session resumes only with the context it came from)."""

    def __init__(self, world: World, dev: Device, version: ssl.TLSVersion) -> None:
        self.dev = dev
        self.ctx = ssl.create_default_context(cafile=str(world.server_ca_file))
        self.ctx.minimum_version = self.ctx.maximum_version = version
        self.ctx.load_cert_chain(str(dev.cert), str(dev.key))


def attempt(port: int, client: Client, session: ssl.SSLSession | None = None) -> Attempt:
    """One connection: TLS (offering ``session``), CONNECT, CONNACK, and the identity message."""
    ctx, dev = client.ctx, client.dev
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        ctx.wrap_socket(raw, server_hostname="127.0.0.1", session=session) as sock,
    ):
        reused = bool(sock.session_reused)
        decoder = codec.Decoder(max_packet_size=codec.MAX_REMAINING_LENGTH)
        packets: list[codec.Packet] = []
        try:
            sock.sendall(codec.encode(codec.Connect(f"{dev.name}|securemode=2|", 300)))
            while len(packets) < 2:
                data = sock.recv(65536)
                if not data:
                    break
                packets.extend(decoder.feed(data))
        except (ConnectionError, ssl.SSLError):
            pass
        connack = packets[0] if packets else None
        assert connack is None or isinstance(connack, codec.Connack), packets
        identity = None
        if len(packets) > 1 and isinstance(packets[1], codec.Publish):
            assert packets[1].topic == IDENTITY_TOPIC
            identity = json.loads(packets[1].payload)
        return Attempt(
            reused,
            None if connack is None else connack.return_code,
            identity,
            sock.session,
        )


def ticketed(
    world: World,
    ep: Endpoint,
    version: ssl.TLSVersion,
    name: str,
    ca: CertifiedKey | None = None,
) -> tuple[Device, Client, Attempt]:
    """A new device of ``ep``'s registry (issued by ``ca``, else the world's CA), its client, and
    its first connection, which must end with a session ticket."""
    dev = ep.reg.device(name, ca)
    client = Client(world, dev, version)
    return dev, client, first_ticket(ep, client)


def first_ticket(ep: Endpoint, client: Client) -> Attempt:
    first = attempt(ep.server.port, client)
    assert (first.connack, first.reused) == (codec.CONNACK_ACCEPTED, False)
    assert first.session is not None and first.session.has_ticket
    return first


def refusals(caplog: pytest.LogCaptureFixture, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if text in r.getMessage()]


@pytest.mark.parametrize("version", VERSIONS)
def test_a_returning_device_resumes_its_session_with_the_same_identity(
    world: World, endpoint: Endpoint, version: ssl.TLSVersion
) -> None:
    dev, client, first = ticketed(world, endpoint, version, f"back-{version.name}")
    expected = {"productKey": PK, "deviceName": dev.name}
    assert first.identity == expected
    session = first.session
    for n in range(2):  # the ticket of a resumed session resumes again
        again = attempt(endpoint.server.port, client, session)
        assert again.reused, f"reconnect {n} did a full handshake"
        assert (again.connack, again.identity) == (codec.CONNACK_ACCEPTED, expected)
        session = again.session
    # attributed once for this trust snapshot (the full handshake), then answered from the cache
    assert (endpoint.tls.attributions.misses, endpoint.tls.attributions.hits) == (1, 2)


@pytest.mark.parametrize("version", VERSIONS)
def test_a_device_disabled_since_its_ticket_is_refused(
    world: World, endpoint: Endpoint, version: ssl.TLSVersion, caplog: pytest.LogCaptureFixture
) -> None:
    dev, client, first = ticketed(world, endpoint, version, f"off-{version.name}")
    ticket = first.session
    endpoint.reg.set_device_enabled(dev.name, False)
    again = attempt(endpoint.server.port, client, ticket)
    assert again.reused
    assert (again.connack, again.identity) == (codec.CONNACK_NOT_AUTHORIZED, None)
    assert refusals(caplog, f"device {PK}/{dev.name} is disabled")
    endpoint.reg.set_device_enabled(dev.name, True)
    assert attempt(endpoint.server.port, client, ticket).connack == 0


@pytest.mark.parametrize("version", VERSIONS)
def test_a_device_whose_ca_was_disabled_since_its_ticket_is_refused(
    world: World, endpoint: Endpoint, version: ssl.TLSVersion, caplog: pytest.LogCaptureFixture
) -> None:
    _dev, client, first = ticketed(world, endpoint, version, f"ca-off-{version.name}")
    ticket = first.session
    endpoint.reg.set_ca_active(world.ca, False)
    again = attempt(endpoint.server.port, client, ticket)
    assert (again.connack, again.identity) == (None, None)
    assert refusals(caplog, "resumed session: its issuing CA")
    endpoint.reg.set_ca_active(world.ca, True)
    assert attempt(endpoint.server.port, client).connack == 0


@pytest.mark.parametrize("version", VERSIONS)
def test_a_device_whose_ca_was_deleted_since_its_ticket_is_refused(
    world: World, endpoint: Endpoint, version: ssl.TLSVersion, caplog: pytest.LogCaptureFixture
) -> None:
    ca = create_ca(f"Short-lived CA {version.name}")
    ca_sn = endpoint.reg.add_ca(ca)
    _dev, client, first = ticketed(world, endpoint, version, f"ca-gone-{version.name}", ca)
    ticket = first.session
    endpoint.reg.tenant.delete_ca(ca_sn)
    again = attempt(endpoint.server.port, client, ticket)
    assert (again.connack, again.identity) == (None, None)
    assert refusals(caplog, "resumed session: no registered CA has the subject")


@pytest.mark.parametrize("version", VERSIONS)
def test_a_look_alike_ca_registered_after_the_ticket_changes_no_identity(
    world: World, endpoint: Endpoint, version: ssl.TLSVersion, caplog: pytest.LogCaptureFixture
) -> None:
    """Account B registers a CA with A's CA's subject and its own key, after A's device got
    its ticket, and associates A's certificate SN with a device of its own: A's device resumes
    as A's device, attributed again against the new trust snapshot (not the cached answer)."""
    dev, client, first = ticketed(world, endpoint, version, f"victim-{version.name}")
    mallory = endpoint.reg.real.tenant(f"mallory{version.name[-1]}")
    twin = create_ca("Device CA")  # the subject of world.ca, another key
    twin_sn = mallory.register_ca(twin)
    mallory.associate(twin_sn, {dev.pair.sn: "thief"})
    misses = endpoint.tls.attributions.misses
    again = attempt(endpoint.server.port, client, first.session)
    assert again.reused
    assert (again.connack, again.identity) == (
        codec.CONNACK_ACCEPTED,
        {"productKey": PK, "deviceName": dev.name},
    )
    assert endpoint.tls.attributions.misses == misses + 1, "a stale attribution was reused"
    assert not refusals(caplog, "thief")
    # and B's own device of that look-alike CA is B's, resumed or not
    theirs = world._write(
        "theirs", issue_device_certificate(twin, "theirs", product_key=mallory.product_key)
    )
    their_client = Client(world, theirs, version)
    mallory.associate(twin_sn, {theirs.pair.sn: "theirs"})
    own = attempt(endpoint.server.port, their_client)
    back = attempt(endpoint.server.port, their_client, own.session)
    assert back.reused
    assert (
        own.identity == back.identity == {"productKey": mallory.product_key, "deviceName": "theirs"}
    )


def test_a_full_handshake_of_a_returning_device_uses_the_attribution_of_the_snapshot(
    world: World, endpoint: Endpoint
) -> None:
    """A device returning without a session: the same attribution, answered once per trust
    snapshot; a registry change (here a look-alike CA of another account) attributes again."""
    version = ssl.TLSVersion.TLSv1_3
    dev = endpoint.reg.device("full-again")
    client = Client(world, dev, version)
    expected = {"productKey": PK, "deviceName": dev.name}
    first = attempt(endpoint.server.port, client)
    cache = endpoint.tls.attributions
    misses, hits = cache.misses, cache.hits
    again = attempt(endpoint.server.port, client)  # no session offered: a full handshake
    assert not again.reused and (again.connack, again.identity) == (
        codec.CONNACK_ACCEPTED,
        expected,
    )
    assert first.identity == expected and (cache.misses, cache.hits) == (misses, hits + 1)
    mallory = endpoint.reg.real.tenant("mallory_full")
    twin_sn = mallory.register_ca(create_ca("Device CA"))  # world.ca's subject, another key
    mallory.associate(twin_sn, {dev.pair.sn: "thief"})
    third = attempt(endpoint.server.port, client)
    assert not third.reused and (third.connack, third.identity) == (
        codec.CONNACK_ACCEPTED,
        expected,
    )
    assert cache.misses == misses + 1, "a stale attribution was reused"


@pytest.mark.parametrize("version", VERSIONS)
def test_a_ticket_from_before_a_key_rotation_makes_a_full_handshake(
    world: World, endpoint: Endpoint, version: ssl.TLSVersion
) -> None:
    _dev, client, first = ticketed(world, endpoint, version, f"rotated-{version.name}")
    ticket = first.session
    endpoint.server.call(endpoint.tls.rotate_ticket_keys)
    again = attempt(endpoint.server.port, client, ticket)
    assert not again.reused
    assert again.connack == codec.CONNACK_ACCEPTED
    assert attempt(endpoint.server.port, client, again.session).reused


def test_ticket_keys_rotate_after_the_ticket_lifetime(world: World) -> None:
    now = [0.0]
    tls = ServerTls(
        world.server.cert_pem(),
        world.server.key_pem(),
        _NoIndex,
        ticket_lifetime=60,
        clock=lambda: now[0],
    )
    first = tls.context
    tls.accept()
    now[0] = 59.9
    tls.accept()
    assert (tls.context, tls.rotations) == (first, 0)
    now[0] = 60.0
    tls.accept()
    assert tls.context is not first and tls.rotations == 1


class _NoIndex:
    def attribute(self, leaf: Any) -> Any:
        raise AssertionError("not called: no handshake in this test")


@pytest.mark.parametrize("version", VERSIONS)
def test_with_tickets_off_nothing_resumes(
    world: World, version: ssl.TLSVersion, engine: str
) -> None:
    reg = EndpointRegistry(world, [world.ca])
    dev = reg.device(f"no-tickets-{version.name}-{engine}")
    client = Client(world, dev, version)
    limits = MqttLimits(session_ticket_lifetime=0, tls_engine=engine)
    try:
        with ServerThread(reg.registry, world.server, limits) as server:
            session = None
            for n in range(2):
                got = attempt(server.port, client, session)
                assert got.connack == codec.CONNACK_ACCEPTED
                assert not got.reused, f"attempt {n} resumed a session"
                session = got.session
    finally:
        reg.close()


# --- paho-mqtt -----------------------------------------------------------------------------------


class ResumingContext(ssl.SSLContext):
    """What a client does to resume: offer its last session when it wraps the next socket."""

    session: ssl.SSLSession | None = None

    def wrap_socket(self, *args: Any, **kwargs: Any) -> ssl.SSLSocket:
        kwargs.setdefault("session", self.session)
        return super().wrap_socket(*args, **kwargs)


def paho_connect(
    port: int, ctx: ResumingContext, dev: Device
) -> tuple[int, bool, dict[str, str] | None]:
    """Connect with paho; (CONNACK code, session resumed, identity told if accepted)."""
    connected, identity = threading.Event(), threading.Event()
    got: dict[str, Any] = {}
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2, client_id=f"{dev.name}|securemode=2|", protocol=mqtt.MQTTv311
    )
    client.tls_set_context(ctx)

    def on_connect(c: mqtt.Client, u: object, f: object, reason: Any, p: object) -> None:
        got["code"] = reason.value
        connected.set()

    def on_message(c: mqtt.Client, u: object, msg: mqtt.MQTTMessage) -> None:
        if msg.topic == IDENTITY_TOPIC:
            got["identity"] = json.loads(msg.payload)
            identity.set()

    client.on_connect, client.on_message = on_connect, on_message
    client.connect("127.0.0.1", port, 300)  # TCP and the TLS handshake, before the loop runs
    sock = client.socket()
    assert isinstance(sock, ssl.SSLSocket)
    reused = bool(sock.session_reused)  # read now: a refused connection's socket is closed later
    client.loop_start()
    try:
        assert connected.wait(10), got
        assert got["code"] != 0 or identity.wait(10), got
        if got["code"] == 0:
            ctx.session = sock.session
        return got["code"], reused, got.get("identity")
    finally:
        client.disconnect()
        client.loop_stop()


def test_paho_resumes_and_a_disabled_device_is_refused(world: World, endpoint: Endpoint) -> None:
    dev = endpoint.reg.device("paho-back")
    ctx = ResumingContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(str(world.server_ca_file))
    ctx.load_cert_chain(str(dev.cert), str(dev.key))
    expected = {"productKey": PK, "deviceName": dev.name}
    assert paho_connect(endpoint.server.port, ctx, dev) == (0, False, expected)
    assert paho_connect(endpoint.server.port, ctx, dev) == (0, True, expected)
    endpoint.reg.set_device_enabled(dev.name, False)
    # CONNACK 5, which paho 2 reports as the reason code "Not authorized" (135)
    assert paho_connect(endpoint.server.port, ctx, dev) == (135, True, None)


# --- the registry's answer, kept while its trust generation holds -------------------------------


def test_a_returning_device_is_answered_on_the_loop_until_the_registry_changes(
    world: World, endpoint: Endpoint
) -> None:
    assert endpoint.server.service is not None
    decisions = endpoint.server.service.broker.decisions
    dev, client, first = ticketed(world, endpoint, ssl.TLSVersion.TLSv1_3, "regular")
    hits = decisions.hits
    again = attempt(endpoint.server.port, client, first.session)
    assert again.connack == codec.CONNACK_ACCEPTED and again.reused
    assert decisions.hits == hits + 1
    assert attempt(endpoint.server.port, client).connack == codec.CONNACK_ACCEPTED  # full too
    assert decisions.hits == hits + 2
    endpoint.reg.set_device_enabled(dev.name, False)  # moves the generation: nothing kept holds
    assert attempt(endpoint.server.port, client, again.session).connack == 5
    assert attempt(endpoint.server.port, client).connack == 5
    assert decisions.hits == hits + 2
    endpoint.reg.set_device_enabled(dev.name, True)
    assert attempt(endpoint.server.port, client).connack == codec.CONNACK_ACCEPTED
    assert decisions.hits == hits + 2  # asked the registry again first


def test_kept_decisions_are_per_generation_and_bounded() -> None:
    kept = Decisions(limit=2)
    ca = IssuingCa(1, 1, "ca", True)
    other_ca = IssuingCa(2, 2, "ca2", True)
    device = AuthenticatedDevice(1, PK, "d", "ca", "01")
    k1, k2, k3 = (Decisions.key(ca, der) for der in (b"one", b"two", b"three"))
    kept.put(7, k1, device)
    assert kept.get(7, k1) is device
    assert kept.get(7, Decisions.key(other_ca, b"one")) is None  # same certificate, other CA
    assert kept.get(8, k1) is None  # the registry moved on
    kept.put(7, k2, device)
    kept.put(7, k3, device)
    assert (len(kept), kept.get(7, k1), kept.get(7, k3)) == (2, None, device)
    kept.put(8, k1, device)
    assert (len(kept), kept.get(7, k3), kept.get(8, k1)) == (1, None, device)


# --- an idle connection gives the handshake's memory back -----------------------------------------


@dataclass
class InMemory:
    """A server engine and a Python client over memory BIOs, handshake done (no sockets)."""

    engine: TlsEngine
    client: ssl.SSLObject
    to_client: ssl.MemoryBIO
    from_client: ssl.MemoryBIO

    def client_sends(self, data: bytes) -> None:
        self.client.write(data)
        self.engine.feed(self.from_client.read())

    def client_reads(self) -> bytes:
        self.to_client.write(self.engine.outgoing())
        return self.client.read(65536)


def handshake_in_memory(world: World, dev: Device, engine_name: str) -> InMemory:
    tls = ServerTls(world.server.cert_pem(), world.server.key_pem(), _AnyIndex, engine=engine_name)
    engine = tls.accept()
    to_client, from_client = ssl.MemoryBIO(), ssl.MemoryBIO()
    ctx = ssl.create_default_context(cafile=str(world.server_ca_file))
    ctx.load_cert_chain(str(dev.cert), str(dev.key))
    client = ctx.wrap_bio(to_client, from_client, server_hostname="127.0.0.1")
    server_done = client_done = False
    while not (server_done and client_done):
        try:
            client.do_handshake()
            client_done = True
        except ssl.SSLWantReadError:
            pass
        engine.feed(from_client.read())
        server_done = server_done or engine.handshake()
        to_client.write(engine.outgoing())
    return InMemory(engine, client, to_client, from_client)


class _AnyIndex:
    """Attributes every certificate to one CA (this test is about buffers, not attribution)."""

    def attribute(self, leaf: Any) -> IssuingCa:
        return IssuingCa(1, 1, "ca", True)


def test_compaction_keeps_the_connection_working_and_never_drops_waiting_bytes(
    world: World, engine: str
) -> None:
    tls = handshake_in_memory(world, world.device("compact"), engine)
    tls.client_sends(b"CONNECT")
    assert not tls.engine.compact(), "compacted with the client's bytes still in the BIO"
    assert tls.engine.read() == [b"CONNECT"]
    assert tls.engine.compact()
    tls.engine.write(b"CONNACK")
    assert not tls.engine.compact(), "compacted with bytes for the client still in the BIO"
    assert tls.client_reads() == b"CONNACK"
    assert tls.engine.compact()
    tls.client_sends(b"PUBLISH")
    assert tls.engine.read() == [b"PUBLISH"]
    tls.engine.write(b"PUBACK")
    assert tls.client_reads() == b"PUBACK"
