"""What the web console (``/console/``) needs beyond the console steps in :mod:`.routes`.

Two routers: :data:`console_api` adds read-only ``/api/v1`` endpoints (the account's device list
filtered and paged by the registry's query, an overview of connections, the live messages of a
device as server-sent events, the naming rules the console checks as the user types) and
:data:`console_pages` serves the console's static files with a strict Content-Security-Policy.
The console is only a client of ``/api/v1``: every rule stays in the registry or the endpoint.

Live streams are bounded: at most :data:`MAX_STREAMS_PER_ACCOUNT` at once per account, each with
a bounded queue (messages past it are counted as dropped and reported), and each ends as soon as
the client disconnects. The token travels in the ``Authorization`` header (the console reads the
stream with ``fetch()``), never in a URL.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Annotated, Any, Protocol, runtime_checkable

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response, StreamingResponse
from pydantic import BaseModel
from starlette.types import Receive, Scope, Send

from device_sdk.naming import CA_FILE_SUFFIXES, CA_NAME_RE
from server_stub.api.errors import error_body
from server_stub.api.renewal_routes import ExpiringOut, expiring_devices
from server_stub.api.routes import Account, Messaging, Reg
from server_stub.api.schemas import iso
from server_stub.errors import InvalidFieldError
from server_stub.ports import DeviceMessage, DeviceMessaging
from server_stub.registry.service import check_device_path

CONSOLE_DIR = Path(__file__).resolve().parent.parent / "console"
CONSOLE_FILES = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "app.css": "text/css; charset=utf-8",
}
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-cache",
}

MAX_STREAMS_PER_ACCOUNT = 8
STREAM_QUEUE = 256
HEARTBEAT_SECONDS = 15.0
STATES = ("online", "offline", "disabled")
MAX_OVERVIEW_SECONDS = 600


@runtime_checkable
class ConsoleActivity(Protocol):
    """What the MQTT endpoint tells the console (``MqttService`` implements it)."""

    def online_devices(self, account_id: int) -> list[tuple[str, str]]: ...

    def last_connection(self, product_key: str, device_name: str) -> Any: ...

    def timeline(self, account_id: int, seconds: int) -> list[Any]: ...

    def listen(
        self, product_key: str, device_name: str, listener: Callable[[DeviceMessage], None]
    ) -> Callable[[], None] | None: ...


def _activity(messaging: DeviceMessaging) -> ConsoleActivity | None:
    return messaging if isinstance(messaging, ConsoleActivity) else None


def message_json(msg: DeviceMessage) -> dict[str, Any]:
    """A device message as the API shows it: UTF-8 text, or base64 when it is not text."""
    try:
        text, encoding = msg.payload.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        text, encoding = base64.b64encode(msg.payload).decode("ascii"), "base64"
    return {
        "topic": msg.topic,
        "payload": text,
        "payloadEncoding": encoding,
        "qos": msg.qos,
        "receivedAt": iso(msg.received_at),
    }


# --- /api/v1 additions ---------------------------------------------------------------------------

console_api = APIRouter(prefix="/api/v1")


class DeviceSummary(BaseModel):
    productKey: str
    deviceName: str
    certSn: str | None
    caSn: str | None
    caName: str | None
    expiresAt: str | None
    expirySource: str | None
    """``certificate`` (seen when the device last connected) or ``ca`` (the issuing CA's)."""
    state: str
    """``Online``, ``Offline`` or ``Disabled``."""
    status: str
    lastConnectedAt: str | None
    createdAt: str


class DevicePage(BaseModel):
    total: int
    page: int
    pageSize: int
    items: list[DeviceSummary]


@console_api.get("/devices", response_model=DevicePage | list[ExpiringOut], tags=["devices"])
async def list_devices(
    request: Request,
    registry: Reg,
    account: Account,
    messaging: Messaging,
    q: Annotated[
        str | None, Query(description="part of a ProductKey, DeviceName or cert SN")
    ] = None,
    productKey: str | None = None,
    state: Annotated[str | None, Query(description="online, offline or disabled")] = None,
    page: int = 1,
    pageSize: int = 50,
    expiringWithinDays: Annotated[
        float | None,
        Query(
            description="instead of a page: the devices whose current certificate (as last "
            "seen by the server) expires within this many days, soonest first"
        ),
    ] = None,
    limit: Annotated[int, Query(description="with expiringWithinDays: at most this many")] = 1000,
) -> DevicePage | list[ExpiringOut]:
    """Every device of the account, filtered and paged by the registry's query; or, with
    ``expiringWithinDays``, the devices whose certificate expires soon (issue 14)."""
    if expiringWithinDays is not None:
        return await expiring_devices(
            request.app.state.renewals, account, expiringWithinDays, limit
        )
    activity = _activity(messaging)
    status: str | None = None
    keys: tuple[str, ...] | None = None
    exclude = False
    if state:
        if state not in STATES:
            raise InvalidFieldError(f"state {state!r} is not one of {', '.join(STATES)}")
        if state == "disabled":
            status = "disabled"
        else:
            status = "enabled"
            online = activity.online_devices(account.id) if activity else []
            keys = tuple(f"{pk}/{dn}" for pk, dn in online)
            exclude = state == "offline"
    total, rows = await asyncio.to_thread(
        registry.list_devices,
        account,
        text=q,
        product_key=productKey,
        status=status,
        keys=keys,
        exclude_keys=exclude,
        page=page,
        page_size=pageSize,
    )
    items = []
    for row in rows:
        last = activity.last_connection(row.product_key, row.device_name) if activity else None
        if row.status == "disabled":
            shown = "Disabled"
        elif messaging.is_online(row.product_key, row.device_name):
            shown = "Online"
        else:
            shown = "Offline"
        if last is not None:
            expires, source = iso(last.cert_not_after), "certificate"
        elif row.cert_not_after is not None:  # recorded at its last connection (any run)
            expires, source = iso(row.cert_not_after), "certificate"
        elif row.ca_not_after is not None:
            expires, source = iso(row.ca_not_after), "ca"
        else:
            expires, source = None, None
        items.append(
            DeviceSummary(
                productKey=row.product_key,
                deviceName=row.device_name,
                certSn=row.cert_sn,
                caSn=row.ca_sn,
                caName=row.ca_name,
                expiresAt=expires,
                expirySource=source,
                state=shown,
                status=row.status,
                lastConnectedAt=iso(last.at) if last is not None else None,
                createdAt=iso(row.created_at),
            )
        )
    return DevicePage(total=total, page=page, pageSize=pageSize, items=items)


class OverviewSample(BaseModel):
    at: str
    connections: int
    online: int


class Overview(BaseModel):
    online: int
    seconds: int
    samples: list[OverviewSample]


@console_api.get("/overview", response_model=Overview, tags=["devices"])
async def overview(account: Account, messaging: Messaging, seconds: int = 300) -> Overview:
    """Devices online now, and per second: connections accepted and devices online."""
    if not 1 <= seconds <= MAX_OVERVIEW_SECONDS:
        raise InvalidFieldError(f"seconds {seconds} must be 1..{MAX_OVERVIEW_SECONDS}")
    activity = _activity(messaging)
    if activity is None:
        return Overview(online=0, seconds=seconds, samples=[])
    online = len(activity.online_devices(account.id))
    samples = [
        OverviewSample(at=iso(s.second), connections=s.connections, online=s.online)
        for s in activity.timeline(account.id, seconds)
    ]
    if samples:  # the current second is not sampled yet: it is what is online now
        samples[-1] = samples[-1].model_copy(update={"online": online})
    return Overview(online=online, seconds=seconds, samples=samples)


class NamingRules(BaseModel):
    caNamePattern: str
    caNameRule: str
    caFileSuffixes: list[str]


@console_api.get("/naming-rules", response_model=NamingRules, tags=["account"])
def naming_rules(account: Account) -> NamingRules:
    """The rules the console checks as the user types (the registry checks them again)."""
    return NamingRules(
        caNamePattern=CA_NAME_RE.pattern,
        caNameRule="4-30 characters of letters, digits and underscore",
        caFileSuffixes=list(CA_FILE_SUFFIXES),
    )


class StreamSlots:
    """How many live streams each account has open (event loop thread only)."""

    def __init__(self, limit: int = MAX_STREAMS_PER_ACCOUNT) -> None:
        self.limit = limit
        self.open: dict[int, int] = {}

    def take(self, account_id: int) -> bool:
        count = self.open.get(account_id, 0)
        if count >= self.limit:
            return False
        self.open[account_id] = count + 1
        return True

    def give_back(self, account_id: int) -> None:
        count = self.open.get(account_id, 0) - 1
        if count > 0:
            self.open[account_id] = count
        else:
            self.open.pop(account_id, None)


def stream_slots(request: Request) -> StreamSlots:
    slots: StreamSlots | None = getattr(request.app.state, "console_streams", None)
    if slots is None:
        slots = request.app.state.console_streams = StreamSlots()
    return slots


def _event(name: str, data: dict[str, Any]) -> bytes:
    return f"event: {name}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


async def _nothing() -> AsyncIterator[bytes]:
    return
    yield b""


class EventStreamResponse(StreamingResponse):
    """``text/event-stream`` from a queue, until the client disconnects; then ``close()``."""

    def __init__(
        self,
        queue: asyncio.Queue[DeviceMessage],
        dropped: Callable[[], int],
        close: Callable[[], None],
        *,
        heartbeat: float = HEARTBEAT_SECONDS,
    ) -> None:
        super().__init__(
            _nothing(),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )
        self.queue = queue
        self.dropped = dropped
        self.close = close
        self.heartbeat = heartbeat

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await send(
                {
                    "type": "http.response.start",
                    "status": self.status_code,
                    "headers": self.raw_headers,
                }
            )
            await send(
                {"type": "http.response.body", "body": _event("ready", {}), "more_body": True}
            )
            pump = asyncio.ensure_future(self._pump(send))
            watch = asyncio.ensure_future(self._watch(receive))
            try:
                await asyncio.wait((pump, watch), return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in (pump, watch):
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError, OSError):
                        await task
            with contextlib.suppress(OSError):
                await send({"type": "http.response.body", "body": b"", "more_body": False})
        except OSError:  # the client went away while we were writing
            pass
        finally:
            self.close()

    async def _pump(self, send: Send) -> None:
        reported = 0
        while True:
            try:
                msg = await asyncio.wait_for(self.queue.get(), self.heartbeat)
            except TimeoutError:
                await send(
                    {"type": "http.response.body", "body": b": keep-alive\n\n", "more_body": True}
                )
                continue
            body = _event("message", message_json(msg))
            dropped = self.dropped()
            if dropped != reported:
                body = _event("dropped", {"dropped": dropped}) + body
                reported = dropped
            await send({"type": "http.response.body", "body": body, "more_body": True})

    @staticmethod
    async def _watch(receive: Receive) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass


@console_api.get(
    "/devices/{productKey}/{deviceName}/messages/stream",
    tags=["devices"],
    response_class=Response,
    responses={200: {"content": {"text/event-stream": {}}}},
)
async def stream_messages(
    productKey: str,
    deviceName: str,
    registry: Reg,
    account: Account,
    messaging: Messaging,
    slots: Annotated[StreamSlots, Depends(stream_slots)],
) -> Any:
    """The device's messages as server-sent events, as they arrive (``event: message``)."""
    check_device_path(productKey, deviceName)
    await asyncio.to_thread(registry.device, account, productKey, deviceName)
    activity = _activity(messaging)
    if activity is None:
        return JSONResponse(
            error_body("unavailable", "live messages need the MQTT endpoint, which is not running"),
            status_code=503,
        )
    if not slots.take(account.id):
        return JSONResponse(
            error_body(
                "too_many_streams",
                f"this account already has {slots.limit} live message streams open; close one",
            ),
            status_code=429,
        )
    queue: asyncio.Queue[DeviceMessage] = asyncio.Queue(STREAM_QUEUE)
    dropped = 0

    def on_message(msg: DeviceMessage) -> None:
        nonlocal dropped
        try:
            queue.put_nowait(msg)
        except asyncio.QueueFull:
            dropped += 1

    stop = activity.listen(productKey, deviceName, on_message)
    if stop is None:
        slots.give_back(account.id)
        return JSONResponse(
            error_body("too_many_streams", "this device has too many live listeners; close one"),
            status_code=429,
        )
    unlisten = stop
    account_id = account.id

    def close() -> None:
        unlisten()
        slots.give_back(account_id)

    return EventStreamResponse(queue, lambda: dropped, close)


# --- the console's files ---------------------------------------------------------------------------

console_pages = APIRouter(include_in_schema=False)


@console_pages.get("/console")
def console_root() -> RedirectResponse:
    return RedirectResponse("/console/", status_code=308, headers=SECURITY_HEADERS)


@console_pages.get("/console/")
def console_index() -> Response:
    return console_file("index.html")


@console_pages.get("/console/{name}")
def console_file(name: str) -> Response:
    media_type = CONSOLE_FILES.get(name)
    if media_type is None:
        return JSONResponse(
            error_body("not_found", f"the console has no file {name!r}"),
            status_code=404,
            headers=SECURITY_HEADERS,
        )
    return Response(
        (CONSOLE_DIR / name).read_bytes(), media_type=media_type, headers=SECURITY_HEADERS
    )
