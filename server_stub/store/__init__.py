"""Where the registry keeps its rows: a storage interface and its SQLite implementation."""

from server_stub.store.base import Store
from server_stub.store.sqlite import SqliteStore

__all__ = ["SqliteStore", "Store"]
