"""``iotx509 device connect``: connect once with a certificate pair and print the identity.

The quickest way to check a device's credentials against a server from a shell (and what the
Raspberry Pi README uses). Its exit status says which kind of failure it met
(:mod:`device_sdk.exit_codes`), so a script or a service manager can tell a network outage from
a certificate the platform refuses. Only the standard library and the SDK's light modules
(errors, defaults) are imported at module level; the client is imported when the command runs.
"""

from __future__ import annotations

import argparse
import json
import sys

from device_sdk.cli_support import CommandTree, env_default
from device_sdk.defaults import DEFAULT_ATTEMPT_TIMEOUT, DEFAULT_KEEPALIVE, DEFAULT_MQTT_PORT

_EXIT_STATUSES = """exit status:
  0   connected (and published)
  2   usage: the options are wrong
  65  credentials cannot be used (unreadable, mismatched, wrong password, expired certificate)
  69  network: the server cannot be reached or dropped the connection (worth a retry)
  75  clock: the certificate is not valid yet by the system clock (retry after time sync)
  76  certificate rejected by the server in the TLS handshake (is its CA registered, active?)
  77  not authorised: the certificate is not associated with an enabled device
  78  configuration: server CA / host name, client id, or a broker without identities
      (use --no-identity)
  1   any other error"""


def register(tree: CommandTree) -> None:
    """Add ``iotx509 device connect`` (the serial helper adds ``device agent``)."""
    group = tree.group("device", "the device side: connect with a certificate, run the board agent")
    parser: argparse.ArgumentParser = group.add_parser(
        "connect",
        help="connect with a device certificate, print the identity the platform gives it",
        description="Connect over mutual TLS with a device certificate and key, wait for the "
        "platform to say who the device is, print it as JSON, optionally publish, disconnect. "
        "Errors print what to check; the exit status says which kind of failure it was.",
        epilog=_EXIT_STATUSES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    source = parser.add_argument_group("credentials (either --cert and --key, or --store)")
    source.add_argument("--cert", help="device certificate (PEM or DER; intermediates may follow)")
    source.add_argument("--key", help="device private key (PKCS#1 or PKCS#8 PEM, or DER)")
    source.add_argument("--store", metavar="DIR", help="credential store written by provisioning")
    source.add_argument(
        "--key-password-env",
        metavar="VAR",
        default="IOTX509_KEY_PASSWORD",
        help="environment variable holding the key's password (default: %(default)s)",
    )
    parser.add_argument(
        "--server-ca",
        default=env_default("IOTX509_SERVER_CA"),
        help="CA certificate that issued the server's certificate "
        "(default: the store's server-ca.pem, else the system trust store)",
    )
    parser.add_argument("--host", default="127.0.0.1", help="server host (default: %(default)s)")
    parser.add_argument(
        "--port", type=int, default=DEFAULT_MQTT_PORT, help="MQTT TLS port (default: %(default)s)"
    )
    parser.add_argument(
        "--server-hostname",
        help="name the server certificate must carry, when it differs from --host",
    )
    parser.add_argument(
        "--identity-store",
        metavar="FILE",
        help="JSON file that keeps the identity between connections",
    )
    parser.add_argument(
        "--publish",
        nargs=2,
        action="append",
        metavar=("TOPIC", "PAYLOAD"),
        default=[],
        help="publish PAYLOAD (QoS 1) to TOPIC after connecting; "
        "relative topics go under /{productKey}/{deviceName}/ (repeatable)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_ATTEMPT_TIMEOUT,
        help="seconds to wait for the connection and identity (default: %(default)s)",
    )
    parser.add_argument(
        "--keepalive",
        type=_keepalive,
        default=DEFAULT_KEEPALIVE,
        help="MQTT keep-alive, 30-1200 s (default: %(default)s)",
    )
    parser.add_argument(
        "--client-id", help="client id before |securemode=2| (default: the certificate's SN)"
    )
    parser.add_argument(
        "--no-identity",
        action="store_true",
        help="generic MQTT broker: do not wait for the platform's identity message",
    )
    # (usage mistakes exit 2 with the usage line, as argparse's own do)
    parser.set_defaults(handler=_connect, usage_error=parser.error)


def _keepalive(text: str) -> int:
    from device_sdk.platform import validate_keepalive

    try:
        return validate_keepalive(int(text))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _connect(args: argparse.Namespace) -> int:
    import os
    import warnings

    from device_sdk.client import DeviceClient
    from device_sdk.credentials import Credentials
    from device_sdk.errors import NotConnectedError
    from device_sdk.refusals import CLI_HINTS

    password = os.environ.get(args.key_password_env) or None
    # The SDK says a thing once, as a warning (a loose key file, a stale identity file): print
    # each as one line instead of Python's file:line form.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            if args.store:
                if args.cert or args.key:
                    args.usage_error("give either --store or --cert/--key, not both")
                creds = Credentials.from_store(args.store, password)
            elif args.cert and args.key:
                creds = Credentials.from_files(args.cert, args.key, password)
            else:
                args.usage_error("give --cert and --key (or --store DIR)")
            client = DeviceClient(
                args.host,
                args.port,
                creds,
                server_ca=args.server_ca,
                server_hostname=args.server_hostname,
                identity_store=args.identity_store,
                keepalive=args.keepalive,
                client_id=args.client_id,
                expect_identity=not args.no_identity,
                identity_timeout=args.timeout,
                attempt_timeout=args.timeout,
                hints=CLI_HINTS,
            )
        finally:
            for said in dict.fromkeys(str(w.message) for w in caught):
                print(f"warning: {said}", file=sys.stderr)
    identity = client.connect(timeout=args.timeout)
    try:
        for topic, payload in args.publish:
            delivery = client.publish(topic, payload.encode(), qos=1)
            if not delivery.wait(args.timeout):
                raise NotConnectedError(
                    f"the server did not acknowledge the message to {topic!r} within "
                    f"{args.timeout:g} s"
                )
    finally:
        client.disconnect()
    result: dict[str, str] = identity.to_json() if identity else {}
    result["certSn"] = creds.sn
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")
    return 0
