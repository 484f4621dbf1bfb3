"""A data directory written by an older server is upgraded in place, its data kept; a newer one is
refused. The older files are real SQLite files, written here with the schema as it was shipped."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from server_stub.errors import DataStoreError, SchemaVersionError
from server_stub.store import SqliteStore
from server_stub.store.migrations import prepare, schema_version
from server_stub.store.sqlite import MIGRATIONS, SCHEMA, SCHEMA_VERSION

#: The schema of version 1 exactly as the first release wrote it (commit 3a6b075).
SCHEMA_V1 = """
CREATE TABLE IF NOT EXISTS accounts (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    token_hash TEXT NOT NULL UNIQUE,
    registration_code TEXT NOT NULL,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS products (
    id INTEGER PRIMARY KEY,
    account_id INTEGER NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    product_key TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL,
    auth_type TEXT NOT NULL,
    private_ca INTEGER NOT NULL,
    network TEXT NOT NULL,
    created_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS products_account ON products(account_id);
CREATE TABLE IF NOT EXISTS ca_certificates (
    id INTEGER PRIMARY KEY,
    account_id INTEGER NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    ca_sn TEXT NOT NULL,
    name TEXT NOT NULL,
    subject TEXT NOT NULL,
    fingerprint TEXT NOT NULL UNIQUE,
    der BLOB NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('active', 'inactive')),
    not_before REAL NOT NULL,
    not_after REAL NOT NULL,
    created_at REAL NOT NULL,
    UNIQUE (account_id, ca_sn)
);
CREATE TABLE IF NOT EXISTS devices (
    id INTEGER PRIMARY KEY,
    account_id INTEGER NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    product_id INTEGER NOT NULL REFERENCES products(id) ON DELETE CASCADE,
    device_name TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('enabled', 'disabled')),
    created_at REAL NOT NULL,
    UNIQUE (product_id, device_name)
);
CREATE TABLE IF NOT EXISTS associations (
    id INTEGER PRIMARY KEY,
    account_id INTEGER NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    ca_id INTEGER NOT NULL REFERENCES ca_certificates(id) ON DELETE CASCADE,
    device_id INTEGER NOT NULL UNIQUE REFERENCES devices(id) ON DELETE CASCADE,
    cert_sn TEXT NOT NULL,
    created_at REAL NOT NULL,
    UNIQUE (account_id, cert_sn)
);
CREATE INDEX IF NOT EXISTS associations_ca_sn ON associations(ca_id, cert_sn);
"""


def _write_v1(path: Path) -> None:
    """A version-1 registry with one account's product, CA, device and association."""
    conn = sqlite3.connect(path)
    conn.executescript(SCHEMA_V1)
    conn.executescript("""
        INSERT INTO accounts VALUES (1, 'alice', 'hash-a', 'code-a', 1.0);
        INSERT INTO products VALUES (1, 1, 'a1Product00', 'meters', 'X509', 1, 'MQTT', 2.0);
        INSERT INTO ca_certificates
            VALUES (1, 1, '1a2b', 'alice_ca', 'CN=Alice CA', 'fp-1', x'3082', 'active', 0, 9e9, 3.0);
        INSERT INTO devices VALUES (1, 1, 1, 'meter-1', 'enabled', 4.0);
        INSERT INTO associations VALUES (1, 1, 1, 1, '0abc', 5.0);
    """)
    conn.execute("PRAGMA user_version = 1")
    conn.commit()
    conn.close()


def _version_and_indexes(path: Path) -> tuple[int, set[str]]:
    conn = sqlite3.connect(path)
    try:
        names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='index'")}
        return schema_version(conn), names
    finally:
        conn.close()


def test_a_version_1_file_is_migrated_in_place_and_keeps_its_data(tmp_path: Path) -> None:
    path = tmp_path / "registry.sqlite3"
    _write_v1(path)
    assert _version_and_indexes(path) == (
        1,
        {
            "products_account",
            "associations_ca_sn",
            "sqlite_autoindex_accounts_1",
            "sqlite_autoindex_accounts_2",
            "sqlite_autoindex_products_1",
            "sqlite_autoindex_ca_certificates_1",
            "sqlite_autoindex_ca_certificates_2",
            "sqlite_autoindex_devices_1",
            "sqlite_autoindex_associations_1",
            "sqlite_autoindex_associations_2",
        },
    )
    store = SqliteStore(path)
    try:
        account, _ = store.account_by_token_hash("hash-a") or (None, None)
        assert account is not None and account.name == "alice"
        assert [p.product_key for p in store.list_products(1)] == ["a1Product00"]
        assert [c.name for c in store.list_cas(1)] == ["alice_ca"]
        assert store.device(1, "a1Product00", "meter-1") is not None
        assert [a.cert_sn for a in store.list_associations(1)] == ["0abc"]
    finally:
        store.close()
    version, indexes = _version_and_indexes(path)
    assert version == SCHEMA_VERSION == 3 and "devices_account" in indexes
    assert "associations_device_current" in indexes


