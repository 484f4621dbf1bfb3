"""Devices on gevent's loop work with file descriptors above FD_SETSIZE (1024).

paho's own loop calls ``select()``, which refuses descriptors >= 1024; a Locust worker holding
thousands of devices has such descriptors. Here a child process (monkey-patched like Locust)
first occupies 1,100 descriptors, so every device socket lands above 1024, then connects real
fleet devices to the real server, checks their identity and publishes with QoS 1.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from simulator.fleet import Fleet
from tests.simulator.conftest import locust_env

CHILD = r"""
from gevent import monkey; monkey.patch_all()
import json, os, socket, sys
import gevent
from simulator.credentials import load_device_credentials
from simulator.device import SimDevice
from simulator.fleet import Fleet

fleet = Fleet.load(sys.argv[1])
filler = [os.open(os.devnull, os.O_RDONLY) for _ in range(1100)]
results = []

def run(device):
    creds = load_device_credentials(fleet.path(device.cert), fleet.path(device.key))
    sim = SimDevice(fleet.mqtt.host, fleet.mqtt.port, creds, server_ca=fleet.server_ca_path,
                    expected=device.identity)
    timing = sim.connect()
    fd = sim._client.socket().fileno()
    acked = sim.publish("user/update", b'{"n": 1}', qos=1)
    results.append({"fd": fd, "identity": str(timing.identity_value.device_name),
                    "puback_s": acked})
    sim.close()

gevent.joinall([gevent.spawn(run, d) for d in fleet.devices[:8]], raise_error=True)
print(json.dumps(results))
"""


def test_devices_on_the_gevent_loop_work_above_fd_setsize(shared_fleet: Fleet) -> None:
    result = subprocess.run(
        [sys.executable, "-c", CHILD, str(shared_fleet.directory)], capture_output=True,
        text=True, timeout=120, env=locust_env(), cwd=Path(__file__).parent,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads(result.stdout.strip().splitlines()[-1])
    assert len(results) == 8
    assert all(r["fd"] >= 1024 for r in results), results
    assert sorted(r["identity"] for r in results) == sorted(
        d.device_name for d in shared_fleet.devices[:8]
    )
    assert all(r["puback_s"] > 0 for r in results)
