"""Network abuse on the MQTT device endpoint of the real server process.

Idle and half-open connections must be closed by the server's own timeouts and leave no memory
behind; failed handshakes must not stop it serving valid devices; malformed or forbidden MQTT
must close only the offending connection. Resident memory is read with psutil on the server's
pid, after a warm-up (first-use allocations are not leaks) and a settle period.
"""

from __future__ import annotations

import json
import os
import resource
import socket
import ssl
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import psutil
import pytest

from firmware_helpers import pki
from server_stub.launcher import RunningServer, running_server
from server_stub.mqtt import codec

from .conftest import Tenant, make_tenant
from .mqtt_tools import (
    closed_by_server,
    device_context,
    mqtt_connect,
    mqtt_connect_retry,
    ping_ok,
    read_packets,
    tls_connect,
)
from .reliability import record

TIMEOUT_S = 1.0
MAX_PACKET = 64 * 1024
IDLE_TCP = 3_000
IDLE_TLS = 2_000
FAILED = {"no client certificate": 3_000, "unknown CA": 3_000, "garbage bytes": 4_000}
WORKERS = 16
SETTLE_S = 3.0


def _raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 65536)), hard))


@dataclass
class Endpoint:
    server: RunningServer
    tenant: Tenant
    witness: pki.CertifiedKey
    abuser: pki.CertifiedKey
    stranger: pki.CertifiedKey  # issued by a CA nobody registered

    def ctx(self, device: pki.CertifiedKey | None) -> ssl.SSLContext:
        return device_context(self.server.server_ca, device)

    @property
    def addr(self) -> tuple[str, int]:
        assert self.server.mqtt_port is not None
        return self.server.mqtt_host, self.server.mqtt_port

    def rss(self) -> int:
        return int(psutil.Process(self.server.process.pid).memory_info().rss)


@pytest.fixture(scope="module")
def endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Endpoint]:
    _raise_nofile()
    # budgets for unauthenticated connections opened wide: these tests are about time-outs
    # (the budgets have tests of their own below, on a server with small ones)
    args = [
        "--handshake-timeout",
        str(TIMEOUT_S),
        "--connect-timeout",
        str(TIMEOUT_S),
        "--max-packet-size",
        str(MAX_PACKET),
        "--max-pending-connections",
        "20000",
        "--max-pending-per-source",
        "20000",
    ]
    with running_server(tmp_path_factory.mktemp("abuse") / "data", extra_args=args) as srv:
        _require_endpoint(srv)
        tenant = make_tenant(
            srv.http_url, srv.token, devices={"witness-01": 0xA001, "abuser-01": 0xA002}
        )
        witness = pki.issue_device_certificate(tenant.ca, "witness-01", serial=0xA001)
        abuser = pki.issue_device_certificate(tenant.ca, "abuser-01", serial=0xA002)
        stranger = pki.issue_device_certificate(pki.create_ca("Stranger CA"), "x", serial=0xA003)
        ep = Endpoint(srv, tenant, witness, abuser, stranger)
        sock, _dec, _packets = mqtt_connect_retry(*ep.addr, ep.ctx(witness))
        sock.close()
        yield ep


def _require_endpoint(srv: RunningServer) -> None:
    """A server without its device endpoint is a failure here, never a reason to skip."""
    if srv.mqtt_port is None:
        pytest.fail(
            "the server started without its MQTT device endpoint; these tests need it:\n"
            + srv.log()[-2000:]
        )


def _parallel(fn: Callable[[int], str], count: int) -> Counter[str]:
    with ThreadPoolExecutor(WORKERS) as pool:
        return Counter(pool.map(fn, range(count)))


# --- idle and half-open connections -------------------------------------------------------------


def _idle_tcp(ep: Endpoint, count: int) -> Counter[str]:
    socks = [socket.create_connection(ep.addr, timeout=10) for _ in range(count)]
    time.sleep(TIMEOUT_S + 1.5)
    outcome: Counter[str] = Counter()
    for s in socks:
        outcome["closed by server" if closed_by_server(s, 5) else "still open"] += 1
        s.close()
    return outcome


