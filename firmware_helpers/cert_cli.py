"""``iotx509 ca ...`` and ``iotx509 certs ...``."""

from __future__ import annotations

from device_sdk.cli_support import CommandTree


def register(tree: CommandTree) -> None:
    """Add ``ca`` and ``certs``."""
