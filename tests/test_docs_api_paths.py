"""Every HTTP API path the README and docs/ give is one the reference server really serves.

Paths are taken from the text: anything starting with ``/api/`` and any path after an HTTP
method (``POST /devices/...``), so a path written without its ``/api/v1`` prefix is caught too.
Placeholders (``{pk}``, ``PK``) match one path segment; the method must be one the route takes.
"""

from __future__ import annotations

import inspect
import re
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

METHOD_PATH = re.compile(r"\b(GET|POST|PATCH|PUT|DELETE)\s+(/[^\s`\"'),]*)")
#: The API's prefix named on its own ("a client of /api/v1") is no path to check.
API_PREFIXES = {"/api", "/api/v1"}
API_PATH = re.compile(r"(?<![\w/])(/api/[^\s`\"'),]*)")


def documented_paths(text: str) -> list[tuple[str | None, str]]:
    """``(method or None, path)`` for every API path mentioned in ``text``."""
    found: list[tuple[str | None, str]] = []
    taken: set[int] = set()
    for match in METHOD_PATH.finditer(text):
        found.append((match.group(1), _clean(match.group(2))))
        taken.add(match.start(2))
    for match in API_PATH.finditer(text):
        path = _clean(match.group(1))
        if match.start(1) not in taken and path.rstrip("/") not in API_PREFIXES:
            found.append((None, path))
    return found


def _clean(path: str) -> str:
    return path.split("?", 1)[0].split("#", 1)[0].rstrip(".:;")


def _route_table() -> list[tuple[re.Pattern[str], set[str]]]:
    from server_stub.api import create_app

    # Only the route table is read: the app's collaborators are never called.
    required = [
        name
        for name, param in inspect.signature(create_app).parameters.items()
        if param.default is inspect.Parameter.empty
        and param.kind in (param.POSITIONAL_ONLY, param.POSITIONAL_OR_KEYWORD)
    ]
    none: dict[str, Any] = dict.fromkeys(required)
    app = create_app(**none)
    table = []
    for path, operations in app.openapi()["paths"].items():  # the served API, as published
        pattern = re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(path))
        table.append((re.compile(pattern + "/?"), {m.upper() for m in operations}))
    return table


def unserved(
    paths: list[tuple[str | None, str]], table: list[tuple[re.Pattern[str], set[str]]]
) -> list[str]:
    bad = []
    for method, path in paths:
        served = [methods for pattern, methods in table if pattern.fullmatch(path)]
        if not served or (method is not None and not any(method in m for m in served)):
            bad.append(f"{method or ''} {path}".strip())
    return bad


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_documented_api_path_is_served(doc: Path) -> None:
    paths = documented_paths(doc.read_text(encoding="utf-8"))
    assert unserved(paths, _route_table()) == []


def test_the_check_finds_what_it_must() -> None:
    """The extraction and the match catch a missing prefix, a wrong method, an unknown path."""
    text = (
        "Send with `POST /devices/{pk}/{dn}/messages`, or POST /api/v1/devices/PK/DN/messages;"
        " `DELETE /api/v1/products/{productKey}` and /api/v1/nothing-here; see"
        " /api/v1/endpoint. Then `PATCH /api/v1/ca-certificates/{caSn}`, all under /api/v1."
    )
    paths = documented_paths(text)
    assert (None, "/api/v1/endpoint") in paths
    assert unserved(paths, _route_table()) == [
        "POST /devices/{pk}/{dn}/messages",
        "DELETE /api/v1/products/{productKey}",
        "/api/v1/nothing-here",
    ]
    assert any(
        path.startswith("/api/v1/")
        for doc in DOCS
        for _m, path in documented_paths(doc.read_text(encoding="utf-8"))
    )