def _idle_tls(ep: Endpoint, count: int) -> Counter[str]:
    ctx = ep.ctx(ep.abuser)

    def open_one(_i: int) -> ssl.SSLSocket | None:
        try:
            return tls_connect(*ep.addr, ctx)
        except (OSError, ssl.SSLError):
            return None

    with ThreadPoolExecutor(WORKERS) as pool:
        socks = list(pool.map(open_one, range(count)))
    time.sleep(TIMEOUT_S + 1.5)
    outcome: Counter[str] = Counter()
    for s in socks:
        if s is None:
            outcome["handshake closed early"] += 1
            continue
        outcome["closed by server" if closed_by_server(s, 5) else "still open"] += 1
        s.close()
    return outcome


def _settled_rss(ep: Endpoint) -> int:
    time.sleep(SETTLE_S)
    return ep.rss()


@pytest.mark.heavy
@pytest.mark.timeout(300)
def test_idle_connections_are_closed_and_leave_no_memory(endpoint: Endpoint) -> None:
    ep = endpoint
    batch = 1_000
    cold = _settled_rss(ep)
    # warm-up at the same concurrency: the allocator keeps its high-water mark, which is not a
    # leak; a leak keeps growing over the 5,000 that follow
    _idle_tcp(ep, batch)
    _idle_tls(ep, batch)
    start = _settled_rss(ep)
    outcome: Counter[str] = Counter()
    for done in range(0, IDLE_TCP, batch):
        outcome.update(_idle_tcp(ep, min(batch, IDLE_TCP - done)))
    tls_outcome: Counter[str] = Counter()
    for done in range(0, IDLE_TLS, batch):
        tls_outcome.update(_idle_tls(ep, min(batch, IDLE_TLS - done)))
    end = _settled_rss(ep)
    growth = (end - start) / start
    record(
        "idle-connections",
        threat="connections that never start TLS, or finish TLS and never send CONNECT",
        tried=f"{IDLE_TCP:,} TCP-only + {IDLE_TLS:,} TLS-without-CONNECT connections, "
        f"{batch:,} at a time, server timeouts {TIMEOUT_S:g} s",
        count=IDLE_TCP + IDLE_TLS,
        result=(
            f"all closed by the server's timeouts; RSS after warm-up {start / 2**20:.1f} "
            f"-> {end / 2**20:.1f} MiB ({growth:+.1%}); before warm-up {cold / 2**20:.1f}"
        ),
    )
    assert outcome == Counter({"closed by server": IDLE_TCP}), outcome
    assert tls_outcome == Counter({"closed by server": IDLE_TLS}), tls_outcome
    assert growth < 0.10, (start, end)


# --- failed handshakes ------------------------------------------------------------------------


def _failed_handshake(ep: Endpoint, kind: str) -> Callable[[int], str]:
    ctx = ep.ctx(None) if kind == "no client certificate" else ep.ctx(ep.stranger)
    garbage = os.urandom(4096)
    connect = codec.encode(codec.Connect(client_id="abuse", keep_alive=60))

    def attempt(i: int) -> str:
        if kind == "garbage bytes":
            s = socket.create_connection(ep.addr, timeout=10)
            try:
                start = i % 3000
                s.sendall(garbage[start : start + 64 + i % 900])
                return "refused" if closed_by_server(s, 10) else "left open"
            except OSError:
                return "refused"
            finally:
                s.close()
        try:
            tls = tls_connect(*ep.addr, ctx)
        except (OSError, ssl.SSLError):
            return "refused"
        try:
            tls.sendall(connect)
            data = tls.recv(4)
            return "ACCEPTED" if data[:1] == b"\x20" and data[3:4] == b"\x00" else "refused"
        except (OSError, ssl.SSLError):
            return "refused"
        finally:
            tls.close()

    return attempt


