"""The SDK's ``DeviceClient`` on the gevent driver (``simulator/gevent_loop.py``) works with file
descriptors above FD_SETSIZE (1024): the way to run the SDK's own client under Locust.

paho's own loop calls ``select()``, which refuses descriptors >= 1024; a Locust worker holding
thousands of devices has such descriptors. Here a child process (monkey-patched like Locust)
first occupies 1,100 descriptors, so every device socket lands above 1024, then connects real
fleet devices to the real server, checks the identities and publishes with QoS 1.
(The simulator's own devices, :mod:`simulator.link`, are tested in ``test_link.py``.)
"""

from __future__ import annotations

from simulator.fleet import Fleet
from tests.simulator.conftest import run_above_fd_setsize

CHILD_IMPORTS = """from device_sdk import Credentials, DeviceClient
from device_sdk.client import ConnectionState
from simulator.gevent_loop import shared_loop
"""
CHILD_RUN = r"""
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

"""


def test_devices_on_the_gevent_loop_work_above_fd_setsize(shared_fleet: Fleet) -> None:
    results = run_above_fd_setsize(shared_fleet, CHILD_IMPORTS, CHILD_RUN)
    assert len(results) == 8
    fds = [fd for r in results for fd in r["fds"]]
    assert fds and all(fd >= 1024 for fd in fds), fds
    assert sorted(r["identity"] for r in results) == sorted(
        d.device_name for d in shared_fleet.devices[:8]
    )
    assert all(r["acked"] for r in results)
    for r in results:
        assert r["states"][:2] == [["connecting", None], ["online", None]], r["states"]
