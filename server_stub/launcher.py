"""Start the real reference server as a subprocess and find out where it listens.

:func:`running_server` starts ``python -m iotx509 server run`` on free loopback ports, waits for
its ready line and yields where to reach it; on exit it sends SIGTERM and waits. The demo, the
benchmarks and the tests of every part use it. Standard library only.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from server_stub.errors import ServerStartupError

READY_RE = re.compile(r"^ready http=(?P<http>\S+) mqtt=(?P<mqtt>\S+) data=(?P<data>.+)$")
START_TIMEOUT = 60.0
STOP_TIMEOUT = 15.0


@dataclass
class RunningServer:
    """Where a running reference server can be reached."""

    http_url: str
    mqtt_host: str
    mqtt_port: int
    token: str
    server_ca: Path
    data_dir: Path
    process: subprocess.Popen[str]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = STOP_TIMEOUT) -> int:
        """SIGTERM, then wait; returns the exit status (kills after ``timeout``)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return int(self.process.returncode)


def server_command(data_dir: Path, extra_args: Sequence[str] = ()) -> list[str]:
    return [
        sys.executable,
        "-m",
        "iotx509",
        "server",
        "run",
        "--data-dir",
        str(data_dir),
        "--host",
        "127.0.0.1",
        "--http-port",
        "0",
        "--mqtt-port",
        "0",
        *extra_args,
    ]


def _drain(stream: object, sink: list[str]) -> None:
    for line in stream:  # type: ignore[attr-defined]
        sink.append(line)


@contextlib.contextmanager
def running_server(
    data_dir: str | Path,
    *,
    extra_args: Sequence[str] = (),
    env: dict[str, str] | None = None,
) -> Iterator[RunningServer]:
    """Start the real server process; yield a :class:`RunningServer`; stop it on exit."""
    data_dir = Path(data_dir)
    log_fd, log_name = tempfile.mkstemp(prefix="iotx509-server-", suffix=".log")
    log_path = Path(log_name)
    proc_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    with os.fdopen(log_fd, "w") as log_file:
        proc = subprocess.Popen(
            server_command(data_dir, extra_args),
            stdout=subprocess.PIPE,
            stderr=log_file,
            text=True,
            env=proc_env,
        )
    try:
        assert proc.stdout is not None
        lines: list[str] = []
        match = _wait_ready(proc, lines, log_path)
        drainer = threading.Thread(target=_drain, args=(proc.stdout, lines), daemon=True)
        drainer.start()
        server = RunningServer(
            http_url=match["http"],
            mqtt_host="127.0.0.1",
            mqtt_port=int(match["mqtt"].rsplit(":", 1)[1]),
            token=(data_dir / "admin-token").read_text().strip(),
            server_ca=data_dir / "server-ca.pem",
            data_dir=data_dir,
            process=proc,
            log_path=log_path,
        )
        yield server
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
        with contextlib.suppress(OSError):
            log_path.unlink()


def _wait_ready(proc: subprocess.Popen[str], lines: list[str], log_path: Path) -> re.Match[str]:
    """Read stdout until the ready line; fail with the server's log if it exits or stalls."""
    assert proc.stdout is not None
    result: list[re.Match[str]] = []

    def reader() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            found = READY_RE.match(line.strip())
            if found:
                result.append(found)
                return

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    deadline = time.monotonic() + START_TIMEOUT
    while thread.is_alive() and time.monotonic() < deadline:
        thread.join(0.05)
    if result:
        return result[0]
    if proc.poll() is None:
        proc.kill()
    proc.wait()
    raise ServerStartupError(
        f"the server did not become ready (exit status {proc.returncode}); its log:\n"
        + log_path.read_text(errors="replace")[-4000:]
    )
