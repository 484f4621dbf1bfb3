"""The simulator's hooks into Locust: command-line options, set-up, scenario start and stop.

Importing this module registers the listeners (``simulator/locustfile.py`` does it; so can your
own locustfile). The options are declared in :mod:`simulator.options` (``iotx509 fleet run
--help`` lists them); they may also be set in a Locust config file. The endpoint comes from the
fleet unless ``--host mqtts://HOST:PORT`` overrides it; the server CA likewise (``--server-ca``).

Console output stays readable with thousands of devices: the SDK's per-device log lines are
counted, and one summary line is logged every ``--summary-every`` seconds and at the end.
"""

from __future__ import annotations

import logging
import resource
import sys
from pathlib import Path
from typing import Any

import gevent
from locust import events
from locust.env import Environment
from locust.runners import WorkerRunner

from simulator.config import REFUSED, SimulationConfig, endpoint_for, server_ca_for
from simulator.distribution import Leases
from simulator.errors import SimulatorError
from simulator.fleet import Fleet
from simulator.link import set_max_connecting
from simulator.log_summary import DeviceLogSummary
from simulator.options import (
    FAULT_AT,
    KEEPALIVE_DEFAULT,
    MAX_CONNECTING,
    RECONNECT_BASE,
    RECONNECT_CAP,
    STABLE_PERIOD,
    SUMMARY_EVERY,
    add_to_locust,
)
from simulator.scenarios import ScenarioPlan, ScenarioRunner
from simulator.template import DeviceTemplate

log = logging.getLogger(__name__)

_LEASES = "iotx509_leases"
_SCENARIO = "iotx509_scenario"
_SUMMARY = "iotx509_log_summary"
#: Each device holds one socket; Locust raises the soft limit only to 10,000. The worker raises
#: its soft limit to this (or to the hard limit, if lower) at start and logs it.
WANTED_OPEN_FILES = 65_536


def add_options(parser: Any, **_kw: Any) -> None:
    add_to_locust(parser)


def on_init(environment: Environment, **_kw: Any) -> None:
    _raise_open_file_limit()
    setattr(environment, _LEASES, Leases(environment))
    options = environment.parsed_options
    if options is not None and getattr(options, "fleet", None):
        config = configure(environment)
        _refuse_more_users_than_devices(environment, config)
    elif not isinstance(environment.runner, WorkerRunner):
        sys.exit("error: --fleet FLEET is required (a directory made by 'iotx509 fleet create')")
    _start_summary(environment)


def _too_many_users(users: int | None, config: SimulationConfig) -> str | None:
    devices = len(config.fleet.devices)
    if users is None or users <= devices:
        return None
    return (
        f"{users} users but the fleet {config.fleet.directory} has {devices} devices (one "
        f"device per user): use -u {devices} or grow the fleet with 'iotx509 fleet create "
        f"--count {users} --out {config.fleet.directory} ...'"
    )


def _refuse_more_users_than_devices(environment: Environment, config: SimulationConfig) -> None:
    """Headless runs know the user count before starting: refuse with one line, no tracebacks."""
    options = environment.parsed_options
    if isinstance(environment.runner, WorkerRunner) or options is None:
        return
    if not (getattr(options, "headless", False) or getattr(options, "autostart", False)):
        return
    problem = _too_many_users(getattr(options, "num_users", None), config)
    if problem:
        sys.exit(f"error: {problem}")


def _start_summary(environment: Environment) -> None:
    summary = DeviceLogSummary()
    summary.install()
    setattr(environment, _SUMMARY, summary)
    every = float(_option(environment, "summary_every", SUMMARY_EVERY))
    if every <= 0:
        return

    def loop() -> None:
        while True:
            gevent.sleep(every)
            summary.flush(_counts(environment))

    gevent.spawn(loop)


def _counts(environment: Environment) -> str:
    """Connection figures from Locust's own statistics (this process's, or the master's)."""
    stats = environment.stats
    parts = []
    for name in ("connect", "identity", "reconnect", "connection lost"):
        entry = stats.entries.get((name, "MQTT"))
        if entry is not None and entry.num_requests:
            ok = entry.num_requests - entry.num_failures
            parts.append(f"{name} {ok} ok/{entry.num_failures} failed")
    return ", ".join(parts) or "no connection events yet"


def on_quitting(environment: Environment, **_kw: Any) -> None:
    summary = getattr(environment, _SUMMARY, None)
    if isinstance(summary, DeviceLogSummary):
        summary.flush(_counts(environment), final=True)


def on_test_start(environment: Environment, **_kw: Any) -> None:
    # Workers started without --fleet get the master's options only now.
    config = configure(environment)
    if isinstance(environment.runner, WorkerRunner):
        return
    runner_ = environment.runner
    problem = _too_many_users(getattr(runner_, "target_user_count", None), config)
    setattr(environment, REFUSED, bool(problem))
    if problem and runner_ is not None:
        # Started from the web UI (or a shape): one line, then stop; the users already being
        # spawned see REFUSED and stop without leasing (no failure per extra user).
        log.error("%s", problem)
        gevent.spawn(runner_.stop)
        return
    plan = ScenarioPlan(
        name=config.scenario,
        fault_at=_option(environment, "fault_at", FAULT_AT),
        restore_at=_option(environment, "restore_at", None),
        fault_command=_option(environment, "fault_command", None),
    )
    runner = ScenarioRunner(
        environment,
        plan,
        http_url=config.fleet.http_url,
        token=config.fleet_api_token,
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
_listen(events.quitting, on_quitting)


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
        fleet=fleet,
        template=template,
        leases=leases,
        endpoint=endpoint_for(fleet, environment.host or (options.host if options else None)),
        server_ca=server_ca_for(fleet, _option(environment, "server_ca", None)),
        expect_identity=not _option(environment, "no_identity", False),
        scenario=_option(environment, "scenario", "steady"),
        keepalive=int(_option(environment, "keepalive", KEEPALIVE_DEFAULT)),
        reconnect_base=float(_option(environment, "reconnect_base", RECONNECT_BASE)),
        reconnect_cap=float(_option(environment, "reconnect_cap", RECONNECT_CAP)),
        stable_period=float(_option(environment, "stable_period", STABLE_PERIOD)),
        max_connecting=int(_option(environment, "max_connecting", MAX_CONNECTING)),
        lease_log=Path(lease_log) if lease_log else None,
        fleet_api_token=fleet.api_token() if fleet.http_url else None,
    )
    set_max_connecting(config.max_connecting)
    config.install(environment)
    log.info(
        "fleet %s: %d devices, endpoint %s:%d, scenario %s%s",
        fleet.directory,
        len(fleet.devices),
        *config.endpoint,
        config.scenario,
        "" if config.expect_identity else ", not waiting for an identity",
    )
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
            return
        log.info(
            "open-file limit (soft RLIMIT_NOFILE) raised from %d to %d: one descriptor per device"
            " (the hard limit, %s, bounds it: raise that with ulimit -Hn / LimitNOFILE)",
            soft,
            wanted,
            "unlimited" if hard == resource.RLIM_INFINITY else hard,
        )
