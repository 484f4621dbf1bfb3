"""The reference server's exception tree.

One root, :class:`ServerStubError`. Each subclass carries the HTTP status and a stable machine
``code`` the API puts in ``{"error": {"code", "message"}}``, so the registry decides what went
wrong and the HTTP layer only translates. Errors from the shared certificate model
(:mod:`device_sdk.errors`) and from ``sqlite3`` are mapped once, where they are caught, with
``raise ... from``. This module imports only the standard library: the ``platform`` client and
the CLI use it without the server extra.
"""

from __future__ import annotations

from dataclasses import dataclass


class ServerStubError(Exception):
    """Root of every error the reference server (and its platform client) raises."""

    status: int = 500
    code: str = "internal_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def to_json(self) -> dict[str, object]:
        return {"error": {"code": self.code, "message": self.message}}


class InvalidInputError(ServerStubError):
    """A field breaks a rule (name, setting, file type). Names the field in the message."""

    status = 400
    code = "invalid_input"


class CertificateRejectedError(InvalidInputError):
    """An uploaded CA or verification certificate fails a registration rule."""

    code = "invalid_certificate"


class AuthenticationError(ServerStubError):
    """No token, or a token that belongs to no account."""

    status = 401
    code = "unauthorized"


class NotFoundError(ServerStubError):
    """The object does not exist *in this account* (other accounts' objects are invisible)."""

    status = 404
    code = "not_found"


class ConflictError(ServerStubError):
    """The request contradicts what is stored (duplicate, limit reached, device offline)."""

    status = 409
    code = "conflict"


class DuplicateCaError(ConflictError):
    code = "ca_already_registered"


class CaLimitError(ConflictError):
    code = "ca_limit_reached"


class DeviceOfflineError(ConflictError):
    code = "device_offline"


class PayloadTooLargeError(ServerStubError):
    status = 413
    code = "payload_too_large"


class CsvRejectedError(ServerStubError):
    """An association file was refused as a whole; nothing of it was saved."""

    status = 422
    code = "invalid_csv"


class ProductNotEligibleError(CsvRejectedError):
    """The file's product is missing or not configured for private-CA association."""

    code = "product_not_eligible"


@dataclass(frozen=True, slots=True)
class RowError:
    """One bad CSV data row: ``row`` counts data rows from 1 (the header is row 0)."""

    row: int
    message: str


class AssociationRejectedError(CsvRejectedError):
    """Some rows are bad: every one of them is listed, and nothing was saved."""

    code = "association_rejected"

    def __init__(self, message: str, rows: list[RowError]) -> None:
        super().__init__(message)
        self.rows = rows

    def to_json(self) -> dict[str, object]:
        return {
            "error": {
                "code": self.code,
                "message": self.message,
                "rows": [{"row": r.row, "message": r.message} for r in self.rows],
            }
        }


class StoreError(ServerStubError):
    """The data directory's database cannot be opened or written."""

    code = "store_error"


class PlatformClientError(ServerStubError):
    """The ``iotx509 platform`` client failed: the server's own message, or why it is unreachable."""

    def __init__(
        self, message: str, *, status: int = 0, code: str = "client_error",
        rows: list[RowError] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.rows = rows or []

    def __str__(self) -> str:
        if not self.rows:
            return self.message
        lines = [self.message, *(f"  row {r.row}: {r.message}" for r in self.rows)]
        return "\n".join(lines)


class ServerStartupError(ServerStubError):
    """The server cannot start: data directory, port in use, another server on the same data."""

    code = "startup_error"
