"""Shared helpers: a real reference server, a real fleet on it, and real Locust runs."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from server_stub.launcher import RunningServer
from simulator.fleet import Fleet
from simulator.fleet_create import CreateOptions, create_fleet
from tests.common import account_view, same_ports

ROOT = Path(__file__).resolve().parents[2]
LOCUSTFILE = ROOT / "simulator" / "locustfile.py"

#: A quick device: telemetry every second, half the fleet answers a command every 2 s.
FAST_TEMPLATE = {
    "seed": 5,
    "telemetry": {"interval": 1, "topic": "user/update", "qos": 1},
    "fields": {
        "t": {"type": "sinusoid", "mean": 20, "amplitude": 2, "period": 60},
        "n": {"type": "step", "start": 0, "step": 1},
    },
    "commands": {"share": 0.5, "interval": 2, "timeout": 5},
}


def new_fleet(server: RunningServer, out: Path, count: int, **kwargs: object) -> Fleet:
    """A fleet on ``server``; its endpoint and server CA as the server itself tells them."""
    return create_fleet(
        CreateOptions(
            server=server.http_url,
            token=server.token,
            count=count,
            out=out,
            jobs=1,
            **kwargs,  # type: ignore[arg-type]
        )
    )


def iotx509(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """``python -m iotx509 ARGS`` as a user runs it (the Locust environment of these tests)."""
    return subprocess.run(
        [sys.executable, "-m", "iotx509", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=locust_env(),
    )


def no_platform_fleet(out: Path, count: int, mqtt: str) -> Fleet:
    """``iotx509 fleet create --no-platform``: certificates and fleet.json for a broker at
    ``mqtt`` (``mqtts://HOST:PORT``), no HTTP API."""
    result = iotx509(
        *("fleet", "create", "--no-platform", "--count", str(count), "--out", str(out)),
        *("--mqtt", mqtt, "--jobs", "1"),
    )
    assert result.returncode == 0, result.stderr
    return Fleet.load(out)


def write_template(directory: Path, **changes: object) -> Path:
    data = {**FAST_TEMPLATE, **changes}
    path = directory / "template.json"
    path.write_text(json.dumps(data))
    return path


def locust_command(fleet_dir: Path, csv_prefix: Path, *args: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "locust",
        "-f",
        str(LOCUSTFILE),
        "--fleet",
        str(fleet_dir),
        "--csv",
        str(csv_prefix),
        "--only-summary",
        "--loglevel",
        "WARNING",
        *args,
    ]


def run_locust(
    fleet_dir: Path, csv_prefix: Path, *args: str, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        locust_command(fleet_dir, csv_prefix, "--headless", *args),
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=csv_prefix.parent,
        env=locust_env(),
    )


def run_above_fd_setsize(fleet: Fleet, imports: str, run: str) -> list[dict[str, Any]]:
    """Run eight of ``fleet``'s devices in a gevent child that first opens 1,100 descriptors, so
    every socket it makes is numbered above select()'s FD_SETSIZE (1024). ``run`` defines
    ``run(device)``, which appends one JSON-able result to ``results``; returns those results."""
    script = (
        "from gevent import monkey; monkey.patch_all()\n"
        "import json, os, sys\n"
        "import gevent\n"
        "from simulator.fleet import Fleet\n" + imports + "fleet = Fleet.load(sys.argv[1])\n"
        "filler = [os.open(os.devnull, os.O_RDONLY) for _ in range(1100)]\n"
        "results = []\n"
        + run
        + "gevent.joinall([gevent.spawn(run, d) for d in fleet.devices[:8]], raise_error=True)\n"
        "print(json.dumps(results))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script, str(fleet.directory)],
        capture_output=True,
        text=True,
        timeout=120,
        env=locust_env(),
        cwd=Path(__file__).parent,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    results: list[dict[str, Any]] = json.loads(result.stdout.strip().splitlines()[-1])
    return results


def locust_env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("IOTX509_TOKEN", None)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


@dataclass
class StatRow:
    requests: int
    failures: int
    average_ms: float


def read_stats(csv_prefix: Path) -> dict[str, StatRow]:
    rows: dict[str, StatRow] = {}
    with open(f"{csv_prefix}_stats.csv", newline="") as fh:
        for row in csv.DictReader(fh):
            rows[row["Name"]] = StatRow(
                int(row["Request Count"]),
                int(row["Failure Count"]),
                float(row["Average Response Time"] or 0),
            )
    return rows


def read_failures(csv_prefix: Path) -> list[dict[str, str]]:
    with open(f"{csv_prefix}_failures.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def read_history(csv_prefix: Path, name: str) -> list[dict[str, str]]:
    with open(f"{csv_prefix}_stats_history.csv", newline="") as fh:
        return [row for row in csv.DictReader(fh) if row["Name"] == name]


def explain(result: subprocess.CompletedProcess[str]) -> str:
    return f"exit {result.returncode}\nstdout:\n{result.stdout[-3000:]}\nstderr:\n{result.stderr[-3000:]}"


@pytest.fixture(scope="module")
def shared_server(reference_server: RunningServer) -> RunningServer:
    """The session's server as a new account sees it, shared by the tests of one module that do
    not break it (an account holds at most 10 CAs: each fleet registers one). Tests that stop or
    restart a server start their own."""
    return account_view(reference_server, "sim")


@pytest.fixture(scope="module")
def shared_fleet(shared_server: RunningServer, tmp_path_factory: pytest.TempPathFactory) -> Fleet:
    return new_fleet(shared_server, tmp_path_factory.mktemp("sim-fleet") / "fleet", 30)


def lease_lines(path: Path) -> list[tuple[int, int, str]]:
    out = []
    for line in path.read_text().splitlines():
        pid, index, name = line.split()
        out.append((int(pid), int(index), name))
    return out


ports_args = same_ports
