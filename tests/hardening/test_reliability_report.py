"""scripts/reliability_report.py: rows from recorded JSON and JUnit outcomes, failures shown."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[2]


def _script() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "reliability_report", ROOT / "scripts" / "reliability_report.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


JUNIT = """<?xml version="1.0"?><testsuites><testsuite>
<testcase classname="tests.hardening.test_x" name="test_ok"/>
<testcase classname="tests.hardening.test_x" name="test_bad"><failure message="boom"/></testcase>
<testcase classname="tests.serial.test_faults" name="test_fatal_faults_keep_the_previous_credentials[a]"/>
<testcase classname="tests.serial.test_faults" name="test_fatal_faults_keep_the_previous_credentials[b]"><failure message="x"/></testcase>
</testsuite></testsuites>"""


def test_rows_table_and_failures(tmp_path: Path) -> None:
    report = _script()
    junit = tmp_path / "junit.xml"
    junit.write_text(JUNIT)
    outcomes = report.junit_outcomes(junit)
    assert outcomes["tests/hardening/test_x.py::test_ok"] == "passed"
    assert outcomes["tests/hardening/test_x.py::test_bad"] == "failed"
    # one failed parameter fails the whole row
    assert (
        outcomes["tests/serial/test_faults.py::test_fatal_faults_keep_the_previous_credentials"]
        == "failed"
    )
    rows_dir = tmp_path / "rows"
    rows_dir.mkdir()
    for key, test in [("idle-connections", "test_ok"), ("crash-ca", "test_bad")]:
        (rows_dir / f"{key}.json").write_text(
            json.dumps(
                {
                    "key": key,
                    "threat": f"threat {key}",
                    "tried": "a | b",
                    "count": 5000,
                    "result": "fine",
                    "test": f"tests/hardening/test_x.py::{test}",
                }
            )
        )
    rows = report.build_rows(rows_dir, outcomes)
    text = report.render(rows, quick=False, status=1, seconds=60)
    assert (
        "| threat idle-connections | a \\| b | 5,000 | fine | `tests/hardening/test_x.py::test_ok` |"
        in text
    )
    assert "FAILED in the latest run (recorded: fine)" in text
    assert "SOME TESTS FAILED" in text
    serial = [r for r in rows if r["key"] == "static-serial"]
    assert serial and serial[0]["result"] == "FAILED in the latest run"
    assert text.index("## Network abuse") < text.index("## Faults")


def test_static_rows_with_their_own_section_and_result(tmp_path: Path) -> None:
    """A test outside tests/hardening joins a section with StaticRow(key=..., result=...)."""
    report = _script()
    bounds = [r for r in report.STATIC_ROWS if r.key == "bounds"]
    assert bounds and all(r.result for r in bounds)
    # every such test is collected by the report's run
    assert all(
        r.test.startswith(report.HARDENING + "/") or r.test.split("::")[0] in report.EXTRA_TESTS
        for r in bounds
    )
    outcomes = {bounds[0].test: "passed", bounds[1].test: "failed"}
    (tmp_path / "escape-x.json").write_text(
        json.dumps(
            {
                "key": "escape-x",
                "threat": "t",
                "tried": "x",
                "count": 1,
                "result": "r",
                "test": "tests/hardening/test_y.py::test_y",
            }
        )
    )
    rows = report.build_rows(tmp_path, outcomes)
    by_test = {r["test"]: r for r in rows}
    assert by_test[bounds[0].test]["result"] == bounds[0].result
    assert by_test[bounds[0].test]["key"] == "bounds"
    assert by_test[bounds[1].test]["result"] == "FAILED in the latest run"
    assert bounds[2].test not in by_test  # not collected in this run: no row
    text = report.render(rows, quick=True, status=1, seconds=1)
    assert text.index("## Every resource a client can grow has a bound") < text.index(
        "## Inputs that escaped"
    )


def test_every_static_row_names_an_existing_test() -> None:
    """A renamed or moved test would silently drop its row: name it here instead."""
    report = _script()
    missing = []
    for row in report.STATIC_ROWS:
        path, _, function = row.test.partition("::")
        source = ROOT / path
        if not source.exists() or f"def {function}(" not in source.read_text():
            missing.append(row.test)
    assert missing == []
