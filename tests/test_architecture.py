"""The direction of dependencies stays one-way, checked on the source, not by convention."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

#: part -> the first-party packages it may import
ALLOWED = {
    "device_sdk": {"device_sdk"},
    "firmware_helpers": {"device_sdk", "firmware_helpers"},
    "server_stub": {"device_sdk", "firmware_helpers", "server_stub"},
    "simulator": {"device_sdk", "firmware_helpers", "simulator"},
}
FIRST_PARTY = {"device_sdk", "firmware_helpers", "server_stub", "simulator", "iotx509"}
#: The device must install without the server's or the simulator's dependencies.
SDK_FORBIDDEN_THIRD_PARTY = {"fastapi", "uvicorn", "uvloop", "starlette", "locust", "gevent"}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found


@pytest.mark.parametrize("part", sorted(ALLOWED))
def test_part_imports_only_what_it_builds_on(part: str) -> None:
    offenders = []
    for path in sorted((ROOT / part).rglob("*.py")):
        bad = (_imports(path) & FIRST_PARTY) - ALLOWED[part]
        if part == "device_sdk":
            bad |= _imports(path) & SDK_FORBIDDEN_THIRD_PARTY
        if bad:
            offenders.append(f"{path.relative_to(ROOT)} imports {sorted(bad)}")
    assert not offenders, "\n".join(offenders)
