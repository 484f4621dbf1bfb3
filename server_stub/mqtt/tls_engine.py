"""Server-side TLS of one device connection over memory BIOs, attributing the issuer by key.

Two engines share one attribution (:class:`TlsEngine`): :class:`~server_stub.mqtt.tls_system.
SystemTlsEngine` on the system OpenSSL that :mod:`ssl` uses (the default: half the memory per
connection), and :class:`PyOpenSslEngine` on pyOpenSSL, the portable one, used where the
system OpenSSL cannot be reached directly (:func:`device_sdk.libssl.system_libssl`).

Why not plain :mod:`ssl`: with a trust store of registered CAs, OpenSSL picks the
issuer of a device certificate *by name* (subject, then authority key identifier). A look-alike
CA with the same subject, registered by another account, then made the real issuer's devices
fail (the first same-name CA is tried and its key does not verify), or, with a forged key under
which the same signature verifies, could be chosen instead of the real one. :mod:`ssl` has no
verify callback to take that decision away from OpenSSL; pyOpenSSL has one, and the system
engine installs OpenSSL's certificate-verify callback itself.

So OpenSSL's trust store is empty and the verify callback decides at depth 0 (the device
certificate) with the trust index snapshot taken when the connection was accepted
(:class:`server_stub.ports.TrustIndex`): the subject name only narrows the candidates, exactly
one registered CA key must verify the signature. The decision is made once per connection
(OpenSSL calls the callback several times per certificate) and kept on the engine, so that
CONNECT is authenticated with that CA and the SN without a second signature check.

Alerts stay the ones OpenSSL sends for a certificate it cannot chain: *unknown CA* for a
certificate no registered CA key verifies (and for the other refusals), *certificate expired*
for a device certificate out of its dates, *certificate required* without a certificate. The
SDK maps them (``device_sdk.tls.map_connect_error``).

A *resumed* handshake (session ticket) skips the verify callback: the engine then attributes
the certificate kept in the session again, with the same snapshot and the same rule
(:mod:`server_stub.mqtt.resumption`), and a completed handshake without an attribution is still
refused.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Callable
from typing import Any

from cryptography import x509
from OpenSSL import SSL, crypto
from OpenSSL._util import ffi as _ffi
from OpenSSL._util import lib as _ssl_lib

from device_sdk.certificate import remember_model
from device_sdk.certs import certificate_sn, device_certificate_problem
from server_stub.mqtt.errors import MqttError
from server_stub.mqtt.resumption import AttributionCache, attribute_certificate
from server_stub.ports import Attribution, IssuerRefused, IssuingCa, TrustIndex

log = logging.getLogger("server_stub.mqtt")

#: Errors OpenSSL reports at depth 0 because it cannot (or, with extra certificates the client
#: sent, should not) build a chain to a trust anchor. The attribution by key replaces that part
#: of verification, so these are overridden when the attribution succeeded; every other error
#: (dates, purpose, unknown critical extensions) still refuses the certificate.
_CHAIN_ERRORS = frozenset(
    {
        2,  # X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT
        7,  # X509_V_ERR_CERT_SIGNATURE_FAILURE (under a certificate the client sent)
        18,  # X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT
        19,  # X509_V_ERR_SELF_SIGNED_CERT_IN_CHAIN
        20,  # X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY
        21,  # X509_V_ERR_UNABLE_TO_VERIFY_LEAF_SIGNATURE
        27,  # X509_V_ERR_CERT_UNTRUSTED
    }
)
#: OpenSSL's texts for the errors that still refuse an attributed certificate (for the log).
_VERIFY_TEXT = {
    9: "certificate is not yet valid",
    10: "certificate has expired",
    26: "unsupported certificate purpose",
    34: "unhandled critical extension",
}
_OUT_CHUNK = 256 * 1024
READ_CHUNK = 16 * 1024


class TlsError(MqttError):
    """TLS failed on one connection; the connection is closed (the alert, if any, is sent)."""

    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(message)
        self.reason = reason
        """OpenSSL's short reason, e.g. ``certificate verify failed``."""


class TlsHandshakeError(TlsError):
    """The handshake failed; ``verify_message`` says why the certificate was refused, if it was."""

    def __init__(
        self,
        message: str,
        *,
        reason: str,
        verify_message: str | None,
        cert_sn: str | None,
        issuer: str | None,
    ) -> None:
        super().__init__(message, reason=reason)
        self.verify_message = verify_message
        self.cert_sn = cert_sn
        self.issuer = issuer


