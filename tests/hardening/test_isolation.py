"""Isolation between accounts, token storage and secrets in logs, on the real server process.

tests/server/test_api.py checks 404s on the device/CA endpoints one by one; here every
operation of the OpenAPI description is tried with another account's token against the first
account's identifiers, and the first account's data is compared before and after.
"""

from __future__ import annotations

import ast
import inspect
import json
import re
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from firmware_helpers import pki
from firmware_helpers.platform_client import PlatformAPIError, PlatformClient, UploadFile
from server_stub.launcher import RunningServer, running_server
from server_stub.mqtt import codec
from server_stub.registry import accounts
from server_stub.registry import service as registry_service
from tests.common import create_account

from .conftest import Tenant, csv_for, make_tenant
from .mqtt_tools import device_context, mqtt_connect_retry, ping_ok
from .reliability import record


def _snapshot(t: Tenant) -> dict[str, Any]:
    c = t.client
    return {
        "code": c.registration_code(),
        "product": c.product(t.product_key),
        "cas": c.ca_certificates(),
        "associations": c.associations(t.ca_sn),
        "renewals": c.request("GET", f"/ca-certificates/{t.ca_sn}/renewals"),
        "devices": [c.device(t.product_key, d) for d in t.devices],
        "messages": [c.device_messages(t.product_key, d) for d in t.devices],
    }


def _strip_volatile(snapshot: dict[str, Any]) -> dict[str, Any]:
    text = json.dumps(snapshot, sort_keys=True)
    return dict(json.loads(re.sub(r'"(lastSeen|online)": [^,}]+', '"\\1": null', text)))


def _attempts(a: Tenant, other_ca: pki.CertifiedKey) -> dict[tuple[str, str], dict[str, Any]]:
    """What account B sends for each (method, path template), aimed at account A's data."""
    device = next(iter(a.devices))
    steal_csv = csv_for(a.product_key, {device: 0xBAD1})
    return {
        ("GET", "/products/{productKey}"): {},
        ("GET", "/ca-certificates/{caSn}"): {},
        ("PATCH", "/ca-certificates/{caSn}"): {"json_body": {"status": "inactive"}},
        ("DELETE", "/ca-certificates/{caSn}"): {},
        ("GET", "/ca-certificates/{caSn}/association-template"): {},
        ("POST", "/ca-certificates/{caSn}/associations"): {
            "files": {"file": UploadFile("steal.csv", steal_csv)}
        },
        ("GET", "/ca-certificates/{caSn}/associations"): {},
        ("DELETE", "/ca-certificates/{caSn}/associations/{certSn}"): {},
        ("GET", "/devices/{productKey}/{deviceName}"): {},
        ("PATCH", "/devices/{productKey}/{deviceName}"): {"json_body": {"status": "disabled"}},
        ("POST", "/devices/{productKey}/{deviceName}/messages"): {
            "json_body": {"topic": f"/{a.product_key}/{device}/user/x", "payload": "p", "qos": 0}
        },
        ("GET", "/devices/{productKey}/{deviceName}/messages"): {},
        ("GET", "/devices/{productKey}/{deviceName}/messages/stream"): {},
        # the renewal desk: B can neither see A's queue nor answer a request of A's CA
        ("GET", "/ca-certificates/{caSn}/renewals"): {},
        ("POST", "/ca-certificates/{caSn}/renewals/{requestId}/certificate"): {
            "json_body": {"certificate": other_ca.cert_pem().decode()}
        },
        ("POST", "/ca-certificates/{caSn}/renewals/{requestId}/refusal"): {
            "json_body": {"reason": "refused by another account"}
        },
    }


def test_every_operation_cross_account(server: RunningServer) -> None:
    a = make_tenant(server.http_url, server.token)
    b_token = create_account(server, "intruder")
    b = PlatformClient(server.http_url, b_token)
    before = _strip_volatile(_snapshot(a))
    spec = json.load(urllib.request.urlopen(f"{server.http_url}/openapi.json"))
    values = {
        "productKey": a.product_key,
        "caSn": a.ca_sn,
        "deviceName": next(iter(a.devices)),
        "certSn": format(next(iter(a.devices.values())), "x"),
        "requestId": "r-0001",
    }
    attempts = _attempts(a, pki.create_ca("Other"))
    tried = 0
    with_params = 0
    for full_path, ops in spec["paths"].items():
        path = full_path.removeprefix("/api/v1")
        for method in ops:
            method = method.upper()
            tried += 1
            if "{" not in path:
                continue  # checked below: they only ever see or change B's own account
            with_params += 1
            kwargs = attempts.get((method, path))
            assert kwargs is not None, f"new operation {method} {path}: add it to this test"
            concrete = path.format(**values)
            with pytest.raises(PlatformAPIError) as caught:
                b.request(method, concrete, **kwargs)
            assert caught.value.status == 404, (method, concrete, caught.value)
    # operations without identifiers act on the caller's own account only
    assert a.product_key not in {p["productKey"] for p in b.request("GET", "/products")}
    assert b.ca_certificates() == []
    assert b.registration_code() != before["code"]
    b.request("POST", "/registration-code/rotate")
    with pytest.raises(PlatformAPIError) as dup:  # B cannot take over A's CA certificate
        b.register_ca_with_proof("stolen_ca", a.ca)
    assert dup.value.status == 409
    after = _strip_volatile(_snapshot(a))
    assert after == before
    record(
        "isolation-cross-account",
        threat="one account reading or changing another's products, CAs, devices, "
        "associations or messages",
        tried=f"every OpenAPI operation ({tried}) with a second account's token; the "
        f"{with_params} with identifiers aimed at the first account's data",
        count=tried + 2,
        result="404 for every foreign identifier; lists/registration code show only the "
        "caller's own; re-registering the other's CA -> 409; first account unchanged",
    )


