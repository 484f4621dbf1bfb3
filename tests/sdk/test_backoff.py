"""The reconnect policy: full jitter, cap, reset only after a stable connection."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from device_sdk.backoff import Backoff, BackoffPolicy


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_ceiling_doubles_from_base_up_to_cap() -> None:
    policy = BackoffPolicy(base=1.0, cap=120.0)
    assert [policy.ceiling(n) for n in range(9)] == [1, 2, 4, 8, 16, 32, 64, 120, 120]
    assert policy.ceiling(10_000) == 120.0


@given(
    attempt=st.integers(0, 500),
    seed=st.integers(0, 2**32),
    base=st.floats(0.01, 10),
    factor=st.floats(1, 1000),
)
def test_full_jitter_delay_lies_between_zero_and_the_ceiling(
    attempt: int, seed: int, base: float, factor: float
) -> None:
    policy = BackoffPolicy(base=base, cap=base * factor)
    delay = policy.delay(attempt, random.Random(seed))
    assert 0.0 <= delay <= min(policy.cap, base * 2.0 ** min(attempt, 64))


def test_jitter_spreads_over_the_whole_range() -> None:
    policy = BackoffPolicy(base=1.0, cap=120.0)
    rng = random.Random(7)
    samples = [policy.delay(10, rng) for _ in range(2000)]  # ceiling 120
    assert min(samples) < 6.0 and max(samples) > 114.0
    # not lock-step: a fleet of devices does not retry in the same second
    assert len({round(s) for s in samples}) > 100


def test_seeded_sequences_repeat_and_differ_between_seeds() -> None:
    def run(seed: int) -> list[float]:
        b = Backoff(BackoffPolicy(), rng=random.Random(seed))
        return [b.next_delay() for _ in range(8)]

    assert run(1) == run(1)
    assert run(1) != run(2)


def test_attempts_grow_until_a_stable_connection_resets_them() -> None:
    clock = FakeClock()
    b = Backoff(BackoffPolicy(base=1, cap=120, stable_period=30), rng=random.Random(0), clock=clock)
    for _ in range(5):
        b.next_delay()
    assert b.attempt == 5
    b.connected()
    clock.now += 29.9  # dropped before the stable period: no reset
    b.disconnected()
    assert b.attempt == 5
    b.next_delay()
    b.connected()
    clock.now += 30.0
    b.disconnected()
    assert b.attempt == 0
    # a disconnect without a connection in between changes nothing
    b.next_delay()
    b.disconnected()
    assert b.attempt == 1


def test_permanent_refusals_wait_the_cap() -> None:
    b = Backoff(BackoffPolicy(base=1, cap=45), rng=random.Random(3))
    assert [b.next_delay(permanent=True) for _ in range(3)] == [45, 45, 45]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"base": 0}, "base must be > 0"),
        ({"base": 5, "cap": 1}, "cap .* must be >= base"),
        ({"stable_period": -1}, "stable period must be >= 0"),
    ],
)
def test_bad_policy_numbers_are_refused(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        BackoffPolicy(**kwargs)


def test_negative_attempt_is_refused() -> None:
    with pytest.raises(ValueError, match="attempt must be >= 0"):
        BackoffPolicy().ceiling(-1)
