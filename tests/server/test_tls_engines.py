"""Both TLS engines of the device endpoint keep OpenSSL's own checks of a device certificate.

The issuer is decided by key in a callback that replaces OpenSSL's chain building
(server_stub/mqtt/tls_system.py, tls_engine.py); what OpenSSL checks of the certificate itself
must still hold after that decision, on either engine: a certificate for another purpose (EKU
without clientAuth) or with a critical extension OpenSSL does not know is refused at the
handshake, with the reason in the log, even though a registered CA's key signed it.
"""

from __future__ import annotations

import gc
import socket
import ssl
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID, ObjectIdentifier

from device_sdk.certs import certificate_sn
from firmware_helpers.pki import CertifiedKey, random_serial
from server_stub.config import MqttLimits
from server_stub.mqtt import codec
from server_stub.mqtt.tls import ENGINES, ServerTls
from server_stub.ports import IssuingCa
from tests.common import wait_for
from tests.server.mqtt_harness import PK, EndpointRegistry, ServerThread, World


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    return World(tmp_path_factory.mktemp("engines"))


@pytest.fixture(params=ENGINES)
def endpoint(
    world: World, request: pytest.FixtureRequest
) -> Iterator[tuple[EndpointRegistry, ServerThread]]:
    reg = EndpointRegistry(world, [world.ca])
    limits = MqttLimits(tls_engine=request.param)
    with ServerThread(reg.registry, world.server, limits) as server:
        assert server.service is not None
        assert server.service.broker.context.engine == request.param
        yield reg, server
    reg.close()


def _leaf(world: World, name: str, extension: x509.ExtensionType, critical: bool) -> CertifiedKey:
    now = datetime.now(UTC)
    key = world.proof_key
    cert = (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, PK),
                    x509.NameAttribute(NameOID.COMMON_NAME, name),
                ]
            )
        )
        .issuer_name(world.ca.certificate.subject)
        .public_key(key.public_key())
        .serial_number(random_serial())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=30))
        .add_extension(extension, critical=critical)
        .sign(world.ca.key, hashes.SHA256())
    )
    return CertifiedKey(cert, key)


def _connect(world: World, port: int, pair: CertifiedKey, name: str) -> int | None:
    """TLS with ``pair``, CONNECT; the CONNACK code, or None when the server closed first."""
    cert_path, key_path = world.root / f"{name}.cer", world.root / f"{name}.key"
    pair.write(cert_path, key_path)
    context = ssl.create_default_context(cafile=str(world.server_ca_file))
    context.load_cert_chain(str(cert_path), str(key_path))
    try:
        with (
            socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
            context.wrap_socket(raw, server_hostname="127.0.0.1") as sock,
        ):
            sock.sendall(codec.encode(codec.Connect(f"{name}|securemode=2|", 300)))
            data = sock.recv(4)
    except (ssl.SSLError, ConnectionError):
        return None
    return data[3] if len(data) == 4 else None


@pytest.mark.parametrize(
    ("extension", "critical", "reason"),
    [
        (x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False, "purpose"),
        (
            x509.UnrecognizedExtension(ObjectIdentifier("1.3.6.1.4.1.55555.1"), b"\x05\x00"),
            True,
            "critical extension",
        ),
    ],
)
def test_openssls_own_leaf_checks_still_refuse_after_the_attribution(
    world: World,
    endpoint: tuple[EndpointRegistry, ServerThread],
    caplog: pytest.LogCaptureFixture,
    extension: x509.ExtensionType,
    critical: bool,
    reason: str,
) -> None:
    reg, server = endpoint
    name = f"odd-{reason.split()[0]}"
    pair = _leaf(world, name, extension, critical)
    reg.associate(world.ca, pair.certificate, name)
    assert _connect(world, server.port, pair, name) is None
    sn = certificate_sn(pair.certificate)
    assert wait_for(
        lambda: any(
            "TLS handshake refused" in r.getMessage() and sn in r.getMessage()
            for r in caplog.records
        )
    )
    line = next(r.getMessage() for r in caplog.records if sn in r.getMessage())
    assert reason in line, line
    # the same certificate without the odd extension connects: the refusal was that check's
    plain = _leaf(
        world,
        f"{name}-plain",
        x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]),
        critical=False,
    )
    reg.associate(world.ca, plain.certificate, f"{name}-plain")
    assert _connect(world, server.port, plain, f"{name}-plain") == codec.CONNACK_ACCEPTED


def test_a_certificate_no_registered_key_signed_is_refused_as_unknown_ca(
    world: World, endpoint: tuple[EndpointRegistry, ServerThread]
) -> None:
    _reg, server = endpoint
    stranger = world.device("stranger-device", world.stranger)
    context = ssl.create_default_context(cafile=str(world.server_ca_file))
    context.load_cert_chain(str(stranger.cert), str(stranger.key))
    context.maximum_version = ssl.TLSVersion.TLSv1_2  # the alert arrives inside the handshake
    with (
        pytest.raises(ssl.SSLError, match=r"(?i)unknown ca"),
        socket.create_connection(("127.0.0.1", server.port), timeout=10) as raw,
    ):
        context.wrap_socket(raw, server_hostname="127.0.0.1")


class _AnyIndex:
    """Attributes every certificate to one CA (this test is about the handshake's life)."""

    def attribute(self, leaf: object) -> IssuingCa:
        return IssuingCa(1, 1, "ca", True)


@pytest.mark.parametrize("engine", ENGINES)
def test_a_handshake_started_before_a_ticket_key_rotation_completes(
    world: World, engine: str
) -> None:
    # The rotation replaces the context while a handshake of the old one is half done; that
    # handshake still runs the verify callback when the certificate arrives, so the callback
    # must outlive the context object that installed it (the system engine keeps one
    # callback for the process: a freed one can still "work" from freed memory, so this test
    # shows the handshake completes; it cannot prove the pointer is alive).
    dev = world.device(f"rotating-{engine}")
    tls = ServerTls(
        world.server.cert_pem(),
        world.server.key_pem(),
        _AnyIndex,
        ticket_lifetime=60,
        engine=engine,
    )
    server = tls.accept()
    to_client, from_client = ssl.MemoryBIO(), ssl.MemoryBIO()
    context = ssl.create_default_context(cafile=str(world.server_ca_file))
    context.load_cert_chain(str(dev.cert), str(dev.key))
    client = context.wrap_bio(to_client, from_client, server_hostname="127.0.0.1")
    with pytest.raises(ssl.SSLWantReadError):
        client.do_handshake()  # ClientHello
    server.feed(from_client.read())
    assert not server.handshake()  # the server's flight, waiting for the certificate
    to_client.write(server.outgoing())
    tls.rotate_ticket_keys()
    gc.collect()  # nothing but the connection keeps the old context alive now
    client.do_handshake()  # the client's certificate and Finished
    server.feed(from_client.read())
    assert server.handshake() and server.issuer is not None
