"""A bounded queue for QoS 1 publishes made while the device is offline.

A device that loses its network keeps measuring; memory on a Raspberry Pi-class board is finite,
so the queue has a size and a policy for when it is full:

- ``drop-oldest`` (default): keep the most recent readings, which is what telemetry usually wants;
- ``drop-newest``: keep the first readings, refuse the new one (returned to the caller);
- ``raise``: refuse the new one with :class:`~device_sdk.errors.OfflineQueueFullError`.

Thread-safe: the application publishes from its own threads while the client drains the queue
from whichever thread finds it online (:func:`device_sdk.delivery.drain`).
"""

from __future__ import annotations

import enum
import threading
from collections import deque
from dataclasses import dataclass, field

from device_sdk.errors import OfflineQueueFullError


class DropPolicy(enum.Enum):
    DROP_OLDEST = "drop-oldest"
    DROP_NEWEST = "drop-newest"
    RAISE = "raise"

    @classmethod
    def parse(cls, value: DropPolicy | str) -> DropPolicy:
        if isinstance(value, DropPolicy):
            return value
        try:
            return cls(value)
        except ValueError:
            choices = ", ".join(p.value for p in cls)
            raise ValueError(f"drop policy {value!r} is not one of: {choices}") from None


@dataclass(eq=False)
class QueuedMessage:
    """A publish waiting for a connection. ``topic`` is kept as given (maybe relative), so it is
    resolved against the identity the device has when the message is finally sent."""

    topic: str
    payload: bytes
    qos: int
    retain: bool = False
    tag: object = field(default=None, repr=False)
    """The caller's handle for this message (the client keeps its ``Delivery`` here)."""


class OfflineQueue:
    """Bounded FIFO of :class:`QueuedMessage` with a :class:`DropPolicy`."""

    def __init__(self, maxsize: int = 1000, policy: DropPolicy | str = DropPolicy.DROP_OLDEST):
        if maxsize < 1:
            raise ValueError(f"offline queue size must be >= 1, got {maxsize}")
        self.maxsize = maxsize
        self.policy = DropPolicy.parse(policy)
        self._items: deque[QueuedMessage] = deque()
        self._lock = threading.Lock()
        self.dropped = 0
        """How many messages the policy has dropped so far (for monitoring)."""

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    def put(self, message: QueuedMessage) -> QueuedMessage | None:
        """Queue ``message``; return the message the policy dropped, if any.

        Raises :class:`OfflineQueueFullError` under the ``raise`` policy when full.
        """
        with self._lock:
            if len(self._items) < self.maxsize:
                self._items.append(message)
                return None
            if self.policy is DropPolicy.RAISE:
                raise OfflineQueueFullError(
                    f"offline queue is full ({self.maxsize} messages) while the device is "
                    f"offline; message to {message.topic!r} not queued. Raise the queue size, "
                    f"publish less often, or choose drop policy 'drop-oldest'"
                )
            self.dropped += 1
            if self.policy is DropPolicy.DROP_NEWEST:
                dropped = message
            else:
                dropped = self._items.popleft()
                self._items.append(message)
        return dropped

    def pop(self) -> QueuedMessage | None:
        """The oldest message, or None when empty."""
        with self._lock:
            return self._items.popleft() if self._items else None

    def push_front(self, message: QueuedMessage) -> None:
        """Put a message back at the head (sending it failed); may exceed the size by one."""
        with self._lock:
            self._items.appendleft(message)

    def clear(self) -> list[QueuedMessage]:
        with self._lock:
            items = list(self._items)
            self._items.clear()
            return items
