"""End to end: ``iotx509 server run`` as a process, registration through the HTTP API, devices
connecting with paho-mqtt and mosquitto_sub over mutual TLS.

Each test is an account of its own on the session's reference server (the root conftest's
``platform``: a product, a CA registered with proof of possession), so the tests stay isolated
from each other, and from the other accounts' look-alike CAs on the same server.

No sleeps: the server's HTTP API and MQTT endpoint share one registry, and a new handshake (and
CONNECT) reads it as it is when the client arrives, so a change the API has answered is in force
for the next connection; live sessions are re-checked by the endpoint, and tests wait for that
event (the server closing the connection)."""

from __future__ import annotations

import shutil
import ssl
import subprocess

import pytest
from cryptography.x509.oid import NameOID

from device_sdk.platform import IDENTITY_TOPIC
from firmware_helpers.pki import create_ca
from firmware_helpers.platform_client import PlatformAPIError
from server_stub.mqtt import codec
from tests.common import Device, Platform
from tests.server.mqtt_harness import Paho, RawClient, wait_for

MOSQUITTO_SUB = shutil.which("mosquitto_sub") or "/usr/bin/mosquitto_sub"


def _raw(platform: Platform, dev: Device) -> RawClient:
    return RawClient(platform.server.mqtt_port, platform.server.server_ca, dev.cert, dev.key)


def test_paho_connects_gets_identity_and_talks_to_the_cloud(platform: Platform) -> None:
    dev = platform.issue("e2e-paho")
    client = Paho(platform.server.mqtt_port, platform.server.server_ca, dev).start()
    pk = platform.product_key
    try:
        assert client.connected.wait(10) and client.reason is not None and client.reason.value == 0
        identity = client.wait_message(IDENTITY_TOPIC)
        assert identity.payload.decode() == f'{{"productKey":"{pk}","deviceName":"e2e-paho"}}'
        assert platform.api.device(pk, "e2e-paho")["online"] is True
        assert platform.api.send_message(pk, "e2e-paho", f"/{pk}/e2e-paho/user/get", "hello", 1)
        assert client.wait_message(f"/{pk}/e2e-paho/user/get").payload == b"hello"
        client.client.publish(f"/{pk}/e2e-paho/user/update", b"42", qos=1).wait_for_publish(5)
        assert wait_for(lambda: bool(platform.api.device_messages(pk, "e2e-paho")))
        recent = platform.api.device_messages(pk, "e2e-paho")
        assert recent[-1]["topic"] == f"/{pk}/e2e-paho/user/update"
        # A message the endpoint cannot send is the caller's error (400), not a server error.
        with pytest.raises(PlatformAPIError, match="max") as too_big:
            platform.api.send_message(
                pk, "e2e-paho", f"/{pk}/e2e-paho/user/get", "x" * (300 * 1024), 1
            )
        assert too_big.value.status == 400
    finally:
        client.stop()
    assert wait_for(lambda: platform.api.device(pk, "e2e-paho")["online"] is False)


def test_mosquitto_sub_receives_its_identity(platform: Platform) -> None:
    dev = platform.issue("e2e-mosq")
    result = subprocess.run(
        [
            MOSQUITTO_SUB,
            "-h",
            "127.0.0.1",
            "-p",
            str(platform.server.mqtt_port),
            "--cafile",
            str(platform.server.server_ca),
            "--cert",
            str(dev.cert),
            "--key",
            str(dev.key),
            "-V",
            "mqttv311",
            "-i",
            "AA:BB|securemode=2|",
            "-t",
            f"/{platform.product_key}/e2e-mosq/user/#",
            "-C",
            "1",
            "-W",
            "15",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == (
        f'{{"productKey":"{platform.product_key}","deviceName":"e2e-mosq"}}'
    )


def _code(
    platform: Platform, dev: Device, *, username: str | None = None, keep_alive: int = 300
) -> int:
    client = _raw(platform, dev)
    try:
        return client.connect(keep_alive=keep_alive, username=username).return_code
    finally:
        client.close()


def test_unassociated_sn_is_not_authorised_and_logged(platform: Platform) -> None:
    dev = platform.issue("e2e-nobody", associate=False)
    sn = dev.pair.sn
    assert _code(platform, dev) == codec.CONNACK_NOT_AUTHORIZED
    assert wait_for(lambda: f"cert SN {sn}" in platform.server.log())
    line = next(x for x in platform.server.log().splitlines() if f"cert SN {sn}" in x)
    assert "CONNACK 5" in line
    assert f"issuer {platform.ca.certificate.subject.rfc4514_string()}" in line


def test_disabling_a_device_through_the_api(platform: Platform) -> None:
    dev = platform.issue("e2e-disable")
    live = _raw(platform, dev)
    assert live.connect().return_code == 0
    platform.api.set_device_status(platform.product_key, "e2e-disable", "disabled")
    assert live.closed_by_server()
    assert _code(platform, dev) == codec.CONNACK_NOT_AUTHORIZED
    platform.api.set_device_status(platform.product_key, "e2e-disable", "enabled")
    assert _code(platform, dev) == 0


def test_disabling_and_re_enabling_a_ca_through_the_api(platform: Platform) -> None:
    ca = create_ca("E2E Toggle CA")
    ca_sn = platform.register_ca(ca, "toggle_ca")
    dev = platform.issue("e2e-toggle", ca)
    live = _raw(platform, dev)
    assert live.connect().return_code == 0
    platform.api.set_ca_status(ca_sn, "inactive")
    assert live.closed_by_server()
    with pytest.raises((ssl.SSLError, ConnectionError)):
        _raw(platform, dev).connect()
    platform.api.set_ca_status(ca_sn, "active")
    # no restart and no wait: a new handshake takes the registry's current trust index
    assert _code(platform, dev) == 0


def test_look_alike_ca_cannot_log_in_as_the_others_devices(platform: Platform) -> None:
    (cn,) = platform.ca.certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    twin = create_ca(str(cn.value))  # same subject as the registered CA, other key
    dev = platform.issue("e2e-twin", twin, associate=False)
    platform.associate(platform.ca, dev.name, dev.pair.sn)  # SN associated under the *real* CA
    with pytest.raises((ssl.SSLError, ConnectionError)):
        _raw(platform, dev).connect()  # no registered key verifies the signature


def test_wrong_username_and_keep_alive_through_the_real_server(platform: Platform) -> None:
    dev = platform.issue("e2e-rules")
    assert _code(platform, dev, username=f"someone&{platform.product_key}") == 5
    assert _code(platform, dev, keep_alive=10) == 2
    assert _code(platform, dev, username=f"e2e-rules&{platform.product_key}") == 0
