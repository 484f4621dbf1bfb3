"""``iotx509 demo``: the whole private-CA flow end to end, on embedded defaults.

It starts the reference server (temporary data directory, free loopback ports), then walks the
customer's steps through the platform's HTTP API exactly as a user would: create a product, make
a private CA and its verification certificate from the registration code, register the CA, issue
device certificates with the file-name rules, associate them by CSV. Each device then connects
with the device SDK knowing neither its ProductKey nor its DeviceName, is told its identity, and
one message goes each way. Nothing is faked: every part is the real one.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from device_sdk.cli_support import CommandTree, require_extra
from device_sdk.errors import CommandLineError

DEMO_TOPIC_DOWN = "user/get"
DEMO_TOPIC_UP = "user/update"


class DemoError(CommandLineError):
    """A step of the demo failed; the message names the step."""


def register(tree: CommandTree) -> None:
    """Add ``iotx509 demo``."""
    parser = tree.command(
        "demo",
        "run the whole flow end to end: server, CA, device certificates, association, "
        "mutual-TLS connections, identity, one message each way",
    )
    parser.add_argument("--devices", type=int, default=3, help="how many devices (default 3)")
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="keep everything here (default: a temporary directory, removed afterwards)",
    )
    parser.add_argument("--jobs", type=int, default=None, help="key-generation processes")
    parser.set_defaults(handler=_run)


@dataclass
class _Device:
    cert: Path
    key: Path
    sn: str
    product_key: str
    device_name: str


def _step(text: str) -> None:
    print(f"--> {text}", flush=True)


@contextlib.contextmanager
def _workdir(path: Path | None) -> Iterator[Path]:
    if path is not None:
        path.mkdir(parents=True, exist_ok=True)
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="iotx509-demo-") as tmp:
        yield Path(tmp)


def _run(args: argparse.Namespace) -> int:
    if not 1 <= args.devices <= 1000:
        raise DemoError("--devices must be between 1 and 1000")
    launcher = require_extra("server_stub.launcher", "server")
    require_extra("fastapi", "server")
    with _workdir(args.data_dir) as work:
        _step(f"starting the reference server (data in {work / 'server'})")
        with launcher.running_server(work / "server") as server:
            endpoint = _discover_endpoint(server.http_url, server.token, work)
            print(f"    HTTP API {server.http_url}   MQTT {endpoint.url}")
            devices = _customer_steps(server.http_url, server.token, work, args)
            _device_steps(server.http_url, server.token, endpoint, devices, work)
    _step("done: every device connected, learned its identity and exchanged a message")
    return 0


@dataclass(frozen=True)
class _Endpoint:
    url: str
    host: str
    port: int
    server_ca: Path


def _discover_endpoint(http_url: str, token: str, work: Path) -> _Endpoint:
    """Where devices connect, as the platform says (``GET /api/v1/endpoint``), not guessed."""
    from urllib.parse import urlsplit

    from firmware_helpers.platform_client import PlatformClient

    info = PlatformClient(http_url, token).endpoint()
    url = str(info["mqtt"])
    parts = urlsplit(url)
    if parts.scheme != "mqtts" or not parts.hostname or not parts.port:
        raise DemoError(f"the server's endpoint {url!r} is not mqtts://HOST:PORT")
    server_ca = work / "server-ca.pem"
    server_ca.write_text(str(info["serverCa"]), encoding="ascii")
    _step(f"the platform says devices connect to {url} (server CA saved to {server_ca})")
    return _Endpoint(url, parts.hostname, parts.port, server_ca)


def _customer_steps(
    http_url: str, token: str, work: Path, args: argparse.Namespace
) -> list[_Device]:
    from firmware_helpers.issuing import issue_devices
    from firmware_helpers.pki import create_ca
    from firmware_helpers.platform_client import PlatformClient, UploadFile

    api = PlatformClient(http_url, token)
    product = api.create_product("demo_sensors", auth_type="x509", private_ca=True, network="mqtt")
    pk = product["productKey"]
    _step(f"created product {pk} (X.509, private CA, MQTT)")

    ca_dir = work / "ca"
    ca_dir.mkdir(exist_ok=True)
    ca = create_ca("iotx509 demo private CA")
    ca.write(ca_dir / "ca.cer", ca_dir / "ca.key")
    registered = api.register_ca_with_proof("demo_private_ca", ca)
    registered.verification.write(ca_dir / "verificationCert.crt", ca_dir / "verificationCert.key")
    ca_sn = registered.ca_sn
    _step(
        f"registered CA {registered.subject} as caSn {ca_sn} (proof of possession checked: a "
        f"verification certificate with CN = the registration code {registered.registration_code})"
    )

    names = [f"sensor-{i:04d}" for i in range(1, args.devices + 1)]
    report = issue_devices(ca, pk, names, work / "devices", jobs=args.jobs)
    _step(f"issued {len(report.devices)} device certificates into {report.out_dir}:")
    for dev in report.devices:
        print(f"    {dev.cert_path.name}  {dev.key_path.name}")
    associated = 0
    for csv_path in report.csv_files:
        associated += api.associate(
            ca_sn, UploadFile(csv_path.name, csv_path.read_bytes(), "text/csv")
        )
    _step(
        f"associated {associated} certificate SNs with devices ({', '.join(p.name for p in report.csv_files)})"
    )
    return [
        _Device(d.cert_path, d.key_path, d.sn, d.product_key, d.device_name) for d in report.devices
    ]


def _device_steps(
    http_url: str, token: str, endpoint: _Endpoint, devices: list[_Device], work: Path
) -> None:
    from device_sdk import Credentials, DeviceClient, DeviceSDKError
    from device_sdk.client import Message
    from firmware_helpers.platform_client import PlatformClient

    api = PlatformClient(http_url, token)
    clients: list[tuple[_Device, DeviceClient]] = []
    received: dict[str, threading.Event] = {}
    _step("connecting each device with mutual TLS (it knows neither ProductKey nor DeviceName)")
    try:
        rows = []
        for dev in devices:
            creds = Credentials.from_files(dev.cert, dev.key)
            client = DeviceClient(
                endpoint.host,
                endpoint.port,
                creds,
                server_ca=endpoint.server_ca,
                identity_store=work / "state" / f"{dev.device_name}.identity.json",
            )
            try:
                identity = client.connect(timeout=15)
            except DeviceSDKError as exc:
                raise DemoError(f"device with SN {dev.sn} could not connect: {exc}") from exc
            clients.append((dev, client))
            if identity is None or (identity.product_key, identity.device_name) != (
                dev.product_key,
                dev.device_name,
            ):
                raise DemoError(
                    f"device with SN {dev.sn} was told {identity}, expected "
                    f"{dev.product_key}/{dev.device_name}"
                )
            rows.append((dev.sn, identity.product_key, identity.device_name))
        _print_table(rows)

        _step("one message each way per device")
        for dev, client in clients:
            event = received.setdefault(dev.device_name, threading.Event())

            def on_message(msg: Message, event: threading.Event = event) -> None:
                event.set()

            client.subscribe(DEMO_TOPIC_DOWN, on_message)
            up = json.dumps({"temperature": 21.5, "sn": dev.sn}).encode()
            if not client.publish(DEMO_TOPIC_UP, up, qos=1).wait(10):
                raise DemoError(f"{dev.device_name}: the server did not acknowledge the publish")
        for dev, _client in clients:
            topic = f"/{dev.product_key}/{dev.device_name}/{DEMO_TOPIC_DOWN}"
            api.send_message(dev.product_key, dev.device_name, topic, '{"command":"blink"}', 1)
        for dev, _client in clients:
            if not received[dev.device_name].wait(10):
                raise DemoError(f"{dev.device_name}: the cloud-to-device message did not arrive")
            messages = _wait_for_upstream(api, dev)
            print(
                f"    {dev.device_name}: device->cloud {messages[-1]['topic']} "
                f"{messages[-1].get('payload')!s}; cloud->device "
                f'/{dev.product_key}/{dev.device_name}/{DEMO_TOPIC_DOWN} {{"command":"blink"}}'
            )
    finally:
        for _dev, client in clients:
            client.disconnect()


def _wait_for_upstream(api: object, dev: _Device) -> list[dict[str, object]]:
    deadline = time.monotonic() + 10
    while True:
        messages: list[dict[str, object]] = api.device_messages(  # type: ignore[attr-defined]
            dev.product_key, dev.device_name
        )
        if any(str(m.get("topic", "")).endswith(DEMO_TOPIC_UP) for m in messages):
            return messages
        if time.monotonic() > deadline:
            raise DemoError(f"{dev.device_name}: the server did not record the device's message")
        time.sleep(0.1)


def _print_table(rows: list[tuple[str, str, str]]) -> None:
    widths = [
        max(len(h), *(len(r[i]) for r in rows))
        for i, h in enumerate(("Certificate SN", "ProductKey", "DeviceName"))
    ]
    header = ("Certificate SN", "ProductKey", "DeviceName")
    line = "  ".join("-" * w for w in widths)
    print("    " + "  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)))
    print("    " + line)
    for row in rows:
        print("    " + "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))
    sys.stdout.flush()
