"""The registry's acceptances of CONNECT, answered on the event loop while they still hold.

Why: the registry's ``authenticate`` reads SQLite, so CONNECT asks it in an executor thread, and
that hop (thread hand-over, future chaining, a loop wake-up) is a large part of the endpoint's
own cost per connection, and the largest part of a resumed reconnect's. A device that returns
(after a network blip, a reboot, a ticket-resumed reconnect) asks the same question again.

What makes a kept answer safe: everything the registry's answer depends on, except the clock,
changes the registry's ``trust_generation`` (CAs registered, enabled, disabled or deleted,
associations added or removed, devices enabled or disabled, renewed SNs retired): that is the
:class:`~server_stub.ports.DeviceDirectory` contract the endpoint already relies on to re-check
live sessions. So an answer is kept only with the generation it was given under, and every
entry is dropped the moment the generation moves. The key is the attributed CA and the SHA-256
of the exact certificate, so only that certificate, attributed to that CA by key in this
connection's handshake, gets the answer. The clock part (the certificate's validity dates) is
checked again on every use by the broker. Refusals are never kept (a hostile device cannot grow
this), and the entries are bounded (oldest first out).
"""

from __future__ import annotations

import hashlib

from server_stub.ports import AuthenticatedDevice, IssuingCa

DecisionKey = tuple[int, bytes]


class Decisions:
    """Accepted CONNECT decisions for one trust generation at a time."""

    __slots__ = ("_entries", "_generation", "_limit", "hits")

    def __init__(self, limit: int) -> None:
        self._generation: int | None = None
        self._entries: dict[DecisionKey, AuthenticatedDevice] = {}
        self._limit = max(1, limit)
        self.hits = 0

    def __len__(self) -> int:
        return len(self._entries)

    @staticmethod
    def key(issuer: IssuingCa, der: bytes) -> DecisionKey:
        return (issuer.ca_id, hashlib.sha256(der).digest())

    def get(self, generation: int, key: DecisionKey) -> AuthenticatedDevice | None:
        if generation != self._generation:
            return None
        found = self._entries.get(key)
        if found is not None:
            self.hits += 1
        return found

    def put(self, generation: int, key: DecisionKey, decision: AuthenticatedDevice) -> None:
        """Keep ``decision``, given while the registry was at ``generation``."""
        if generation != self._generation:
            self._generation = generation
            self._entries = {}
        entries = self._entries
        if key not in entries and len(entries) >= self._limit:
            del entries[next(iter(entries))]
        entries[key] = decision
