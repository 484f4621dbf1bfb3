"""``iotx509 fleet ...``: ``create`` a fleet on a platform, ``run`` Locust against it.

Only the standard library is imported at module level, so ``iotx509 --help`` works without the
``simulator`` extra; the handlers import what they need.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from device_sdk.cli_support import CommandTree, env_default

LOCUSTFILE = Path(__file__).resolve().parent / "locustfile.py"


def register(tree: CommandTree) -> None:
    """Add ``iotx509 fleet create`` and ``iotx509 fleet run``."""
    group = tree.group("fleet", help="simulated device fleets: create them, load-test with Locust")

    create = group.add_parser(
        "create",
        help="create (or grow) a fleet of associated device certificates on a platform",
        description="Create a product and a private CA if none are given, register the CA, "
        "issue N device certificates on all cores and associate them, and write FLEET/fleet.json. "
        "Re-running with a larger --count adds devices; existing ones are never re-issued.",
    )
    create.add_argument("--server", default=env_default("IOTX509_SERVER"), metavar="URL",
                        help="the platform's HTTP API, e.g. http://127.0.0.1:8080 "
                        "(env IOTX509_SERVER)")
    create.add_argument("--token", default=env_default("IOTX509_TOKEN"), metavar="T",
                        help="API token (env IOTX509_TOKEN)")
    create.add_argument("--count", type=int, required=True, metavar="N",
                        help="the number of devices the fleet should have")
    create.add_argument("--out", type=Path, required=True, metavar="FLEET",
                        help="the fleet directory (created with mode 0700)")
    create.add_argument("--product-key", metavar="PK", help="use this product instead of "
                        "creating one (x509, private CA, MQTT)")
    create.add_argument("--ca", type=Path, dest="ca_cert", metavar="CA_CERT",
                        help="use this private CA certificate instead of creating one")
    create.add_argument("--ca-key", type=Path, metavar="CA_KEY", help="the key of --ca")
    create.add_argument("--mqtt", metavar="mqtts://HOST:PORT",
                        help="the devices' endpoint (default: the --server host, port 8883)")
    create.add_argument("--server-ca", type=Path, metavar="PEM",
                        help="CA certificate the devices verify the endpoint with "
                        "(the reference server writes DATA_DIR/server-ca.pem)")
    create.add_argument("--prefix", default="sim",
                        help="DeviceNames are PREFIX-000000, PREFIX-000001, ... (default: sim)")
    create.add_argument("--jobs", type=int, metavar="N",
                        help="processes for key generation (default: all cores)")
    create.set_defaults(handler=_create)

    run = group.add_parser(
        "run",
        help="run Locust with the simulator's locustfile (arguments after -- go to Locust)",
        description="Shorthand for: locust -f simulator/locustfile.py --fleet FLEET ... "
        "Example: iotx509 fleet run FLEET -- --headless -u 100 -r 20 -t 60s --csv out/run",
    )
    run.add_argument("fleet", type=Path, metavar="FLEET", help="the fleet directory")
    run.add_argument("locust_args", nargs=argparse.REMAINDER, metavar="LOCUST_ARGS",
                     help="passed to locust as they are")
    run.set_defaults(handler=_run)


def _create(args: argparse.Namespace) -> int:
    from simulator.errors import FleetCreateError
    from simulator.fleet_create import CreateOptions, TextProgress, create_fleet

    if not args.server:
        raise FleetCreateError("--server URL (or env IOTX509_SERVER) is required", step="options")
    if not args.token:
        raise FleetCreateError("--token T (or env IOTX509_TOKEN) is required", step="options")
    options = CreateOptions(
        server=args.server, token=args.token, count=args.count, out=args.out,
        product_key=args.product_key, ca_cert=args.ca_cert, ca_key=args.ca_key, mqtt=args.mqtt,
        server_ca=args.server_ca, prefix=args.prefix, jobs=args.jobs,
    )
    fleet = create_fleet(options, TextProgress())
    assert fleet.ca is not None
    print(
        f"fleet {fleet.directory}: {len(fleet)} devices of product {fleet.product_key}, "
        f"CA {fleet.ca.ca_sn}, endpoint {fleet.mqtt.url()}"
    )
    return 0


def _run(args: argparse.Namespace) -> int:
    from device_sdk.cli_support import require_extra

    require_extra("locust", "simulator")
    extra = list(args.locust_args)
    if extra and extra[0] == "--":
        extra = extra[1:]
    command = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--fleet", str(args.fleet),
               *extra]
    return subprocess.call(command, env=os.environ.copy())
