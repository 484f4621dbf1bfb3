"""Evidence for docs/reliability.md: each hardening test records what it tried and what happened.

When ``IOTX509_RELIABILITY_DIR`` is set (scripts/reliability_report.py sets it), :func:`record`
writes one small JSON file per row there; otherwise it does nothing, so plain test runs leave
no files behind. The row's "backed by" is the running test, taken from pytest itself.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

ENV = "IOTX509_RELIABILITY_DIR"


def record(key: str, *, threat: str, tried: str, count: int | str, result: str) -> None:
    directory = os.environ.get(ENV)
    if not directory:
        return
    current = os.environ.get("PYTEST_CURRENT_TEST", "").rsplit(" ", 1)[0]
    row = {
        "key": key,
        "threat": threat,
        "tried": tried,
        "count": count,
        "result": result,
        "test": current,
    }
    path = Path(directory) / (re.sub(r"[^A-Za-z0-9_.-]", "_", key) + ".json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(row, indent=2))
