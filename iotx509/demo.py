"""``iotx509 demo``: the whole flow end to end on embedded defaults."""

from __future__ import annotations

from device_sdk.cli_support import CommandTree


def register(tree: CommandTree) -> None:
    """Add ``iotx509 demo``."""
