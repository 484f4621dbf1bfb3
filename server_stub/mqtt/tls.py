"""The endpoint's TLS settings: one server context, and a trust snapshot per connection.

The context is on the system OpenSSL that :mod:`ssl` uses (:mod:`server_stub.mqtt.tls_system`)
where :func:`device_sdk.libssl.system_libssl` can reach it, else on pyOpenSSL
(:func:`build_server_context`); ``engine`` says which ("system" or "pyopenssl"), and both make
the same decisions, with the same settings.

OpenSSL's own trust store stays empty: which registered CA issued a device certificate is decided
by key in the verify callback (:mod:`server_stub.mqtt.tls_engine`), never by OpenSSL's choice of
an issuer by name. Each accepted connection takes the registry's trust index current at that
moment (:meth:`DeviceDirectory.trust_index`), so new handshakes follow the registry at once while
established sessions keep their TLS state (the broker re-checks them when the registry changes).

Choices, and why:
- TLS 1.2 and 1.3 only; the client certificate is required (``VERIFY_FAIL_IF_NO_PEER_CERT``).
- Session tickets (TLS 1.2 and 1.3), no server-side session cache, no renegotiation. A device
  that returns with a ticket skips the RSA signatures of a full handshake; its certificate,
  kept inside the ticket, is attributed again against the registry as it is *now*
  (:mod:`server_stub.mqtt.resumption`), and CONNECT still goes through the registry.
- Ticket keys rotate: OpenSSL draws fresh random ticket keys for each context, and a new
  context replaces the current one every ``session_ticket_lifetime`` seconds (also the tickets'
  lifetime). A ticket from before the rotation no longer decrypts: that device simply makes a
  full handshake. The keys never leave the process (a restart invalidates every ticket).
  ``session_ticket_lifetime`` 0 turns tickets off.
- ``MODE_RELEASE_BUFFERS``: an idle connection keeps no TLS record buffers.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from cryptography.hazmat.primitives.asymmetric import ec, rsa
from OpenSSL import SSL, crypto

from device_sdk.certs import load_certificates, load_private_key
from device_sdk.errors import CredentialError
from device_sdk.libssl import LibSsl, system_libssl
from server_stub.mqtt.errors import MqttServiceError
from server_stub.mqtt.resumption import AttributionCache
from server_stub.mqtt.tls_engine import PyOpenSslEngine, TlsEngine, verify_callback
from server_stub.mqtt.tls_system import SystemTlsContext
from server_stub.ports import TrustIndex

#: The TLS engines: "system" (the default where available) and "pyopenssl" (everywhere).
ENGINES = ("system", "pyopenssl")


class ServerTls:
    """Server certificate + TLS policy; :meth:`accept` makes one connection's engine."""

    def __init__(
        self,
        cert_pem: bytes,
        key_pem: bytes,
        trust_index: Callable[[], TrustIndex],
        *,
        ticket_lifetime: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
        engine: str | None = None,
    ) -> None:
        """``engine``: "system", "pyopenssl", or None for the system one where available."""
        self._cert_pem = cert_pem
        self._key_pem = key_pem
        self._trust_index = trust_index
        self._ticket_lifetime = ticket_lifetime
        self._clock = clock
        self._lib: LibSsl | None = None
        if engine not in (None, *ENGINES):
            raise MqttServiceError(f"unknown TLS engine {engine!r}; choose one of {ENGINES}")
        if engine in (None, "system"):
            self._lib = system_libssl()
            if self._lib is None and engine == "system":
                raise MqttServiceError("the system OpenSSL cannot be used by this Python")
        self.engine = "system" if self._lib is not None else "pyopenssl"
        self.attributions = AttributionCache()
        """Attributions for the current trust snapshot only (full and resumed handshakes)."""
        self.context: SSL.Context | SystemTlsContext = self._new_context()
        self._rotate_at = clock() + ticket_lifetime
        self.rotations = 0

    def _new_context(self) -> SSL.Context | SystemTlsContext:
        if self._lib is not None:
            return SystemTlsContext(self._lib, self._cert_pem, self._key_pem, self._ticket_lifetime)
        return build_server_context(self._cert_pem, self._key_pem, self._ticket_lifetime)

    def accept(self) -> TlsEngine:
        """A new server-side engine bound to the trust snapshot current now."""
        if self._ticket_lifetime > 0 and self._clock() >= self._rotate_at:
            self.rotate_ticket_keys()
        context = self.context
        if isinstance(context, SystemTlsContext):
            return context.engine(self._trust_index(), self.attributions)
        return PyOpenSslEngine(context, self._trust_index(), self.attributions)

    def rotate_ticket_keys(self) -> None:
        """New handshakes get a new context, hence new random ticket keys; tickets issued
        before no longer resume (connections already open keep their own context)."""
        self.context = self._new_context()
        self._rotate_at = self._clock() + self._ticket_lifetime
        self.rotations += 1


#: Names this endpoint's sessions: OpenSSL resumes a session that required a client
#: certificate only within the same session id context.
SESSION_ID_CONTEXT = b"iotx509-mqtt-device"


def build_server_context(
    cert_pem: bytes, key_pem: bytes, ticket_lifetime: float = 0.0
) -> SSL.Context:
    ctx = SSL.Context(SSL.TLS_SERVER_METHOD)
    ctx.set_min_proto_version(SSL.TLS1_2_VERSION)
    ctx.set_max_proto_version(SSL.TLS1_3_VERSION)
    options = SSL.OP_NO_RENEGOTIATION | SSL.OP_NO_COMPRESSION | SSL.OP_CIPHER_SERVER_PREFERENCE
    if ticket_lifetime > 0:
        ctx.set_session_id(SESSION_ID_CONTEXT)
        ctx.set_timeout(max(1, int(ticket_lifetime)))
    else:
        options |= SSL.OP_NO_TICKET
    ctx.set_options(options)
    ctx.set_session_cache_mode(SSL.SESS_CACHE_OFF)
    ctx.set_mode(SSL.MODE_RELEASE_BUFFERS)
    ctx.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, verify_callback)
    _load_cert_chain(ctx, cert_pem, key_pem)
    return ctx


def _load_cert_chain(ctx: SSL.Context, cert_pem: bytes, key_pem: bytes) -> None:
    """Keys are loaded from memory: nothing of the server key is ever written to disk."""
    try:
        chain = load_certificates(cert_pem, source="MQTT server certificate")
        key = load_private_key(key_pem, source="MQTT server key")
    except CredentialError as exc:
        raise MqttServiceError(f"the MQTT server certificate or key is unusable: {exc}") from exc
    if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
        raise MqttServiceError("the MQTT server key must be RSA or EC")
    try:
        ctx.use_certificate(chain[0])
        for extra in chain[1:]:
            ctx.add_extra_chain_cert(crypto.X509.from_cryptography(extra))
        ctx.use_privatekey(key)
        ctx.check_privatekey()
    except SSL.Error as exc:
        raise MqttServiceError(f"the MQTT server certificate or key is unusable: {exc}") from exc