def _serves_valid_device(ep: Endpoint) -> bool:
    sock, decoder, packets = mqtt_connect(*ep.addr, ep.ctx(ep.witness))
    try:
        connack = packets[0]
        return (
            isinstance(connack, codec.Connack)
            and connack.return_code == 0
            and ping_ok(sock, decoder)
        )
    finally:
        sock.close()


@pytest.mark.heavy
@pytest.mark.timeout(400)
def test_failed_handshakes_leave_the_server_serving(endpoint: Endpoint) -> None:
    ep = endpoint
    cold = _settled_rss(ep)
    for kind in FAILED:  # warm-up
        _parallel(_failed_handshake(ep, kind), 500)
    start = _settled_rss(ep)
    results: dict[str, Counter[str]] = {}
    for kind, count in FAILED.items():
        results[kind] = _parallel(_failed_handshake(ep, kind), count)
        assert _serves_valid_device(ep), kind
    end = _settled_rss(ep)
    growth = (end - start) / start
    total = sum(FAILED.values())
    record(
        "failed-handshakes",
        threat="failed TLS handshakes: no client certificate, unknown CA, garbage bytes",
        tried=", ".join(f"{n:,} {k}" for k, n in FAILED.items()) + f" ({WORKERS} in parallel)",
        count=total,
        result=(
            f"every one refused; a valid device connects after each kind; RSS after "
            f"warm-up {start / 2**20:.1f} -> {end / 2**20:.1f} MiB ({growth:+.1%}); "
            f"before warm-up {cold / 2**20:.1f}"
        ),
    )
    for kind, count in FAILED.items():
        assert results[kind] == Counter({"refused": count}), (kind, results[kind])
    assert growth < 0.10, (start, end)


# --- malformed and forbidden MQTT -------------------------------------------------------------


def _raw_publish(topic: bytes, payload: bytes = b"x") -> bytes:
    body = len(topic).to_bytes(2, "big") + topic + payload
    return b"\x30" + codec.encode_remaining_length(len(body)) + body


def _abuses(pk: str) -> dict[str, tuple[bool, bytes]]:
    """name -> (send CONNECT first?, bytes to send)."""
    connect = codec.encode(codec.Connect(client_id="abuser|securemode=2|", keep_alive=60))
    return {
        "oversized remaining length (268 MB)": (True, b"\x30\xff\xff\xff\x7f"),
        f"remaining length over the {MAX_PACKET // 1024} KiB limit": (
            True,
            b"\x30" + codec.encode_remaining_length(MAX_PACKET + 1),
        ),
        "remaining length of 5 bytes": (True, b"\x30\xff\xff\xff\xff\x01"),
        "PINGREQ before CONNECT": (False, codec.PINGREQ_BYTES),
        "PUBLISH before CONNECT": (False, _raw_publish(f"/{pk}/abuser-01/user/x".encode())),
        "second CONNECT": (True, connect),
        "invalid UTF-8 topic": (True, _raw_publish(b"/" + pk.encode() + b"/abuser-01/\xff\xfe")),
        "'#' wildcard in PUBLISH topic": (True, _raw_publish(f"/{pk}/abuser-01/user/#".encode())),
        "'+' wildcard in PUBLISH topic": (True, _raw_publish(f"/{pk}/+/user/x".encode())),
        "reserved packet type 15": (True, b"\xf0\x00"),
        "reserved packet type 0": (True, b"\x00\x00"),
        "SUBSCRIBE with wrong fixed-header flags": (True, b"\x80\x06\x00\x01\x00\x01#\x00"),
    }


