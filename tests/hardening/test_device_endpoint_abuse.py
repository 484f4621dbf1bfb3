"""Network abuse on the MQTT device endpoint of the real server process.

Idle and half-open connections must be closed by the server's own timeouts and leave no memory
behind; failed handshakes must not stop it serving valid devices; malformed or forbidden MQTT
must close only the offending connection. Resident memory is read with psutil on the server's
pid, after a warm-up (first-use allocations are not leaks) and a settle period.
"""

from __future__ import annotations

import os
import resource
import socket
import ssl
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import psutil  # type: ignore[import-untyped]
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
    args = ["--handshake-timeout", str(TIMEOUT_S), "--connect-timeout", str(TIMEOUT_S),
            "--max-packet-size", str(MAX_PACKET)]
    with running_server(tmp_path_factory.mktemp("abuse") / "data", extra_args=args) as srv:
        if srv.mqtt_port is None:
            pytest.skip("the server runs without its MQTT endpoint")
        tenant = make_tenant(srv.http_url, srv.token,
                             devices={"witness-01": 0xA001, "abuser-01": 0xA002})
        witness = pki.issue_device_certificate(tenant.ca, "witness-01", serial=0xA001)
        abuser = pki.issue_device_certificate(tenant.ca, "abuser-01", serial=0xA002)
        stranger = pki.issue_device_certificate(pki.create_ca("Stranger CA"), "x", serial=0xA003)
        ep = Endpoint(srv, tenant, witness, abuser, stranger)
        sock, _dec, _packets = mqtt_connect_retry(*ep.addr, ep.ctx(witness))
        sock.close()
        yield ep


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
    record("idle-connections",
           threat="connections that never start TLS, or finish TLS and never send CONNECT",
           tried=f"{IDLE_TCP:,} TCP-only + {IDLE_TLS:,} TLS-without-CONNECT connections, "
                 f"{batch:,} at a time, server timeouts {TIMEOUT_S:g} s",
           count=IDLE_TCP + IDLE_TLS,
           result=(f"all closed by the server's timeouts; RSS after warm-up {start / 2**20:.1f} "
                   f"-> {end / 2**20:.1f} MiB ({growth:+.1%}); before warm-up {cold / 2**20:.1f}"))
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
        return isinstance(connack, codec.Connack) and connack.return_code == 0 and ping_ok(sock, decoder)
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
    record("failed-handshakes",
           threat="failed TLS handshakes: no client certificate, unknown CA, garbage bytes",
           tried=", ".join(f"{n:,} {k}" for k, n in FAILED.items()) + f" ({WORKERS} in parallel)",
           count=total,
           result=(f"every one refused; a valid device connects after each kind; RSS after "
                   f"warm-up {start / 2**20:.1f} -> {end / 2**20:.1f} MiB ({growth:+.1%}); "
                   f"before warm-up {cold / 2**20:.1f}"))
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
            True, b"\x30" + codec.encode_remaining_length(MAX_PACKET + 1)),
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
    record("malformed-mqtt",
           threat="malformed or forbidden MQTT from an authenticated device",
           tried="; ".join(abuses), count=len(abuses),
           result=(f"{len(closed)} of {len(abuses)} closed that connection only; another "
                   "connected device answered PINGREQ after each"))
    assert closed == list(abuses), set(abuses) - set(closed)
