"""Device SDK for MQTT devices that authenticate with private-CA X.509 certificates."""

from device_sdk.errors import (
    CertificateRejectedError,
    ClockError,
    ConnectionFailedError,
    ConnectTimeoutError,
    CredentialError,
    DeviceSDKError,
    IdentityTimeoutError,
    NotAuthorizedError,
    ServerUntrustedError,
)
from device_sdk.identity import Identity

__all__ = [
    "CertificateRejectedError",
    "ClockError",
    "ConnectTimeoutError",
    "ConnectionFailedError",
    "CredentialError",
    "DeviceSDKError",
    "Identity",
    "IdentityTimeoutError",
    "NotAuthorizedError",
    "ServerUntrustedError",
]
