"""One device connection: TLS over memory BIOs inside a plain asyncio Protocol.

Why not ``loop.create_server(ssl=...)`` or ``start_tls``: CPython's TLS transport preallocates a
256 KiB read buffer per connection, and both tie a server to one SSLContext. Driving an
:class:`ssl.SSLObject` over two :class:`ssl.MemoryBIO` ourselves keeps an idle authenticated
connection to the OpenSSL state plus a few small Python objects (see ``bench/``), works the same
on uvloop and on the default loop, and lets every accepted socket take the trust store current
at that moment.

States: HANDSHAKE -> AWAIT_CONNECT -> CONNECTED -> CLOSED. Deadlines (handshake, CONNECT,
keep-alive x 1.5) are checked by the broker's periodic sweep, so idle connections carry no timer.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from typing import TYPE_CHECKING, cast

from server_stub.mqtt import codec
from server_stub.mqtt.errors import MqttProtocolError, UnacceptableProtocolLevelError

if TYPE_CHECKING:
    from server_stub.mqtt.broker import Broker
    from server_stub.ports import AuthenticatedDevice

log = logging.getLogger("server_stub.mqtt")

HANDSHAKE, AWAIT_CONNECT, CONNECTED, CLOSED = 0, 1, 2, 3
READ_CHUNK = 16 * 1024
#: A connection whose unsent output grows past this is a consumer that cannot keep up.
MAX_WRITE_BUFFER = 4 * 1024 * 1024


class MqttConnection(asyncio.Protocol):
    __slots__ = (
        "_broker", "_decoder", "_in", "_next_packet_id", "_out", "_paused", "_ssl",
        "client_id", "deadline", "device", "filters", "inflight", "keep_alive", "peer",
        "prefixes", "state", "transport", "will",
    )

    def __init__(self, broker: Broker) -> None:
        self._broker = broker
        self.transport: asyncio.Transport | None = None
        self.state = HANDSHAKE
        self.peer = "?"
        self.deadline = 0.0
        self.keep_alive = 0
        self.device: AuthenticatedDevice | None = None
        self.prefixes: tuple[str, str] = ("\x00", "\x00")
        self.client_id = ""
        self.filters: dict[str, int] = {}
        self.inflight: set[int] = set()
        self.will: codec.Will | None = None
        self._next_packet_id = 0
        self._paused = False
        self._decoder: codec.Decoder | None = None
        self._in: ssl.MemoryBIO | None = None
        self._out: ssl.MemoryBIO | None = None
        self._ssl: ssl.SSLObject | None = None

    # --- asyncio.Protocol ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        if peer:
            self.peer = f"{peer[0]}:{peer[1]}"
        broker = self._broker
        if not broker.admit(self):
            self.state = CLOSED
            self.transport.abort()
            return
        self._in = ssl.MemoryBIO()
        self._out = ssl.MemoryBIO()
        self._ssl = broker.context.wrap_bio(self._in, self._out, server_side=True)
        self.deadline = broker.now() + broker.limits.handshake_timeout

    def data_received(self, data: bytes) -> None:
        if self.state == CLOSED or self._ssl is None or self._in is None:
            return
        self._in.write(data)
        sslobj = self._ssl
        if self.state == HANDSHAKE:
            try:
                sslobj.do_handshake()
            except ssl.SSLWantReadError:
                self._flush()
                return
            except ssl.SSLError as exc:
                self._flush()  # the alert tells the client why
                self._broker.handshake_failed(self, exc)
                self.close(tls_shutdown=False)
                return
            self._flush()
            self.state = AWAIT_CONNECT
            self.deadline = self._broker.now() + self._broker.limits.connect_timeout
            self._decoder = codec.Decoder(self._broker.limits.max_packet_size)
        chunks: list[bytes] = []
        while True:
            try:
                chunk = sslobj.read(READ_CHUNK)
            except ssl.SSLWantReadError:
                break
            except ssl.SSLZeroReturnError:
                self._feed(chunks)
                self.close(reason=None)
                return
            except ssl.SSLError as exc:
                log.info("mqtt %s: TLS error after the handshake: %s", self.peer, exc)
                self.close(tls_shutdown=False)
                return
            if not chunk:
                break
            chunks.append(chunk)
        self._feed(chunks)

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if self.state != CLOSED:
            self._broker.forget(self)
        self.state = CLOSED
        self._ssl = None
        self._in = None
        self._out = None
        self._decoder = None

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False

    # --- packets -------------------------------------------------------------------------------

    def _feed(self, chunks: list[bytes]) -> None:
        decoder = self._decoder
        if not chunks or decoder is None:
            return
        broker = self._broker
        try:
            for chunk in chunks:
                for packet in decoder.feed(chunk):
                    if self.state == CLOSED:
                        return
                    if self.state == CONNECTED:
                        self.deadline = broker.keepalive_deadline(self.keep_alive)
                        broker.on_packet(self, packet)
                    elif isinstance(packet, codec.Connect):
                        broker.on_connect(self, packet)
                    else:
                        raise MqttProtocolError(
                            f"{type(packet).__name__.upper()} before CONNECT"
                        )
        except UnacceptableProtocolLevelError as exc:
            if self.state == AWAIT_CONNECT:
                self.send(codec.Connack(codec.CONNACK_UNACCEPTABLE_PROTOCOL))
            self.close(reason=str(exc))
        except MqttProtocolError as exc:
            self.close(reason=f"protocol error: {exc}")

    def send(self, packet: codec.Packet) -> None:
        self.send_bytes(codec.encode(packet))

    def send_bytes(self, data: bytes) -> None:
        if self.state == CLOSED or self._ssl is None or self.transport is None:
            return
        try:
            self._ssl.write(data)
        except ssl.SSLError as exc:
            self.close(reason=f"TLS error while sending: {exc}", tls_shutdown=False)
            return
        self._flush()
        if self.transport.get_write_buffer_size() > MAX_WRITE_BUFFER:
            self.close(reason="the client does not read its messages (write buffer full)")

    def publish(self, topic: str, payload: bytes, qos: int) -> None:
        """Send a PUBLISH to this client, numbering QoS 1 messages."""
        if qos == 0:
            self.send(codec.Publish(topic, payload))
            return
        if len(self.inflight) >= 0xFFFF:
            log.warning("mqtt %s: 65535 unacknowledged QoS 1 messages; dropping one", self.peer)
            return
        packet_id = self._next_packet_id
        while True:
            packet_id = packet_id % 0xFFFF + 1
            if packet_id not in self.inflight:
                break
        self._next_packet_id = packet_id
        self.inflight.add(packet_id)
        self.send(codec.Publish(topic, payload, 1, packet_id=packet_id))

    def peer_certificate_der(self) -> bytes | None:
        """The client's leaf certificate (DER) once the handshake is done."""
        if self._ssl is None:
            return None
        return self._ssl.getpeercert(binary_form=True)

    def _flush(self) -> None:
        out = self._out
        if out is not None and out.pending and self.transport is not None:
            self.transport.write(out.read())

    def close(self, reason: str | None = None, *, tls_shutdown: bool = True) -> None:
        """Close this connection only; ``reason`` (if any) goes to the log in one line.

        Output already queued (a CONNACK refusal, a TLS alert) is still sent before the socket
        closes.
        """
        if self.state == CLOSED:
            return
        if reason:
            self._broker.log_close(self, reason)
        self._broker.forget(self)
        self.state = CLOSED
        if tls_shutdown and self._ssl is not None:
            try:
                self._ssl.unwrap()
            except (ssl.SSLError, ValueError):
                pass
            self._flush()
        if self.transport is not None:
            self.transport.close()