@pytest.mark.timeout(120)
def test_malformed_mqtt_closes_only_that_connection(endpoint: Endpoint) -> None:
    ep = endpoint
    witness, witness_decoder, packets = mqtt_connect(*ep.addr, ep.ctx(ep.witness))
    assert isinstance(packets[0], codec.Connack) and packets[0].return_code == 0
    ctx = ep.ctx(ep.abuser)
    abuses = _abuses(ep.tenant.product_key)
    closed = []
    for name, (connect_first, data) in abuses.items():
        if connect_first:
            sock, _decoder, got = mqtt_connect(*ep.addr, ctx, client_id="abuser|securemode=2|")
            assert isinstance(got[0], codec.Connack) and got[0].return_code == 0, name
        else:
            sock = tls_connect(*ep.addr, ctx)
        try:
            try:
                sock.sendall(data)
            except (OSError, ssl.SSLError):
                pass
            if closed_by_server(sock, 5):
                closed.append(name)
        finally:
            sock.close()
        assert ping_ok(witness, witness_decoder), f"the other device lost its session after {name}"
    witness.close()
    record(
        "malformed-mqtt",
        threat="malformed or forbidden MQTT from an authenticated device",
        tried="; ".join(abuses),
        count=len(abuses),
        result=(
            f"{len(closed)} of {len(abuses)} closed that connection only; another "
            "connected device answered PINGREQ after each"
        ),
    )
    assert closed == list(abuses), set(abuses) - set(closed)


# --- bounds on what one client can grow (issue 10, part 2) --------------------------------------
#
# A second server with small, explicit budgets; every case feeds the abusive input through a real
# TLS connection and checks that the offender alone is refused or closed, with one log line, that
# another device keeps working, and that what the server holds or answers stays bounded.

PENDING = 40
PER_SOURCE = 20
FILTERS = 100
RECENT_PER_DEVICE = 1_000_000
RECENT_TOTAL = 4_000_000
PUBLISHERS = 8


@dataclass
class Bounded:
    server: RunningServer
    tenant: Tenant
    devices: dict[str, pki.CertifiedKey]

    def ctx(self, name: str) -> ssl.SSLContext:
        return device_context(self.server.server_ca, self.devices[name])

    @property
    def addr(self) -> tuple[str, int]:
        assert self.server.mqtt_port is not None
        return self.server.mqtt_host, self.server.mqtt_port

    def online(
        self, name: str, client_id: str = "hardening|securemode=2|"
    ) -> tuple[ssl.SSLSocket, codec.Decoder]:
        sock, decoder, packets = mqtt_connect(*self.addr, self.ctx(name), client_id)
        assert isinstance(packets[0], codec.Connack) and packets[0].return_code == 0, name
        return sock, decoder

    def log_lines(self, needle: str) -> list[str]:
        return [line for line in self.server.log().splitlines() if needle in line]

    def rss(self) -> int:
        return int(psutil.Process(self.server.process.pid).memory_info().rss)


@pytest.fixture(scope="module")
def bounded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bounded]:
    _raise_nofile()
    args = [
        "--handshake-timeout",
        "60",
        "--connect-timeout",
        "60",
        "--max-pending-connections",
        str(PENDING),
        "--max-pending-per-source",
        str(PER_SOURCE),
        "--max-filters-per-session",
        str(FILTERS),
        "--recent-bytes-per-device",
        str(RECENT_PER_DEVICE),
        "--recent-bytes-total",
        str(RECENT_TOTAL),
        "--recent-retention",
        "1",
    ]
    with running_server(tmp_path_factory.mktemp("bounded") / "data", extra_args=args) as srv:
        _require_endpoint(srv)
        names = ["witness-01", "abuser-01", *(f"pub-{i:02d}" for i in range(PUBLISHERS))]
        sns = {name: 0xB000 + i for i, name in enumerate(names)}
        tenant = make_tenant(srv.http_url, srv.token, devices=sns)
        devices = {
            n: pki.issue_device_certificate(tenant.ca, n, serial=sn) for n, sn in sns.items()
        }
        ep = Bounded(srv, tenant, devices)
        sock, _dec, _packets = mqtt_connect_retry(*ep.addr, ep.ctx("witness-01"))
        sock.close()
        yield ep


def _suback(sock: ssl.SSLSocket, decoder: codec.Decoder) -> codec.Suback:
    while True:
        for packet in read_packets(sock, decoder, 1):
            if isinstance(packet, codec.Suback):
                return packet


