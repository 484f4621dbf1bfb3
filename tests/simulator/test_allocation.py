"""One device per user: the lease pool, and its refusals."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from simulator.allocation import DevicePool
from simulator.errors import FleetExhaustedError


def test_leases_lowest_free_first_and_reuses_released_devices() -> None:
    pool = DevicePool(3)
    assert [pool.lease("a"), pool.lease("b"), pool.lease("a")] == [0, 1, 2]
    assert pool.release(1, "b")
    assert pool.lease("c") == 1
    assert pool.holder_of(1) == "c"
    assert pool.held_by("a") == {0, 2}


def test_an_exhausted_fleet_says_what_to_do() -> None:
    pool = DevicePool(2)
    pool.lease()
    pool.lease()
    with pytest.raises(FleetExhaustedError, match=r"all 2 devices .* grow the fleet"):
        pool.lease()


def test_release_by_someone_else_or_twice_changes_nothing() -> None:
    pool = DevicePool(2)
    index = pool.lease("a")
    assert not pool.release(index, "b")
    assert pool.holder_of(index) == "a"
    assert pool.release(index, "a")
    assert not pool.release(index, "a")
    assert pool.free == 2


def test_a_lost_worker_gives_back_everything_it_held() -> None:
    pool = DevicePool(5)
    for _ in range(3):
        pool.lease("worker-1")
    pool.lease("worker-2")
    assert pool.release_holder("worker-1") == 3
    assert pool.leased == 1
    assert sorted(pool.lease("worker-3") for _ in range(3)) == [0, 1, 2]


def test_indexes_outside_the_fleet_are_refused() -> None:
    with pytest.raises(ValueError, match="outside the fleet"):
        DevicePool(3, indexes=[0, 3])


@given(
    st.lists(
        st.tuples(
            st.sampled_from(["lease", "release", "drop"]),
            st.sampled_from(["w1", "w2", "w3"]),
            st.integers(0, 9),
        ),
        max_size=200,
    )
)
def test_no_device_is_ever_held_twice(ops: list[tuple[str, str, int]]) -> None:
    pool = DevicePool(10)
    held: dict[int, str] = {}
    for op, holder, index in ops:
        if op == "lease":
            if len(held) == 10:
                with pytest.raises(FleetExhaustedError):
                    pool.lease(holder)
                continue
            got = pool.lease(holder)
            assert got not in held
            held[got] = holder
        elif op == "release":
            assert pool.release(index, holder) == (held.get(index) == holder)
            if held.get(index) == holder:
                del held[index]
        else:
            pool.release_holder(holder)
            held = {i: h for i, h in held.items() if h != holder}
        assert pool.leased == len(held)
        assert pool.free + pool.leased == 10
