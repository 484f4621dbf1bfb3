"""The reference :class:`~server_stub.store.base.Store`: one SQLite file in the data directory.

WAL journal (readers never wait for the writer), foreign keys on, one connection per thread:
FastAPI's sync endpoints run in a thread pool while the MQTT endpoint authenticates on the
event-loop thread. Writers are serialised by one re-entrant lock around ``BEGIN IMMEDIATE``, so
a write transaction never fails half-way with "database is locked" inside this process.

Why it is over 500 lines: it is the one implementation of the :class:`Store` protocol, and
every SQL statement of the server lives here beside the schema it queries (the schema's
versions and their steps are data of this module, applied by :mod:`server_stub.store.migrations`).
Splitting the SQL by table would scatter the joins (authentication reads four tables at once)
and the transactions that span them.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from server_stub.errors import ConflictError, DataStoreError
from server_stub.store import migrations
from server_stub.store.base import (
    AccountRecord,
    AssociationRecord,
    AssociationState,
    AuthRow,
    CaRecord,
    ConnectState,
    DeviceBinding,
    DeviceListRow,
    DeviceQuery,
    DeviceRecord,
    ExpiringRow,
    NewRenewal,
    ProductRecord,
    RenewalRecord,
    SnBinding,
)

#: The schema's version, in the file's ``PRAGMA user_version``. To change the schema: change
#: SCHEMA (what a new file gets), bump this, and add the step from the previous version to
#: MIGRATIONS (what an existing file gets; see :mod:`server_stub.store.migrations`).
SCHEMA_VERSION = 3

#: Version 3 (certificate renewal, issue 14). A device may hold several SNs during a change-over:
#: exactly one *current* association (``retire_at`` NULL) and the ones being retired (the old SN
#: after a renewal, accepted until ``retire_at`` or the first CONNECT with the new SN).
#: ``not_after`` is the certificate's expiry as last seen (at authentication or issuance).
ASSOCIATIONS_V3 = """
CREATE TABLE IF NOT EXISTS {name} (
    id INTEGER PRIMARY KEY,
    account_id INTEGER NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    ca_id INTEGER NOT NULL REFERENCES ca_certificates(id) ON DELETE CASCADE,
    device_id INTEGER NOT NULL REFERENCES devices(id) ON DELETE CASCADE,
    cert_sn TEXT NOT NULL,
    created_at REAL NOT NULL,
    not_after REAL,
    retire_at REAL,
    UNIQUE (account_id, cert_sn)
);
"""

#: Indexes of the version-3 associations table (created after the table got its final name).
ASSOCIATION_INDEXES_V3 = """
CREATE INDEX IF NOT EXISTS associations_ca_sn ON associations(ca_id, cert_sn);
CREATE UNIQUE INDEX IF NOT EXISTS associations_device_current
    ON associations(device_id) WHERE retire_at IS NULL;
CREATE INDEX IF NOT EXISTS associations_device ON associations(device_id);
CREATE INDEX IF NOT EXISTS associations_retiring
    ON associations(retire_at) WHERE retire_at IS NOT NULL;
CREATE INDEX IF NOT EXISTS associations_expiry ON associations(account_id, not_after);
"""

#: Renewal requests: queued by the MQTT endpoint, answered by the account's signer over HTTP.
RENEWALS_V3 = (
    ASSOCIATION_INDEXES_V3
    + """
