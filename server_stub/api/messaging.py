"""A :class:`~server_stub.ports.DeviceMessaging` for a server without its MQTT endpoint."""

from __future__ import annotations

from server_stub.ports import DeviceMessage


class NoMessaging:
    """Every device is offline and nothing can be delivered (HTTP-only server)."""

    def is_online(self, product_key: str, device_name: str) -> bool:
        return False

    def deliver(
        self, product_key: str, device_name: str, topic: str, payload: bytes, qos: int
    ) -> bool:
        return False

    def recent_messages(
        self, product_key: str, device_name: str, limit: int = 100
    ) -> list[DeviceMessage]:
        return []
