"""The SDK's TLS: one ``ssl.SSLContext`` it builds itself, and the mapping of TLS failures.

Why the SDK owns the context (given to paho with ``tls_set_context``): TLS >= 1.2, the server
verified against the CA the user named (with host name checking), and the client chain and key
loaded from memory -- the key may have come from an encrypted file or a credential store, and is
never written anywhere readable.

``ssl`` offers no way to load a key from memory, so the key is handed to OpenSSL through an
anonymous in-memory file (``memfd``, Linux) or, elsewhere, a 0600 file in a private 0700
temporary directory; either way it is encrypted with a one-time random password that never leaves
this process, and the file is gone as soon as ``load_cert_chain`` returns.

The error mapping turns what ``ssl`` and the socket layer raise into the SDK's errors, each with
a message that says what to check. With TLS 1.3 the server's verdict on the client certificate
arrives *after* the client finished its half of the handshake, so the same mapping is applied to
the first read error of a connection that has not yet seen CONNACK.
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
from device_sdk.errors import (
    CertificateRejectedError,
    ConnectionFailedError,
    ConnectTimeoutError,
    CredentialError,
    ServerUntrustedError,
)

#: OpenSSL alert reasons meaning: the server did not accept our certificate.
CLIENT_CERT_REJECTED_REASONS = frozenset(
    {
        "TLSV13_ALERT_CERTIFICATE_REQUIRED",
        "SSLV3_ALERT_BAD_CERTIFICATE",
        "TLSV1_ALERT_UNKNOWN_CA",
        "SSLV3_ALERT_CERTIFICATE_UNKNOWN",
        "SSLV3_ALERT_UNSUPPORTED_CERTIFICATE",
        "SSLV3_ALERT_CERTIFICATE_REVOKED",
        "SSLV3_ALERT_CERTIFICATE_EXPIRED",
        "TLSV1_ALERT_ACCESS_DENIED",
        "TLSV1_ALERT_DECRYPT_ERROR",
    }
)


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


# --- error mapping -----------------------------------------------------------------------------


def _where(host: str, port: int) -> str:
    return f"{host}:{port}"


def certificate_rejected(host: str, port: int, detail: str) -> CertificateRejectedError:
    return CertificateRejectedError(
        f"the server at {_where(host, port)} refused this device's certificate ({detail}). "
        f"Is the CA that issued it registered with the platform and active? Was the device "
        f"certificate issued by that CA (check the file name's CA SN)?",
        host=host, port=port,
    )


def map_connect_error(exc: BaseException, host: str, port: int, *, after_handshake: bool = False,
                      server_hostname: str | None = None) -> ConnectionFailedError:
    """Translate an exception from connecting (or from the first read) into an SDK error.

    ``after_handshake``: the TLS handshake had completed but no CONNACK arrived yet; a reset or
    an alert at this point is how a TLS 1.3 server refuses a client certificate.
    The original exception is kept as ``__cause__`` (as ``raise ... from`` would).
    """
    error = _map(exc, host, port, after_handshake, server_hostname)
    error.__cause__ = exc
    return error


def _map(exc: BaseException, host: str, port: int, after_handshake: bool,
         server_hostname: str | None) -> ConnectionFailedError:
    where = _where(host, port)
    if isinstance(exc, ssl.SSLCertVerificationError):
        reason = getattr(exc, "verify_message", None) or getattr(exc, "reason", None) or str(exc)
        hint = "Is --server-ca the CA that issued the server's certificate?"
        if "mismatch" in reason or "hostname" in reason.lower():
            expected = server_hostname or host
            hint = (
                f"The server's certificate does not name {expected!r}; connect by a name it "
                f"carries, or set the expected server hostname."
            )
        elif "expired" in reason or "not yet valid" in reason:
            hint = "The server certificate's dates do not fit the system clock: the clock may be wrong."
        return ServerUntrustedError(
            f"the server at {where} could not be verified against the server CA ({reason}). {hint}",
            host=host, port=port,
        )
    if isinstance(exc, ssl.SSLError):
        # Set by OpenSSL-raised errors; an SSLError built elsewhere may carry it in the text only.
        short = getattr(exc, "reason", None)
        reason = (short or "").upper()
        text = str(exc)
        if reason in CLIENT_CERT_REJECTED_REASONS or any(
            r.lower().replace("_", " ") in text.lower() for r in CLIENT_CERT_REJECTED_REASONS
        ):
            return certificate_rejected(host, port, short or text)
        if reason in {"UNEXPECTED_EOF_WHILE_READING"} and after_handshake:
            return certificate_rejected(host, port, "connection closed right after the handshake")
        return ConnectionFailedError(
            f"TLS with the server at {where} failed: {short or text}. Does the server speak "
            f"TLS 1.2 or newer on this port?",
            host=host, port=port,
        )
    if isinstance(exc, ConnectionRefusedError):
        return ConnectionFailedError(
            f"nothing accepts connections at {where} (connection refused); is the server running "
            f"and the port right?",
            host=host, port=port,
        )
    if isinstance(exc, TimeoutError | socket.timeout):
        return ConnectTimeoutError(
            f"connecting to {where} timed out ({exc or 'no answer'}); check the network, host "
            f"and port",
            host=host, port=port,
        )
    if isinstance(exc, ConnectionResetError | BrokenPipeError | ConnectionAbortedError | EOFError):
        if after_handshake:
            return certificate_rejected(
                host, port, "the connection was closed right after the TLS handshake"
            )
        return ConnectionFailedError(
            f"the server at {where} closed the connection during the TLS handshake ({exc}); "
            f"it may not accept this device's certificate or TLS version",
            host=host, port=port,
        )
    if isinstance(exc, socket.gaierror):
        return ConnectionFailedError(
            f"cannot resolve host {host!r}: {exc.strerror or exc}", host=host, port=port
        )
    if isinstance(exc, OSError):
        return ConnectionFailedError(
            f"cannot connect to {where}: {exc.strerror or exc}", host=host, port=port
        )
    return ConnectionFailedError(f"cannot connect to {where}: {exc}", host=host, port=port)
