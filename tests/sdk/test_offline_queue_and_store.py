"""The offline queue's drop policies and the identity store's file handling."""

from __future__ import annotations

import json
import stat
import threading
from pathlib import Path

import pytest

from device_sdk import Identity
from device_sdk.errors import IdentityStoreError, OfflineQueueFullError
from device_sdk.identity_store import IdentityStore
from device_sdk.offline_queue import DropPolicy, OfflineQueue, QueuedMessage


def _msg(n: int) -> QueuedMessage:
    return QueuedMessage(f"user/{n}", str(n).encode(), 1)


def _drain(q: OfflineQueue) -> list[str]:
    out = []
    while (m := q.pop()) is not None:
        out.append(m.topic)
    return out


def test_drop_oldest_keeps_the_most_recent() -> None:
    q = OfflineQueue(3, "drop-oldest")
    dropped = [q.put(_msg(n)) for n in range(5)]
    assert [d.topic if d else None for d in dropped] == [None, None, None, "user/0", "user/1"]
    assert _drain(q) == ["user/2", "user/3", "user/4"] and q.dropped == 2


def test_drop_newest_keeps_the_first() -> None:
    q = OfflineQueue(2, DropPolicy.DROP_NEWEST)
    results = [q.put(_msg(n)) for n in range(4)]
    assert [r.topic if r else None for r in results] == [None, None, "user/2", "user/3"]
    assert _drain(q) == ["user/0", "user/1"]


def test_raise_policy_refuses_with_advice() -> None:
    q = OfflineQueue(1, "raise")
    q.put(_msg(0))
    with pytest.raises(OfflineQueueFullError, match=r"full \(1 messages\).*'user/1'.*queue size"):
        q.put(_msg(1))
    assert _drain(q) == ["user/0"]


def test_push_front_and_clear() -> None:
    q = OfflineQueue(2)
    q.put(_msg(1))
    q.push_front(_msg(0))
    assert [m.topic for m in q.clear()] == ["user/0", "user/1"] and len(q) == 0


@pytest.mark.parametrize(
    ("size", "policy", "message"),
    [
        (0, "drop-oldest", "size must be >= 1"),
        (5, "keep-all", "drop policy 'keep-all' is not one of"),
    ],
)
def test_bad_queue_settings(size: int, policy: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        OfflineQueue(size, policy)


def test_concurrent_producers_never_exceed_the_bound() -> None:
    q = OfflineQueue(50)

    def produce(base: int) -> None:
        for n in range(200):
            q.put(_msg(base + n))

    threads = [threading.Thread(target=produce, args=(i * 1000,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(q) == 50 and q.dropped == 750


def test_identity_store_round_trip_private_and_atomic(tmp_path: Path) -> None:
    path = tmp_path / "state" / "identity.json"
    store = IdentityStore(path)
    assert store.load() is None
    store.save(Identity("a1B2c3D4e5F", "sensor01"))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert json.loads(path.read_text()) == {"productKey": "a1B2c3D4e5F", "deviceName": "sensor01"}
    store.save(Identity("a1B2c3D4e5F", "sensor02"))
    assert IdentityStore(path).load() == Identity("a1B2c3D4e5F", "sensor02")
    assert [p.name for p in path.parent.iterdir()] == ["identity.json"]  # no temp files left
    store.clear()
    assert store.load() is None


@pytest.mark.parametrize(
    "content", [b"{not json", b'{"productKey": "bad key!", "deviceName": "sensor01"}', b"[]"]
)
def test_damaged_identity_file_is_ignored_with_a_warning(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "identity.json"
    path.write_bytes(content)
    with pytest.warns(RuntimeWarning, match="damaged.*send the identity again"):
        assert IdentityStore(path).load() is None
    assert path.read_bytes() == content  # kept for inspection until the next save


def test_unwritable_identity_location_says_what_to_check(tmp_path: Path) -> None:
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    with pytest.raises(IdentityStoreError, match=r"cannot write identity file .*writable") as info:
        IdentityStore(blocker / "identity.json").save(Identity("a1B2c3D4e5F", "sensor01"))
    assert isinstance(info.value.__cause__, OSError)
