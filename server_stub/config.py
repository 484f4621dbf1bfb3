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
    """Open connections in all, authenticated or not."""
    max_pending_connections: int = 1_000
    """Connections not authenticated yet (TLS handshake, waiting for CONNECT, registry lookup).
    When full, a new connection closes the oldest of them, so idle sockets cannot keep a real
    device out and never hold the slots of authenticated devices."""
    max_pending_per_source: int = 64
    """Connections not authenticated yet from one source address; more are refused."""
    max_client_id_length: int = 256
    """Characters of the whole clientId (the id itself is <= 64 by the platform's rule, then
    ``|params|``)."""
    max_filters_per_session: int = 100
    """Topic filters one session may hold; further filters get SUBACK 0x80."""
    max_filter_levels: int = 16
    """Levels (``/``-separated) of one topic filter."""
    max_filter_bytes: int = 512
    """UTF-8 bytes of one topic filter."""
    recent_messages_per_device: int = 100
    """Messages kept per device for ``GET .../messages``."""
    recent_bytes_per_device: int = 1024 * 1024
    """Bytes (topic + payload) kept per device; older messages are dropped first."""
    recent_bytes_total: int = 64 * 1024 * 1024
    """Bytes kept for all devices together; the oldest messages of all go first."""
    recent_retention: float = 600.0
    """Seconds a disconnected device's messages are kept."""
    session_ticket_lifetime: float = 3600.0
    """Seconds a TLS session ticket resumes a device's session; the ticket keys are replaced as
    often (tickets from before then make a full handshake). 0 turns session tickets off."""
    deliver_identity: bool = True
    """Publish the identity to /ext/auth/identity/response after CONNACK 0."""
    tls_engine: str = "auto"
    """Whose OpenSSL runs the device TLS: "system" (the one Python's ``ssl`` uses: half the
    memory per connection), "pyopenssl" (the one bundled with ``cryptography``; works on every
    platform), or "auto" (system where it can be reached, else pyopenssl). Both decide the
    issuer by key with the same rules (server_stub/mqtt/tls.py)."""


@dataclass(frozen=True)
class RenewalSettings:
    """Bounds and timing of certificate renewal (docs/renewal.md); each a ``server run`` option."""

    grace: float = 7 * 86400.0
    """Seconds a device's old SN stays accepted after its new certificate was issued, unless the
    device connects with the new one first (which retires the old SN at once)."""
    min_interval: float = 60.0
    """Seconds between two renewal requests of one device; sooner ones are answered 'failed'."""
    max_open_per_account: int = 1_000
    """Requests waiting for an account's signer; more are answered 'failed' (queue full)."""
    max_csr_bytes: int = 8 * 1024
    """Largest CSR accepted (PEM bytes)."""


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
    renewal: RenewalSettings = field(default_factory=RenewalSettings)
