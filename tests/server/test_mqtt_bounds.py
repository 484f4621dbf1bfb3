"""Every resource a device can grow has a bound (issue 10, part 2), over real TLS connections.

Each case sends what the security review sent, checks that only the offender is refused or
closed (with one log line), that another device keeps working, and that what the endpoint holds
(filters in the router, bytes in the recent-messages store, unauthenticated connections) stays
within the setting. Waits are on the endpoint's own state, never on time.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Iterator

import pytest
from cryptography import x509

from server_stub.config import MqttLimits
from server_stub.errors import DataStoreError
from server_stub.mqtt import codec, lookups
from server_stub.mqtt.broker import Broker
from server_stub.mqtt.lookups import Outcome, authenticate_all
from server_stub.ports import AuthDecision, AuthRefused, DeviceDirectory, IssuingCa
from tests.server.mqtt_harness import (
    PK,
    Device,
    EndpointRegistry,
    RawClient,
    ServerThread,
    World,
    wait_for,
)

LIMITS = MqttLimits(
    handshake_timeout=60,
    connect_timeout=60,
    max_connections=40,
    max_pending_connections=8,
    max_pending_per_source=4,
    max_filters_per_session=50,
    max_filter_levels=16,
    max_filter_bytes=512,
    recent_messages_per_device=100,
    recent_bytes_per_device=300_000,
    recent_bytes_total=1_000_000,
)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    return World(tmp_path_factory.mktemp("mqtt-bounds"))


class Env:
    def __init__(self, world: World, server: ServerThread, directory: EndpointRegistry) -> None:
        self.world = world
        self.server = server
        self.directory = directory
        svc = server.service
        assert svc is not None
        self.broker: Broker = svc.broker

    def device(self, name: str) -> Device:
        return self.directory.device(name)

    def online(self, dev: Device, client_id: str = "raw|securemode=2|") -> RawClient:
        client = RawClient(self.server.port, self.world.server_ca_file, dev.cert, dev.key)
        assert client.connect(client_id).return_code == 0
        assert isinstance(client.read(), codec.Publish)  # identity
        return client

    def state(self, fn: object) -> object:
        return self.server.call(fn)  # type: ignore[arg-type]


def _env(world: World, limits: MqttLimits) -> Iterator[Env]:
    directory = EndpointRegistry(world, [world.ca])
    with ServerThread(directory.registry, world.server, limits) as server:
        yield Env(world, server, directory)
    directory.close()


@pytest.fixture
def env(world: World) -> Iterator[Env]:
    yield from _env(world, LIMITS)


def _still_fine(client: RawClient) -> None:
    client.send(codec.Pingreq())
    assert client.read() == codec.Pingresp()


def _lines(caplog: pytest.LogCaptureFixture, needle: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if needle in r.getMessage()]


# --- subscriptions -----------------------------------------------------------------------------


def test_huge_filters_are_refused_and_never_reach_the_topic_tree(
    env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "server_stub.mqtt")
    good = env.online(env.device("bystander"))
    bad = env.online(env.device("attacker"))
    huge = f"/{PK}/attacker/x" + "/" * 65_000  # every '/' would be a node of the tree
    for packet_id in range(1, 20):
        bad.send(codec.Subscribe(packet_id, ((huge, 0), (huge + "a", 1), (huge + "b", 0))))
        assert bad.read() == codec.Suback(packet_id, (0x80, 0x80, 0x80))
    assert env.server.call(len, env.broker.router) == 0
    refusals = _lines(caplog, "filters refused")
    assert len(refusals) == 19  # one line per SUBSCRIBE, never the filter itself
    assert all("max_filter_bytes 512" in line and len(line) < 600 for line in refusals)
    _still_fine(bad)
    _still_fine(good)


def test_many_short_filters_stop_at_the_session_limit(
    env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "server_stub.mqtt")
    good = env.online(env.device("bystander"))
    attacker = env.device("attacker")
    bad = env.online(attacker)
    batch = 10_000
    granted = 0
    for n in range(12):  # 120,000 filters, as in the review
        topics = tuple((f"/{PK}/attacker/f{n * batch + i}", 0) for i in range(batch))
        bad.send(codec.Subscribe(n + 1, topics))
        suback = bad.read()
        assert isinstance(suback, codec.Suback)
        granted += sum(1 for code in suback.return_codes if code != 0x80)
    assert granted == LIMITS.max_filters_per_session
    assert env.server.call(len, env.broker.router) == LIMITS.max_filters_per_session
    assert len(_lines(caplog, "max_filters_per_session 50")) == 12
    _still_fine(good)
    # the same device connecting again replaces the session
    pub = env.online(attacker, "second|securemode=2|")
    assert bad.closed_by_server()
    assert env.server.call(len, env.broker.router) == 0  # freed with the session
    pub.close()
    good.close()


def test_deep_filter_within_the_limit_matches_without_recursion(world: World) -> None:
    deep = 3_000
    limits = MqttLimits(max_filter_levels=deep + 10, max_filter_bytes=65_535)
    for env in _env(world, limits):
        sub = env.online(env.device("deep"))
        filter_ = f"/{PK}/deep/" + "/".join(["+"] * deep)
        sub.send(codec.Subscribe(1, ((filter_, 0),)))
        assert sub.read() == codec.Suback(1, (0,))
        topic = f"/{PK}/deep/" + "/".join(["a"] * deep)
        sub.send(codec.Publish(topic, b"deep"))
        got = sub.read()
        assert isinstance(got, codec.Publish) and got.payload == b"deep"
        _still_fine(sub)


def test_deep_filter_over_the_limit_is_refused(env: Env) -> None:
    sub = env.online(env.device("deep"))
    sub.send(codec.Subscribe(1, ((f"/{PK}/deep/" + "/".join(["+"] * 3_000), 0),)))
    assert sub.read() == codec.Suback(1, (0x80,))
    _still_fine(sub)


# --- the recent-messages store -----------------------------------------------------------------


def test_recent_messages_keep_within_the_byte_budgets_and_expire(env: Env) -> None:
    payload = b"p" * (255 * 1024)
    devices = [env.device(f"pub{i}") for i in range(8)]
    for dev in devices:
        client = env.online(dev)
        for i in range(100):
            client.send(codec.Publish(f"/{PK}/{dev.name}/user/t", payload, 1, packet_id=i + 1))
            assert client.read() == codec.Puback(i + 1)
        client.send(codec.Disconnect())
        assert client.closed_by_server()
    store = env.broker.recent
    assert env.server.call(lambda: store.total_bytes) <= LIMITS.recent_bytes_total
    for dev in devices:
        kept = env.server.call(env.broker.recent_messages, PK, dev.name, 100)
        assert sum(len(m.payload) + len(m.topic) for m in kept) <= LIMITS.recent_bytes_per_device
    # the last device's messages are there; after the retention every byte is gone
    assert env.server.call(env.broker.recent_messages, PK, "pub7", 100)
    broker = env.broker
    real = broker.now

    def sweep_later() -> None:
        broker.now = lambda: real() + LIMITS.recent_retention + 1
        try:
            broker.sweep()
        finally:
            broker.now = real

    env.server.call(sweep_later)
    assert env.server.call(lambda: (len(store), store.total_bytes)) == (0, 0)


# --- connections that have not authenticated yet -----------------------------------------------


def _idle_from(env: Env, source: str) -> socket.socket:
    return socket.create_connection(
        ("127.0.0.1", env.server.port), timeout=10, source_address=(source, 0)
    )


def _closed(sock: socket.socket) -> bool:
    try:
        return sock.recv(10) == b""
    except (ConnectionResetError, TimeoutError):
        return True


def _pending(env: Env) -> int:
    return int(env.server.call(len, env.broker.pending))


def test_per_source_limit_refuses_only_that_source(
    env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "server_stub.mqtt")
    idle = [_idle_from(env, "127.0.0.2") for _ in range(LIMITS.max_pending_per_source)]
    assert wait_for(lambda: _pending(env) == LIMITS.max_pending_per_source)
    extra = _idle_from(env, "127.0.0.2")
    assert _closed(extra)
    assert len(_lines(caplog, "(max_pending_per_source)")) == 1
    good = env.online(env.device("witness"))  # another source is not held back
    _still_fine(good)
    assert _pending(env) == LIMITS.max_pending_per_source
    for s in [*idle, extra]:
        s.close()
    good.close()


def test_device_gets_in_while_the_pending_budget_is_full_of_idle_sockets(
    env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "server_stub.mqtt")
    idle: list[socket.socket] = []
    # the overall oldest come from a source with few; the crowded source pays for the newcomer
    for source, count in (("127.0.0.3", 2), ("127.0.0.2", 4), ("127.0.0.4", 2)):
        for _ in range(count):
            idle.append(_idle_from(env, source))
            assert wait_for(lambda: _pending(env) == len(idle))
    assert _pending(env) == LIMITS.max_pending_connections
    good = env.online(env.device("witness"))
    _still_fine(good)
    assert _closed(idle[2])  # the oldest of 127.0.0.2 made room, and only it
    assert len(_lines(caplog, "(max_pending_connections)")) == 1
    assert _pending(env) == LIMITS.max_pending_connections - 1
    sources = env.server.call(lambda: {s: len(c) for s, c in env.broker._pending_by_source.items()})
    assert sources == {"127.0.0.3": 2, "127.0.0.2": 3, "127.0.0.4": 2}
    for s in idle:
        s.close()
    good.close()


def test_registry_change_during_the_lookup_is_not_missed(env: Env) -> None:
    """CONNECT's registry lookup runs off the loop; a change meanwhile must still count."""
    dev = env.device("racer")
    directory = env.directory.registry
    real = directory.authenticate
    started, go = threading.Event(), threading.Event()

    def slow(*args: object) -> object:
        answer = real(*args)  # type: ignore[arg-type]
        started.set()
        assert go.wait(10)  # the answer arrives after the registry changed
        return answer

    directory.authenticate = slow  # type: ignore[method-assign,assignment]
    try:
        client = RawClient(env.server.port, env.world.server_ca_file, dev.cert, dev.key)
        client.send(codec.Connect("racer|securemode=2|", 60))
        assert started.wait(10)
        assert not isinstance(real(dev.pair.certificate), AuthRefused)  # the answer: accepted
        env.server.call(env.directory.set_device_enabled, "racer", False)
        go.set()
        assert client.read() == codec.Connack(codec.CONNACK_NOT_AUTHORIZED)
    finally:
        directory.authenticate = real  # type: ignore[method-assign]
    assert not env.server.call(env.broker.is_online, PK, "racer")


