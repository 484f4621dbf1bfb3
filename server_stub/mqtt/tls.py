"""Server TLS contexts whose trust store is exactly the registry's active CA certificates.

A new :class:`ssl.SSLContext` is built whenever the registry's trust generation changes; each
connection takes the context current when it was accepted, so new handshakes follow the
registry within one poll interval while established sessions keep their TLS state.

Choices, and why:
- TLS 1.2 and 1.3 only; the client certificate is required.
- ``VERIFY_X509_PARTIAL_CHAIN``: a registered CA may be an intermediate; it is a trust anchor
  on its own, as on the platform.
- No session tickets or renegotiation: every connection presents its certificate and is
  authenticated against the registry as it is *now* (a resumed session would skip that).
- No active CA at all: the store is empty, so every handshake fails verification cleanly.
"""

from __future__ import annotations

import os
import ssl
import tempfile
from collections.abc import Sequence

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from server_stub.mqtt.errors import MqttServiceError


def build_server_context(
    cert_pem: bytes, key_pem: bytes, trusted: Sequence[x509.Certificate]
) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.maximum_version = ssl.TLSVersion.TLSv1_3
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    ctx.options |= ssl.OP_NO_TICKET | ssl.OP_NO_RENEGOTIATION
    ctx.num_tickets = 0
    _load_cert_chain(ctx, cert_pem, key_pem)
    if trusted:
        pem = "".join(
            c.public_bytes(serialization.Encoding.PEM).decode("ascii") for c in trusted
        )
        try:
            ctx.load_verify_locations(cadata=pem)
        except ssl.SSLError as exc:
            raise MqttServiceError(f"cannot load the registered CA certificates: {exc}") from exc
    return ctx


def _load_cert_chain(ctx: ssl.SSLContext, cert_pem: bytes, key_pem: bytes) -> None:
    """``ssl`` loads keys only from files: write them to a private temporary file briefly."""
    with tempfile.TemporaryDirectory(prefix="iotx509-mqtt-") as tmp:
        os.chmod(tmp, 0o700)
        path = os.path.join(tmp, "server.pem")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(key_pem.rstrip(b"\n") + b"\n" + cert_pem)
        try:
            ctx.load_cert_chain(path)
        except (ssl.SSLError, OSError) as exc:
            raise MqttServiceError(
                f"the MQTT server certificate or key is unusable: {exc}"
            ) from exc
