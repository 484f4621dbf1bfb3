"""Locust's distributed mode on this machine: one master, two workers, one fleet.

The workers are started without ``--fleet``: they receive the master's options, lease devices
from the master, and no device may be taken by two users -- checked from the lease log every
process appends to, and from the server side (a second session of a device would close the
first, which the steady run would report as ``connection lost``).
"""

from __future__ import annotations

import socket
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from simulator.fleet import Fleet
from tests.simulator.conftest import (
    LOCUSTFILE,
    explain,
    lease_lines,
    locust_command,
    locust_env,
    read_stats,
    write_template,
)

USERS = 20


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.heavy
def test_master_and_two_workers_never_share_a_device(shared_fleet: Fleet, tmp_path: Path) -> None:
    port = _free_port()
    leases = tmp_path / "leases.txt"
    master = subprocess.Popen(
        locust_command(
            shared_fleet.directory,
            tmp_path / "run",
            "--master",
            "--headless",
            "--master-bind-host",
            "127.0.0.1",
            "--master-bind-port",
            str(port),
            "--expect-workers",
            "2",
            "-u",
            str(USERS),
            "-r",
            "10",
            "-t",
            "15s",
            "--template",
            str(write_template(tmp_path)),
            "--lease-log",
            str(leases),
        ),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=locust_env(),
        cwd=tmp_path,
    )
    workers = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "locust",
                "-f",
                str(LOCUSTFILE),
                "--worker",
                "--master-host",
                "127.0.0.1",
                "--master-port",
                str(port),
                "--loglevel",
                "WARNING",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=locust_env(),
            cwd=tmp_path,
        )
        for _ in range(2)
    ]
    try:
        stdout, stderr = master.communicate(timeout=90)
        outputs = [w.communicate(timeout=30) for w in workers]
    finally:
        for proc in (master, *workers):
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    result = subprocess.CompletedProcess(master.args, master.returncode, stdout, stderr)
    assert master.returncode == 0, explain(result) + "\n".join(e for _o, e in outputs)
    used = lease_lines(leases)
    by_pid = Counter(pid for pid, _index, _name in used)
    assert len(by_pid) == 2 and sum(by_pid.values()) == USERS, by_pid
    assert master.pid not in by_pid  # the master leases, the workers' users connect
    indexes = [index for _pid, index, _name in used]
    assert len(set(indexes)) == USERS, Counter(indexes).most_common(3)
    stats = read_stats(tmp_path / "run")
    assert stats["connect"].requests == USERS
    assert stats["Aggregated"].failures == 0, explain(result)
