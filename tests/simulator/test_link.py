"""The simulator's own device connection (``simulator/link.py``) against real servers.

- Devices connect to the real reference server from a monkey-patched child process (as in a
  Locust worker) with every socket above FD_SETSIZE; eight connect at once, so their TLS
  connections are made from the one shared context in turn, and each must be told its own
  identity (the server saw its own certificate).
- A device that loses its connection in a network blip (a proxy resets it; the broker stays up)
  comes back and resumes its TLS session: Mosquitto issues session tickets.
- The MQTT codec is sans-IO: fed bytes in any split, it returns the same packets.
"""

from __future__ import annotations

import json
import random
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from device_sdk.errors import CredentialError
from simulator import mqtt_wire
from simulator.device import SeededJitter
from simulator.device_tls import DeviceTls
from simulator.errors import SimulatorError
from simulator.fleet import Fleet
from simulator.link import set_max_connecting
from tests.sdk.brokers import run_mosquitto
from tests.simulator.conftest import locust_env, run_above_fd_setsize
from tests.simulator.tcp_proxy import CountingProxy

IOTX509 = (sys.executable, "-m", "iotx509")

ABOVE_FD_SETSIZE_IMPORTS = """from simulator.device import SimDevice
"""
ABOVE_FD_SETSIZE_RUN = r"""
def run(device):
    events = []
    sim = SimDevice(fleet.mqtt.host, fleet.mqtt.port, fleet.path(device.cert),
                    fleet.path(device.key), device.cert_sn, server_ca=fleet.server_ca_path,
                    expected=device.identity,
                    on_event=lambda name, seconds, error: events.append(
                        [name, seconds, repr(error) if error else None]))
    sim.keep_connected()
    with gevent.Timeout(30):
        while not sim.online:
            gevent.sleep(0.05)
    fd = sim.link.fileno()
    acked = sim.publish("user/update", b'{"n": 1}', qos=1)
    results.append({"fd": fd, "identity": sim.identity.device_name, "puback_s": acked,
                    "events": events})
    sim.close()

"""


def _report_after_a_blip(command: list[str], proxy: CountingProxy) -> dict[str, Any]:
    """Run the device child until it is online, drop every proxied link (the blip), let it
    reconnect, and return its JSON report."""
    child = subprocess.Popen(
        command,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=locust_env(),
    )
    assert child.stdout is not None and child.stdin is not None
    assert child.stdout.readline().strip() == "online", child.stderr.read() if child.stderr else ""
    proxy.drop_all()
    out, err = child.communicate("go\n", timeout=60)
    assert child.returncode == 0, err[-3000:]
    report: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return report


def test_devices_connect_above_fd_setsize_each_with_its_own_certificate(
    shared_fleet: Fleet,
) -> None:
    results = run_above_fd_setsize(shared_fleet, ABOVE_FD_SETSIZE_IMPORTS, ABOVE_FD_SETSIZE_RUN)
    assert len(results) == 8
    assert all(r["fd"] >= 1024 for r in results), results
    # Each device was told its own identity: the server saw each device's own certificate.
    assert sorted(r["identity"] for r in results) == sorted(
        d.device_name for d in shared_fleet.devices[:8]
    )
    assert all(r["puback_s"] > 0 for r in results)
    for r in results:
        # connect and identity timed, both successful (the identity is the fleet's), nothing lost
        names = [(name, error) for name, _seconds, error in r["events"]]
        assert names == [("connect", None), ("identity", None)], r["events"]
        assert all(seconds > 0 for _name, seconds, _error in r["events"]), r["events"]


