"""Bad input through the console's pages: each shows the server's reason as written and changes
nothing; the console's pages carry a strict Content-Security-Policy; text stays text.

The expected reason is what the same API request returns (asked first, refused, so nothing
changes): the page must show the server's words, not its own.
"""

from __future__ import annotations

import re
import shutil
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from firmware_helpers.platform_client import PlatformAPIError, PlatformClient, UploadFile
from server_stub.launcher import RunningServer
from tests.console.conftest import playwright_sync, sign_in
from tests.server.conftest import OpensslCa, openssl_ca, openssl_verification_cert

expect = playwright_sync.expect


@dataclass
class Setup:
    server: RunningServer
    api: PlatformClient
    product_key: str
    ca: OpensslCa
    ca_sn: str
    workdir: Path


@pytest.fixture(scope="module")
def setup(
    console_server: RunningServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Setup]:
    workdir = tmp_path_factory.mktemp("console-bad-input")
    api = PlatformClient(console_server.http_url, console_server.token)
    product_key = str(api.create_product("bad_input_product")["productKey"])
    ca = openssl_ca(workdir / "ca", cn="Bad Input CA")
    verification = openssl_verification_cert(workdir / "ver", ca, api.registration_code())
    ca_sn = str(
        api.register_ca(
            "bad_input_ca",
            UploadFile("yourCA.cer", ca.cert.read_bytes()),
            UploadFile("verificationCert.crt", verification.read_bytes()),
        )["caSn"]
    )
    yield Setup(console_server, api, product_key, ca, ca_sn, workdir)


def refusal(call: Any) -> PlatformAPIError:
    with pytest.raises(PlatformAPIError) as info:
        call()
    return info.value


def open_register_dialog(page: Any, setup: Setup) -> Any:
    sign_in(page, setup.server)
    page.locator("#nav").get_by_role("link", name="CA Certificates", exact=True).click()
    page.get_by_role("button", name="Register CA Certificate").click()
    dialog = page.locator("#register-dialog")
    expect(dialog.locator("#registration-code")).to_have_text(setup.api.registration_code())
    return dialog


def test_ca_name_rule_is_checked_as_the_user_types(page: Any, setup: Setup) -> None:
    dialog = open_register_dialog(page, setup)
    name = dialog.get_by_label("CA Certificate Name")
    ok = dialog.get_by_role("button", name="OK")
    rule = dialog.locator("#ca-name-rule")
    for bad in ("abc", "bad-name", "x" * 31, "name with space"):
        name.fill(bad)
        expect(rule).to_have_text(
            f"CA Certificate Name must be 4-30 characters of letters, digits and underscore "
            f"({len(bad)} characters now)"
        )
        expect(ok).to_be_disabled()
    name.fill("good_name_30_characters_long_x")
    expect(rule).to_have_text("4-30 characters of letters, digits and underscore")
    expect(ok).to_be_enabled()


def test_wrong_file_type_shows_the_servers_reason_and_registers_nothing(
    page: Any, setup: Setup, tmp_path: Path
) -> None:
    wrong = tmp_path / "yourCA.txt"
    shutil.copy(setup.ca.cert, wrong)
    verification = openssl_verification_cert(
        tmp_path / "ver", setup.ca, setup.api.registration_code()
    )
    before = setup.api.request("GET", "/ca-certificates")
    expected = refusal(
        lambda: setup.api.register_ca(
            "another_ca",
            UploadFile(wrong.name, wrong.read_bytes()),
            UploadFile(verification.name, verification.read_bytes()),
        )
    )
    assert "yourCA.txt" in expected.args[0]
    dialog = open_register_dialog(page, setup)
    dialog.get_by_label("CA Certificate Name").fill("another_ca")
    dialog.get_by_label("CA Certificate", exact=True).set_input_files(str(wrong))
    dialog.get_by_label("Validation Certificate").set_input_files(str(verification))
    dialog.get_by_role("button", name="OK").click()
    expect(dialog.locator("#register-error")).to_have_text(expected.args[0])
    expect(dialog).to_be_visible()
    assert setup.api.request("GET", "/ca-certificates") == before


