"""What one Locust process knows about the simulation: fleet, template, endpoint, leases.

Built once per process in Locust's ``init`` event from the command-line options (see
:mod:`simulator.locust_plugin`) and kept on the Locust ``Environment``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from device_sdk.fileio import open_no_follow
from simulator.errors import FleetError, SimulatorError
from simulator.fleet import Fleet, MqttEndpoint
from simulator.options import (
    KEEPALIVE_DEFAULT,
    MAX_CONNECTING,
    RECONNECT_BASE,
    RECONNECT_CAP,
    STABLE_PERIOD,
)
from simulator.template import DeviceTemplate

if TYPE_CHECKING:
    from simulator.distribution import Leases

_ATTRIBUTE = "iotx509_simulation"
#: Set on the Locust Environment while a run is refused (more users than devices): users stop
#: at once instead of each reporting a failed lease.
REFUSED = "iotx509_refused"


@dataclass
class SimulationConfig:
    fleet: Fleet
    template: DeviceTemplate
    leases: Leases
    endpoint: tuple[str, int]
    server_ca: Path | None = None
    expect_identity: bool = True
    """False for a generic broker (``--no-identity``): no identity wait, no identity event."""
    scenario: str = "steady"
    keepalive: int = KEEPALIVE_DEFAULT
    reconnect_base: float = RECONNECT_BASE
    reconnect_cap: float = RECONNECT_CAP
    stable_period: float = STABLE_PERIOD
    max_connecting: int = MAX_CONNECTING
    lease_log: Path | None = None
    fleet_api_token: str | None = None

    @classmethod
    def of(cls, environment: Any) -> SimulationConfig:
        config = getattr(environment, _ATTRIBUTE, None)
        if config is None:
            raise SimulatorError(
                "the simulation is not configured: run the locustfile with --fleet FLEET "
                "(and import DeviceUser through simulator.locustfile or simulator.locust_plugin)"
            )
        assert isinstance(config, SimulationConfig)
        return config

    def install(self, environment: Any) -> None:
        setattr(environment, _ATTRIBUTE, self)

    def record_lease(self, index: int, device_name: str) -> None:
        """Append ``pid index name`` to the lease log (one O_APPEND write: atomic per line)."""
        if self.lease_log is None:
            return
        line = f"{os.getpid()} {index} {device_name}\n".encode()
        try:
            fd = open_no_follow(self.lease_log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        except OSError as exc:
            raise SimulatorError(
                f"cannot append to the lease log {self.lease_log}: {exc.strerror or exc}"
            ) from exc
        try:
            os.write(fd, line)
        finally:
            os.close(fd)


def endpoint_for(fleet: Fleet, host_option: str | None) -> tuple[str, int]:
    """The fleet's endpoint unless Locust's ``--host mqtts://H:P`` overrides it."""
    if host_option:
        parsed = MqttEndpoint.parse(host_option)
        return parsed.host, parsed.port
    return fleet.mqtt.host, fleet.mqtt.port


def server_ca_for(fleet: Fleet, option: str | None) -> Path | None:
    """``--server-ca PEM`` if given (it must exist), else the fleet's ``serverCa``."""
    if not option:
        return fleet.server_ca_path
    path = Path(option)
    if not path.is_file():
        raise FleetError(f"--server-ca {option}: no such file")
    return path
