"""The network driver: no ``select()``, so file descriptors above 1024 work; one thread serves
many clients; ``start()`` and the connection timing; a driver of the application's own."""

from __future__ import annotations

import contextlib
import os
import queue
import resource
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from device_sdk import ConnectionState, Credentials, DeviceClient, Identity
from device_sdk.errors import DeviceSDKError, NotAuthorizedError
from device_sdk.network import NetworkDriver, SelectorDriver, default_driver
from tests.common import Platform

FD_SETSIZE = 1024

# ``platform``: an account of the test's own on the session's server (tests/conftest.py).


class RecordingDriver(SelectorDriver):
    """The default driver, noting which descriptors and threads it served."""

    def __init__(self) -> None:
        super().__init__(name="recording-network")
        self.fds: list[int] = []

    def _on_open(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        self.fds.append(sock.fileno())
        super()._on_open(client, userdata, sock)


@contextlib.contextmanager
def descriptors_held(count: int) -> Iterator[None]:
    """Occupy ``count`` descriptors so that every new socket lands above them."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = count + 256
    if hard != resource.RLIM_INFINITY and hard < needed:
        pytest.skip(f"RLIMIT_NOFILE hard limit {hard} < {needed}")
    if soft != resource.RLIM_INFINITY and soft < needed:
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))
    held = [os.open(os.devnull, os.O_RDONLY) for _ in range(count)]
    try:
        yield
    finally:
        for fd in held:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def _wait_for(predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
    done = threading.Event()
    for _ in range(int(timeout / 0.02)):
        if predicate():
            return True
        done.wait(0.02)
    return predicate()


def _client(platform: Platform, name: str, **kwargs: Any) -> DeviceClient:
    dev = platform.devices.get(name) or platform.issue(name)
    return platform.device_client(Credentials.from_files(dev.cert, dev.key), **kwargs)


def test_a_process_with_more_than_1024_open_files_connects(platform: Platform) -> None:
    # Before the network driver this failed with CertificateRejectedError ("connection closed
    # right after the TLS handshake"): paho's select() cannot watch descriptors >= 1024.
    driver = RecordingDriver()
    with (
        descriptors_held(1100),
        _client(platform, "fd-high-1", network=driver) as own,
        _client(platform, "fd-high-2") as shared,
    ):
        assert own.connect(timeout=15) == Identity(platform.product_key, "fd-high-1")
        assert shared.connect(timeout=15) == Identity(platform.product_key, "fd-high-2")
        assert own.publish("user/update", b'{"n": 1}', qos=1).wait(10)
        assert shared.publish("user/update", b'{"n": 2}', qos=1).wait(10)
    assert driver.fds and all(fd >= FD_SETSIZE for fd in driver.fds), driver.fds


def test_one_driver_thread_serves_many_clients(platform: Platform) -> None:
    driver = SelectorDriver()
    threads: queue.Queue[str] = queue.Queue()

    def note(message: Any) -> None:
        threads.put(threading.current_thread().name)

    clients = [_client(platform, f"many-{n}", network=driver) for n in range(4)]
    try:
        for client in clients:
            client.connect(timeout=15)
            client.subscribe("user/get", note)
        assert len(driver) == 4
        for n, client in enumerate(clients):
            assert client.identity is not None
            assert platform.api.send_message(
                platform.product_key, f"many-{n}", client.topic("user/get"), "hi", qos=1
            )
        for client in clients:
            assert client.publish("user/update", b"x", qos=1).wait(10)
    finally:
        for client in clients:
            client.disconnect()
    assert _wait_for(lambda: len(driver) == 0)  # every socket was handed back on close
    assert driver.thread is not None
    # every client's message callback ran on the one driver thread
    assert {threads.get(timeout=10) for _ in clients} == {driver.thread.name}


def test_default_driver_is_shared_and_a_selector_driver(platform: Platform) -> None:
    assert default_driver() is default_driver()
    assert isinstance(default_driver(), NetworkDriver)
    assert isinstance(SelectorDriver(), NetworkDriver)


def test_start_reports_states_and_timing_through_the_callback(platform: Platform) -> None:
    states: list[tuple[ConnectionState, DeviceSDKError | None]] = []
    online = threading.Event()
    timings = []

    def on_state(state: ConnectionState, error: DeviceSDKError | None) -> None:
        states.append((state, error))
        if state is ConnectionState.ONLINE:
            timings.append(client.last_connect_timing)
            online.set()

    client = _client(platform, "starter", on_connection_state=on_state)
    assert client.last_connect_timing is None
    client.start()
    try:
        assert online.wait(15), states
    finally:
        client.disconnect()
    assert [s for s, _ in states[:2]] == [ConnectionState.CONNECTING, ConnectionState.ONLINE]
    assert states[-1][0] is ConnectionState.STOPPED
    timing = timings[0]
    assert timing is not None and timing.identity is not None
    assert 0 < timing.handshake <= timing.connect
    assert timing.identity >= 0


def test_start_keeps_retrying_a_refusal_and_reports_it(platform: Platform, tmp_path: Path) -> None:
    dev = platform.issue("never-associated", associate=False)
    errors: list[DeviceSDKError] = []
    seen = threading.Event()

    def on_state(state: ConnectionState, error: DeviceSDKError | None) -> None:
        if error is not None:
            errors.append(error)
            seen.set()

    client = platform.device_client(
        Credentials.from_files(dev.cert, dev.key),
        on_connection_state=on_state,
    )
    client.start()  # does not raise: the refusal arrives through the callback
    try:
        assert seen.wait(15)
        assert client.state is ConnectionState.OFFLINE
    finally:
        client.disconnect()
    assert isinstance(errors[0], NotAuthorizedError), errors
    final: ConnectionState = client.state  # (read again: disconnect() stopped it)
    assert final is ConnectionState.STOPPED


@contextlib.contextmanager
def silent_tls_server(tmp_path: Path, ca: Any) -> Iterator[tuple[int, list[int]]]:
    """A real TLS server that completes handshakes and then never answers (no CONNACK).

    Yields its port and a list that receives, per connection, how many bytes it read before
    the client closed (the DISCONNECT goodbye included)."""
    import socket
    import ssl

    from firmware_helpers.pki import issue_server_certificate

    server = issue_server_certificate(ca, ("127.0.0.1",))
    server.write(tmp_path / "server.pem", tmp_path / "server.key")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tmp_path / "server.pem", tmp_path / "server.key")
    listener = socket.create_server(("127.0.0.1", 0))
    received: list[int] = []

    def serve() -> None:
        while True:
            try:
                raw, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=hold, args=(raw,), daemon=True).start()

    def hold(raw: socket.socket) -> None:
        total = 0
        try:
            with context.wrap_socket(raw, server_side=True) as conn:
                while data := conn.recv(4096):
                    total += len(data)
        except (OSError, ssl.SSLError):
            pass
        received.append(total)

    threading.Thread(target=serve, daemon=True).start()
    try:
        yield listener.getsockname()[1], received
    finally:
        listener.close()


def test_no_connack_after_the_handshake_times_out_and_hands_the_socket_back(
    pki: Any, tmp_path: Path
) -> None:
    from device_sdk.errors import ConnectTimeoutError
    from tests.sdk.conftest import PK

    pair = pki.device(PK, "silent-1")
    creds = Credentials.from_pem(pair.cert_pem(), pair.key_pem())
    driver = SelectorDriver()
    with silent_tls_server(tmp_path, pki.ca) as (port, received):
        client = DeviceClient(
            "127.0.0.1",
            port,
            creds,
            server_ca=pki.ca.cert_pem(),
            attempt_timeout=0.5,
            reconnect_base=0.05,
            reconnect_cap=0.1,
            network=driver,
        )
        with pytest.raises(ConnectTimeoutError) as info:
            client.connect(timeout=0.8)
        cause = info.value.__cause__
        assert isinstance(cause, ConnectTimeoutError), info.value
        assert "no CONNACK" in str(cause) and "after the TLS handshake" in str(cause)
        assert _wait_for(lambda: len(driver) == 0)
        assert _wait_for(lambda: len(received) >= 1)
    # the server got CONNECT and the DISCONNECT goodbye (2 bytes) on the first connection
    assert received[0] > 2, received


def test_disconnect_from_a_callback_on_the_network_thread(platform: Platform) -> None:
    client = _client(platform, "bye-from-callback")
    client.connect(timeout=15)
    called = threading.Event()

    def on_message(message: Any) -> None:
        client.disconnect()
        called.set()

    client.subscribe("user/get", on_message)
    assert platform.api.send_message(
        platform.product_key, "bye-from-callback", client.topic("user/get"), "bye", qos=1
    )
    assert called.wait(10)
    assert _wait_for(lambda: client.state is ConnectionState.STOPPED)
    # the shared driver still serves other clients afterwards
    with _client(platform, "after-bye") as other:
        assert other.connect(timeout=15) == Identity(platform.product_key, "after-bye")
