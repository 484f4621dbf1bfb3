"""The SDK resumes its TLS session with the reference server too (issue 16: the server issues
tickets), and a resumed session still goes through the registry: a CA deactivated since the
ticket was issued is refused, as on a full handshake."""

from __future__ import annotations

from typing import Any

import pytest

from device_sdk import CertificateRejectedError, Credentials, DeviceClient, Identity
from firmware_helpers.pki import create_ca
from tests.common import Platform


def _client(platform: Platform, creds: Credentials, **kwargs: Any) -> DeviceClient:
    return DeviceClient(
        platform.server.mqtt_host,
        platform.server.mqtt_port or 0,
        creds,
        server_ca=platform.server.server_ca,
        **kwargs,
    )


def test_a_reconnect_resumes_and_is_told_its_identity_again(platform: Platform) -> None:
    dev = platform.issue("resume-ref1")
    client = _client(platform, Credentials.from_files(dev.cert, dev.key))
    context = client.tls_context
    expected = Identity(platform.product_key, "resume-ref1")
    assert client.connect(timeout=10) == expected
    client.disconnect()
    assert (context.full_handshakes, context.last_session_reused) == (1, False)
    assert client.connect(timeout=10) == expected
    client.disconnect()
    assert (context.resumed_handshakes, context.last_session_reused) == (1, True)


def test_a_resumed_session_of_a_deactivated_ca_is_refused(platform: Platform) -> None:
    second_ca = create_ca("SDK Resumption CA")
    platform.register_ca(second_ca, "sdk_resume_ca")
    dev = platform.issue("resume-ref2", second_ca)
    client = _client(platform, Credentials.from_files(dev.cert, dev.key))
    client.connect(timeout=10)
    client.disconnect()
    platform.api.set_ca_status(second_ca.sn, "inactive")
    offered = client.tls_context.resumptions_offered
    with pytest.raises(CertificateRejectedError):
        client.connect(timeout=10)
    assert client.tls_context.resumptions_offered == offered + 1  # with its ticket: refused
