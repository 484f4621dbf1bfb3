"""The API documentation at /docs (and /redoc) works on a lab network without internet access.

FastAPI's own /docs page loads Swagger UI from a CDN and shows a blank page offline. The server
serves the assets itself (the fastapi-offline package, in the ``server`` extra). Checked on the
real server process: the HTML names only the server's own paths and those paths answer 200;
then Debian's headless Chromium opens /docs with every request to another origin blocked (the
offline lab) and Swagger UI must render the API's operations without trying any other origin.
"""

from __future__ import annotations

import re
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from server_stub.launcher import RunningServer
from tests.hardening.reliability import record

#: Upper bound for Playwright's waits on page state (not a sleep: it returns when the state holds).
EXPECT_TIMEOUT_MS = 30_000
PAGES = ("/docs", "/redoc")
_OTHER_ORIGIN = re.compile(r"(?i)(?:https?:)?//[a-z0-9.-]+[^\s\"'<>]*")
_URL_IN_HTML = re.compile(r"""(?:src|href|spec-url)\s*=\s*["']([^"']+)["']|url:\s*'([^']+)'""")


def _get(url: str) -> tuple[int, str, bytes]:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url, timeout=30) as resp:
        return resp.status, resp.headers.get("Content-Type", ""), resp.read()


def test_docs_pages_name_only_the_server_and_its_assets_answer(server: RunningServer) -> None:
    fetched = 0
    for page in PAGES:
        status, ctype, body = _get(server.http_url + page)
        assert status == 200 and ctype.startswith("text/html")
        html = body.decode()
        foreign = _OTHER_ORIGIN.findall(html)
        assert foreign == [], f"{page} names another origin: {foreign}"
        urls = [a or b for a, b in _URL_IN_HTML.findall(html)]
        assets = [u for u in urls if u != "/openapi.json"]
        assert assets, f"no assets found in {page}"
        for url in urls:
            assert url.startswith("/") and not url.startswith("//"), url
            status, ctype, data = _get(urllib.parse.urljoin(server.http_url, url))
            assert status == 200 and len(data) > 0, url
            fetched += 1
            if url.endswith(".js"):
                assert "javascript" in ctype and len(data) > 100_000, (url, ctype, len(data))
            elif url.endswith(".css"):
                assert ctype.startswith("text/css"), (url, ctype)
    # no badge from the public validator service (Swagger UI's default)
    assert '"validatorUrl": null' in _get(server.http_url + "/docs")[2].decode()
    record(
        "escape-docs-offline-assets",
        threat="/docs and /redoc loading their assets from a "
        "CDN (blank page on an offline lab network)",
        tried="GET both pages from the real server; every URL they name fetched from the server",
        count=fetched,
        result="only same-origin paths, each answered 200 (JS, CSS, favicon, openapi.json); "
        "no validator badge",
    )


def test_swagger_ui_renders_with_every_other_origin_blocked(
    server: RunningServer, browser: Any, tmp_path: Path
) -> None:
    from playwright.sync_api import expect

    origin = server.http_url.rstrip("/")
    elsewhere: list[str] = []
    served: list[str] = []

    def offline_lab(route: Any) -> None:
        url = route.request.url
        if url == origin or url.startswith(origin + "/"):
            served.append(url)
            route.continue_()
        elif url.startswith(("data:", "blob:")):
            route.continue_()
        else:
            elsewhere.append(url)
            route.abort("internetdisconnected")

    context = browser.new_context(viewport={"width": 1280, "height": 900})
    errors: list[str] = []
    try:
        context.route("**/*", offline_lab)
        page = context.new_page()
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(origin + "/docs")
        operations = page.locator(".opblock")
        expect(operations.first).to_be_visible(timeout=EXPECT_TIMEOUT_MS)
        expect(page.get_by_text("/api/v1/registration-code").first).to_be_visible(
            timeout=EXPECT_TIMEOUT_MS
        )
        rendered = operations.count()
        page.screenshot(path=str(tmp_path / "docs-offline.png"), full_page=False)
    finally:
        context.close()
    assert elsewhere == [], f"/docs tried other origins: {elsewhere}"
    assert errors == []
    assert any(u.endswith("/openapi.json") for u in served)
    assert rendered >= 10, rendered
    record(
        "escape-docs-offline-browser",
        threat="Swagger UI on an offline lab network",
        tried="headless Chromium opens /docs with every request to another origin blocked",
        count=1,
        result=f"{rendered} operations rendered; no request to another origin, no page error",
    )
