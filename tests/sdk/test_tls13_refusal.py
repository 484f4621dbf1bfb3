"""A TLS 1.3 server refuses a client certificate after the client finished its half of the
handshake, by closing. Where that close reaches the client depends on timing: on the write of
CONNECT inside paho's ``connect()`` (an EOF or a broken pipe), or on the first read (a closed
link before CONNACK). Every path must end as the same permanent refusal, raised at once,
never as a TLS failure retried until the timeout (a CI run once saw that against Mosquitto).
"""

from __future__ import annotations

import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from device_sdk import Credentials, DeviceClient
from device_sdk.errors import CertificateRejectedError
from firmware_helpers.pki import create_ca, issue_server_certificate
from tests.sdk.conftest import PK


def _serve_flight_then_close(listener: socket.socket, context: ssl.SSLContext) -> None:
    """Per connection: answer the ClientHello with the server's whole flight (through
    Finished, with a CertificateRequest), then close -- as a server does that will not accept
    what the client is about to send."""
    while True:
        try:
            conn, _ = listener.accept()
        except OSError:
            return  # listener closed: the test is over
        with conn:
            incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
            tls = context.wrap_bio(incoming, outgoing, server_side=True)
            while True:
                data = conn.recv(65536)
                if not data:
                    break
                incoming.write(data)
                try:
                    tls.do_handshake()
                except ssl.SSLWantReadError:
                    pass
                flight = outgoing.read()
                if flight:
                    conn.sendall(flight)
                    break


@pytest.fixture
def closing_server(tmp_path: Path) -> Iterator[tuple[int, bytes]]:
    server_ca = create_ca("Test Server CA")
    server = issue_server_certificate(server_ca)
    server.write(tmp_path / "server.pem", tmp_path / "server.key")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.load_cert_chain(tmp_path / "server.pem", tmp_path / "server.key")
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_verify_locations(cadata=server_ca.cert_pem().decode())
    listener = socket.create_server(("127.0.0.1", 0))
    thread = threading.Thread(
        target=_serve_flight_then_close, args=(listener, context), daemon=True
    )
    thread.start()
    try:
        yield listener.getsockname()[1], server_ca.cert_pem()
    finally:
        listener.shutdown(socket.SHUT_RDWR)  # wakes the accept (a close alone would not)
        listener.close()
        thread.join(timeout=10)
        assert not thread.is_alive()


def test_a_close_right_after_the_tls13_handshake_is_a_certificate_refusal(
    closing_server: tuple[int, bytes], pki: Any
) -> None:
    port, server_ca = closing_server
    pair = pki.device(PK, "sensor01")
    creds = Credentials.from_pem(pair.cert_pem(), pair.key_pem())
    for _ in range(5):  # each run may meet the close at another place
        client = DeviceClient("127.0.0.1", port, creds, server_ca=server_ca)
        with pytest.raises(CertificateRejectedError, match="registered with the platform") as info:
            client.connect(timeout=30)
        assert info.value.__cause__ is not None
        assert client.tls_context.handshakes_completed == 1  # one attempt: refused at once
