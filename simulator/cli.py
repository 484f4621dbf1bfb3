"""``iotx509 fleet ...``: ``create`` a fleet on a platform, ``run`` Locust against it.

Only the standard library (and the SDK) is imported at module level, so ``iotx509 --help`` and
``iotx509 fleet run --help`` work without the ``simulator`` extra; the handlers import what they
need.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
from pathlib import Path
from types import FrameType

from device_sdk.cli_support import CommandTree, env_default
from simulator.options import add_to_argparse, to_locust_args

LOCUSTFILE = Path(__file__).resolve().parent / "locustfile.py"
RENEWAL_LOCUSTFILE = Path(__file__).resolve().parent / "renewal_locustfile.py"


def register(tree: CommandTree) -> None:
    """Add ``iotx509 fleet create``, ``run`` and ``locustfile``."""
    group = tree.group("fleet", help="simulated device fleets: create them, load-test with Locust")

    create = group.add_parser(
        "create",
        help="create (or grow) a fleet of associated device certificates on a platform",
        description="Create a product and a private CA if none are given, register the CA, "
        "issue N device certificates on all cores and associate them, and write FLEET/fleet.json. "
        "The devices' endpoint and server CA come from the platform (GET /api/v1/endpoint) "
        "unless --mqtt/--server-ca are given. With --no-platform (a generic broker such as "
        "Mosquitto): certificates and fleet.json only, no HTTP API. "
        "Re-running with a larger --count adds devices; existing ones are never re-issued.",
    )
    create.add_argument(
        "--server",
        default=env_default("IOTX509_SERVER"),
        metavar="URL",
        help="the platform's HTTP API, e.g. http://127.0.0.1:8080 (env IOTX509_SERVER)",
    )
    create.add_argument(
        "--token",
        default=env_default("IOTX509_TOKEN"),
        metavar="T",
        help="API token (env IOTX509_TOKEN)",
    )
    create.add_argument(
        "--count",
        type=int,
        required=True,
        metavar="N",
        help="the number of devices the fleet should have",
    )
    create.add_argument(
        "--out",
        type=Path,
        required=True,
        metavar="FLEET",
        help="the fleet directory (created with mode 0700)",
    )
    create.add_argument(
        "--product-key",
        metavar="PK",
        help="use this product instead of creating one (x509, private CA, MQTT)",
    )
    create.add_argument(
        "--ca",
        type=Path,
        dest="ca_cert",
        metavar="CA_CERT",
        help="use this private CA certificate instead of creating one",
    )
    create.add_argument("--ca-key", type=Path, metavar="CA_KEY", help="the key of --ca")
    create.add_argument(
        "--mqtt",
        metavar="mqtts://HOST:PORT",
        help="the devices' endpoint (default: what the platform says; required with --no-platform)",
    )
    create.add_argument(
        "--server-ca",
        type=Path,
        metavar="PEM",
        help="CA certificate the devices verify the endpoint with (default: the platform's)",
    )
    create.add_argument(
        "--no-platform",
        action="store_true",
        help="no HTTP API: make the CA and device certificates and fleet.json "
        "only, for a broker that trusts FLEET/ca/ca.cer",
    )
    create.add_argument(
        "--prefix",
        default="sim",
        help="DeviceNames are PREFIX-000000, PREFIX-000001, ... (default: sim)",
    )
    create.add_argument(
        "--jobs", type=int, metavar="N", help="processes for key generation (default: all cores)"
    )
    create.set_defaults(handler=_create)

    run = group.add_parser(
        "run",
        help="run Locust with the simulator's locustfile (arguments after -- go to Locust)",
        description="Runs: locust -f LOCUSTFILE --fleet FLEET [simulator options] LOCUST_ARGS. "
        "SIGTERM, SIGHUP (and SIGINT not from the terminal) are passed on to Locust. "
        "Example: iotx509 fleet run FLEET --scenario reconnect-storm -- --headless -u 100 "
        "-r 20 -t 60s --csv out/run",
    )
    run.add_argument("fleet", type=Path, metavar="FLEET", help="the fleet directory")
    add_to_argparse(run, skip=("--fleet",))
    run.add_argument(
        "locust_args",
        nargs=argparse.REMAINDER,
        metavar="LOCUST_ARGS",
        help="after --: passed to locust as they are (locust --help lists them)",
    )
    run.set_defaults(handler=_run)

    locustfile = group.add_parser(
        "locustfile",
        help="print the path of the simulator's locustfile (for locust -f)",
        description="Prints the installed simulator/locustfile.py, for: "
        'locust -f "$(iotx509 fleet locustfile)" --fleet FLEET ...',
    )
    locustfile.set_defaults(handler=_locustfile)


def _create(args: argparse.Namespace) -> int:
    from simulator.fleet_create import CreateOptions, TextProgress, create_fleet

    options = CreateOptions(
        server=args.server,
        token=args.token,
        count=args.count,
        out=args.out,
        product_key=args.product_key,
        ca_cert=args.ca_cert,
        ca_key=args.ca_key,
        mqtt=args.mqtt,
        server_ca=args.server_ca,
        prefix=args.prefix,
        jobs=args.jobs,
        no_platform=args.no_platform,
    )
    fleet = create_fleet(options, TextProgress())
    assert fleet.ca is not None
    where = "" if fleet.http_url else f" (no platform: the broker must trust {fleet.ca.cert})"
    print(
        f"fleet {fleet.directory}: {len(fleet)} devices of product {fleet.product_key}, "
        f"CA {fleet.ca.ca_sn}, endpoint {fleet.mqtt.url()}{where}"
    )
    return 0


def _run(args: argparse.Namespace) -> int:
    from device_sdk.cli_support import require_extra

    require_extra("locust", "simulator")
    simulator_args, extra = _split_run_args(args)
    command = [
        sys.executable,
        "-m",
        "locust",
        "-f",
        str(
            RENEWAL_LOCUSTFILE if "renewal" in _scenario([*simulator_args, *extra]) else LOCUSTFILE
        ),
        "--fleet",
        str(args.fleet),
        *simulator_args,
        *extra,
    ]
    return run_forwarding_signals(command)


def _scenario(arguments: list[str]) -> list[str]:
    """The ``--scenario`` value among the arguments, before or after ``--`` (the renewal
    scenario has devices of its own: :mod:`simulator.renewal_scenario`)."""
    for i, arg in enumerate(arguments):
        if arg == "--scenario":
            return arguments[i + 1 : i + 2]
        if arg.startswith("--scenario="):
            return [arg.partition("=")[2]]
    from_env = os.environ.get("IOTX509_SCENARIO")
    return [from_env] if from_env else []


def _split_run_args(args: argparse.Namespace) -> tuple[list[str], list[str]]:
    """Simulator options (before ``--``, checked here) and Locust's own (after ``--``).

    argparse hands everything after FLEET over as one remainder; without a ``--`` in it, it all
    goes to Locust as before (Locust knows the simulator's options too).
    """
    rest = list(args.locust_args)
    if "--" not in rest:
        return to_locust_args(args, skip=("--fleet",)), rest
    cut = rest.index("--")
    parser = argparse.ArgumentParser(prog="iotx509 fleet run FLEET", add_help=False)
    add_to_argparse(parser, skip=("--fleet",))
    parsed = parser.parse_args(rest[:cut], namespace=argparse.Namespace(**vars(args)))
    return to_locust_args(parsed, skip=("--fleet",)), rest[cut + 1 :]


def _locustfile(_args: argparse.Namespace) -> int:
    print(LOCUSTFILE)
    return 0


FORWARDED_SIGNALS = (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)


def _terminal_sent_it() -> bool:
    """Whether a SIGINT most likely came from the terminal (Ctrl-C reaches the whole
    foreground process group, Locust included, so it must not be sent twice)."""
    try:
        return os.tcgetpgrp(sys.stdin.fileno()) == os.getpgrp()
    except (OSError, ValueError, AttributeError):
        return False


def run_forwarding_signals(command: list[str]) -> int:
    """Run ``command``; pass SIGTERM/SIGHUP (and a SIGINT not from the terminal) on to it.

    Waits for the child to exit, however it ends, and returns its status (128 + N if a signal
    N killed it), so a supervisor stopping ``iotx509 fleet run`` stops Locust too.
    """
    child = subprocess.Popen(command, env=os.environ.copy())

    def forward(signum: int, _frame: FrameType | None) -> None:
        if signum == signal.SIGINT and _terminal_sent_it():
            return
        if child.poll() is None:
            child.send_signal(signum)

    previous = {sig: signal.signal(sig, forward) for sig in FORWARDED_SIGNALS}
    try:
        while True:
            try:
                code = child.wait()
                break
            except InterruptedError:  # pragma: no cover - PEP 475 retries wait() itself
                continue
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 128 - code if code < 0 else code