def test_verification_certificate_with_the_wrong_code_is_refused(
    page: Any, setup: Setup, tmp_path: Path
) -> None:
    other_ca = openssl_ca(tmp_path / "other", cn="Second CA")
    wrong_code = "0" * 64
    assert wrong_code != setup.api.registration_code()
    verification = openssl_verification_cert(tmp_path / "ver", other_ca, wrong_code)
    before = setup.api.request("GET", "/ca-certificates")
    expected = refusal(
        lambda: setup.api.register_ca(
            "second_ca",
            UploadFile("yourCA.cer", other_ca.cert.read_bytes()),
            UploadFile("verificationCert.crt", verification.read_bytes()),
        )
    )
    dialog = open_register_dialog(page, setup)
    dialog.get_by_label("CA Certificate Name").fill("second_ca")
    dialog.get_by_label("CA Certificate", exact=True).set_input_files(str(other_ca.cert))
    dialog.get_by_label("Validation Certificate").set_input_files(str(verification))
    dialog.get_by_role("button", name="OK").click()
    expect(dialog.locator("#register-error")).to_have_text(expected.args[0])
    assert wrong_code in expected.args[0] or "registration code" in expected.args[0]
    assert setup.api.request("GET", "/ca-certificates") == before


def test_csv_with_bad_rows_lists_every_refused_row_and_saves_nothing(
    page: Any, setup: Setup, tmp_path: Path
) -> None:
    csv_path = tmp_path / "devices.csv"
    csv_path.write_text(
        "ProductKey,DeviceName,CertSN\n"
        f"{setup.product_key},good-device-1,0A1B2C\n"
        f"{setup.product_key},x,0A1B2D\n"
        f"{setup.product_key},good-device-3,not-hex\n"
    )
    before = setup.api.request("GET", f"/ca-certificates/{setup.ca_sn}/associations")
    expected = refusal(
        lambda: setup.api.associate(
            setup.ca_sn, UploadFile(csv_path.name, csv_path.read_bytes(), "text/csv")
        )
    )
    assert [r["row"] for r in expected.rows] == [2, 3]
    sign_in(page, setup.server)
    page.locator("#nav").get_by_role("link", name="CA Certificates", exact=True).click()
    page.locator("#cas-table tr", has_text="bad_input_ca").get_by_role("link", name="View").click()
    page.get_by_label("Association CSV").set_input_files(str(csv_path))
    page.get_by_role("button", name="Upload").click()
    expect(page.locator("#upload-result .error")).to_have_text(expected.args[0])
    refused = page.locator("#refused-rows tbody tr")
    expect(refused).to_have_count(2)
    for i, row in enumerate(expected.rows):
        expect(refused.nth(i).locator("td").nth(0)).to_have_text(str(row["row"]))
        expect(refused.nth(i).locator("td").nth(1)).to_have_text(row["message"])
    expect(page.locator("#association-count")).to_have_text(f"{len(before)} associated")
    assert setup.api.request("GET", f"/ca-certificates/{setup.ca_sn}/associations") == before


def test_a_product_name_that_breaks_the_rules_is_refused(page: Any, setup: Setup) -> None:
    before = setup.api.request("GET", "/products")
    sign_in(page, setup.server)
    for bad in ("   ", "n" * 200):
        expected = refusal(lambda bad=bad: setup.api.create_product(bad))
        page.locator("#nav").get_by_role("link", name="Products", exact=True).click()
        page.get_by_label("Product Name").fill(bad)
        page.get_by_role("button", name="Create").click()
        expect(page.get_by_role("alert")).to_have_text(expected.args[0])
    assert setup.api.request("GET", "/products") == before


def test_names_with_markup_are_shown_as_text(page: Any, setup: Setup) -> None:
    name = '<img src=x onerror="window.__injected = 1"><b>bold</b>'
    setup.api.create_product(name)
    sign_in(page, setup.server)
    page.locator("#nav").get_by_role("link", name="Products", exact=True).click()
    cell = page.locator("#products-table td", has_text="window.__injected")
    expect(cell).to_have_text(name)
    assert page.locator("#products-table img, #products-table b").count() == 0
    assert page.evaluate("window.__injected") is None


def test_console_sends_a_strict_content_security_policy(page: Any, setup: Setup) -> None:
    for path in ("/console/", "/console/app.js", "/console/app.css"):
        with urllib.request.urlopen(setup.server.http_url + path, timeout=10) as response:
            csp = response.headers["Content-Security-Policy"]
            assert "default-src 'self'" in csp and "script-src 'self'" in csp
            assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
            assert response.headers["X-Content-Type-Options"] == "nosniff"
    index = urllib.request.urlopen(setup.server.http_url + "/console/", timeout=10).read().decode()
    assert re.findall(r"<script(?![^>]*\bsrc=)", index) == []  # no inline script
    assert re.search(r"\son\w+\s*=", index) is None  # no inline event handlers
    sign_in(page, setup.server)
    # an inline script injected into the page is refused by the browser under this policy
    page.evaluate(
        "() => { const s = document.createElement('script');"
        " s.textContent = 'window.__inline = 1'; document.body.append(s); }"
    )
    assert page.evaluate("window.__inline") is None
