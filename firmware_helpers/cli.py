"""``iotx509`` subcommands owned by ``firmware_helpers``: ``ca``, ``certs``, ``provision``,
``device agent`` and ``sim board`` (stdlib imports only at module level)."""

from __future__ import annotations

from device_sdk.cli_support import CommandTree


def register(tree: CommandTree) -> None:
    """Add the certificate commands and the serial provisioning commands."""
    from firmware_helpers import cert_cli
    from firmware_helpers.serial import cli as serial_cli

    cert_cli.register(tree)
    serial_cli.register(tree)
