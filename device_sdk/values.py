"""Frozen value types that cost little to define: ``typing.NamedTuple``, compared with their type.

Why not ``dataclasses`` here: each frozen dataclass costs 0.3-0.6 ms and ~9 KB of generated code
at import, and the device SDK's import time and memory are a measured target
(``bench/bench_sdk_footprint.py``: no more than the AWS IoT Device SDK's). A NamedTuple costs
about a tenth. Plain tuples compare equal across types (``Stop(1.0) == Tick(1.0)``); classes
passed to :func:`compare_by_type` do not::

    class Tick(NamedTuple):
        at: float

    values.compare_by_type(Tick, Stop)
"""

from __future__ import annotations

from typing import Any


def _eq(self: tuple[Any, ...], other: object) -> bool:
    return type(self) is type(other) and tuple.__eq__(self, other)


def _ne(self: tuple[Any, ...], other: object) -> bool:
    return not _eq(self, other)


def _hash(self: tuple[Any, ...]) -> int:
    return hash((type(self).__qualname__, tuple.__hash__(self)))


def compare_by_type(*classes: type[tuple[Any, ...]]) -> None:
    """Equal only to a value of the same class with equal fields (and hashed so)."""
    for cls in classes:
        cls.__eq__ = _eq  # type: ignore[method-assign]
        cls.__ne__ = _ne  # type: ignore[assignment,method-assign]
        cls.__hash__ = _hash  # type: ignore[method-assign]
