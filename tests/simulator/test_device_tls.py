"""Devices' pairs in the shared context (``simulator/device_tls.py``, loading as DER through
``device_sdk/libssl.py``) against a real TLS server on loopback that asks for a client
certificate and records each one.

- Two devices connect one after the other through the one shared context, their pairs loaded
  as DER: the server sees each device's own certificate (its SN).
- A key that is not the certificate's is refused with the message of ``load_cert_chain``'s path,
  and the next device's good pair still goes in and is the one presented.
- The fallback (``load_cert_chain``): what a process takes when libssl's DER calls do not
  validate (``der_loading=False``; a failing check itself is tested in ``tests/sdk``), and what
  a PKCS#8 key takes; devices connect through it with their own certificates too.
"""

from __future__ import annotations

import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from device_sdk import certs
from device_sdk.errors import CredentialError, KeyMismatchError
from firmware_helpers.pki import issue_server_certificate
from simulator.device_tls import DeviceTls, pair_loader
from tests.common import PkiFactory

PRODUCT = "a1DerPairs"


class RecordingServer:
    """A TLS server on loopback requiring a client certificate from the test CA; it records
    the SN of every certificate a client presented, in order, and answers b"ok"."""

    def __init__(self, pki: PkiFactory, directory: Path) -> None:
        pair = issue_server_certificate(pki.ca)
        pair.write(directory / "server.cer", directory / "server.key")
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(directory / "server.cer", directory / "server.key")
        self.context.verify_mode = ssl.CERT_REQUIRED
        self.context.load_verify_locations(cadata=pki.ca.cert_pem().decode("ascii"))
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.seen: list[str] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _addr = self.listener.accept()
            except OSError:  # closed by the test
                return
            with conn:
                try:
                    with self.context.wrap_socket(conn, server_side=True) as tls:
                        peer = tls.getpeercert(binary_form=True)
                        sn = certs.certificate_sn(certs.parse_certificate(peer or b""))
                        self.seen.append(sn)
                        tls.sendall(b"ok")
                except (ssl.SSLError, OSError):
                    self.seen.append("refused")

    def connect(self, tls: DeviceTls) -> bytes:
        """One connection as a device makes it: wrap (the pair goes into the shared context),
        handshake, then read the server's answer (TLS 1.3: it checks the certificate after the
        client's handshake returns)."""
        with (
            socket.create_connection(("127.0.0.1", self.port), timeout=30) as sock,
            tls.wrap(sock, server_hostname="127.0.0.1", session=None) as conn,
        ):
            conn.do_handshake()
            return conn.recv(16)

    def close(self) -> None:
        self.listener.close()
        self.thread.join(10)


@pytest.fixture(scope="module")
def server(pki: PkiFactory, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RecordingServer]:
    running = RecordingServer(pki, tmp_path_factory.mktemp("der-pairs-server"))
    yield running
    running.close()


@pytest.fixture(scope="module")
def server_ca(pki: PkiFactory, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("der-pairs-ca") / "server-ca.pem"
    path.write_bytes(pki.ca.cert_pem())
    return path


@pytest.fixture(scope="module")
def devices(
    pki: PkiFactory, tmp_path_factory: pytest.TempPathFactory
) -> list[tuple[Path, Path, str]]:
    """Three devices' (cert file, key file, SN), written as a fleet writes them (PEM, PKCS#1)."""
    directory = tmp_path_factory.mktemp("der-pairs-devices")
    out = []
    for name in ("dev-a", "dev-b", "dev-c"):
        cert, key, pair = pki.write_device(PRODUCT, name, directory=directory)
        out.append((cert, key, pair.sn))
    return out


def test_the_libssl_of_ssl_validates_on_this_machine() -> None:
    # The fast path is what this machine (Linux, CPython, the system OpenSSL) must take; if
    # this fails the simulator still works, slower: the log line says why.
    loader = pair_loader()
    assert loader is not None
    assert "libssl" in loader.path, loader.path


def test_devices_present_their_own_certificates_through_the_shared_context(
    server: RecordingServer, server_ca: Path, devices: list[tuple[Path, Path, str]]
) -> None:
    (cert_a, key_a, sn_a), (cert_b, key_b, sn_b), _ = devices
    first, second = DeviceTls(cert_a, key_a, server_ca), DeviceTls(cert_b, key_b, server_ca)
    assert first.context is second.context  # one context for the process
    before = len(server.seen)
    # Each pair goes in as DER (not by the fallback) ...
    assert first.load_der() and second.load_der()
    # ... and each connection, made right after its device's pair went in, presents it.
    assert [server.connect(t) for t in (first, second, first)] == [b"ok"] * 3
    assert server.seen[before:] == [sn_a, sn_b, sn_a]


def test_a_key_of_another_certificate_is_refused_with_the_load_cert_chain_message(
    server: RecordingServer, server_ca: Path, devices: list[tuple[Path, Path, str]]
) -> None:
    (cert_a, _key_a, sn_a), (_cert_b, key_b, _sn_b), (cert_c, key_c, sn_c) = devices
    fast = DeviceTls(cert_a, key_b, server_ca)
    assert not fast.load_der()  # OpenSSL refuses the pair as DER too
    messages = []
    for tls in (fast, DeviceTls(cert_a, key_b, server_ca, der_loading=False)):
        with socket.socket() as sock, pytest.raises(CredentialError) as raised:
            tls.wrap(sock, server_hostname="127.0.0.1", session=None)
        messages.append(str(raised.value))
        assert isinstance(raised.value, KeyMismatchError), raised.value
        assert sn_a in str(raised.value)
    assert messages[0] == messages[1]
    # The refusal left the shared context holding a certificate without its key: the next
    # device's pair replaces both, and the server sees that device.
    before = len(server.seen)
    assert server.connect(DeviceTls(cert_c, key_c, server_ca)) == b"ok"
    assert server.seen[before:] == [sn_c]


def test_when_libssl_does_not_validate_pairs_load_from_the_files(
    server: RecordingServer, server_ca: Path, devices: list[tuple[Path, Path, str]]
) -> None:
    (cert_a, key_a, sn_a), (cert_b, key_b, sn_b), _ = devices
    slow = [
        DeviceTls(c, k, server_ca, der_loading=False) for c, k in ((cert_a, key_a), (cert_b, key_b))
    ]
    assert not any(t.load_der() for t in slow)
    before = len(server.seen)
    assert [server.connect(t) for t in slow] == [b"ok", b"ok"]
    assert server.seen[before:] == [sn_a, sn_b]


def test_a_pkcs8_key_takes_the_fallback_and_still_connects(
    pki: PkiFactory, server: RecordingServer, server_ca: Path, tmp_path: Path
) -> None:
    cert, key, pair = pki.write_device(PRODUCT, "dev-pkcs8", directory=tmp_path)
    key.write_bytes(
        pair.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    tls = DeviceTls(cert, key, server_ca)
    assert tls.der_loader is not None and not tls.load_der()
    before = len(server.seen)
    assert server.connect(tls) == b"ok"
    assert server.seen[before:] == [pair.sn]
