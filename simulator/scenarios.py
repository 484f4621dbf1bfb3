"""Scenarios: what happens to the endpoint during a run (``--scenario``).

- ``steady``: nothing; telemetry and commands at the template's pace. Any failure is a finding.
- ``reconnect-storm``: at ``--fault-at`` seconds the endpoint restarts. The simulator runs
  ``--fault-command`` (e.g. ``systemctl restart my-broker``) if given, or the restart comes from
  outside. Devices report ``connection lost``, come back with the SDK's jittered backoff, and each
  ``reconnect`` event carries the device's outage (loss -> identity received again).
- ``revocation``: at ``--fault-at`` seconds the simulator disables the fleet's CA through the
  platform's HTTP API (``PATCH /ca-certificates/{caSn} {"status": "inactive"}``) and, with
  ``--restore-at``, enables it again. Devices report the refusal (``CertificateRejectedError`` or
  ``NotAuthorizedError``) and retry at most once per backoff cap instead of hammering the endpoint.
- ``renewal``: every device renews its certificate once under load and must never fail to
  connect; the devices are the users of ``simulator/renewal_locustfile.py``
  (:mod:`simulator.renewal_scenario`), and the customer's signer runs here with the fleet's CA
  key from the start of the test.

The fault runs once per test, on the master (or the single local process), never on workers. It
is reported as a request event of type ``SCENARIO`` so the stats CSV shows when it happened.
"""

from __future__ import annotations

import logging
import shlex
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import gevent
from gevent import subprocess as gsubprocess

from firmware_helpers.platform_client import PlatformAPIError, PlatformClient
from simulator.errors import SimulatorError
from simulator.options import FAULT_AT, SCENARIOS

if TYPE_CHECKING:
    from locust.env import Environment

log = logging.getLogger(__name__)

REQUEST_TYPE = "SCENARIO"


class ScenarioError(SimulatorError):
    """A scenario's options do not fit together, or its fault could not be injected."""


@dataclass(frozen=True)
class ScenarioPlan:
    name: str = "steady"
    fault_at: float = FAULT_AT
    restore_at: float | None = None
    fault_command: str | None = None

    def __post_init__(self) -> None:
        if self.name not in SCENARIOS:
            raise ScenarioError(f"--scenario {self.name!r} is not one of {', '.join(SCENARIOS)}")
        if self.fault_at < 0:
            raise ScenarioError(f"--fault-at must be >= 0 s, not {self.fault_at:g}")
        if self.restore_at is not None:
            if self.name != "revocation":
                raise ScenarioError("--restore-at belongs to --scenario revocation")
            if self.restore_at <= self.fault_at:
                raise ScenarioError(
                    f"--restore-at ({self.restore_at:g} s) must come after --fault-at "
                    f"({self.fault_at:g} s)"
                )
        if self.fault_command and self.name != "reconnect-storm":
            raise ScenarioError("--fault-command belongs to --scenario reconnect-storm")


class ScenarioRunner:
    """Runs a plan's fault on schedule in one greenlet; started and stopped with the test."""

    def __init__(
        self,
        environment: Environment,
        plan: ScenarioPlan,
        *,
        http_url: str | None,
        token: str | None,
        ca_sn: str | None,
    ) -> None:
        self.environment = environment
        self.plan = plan
        self.http_url = http_url
        self.token = token
        self.ca_sn = ca_sn
        self._greenlet: gevent.Greenlet | None = None
        if plan.name == "revocation" and not http_url:
            raise ScenarioError(
                "--scenario revocation disables the fleet's CA through the platform's HTTP API; "
                "this fleet was made with --no-platform (a generic broker has no such API)"
            )
        if plan.name == "revocation" and (not token or not ca_sn):
            raise ScenarioError(
                "--scenario revocation disables the fleet's CA through the HTTP API: the fleet "
                "needs its CA in fleet.json and an API token (FLEET/api-token or IOTX509_TOKEN)"
            )

    def start(self) -> None:
        if self.plan.name == "steady":
            return
        self.stop()
        if self.plan.name == "renewal":
            from simulator.config import SimulationConfig
            from simulator.renewal_scenario import run_signer

            fleet = SimulationConfig.of(self.environment).fleet
            self._greenlet = gevent.spawn(run_signer, self.environment, fleet, self.token)
            return
        self._greenlet = gevent.spawn(self._run)

    def stop(self) -> None:
        if self._greenlet is not None:
            self._greenlet.kill(block=False)
            self._greenlet = None

    def _run(self) -> None:
        started = time.monotonic()
        gevent.sleep(self.plan.fault_at)
        if self.plan.name == "reconnect-storm":
            self._step("endpoint restart", self._restart)
        else:
            self._step("CA disabled", lambda: self._set_ca("inactive"))
            if self.plan.restore_at is not None:
                gevent.sleep(max(0.0, self.plan.restore_at - (time.monotonic() - started)))
                self._step("CA enabled", lambda: self._set_ca("active"))

    def _step(self, name: str, action: object) -> None:
        log.warning("scenario %s: %s", self.plan.name, name)
        began = time.perf_counter()
        error: BaseException | None = None
        try:
            action()  # type: ignore[operator]
        except (SimulatorError, PlatformAPIError, OSError) as exc:
            error = exc
            log.error("scenario %s: %s failed: %s", self.plan.name, name, exc)
        request: Any = self.environment.events.request
        request.fire(
            request_type=REQUEST_TYPE,
            name=name,
            response_time=(time.perf_counter() - began) * 1000.0,
            response_length=0,
            exception=error,
            context={},
        )

    def _restart(self) -> None:
        if not self.plan.fault_command:
            log.warning(
                "scenario reconnect-storm: no --fault-command; expecting the endpoint to "
                "be restarted from outside"
            )
            return
        result = gsubprocess.run(
            shlex.split(self.plan.fault_command), capture_output=True, timeout=300
        )
        if result.returncode != 0:
            raise ScenarioError(
                f"--fault-command exited with status {result.returncode}: "
                f"{result.stderr.decode(errors='replace').strip()[:300]}"
            )

    def _set_ca(self, status: str) -> None:
        assert self.http_url and self.token and self.ca_sn
        PlatformClient(self.http_url, self.token).set_ca_status(self.ca_sn, status)
