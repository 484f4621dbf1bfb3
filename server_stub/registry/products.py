"""Product settings, and the one rule that decides whether a product takes private-CA devices."""

from __future__ import annotations

import secrets
import string
from typing import Protocol

from server_stub.errors import InvalidFieldError

AUTH_TYPES = ("x509", "secret")
NETWORKS = ("mqtt", "lorawan")
PRODUCT_KEY_LENGTH = 11
PRODUCT_NAME_MAX = 64
_ALPHABET = string.ascii_letters + string.digits


def new_product_key() -> str:
    return "".join(secrets.choice(_ALPHABET) for _ in range(PRODUCT_KEY_LENGTH))


def validate_product_settings(name: str, auth_type: str, private_ca: bool, network: str) -> str:
    """Check a new product's settings; return the cleaned name."""
    clean = name.strip()
    if not clean:
        raise InvalidFieldError("product name must not be empty")
    if len(clean) > PRODUCT_NAME_MAX:
        raise InvalidFieldError(
            f"product name is {len(clean)} characters long; at most {PRODUCT_NAME_MAX} are allowed"
        )
    if any(ch < " " or ch == "\x7f" for ch in clean):
        raise InvalidFieldError("product name must not contain control characters")
    if auth_type not in AUTH_TYPES:
        raise InvalidFieldError(f"authType {auth_type!r} is not one of {', '.join(AUTH_TYPES)}")
    if network not in NETWORKS:
        raise InvalidFieldError(f"network {network!r} is not one of {', '.join(NETWORKS)}")
    if private_ca and auth_type != "x509":
        raise InvalidFieldError(f"privateCa=true needs authType=x509 (got authType={auth_type})")
    return clean


class ProductSettings(Protocol):
    """The three settings the rule reads: a :class:`~server_stub.store.base.ProductRecord`, or
    an :class:`~server_stub.store.base.AuthRow` (the product's settings joined at CONNECT)."""

    @property
    def auth_type(self) -> str: ...

    @property
    def private_ca(self) -> bool: ...

    @property
    def network(self) -> str: ...


def eligibility_problems(product: ProductSettings) -> list[str]:
    """Every setting that keeps ``product`` from accepting private-CA devices (empty = fine).

    The one home of the rule: association (a whole CSV refused) and the MQTT endpoint
    (:func:`takes_private_ca_devices` at CONNECT and on every re-check) both call it.
    """
    problems = []
    if product.auth_type != "x509":
        problems.append(f"authType is {product.auth_type} (needs x509)")
    if not product.private_ca:
        problems.append("privateCa is false (needs true)")
    if product.network != "mqtt":
        problems.append(f"network is {product.network} (needs mqtt)")
    return problems


def takes_private_ca_devices(product: ProductSettings) -> bool:
    """Whether devices of ``product`` may authenticate with a private-CA X.509 certificate over
    MQTT (:func:`eligibility_problems` finds nothing)."""
    return not eligibility_problems(product)
