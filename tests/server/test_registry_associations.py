"""Association rules that need the account's data, and all-or-nothing saving."""

from __future__ import annotations

import re

import pytest

from firmware_helpers.pki import CertifiedKey, create_ca
from server_stub.errors import (
    AssociationRejectedError,
    InvalidFieldError,
    NotFoundError,
    ProductNotEligibleError,
)
from server_stub.registry import Registry
from server_stub.store import SqliteStore
from server_stub.store.base import AccountRecord, CaRecord, ProductRecord
from tests.server.conftest import csv_bytes, register


def _rows(pk: str, n: int, start: int = 1) -> list[tuple[str, str, str]]:
    return [(pk, f"device-{i:05d}", format(0x1000 + i, "X")) for i in range(start, start + n)]


def test_valid_file_creates_devices_and_associations(
    registry: Registry, account: AccountRecord, product: ProductRecord, registered_ca: CaRecord
) -> None:
    g0 = registry.trust_generation
    n = registry.associate(account, registered_ca.ca_sn, csv_bytes(_rows(product.product_key, 3)))
    assert n == 3
    assert registry.trust_generation > g0
    listed = registry.list_associations(account, registered_ca.ca_sn)
    assert [(a.device_name, a.cert_sn) for a in listed] == [
        ("device-00001", "1001"),
        ("device-00002", "1002"),
        ("device-00003", "1003"),
    ]
    device = registry.device(account, product.product_key, "device-00002")
    assert (device.status, device.ca_sn, device.cert_sn) == ("enabled", registered_ca.ca_sn, "1002")


def test_uploading_the_same_file_twice_is_harmless(
    registry: Registry,
    store: SqliteStore,
    account: AccountRecord,
    product: ProductRecord,
    registered_ca: CaRecord,
) -> None:
    data = csv_bytes(_rows(product.product_key, 3))
    registry.associate(account, registered_ca.ca_sn, data)
    before = store.row_counts()
    assert registry.associate(account, registered_ca.ca_sn, data) == 3
    assert store.row_counts() == before


def test_existing_unbound_device_is_reused(
    registry: Registry,
    store: SqliteStore,
    account: AccountRecord,
    product: ProductRecord,
    registered_ca: CaRecord,
) -> None:
    pk = product.product_key
    registry.associate(account, registered_ca.ca_sn, csv_bytes([(pk, "device-00001", "aa")]))
    registry.delete_association(account, registered_ca.ca_sn, "AA")
    assert registry.device(account, pk, "device-00001").cert_sn is None
    registry.associate(account, registered_ca.ca_sn, csv_bytes([(pk, "device-00001", "bb")]))
    assert store.row_counts()["devices"] == 1
    assert registry.device(account, pk, "device-00001").cert_sn == "bb"


def test_product_must_exist_in_this_account(
    registry: Registry, account: AccountRecord, registered_ca: CaRecord
) -> None:
    other, _ = registry.create_account("other")
    theirs = registry.create_product(other, name="theirs")
    for pk in ("NoSuchProd1", theirs.product_key):
        with pytest.raises(
            ProductNotEligibleError,
            match=f"product '{pk}' .ProductKey of the file. does not exist in this account",
        ):
            registry.associate(account, registered_ca.ca_sn, csv_bytes([(pk, "dev1", "1")]))


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (
            {"auth_type": "secret", "private_ca": False},
            "authType is secret (needs x509); privateCa is false (needs true)",
        ),
        ({"private_ca": False}, "privateCa is false (needs true)"),
        ({"network": "lorawan"}, "network is lorawan (needs mqtt)"),
    ],
)
def test_product_must_be_x509_private_ca_mqtt(
    registry: Registry,
    store: SqliteStore,
    account: AccountRecord,
    registered_ca: CaRecord,
    settings: dict[str, object],
    message: str,
) -> None:
    p = registry.create_product(account, name="wrong", **settings)  # type: ignore[arg-type]
    before = store.row_counts()
    with pytest.raises(
        ProductNotEligibleError,
        match=re.escape(f"product {p.product_key} cannot take private-CA devices: {message}"),
    ):
        registry.associate(account, registered_ca.ca_sn, csv_bytes([(p.product_key, "dev1", "1")]))
    assert store.row_counts() == before


