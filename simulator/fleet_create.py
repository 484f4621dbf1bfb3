"""``iotx509 fleet create``: a fleet of real, associated device certificates on a platform.

The devices' endpoint and server CA come from the platform (``GET /api/v1/endpoint``) unless
``--mqtt``/``--server-ca`` say otherwise. With ``--no-platform`` (a generic broker such as
Mosquitto) only steps 2 (CA, not registered) and 3 run: certificates and ``fleet.json``, no HTTP.

Steps, each saved to ``fleet.json`` as soon as it is done so that an interrupted run resumes
instead of starting over (and never issues a device twice):

1. product: the one given (``--product-key``) or a new ``x509`` + private CA + MQTT product;
2. CA: the one given (``--ca``/``--ca-key``) or a new one in ``FLEET/ca/``; registered with a
   verification certificate made from the account's registration code;
3. devices: the missing ones up to ``--count`` issued by the firmware helpers (all cores),
   written as ``[PK]_[DN]_[CA_SN].cer/.key`` into ``FLEET/devices/``;
4. associations: every device not yet associated, uploaded in files of at most 10,000 rows.
"""

from __future__ import annotations

import logging
import secrets
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TextIO
from urllib.parse import urlsplit

from device_sdk.certs import certificate_sn, load_certificates, read_certificates, to_pem
from device_sdk.errors import DeviceSDKError
from device_sdk.fileio import PUBLIC_FILE_MODE, atomic_write, ensure_private_dir
from device_sdk.naming import validate_new_device_name, validate_product_key
from firmware_helpers.association_csv import MAX_ROWS_PER_FILE, Association, render
from firmware_helpers.errors import FirmwareHelpersError
from firmware_helpers.issuing import issue_devices, load_issuing_ca
from firmware_helpers.pki import CertifiedKey, create_ca
from firmware_helpers.platform_client import PlatformAPIError, PlatformClient, UploadFile
from simulator.errors import FleetCreateError, FleetError
from simulator.fleet import FLEET_FILE, Fleet, FleetCA, FleetDevice, MqttEndpoint

log = logging.getLogger(__name__)

CA_DIR = "ca"
DEVICES_DIR = "devices"
SERVER_CA_FILE = "server-ca.pem"
MAX_COUNT = 1_000_000

Progress = Callable[[str, int, int], None]
"""``progress(step, done, total)``."""


@dataclass(frozen=True)
class CreateOptions:
    server: str | None
    token: str | None
    count: int
    out: Path
    product_key: str | None = None
    ca_cert: Path | None = None
    ca_key: Path | None = None
    mqtt: str | None = None
    """``mqtts://H:P``; default: what the platform's ``GET /api/v1/endpoint`` says."""
    server_ca: Path | None = None
    """The CA the devices use to verify the endpoint; copied into the fleet (default: the
    platform's, from the same endpoint call)."""
    no_platform: bool = False
    """A fleet for a generic broker: no HTTP API at all, the CA is not registered anywhere."""
    prefix: str = "sim"
    jobs: int | None = None
    key_size: int = 2048
    rows_per_file: int = MAX_ROWS_PER_FILE


def create_fleet(options: CreateOptions, progress: Progress | None = None) -> Fleet:
    """Create or grow the fleet in ``options.out``; return what ``fleet.json`` now holds."""
    _check_options(options)
    report = progress or (lambda step, done, total: None)
    if options.no_platform:
        return _create_without_platform(options, report)
    assert options.server is not None and options.token is not None
    client = PlatformClient(options.server, options.token)
    out = ensure_private_dir(options.out)
    fleet = _load_or_start(options, out, client)
    fleet.save_token(options.token)
    fleet = _ensure_product(fleet, options, client)
    fleet = _ensure_ca(fleet, options, client)
    fleet = _issue_missing(fleet, options, report)
    fleet = _associate_pending(fleet, options, client, report)
    return fleet


