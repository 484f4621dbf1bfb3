"""The storage interface the registry is written against, and the records it returns.

The registry holds the rules; a store only keeps rows. The SQLite implementation in
:mod:`server_stub.store.sqlite` is the reference; a server database can replace it by
implementing :class:`Store` (every method is a plain query or insert, and :meth:`Store.atomic`
is an ordinary write transaction).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class AccountRecord:
    id: int
    name: str
    registration_code: str
    created_at: float


@dataclass(frozen=True, slots=True)
class ProductRecord:
    id: int
    account_id: int
    product_key: str
    name: str
    auth_type: str
    private_ca: bool
    network: str
    created_at: float


@dataclass(frozen=True, slots=True)
class CaRecord:
    id: int
    account_id: int
    ca_sn: str
    name: str
    subject: str
    fingerprint: str
    der: bytes
    status: str
    not_before: float
    not_after: float
    created_at: float


@dataclass(frozen=True, slots=True)
class DeviceRecord:
    id: int
    account_id: int
    product_key: str
    device_name: str
    status: str
    created_at: float
    ca_sn: str | None
    """The CA of the device's certificate association, if it has one."""
    cert_sn: str | None


@dataclass(frozen=True, slots=True)
class AssociationRecord:
    ca_sn: str
    cert_sn: str
    product_key: str
    device_name: str
    created_at: float
    not_after: float | None = None
    """The certificate's expiry as last seen (authentication or issuance); None: not seen yet."""
    retire_at: float | None = None
    """Set on an old SN after a renewal: accepted until then (or the new SN's first CONNECT)."""


@dataclass(frozen=True, slots=True)
class SnBinding:
    """Where an SN is already bound in an account."""

    cert_sn: str
    ca_id: int
    ca_sn: str
    product_key: str
    device_name: str


@dataclass(frozen=True, slots=True)
class DeviceBinding:
    """An existing device of a product and the SN it is bound to (if any)."""

    device_id: int
    device_name: str
    cert_sn: str | None
    ca_id: int | None


@dataclass(frozen=True, slots=True)
class AuthRow:
    """What authenticating one device certificate needs, from one indexed lookup."""

    account_id: int
    product_key: str
    device_name: str
    device_status: str
    auth_type: str
    private_ca: bool
    network: str


@dataclass(frozen=True, slots=True)
class DeviceQuery:
    """One page of an account's device list, filtered in the store (the console's Devices page).

    ``text`` matches part of the ProductKey, DeviceName or certificate SN; ``keys`` (each
    ``ProductKey/DeviceName``) keeps only those devices, or with ``exclude_keys`` all others.
    """

    text: str | None = None
    product_key: str | None = None
    status: str | None = None
    keys: tuple[str, ...] | None = None
    exclude_keys: bool = False
    limit: int = 50
    offset: int = 0


@dataclass(frozen=True, slots=True)
class DeviceListRow:
    product_key: str
    device_name: str
    status: str
    created_at: float
    cert_sn: str | None
    ca_sn: str | None
    ca_name: str | None
    ca_not_after: float | None
    cert_not_after: float | None = None
    """The device certificate's notAfter as the server last saw it (schema 3)."""


@dataclass(frozen=True, slots=True)
class AssociationState:
    """One association as the renewal flow sees it."""

    id: int
    device_id: int
    cert_sn: str
    not_after: float | None
    retire_at: float | None


@dataclass(frozen=True, slots=True)
class ConnectState:
    """What a CONNECT with one SN means for renewal, from one indexed query."""

    association_id: int
    device_id: int
    not_after: float | None
    retire_at: float | None
    has_retiring: bool
    """The device holds an old SN being retired."""
    has_issued: bool
    """A certificate was issued for the device and not yet used by it."""


@dataclass(frozen=True, slots=True)
class RenewalRecord:
    """One renewal request (see :mod:`server_stub.registry.renewals`)."""

    id: int
    request_id: str
    account_id: int
    ca_id: int
    ca_sn: str
    device_id: int
    product_key: str
    device_name: str
    device_request_id: str
    old_cert_sn: str
    csr_pem: str
    status: str
    reason: str
    cert_pem: str | None
    cert_sn: str | None
    requested_at: float
    answered_at: float | None


@dataclass(frozen=True, slots=True)
class NewRenewal:
    """What the MQTT side hands the store to queue (the store adds id and status)."""

    request_id: str
    account_id: int
    ca_id: int
    device_id: int
    device_request_id: str
    old_cert_sn: str
    csr_pem: str
    requested_at: float


@dataclass(frozen=True, slots=True)
class ExpiringRow:
    product_key: str
    device_name: str
    ca_sn: str
    cert_sn: str
    not_after: float


