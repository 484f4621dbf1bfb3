"""TEMPORARY adapter (removed once in-progress callers move to
:mod:`firmware_helpers.platform_client`, the one home of the platform API client)."""

from __future__ import annotations

from typing import Any

from firmware_helpers import platform_client as pc
from server_stub.errors import PlatformClientError, RowError

DEFAULT_SERVER = "http://127.0.0.1:8080"


class PlatformClient:
    def __init__(self, server: str, token: str, *, timeout: float = 60.0) -> None:
        self._c = pc.PlatformClient(server, token, timeout=timeout)

    def __getattr__(self, name: str) -> Any:
        target = {"list_cas": "ca_certificates", "ca": "ca_certificate",
                  "list_associations": "associations", "recent_messages": "device_messages"}
        method = getattr(self._c, target.get(name, name))

        def call(*args: Any, **kwargs: Any) -> Any:
            if name == "register_ca":
                n, ca, ver = args
                args = (n, pc.UploadFile(ca[0], ca[1]), pc.UploadFile(ver[0], ver[1]))
            elif name == "associate":
                sn, fn, data = args
                args = (sn, pc.UploadFile(fn, data, "text/csv"))
            try:
                result = method(*args, **kwargs)
            except pc.PlatformAPIError as exc:
                rows = [RowError(int(r["row"]), str(r["message"])) for r in exc.rows]
                raise PlatformClientError(
                    exc.args[0], status=exc.status, code=exc.code or "error", rows=rows
                ) from exc
            return result.encode() if name == "association_template" else result

        return call
