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

    # diagnostics
    def row_counts(self) -> dict[str, int]: ...
