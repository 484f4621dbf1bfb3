"""The SDK's TLS: one ``ssl.SSLContext`` it builds itself, and the mapping of TLS failures.

Why the SDK owns the context (given to paho with ``tls_set_context``): TLS >= 1.2, the server
verified against the CA the user named (with host name checking), and the client chain and key
loaded from memory -- the key may have come from an encrypted file or a credential store, and is
never written anywhere readable.

``ssl`` offers no way to load a key from memory, so the key is handed to OpenSSL through an
anonymous in-memory file (``memfd``, Linux) or, elsewhere, a 0600 file in a private 0700
temporary directory; either way it is encrypted with a one-time random password that never leaves
this process, and the file is gone as soon as ``load_cert_chain`` returns.

What ``ssl`` and the socket layer raise when connecting is mapped to the SDK's errors in one
place, the refusal table (:mod:`device_sdk.refusals`).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import socket
import ssl
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization

from device_sdk import certs
from device_sdk.credentials import Credentials
from device_sdk.errors import CredentialError


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
            cas = certs.load_certificates(server_ca, source="server CA")
        else:
            cas = certs.read_certificates(Path(server_ca))
        context.load_verify_locations(cadata=certs.to_pem(cas).decode("ascii"))
    load_client_chain(context, credentials)
    return context


def load_client_chain(context: ssl.SSLContext, credentials: Credentials) -> None:
    """Load the device chain and key into ``context`` without a readable key file."""
    password = secrets.token_bytes(32)
    key_pem = credentials.private_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.BestAvailableEncryption(password),
    )
    with _private_file(credentials.chain.pem() + key_pem) as path:
        try:
            context.load_cert_chain(path, password=password)
        except ssl.SSLError as exc:
            raise CredentialError(
                f"OpenSSL refused the device certificate/key from {credentials.cert_source}: "
                f"{exc.reason or exc}",
                source=credentials.cert_source,
            ) from exc


@contextlib.contextmanager
def _private_file(data: bytes) -> Iterator[str]:
    memfd_create = getattr(os, "memfd_create", None)
    if memfd_create is not None and Path("/proc/self/fd").is_dir():
        fd = memfd_create("iotx509-device-key", getattr(os, "MFD_CLOEXEC", 0))
        try:
            os.write(fd, data)
            yield f"/proc/self/fd/{fd}"
        finally:
            os.close(fd)
        return
    directory = tempfile.mkdtemp(prefix="iotx509-tls-")  # mode 0700
    try:
        path = os.path.join(directory, "chain.pem")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        yield path
    finally:
        shutil.rmtree(directory, ignore_errors=True)
