"""The Locust-side plumbing without a server: scenario options, endpoint choice, local leases."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from simulator.config import endpoint_for
from simulator.errors import SimulatorError
from simulator.fleet import Fleet
from simulator.scenarios import ScenarioError, ScenarioPlan
from tests.simulator.conftest import locust_env

# Importing Locust monkey-patches the whole process (gevent), so whatever needs Locust runs in a
# child process, as under Locust itself; this module imports only Locust-free parts.


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": "chaos"}, "is not one of steady, reconnect-storm, revocation"),
        ({"name": "revocation", "fault_at": -1}, "--fault-at must be >= 0"),
        ({"name": "revocation", "fault_at": 10, "restore_at": 5}, "must come after --fault-at"),
        ({"name": "steady", "restore_at": 5}, "--restore-at belongs to --scenario revocation"),
        ({"name": "revocation", "fault_command": "true"}, "belongs to --scenario reconnect-storm"),
    ],
)
def test_scenario_options_that_do_not_fit_are_refused(
    kwargs: dict[str, object], message: str
) -> None:
    with pytest.raises(ScenarioError, match=message):
        ScenarioPlan(**kwargs)  # type: ignore[arg-type]


def _in_locust_process(code: str) -> None:
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=locust_env()
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().endswith("ok"), result.stdout


def test_revocation_needs_a_token_and_the_fleets_ca() -> None:
    _in_locust_process("""
from locust.env import Environment
from simulator.scenarios import ScenarioError, ScenarioPlan, ScenarioRunner
env = Environment(user_classes=[])
try:
    ScenarioRunner(env, ScenarioPlan("revocation"), http_url="http://x", token=None, ca_sn="a")
except ScenarioError as exc:
    assert "API token" in str(exc), exc
else:
    raise AssertionError("no error")
ScenarioRunner(env, ScenarioPlan("revocation"), http_url="http://x", token="t", ca_sn="a")
print("ok")
""")


def _fleet(tmp_path: Path) -> Fleet:
    (tmp_path / "fleet.json").write_text(
        json.dumps(
            {
                "version": 1,
                "endpoint": {"mqtt": "mqtts://fleet.example:8883", "http": "http://h"},
                "serverCa": None,
                "devices": [],
            }
        )
    )
    return Fleet.load(tmp_path)


def test_the_host_option_overrides_the_fleets_endpoint(tmp_path: Path) -> None:
    fleet = _fleet(tmp_path)
    assert endpoint_for(fleet, None) == ("fleet.example", 8883)
    assert endpoint_for(fleet, "mqtts://127.0.0.1:9000") == ("127.0.0.1", 9000)
    with pytest.raises(SimulatorError, match="TLS only"):
        endpoint_for(fleet, "http://127.0.0.1:8089")


def test_local_runs_lease_from_an_in_process_pool() -> None:
    _in_locust_process("""
from locust.env import Environment
from simulator.distribution import Leases
from simulator.errors import FleetExhaustedError, SimulatorError
env = Environment(user_classes=[])
env.create_local_runner()
leases = Leases(env)
assert leases.role == "local"
try:
    leases.acquire()
except SimulatorError as exc:
    assert "no fleet loaded" in str(exc)
else:
    raise AssertionError("leased without a fleet")
leases.set_fleet_size(2)
first, second = leases.acquire(), leases.acquire()
assert {first, second} == {0, 1}
try:
    leases.acquire()
except FleetExhaustedError:
    pass
else:
    raise AssertionError("a third lease of two devices")
leases.release(first)
assert leases.acquire() == first
print("ok")
""")
