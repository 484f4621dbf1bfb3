"""The simulator's hooks into Locust: command-line options, set-up, scenario start and stop.

Importing this module registers the listeners (``simulator/locustfile.py`` does it; so can your
own locustfile). Options, all also settable as environment variables or in a Locust config file:

``--fleet FLEET`` (required), ``--template FILE``, ``--scenario steady|reconnect-storm|revocation``,
``--fault-at S``, ``--restore-at S``, ``--fault-command CMD``, ``--keepalive S``,
``--reconnect-base S``, ``--reconnect-cap S``, ``--stable-period S``, ``--lease-log FILE``.
The endpoint comes from the fleet unless ``--host mqtts://HOST:PORT`` overrides it.
"""

from __future__ import annotations

import logging
import resource
import sys
from pathlib import Path
from typing import Any

from locust import events
from locust.env import Environment
from locust.runners import WorkerRunner

from simulator.config import SimulationConfig, endpoint_for
from simulator.distribution import Leases
from simulator.errors import SimulatorError
from simulator.fleet import Fleet
from simulator.scenarios import SCENARIOS, ScenarioPlan, ScenarioRunner
from simulator.template import DeviceTemplate

log = logging.getLogger(__name__)

_LEASES = "iotx509_leases"
_SCENARIO = "iotx509_scenario"
#: Each device holds one socket; Locust raises the soft limit only to 10,000.
WANTED_OPEN_FILES = 65_536


def add_options(parser: Any, **_kw: Any) -> None:
    group = parser
    group.add_argument("--fleet", env_var="IOTX509_FLEET", default=None,
                       help="fleet directory made by 'iotx509 fleet create' (required)")
    group.add_argument("--template", env_var="IOTX509_TEMPLATE", default=None,
                       help="device template JSON (default: the one shipped with the simulator)")
    group.add_argument("--scenario", env_var="IOTX509_SCENARIO", default="steady",
                       choices=SCENARIOS, help="steady, reconnect-storm or revocation")
    group.add_argument("--fault-at", type=float, default=30.0,
                       help="seconds into the test when the scenario's fault happens (default 30)")
    group.add_argument("--restore-at", type=float, default=None,
                       help="revocation: seconds into the test when the CA is enabled again")
    group.add_argument("--fault-command", default=None,
                       help="reconnect-storm: command that restarts the endpoint")
    group.add_argument("--keepalive", type=int, default=300,
                       help="MQTT keep-alive in seconds (30..1200, default 300)")
    group.add_argument("--reconnect-base", type=float, default=1.0,
                       help="backoff base in seconds (the SDK's default 1)")
    group.add_argument("--reconnect-cap", type=float, default=120.0,
                       help="backoff cap in seconds (the SDK's default 120)")
    group.add_argument("--stable-period", type=float, default=30.0,
                       help="seconds a connection must last before the backoff resets")
    group.add_argument("--lease-log", default=None, include_in_web_ui=False,
                       help="append 'pid index DeviceName' for every device a user takes")


def on_init(environment: Environment, **_kw: Any) -> None:
    _raise_open_file_limit()
    setattr(environment, _LEASES, Leases(environment))
    options = environment.parsed_options
    if options is not None and getattr(options, "fleet", None):
        configure(environment)
    elif not isinstance(environment.runner, WorkerRunner):
        sys.exit("error: --fleet FLEET is required (a directory made by 'iotx509 fleet create')")


def on_test_start(environment: Environment, **_kw: Any) -> None:
    # Workers started without --fleet get the master's options only now.
    config = configure(environment)
    if isinstance(environment.runner, WorkerRunner):
        return
    plan = ScenarioPlan(
        name=config.scenario,
        fault_at=_option(environment, "fault_at", 30.0),
        restore_at=_option(environment, "restore_at", None),
        fault_command=_option(environment, "fault_command", None),
    )
    runner = ScenarioRunner(
        environment, plan, http_url=config.fleet.http_url, token=config.fleet_api_token,
        ca_sn=config.fleet.ca.ca_sn if config.fleet.ca else None,
    )
    old = getattr(environment, _SCENARIO, None)
    if isinstance(old, ScenarioRunner):
        old.stop()
    setattr(environment, _SCENARIO, runner)
    runner.start()


def on_test_stop(environment: Environment, **_kw: Any) -> None:
    runner = getattr(environment, _SCENARIO, None)
    if isinstance(runner, ScenarioRunner):
        runner.stop()


def _listen(hook: Any, listener: Any) -> None:
    hook.add_listener(listener)


_listen(events.init_command_line_parser, add_options)
_listen(events.init, on_init)
_listen(events.test_start, on_test_start)
_listen(events.test_stop, on_test_stop)


def configure(environment: Environment) -> SimulationConfig:
    """Load the fleet and template named by the options (once per fleet) into ``environment``."""
    options = environment.parsed_options
    fleet_dir = _option(environment, "fleet", None)
    if not fleet_dir:
        raise SimulatorError("--fleet FLEET is required")
    current = getattr(environment, "iotx509_simulation", None)
    if isinstance(current, SimulationConfig) and current.fleet.directory == Path(fleet_dir):
        return current
    fleet = Fleet.load(fleet_dir)
    if not fleet.devices:
        raise SimulatorError(f"the fleet in {fleet_dir} has no devices")
    template_path = _option(environment, "template", None)
    template = DeviceTemplate.load(template_path) if template_path else DeviceTemplate.default()
    leases = getattr(environment, _LEASES, None)
    if not isinstance(leases, Leases):
        leases = Leases(environment)
        setattr(environment, _LEASES, leases)
    leases.set_fleet_size(len(fleet.devices))
    lease_log = _option(environment, "lease_log", None)
    config = SimulationConfig(
        fleet=fleet, template=template, leases=leases,
        endpoint=endpoint_for(fleet, environment.host or (options.host if options else None)),
        scenario=_option(environment, "scenario", "steady"),
        keepalive=int(_option(environment, "keepalive", 300)),
        reconnect_base=float(_option(environment, "reconnect_base", 1.0)),
        reconnect_cap=float(_option(environment, "reconnect_cap", 120.0)),
        stable_period=float(_option(environment, "stable_period", 30.0)),
        lease_log=Path(lease_log) if lease_log else None,
        fleet_api_token=fleet.api_token(),
    )
    config.install(environment)
    log.info("fleet %s: %d devices, endpoint %s:%d, scenario %s", fleet.directory,
             len(fleet.devices), *config.endpoint, config.scenario)
    return config


def _option(environment: Environment, name: str, default: Any) -> Any:
    options = environment.parsed_options
    value = getattr(options, name, None) if options is not None else None
    return default if value is None else value


def _raise_open_file_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = min(WANTED_OPEN_FILES, hard) if hard != resource.RLIM_INFINITY else WANTED_OPEN_FILES
    if soft < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
        except (ValueError, OSError):
            log.warning("could not raise the open-file limit from %d; each device needs one", soft)
