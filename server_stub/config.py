"""Settings of one reference-server process (HTTP API + MQTT device endpoint on one loop)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class MqttLimits:
    """Limits that protect the device endpoint; each is a ``server run`` option."""

    handshake_timeout: float = 10.0
    """Seconds a TCP connection may take to finish the TLS handshake."""
    connect_timeout: float = 10.0
    """Seconds allowed between the end of the handshake and the CONNECT packet."""
    max_packet_size: int = 256 * 1024
    max_connections: int = 20_000
    recent_messages_per_device: int = 100
    deliver_identity: bool = True
    """Publish the identity to /ext/auth/identity/response after CONNACK 0."""


@dataclass(frozen=True)
class ServerConfig:
    data_dir: Path
    host: str = "127.0.0.1"
    http_port: int = 8080
    """0 picks a free port."""
    mqtt_port: int = 8883
    """0 picks a free port."""
    hostnames: tuple[str, ...] = ()
    """Extra names for the server certificate's SANs (beside localhost, 127.0.0.1, ::1)."""
    max_upload_bytes: int = 4 * 1024 * 1024
    mqtt: MqttLimits = field(default_factory=MqttLimits)
