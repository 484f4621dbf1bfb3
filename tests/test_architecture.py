"""The direction of dependencies stays one-way, checked on the source, not by convention.

The import graph is read from every module's syntax tree: ``import`` and ``from ... import``
statements wherever they are (module level, inside functions, under ``TYPE_CHECKING``: a deferred
import is still a dependency), and imports made by string: a literal passed to
``importlib.import_module``, ``require_extra`` or ``__import__``, or a name bound to such literals
(a module-level constant, or the variable of a ``for`` loop over a constant tuple of them). On
that graph:

* each part imports only the parts it builds on (``ALLOWED``); the simulator never imports the
  reference server (ruff bans it too: ``simulator/ruff.toml``);
* the device SDK imports none of the server's or the simulator's third-party dependencies, so it
  installs on a board without them;
* no module takes part in an import cycle, inside a package or across packages; a cycle is
  reported with its path;
* no import by a string the checker cannot read (a blind spot of the graph);
* the development parts stay out of what ships: no shipped part imports ``bench``, ``testkit`` or
  ``tests``; ``bench`` imports ``testkit`` for shared helpers, never ``tests`` (a benchmark must
  not run the test suite's configuration, nor change when a test is refactored); ``testkit``
  imports neither;
* no test double in a shipped package: no module named like one (``testing``, ``fakes``,
  ``mocks``, ``conftest``, ``test_*``...), no class named ``Fake*``/``Mock*``/``Dummy*``/``Stub*``,
  no import of test machinery (``pytest``, ``unittest.mock``, ``hypothesis``).

Every check is also run on a small fake package with a planted violation, to show it can fail.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import textwrap
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

#: part -> the first-party packages it may import
ALLOWED = {
    "device_sdk": {"device_sdk"},
    "firmware_helpers": {"device_sdk", "firmware_helpers"},
    "server_stub": {"device_sdk", "firmware_helpers", "server_stub"},
    "simulator": {"device_sdk", "firmware_helpers", "simulator"},
    "iotx509": {"device_sdk", "firmware_helpers", "server_stub", "simulator", "iotx509"},
}
SHIPPED = set(ALLOWED)
#: Development parts (not in the wheel): what each may import, besides what ships.
DEV_ALLOWED = {
    "testkit": SHIPPED | {"testkit"},
    "bench": SHIPPED | {"testkit", "bench"},
}
DEV = {"bench", "testkit", "tests"}
#: The device must install without the server's or the simulator's dependencies.
SDK_FORBIDDEN_THIRD_PARTY = {"fastapi", "uvicorn", "uvloop", "starlette", "locust", "gevent"}
#: Names that mark a module or a class as a test double, or test machinery, out of place in a
#: shipped package.
DOUBLE_MODULE = re.compile(
    r"(testing|tests?|conftest|fakes?|mocks?|doubles?|dummy|dummies|stubs?)(_\w*)?|(test|fake|mock)_\w+"
)
DOUBLE_CLASS = re.compile(r"(Fake|Mock|Dummy|Stub)[A-Z_]\w*|(Fake|Mock|Dummy|Stub)")
TEST_MACHINERY = {"pytest", "unittest.mock", "hypothesis", "_pytest"}
#: Calls whose first argument names a module that will be imported.
STRING_IMPORTERS = {"import_module", "require_extra", "__import__"}


# --- reading the graph ---------------------------------------------------------------------------


def _strings(node: ast.expr | None) -> list[str] | None:
    """The strings a literal holds: a string, a tuple/list of them, a dict's values; else None."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    items = (
        node.elts
        if isinstance(node, ast.Tuple | ast.List)
        else [v for v in node.values if v is not None]
        if isinstance(node, ast.Dict)
        else None
    )
    if not items:
        return None
    values = [e.value for e in items if isinstance(e, ast.Constant) and isinstance(e.value, str)]
    return values if len(values) == len(items) else None


def _assigned(node: ast.AST) -> tuple[list[ast.expr], ast.expr | None]:
    if isinstance(node, ast.Assign):
        return node.targets, node.value
    if isinstance(node, ast.AnnAssign):
        return [node.target], node.value
    return [], None


def _string_names(tree: ast.Module) -> dict[str, list[str]]:
    """Names bound to module names as strings.

    Module-level constants (a string, a tuple, list or dict of them), the variable of a ``for``
    loop over one, and a name assigned ``CONST[...]`` or ``CONST.get(...)``.
    """
    names: dict[str, list[str]] = {}
    for statement in tree.body:
        targets, value = _assigned(statement)
        values = _strings(value)
        for target in targets:
            if values is not None and isinstance(target, ast.Name):
                names[target.id] = values
    for node in ast.walk(tree):
        if isinstance(node, ast.For) and isinstance(node.target, ast.Name):
            values = _strings(node.iter)
            if values is None and isinstance(node.iter, ast.Name):
                values = names.get(node.iter.id)
            if values is not None:
                names[node.target.id] = values
        targets, value = _assigned(node)
        source = (
            value.value
            if isinstance(value, ast.Subscript)
            else value.func.value
            if isinstance(value, ast.Call)
            and isinstance(value.func, ast.Attribute)
            and value.func.attr == "get"
            else None
        )
        if isinstance(source, ast.Name) and source.id in names:
            for target in targets:
                if isinstance(target, ast.Name):
                    names[target.id] = names[source.id]
    return names


