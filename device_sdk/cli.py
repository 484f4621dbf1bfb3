"""``iotx509 device connect``: connect once with a certificate pair and print the identity;
``iotx509 device renew``: renew the pair's certificate now (docs/renewal.md).

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
from typing import Any

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


def _add_credential_options(
    parser: argparse.ArgumentParser, *, cert: str, key: str, password: str
) -> None:
    """Where ``connect`` and ``renew`` find the device's pair (each says its own help)."""
    source = parser.add_argument_group("credentials (either --cert and --key, or --store)")
    source.add_argument("--cert", help=cert)
    source.add_argument("--key", help=key)
    source.add_argument("--store", metavar="DIR", help="credential store written by provisioning")
    source.add_argument(
        "--key-password-env", metavar="VAR", default="IOTX509_KEY_PASSWORD", help=password
    )


def _add_server_options(parser: argparse.ArgumentParser) -> None:
    """The server ``connect`` and ``renew`` reach, and how its certificate is checked."""
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
    _add_credential_options(
        parser,
        cert="device certificate (PEM or DER; intermediates may follow)",
        key="device private key (PKCS#1 or PKCS#8 PEM, or DER)",
        password="environment variable holding the key's password (default: %(default)s)",
    )
    _add_server_options(parser)
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
    _register_renew(group)


_RENEW_EXIT_STATUSES = """exit status:
  0   renewed: the new pair is in place (same file names) and the platform accepted it
  65  credentials cannot be used, or the platform/signer refused the request (the reason is
      printed; the current pair is kept)
  69  network, or no certificate came back in time (signer down or slow): the current pair
      is kept; run again later
  other statuses as for 'iotx509 device connect'"""


def _register_renew(group: Any) -> None:
    """``iotx509 device renew``: renew one device's certificate now (docs/renewal.md)."""
    parser: argparse.ArgumentParser = group.add_parser(
        "renew",
        help="renew a device's certificate now: new key on this machine, CSR over MQTT, "
        "the customer's signer issues, the new pair replaces the old one",
        description="Connect with the device's pair, make a new RSA-2048 key here, ask the "
        "platform for a certificate (the customer's signer, 'iotx509 ca signer', issues it), "
        "store the new pair beside the old one, reconnect with it and, once the platform "
        "accepted it, put it in place of the old pair (same file names). A run interrupted "
        "at any step leaves a pair that connects; running the command again resumes. Prints "
        "the result as JSON.",
        epilog=_RENEW_EXIT_STATUSES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_credential_options(
        parser,
        cert="device certificate file (replaced by the new one)",
        key="device private key file (replaced by the new one)",
        password="environment variable holding the key's password; the new key gets the same "
        "(default: %(default)s)",
    )
    _add_server_options(parser)
    parser.add_argument(
        "--identity-store", metavar="FILE", help="JSON file that keeps the identity"
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=300.0,
        help="seconds to wait for the whole renewal, signer included (default: %(default)s)",
    )
    parser.set_defaults(handler=_renew, usage_error=parser.error)


def _uses_store(args: argparse.Namespace) -> bool:
    """The pair comes from --store (True) or from --cert and --key (False): exactly one of the
    two, else a usage error (exit 2)."""
    if args.store:
        if args.cert or args.key:
            args.usage_error("give either --store or --cert/--key, not both")
        return True
    if not (args.cert and args.key):
        args.usage_error("give --cert and --key (or --store DIR)")
    return False


def _renew(args: argparse.Namespace) -> int:
    import os
    import time

    from device_sdk.client import DeviceClient
    from device_sdk.errors import RenewalFailedError, RenewalRefusedError
    from device_sdk.refusals import CLI_HINTS
    from device_sdk.renewal import RenewalPolicy, RenewalState, ReportKind
    from device_sdk.renewal_manager import Renewal

    password = os.environ.get(args.key_password_env) or None
    policy = RenewalPolicy(automatic=False)
    if _uses_store(args):
        renewal = Renewal.for_store(args.store, password=password, policy=policy)
    else:
        renewal = Renewal.for_files(args.cert, args.key, password=password, policy=policy)
    old_sn = renewal.current.sn
    resuming = renewal.state is not RenewalState.IDLE
    client = DeviceClient(
        args.host,
        args.port,
        renewal.credentials,
        server_ca=args.server_ca,
        server_hostname=args.server_hostname,
        identity_store=args.identity_store,
        hints=CLI_HINTS,
    )
    renewal.attach(client)
    started = time.monotonic()
    try:
        client.connect(timeout=min(args.timeout, 60.0))
        if not resuming:
            client.renew_now()
        remaining = max(1.0, args.timeout - (time.monotonic() - started))
        report = renewal.wait((ReportKind.RENEWED, ReportKind.REFUSED), remaining)
        identity = client.identity
        new_sn = client.credentials.sn
    finally:
        client.disconnect()
        renewal.close()
    if report is None:
        failures = [r for r in renewal.reports if r.kind is ReportKind.FAILED]
        why = failures[-1].reason if failures else "no answer"
        raise RenewalFailedError(
            f"no new certificate within {args.timeout:g} s ({why}); the current pair "
            f"(SN {old_sn}) is kept; run the command again to resume (is the customer's "
            "signer, 'iotx509 ca signer', running?)",
            reason=why,
        )
    if report.kind is ReportKind.REFUSED:
        raise RenewalRefusedError(
            f"the renewal was refused: {report.reason}; the current pair (SN {old_sn}) is kept",
            reason=report.reason,
            request_id=report.request_id,
        )
    result: dict[str, object] = dict(identity.to_json()) if identity else {}
    result.update(
        status="renewed",
        oldCertSn=old_sn,
        certSn=new_sn,
        seconds=round(time.monotonic() - started, 3),
    )
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")
    return 0


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
            if _uses_store(args):
                creds = Credentials.from_store(args.store, password)
            else:
                creds = Credentials.from_files(args.cert, args.key, password)
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
