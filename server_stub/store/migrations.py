"""Bring a registry database to the schema this server writes, or refuse it.

A data directory outlives the server version that created it, and it holds users' data (accounts,
CA certificates, associations): a new server must upgrade it in place, never recreate it. The
version lives in SQLite's own header field, ``PRAGMA user_version``. At open:

* 0 and no tables: a new file; the whole current schema is created;
* older than this server's: each step (version N -> N+1) runs in order, all of them and the
  version bump inside ONE transaction, so a failure leaves the file exactly as it was;
* this server's: nothing to do;
* newer: refused with :class:`~server_stub.errors.SchemaVersionError` naming both versions. This
  server would not know what the newer data means, and must not write to it.

The schema and its steps are data of the store (:mod:`server_stub.store.sqlite`); to change the
schema, bump its version and add the step from the previous one.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Mapping, Sequence
from pathlib import Path

from server_stub.errors import DataStoreError, SchemaVersionError

log = logging.getLogger(__name__)


def statements(script: str) -> list[str]:
    """The SQL statements of a script, one by one (``executescript`` would commit mid-way)."""
    out: list[str] = []
    current = ""
    for line in script.splitlines(keepends=True):
        current += line
        if sqlite3.complete_statement(current):
            out.append(current.strip())
            current = ""
    if current.strip():
        out.append(current.strip())
    return out


def schema_version(conn: sqlite3.Connection) -> int:
    return int(conn.execute("PRAGMA user_version").fetchone()[0])


def prepare(
    conn: sqlite3.Connection,
    path: Path,
    *,
    schema: str,
    version: int,
    steps: Mapping[int, Sequence[str]],
) -> int:
    """Create, migrate or accept the database on ``conn``; return the version it had.

    ``steps[n]`` holds the statements that take version ``n`` to ``n + 1``. ``conn`` must be in
    autocommit mode (``isolation_level=None``): this function owns the transaction.
    """
    conn.execute("BEGIN IMMEDIATE")
    try:
        found = schema_version(conn)
        if found > version:
            raise SchemaVersionError(
                f"the database {path} has schema version {found}, newer than version {version} "
                "that this server understands: it was written by a newer iot-x509-kit; run that "
                "version (or a newer one) on this data directory",
                found=found,
                supported=version,
            )
        if found == 0:
            tables = conn.execute("SELECT count(*) FROM sqlite_master WHERE type = 'table'")
            if tables.fetchone()[0]:
                raise DataStoreError(
                    f"the database {path} has tables but no schema version: it was not written "
                    "by the iot-x509-kit server; refusing to change it"
                )
            todo = statements(schema)
        else:
            missing = [v for v in range(found, version) if v not in steps]
            if missing:
                raise DataStoreError(
                    f"the database {path} has schema version {found} and this server has no "
                    f"migration from version {missing[0]} to {missing[0] + 1}"
                )
            todo = [sql for v in range(found, version) for sql in steps[v]]
        for sql in todo:
            conn.execute(sql)
        if found != version:
            conn.execute(f"PRAGMA user_version = {int(version)}")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
    if 0 < found < version:
        log.warning("migrated the database %s from schema version %d to %d", path, found, version)
    return found
