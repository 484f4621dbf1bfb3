"""Run the hardening tests and write docs/reliability.md from what they recorded.

Usage: ``python scripts/reliability_report.py [--quick] [--output docs/reliability.md]``.

The tests under ``tests/hardening`` write one JSON row each (threat, what was tried, how many
times, what happened) into the directory named by ``IOTX509_RELIABILITY_DIR``; tests of other
parts that cover a row of the table (the serial line faults, the certificate parsing inputs) are
listed from ``STATIC_ROWS`` with their pass/fail result from the same pytest run (JUnit XML).
A row whose test failed says so: the document never shows a result the latest run did not see.

To add a row: a test under ``tests/hardening`` calls ``tests.hardening.reliability.record(key,
threat=..., tried=..., count=..., result=...)``; the key's prefix picks the section (``SECTIONS``).
A test elsewhere either does the same and its file goes into ``EXTRA_TESTS``, or gets a
``StaticRow`` (file in ``EXTRA_TESTS`` too) with ``key=`` naming the section prefix and
``result=`` the text shown when it passed.
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
EXTRA_TESTS = [
    "tests/serial/test_faults.py",
    "tests/server/test_tenant_isolation.py",  # issue 10, part 1: tenants isolated by key
    "tests/server/test_ca_key_rules.py",  # issue 10: CA key and serial registration rules
    "tests/server/test_mqtt_endpoint.py",  # look-alike CA without AKID locks nobody out
    "tests/server/test_mqtt_bounds.py",  # issue 10, part 2: every bound over real TLS
]


@dataclass(frozen=True)
class StaticRow:
    """A row backed by a test that records nothing itself; counts come from its parameters."""

    test: str  # pytest node id prefix (file::function)
    threat: str
    tried: str
    count: str
    key: str = ""  # section prefix (see SECTIONS); default: static-serial / static-input
    result: str = ""  # shown when the test passed; default: the section's usual sentence


STATIC_ROWS = [
    StaticRow(
        "tests/hardening/test_certificate_parsing_inputs.py::test_random_bytes_are_refused_with_our_error",
        "random bytes as a certificate file",
        "Hypothesis random byte strings up to 4 KiB",
        "400",
    ),
    StaticRow(
        "tests/hardening/test_certificate_parsing_inputs.py::test_truncated_and_spliced_pem",
        "truncated and spliced PEM certificates",
        "a valid PEM cut anywhere, PEM armour spliced in",
        "300",
    ),
    StaticRow(
        "tests/hardening/test_certificate_parsing_inputs.py::test_der_with_one_byte_changed",
        "DER certificate with one byte changed",
        "Hypothesis position x byte value",
        "Hypothesis default",
    ),
    StaticRow(
        "tests/hardening/test_certificate_parsing_inputs.py::test_concatenated_pem_keeps_order_and_many_certificates_are_bounded",
        "many certificates in one file",
        "concatenated PEM chains beyond the per-file limit",
        "1",
    ),
    StaticRow(
        "tests/hardening/test_certificate_parsing_inputs.py::test_huge_file_is_refused_before_parsing",
        "huge certificate file",
        "a file over the 1 MiB limit",
        "1",
    ),
    StaticRow(
        "tests/hardening/test_certificate_parsing_inputs.py::test_random_key_bytes_are_refused_with_our_error",
        "random bytes as a private key (with and without password)",
        "Hypothesis random byte strings",
        "Hypothesis default",
    ),
    StaticRow(
        "tests/hardening/test_certificate_fuzz_findings.py::test_found_inputs_are_refused_with_our_errors",
        "certificate inputs found by fuzzing (invalid version, corrupt basicConstraints, duplicate extension)",
        "each as a CA upload and through load_certificates",
        "3",
    ),
    StaticRow(
        "tests/hardening/test_fuzz_targets.py::test_mqtt_stream_pieces",
        "MQTT byte streams fed whole and in pieces",
        "Hypothesis: packet fragments + random bytes, piece sizes 1-64",
        "300",
    ),
    StaticRow(
        "tests/hardening/test_fuzz_targets.py::test_mqtt_valid_packets_with_trailing_garbage",
        "valid MQTT packets followed by garbage",
        "Hypothesis packet lists + up to 16 garbage bytes",
        "200",
    ),
    StaticRow(
        "tests/hardening/test_fuzz_targets.py::test_serial_random_line_bytes",
        "random bytes on the serial line (host and board decoders)",
        "Hypothesis random bytes up to 600, piece sizes 1-64",
        "300",
    ),
    StaticRow(
        "tests/hardening/test_fuzz_targets.py::test_serial_corrupted_valid_stream",
        "one corrupted byte in a valid serial session",
        "Hypothesis position x byte value",
        "200",
    ),
    StaticRow(
        "tests/hardening/test_fuzz_targets.py::test_csv_fragments_bom_and_line_ends",
        "association CSV built from hostile fragments (quotes, BOM, CR/LF/CRLF, NUL)",
        "Hypothesis fragment lists",
        "400",
    ),
    StaticRow(
        "tests/hardening/test_fuzz_targets.py::test_csv_random_bytes",
        "random bytes as an association CSV",
        "Hypothesis random bytes up to 2,000",
        "300",
    ),
    StaticRow(
        "tests/hardening/test_fuzz_targets.py::test_certificate_upload_mutations",
        "mutated and truncated CA / verification certificate uploads",
        "Hypothesis byte changes and cuts of real PEM/DER",
        "150",
    ),
    StaticRow(
        "tests/serial/test_faults.py::test_fatal_faults_keep_the_previous_credentials",
        "serial: board answers with another protocol version; USB unplugged mid-transfer; "
        "always-corrupt line; stalled board; reboot loop",
        "one provisioning run per fault against a simulated board on a real pty",
        "5",
    ),
    StaticRow(
        "tests/serial/test_faults.py::test_cli_other_version_exits_with_a_clear_message",
        "serial: other protocol version through the CLI",
        "CLI run against a board speaking protocol version 7",
        "1",
    ),
    StaticRow(
        "tests/serial/test_faults.py::test_ctrl_c_on_the_host_keeps_the_previous_credentials",
        "serial: host interrupted with Ctrl-C mid-transfer",
        "SIGINT to the host tool",
        "1",
    ),
    StaticRow(
        "tests/serial/test_faults.py::test_power_cut_before_the_commit_point_keeps_the_old_set",
        "serial: board power cut before the commit point",
        "simulated power cut",
        "1",
    ),
    StaticRow(
        "tests/serial/test_faults.py::test_power_cut_after_the_commit_point_rolls_forward",
        "serial: board power cut after the commit point",
        "simulated power cut",
        "1",
    ),
    # --- issue 10, part 1: tenants isolated by key (real registry, real TLS on loopback)
    StaticRow(
        "tests/server/test_tenant_isolation.py::test_look_alike_ca_of_another_account_changes_nothing",
        "look-alike CA of another account (same subject, no SKI: lock-out and hijack attempt)",
        "B registers it before and after A, claims A's certificate SN for its own device, "
        "then disables, enables and deletes its CA",
        "2",
        key="tenant",
        result="A's device is told A's identity every time; B's own device B's",
    ),
    StaticRow(
        "tests/server/test_tenant_isolation.py::test_device_of_an_unrelated_ca_is_refused_with_unknown_ca",
        "device certificate of a CA nobody registered",
        "one TLS connection",
        "1",
        key="tenant",
        result="handshake refused with 'unknown CA', one log line",
    ),
    StaticRow(
        "tests/server/test_tenant_isolation.py::test_certificate_verifying_under_two_registered_keys_is_refused_and_logged",
        "certificate that verifies under two registered CA keys",
        "registering the same key again; then a row written past the rules, disabled, deleted",
        "4",
        key="tenant",
        result="re-registration refused; while both rows exist the device is refused and "
        "logged as ambiguous (also with the other row inactive), never given either "
        "identity; back to its own once the row is gone",
    ),
    StaticRow(
        "tests/server/test_tenant_isolation.py::test_device_certificate_that_is_a_ca_is_refused",
        "device certificate that is itself a CA (basicConstraints CA:TRUE)",
        "one connection",
        "1",
        key="tenant",
        result="refused, one log line naming the reason",
    ),
    StaticRow(
        "tests/server/test_tenant_isolation.py::test_version_1_device_certificate_from_openssl_x509_req_is_accepted",
        "version-1 device certificate as `openssl x509 -req` makes it (platform docs)",
        "mosquitto_sub with it",
        "1",
        key="tenant",
        result="accepted; identity delivered",
    ),
    StaticRow(
        "tests/server/test_tenant_isolation.py::test_device_certificate_with_a_negative_serial_is_refused_cleanly",
        "device certificate with a negative serial (uncaught error on CONNECT before)",
        "one connection",
        "1",
        key="escape",
        result="refused with one log line ('SN -5 is negative'); no error, no traceback",
    ),
    StaticRow(
        "tests/server/test_mqtt_endpoint.py::test_look_alike_without_authority_key_id_locks_nobody_out",
        "same-subject CAs, device certificates without AKID (OpenSSL picked the first CA "
        "by name: lock-out)",
        "both registration orders, a device of each CA",
        "2",
        key="tenant",
        result="both devices connect, each as itself, whichever CA came first",
    ),
    StaticRow(
        "tests/server/test_ca_key_rules.py::test_public_exponent_other_than_65537_is_refused",
        "CA key with a public exponent other than 65537 (cheap duplicate-signature forgery)",
        "register a CA with e = 3",
        "1",
        key="tenant",
        result="refused with the exponent rule in the message; nothing stored",
    ),
    StaticRow(
        "tests/server/test_ca_key_rules.py::test_modulus_under_2048_bits_is_refused",
        "CA key under 2048 bits",
        "register a 1024-bit CA",
        "1",
        key="tenant",
        result="refused naming the 2048-bit minimum; nothing stored",
    ),
    StaticRow(
        "tests/server/test_ca_key_rules.py::test_key_registered_by_another_account_is_refused_without_naming_it",
        "CA key already registered by another account (under another name)",
        "register the same key from a second account, and again in the first",
        "2",
        key="tenant",
        result="refused; the other account's name and CA are not revealed",
    ),
    StaticRow(
        "tests/server/test_ca_key_rules.py::test_ca_serial_too_long_or_negative_is_refused",
        "CA with a 21-byte or a negative serial (registered then unreachable; HTTP 500)",
        "openssl-made CAs through the registry",
        "2",
        key="escape",
        result="refused at registration naming the RFC 5280 rule; nothing stored",
    ),
    StaticRow(
        "tests/server/test_ca_key_rules.py::test_api_answers_odd_ca_serials_with_a_client_error",
        "the same CAs through the real server's HTTP API",
        "one upload each",
        "2",
        key="escape",
        result="4xx with the reason; the CA list unchanged",
    ),
    StaticRow(
        "tests/server/test_tenant_isolation.py::test_device_of_a_disabled_ca_is_refused_at_the_handshake",
        "device of a CA its own account disabled",
        "connect before and after disabling",
        "2",
        key="tenant",
        result="accepted, then refused",
    ),
    # --- issue 10, part 2: every resource a client can grow has a bound (real TLS, real sockets)
    StaticRow(
        "tests/server/test_mqtt_bounds.py::test_huge_filters_are_refused_and_never_reach_the_topic_tree",
        "SUBSCRIBE with huge filters (`/pk/dn/x////...`, every '/' a tree node)",
        "19 SUBSCRIBE packets of three 65,000-byte filters from one device",
        "57",
        key="bounds",
        result="SUBACK 0x80 for every filter (max_filter_bytes), topic tree "
        "empty, one short log line per SUBSCRIBE; offender and bystander still answer PINGREQ",
    ),
    StaticRow(
        "tests/server/test_mqtt_bounds.py::test_many_short_filters_stop_at_the_session_limit",
        "very many short topic filters in one session",
        "12 SUBSCRIBE packets of 10,000 filters each",
        "120,000",
        key="bounds",
        result="exactly max_filters_per_session granted, the rest 0x80, one log line per "
        "packet; the router holds only those and frees them with the session",
    ),
    StaticRow(
        "tests/server/test_mqtt_bounds.py::test_deep_filter_within_the_limit_matches_without_recursion",
        "PUBLISH matching a 3,000-level subscription (RecursionError before)",
        "a 3,000-level '+' filter allowed by the settings, then a matching PUBLISH",
        "1",
        key="bounds",
        result="delivered; matching does not recurse on the depth",
    ),
    StaticRow(
        "tests/server/test_mqtt_bounds.py::test_deep_filter_over_the_limit_is_refused",
        "topic filter deeper than max_filter_levels",
        "a 3,000-level filter",
        "1",
        key="bounds",
        result="SUBACK 0x80; the connection keeps working",
    ),
    StaticRow(
        "tests/server/test_mqtt_bounds.py::test_recent_messages_keep_within_the_byte_budgets_and_expire",
        "large messages filling the recent-messages store",
        "8 devices x 100 PUBLISH of 255 KiB, then disconnect",
        "800",
        key="bounds",
        result="kept bytes within the per-device and the global budget; every byte gone "
        "once the retention for devices that left has passed",
    ),
    StaticRow(
        "tests/server/test_mqtt_bounds.py::test_per_source_limit_refuses_only_that_source",
        "idle TCP sockets from one source address",
        "max_pending_per_source idle sockets + 1 from one address",
        "5",
        key="bounds",
        result="the extra one closed with one log line; a device from another address connects",
    ),
    StaticRow(
        "tests/server/test_mqtt_bounds.py::test_device_gets_in_while_the_pending_budget_is_full_of_idle_sockets",
        "unauthenticated sockets filling the pending budget (kept a real device out 25 s)",
        "max_pending_connections idle sockets from two addresses, then a real device",
        "8",
        key="bounds",
        result="the device gets in at once; only the oldest idle socket "
        "is closed, with one log line",
    ),
    StaticRow(
        "tests/server/test_mqtt_bounds.py::test_full_endpoint_refuses_newcomers_when_all_are_authenticated",
        "endpoint full of authenticated devices",
        "max_connections devices + 1 socket",
        "4",
        key="bounds",
        result="the newcomer refused with one log line; every connected device keeps working",
    ),
    StaticRow(
        "tests/server/test_mqtt_bounds.py::test_long_client_ids_are_refused_and_logged_short",
        "unbounded client ids (60,000 characters accepted and logged before)",
        "CONNECT with a 60,000-character and a 65-character id",
        "2",
        key="bounds",
        result="CONNACK 2 (identifier rejected), one log line under 1,000 characters; "
        "a bystander keeps working",
    ),
    StaticRow(
        "tests/hardening/test_device_endpoint_abuse.py::test_deep_subscription_and_matching_publish_leave_the_server_serving",
        "3,000-level subscription and a matching PUBLISH on the real server process",
        "SUBSCRIBE with a 3,000-level filter, then PUBLISH to a 3,000-level topic",
        "1",
        key="bounds",
        result="filter refused (SUBACK 0x80), PUBLISH acknowledged, no "
        "RecursionError or traceback in the log; the connection keeps working",
    ),
    StaticRow(
        "tests/hardening/test_device_endpoint_abuse.py::test_long_client_id_is_refused_and_logged_short",
        "60,000-character client id on the real server process",
        "one CONNECT",
        "1",
        key="bounds",
        result="CONNACK 2, one log line under 1,000 characters naming "
        "max_client_id_length; another device keeps working",
    ),
    StaticRow(
        "tests/server/test_mqtt_bounds.py::test_a_64_character_id_is_accepted",
        "client id at the platform's 64-character limit",
        "CONNECT with a 64-character id",
        "1",
        key="bounds",
        result="accepted",
    ),
]

# Order of sections in the document: key prefix of recorded rows -> section title
SECTIONS = [
    ("Hostile input", ("fuzz-", "api-", "static-input")),
    ("Isolation and secrets", ("isolation", "tokens", "logs")),
    ("Tenants are isolated by key, not by name (issue 10, part 1)", ("tenant",)),
    (
        "Every resource a client can grow has a bound (issue 10, part 2)",
        ("bounds", "subscription-bounds", "recent-message-bounds", "pending-connection-bounds"),
    ),
    ("Network abuse on the device endpoint", ("idle", "failed", "malformed")),
    ("Inputs that escaped (issue 10, part 3)", ("escape",)),
    ("Faults", ("crash", "restart", "static-serial")),
]


def run_pytest(record_dir: Path, junit: Path, quick: bool) -> int:
    command = [
        sys.executable,
        "-m",
        "pytest",
        HARDENING,
        *EXTRA_TESTS,
        "-q",
        f"--junitxml={junit}",
        "-p",
        "no:cacheprovider",
    ]
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
        key = static.key or (
            "static-serial" if static.test.startswith("tests/serial") else "static-input"
        )
        result = {
            "passed": "accepted or refused with the kit's own error type; nothing lost",
            "failed": "FAILED in the latest run",
            "skipped": "skipped",
        }[static_state]
        if key == "static-serial" and static_state == "passed":
            result = "clear error naming the cause; the board keeps its previous credentials"
        if static.result and static_state == "passed":
            result = static.result
        rows.append(
            {
                "key": key,
                "threat": static.threat,
                "tried": static.tried,
                "count": static.count,
                "result": result,
                "test": static.test,
            }
        )
    return rows


def render(rows: list[dict[str, object]], *, quick: bool, status: int, seconds: float) -> str:
    lines = [
        "# Reliability and hardening",
        "",
        "What was tried against the kit, how many times, and what happened. Every row is backed "
        "by a test in this repository; the counts and measurements are from the latest run of "
        "`python scripts/reliability_report.py`"
        + (" (quick run: tests marked `heavy` left out)" if quick else "")
        + ".",
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
        section = [
            (i, r)
            for i, r in enumerate(rows)
            if i not in used and str(r["key"]).startswith(prefixes)
        ]
        if not section:
            continue
        lines += [
            "",
            f"## {title}",
            "",
            "| threat / fault | what was tried | count | result | backed by |",
            "|---|---|---:|---|---|",
        ]
        for i, row in section:
            used.add(i)
            lines.append(
                "| "
                + " | ".join(
                    [
                        _cell(row["threat"]),
                        _cell(row["tried"]),
                        _cell(_count(row["count"])),
                        _cell(row["result"]),
                        f"`{_cell(row['test'])}`",
                    ]
                )
                + " |"
            )
    rest = [r for i, r in enumerate(rows) if i not in used]
    if rest:
        lines += [
            "",
            "## Other",
            "",
            "| threat / fault | what was tried | count | result | backed by |",
            "|---|---|---:|---|---|",
        ]
        lines += [
            "| "
            + " | ".join(
                [
                    _cell(r["threat"]),
                    _cell(r["tried"]),
                    _cell(_count(r["count"])),
                    _cell(r["result"]),
                    f"`{_cell(r['test'])}`",
                ]
            )
            + " |"
            for r in rest
        ]
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
