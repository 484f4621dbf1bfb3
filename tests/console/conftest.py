"""Console fixtures: the session's real server process (an account of each module's own), and
pages of Debian's headless Chromium driven by Playwright (the root conftest's ``browser``).

The browser is the system's ``/usr/bin/chromium`` (scripts/test.sh installs it); Playwright's own
browser download is never used. Screenshots go to a temporary folder, so a test run leaves the
checkout as it was; ``IOTX509_CONSOLE_SCREENSHOTS=docs/console`` refreshes the pictures that
docs/console.md shows.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from server_stub.launcher import RunningServer
from tests.common import account_view

ROOT = Path(__file__).resolve().parents[2]
VIEWPORT = {"width": 1280, "height": 860}
#: Playwright's expect() waits for page state up to this long (an upper bound, not a sleep).
EXPECT_TIMEOUT_MS = 20_000

playwright_sync = pytest.importorskip(
    "playwright.sync_api", reason="playwright (the test extra) is not installed"
)


def screenshot_dir() -> Path:
    default = Path(tempfile.gettempdir()) / "iotx509-console-screenshots"
    directory = Path(os.environ.get("IOTX509_CONSOLE_SCREENSHOTS", default))
    directory.mkdir(parents=True, exist_ok=True)
    return directory


@pytest.fixture(scope="module")
def console_server(reference_server: RunningServer) -> RunningServer:
    """The session's server as a new account sees it, shared by the tests of one module (the
    console's pages show everything an account has, so modules do not see each other's)."""
    return account_view(reference_server, "console")


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    playwright_sync.expect.set_options(timeout=EXPECT_TIMEOUT_MS)
    context = browser.new_context(viewport=VIEWPORT, accept_downloads=True)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.console_errors = errors
    try:
        yield page
    finally:
        context.close()


def sign_in(page: Any, server: RunningServer) -> None:
    page.goto(server.http_url + "/console/")
    page.get_by_label("API token").fill(server.token)
    page.get_by_role("button", name="Sign in").click()
    playwright_sync.expect(page.get_by_role("heading", name="Overview")).to_be_visible()
    playwright_sync.expect(page.locator("#nav")).to_be_visible()
