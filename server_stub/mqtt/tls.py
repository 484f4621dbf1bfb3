"""The endpoint's TLS settings: one pyOpenSSL context, and a trust snapshot per connection.

OpenSSL's own trust store stays empty: which registered CA issued a device certificate is decided
by key in the verify callback (:mod:`server_stub.mqtt.tls_engine`), never by OpenSSL's choice of
an issuer by name. Each accepted connection takes the registry's trust index current at that
moment (:meth:`DeviceDirectory.trust_index`), so new handshakes follow the registry at once while
established sessions keep their TLS state (the broker re-checks them when the registry changes).

Choices, and why:
- TLS 1.2 and 1.3 only; the client certificate is required (``VERIFY_FAIL_IF_NO_PEER_CERT``).
- No session tickets, no session cache, no renegotiation: every connection presents its
  certificate and is attributed against the registry as it is *now* (a resumed session would
  skip the verify callback). Resumption can be added later by keeping the attribution with the
  session; the engine refuses a completed handshake that has none.
- ``MODE_RELEASE_BUFFERS``: an idle connection keeps no TLS record buffers.
"""

from __future__ import annotations

from collections.abc import Callable

from cryptography.hazmat.primitives.asymmetric import ec, rsa
from OpenSSL import SSL, crypto

from device_sdk.certs import load_certificates, load_private_key
from device_sdk.errors import CredentialError
from server_stub.mqtt.errors import MqttServiceError
from server_stub.mqtt.tls_engine import TlsEngine, verify_callback
from server_stub.ports import TrustIndex


class ServerTls:
    """Server certificate + TLS policy; :meth:`accept` makes one connection's engine."""

    def __init__(
        self, cert_pem: bytes, key_pem: bytes, trust_index: Callable[[], TrustIndex]
    ) -> None:
        self._trust_index = trust_index
        self.context = build_server_context(cert_pem, key_pem)

    def accept(self) -> TlsEngine:
        """A new server-side engine bound to the trust snapshot current now."""
        return TlsEngine(self.context, self._trust_index())


def build_server_context(cert_pem: bytes, key_pem: bytes) -> SSL.Context:
    ctx = SSL.Context(SSL.TLS_SERVER_METHOD)
    ctx.set_min_proto_version(SSL.TLS1_2_VERSION)
    ctx.set_max_proto_version(SSL.TLS1_3_VERSION)
    ctx.set_options(
        SSL.OP_NO_TICKET
        | SSL.OP_NO_RENEGOTIATION
        | SSL.OP_NO_COMPRESSION
        | SSL.OP_CIPHER_SERVER_PREFERENCE
    )
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
