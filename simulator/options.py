"""The simulator's command-line options, declared once for Locust and for ``iotx509 fleet run``.

Standard library only: ``iotx509 fleet run --help`` lists them without Locust installed, and
Locust's parser gets the same names, defaults and help (plus ``env_var`` and web-UI settings).
``locust -f simulator/locustfile.py --help`` cannot show them: Locust prints its help before it
imports a locustfile, so ``iotx509 fleet run --help`` is where they are documented.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from device_sdk.defaults import (
    DEFAULT_KEEPALIVE,
    DEFAULT_RECONNECT_BASE,
    DEFAULT_RECONNECT_CAP,
    DEFAULT_STABLE_PERIOD,
)
from device_sdk.platform import KEEPALIVE_MAX, KEEPALIVE_MIN

SCENARIOS = ("steady", "reconnect-storm", "revocation", "renewal")

#: The SDK's defaults (one home: :mod:`device_sdk.defaults`), under the simulator's names.
KEEPALIVE_DEFAULT = DEFAULT_KEEPALIVE
RECONNECT_BASE = DEFAULT_RECONNECT_BASE
RECONNECT_CAP = DEFAULT_RECONNECT_CAP
STABLE_PERIOD = DEFAULT_STABLE_PERIOD
FAULT_AT = 30.0
SUMMARY_EVERY = 10.0
#: Connection attempts one worker has in flight (TCP + TLS + CONNECT until CONNACK): the reference
#: server refuses more than 64 unauthenticated connections from one address
#: (``max_pending_per_source``), and a worker is one address.
MAX_CONNECTING = 32


@dataclass(frozen=True)
class Option:
    """One option: its flag, argparse keywords, and what only Locust's parser understands."""

    flag: str
    kwargs: dict[str, Any]
    env_var: str | None = None
    in_web_ui: bool = True

    @property
    def dest(self) -> str:
        return self.flag.lstrip("-").replace("-", "_")


OPTIONS: tuple[Option, ...] = (
    Option(
        "--fleet",
        {
            "default": None,
            "metavar": "FLEET",
            "help": "fleet directory made by 'iotx509 fleet create' (required)",
        },
        env_var="IOTX509_FLEET",
    ),
    Option(
        "--template",
        {
            "default": None,
            "metavar": "FILE",
            "help": "device template JSON (default: the one shipped with the simulator)",
        },
        env_var="IOTX509_TEMPLATE",
    ),
    Option(
        "--scenario",
        {
            "default": "steady",
            "choices": SCENARIOS,
            "help": "steady (default), reconnect-storm, revocation or renewal (run with "
            "simulator/renewal_locustfile.py; iotx509 fleet run picks it)",
        },
        env_var="IOTX509_SCENARIO",
    ),
    Option(
        "--fault-at",
        {
            "type": float,
            "default": FAULT_AT,
            "metavar": "S",
            "help": f"seconds into the test when the scenario's fault happens "
            f"(default {FAULT_AT:g})",
        },
    ),
    Option(
        "--restore-at",
        {
            "type": float,
            "default": None,
            "metavar": "S",
            "help": "revocation: seconds into the test when the CA is enabled again",
        },
    ),
    Option(
        "--fault-command",
        {
            "default": None,
            "metavar": "CMD",
            "help": "reconnect-storm: command that restarts the endpoint",
        },
    ),
    Option(
        "--server-ca",
        {
            "default": None,
            "metavar": "PEM",
            "help": "CA certificate the devices verify the endpoint with "
            "(default: the fleet's serverCa)",
        },
        env_var="IOTX509_SERVER_CA",
    ),
    Option(
        "--no-identity",
        {
            "action": "store_true",
            "default": False,
            "help": "generic broker (e.g. Mosquitto): do not wait for the "
            "platform's identity message; topics are the fleet's "
            "/PK/DN/... anyway",
        },
    ),
    Option(
        "--keepalive",
        {
            "type": int,
            "default": KEEPALIVE_DEFAULT,
            "metavar": "S",
            "help": f"MQTT keep-alive in seconds ({KEEPALIVE_MIN}..{KEEPALIVE_MAX}, "
            f"default {KEEPALIVE_DEFAULT})",
        },
    ),
    Option(
        "--reconnect-base",
        {
            "type": float,
            "default": RECONNECT_BASE,
            "metavar": "S",
            "help": f"backoff base in seconds (the SDK's default {RECONNECT_BASE:g})",
        },
    ),
    Option(
        "--reconnect-cap",
        {
            "type": float,
            "default": RECONNECT_CAP,
            "metavar": "S",
            "help": f"backoff cap in seconds (the SDK's default {RECONNECT_CAP:g})",
        },
    ),
    Option(
        "--stable-period",
        {
            "type": float,
            "default": STABLE_PERIOD,
            "metavar": "S",
            "help": f"seconds a connection must last before the backoff "
            f"resets (default {STABLE_PERIOD:g})",
        },
    ),
    Option(
        "--max-connecting",
        {
            "type": int,
            "default": MAX_CONNECTING,
            "metavar": "N",
            "help": f"connection attempts one Locust process has in flight at once; the "
            f"others wait their turn (default {MAX_CONNECTING})",
        },
    ),
    Option(
        "--summary-every",
        {
            "type": float,
            "default": SUMMARY_EVERY,
            "metavar": "S",
            "help": f"log one summary line of device connections every S "
            f"seconds instead of a line per device (default "
            f"{SUMMARY_EVERY:g})",
        },
    ),
    Option(
        "--lease-log",
        {
            "default": None,
            "metavar": "FILE",
            "help": "append 'pid index DeviceName' for every device a user takes",
        },
        in_web_ui=False,
    ),
)


def add_to_locust(parser: Any) -> None:
    """Register every option on Locust's parser (``events.init_command_line_parser``)."""
    for option in OPTIONS:
        extra: dict[str, Any] = {}
        if option.env_var:
            extra["env_var"] = option.env_var
        if not option.in_web_ui:
            extra["include_in_web_ui"] = False
        # On the parser itself: only there does Locust take include_in_web_ui.
        parser.add_argument(option.flag, **option.kwargs, **extra)


def add_to_argparse(parser: argparse.ArgumentParser, *, skip: Sequence[str] = ()) -> None:
    """Register the options on a plain parser, defaults None: only what is given is passed on."""
    group = parser.add_argument_group("simulator options (passed to Locust)")
    for option in OPTIONS:
        if option.flag in skip:
            continue
        kwargs = dict(option.kwargs)
        shown = kwargs.get("default")
        kwargs["default"] = None
        if option.env_var:
            kwargs["help"] = f"{kwargs['help']} (env {option.env_var})"
        if kwargs.get("action") == "store_true":
            kwargs.pop("metavar", None)
        elif shown is not None and "default" not in kwargs["help"]:
            kwargs["help"] = f"{kwargs['help']} (default {shown})"
        group.add_argument(option.flag, **kwargs)


def to_locust_args(args: argparse.Namespace, *, skip: Sequence[str] = ()) -> list[str]:
    """The options given on a plain parser, as Locust command-line arguments."""
    out: list[str] = []
    for option in OPTIONS:
        if option.flag in skip:
            continue
        value = getattr(args, option.dest, None)
        if value is None or value is False:
            continue
        if value is True:
            out.append(option.flag)
        else:
            out += [option.flag, str(value)]
    return out


__all__ = ["OPTIONS", "SCENARIOS", "Option", "add_to_argparse", "add_to_locust", "to_locust_args"]
