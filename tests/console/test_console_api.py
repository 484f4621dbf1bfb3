"""The API the console adds, on the real server process: the device list filtered and paged by
the registry's query at 10,000 devices, the overview, the live-stream bound, and another
account's view (nothing)."""

from __future__ import annotations

import http.client
import json
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from firmware_helpers.pki import create_ca
from firmware_helpers.platform_client import PlatformAPIError, PlatformClient, UploadFile
from server_stub.api.console_routes import MAX_STREAMS_PER_ACCOUNT
from server_stub.launcher import RunningServer
from tests.common import association_csv, create_account

DEVICES = 10_000


@dataclass
class Fleet:
    server: RunningServer
    api: PlatformClient
    product_key: str
    ca_sn: str


@pytest.fixture(scope="module")
def fleet(console_server: RunningServer) -> Iterator[Fleet]:
    api = PlatformClient(console_server.http_url, console_server.token)
    product_key = str(api.create_product("fleet")["productKey"])
    ca_sn = api.register_ca_with_proof("fleet_ca", create_ca("Fleet CA")).ca_sn
    csv = association_csv((product_key, f"dev-{i:05d}", f"{0x10000 + i:X}") for i in range(DEVICES))
    assert api.associate(ca_sn, UploadFile("fleet.csv", csv, "text/csv")) == DEVICES
    yield Fleet(console_server, api, product_key, ca_sn)


def devices(fleet: Fleet, **params: Any) -> dict[str, Any]:
    query = urllib.parse.urlencode({k: v for k, v in params.items() if v is not None})
    result: dict[str, Any] = fleet.api.request("GET", f"/devices?{query}")
    return result


def refused(fleet: Fleet, path: str) -> PlatformAPIError:
    with pytest.raises(PlatformAPIError) as info:
        fleet.api.request("GET", path)
    return info.value


def test_pages_cover_every_device_once_in_creation_order(fleet: Fleet) -> None:
    first = devices(fleet, pageSize=100)
    assert first["total"] == DEVICES
    assert [d["deviceName"] for d in first["items"]] == [f"dev-{i:05d}" for i in range(100)]
    item = first["items"][0]
    assert item["productKey"] == fleet.product_key
    assert item["certSn"] == "10000" and item["caSn"] == fleet.ca_sn
    assert item["caName"] == "fleet_ca"
    assert item["state"] == "Offline" and item["lastConnectedAt"] is None
    assert item["expirySource"] == "ca"  # never connected: the issuing CA's expiry is shown
    last = devices(fleet, pageSize=100, page=100)
    assert [d["deviceName"] for d in last["items"]][-1] == f"dev-{DEVICES - 1:05d}"
    assert devices(fleet, pageSize=100, page=101)["items"] == []


def test_filter_matches_name_product_or_sn_in_the_query(fleet: Fleet) -> None:
    by_name = devices(fleet, q="dev-0999", pageSize=100)
    assert by_name["total"] == 10
    assert {d["deviceName"] for d in by_name["items"]} == {f"dev-0999{i}" for i in range(10)}
    by_sn = devices(fleet, q=f"{0x10000 + 4242:x}")
    assert [d["deviceName"] for d in by_sn["items"]] == ["dev-04242"]
    assert devices(fleet, q=fleet.product_key)["total"] == DEVICES
    # LIKE wildcards in the filter are literal characters, not patterns
    assert devices(fleet, q="_")["total"] == 0
    assert devices(fleet, q="%")["total"] == 0
    assert devices(fleet, productKey="NoSuchProduct")["total"] == 0


def test_state_filter_disabled_offline_online(fleet: Fleet) -> None:
    for name in ("dev-00007", "dev-05000", "dev-09999"):
        fleet.api.request(
            "PATCH", f"/devices/{fleet.product_key}/{name}", json_body={"status": "disabled"}
        )
    disabled = devices(fleet, state="disabled")
    assert [d["deviceName"] for d in disabled["items"]] == ["dev-00007", "dev-05000", "dev-09999"]
    assert {d["state"] for d in disabled["items"]} == {"Disabled"}
    assert devices(fleet, state="offline")["total"] == DEVICES - 3
    assert devices(fleet, state="online")["total"] == 0
    assert devices(fleet, state="disabled", q="dev-05")["total"] == 1


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("pageSize=101", "pageSize 101 must be 1..100"),
        ("pageSize=0", "pageSize 0 must be 1..100"),
        ("page=0", "page 0 must be 1 or more"),
        ("state=sleeping", "state 'sleeping' is not one of online, offline, disabled"),
        ("q=" + "x" * 65, "the filter is longer than 64 characters"),
    ],
)
def test_bad_list_parameters_are_refused_with_a_reason(
    fleet: Fleet, query: str, message: str
) -> None:
    error = refused(fleet, f"/devices?{query}")
    assert (error.status, error.args[0]) == (400, message)


def test_overview_counts_per_second(fleet: Fleet) -> None:
    overview = fleet.api.request("GET", "/overview?seconds=60")
    assert overview["online"] == 0 and len(overview["samples"]) == 60
    assert all(s["connections"] >= 0 and s["online"] >= 0 for s in overview["samples"])
    error = refused(fleet, "/overview?seconds=601")
    assert (error.status, error.args[0]) == (400, "seconds 601 must be 1..600")


def test_another_account_sees_none_of_it(fleet: Fleet) -> None:
    other = PlatformClient(fleet.server.http_url, create_account(fleet.server, "console_other"))
    assert other.request("GET", "/devices")["total"] == 0
    assert other.request("GET", f"/devices?q={fleet.product_key}")["total"] == 0
    with pytest.raises(PlatformAPIError) as info:
        other.request("GET", f"/devices/{fleet.product_key}/dev-00001/messages/stream")
    assert info.value.status == 404


def _open_stream(fleet: Fleet, device: str) -> tuple[http.client.HTTPConnection, Any]:
    url = urllib.parse.urlsplit(fleet.server.http_url)
    conn = http.client.HTTPConnection(url.hostname or "127.0.0.1", url.port, timeout=10)
    conn.request(
        "GET",
        f"/api/v1/devices/{fleet.product_key}/{device}/messages/stream",
        headers={"Authorization": f"Bearer {fleet.server.token}"},
    )
    return conn, conn.getresponse()


def test_live_streams_are_bounded_per_account(fleet: Fleet) -> None:
    opened = []
    try:
        for i in range(MAX_STREAMS_PER_ACCOUNT):
            conn, response = _open_stream(fleet, f"dev-{i:05d}")
            opened.append(conn)
            assert response.status == 200
            assert response.getheader("Content-Type").startswith("text/event-stream")
            assert response.readline() == b"event: ready\n"  # the listener is in place
        conn, response = _open_stream(fleet, "dev-00100")
        opened.append(conn)
        assert response.status == 429
        body = json.loads(response.read())
        assert body["error"]["code"] == "too_many_streams"
        assert body["error"]["message"] == (
            f"this account already has {MAX_STREAMS_PER_ACCOUNT} live message streams open; "
            "close one"
        )
    finally:
        for conn in opened:
            conn.close()


def test_the_token_is_required_for_a_stream(fleet: Fleet) -> None:
    url = urllib.parse.urlsplit(fleet.server.http_url)
    conn = http.client.HTTPConnection(url.hostname or "127.0.0.1", url.port, timeout=10)
    try:
        conn.request("GET", f"/api/v1/devices/{fleet.product_key}/dev-00001/messages/stream")
        response = conn.getresponse()
        assert response.status == 401
    finally:
        conn.close()