def _called_name(call: ast.Call) -> str | None:
    if isinstance(call.func, ast.Name):
        return call.func.id
    if isinstance(call.func, ast.Attribute):
        return call.func.attr
    return None


def _string_imports(tree: ast.Module) -> Iterator[tuple[ast.Call, list[str] | None]]:
    """Each call that imports by string, with the module names it may import (None: unread)."""
    string_names = _string_names(tree)
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and _called_name(node) in STRING_IMPORTERS and node.args:
            arg = node.args[0]
            values = _strings(arg)
            if values is None and isinstance(arg, ast.Name):
                values = string_names.get(arg.id)
            yield node, values


def unread_string_imports(root: Path, packages: Iterable[str]) -> list[str]:
    """Imports by a string the checker cannot read: each is a blind spot of the graph.

    The one allowed form is a wrapper forwarding its own parameter (``require_extra(module,
    ...)`` calling ``import_module(module)``): its callers' strings are read instead.
    """
    out: list[str] = []
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            tree = ast.parse(path.read_text(), filename=str(path))
            forwarded = {
                id(call)
                for func in ast.walk(tree)
                if isinstance(func, ast.FunctionDef) and func.name in STRING_IMPORTERS
                for call in ast.walk(func)
                if isinstance(call, ast.Call)
                and call.args
                and isinstance(call.args[0], ast.Name)
                and call.args[0].id in {a.arg for a in func.args.args}
            }
            out.extend(
                f"{path.relative_to(root)}:{call.lineno} imports {ast.unparse(call.args[0])}"
                for call, values in _string_imports(tree)
                if values is None and id(call) not in forwarded
            )
    return out


def imports_of(tree: ast.Module, module: str, is_package: bool, modules: set[str]) -> set[str]:
    """Every dotted name the module imports.

    ``from pkg import sub`` depends on the module ``pkg.sub`` when there is one, not on ``pkg``'s
    ``__init__`` (which runs anyway); a name that is no module makes ``pkg`` the dependency.
    """
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                package = module if is_package else module.rpartition(".")[0]
                for _ in range(node.level - 1):
                    package = package.rpartition(".")[0]
                base = f"{package}.{node.module}" if node.module else package
            else:
                base = node.module or ""
            for alias in node.names:
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base)
    for _call, values in _string_imports(tree):
        found.update(values or ())
    found.discard("")
    found.discard(module)
    return found