def _create_without_platform(options: CreateOptions, report: Progress) -> Fleet:
    """Certificates and ``fleet.json`` only: for a broker that trusts the fleet's CA file."""
    out = ensure_private_dir(options.out)
    if (out / FLEET_FILE).exists():
        fleet = Fleet.load(out)
        if fleet.http_url is not None:
            raise FleetCreateError(
                f"{out} is a fleet on the platform {fleet.http_url}; --no-platform fleets go "
                "into another --out",
                step="options",
            )
        if options.product_key and options.product_key != fleet.product_key:
            raise FleetCreateError(
                f"{out} is a fleet of product {fleet.product_key}, not {options.product_key}; "
                "use another --out for another product",
                step="options",
            )
        if options.mqtt:
            fleet = replace(fleet, mqtt=MqttEndpoint.parse(options.mqtt))
        if options.server_ca:
            fleet = replace(fleet, server_ca=_copy_server_ca(options.server_ca, out))
    else:
        assert options.mqtt is not None
        server_ca = _copy_server_ca(options.server_ca, out) if options.server_ca else None
        fleet = Fleet(
            out,
            MqttEndpoint.parse(options.mqtt),
            None,
            server_ca,
            product_key=options.product_key or f"sim{secrets.token_hex(4)}",
        )
    fleet.save()
    fleet = _ensure_ca(fleet, options, None)
    return _issue_missing(fleet, options, report)


def _check_options(options: CreateOptions) -> None:
    if not 1 <= options.count <= MAX_COUNT:
        raise FleetCreateError(
            f"--count must be 1..{MAX_COUNT}, not {options.count}", step="options"
        )
    if (options.ca_cert is None) != (options.ca_key is None):
        raise FleetCreateError("give both --ca and --ca-key, or neither", step="options")
    if options.product_key is not None:
        try:
            validate_product_key(options.product_key)
        except ValueError as exc:
            raise FleetCreateError(str(exc), step="options") from exc
    try:
        validate_new_device_name(_device_name(options.prefix, MAX_COUNT - 1))
    except ValueError as exc:
        raise FleetCreateError(
            f"--prefix {options.prefix!r} makes invalid DeviceNames: {exc}", step="options"
        ) from exc
    if not 1 <= options.rows_per_file <= MAX_ROWS_PER_FILE:
        raise FleetCreateError(
            f"rows per association file must be 1..{MAX_ROWS_PER_FILE}", step="options"
        )
    if options.mqtt is not None:
        try:
            MqttEndpoint.parse(options.mqtt)
        except FleetError as exc:
            raise FleetCreateError(f"--mqtt: {exc}", step="options") from exc
    if options.no_platform:
        if not options.mqtt:
            raise FleetCreateError(
                "--no-platform: give the broker's endpoint with --mqtt mqtts://HOST:PORT "
                "(and --server-ca PEM unless the broker's certificate is publicly trusted)",
                step="options",
            )
        return
    if not options.server:
        raise FleetCreateError(
            "--server URL (or env IOTX509_SERVER) is required; for a broker without the "
            "platform's HTTP API use --no-platform --mqtt mqtts://HOST:PORT",
            step="options",
        )
    if not options.token:
        raise FleetCreateError("--token T (or env IOTX509_TOKEN) is required", step="options")
    parts = urlsplit(options.server)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise FleetCreateError(
            f"--server {options.server!r} must be the HTTP API's URL, e.g. http://127.0.0.1:8080",
            step="options",
        )


def _device_name(prefix: str, index: int) -> str:
    return f"{prefix}-{index:06d}"


def _load_or_start(options: CreateOptions, out: Path, client: PlatformClient) -> Fleet:
    assert options.server is not None
    server = options.server.rstrip("/")
    fleet: Fleet | None = None
    if (out / FLEET_FILE).exists():
        fleet = Fleet.load(out)
        if fleet.http_url is None:
            raise FleetCreateError(
                f"{out} was created with --no-platform (its CA is registered nowhere); "
                "create a platform fleet in another --out",
                step="options",
            )
        if options.product_key and fleet.product_key and options.product_key != fleet.product_key:
            raise FleetCreateError(
                f"{out} is a fleet of product {fleet.product_key}, not {options.product_key}; "
                "use another --out for another product",
                step="options",
            )
    mqtt, server_ca = _endpoint(options, out, client, fleet)
    if fleet is None:
        fleet = Fleet(out, mqtt, server, server_ca)
    else:
        fleet = replace(fleet, mqtt=mqtt, server_ca=server_ca, http_url=server)
    fleet.save()
    return fleet


