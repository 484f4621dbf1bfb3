"""The simulator's locustfile plus measurements, for ``bench/bench_simulator.py``.

It is also an example of a custom locustfile built on the importable ``DeviceUser``: the
simulator's options and users come in with the import; this file only adds listeners that note
when connections succeed and what the process costs, and writes them to ``$BENCH_SIM_OUT``.
With ``$BENCH_SIM_HOLD`` seconds, the run ends that long after the ``$BENCH_SIM_TARGET``-th
device connected (``-t`` stays the upper bound), so every device is held for the whole hold
whatever the ramp took on a busy machine.
"""

from __future__ import annotations

import json
import os
import resource
import time
from typing import Any

import gevent
from locust import events
from locust.env import Environment

from simulator import locust_plugin  # noqa: F401  (options and listeners)
from simulator.users import DeviceUser


class BenchDevice(DeviceUser):
    """A device of the fleet, behaving as the template says."""


def _rss() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


STATE: dict[str, Any] = {
    "connects": 0,
    "connect_failures": 0,
    "lost": 0,
    "reconnects": 0,
    "publishes": 0,
    "publish_failures": 0,
    "publish_ms": 0.0,
    "first": None,
    "last": None,
    "cpu_first": None,
    "cpu_last": None,
    "rss_start": None,
    "rss_connected": None,
    "rss_end": None,
    "online_peak": 0,
    "all_connected_at": None,
}
_ENVIRONMENT: list[Environment] = []


def _on_init(environment: Environment, **_kw: Any) -> None:
    _ENVIRONMENT.append(environment)


def _on_request(
    request_type: str, name: str, response_time: float, exception: Any, **_kw: Any
) -> None:
    now = time.monotonic()
    if name == "connect":
        if exception is not None:
            STATE["connect_failures"] += 1
            return
        STATE["connects"] += 1
        if STATE["first"] is None:
            STATE["first"], STATE["cpu_first"] = now, _cpu()
        STATE["last"], STATE["cpu_last"] = now, _cpu()
        target = int(os.environ.get("BENCH_SIM_TARGET", "0"))
        if target and STATE["connects"] == target:
            STATE["rss_connected"] = _rss()
            STATE["all_connected_at"] = now
            hold = float(os.environ.get("BENCH_SIM_HOLD", "0"))
            runner = _ENVIRONMENT[0].runner if _ENVIRONMENT else None
            if hold > 0 and runner is not None:
                gevent.spawn_later(hold, runner.quit)
    elif name == "connection lost":
        STATE["lost"] += 1
    elif name == "reconnect" and exception is None:
        STATE["reconnects"] += 1
    elif name == "publish":
        if exception is None:
            STATE["publishes"] += 1
            STATE["publish_ms"] += response_time
        else:
            STATE["publish_failures"] += 1
    online = STATE["connects"] + STATE["reconnects"] - STATE["lost"]
    STATE["online_peak"] = max(STATE["online_peak"], online)


def _on_test_start(**_kw: Any) -> None:
    STATE["rss_start"] = _rss()


def _on_quitting(**_kw: Any) -> None:
    STATE["rss_end"] = _rss()
    out = os.environ.get("BENCH_SIM_OUT")
    if out:
        with open(out, "w") as fh:
            json.dump(STATE, fh)


def _listen(hook: Any, listener: Any) -> None:
    hook.add_listener(listener)


_listen(events.init, _on_init)
_listen(events.request, _on_request)
_listen(events.test_start, _on_test_start)
_listen(events.quitting, _on_quitting)