def import_graph(root: Path, packages: Iterable[str]) -> dict[str, set[str]]:
    """module -> the dotted names it imports (first-party ones are the graph's other nodes)."""
    files: dict[str, tuple[Path, bool]] = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            is_package = parts[-1] == "__init__"
            files[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    modules = set(files)
    return {
        module: imports_of(
            ast.parse(path.read_text(), filename=str(path)), module, is_package, modules
        )
        for module, (path, is_package) in files.items()
    }


# --- the rules -----------------------------------------------------------------------------------


def layer_violations(
    graph: Mapping[str, set[str]],
    allowed: Mapping[str, set[str]],
    forbidden_third_party: Mapping[str, set[str]],
) -> list[str]:
    first_party = set(allowed)
    out = []
    for module, edges in sorted(graph.items()):
        part = module.split(".")[0]
        tops = {name.split(".")[0] for name in edges}
        bad = (tops & first_party) - allowed[part]
        bad |= tops & forbidden_third_party.get(part, set())
        if bad:
            names = sorted(n for n in edges if n.split(".")[0] in bad)
            out.append(f"{module} imports {', '.join(names)}")
    return out


def cycles(graph: Mapping[str, set[str]]) -> list[str]:
    """One path per group of modules that import each other, as ``a -> b -> a``.

    Two modules are in one group when each reaches the other; the graph has about a hundred
    nodes, so plain reachability sets are fast enough and easy to check by eye.
    """
    nodes = set(graph)
    reach: dict[str, set[str]] = {}
    for start in nodes:
        seen: set[str] = set()
        todo = list(graph[start] & nodes)
        while todo:
            node = todo.pop()
            if node not in seen:
                seen.add(node)
                todo.extend(graph[node] & nodes)
        reach[start] = seen
    groups = {frozenset(m for m in reach[n] if n in reach[m]) for n in nodes if n in reach[n]}
    return sorted(_cycle_path(graph, sorted(group)) for group in groups)


def _cycle_path(graph: Mapping[str, set[str]], component: list[str]) -> str:
    """The shortest way from the component's first module back to itself."""
    start, members = component[0], set(component)
    paths = {start: [start]}
    queue = [start]
    while queue:
        node = queue.pop(0)
        for child in sorted(graph[node] & members):
            if child == start:
                return " -> ".join([*paths[node], start])
            if child not in paths:
                paths[child] = [*paths[node], child]
                queue.append(child)
    raise AssertionError("a strongly connected component always has a cycle")


def double_findings(root: Path, packages: Iterable[str]) -> list[str]:
    """Modules and classes of ``packages`` that are test doubles or import test machinery."""
    out: list[str] = []
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            where = path.relative_to(root)
            names = [*where.parent.parts[1:], path.stem]
            if any(DOUBLE_MODULE.fullmatch(name) for name in names):
                out.append(f"{where}: a test double's module name")
            tree = ast.parse(path.read_text(), filename=str(path))
            for node in ast.walk(tree):
                if isinstance(node, ast.ClassDef) and DOUBLE_CLASS.fullmatch(node.name):
                    out.append(f"{where}:{node.lineno}: class {node.name}")
                if isinstance(node, ast.Import):
                    imported = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and not node.level:
                    imported = [node.module or ""]
                else:
                    continue
                out.extend(
                    f"{where}:{node.lineno}: imports {name}"
                    for name in imported
                    if any(name == m or name.startswith(m + ".") for m in TEST_MACHINERY)
                )
    return out


# --- the kit -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return import_graph(ROOT, [*ALLOWED, *DEV_ALLOWED])


def _dev_rules() -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """(allowed, forbidden) over shipped and development parts: ``tests`` is first party too
    (importable by nobody here), and no shipped part imports a development one."""
    allowed = {**ALLOWED, **DEV_ALLOWED, "tests": set()}
    forbidden = {part: set(DEV) for part in ALLOWED}
    forbidden["device_sdk"] |= SDK_FORBIDDEN_THIRD_PARTY
    return allowed, forbidden


def test_parts_import_only_what_they_build_on(graph: dict[str, set[str]]) -> None:
    assert "server_stub.launcher" in graph["iotx509.demo"]  # imports by string are read
    assert "testkit.mosquitto" in graph["bench.bench_sdk_footprint"]  # bench and testkit are read
    allowed, forbidden = _dev_rules()
    assert layer_violations(graph, allowed, forbidden) == []


def test_no_test_double_in_a_shipped_package() -> None:
    assert double_findings(ROOT, ALLOWED) == []


def test_no_import_cycles(graph: dict[str, set[str]]) -> None:
    assert cycles(graph) == []


def test_every_import_by_string_is_read() -> None:
    assert unread_string_imports(ROOT, ALLOWED) == []


def test_ruff_bans_the_server_in_the_simulator() -> None:
    planted = "import server_stub.errors\n\nprint(server_stub.errors)\n"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "ruff",
            "check",
            "--select",
            "TID251",
            "--output-format",
            "concise",
            "--stdin-filename",
            "simulator/planted.py",
            "-",
        ],
        input=planted,
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    assert done.returncode == 1 and "TID251 `server_stub` is banned" in done.stdout, done


# --- each check fails on a planted violation -----------------------------------------------------


def _fake_kit(root: Path, files: Mapping[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))


FAKE_ALLOWED = {"base": {"base"}, "sim": {"base", "sim"}, "srv": {"base", "srv"}}


def test_a_string_import_across_layers_is_caught(tmp_path: Path) -> None:
    _fake_kit(
        tmp_path,
        {
            "base/__init__.py": "",
            "base/cli.py": """
            import importlib
            from base.support import require_extra
            PARTS = ("srv.cli", "base.support")
            def load():
                for name in PARTS:
                    importlib.import_module(name)
                return require_extra("sim.launcher", "sim")
        """,
            "base/support.py": "def require_extra(module, extra): ...\n",
            "sim/__init__.py": "",
            "sim/launcher.py": "MODULE = 'srv.app'\ndef go():\n    return __import__(MODULE)\n",
            "srv/__init__.py": "",
            "srv/cli.py": "",
            "srv/app.py": "",
        },
    )
    graph = import_graph(tmp_path, FAKE_ALLOWED)
    assert layer_violations(graph, FAKE_ALLOWED, {}) == [
        "base.cli imports sim.launcher, srv.cli",
        "sim.launcher imports srv.app",
    ]


