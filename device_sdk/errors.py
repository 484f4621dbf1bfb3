"""The device SDK's exception tree.

One root, :class:`DeviceSDKError`; every subclass carries the context a person needs to act
(which file, which times, which server) and a message that says what to do. Third-party errors
(``ssl``, ``cryptography``, ``paho``) are mapped once, where they are caught, with
``raise ... from`` so the cause is never lost.

The certificate model in :mod:`device_sdk.certs` is shared by every part of the kit, so its
errors (``CredentialError`` and ``ClockError`` families) live here too; the server and the
firmware helpers map them into their own trees at their boundaries.
"""

from __future__ import annotations

from datetime import datetime


class DeviceSDKError(Exception):
    """Root of every error the device SDK raises."""


# --- credentials -------------------------------------------------------------------------------


class CredentialError(DeviceSDKError):
    """A certificate or key cannot be used: unreadable, wrong type, mismatched, wrong password."""

    def __init__(self, message: str, *, source: str | None = None) -> None:
        super().__init__(message)
        self.source = source


class CertificateFormatError(CredentialError):
    """The bytes are not a certificate in PEM or DER form."""


class KeyFormatError(CredentialError):
    """The bytes are not a private key in PEM (PKCS#1, PKCS#8, SEC1) or DER form."""


class KeyPasswordError(CredentialError):
    """The key is encrypted and no password, or the wrong one, was given."""


class KeyMismatchError(CredentialError):
    """The private key does not belong to the certificate."""


class UnsupportedKeyTypeError(CredentialError):
    """The platform supports only RSA device certificates and keys."""


class InvalidSerialNumberError(DeviceSDKError, ValueError):
    """A certificate serial number (SN) is not a hexadecimal number."""


class InvalidNameError(DeviceSDKError, ValueError):
    """A ProductKey, DeviceName, CA name or certificate file name breaks the platform's rules."""


# --- time --------------------------------------------------------------------------------------


class ClockError(DeviceSDKError):
    """The certificate is not valid at the time the system clock shows.

    Boards without a real-time clock boot in 1970 (or at the last time ``fake-hwclock`` saved),
    so the message names both the certificate's window and the clock's time: often it is the
    clock, not the certificate, that is wrong.
    """

    def __init__(
        self, message: str, *, now: datetime, not_before: datetime, not_after: datetime
    ) -> None:
        super().__init__(message)
        self.now = now
        self.not_before = not_before
        self.not_after = not_after


# --- connecting --------------------------------------------------------------------------------


class ConnectionFailedError(DeviceSDKError):
    """The device could not reach or talk to the server (network, refused, reset)."""

    def __init__(self, message: str, *, host: str | None = None, port: int | None = None) -> None:
        super().__init__(message)
        self.host = host
        self.port = port


class ServerUntrustedError(ConnectionFailedError):
    """The server's certificate failed verification against the configured ``server_ca``."""


class CertificateRejectedError(ConnectionFailedError):
    """The server refused the client certificate during the TLS handshake."""


class NotAuthorizedError(ConnectionFailedError):
    """The server answered CONNACK 5 (not authorised)."""


class ConnectionRefusedByServerError(ConnectionFailedError):
    """The server answered CONNACK with another non-zero code."""

    def __init__(self, message: str, *, code: int, host: str | None = None,
                 port: int | None = None) -> None:
        super().__init__(message, host=host, port=port)
        self.code = code


class ConnectTimeoutError(ConnectionFailedError):
    """No CONNACK arrived in time."""


class IdentityTimeoutError(DeviceSDKError):
    """Connected, but the platform did not publish the device's identity in time."""


class NotConnectedError(DeviceSDKError):
    """An operation needs a connection (or a known identity) that the client does not have."""


class OfflineQueueFullError(DeviceSDKError):
    """A QoS 1 publish made while offline did not fit in the bounded offline queue."""


class IdentityStoreError(DeviceSDKError):
    """The identity file cannot be written (permissions, full disk, missing directory)."""

    def __init__(self, message: str, *, path: str) -> None:
        super().__init__(message)
        self.path = path


# --- warnings ----------------------------------------------------------------------------------


class InsecureKeyFileWarning(UserWarning):
    """The private key file may be read by other users of the board (group/others bits set)."""
