"""Test doubles for the reference server's tests (never inside ``server_stub/``, which ships).

:class:`InMemoryMessaging` is a :class:`~server_stub.ports.DeviceMessaging` for HTTP API tests
that need devices "online" without running the MQTT endpoint.
"""

from __future__ import annotations

import time
from collections import defaultdict, deque

from server_stub.ports import DeviceMessage


class InMemoryMessaging:
    """A DeviceMessaging with devices marked online by hand; delivered messages are kept."""

    def __init__(self) -> None:
        self.online: set[tuple[str, str]] = set()
        self.delivered: list[tuple[str, str, str, bytes, int]] = []
        self.published: dict[tuple[str, str], deque[DeviceMessage]] = defaultdict(
            lambda: deque(maxlen=100)
        )

    def is_online(self, product_key: str, device_name: str) -> bool:
        return (product_key, device_name) in self.online

    def deliver(
        self, product_key: str, device_name: str, topic: str, payload: bytes, qos: int
    ) -> bool:
        if (product_key, device_name) not in self.online:
            return False
        self.delivered.append((product_key, device_name, topic, payload, qos))
        return True

    def recent_messages(
        self, product_key: str, device_name: str, limit: int = 100
    ) -> list[DeviceMessage]:
        return list(self.published[(product_key, device_name)])[-limit:]

    def device_published(
        self, product_key: str, device_name: str, topic: str, payload: bytes, qos: int = 0
    ) -> None:
        self.published[(product_key, device_name)].append(
            DeviceMessage(topic, payload, qos, time.time())
        )