BLIP = r"""
from gevent import monkey; monkey.patch_all()
import json, sys
import gevent
from simulator.device import SimDevice
from simulator.fleet import Fleet

fleet = Fleet.load(sys.argv[1])
port, server_ca, platform = int(sys.argv[2]), sys.argv[3], sys.argv[4] == "platform"
device = fleet.devices[0]
events = []
sim = SimDevice("127.0.0.1", port, fleet.path(device.cert), fleet.path(device.key),
                device.cert_sn, server_ca=server_ca, expect_identity=platform,
                expected=device.identity if platform else None,
                backoff=None, rng="test:0",
                on_event=lambda name, seconds, error: events.append(
                    [name, repr(error) if error else None]))
sim.keep_connected()
with gevent.Timeout(30):
    while not sim.online:
        gevent.sleep(0.02)
    print("online", flush=True)
    sys.stdin.readline()  # the test cuts the connection, then says go
    while sim.link.handshakes < 2 or not sim.online:
        gevent.sleep(0.02)
sim.publish("user/update", b"{}", qos=1)
print(json.dumps({"handshakes": sim.link.handshakes, "resumed": sim.link.resumed,
                  "events": events}), flush=True)
sim.close()
"""


def child_command(fleet_dir: Path, port: int, server_ca: Path) -> list[str]:
    return [sys.executable, "-c", BLIP, str(fleet_dir), str(port), str(server_ca)]


