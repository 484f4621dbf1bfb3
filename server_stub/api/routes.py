"""The ``/api/v1`` endpoints: one console step each, translated to registry calls.

Registry work is synchronous (SQLite, certificate checks), so those endpoints are plain ``def``
and run in the thread pool. Endpoints that talk to the MQTT endpoint (presence, messages) are
``async`` and so run on the event loop thread, as :class:`~server_stub.ports.DeviceMessaging`
requires.
"""

from __future__ import annotations

import base64
import binascii
from typing import Annotated

from fastapi import APIRouter, Depends, File, Form, Request, Response, Security, UploadFile
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from device_sdk.platform import device_topic_space, topic_within_device_space
from server_stub.api.endpoint import DeviceEndpoint
from server_stub.api.schemas import (
    Associated,
    AssociationOut,
    CaOut,
    Delivered,
    DeviceOut,
    EndpointOut,
    MessageIn,
    MessageOut,
    ProductIn,
    ProductOut,
    RegistrationCode,
    StatusIn,
    iso,
)
from server_stub.errors import DeviceOfflineError, InvalidFieldError, NotFoundError
from server_stub.ports import DeviceMessaging
from server_stub.registry import Registry
from server_stub.registry.associations import template
from server_stub.registry.service import check_device_path
from server_stub.store.base import AccountRecord

router = APIRouter(prefix="/api/v1")
_bearer = HTTPBearer(auto_error=False, description="the account's API token")
MAX_RECENT = 1000


def get_registry(request: Request) -> Registry:
    registry: Registry = request.app.state.registry
    return registry


def get_messaging(request: Request) -> DeviceMessaging:
    messaging: DeviceMessaging = request.app.state.messaging
    return messaging


def current_account(
    registry: Annotated[Registry, Depends(get_registry)],
    credentials: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)],
) -> AccountRecord:
    return registry.account_for_token(credentials.credentials if credentials else None)


Reg = Annotated[Registry, Depends(get_registry)]
Account = Annotated[AccountRecord, Depends(current_account)]
Messaging = Annotated[DeviceMessaging, Depends(get_messaging)]


# --- account -------------------------------------------------------------------------------------


@router.get("/registration-code", response_model=RegistrationCode, tags=["account"])
def get_registration_code(registry: Reg, account: Account) -> RegistrationCode:
    """The CN a CA's verification certificate must carry."""
    return RegistrationCode(registrationCode=registry.registration_code(account))


@router.post("/registration-code/rotate", response_model=RegistrationCode, tags=["account"])
def rotate_registration_code(registry: Reg, account: Account) -> RegistrationCode:
    return RegistrationCode(registrationCode=registry.rotate_registration_code(account))


@router.get("/endpoint", response_model=EndpointOut, tags=["account"])
def get_endpoint(request: Request, account: Account) -> EndpointOut:
    """Where devices connect (``mqtts://HOST:PORT``) and the CA that signed the server's
    certificate (PEM), so that tools need not guess ``HOST:8883``."""
    endpoint = getattr(request.app.state, "endpoint", None)
    if not isinstance(endpoint, DeviceEndpoint):
        raise NotFoundError("this server runs without its MQTT device endpoint")
    return EndpointOut(mqtt=endpoint.url(request.url.hostname), serverCa=endpoint.server_ca_pem)


# --- products ------------------------------------------------------------------------------------


@router.post("/products", status_code=201, response_model=ProductOut, tags=["products"])
def create_product(body: ProductIn, registry: Reg, account: Account) -> ProductOut:
    product = registry.create_product(
        account,
        name=body.name,
        auth_type=body.authType,
        private_ca=body.privateCa,
        network=body.network,
    )
    return ProductOut.of(product)


@router.get("/products", response_model=list[ProductOut], tags=["products"])
def list_products(registry: Reg, account: Account) -> list[ProductOut]:
    return [ProductOut.of(p) for p in registry.list_products(account)]


@router.get("/products/{productKey}", response_model=ProductOut, tags=["products"])
def get_product(productKey: str, registry: Reg, account: Account) -> ProductOut:
    return ProductOut.of(registry.product(account, productKey))


# --- CA certificates -----------------------------------------------------------------------------


@router.post("/ca-certificates", status_code=201, response_model=CaOut, tags=["ca-certificates"])
def register_ca(
    registry: Reg,
    account: Account,
    name: Annotated[str, Form()],
    caCertificate: Annotated[UploadFile, File()],
    verificationCertificate: Annotated[UploadFile, File()],
) -> CaOut:
    """Register a CA with proof of possession (a verification certificate, CN = code)."""
    record = registry.register_ca(
        account,
        name=name,
        ca_data=caCertificate.file.read(),
        verification_data=verificationCertificate.file.read(),
        ca_filename=caCertificate.filename,
        verification_filename=verificationCertificate.filename,
    )
    return CaOut.of(record)


@router.get("/ca-certificates", response_model=list[CaOut], tags=["ca-certificates"])
def list_cas(registry: Reg, account: Account) -> list[CaOut]:
    return [CaOut.of(c) for c in registry.list_cas(account)]


@router.get("/ca-certificates/{caSn}", response_model=CaOut, tags=["ca-certificates"])
def get_ca(caSn: str, registry: Reg, account: Account) -> CaOut:
    return CaOut.of(registry.ca(account, caSn))


@router.patch("/ca-certificates/{caSn}", response_model=CaOut, tags=["ca-certificates"])
def patch_ca(caSn: str, body: StatusIn, registry: Reg, account: Account) -> CaOut:
    return CaOut.of(registry.set_ca_status(account, caSn, body.status))


