"""What happens to a publish after ``DeviceClient.publish`` returned: its :class:`Delivery`.

A publish is sent at once when the device is online, or waits in the bounded offline queue
(:mod:`device_sdk.offline_queue`) and is sent by :func:`drain` once the device is online again.
:class:`Deliveries` tracks each one until the server acknowledged it (QoS 1 PUBACK; for QoS 0:
written to the socket), or the queue's policy dropped it.

Why "early acks": paho assigns a message id inside ``publish()`` and the network thread may read
the PUBACK before ``publish()`` returned that id to us; such an ack is kept until the delivery
is registered under its id, so it is never lost.

Thread-safe: the application publishes from its own threads, the network thread acknowledges.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from device_sdk.offline_queue import OfflineQueue


class Delivery:
    """Tracks one publish: sent now, or queued while offline and sent after reconnection."""

    def __init__(self, topic: str, qos: int, *, queued: bool) -> None:
        self.topic = topic
        self.qos = qos
        self.queued = queued
        """True when the message waited in the offline queue."""
        self.dropped = False
        """True when the offline queue's policy dropped it (it will never be sent)."""
        self._done = threading.Event()

    @property
    def is_published(self) -> bool:
        """QoS 1: the server acknowledged it (PUBACK); QoS 0: it was written to the socket."""
        return self._done.is_set() and not self.dropped

    def wait(self, timeout: float | None = None) -> bool:
        """Block until published (or dropped); True when published."""
        self._done.wait(timeout)
        return self.is_published

    def _finish(self, *, dropped: bool = False) -> None:
        self.dropped = dropped
        self._done.set()

    def __repr__(self) -> str:
        state = "dropped" if self.dropped else "published" if self._done.is_set() else "pending"
        return f"Delivery(topic={self.topic!r}, qos={self.qos}, {state})"


class Deliveries:
    """Every delivery of one client that is not finished yet (queued or sent, not acked)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._by_mid: dict[int, Delivery] = {}
        self._early_acks: set[int] = set()
        self._open = 0

    def new(self, topic: str, qos: int, *, queued: bool) -> Delivery:
        with self._lock:
            self._open += 1
        return Delivery(topic, qos, queued=queued)

    def sent(self, mid: int, delivery: Delivery) -> None:
        """paho accepted the message under ``mid``; finish it now if its ack came first."""
        with self._lock:
            if mid in self._early_acks:
                self._early_acks.discard(mid)
            else:
                self._by_mid[mid] = delivery
                return
        self.finish(delivery)

    def acked(self, mid: int) -> None:
        """paho reports ``mid`` published (network thread)."""
        with self._lock:
            delivery = self._by_mid.pop(mid, None)
            if delivery is None:
                self._early_acks.add(mid)
                return
        self.finish(delivery)

    def finish(self, delivery: Delivery, *, dropped: bool = False) -> None:
        with self._lock:
            if delivery._done.is_set():
                return
            delivery._finish(dropped=dropped)
            self._open -= 1
            if self._open <= 0:
                self._idle.notify_all()

    def wait_idle(self, timeout: float) -> bool:
        """Block until every delivery is finished; False on timeout."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while self._open > 0:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._idle.wait(remaining)
            return True


def drain(
    queue: OfflineQueue,
    *,
    online: Callable[[], bool],
    send: Callable[[str, bytes, int, bool, Delivery | None], object],
) -> None:
    """Send what waited in the offline queue, oldest first, while the device stays online.

    Called when the device comes online and by a publish that raced with it (the message was
    queued just as the client came online): whichever thread calls it sends what it pops.
    """
    while online():
        item = queue.pop()
        if item is None:
            return
        delivery = item.tag if isinstance(item.tag, Delivery) else None
        send(item.topic, item.payload, item.qos, item.retain, delivery)
