"""The device endpoint's TLS on the system OpenSSL (the one :mod:`ssl` uses), issuer by key.

Why this engine is the default: an idle authenticated connection costs about 8 KiB less here
than on the OpenSSL bundled with ``cryptography`` (pyOpenSSL, :class:`PyOpenSslEngine`), which
is most of the endpoint's memory per device (``bench/bench_connections.py``). The handshake
costs the same CPU on both.

How the issuer is still decided by key, never by name: OpenSSL's certificate-verify callback
(``SSL_CTX_set_cert_verify_callback``, reached through :mod:`device_sdk.libssl`) replaces its
chain building. The callback takes the device certificate's DER, lets the engine attribute it
with the trust snapshot of its connection (:meth:`TlsEngine.decide`: the name narrows, exactly
one registered key verifies), and then runs OpenSSL's own checks of that certificate with the
certificate itself as the only trust anchor (:meth:`LibSsl.verify_as_anchor`): its dates,
purpose and critical extensions, as before, with no chain and no certificate the client sent
taken into account. A refusal sets the verification error, so the client gets the alert it got
before (*unknown CA* when no registered key verifies; *certificate expired*; ...).

The callback runs inside ``do_handshake``, on the thread that called it: the engine handshaking
is found in a thread-local slot set around that call (OpenSSL calls it for no other reason:
renegotiation is off and TLS 1.3 post-handshake authentication is never requested).
"""

from __future__ import annotations

import logging
import ssl
import threading

from device_sdk import keyfile
from device_sdk.libssl import (
    CERT_VERIFY_CALLBACK,
    X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY,
    LibSsl,
    system_libssl,
)
from server_stub.mqtt.errors import MqttServiceError
from server_stub.mqtt.resumption import AttributionCache
from server_stub.mqtt.tls_engine import (
    _VERIFY_TEXT,
    TlsClosed,
    TlsEngine,
    tls_error,
)
from server_stub.ports import TrustIndex

log = logging.getLogger("server_stub.mqtt")


class _Handshaking(threading.local):
    engine: SystemTlsEngine | None = None


_handshaking = _Handshaking()


class SystemTlsEngine(TlsEngine):
    """One connection on an :class:`ssl.SSLObject` over two memory BIOs."""

    __slots__ = ("_incoming", "_lib", "_outgoing", "_tls")

    def __init__(
        self,
        context: ssl.SSLContext,
        lib: LibSsl,
        index: TrustIndex,
        cache: AttributionCache | None = None,
    ) -> None:
        super().__init__(index, cache)
        self._lib = lib
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._tls = context.wrap_bio(self._incoming, self._outgoing, server_side=True)

    def feed(self, data: bytes) -> None:
        self._incoming.write(data)

    def outgoing(self) -> bytes:
        return self._outgoing.read()

    def handshake(self) -> bool:
        _handshaking.engine = self
        try:
            self._tls.do_handshake()
        except ssl.SSLWantReadError:
            return False
        except ssl.SSLError as exc:
            raise self._handshake_error(_reason(exc)) from exc
        except OSError as exc:  # (ssl reports some failures as plain OS errors)
            raise self._handshake_error(str(exc) or type(exc).__name__) from exc
        finally:
            _handshaking.engine = None
        self._completed(bool(self._tls.session_reused), self._peer_der)
        return True

    def _peer_der(self) -> bytes | None:
        return self._tls.getpeercert(binary_form=True)

    def _recv(self, size: int) -> bytes | None:
        try:
            return self._tls.read(size)
        except ssl.SSLWantReadError:
            return None
        except ssl.SSLZeroReturnError as exc:
            raise TlsClosed("the client closed TLS", reason="close notify") from exc
        except ssl.SSLError as exc:
            raise tls_error("after the handshake", _reason(exc)) from exc

    def _send(self, data: memoryview) -> int:
        try:
            return self._tls.write(data)
        except ssl.SSLError as exc:
            raise tls_error("while sending", _reason(exc)) from exc

    def compact(self) -> bool:
        """Give the handshake's memory back: a memory BIO keeps the allocation of the largest
        flight that passed through it (the server's certificate flight and tickets, the
        client's certificate: about 5 KiB per connection, measured) as long as it lives."""
        if self._incoming.pending or self._outgoing.pending:
            return False
        lib = self._lib
        return lib.release_buffer(self._incoming) & lib.release_buffer(self._outgoing)

    def shutdown(self) -> None:
        try:
            self._tls.unwrap()
        except (ssl.SSLError, OSError, ValueError):
            pass  # close_notify is queued (or the link is already broken)


