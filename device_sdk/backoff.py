"""Reconnect pacing: exponential backoff with full jitter, reset only after a stable connection.

Why full jitter: after a broker restart every device of a fleet loses its connection in the same
second. Plain doubling (paho's ``reconnect_delay_set``) keeps them in lock step, so each retry
wave hits the broker at once; drawing the delay uniformly from ``[0, min(cap, base * 2**n)]``
spreads them out. Why a stable period: a connection that is accepted and then dropped at once
(a broken session, a server that refuses after CONNACK) must not reset the delay, or the device
hammers the server at ``base`` forever.

Refusals that retrying cannot fix (certificate rejected, not authorised, untrusted server) wait
the full ``cap``: the application has been told, and a quicker retry only adds load.

This module has no I/O and no threads: the clock and the random source are injected, so the
policy is tested deterministically.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass

from device_sdk.defaults import (
    DEFAULT_RECONNECT_BASE,
    DEFAULT_RECONNECT_CAP,
    DEFAULT_STABLE_PERIOD,
)


@dataclass(frozen=True, slots=True)
class BackoffPolicy:
    """The numbers: ``base`` and ``cap`` seconds, and the ``stable_period`` that resets them."""

    base: float = DEFAULT_RECONNECT_BASE
    cap: float = DEFAULT_RECONNECT_CAP
    stable_period: float = DEFAULT_STABLE_PERIOD

    def __post_init__(self) -> None:
        if not self.base > 0:
            raise ValueError(f"backoff base must be > 0 s, got {self.base}")
        if self.cap < self.base:
            raise ValueError(f"backoff cap ({self.cap} s) must be >= base ({self.base} s)")
        if self.stable_period < 0:
            raise ValueError(f"stable period must be >= 0 s, got {self.stable_period}")

    def ceiling(self, attempt: int) -> float:
        """The upper bound of the delay before retry number ``attempt`` (0-based)."""
        if attempt < 0:
            raise ValueError(f"attempt must be >= 0, got {attempt}")
        # 2**attempt overflows float arithmetic long after it passed any sane cap.
        if attempt >= 64:
            return self.cap
        return min(self.cap, self.base * 2.0**attempt)

    def delay(self, attempt: int, rng: random.Random) -> float:
        """Full jitter: uniform in ``[0, ceiling(attempt)]``."""
        return rng.uniform(0.0, self.ceiling(attempt))


class Backoff:
    """The state of one client's reconnect loop: how many failures since the last stable link.

    Call :meth:`connected` when a connection is fully up, :meth:`disconnected` when it is lost,
    and :meth:`next_delay` before each retry.
    """

    def __init__(
        self,
        policy: BackoffPolicy | None = None,
        *,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.policy = policy or BackoffPolicy()
        self._rng = rng or random.Random()
        self._clock = clock
        self._attempt = 0
        self._up_since: float | None = None

    @property
    def attempt(self) -> int:
        """Failures counted since the last reset."""
        return self._attempt

    def connected(self) -> None:
        self._up_since = self._clock()

    def disconnected(self) -> None:
        """The link went down: reset the count only if it had stayed up for the stable period."""
        if self._up_since is not None:
            if self._clock() - self._up_since >= self.policy.stable_period:
                self._attempt = 0
            self._up_since = None

    def next_delay(self, *, permanent: bool = False) -> float:
        """Seconds to wait before the next attempt (and count this failure).

        ``permanent`` marks a refusal that retrying cannot fix: wait the cap, no jitter below it.
        """
        delay = self.policy.cap if permanent else self.policy.delay(self._attempt, self._rng)
        self._attempt += 1
        return delay

    def reset(self) -> None:
        self._attempt = 0
        self._up_since = None
