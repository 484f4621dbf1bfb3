"""Device SDK for MQTT devices that authenticate with private-CA X.509 certificates.

    from device_sdk import Credentials, DeviceClient
    creds = Credentials.from_files("a1B2c3D4e5F_sensor01_1a2b.cer", "a1B2c3D4e5F_sensor01_1a2b.key")
    client = DeviceClient("127.0.0.1", 8883, creds, server_ca="server-ca.pem",
                          identity_store="state/identity.json")
    identity = client.connect(timeout=10)
    client.publish("user/update", b"{...}", qos=1)

The client, credentials and their dependencies (paho-mqtt, cryptography) load on first use, so
``import device_sdk.cli_support`` (every ``iotx509`` command) stays cheap.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from device_sdk.errors import (
    CertificateFormatError,
    CertificateRejectedError,
    ClockError,
    ConnectionFailedError,
    ConnectionRefusedByServerError,
    ConnectTimeoutError,
    CredentialError,
    DeviceSDKError,
    IdentityStoreError,
    IdentityTimeoutError,
    InsecureKeyFileWarning,
    Iotx509Error,
    KeyFormatError,
    KeyMismatchError,
    KeyPasswordError,
    NotAuthorizedError,
    NotConnectedError,
    OfflineQueueFullError,
    RenewalError,
    RenewalFailedError,
    RenewalRefusedError,
    ServerUntrustedError,
    SessionTakenOverError,
    UnsupportedKeyTypeError,
)
from device_sdk.identity import Identity

if TYPE_CHECKING:
    from device_sdk.backoff import Backoff, BackoffPolicy
    from device_sdk.client import ConnectionState, ConnectTiming, Delivery, DeviceClient, Message
    from device_sdk.credentials import Credentials
    from device_sdk.offline_queue import DropPolicy
    from device_sdk.renewal import RenewalPolicy
    from device_sdk.renewal_manager import Renewal

_LAZY = {
    "Backoff": "device_sdk.backoff",
    "BackoffPolicy": "device_sdk.backoff",
    "ConnectionState": "device_sdk.client",
    "ConnectTiming": "device_sdk.client",
    "Delivery": "device_sdk.client",
    "DeviceClient": "device_sdk.client",
    "Message": "device_sdk.client",
    "Credentials": "device_sdk.credentials",
    "DropPolicy": "device_sdk.offline_queue",
    "Renewal": "device_sdk.renewal_manager",
    "RenewalPolicy": "device_sdk.renewal",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'device_sdk' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


__all__ = [
    "Backoff",
    "BackoffPolicy",
    "CertificateFormatError",
    "CertificateRejectedError",
    "ClockError",
    "ConnectTimeoutError",
    "ConnectTiming",
    "ConnectionFailedError",
    "ConnectionRefusedByServerError",
    "ConnectionState",
    "CredentialError",
    "Credentials",
    "Delivery",
    "DeviceClient",
    "DeviceSDKError",
    "DropPolicy",
    "Identity",
    "IdentityStoreError",
    "IdentityTimeoutError",
    "InsecureKeyFileWarning",
    "Iotx509Error",
    "KeyFormatError",
    "KeyMismatchError",
    "KeyPasswordError",
    "Message",
    "NotAuthorizedError",
    "NotConnectedError",
    "OfflineQueueFullError",
    "Renewal",
    "RenewalError",
    "RenewalFailedError",
    "RenewalPolicy",
    "RenewalRefusedError",
    "ServerUntrustedError",
    "SessionTakenOverError",
    "UnsupportedKeyTypeError",
]
