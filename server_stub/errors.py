"""The reference server's branch of the kit's exception tree (:class:`ServerStubError`).

The whole tree is drawn in :mod:`device_sdk.errors`, where its root lives. The registry decides
what went wrong by raising one of these classes; only the HTTP layer
(:mod:`server_stub.api.errors`) knows which HTTP status and machine ``code`` each class becomes,
so the MQTT endpoint and the SQLite store carry no HTTP notions. Errors from the shared
certificate model (:mod:`device_sdk.errors`) and from ``sqlite3`` are mapped once, where they are
caught, with ``raise ... from``. This module imports only the standard library and the root: the
``platform`` client and the CLI use it without the server extra.
"""

from __future__ import annotations

from dataclasses import dataclass

from device_sdk.errors import Iotx509Error


class ServerStubError(Iotx509Error):
    """Root of every error the reference server raises."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidFieldError(ServerStubError):
    """A field breaks a rule (name, setting, file type). Names the field in the message."""


class CaCertificateRejectedError(InvalidFieldError):
    """An uploaded CA or verification certificate fails a registration rule."""


class AuthenticationError(ServerStubError):
    """No token, or a token that belongs to no account."""


class NotFoundError(ServerStubError):
    """The object does not exist *in this account* (other accounts' objects are invisible)."""


class ConflictError(ServerStubError):
    """The request contradicts what is stored (duplicate, limit reached, device offline)."""


class DuplicateCaError(ConflictError):
    """The CA certificate is already registered (in this account or another)."""


class CaLimitError(ConflictError):
    """The account already has the most CA certificates it may register."""


class DeviceOfflineError(ConflictError):
    """A message cannot be delivered: the device is not connected."""


class PayloadTooLargeError(ServerStubError):
    """A request body is over the upload limit."""


class CsvRejectedError(ServerStubError):
    """An association file was refused as a whole; nothing of it was saved."""


class ProductNotEligibleError(CsvRejectedError):
    """The file's product is missing or not configured for private-CA association."""


@dataclass(frozen=True, slots=True)
class RowError:
    """One bad CSV data row: ``row`` counts data rows from 1 (the header is row 0)."""

    row: int
    message: str


class AssociationRejectedError(CsvRejectedError):
    """Some rows are bad: every one of them is listed, and nothing was saved."""

    def __init__(self, message: str, rows: list[RowError]) -> None:
        super().__init__(message)
        self.rows = rows


class RenewalCertificateRejectedError(ServerStubError):
    """A signer posted a certificate for a renewal request that fails a check (not signed by
    that CA's key, another key than the CSR's, SN taken, ...): nothing was associated."""


class DataStoreError(ServerStubError):
    """The data directory's database cannot be opened or written."""


class SchemaVersionError(DataStoreError):
    """The database was written by a newer version of the server than this one understands."""

    def __init__(self, message: str, *, found: int, supported: int) -> None:
        super().__init__(message)
        self.found = found
        self.supported = supported


class ServerStartupError(ServerStubError):
    """The server cannot start: data directory, port in use, another server on the same data."""
