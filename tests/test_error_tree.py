"""The kit has one exception tree (issue 12), checked on the imported classes, not by convention.

Every exception class any module of the kit defines must derive from the one root,
:class:`device_sdk.errors.Iotx509Error` (so ``iotx509`` and any caller need one ``except``), no two
classes may share a name (an ``except StoreError`` must not depend on which module it came from),
and each must be drawn in the tree of the root module's docstring. Private classes (a leading
underscore) are a module's own control-flow signals that never leave it, and are exempt.

The modules are imported in a child process: some of the simulator's import Locust, which
monkey-patches the standard library for gevent, and must not do that to the test process.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("device_sdk", "firmware_helpers", "server_stub", "simulator", "iotx509")
ROOT_CLASS = "device_sdk.errors:Iotx509Error"

_COLLECT = r"""
import importlib, inspect, json, pkgutil, sys
module_name, class_name = sys.argv[1].split(":")
root_module = importlib.import_module(module_name)
root = getattr(root_module, class_name)
found = []
for package in sys.argv[2:]:
    pkg = importlib.import_module(package)
    names = [package] + [m.name for m in pkgutil.walk_packages(pkg.__path__, package + ".")]
    for name in names:
        if name.rsplit(".", 1)[-1] == "__main__":
            continue
        module = importlib.import_module(name)
        for obj in vars(module).values():
            if (inspect.isclass(obj) and obj.__module__ == name
                    and issubclass(obj, BaseException) and not issubclass(obj, Warning)):
                found.append({"module": name, "name": obj.__qualname__,
                              "rooted": issubclass(obj, root)})
print(json.dumps({"doc": root_module.__doc__ or "", "classes": found}))
"""


def collect(root_class: str, packages: tuple[str, ...], cwd: Path) -> dict[str, object]:
    """Every exception class the packages define, imported in a fresh interpreter."""
    done = subprocess.run(
        [sys.executable, "-c", _COLLECT, root_class, *packages],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, object] = json.loads(done.stdout)
    return result


def problems(found: dict[str, object]) -> list[str]:
    """What breaks the one-tree rules, one line per problem."""
    doc = str(found["doc"])
    classes = [c for c in found["classes"] if not c["name"].startswith("_")]  # type: ignore[attr-defined]
    out = []
    seen: dict[str, str] = {}
    for c in classes:
        where = f"{c['module']}.{c['name']}"
        if not c["rooted"]:
            out.append(f"{where} does not derive from the root")
        if c["name"] in seen:
            out.append(f"{where} has the same name as {seen[c['name']]}")
        seen.setdefault(c["name"], where)
        if f"+ {c['name']}" not in doc and f"* {c['name']}" not in doc:
            out.append(f"{where} is not drawn in the tree of the root module's docstring")
    return out


def test_every_exception_class_hangs_in_one_tree_under_a_unique_name() -> None:
    found = collect(ROOT_CLASS, PACKAGES, ROOT)
    assert len(found["classes"]) > 50  # type: ignore[arg-type]  # the walk really found them
    assert problems(found) == []


def test_the_check_fails_on_a_planted_violation(tmp_path: Path) -> None:
    package = tmp_path / "fakekit"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "errors.py").write_text(
        textwrap.dedent('''
        """* Root
          + PartError
          + StoreError
        """
        class Root(Exception): ...
        class PartError(Root): ...
        class StoreError(PartError): ...
        class _Signal(Exception): ...
    ''')
    )
    (package / "sub" / "__init__.py").write_text("")
    (package / "sub" / "board.py").write_text(
        textwrap.dedent("""
        from fakekit.errors import PartError
        class StoreError(PartError): ...
        class Refused(Exception): ...
    """)
    )
    found = collect("fakekit.errors:Root", ("fakekit",), tmp_path)
    assert sorted(problems(found)) == [
        "fakekit.sub.board.Refused does not derive from the root",
        "fakekit.sub.board.Refused is not drawn in the tree of the root module's docstring",
        "fakekit.sub.board.StoreError has the same name as fakekit.errors.StoreError",
    ]