def test_an_import_by_string_that_cannot_be_read_is_caught(tmp_path: Path) -> None:
    _fake_kit(
        tmp_path,
        {
            "base/__init__.py": "",
            "base/lazy.py": """
            import importlib
            LAZY = {"Client": "base.client"}
            def load(name, where):
                module = LAZY.get(name)
                importlib.import_module(module)
                return importlib.import_module(where + ".cli")
            def require_extra(module, extra):
                return importlib.import_module(module)
        """,
            "base/client.py": "",
        },
    )
    assert imports_of(
        ast.parse((tmp_path / "base/lazy.py").read_text()), "base.lazy", False, {"base.client"}
    ) >= {"base.client"}
    assert unread_string_imports(tmp_path, ["base"]) == ["base/lazy.py:7 imports where + '.cli'"]


def test_a_cycle_inside_a_package_is_caught_with_its_path(tmp_path: Path) -> None:
    _fake_kit(
        tmp_path,
        {
            "srv/__init__.py": "",
            "srv/mqtt/__init__.py": "",
            "srv/mqtt/broker.py": "from srv.mqtt import session\n",
            "srv/mqtt/session.py": "from . import link\n",
            "srv/mqtt/link.py": """
            from typing import TYPE_CHECKING
            if TYPE_CHECKING:
                from srv.mqtt.broker import Broker
        """,
            "srv/mqtt/codec.py": "from srv.mqtt.link import x\n",
        },
    )
    assert cycles(import_graph(tmp_path, FAKE_ALLOWED)) == [
        "srv.mqtt.broker -> srv.mqtt.session -> srv.mqtt.link -> srv.mqtt.broker"
    ]


def test_the_simulator_importing_the_server_is_caught(tmp_path: Path) -> None:
    _fake_kit(
        tmp_path,
        {
            "base/__init__.py": "",
            "sim/__init__.py": "",
            "sim/fleet.py": "def f():\n    from srv.errors import Oops\n    return Oops\n",
            "srv/__init__.py": "",
            "srv/errors.py": "class Oops(Exception): ...\n",
        },
    )
    graph = import_graph(tmp_path, FAKE_ALLOWED)
    assert layer_violations(graph, FAKE_ALLOWED, {}) == ["sim.fleet imports srv.errors"]


def test_a_forbidden_third_party_import_is_caught(tmp_path: Path) -> None:
    _fake_kit(tmp_path, {"base/__init__.py": "", "base/net.py": "import gevent.monkey\n"})
    graph = import_graph(tmp_path, {"base": {"base"}})
    assert layer_violations(graph, {"base": {"base"}}, {"base": {"gevent"}}) == [
        "base.net imports gevent.monkey"
    ]


def test_bench_importing_tests_is_caught(tmp_path: Path) -> None:
    _fake_kit(
        tmp_path,
        {
            "base/__init__.py": "",
            "base/cli.py": "def main():\n    from testkit.broker import run\n    return run\n",
            "bench/__init__.py": "",
            "bench/bench_a.py": "from tests.server.fakes import FakeDirectory\n",
            "bench/bench_b.py": "from testkit.broker import run\nimport base.cli\n",
            "testkit/__init__.py": "",
            "testkit/broker.py": "import importlib\nimportlib.import_module('tests.sdk.brokers')\n",
            "tests/__init__.py": "",
        },
    )
    shipped = {"base": {"base"}}
    allowed = {
        **shipped,
        "bench": {"base", "testkit", "bench"},
        "testkit": {"base", "testkit"},
        "tests": set(),
    }
    graph = import_graph(tmp_path, ["base", "bench", "testkit"])
    assert layer_violations(graph, allowed, {"base": set(DEV)}) == [
        "base.cli imports testkit.broker",
        "bench.bench_a imports tests.server.fakes",
        "testkit.broker imports tests.sdk.brokers",
    ]


def test_a_test_double_in_a_shipped_package_is_caught(tmp_path: Path) -> None:
    _fake_kit(
        tmp_path,
        {
            "srv/__init__.py": "",
            "srv/testing.py": "class InMemoryMessaging: ...\n",
            "srv/mqtt/__init__.py": "",
            "srv/mqtt/fakes.py": "",
            "srv/mqtt/fake_clock.py": "",
            "srv/mqtt/broker.py": "class Broker: ...\nclass FakeDirectory: ...\n",
            "srv/probe.py": "def f():\n    from unittest.mock import patch\n    import pytest\n",
            "srv/stubborn.py": "class Stubborn: ...\nclass Mockingbird: ...\n",
        },
    )
    assert double_findings(tmp_path, ["srv"]) == [
        "srv/mqtt/broker.py:2: class FakeDirectory",
        "srv/mqtt/fake_clock.py: a test double's module name",
        "srv/mqtt/fakes.py: a test double's module name",
        "srv/probe.py:2: imports unittest.mock",
        "srv/probe.py:3: imports pytest",
        "srv/testing.py: a test double's module name",
    ]
