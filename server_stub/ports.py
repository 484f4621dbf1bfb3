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


@dataclass(frozen=True, slots=True)
class IssuingCa:
    """The one registered CA whose *key* verifies a device certificate's signature.

    Found by :meth:`TrustIndex.attribute` during the TLS handshake and kept by the connection,
    so that :meth:`DeviceDirectory.authenticate` needs no second signature check.
    """

    ca_id: int
    account_id: int
    ca_sn: str
    active: bool


@dataclass(frozen=True, slots=True)
class IssuerRefused:
    """No registered CA key verifies the certificate, or more than one does (``ambiguous``)."""

    reason: str
    ambiguous: bool = False


Attribution = IssuingCa | IssuerRefused


class TrustIndex(Protocol):
    """An immutable snapshot of every registered CA (all accounts, active or not).

    The MQTT endpoint takes one when it accepts a connection and attributes the device
    certificate with it inside the handshake: the subject name only narrows the candidates, the
    decision is by key, and exactly one registered key must verify the signature.
    """

    def attribute(self, leaf: x509.Certificate) -> Attribution: ...


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
        """Every active registered CA certificate, of all accounts (informational: the TLS
        layer decides with :meth:`trust_index`, never with a name-based trust store)."""
        ...

    def trust_index(self) -> TrustIndex:
        """The current snapshot of registered CAs; cheap (rebuilt only when the generation moves)."""
        ...

    def authenticate(self, leaf: x509.Certificate, issuer: IssuingCa | None = None) -> AuthDecision:
        """Identify a device by the registered CA whose *key* verifies ``leaf`` plus its SN.

        ``issuer``: the attribution the TLS handshake already made with :meth:`trust_index`;
        given, the signature is not verified again. Without it the directory attributes itself.
        """
        ...

    def is_current(self, device: AuthenticatedDevice) -> bool:
        """Whether an earlier acceptance still holds (CA active, association, device enabled)."""
        ...


class RenewalHandler(Protocol):
    """What the MQTT endpoint tells the renewal desk (docs/renewal.md). Called on the event
    loop; the handler does its registry work off the loop and answers through DeviceMessaging."""

    def on_publish(self, device: AuthenticatedDevice, topic: str, payload: bytes) -> None:
        """A PUBLISH the session may make (inside its own topic space); ignores non-renewal ones."""
        ...

    def on_connected(self, device: AuthenticatedDevice, not_after: float) -> None:
        """A CONNECT was accepted with a certificate valid until ``not_after`` (POSIX time)."""
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