def test_tokens_are_stored_hashed(server: RunningServer) -> None:
    token_b = create_account(server, "hashed-check")
    PlatformClient(server.http_url, token_b).registration_code()  # the token works
    files = [p for p in server.data_dir.rglob("*") if p.is_file() and p.name != "admin-token"]
    sqlite_files = [p for p in files if ".sqlite" in p.name or p.suffix in (".db", "-wal")]
    assert sqlite_files, files
    for token in (server.token, token_b):
        for path in files:
            assert token.encode() not in path.read_bytes(), f"token text found in {path}"
        assert accounts.hash_token(token).encode() in b"".join(p.read_bytes() for p in files)
    assert oct(server.data_dir.joinpath("admin-token").stat().st_mode & 0o777) == "0o600"
    record(
        "tokens-hashed",
        threat="API tokens readable from the data directory",
        tried="searched every file of the data dir (SQLite, WAL) for 2 tokens' text",
        count=len(files) * 2,
        result="token text absent; only its SHA-256 is stored",
    )


def test_token_comparison_is_constant_time() -> None:
    """Source check: the stored hash is compared with hmac.compare_digest, and the API uses it."""
    tree = ast.parse(inspect.getsource(accounts.token_matches))
    calls = {ast.unparse(n.func) for n in ast.walk(tree) if isinstance(n, ast.Call)}
    assert "hmac.compare_digest" in calls
    source = inspect.getsource(registry_service.Registry.account_for_token)
    assert "token_matches(" in source
    assert "==" not in source.split("token_matches(")[0].split("found = ")[-1]
    record(
        "tokens-constant-time",
        threat="token guessing by response timing",
        tried="source check of the token comparison",
        count=1,
        result="hmac.compare_digest on the SHA-256 of the token",
    )


def test_wrong_tokens_are_refused(server: RunningServer) -> None:
    token = server.token
    near = [
        token[:-1] + ("A" if token[-1] != "A" else "B"),
        token[:-1],
        token + "x",
        token.upper(),
        "",
        "Bearer",
        accounts.hash_token(token),
    ]
    for candidate in near:
        with pytest.raises(PlatformAPIError) as caught:
            PlatformClient(server.http_url, candidate).registration_code()
        assert caught.value.status == 401, candidate
    record(
        "tokens-near-miss",
        threat="near-miss or hash-as-token API tokens",
        tried="one changed char, truncated, extended, upper-cased, empty, the stored hash",
        count=len(near),
        result="401 for each",
    )


@pytest.mark.timeout(180)
def test_no_secret_in_debug_logs(tmp_path: Path) -> None:
    """A full flow at debug level: no token, registration code or key material in the log."""
    with running_server(tmp_path / "data", env={"IOTX509_LOG_LEVEL": "10"}) as srv:
        tenant = make_tenant(srv.http_url, srv.token, ca=None, devices={})
        device = pki.issue_device_certificate(tenant.ca, "dev-0001", serial=0x5151)
        tenant.client.associate(
            tenant.ca_sn, UploadFile("d.csv", csv_for(tenant.product_key, {"dev-0001": 0x5151}))
        )
        try:  # a refused upload with the registration code in it
            tenant.client.register_ca(
                "bad", UploadFile("x.pem", b"junk"), UploadFile("y.pem", b"j")
            )
        except PlatformAPIError:
            pass
        try:
            PlatformClient(srv.http_url, srv.token + "x").registration_code()
        except PlatformAPIError:
            pass
        ctx = device_context(srv.server_ca, device)
        sock, decoder, packets = mqtt_connect_retry(srv.mqtt_host, srv.mqtt_port, ctx)
        assert isinstance(packets[0], codec.Connack) and packets[0].return_code == 0
        assert ping_ok(sock, decoder)
        tenant.client.send_message(
            tenant.product_key, "dev-0001", f"/{tenant.product_key}/dev-0001/user/get", "hello"
        )
        sock.close()
        log = srv.log()
    assert log.strip(), "debug logging produced nothing: the check would be empty"
    assert srv.token not in log
    assert "PRIVATE KEY" not in log
    key_der = device.key_pem()
    body = b"".join(key_der.splitlines()[1:-1]).decode()
    for i in range(0, len(body) - 40, 40):
        assert body[i : i + 40] not in log
    ca_key_body = b"".join(tenant.ca.key_pem().splitlines()[1:-1]).decode()
    assert ca_key_body[100:140] not in log
    record(
        "logs-no-secrets",
        threat="tokens or private keys written to the server log",
        tried="full flow at DEBUG (HTTP + MQTT): account, "
        "product, CA, CSV, refused upload, bad token, device connect, message",
        count=len(log.splitlines()),
        result="no token, no 'PRIVATE KEY', no 40-char slice of any key in any log line",
    )
