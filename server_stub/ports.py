"""The contracts between the two halves of the reference server.

The registry (``server_stub.registry``) implements :class:`DeviceDirectory`; the MQTT endpoint
(``server_stub.mqtt``) uses it to decide whom to trust and who a device is. The MQTT endpoint
implements :class:`DeviceMessaging`; the HTTP API uses it to deliver cloud-to-device messages and
to report presence. Both run on one asyncio event loop in one process (``iotx509 server run``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from cryptography import x509


@dataclass(frozen=True, slots=True)
class AuthenticatedDevice:
    """A device certificate that the registry accepted."""

    account_id: int
    product_key: str
    device_name: str
    ca_sn: str
    cert_sn: str


@dataclass(frozen=True, slots=True)
class AuthRefused:
    """Why a device certificate was refused: one line for the server log (never sent)."""

    reason: str
    cert_sn: str
    issuer: str


AuthDecision = AuthenticatedDevice | AuthRefused


class DeviceDirectory(Protocol):
    """What the MQTT endpoint asks the registry. Calls are synchronous and fast (hot path)."""

    @property
    def trust_generation(self) -> int:
        """A number that changes whenever the active CAs, associations or device states change.

        The MQTT endpoint polls it (at least twice a second) to rebuild its TLS trust store and
        to re-check live sessions with :meth:`is_current`.
        """
        ...

    def active_ca_certificates(self) -> Sequence[x509.Certificate]:
        """Every active registered CA certificate, of all accounts."""
        ...

    def authenticate(self, leaf: x509.Certificate) -> AuthDecision:
        """Identify a device by the registered CA whose *key* verifies ``leaf`` plus its SN."""
        ...

    def is_current(self, device: AuthenticatedDevice) -> bool:
        """Whether an earlier acceptance still holds (CA active, association, device enabled)."""
        ...


@dataclass(frozen=True, slots=True)
class DeviceMessage:
    topic: str
    payload: bytes
    qos: int
    received_at: float


class DeviceMessaging(Protocol):
    """What the HTTP API asks the MQTT endpoint. Called on the event loop thread."""

    def is_online(self, product_key: str, device_name: str) -> bool: ...

    def deliver(
        self, product_key: str, device_name: str, topic: str, payload: bytes, qos: int
    ) -> bool:
        """Send a message to the device's session; False when the device is not connected."""
        ...

    def recent_messages(
        self, product_key: str, device_name: str, limit: int = 100
    ) -> list[DeviceMessage]:
        """The most recent messages the device published (bounded, newest last)."""
        ...
