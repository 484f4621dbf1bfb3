"""Simulated devices' TLS: the SDK's settings, one shared context, each device's own certificate.

Python's ``ssl`` binds a client certificate to an ``SSLContext``, which suggests one context per
device. A context costs about 17 KiB of OpenSSL memory (an empty ``SSL_CTX`` 13 KiB with
OpenSSL 3.0, the server CA's store 3.6 KiB; measured in ``docs/scaling.md``) and would live as
long as the device. But OpenSSL copies the context's certificate and key into each connection
when it creates it (``SSL_new`` duplicates the context's ``CERT``, taking references to the
certificate and key): so one context per process serves every device, provided the device's
pair is loaded into it right before its connection object is made. :meth:`DeviceTls.wrap` does
both in one step, with no greenlet switch in between (gevent runs one greenlet at a time, and
neither call yields). Each connection then presents its own device's certificate -- the server
sees exactly what a device with a context of its own would send -- and the pair's parsed form
lives only as long as the connection.

The pair is loaded from the fleet's PEM files by OpenSSL itself (no ``cryptography`` objects,
no re-encrypted copy of the key: the SDK does that for keys that exist only in memory; a fleet's
keys are files already). OpenSSL checks that the key belongs to the certificate.

The settings are the SDK's (:func:`device_sdk.tls.build_ssl_context`): TLS >= 1.2, the server
verified against the server CA, host name checked. When OpenSSL refuses a device's files, the
SDK's own loader is asked why, so the message is the one ``iotx509 device connect`` gives.
"""

from __future__ import annotations

import socket
import ssl
from functools import lru_cache
from pathlib import Path

from device_sdk import certs
from device_sdk.credentials import Credentials
from device_sdk.errors import CredentialError


@lru_cache(maxsize=8)
def shared_context(server_ca: Path | None) -> ssl.SSLContext:
    """The process's client context for one server CA (None: the system's trust store)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.check_hostname = True
    context.verify_mode = ssl.CERT_REQUIRED
    if server_ca is None:
        context.load_default_certs(ssl.Purpose.SERVER_AUTH)
    else:
        pem = certs.to_pem(certs.read_certificates(Path(server_ca)))
        context.load_verify_locations(cadata=pem.decode("ascii"))
    return context


class DeviceTls:
    """One device's certificate and key files, and the shared context they are used with."""

    __slots__ = ("cert", "context", "key")

    def __init__(self, cert: Path, key: Path, server_ca: Path | None) -> None:
        self.cert = str(cert)  # (a str is a third of a Path's size; 5,000 devices hold two each)
        self.key = str(key)
        self.context = shared_context(server_ca)

    def wrap(
        self, sock: socket.socket, *, server_hostname: str, session: ssl.SSLSession | None
    ) -> ssl.SSLSocket:
        """A TLS client socket presenting this device's certificate (see the module); the
        handshake is the caller's (``do_handshake``), on the socket's own (non-)blocking mode."""
        try:
            self.context.load_cert_chain(self.cert, self.key)
        except (ssl.SSLError, OSError) as exc:
            raise self._refused(exc) from exc
        return self.context.wrap_socket(
            sock,
            server_hostname=server_hostname,
            do_handshake_on_connect=False,
            session=session,
        )

    def _refused(self, exc: BaseException) -> CredentialError:
        # The SDK's loader says what is wrong (missing file, not PEM, key of another cert...).
        Credentials.from_files(self.cert, self.key, check_key=False)
        return CredentialError(
            f"OpenSSL refused the device certificate/key {Path(self.cert).name}: "
            f"{getattr(exc, 'reason', None) or exc}",
            source=str(self.cert),
        )
