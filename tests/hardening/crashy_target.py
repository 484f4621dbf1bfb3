"""A fuzz target with a planted bug, so the runner's crash detection is itself tested."""

from __future__ import annotations


def target(data: bytes) -> None:
    if len(data) >= 2 and data[0] == 0x42:
        raise RuntimeError("planted bug: inputs starting with 0x42 crash")


def hang(data: bytes) -> None:
    if data[:1] == b"H":
        while True:
            pass