def test_a_new_file_gets_the_current_schema_and_a_current_one_is_left_alone(
    tmp_path: Path,
) -> None:
    path = tmp_path / "registry.sqlite3"
    SqliteStore(path).close()
    assert _version_and_indexes(path)[0] == SCHEMA_VERSION
    conn = sqlite3.connect(path)
    conn.execute("INSERT INTO accounts VALUES (7, 'bob', 'hash-b', 'code-b', 1.0)")
    conn.commit()
    conn.close()
    store = SqliteStore(path)
    try:
        assert store.account_by_name("bob") is not None
    finally:
        store.close()


def test_a_newer_file_is_refused_naming_both_versions_and_left_unchanged(tmp_path: Path) -> None:
    path = tmp_path / "registry.sqlite3"
    _write_v1(path)
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 5}")
    conn.commit()
    conn.close()
    with pytest.raises(SchemaVersionError) as caught:
        SqliteStore(path)
    message = str(caught.value)
    assert f"schema version {SCHEMA_VERSION + 5}" in message
    assert f"newer than version {SCHEMA_VERSION}" in message and str(path) in message
    assert (caught.value.found, caught.value.supported) == (SCHEMA_VERSION + 5, SCHEMA_VERSION)
    assert _version_and_indexes(path)[0] == SCHEMA_VERSION + 5
    assert "devices_account" not in _version_and_indexes(path)[1]  # nothing was written


def test_a_file_with_tables_but_no_version_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.sqlite3"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE notes (body TEXT)")
    conn.commit()
    conn.close()
    with pytest.raises(DataStoreError, match="has tables but no schema version"):
        SqliteStore(path)


def test_a_failing_step_rolls_every_step_back(tmp_path: Path) -> None:
    """Two steps, the second broken: the first one's change and the version bump are undone."""
    path = tmp_path / "registry.sqlite3"
    _write_v1(path)
    conn = sqlite3.connect(path, isolation_level=None)
    steps = {
        1: MIGRATIONS[1],
        2: (
            "ALTER TABLE devices ADD COLUMN note TEXT",
            "CREATE TABLE broken (",
        ),
    }
    with pytest.raises(sqlite3.Error):
        prepare(conn, path, schema=SCHEMA, version=3, steps=steps)
    conn.close()
    version, indexes = _version_and_indexes(path)
    assert version == 1 and "devices_account" not in indexes
    conn = sqlite3.connect(path)
    columns = [r[1] for r in conn.execute("PRAGMA table_info(devices)")]
    conn.close()
    assert "note" not in columns


def test_a_missing_step_is_named(tmp_path: Path) -> None:
    path = tmp_path / "registry.sqlite3"
    _write_v1(path)
    conn = sqlite3.connect(path, isolation_level=None)
    last = SCHEMA_VERSION
    with pytest.raises(DataStoreError, match=f"no migration from version {last} to {last + 1}"):
        prepare(conn, path, schema=SCHEMA, version=last + 1, steps=MIGRATIONS)
    conn.close()
    assert _version_and_indexes(path)[0] == 1


def test_every_version_below_the_current_one_has_its_step() -> None:
    assert sorted(MIGRATIONS) == list(range(1, SCHEMA_VERSION))


def _write_v2(path: Path) -> None:
    """Version 2 as shipped: version 1 plus the devices_account index."""
    _write_v1(path)
    conn = sqlite3.connect(path)
    conn.execute("CREATE INDEX IF NOT EXISTS devices_account ON devices(account_id, id)")
    conn.execute("PRAGMA user_version = 2")
    conn.commit()
    conn.close()


def _shape(path: Path) -> dict[str, object]:
    """Tables with their columns, and index names: what a migrated file must share with a new one."""
    conn = sqlite3.connect(path)
    try:
        shape: dict[str, object] = {}
        for kind, name in conn.execute(
            "SELECT type, name FROM sqlite_master WHERE name NOT LIKE 'sqlite_%' ORDER BY name"
        ):
            if kind == "table":
                shape[name] = [tuple(r[1:]) for r in conn.execute(f"PRAGMA table_info({name})")]
            else:
                shape[name] = kind
        return shape
    finally:
        conn.close()


def test_version_2_becomes_3_with_its_associations_kept_and_the_same_shape_as_a_new_file(
    tmp_path: Path,
) -> None:
    """Step 2 -> 3 (renewal): associations rebuilt without the one-SN-per-device rule, same ids
    and rows; notAfter unknown until the device next authenticates; a renewals table."""
    old = tmp_path / "old.sqlite3"
    _write_v2(old)
    store = SqliteStore(old)
    try:
        [row] = store.list_associations(1)
        assert (row.cert_sn, row.device_name, row.not_after, row.retire_at) == (
            "0abc",
            "meter-1",
            None,
            None,
        )
        state = store.association_state(1, "0abc")
        assert state is not None and state.id == 1
        device = store.device(1, "a1Product00", "meter-1")
        assert device is not None and device.cert_sn == "0abc"
        assert store.row_counts()["renewals"] == 0
    finally:
        store.close()
    new = tmp_path / "new.sqlite3"
    SqliteStore(new).close()
    assert _shape(old) == _shape(new)
    assert _version_and_indexes(old)[0] == 3
