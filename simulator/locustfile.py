"""Locust entry point of the fleet simulator.

    locust -f simulator/locustfile.py --headless -u 1000 -r 100 -t 60s --fleet FLEET --csv out/run

Every simulated user is one device of the fleet (see :class:`simulator.users.DeviceUser`); the
options are described in :mod:`simulator.locust_plugin` (``locust -f ... --help`` lists them).
"""

from __future__ import annotations

from simulator import locust_plugin  # noqa: F401  (registers the options and listeners)
from simulator.users import DeviceUser


class SimulatedDevice(DeviceUser):
    """A device behaving as the template says."""
