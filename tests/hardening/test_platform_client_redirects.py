"""The platform client never sends its bearer token to another origin.

Two real HTTP servers on loopback: the "API" answers every request with a redirect to a second
server (another host address and port), which records the headers it receives. The client must
refuse with an error naming the ``Location`` and the second server must never see the token.
A control run with the standard library's default opener shows that this harness does catch
the leak (urllib resends ``Authorization`` to the redirect target).
"""

from __future__ import annotations

import threading
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from firmware_helpers.platform_client import PlatformAPIError, PlatformClient, UploadFile
from tests.hardening.reliability import record

TOKEN = "secret-token-for-account-A"
REDIRECT_CODES = (301, 302, 303, 307, 308)


class _Collector(BaseHTTPRequestHandler):
    seen: list[dict[str, str]]

    def _answer(self) -> None:
        self.seen.append({k.lower(): v for k, v in self.headers.items()})
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        body = b'{"registrationCode": "collected"}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PATCH = do_DELETE = _answer

    def log_message(self, format: str, *args: object) -> None:
        pass


class _Redirector(BaseHTTPRequestHandler):
    target: str
    code: int

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        self.send_response(self.code)
        self.send_header("Location", self.target + self.path)
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_GET = do_POST = do_PATCH = do_DELETE = _answer

    def log_message(self, format: str, *args: object) -> None:
        pass


def _serve(server: ThreadingHTTPServer) -> threading.Thread:
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return thread


@pytest.fixture
def collector() -> Iterator[tuple[str, list[dict[str, str]]]]:
    seen: list[dict[str, str]] = []
    handler = type("Collector", (_Collector,), {"seen": seen})
    host = "127.0.0.2"
    try:
        server = ThreadingHTTPServer((host, 0), handler)
    except OSError:  # pragma: no cover - a loopback without 127.0.0.2
        host = "127.0.0.1"
        server = ThreadingHTTPServer((host, 0), handler)
    _serve(server)
    port = server.server_port
    try:
        yield f"http://{host}:{port}", seen
    finally:
        server.shutdown()
        server.server_close()


def _redirector(target: str, code: int) -> ThreadingHTTPServer:
    handler = type("Redirector", (_Redirector,), {"target": target, "code": code})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    _serve(server)
    return server


def test_control_plain_urllib_leaks_the_token(collector: tuple[str, list[dict[str, str]]]) -> None:
    """Without the client's own opener the token reaches the other origin: the harness sees it."""
    target, seen = collector
    server = _redirector(target, 302)
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/api/v1/registration-code"
        request = urllib.request.Request(url, headers={"Authorization": f"Bearer {TOKEN}"})
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(request, timeout=10) as resp:
            resp.read()
    finally:
        server.shutdown()
        server.server_close()
    assert [h.get("authorization") for h in seen] == [f"Bearer {TOKEN}"]


def test_client_never_follows_a_redirect_with_its_token(
    collector: tuple[str, list[dict[str, str]]],
) -> None:
    target, seen = collector
    calls = 0
    for code in REDIRECT_CODES:
        server = _redirector(target, code)
        try:
            client = PlatformClient(f"http://127.0.0.1:{server.server_address[1]}", TOKEN)
            attempts: list[tuple[str, tuple[object, ...]]] = [
                ("registration_code", ()),
                ("create_product", ("widgets",)),
                ("associate", ("5f1c", UploadFile("a.csv", b"ProductKey,DeviceName,CertSN\n"))),
                ("set_device_status", ("a1B2c3", "dev-0001", "disabled")),
                ("delete_ca", ("5f1c",)),
            ]
            for method, args in attempts:
                with pytest.raises(PlatformAPIError) as info:
                    getattr(client, method)(*args)
                calls += 1
                assert info.value.status == code
                assert info.value.code == "redirect"
                assert f"HTTP {code} redirecting to {target}/api/v1/" in str(info.value)
                assert "does not follow redirects" in str(info.value)
        finally:
            server.shutdown()
            server.server_close()
    assert not any("authorization" in h for h in seen), "the token reached another origin"
    assert seen == [], "the client followed a redirect"
    record(
        "escape-redirect",
        threat="API answering with a redirect to another origin "
        "(the bearer token would be forwarded)",
        tried=f"HTTP {', '.join(map(str, REDIRECT_CODES))} x GET, POST JSON, POST multipart, "
        "PATCH, DELETE against a real loopback server redirecting to a second one (another "
        "address and port) that records headers",
        count=calls,
        result="PlatformAPIError naming the Location every time; the second "
        "server saw no request and no token (control: plain urllib forwards it)",
    )
