"""The kit's one exception tree: its root, and the device SDK's branch.

Every error any part of iot-x509-kit raises derives from :class:`Iotx509Error`, so a caller (and
the ``iotx509`` command, which prints the message of any of them without a traceback) needs one
``except``. The root lives here because ``device_sdk`` is the base every other part builds on.
Each part owns one branch, defined in its own ``errors`` module; a subclass carries the context a
person needs to act (which file, which times, which server) and a message that says what to do.
Third-party errors (``ssl``, ``cryptography``, ``paho``, ``sqlite3``) are mapped once, where they
are caught, with ``raise ... from`` so the cause is never lost. HTTP statuses are not part of
the tree: the reference server's API layer (``server_stub/api/errors.py``) maps classes to them.

The certificate model in :mod:`device_sdk.certs` is shared by every part of the kit, so its
errors (``CredentialError`` and ``ClockError`` families) live in the SDK's branch.
``tests/test_error_tree.py`` checks that every exception class of the kit is in this tree and
named once (no two classes share a name).

* Iotx509Error
  + DeviceSDKError  (device_sdk/errors.py)
  | + CredentialError
  | | + CertificateFormatError
  | | + KeyFormatError
  | | + KeyPasswordError
  | | + KeyMismatchError
  | | + UnsupportedKeyTypeError
  | | + DERError  (also ValueError; device_sdk/der.py, the strict DER reader)
  | + CsrRejectedError  (a device's CSR: device_sdk/csr.py, provisioning and renewal)
  | + InvalidSerialNumberError  (also ValueError)
  | + InvalidNameError  (also ValueError)
  | + ClockError
  | + ConnectionFailedError
  | | + ServerUntrustedError
  | | + CertificateRejectedError
  | | + NotAuthorizedError
  | | + ConnectionRefusedByServerError
  | | + ConnectTimeoutError
  | | + SessionTakenOverError
  | + IdentityTimeoutError
  | + NotConnectedError
  | + OfflineQueueFullError
  | + IdentityStoreError
  | + RenewalError
  | | + RenewalMessageError  (also ValueError; device_sdk/renewal_protocol.py's checks)
  | | + RenewalRefusedError
  | | + RenewalFailedError
  | | + RenewalStateError
  + CommandLineError  (device_sdk/errors.py; the shared CLI plumbing and iotx509)
  | + MissingExtraError  (device_sdk/cli_support.py)
  | + DemoError  (iotx509/demo.py)
  + FirmwareHelpersError  (firmware_helpers/errors.py)
  | + IssuanceError
  | | + DuplicateSerialError
  | | + InvalidCAError
  | | + InvalidInputError
  | + OutputExistsError
  | + LedgerError
  | + ExportError
  | + PlatformAPIError  (firmware_helpers/platform_client.py; the HTTP API's answer)
  | + SignerError  (firmware_helpers/signer.py; the renewal signer cannot work)
  | + BlobFormatError
  | | + BadMagicError
  | | + UnsupportedBlobVersionError
  | | + TruncatedBlobError
  | | + BlobChecksumError
  | | + BadRecordError
  | + SerialProvisioningError
  |   + FrameError
  |   | + BadCRCError
  |   + ProtocolError
  |   + ProtocolVersionError
  |   + LinkError
  |   | + PortOpenError
  |   | + LinkTimeoutError
  |   | + RetriesExhaustedError
  |   | + BoardDisconnectedError
  |   | + BoardRebootedError
  |   + BoardError
  |   + ProvisioningInputError
  |   + StoreError  (the board's credential store)
  |   + CommitRefused  (firmware_helpers/serial/board.py)
  |   + BatchError
  |     + PairInUseError  (a pair the provisioning report gives to another board)
  + ServerStubError  (server_stub/errors.py)
  | + InvalidFieldError
  | | + CaCertificateRejectedError
  | + AuthenticationError
  | + NotFoundError
  | + ConflictError
  | | + DuplicateCaError
  | | + CaLimitError
  | | + DeviceOfflineError
  | + PayloadTooLargeError
  | + CsvRejectedError
  | | + ProductNotEligibleError
  | | + AssociationRejectedError
  | + RenewalCertificateRejectedError  (a signer's certificate fails a renewal check)
  | + DataStoreError  (the server's SQLite database)
  | | + SchemaVersionError
  | + ServerStartupError
  | + MqttError  (server_stub/mqtt/errors.py)
  |   + MqttProtocolError
  |   | + UnacceptableProtocolLevelError
  |   | + InvalidTopicError  (also ValueError)
  |   + InvalidMessageError  (also ValueError)
  |   + MqttServiceError
  |   + TlsError  (server_stub/mqtt/tls_engine.py; one connection's TLS)
  |     + TlsHandshakeError
  |     + TlsClosed
  + SimulatorError  (simulator/errors.py)
    + TemplateError
    + FleetError
    + FleetExhaustedError
    + FleetCreateError
    + ScenarioError  (simulator/scenarios.py)
    + LeaseTimeoutError  (simulator/distribution.py)
    + IdentityMismatchError  (simulator/device.py)
    + ServerPacketError  (simulator/mqtt_wire.py; bytes from the server that are not MQTT)
"""

from __future__ import annotations

from datetime import datetime

from device_sdk.exit_codes import ExitCode


class Iotx509Error(Exception):
    """Root of every error the kit raises (see the tree in this module's docstring)."""


class DeviceSDKError(Iotx509Error):
    """Root of every error the device SDK raises."""