class Store(Protocol):
    """Rows of accounts, products, CA certificates, devices and associations.

    Methods may be called from several threads. Calls made inside ``with store.atomic():``
    on one thread form one transaction, committed when the block ends and rolled back if it
    raises.
    """

    def atomic(self) -> AbstractContextManager[None]: ...

    def close(self) -> None: ...

    # accounts
    def insert_account(
        self, name: str, token_hash: str, registration_code: str, now: float
    ) -> AccountRecord: ...
    def account_by_name(self, name: str) -> AccountRecord | None: ...
    def account_by_token_hash(self, token_hash: str) -> tuple[AccountRecord, str] | None: ...
    def set_account_token(self, account_id: int, token_hash: str) -> None: ...
    def set_registration_code(self, account_id: int, code: str) -> None: ...

    # products
    def product_key_exists(self, product_key: str) -> bool: ...
    def insert_product(
        self,
        account_id: int,
        product_key: str,
        name: str,
        auth_type: str,
        private_ca: bool,
        network: str,
        now: float,
    ) -> ProductRecord: ...
    def product(self, account_id: int, product_key: str) -> ProductRecord | None: ...
    def list_products(self, account_id: int) -> list[ProductRecord]: ...

    # CA certificates
    def count_cas(self, account_id: int) -> int: ...
    def ca_by_fingerprint(self, fingerprint: str) -> CaRecord | None: ...
    def ca(self, account_id: int, ca_sn: str) -> CaRecord | None: ...
    def list_cas(self, account_id: int) -> list[CaRecord]: ...
    def all_cas(self) -> list[CaRecord]:
        """Every CA of every account, active or not (the MQTT trust index is built from it)."""
        ...

    def insert_ca(
        self,
        account_id: int,
        ca_sn: str,
        name: str,
        subject: str,
        fingerprint: str,
        der: bytes,
        not_before: float,
        not_after: float,
        now: float,
    ) -> CaRecord: ...
    def set_ca_status(self, ca_id: int, status: str) -> None: ...
    def delete_ca(self, ca_id: int) -> None: ...

    # devices and associations
    def sn_bindings(self, account_id: int, cert_sns: Sequence[str]) -> dict[str, SnBinding]: ...
    def device_bindings(
        self, product_id: int, device_names: Sequence[str]
    ) -> dict[str, DeviceBinding]: ...
    def insert_devices(
        self, account_id: int, product_id: int, device_names: Iterable[str], now: float
    ) -> dict[str, int]: ...
    def insert_associations(
        self, account_id: int, ca_id: int, pairs: Iterable[tuple[int, str]], now: float
    ) -> int: ...
    def list_associations(self, ca_id: int) -> list[AssociationRecord]: ...
    def delete_association(self, ca_id: int, cert_sn: str) -> bool: ...
    def device(
        self, account_id: int, product_key: str, device_name: str
    ) -> DeviceRecord | None: ...
    def set_device_status(self, device_id: int, status: str) -> None: ...
    def list_devices(
        self, account_id: int, query: DeviceQuery
    ) -> tuple[int, list[DeviceListRow]]: ...

    # the MQTT hot path
    def auth_row(self, ca_id: int, cert_sn: str) -> AuthRow | None: ...

    # certificate renewal (schema 3)
    def association_state(self, ca_id: int, cert_sn: str) -> AssociationState | None: ...
    def record_not_after(self, association_id: int, not_after: float) -> None: ...
    def open_renewals(self, account_id: int) -> int:
        """Pending requests of the account (the per-account bound)."""
        ...

    def last_renewal_at(self, device_id: int) -> float | None: ...
    def insert_renewal(
        self, new: NewRenewal, refused: str | None = None
    ) -> tuple[RenewalRecord, int]:
        """Queue ``new``; an unanswered request of the same device is superseded (count).
        With ``refused`` (the reason) the request is only recorded, closed: it counts against
        the device's request rate. A device keeps a few closed requests, the oldest go."""
        ...

    def renewal(self, account_id: int, request_id: str) -> RenewalRecord | None: ...
    def pending_renewals(self, ca_id: int, limit: int) -> list[RenewalRecord]: ...
    def refuse_renewal(self, renewal_id: int, reason: str, now: float) -> bool:
        """Mark a pending request refused; False when it was no longer pending."""
        ...

    def issue_renewal(
        self,
        renewal: RenewalRecord,
        cert_sn: str,
        cert_pem: str,
        not_after: float,
        retire_at: float,
        now: float,
    ) -> None:
        """In ONE transaction: the request becomes ``issued``, the new SN the device's current
        association, its old SN retires at ``retire_at`` and an earlier issued SN the device
        never used is dropped. Raises ConflictError when the request is no longer pending or the
        SN is taken in the account."""
        ...

    def undelivered_renewals(self, device_id: int) -> list[RenewalRecord]:
        """Issued requests whose certificate the device has not connected with yet."""
        ...

    def connect_state(self, ca_id: int, cert_sn: str) -> ConnectState | None:
        """The association of ``cert_sn`` and its device's renewal state (the connect path)."""
        ...

    def complete_change_over(self, device_id: int, association_id: int, now: float) -> int:
        """The device connected with its current association: retire its other SNs now and
        mark the request that issued it completed. Returns the SNs retired."""
        ...

    def retire_expired(self, now: float) -> int:
        """Delete associations whose grace period ended; returns how many."""
        ...

    def expiring(self, account_id: int, before: float, limit: int) -> list[ExpiringRow]:
        """Current associations whose known notAfter is before ``before``, soonest first."""
        ...

    # diagnostics
    def row_counts(self) -> dict[str, int]: ...
