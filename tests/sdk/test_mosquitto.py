"""The SDK against a real Mosquitto 2 with ``require_certificate true`` (generic-broker path:
``expect_identity=False``), with the real mosquitto_pub/mosquitto_sub clients on the other side."""

from __future__ import annotations

import queue
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from device_sdk import (
    CertificateRejectedError,
    ConnectionState,
    Credentials,
    DeviceClient,
    IdentityTimeoutError,
    Message,
    ServerUntrustedError,
)
from device_sdk.errors import DeviceSDKError
from device_sdk.identity import Identity
from device_sdk.identity_store import IdentityStore
from firmware_helpers.pki import create_ca, issue_device_certificate
from tests.sdk.brokers import Mosquitto, run_mosquitto
from tests.sdk.conftest import PK

MOSQUITTO_PUB = shutil.which("mosquitto_pub")
MOSQUITTO_SUB = shutil.which("mosquitto_sub")


@pytest.fixture
def creds(device_files: tuple[Path, Path]) -> Credentials:
    return Credentials.from_files(*device_files)


def _client(broker: Mosquitto, creds: Credentials, **kwargs: Any) -> DeviceClient:
    kwargs.setdefault("expect_identity", False)
    return DeviceClient("127.0.0.1", broker.port, creds, server_ca=broker.server_ca_path, **kwargs)


def _tool_args(broker: Mosquitto, pki: Any, tmp_path: Path, name: str) -> list[str]:
    cert, key, _ = pki.write_device(PK, name, directory=tmp_path / name)
    return [
        "-h",
        "127.0.0.1",
        "-p",
        str(broker.port),
        "--cafile",
        str(broker.server_ca_path),
        "--cert",
        str(cert),
        "--key",
        str(key),
        "-q",
        "1",
        "-i",
        name,
    ]


