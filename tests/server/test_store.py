"""The SQLite store: WAL, foreign keys, transactions, one connection per thread."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest

from server_stub.errors import ConflictError, DataStoreError
from server_stub.registry import Registry
from server_stub.registry.accounts import hash_token
from server_stub.store import SqliteStore


def test_database_uses_wal_and_foreign_keys(store: SqliteStore) -> None:
    conn = sqlite3.connect(store.path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()
    assert store._conn().execute("PRAGMA foreign_keys").fetchone()[0] == 1


def test_atomic_block_rolls_back_everything_on_error(store: SqliteStore) -> None:
    with pytest.raises(RuntimeError), store.atomic():
        store.insert_account("a1", hash_token("t1"), "0" * 64, 1.0)
        store.insert_account("a2", hash_token("t2"), "1" * 64, 1.0)
        raise RuntimeError("boom")
    assert store.row_counts()["accounts"] == 0


def test_nested_atomic_blocks_join_the_outer_transaction(store: SqliteStore) -> None:
    with pytest.raises(RuntimeError), store.atomic():
        with store.atomic():
            store.insert_account("a1", hash_token("t1"), "0" * 64, 1.0)
        raise RuntimeError("outer fails after inner finished")
    assert store.account_by_name("a1") is None


def test_duplicate_account_name_is_a_conflict(store: SqliteStore) -> None:
    store.insert_account("a1", hash_token("t1"), "0" * 64, 1.0)
    with pytest.raises(ConflictError, match="already exists"):
        store.insert_account("a1", hash_token("t2"), "0" * 64, 1.0)


def test_tokens_are_stored_only_as_hashes(registry: Registry, store: SqliteStore) -> None:
    _record, token = registry.create_account("bob")
    raw = store.path.read_bytes() + Path(str(store.path) + "-wal").read_bytes()
    assert token.encode() not in raw
    assert hash_token(token).encode() in raw


def test_each_thread_gets_its_own_connection_and_sees_commits(store: SqliteStore) -> None:
    store.insert_account("a1", hash_token("t1"), "0" * 64, 1.0)
    seen: list[object] = []

    def read() -> None:
        seen.append(store.account_by_name("a1"))
        seen.append(store._conn())

    thread = threading.Thread(target=read)
    thread.start()
    thread.join()
    assert seen[0] is not None and seen[0] == store.account_by_name("a1")
    assert seen[1] is not store._conn()


def test_concurrent_writers_do_not_fail_with_locked_database(store: SqliteStore) -> None:
    errors: list[BaseException] = []

    def write(n: int) -> None:
        try:
            for i in range(20):
                store.insert_account(f"t{n}-{i}", hash_token(f"{n}-{i}"), "0" * 64, 1.0)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert store.row_counts()["accounts"] == 80


def test_unwritable_location_gives_a_store_error(tmp_path: Path) -> None:
    with pytest.raises(DataStoreError, match="cannot open the database"):
        SqliteStore(tmp_path / "missing-dir" / "registry.sqlite3")


def test_closed_store_refuses_new_connections(tmp_path: Path) -> None:
    s = SqliteStore(tmp_path / "r.sqlite3")
    s.close()
    result: list[BaseException] = []

    def use() -> None:
        try:
            s.account_by_name("x")
        except DataStoreError as exc:
            result.append(exc)

    t = threading.Thread(target=use)
    t.start()
    t.join()
    assert result and "closed" in str(result[0])


def test_data_survives_reopening(tmp_path: Path) -> None:
    path = tmp_path / "r.sqlite3"
    s = SqliteStore(path)
    registry = Registry(s)
    account, token = registry.create_account("carol")
    s.close()
    s2 = SqliteStore(path)
    try:
        assert Registry(s2).account_for_token(token).name == "carol"
        assert s2.account_by_name("carol") == account
    finally:
        s2.close()
