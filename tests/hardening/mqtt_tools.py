"""Raw MQTT-over-TLS device connections for abuse tests: a socket, the server's own codec.

A raw socket (not paho) lets a test send exactly the bytes it wants, including wrong ones.
"""

from __future__ import annotations

import socket
import ssl
import tempfile
import time
from pathlib import Path

from firmware_helpers import pki
from server_stub.mqtt import codec


def device_context(server_ca: Path, device: pki.CertifiedKey | None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(server_ca))
    ctx.check_hostname = False  # we connect to 127.0.0.1 and trust exactly the server's CA
    if device is not None:
        with tempfile.TemporaryDirectory() as tmp:
            cert, key = Path(tmp) / "d.pem", Path(tmp) / "d.key"
            device.write(cert, key)
            ctx.load_cert_chain(cert, key)
    return ctx


def tls_connect(host: str, port: int, ctx: ssl.SSLContext, timeout: float = 10.0) -> ssl.SSLSocket:
    raw = socket.create_connection((host, port), timeout=timeout)
    try:
        return ctx.wrap_socket(raw, server_hostname=host)
    except BaseException:
        raw.close()
        raise


def read_packets(sock: socket.socket, decoder: codec.Decoder, want: int = 1) -> list[codec.Packet]:
    packets: list[codec.Packet] = []
    while len(packets) < want:
        data = sock.recv(65536)
        if not data:
            raise ConnectionError("closed by the server")
        packets.extend(decoder.feed(data))
    return packets


def mqtt_connect(
    host: str, port: int, ctx: ssl.SSLContext, client_id: str = "hardening|securemode=2|"
) -> tuple[ssl.SSLSocket, codec.Decoder, list[codec.Packet]]:
    """TLS + CONNECT; returns the socket, its decoder and CONNACK (+ identity PUBLISH)."""
    sock = tls_connect(host, port, ctx)
    sock.sendall(codec.encode(codec.Connect(client_id=client_id, keep_alive=60)))
    decoder = codec.Decoder(max_packet_size=1 << 20)
    packets = read_packets(sock, decoder, 1)
    return sock, decoder, packets


def mqtt_connect_retry(
    host: str,
    port: int,
    ctx: ssl.SSLContext,
    client_id: str = "hardening|securemode=2|",
    wait: float = 5.0,
) -> tuple[ssl.SSLSocket, codec.Decoder, list[codec.Packet]]:
    """Like :func:`mqtt_connect`, retried while a just-registered CA reaches the TLS layer."""
    deadline = time.monotonic() + wait
    while True:
        try:
            return mqtt_connect(host, port, ctx, client_id)
        except (ssl.SSLError, ConnectionError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def ping_ok(sock: socket.socket, decoder: codec.Decoder) -> bool:
    sock.sendall(codec.PINGREQ_BYTES)
    got = read_packets(sock, decoder, 1)
    while not any(isinstance(p, codec.Pingresp) for p in got):
        got = read_packets(sock, decoder, 1)
    return True


def closed_by_server(sock: socket.socket, timeout: float = 10.0) -> bool:
    """True when the server closes the connection (EOF or reset) within ``timeout``."""
    sock.settimeout(timeout)
    try:
        while True:
            data = sock.recv(65536)
            if not data:
                return True
    except (ConnectionError, ssl.SSLError):
        return True
    except TimeoutError:
        return False