def test_publish_and_subscribe_through_mosquitto(
    mosquitto: Mosquitto, creds: Credentials, pki: Any, tmp_path: Path
) -> None:
    if MOSQUITTO_PUB is None or MOSQUITTO_SUB is None:
        pytest.skip("mosquitto-clients is not installed")
    received: queue.Queue[Message] = queue.Queue()
    with _client(mosquitto, creds) as client:
        assert client.connect(timeout=10) is None  # a generic broker tells no identity
        assert client.state is ConnectionState.ONLINE
        client.subscribe("devices/sensor01/in", received.put, qos=1)
        # the device receives what the real mosquitto_pub sends
        sub_ready = time.monotonic() + 5
        while time.monotonic() < sub_ready:  # wait for SUBACK by probing with our own publish
            client.publish("devices/sensor01/in", b"probe", qos=1).wait(5)
            try:
                if received.get(timeout=0.5).payload == b"probe":
                    break
            except queue.Empty:
                continue
        subprocess.run(
            [
                MOSQUITTO_PUB,
                *_tool_args(mosquitto, pki, tmp_path, "pubtool"),
                "-t",
                "devices/sensor01/in",
                "-m",
                "hello device",
            ],
            check=True,
            timeout=20,
        )
        msg = received.get(timeout=10)
        assert (msg.topic, msg.payload, msg.qos) == ("devices/sensor01/in", b"hello device", 1)
        # the real mosquitto_sub receives what the device publishes (QoS 1, acknowledged)
        sub = subprocess.Popen(
            [
                MOSQUITTO_SUB,
                *_tool_args(mosquitto, pki, tmp_path, "subtool"),
                "-t",
                "devices/sensor01/out",
                "-C",
                "1",
                "-W",
                "20",
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            deadline = time.monotonic() + 15
            while sub.poll() is None and time.monotonic() < deadline:
                assert client.publish("devices/sensor01/out", b"hello cloud", qos=1).wait(5)
                try:
                    out, _ = sub.communicate(timeout=0.5)
                    break
                except subprocess.TimeoutExpired:
                    continue
            else:
                out = sub.stdout.read() if sub.stdout else ""
        finally:
            if sub.poll() is None:
                sub.kill()
                sub.wait()
        assert out.strip() == "hello cloud"
    final: ConnectionState = client.state  # (read again: the context manager stopped it)
    assert final is ConnectionState.STOPPED


def test_wrong_server_ca_is_server_untrusted(mosquitto: Mosquitto, creds: Credentials) -> None:
    impostor = create_ca("Not The Server CA")
    client = DeviceClient(
        "127.0.0.1", mosquitto.port, creds, server_ca=impostor.cert_pem(), expect_identity=False
    )
    with pytest.raises(
        ServerUntrustedError, match="could not be verified against the server CA"
    ) as info:
        client.connect(timeout=10)
    assert info.value.__cause__ is not None
    assert client.state is ConnectionState.STOPPED


def test_server_name_mismatch_is_server_untrusted(mosquitto: Mosquitto, creds: Credentials) -> None:
    client = _client(mosquitto, creds, server_hostname="broker.example.com")
    with pytest.raises(ServerUntrustedError, match=r"does not name 'broker\.example\.com'"):
        client.connect(timeout=10)
    # the expected name can differ from the connect address when the certificate carries it
    with _client(mosquitto, creds, server_hostname="localhost") as ok:
        ok.connect(timeout=10)


def _foreign_creds() -> Credentials:
    stranger = create_ca("Unregistered CA")
    dev = issue_device_certificate(stranger, "sensor99", product_key=PK)
    return Credentials.from_pem(dev.cert_pem(), dev.key_pem())


def test_device_certificate_from_an_untrusted_ca_is_rejected_tls13(mosquitto: Mosquitto) -> None:
    client = _client(mosquitto, _foreign_creds())
    with pytest.raises(
        CertificateRejectedError, match="registered with the platform and active"
    ) as info:
        client.connect(timeout=10)
    assert info.value.__cause__ is not None


def test_device_certificate_from_an_untrusted_ca_is_rejected_tls12(
    pki: Any, tmp_path: Path
) -> None:
    with run_mosquitto(tmp_path / "mq12", pki.ca.cert_pem(), tls_version="tlsv1.2") as broker:
        client = _client(broker, _foreign_creds())
        with pytest.raises(CertificateRejectedError, match="refused this device's certificate"):
            client.connect(timeout=10)


def test_broker_without_identity_delivery_times_out_with_a_hint(
    mosquitto: Mosquitto, creds: Credentials
) -> None:
    client = _client(mosquitto, creds, expect_identity=True, identity_timeout=1.0)
    with pytest.raises(IdentityTimeoutError, match="expect_identity=False"):
        client.connect(timeout=10)
    assert client.state is ConnectionState.STOPPED


def test_stored_identity_is_sent_as_username(
    mosquitto: Mosquitto, creds: Credentials, tmp_path: Path
) -> None:
    store = tmp_path / "identity.json"
    IdentityStore(store).save(Identity(PK, "sensor01"), creds.certificate)
    with _client(mosquitto, creds, identity_store=store, client_id="username-check") as client:
        client.connect(timeout=10)
    deadline = time.monotonic() + 5
    pattern = re.compile(r"as username-check\|securemode=2\| .*u'sensor01&" + PK + "'")
    while not pattern.search(mosquitto.log()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert pattern.search(mosquitto.log()), mosquitto.log()[-2000:]


def test_restart_reconnects_and_sends_the_offline_queue(
    pki: Any, creds: Credentials, tmp_path: Path
) -> None:
    states: list[tuple[ConnectionState, DeviceSDKError | None]] = []
    workdir = tmp_path / "mq"
    server_ca = create_ca("Restart Server CA")
    with run_mosquitto(workdir, pki.ca.cert_pem(), server_ca=server_ca) as broker:
        port = broker.port
        client = DeviceClient(
            "127.0.0.1",
            port,
            creds,
            server_ca=server_ca.cert_pem(),
            expect_identity=False,
            reconnect_base=0.1,
            reconnect_cap=0.5,
            on_connection_state=lambda s, e: states.append((s, e)),
        )
        client.connect(timeout=10)
    # the broker is gone: QoS 1 publishes wait in the offline queue
    deadline = time.monotonic() + 10
    while client.state is ConnectionState.ONLINE and time.monotonic() < deadline:
        time.sleep(0.05)
    deliveries = [
        client.publish(f"queued/{n}", f"m{n}".encode(), qos=1, retain=True) for n in range(3)
    ]
    assert all(d.queued and not d.is_published for d in deliveries)
    assert any(s is ConnectionState.OFFLINE and e is not None for s, e in states)
    with run_mosquitto(workdir, pki.ca.cert_pem(), server_ca=server_ca, port=port) as broker:
        assert all(d.wait(15) for d in deliveries)
        assert len(client.offline_queue) == 0 and client.state is ConnectionState.ONLINE
        # retained, so a subscriber that comes later sees every queued message
        got: queue.Queue[Message] = queue.Queue()
        with _client(broker, creds, client_id="reader") as reader:
            reader.connect(timeout=10)
            reader.subscribe("queued/#", got.put)
            payloads = sorted(got.get(timeout=10).payload for _ in range(3))
        assert payloads == [b"m0", b"m1", b"m2"]
        client.disconnect()
