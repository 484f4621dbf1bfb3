"""The SDK's TLS: one ``ssl.SSLContext`` it builds itself, and the mapping of TLS failures.

Why the SDK owns the context (given to paho with ``tls_set_context``): TLS >= 1.2, the server
verified against the CA the user named (with host name checking), and the client chain and key
loaded from memory -- the key may have come from a credential store, and is never written
anywhere readable.

``ssl`` offers no way to load a key from memory, so the key is handed to OpenSSL through a
path that stores it in no file system and is gone as soon as ``load_cert_chain`` returns
(:func:`device_sdk.keyfile.openssl_paths` says how).

A reconnect resumes the last TLS session of the same server when the server allows it
(:class:`DeviceTLSContext`): no certificate exchange, no RSA signatures, a fraction of a full
handshake's CPU on both sides.

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


class _ResumingSocket(ssl.SSLSocket):
    """Keeps its connection's TLS session for the next connection, once a first read is done.

    TLS 1.3 sends session tickets after the handshake: they are read with the first
    application data (CONNACK), so the session is taken then, not at the end of the handshake.
    """

    _resume_key: tuple[str | None, object] | None = None

    def do_handshake(self, *args: Any, **kwargs: Any) -> None:
        # (passed on as given: gevent's SSLSocket, which the simulator runs on, takes no
        # ``block`` argument)
        super().do_handshake(*args, **kwargs)
        context = self.context
        if isinstance(context, DeviceTLSContext):
            context.handshakes_completed += 1

    def recv(self, buflen: int = 1024, flags: int = 0) -> bytes:
        data = super().recv(buflen, flags)
        if self._resume_key is not None:
            self._keep_session()
        return data

    def recv_into(self, buffer: Any, nbytes: int | None = None, flags: int = 0) -> int:
        count = super().recv_into(buffer, nbytes, flags)
        if self._resume_key is not None:
            self._keep_session()
        return count

    def read(self, len: int = 1024, buffer: Any = None) -> Any:
        data = super().read(len, buffer)
        if self._resume_key is not None:
            self._keep_session()
        return data

    def _keep_session(self) -> None:
        key, self._resume_key = self._resume_key, None
        context = self.context
        if isinstance(context, DeviceTLSContext) and key is not None:
            context._handshake_done(key, self.session, reused=bool(self.session_reused))


class DeviceTLSContext(ssl.SSLContext):
    """The SDK's client context: a fixed server name, and TLS session resumption.

    Server name: when a device connects by IP address or through a tunnel but the server
    certificate names a host, paho passes its connect host as ``server_hostname``; this context
    replaces it with ``expected_hostname``.

    Resumption: a reconnect offers the last session of the same server (name and address), so a
    server that issued a ticket skips the certificate exchange and the RSA signatures; a server
    that refuses it (restarted, ticket expired, tickets off) answers with a full handshake, which
    is then simply what happens. The counters say what happened, for tests and benchmarks.
    """

    expected_hostname: str | None = None
    MAX_SESSIONS = 4
    """Servers remembered (a device talks to one; a bound all the same)."""

    def __init__(self, protocol: int = ssl.PROTOCOL_TLS_CLIENT) -> None:
        super().__init__()
        self.sslsocket_class = _ResumingSocket
        self._sessions: dict[tuple[str | None, object], ssl.SSLSession] = {}
        self.full_handshakes = 0
        self.resumed_handshakes = 0
        self.resumptions_offered = 0
        self.handshakes_completed = 0
        """Handshakes that completed (the client's half): an error raised after one was
        raised by the connection's first write or read, where TLS 1.3 servers refuse."""
        self.last_session_reused: bool | None = None
        """``session_reused`` of the latest connection (None before the first)."""

    def wrap_socket(self, sock: socket.socket, *args: Any, **kwargs: Any) -> ssl.SSLSocket:
        if self.expected_hostname:
            kwargs["server_hostname"] = self.expected_hostname
        try:
            key: tuple[str | None, object] = (kwargs.get("server_hostname"), sock.getpeername())
        except OSError:
            key = (kwargs.get("server_hostname"), None)
        session = self._sessions.get(key)
        if session is not None and kwargs.get("session") is None:
            kwargs["session"] = session
        self.resumptions_offered += session is not None
        wrapped = super().wrap_socket(sock, *args, **kwargs)
        if isinstance(wrapped, _ResumingSocket):
            wrapped._resume_key = key
        return wrapped

    def _handshake_done(
        self,
        key: tuple[str | None, object],
        session: ssl.SSLSession | None,
        *,
        reused: bool,
    ) -> None:
        self.last_session_reused = reused
        if reused:
            self.resumed_handshakes += 1
        else:
            self.full_handshakes += 1
        if session is None:
            return
        self._sessions.pop(key, None)
        self._sessions[key] = session
        while len(self._sessions) > self.MAX_SESSIONS:
            del self._sessions[next(iter(self._sessions))]

    def forget_sessions(self) -> None:
        """The next connection makes a full handshake."""
        self._sessions.clear()


def build_ssl_context(
    credentials: Credentials,
    server_ca: str | os.PathLike[str] | bytes | None,
    *,
    server_hostname: str | None = None,
) -> DeviceTLSContext:
    """A client context: TLS >= 1.2, server verified (chain + host name), our chain and key.

    ``server_ca`` is a file (PEM/DER, may hold several CAs), PEM bytes, or None for the system's
    trust store (a public broker).
    """
    context = DeviceTLSContext(ssl.PROTOCOL_TLS_CLIENT)
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
