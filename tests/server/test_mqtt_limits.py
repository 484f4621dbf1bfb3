"""Malformed and hostile input, and the limits that protect the endpoint.

Every case checks that the offending connection is closed *and* that another session on the
same server is unaffected.
"""

from __future__ import annotations

import logging
import socket
import ssl
import time
from collections.abc import Iterator

import pytest

from server_stub.config import MqttLimits
from server_stub.mqtt import codec
from tests.server.mqtt_harness import (
    PK,
    Device,
    EndpointRegistry,
    RawClient,
    ServerThread,
    World,
    wait_for,
)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    return World(tmp_path_factory.mktemp("mqtt-limits"))


LIMITS = MqttLimits(
    handshake_timeout=1.0, connect_timeout=1.0, max_packet_size=1024, max_connections=6
)


@pytest.fixture
def directory(world: World) -> Iterator[EndpointRegistry]:
    d = EndpointRegistry(world, [world.ca])
    yield d
    d.close()


@pytest.fixture
def env(world: World, directory: EndpointRegistry) -> Iterator[tuple[ServerThread, Device, Device]]:
    bystander = directory.device("bystander")
    attacker = directory.device("attacker")
    with ServerThread(directory.registry, world.server, LIMITS) as server:
        yield server, bystander, attacker


def _online(world: World, server: ServerThread, dev: Device) -> RawClient:
    client = RawClient(server.port, world.server_ca_file, dev.cert, dev.key)
    assert client.connect().return_code == 0
    assert isinstance(client.read(), codec.Publish)  # identity
    return client


def _still_fine(client: RawClient) -> None:
    client.send(codec.Pingreq())
    assert client.read() == codec.Pingresp()


MALFORMED_AFTER_CONNECT = {
    "garbage": b"\xff\xff\xff\xff\xff",
    "publish with wildcard": codec._frame(0x30, b"\x00\x03a/+"),
    "publish with bad utf-8": codec._frame(0x30, b"\x00\x02\xc3\x28"),
    "five byte length": b"\x30\x80\x80\x80\x80\x01",
    "oversized remaining length": b"\x30" + codec.encode_remaining_length(1025),
    "second connect": codec.encode(codec.Connect("again", 60)),
    "server-only packet": codec.encode(codec.Connack(0)),
    "qos 2 publish": codec.encode(codec.Publish(f"/{PK}/attacker/user/x", b"", 2, packet_id=1)),
}


@pytest.mark.parametrize("case", sorted(MALFORMED_AFTER_CONNECT))
def test_malformed_packet_closes_only_that_connection(
    world: World,
    env: tuple[ServerThread, Device, Device],
    case: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, "server_stub.mqtt")
    server, bystander, attacker = env
    good = _online(world, server, bystander)
    bad = _online(world, server, attacker)
    bad.send_raw(MALFORMED_AFTER_CONNECT[case])
    assert bad.closed_by_server()
    assert wait_for(lambda: "protocol error" in caplog.text)
    assert f"cert SN {attacker.pair.sn}" in caplog.text
    _still_fine(good)
    assert server.call(server.service.is_online, PK, "bystander")  # type: ignore[union-attr]
    assert not server.call(server.service.is_online, PK, "attacker")  # type: ignore[union-attr]
    good.close()


@pytest.mark.parametrize(
    "first",
    [codec.encode(codec.Pingreq()), codec.encode(codec.Subscribe(1, (("a", 0),))), b"\x00\x00"],
)
def test_packets_before_connect_close_the_connection(
    world: World, env: tuple[ServerThread, Device, Device], first: bytes
) -> None:
    server, _bystander, attacker = env
    client = RawClient(server.port, world.server_ca_file, attacker.cert, attacker.key)
    client.send_raw(first)
    assert client.closed_by_server()


def test_other_protocol_level_gets_connack_1(
    world: World, env: tuple[ServerThread, Device, Device]
) -> None:
    server, _bystander, attacker = env
    client = RawClient(server.port, world.server_ca_file, attacker.cert, attacker.key)
    body = b"\x00\x04MQTT\x05\x02\x00\x3c\x00\x01a"
    client.send_raw(codec._frame(0x10, body))
    assert client.read() == codec.Connack(codec.CONNACK_UNACCEPTABLE_PROTOCOL)
    assert client.closed_by_server()


def test_handshake_timeout(
    world: World, env: tuple[ServerThread, Device, Device], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "server_stub.mqtt")
    server, _b, _a = env
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
    sock.sendall(b"\x16\x03\x01")  # the start of a ClientHello, then silence
    started = time.monotonic()
    assert sock.recv(100) == b""
    assert time.monotonic() - started < 4.5
    sock.close()
    assert "no TLS handshake within 1 s" in caplog.text


def test_connect_timeout(
    world: World, env: tuple[ServerThread, Device, Device], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "server_stub.mqtt")
    server, _b, attacker = env
    client = RawClient(server.port, world.server_ca_file, attacker.cert, attacker.key)
    assert client.closed_by_server()  # no CONNECT sent
    assert "no CONNECT within 1 s" in caplog.text


