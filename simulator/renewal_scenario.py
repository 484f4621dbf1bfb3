"""The ``renewal`` scenario: a fleet renews its certificates under load (issue 14).

Every simulated user is one device of the fleet running the SDK's own renewal: a
:class:`~device_sdk.client.DeviceClient` (on gevent's hub, :mod:`simulator.gevent_loop`) with a
:class:`~device_sdk.renewal_manager.Renewal` attached, on the fleet's own certificate files
(renewed in place, as on a device). A device whose certificate has less than 20% of its
validity left renews by the policy; the others (``fleet create`` issues ten-year certificates)
are told to renew at once, as if they were: every device of the fleet renews exactly once. A
local run stops once all have renewed (``-t`` remains the limit).
The customer's signer (:class:`firmware_helpers.signer.Signer`) runs on the master (or the
single local process) with the fleet's CA key, polling the platform's HTTP API, as the
customer's ``iotx509 ca signer`` would; a fleet made with an outside CA needs that command
running instead.

Locust request events (request type ``RENEWAL``):

- ``connect``: every session online, the first one and the one made with the new pair (the
  SDK's timing: TCP + TLS + CONNECT until CONNACK); a failed attempt is a failure. The
  scenario's promise is that there is none: a device keeps a pair that connects throughout.
- ``renewal``: from the device's decision (key made, request stored) until the platform
  accepted the new certificate and the pair was promoted; ``refused`` and ``failed`` reports
  are failures (the SDK retries failures with backoff).
- ``signer round`` (request type ``SCENARIO``): each round of the signer that answered requests.

At the end each process logs one line: renewals, renewals per second (first decision to last
promotion) and the latency's median and 95th percentile.
"""

from __future__ import annotations

import logging
import statistics
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import gevent
from locust import constant, events, task
from locust.exception import StopUser
from locust.runners import LocalRunner

from device_sdk.client import ConnectionState, DeviceClient
from device_sdk.errors import DeviceSDKError
from device_sdk.renewal import RenewalPolicy, Report, ReportKind
from device_sdk.renewal_expiry import Validity
from device_sdk.renewal_manager import Renewal
from simulator.config import SimulationConfig
from simulator.errors import SimulatorError
from simulator.gevent_loop import shared_loop
from simulator.leased_user import LeasedDeviceUser

if TYPE_CHECKING:
    from locust.env import Environment

    from simulator.fleet import Fleet

log = logging.getLogger(__name__)

SCENARIO = "renewal"
REQUEST_TYPE = "RENEWAL"
SIGNER_INTERVAL = 0.5
"""Seconds between the signer's polls when it found nothing to answer."""

#: The scenario's renewal policy: patient like a device, quick to retry under load.
POLICY = RenewalPolicy(reply_timeout=30.0, issue_timeout=120.0, resume_wait=2.0)


@dataclass
class RenewalTally:
    """What one process saw: renewal latencies and the first decision / last promotion."""

    latencies: list[float] = field(default_factory=list)
    first_start: float | None = None
    last_done: float | None = None
    failed_connections: int = 0

    def started(self, at: float) -> None:
        if self.first_start is None or at < self.first_start:
            self.first_start = at

    def renewed(self, at: float, seconds: float) -> None:
        self.latencies.append(seconds)
        self.last_done = at if self.last_done is None else max(self.last_done, at)

    @property
    def per_second(self) -> float | None:
        if self.first_start is None or self.last_done is None or not self.latencies:
            return None
        span = self.last_done - self.first_start
        return len(self.latencies) / span if span > 0 else None

    def summary(self) -> str:
        failed = f"failed connections {self.failed_connections}"
        if not self.latencies:
            return f"renewal: none completed; {failed}"
        ordered = sorted(self.latencies)
        p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
        rate = self.per_second
        return (
            f"renewal: {len(ordered)} renewed, "
            f"{'?' if rate is None else f'{rate:.2f}'} renewals/s, "
            f"latency median {statistics.median(ordered):.3f} s, p95 {p95:.3f} s, "
            f"max {ordered[-1]:.3f} s; {failed}"
        )


TALLY = RenewalTally()