class TlsClosed(TlsError):
    """The client closed TLS cleanly (close_notify)."""


def tls_error(when: str, reason: str) -> TlsError:
    """A TLS failure of an established connection (``when``: "while sending", ...)."""
    return TlsError(f"TLS error {when}: {reason}", reason=reason)


def session_reused(conn: SSL.Connection) -> bool:
    """Whether the handshake resumed a session (pyOpenSSL has no public call for it)."""
    ssl_ptr: Any = conn._ssl  # the SSL* pyOpenSSL wraps
    return bool(_ssl_lib.SSL_session_reused(ssl_ptr))


def _reason(exc: SSL.Error) -> str:
    args = exc.args[0] if exc.args else None
    if isinstance(args, list) and args and isinstance(args[-1], tuple):
        return str(args[-1][-1])
    return str(exc) or type(exc).__name__


def verify_callback(
    conn: SSL.Connection, cert: crypto.X509, errnum: int, depth: int, ok: int
) -> bool:
    """OpenSSL's verify callback: the decision is the engine's attribution at depth 0."""
    if depth != 0:
        return True  # extra certificates the client sent decide nothing
    ref = conn.get_app_data()
    engine = ref() if isinstance(ref, weakref.ref) else None
    if not isinstance(engine, PyOpenSslEngine):
        return False
    if not engine.decided:  # OpenSSL calls back at depth 0 more than once: encode once
        try:
            engine.decide(crypto.dump_certificate(crypto.FILETYPE_ASN1, cert))
        except crypto.Error:
            return False
    if engine.issuer is None:
        return False
    if ok or errnum in _CHAIN_ERRORS:
        return True
    engine.refusal = _VERIFY_TEXT.get(errnum, f"OpenSSL verify error {errnum}")
    return False


