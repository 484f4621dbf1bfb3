"""Locust entry point of the ``renewal`` scenario (``iotx509 fleet run FLEET --scenario renewal``
picks it):

    locust -f simulator/renewal_locustfile.py --headless -u 100 -r 20 -t 60s --fleet FLEET \\
        --scenario renewal --csv out/renewal

Every simulated user is one device of the fleet that renews its certificate once with the SDK
(:class:`simulator.renewal_scenario.RenewingDeviceUser`).
"""

from __future__ import annotations

from simulator import locust_plugin  # noqa: F401  (registers the options and listeners)
from simulator.renewal_scenario import RenewingDeviceUser


class RenewingDevice(RenewingDeviceUser):
    """A fleet device renewing its certificate."""
