"""The Locust user that holds one leased device of the fleet for its life.

Both scenarios' users (:class:`simulator.users.DeviceUser`, telemetry and commands, and
:class:`simulator.renewal_scenario.RenewingDeviceUser`, one renewal each) lease a device, set it up,
give the lease back when they stop and report to Locust as request events. That lifecycle is the
rule that keeps a device from being simulated twice (see :mod:`simulator.distribution`); it is
written here once and each scenario fills in what its device does.
"""

from __future__ import annotations

from typing import Any, ClassVar

from locust import User
from locust.env import Environment
from locust.exception import StopUser

from simulator.config import REFUSED, SimulationConfig
from simulator.errors import SimulatorError


class LeasedDeviceUser(User):
    """Lease a device on start, set it up (:meth:`_set_up`), give it back on stop."""

    abstract = True
    #: Locust's request type of this user's events (its statistics table groups by it).
    request_type: ClassVar[str] = "MQTT"

    def __init__(self, environment: Environment) -> None:
        super().__init__(environment)
        self.config: SimulationConfig = SimulationConfig.of(environment)
        self.device_index: int | None = None

    def on_start(self) -> None:
        if getattr(self.environment, REFUSED, False):
            raise StopUser()  # the run was refused as a whole (locust_plugin said why, once)
        config = self.config
        try:
            self.device_index = config.leases.acquire()
        except SimulatorError as exc:
            # Reported once as a failure (visible in the CSV), then this user stops.
            self._fire("lease", 0.0, exc)
            raise StopUser() from exc
        try:
            self._set_up(config, self.device_index)
        except BaseException:
            self.on_stop()  # Locust does not call on_stop when on_start fails
            raise
        self.on_device_ready()

    def _set_up(self, config: SimulationConfig, index: int) -> None:
        """Make the leased device ``index`` (each scenario its own kind)."""
        raise NotImplementedError

    def on_device_ready(self) -> None:
        """Hook for subclasses: called once the device is set up (it connects in the background)."""

    def on_stop(self) -> None:
        """Subclasses close their device first, then call this: the lease goes back."""
        if self.device_index is not None:
            self.config.leases.release(self.device_index)
            self.device_index = None

    def _fire(
        self, name: str, seconds: float, error: BaseException | None, length: int = 0
    ) -> None:
        request: Any = self.environment.events.request
        request.fire(
            request_type=self.request_type,
            name=name,
            response_time=seconds * 1000.0,
            response_length=length,
            exception=error,
            context={"device": self.device_index},
        )


__all__ = ["LeasedDeviceUser"]