class TlsEngine:
    """One server connection's TLS state: bytes from the socket in, bytes for it out.

    This base holds the attribution, the same for both engines; a subclass moves the bytes.
    """

    __slots__ = (
        "__weakref__",
        "_cache",
        "_decided",
        "_index",
        "issuer",
        "leaf",
        "leaf_der",
        "refusal",
    )

    def __init__(self, index: TrustIndex, cache: AttributionCache | None = None) -> None:
        self._index: TrustIndex | None = index
        self._cache = cache
        """Where attributions are kept per trust snapshot; None: attribute each one afresh."""
        self._decided = False
        self.issuer: IssuingCa | None = None
        self.leaf: x509.Certificate | None = None
        """The device certificate, kept during the handshake only (for the refusal log line)."""
        self.leaf_der: bytes | None = None
        """Its DER, kept for CONNECT: a few hundred bytes instead of a parsed certificate."""
        self.refusal: str | None = None

    # --- attribution (called from the verify callback) -----------------------------------------

    @property
    def decided(self) -> bool:
        """Whether this connection's certificate was attributed already (accepted or not)."""
        return self._decided

    def decide(self, der: bytes) -> bool:
        """Attribute the device certificate (DER) once per connection; True when accepted."""
        if not self._decided:
            self._decided = True
            try:
                self.leaf_der = der
                if self._cache is not None:  # a certificate seen under this snapshot: its answer
                    self._attribute_cached(der)
                else:
                    leaf = x509.load_der_x509_certificate(der)
                    remember_model(leaf, der)
                    self._attribute(leaf)
            except Exception as exc:  # a certificate the parser refuses: refuse, never raise
                self.issuer = None
                self.refusal = f"the device certificate cannot be read: {exc}"
        return self.issuer is not None

    def _attribute(self, leaf: x509.Certificate) -> None:
        self.leaf = leaf
        problem = device_certificate_problem(leaf)
        if problem is not None:
            self.refusal = problem
            return
        index, self._index = self._index, None  # a live connection pins no old snapshot
        if index is None:
            self.refusal = "no trust index for this connection"
            return
        self._accept(index.attribute(leaf), "")

    def _attribute_cached(self, der: bytes) -> None:
        """:meth:`_attribute` through the attribution cache (the same rule, answered once per
        certificate and trust snapshot): a device returning with a full handshake costs no
        signature check or certificate parsing either."""
        assert self._cache is not None
        index, self._index = self._index, None
        if index is None:
            self.refusal = "no trust index for this connection"
            return
        self._accept(self._cache.attribute(index, der), "")

    def _accept(self, found: Attribution, context: str) -> None:
        if isinstance(found, IssuerRefused):
            self.refusal = context + found.reason
        elif not found.active:
            self.refusal = f"{context}its issuing CA (caSn {found.ca_sn}) is disabled"
        else:
            self.issuer = found

    def _attribute_resumed(self, der: bytes | None) -> None:
        """A resumed session: attribute the certificate kept in it (``der``), as a full
        handshake would.

        Never the attribution of the original handshake: the registry may have changed since
        the ticket was issued. The snapshot is the one taken when this connection was accepted.
        """
        self._decided = True
        index, self._index = self._index, None
        if index is None or der is None:
            self.refusal = "resumed session without a trust index or a device certificate"
            return
        self.leaf_der = der
        try:
            if self._cache is not None:
                found = self._cache.attribute(index, der)
            else:
                found = attribute_certificate(index, x509.load_der_x509_certificate(der))
        except ValueError as exc:
            self.refusal = f"resumed session: the device certificate cannot be read: {exc}"
            return
        self._accept(found, "resumed session: ")

    def _completed(self, resumed: bool, peer_der: Callable[[], bytes | None]) -> None:
        """The handshake completed: attribute a resumed session, and never accept a completed
        handshake without an attribution."""
        if not self._decided and resumed:
            self._attribute_resumed(peer_der())
        if self.issuer is None:
            self.refusal = self.refusal or "no device certificate was attributed in the handshake"
            raise self._handshake_error("no attributed certificate")
        self.leaf = None  # an idle connection keeps no parsed certificate (leaf_der: CONNECT's)

    def _handshake_error(self, reason: str) -> TlsHandshakeError:
        leaf = self.leaf
        if leaf is None and self.leaf_der is not None:
            try:
                leaf = x509.load_der_x509_certificate(self.leaf_der)
            except ValueError:
                leaf = None
        sn = issuer = None
        if leaf is not None:
            issuer = leaf.issuer.rfc4514_string()
            try:
                sn = certificate_sn(leaf)
            except ValueError:
                sn = f"unusable ({leaf.serial_number})"
        detail = self.refusal or reason
        return TlsHandshakeError(
            f"TLS handshake refused: {detail}",
            reason=reason,
            verify_message=self.refusal,
            cert_sn=sn,
            issuer=issuer,
        )

    def peer_certificate_der(self) -> bytes | None:
        """The attributed device certificate (DER) once the handshake is complete, handed over
        once (to CONNECT): an idle connection keeps no copy of its certificate."""
        der, self.leaf_der = self.leaf_der, None
        return der if self.issuer is not None else None

    # --- bytes (each engine's) -----------------------------------------------------------------

    def feed(self, data: bytes) -> None:
        raise NotImplementedError

    def outgoing(self) -> bytes:
        """Everything TLS produced for the peer since the last call (b"" when nothing)."""
        raise NotImplementedError

    def handshake(self) -> bool:
        """Advance the handshake; True once it is complete and the certificate attributed."""
        raise NotImplementedError

    def read(self) -> list[bytes]:
        """Decrypted application data available now. Raises :class:`TlsClosed` at
        close_notify and :class:`TlsError` on a TLS failure."""
        chunks: list[bytes] = []
        while True:
            chunk = self._recv(READ_CHUNK)
            if not chunk:
                return chunks
            chunks.append(chunk)

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[self._send(view) :]

    def _recv(self, size: int) -> bytes | None:
        """Up to ``size`` decrypted bytes; None (or b"") when nothing more is there now. Maps
        the library's errors: close_notify to :class:`TlsClosed`, others to :class:`TlsError`."""
        raise NotImplementedError

    def _send(self, data: memoryview) -> int:
        """Encrypt some of ``data``; how many bytes were taken. Errors become :class:`TlsError`."""
        raise NotImplementedError

    def compact(self) -> bool:
        """Give the handshake's buffers back once both directions are empty; True if done."""
        raise NotImplementedError

    def shutdown(self) -> None:
        """Queue close_notify (then read :meth:`outgoing`)."""
        raise NotImplementedError


