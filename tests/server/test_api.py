"""The HTTP API through FastAPI's TestClient (real ASGI app, real registry on SQLite)."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from firmware_helpers.pki import CertifiedKey, create_ca, issue_verification_certificate
from server_stub.api import create_app
from server_stub.registry import Registry
from server_stub.store import SqliteStore
from tests.server.conftest import csv_bytes
from tests.server.doubles import InMemoryMessaging


class Api:
    def __init__(
        self, client: TestClient, registry: Registry, messaging: InMemoryMessaging
    ) -> None:
        self.client = client
        self.registry = registry
        self.messaging = messaging
        _acct, self.token = registry.create_account("alice")
        self.headers = {"Authorization": f"Bearer {self.token}"}

    def other_headers(self, name: str = "mallory") -> dict[str, str]:
        _acct, token = self.registry.create_account(name)
        return {"Authorization": f"Bearer {token}"}

    def call(
        self, method: str, path: str, *, headers: dict[str, str] | None = None, **kwargs: Any
    ) -> Any:
        return self.client.request(
            method, "/api/v1" + path, headers=headers or self.headers, **kwargs
        )

    def product(self, **body: Any) -> str:
        r = self.call("POST", "/products", json={"name": "p", **body})
        assert r.status_code == 201, r.text
        return str(r.json()["productKey"])

    def register_ca(
        self, ca: CertifiedKey, name: str = "my_ca", headers: dict[str, str] | None = None
    ) -> Any:
        code = self.call("GET", "/registration-code", headers=headers).json()["registrationCode"]
        ver = issue_verification_certificate(ca, code)
        return self.call(
            "POST",
            "/ca-certificates",
            headers=headers,
            data={"name": name},
            files={
                "caCertificate": ("ca.pem", ca.cert_pem()),
                "verificationCertificate": ("verificationCert.crt", ver.cert_pem()),
            },
        )


@pytest.fixture
def api(tmp_path: Path) -> Iterator[Api]:
    store = SqliteStore(tmp_path / "r.sqlite3")
    registry = Registry(store)
    messaging = InMemoryMessaging()
    app = create_app(registry, messaging, max_upload_bytes=64 * 1024)
    with TestClient(app) as client:
        yield Api(client, registry, messaging)
    store.close()


def _error(r: Any, status: int, code: str) -> str:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"} and body["error"]["code"] == code, body
    return str(body["error"]["message"])


def test_openapi_lists_every_endpoint(api: Api) -> None:
    spec = api.client.get("/openapi.json").json()
    paths = set(spec["paths"])
    assert {
        "/api/v1/registration-code",
        "/api/v1/products",
        "/api/v1/products/{productKey}",
        "/api/v1/ca-certificates",
        "/api/v1/ca-certificates/{caSn}",
        "/api/v1/ca-certificates/{caSn}/association-template",
        "/api/v1/ca-certificates/{caSn}/associations",
        "/api/v1/ca-certificates/{caSn}/associations/{certSn}",
        "/api/v1/devices/{productKey}/{deviceName}",
        "/api/v1/devices/{productKey}/{deviceName}/messages",
    } <= paths
    assert "HTTPBearer" in spec["components"]["securitySchemes"]


@pytest.mark.parametrize(
    "headers", [{}, {"Authorization": "Bearer nope"}, {"Authorization": "Basic dXNlcjpwYXNz"}]
)
def test_requests_without_a_valid_token_get_401(api: Api, headers: dict[str, str]) -> None:
    r = api.client.get("/api/v1/registration-code", headers=headers)
    message = _error(r, 401, "unauthorized")
    assert "token" in message
    assert r.headers["www-authenticate"] == "Bearer"


def test_framework_errors_use_the_error_shape(api: Api) -> None:
    assert _error(api.call("GET", "/nothing-here"), 404, "not_found") == "no such API path"
    r = api.call("PUT", "/registration-code")
    assert _error(r, 405, "method_not_allowed") == "Method Not Allowed"
    assert "GET" in r.headers["allow"]
    message = _error(
        api.call("POST", "/products", json={"authType": "x509"}), 422, "invalid_request"
    )
    assert message == "name: Field required"
    message = _error(
        api.call(
            "POST",
            "/products",
            content=b"{not json",
            headers={**api.headers, "Content-Type": "application/json"},
        ),
        422,
        "invalid_request",
    )
    assert "JSON decode error" in message
    message = _error(
        api.call("POST", "/ca-certificates", data={"name": "abcd"}), 422, "invalid_request"
    )
    assert "caCertificate: Field required" in message


def test_registration_code_and_products(api: Api) -> None:
    code = api.call("GET", "/registration-code").json()["registrationCode"]
    assert len(code) == 64
    pk = api.product(name="Thermostat")
    got = api.call("GET", f"/products/{pk}").json()
    assert got["productKey"] == pk and got["name"] == "Thermostat"
    assert (got["authType"], got["privateCa"], got["network"]) == ("x509", True, "mqtt")
    assert [p["productKey"] for p in api.call("GET", "/products").json()] == [pk]
    message = _error(
        api.call("POST", "/products", json={"name": "x", "network": "zigbee"}), 400, "invalid_input"
    )
    assert message == "network 'zigbee' is not one of mqtt, lorawan"
    assert "no product with ProductKey 'Nope1'" in _error(
        api.call("GET", "/products/Nope1"), 404, "not_found"
    )


def test_whole_console_flow(api: Api, test_ca: CertifiedKey) -> None:
    pk = api.product()
    r = api.register_ca(test_ca)
    assert r.status_code == 201, r.text
    ca = r.json()
    assert {"caSn", "name", "subject", "status", "notBefore", "notAfter"} <= set(ca)
    assert (ca["caSn"], ca["status"], ca["subject"]) == (
        test_ca.sn,
        "active",
        "CN=Registry Test CA",
    )
    sn = ca["caSn"]
    assert [c["caSn"] for c in api.call("GET", "/ca-certificates").json()] == [sn]
    t = api.call("GET", f"/ca-certificates/{sn}/association-template")
    assert t.headers["content-type"].startswith("text/csv")
    assert t.text == "ProductKey,DeviceName,CertSN\r\n"
    rows = [(pk, f"dev-{i:04d}", format(0xA00 + i, "X")) for i in range(5)]
    r = api.call(
        "POST",
        f"/ca-certificates/{sn}/associations",
        files={"file": ("a.csv", csv_bytes(rows, bom=True, newline="\r\n"), "text/csv")},
    )
    assert r.status_code == 200 and r.json() == {"associated": 5}
    listed = api.call("GET", f"/ca-certificates/{sn}/associations").json()
    assert [(a["deviceName"], a["certSn"]) for a in listed][:2] == [
        ("dev-0000", "a00"),
        ("dev-0001", "a01"),
    ]
    device = api.call("GET", f"/devices/{pk}/dev-0001").json()
    assert device == {**device, "status": "enabled", "online": False, "caSn": sn, "certSn": "a01"}
    assert (
        api.call("PATCH", f"/devices/{pk}/dev-0001", json={"status": "disabled"}).json()["status"]
        == "disabled"
    )
    assert api.call("DELETE", f"/ca-certificates/{sn}/associations/0A01").status_code == 204
    assert api.call("GET", f"/devices/{pk}/dev-0001").json()["certSn"] is None
    assert (
        api.call("PATCH", f"/ca-certificates/{sn}", json={"status": "inactive"}).json()["status"]
        == "inactive"
    )
    assert api.call("DELETE", f"/ca-certificates/{sn}").status_code == 204
    assert api.call("GET", "/ca-certificates").json() == []


def test_ca_rules_reach_the_client(api: Api, test_ca: CertifiedKey) -> None:
    assert api.register_ca(test_ca).status_code == 201
    message = _error(api.register_ca(test_ca, name="again_ca"), 409, "ca_already_registered")
    assert "already registered in this account as 'my_ca'" in message
    message = _error(api.register_ca(create_ca("X"), name="bad-name"), 400, "invalid_input")
    assert "4-30 characters" in message
    r = api.call(
        "POST",
        "/ca-certificates",
        data={"name": "some_ca"},
        files={"caCertificate": ("ca.pem", b"junk"), "verificationCertificate": ("v.crt", b"junk")},
    )
    assert "neither a PEM nor a DER" in _error(r, 400, "invalid_certificate")
    assert "paused" in _error(
        api.call("PATCH", f"/ca-certificates/{test_ca.sn}", json={"status": "paused"}),
        400,
        "invalid_input",
    )


def test_rejected_csv_lists_rows_and_saves_nothing(api: Api, test_ca: CertifiedKey) -> None:
    pk = api.product()
    sn = api.register_ca(test_ca).json()["caSn"]
    store = api.registry.store
    before = store.row_counts()
    data = csv_bytes([(pk, "dev-0001", "1"), (pk, "x", "2"), (pk, "dev-0003", "1")])
    r = api.call("POST", f"/ca-certificates/{sn}/associations", files={"file": ("a.csv", data)})
    assert r.status_code == 422
    err = r.json()["error"]
    assert err["code"] == "association_rejected"
    assert err["message"] == "2 of 3 rows are invalid; nothing was saved"
    assert [row["row"] for row in err["rows"]] == [2, 3]
    assert "CertSN 1 already appears in row 1" in err["rows"][1]["message"]
    assert store.row_counts() == before
    wrong = api.product(privateCa=False)
    r = api.call(
        "POST",
        f"/ca-certificates/{sn}/associations",
        files={"file": ("a.csv", csv_bytes([(wrong, "dev-0001", "1")]))},
    )
    assert "privateCa is false (needs true)" in _error(r, 422, "product_not_eligible")
    r = api.call(
        "POST",
        f"/ca-certificates/{sn}/associations",
        files={"file": ("a.csv", b"Product,Device\n")},
    )
    assert "header must be exactly" in _error(r, 422, "invalid_csv")


def test_uploads_over_the_limit_get_413(api: Api, test_ca: CertifiedKey) -> None:
    sn = api.register_ca(test_ca).json()["caSn"]
    big = b"ProductKey,DeviceName,CertSN\n" + b"x" * (70 * 1024)
    r = api.call("POST", f"/ca-certificates/{sn}/associations", files={"file": ("a.csv", big)})
    assert "over the upload limit of 65,536 bytes" in _error(r, 413, "payload_too_large")

    def chunks() -> Iterator[bytes]:
        boundary = b"--b0undary"
        yield (
            boundary + b'\r\nContent-Disposition: form-data; name="file"; filename="a.csv"\r\n\r\n'
        )
        for _ in range(80):
            yield b"y" * 1024
        yield b"\r\n" + boundary + b"--\r\n"

    r = api.call(
        "POST",
        f"/ca-certificates/{sn}/associations",
        content=chunks(),
        headers={**api.headers, "Content-Type": "multipart/form-data; boundary=b0undary"},
    )
    assert "more than 65,536 bytes is over the upload limit" in _error(r, 413, "payload_too_large")


def test_accounts_are_isolated(api: Api, test_ca: CertifiedKey) -> None:
    pk = api.product()
    sn = api.register_ca(test_ca).json()["caSn"]
    api.call(
        "POST",
        f"/ca-certificates/{sn}/associations",
        files={"file": ("a.csv", csv_bytes([(pk, "dev-0001", "1")]))},
    )
    other = api.other_headers()
    assert api.call("GET", "/ca-certificates", headers=other).json() == []
    for method, path, kwargs in [
        ("GET", f"/products/{pk}", {}),
        ("GET", f"/ca-certificates/{sn}", {}),
        ("PATCH", f"/ca-certificates/{sn}", {"json": {"status": "inactive"}}),
        ("DELETE", f"/ca-certificates/{sn}", {}),
        ("GET", f"/ca-certificates/{sn}/associations", {}),
        ("GET", f"/ca-certificates/{sn}/association-template", {}),
        ("DELETE", f"/ca-certificates/{sn}/associations/1", {}),
        ("GET", f"/devices/{pk}/dev-0001", {}),
        ("PATCH", f"/devices/{pk}/dev-0001", {"json": {"status": "disabled"}}),
        ("GET", f"/devices/{pk}/dev-0001/messages", {}),
        ("POST", f"/devices/{pk}/dev-0001/messages", {"json": {"topic": "/x", "payload": "p"}}),
    ]:
        _error(api.call(method, path, headers=other, **kwargs), 404, "not_found")
    assert api.call("GET", f"/ca-certificates/{sn}").json()["status"] == "active"
    assert api.call("GET", f"/devices/{pk}/dev-0001").json()["status"] == "enabled"


def test_cloud_to_device_messages_and_presence(api: Api, test_ca: CertifiedKey) -> None:
    pk = api.product()
    sn = api.register_ca(test_ca).json()["caSn"]
    api.call(
        "POST",
        f"/ca-certificates/{sn}/associations",
        files={"file": ("a.csv", csv_bytes([(pk, "dev-0001", "1")]))},
    )
    path = f"/devices/{pk}/dev-0001/messages"
    topic = f"/{pk}/dev-0001/user/get"
    message = _error(
        api.call("POST", path, json={"topic": topic, "payload": "hi"}), 409, "device_offline"
    )
    assert message == f"device {pk}/dev-0001 is not connected"
    api.messaging.online.add((pk, "dev-0001"))
    assert api.call("GET", f"/devices/{pk}/dev-0001").json()["online"] is True
    r = api.call("POST", path, json={"topic": topic, "payload": "hi", "qos": 1})
    assert r.json() == {"delivered": True}
    raw = base64.b64encode(b"\x00\xff").decode()
    api.call("POST", path, json={"topic": topic, "payload": raw, "payloadEncoding": "base64"})
    assert api.messaging.delivered == [
        (pk, "dev-0001", topic, b"hi", 1),
        (pk, "dev-0001", topic, b"\x00\xff", 0),
    ]
    for body, text in [
        ({"topic": "/a/#", "payload": "x"}, "without wildcards"),
        ({"topic": "", "payload": "x"}, "non-empty topic"),
        ({"topic": topic, "qos": 2}, "qos 2 is not supported"),
        ({"topic": topic, "payload": "***", "payloadEncoding": "base64"}, "not valid base64"),
        ({"topic": topic, "payloadEncoding": "hex"}, "payloadEncoding 'hex'"),
    ]:
        assert text in _error(api.call("POST", path, json=body), 400, "invalid_input")
    api.messaging.device_published(pk, "dev-0001", f"/{pk}/dev-0001/user/update", b"{}")
    api.messaging.device_published(pk, "dev-0001", f"/{pk}/dev-0001/user/bin", b"\x80", 1)
    got = api.call("GET", path).json()
    assert [(m["payload"], m["payloadEncoding"], m["qos"]) for m in got] == [
        ("{}", "utf-8", 0),
        ("gA==", "base64", 1),
    ]
    assert len(api.call("GET", path, params={"limit": 1}).json()) == 1
    assert "limit 0" in _error(api.call("GET", path, params={"limit": 0}), 400, "invalid_input")
    assert "DeviceName 'x'" in _error(api.call("GET", f"/devices/{pk}/x"), 400, "invalid_input")
