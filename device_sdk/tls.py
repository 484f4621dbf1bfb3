"""The SDK's TLS: one ``ssl.SSLContext`` it builds itself, and the mapping of TLS failures.

Why the SDK owns the context (given to paho with ``tls_set_context``): TLS >= 1.2, the server
verified against the CA the user named (with host name checking), and the client chain and key
loaded from memory -- the key may have come from an encrypted file or a credential store, and is
never written anywhere readable.

``ssl`` offers no way to load a key from memory, so the key is handed to OpenSSL through an
anonymous in-memory file (``memfd``, Linux) or, elsewhere, a 0600 file in a private 0700
temporary directory, gone as soon as ``load_cert_chain`` returns (:mod:`device_sdk.keyfile`).

What ``ssl`` and the socket layer raise when connecting is mapped to the SDK's errors in one
place, the refusal table (:mod:`device_sdk.refusals`).
"""

from __future__ import annotations

import os
import socket
import ssl
from pathlib import Path
from typing import Any

from device_sdk import certs, keyfile
from device_sdk.credentials import Credentials


class _ServerNameContext(ssl.SSLContext):
    """An SSLContext that checks the server against a fixed name instead of the connect host.

    Needed when a device connects by IP address or through a tunnel but the server certificate
    names a host: paho passes its connect host as ``server_hostname``; this context replaces it.
    """

    expected_hostname: str | None = None

    def wrap_socket(self, sock: socket.socket, *args: Any, **kwargs: Any) -> ssl.SSLSocket:
        if self.expected_hostname:
            kwargs["server_hostname"] = self.expected_hostname
        return super().wrap_socket(sock, *args, **kwargs)


def build_ssl_context(
    credentials: Credentials,
    server_ca: str | os.PathLike[str] | bytes | None,
    *,
    server_hostname: str | None = None,
) -> ssl.SSLContext:
    """A client context: TLS >= 1.2, server verified (chain + host name), our chain and key.

    ``server_ca`` is a file (PEM/DER, may hold several CAs), PEM bytes, or None for the system's
    trust store (a public broker).
    """
    context = _ServerNameContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.check_hostname = True
    context.verify_mode = ssl.CERT_REQUIRED
    context.expected_hostname = server_hostname
    if server_ca is None:
        context.load_default_certs(ssl.Purpose.SERVER_AUTH)
    else:
        if isinstance(server_ca, bytes):
            cas = certs.parse_certificates(server_ca, source="server CA")
        else:
            cas = certs.read_certificate_file(Path(server_ca))
        context.load_verify_locations(cadata=certs.to_pem(cas).decode("ascii"))
    load_client_chain(context, credentials)
    return context


def load_client_chain(context: ssl.SSLContext, credentials: Credentials) -> None:
    """Load the device chain and key into ``context`` without a readable key file."""
    keyfile.load_pair(context, credentials.chain.pem(), credentials.key, sn=credentials.sn)
