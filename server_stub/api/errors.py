"""Every error the HTTP API returns is ``{"error": {"code", "message"}}``.

That includes the errors FastAPI and Starlette raise themselves (unknown path 404, wrong method
405, request validation 422) and uploads over the size limit (413), so a client needs exactly one
error parser. This module is the only place that knows which HTTP status and stable machine
``code`` each class of the server's error tree (:mod:`server_stub.errors`) becomes: the registry,
the store and the MQTT endpoint raise plain classes, and :data:`HTTP_ERRORS` translates them.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server_stub.errors import (
    AssociationRejectedError,
    AuthenticationError,
    CaCertificateRejectedError,
    CaLimitError,
    ConflictError,
    CsvRejectedError,
    DataStoreError,
    DeviceOfflineError,
    DuplicateCaError,
    InvalidFieldError,
    NotFoundError,
    PayloadTooLargeError,
    ProductNotEligibleError,
    RenewalCertificateRejectedError,
    ServerStartupError,
    ServerStubError,
)

log = logging.getLogger(__name__)

#: class -> (HTTP status, machine code); an error takes the entry of its nearest class.
HTTP_ERRORS: dict[type[ServerStubError], tuple[int, str]] = {
    ServerStubError: (500, "internal_error"),
    InvalidFieldError: (400, "invalid_input"),
    CaCertificateRejectedError: (400, "invalid_certificate"),
    AuthenticationError: (401, "unauthorized"),
    NotFoundError: (404, "not_found"),
    ConflictError: (409, "conflict"),
    DuplicateCaError: (409, "ca_already_registered"),
    CaLimitError: (409, "ca_limit_reached"),
    DeviceOfflineError: (409, "device_offline"),
    PayloadTooLargeError: (413, "payload_too_large"),
    CsvRejectedError: (422, "invalid_csv"),
    ProductNotEligibleError: (422, "product_not_eligible"),
    AssociationRejectedError: (422, "association_rejected"),
    RenewalCertificateRejectedError: (422, "certificate_rejected"),
    DataStoreError: (500, "store_error"),
    ServerStartupError: (500, "startup_error"),
}

_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "invalid_request",
}


def error_body(code: str, message: str, **extra: Any) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, **extra}}


def http_status(exc: ServerStubError) -> tuple[int, str]:
    """The HTTP status and machine code of ``exc``: those of its nearest class in the table."""
    for cls in type(exc).__mro__:
        if cls in HTTP_ERRORS:
            return HTTP_ERRORS[cls]
    raise AssertionError("unreachable: ServerStubError is in the table")


def server_error_response(exc: ServerStubError) -> JSONResponse:
    """``exc`` as the API's JSON error (with the rows of a rejected association file)."""
    status, code = http_status(exc)
    extra: dict[str, Any] = {}
    if isinstance(exc, AssociationRejectedError):
        extra["rows"] = [{"row": r.row, "message": r.message} for r in exc.rows]
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse(error_body(code, exc.message, **extra), status_code=status, headers=headers)


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err.get("loc", ()) if p not in ("body", "query", "path"))
        parts.append(f"{loc or 'request'}: {err.get('msg', 'invalid')}")
    return "; ".join(parts) or "the request is not valid"


def install_error_handlers(app: FastAPI) -> None:
    async def server_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ServerStubError)
        return server_error_response(exc)

    async def http_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        if isinstance(exc.__cause__, ServerStubError):
            return server_error_response(exc.__cause__)
        code = _CODES.get(exc.status_code, f"http_{exc.status_code}")
        message = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        if exc.status_code == 404 and message == "Not Found":
            message = "no such API path"
        return JSONResponse(
            error_body(code, message), status_code=exc.status_code, headers=exc.headers
        )

    async def validation_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        return JSONResponse(
            error_body("invalid_request", _validation_message(exc)), status_code=422
        )

    async def unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error in the HTTP API", exc_info=exc)
        return JSONResponse(
            error_body("internal_error", "internal server error; see the server log"),
            status_code=500,
        )

    app.add_exception_handler(ServerStubError, server_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(Exception, unexpected)


class UploadLimitMiddleware:
    """Refuse request bodies over ``max_bytes`` with 413, before or while they are read.

    A declared Content-Length over the limit is refused without reading the body; a chunked
    body is counted as it arrives and refused as soon as it passes the limit.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    def _error(self, size: str) -> PayloadTooLargeError:
        return PayloadTooLargeError(
            f"request body of {size} is over the upload limit of {self.max_bytes:,} bytes"
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", ()):
            if name == b"content-length" and value.isdigit() and int(value) > self.max_bytes:
                response = server_error_response(self._error(f"{int(value):,} bytes"))
                await response(scope, receive, send)
                return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    err = self._error(f"more than {self.max_bytes:,} bytes")
                    raise StarletteHTTPException(413, err.message) from err
            return message

        await self.app(scope, limited_receive, send)