CREATE TABLE IF NOT EXISTS renewals (
    id INTEGER PRIMARY KEY,
    request_id TEXT NOT NULL UNIQUE,
    account_id INTEGER NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    ca_id INTEGER NOT NULL REFERENCES ca_certificates(id) ON DELETE CASCADE,
    device_id INTEGER NOT NULL REFERENCES devices(id) ON DELETE CASCADE,
    device_request_id TEXT NOT NULL,
    old_cert_sn TEXT NOT NULL,
    csr_pem TEXT NOT NULL,
    status TEXT NOT NULL
        CHECK (status IN ('pending', 'issued', 'refused', 'superseded', 'completed')),
    reason TEXT NOT NULL DEFAULT '',
    cert_pem TEXT,
    cert_sn TEXT,
    requested_at REAL NOT NULL,
    answered_at REAL
);
CREATE INDEX IF NOT EXISTS renewals_ca_status ON renewals(ca_id, status, id);
CREATE INDEX IF NOT EXISTS renewals_account_status ON renewals(account_id, status);
CREATE INDEX IF NOT EXISTS renewals_device ON renewals(device_id, status);
"""
)

SCHEMA = (
    """
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
CREATE INDEX IF NOT EXISTS devices_account ON devices(account_id, id);
"""
    + ASSOCIATIONS_V3.format(name="associations")
    + RENEWALS_V3
)

#: version N -> the statements that take a file from N to N + 1 (run in one transaction).
MIGRATIONS: dict[int, tuple[str, ...]] = {
    # 2: the console's paged device list reads devices by account in id order.
    1: ("CREATE INDEX IF NOT EXISTS devices_account ON devices(account_id, id)",),
    # 3: renewal. SQLite cannot drop the UNIQUE of associations.device_id in place, so the table
    # is rebuilt (same ids and rows; nothing references it), then the renewals table is added.
    2: (
        ASSOCIATIONS_V3.format(name="associations_v3").strip(),
        "INSERT INTO associations_v3 (id, account_id, ca_id, device_id, cert_sn, created_at)"
        " SELECT id, account_id, ca_id, device_id, cert_sn, created_at FROM associations",
        "DROP TABLE associations",
        "ALTER TABLE associations_v3 RENAME TO associations",
        *migrations.statements(RENEWALS_V3),
    ),
}

#: Closed renewal requests (refused, superseded, completed) kept per device; older ones go, so
#: a device asking again and again cannot grow the table.
CLOSED_RENEWALS_KEPT = 4

#: Stay far below SQLite's bound-parameter limit when querying ``IN (...)`` lists.
_CHUNK = 900


def _chunks(items: Sequence[str]) -> Iterator[Sequence[str]]:
    for start in range(0, len(items), _CHUNK):
        yield items[start : start + _CHUNK]


class SqliteStore:
    """SQLite implementation of :class:`~server_stub.store.base.Store`."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._local = threading.local()
        self._write_lock = threading.RLock()
        self._all: list[sqlite3.Connection] = []
        self._all_lock = threading.Lock()
        self._closed = False
        conn = self._conn()
        try:
            with self._write_lock:
                migrations.prepare(
                    conn, self.path, schema=SCHEMA, version=SCHEMA_VERSION, steps=MIGRATIONS
                )
        except BaseException as exc:
            self.close()
            if isinstance(exc, sqlite3.Error):
                raise DataStoreError(f"cannot initialise the database {self.path}: {exc}") from exc
            raise

    # --- connections and transactions -----------------------------------------------------------

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is not None:
            return conn
        if self._closed:
            raise DataStoreError("the store is closed")
        try:
            conn = sqlite3.connect(
                self.path, isolation_level=None, check_same_thread=False, timeout=30.0
            )
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA foreign_keys = ON")
            conn.execute("PRAGMA synchronous = NORMAL")
        except sqlite3.Error as exc:
            raise DataStoreError(f"cannot open the database {self.path}: {exc}") from exc
        self._local.conn = conn
        self._local.depth = 0
        with self._all_lock:
            self._all.append(conn)
        return conn

    @contextmanager
    def atomic(self) -> Iterator[None]:
        """One write transaction per outermost block on this thread (nested blocks join it)."""
        conn = self._conn()
        with self._write_lock:
            depth: int = self._local.depth
            if depth == 0:
                conn.execute("BEGIN IMMEDIATE")
            self._local.depth = depth + 1
            try:
                yield
            except BaseException:
                self._local.depth = depth
                if depth == 0:
                    conn.execute("ROLLBACK")
                raise
            self._local.depth = depth
            if depth == 0:
                conn.execute("COMMIT")

    def _write(self, sql: str, params: Sequence[Any] = ()) -> sqlite3.Cursor:
        with self.atomic():
            try:
                return self._conn().execute(sql, params)
            except sqlite3.IntegrityError as exc:
                raise ConflictError(f"conflicting record: {exc}") from exc

    def _one(self, sql: str, params: Sequence[Any] = ()) -> Any:
        return self._conn().execute(sql, params).fetchone()

    def _all_rows(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        return self._conn().execute(sql, params).fetchall()

    def close(self) -> None:
        self._closed = True
        with self._all_lock:
            for conn in self._all:
                try:
                    conn.close()
                except sqlite3.Error:
                    pass
            self._all.clear()

    # --- accounts -------------------------------------------------------------------------------

    def insert_account(
        self, name: str, token_hash: str, registration_code: str, now: float
    ) -> AccountRecord:
        if self.account_by_name(name) is not None:
            raise ConflictError(f"an account named {name!r} already exists")
        cur = self._write(
            "INSERT INTO accounts (name, token_hash, registration_code, created_at) "
            "VALUES (?, ?, ?, ?)",
            (name, token_hash, registration_code, now),
        )
        return AccountRecord(int(cur.lastrowid or 0), name, registration_code, now)

    _ACCOUNT_COLS = "id, name, registration_code, created_at"

    def account_by_name(self, name: str) -> AccountRecord | None:
        row = self._one(f"SELECT {self._ACCOUNT_COLS} FROM accounts WHERE name = ?", (name,))
        return AccountRecord(*row) if row else None

    def account_by_token_hash(self, token_hash: str) -> tuple[AccountRecord, str] | None:
        row = self._one(
            f"SELECT {self._ACCOUNT_COLS}, token_hash FROM accounts WHERE token_hash = ?",
            (token_hash,),
        )
        return (AccountRecord(*row[:4]), row[4]) if row else None

    def set_account_token(self, account_id: int, token_hash: str) -> None:
        self._write("UPDATE accounts SET token_hash = ? WHERE id = ?", (token_hash, account_id))

    def set_registration_code(self, account_id: int, code: str) -> None:
        self._write("UPDATE accounts SET registration_code = ? WHERE id = ?", (code, account_id))

    # --- products -------------------------------------------------------------------------------

    _PRODUCT_COLS = "id, account_id, product_key, name, auth_type, private_ca, network, created_at"

    @staticmethod
    def _product(row: Any) -> ProductRecord:
        return ProductRecord(row[0], row[1], row[2], row[3], row[4], bool(row[5]), row[6], row[7])

    def product_key_exists(self, product_key: str) -> bool:
        return self._one("SELECT 1 FROM products WHERE product_key = ?", (product_key,)) is not None

    def insert_product(
        self,
        account_id: int,
        product_key: str,
        name: str,
        auth_type: str,
        private_ca: bool,
        network: str,
        now: float,
    ) -> ProductRecord:
        cur = self._write(
            "INSERT INTO products (account_id, product_key, name, auth_type, private_ca, network,"
            " created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (account_id, product_key, name, auth_type, int(private_ca), network, now),
        )
        return ProductRecord(
            int(cur.lastrowid or 0),
            account_id,
            product_key,
            name,
            auth_type,
            private_ca,
            network,
            now,
        )

    def product(self, account_id: int, product_key: str) -> ProductRecord | None:
        row = self._one(
            f"SELECT {self._PRODUCT_COLS} FROM products WHERE account_id = ? AND product_key = ?",
            (account_id, product_key),
        )
        return self._product(row) if row else None

    def list_products(self, account_id: int) -> list[ProductRecord]:
        rows = self._all_rows(
            f"SELECT {self._PRODUCT_COLS} FROM products WHERE account_id = ? ORDER BY id",
            (account_id,),
        )
        return [self._product(r) for r in rows]

    # --- CA certificates ------------------------------------------------------------------------

    _CA_COLS = (
        "id, account_id, ca_sn, name, subject, fingerprint, der, status, not_before, not_after,"
        " created_at"
    )

    @staticmethod
    def _ca(row: Any) -> CaRecord:
        return CaRecord(
            row[0],
            row[1],
            row[2],
            row[3],
            row[4],
            row[5],
            bytes(row[6]),
            row[7],
            row[8],
            row[9],
            row[10],
        )

    def count_cas(self, account_id: int) -> int:
        row = self._one("SELECT COUNT(*) FROM ca_certificates WHERE account_id = ?", (account_id,))
        return int(row[0])

    def ca_by_fingerprint(self, fingerprint: str) -> CaRecord | None:
        row = self._one(
            f"SELECT {self._CA_COLS} FROM ca_certificates WHERE fingerprint = ?", (fingerprint,)
        )
        return self._ca(row) if row else None

    def ca(self, account_id: int, ca_sn: str) -> CaRecord | None:
        row = self._one(
            f"SELECT {self._CA_COLS} FROM ca_certificates WHERE account_id = ? AND ca_sn = ?",
            (account_id, ca_sn),
        )
        return self._ca(row) if row else None

    def list_cas(self, account_id: int) -> list[CaRecord]:
        rows = self._all_rows(
            f"SELECT {self._CA_COLS} FROM ca_certificates WHERE account_id = ? ORDER BY id",
            (account_id,),
        )
        return [self._ca(r) for r in rows]

    def all_cas(self) -> list[CaRecord]:
        rows = self._all_rows(f"SELECT {self._CA_COLS} FROM ca_certificates ORDER BY id")
        return [self._ca(r) for r in rows]

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
    ) -> CaRecord:
        cur = self._write(
            "INSERT INTO ca_certificates (account_id, ca_sn, name, subject, fingerprint, der,"
            " status, not_before, not_after, created_at)"
            " VALUES (?, ?, ?, ?, ?, ?, 'active', ?, ?, ?)",
            (account_id, ca_sn, name, subject, fingerprint, der, not_before, not_after, now),
        )
        return CaRecord(
            int(cur.lastrowid or 0),
            account_id,
            ca_sn,
            name,
            subject,
            fingerprint,
            der,
            "active",
            not_before,
            not_after,
            now,
        )

    def set_ca_status(self, ca_id: int, status: str) -> None:
        self._write("UPDATE ca_certificates SET status = ? WHERE id = ?", (status, ca_id))

    def delete_ca(self, ca_id: int) -> None:
        self._write("DELETE FROM ca_certificates WHERE id = ?", (ca_id,))

    # --- devices and associations ---------------------------------------------------------------

    def sn_bindings(self, account_id: int, cert_sns: Sequence[str]) -> dict[str, SnBinding]:
        found: dict[str, SnBinding] = {}
        for chunk in _chunks(cert_sns):
            marks = ",".join("?" * len(chunk))
            rows = self._all_rows(
                "SELECT a.cert_sn, a.ca_id, c.ca_sn, p.product_key, d.device_name"
                " FROM associations a JOIN ca_certificates c ON c.id = a.ca_id"
                " JOIN devices d ON d.id = a.device_id JOIN products p ON p.id = d.product_id"
                f" WHERE a.account_id = ? AND a.cert_sn IN ({marks})",
                (account_id, *chunk),
            )
            for row in rows:
                found[row[0]] = SnBinding(*row)
        return found

    def device_bindings(
        self, product_id: int, device_names: Sequence[str]
    ) -> dict[str, DeviceBinding]:
        found: dict[str, DeviceBinding] = {}
        for chunk in _chunks(device_names):
            marks = ",".join("?" * len(chunk))
            rows = self._all_rows(
                "SELECT d.id, d.device_name, a.cert_sn, a.ca_id FROM devices d"
                " LEFT JOIN associations a ON a.device_id = d.id AND a.retire_at IS NULL"
                f" WHERE d.product_id = ? AND d.device_name IN ({marks})",
                (product_id, *chunk),
            )
            for row in rows:
                found[row[1]] = DeviceBinding(*row)
        return found

    def insert_devices(
        self, account_id: int, product_id: int, device_names: Iterable[str], now: float
    ) -> dict[str, int]:
        names = list(device_names)
        with self.atomic():
            conn = self._conn()
            conn.executemany(
                "INSERT INTO devices (account_id, product_id, device_name, status, created_at)"
                " VALUES (?, ?, ?, 'enabled', ?)",
                ((account_id, product_id, name, now) for name in names),
            )
            return {
                b.device_name: b.device_id for b in self.device_bindings(product_id, names).values()
            }

    def insert_associations(
        self, account_id: int, ca_id: int, pairs: Iterable[tuple[int, str]], now: float
    ) -> int:
        with self.atomic():
            try:
                cur = self._conn().executemany(
                    "INSERT INTO associations (account_id, ca_id, device_id, cert_sn, created_at)"
                    " VALUES (?, ?, ?, ?, ?)",
                    ((account_id, ca_id, device_id, sn, now) for device_id, sn in pairs),
                )
            except sqlite3.IntegrityError as exc:
                raise ConflictError(f"conflicting association: {exc}") from exc
            return int(cur.rowcount)

    def list_associations(self, ca_id: int) -> list[AssociationRecord]:
        rows = self._all_rows(
            "SELECT c.ca_sn, a.cert_sn, p.product_key, d.device_name, a.created_at,"
            " a.not_after, a.retire_at"
            " FROM associations a JOIN ca_certificates c ON c.id = a.ca_id"
            " JOIN devices d ON d.id = a.device_id JOIN products p ON p.id = d.product_id"
            " WHERE a.ca_id = ? ORDER BY a.id",
            (ca_id,),
        )
        return [AssociationRecord(*r) for r in rows]

    def delete_association(self, ca_id: int, cert_sn: str) -> bool:
        cur = self._write(
            "DELETE FROM associations WHERE ca_id = ? AND cert_sn = ?", (ca_id, cert_sn)
        )
        return cur.rowcount > 0

    def device(self, account_id: int, product_key: str, device_name: str) -> DeviceRecord | None:
        row = self._one(
            "SELECT d.id, d.account_id, p.product_key, d.device_name, d.status, d.created_at,"
            " c.ca_sn, a.cert_sn FROM devices d JOIN products p ON p.id = d.product_id"
            " LEFT JOIN associations a ON a.device_id = d.id AND a.retire_at IS NULL"
            " LEFT JOIN ca_certificates c ON c.id = a.ca_id"
            " WHERE d.account_id = ? AND p.product_key = ? AND d.device_name = ?",
            (account_id, product_key, device_name),
        )
        return DeviceRecord(*row) if row else None

    def set_device_status(self, device_id: int, status: str) -> None:
        self._write("UPDATE devices SET status = ? WHERE id = ?", (status, device_id))

    def list_devices(self, account_id: int, query: DeviceQuery) -> tuple[int, list[DeviceListRow]]:
        """Count the matches and return one page of them, oldest device first."""
        where = ["d.account_id = ?"]
        params: list[Any] = [account_id]
        if query.product_key is not None:
            where.append("p.product_key = ?")
            params.append(query.product_key)
        if query.status is not None:
            where.append("d.status = ?")
            params.append(query.status)
        if query.text:
            escaped = query.text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            like = f"%{escaped}%"
            where.append(
                "(d.device_name LIKE ? ESCAPE '\\' OR p.product_key LIKE ? ESCAPE '\\'"
                " OR a.cert_sn LIKE ? ESCAPE '\\')"
            )
            params += [like, like, like]
        if query.keys is not None:
            negate = "NOT " if query.exclude_keys else ""
            where.append(
                f"(p.product_key || '/' || d.device_name) {negate}IN"
                " (SELECT value FROM json_each(?))"
            )
            params.append(json.dumps(list(query.keys)))
        joins = (
            " FROM devices d JOIN products p ON p.id = d.product_id"
            " LEFT JOIN associations a ON a.device_id = d.id AND a.retire_at IS NULL"
            " LEFT JOIN ca_certificates c ON c.id = a.ca_id"
            " WHERE " + " AND ".join(where)
        )
        total = int(self._one("SELECT COUNT(*)" + joins, params)[0])
        rows = self._all_rows(
            "SELECT p.product_key, d.device_name, d.status, d.created_at, a.cert_sn, c.ca_sn,"
            " c.name, c.not_after, a.not_after" + joins + " ORDER BY d.id LIMIT ? OFFSET ?",
            [*params, query.limit, query.offset],
        )
        return total, [DeviceListRow(*r) for r in rows]

    def auth_row(self, ca_id: int, cert_sn: str) -> AuthRow | None:
        row = self._one(
            "SELECT d.account_id, p.product_key, d.device_name, d.status, p.auth_type,"
            " p.private_ca, p.network FROM associations a"
            " JOIN devices d ON d.id = a.device_id JOIN products p ON p.id = d.product_id"
            " WHERE a.ca_id = ? AND a.cert_sn = ?",
            (ca_id, cert_sn),
        )
        if row is None:
            return None
        return AuthRow(row[0], row[1], row[2], row[3], row[4], bool(row[5]), row[6])

    # --- certificate renewal ---------------------------------------------------------------------

    def association_state(self, ca_id: int, cert_sn: str) -> AssociationState | None:
        row = self._one(
            "SELECT id, device_id, cert_sn, not_after, retire_at FROM associations"
            " WHERE ca_id = ? AND cert_sn = ?",
            (ca_id, cert_sn),
        )
        return AssociationState(*row) if row else None

    def record_not_after(self, association_id: int, not_after: float) -> None:
        self._write(
            "UPDATE associations SET not_after = ? WHERE id = ?", (not_after, association_id)
        )

    def open_renewals(self, account_id: int) -> int:
        row = self._one(
            "SELECT COUNT(*) FROM renewals WHERE account_id = ? AND status = 'pending'",
            (account_id,),
        )
        return int(row[0])

    def last_renewal_at(self, device_id: int) -> float | None:
        row = self._one("SELECT MAX(requested_at) FROM renewals WHERE device_id = ?", (device_id,))
        return None if row is None or row[0] is None else float(row[0])

    _RENEWAL_SELECT = (
        "SELECT r.id, r.request_id, r.account_id, r.ca_id, c.ca_sn, r.device_id, p.product_key,"
        " d.device_name, r.device_request_id, r.old_cert_sn, r.csr_pem, r.status, r.reason,"
        " r.cert_pem, r.cert_sn, r.requested_at, r.answered_at FROM renewals r"
        " JOIN ca_certificates c ON c.id = r.ca_id JOIN devices d ON d.id = r.device_id"
        " JOIN products p ON p.id = d.product_id"
    )

    def insert_renewal(
        self, new: NewRenewal, refused: str | None = None
    ) -> tuple[RenewalRecord, int]:
        with self.atomic():
            conn = self._conn()
            superseded = 0
            if refused is None:
                superseded = conn.execute(
                    "UPDATE renewals SET status = 'superseded', reason = ?, answered_at = ?"
                    " WHERE device_id = ? AND status = 'pending'",
                    ("replaced by a newer request of the device", new.requested_at, new.device_id),
                ).rowcount
            try:
                cur = conn.execute(
                    "INSERT INTO renewals (request_id, account_id, ca_id, device_id,"
                    " device_request_id, old_cert_sn, csr_pem, status, reason, requested_at,"
                    " answered_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        new.request_id,
                        new.account_id,
                        new.ca_id,
                        new.device_id,
                        new.device_request_id,
                        new.old_cert_sn,
                        new.csr_pem,
                        "pending" if refused is None else "refused",
                        refused or "",
                        new.requested_at,
                        None if refused is None else new.requested_at,
                    ),
                )
            except sqlite3.IntegrityError as exc:
                raise ConflictError(f"conflicting renewal request: {exc}") from exc
            # closed requests are history: a device keeps only its last few
            conn.execute(
                "DELETE FROM renewals WHERE device_id = ? AND status IN"
                " ('refused', 'superseded', 'completed') AND id NOT IN (SELECT id FROM renewals"
                " WHERE device_id = ? AND status IN ('refused', 'superseded', 'completed')"
                " ORDER BY id DESC LIMIT ?)",
                (new.device_id, new.device_id, CLOSED_RENEWALS_KEPT),
            )
            row = self._one(self._RENEWAL_SELECT + " WHERE r.id = ?", (cur.lastrowid,))
        return RenewalRecord(*row), int(superseded)

    def renewal(self, account_id: int, request_id: str) -> RenewalRecord | None:
        row = self._one(
            self._RENEWAL_SELECT + " WHERE r.account_id = ? AND r.request_id = ?",
            (account_id, request_id),
        )
        return RenewalRecord(*row) if row else None

    def pending_renewals(self, ca_id: int, limit: int) -> list[RenewalRecord]:
        rows = self._all_rows(
            self._RENEWAL_SELECT + " WHERE r.ca_id = ? AND r.status = 'pending' ORDER BY r.id"
            " LIMIT ?",
            (ca_id, limit),
        )
        return [RenewalRecord(*r) for r in rows]

    def refuse_renewal(self, renewal_id: int, reason: str, now: float) -> bool:
        cur = self._write(
            "UPDATE renewals SET status = 'refused', reason = ?, answered_at = ?"
            " WHERE id = ? AND status = 'pending'",
            (reason, now, renewal_id),
        )
        return cur.rowcount > 0

    def issue_renewal(
        self,
        renewal: RenewalRecord,
        cert_sn: str,
        cert_pem: str,
        not_after: float,
        retire_at: float,
        now: float,
    ) -> None:
        with self.atomic():
            conn = self._conn()
            claimed = conn.execute(
                "UPDATE renewals SET status = 'issued', cert_pem = ?, cert_sn = ?, answered_at = ?"
                " WHERE id = ? AND status = 'pending'",
                (cert_pem, cert_sn, now, renewal.id),
            ).rowcount
            if not claimed:
                raise ConflictError(f"renewal request {renewal.request_id} was already answered")
            old = conn.execute(
                "SELECT id FROM associations WHERE device_id = ? AND ca_id = ? AND cert_sn = ?",
                (renewal.device_id, renewal.ca_id, renewal.old_cert_sn),
            ).fetchone()
            if old is None:
                raise ConflictError(
                    f"the device's certificate SN {renewal.old_cert_sn}, from which it asked to "
                    "renew, is no longer associated (removed or retired meanwhile)"
                )
            # Any other SN of the device (issued earlier and never used) goes: a device holds at
            # most its old and its new SN during a change-over.
            conn.execute(
                "DELETE FROM associations WHERE device_id = ? AND id != ?",
                (renewal.device_id, old[0]),
            )
            conn.execute(
                "UPDATE renewals SET status = 'superseded', reason = ?, answered_at = ?"
                " WHERE device_id = ? AND status = 'issued' AND id != ?",
                ("a newer certificate was issued", now, renewal.device_id, renewal.id),
            )
            # an old SN already retiring keeps its earlier deadline
            conn.execute(
                "UPDATE associations SET retire_at = ? WHERE id = ?"
                " AND (retire_at IS NULL OR retire_at > ?)",
                (retire_at, old[0], retire_at),
            )
            try:
                conn.execute(
                    "INSERT INTO associations (account_id, ca_id, device_id, cert_sn, created_at,"
                    " not_after) VALUES (?, ?, ?, ?, ?, ?)",
                    (renewal.account_id, renewal.ca_id, renewal.device_id, cert_sn, now, not_after),
                )
            except sqlite3.IntegrityError as exc:
                raise ConflictError(
                    f"certificate SN {cert_sn} is already associated in this account"
                ) from exc

    def undelivered_renewals(self, device_id: int) -> list[RenewalRecord]:
        rows = self._all_rows(
            self._RENEWAL_SELECT + " WHERE r.device_id = ? AND r.status = 'issued'"
            " AND r.cert_sn IN (SELECT cert_sn FROM associations WHERE device_id = ?)"
            " ORDER BY r.id",
            (device_id, device_id),
        )
        return [RenewalRecord(*r) for r in rows]

    def connect_state(self, ca_id: int, cert_sn: str) -> ConnectState | None:
        row = self._one(
            "SELECT a.id, a.device_id, a.not_after, a.retire_at,"
            " EXISTS (SELECT 1 FROM associations o WHERE o.device_id = a.device_id"
            "  AND o.retire_at IS NOT NULL),"
            " EXISTS (SELECT 1 FROM renewals r WHERE r.device_id = a.device_id"
            "  AND r.status = 'issued')"
            " FROM associations a WHERE a.ca_id = ? AND a.cert_sn = ?",
            (ca_id, cert_sn),
        )
        if row is None:
            return None
        return ConnectState(row[0], row[1], row[2], row[3], bool(row[4]), bool(row[5]))

    def complete_change_over(self, device_id: int, association_id: int, now: float) -> int:
        with self.atomic():
            conn = self._conn()
            current = conn.execute(
                "SELECT cert_sn FROM associations WHERE id = ? AND device_id = ?"
                " AND retire_at IS NULL",
                (association_id, device_id),
            ).fetchone()
            if current is None:
                return 0
            retired = conn.execute(
                "DELETE FROM associations WHERE device_id = ? AND retire_at IS NOT NULL",
                (device_id,),
            ).rowcount
            conn.execute(
                "UPDATE renewals SET status = 'completed', answered_at = COALESCE(answered_at, ?)"
                " WHERE device_id = ? AND status = 'issued' AND cert_sn = ?",
                (now, device_id, current[0]),
            )
            # a certificate whose association an operator removed meanwhile is never sent again
            conn.execute(
                "UPDATE renewals SET status = 'superseded', reason = ?"
                " WHERE device_id = ? AND status = 'issued' AND cert_sn NOT IN"
                " (SELECT cert_sn FROM associations WHERE device_id = ?)",
                ("its certificate is no longer associated", device_id, device_id),
            )
        return int(retired)

    def retire_expired(self, now: float) -> int:
        cur = self._write(
            "DELETE FROM associations WHERE retire_at IS NOT NULL AND retire_at <= ?", (now,)
        )
        return int(cur.rowcount)

    def expiring(self, account_id: int, before: float, limit: int) -> list[ExpiringRow]:
        rows = self._all_rows(
            "SELECT p.product_key, d.device_name, c.ca_sn, a.cert_sn, a.not_after"
            " FROM associations a JOIN devices d ON d.id = a.device_id"
            " JOIN products p ON p.id = d.product_id JOIN ca_certificates c ON c.id = a.ca_id"
            " WHERE a.account_id = ? AND a.retire_at IS NULL AND a.not_after IS NOT NULL"
            " AND a.not_after < ? ORDER BY a.not_after, a.id LIMIT ?",
            (account_id, before, limit),
        )
        return [ExpiringRow(*r) for r in rows]

    def row_counts(self) -> dict[str, int]:
        tables = ("accounts", "products", "ca_certificates", "devices", "associations", "renewals")
        return {t: int(self._one(f"SELECT COUNT(*) FROM {t}")[0]) for t in tables}
