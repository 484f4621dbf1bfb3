"""The SDK's ``DeviceClient`` on the gevent driver (``simulator/gevent_loop.py``) works with file
descriptors above FD_SETSIZE (1024): the way to run the SDK's own client under Locust.

paho's own loop calls ``select()``, which refuses descriptors >= 1024; a Locust worker holding
thousands of devices has such descriptors. Here a child process (monkey-patched like Locust)
first occupies 1,100 descriptors, so every device socket lands above 1024, then connects real
fleet devices to the real server, checks the identities and publishes with QoS 1.
(The simulator's own devices, :mod:`simulator.link`, are tested in ``test_link.py``.)
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
import json, os, sys
import gevent
from device_sdk import Credentials, DeviceClient
from device_sdk.client import ConnectionState
from simulator.fleet import Fleet
from simulator.gevent_loop import shared_loop

fleet = Fleet.load(sys.argv[1])
filler = [os.open(os.devnull, os.O_RDONLY) for _ in range(1100)]
results = []

def run(device):
    states = []
    creds = Credentials.from_files(fleet.path(device.cert), fleet.path(device.key),
                                   check_key=False)
    client = DeviceClient(fleet.mqtt.host, fleet.mqtt.port, creds, server_ca=fleet.server_ca_path,
                          network=shared_loop(),
                          on_connection_state=lambda state, error: states.append(
                              [state.value, repr(error) if error else None]))
    client.start()
    with gevent.Timeout(30):
        while client.state is not ConnectionState.ONLINE:
            gevent.sleep(0.05)
    fds = shared_loop().fds()
    acked = client.publish("user/update", b'{"n": 1}', qos=1).wait(30)
    results.append({"fds": fds, "identity": client.identity.device_name, "acked": acked,
                    "states": states})
    client.disconnect()

gevent.joinall([gevent.spawn(run, d) for d in fleet.devices[:8]], raise_error=True)
print(json.dumps(results))
"""


def test_devices_on_the_gevent_loop_work_above_fd_setsize(shared_fleet: Fleet) -> None:
    result = subprocess.run(
        [sys.executable, "-c", CHILD, str(shared_fleet.directory)],
        capture_output=True,
        text=True,
        timeout=120,
        env=locust_env(),
        cwd=Path(__file__).parent,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads(result.stdout.strip().splitlines()[-1])
    assert len(results) == 8
    fds = [fd for r in results for fd in r["fds"]]
    assert fds and all(fd >= 1024 for fd in fds), fds
    assert sorted(r["identity"] for r in results) == sorted(
        d.device_name for d in shared_fleet.devices[:8]
    )
    assert all(r["acked"] for r in results)
    for r in results:
        assert r["states"][:2] == [["connecting", None], ["online", None]], r["states"]
