"""``iotx509 platform endpoint`` and ``iotx509 platform message send/list``, through the CLI,
against the real server, with a real device (the SDK's client over mutual TLS) receiving."""

from __future__ import annotations

import json
import queue
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from device_sdk.client import ConnectionState, DeviceClient, Message
from device_sdk.credentials import Credentials
from device_sdk.errors import DeviceSDKError
from device_sdk.platform import topic_within_device_space
from server_stub.launcher import RunningServer
from simulator.fleet import Fleet
from tests.simulator.conftest import locust_env, new_fleet


def iotx509(server: RunningServer, *args: str) -> subprocess.CompletedProcess[str]:
    env = locust_env()
    env["IOTX509_SERVER"] = server.http_url
    env["IOTX509_TOKEN"] = server.token
    return subprocess.run(
        [sys.executable, "-m", "iotx509", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )


@pytest.fixture(scope="module")
def two_devices(shared_server: RunningServer, tmp_path_factory: pytest.TempPathFactory) -> Fleet:
    return new_fleet(shared_server, tmp_path_factory.mktemp("msg-fleet") / "fleet", 2)


@pytest.fixture
def online_device(two_devices: Fleet) -> Iterator[tuple[DeviceClient, queue.Queue[Message]]]:
    """Device 0 of the fleet, online, subscribed to its own user/get."""
    entry = two_devices.devices[0]
    online = threading.Event()

    def on_state(state: ConnectionState, _error: DeviceSDKError | None) -> None:
        if state is ConnectionState.ONLINE:
            online.set()

    client = DeviceClient(
        two_devices.mqtt.host,
        two_devices.mqtt.port,
        Credentials.from_files(two_devices.path(entry.cert), two_devices.path(entry.key)),
        server_ca=two_devices.server_ca_path,
        reconnect_base=0.2,
        reconnect_cap=1.0,
        on_connection_state=on_state,
    )
    received: queue.Queue[Message] = queue.Queue()
    client.subscribe("user/get", received.put)
    client.start()  # retries (at the 1 s cap) until the server trusts the fleet's new CA
    try:
        assert online.wait(60), f"the device did not come online: {client.last_error}"
        # SUBSCRIBE went out before this PUBLISH; its PUBACK means the server processed both.
        assert client.publish("user/update", b'{"t": 21.5}', qos=1).wait(30)
        yield client, received
    finally:
        client.disconnect()


def test_endpoint_cli_prints_the_endpoint_and_saves_the_server_ca(
    shared_server: RunningServer, tmp_path: Path
) -> None:
    out = tmp_path / "server-ca.pem"
    result = iotx509(shared_server, "platform", "endpoint", "--server-ca-out", str(out))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"mqtts://127.0.0.1:{shared_server.mqtt_port}"
    assert out.read_bytes() == shared_server.server_ca.read_bytes()
    as_json = json.loads(iotx509(shared_server, "platform", "endpoint", "--json").stdout)
    assert as_json["mqtt"] == f"mqtts://127.0.0.1:{shared_server.mqtt_port}"
    assert as_json["serverCa"] == shared_server.server_ca.read_text()


def test_endpoint_needs_the_account_token(shared_server: RunningServer) -> None:
    request = urllib.request.Request(f"{shared_server.http_url}/api/v1/endpoint")
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with pytest.raises(urllib.error.HTTPError) as caught:
        opener.open(request, timeout=30)
    assert caught.value.code == 401
    caught.value.close()


def test_send_reaches_the_device_and_list_shows_what_it_sent(
    shared_server: RunningServer,
    two_devices: Fleet,
    online_device: tuple[DeviceClient, queue.Queue[Message]],
) -> None:
    _client, received = online_device
    pk, dn = two_devices.devices[0].product_key, two_devices.devices[0].device_name
    result = iotx509(
        shared_server,
        "platform",
        "message",
        "send",
        pk,
        dn,
        f"/{pk}/{dn}/user/get",
        '{"led": "on"}',
        "--qos",
        "1",
    )
    assert result.returncode == 0, result.stderr
    assert f"delivered to {pk}/{dn}" in result.stdout
    message = received.get(timeout=30)
    assert (message.topic, message.payload, message.qos) == (
        f"/{pk}/{dn}/user/get",
        b'{"led": "on"}',
        1,
    )

    listed = iotx509(shared_server, "platform", "message", "list", pk, dn)
    assert listed.returncode == 0, listed.stderr
    assert f'/{pk}/{dn}/user/update  qos=1  {{"t": 21.5}}' in listed.stdout
    as_json = json.loads(
        iotx509(shared_server, "platform", "message", "list", pk, dn, "--json").stdout
    )
    assert as_json[-1]["topic"] == f"/{pk}/{dn}/user/update"


@pytest.mark.parametrize("which", ["relative", "other device", "prefix trick", "sys of other"])
def test_topics_outside_the_device_space_are_refused_with_the_rule(
    shared_server: RunningServer,
    two_devices: Fleet,
    online_device: tuple[DeviceClient, queue.Queue[Message]],
    which: str,
) -> None:
    pk, dn = two_devices.devices[0].product_key, two_devices.devices[0].device_name
    other = two_devices.devices[1].device_name
    topic = {
        "relative": "user/get",
        "other device": f"/{pk}/{other}/user/get",
        "prefix trick": f"/{pk}/{dn}x/user/get",
        "sys of other": f"/sys/{pk}/{other}/thing/service",
    }[which]
    assert not topic_within_device_space(pk, dn, topic)
    result = iotx509(shared_server, "platform", "message", "send", pk, dn, topic, "x")
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert f"topic {topic!r} is outside device {pk}/{dn}'s topic space" in result.stderr
    assert f"/{pk}/{dn}/" in result.stderr and f"/sys/{pk}/{dn}/" in result.stderr
    # The device got nothing: a message sent after the refusal is the next one it receives.
    _client, received = online_device
    ok = iotx509(
        shared_server, "platform", "message", "send", pk, dn, f"/{pk}/{dn}/user/get", "after"
    )
    assert ok.returncode == 0, ok.stderr
    assert received.get(timeout=30).payload == b"after"


def test_the_api_answers_400_for_a_relative_topic(
    shared_server: RunningServer,
    two_devices: Fleet,
) -> None:
    from firmware_helpers.platform_client import PlatformAPIError, PlatformClient

    pk, dn = two_devices.devices[0].product_key, two_devices.devices[0].device_name
    with pytest.raises(PlatformAPIError) as caught:
        PlatformClient(shared_server.http_url, shared_server.token).send_message(
            pk, dn, "user/get", "x"
        )
    assert caught.value.status == 400
    assert "allowed: topics under" in str(caught.value)
