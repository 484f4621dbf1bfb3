"""Run every benchmark (or those named) one after another and keep their reports.

    python -m bench                 # all of them
    python -m bench association sdk_footprint

Each ``bench/bench_*.py`` is a standalone script that runs our code beside a reference in the
same run and prints a table with ratios. The combined output goes to ``bench/results/latest.md``.
Absolute times on shared machines drift; the ratios are what to compare.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main(argv: list[str]) -> int:
    scripts = sorted(HERE.glob("bench_*.py"))
    if argv:
        wanted = {f"bench_{name.removeprefix('bench_').removesuffix('.py')}.py" for name in argv}
        scripts = [s for s in scripts if s.name in wanted]
    results = HERE / "results"
    results.mkdir(exist_ok=True)
    report = [f"# Benchmark run {time.strftime('%Y-%m-%d %H:%M:%S %Z')}\n"]
    status = 0
    for script in scripts:
        print(f"== {script.name}", flush=True)
        started = time.monotonic()
        proc = subprocess.run(
            [sys.executable, str(script)],
            cwd=HERE.parent,
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            check=False,
        )
        print(proc.stdout, flush=True)
        took = time.monotonic() - started
        report.append(
            f"## {script.name} (exit {proc.returncode}, {took:.0f} s)\n\n```\n"
            f"{proc.stdout.strip()}\n```\n"
        )
        status |= proc.returncode != 0
    (results / "latest.md").write_text("\n".join(report))
    print(f"report: {results / 'latest.md'}")
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
