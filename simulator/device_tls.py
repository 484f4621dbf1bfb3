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

The pair is read from the fleet's PEM files at each connection (a device holds two paths, not
its parsed pair: 5,000 devices stay under 50 KiB each) and loaded by OpenSSL itself (no
``cryptography`` objects). OpenSSL checks that the key belongs to the certificate. The fast way
is DER through libssl's own calls (:meth:`device_sdk.libssl.LibSsl.use_pair_der`, on the libssl
that :mod:`ssl` uses, checked once per process: about 0.27 ms per connect with reading the
files, against 0.76 ms for ``load_cert_chain``'s PEM path with OpenSSL 3.0);
a certificate file holding a chain, a key that is not a plain PKCS#1 RSA key (PKCS#8,
encrypted), a pair that OpenSSL refuses as DER, or a process where those calls did not validate
takes ``load_cert_chain`` on the files, as before.

The settings are the SDK's (:func:`device_sdk.tls.build_ssl_context`): TLS >= 1.2, the server
verified against the server CA, host name checked. When OpenSSL refuses a device's files, the
SDK's own loader is asked why, so the message is the one ``iotx509 device connect`` gives.
"""

from __future__ import annotations

import logging
import socket
import ssl
from functools import cache, lru_cache
from pathlib import Path

from device_sdk import certs
from device_sdk.certificate import pem_blocks
from device_sdk.credentials import Credentials
from device_sdk.errors import CredentialError
from device_sdk.libssl import LibSsl, system_libssl, unavailable_reason

log = logging.getLogger(__name__)


@cache
def pair_loader() -> LibSsl | None:
    """The libssl that loads pairs as DER in this process; None (logged once, with the reason)
    where :func:`device_sdk.libssl.system_libssl` cannot reach it: pairs then load through
    ``load_cert_chain``, correct but slower."""
    found = system_libssl()
    if found is None:
        log.warning(
            "device pairs load through ssl.SSLContext.load_cert_chain (about 0.5 ms more per "
            "connect): libssl's DER calls did not validate here (%s)",
            unavailable_reason(),
        )
    return found


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
    """One device's certificate and key files, and the shared context they are used with.

    ``der_loading=False`` always loads with ``load_cert_chain`` (the path a process takes when
    :func:`pair_loader` finds no usable libssl; tests use it to run that path here).
    """

    __slots__ = ("cert", "context", "der_loader", "key")

    def __init__(
        self, cert: Path, key: Path, server_ca: Path | None, *, der_loading: bool = True
    ) -> None:
        self.cert = str(cert)  # (a str is a third of a Path's size; 5,000 devices hold two each)
        self.key = str(key)
        self.context = shared_context(server_ca)
        self.der_loader: LibSsl | None = pair_loader() if der_loading else None

    def wrap(
        self, sock: socket.socket, *, server_hostname: str, session: ssl.SSLSession | None
    ) -> ssl.SSLSocket:
        """A TLS client socket presenting this device's certificate (see the module); the
        handshake is the caller's (``do_handshake``), on the socket's own (non-)blocking mode."""
        if not self.load_der():
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

    def load_der(self) -> bool:
        """Load the pair into the shared context as DER (:attr:`der_loader`); True if it went in.

        False leaves it to ``load_cert_chain``, whose errors say what is wrong (a missing file,
        a refused pair), as they always did. :meth:`wrap` calls this; tests call it to see which
        way a pair takes."""
        if self.der_loader is None:
            return False
        try:
            chain = pem_blocks(Path(self.cert).read_bytes(), b"CERTIFICATE")
            # Only PKCS#1 RSA without PEM headers (an encrypted one has them: not base64).
            keys = pem_blocks(Path(self.key).read_bytes(), b"RSA PRIVATE KEY")
        except (OSError, ValueError):
            return False
        if len(chain) != 1 or len(keys) != 1:
            return False
        return self.der_loader.use_pair_der(self.context, chain[0], keys[0])

    def _refused(self, exc: BaseException) -> CredentialError:
        # The SDK's loader says what is wrong (missing file, not PEM, key of another cert...).
        Credentials.from_files(self.cert, self.key, check_key=False)
        return CredentialError(
            f"OpenSSL refused the device certificate/key {Path(self.cert).name}: "
            f"{getattr(exc, 'reason', None) or exc}",
            source=str(self.cert),
        )