def _endpoint(
    options: CreateOptions, out: Path, client: PlatformClient, fleet: Fleet | None
) -> tuple[MqttEndpoint, str | None]:
    """The devices' endpoint and server CA: the options', else the platform's own answer.

    Asked again on every run, so a fleet follows a server that moved to another port. A platform
    without ``GET /api/v1/endpoint`` keeps what the fleet had, or must be told with ``--mqtt``.
    """
    mqtt = MqttEndpoint.parse(options.mqtt) if options.mqtt else None
    server_ca = _copy_server_ca(options.server_ca, out) if options.server_ca else None
    if mqtt is not None and server_ca is not None:
        return mqtt, server_ca
    try:
        info = client.endpoint()
    except PlatformAPIError as exc:
        if exc.status == 404 and fleet is not None:
            return mqtt or fleet.mqtt, server_ca or fleet.server_ca
        hint = (
            " (this platform does not say where devices connect: give --mqtt "
            "mqtts://HOST:PORT and --server-ca PEM)"
            if exc.status == 404
            else ""
        )
        raise FleetCreateError(
            f"asking the platform for its device endpoint: {_refusal(exc)}{hint}",
            step="endpoint",
        ) from exc
    try:
        learned = MqttEndpoint.parse(str(info["mqtt"]))
        pem = info.get("serverCa")
        if server_ca is None and pem:
            certs = load_certificates(str(pem).encode("ascii"), source="the platform's server CA")
            atomic_write(out / SERVER_CA_FILE, to_pem(certs), mode=PUBLIC_FILE_MODE)
            server_ca = SERVER_CA_FILE
    except (KeyError, FleetError, DeviceSDKError, UnicodeEncodeError) as exc:
        raise FleetCreateError(
            f"the platform's endpoint answer is not usable: {exc}", step="endpoint"
        ) from exc
    return mqtt or learned, server_ca


def _copy_server_ca(source: Path, out: Path) -> str:
    try:
        certs = read_certificates(source)
    except DeviceSDKError as exc:
        raise FleetCreateError(f"--server-ca: {exc}", step="options") from exc
    atomic_write(out / SERVER_CA_FILE, to_pem(certs), mode=PUBLIC_FILE_MODE)
    return SERVER_CA_FILE


def _api(step: str, call: Callable[[], object]) -> object:
    try:
        return call()
    except PlatformAPIError as exc:
        raise FleetCreateError(f"{step}: {_refusal(exc)}", step=step) from exc


def _refusal(exc: PlatformAPIError) -> str:
    """``status`` 0 means the platform was not reached at all."""
    return str(exc) if exc.status == 0 else f"the platform refused: {exc}"


def _ensure_product(fleet: Fleet, options: CreateOptions, client: PlatformClient) -> Fleet:
    if fleet.product_key:
        return fleet
    if options.product_key:
        product_key = options.product_key
        _api("checking the product", lambda: client.product(product_key))
    else:
        name = f"simfleet_{secrets.token_hex(4)}"
        created = _api("creating the product", lambda: client.create_product(name))
        assert isinstance(created, dict)
        product_key = str(created["productKey"])
        log.info("created product %s (%s)", product_key, name)
    fleet = replace(fleet, product_key=product_key)
    fleet.save()
    return fleet


def _load_ca(cert_path: Path, key_path: Path) -> CertifiedKey:
    try:
        return load_issuing_ca(cert_path, key_path)
    except FirmwareHelpersError as exc:
        raise FleetCreateError(f"the fleet's CA: {exc}", step="ca") from exc


def _ensure_ca(fleet: Fleet, options: CreateOptions, client: PlatformClient | None) -> Fleet:
    """The fleet's CA, made or taken from the options; registered unless there is no platform."""
    ca_info = fleet.ca
    if ca_info is None:
        if options.ca_cert and options.ca_key:
            ca = _load_ca(options.ca_cert, options.ca_key)
            cert_ref, key_ref = str(options.ca_cert.resolve()), str(options.ca_key.resolve())
        else:
            ca = create_ca(f"iotx509 simulator fleet {secrets.token_hex(3)}")
            ensure_private_dir(fleet.directory / CA_DIR)
            cert_ref, key_ref = f"{CA_DIR}/ca.cer", f"{CA_DIR}/ca.key"
            ca.write(fleet.directory / cert_ref, fleet.directory / key_ref)
        ca_info = FleetCA(ca.sn, f"simfleet_{ca.sn[:16]}", cert_ref, key_ref)
        fleet = replace(fleet, ca=ca_info)
        fleet.save()
    elif options.ca_cert is not None:
        given = certificate_sn(
            _load_ca(options.ca_cert, options.ca_key or options.ca_cert).certificate
        )
        if given != ca_info.ca_sn:
            raise FleetCreateError(
                f"{fleet.directory} was created with CA {ca_info.ca_sn}, not {given}; one fleet "
                "has one CA: use another --out",
                step="ca",
            )
    if ca_info.registered or client is None:
        return fleet
    ca = _load_ca(fleet.path(ca_info.cert), fleet.path(ca_info.key))
    try:
        client.register_ca_with_proof(ca_info.name, ca)
    except PlatformAPIError as exc:
        if exc.status != 409 or not _ca_in_account(client, ca_info.ca_sn):
            raise FleetCreateError(f"registering the CA: {_refusal(exc)}", step="ca") from exc
        log.info("CA %s is already registered in this account", ca_info.ca_sn)
    fleet = replace(fleet, ca=replace(ca_info, registered=True))
    fleet.save()
    return fleet


