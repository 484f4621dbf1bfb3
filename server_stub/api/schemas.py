"""Request and response bodies of the HTTP API (camelCase, as the platform's API uses)."""

from __future__ import annotations

from datetime import UTC, datetime

from pydantic import BaseModel, Field

from server_stub.store.base import AssociationRecord, CaRecord, DeviceRecord, ProductRecord


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class RegistrationCode(BaseModel):
    registrationCode: str


class ProductIn(BaseModel):
    name: str
    authType: str = Field("x509", description="x509 or secret")
    privateCa: bool = Field(True, description="use private CA certificates (x509 only)")
    network: str = Field("mqtt", description="mqtt or lorawan")


class ProductOut(BaseModel):
    productKey: str
    name: str
    authType: str
    privateCa: bool
    network: str
    createdAt: str

    @classmethod
    def of(cls, p: ProductRecord) -> ProductOut:
        return cls(
            productKey=p.product_key,
            name=p.name,
            authType=p.auth_type,
            privateCa=p.private_ca,
            network=p.network,
            createdAt=iso(p.created_at),
        )


class CaOut(BaseModel):
    caSn: str
    name: str
    subject: str
    status: str
    notBefore: str
    notAfter: str
    fingerprintSha256: str
    createdAt: str

    @classmethod
    def of(cls, c: CaRecord) -> CaOut:
        return cls(
            caSn=c.ca_sn,
            name=c.name,
            subject=c.subject,
            status=c.status,
            notBefore=iso(c.not_before),
            notAfter=iso(c.not_after),
            fingerprintSha256=c.fingerprint,
            createdAt=iso(c.created_at),
        )


class StatusIn(BaseModel):
    status: str


class Associated(BaseModel):
    associated: int


class AssociationOut(BaseModel):
    caSn: str
    certSn: str
    productKey: str
    deviceName: str
    createdAt: str
    notAfter: str | None = Field(
        None, description="the certificate's expiry as the server last saw it (null: not seen)"
    )
    retireAt: str | None = Field(
        None,
        description="an old SN after a renewal: accepted until then, or until the device's "
        "first connection with its new certificate (null: the device's current SN)",
    )

    @classmethod
    def of(cls, a: AssociationRecord) -> AssociationOut:
        return cls(
            caSn=a.ca_sn,
            certSn=a.cert_sn,
            productKey=a.product_key,
            deviceName=a.device_name,
            createdAt=iso(a.created_at),
            notAfter=None if a.not_after is None else iso(a.not_after),
            retireAt=None if a.retire_at is None else iso(a.retire_at),
        )


class DeviceOut(BaseModel):
    productKey: str
    deviceName: str
    status: str
    online: bool
    caSn: str | None
    certSn: str | None
    createdAt: str

    @classmethod
    def of(cls, d: DeviceRecord, online: bool) -> DeviceOut:
        return cls(
            productKey=d.product_key,
            deviceName=d.device_name,
            status=d.status,
            online=online,
            caSn=d.ca_sn,
            certSn=d.cert_sn,
            createdAt=iso(d.created_at),
        )


class EndpointOut(BaseModel):
    mqtt: str = Field(description="mqtts://HOST:PORT of the device endpoint")
    serverCa: str = Field(description="PEM of the CA devices verify the endpoint with")


class MessageIn(BaseModel):
    topic: str
    payload: str = ""
    payloadEncoding: str = Field("utf-8", description="utf-8 or base64")
    qos: int = 0


class Delivered(BaseModel):
    delivered: bool


class MessageOut(BaseModel):
    topic: str
    payload: str
    payloadEncoding: str
    qos: int
    receivedAt: str