@pytest.mark.timeout(120)
def test_huge_and_many_filters_are_refused_past_the_limits(bounded: Bounded) -> None:
    ep = bounded
    pk = ep.tenant.product_key
    witness, wdec = ep.online("witness-01")
    abuser, adec = ep.online("abuser-01")
    start = ep.rss()
    huge = f"/{pk}/abuser-01/x" + "/" * 65_000
    for packet_id in range(1, 20):  # 19 packets of three 65,000-byte filters, as in the review
        abuser.sendall(
            codec.encode(codec.Subscribe(packet_id, ((huge, 0), (huge + "a", 0), (huge + "b", 1))))
        )
        assert _suback(abuser, adec).return_codes == (0x80, 0x80, 0x80)
    granted = 0
    for n in range(20):  # 120,000 short filters, 6,000 to a packet (under the packet size)
        topics = tuple((f"/{pk}/abuser-01/f{n * 6_000 + i}", 0) for i in range(6_000))
        abuser.sendall(codec.encode(codec.Subscribe(100 + n, topics)))
        granted += sum(1 for c in _suback(abuser, adec).return_codes if c != 0x80)
    growth = ep.rss() - start
    assert ping_ok(abuser, adec) and ping_ok(witness, wdec)
    record(
        "subscription-bounds",
        threat="SUBSCRIBE with 65,000-byte filters of '/' levels, and 120,000 short filters",
        tried="19 packets x 3 filters of 65,000 bytes; 20 packets x 6,000 filters",
        count=19 * 3 + 120_000,
        result=(
            f"every huge filter refused (0x80), {granted} of 120,000 short ones granted "
            f"(max {FILTERS}); server RSS {growth / 2**20:+.1f} MiB; one log line a packet"
        ),
    )
    assert granted == FILTERS
    assert len(ep.log_lines("max_filter_bytes")) == 19
    assert len(ep.log_lines(f"max_filters_per_session {FILTERS}")) == 20
    assert growth < 64 * 2**20, growth  # the review saw +1.1 GiB
    witness.close()
    abuser.close()


@pytest.mark.timeout(120)
def test_deep_subscription_and_matching_publish_leave_the_server_serving(bounded: Bounded) -> None:
    ep = bounded
    pk = ep.tenant.product_key
    abuser, adec = ep.online("abuser-01")
    deep = "/".join(["+"] * 3_000)
    abuser.sendall(codec.encode(codec.Subscribe(1, ((f"/{pk}/abuser-01/{deep}", 0),))))
    assert _suback(abuser, adec).return_codes == (0x80,)
    topic = f"/{pk}/abuser-01/" + "/".join(["a"] * 3_000)
    abuser.sendall(codec.encode(codec.Publish(topic, b"deep", 1, packet_id=7)))
    got = read_packets(abuser, adec, 1)
    assert codec.Puback(7) in got, got
    assert ping_ok(abuser, adec)
    assert "RecursionError" not in ep.server.log() and "Traceback" not in ep.server.log()
    abuser.close()


def _get_messages(ep: Bounded, name: str) -> bytes:
    url = f"{ep.server.http_url}/api/v1/devices/{ep.tenant.product_key}/{name}/messages?limit=1000"
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {ep.server.token}"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return bytes(resp.read())


