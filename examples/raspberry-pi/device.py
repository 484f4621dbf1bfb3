#!/usr/bin/env python3
"""A small device program for a Raspberry Pi: report the CPU temperature, obey ``user/get``.

It loads the board's X.509 certificate (from the credential store written by serial
provisioning, or from ``--cert``/``--key``) and starts measuring at once: every ``--interval``
seconds it publishes ``{"cpuTemp": .., "uptime": ..}`` to ``user/update`` at QoS 1, and prints
what the cloud sends to ``user/get``. It boots offline: the SDK connects in the background
(``DeviceClient.start()``), readings wait in its offline queue until the first connection (and
during any later outage), and the identity the platform gives is learnt on the way.

Runs under systemd (see ``iotx509-device.service``). Exit status 0 on SIGTERM; otherwise the
SDK's exit codes (:mod:`device_sdk.exit_codes`): 75 while the clock is not set yet and 69 when
``--count`` readings could not be delivered -- worth a restart -- and 65/76/77/78 for what needs a
person (unusable or expired certificate, certificate rejected, not authorised, wrong server CA):
the unit does not restart on those (``RestartPreventExitStatus=``). ``--keep-retrying`` keeps
running through such refusals instead, retrying once per backoff cap (e.g. a board that boots
before its certificate is associated).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path

from device_sdk import (
    ClockError,
    ConnectionState,
    Credentials,
    DeviceClient,
    DeviceSDKError,
    Identity,
    Message,
)
from device_sdk.defaults import DEFAULT_MQTT_PORT, DEFAULT_RECONNECT_CAP
from device_sdk.exit_codes import PERMANENT_EXIT_CODES, ExitCode, exit_code_for

log = logging.getLogger("iotx509-device")

THERMAL_ZONE = Path("/sys/class/thermal/thermal_zone0/temp")


def cpu_temperature() -> float | None:
    """Degrees Celsius from the SoC sensor; None off a Pi (e.g. on a laptop while testing)."""
    try:
        return int(THERMAL_ZONE.read_text().strip()) / 1000.0
    except (OSError, ValueError):
        return None


def uptime_seconds() -> float:
    try:
        return float(Path("/proc/uptime").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return time.monotonic()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    env = os.environ.get
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--store",
        default=env("IOTX509_STORE"),
        help="credential store directory (device.cer, device.key, server-ca.pem)",
    )
    parser.add_argument("--cert", default=env("IOTX509_CERT"), help="device certificate file")
    parser.add_argument("--key", default=env("IOTX509_KEY"), help="device private key file")
    parser.add_argument(
        "--server-ca",
        default=env("IOTX509_SERVER_CA"),
        help="CA of the server's certificate (default: the store's server-ca.pem)",
    )
    parser.add_argument("--host", default=env("IOTX509_HOST", "127.0.0.1"))
    parser.add_argument(
        "--port", type=int, default=int(env("IOTX509_PORT", str(DEFAULT_MQTT_PORT)))
    )
    parser.add_argument(
        "--identity-store", default=env("IOTX509_IDENTITY", "/var/lib/iotx509/identity.json")
    )
    parser.add_argument(
        "--interval",
        type=float,
        default=float(env("IOTX509_INTERVAL", "60")),
        help="seconds between readings (default 60)",
    )
    parser.add_argument(
        "--count", type=int, default=0, help="stop after this many readings (0: run until stopped)"
    )
    parser.add_argument(
        "--flush-timeout",
        type=float,
        default=30.0,
        help="with --count: seconds to wait for the readings to be delivered",
    )
    parser.add_argument(
        "--reconnect-cap",
        type=float,
        default=float(env("IOTX509_RECONNECT_CAP", str(DEFAULT_RECONNECT_CAP))),
        help="longest wait between connection attempts, seconds (default %(default)s)",
    )
    parser.add_argument(
        "--keep-retrying",
        action="store_true",
        help="keep running when the server refuses the device (retry once per "
        "--reconnect-cap) instead of exiting with the refusal's status",
    )
    return parser.parse_args(argv)


def load_credentials(args: argparse.Namespace) -> Credentials:
    password = os.environ.get("IOTX509_KEY_PASSWORD") or None
    if args.store:
        return Credentials.from_store(args.store, password)
    if args.cert and args.key:
        return Credentials.from_files(args.cert, args.key, password)
    raise SystemExit(
        "give --store DIR, or --cert and --key (or IOTX509_STORE / IOTX509_CERT + IOTX509_KEY)"
    )


def _flush(client: DeviceClient, timeout: float, stop: threading.Event) -> bool:
    """Wait for every reading to be delivered; give up early when told to stop."""
    deadline = time.monotonic() + timeout
    while not stop.is_set():
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        if client.flush(timeout=min(remaining, 1.0)):
            return True
    return False


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.captureWarnings(True)  # the SDK's warnings (loose key file, ...) go to the journal
    args = parse_args(argv)
    stop = threading.Event()
    fatal: list[DeviceSDKError] = []
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())

    def on_message(message: Message) -> None:
        print(f"command on {message.topic}: {message.payload.decode(errors='replace')}", flush=True)

    def on_state(state: ConnectionState, error: DeviceSDKError | None) -> None:
        if error is None:
            log.info("connection %s", state.value)
            return
        log.warning("%s: %s", state.value, error)
        needs_a_person = exit_code_for(error) in PERMANENT_EXIT_CODES
        if isinstance(error, ClockError) or (needs_a_person and not args.keep_retrying):
            fatal.append(error)
            stop.set()

    def on_identity(old: Identity | None, new: Identity) -> None:
        log.info(
            "identity: %s/%s (was %s)",
            new.product_key,
            new.device_name,
            f"{old.product_key}/{old.device_name}" if old else "unknown",
        )

    try:
        creds = load_credentials(args)
        client = DeviceClient(
            args.host,
            args.port,
            creds,
            server_ca=args.server_ca,
            identity_store=args.identity_store,
            on_connection_state=on_state,
            on_identity_changed=on_identity,
            reconnect_cap=args.reconnect_cap,
        )
    except DeviceSDKError as exc:
        # At boot a board without a real-time clock may not know the time yet (75: systemd
        # restarts this program); a wrong or expired certificate needs a person (65).
        log.error("%s", exc)
        return exit_code_for(exc)
    client.subscribe("user/get", on_message)  # relative: resolved once the identity is known
    client.start()  # boot offline: connect in the background, readings wait in the queue
    sent = 0
    status = int(ExitCode.OK)
    try:
        while not stop.is_set():
            reading = {
                "cpuTemp": cpu_temperature(),
                "uptime": round(uptime_seconds(), 1),
                "seq": sent,
            }
            try:
                delivery = client.publish("user/update", json.dumps(reading).encode(), qos=1)
                if delivery.queued:
                    log.info("reading %d queued until the device is online", sent)
            except DeviceSDKError as exc:  # e.g. offline queue full under the 'raise' policy
                log.warning("reading %d not sent: %s", sent, exc)
            sent += 1
            if args.count and sent >= args.count:
                if not _flush(client, args.flush_timeout, stop) and not fatal:
                    log.error(
                        "the readings were not delivered within %g s (last error: %s)",
                        args.flush_timeout,
                        client.last_error,
                    )
                    status = ExitCode.NETWORK
                break
            stop.wait(args.interval)
    finally:
        client.disconnect()
    if fatal:
        log.error("stopping: %s", fatal[0])
        return exit_code_for(fatal[0])
    return status


if __name__ == "__main__":
    sys.exit(main())