class RenewingDeviceUser(LeasedDeviceUser):
    """One device of the fleet that renews its certificate once (see the module's doc)."""

    abstract = True
    request_type = REQUEST_TYPE
    wait_time = constant(1.0)

    def __init__(self, environment: Environment) -> None:
        super().__init__(environment)
        self.client: DeviceClient | None = None
        self.renewal: Renewal | None = None
        self._started_at: float | None = None

    def _set_up(self, config: SimulationConfig, index: int) -> None:
        entry = config.fleet.devices[index]
        config.record_lease(index, entry.device_name)
        host, port = config.endpoint
        try:
            self.renewal = Renewal.for_files(
                config.fleet.path(entry.cert),
                config.fleet.path(entry.key),
                policy=POLICY,
                on_renewal=self._on_renewal,
                identity=None if config.expect_identity else entry.identity,
                subscribe_reply=not config.expect_identity,
                check_key=False,
            )
            self.client = DeviceClient(
                host,
                port,
                self.renewal.credentials,
                server_ca=config.server_ca,
                expect_identity=config.expect_identity,
                keepalive=config.keepalive,
                reconnect_base=config.reconnect_base,
                reconnect_cap=config.reconnect_cap,
                stable_period=config.stable_period,
                on_connection_state=self._on_state,
                network=shared_loop(),
            )
        except DeviceSDKError as exc:
            self._fire("credentials", 0.0, exc)
            raise StopUser() from exc
        self.renewal.attach(self.client)
        due = Validity.of(self.renewal.current.certificate).due(time.time(), POLICY.threshold)
        self.client.start()
        if not due:
            self.client.renew_now()  # (started once online)

    @task
    def wait(self) -> None:
        """Nothing to do between the events: the device renews in the background."""

    def on_stop(self) -> None:
        if self.client is not None:
            self.client.disconnect()
            self.client = None
        if self.renewal is not None:
            self.renewal.close()
            self.renewal = None
        super().on_stop()

    # --- reporting (callbacks of the SDK) ------------------------------------------------------

    def _on_state(self, state: ConnectionState, error: DeviceSDKError | None) -> None:
        client = self.client
        if state is ConnectionState.ONLINE and client is not None:
            timing = client.last_connect_timing
            self._fire("connect", timing.connect if timing else 0.0, None)
        elif state is ConnectionState.OFFLINE and error is not None:
            TALLY.failed_connections += 1
            self._fire("connect", 0.0, error)

    def _on_renewal(self, report: Report) -> None:
        if report.kind is ReportKind.STARTED:
            self._started_at = report.at
            TALLY.started(report.at)
        elif report.kind is ReportKind.RENEWED:
            seconds = report.at - (self._started_at if self._started_at is not None else report.at)
            TALLY.renewed(report.at, seconds)
            self._fire("renewal", seconds, None)
            self._stop_when_all_renewed()
        elif report.kind in (ReportKind.REFUSED, ReportKind.FAILED):
            self._fire("renewal", 0.0, SimulatorError(f"{report.kind.value}: {report.reason}"))

    def _stop_when_all_renewed(self) -> None:
        """A local run (no workers) ends once every device of the fleet renewed; ``-t`` stays
        the limit when some cannot."""
        runner = self.environment.runner
        if isinstance(runner, LocalRunner) and len(TALLY.latencies) >= len(self.config.fleet):
            log.warning("scenario renewal: every device of the fleet renewed; stopping")
            gevent.spawn(runner.quit)


# --- the customer's signer, on the master ------------------------------------------------------


def run_signer(environment: Environment, fleet: Fleet, token: str | None) -> None:
    """Serve the fleet CA's renewal requests until the greenlet is killed (the scenario's
    runner spawns it on the master). Needs the fleet's CA key and an API token."""
    from firmware_helpers.errors import FirmwareHelpersError
    from firmware_helpers.issuing import load_issuing_ca
    from firmware_helpers.platform_client import PlatformAPIError, PlatformClient
    from firmware_helpers.signer import Signer

    if fleet.http_url is None or fleet.ca is None or token is None:
        log.warning(
            "scenario renewal: the fleet has no platform API, CA key or token here; run the "
            "customer's signer yourself (iotx509 ca signer --ca CA --ca-key KEY --server URL "
            "--token T)"
        )
        return
    ca = load_issuing_ca(fleet.path(fleet.ca.cert), fleet.path(fleet.ca.key))
    signer = Signer(
        PlatformClient(fleet.http_url, token),
        ca,
        ledger_path=fleet.directory / "renewal-sn-ledger.jsonl",
    )
    request: Any = environment.events.request
    while True:
        began = time.perf_counter()
        error: BaseException | None = None
        answered = 0
        try:
            answered = len(signer.run_once().answers)
        except (PlatformAPIError, FirmwareHelpersError, OSError) as exc:
            error = exc
            log.error("scenario renewal: signer round failed: %s", exc)
        if answered or error is not None:
            request.fire(
                request_type="SCENARIO",
                name="signer round",
                response_time=(time.perf_counter() - began) * 1000.0,
                response_length=answered,
                exception=error,
                context={},
            )
        if not answered:
            gevent.sleep(SIGNER_INTERVAL)


def _summary(environment: Environment, **_kw: Any) -> None:
    if TALLY.latencies or TALLY.first_start is not None:
        log.warning("%s", TALLY.summary())


_quitting: Any = events.quitting
_quitting.add_listener(_summary)


__all__ = ["SCENARIO", "RenewalTally", "RenewingDeviceUser", "run_signer"]
