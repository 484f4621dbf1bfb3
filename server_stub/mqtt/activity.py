"""What the web console shows about the device endpoint: bounded, in memory, per account.

The broker calls :meth:`Activity.connected` when a device's CONNECT is accepted and
:meth:`Activity.published` for every message it records; the service samples the number of
devices online once a second. Everything here is bounded: a ring of the last
:data:`WINDOW_SECONDS` seconds per account, one last-connection entry per device (at most
:data:`MAX_TRACKED_DEVICES`, oldest forgotten first) and at most
:data:`MAX_LISTENERS_PER_DEVICE` live listeners per device. Nothing is persisted: last connection
times start empty when the server starts.
"""

from __future__ import annotations

import logging
import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from server_stub.ports import AuthenticatedDevice, DeviceMessage

log = logging.getLogger("server_stub.mqtt")

WINDOW_SECONDS = 600
MAX_TRACKED_DEVICES = 200_000
MAX_LISTENERS_PER_DEVICE = 16

DeviceKey = tuple[str, str]
Listener = Callable[[DeviceMessage], None]


@dataclass(frozen=True, slots=True)
class LastConnection:
    """When a device last connected, and the expiry of the certificate it connected with."""

    at: float
    cert_not_after: float
    account_id: int


@dataclass(frozen=True, slots=True)
class SecondSample:
    """One second of one account: connections accepted, devices online at its end."""

    second: int
    connections: int
    online: int


class _Ring:
    """Per-second counters of the last ``size`` seconds (slot = second modulo size)."""

    __slots__ = ("connections", "online", "seconds", "size")

    def __init__(self, size: int) -> None:
        self.size = size
        self.seconds = [-1] * size
        self.connections = [0] * size
        self.online = [-1] * size

    def _slot(self, second: int) -> int:
        slot = second % self.size
        if self.seconds[slot] != second:
            self.seconds[slot] = second
            self.connections[slot] = 0
            self.online[slot] = -1
        return slot

    def count_connection(self, second: int) -> None:
        self.connections[self._slot(second)] += 1

    def set_online(self, second: int, online: int) -> None:
        self.online[self._slot(second)] = online

    def samples(self, now_second: int, seconds: int) -> list[SecondSample]:
        out: list[SecondSample] = []
        online = 0
        for second in range(now_second - seconds + 1, now_second + 1):
            slot = second % self.size
            if self.seconds[slot] == second:
                if self.online[slot] >= 0:
                    online = self.online[slot]
                out.append(SecondSample(second, self.connections[slot], online))
            else:
                out.append(SecondSample(second, 0, online))
        return out


class Activity:
    """Connection counts, last connections and live message listeners (event loop thread)."""

    def __init__(
        self,
        *,
        window: int = WINDOW_SECONDS,
        max_devices: int = MAX_TRACKED_DEVICES,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.window = window
        self._max_devices = max_devices
        self._clock = clock
        self._rings: dict[int, _Ring] = {}
        self._last: OrderedDict[DeviceKey, LastConnection] = OrderedDict()
        self._listeners: dict[DeviceKey, list[Listener]] = {}

    def _ring(self, account_id: int) -> _Ring:
        ring = self._rings.get(account_id)
        if ring is None:
            ring = self._rings[account_id] = _Ring(self.window)
        return ring

    # --- broker hooks --------------------------------------------------------------------------

    def connected(self, device: AuthenticatedDevice, cert_not_after: float) -> None:
        now = self._clock()
        self._ring(device.account_id).count_connection(math.floor(now))
        key = (device.product_key, device.device_name)
        self._last[key] = LastConnection(now, cert_not_after, device.account_id)
        self._last.move_to_end(key)
        while len(self._last) > self._max_devices:
            self._last.popitem(last=False)

    def published(self, key: DeviceKey, message: DeviceMessage) -> None:
        for listener in tuple(self._listeners.get(key, ())):
            try:
                listener(message)
            except Exception:  # one broken listener must not stop the broker
                log.exception("console: a live message listener failed")

    def sample_online(self, online_by_account: dict[int, int]) -> None:
        """Record how many devices each account has online now (called once a second)."""
        second = math.floor(self._clock())
        for account_id, ring in self._rings.items():
            ring.set_online(second, online_by_account.get(account_id, 0))
        for account_id, online in online_by_account.items():
            if account_id not in self._rings:
                self._ring(account_id).set_online(second, online)

    # --- readers -------------------------------------------------------------------------------

    def last_connection(self, product_key: str, device_name: str) -> LastConnection | None:
        return self._last.get((product_key, device_name))

    def timeline(self, account_id: int, seconds: int) -> list[SecondSample]:
        seconds = max(1, min(seconds, self.window))
        now_second = math.floor(self._clock())
        ring = self._rings.get(account_id)
        if ring is None:
            return [SecondSample(s, 0, 0) for s in range(now_second - seconds + 1, now_second + 1)]
        return ring.samples(now_second, seconds)

    def listen(self, key: DeviceKey, listener: Listener) -> Callable[[], None] | None:
        """Call ``listener`` with each message the device publishes; None when at the bound.

        Returns the function that stops listening.
        """
        listeners = self._listeners.setdefault(key, [])
        if len(listeners) >= MAX_LISTENERS_PER_DEVICE:
            return None
        listeners.append(listener)

        def stop() -> None:
            current = self._listeners.get(key)
            if current is not None and listener in current:
                current.remove(listener)
                if not current:
                    del self._listeners[key]

        return stop

    def listener_count(self) -> int:
        return sum(len(v) for v in self._listeners.values())