@pytest.mark.timeout(300)
def test_recent_messages_stay_within_their_budgets_and_leave_with_the_device(
    bounded: Bounded,
) -> None:
    ep = bounded
    pk = ep.tenant.product_key
    payload = b"p" * (255 * 1024)
    names = [f"pub-{i:02d}" for i in range(PUBLISHERS)]
    clients = []
    for name in names:
        sock, dec = ep.online(name)
        for i in range(100):
            sock.sendall(
                codec.encode(codec.Publish(f"/{pk}/{name}/user/t", payload, 1, packet_id=i + 1))
            )
        acked = 0
        while acked < 100:
            acked += sum(isinstance(p, codec.Puback) for p in read_packets(sock, dec, 1))
        clients.append((sock, dec))
    bodies = {name: _get_messages(ep, name) for name in names}
    kept = {name: len(json.loads(body)) for name, body in bodies.items()}
    for sock, _dec in clients:
        sock.sendall(codec.encode(codec.Disconnect()))
        sock.close()
    # retention is 1 s: wait on what the server answers, not on a clock
    deadline = time.monotonic() + 60
    while any(json.loads(_get_messages(ep, n)) for n in names):
        assert time.monotonic() < deadline, "messages of devices that left were never forgotten"
        time.sleep(0.2)
    largest = max(len(b) for b in bodies.values())
    record(
        "recent-message-bounds",
        threat="devices publishing large messages to fill the recent-messages store",
        tried=f"{PUBLISHERS} devices x 100 messages of 255 KiB",
        count=PUBLISHERS * 100,
        result=(
            f"kept {sum(kept.values())} messages ({kept}) within {RECENT_TOTAL:,} bytes "
            f"in all and {RECENT_PER_DEVICE:,} per device; largest GET .../messages "
            f"{largest:,} bytes; all forgotten after the devices left"
        ),
    )
    assert sum(kept.values()) * len(payload) <= RECENT_TOTAL
    assert all(n * len(payload) <= RECENT_PER_DEVICE for n in kept.values())
    size = len(f"/{pk}/{names[-1]}/user/t".encode()) + len(payload)
    assert kept[names[-1]] == RECENT_PER_DEVICE // size  # the newest are kept
    assert largest < 2 * RECENT_PER_DEVICE


def _idle_from(ep: Bounded, source: str) -> socket.socket:
    return socket.create_connection(ep.addr, timeout=10, source_address=(source, 0))


@pytest.mark.timeout(120)
def test_idle_sockets_cannot_keep_a_real_device_out(bounded: Bounded) -> None:
    ep = bounded
    before_source = len(ep.log_lines("(max_pending_per_source)"))
    before_budget = len(ep.log_lines("(max_pending_connections)"))
    # the server accepts in order: by the time it takes a socket, it took those opened before
    first = [_idle_from(ep, "127.0.0.2") for _ in range(PER_SOURCE)]
    refused = _idle_from(ep, "127.0.0.2")
    assert closed_by_server(refused, 10), "a source got more than its share"
    second = [_idle_from(ep, "127.0.0.3") for _ in range(PENDING - PER_SOURCE)]
    # the budget for unauthenticated connections is full of idle sockets: a device still gets in
    witness, wdec = ep.online("witness-01")
    assert ping_ok(witness, wdec)
    assert closed_by_server(first[0], 10), "the oldest idle socket should have made room"
    still_open = sum(not closed_by_server(s, 0.2) for s in [*first[1:4], *second[-3:]])
    record(
        "pending-connection-bounds",
        threat="plain TCP sockets that never start TLS, from one and from several addresses",
        tried=f"{PER_SOURCE + 1} from one address, then {PENDING - PER_SOURCE} from another "
        f"(budget {PENDING} unauthenticated, {PER_SOURCE} per source)",
        count=PENDING + 1,
        result=(
            "the extra socket of the first address refused; with the budget full a real "
            "device connected, closing only the oldest idle socket; one log line each"
        ),
    )
    assert still_open == 6
    assert len(ep.log_lines("(max_pending_per_source)")) == before_source + 1
    assert len(ep.log_lines("(max_pending_connections)")) == before_budget + 1
    for s in [*first, refused, *second, witness]:
        s.close()


@pytest.mark.timeout(60)
def test_long_client_id_is_refused_and_logged_short(bounded: Bounded) -> None:
    ep = bounded
    witness, wdec = ep.online("witness-01")
    long_id = "i" * 60_000 + "|securemode=2|"
    sock, _dec, packets = mqtt_connect(*ep.addr, ep.ctx("abuser-01"), long_id)
    assert packets[0] == codec.Connack(codec.CONNACK_IDENTIFIER_REJECTED)
    assert closed_by_server(sock, 10)
    lines = ep.log_lines("max_client_id_length")
    assert len(lines) == 1 and len(lines[0]) < 1_000, [len(x) for x in lines]
    assert ping_ok(witness, wdec)
    sock.close()
    witness.close()
