"""A subprocess holding a share of the SDK fleet for the restart-under-load test.

``python -m tests.hardening.fleet_worker CONFIG.json``; then line commands on stdin:
``count T`` (prints how many devices came online after time T) and ``report`` (prints one
JSON line: per device its expected and reported identity, the times it came online and the
times it started an attempt, then disconnects everything and exits). Many DeviceClients per process are threads; several
processes spread them over the cores.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path
from typing import Any

from device_sdk.client import ConnectionState, DeviceClient
from device_sdk.credentials import Credentials


def main() -> None:
    config: dict[str, Any] = json.loads(Path(sys.argv[1]).read_text())
    lock = threading.Lock()
    online_times: dict[str, list[float]] = {}
    attempt_times: dict[str, list[float]] = {}
    clients: dict[str, DeviceClient] = {}
    for dev in config["devices"]:
        name = dev["device_name"]
        online_times[name] = []
        attempt_times[name] = []

        def on_state(state: ConnectionState, error: object, name: str = name) -> None:
            if state is ConnectionState.ONLINE:
                with lock:
                    online_times[name].append(time.time())
            elif state is ConnectionState.CONNECTING:
                with lock:
                    attempt_times[name].append(time.time())

        creds = Credentials.from_pem(Path(dev["cert"]).read_bytes(), Path(dev["key"]).read_bytes())
        clients[name] = DeviceClient(
            config["host"],
            config["port"],
            creds,
            server_ca=config["server_ca"],
            reconnect_base=config["base"],
            reconnect_cap=config["cap"],
            stable_period=5.0,
            attempt_timeout=config["attempt_timeout"],
            identity_timeout=10.0,
            keepalive=300,
            on_connection_state=on_state,
        )
    for client in clients.values():
        client.connect(timeout=60)
    print(f"ready {len(clients)}", flush=True)
    for line in sys.stdin:
        command, _, argument = line.strip().partition(" ")
        if command == "count":  # devices online again after the given time.time()
            since = float(argument)
            with lock:
                back = sum(1 for times in online_times.values() if any(t > since for t in times))
            print(back, flush=True)
        elif command == "report":
            identities = {
                name: (c.identity.product_key, c.identity.device_name) if c.identity else None
                for name, c in clients.items()
            }
            with lock:
                print(
                    json.dumps(
                        {
                            "online_times": online_times,
                            "attempt_times": attempt_times,
                            "identities": identities,
                        }
                    ),
                    flush=True,
                )
            for client in clients.values():
                client.disconnect(timeout=2)
            return


if __name__ == "__main__":
    main()
