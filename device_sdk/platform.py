"""The platform's MQTT conventions for X.509 devices, shared by the SDK and the reference server.

- clientId: ``{id}|securemode=2,signmethod=...|`` -- any id up to 64 characters, then parameters
  between ``|``; ``securemode=2`` means TLS with a device certificate.
- username: empty on the first connection, ``DeviceName&ProductKey`` once the device knows it.
- keep-alive: 30..1200 s (300 s recommended).
- after CONNACK 0 the platform publishes ``{"productKey": .., "deviceName": ..}`` to
  :data:`IDENTITY_TOPIC`; the device does not subscribe to it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from device_sdk.errors import InvalidNameError
from device_sdk.identity import Identity

IDENTITY_TOPIC = "/ext/auth/identity/response"
SECURE_MODE_X509 = "2"
KEEPALIVE_MIN = 30
KEEPALIVE_MAX = 1200
KEEPALIVE_DEFAULT = 300
CLIENT_ID_MAX = 64
DEFAULT_MQTT_PORT = 8883


def validate_keepalive(seconds: int) -> int:
    if not KEEPALIVE_MIN <= seconds <= KEEPALIVE_MAX:
        raise ValueError(
            f"keep-alive {seconds} s is outside the platform's range "
            f"{KEEPALIVE_MIN}..{KEEPALIVE_MAX} s (300 s is recommended)"
        )
    return seconds


@dataclass(frozen=True, slots=True)
class ClientId:
    """A parsed clientId: the device-chosen id and the ``|k=v,k=v|`` parameters."""

    id: str
    params: tuple[tuple[str, str], ...] = ()

    def param(self, name: str) -> str | None:
        for key, value in self.params:
            if key == name:
                return value
        return None

    def __str__(self) -> str:
        if not self.params:
            return self.id
        return f"{self.id}|{','.join(f'{k}={v}' for k, v in self.params)}|"

    @classmethod
    def for_x509(cls, device_id: str) -> ClientId:
        if not device_id or len(device_id) > CLIENT_ID_MAX or "|" in device_id:
            raise InvalidNameError(
                f"client id {device_id!r} must be 1-{CLIENT_ID_MAX} characters without '|'"
            )
        return cls(device_id, (("securemode", SECURE_MODE_X509),))

    @classmethod
    def parse(cls, text: str) -> ClientId:
        """Parse ``id`` or ``id|k=v,k=v|``; raise :class:`InvalidNameError` when malformed."""
        if "|" not in text:
            return cls(text)
        head, _sep, rest = text.partition("|")
        if not rest.endswith("|") or rest.count("|") != 1:
            raise InvalidNameError(f"client id {text!r}: parameters must be enclosed as |k=v,...|")
        params: list[tuple[str, str]] = []
        body = rest[:-1]
        if body:
            for item in body.split(","):
                key, eq, value = item.partition("=")
                if not eq or not key:
                    raise InvalidNameError(f"client id {text!r}: parameter {item!r} is not k=v")
                params.append((key.strip(), value.strip()))
        return cls(head, tuple(params))


def device_topic_prefixes(product_key: str, device_name: str) -> tuple[str, str]:
    """The two topic spaces a device owns: ``/{pk}/{dn}/`` and ``/sys/{pk}/{dn}/``."""
    return f"/{product_key}/{device_name}/", f"/sys/{product_key}/{device_name}/"


def topic_within_prefixes(prefixes: tuple[str, str], topic: str) -> bool:
    """Whether a topic name or filter starts with one of ``prefixes`` (a literal prefix).

    Literal comparison means a wildcard can never reach into another device's space:
    ``/+/dn/...`` or ``#`` are outside every device's space. A relative topic (``user/get``)
    is outside too: only :meth:`Identity.topic` makes it absolute.
    """
    return topic.startswith(prefixes[0]) or topic.startswith(prefixes[1])


def topic_within_device_space(product_key: str, device_name: str, topic: str) -> bool:
    """THE rule of the platform's topic space: may device ``pk``/``dn`` use ``topic``?

    The device's own publishes and subscriptions, and every message the cloud sends it, must
    lie under ``/{pk}/{dn}/`` or ``/sys/{pk}/{dn}/``. The reference server's MQTT endpoint and
    its HTTP API both call this; nothing else restates it.
    """
    return topic_within_prefixes(device_topic_prefixes(product_key, device_name), topic)


def device_topic_space(product_key: str, device_name: str) -> str:
    """The rule in words, for error messages: which topics the device may use."""
    own, sys_space = device_topic_prefixes(product_key, device_name)
    return (
        f"topics under {own} or {sys_space} (absolute: relative topics like 'user/get' "
        "must be given with the device's prefix)"
    )


def format_username(identity: Identity) -> str:
    return f"{identity.device_name}&{identity.product_key}"


def parse_username(username: str) -> Identity | None:
    """``DeviceName&ProductKey`` -> Identity; empty -> None; anything else raises."""
    if not username:
        return None
    device_name, sep, product_key = username.partition("&")
    if not sep or not device_name or not product_key:
        raise InvalidNameError(f"username {username!r} is not DeviceName&ProductKey")
    return Identity(product_key=product_key, device_name=device_name)


def identity_payload(identity: Identity) -> bytes:
    return json.dumps(
        {"productKey": identity.product_key, "deviceName": identity.device_name},
        separators=(",", ":"),
    ).encode()
