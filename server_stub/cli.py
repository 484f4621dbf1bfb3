"""``iotx509 server ...`` and ``iotx509 platform ...`` (stdlib imports only at module level).

``server`` runs the reference server and manages accounts on its data directory (needs the
``server`` extra only for ``run``). ``platform`` is a client of the HTTP API, one command per
console step; it works from the base install.

Why it is over 500 lines: it is declarations (argparse) for two command groups and about
thirty subcommands, each handler a few lines that call the HTTP client or the server; the part
owns its commands (the ``iotx509`` entry point only assembles them), and splitting the
declarations from their handlers would make a reader jump between files for one command.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from device_sdk.cli_support import CommandTree, env_default, require_extra, subgroup
from firmware_helpers.platform_client import PlatformAPIError

DEFAULT_SERVER = "http://127.0.0.1:8080"
CERT_TYPE = "application/x-x509-ca-cert"

ENV_SERVER = "IOTX509_SERVER"
ENV_TOKEN = "IOTX509_TOKEN"
ENV_DATA_DIR = "IOTX509_DATA_DIR"
DEFAULT_DATA_DIR = "iotx509-data"


def register(tree: CommandTree) -> None:
    """Add ``server`` and ``platform``."""
    _register_server(tree)
    _register_platform(tree)


# --- iotx509 server ------------------------------------------------------------------------------


def _data_dir_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=Path(env_default(ENV_DATA_DIR) or DEFAULT_DATA_DIR),
        help=f"the server's data directory (env {ENV_DATA_DIR}; default ./{DEFAULT_DATA_DIR})",
    )


def _register_server(tree: CommandTree) -> None:
    group = tree.group("server", "the bundled reference server (registry, HTTP API, MQTT)")
    run = group.add_parser(
        "run",
        help="run the HTTP API and the MQTT endpoint on one event loop",
        description="Run the reference server. On first start it creates the data directory, "
        "the default account (token in DATA_DIR/admin-token) and the server's TLS CA "
        "(DATA_DIR/server-ca.pem). Prints 'ready http=URL mqtt=URL data=DIR' once listening.",
    )
    _data_dir_arg(run)
    run.add_argument("--host", default="127.0.0.1", help="address to listen on")
    run.add_argument("--http-port", type=int, default=8080, help="HTTP API port (0 = any free)")
    run.add_argument("--mqtt-port", type=int, default=8883, help="MQTT/TLS port (0 = any free)")
    run.add_argument(
        "--hostname",
        action="append",
        default=[],
        metavar="NAME",
        help="extra DNS name or IP for the server certificate (repeatable)",
    )
    run.add_argument("--max-upload-bytes", type=int, default=4 * 1024 * 1024)
    limits = run.add_argument_group("MQTT limits")
    # defaults and meanings live once, in MqttLimits (docs/device-endpoint-limits.md)
    from server_stub.config import MqttLimits
    from server_stub.mqtt.tls import ENGINES

    for flag, dest, kind in (
        ("--handshake-timeout", "handshake_timeout", float),
        ("--connect-timeout", "connect_timeout", float),
        ("--max-packet-size", "max_packet_size", int),
        ("--max-connections", "max_connections", int),
        ("--max-pending-connections", "max_pending_connections", int),
        ("--max-pending-per-source", "max_pending_per_source", int),
        ("--max-client-id-length", "max_client_id_length", int),
        ("--max-filters-per-session", "max_filters_per_session", int),
        ("--max-filter-levels", "max_filter_levels", int),
        ("--max-filter-bytes", "max_filter_bytes", int),
        ("--recent-messages", "recent_messages_per_device", int),
        ("--recent-bytes-per-device", "recent_bytes_per_device", int),
        ("--recent-bytes-total", "recent_bytes_total", int),
        ("--recent-retention", "recent_retention", float),
        ("--session-ticket-lifetime", "session_ticket_lifetime", float),
    ):
        limits.add_argument(
            flag,
            dest=dest,
            type=kind,
            default=getattr(MqttLimits, dest),
            help="default %(default)s",
        )
    limits.add_argument(
        "--tls-engine",
        dest="tls_engine",
        choices=("auto", *ENGINES),
        default=MqttLimits.tls_engine,
        help="whose OpenSSL runs the device TLS (default %(default)s: the system one where "
        "Python's ssl can reach it, else pyOpenSSL's)",
    )
    renewal = run.add_argument_group("certificate renewal (docs/renewal.md)")
    from server_stub.config import RenewalSettings

    for flag, dest, kind, help in (
        (
            "--renewal-grace",
            "grace",
            _bounded(float, 1, 10 * 365 * 86400),
            "seconds an old SN stays accepted after renewal",
        ),
        (
            "--renewal-min-interval",
            "min_interval",
            _bounded(float, 0, 86400),
            "seconds between a device's requests",
        ),
        (
            "--renewal-max-open",
            "max_open_per_account",
            _bounded(int, 1, 1_000_000),
            "requests waiting per account",
        ),
        (
            "--renewal-max-csr-bytes",
            "max_csr_bytes",
            _bounded(int, 256, 8192),
            "largest CSR accepted (the protocol's bound is 8192)",
        ),
    ):
        renewal.add_argument(
            flag,
            dest=f"renewal_{dest}",
            type=kind,
            default=getattr(RenewalSettings, dest),
            help=f"{help} (default %(default)s)",
        )
    limits.add_argument(
        "--no-identity-publish",
        action="store_true",
        help="do not publish /ext/auth/identity/response after CONNACK",
    )
    run.set_defaults(handler=_server_run)

    account_sub = subgroup(group, "account", "manage accounts on the data directory")
    create = account_sub.add_parser(
        "create", help="create an account and print its API token (last word of the output)"
    )
    create.add_argument("name")
    _data_dir_arg(create)
    create.set_defaults(handler=_account_create)


def _bounded(kind: type[float] | type[int], low: float, high: float) -> Any:
    """An argparse type: a number of ``kind`` within ``low..high``, or a clear message."""

    def parse(text: str) -> float | int:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{value} is not within {low:.0f}..{high:.0f}")
        return value

    return parse


def _server_run(args: argparse.Namespace) -> int:
    require_extra("fastapi", "server")
    require_extra("uvicorn", "server")
    from dataclasses import fields

    from server_stub.app import run
    from server_stub.config import MqttLimits, RenewalSettings, ServerConfig

    config = ServerConfig(
        data_dir=args.data_dir,
        host=args.host,
        http_port=args.http_port,
        mqtt_port=args.mqtt_port,
        hostnames=tuple(args.hostname),
        max_upload_bytes=args.max_upload_bytes,
        mqtt=MqttLimits(
            deliver_identity=not args.no_identity_publish,
            **{
                f.name: getattr(args, f.name)
                for f in fields(MqttLimits)
                if f.name != "deliver_identity" and hasattr(args, f.name)
            },
        ),
        renewal=RenewalSettings(
            **{f.name: getattr(args, f"renewal_{f.name}") for f in fields(RenewalSettings)}
        ),
    )
    level = logging.getLogger().getEffectiveLevel()
    return run(config, log_level="info" if level <= logging.INFO else "warning")


def _account_create(args: argparse.Namespace) -> int:
    from server_stub.datadir import DataDir
    from server_stub.registry import Registry
    from server_stub.store import SqliteStore

    data = DataDir(args.data_dir).create()
    store = SqliteStore(data.database)
    try:
        _record, token = Registry(store).create_account(args.name)
    finally:
        store.close()
    print(f"created account {args.name}; its API token (shown once) is: {token}")
    return 0


# --- iotx509 platform ----------------------------------------------------------------------------


def _client_options() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--server",
        default=None,
        help=f"the server's HTTP URL (env {ENV_SERVER}; default http://127.0.0.1:8080)",
    )
    common.add_argument("--token", default=None, help=f"the account's API token (env {ENV_TOKEN})")
    common.add_argument("--json", action="store_true", help="print the server's JSON answer")
    return common


def _register_platform(tree: CommandTree) -> None:
    group = tree.group("platform", "the platform console's steps, through the HTTP API")
    common = _client_options()

    def add(sub: Any, name: str, help: str, handler: Any) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = sub.add_parser(
            name, help=help, description=help, parents=[common]
        )
        parser.set_defaults(handler=handler)
        return parser

    add(group, "registration-code", "print this account's registration code", _registration_code)
    endpoint = add(
        group,
        "endpoint",
        "print where devices connect (mqtts://HOST:PORT) and "
        "optionally save the server CA they verify it with",
        _endpoint,
    )
    endpoint.add_argument(
        "--server-ca-out",
        type=Path,
        metavar="FILE",
        help="write the server CA certificate (PEM) to FILE",
    )

    product_sub = subgroup(group, "product", "products")
    create = add(
        product_sub, "create", "create a product; prints its ProductKey last", _product_create
    )
    create.add_argument("--name", required=True)
    create.add_argument("--auth-type", default="x509", help="x509 or secret (default x509)")
    create.add_argument(
        "--private-ca",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="use private CA certificates (default on)",
    )
    create.add_argument("--network", default="mqtt", help="mqtt or lorawan (default mqtt)")
    show = add(product_sub, "show", "show a product", _product_show)
    show.add_argument("product_key")

    reg = add(
        group,
        "register-ca",
        "register a CA certificate with its verification certificate",
        _register_ca,
    )
    reg.add_argument("--name", required=True, help="4-30 letters, digits, underscore")
    reg.add_argument("--ca", required=True, type=Path, help="CA certificate (.cer/.crt/.pem)")
    reg.add_argument(
        "--verification-cert",
        required=True,
        type=Path,
        help="verification certificate (CN = registration code, signed by the CA)",
    )

    ca_sub = subgroup(group, "ca", "registered CA certificates")
    add(ca_sub, "list", "list the account's CA certificates", _ca_list)
    for name, help, handler in (
        ("show", "show one CA certificate", _ca_show),
        ("disable", "set a CA inactive: its devices can no longer connect", _ca_disable),
        ("enable", "set a CA active again", _ca_enable),
        ("delete", "delete a CA and its associations", _ca_delete),
        ("associations", "list a CA's device associations", _ca_associations),
    ):
        add(ca_sub, name, help, handler).add_argument("ca_sn")

    template = add(
        group,
        "association-template",
        "download the association CSV template",
        _association_template,
    )
    template.add_argument("ca_sn")
    template.add_argument("--out", type=Path, help="write to this file instead of stdout")

    assoc = add(
        group, "associate", "upload an association CSV (ProductKey,DeviceName,CertSN)", _associate
    )
    assoc.add_argument("ca_sn")
    assoc.add_argument("file", type=Path)

    device_sub = subgroup(group, "device", "devices")
    for name, help, handler in (
        ("show", "show a device (status, association, online)", _device_show),
        ("disable", "disable a device: it can no longer connect", _device_disable),
        ("enable", "enable a device", _device_enable),
    ):
        parser = add(device_sub, name, help, handler)
        parser.add_argument("product_key")
        parser.add_argument("device_name")

    certs_sub = subgroup(group, "certs", "device certificates as the platform saw them")
    expiring = add(
        certs_sub,
        "expiring",
        "list devices whose current certificate expires within --days days, soonest first "
        "(notAfter as seen at the device's last connection or renewal)",
        _certs_expiring,
    )
    expiring.add_argument("--days", type=float, required=True, help="within this many days")
    expiring.add_argument("--limit", type=int, default=1000, help="at most this many (1000)")

    message_sub = subgroup(group, "message", "cloud-to-device messages and what devices sent")
    send = add(
        message_sub,
        "send",
        "send a message to a connected device (the topic must lie under /PK/DN/ or /sys/PK/DN/)",
        _message_send,
    )
    send.add_argument("product_key", metavar="PK")
    send.add_argument("device_name", metavar="DN")
    send.add_argument(
        "topic",
        metavar="TOPIC",
        help="absolute topic, e.g. /PK/DN/user/get; a relative one (user/get) is "
        "refused with the allowed prefixes",
    )
    send.add_argument("payload", metavar="PAYLOAD", help="UTF-8 text sent as it is")
    send.add_argument("--qos", type=int, choices=(0, 1), default=0, help="0 or 1 (default 0)")
    listed = add(
        message_sub,
        "list",
        "list the most recent messages a device published (oldest first)",
        _message_list,
    )
    listed.add_argument("product_key", metavar="PK")
    listed.add_argument("device_name", metavar="DN")
    listed.add_argument("--limit", type=int, default=100, help="at most this many (default 100)")


def _client(args: argparse.Namespace) -> Any:
    from firmware_helpers.platform_client import PlatformClient

    server = args.server or env_default(ENV_SERVER) or DEFAULT_SERVER
    token = args.token or env_default(ENV_TOKEN)
    if not token:
        raise PlatformAPIError(
            f"no API token: pass --token or set {ENV_TOKEN} (the default account's token is in "
            "DATA_DIR/admin-token)"
        )
    return PlatformClient(server, token, timeout=60.0)


def _print(args: argparse.Namespace, data: Any, text: str) -> int:
    print(json.dumps(data, indent=2) if args.json else text)
    return 0


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise PlatformAPIError(f"cannot read the {what} {path}: {exc.strerror or exc}") from exc


def _product_text(p: dict[str, Any]) -> str:
    return (
        f"product {p['name']!r}: authType={p['authType']} privateCa={str(p['privateCa']).lower()}"
        f" network={p['network']}\nProductKey: {p['productKey']}"
    )


def _ca_text(c: dict[str, Any]) -> str:
    return (
        f"{c['caSn']}  {c['status']:<8}  {c['name']}  {c['subject']}  "
        f"{c['notBefore']}..{c['notAfter']}"
    )


def _registration_code(args: argparse.Namespace) -> int:
    code = _client(args).registration_code()
    return _print(args, {"registrationCode": code}, code)


def _endpoint(args: argparse.Namespace) -> int:
    info = _client(args).endpoint()
    if args.server_ca_out:
        from device_sdk.fileio import PUBLIC_FILE_MODE, atomic_write

        atomic_write(
            args.server_ca_out, str(info["serverCa"]).encode("ascii"), mode=PUBLIC_FILE_MODE
        )
        print(f"wrote the server CA to {args.server_ca_out}", file=sys.stderr)
    return _print(args, info, str(info["mqtt"]))


def _product_create(args: argparse.Namespace) -> int:
    p = _client(args).create_product(
        args.name, auth_type=args.auth_type, private_ca=args.private_ca, network=args.network
    )
    return _print(args, p, _product_text(p))


def _product_show(args: argparse.Namespace) -> int:
    p = _client(args).product(args.product_key)
    return _print(args, p, _product_text(p))


def _register_ca(args: argparse.Namespace) -> int:
    from firmware_helpers.platform_client import UploadFile

    c = _client(args).register_ca(
        args.name,
        UploadFile(args.ca.name, _read(args.ca, "CA certificate"), CERT_TYPE),
        UploadFile(
            args.verification_cert.name,
            _read(args.verification_cert, "verification certificate"),
            CERT_TYPE,
        ),
    )
    return _print(args, c, f"registered CA {c['name']} ({c['subject']})\ncaSn: {c['caSn']}")


def _ca_list(args: argparse.Namespace) -> int:
    cas = _client(args).ca_certificates()
    return _print(args, cas, "\n".join(_ca_text(c) for c in cas) or "no CA certificates")


def _ca_show(args: argparse.Namespace) -> int:
    c = _client(args).ca_certificate(args.ca_sn)
    return _print(args, c, "\n".join(f"{k}: {v}" for k, v in c.items()))


def _ca_status(args: argparse.Namespace, status: str) -> int:
    c = _client(args).set_ca_status(args.ca_sn, status)
    return _print(args, c, f"CA {c['caSn']} is now {c['status']}")


def _ca_disable(args: argparse.Namespace) -> int:
    return _ca_status(args, "inactive")


def _ca_enable(args: argparse.Namespace) -> int:
    return _ca_status(args, "active")


def _ca_delete(args: argparse.Namespace) -> int:
    _client(args).delete_ca(args.ca_sn)
    return _print(args, {"deleted": args.ca_sn}, f"deleted CA {args.ca_sn}")


def _ca_associations(args: argparse.Namespace) -> int:
    rows = _client(args).associations(args.ca_sn)
    text = "\n".join(f"{r['productKey']},{r['deviceName']},{r['certSn']}" for r in rows)
    return _print(args, rows, text or "no associations")


def _association_template(args: argparse.Namespace) -> int:
    data = _client(args).association_template(args.ca_sn)
    if args.out:
        from device_sdk.fileio import atomic_write

        atomic_write(args.out, data.encode("utf-8"))
        print(f"wrote {args.out}", file=sys.stderr)
    else:
        sys.stdout.write(data)
    return 0


def _associate(args: argparse.Namespace) -> int:
    from firmware_helpers.platform_client import UploadFile

    n = _client(args).associate(
        args.ca_sn, UploadFile(args.file.name, _read(args.file, "CSV file"), "text/csv")
    )
    return _print(args, {"associated": n}, f"associated {n} devices with CA {args.ca_sn}")


def _device_text(d: dict[str, Any]) -> str:
    return "\n".join(f"{k}: {v}" for k, v in d.items())


def _device_show(args: argparse.Namespace) -> int:
    d = _client(args).device(args.product_key, args.device_name)
    return _print(args, d, _device_text(d))


def _device_disable(args: argparse.Namespace) -> int:
    d = _client(args).set_device_status(args.product_key, args.device_name, "disabled")
    return _print(args, d, _device_text(d))


def _device_enable(args: argparse.Namespace) -> int:
    d = _client(args).set_device_status(args.product_key, args.device_name, "enabled")
    return _print(args, d, _device_text(d))


def _certs_expiring(args: argparse.Namespace) -> int:
    rows = _client(args).expiring_devices(args.days, args.limit)
    text = "\n".join(
        f"{r['notAfter']}  {r['daysLeft']:>8.1f} days  {r['productKey']}/{r['deviceName']}  "
        f"cert SN {r['certSn']}  CA {r['caSn']}"
        for r in rows
    )
    return _print(args, rows, text or f"no device certificate expires within {args.days:g} days")


def _message_send(args: argparse.Namespace) -> int:
    _client(args).send_message(
        args.product_key, args.device_name, args.topic, args.payload, qos=args.qos
    )
    return _print(
        args,
        {"delivered": True},
        f"delivered to {args.product_key}/{args.device_name} on {args.topic}",
    )


def _message_list(args: argparse.Namespace) -> int:
    messages = _client(args).device_messages(args.product_key, args.device_name, args.limit)
    text = "\n".join(
        f"{m['receivedAt']}  {m['topic']}  qos={m['qos']}  "
        f"{m['payload'] if m['payloadEncoding'] == 'utf-8' else 'base64:' + m['payload']}"
        for m in messages
    )
    return _print(args, messages, text or f"no messages from {args.product_key}/{args.device_name}")
