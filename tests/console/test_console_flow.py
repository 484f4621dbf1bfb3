"""The web console in a real browser (Debian's headless Chromium), against the real server process,
with a CA made by the real ``openssl`` commands and a real SDK device.

The whole flow of the platform's documentation goes through the pages; every wait is on page
state (Playwright's expect) or on an SDK event, never a sleep.
"""

from __future__ import annotations

import json
import queue
import secrets
import threading
import urllib.request
from pathlib import Path
from typing import Any

from device_sdk import ConnectionState, Credentials, DeviceClient, Message
from device_sdk.naming import DeviceFileName
from device_sdk.serials import normalize_sn
from server_stub.launcher import RunningServer
from tests.console.conftest import playwright_sync, screenshot_dir, sign_in
from tests.server.conftest import (
    openssl,
    openssl_ca,
    openssl_device_cert,
    openssl_verification_cert,
)

expect = playwright_sync.expect

XSS = '<script>window.__injected = 1</script><img src=x onerror="window.__injected = 2">'


def shot(page: Any, name: str) -> None:
    page.screenshot(path=str(screenshot_dir() / f"{name}.png"), full_page=True)


def nav(page: Any, name: str) -> None:
    page.locator("#nav").get_by_role("link", name=name, exact=True).click()


def api_get(server: RunningServer, path: str) -> Any:
    request = urllib.request.Request(
        server.http_url + "/api/v1" + path, headers={"Authorization": f"Bearer {server.token}"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


class DeviceEvents:
    """The SDK's connection states as events a test can wait for."""

    def __init__(self) -> None:
        self.online = threading.Event()
        self.offline = threading.Event()

    def __call__(self, state: ConnectionState, error: object) -> None:
        if state is ConnectionState.ONLINE:
            self.offline.clear()
            self.online.set()
        elif state in (ConnectionState.OFFLINE, ConnectionState.STOPPED):
            self.online.clear()
            self.offline.set()


def test_the_documented_flow_through_the_console(
    page: Any, console_server: RunningServer, tmp_path: Path
) -> None:
    server = console_server
    # --- sign in: a wrong token is refused with the server's reason, the right one works
    page.goto(server.http_url + "/console/")
    expect(page.get_by_label("API token")).to_be_visible()
    expect(page.locator("#nav")).to_be_hidden()  # nothing but the sign-in form before it
    shot(page, "signin")
    page.get_by_label("API token").fill("not-a-token")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("alert")).to_have_text("the API token is not valid for any account")
    sign_in(page, server)
    assert server.token not in page.url
    assert page.evaluate("Object.keys(localStorage).length") == 0

    # --- Products: create one (X.509, private CA)
    nav(page, "Products")
    page.get_by_label("Product Name").fill("console_demo")
    page.get_by_role("button", name="Create").click()
    row = page.locator("#products-table tbody tr", has_text="console_demo")
    expect(row).to_have_count(1)
    product_key = row.locator("td").first.inner_text().strip()
    expect(row).to_contain_text("X.509 certificate")
    shot(page, "products")

    # --- CA Certificates: register a CA made with openssl, proof of possession made with openssl
    ca = openssl_ca(tmp_path / "ca", cn="Console Demo CA")
    nav(page, "CA Certificates")
    page.get_by_role("button", name="Register CA Certificate").click()
    dialog = page.locator("#register-dialog")
    expect(dialog).to_be_visible()
    code_box = dialog.locator("#registration-code")
    expect(code_box).to_have_text(api_get(server, "/registration-code")["registrationCode"])
    code = code_box.inner_text().strip()
    verification = openssl_verification_cert(tmp_path / "verification", ca, code)
    dialog.get_by_label("CA Certificate Name").fill("console_ca")
    dialog.get_by_label("CA Certificate", exact=True).set_input_files(str(ca.cert))
    dialog.get_by_label("Validation Certificate").set_input_files(str(verification))
    shot(page, "register-ca")
    dialog.get_by_role("button", name="OK").click()
    expect(dialog).to_be_hidden()
    ca_row = page.locator("#cas-table tbody tr", has_text="console_ca")
    expect(ca_row).to_contain_text("CN=Console Demo CA")
    expect(ca_row).to_contain_text("active")
    shot(page, "cas")
    ca_sn = api_get(server, "/ca-certificates")[0]["caSn"]

    # --- CA details: template download, association upload
    ca_row.get_by_role("link", name="View").click()
    expect(page.get_by_role("heading", name="CA Certificate Details: console_ca")).to_be_visible()
    expect(page.locator("dl.details")).to_contain_text(ca_sn)
    with page.expect_download() as download_info:
        page.get_by_role("button", name="Download .csv Template").click()
    template = Path(download_info.value.path()).read_text()
    assert template.splitlines()[0] == "ProductKey,DeviceName,CertSN"
    device_name = "sensor-01"
    serial = secrets.token_hex(8).upper().lstrip("0") or "1"
    device_dir = tmp_path / "device"
    cert = openssl_device_cert(device_dir, ca, device_name, serial)
    files = DeviceFileName(product_key, device_name, ca_sn)
    cert_path, key_path = device_dir / files.cert_name, device_dir / files.key_name
    cert.rename(cert_path)
    openssl(
        "rsa", "-in", f"{device_name}.key", "-traditional", "-out", files.key_name, cwd=device_dir
    )
    key_path.chmod(0o600)
    csv_path = tmp_path / "associations.csv"
    csv_path.write_text(template.rstrip("\n") + f"\n{product_key},{device_name},{serial}\n")
    page.get_by_label("Association CSV").set_input_files(str(csv_path))
    page.get_by_role("button", name="Upload").click()
    expect(page.locator("#upload-count")).to_have_text("1 device certificates associated.")
    expect(page.locator("#associations-table")).to_contain_text(device_name)
    shot(page, "ca-details")

    # --- a real SDK device connects: the Devices page shows it Online
    received: queue.Queue[Message] = queue.Queue()
    events = DeviceEvents()
    client = DeviceClient(
        server.mqtt_host,
        server.mqtt_port or 0,
        Credentials.from_files(cert_path, key_path),
        server_ca=server.server_ca,
        reconnect_base=0.1,
        reconnect_cap=0.5,
        on_connection_state=events,
    )
    client.subscribe("user/get", received.put, qos=1)
    client.start()
    try:
        assert events.online.wait(30), f"the device did not connect: {client.last_error}"
        nav(page, "Overview")
        expect(page.locator("#online-count")).to_have_text("1")
        expect(page.locator("#overview-chart rect.bar")).not_to_have_count(0)
        shot(page, "overview")
        nav(page, "Devices")
        device_row = page.locator(f'#devices-table tr[data-device="{product_key}/{device_name}"]')
        expect(device_row.locator(".state")).to_have_text("Online")
        expect(device_row).to_contain_text(normalize_sn(serial))
        expect(device_row).to_contain_text(f"console_ca ({ca_sn})")
        expect(device_row.locator("td").nth(6)).not_to_have_text("—")  # last connection
        shot(page, "devices")

        # --- device page: a message (with markup in it) arrives live and is shown as text
        device_row.get_by_role("link", name=device_name).click()
        expect(page.locator("#live-status")).to_have_text("Live")
        assert client.publish("user/update", XSS, qos=1).wait(10)
        message = page.locator("#messages li", has_text="window.__injected")
        expect(message.locator("pre")).to_have_text(XSS)
        expect(message).to_contain_text(f"/{product_key}/{device_name}/user/update")
        assert page.evaluate("window.__injected") is None
        assert page.locator("#messages script, #messages img").count() == 0

        # --- a topic outside the device's space: the server's refusal, shown as written
        outside = f"/{product_key}/another-device/user/get"
        page.get_by_label("Topic").fill(outside)
        page.get_by_label("Payload").fill("not for you")
        page.get_by_role("button", name="Send").click()
        expect(page.locator("#send-result")).to_contain_text(
            f"topic '{outside}' is outside device {product_key}/{device_name}'s topic space"
        )
        page.get_by_label("Topic").fill(f"/{product_key}/{device_name}/user/get")

        # --- "Send message" from the page reaches the device
        page.get_by_label("Payload").fill('{"cmd": "reboot"}')
        page.get_by_label("QoS").select_option("1")
        page.get_by_role("button", name="Send").click()
        expect(page.locator("#send-result")).to_have_text("Sent to the device.")
        got = received.get(timeout=10)  # the first message it gets: the refused one never came
        assert (got.topic, got.payload) == (
            f"/{product_key}/{device_name}/user/get",
            b'{"cmd": "reboot"}',
        )
        shot(page, "device")

        # --- disabling the device from the page takes it offline
        page.locator("#device-toggle").click()
        expect(page.locator("#device-state-value .state")).to_have_text("Disabled")
        assert events.offline.wait(10), "the disabled device stayed connected"
        nav(page, "Devices")
        expect(device_row.locator(".state")).to_have_text("Disabled")
    finally:
        client.disconnect()

    # --- overview: the device has left; its connection is still counted
    nav(page, "Overview")
    expect(page.locator("#online-count")).to_have_text("0")
    assert int(page.locator("#connections-count").inner_text()) >= 1
    assert page.console_errors == []
