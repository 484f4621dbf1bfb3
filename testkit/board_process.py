"""``iotx509 -v sim board`` in a process of its own, as the serial benchmarks start it.

Why a process and not :class:`~firmware_helpers.serial.simboard.SimBoard` in a thread: a real
board is its own device, so its framing, pacing and commit must not share the host's GIL while
the host is being timed. The board prints its pseudo-terminal path on stdout when it is ready
and logs what it did (key generation, commit time) on stderr, which :meth:`BoardProcess.stop`
returns for the benchmark to read.

Used by ``bench/bench_provisioning.py`` and ``bench/bench_onboard.py``.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path


class BoardProcess:
    """A simulated board in its own process; :attr:`port` is the path the host opens."""

    def __init__(
        self,
        store: Path,
        *,
        baud: int,
        key_pool: Path | None = None,
        max_chunk: int | None = None,
    ) -> None:
        options = ["--baud", str(baud)]
        if key_pool is not None:
            options += ["--key-pool", str(key_pool)]
        if max_chunk is not None:
            options += ["--max-chunk", str(max_chunk)]
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "iotx509",
                "-v",
                "sim",
                "board",
                "--store",
                str(store),
                *options,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        self.port = self.proc.stdout.readline().strip()
        if not self.port:  # it exited before it was ready: say why
            _, err = self.proc.communicate(timeout=30)
            raise RuntimeError(
                f"iotx509 sim board did not start (exit {self.proc.returncode}):\n{err}"
            )

    def stop(self) -> str:
        """Stop the board as Ctrl-C would; return what it logged (stderr)."""
        self.proc.send_signal(signal.SIGINT)
        _, err = self.proc.communicate(timeout=30)
        return err
