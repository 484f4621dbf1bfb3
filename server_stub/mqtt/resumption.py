"""Who issued the certificate of a *resumed* TLS session: attributed again, by key, every time.

A resumed handshake (a session ticket the client presents) skips the verify callback, so the
attribution made in the original handshake is not available, and it must not be trusted anyway:
the registry may have changed since the ticket was issued (a CA disabled or deleted, another
account registering a look-alike CA). What the ticket does carry safely is the device certificate
itself: the session, with the peer certificate in it, is encrypted and authenticated under the
server's ticket key, which never leaves the process; a client cannot change it.

So a resumed connection is attributed exactly as a full handshake is, with the trust index
snapshot taken when the connection was accepted (:meth:`CaIndex.attribute` semantics: the name
narrows, exactly one registered key verifies). To keep the one RSA verification and the
certificate parsing off the reconnect path, answers are cached by the certificate's SHA-256 for
*one* index snapshot: a new snapshot (any registry change moves the trust generation and
rebuilds the index) empties the cache, so no answer outlives the index it was computed with.
The cache is bounded (:data:`MAX_CACHED_ATTRIBUTIONS`, oldest first out). Full handshakes
use it too (the same rule on the same bytes and snapshot): a device that returns without a
session is not checked again either.

Then, as for every connection, CONNECT goes through the registry (device enabled, association,
CA still active): a ticket is never a shortcut around the registry.
"""

from __future__ import annotations

import hashlib

from cryptography import x509

from device_sdk.certificate import remember_model
from device_sdk.certs import device_certificate_problem
from server_stub.ports import Attribution, IssuerRefused, TrustIndex

#: Certificates whose attribution is remembered for the current trust index (about 200 bytes
#: each): a fleet of this many devices reconnecting resumes without a signature check each.
MAX_CACHED_ATTRIBUTIONS = 20_000


def attribute_certificate(index: TrustIndex, leaf: x509.Certificate) -> Attribution:
    """The rule a full handshake applies (device-certificate checks, then attribution by key)."""
    problem = device_certificate_problem(leaf)
    if problem is not None:
        return IssuerRefused(problem)
    return index.attribute(leaf)


class AttributionCache:
    """Attributions of resumed sessions' certificates for one trust index snapshot at a time."""

    __slots__ = ("_entries", "_index", "_limit", "hits", "misses")

    def __init__(self, limit: int = MAX_CACHED_ATTRIBUTIONS) -> None:
        self._index: TrustIndex | None = None
        self._entries: dict[bytes, Attribution] = {}
        self._limit = limit
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    def attribute(self, index: TrustIndex, der: bytes) -> Attribution:
        """Attribute the certificate ``der`` with ``index``; raises ``ValueError`` when it
        cannot be parsed."""
        if index is not self._index:  # another snapshot: nothing computed before holds
            self._index = index
            self._entries = {}
        key = hashlib.sha256(der).digest()
        found = self._entries.get(key)
        if found is not None:
            self.hits += 1
            return found
        self.misses += 1
        leaf = x509.load_der_x509_certificate(der)
        remember_model(leaf, der)  # the rules read the model from these bytes, once
        found = attribute_certificate(index, leaf)
        entries = self._entries
        if len(entries) >= self._limit:
            del entries[next(iter(entries))]
        entries[key] = found
        return found