class PyOpenSslEngine(TlsEngine):
    """The engine on pyOpenSSL (the OpenSSL bundled with ``cryptography``)."""

    __slots__ = ("_conn",)

    def __init__(
        self, context: SSL.Context, index: TrustIndex, cache: AttributionCache | None = None
    ) -> None:
        super().__init__(index, cache)
        conn = SSL.Connection(context, None)
        conn.set_accept_state()
        # A weak reference: engine -> connection -> engine would be a cycle that only the cyclic
        # GC frees, and until it runs every closed connection keeps its OpenSSL state (tens of
        # KiB each); without the cycle, a closed connection is freed at once.
        conn.set_app_data(weakref.ref(self))
        self._conn = conn

    def feed(self, data: bytes) -> None:
        self._conn.bio_write(data)

    def outgoing(self) -> bytes:
        """Everything TLS produced for the peer since the last call (b"" when nothing).

        Read in one call of the size waiting: pyOpenSSL's ``bio_read(n)`` allocates (and
        zeroes) an ``n``-byte buffer for every call, and a fixed large chunk made that the
        endpoint's third cost per connection (0.16 ms per new connection, py-spy).
        """
        conn = self._conn
        out = getattr(conn, "_from_ssl", None)
        if out is not None:
            waiting = int(_ssl_lib.BIO_get_mem_data(out, _ffi.new("char **")))
            if waiting <= 0:
                return b""
            try:
                return conn.bio_read(waiting)
            except SSL.WantReadError:
                return b""
        parts: list[bytes] = []  # (another pyOpenSSL: no BIO pointer to ask)
        while True:
            try:
                chunk = conn.bio_read(_OUT_CHUNK)
            except SSL.WantReadError:
                break
            parts.append(chunk)
            if len(chunk) < _OUT_CHUNK:
                break
        return b"".join(parts)

    def handshake(self) -> bool:
        try:
            self._conn.do_handshake()
        except SSL.WantReadError:
            return False
        except SSL.Error as exc:
            raise self._handshake_error(_reason(exc)) from exc
        self._completed(session_reused(self._conn), self._peer_der)
        return True

    def _peer_der(self) -> bytes | None:
        cert = self._conn.get_peer_certificate()
        return None if cert is None else crypto.dump_certificate(crypto.FILETYPE_ASN1, cert)

    def _recv(self, size: int) -> bytes | None:
        try:
            return self._conn.recv(size)
        except SSL.WantReadError:
            return None
        except SSL.ZeroReturnError as exc:
            raise TlsClosed("the client closed TLS", reason="close notify") from exc
        except SSL.Error as exc:
            raise tls_error("after the handshake", _reason(exc)) from exc

    def _send(self, data: memoryview) -> int:
        try:
            return self._conn.send(data)
        except SSL.Error as exc:
            raise tls_error("while sending", _reason(exc)) from exc

    def compact(self) -> bool:
        """Give the handshake's memory back: replace the two memory BIOs by empty ones.

        A memory BIO keeps the allocation of the largest flight that passed through it (the
        server's certificate flight and session tickets, the client's certificate: several KiB
        per connection) for as long as the connection lives. Once the handshake is done and both
        are empty, fresh ones cost almost nothing. pyOpenSSL has no call for this, so it goes
        through the SSL* and the two BIO pointers it keeps; when those are not where expected
        (another pyOpenSSL), nothing is changed. True when the BIOs were replaced.
        """
        conn = self._conn
        ssl_ptr = getattr(conn, "_ssl", None)
        into = getattr(conn, "_into_ssl", None)
        out = getattr(conn, "_from_ssl", None)
        if ssl_ptr is None or into is None or out is None:
            return False
        data = _ffi.new("char **")
        if _ssl_lib.BIO_get_mem_data(into, data) or _ssl_lib.BIO_get_mem_data(out, data):
            return False  # bytes still waiting: keep them
        new_into = _ssl_lib.BIO_new(_ssl_lib.BIO_s_mem())
        new_out = _ssl_lib.BIO_new(_ssl_lib.BIO_s_mem())
        if new_into == _ffi.NULL or new_out == _ffi.NULL:
            for bio in (new_into, new_out):
                if bio != _ffi.NULL:
                    _ssl_lib.BIO_free(bio)
            return False
        _ssl_lib.SSL_set_bio(ssl_ptr, new_into, new_out)  # frees the old pair
        conn._into_ssl, conn._from_ssl = new_into, new_out
        return True

    def shutdown(self) -> None:
        """Queue close_notify (then read :meth:`outgoing`)."""
        try:
            self._conn.shutdown()
        except SSL.Error:
            pass
