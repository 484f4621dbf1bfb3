"""The renewal endpoints (docs/renewal.md, "HTTP API"): what the customer's signer calls.

The signer lists the requests waiting for its CA, and answers each with a certificate or a
refusal. Answers are checked and stored in the thread pool; the reply to the device is sent on
the event loop (the MQTT endpoint's thread), to its live session if it has one -- otherwise the
device gets an ``issued`` reply at its next CONNECT.
"""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, Field

from server_stub.api.routes import Account, Messaging
from server_stub.api.schemas import iso
from server_stub.errors import InvalidFieldError
from server_stub.registry.renewals import ExpiringDevice, Outgoing, Renewals
from server_stub.store.base import RenewalRecord

renewal_api = APIRouter(prefix="/api/v1")


def get_renewals(request: Request) -> Renewals:
    renewals: Renewals = request.app.state.renewals
    return renewals


Ren = Annotated[Renewals, Depends(get_renewals)]


class RenewalOut(BaseModel):
    requestId: str
    productKey: str
    deviceName: str
    oldCertSn: str
    csr: str = Field(description="the device's PKCS#10 request, PEM")
    requestedAt: str

    @classmethod
    def of(cls, r: RenewalRecord) -> RenewalOut:
        return cls(
            requestId=r.request_id,
            productKey=r.product_key,
            deviceName=r.device_name,
            oldCertSn=r.old_cert_sn,
            csr=r.csr_pem,
            requestedAt=iso(r.requested_at),
        )


class CertificateIn(BaseModel):
    certificate: str = Field(description="the issued device certificate (PEM, the leaf only)")


class RefusalIn(BaseModel):
    reason: str = Field(description="why the signer refuses; the device is told")


class RenewalAnswered(BaseModel):
    requestId: str
    status: str
    certSn: str | None = None
    delivered: bool = Field(description="the reply reached the device's live session now")


class ExpiringOut(BaseModel):
    productKey: str
    deviceName: str
    caSn: str
    certSn: str
    notAfter: str
    daysLeft: float

    @classmethod
    def of(cls, e: ExpiringDevice) -> ExpiringOut:
        return cls(
            productKey=e.row.product_key,
            deviceName=e.row.device_name,
            caSn=e.row.ca_sn,
            certSn=e.row.cert_sn,
            notAfter=iso(e.row.not_after),
            daysLeft=round(e.days_left, 2),
        )


def _deliver(messaging: Messaging, outgoing: Outgoing) -> bool:
    return messaging.deliver(
        outgoing.product_key, outgoing.device_name, outgoing.topic, outgoing.reply.to_payload(), 1
    )


@renewal_api.get(
    "/ca-certificates/{caSn}/renewals", response_model=list[RenewalOut], tags=["renewals"]
)
def list_renewals(
    caSn: str,
    renewals: Ren,
    account: Account,
    status: Annotated[
        str, Query(description="only 'pending' (waiting for the signer)")
    ] = "pending",
    limit: Annotated[int, Query(description="at most this many, oldest first (1..100)")] = 50,
) -> list[RenewalOut]:
    """Renewal requests waiting for this CA's signer, oldest first."""
    if status != "pending":
        raise InvalidFieldError(f"status {status!r}: only 'pending' requests can be listed")
    return [RenewalOut.of(r) for r in renewals.pending(account, caSn, limit)]


@renewal_api.post(
    "/ca-certificates/{caSn}/renewals/{requestId}/certificate",
    response_model=RenewalAnswered,
    tags=["renewals"],
)
async def post_certificate(
    caSn: str,
    requestId: str,
    body: CertificateIn,
    renewals: Ren,
    account: Account,
    messaging: Messaging,
) -> RenewalAnswered:
    """The signer's certificate: checked (CA key, CSR key, SN unique), then associated with the
    device beside its old SN, in one transaction; the device is sent it."""
    _record, outgoing = await asyncio.to_thread(
        renewals.post_certificate, account, caSn, requestId, body.certificate
    )
    return RenewalAnswered(
        requestId=requestId,
        status="issued",
        certSn=outgoing.reply.cert_sn,
        delivered=_deliver(messaging, outgoing),
    )


@renewal_api.post(
    "/ca-certificates/{caSn}/renewals/{requestId}/refusal",
    response_model=RenewalAnswered,
    tags=["renewals"],
)
async def post_refusal(
    caSn: str,
    requestId: str,
    body: RefusalIn,
    renewals: Ren,
    account: Account,
    messaging: Messaging,
) -> RenewalAnswered:
    """The signer refuses: the device keeps its certificate and is told why."""
    _record, outgoing = await asyncio.to_thread(
        renewals.refuse, account, caSn, requestId, body.reason
    )
    return RenewalAnswered(
        requestId=requestId, status="refused", delivered=_deliver(messaging, outgoing)
    )


async def expiring_devices(
    renewals: Renewals, account: Account, days: float, limit: int
) -> list[ExpiringOut]:
    """``GET /devices?expiringWithinDays=N`` (answered by the devices route)."""
    rows = await asyncio.to_thread(renewals.expiring, account, days, limit)
    return [ExpiringOut.of(e) for e in rows]