def test_connects_waiting_for_a_lookup_are_asked_together_and_answered_each(
    env: Env, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """CONNECTs that arrive while a registry job runs go in one next job; a lookup that raises
    refuses its own CONNECT (CONNACK 3, logged with the cause) and no other."""
    caplog.set_level(logging.ERROR, "server_stub.mqtt")
    devices = [env.device(name) for name in ("first", "good", "broken")]
    name_of = {dev.pair.certificate.serial_number: dev.name for dev in devices}
    directory = env.directory.registry
    real = directory.authenticate
    started, go = threading.Event(), threading.Event()
    jobs: list[list[str]] = []  # the devices each thread-pool job asked about

    def watched(leaf: x509.Certificate, issuer: IssuingCa | None = None) -> AuthDecision:
        name = name_of[leaf.serial_number]
        if name == "first":
            started.set()
            assert go.wait(10)  # the other CONNECTs arrive while this job runs
        if name == "broken":
            raise DataStoreError("the database file went away")
        return real(leaf, issuer)

    def one_job(
        directory: DeviceDirectory, asked: list[tuple[x509.Certificate, IssuingCa | None]]
    ) -> list[Outcome]:
        jobs.append(sorted(name_of[leaf.serial_number] for leaf, _ in asked))
        return authenticate_all(directory, asked)

    monkeypatch.setattr(lookups, "authenticate_all", one_job)
    directory.authenticate = watched  # type: ignore[method-assign]
    try:
        clients = {
            dev.name: RawClient(env.server.port, env.world.server_ca_file, dev.cert, dev.key)
            for dev in devices
        }
        clients["first"].send(codec.Connect("first|securemode=2|", 60))
        assert started.wait(10)
        for name in ("good", "broken"):
            clients[name].send(codec.Connect(f"{name}|securemode=2|", 60))
        assert wait_for(lambda: env.state(lambda: len(env.broker._lookups._waiting)) == 2)
        go.set()
        assert clients["first"].read() == codec.Connack(codec.CONNACK_ACCEPTED)
        assert clients["good"].read() == codec.Connack(codec.CONNACK_ACCEPTED)
        assert clients["broken"].read() == codec.Connack(codec.CONNACK_SERVER_UNAVAILABLE)
    finally:
        directory.authenticate = real  # type: ignore[method-assign]
    assert jobs == [["first"], ["broken", "good"]]
    failed = [r for r in caplog.records if "registry lookup of CONNECT failed" in r.getMessage()]
    assert len(failed) == 1 and failed[0].exc_info is not None
    assert isinstance(failed[0].exc_info[1], DataStoreError)
    assert env.server.call(env.broker.is_online, PK, "good")
    assert not env.server.call(env.broker.is_online, PK, "broken")


def test_full_endpoint_refuses_newcomers_when_all_are_authenticated(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "server_stub.mqtt")
    for env in _env(world, MqttLimits(max_connections=3)):
        clients = [env.online(env.device(f"full{i}")) for i in range(3)]
        extra = socket.create_connection(("127.0.0.1", env.server.port), timeout=10)
        assert _closed(extra)
        assert len(_lines(caplog, "(max_connections)")) == 1
        for c in clients:
            _still_fine(c)
            c.close()
        extra.close()


# --- client ids --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("client_id", "why"),
    [
        ("d" * 60_000 + "|securemode=2|", "max_client_id_length"),
        ("d" * 65 + "|securemode=2|", "1-64 characters"),
    ],
)
def test_long_client_ids_are_refused_and_logged_short(
    env: Env, caplog: pytest.LogCaptureFixture, client_id: str, why: str
) -> None:
    caplog.set_level(logging.WARNING, "server_stub.mqtt")
    good = env.online(env.device("bystander"))
    dev = env.device("longid")
    client = RawClient(env.server.port, env.world.server_ca_file, dev.cert, dev.key)
    assert client.connect(client_id).return_code == codec.CONNACK_IDENTIFIER_REJECTED
    assert client.closed_by_server()
    lines = _lines(caplog, "CONNACK 2")
    assert len(lines) == 1 and why in lines[0] and len(lines[0]) < 1_000
    assert env.server.call(env.broker.is_online, PK, "longid") is False
    _still_fine(good)
    good.close()


def test_a_64_character_id_is_accepted(env: Env) -> None:
    env.online(env.device("maxid"), "m" * 64 + "|securemode=2|").close()
