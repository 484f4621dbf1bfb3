"""One device connection: TLS over memory BIOs inside a plain asyncio Protocol. Nothing else.

Why not ``loop.create_server(ssl=...)`` or ``start_tls``: CPython's TLS transport preallocates a
256 KiB read buffer per connection, has no verify callback, and lets OpenSSL choose a device
certificate's issuer by name. A :class:`~server_stub.mqtt.tls_engine.TlsEngine` (pyOpenSSL over
memory BIOs) keeps an idle authenticated connection to the OpenSSL state plus a few small Python
objects (see ``bench/``), works the same on uvloop and on the default loop, and takes the trust
snapshot current when the socket was accepted; it attributes the certificate to a registered CA
by key during the handshake (:attr:`issuer`).

The MQTT session (states, deadlines, filters, in-flight ids, will) is a sans-IO machine,
:class:`~server_stub.mqtt.session.Session`, owned here and fed by the broker; deadlines are
checked by the broker's periodic sweep, so idle connections carry no timer.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import cast

from server_stub.mqtt import codec
from server_stub.mqtt.broker import Broker
from server_stub.mqtt.errors import MqttProtocolError, UnacceptableProtocolLevelError
from server_stub.mqtt.session import Closed, Session, State
from server_stub.mqtt.tls_engine import TlsClosed, TlsEngine, TlsError, TlsHandshakeError
from server_stub.ports import IssuingCa

log = logging.getLogger("server_stub.mqtt")

#: A connection whose unsent output grows past this is a consumer that cannot keep up.
MAX_WRITE_BUFFER = 4 * 1024 * 1024


class MqttConnection(asyncio.Protocol):
    __slots__ = (
        "_backlog",
        "_broker",
        "_corked",
        "_decoder",
        "_held",
        "_paused",
        "_tls",
        "peer",
        "session",
        "source",
        "transport",
    )

    def __init__(self, broker: Broker) -> None:
        self._broker = broker
        self.transport: asyncio.Transport | None = None
        self.session: Session = broker.new_session()
        self.peer = "?"
        self.source = "?"
        self._paused = False
        self._held = False
        self._corked = False
        """While True (inside :meth:`data_received`), output waits for one flush at the end:
        the handshake's last flight, CONNACK and the identity message leave in one write."""
        self._backlog: deque[codec.Packet] | None = None
        """Packets decoded but not dispatched yet; only while there are some."""
        self._decoder: codec.Decoder | None = None
        self._tls: TlsEngine | None = None

    @property
    def closed(self) -> bool:
        return self.session.state is State.CLOSED

    # --- asyncio.Protocol ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        if peer:
            self.peer = f"{peer[0]}:{peer[1]}"
            self.source = str(peer[0])
        broker = self._broker
        if not broker.admit(self):
            self.session.handle(Closed())
            self.transport.abort()
            return
        self._tls = broker.context.accept()

    def data_received(self, data: bytes) -> None:
        tls = self._tls
        if self.closed or tls is None:
            return
        if self._held and self.transport is not None:
            self.transport.pause_reading()  # more bytes while CONNECT waits: read no further
        tls.feed(data)
        handshaking = self.session.state is State.HANDSHAKE
        self._corked = True
        try:
            self._received(tls)
        finally:
            self._corked = False
            if not self.closed:
                self._flush_checked()
                if handshaking and self.session.state is not State.HANDSHAKE:
                    tls.compact()  # the handshake is over: its buffers go

    def _received(self, tls: TlsEngine) -> None:
        if self.session.state is State.HANDSHAKE:
            try:
                done = tls.handshake()
            except TlsHandshakeError as exc:
                self._flush()  # the alert tells the client why
                self._broker.handshake_failed(self, exc)
                self.close(tls_shutdown=False)
                return
            if not done:
                return
            self._broker.handshake_done(self)
            self._decoder = codec.Decoder(self._broker.limits.max_packet_size)
        try:
            chunks = tls.read()
        except TlsClosed:
            self.close(reason=None)
            return
        except TlsError as exc:
            log.info("mqtt %s: %s", self.peer, exc)
            self.close(tls_shutdown=False)
            return
        self._feed(chunks)

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed:
            self._broker.forget(self)
        self._tls = None
        self._decoder = None
        self._backlog = None

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False

    # --- packets -------------------------------------------------------------------------------

    def _feed(self, chunks: list[bytes]) -> None:
        decoder = self._decoder
        if not chunks or decoder is None:
            return
        backlog = self._backlog
        if backlog is None:
            backlog = self._backlog = deque()
        try:
            for chunk in chunks:
                backlog.extend(decoder.feed(chunk))
        except MqttProtocolError as exc:
            self._dispatch()  # what came before the bad bytes still counts
            self._protocol_error(exc)
            return
        self._dispatch()

    def _dispatch(self) -> None:
        backlog = self._backlog
        if backlog is None:
            return
        broker = self._broker
        try:
            while backlog and not self._held and not self.closed:
                broker.on_packet(self, backlog.popleft())
        except MqttProtocolError as exc:
            self._protocol_error(exc)
        if not backlog and self._backlog is backlog:
            self._backlog = None  # an idle connection holds no queue

    def _protocol_error(self, exc: MqttProtocolError) -> None:
        if self.closed:
            return
        if isinstance(exc, UnacceptableProtocolLevelError):
            if self.session.state is State.AWAIT_CONNECT:
                self.send(codec.Connack(codec.CONNACK_UNACCEPTABLE_PROTOCOL))
            self.close(reason=str(exc))
        else:
            self.close(reason=f"protocol error: {exc}")

    def hold(self) -> None:
        """Keep later packets back until :meth:`release`; reading stops only if bytes arrive
        meanwhile (:meth:`data_received`): a device that sends CONNECT and waits for its CONNACK,
        as nearly all do, costs no pause and resume (two system calls each) per connection."""
        self._held = True

    def release(self) -> None:
        self._held = False
        self._dispatch()
        if not self.closed and self.transport is not None:
            self.transport.resume_reading()  # nothing to do when reading was not paused

    def send(self, packet: codec.Packet) -> None:
        self.send_bytes(codec.encode(packet))

    def send_bytes(self, data: bytes) -> None:
        if self.closed or self._tls is None or self.transport is None:
            return
        try:
            self._tls.write(data)
        except TlsError as exc:
            self.close(reason=str(exc), tls_shutdown=False)
            return
        if not self._corked:
            self._flush_checked()

    def _flush_checked(self) -> None:
        self._flush()
        if self.transport is not None and self.transport.get_write_buffer_size() > MAX_WRITE_BUFFER:
            self.close(reason="the client does not read its messages (write buffer full)")

    def peer_certificate_der(self) -> bytes | None:
        """The client's leaf certificate (DER) once the handshake is done."""
        if self._tls is None:
            return None
        return self._tls.peer_certificate_der()

    @property
    def issuer(self) -> IssuingCa | None:
        """The registered CA the handshake attributed the certificate to (by key), if any."""
        return None if self._tls is None else self._tls.issuer

    def _flush(self) -> None:
        tls = self._tls
        if tls is not None and self.transport is not None:
            out = tls.outgoing()
            if out:
                self.transport.write(out)

    def close(self, reason: str | None = None, *, tls_shutdown: bool = True) -> None:
        """Close this connection only; ``reason`` (if any) goes to the log in one line.

        Output already queued (a CONNACK refusal, a TLS alert) is still sent before the socket
        closes.
        """
        if self.closed:
            return
        if reason:
            self._broker.log_close(self, reason)
        self._broker.forget(self)
        self._backlog = None
        if tls_shutdown and self._tls is not None:
            self._tls.shutdown()
        self._flush()
        if self.transport is not None:
            self.transport.close()
