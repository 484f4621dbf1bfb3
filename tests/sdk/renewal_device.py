"""A real device process for the renewal kill tests: the SDK (DeviceClient + Renewal), run as
``python -m tests.sdk.renewal_device``.

It prints one line per event, flushed, so the test acts on events of the code, not on time:
``STEP <name>`` after each renewal step, ``ONLINE <sn>`` once connected, ``SESSION <sn>``
for every session online (network thread, so in any order with the others),
``RENEWED <sn>`` / ``REFUSED <reason>`` / ``DONE <sn>``. With ``--pause-at STEP`` it stops dead
right after that step (prints ``PAUSED STEP`` and blocks), so that the test's SIGKILL lands
exactly there, like a power cut. ``promote-key-written`` pauses inside the promotion, after the
new key replaced the current one and before the certificate did.
"""

from __future__ import annotations

import argparse
import logging
import sys
import threading
from pathlib import Path
from typing import Any

from device_sdk import fileio, renewal_files
from device_sdk.backoff import BackoffPolicy
from device_sdk.client import ConnectionState, DeviceClient
from device_sdk.errors import DeviceSDKError
from device_sdk.renewal import RenewalPolicy, RenewalState, ReportKind
from device_sdk.renewal_manager import Renewal


def say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def pause(step: str) -> None:
    say(f"PAUSED {step}")
    threading.Event().wait()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cert")
    parser.add_argument("--key")
    parser.add_argument("--store")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--server-ca")
    parser.add_argument("--pause-at")
    parser.add_argument("--renew", action="store_true")
    parser.add_argument("--timeout", type=float, default=60.0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)

    def on_step(name: str) -> None:
        say(f"STEP {name}")
        if name == args.pause_at:
            pause(name)

    if args.pause_at == "promote-key-written":
        real_write = fileio.atomic_write

        def write_then_pause(path: Any, data: bytes, *, mode: int = 0o644) -> None:
            real_write(path, data, mode=mode)
            if Path(path) == renewal.files.key:
                say("STEP promote-key-written")
                pause("promote-key-written")

        vars(renewal_files)["atomic_write"] = write_then_pause

    policy = RenewalPolicy(
        automatic=False,
        reply_timeout=10.0,
        issue_timeout=30.0,
        resume_wait=0.3,
        retry=BackoffPolicy(base=0.2, cap=2.0, stable_period=0.0),
    )
    if args.store:
        renewal = Renewal.for_store(args.store, policy=policy, on_step=on_step)
    else:
        renewal = Renewal.for_files(args.cert, args.key, policy=policy, on_step=on_step)
    resuming = renewal.state is not RenewalState.IDLE
    client = DeviceClient(args.host, args.port, renewal.credentials, server_ca=args.server_ca)

    def on_state(state: ConnectionState, error: DeviceSDKError | None) -> None:
        if state is ConnectionState.ONLINE:
            say(f"SESSION {client.credentials.sn}")

    client.add_state_hook(on_state)
    renewal.attach(client)
    client.connect(timeout=args.timeout)
    say(f"ONLINE {client.credentials.sn}")
    try:
        if args.renew and not resuming:
            client.renew_now()
        if args.renew or resuming:
            report = renewal.wait((ReportKind.RENEWED, ReportKind.REFUSED), args.timeout, since=0)
            if report is None:
                say("TIMEOUT " + "; ".join(f"{r.kind.value}: {r.reason}" for r in renewal.reports))
                return 1
            if report.kind is ReportKind.REFUSED:
                say(f"REFUSED {report.reason}")
                return 1
            say(f"RENEWED {client.credentials.sn}")
        say(f"DONE {client.credentials.sn}")
        return 0
    finally:
        client.disconnect()
        renewal.close()


if __name__ == "__main__":
    sys.exit(main())
