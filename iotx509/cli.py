"""Entry point of ``iotx509``. It only assembles: each part registers its own subcommands."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Sequence

from device_sdk.cli_support import CommandTree
from device_sdk.errors import Iotx509Error

#: Modules with ``register(tree)``; a part whose optional dependencies are missing still
#: registers, and its handlers explain which extra to install.
PART_CLIS = (
    "device_sdk.cli",
    "firmware_helpers.cli",
    "server_stub.cli",
    "simulator.cli",
    "iotx509.demo",
)


def build_parser() -> tuple[argparse.ArgumentParser, CommandTree]:
    parser = argparse.ArgumentParser(
        prog="iotx509",
        description="Private-CA X.509 device authentication for MQTT: device SDK, reference "
        "server, certificate and serial provisioning tools, fleet simulator.",
    )
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)"
    )
    tree = CommandTree(parser)
    for name in PART_CLIS:
        module = importlib.import_module(name)
        module.register(tree)
    return parser, tree


def main(argv: Sequence[str] | None = None) -> int:
    parser, _ = build_parser()
    args = parser.parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(
        level=int(os.environ.get("IOTX509_LOG_LEVEL", level)),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    handler = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return 2
    try:
        return int(handler(args))
    except Iotx509Error as exc:  # the kit's one root: a message, never a traceback
        print(f"error: {exc}", file=sys.stderr)
        return int(getattr(exc, "exit_code", 1))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
