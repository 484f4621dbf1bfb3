#!/usr/bin/env python3
"""A small device program for a Raspberry Pi: report the CPU temperature, obey ``user/get``.

It connects with the board's X.509 certificate (from the credential store written by serial
provisioning, or from ``--cert``/``--key``), learns its identity from the platform, then every
``--interval`` seconds publishes ``{"cpuTemp": .., "uptime": ..}`` to ``user/update`` at QoS 1 --
readings taken while offline wait in the SDK's offline queue -- and prints what the cloud sends to
``user/get``. Runs under systemd (see ``iotx509-device.service``): exit status 0 on SIGTERM,
non-zero when it cannot start (wrong files, clock not yet set), so ``Restart=on-failure`` retries.
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
    parser.add_argument("--store", default=env("IOTX509_STORE"),
                        help="credential store directory (device.cer, device.key, server-ca.pem)")
    parser.add_argument("--cert", default=env("IOTX509_CERT"), help="device certificate file")
    parser.add_argument("--key", default=env("IOTX509_KEY"), help="device private key file")
    parser.add_argument("--server-ca", default=env("IOTX509_SERVER_CA"),
                        help="CA of the server's certificate (default: the store's server-ca.pem)")
    parser.add_argument("--host", default=env("IOTX509_HOST", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(env("IOTX509_PORT", "8883")))
    parser.add_argument("--identity-store", default=env("IOTX509_IDENTITY",
                                                        "/var/lib/iotx509/identity.json"))
    parser.add_argument("--interval", type=float, default=float(env("IOTX509_INTERVAL", "60")),
                        help="seconds between readings (default 60)")
    parser.add_argument("--count", type=int, default=0,
                        help="stop after this many readings (0: run until stopped)")
    parser.add_argument("--connect-timeout", type=float, default=30.0)
    return parser.parse_args(argv)


def load_credentials(args: argparse.Namespace) -> Credentials:
    password = os.environ.get("IOTX509_KEY_PASSWORD") or None
    if args.store:
        return Credentials.from_store(args.store, password)
    if args.cert and args.key:
        return Credentials.from_files(args.cert, args.key, password)
    raise SystemExit("give --store DIR, or --cert and --key (or IOTX509_STORE / IOTX509_CERT + "
                     "IOTX509_KEY)")


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())

    def on_message(message: Message) -> None:
        print(f"command on {message.topic}: {message.payload.decode(errors='replace')}",
              flush=True)

    def on_state(state: ConnectionState, error: DeviceSDKError | None) -> None:
        if error is not None:
            log.warning("%s: %s", state.value, error)
        else:
            log.info("connection %s", state.value)

    def on_identity(old: Identity | None, new: Identity) -> None:
        log.info("identity: %s/%s (was %s)", new.product_key, new.device_name,
                 f"{old.product_key}/{old.device_name}" if old else "unknown")

    try:
        creds = load_credentials(args)
        client = DeviceClient(
            args.host, args.port, creds, server_ca=args.server_ca,
            identity_store=args.identity_store, on_connection_state=on_state,
            on_identity_changed=on_identity,
        )
        identity = client.connect(timeout=args.connect_timeout)
    except ClockError as exc:
        # At boot a board without a real-time clock may not know the time yet; systemd
        # restarts this program (Restart=on-failure) once time-sync.target is reached.
        log.error("%s", exc)
        return 75  # EX_TEMPFAIL
    except DeviceSDKError as exc:
        log.error("%s", exc)
        return 1
    log.info("online as %s", json.dumps(identity.to_json() if identity else None))
    client.subscribe("user/get", on_message)
    sent = 0
    try:
        while not stop.is_set():
            reading = {"cpuTemp": cpu_temperature(), "uptime": round(uptime_seconds(), 1),
                       "seq": sent}
            try:
                client.publish("user/update", json.dumps(reading).encode(), qos=1)
            except DeviceSDKError as exc:  # e.g. offline queue full under the 'raise' policy
                log.warning("reading %d not sent: %s", sent, exc)
            sent += 1
            if args.count and sent >= args.count:
                client.flush(timeout=args.connect_timeout)
                break
            stop.wait(args.interval)
    finally:
        client.disconnect()
    return 0


if __name__ == "__main__":
    sys.exit(main())
