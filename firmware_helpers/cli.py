"""``iotx509`` subcommands owned by ``firmware_helpers`` (stdlib imports only at module level)."""

from __future__ import annotations

from device_sdk.cli_support import CommandTree


def register(tree: CommandTree) -> None:
    """Add this part's subcommands to the ``iotx509`` command tree."""
