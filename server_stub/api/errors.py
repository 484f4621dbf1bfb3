"""Every error the HTTP API returns is ``{"error": {"code", "message"}}``.

That includes the errors FastAPI and Starlette raise themselves (unknown path 404, wrong method
405, request validation 422) and uploads over the size limit (413), so a client needs exactly one
error parser.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server_stub.errors import PayloadTooLargeError, ServerStubError

log = logging.getLogger(__name__)

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


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err.get("loc", ()) if p not in ("body", "query", "path"))
        parts.append(f"{loc or 'request'}: {err.get('msg', 'invalid')}")
    return "; ".join(parts) or "the request is not valid"


def install_error_handlers(app: FastAPI) -> None:
    async def server_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ServerStubError)
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return JSONResponse(exc.to_json(), status_code=exc.status, headers=headers)

    async def http_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        if isinstance(exc.__cause__, ServerStubError):
            cause = exc.__cause__
            return JSONResponse(cause.to_json(), status_code=cause.status)
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
                err = self._error(f"{int(value):,} bytes")
                response = JSONResponse(err.to_json(), status_code=413)
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