class CommandLineError(Iotx509Error):
    """The ``iotx509`` command cannot do what was asked (a missing extra, a failed demo step)."""


# --- credentials -------------------------------------------------------------------------------


class CredentialError(DeviceSDKError):
    """A certificate or key cannot be used: unreadable, wrong type, mismatched, wrong password."""

    exit_code = ExitCode.CREDENTIALS

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


class CsrRejectedError(DeviceSDKError):
    """A device's certificate signing request proves nothing or asks for too much: nothing is
    issued. Raised by :func:`device_sdk.csr.check_csr` (on-board provisioning, renewal on the
    server and at the signer); ``reason`` is a stable code (``device_sdk.csr.REASON_*``) and
    ``source`` names where the CSR came from, when the caller knows."""

    #: ``iotx509 provision`` documents status 3 for a board's unacceptable answer (a NAK or a
    #: bad CSR; docs/serial-protocol.md). No device program raises this error.
    exit_code = 3

    def __init__(self, message: str, *, reason: str, source: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.source = source


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

    @property
    def expired(self) -> bool:
        """The clock is past the certificate's end (else: before its start)."""
        try:
            return bool(self.now > self.not_after)
        except TypeError:
            return False

    @property
    def exit_code(self) -> int:
        """An expired certificate needs a new one (like bad credentials); a certificate not
        valid yet usually means the clock is not set yet: worth a retry."""
        return ExitCode.CREDENTIALS if self.expired else ExitCode.CLOCK


# --- connecting --------------------------------------------------------------------------------


class ConnectionFailedError(DeviceSDKError):
    """The device could not reach or talk to the server (network, refused, reset)."""

    exit_code: int = ExitCode.NETWORK

    def __init__(self, message: str, *, host: str | None = None, port: int | None = None) -> None:
        super().__init__(message)
        self.host = host
        self.port = port


class ServerUntrustedError(ConnectionFailedError):
    """The server's certificate failed verification against the configured ``server_ca``."""

    exit_code = ExitCode.CONFIGURATION


class CertificateRejectedError(ConnectionFailedError):
    """The server refused the client certificate during the TLS handshake."""

    exit_code = ExitCode.CERTIFICATE_REJECTED


class NotAuthorizedError(ConnectionFailedError):
    """The server answered CONNACK 5 (not authorised)."""

    exit_code = ExitCode.NOT_AUTHORISED


class ConnectionRefusedByServerError(ConnectionFailedError):
    """The server answered CONNACK with another non-zero code."""

    def __init__(
        self, message: str, *, code: int, host: str | None = None, port: int | None = None
    ) -> None:
        super().__init__(message, host=host, port=port)
        self.code = code
        # CONNACK 4 (the username) is an authorisation answer; 1 and 2 are configuration.
        self.exit_code = ExitCode.NOT_AUTHORISED if code == 4 else ExitCode.CONFIGURATION


class ConnectTimeoutError(ConnectionFailedError):
    """No CONNACK arrived in time."""


class SessionTakenOverError(ConnectionFailedError):
    """The server kept closing the session soon after accepting it: most likely another
    connection with the same certificate (same client id) takes the session over each time."""

    def __init__(
        self, message: str, *, sessions: int, host: str | None = None, port: int | None = None
    ) -> None:
        super().__init__(message, host=host, port=port)
        self.sessions = sessions


class IdentityTimeoutError(DeviceSDKError):
    """Connected, but the platform did not publish the device's identity in time."""

    exit_code = ExitCode.CONFIGURATION

    def __init__(
        self,
        message: str,
        *,
        host: str | None = None,
        port: int | None = None,
        timeout: float | None = None,
    ) -> None:
        super().__init__(message)
        self.host = host
        self.port = port
        self.timeout = timeout


class NotConnectedError(DeviceSDKError):
    """An operation needs a connection (or a known identity) that the client does not have."""

    exit_code = ExitCode.NETWORK


class OfflineQueueFullError(DeviceSDKError):
    """A QoS 1 publish made while offline did not fit in the bounded offline queue."""


class IdentityStoreError(DeviceSDKError):
    """The identity file cannot be written (permissions, full disk, missing directory)."""

    def __init__(self, message: str, *, path: str) -> None:
        super().__init__(message)
        self.path = path


# --- certificate renewal (docs/renewal.md) -----------------------------------------------------


class RenewalError(DeviceSDKError):
    """Root of the renewal branch: the device could not replace its certificate (it keeps the
    pair it has, which still connects)."""


class RenewalMessageError(RenewalError, ValueError):
    """A renewal request or reply breaks the contract of docs/renewal.md (topic, id, CSR, PEM)."""


class RenewalRefusedError(RenewalError):
    """The server or the customer's signer refused the request; ``reason`` says why. Retrying
    the same request does not help."""

    exit_code = ExitCode.CREDENTIALS

    def __init__(self, message: str, *, reason: str, request_id: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.request_id = request_id


class RenewalFailedError(RenewalError):
    """No certificate came back (no reply in time, signer down, ``failed``): worth a retry later."""

    exit_code = ExitCode.NETWORK

    def __init__(self, message: str, *, reason: str, request_id: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.request_id = request_id


class RenewalStateError(RenewalError):
    """The renewal files in the credential directory cannot be read or written."""

    def __init__(self, message: str, *, path: str) -> None:
        super().__init__(message)
        self.path = path


# --- warnings ----------------------------------------------------------------------------------


class InsecureKeyFileWarning(UserWarning):
    """The private key file may be read by other users of the board (group/others bits set)."""
