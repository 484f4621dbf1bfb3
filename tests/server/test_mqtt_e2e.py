"""End to end: ``iotx509 server run`` as a process, registration through the HTTP API, devices
connecting with paho-mqtt and mosquitto_sub over mutual TLS.

No sleeps: the server's HTTP API and MQTT endpoint share one registry, and a new handshake (and
CONNECT) reads it as it is when the client arrives, so a change the API has answered is in force
for the next connection; live sessions are re-checked by the endpoint, and tests wait for that
event (the server closing the connection)."""

from __future__ import annotations

import shutil
import ssl
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from device_sdk.platform import IDENTITY_TOPIC
from firmware_helpers.association_csv import Association, render
from firmware_helpers.pki import (
    CertifiedKey,
    create_ca,
    generate_rsa_key,
    issue_device_certificate,
)
from firmware_helpers.platform_client import PlatformAPIError, PlatformClient, UploadFile
from server_stub.launcher import RunningServer, running_server
from server_stub.mqtt import codec
from tests.server.mqtt_harness import Paho, RawClient, wait_for

MOSQUITTO_SUB = shutil.which("mosquitto_sub") or "/usr/bin/mosquitto_sub"


@dataclass
class Platform:
    server: RunningServer
    api: PlatformClient
    product_key: str
    ca: CertifiedKey
    ca_sn: str
    root: Path
    key: object

    def register_ca(self, ca: CertifiedKey, name: str) -> str:
        return self.api.register_ca_with_proof(name, ca).ca_sn

    def device(
        self,
        name: str,
        ca: CertifiedKey | None = None,
        *,
        associate_with: str | None = None,
        associate: bool = True,
    ) -> tuple[Path, Path, CertifiedKey]:
        pair = issue_device_certificate(
            ca or self.ca,
            name,
            product_key=self.product_key,
            key=self.key,  # type: ignore[arg-type]
        )
        cert, key = self.root / f"{name}.cer", self.root / f"{name}.key"
        pair.write(cert, key)
        if associate:
            csv = render([Association(self.product_key, name, pair.sn)])
            self.api.associate(associate_with or self.ca_sn, UploadFile(f"{name}.csv", csv))
        return cert, key, pair

    def raw(self, cert: Path, key: Path) -> RawClient:
        assert self.server.mqtt_port is not None
        return RawClient(self.server.mqtt_port, self.server.server_ca, cert, key)


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    root = tmp_path_factory.mktemp("mqtt-e2e")
    with running_server(root / "data") as server:
        api = PlatformClient(server.http_url, server.token)
        product_key = str(api.create_product("e2e")["productKey"])
        ca = create_ca("E2E Device CA")
        p = Platform(server, api, product_key, ca, "", root, generate_rsa_key())
        p.ca_sn = p.register_ca(ca, "e2e_ca")
        yield p


@dataclass
class _Dev:
    name: str
    cert: Path
    key: Path


def test_paho_connects_gets_identity_and_talks_to_the_cloud(platform: Platform) -> None:
    cert, key, _ = platform.device("e2e-paho")
    assert platform.server.mqtt_port is not None
    client = Paho(
        platform.server.mqtt_port, platform.server.server_ca, _Dev("e2e-paho", cert, key)
    ).start()
    pk = platform.product_key
    try:
        assert client.connected.wait(10) and client.reason is not None and client.reason.value == 0
        identity = client.wait_message(IDENTITY_TOPIC)
        assert identity.payload.decode() == f'{{"productKey":"{pk}","deviceName":"e2e-paho"}}'
        assert platform.api.device(pk, "e2e-paho")["online"] is True
        assert platform.api.send_message(pk, "e2e-paho", f"/{pk}/e2e-paho/user/get", "hello", 1)
        assert client.wait_message(f"/{pk}/e2e-paho/user/get").payload == b"hello"
        client.client.publish(f"/{pk}/e2e-paho/user/update", b"42", qos=1).wait_for_publish(5)
        assert wait_for(lambda: platform.api.device_messages(pk, "e2e-paho"))
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
    cert, key, _ = platform.device("e2e-mosq")
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
            str(cert),
            "--key",
            str(key),
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


def _code(platform: Platform, cert: Path, key: Path, **kw: object) -> int:
    client = platform.raw(cert, key)
    try:
        return client.connect(**kw).return_code  # type: ignore[arg-type]
    finally:
        client.close()


def test_unassociated_sn_is_not_authorised_and_logged(platform: Platform) -> None:
    cert, key, pair = platform.device("e2e-nobody", associate=False)
    assert _code(platform, cert, key) == codec.CONNACK_NOT_AUTHORIZED
    assert wait_for(lambda: f"cert SN {pair.sn}" in platform.server.log())
    line = next(x for x in platform.server.log().splitlines() if f"cert SN {pair.sn}" in x)
    assert "CONNACK 5" in line and "issuer CN=E2E Device CA" in line


def test_disabling_a_device_through_the_api(platform: Platform) -> None:
    cert, key, _ = platform.device("e2e-disable")
    live = platform.raw(cert, key)
    assert live.connect().return_code == 0
    platform.api.set_device_status(platform.product_key, "e2e-disable", "disabled")
    assert live.closed_by_server()
    assert _code(platform, cert, key) == codec.CONNACK_NOT_AUTHORIZED
    platform.api.set_device_status(platform.product_key, "e2e-disable", "enabled")
    assert _code(platform, cert, key) == 0


def test_disabling_and_re_enabling_a_ca_through_the_api(platform: Platform) -> None:
    ca = create_ca("E2E Toggle CA")
    ca_sn = platform.register_ca(ca, "toggle_ca")
    cert, key, _ = platform.device("e2e-toggle", ca, associate_with=ca_sn)
    live = platform.raw(cert, key)
    assert live.connect().return_code == 0
    platform.api.set_ca_status(ca_sn, "inactive")
    assert live.closed_by_server()
    with pytest.raises((ssl.SSLError, ConnectionError)):
        platform.raw(cert, key).connect()
    platform.api.set_ca_status(ca_sn, "active")
    # no restart and no wait: a new handshake takes the registry's current trust index
    assert _code(platform, cert, key) == 0


def test_look_alike_ca_cannot_log_in_as_the_others_devices(platform: Platform) -> None:
    twin = create_ca("E2E Device CA")  # same subject as the registered CA, other key
    cert, key, _ = platform.device("e2e-twin", twin)  # SN associated under the *real* CA
    with pytest.raises((ssl.SSLError, ConnectionError)):
        platform.raw(cert, key).connect()  # OpenSSL already fails the signature


def test_wrong_username_and_keep_alive_through_the_real_server(platform: Platform) -> None:
    cert, key, _ = platform.device("e2e-rules")
    assert _code(platform, cert, key, username=f"someone&{platform.product_key}") == 5
    assert _code(platform, cert, key, keep_alive=10) == 2
    assert _code(platform, cert, key, username=f"e2e-rules&{platform.product_key}") == 0
