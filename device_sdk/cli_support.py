"""What every part needs to contribute subcommands to the single ``iotx509`` command.

Each part has a ``cli`` module with ``register(tree: CommandTree)``. That module imports only the
standard library at import time, so ``iotx509 --help`` works whatever extras are installed;
heavy imports happen inside the command handlers (see :func:`require_extra`).

A handler takes the parsed ``argparse.Namespace`` and returns the exit status. Errors that a
person can act on derive from the kit's one root, :class:`~device_sdk.errors.Iotx509Error`; the
entry point prints their message (no traceback) and exits non-zero (``exit_code`` when the class
has one).
"""

from __future__ import annotations

import argparse
import importlib
import os
from collections.abc import Callable
from types import ModuleType
from typing import Any

from device_sdk.errors import CommandLineError

Handler = Callable[[argparse.Namespace], int]


class MissingExtraError(CommandLineError):
    """A command needs an optional extra that is not installed."""


class CommandTree:
    """The ``iotx509`` parser, with groups (``iotx509 server ...``) that any part may extend."""

    def __init__(self, parser: argparse.ArgumentParser) -> None:
        self.parser = parser
        self._top = parser.add_subparsers(dest="command", metavar="COMMAND")
        self._groups: dict[str, Any] = {}

    def group(self, name: str, help: str) -> Any:
        """The subparsers of group ``name`` (created on first use; later helps are ignored)."""
        if name not in self._groups:
            self._groups[name] = subgroup(self._top, name, help)
        return self._groups[name]

    def command(self, name: str, help: str, **kwargs: Any) -> argparse.ArgumentParser:
        """A top-level command such as ``iotx509 demo``."""
        parser: argparse.ArgumentParser = self._top.add_parser(
            name, help=help, description=help, **kwargs
        )
        return parser


def subgroup(subparsers: Any, name: str, help: str) -> Any:
    """A command group under ``subparsers`` (``iotx509 server account ...``): given without a
    command it prints its help and exits 2; returns the subparsers its commands go in."""
    group_parser: argparse.ArgumentParser = subparsers.add_parser(name, help=help, description=help)
    group_parser.set_defaults(handler=_print_help(group_parser))
    return group_parser.add_subparsers(dest=f"{name}_command", metavar="COMMAND")


def _print_help(parser: argparse.ArgumentParser) -> Handler:
    def handler(_: argparse.Namespace) -> int:
        parser.print_help()
        return 2

    return handler


def require_extra(module: str, extra: str) -> ModuleType:
    """Import ``module`` or explain which extra to install."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingExtraError(
            f"this command needs the '{extra}' extra: pip install 'iot-x509-kit[{extra}]' ({exc})"
        ) from exc


def env_default(name: str) -> str | None:
    value = os.environ.get(name)
    return value or None