def test_sn_unique_across_the_accounts_cas(
    registry: Registry, account: AccountRecord, product: ProductRecord, registered_ca: CaRecord
) -> None:
    pk = product.product_key
    second = register(registry, account, create_ca("Second CA"), name="second_ca")
    registry.associate(account, registered_ca.ca_sn, csv_bytes([(pk, "dev-a", "00ABC")]))
    with pytest.raises(AssociationRejectedError) as exc:
        registry.associate(account, second.ca_sn, csv_bytes([(pk, "dev-b", "abc")]))
    assert [(e.row, e.message) for e in exc.value.rows] == [
        (
            1,
            f"CertSN abc is already bound to device {pk}/dev-a (CA {registered_ca.ca_sn}); an SN "
            "is unique among all device certificates of the account",
        )
    ]


def test_the_same_sn_is_fine_in_another_account(
    registry: Registry, account: AccountRecord, product: ProductRecord, registered_ca: CaRecord
) -> None:
    registry.associate(
        account, registered_ca.ca_sn, csv_bytes([(product.product_key, "dev-a", "1")])
    )
    other, _ = registry.create_account("other")
    theirs = registry.create_product(other, name="theirs")
    their_ca = register(registry, other, create_ca("Their CA"), name="their_ca")
    assert (
        registry.associate(other, their_ca.ca_sn, csv_bytes([(theirs.product_key, "dev-a", "1")]))
        == 1
    )


def test_bound_device_and_bound_sn_are_row_errors_and_nothing_is_saved(
    registry: Registry,
    store: SqliteStore,
    account: AccountRecord,
    product: ProductRecord,
    registered_ca: CaRecord,
) -> None:
    pk = product.product_key
    registry.associate(
        account,
        registered_ca.ca_sn,
        csv_bytes([(pk, "dev-a", "a"), (pk, "dev-b", "b"), (pk, "dev-c", "e")]),
    )
    before = store.row_counts()
    generation = registry.trust_generation
    data = csv_bytes(
        [
            (pk, "dev-new1", "c"),  # fine on its own
            (pk, "dev-a", "d"),  # device already bound to SN a
            (pk, "dev-new2", "b"),  # SN b already bound to dev-b
            (pk, "dev-c", "E"),  # exactly an existing association: fine
        ]
    )
    with pytest.raises(
        AssociationRejectedError, match="2 of 4 rows are invalid; nothing was saved"
    ) as exc:
        registry.associate(account, registered_ca.ca_sn, data)
    assert {e.row: e.message for e in exc.value.rows} == {
        2: f"device {pk}/dev-a is already bound to CertSN a; remove that association first",
        3: f"CertSN b is already bound to device {pk}/dev-b (CA {registered_ca.ca_sn}); an SN is "
        "unique among all device certificates of the account",
    }
    assert store.row_counts() == before
    assert registry.trust_generation == generation
    with pytest.raises(NotFoundError):
        registry.device(account, pk, "dev-new1")


def test_row_errors_from_parsing_and_from_the_store_never_save(
    registry: Registry,
    store: SqliteStore,
    account: AccountRecord,
    product: ProductRecord,
    registered_ca: CaRecord,
) -> None:
    before = store.row_counts()
    rows = _rows(product.product_key, 500)
    rows[250] = (product.product_key, "bad name", "1")
    with pytest.raises(AssociationRejectedError) as exc:
        registry.associate(account, registered_ca.ca_sn, csv_bytes(rows))
    assert [e.row for e in exc.value.rows] == [251]
    assert store.row_counts() == before