def _ca_in_account(client: PlatformClient, ca_sn: str) -> bool:
    try:
        client.ca_certificate(ca_sn)
    except PlatformAPIError:
        return False
    return True


def _issue_missing(fleet: Fleet, options: CreateOptions, report: Progress) -> Fleet:
    assert fleet.ca is not None and fleet.product_key is not None
    have = len(fleet.devices)
    if have >= options.count:
        report("issue", options.count, options.count)
        return fleet
    ca = _load_ca(fleet.path(fleet.ca.cert), fleet.path(fleet.ca.key))
    devices_dir = ensure_private_dir(fleet.directory / DEVICES_DIR)
    names = [_device_name(options.prefix, i) for i in range(have, options.count)]
    taken = {d.device_name for d in fleet.devices}
    clash = next((n for n in names if n in taken), None)
    if clash is not None:
        raise FleetCreateError(
            f"DeviceName {clash} is already in the fleet; keep the fleet's --prefix", step="issue"
        )
    try:
        # Resumable by itself: complete pairs already in the directory are kept, not re-issued.
        result = issue_devices(
            ca,
            fleet.product_key,
            names,
            devices_dir,
            jobs=options.jobs,
            key_size=options.key_size,
            write_csv=False,
            progress=lambda done, total: report("issue", have + done, have + total),
        )
    except FirmwareHelpersError as exc:
        raise FleetCreateError(f"issuing device certificates: {exc}", step="issue") from exc
    issued = {d.device_name: d for d in result.devices}
    devices = list(fleet.devices)
    for name in names:
        item = issued[name]
        devices.append(
            FleetDevice(
                index=len(devices),
                product_key=item.product_key,
                device_name=name,
                cert_sn=item.sn,
                ca_sn=ca.sn,
                cert=item.cert_path.relative_to(fleet.directory).as_posix(),
                key=item.key_path.relative_to(fleet.directory).as_posix(),
            )
        )
    fleet = fleet.with_devices(tuple(devices))
    fleet.save()
    return fleet


def _associate_pending(
    fleet: Fleet, options: CreateOptions, client: PlatformClient, report: Progress
) -> Fleet:
    assert fleet.ca is not None
    pending = [d for d in fleet.devices if not d.associated]
    total = len(pending)
    done = 0
    report("associate", 0, total)
    devices = list(fleet.devices)
    for start in range(0, total, options.rows_per_file):
        chunk = pending[start : start + options.rows_per_file]
        body = render([Association(d.product_key, d.device_name, d.cert_sn) for d in chunk])
        name = f"associations-{start // options.rows_per_file + 1:04d}.csv"
        try:
            client.associate(fleet.ca.ca_sn, UploadFile(name, body, "text/csv"))
        except PlatformAPIError as exc:
            raise FleetCreateError(
                f"uploading associations ({name}, {len(chunk)} rows): {_refusal(exc)}",
                step="associate",
            ) from exc
        for device in chunk:
            devices[device.index] = replace(device, associated=True)
        fleet = fleet.with_devices(tuple(devices))
        fleet.save()
        done += len(chunk)
        report("associate", done, total)
    return fleet


class TextProgress:
    """One updating line per step on a terminal, plain lines otherwise."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        self._tty = self.stream.isatty()
        self._last: tuple[str, int] | None = None

    def __call__(self, step: str, done: int, total: int) -> None:
        width = shutil.get_terminal_size((80, 20)).columns if self._tty else 80
        percent = 100 if total == 0 else done * 100 // total
        line = f"{step}: {done}/{total} ({percent}%)"[:width]
        if self._tty:
            end = "\n" if done >= total else ""
            self.stream.write("\r" + line + end)
        elif (
            self._last is None
            or self._last[0] != step
            or done >= total
            or percent >= self._last[1] + 10
        ):
            self.stream.write(line + "\n")
            self._last = (step, percent)
        self.stream.flush()


__all__ = ["CreateOptions", "FleetError", "TextProgress", "create_fleet"]
