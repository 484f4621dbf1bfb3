"""Who may open a connection: the connection budgets of the device endpoint, and the shape of
a connection as the broker sees it (:class:`Link`).

Budgets (fields of :class:`~server_stub.config.MqttLimits`, documented in
``docs/device-endpoint-limits.md``): connections in all (held to what the process's descriptor
limit allows), connections not authenticated yet in all, and per source address. A full budget
closes the oldest unauthenticated connection of the most crowded source address, so idle
sockets cannot keep a real device out and one address never holds more than its share.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from typing import Protocol

from server_stub.config import MqttLimits
from server_stub.mqtt import codec
from server_stub.mqtt.session import Session
from server_stub.ports import IssuingCa

log = logging.getLogger("server_stub.mqtt")

#: Longest text of client-chosen origin (client id, topic, username) written into one log line.
LOG_CLIP = 200


def clip(text: str, limit: int = LOG_CLIP) -> str:
    """``text`` cut for a log line, saying how long it really was."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}...({len(text)} characters)"


class Link(Protocol):
    """What the broker needs of one connection (:class:`~server_stub.mqtt.connection.MqttConnection`)."""

    peer: str
    source: str
    session: Session

    def __hash__(self) -> int: ...

    def send(self, packet: codec.Packet) -> None: ...

    def send_bytes(self, data: bytes) -> None: ...

    def close(self, reason: str | None = None, *, tls_shutdown: bool = True) -> None: ...

    def peer_certificate_der(self) -> bytes | None:
        """The device certificate (DER) attributed in the handshake; given once, at CONNECT."""

    @property
    def issuer(self) -> IssuingCa | None:
        """The registered CA the TLS handshake attributed the certificate to (by key)."""

    def hold(self) -> None:
        """Stop dispatching packets, and reading more (the registry lookup of CONNECT runs)."""

    def release(self) -> None:
        """Dispatch what was held back and read again."""


#: Descriptors kept for everything but device connections (listeners, SQLite, logs, HTTP).
RESERVED_DESCRIPTORS = 128


def connection_capacity(wanted: int) -> int:
    """How many connections this process can really hold, raising its descriptor limit if it may.

    Why: with ``max_connections`` above the descriptor limit, ``accept`` fails first and the
    budgets of :meth:`Admission.admit` (which close idle connections to admit new ones) never act.
    """
    try:
        import resource
    except ImportError:  # not POSIX
        return wanted
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = wanted + RESERVED_DESCRIPTORS
    if soft != resource.RLIM_INFINITY and soft < need:
        target = need if hard == resource.RLIM_INFINITY else min(need, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    if soft == resource.RLIM_INFINITY:
        return wanted
    return max(1, min(wanted, soft - RESERVED_DESCRIPTORS))


class Admission:
    """The connections of one endpoint and which of them are not authenticated yet."""

    def __init__(self, limits: MqttLimits) -> None:
        self._limits = limits
        self.max_connections = connection_capacity(limits.max_connections)
        if self.max_connections < limits.max_connections:
            log.warning(
                "mqtt: max_connections %d is above what the descriptor limit allows; "
                "holding at most %d connections",
                limits.max_connections,
                self.max_connections,
            )
        self.connections: set[Link] = set()
        self.pending: OrderedDict[Link, None] = OrderedDict()
        """Connections not authenticated yet, oldest first."""
        self.by_source: dict[str, OrderedDict[Link, None]] = {}
        """The same connections by source address, each oldest first."""

    def admit(self, conn: Link) -> bool:
        """Take a new TCP connection, or refuse it (one log line); may close a pending one.

        A full endpoint, or a full budget for unauthenticated connections, closes the oldest
        unauthenticated connection of the source address that holds the most of them: idle
        sockets then cannot keep a real device out, and one source address can never hold more
        than its own share.
        """
        limits = self._limits
        source = conn.source
        from_source = len(self.by_source.get(source, ()))
        if from_source >= limits.max_pending_per_source:
            log.warning(
                "mqtt %s: refused: %d connections from %s are not authenticated yet "
                "(max_pending_per_source)",
                conn.peer,
                from_source,
                source,
            )
            return False
        full = len(self.connections) >= self.max_connections
        if full or len(self.pending) >= limits.max_pending_connections:
            if not self.pending:
                log.warning(
                    "mqtt %s: refused: %d connections is the limit (max_connections)",
                    conn.peer,
                    self.max_connections,
                )
                return False
            crowded = max(self.by_source.values(), key=len)
            oldest = next(iter(crowded))
            which = "max_connections" if full else "max_pending_connections"
            oldest.close(
                f"oldest unauthenticated connection, closed to admit a new one ({which})",
                tls_shutdown=False,
            )
        self.connections.add(conn)
        self.pending[conn] = None
        self.by_source.setdefault(source, OrderedDict())[conn] = None
        return True

    def unpend(self, conn: Link) -> None:
        """``conn`` authenticated (or closing): it no longer counts as pending."""
        if conn in self.pending:
            del self.pending[conn]
            same_source = self.by_source[conn.source]
            del same_source[conn]
            if not same_source:
                del self.by_source[conn.source]
