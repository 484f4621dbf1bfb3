"""``iotx509 fleet run`` / ``fleet locustfile`` as a user meets them: help, the locustfile path,
and SIGTERM reaching Locust (real processes)."""

from __future__ import annotations

import queue
import signal
import subprocess
import sys
import threading
from pathlib import Path

import psutil  # type: ignore[import-untyped]
import pytest

from simulator.fleet import Fleet
from tests.simulator.conftest import ROOT, locust_env


def iotx509(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "iotx509", *args], capture_output=True,
                          text=True, timeout=60, env=locust_env())


@pytest.fixture(scope="module")
def tiny_fleet(tmp_path_factory: pytest.TempPathFactory) -> Fleet:
    out = tmp_path_factory.mktemp("tiny-fleet") / "fleet"
    # Port 9 of loopback: nothing listens, so the device keeps retrying while Locust runs.
    result = iotx509("fleet", "create", "--no-platform", "--count", "1", "--out", str(out),
                     "--mqtt", "mqtts://127.0.0.1:9", "--jobs", "1")
    assert result.returncode == 0, result.stderr
    return Fleet.load(out)


def test_help_lists_the_simulator_options() -> None:
    result = iotx509("fleet", "run", "--help")
    assert result.returncode == 0
    for flag in ("--scenario", "--fault-at", "--restore-at", "--fault-command", "--template",
                 "--server-ca", "--no-identity", "--keepalive", "--reconnect-base",
                 "--reconnect-cap", "--stable-period", "--summary-every", "--lease-log"):
        assert flag in result.stdout, flag
    assert "FLEET" in result.stdout and "steady" in result.stdout


def test_locustfile_prints_the_shipped_locustfile() -> None:
    result = iotx509("fleet", "locustfile")
    assert result.returncode == 0
    path = Path(result.stdout.strip())
    assert path.is_file() and path.name == "locustfile.py"
    assert path.resolve() == (ROOT / "simulator" / "locustfile.py").resolve()


def test_simulator_options_before_the_double_dash_are_checked(tiny_fleet: Fleet) -> None:
    result = iotx509("fleet", "run", str(tiny_fleet.directory), "--scenario", "bogus", "--",
                     "--headless")
    assert result.returncode == 2
    assert "invalid choice: 'bogus'" in result.stderr


def test_sigterm_to_fleet_run_stops_locust(tiny_fleet: Fleet, tmp_path: Path) -> None:
    parent = subprocess.Popen(
        [sys.executable, "-m", "iotx509", "fleet", "run", str(tiny_fleet.directory),
         "--no-identity", "--", "--headless", "-u", "1", "-r", "1", "-t", "300s",
         "--loglevel", "INFO", "--only-summary"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=locust_env(),
        cwd=tmp_path,
    )
    lines: queue.Queue[str] = queue.Queue()

    def read() -> None:
        assert parent.stderr is not None
        for line in parent.stderr:
            lines.put(line)

    threading.Thread(target=read, daemon=True).start()
    seen: list[str] = []
    try:
        # The moment to act: Locust itself says it is running the test.
        while not any("Ramping to 1 users" in line for line in seen):
            seen.append(lines.get(timeout=60))
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
