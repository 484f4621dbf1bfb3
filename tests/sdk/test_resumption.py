"""A reconnecting device resumes its last TLS session (issue 16), against a real Mosquitto 2.

Mosquitto issues session tickets by default (TLS 1.3 after the handshake, TLS 1.2 in it). A
reconnect offers the last session and the server takes it (``session_reused``); a server that
cannot (restarted: new ticket keys) answers with a full handshake and the device connects all
the same, keeping the new session for next time.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from device_sdk import Credentials, DeviceClient
from device_sdk.tls import DeviceTLSContext
from firmware_helpers.pki import CertifiedKey, create_ca
from tests.common import PkiFactory
from tests.sdk.brokers import Mosquitto, run_mosquitto
from tests.sdk.conftest import PK


@pytest.fixture(scope="module")
def server_ca() -> CertifiedKey:
    """One server CA for a broker and its restart (the device trusts it across both)."""
    return create_ca("Resumption Server CA")


@pytest.fixture(params=[None, "tlsv1.2"], ids=["tls1.3", "tls1.2"])
def tls_version(request: pytest.FixtureRequest) -> str | None:
    version: str | None = request.param
    return version


@pytest.fixture
def broker(
    pki: PkiFactory, server_ca: CertifiedKey, tls_version: str | None, tmp_path: Path
) -> Iterator[Mosquitto]:
    with run_mosquitto(
        tmp_path / "first", pki.ca.cert_pem(), server_ca=server_ca, tls_version=tls_version
    ) as running:
        yield running


def _client(broker: Mosquitto, creds: Credentials) -> DeviceClient:
    return DeviceClient(
        "127.0.0.1", broker.port, creds, server_ca=broker.server_ca_path, expect_identity=False
    )


def _counts(context: DeviceTLSContext) -> tuple[int, int, int]:
    return context.full_handshakes, context.resumed_handshakes, context.resumptions_offered


def test_a_reconnect_resumes_the_last_session(broker: Mosquitto, pki: PkiFactory) -> None:
    dev = pki.device(PK, "resume01")
    client = _client(broker, Credentials.from_pem(dev.cert_pem(), dev.key_pem()))
    context = client.tls_context
    client.connect(timeout=10)
    client.disconnect()
    assert (_counts(context), context.last_session_reused) == ((1, 0, 0), False)
    for reconnects in (1, 2):
        client.connect(timeout=10)
        client.disconnect()
        assert (_counts(context), context.last_session_reused) == (
            (1, reconnects, reconnects),
            True,
        )


def test_a_refused_resumption_falls_back_to_a_full_handshake(
    broker: Mosquitto,
    pki: PkiFactory,
    server_ca: CertifiedKey,
    tls_version: str | None,
    tmp_path: Path,
) -> None:
    dev = pki.device(PK, "resume02")
    client = _client(broker, Credentials.from_pem(dev.cert_pem(), dev.key_pem()))
    context = client.tls_context
    client.connect(timeout=10)
    client.disconnect()
    broker.proc.terminate()
    broker.proc.wait(10)
    # the same port, a new process: its ticket keys are new, the device's ticket is refused
    with run_mosquitto(
        tmp_path / "restarted",
        pki.ca.cert_pem(),
        server_ca=server_ca,
        tls_version=tls_version,
        port=broker.port,
    ):
        client.connect(timeout=10)
        client.disconnect()
        assert (_counts(context), context.last_session_reused) == ((2, 0, 1), False)
        client.connect(timeout=10)  # and the session of that full handshake resumes next
        client.disconnect()
        assert (_counts(context), context.last_session_reused) == ((2, 1, 2), True)


def test_forgotten_sessions_make_a_full_handshake(broker: Mosquitto, pki: PkiFactory) -> None:
    dev = pki.device(PK, "resume03")
    client = _client(broker, Credentials.from_pem(dev.cert_pem(), dev.key_pem()))
    client.connect(timeout=10)
    client.disconnect()
    client.tls_context.forget_sessions()
    client.connect(timeout=10)
    client.disconnect()
    assert _counts(client.tls_context) == (2, 0, 0)
