"""``iotx509 provision``, ``iotx509 device agent`` and ``iotx509 sim board``."""

from __future__ import annotations

from device_sdk.cli_support import CommandTree


def register(tree: CommandTree) -> None:
    """Add the serial provisioning commands."""
