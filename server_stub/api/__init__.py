"""The reference server's HTTP API (FastAPI): the platform console's steps as JSON endpoints."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi_offline import FastAPIOffline

from server_stub.api.console_routes import console_api, console_pages
from server_stub.api.errors import UploadLimitMiddleware, install_error_handlers
from server_stub.api.renewal_routes import renewal_api
from server_stub.api.routes import router
from server_stub.ports import DeviceMessaging
from server_stub.registry import Registry
from server_stub.registry.renewals import Renewals

DEFAULT_MAX_UPLOAD_BYTES = 4 * 1024 * 1024
#: Where the Swagger UI / ReDoc assets are served from (the server itself, never a CDN).
DOCS_ASSETS_URL = "/docs/assets"


def create_app(
    registry: Registry,
    messaging: DeviceMessaging,
    *,
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
    renewals: Renewals | None = None,
) -> FastAPI:
    """The ASGI app. ``messaging`` is the MQTT endpoint (or a test's in-memory one);
    ``renewals`` the renewal rules the MQTT endpoint shares (default: new ones)."""
    # FastAPIOffline: FastAPI whose /docs and /redoc load their JavaScript, CSS and favicon
    # from DOCS_ASSETS_URL on this server (files shipped in the fastapi-offline package), so
    # the API documentation also works on a lab network without internet access.
    app = FastAPIOffline(
        static_url=DOCS_ASSETS_URL,
        title="iot-x509-kit reference server",
        version="1",
        description="Registry of a private-CA X.509 IoT platform: products, CA certificates "
        "with proof of possession, device certificate associations, devices.",
        openapi_url="/openapi.json",
        # no badge from the public validator service: nothing on /docs leaves the server
        swagger_ui_parameters={"validatorUrl": None},
    )
    app.state.registry = registry
    app.state.messaging = messaging
    app.state.renewals = renewals if renewals is not None else Renewals(registry)
    install_error_handlers(app)
    app.include_router(router)
    app.include_router(renewal_api)  # the signer's side of certificate renewal (issue 14)
    app.include_router(console_api)  # the web console's reads: device list, overview, live stream
    app.include_router(console_pages)  # the web console itself, at /console/
    app.add_middleware(UploadLimitMiddleware, max_bytes=max_upload_bytes)
    return app


__all__ = ["create_app"]
