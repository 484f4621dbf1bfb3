"""Accounts, tokens, registration codes and products: each rule fed the wrong thing."""

from __future__ import annotations

import re

import pytest

from server_stub.errors import AuthenticationError, ConflictError, InvalidFieldError, NotFoundError
from server_stub.registry import Registry
from server_stub.registry.products import eligibility_problems
from server_stub.store.base import AccountRecord


def test_token_identifies_its_account_and_nothing_else(registry: Registry) -> None:
    a, token_a = registry.create_account("a")
    b, token_b = registry.create_account("b")
    assert registry.account_for_token(token_a) == a
    assert registry.account_for_token(token_b) == b
    with pytest.raises(AuthenticationError, match="not valid for any account"):
        registry.account_for_token(token_a + "x")
    with pytest.raises(AuthenticationError, match="missing API token"):
        registry.account_for_token("")


def test_rotated_token_replaces_the_old_one(registry: Registry) -> None:
    _a, old = registry.create_account("a")
    new = registry.rotate_token("a")
    assert registry.account_for_token(new).name == "a"
    with pytest.raises(AuthenticationError):
        registry.account_for_token(old)


@pytest.mark.parametrize("name", ["", "has space", "x" * 65, "semi;colon"])
def test_bad_account_names_are_refused(registry: Registry, name: str) -> None:
    with pytest.raises(InvalidFieldError, match="account name"):
        registry.create_account(name)


def test_duplicate_account_is_refused(registry: Registry) -> None:
    registry.create_account("a")
    with pytest.raises(ConflictError, match="already exists"):
        registry.create_account("a")


def test_registration_code_is_64_hex_stable_and_per_account(registry: Registry) -> None:
    a, _ = registry.create_account("a")
    b, _ = registry.create_account("b")
    code = registry.registration_code(a)
    assert re.fullmatch(r"[0-9a-f]{64}", code)
    assert registry.registration_code(a) == code
    assert registry.registration_code(b) != code
    rotated = registry.rotate_registration_code(a)
    assert rotated != code and registry.registration_code(a) == rotated


def test_product_key_is_11_letters_and_digits(registry: Registry, account: AccountRecord) -> None:
    keys = {registry.create_product(account, name=f"p{i}").product_key for i in range(20)}
    assert len(keys) == 20
    assert all(re.fullmatch(r"[A-Za-z0-9]{11}", k) for k in keys)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": "  "}, "product name must not be empty"),
        ({"name": "x" * 65}, "at most 64"),
        ({"name": "a\x01b"}, "control characters"),
        ({"name": "p", "auth_type": "psk"}, "authType 'psk' is not one of x509, secret"),
        ({"name": "p", "network": "nbiot"}, "network 'nbiot' is not one of mqtt, lorawan"),
        (
            {"name": "p", "auth_type": "secret", "private_ca": True},
            "privateCa=true needs authType=x509",
        ),
    ],
)
def test_bad_product_settings_are_refused(
    registry: Registry, account: AccountRecord, kwargs: dict[str, object], message: str
) -> None:
    with pytest.raises(InvalidFieldError, match=re.escape(message)):
        registry.create_product(account, **kwargs)  # type: ignore[arg-type]


def test_eligibility_names_every_wrong_setting(registry: Registry, account: AccountRecord) -> None:
    ok = registry.create_product(account, name="ok")
    assert eligibility_problems(ok) == []
    secret = registry.create_product(account, name="s", auth_type="secret", private_ca=False)
    assert eligibility_problems(secret) == [
        "authType is secret (needs x509)",
        "privateCa is false (needs true)",
    ]
    lora = registry.create_product(account, name="l", network="lorawan")
    assert eligibility_problems(lora) == ["network is lorawan (needs mqtt)"]
    public = registry.create_product(account, name="pub", private_ca=False)
    assert eligibility_problems(public) == ["privateCa is false (needs true)"]


def test_products_are_invisible_to_other_accounts(
    registry: Registry, account: AccountRecord
) -> None:
    p = registry.create_product(account, name="mine")
    other, _ = registry.create_account("other")
    assert registry.product(account, p.product_key) == p
    with pytest.raises(NotFoundError, match="no product"):
        registry.product(other, p.product_key)
    assert registry.list_products(other) == []
