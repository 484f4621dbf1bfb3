"""What ``GET /api/v1/endpoint`` tells a client: where devices connect and which CA to trust.

The server process knows both (it opened the MQTT port and made the server CA), so tools such as
``iotx509 fleet create`` and ``iotx509 demo`` ask instead of guessing ``HOST:8883``.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class DeviceEndpoint:
    """The MQTT device endpoint of this server: its port and the PEM of its server CA."""

    mqtt_port: int
    server_ca_pem: str
    host: str | None = None
    """The host devices should use; None: the host name the HTTP client reached us by (the MQTT
    endpoint listens on the same address as the HTTP API)."""

    def __post_init__(self) -> None:
        if not 1 <= self.mqtt_port <= 65535:
            raise ValueError(f"MQTT port {self.mqtt_port} is not 1..65535")
        if "-----BEGIN CERTIFICATE-----" not in self.server_ca_pem:
            raise ValueError("the server CA must be a PEM certificate")

    def url(self, request_host: str | None) -> str:
        host = self.host or request_host or "127.0.0.1"
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        return f"mqtts://{host}:{self.mqtt_port}"


__all__ = ["DeviceEndpoint"]