def test_max_connections_closes_the_oldest_unauthenticated_one(
    world: World, env: tuple[ServerThread, Device, Device], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "server_stub.mqtt")
    server, bystander, _a = env
    good = _online(world, server, bystander)
    broker = server.service.broker  # type: ignore[union-attr]
    socks = []
    for _ in range(LIMITS.max_connections - 1):
        socks.append(socket.create_connection(("127.0.0.1", server.port), timeout=5))
        assert wait_for(lambda: server.call(len, broker.pending) == len(socks))
    extra = socket.create_connection(("127.0.0.1", server.port), timeout=5)
    assert socks[0].recv(10) == b""  # the oldest idle socket made room for the newcomer
    assert wait_for(lambda: server.call(len, broker.connections) == LIMITS.max_connections)
    assert [r.getMessage() for r in caplog.records if "(max_connections)" in r.getMessage()]
    _still_fine(good)
    for s in [*socks, extra]:
        s.close()
    good.close()


def test_keep_alive_timeout_is_one_and_a_half_times_keep_alive(
    world: World, env: tuple[ServerThread, Device, Device]
) -> None:
    server, _b, attacker = env
    client = RawClient(server.port, world.server_ca_file, attacker.cert, attacker.key)
    assert client.connect(keep_alive=30).return_code == 0
    broker = server.service.broker  # type: ignore[union-attr]
    real = broker.now

    def sweep_at(offset: float) -> None:
        broker.now = lambda: real() + offset
        try:
            broker.sweep()
        finally:
            broker.now = real

    server.call(sweep_at, 44.0)  # 1.5 x 30 = 45 s: not yet
    assert server.call(broker.is_online, PK, "attacker")
    server.call(sweep_at, 46.0)
    assert not server.call(broker.is_online, PK, "attacker")
    assert client.closed_by_server()


def test_will_is_published_when_a_session_dies_without_disconnect(
    world: World, directory: EndpointRegistry, env: tuple[ServerThread, Device, Device]
) -> None:
    server, _b, _a = env
    svc = server.service
    assert svc is not None
    dev = directory.device("mortal")
    for polite in (True, False):
        client = RawClient(server.port, world.server_ca_file, dev.cert, dev.key)
        client.send(
            codec.Connect("mortal", 60, will=codec.Will(f"/{PK}/mortal/user/will", b"gone", 1))
        )
        assert client.read() == codec.Connack(0)
        if polite:
            client.send(codec.Disconnect())
        client.sock.close()
        assert wait_for(lambda: not server.call(svc.is_online, PK, "mortal"))
    # only the abrupt end published the will, recorded as the device's message
    recent = server.call(svc.recent_messages, PK, "mortal")
    assert [(m.topic, m.payload, m.qos) for m in recent] == [
        (f"/{PK}/mortal/user/will", b"gone", 1)
    ]


def test_tls_garbage_instead_of_a_handshake(
    world: World, env: tuple[ServerThread, Device, Device]
) -> None:
    server, bystander, _a = env
    good = _online(world, server, bystander)
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
    sock.sendall(b"GET / HTTP/1.1\r\n\r\n")
    data = sock.recv(100)
    assert data == b"" or data[:1] == b"\x15"  # closed, possibly after a TLS alert
    sock.close()
    _still_fine(good)
    good.close()


def test_deliver_rejects_what_cannot_be_sent(
    world: World, env: tuple[ServerThread, Device, Device]
) -> None:
    from server_stub.mqtt.errors import InvalidMessageError, InvalidTopicError

    server, bystander, _a = env
    good = _online(world, server, bystander)
    svc = server.service
    assert svc is not None
    with pytest.raises(InvalidTopicError, match="wildcard"):
        server.call(svc.deliver, PK, "bystander", "/a/+", b"", 0)
    with pytest.raises(InvalidMessageError, match="qos 2"):
        server.call(svc.deliver, PK, "bystander", f"/{PK}/bystander/user/x", b"", 2)
    with pytest.raises(InvalidMessageError, match="exceeds"):
        server.call(svc.deliver, PK, "bystander", f"/{PK}/bystander/user/x", b"x" * 2000, 0)
    for elsewhere in ("/a/b", f"/{PK}/attacker/user/x", f"/sys/{PK}/bystanderX/y"):
        with pytest.raises(InvalidMessageError, match="outside device"):
            server.call(svc.deliver, PK, "bystander", elsewhere, b"", 0)
    _still_fine(good)
    good.close()


def test_tls_1_2_client_is_accepted(world: World, env: tuple[ServerThread, Device, Device]) -> None:
    server, _b, attacker = env
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(str(world.server_ca_file))
    ctx.load_cert_chain(str(attacker.cert), str(attacker.key))
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    with (
        socket.create_connection(("127.0.0.1", server.port), timeout=5) as raw,
        ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        assert tls.version() == "TLSv1.2"
        tls.sendall(codec.encode(codec.Connect("tls12|securemode=2|", 60)))
        assert tls.recv(4) == codec.encode(codec.Connack(0))
