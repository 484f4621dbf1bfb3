"""Device leases across Locust's runners: one device per user, also in distributed mode.

- Local run (``LocalRunner``): the :class:`~simulator.allocation.DevicePool` lives in this process.
- Distributed run: the pool lives on the master. A worker's user asks with the custom message
  ``iotx509:lease`` and waits for ``iotx509:leased`` (or ``iotx509:lease-refused`` when the fleet
  is exhausted); it gives the device back with ``iotx509:release``. The master knows which worker
  holds what, and releases everything of a worker that reports it stopped or quit. Workers never
  need to know how many of them there are, and a late worker gets devices nobody else holds.
"""

from __future__ import annotations

import itertools
import logging
from typing import Any

import gevent
from gevent.event import AsyncResult
from locust.env import Environment
from locust.runners import LocalRunner, MasterRunner, WorkerRunner

from simulator.allocation import LOCAL_HOLDER, DevicePool
from simulator.errors import FleetExhaustedError, SimulatorError

log = logging.getLogger(__name__)

MSG_LEASE = "iotx509:lease"
MSG_LEASED = "iotx509:leased"
MSG_REFUSED = "iotx509:lease-refused"
MSG_RELEASE = "iotx509:release"
LEASE_TIMEOUT = 30.0


class LeaseTimeoutError(SimulatorError):
    """The master did not answer a device lease in time."""


class Leases:
    """The lease service of one Locust process (whatever its role)."""

    def __init__(self, environment: Environment, fleet_size: int = 0) -> None:
        self.environment = environment
        self.pool: DevicePool | None = None
        self._pending: dict[int, AsyncResult] = {}
        self._ids = itertools.count(1)
        runner = environment.runner
        if isinstance(runner, MasterRunner):
            runner.register_message(MSG_LEASE, self._on_lease_request)
            runner.register_message(MSG_RELEASE, self._on_release)
            worker_report: Any = environment.events.worker_report
            worker_report.add_listener(self._on_worker_report)
        elif isinstance(runner, WorkerRunner):
            runner.register_message(MSG_LEASED, self._on_reply)
            runner.register_message(MSG_REFUSED, self._on_reply)
        if fleet_size:
            self.set_fleet_size(fleet_size)

    def set_fleet_size(self, size: int) -> None:
        """Master and local runs keep the pool; a worker only asks the master."""
        if isinstance(self.environment.runner, WorkerRunner):
            return
        if self.pool is None or self.pool.size != size:
            if self.pool is not None and self.pool.leased:
                raise SimulatorError("the fleet changed while devices were leased")
            self.pool = DevicePool(size)

    @property
    def role(self) -> str:
        runner = self.environment.runner
        if isinstance(runner, MasterRunner):
            return "master"
        if isinstance(runner, WorkerRunner):
            return "worker"
        return "local" if isinstance(runner, LocalRunner) else "none"

    # --- the user side -------------------------------------------------------------------------

    def acquire(self) -> int:
        """A fleet index nobody else holds (blocks the calling greenlet in distributed mode)."""
        runner = self.environment.runner
        if not isinstance(runner, WorkerRunner):
            if self.pool is None:
                raise SimulatorError("no fleet loaded: run with --fleet FLEET")
            return self.pool.lease(LOCAL_HOLDER)
        request_id = next(self._ids)
        result: AsyncResult = AsyncResult()
        self._pending[request_id] = result
        try:
            runner.send_message(MSG_LEASE, {"id": request_id})
            reply = result.get(timeout=LEASE_TIMEOUT)
        except gevent.Timeout as exc:
            raise LeaseTimeoutError(
                f"the master did not lease a device within {LEASE_TIMEOUT:.0f} s"
            ) from exc
        finally:
            self._pending.pop(request_id, None)
        if "error" in reply:
            raise FleetExhaustedError(str(reply["error"]))
        return int(reply["index"])

    def release(self, index: int) -> None:
        runner = self.environment.runner
        if isinstance(runner, WorkerRunner):
            runner.send_message(MSG_RELEASE, {"index": index})
        elif self.pool is not None:
            self.pool.release(index, LOCAL_HOLDER)

    def _on_reply(self, environment: Environment, msg: Any, **_kw: Any) -> None:
        data = msg.data or {}
        result = self._pending.get(int(data.get("id", -1)))
        if result is not None:
            result.set(data)

    # --- the master side -----------------------------------------------------------------------

    def _on_lease_request(self, environment: Environment, msg: Any, **_kw: Any) -> None:
        assert isinstance(environment.runner, MasterRunner)
        request_id = (msg.data or {}).get("id")
        try:
            if self.pool is None:
                raise FleetExhaustedError("the master has no fleet loaded (run it with --fleet)")
            index = self.pool.lease(msg.node_id)
        except FleetExhaustedError as exc:
            environment.runner.send_message(
                MSG_REFUSED, {"id": request_id, "error": str(exc)}, client_id=msg.node_id
            )
            return
        environment.runner.send_message(
            MSG_LEASED, {"id": request_id, "index": index}, client_id=msg.node_id
        )

    def _on_release(self, environment: Environment, msg: Any, **_kw: Any) -> None:
        if self.pool is None:
            return
        index = (msg.data or {}).get("index")
        if isinstance(index, int) and not self.pool.release(index, msg.node_id):
            log.warning("worker %s released device %s it did not hold", msg.node_id, index)

    def _on_worker_report(self, client_id: str, data: dict[str, Any], **_kw: Any) -> None:
        # A worker that reports no users holds no devices: free whatever a lost release left.
        if self.pool is not None and data.get("user_count") == 0 and self.pool.held_by(client_id):
            freed = self.pool.release_holder(client_id)
            log.info("freed %d devices of idle worker %s", freed, client_id)
