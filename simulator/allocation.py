"""Which simulated user drives which device: one device per user, never two users per device.

:class:`DevicePool` is the bookkeeping, with no Locust in it: a free list of fleet indexes and
who holds each lease. In a single-process run the pool lives in the process; in a distributed run
it lives on the master only, and workers lease over Locust's custom messages
(:mod:`simulator.distribution`), so workers never need to know how many of them there are and a
worker that joins late still gets devices nobody else holds.
"""

from __future__ import annotations

import heapq
from collections import defaultdict
from collections.abc import Iterable

from simulator.errors import FleetExhaustedError

LOCAL_HOLDER = "local"


class DevicePool:
    """Lease fleet indexes ``0..size-1``, lowest free index first (so runs are repeatable)."""

    def __init__(self, size: int, *, indexes: Iterable[int] | None = None) -> None:
        self.size = size
        self._free = sorted(range(size) if indexes is None else set(indexes))
        for index in self._free:
            if not 0 <= index < size:
                raise ValueError(f"device index {index} is outside the fleet (0..{size - 1})")
        self._holder: dict[int, str] = {}
        self._by_holder: defaultdict[str, set[int]] = defaultdict(set)

    @property
    def free(self) -> int:
        return len(self._free)

    @property
    def leased(self) -> int:
        return len(self._holder)

    def lease(self, holder: str = LOCAL_HOLDER) -> int:
        """Take the lowest free index for ``holder``; raise when every device is in use."""
        if not self._free:
            raise FleetExhaustedError(
                f"all {self.size} devices of the fleet are in use: one simulated user needs one "
                "device; run fewer users (-u) or grow the fleet "
                "(iotx509 fleet create ... --count N with a larger N)"
            )
        index = heapq.heappop(self._free)
        self._holder[index] = holder
        self._by_holder[holder].add(index)
        return index

    def release(self, index: int, holder: str = LOCAL_HOLDER) -> bool:
        """Give ``index`` back; False (and nothing changes) when ``holder`` does not hold it."""
        if self._holder.get(index) != holder:
            return False
        del self._holder[index]
        self._by_holder[holder].discard(index)
        heapq.heappush(self._free, index)
        return True

    def release_holder(self, holder: str) -> int:
        """Give back everything ``holder`` held (a worker that quit or was lost)."""
        indexes = self._by_holder.pop(holder, set())
        for index in indexes:
            del self._holder[index]
            heapq.heappush(self._free, index)
        return len(indexes)

    def holder_of(self, index: int) -> str | None:
        return self._holder.get(index)

    def held_by(self, holder: str) -> frozenset[int]:
        return frozenset(self._by_holder.get(holder, ()))