def test_unknown_ca_and_association(
    registry: Registry, account: AccountRecord, product: ProductRecord, registered_ca: CaRecord
) -> None:
    with pytest.raises(NotFoundError, match="no CA certificate with caSn abc123 in this account"):
        registry.associate(account, "abc123", csv_bytes([(product.product_key, "dev1", "1")]))
    with pytest.raises(
        NotFoundError, match=f"no association with CertSN ff under CA {registered_ca.ca_sn}"
    ):
        registry.delete_association(account, registered_ca.ca_sn, "00FF")
    with pytest.raises(NotFoundError, match="not a hexadecimal number"):
        registry.delete_association(account, registered_ca.ca_sn, "zz")


def test_deleting_a_ca_removes_its_associations_but_keeps_devices(
    registry: Registry,
    store: SqliteStore,
    account: AccountRecord,
    product: ProductRecord,
    registered_ca: CaRecord,
) -> None:
    registry.associate(account, registered_ca.ca_sn, csv_bytes(_rows(product.product_key, 2)))
    registry.delete_ca(account, registered_ca.ca_sn)
    counts = store.row_counts()
    assert (counts["associations"], counts["devices"], counts["ca_certificates"]) == (0, 2, 0)


def test_device_status_rules(
    registry: Registry, account: AccountRecord, product: ProductRecord, registered_ca: CaRecord
) -> None:
    pk = product.product_key
    registry.associate(account, registered_ca.ca_sn, csv_bytes([(pk, "dev-a", "1")]))
    g0 = registry.trust_generation
    assert registry.set_device_status(account, pk, "dev-a", "disabled").status == "disabled"
    assert registry.trust_generation > g0
    with pytest.raises(
        InvalidFieldError, match="device status 'off' is not one of enabled, disabled"
    ):
        registry.set_device_status(account, pk, "dev-a", "off")
    other, _ = registry.create_account("other")
    with pytest.raises(NotFoundError, match=f"no device {pk}/dev-a in this account"):
        registry.set_device_status(other, pk, "dev-a", "enabled")
    assert registry.device(account, pk, "dev-a").status == "disabled"


def test_other_accounts_cannot_use_or_see_a_ca(
    registry: Registry,
    account: AccountRecord,
    product: ProductRecord,
    registered_ca: CaRecord,
    test_ca: CertifiedKey,
) -> None:
    registry.associate(
        account, registered_ca.ca_sn, csv_bytes([(product.product_key, "dev-a", "1")])
    )
    other, _ = registry.create_account("other")
    theirs = registry.create_product(other, name="theirs")
    with pytest.raises(NotFoundError):
        registry.associate(
            other, registered_ca.ca_sn, csv_bytes([(theirs.product_key, "dev-b", "2")])
        )
    with pytest.raises(NotFoundError):
        registry.list_associations(other, registered_ca.ca_sn)
    with pytest.raises(NotFoundError):
        registry.delete_association(other, registered_ca.ca_sn, "1")
    with pytest.raises(NotFoundError):
        registry.device(other, product.product_key, "dev-a")


def test_format_errors_and_binding_errors_are_reported_together(
    registry: Registry,
    store: SqliteStore,
    account: AccountRecord,
    product: ProductRecord,
    registered_ca: CaRecord,
) -> None:
    pk = product.product_key
    registry.associate(account, registered_ca.ca_sn, csv_bytes([(pk, "dev-a", "a")]))
    before = store.row_counts()
    with pytest.raises(AssociationRejectedError) as exc:
        registry.associate(
            account,
            registered_ca.ca_sn,
            csv_bytes([(pk, "dev-b", "a"), (pk, "bad!", "b"), (pk, "dev-c", "c")]),
        )
    assert [e.row for e in exc.value.rows] == [1, 2]
    assert exc.value.message == "2 of 3 rows are invalid; nothing was saved"
    assert store.row_counts() == before
