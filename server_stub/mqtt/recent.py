"""The recent-messages store behind ``GET /devices/{pk}/{dn}/messages``: bounded every way.

Why bounds of four kinds: a count per device alone let 8 devices keep 281 MB (100 messages of
255 KiB each), kept after they left. Here a device keeps at most ``recent_messages_per_device``
messages and ``recent_bytes_per_device`` bytes (its oldest go first), all devices together keep
at most ``recent_bytes_total`` bytes (the oldest messages of all go first), and a device that
disconnected loses its messages ``recent_retention`` seconds later. So the memory held, and the
size of one HTTP answer, are known from the settings. No I/O, no clock of its own.
"""

from __future__ import annotations

from collections import deque

from server_stub.config import MqttLimits
from server_stub.ports import DeviceMessage

DeviceKey = tuple[str, str]


def message_size(message: DeviceMessage) -> int:
    """Bytes a message counts against the budgets: its topic (UTF-8) and payload."""
    return len(message.topic.encode("utf-8", "surrogatepass")) + len(message.payload)


class _Device:
    __slots__ = ("bytes", "left_at", "messages")

    def __init__(self) -> None:
        self.messages: deque[tuple[int, DeviceMessage]] = deque()
        self.bytes = 0
        self.left_at: float | None = None


class RecentMessages:
    """Per-device rings with byte budgets, a global byte budget and expiry after leaving."""

    def __init__(self, limits: MqttLimits) -> None:
        self._limits = limits
        self._devices: dict[DeviceKey, _Device] = {}
        self._order: deque[tuple[int, DeviceKey]] = deque()
        """(sequence, device) of every kept message, oldest first; entries whose message was
        already dropped are skipped when met and compacted away when they outnumber the rest."""
        self._seq = 0
        self._count = 0
        self.total_bytes = 0

    def __len__(self) -> int:
        """Messages kept, all devices together."""
        return self._count

    def add(self, key: DeviceKey, message: DeviceMessage) -> None:
        limits = self._limits
        size = message_size(message)
        if (
            size > limits.recent_bytes_per_device
            or size > limits.recent_bytes_total
            or limits.recent_messages_per_device <= 0
        ):
            return  # could never be kept whole; keeping it would evict everything else
        device = self._devices.get(key)
        if device is None:
            device = self._devices[key] = _Device()
        device.left_at = None
        self._seq += 1
        device.messages.append((self._seq, message))
        device.bytes += size
        self.total_bytes += size
        self._count += 1
        self._order.append((self._seq, key))
        while (
            len(device.messages) > limits.recent_messages_per_device
            or device.bytes > limits.recent_bytes_per_device
        ):
            self._drop_oldest(key, device)
        while self.total_bytes > limits.recent_bytes_total:
            self._drop_globally_oldest()
        if len(self._order) > 2 * self._count + 1024:
            self._compact()

    def get(self, key: DeviceKey, limit: int) -> list[DeviceMessage]:
        device = self._devices.get(key)
        if device is None or limit <= 0:
            return []
        items = [m for _seq, m in device.messages]
        return items[-limit:]

    def left(self, key: DeviceKey, now: float) -> None:
        """The device's session ended: its messages expire ``recent_retention`` s from now."""
        device = self._devices.get(key)
        if device is not None:
            device.left_at = now

    def returned(self, key: DeviceKey) -> None:
        device = self._devices.get(key)
        if device is not None:
            device.left_at = None

    def expire(self, now: float) -> int:
        """Forget devices that left more than ``recent_retention`` s ago; returns how many."""
        cutoff = now - self._limits.recent_retention
        gone = [
            k for k, d in self._devices.items() if d.left_at is not None and d.left_at <= cutoff
        ]
        for key in gone:
            device = self._devices.pop(key)
            self.total_bytes -= device.bytes
            self._count -= len(device.messages)
        if gone and len(self._order) > 2 * self._count + 1024:
            self._compact()
        return len(gone)

    # --- internals -------------------------------------------------------------------------------

    def _drop_oldest(self, key: DeviceKey, device: _Device) -> None:
        _seq, message = device.messages.popleft()
        size = message_size(message)
        device.bytes -= size
        self.total_bytes -= size
        self._count -= 1
        if not device.messages:
            del self._devices[key]

    def _drop_globally_oldest(self) -> None:
        while self._order:
            seq, key = self._order.popleft()
            device = self._devices.get(key)
            if device is not None and device.messages and device.messages[0][0] == seq:
                self._drop_oldest(key, device)
                return

    def _compact(self) -> None:
        live = [(seq, key) for key, d in self._devices.items() for seq, _m in d.messages]
        live.sort()
        self._order = deque(live)