def _reason(exc: OSError) -> str:
    """OpenSSL's short reason, as the log line shows it (``certificate verify failed``)."""
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return str(exc.reason).lower().replace("_", " ")
    return str(exc) or type(exc).__name__


def _verify(lib: LibSsl, store_ctx: int | None) -> int:
    """The certificate-verify callback's decision: 1 accepts, 0 refuses (error set)."""
    if store_ctx is None:
        return 0
    engine = _handshaking.engine
    der = lib.certificate_der(store_ctx)
    if engine is None or der is None or not engine.decide(der):
        lib.refuse(store_ctx, X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY)
        return 0
    code = lib.verify_as_anchor(store_ctx)
    if code:
        engine.refusal = _VERIFY_TEXT.get(code) or lib.verify_error_text(code)
        return 0
    return 1


def _on_verify(store_ctx: int | None, _arg: int | None) -> int:
    lib = system_libssl()
    if lib is None:  # (never: a context with this callback was made with the library)
        return 0
    try:
        return _verify(lib, store_ctx)
    except BaseException:  # nothing may unwind through OpenSSL: refuse instead
        log.exception("mqtt: the certificate-verify callback failed; refusing the handshake")
        if store_ctx is not None:
            lib.refuse(store_ctx, X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY)
        return 0


#: One callback for every context, alive as long as the process: OpenSSL keeps only its
#: address, and a context replaced by a ticket-key rotation still finishes the handshakes it
#: started (a callback freed with its context would leave them a dangling pointer).
_CALLBACK = CERT_VERIFY_CALLBACK(_on_verify)


class SystemTlsContext:
    """The server context on the system OpenSSL, with the verify callback installed."""

    def __init__(
        self, lib: LibSsl, cert_pem: bytes, key_pem: bytes, ticket_lifetime: float = 0.0
    ) -> None:
        self.lib = lib
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.maximum_version = ssl.TLSVersion.TLSv1_3
        context.options |= (
            ssl.OP_NO_RENEGOTIATION | ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
        )
        if ticket_lifetime <= 0:
            context.options |= ssl.OP_NO_TICKET
        else:
            # One TLS 1.3 ticket per handshake, not OpenSSL's two: a device keeps only its last
            # session, and on OpenSSL 3.0 each ticket costs ~0.2 ms of server CPU (measured)
            context.num_tickets = 1
        _load_cert_chain(context, cert_pem, key_pem)
        context.verify_mode = ssl.CERT_REQUIRED  # SSL_VERIFY_PEER | FAIL_IF_NO_PEER_CERT
        lib.session_cache_off(context)
        if ticket_lifetime > 0:
            lib.set_session_timeout(context, max(1, int(ticket_lifetime)))
        lib.set_cert_verify_callback(context, _CALLBACK)
        self.context = context

    def engine(self, index: TrustIndex, cache: AttributionCache | None) -> SystemTlsEngine:
        return SystemTlsEngine(self.context, self.lib, index, cache)


def _load_cert_chain(context: ssl.SSLContext, cert_pem: bytes, key_pem: bytes) -> None:
    """The key reaches OpenSSL through the SDK's one way of handing ``ssl`` a key that must
    not be stored in a file (:func:`device_sdk.keyfile.openssl_paths`)."""
    try:
        with keyfile.openssl_paths(cert_pem, key_pem) as (chain_path, key_path):
            context.load_cert_chain(chain_path, key_path)
    except (ssl.SSLError, OSError, ValueError) as exc:
        raise MqttServiceError(f"the MQTT server certificate or key is unusable: {exc}") from exc