@router.delete("/ca-certificates/{caSn}", status_code=204, tags=["ca-certificates"])
def delete_ca(caSn: str, registry: Reg, account: Account) -> Response:
    registry.delete_ca(account, caSn)
    return Response(status_code=204)


@router.get(
    "/ca-certificates/{caSn}/association-template",
    tags=["associations"],
    response_class=Response,
    responses={200: {"content": {"text/csv": {}}}},
)
def association_template(caSn: str, registry: Reg, account: Account) -> Response:
    ca = registry.ca(account, caSn)
    return Response(
        template(),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="associations_{ca.ca_sn}.csv"'},
    )


@router.post(
    "/ca-certificates/{caSn}/associations", response_model=Associated, tags=["associations"]
)
def associate(
    caSn: str, registry: Reg, account: Account, file: Annotated[UploadFile, File()]
) -> Associated:
    """Associate devices (CSV: ProductKey,DeviceName,CertSN); all rows or none."""
    return Associated(associated=registry.associate(account, caSn, file.file.read()))


@router.get(
    "/ca-certificates/{caSn}/associations",
    response_model=list[AssociationOut],
    tags=["associations"],
)
def list_associations(caSn: str, registry: Reg, account: Account) -> list[AssociationOut]:
    return [AssociationOut.of(a) for a in registry.list_associations(account, caSn)]


@router.delete(
    "/ca-certificates/{caSn}/associations/{certSn}", status_code=204, tags=["associations"]
)
def delete_association(caSn: str, certSn: str, registry: Reg, account: Account) -> Response:
    registry.delete_association(account, caSn, certSn)
    return Response(status_code=204)


# --- devices -------------------------------------------------------------------------------------


@router.get("/devices/{productKey}/{deviceName}", response_model=DeviceOut, tags=["devices"])
async def get_device(
    productKey: str, deviceName: str, registry: Reg, account: Account, messaging: Messaging
) -> DeviceOut:
    check_device_path(productKey, deviceName)
    device = registry.device(account, productKey, deviceName)
    return DeviceOut.of(device, messaging.is_online(productKey, deviceName))


@router.patch("/devices/{productKey}/{deviceName}", response_model=DeviceOut, tags=["devices"])
async def patch_device(
    productKey: str,
    deviceName: str,
    body: StatusIn,
    registry: Reg,
    account: Account,
    messaging: Messaging,
) -> DeviceOut:
    """Enable or disable a device; a disabled device's live session is closed by the endpoint."""
    check_device_path(productKey, deviceName)
    device = registry.set_device_status(account, productKey, deviceName, body.status)
    return DeviceOut.of(device, messaging.is_online(productKey, deviceName))


def _payload(body: MessageIn) -> bytes:
    if body.payloadEncoding == "utf-8":
        return body.payload.encode("utf-8")
    if body.payloadEncoding == "base64":
        try:
            return base64.b64decode(body.payload, validate=True)
        except binascii.Error as exc:
            raise InvalidFieldError(f"payload is not valid base64: {exc}") from exc
    raise InvalidFieldError(f"payloadEncoding {body.payloadEncoding!r} is not one of utf-8, base64")


@router.post(
    "/devices/{productKey}/{deviceName}/messages", response_model=Delivered, tags=["devices"]
)
async def send_message(
    productKey: str,
    deviceName: str,
    body: MessageIn,
    registry: Reg,
    account: Account,
    messaging: Messaging,
) -> Delivered:
    """Publish a cloud-to-device message to the device's live MQTT session."""
    check_device_path(productKey, deviceName)
    registry.device(account, productKey, deviceName)
    if not body.topic or any(ch in body.topic for ch in "#+\x00"):
        raise InvalidFieldError(
            f"topic {body.topic!r} must be a non-empty topic name without wildcards (# +)"
        )
    if not topic_within_device_space(productKey, deviceName, body.topic):
        raise InvalidFieldError(
            f"topic {body.topic!r} is outside device {productKey}/{deviceName}'s topic space; "
            f"allowed: {device_topic_space(productKey, deviceName)}"
        )
    if body.qos not in (0, 1):
        raise InvalidFieldError(f"qos {body.qos} is not supported; use 0 or 1")
    payload = _payload(body)
    try:
        delivered = messaging.deliver(productKey, deviceName, body.topic, payload, body.qos)
    except ValueError as exc:  # the endpoint's InvalidTopicError / InvalidMessageError (size)
        raise InvalidFieldError(str(exc)) from exc
    if not delivered:
        raise DeviceOfflineError(f"device {productKey}/{deviceName} is not connected")
    return Delivered(delivered=True)


@router.get(
    "/devices/{productKey}/{deviceName}/messages",
    response_model=list[MessageOut],
    tags=["devices"],
)
async def recent_messages(
    productKey: str,
    deviceName: str,
    registry: Reg,
    account: Account,
    messaging: Messaging,
    limit: int = 100,
) -> list[MessageOut]:
    """The most recent messages the device published (newest last)."""
    check_device_path(productKey, deviceName)
    registry.device(account, productKey, deviceName)
    if not 1 <= limit <= MAX_RECENT:
        raise InvalidFieldError(f"limit {limit} must be 1..{MAX_RECENT}")
    out = []
    for msg in messaging.recent_messages(productKey, deviceName, limit):
        try:
            text, encoding = msg.payload.decode("utf-8"), "utf-8"
        except UnicodeDecodeError:
            text, encoding = base64.b64encode(msg.payload).decode("ascii"), "base64"
        out.append(
            MessageOut(
                topic=msg.topic,
                payload=text,
                payloadEncoding=encoding,
                qos=msg.qos,
                receivedAt=iso(msg.received_at),
            )
        )
    return out