def test_a_device_back_from_a_network_blip_resumes_its_tls_session(tmp_path: Path) -> None:
    fleet_dir = tmp_path / "fleet"
    made = subprocess.run(
        [
            *IOTX509,
            "fleet",
            "create",
            "--no-platform",
            "--count",
            "1",
            "--out",
            str(fleet_dir),
            "--mqtt",
            "mqtts://127.0.0.1:1",
            "--jobs",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=locust_env(),
    )
    assert made.returncode == 0, made.stderr
    fleet = Fleet.load(fleet_dir)
    with (
        run_mosquitto(tmp_path / "mosquitto", fleet.path("ca/ca.cer").read_bytes()) as broker,
        CountingProxy("127.0.0.1", broker.port).running() as proxy,
    ):
        report = _report_after_a_blip(
            [*child_command(fleet_dir, proxy.port, broker.server_ca_path), "broker"], proxy
        )
    assert report["handshakes"] == 2, report
    assert report["resumed"] == 1, report  # the second handshake resumed the first session
    names = [name for name, _error in report["events"]]
    assert names == ["connect", "connection lost", "reconnect"], report["events"]
    assert report["events"][1][1].startswith("ConnectionFailedError"), report["events"]


def test_back_from_a_blip_on_the_reference_server_it_resumes_and_is_told_its_identity(
    shared_fleet: Fleet,
) -> None:
    """The reference server issues session tickets too; a resumed session still gets the
    identity message (the server attributes every session again)."""
    ca = shared_fleet.server_ca_path
    assert ca is not None
    with CountingProxy(shared_fleet.mqtt.host, shared_fleet.mqtt.port).running() as proxy:
        report = _report_after_a_blip(
            [*child_command(shared_fleet.directory, proxy.port, ca), "platform"], proxy
        )
    assert (report["handshakes"], report["resumed"]) == (2, 1), report
    names = [name for name, _error in report["events"]]
    assert names == ["connect", "identity", "connection lost", "reconnect", "identity"], report
    assert [error for name, error in report["events"] if name != "connection lost"] == [None] * 4


def test_a_key_that_is_not_the_certificates_is_refused_with_the_sdks_message(
    shared_fleet: Fleet,
) -> None:
    one, other = shared_fleet.devices[0], shared_fleet.devices[1]
    tls = DeviceTls(shared_fleet.path(one.cert), shared_fleet.path(other.key), None)
    with socket.socket() as sock, pytest.raises(CredentialError) as raised:
        tls.wrap(sock, server_hostname="127.0.0.1", session=None)
    assert "key" in str(raised.value).lower(), raised.value
    # The good pair loads (the refusal above is about the pair, not the context).
    good = DeviceTls(shared_fleet.path(one.cert), shared_fleet.path(one.key), None)
    with socket.socket() as sock:
        good.wrap(sock, server_hostname="127.0.0.1", session=None).close()


def test_max_connecting_below_one_is_refused() -> None:
    with pytest.raises(SimulatorError, match="--max-connecting must be >= 1, not 0"):
        set_max_connecting(0)


def test_backoff_draws_repeat_per_device_seed_without_a_generator_per_device() -> None:
    a, b, c = SeededJitter("1:backoff:7"), SeededJitter("1:backoff:7"), SeededJitter("1:backoff:8")
    draws = [a.uniform(0, 10) for _ in range(20)]
    assert draws == [b.uniform(0, 10) for _ in range(20)]
    assert draws != [c.uniform(0, 10) for _ in range(20)]
    assert all(0 <= d <= 10 for d in draws)
    assert len(set(draws)) == 20


# --- the MQTT codec (sans-IO) ------------------------------------------------------------------


def _server_bytes() -> bytes:
    connack = b"\x20\x02\x00\x00"
    identity = mqtt_wire.publish("/ext/auth/identity/response", b'{"productKey":"a"}', 0)
    command = mqtt_wire.publish("/pk/dn/user/get", b"x" * 300, 1, packet_id=7)  # 2-byte length
    puback = mqtt_wire.puback(9)
    suback = b"\x90\x03\x00\x05\x80"
    pingresp = b"\xd0\x00"
    return connack + identity + command + puback + suback + pingresp


EXPECTED = [
    mqtt_wire.Connack(0),
    mqtt_wire.Publish("/ext/auth/identity/response", b'{"productKey":"a"}', 0, None),
    mqtt_wire.Publish("/pk/dn/user/get", b"x" * 300, 1, 7),
    mqtt_wire.Ack(mqtt_wire.PUBACK, 9),
    mqtt_wire.Ack(mqtt_wire.SUBACK, 5, b"\x80"),
    mqtt_wire.PingResp(),
]


def test_the_parser_returns_the_same_packets_however_the_bytes_are_split() -> None:
    data = _server_bytes()
    assert mqtt_wire.Parser().feed(data) == EXPECTED
    rng = random.Random(3)
    for _ in range(50):
        parser, packets, at = mqtt_wire.Parser(), [], 0
        while at < len(data):
            step = rng.randint(1, 40)
            packets += parser.feed(data[at : at + step])
            at += step
        assert packets == EXPECTED


def test_the_parser_refuses_what_a_device_never_gets() -> None:
    with pytest.raises(mqtt_wire.ServerPacketError, match="type 1, which a device never gets"):
        mqtt_wire.Parser().feed(mqtt_wire.connect("c", 60))
    with pytest.raises(mqtt_wire.ServerPacketError, match="malformed remaining length"):
        mqtt_wire.Parser().feed(b"\x30\xff\xff\xff\xff\x01")
    with pytest.raises(mqtt_wire.ServerPacketError, match="limit"):
        mqtt_wire.Parser().feed(b"\x30\xff\xff\x7f")
    with pytest.raises(mqtt_wire.ServerPacketError, match="malformed MQTT packet of type 3"):
        mqtt_wire.Parser().feed(b"\x30\x01\x00")


def test_connect_and_publish_encode_mqtt_3_1_1() -> None:
    assert mqtt_wire.connect("dev|securemode=2|", 300, "dn&pk") == (
        b"\x10\x24\x00\x04MQTT\x04\x82\x01\x2c\x00\x11dev|securemode=2|\x00\x05dn&pk"
    )
    assert mqtt_wire.publish("a/b", b"hi", 1, packet_id=258) == b"\x32\x09\x00\x03a/b\x01\x02hi"
    assert mqtt_wire.subscribe(1, "t", 1) == b"\x82\x06\x00\x01\x00\x01t\x01"
    with pytest.raises(ValueError, match="QoS 2 is not supported"):
        mqtt_wire.publish("t", b"", 2)
