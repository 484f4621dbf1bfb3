"""Run fuzz targets for a bounded time, each in its own subprocess, and report what happened.

A crash (an exception other than the project's own, a broken invariant, a hang past the
per-input timeout) stops that target's libFuzzer run; the runner then prints the offending input
(hex and repr) and exits non-zero. Corpora live in a temporary directory seeded from
:mod:`fuzz.seeds`, so nothing is written to the repository.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from . import targets

PER_INPUT_TIMEOUT = 10  # seconds; a parser taking longer on one input counts as a hang
RSS_LIMIT_MB = 2048
_RUNS = re.compile(r"stat::number_of_executed_units:\s*(\d+)|Done (\d+) runs")
_COV = re.compile(r"cov: (\d+)")


@dataclass
class FuzzResult:
    target: str
    seconds: int
    executions: int
    coverage: int
    crashed: bool
    exit_status: int
    crash_input_hex: str | None = None
    output_tail: str = ""


def run_target(name: str, seconds: int, workdir: Path) -> FuzzResult:
    label = name.replace(":", "-")
    corpus = workdir / f"{label}-corpus"
    artifacts = workdir / f"{label}-artifacts"
    corpus.mkdir(parents=True, exist_ok=True)
    artifacts.mkdir(parents=True, exist_ok=True)
    for i, seed in enumerate(targets.seeds_for(name)):
        (corpus / f"seed-{i}").write_bytes(seed)
    command = [
        sys.executable,
        "-m",
        "fuzz.child",
        name,
        f"-max_total_time={seconds}",
        f"-timeout={PER_INPUT_TIMEOUT}",
        f"-rss_limit_mb={RSS_LIMIT_MB}",
        f"-artifact_prefix={artifacts}/",
        "-print_final_stats=1",
        "-max_len=16384",
        str(corpus),
    ]
    proc = subprocess.run(
        command,
        capture_output=True,
        text=True,
        errors="replace",
        timeout=seconds + 120,
        cwd=Path(__file__).resolve().parent.parent,
    )
    output = proc.stdout + proc.stderr
    runs = [int(a or b) for a, b in _RUNS.findall(output)]
    cov = [int(c) for c in _COV.findall(output)]
    crash_files = sorted(artifacts.iterdir())
    crashed = proc.returncode != 0 or bool(crash_files)
    crash_hex = crash_files[0].read_bytes().hex() if crash_files else None
    tail = ""
    if crashed:
        tail = reproduce(name, crash_files[0]) if crash_files else output[-3000:]
    return FuzzResult(
        target=name,
        seconds=seconds,
        executions=max(runs, default=0),
        coverage=max(cov, default=0),
        crashed=crashed,
        exit_status=proc.returncode,
        crash_input_hex=crash_hex,
        output_tail=tail,
    )


def reproduce(name: str, input_file: Path) -> str:
    """Run the target once, uninstrumented, on a crashing input: a plain Python traceback."""
    code = (
        "import sys; from pathlib import Path; from fuzz import targets; "
        f"targets.resolve({name!r})(Path(sys.argv[1]).read_bytes())"
    )
    limit = PER_INPUT_TIMEOUT * 3
    try:
        proc = subprocess.run(
            [sys.executable, "-c", code, str(input_file)],
            capture_output=True,
            text=True,
            errors="replace",
            timeout=limit,
            cwd=Path(__file__).resolve().parent.parent,
        )
    except subprocess.TimeoutExpired:
        return f"hang: the target did not return within {limit} s on this input"
    return (proc.stderr or "(the input does not crash outside libFuzzer: a hang or memory?)")[
        -3000:
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fuzz", description=__doc__)
    parser.add_argument("--seconds", type=int, default=20, help="time per target (default 20)")
    parser.add_argument(
        "--target",
        action="append",
        choices=sorted(targets.TARGETS),
        help="run only this target (repeatable; default all)",
    )
    parser.add_argument("--json", type=Path, help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    names = args.target or list(targets.TARGETS)
    results: list[FuzzResult] = []
    with tempfile.TemporaryDirectory(prefix="iotx509-fuzz-") as tmp:
        for name in names:
            print(f"fuzzing {name} for {args.seconds} s ...", flush=True)
            result = run_target(name, args.seconds, Path(tmp))
            results.append(result)
            verdict = "CRASH" if result.crashed else "ok"
            print(
                f"  {verdict}: {result.executions:,} executions, coverage {result.coverage}",
                flush=True,
            )
            if result.crashed:
                data = bytes.fromhex(result.crash_input_hex or "")
                print(f"  input ({len(data)} bytes): {data!r}\n  hex: {data.hex()}")
                print(result.output_tail)
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in results], indent=2))
    return 1 if any(r.crashed for r in results) else 0
