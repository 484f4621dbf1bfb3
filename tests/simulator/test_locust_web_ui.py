"""The same locustfile under Locust's web UI: start a swarm over HTTP, see the device events."""

from __future__ import annotations

import json
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from simulator.fleet import Fleet
from tests.simulator.conftest import locust_command, locust_env, write_template


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return json.loads(resp.read())


def test_a_swarm_started_from_the_web_ui_connects_devices(
    shared_fleet: Fleet, tmp_path: Path
) -> None:
    port = _free_port()
    proc = subprocess.Popen(
        locust_command(
            shared_fleet.directory,
            tmp_path / "run",
            "--web-host",
            "127.0.0.1",
            "--web-port",
            str(port),
            "--template",
            str(write_template(tmp_path)),
        ),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=locust_env(),
        cwd=tmp_path,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                _get(f"{base}/stats/requests")
                break
            except OSError:
                assert time.monotonic() < deadline and proc.poll() is None, "web UI never came up"
                time.sleep(0.2)
        form = urllib.parse.urlencode({"user_count": 4, "spawn_rate": 4}).encode()
        with urllib.request.urlopen(f"{base}/swarm", data=form, timeout=5) as resp:
            assert json.loads(resp.read())["success"]
        names: dict[str, dict[str, Any]] = {}
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            names = {s["name"]: s for s in _get(f"{base}/stats/requests")["stats"]}
            if names.get("connect", {}).get("num_requests") == 4 and "publish" in names:
                break
            time.sleep(0.5)
        assert names["connect"]["num_requests"] == 4, names
        assert names["connect"]["num_failures"] == 0
        assert names["publish"]["num_requests"] >= 1
        urllib.request.urlopen(f"{base}/stop", data=b"", timeout=5).close()
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
