"""The reference server's HTTP API (FastAPI): the platform console's steps as JSON endpoints."""

from __future__ import annotations

from fastapi import FastAPI

from server_stub.api.console_routes import console_api, console_pages
from server_stub.api.errors import UploadLimitMiddleware, install_error_handlers
from server_stub.api.messaging import NoMessaging
from server_stub.api.routes import router
from server_stub.ports import DeviceMessaging
from server_stub.registry import Registry

DEFAULT_MAX_UPLOAD_BYTES = 4 * 1024 * 1024


def create_app(
    registry: Registry,
    messaging: DeviceMessaging | None = None,
    *,
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
) -> FastAPI:
    """The ASGI app. ``messaging`` is the MQTT endpoint (or none: every device is offline)."""
    app = FastAPI(
        title="iot-x509-kit reference server",
        version="1",
        description="Registry of a private-CA X.509 IoT platform: products, CA certificates "
        "with proof of possession, device certificate associations, devices.",
        openapi_url="/openapi.json",
    )
    app.state.registry = registry
    app.state.messaging = messaging or NoMessaging()
    install_error_handlers(app)
    app.include_router(router)
    app.include_router(console_api)  # the web console's reads: device list, overview, live stream
    app.include_router(console_pages)  # the web console itself, at /console/
    app.add_middleware(UploadLimitMiddleware, max_bytes=max_upload_bytes)
    return app


__all__ = ["create_app"]
