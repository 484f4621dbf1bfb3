"""The one fixture set every part's tests share (helpers themselves: tests/common.py).

- ``pki``: the test PKI (session): a CA and device pairs, made at test time, never committed.
- ``reference_server``: the real server process (``iotx509 server run``: HTTP API and the MQTT
  mutual-TLS listener) started once per test session on free loopback ports. Tests never use
  its admin account: they take an account of their own through the two fixtures below, so they
  stay isolated from each other and pass in any order.
- ``server``: the shared server seen by a new account (``server.token`` is that account's).
- ``platform``: a new account on the shared server with an eligible product and a registered CA.
- ``browser``: Debian's headless Chromium driven by Playwright (per module), for the web console
  and the API documentation pages.

A test that needs a server with special settings (command-line limits, a restart on its data
directory, a crash, another environment) starts its own with
:func:`server_stub.launcher.running_server` and says why.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from server_stub.launcher import RunningServer, running_server
from tests.common import PkiFactory, Platform, account_view, setup_platform

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

#: The old name, for modules not moved to :class:`PkiFactory` yet.
TestPKI = PkiFactory


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PkiFactory:
    return PkiFactory(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="session")
def reference_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    with running_server(tmp_path_factory.mktemp("reference-server") / "data") as server:
        yield server


@pytest.fixture
def server(reference_server: RunningServer) -> RunningServer:
    return account_view(reference_server)


@pytest.fixture
def platform(server: RunningServer, tmp_path: Path) -> Platform:
    return setup_platform(server, tmp_path / "platform")


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """The system's ``/usr/bin/chromium`` (scripts/test.sh installs it; Playwright's own browser
    download is never used); the test is skipped where it or Playwright is missing."""
    playwright_sync = pytest.importorskip(
        "playwright.sync_api", reason="playwright (the test extra) is not installed"
    )
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian's chromium is not installed (scripts/test.sh installs it)")
    with playwright_sync.sync_playwright() as pw:
        launched = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield launched
        finally:
            launched.close()
