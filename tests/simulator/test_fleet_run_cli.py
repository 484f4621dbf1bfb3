"""``iotx509 fleet run`` / ``fleet locustfile`` as a user meets them: help, the locustfile path,
and SIGTERM reaching Locust (real processes)."""

from __future__ import annotations

import queue
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from simulator.fleet import Fleet
from tests.simulator.conftest import ROOT, iotx509, locust_env, no_platform_fleet


@pytest.fixture(scope="module")
def tiny_fleet(tmp_path_factory: pytest.TempPathFactory) -> Fleet:
    # Port 9 of loopback: nothing listens, so the device keeps retrying while Locust runs.
    out = tmp_path_factory.mktemp("tiny-fleet") / "fleet"
    return no_platform_fleet(out, 1, "mqtts://127.0.0.1:9")


@dataclass
class FleetRun:
    """A running ``iotx509 fleet run`` and the lines of its stderr, read as they come."""

    process: subprocess.Popen[str]
    lines: queue.Queue[str]
    seen: list[str]

    def wait_for_line(self, text: str) -> None:
        """Until a line says ``text``: the program's own report is the moment to go on."""
        while not any(text in line for line in self.seen):
            self.seen.append(self.lines.get(timeout=60))


def start_fleet_run(fleet: Fleet, cwd: Path, *locust_args: str) -> FleetRun:
    process = subprocess.Popen(
        [
            *(sys.executable, "-m", "iotx509", "fleet", "run", str(fleet.directory)),
            *("--no-identity", "--", "--loglevel", "INFO", *locust_args),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=locust_env(),
        cwd=cwd,
    )
    lines: queue.Queue[str] = queue.Queue()

    def read() -> None:
        assert process.stderr is not None
        for line in process.stderr:
            lines.put(line)

    threading.Thread(target=read, daemon=True).start()
    return FleetRun(process, lines, [])


def test_help_lists_the_simulator_options() -> None:
    result = iotx509("fleet", "run", "--help")
    assert result.returncode == 0
    for flag in (
        "--scenario",
        "--fault-at",
        "--restore-at",
        "--fault-command",
        "--template",
        "--server-ca",
        "--no-identity",
        "--keepalive",
        "--reconnect-base",
        "--reconnect-cap",
        "--stable-period",
        "--summary-every",
        "--lease-log",
    ):
        assert flag in result.stdout, flag
    assert "FLEET" in result.stdout and "steady" in result.stdout


def test_locustfile_prints_the_shipped_locustfile() -> None:
    result = iotx509("fleet", "locustfile")
    assert result.returncode == 0
    path = Path(result.stdout.strip())
    assert path.is_file() and path.name == "locustfile.py"
    assert path.resolve() == (ROOT / "simulator" / "locustfile.py").resolve()


def test_simulator_options_before_the_double_dash_are_checked(tiny_fleet: Fleet) -> None:
    result = iotx509(
        "fleet", "run", str(tiny_fleet.directory), "--scenario", "bogus", "--", "--headless"
    )
    assert result.returncode == 2
    assert "invalid choice: 'bogus'" in result.stderr


def test_sigterm_to_fleet_run_stops_locust(tiny_fleet: Fleet, tmp_path: Path) -> None:
    run = start_fleet_run(
        tiny_fleet, tmp_path, "--headless", "-u", "1", "-r", "1", "-t", "300s", "--only-summary"
    )
    parent, seen = run.process, run.seen
    try:
        # The moment to act: Locust itself says it is running the test.
        run.wait_for_line("Ramping to 1 users")
        children = psutil.Process(parent.pid).children(recursive=True)
        locust = [c for c in children if "locust" in " ".join(c.cmdline())]
        assert len(locust) == 1, children
        parent.send_signal(signal.SIGTERM)
        status = parent.wait(timeout=60)
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
    # fleet run was not killed by the signal: it passed it on and waited for Locust to exit.
    assert status >= 0, (status, seen)
    assert not locust[0].is_running(), seen


def test_a_web_ui_swarm_larger_than_the_fleet_is_stopped_with_one_line(
    tiny_fleet: Fleet, tmp_path: Path
) -> None:
    import json
    import socket
    import time
    import urllib.error
    import urllib.parse
    import urllib.request

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    run = start_fleet_run(tiny_fleet, tmp_path, "--web-host", "127.0.0.1", "--web-port", str(port))
    proc, seen = run.process, run.seen
    try:
        run.wait_for_line("Starting web interface")
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        form = urllib.parse.urlencode({"user_count": 3, "spawn_rate": 3}).encode()
        for _attempt in range(100):  # the log line comes just before the socket listens
            try:
                with opener.open(f"http://127.0.0.1:{port}/swarm", data=form, timeout=30) as resp:
                    assert json.loads(resp.read())["success"]
                break
            except urllib.error.URLError:
                assert proc.poll() is None, seen
                time.sleep(0.1)
        problem = f"3 users but the fleet {tiny_fleet.directory} has 1 devices"
        run.wait_for_line(problem)
        with opener.open(f"http://127.0.0.1:{port}/stats/requests", timeout=30) as resp:
            stats = json.loads(resp.read())
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    assert sum(problem in line for line in seen) == 1, seen
    assert not any("Traceback" in line for line in seen), seen
    # stopped before any user leased a device: no 'lease' failure per extra user
    assert not any(row["name"] == "lease" for row in stats["stats"]), stats
