"""Run the hardening tests and write docs/reliability.md from what they recorded.

Usage: ``python scripts/reliability_report.py [--quick] [--output docs/reliability.md]``.

The tests under ``tests/hardening`` write one JSON row each (threat, what was tried, how many
times, what happened) into the directory named by ``IOTX509_RELIABILITY_DIR``; tests of other
parts that cover a row of the table (the serial line faults, the certificate parsing inputs) are
listed from ``STATIC_ROWS`` with their pass/fail result from the same pytest run (JUnit XML).
A row whose test failed says so: the document never shows a result the latest run did not see.
``--quick`` leaves out the tests marked ``heavy``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from device_sdk.fileio import atomic_write  # noqa: E402

HARDENING = "tests/hardening"
EXTRA_TESTS = ["tests/serial/test_faults.py"]


@dataclass(frozen=True)
class StaticRow:
    """A row backed by a test that records nothing itself; counts come from its parameters."""

    test: str  # pytest node id prefix (file::function)
    threat: str
    tried: str
    count: str


STATIC_ROWS = [
    StaticRow("tests/hardening/test_certificate_parsing_inputs.py::test_random_bytes_are_refused_with_our_error",
              "random bytes as a certificate file", "Hypothesis random byte strings up to 4 KiB", "400"),
    StaticRow("tests/hardening/test_certificate_parsing_inputs.py::test_truncated_and_spliced_pem",
              "truncated and spliced PEM certificates", "a valid PEM cut anywhere, PEM armour spliced in", "300"),
    StaticRow("tests/hardening/test_certificate_parsing_inputs.py::test_der_with_one_byte_changed",
              "DER certificate with one byte changed", "Hypothesis position x byte value", "Hypothesis default"),
    StaticRow("tests/hardening/test_certificate_parsing_inputs.py::test_concatenated_pem_keeps_order_and_many_certificates_are_bounded",
              "many certificates in one file", "concatenated PEM chains beyond the per-file limit", "1"),
    StaticRow("tests/hardening/test_certificate_parsing_inputs.py::test_huge_file_is_refused_before_parsing",
              "huge certificate file", "a file over the 1 MiB limit", "1"),
    StaticRow("tests/hardening/test_certificate_parsing_inputs.py::test_random_key_bytes_are_refused_with_our_error",
              "random bytes as a private key (with and without password)", "Hypothesis random byte strings", "Hypothesis default"),
    StaticRow("tests/hardening/test_certificate_fuzz_findings.py::test_found_inputs_are_refused_with_our_errors",
              "certificate inputs found by fuzzing (invalid version, corrupt basicConstraints, duplicate extension)",
              "each as a CA upload and through load_certificates", "3"),
    StaticRow("tests/hardening/test_fuzz_targets.py::test_mqtt_stream_pieces",
              "MQTT byte streams fed whole and in pieces", "Hypothesis: packet fragments + random bytes, piece sizes 1-64", "300"),
    StaticRow("tests/hardening/test_fuzz_targets.py::test_mqtt_valid_packets_with_trailing_garbage",
              "valid MQTT packets followed by garbage", "Hypothesis packet lists + up to 16 garbage bytes", "200"),
    StaticRow("tests/hardening/test_fuzz_targets.py::test_serial_random_line_bytes",
              "random bytes on the serial line (host and board decoders)", "Hypothesis random bytes up to 600, piece sizes 1-64", "300"),
    StaticRow("tests/hardening/test_fuzz_targets.py::test_serial_corrupted_valid_stream",
              "one corrupted byte in a valid serial session", "Hypothesis position x byte value", "200"),
    StaticRow("tests/hardening/test_fuzz_targets.py::test_csv_fragments_bom_and_line_ends",
              "association CSV built from hostile fragments (quotes, BOM, CR/LF/CRLF, NUL)", "Hypothesis fragment lists", "400"),
    StaticRow("tests/hardening/test_fuzz_targets.py::test_csv_random_bytes",
              "random bytes as an association CSV", "Hypothesis random bytes up to 2,000", "300"),
    StaticRow("tests/hardening/test_fuzz_targets.py::test_certificate_upload_mutations",
              "mutated and truncated CA / verification certificate uploads", "Hypothesis byte changes and cuts of real PEM/DER", "150"),
    StaticRow("tests/serial/test_faults.py::test_fatal_faults_keep_the_previous_credentials",
              "serial: board answers with another protocol version; USB unplugged mid-transfer; "
              "always-corrupt line; stalled board; reboot loop",
              "one provisioning run per fault against a simulated board on a real pty", "5"),
    StaticRow("tests/serial/test_faults.py::test_cli_other_version_exits_with_a_clear_message",
              "serial: other protocol version through the CLI", "CLI run against a board speaking protocol version 7", "1"),
    StaticRow("tests/serial/test_faults.py::test_ctrl_c_on_the_host_keeps_the_previous_credentials",
              "serial: host interrupted with Ctrl-C mid-transfer", "SIGINT to the host tool", "1"),
    StaticRow("tests/serial/test_faults.py::test_power_cut_before_the_commit_point_keeps_the_old_set",
              "serial: board power cut before the commit point", "simulated power cut", "1"),
    StaticRow("tests/serial/test_faults.py::test_power_cut_after_the_commit_point_rolls_forward",
              "serial: board power cut after the commit point", "simulated power cut", "1"),
]

# Order of sections in the document: key prefix of recorded rows -> section title
SECTIONS = [
    ("Hostile input", ("fuzz-", "api-", "static-input")),
    ("Isolation and secrets", ("isolation", "tokens", "logs")),
    ("Network abuse on the device endpoint", ("idle", "failed", "malformed")),
    ("Faults", ("crash", "restart", "static-serial")),
]


def run_pytest(record_dir: Path, junit: Path, quick: bool) -> int:
    command = [sys.executable, "-m", "pytest", HARDENING, *EXTRA_TESTS, "-q",
               f"--junitxml={junit}", "-p", "no:cacheprovider"]
    if quick:
        command += ["-m", "not heavy"]
    env = {**os.environ, "IOTX509_RELIABILITY_DIR": str(record_dir)}
    print("running:", " ".join(command), flush=True)
    return subprocess.run(command, cwd=ROOT, env=env).returncode


def junit_outcomes(junit: Path) -> dict[str, str]:
    """node id (file::function, parameters dropped) -> 'passed' | 'failed' | 'skipped'."""
    outcomes: dict[str, str] = {}
    for case in ET.parse(junit).getroot().iter("testcase"):
        module = case.get("classname", "").replace(".", "/")
        name = case.get("name", "").split("[", 1)[0]
        node = f"{module}.py::{name}"
        if case.find("failure") is not None or case.find("error") is not None:
            state = "failed"
        elif case.find("skipped") is not None:
            state = "skipped"
        else:
            state = "passed"
        if outcomes.get(node) != "failed":  # one failed parameter fails the row
            outcomes[node] = state
    return outcomes


def _cell(value: object) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def _count(value: object) -> str:
    return f"{value:,}" if isinstance(value, int) else str(value)


def build_rows(record_dir: Path, outcomes: dict[str, str]) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    for path in sorted(record_dir.glob("*.json")):
        row = json.loads(path.read_text())
        state = outcomes.get(str(row["test"]).split("[", 1)[0], "passed")
        if state == "failed":
            row["result"] = f"FAILED in the latest run (recorded: {row['result']})"
        rows.append(row)
    for static in STATIC_ROWS:
        static_state = outcomes.get(static.test)
        if static_state is None:
            continue  # not collected in this run (e.g. a file another part has not landed)
        key = "static-serial" if static.test.startswith("tests/serial") else "static-input"
        result = {"passed": "accepted or refused with the kit's own error type; nothing lost",
                  "failed": "FAILED in the latest run", "skipped": "skipped"}[static_state]
        if key == "static-serial" and static_state == "passed":
            result = "clear error naming the cause; the board keeps its previous credentials"
        rows.append({"key": key, "threat": static.threat, "tried": static.tried,
                     "count": static.count, "result": result, "test": static.test})
    return rows


def render(rows: list[dict[str, object]], *, quick: bool, status: int, seconds: float) -> str:
    lines = [
        "# Reliability and hardening",
        "",
        "What was tried against the kit, how many times, and what happened. Every row is backed "
        "by a test in this repository; the counts and measurements are from the latest run of "
        "`python scripts/reliability_report.py`"
        + (" (quick run: tests marked `heavy` left out)" if quick else "") + ".",
        "",
        f"Latest run: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
        f"{seconds / 60:.1f} min, pytest exit status {status}"
        + (" (all passed)" if status == 0 else " (SOME TESTS FAILED: see the rows marked FAILED)")
        + ".",
        "",
        "Invariant for hostile input: accepted, or refused with the project's own error type "
        "(one exception root per package); never another exception, never a hang. Fuzzing: "
        "`python -m fuzz --seconds N [--target T]` (atheris, each target in its own process).",
    ]
    used: set[int] = set()
    for title, prefixes in SECTIONS:
        section = [(i, r) for i, r in enumerate(rows)
                   if i not in used and str(r["key"]).startswith(prefixes)]
        if not section:
            continue
        lines += ["", f"## {title}", "",
                  "| threat / fault | what was tried | count | result | backed by |",
                  "|---|---|---:|---|---|"]
        for i, row in section:
            used.add(i)
            lines.append("| " + " | ".join([
                _cell(row["threat"]), _cell(row["tried"]), _cell(_count(row["count"])),
                _cell(row["result"]), f"`{_cell(row['test'])}`",
            ]) + " |")
    rest = [r for i, r in enumerate(rows) if i not in used]
    if rest:
        lines += ["", "## Other", "", "| threat / fault | what was tried | count | result | backed by |",
                  "|---|---|---:|---|---|"]
        lines += ["| " + " | ".join([_cell(r["threat"]), _cell(r["tried"]), _cell(_count(r["count"])),
                                     _cell(r["result"]), f"`{_cell(r['test'])}`"]) + " |" for r in rest]
    lines += [
        "",
        "## Findings fixed on the way",
        "",
        "- Fuzzing certificate uploads found three inputs that escaped as server errors instead "
        "of a clear refusal: a corrupt basicConstraints extension and an unknown ASN.1 string "
        "tag (cryptography parses names and extensions lazily, on first access) and an invalid "
        "X.509 version (`InvalidVersion` is not a `ValueError`). `device_sdk.certs."
        "load_certificates` now parses those parts up front and maps every such error to "
        "`CertificateFormatError`.",
        "",
        "## How to read the measurements",
        "",
        "- Resident memory (RSS of the server process, psutil) is compared after a warm-up at "
        "the same concurrency as the run and a settle period: the allocator keeps its "
        "high-water mark (the first 1,000 concurrent connections raise RSS once), which is not "
        "a leak; a leak keeps growing over the thousands that follow.",
        "- Kill moments in the crash tests are fractions of a whole request's time measured on "
        "a freshly started server; both outcomes (all and none) occurring shows that kills "
        "landed on both sides of the commit.",
        "- Restart under load uses backoff base = cap = 8 s. The SDK resets its backoff after a "
        "stable connection and draws the first retry from uniform(0, base): with base 0.5 s "
        "and a server back within a second, 51 of 60 devices reconnected inside one second "
        "(measured while writing the test). A fleet that must not storm a restarted server "
        "needs a first retry window of several seconds.",
        "- These runs share a 2-core machine with other work; counts are exact, times and "
        "memory are indicative.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="leave out tests marked heavy")
    parser.add_argument("--output", type=Path, default=ROOT / "docs" / "reliability.md")
    args = parser.parse_args(argv)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="iotx509-reliability-") as tmp:
        record_dir, junit = Path(tmp) / "rows", Path(tmp) / "junit.xml"
        record_dir.mkdir()
        status = run_pytest(record_dir, junit, args.quick)
        if not junit.exists():
            print("pytest wrote no report; nothing to document", file=sys.stderr)
            return status or 1
        rows = build_rows(record_dir, junit_outcomes(junit))
    text = render(rows, quick=args.quick, status=status, seconds=time.monotonic() - started)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(args.output, text.encode())
    print(f"wrote {args.output} ({len(rows)} rows)")
    return status


if __name__ == "__main__":
    sys.exit(main())
