"""Session registry, authentication of CONNECT, routing and the cloud side (``DeviceMessaging``).

Transport-free: connections (anything shaped like :class:`Link`) hand in decoded packets; the
broker feeds each connection's :class:`~server_stub.mqtt.session.Session` machine and answers
through ``link.send`` / ``link.close``. It never imports the connection module: the connection
depends on the broker, not the other way round. Every refusal and every limit reached is logged
as one line with the certificate's SN and issuer and the reason, because a device only ever
sees a CONNACK code.

CONNACK codes chosen where the platform's documentation is silent:
- 1: protocol level is not 4 (MQTT 3.1.1), as the MQTT specification requires;
- 2 (identifier rejected): the client id or its ``|securemode=..|`` parameters, or a keep-alive
  outside 30..1200 s -- CONNECT fields that break the platform's conventions;
- 5 (not authorised): everything about *who* the device is (registry refusal, username that
  is malformed or names another device).

Limits (each a field of :class:`~server_stub.config.MqttLimits`, documented in
``docs/device-endpoint-limits.md``): connections in all, connections not authenticated yet in all
and per source address (:mod:`server_stub.mqtt.admission`), client id length, filters per session and their levels and bytes, and
the recent-messages store's budgets (:mod:`server_stub.mqtt.recent`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import NamedTuple

from cryptography import x509

from device_sdk.certificate import remember_model
from device_sdk.certs import certificate_sn, check_validity
from device_sdk.errors import ClockError, InvalidNameError
from device_sdk.identity import Identity
from device_sdk.platform import (
    IDENTITY_TOPIC,
    SECURE_MODE_X509,
    ClientId,
    device_topic_space,
    identity_payload,
    parse_username,
    topic_within_device_space,
    validate_keepalive,
)
from server_stub.config import MqttLimits
from server_stub.mqtt import codec
from server_stub.mqtt.activity import Activity
from server_stub.mqtt.admission import LOG_CLIP, Admission, Link, clip
from server_stub.mqtt.decisions import DecisionKey, Decisions
from server_stub.mqtt.errors import InvalidMessageError, MqttProtocolError
from server_stub.mqtt.lookups import Lookups, Outcome
from server_stub.mqtt.recent import RecentMessages
from server_stub.mqtt.router import Router
from server_stub.mqtt.session import Closed as SessionClosed
from server_stub.mqtt.session import (
    ConnectAccepted,
    ConnectReceived,
    Expired,
    HandshakeDone,
    PacketReceived,
    Session,
    State,
    Tick,
    WillDue,
)
from server_stub.mqtt.tls import ServerTls
from server_stub.mqtt.tls_engine import TlsHandshakeError
from server_stub.mqtt.topics import device_may_use, device_prefixes, validate_topic_name
from server_stub.ports import (
    AuthenticatedDevice,
    AuthRefused,
    DeviceDirectory,
    DeviceMessage,
    RenewalHandler,
)

log = logging.getLogger("server_stub.mqtt")

DeviceKey = tuple[str, str]

_CONNACK_ACCEPTED = codec.encode(codec.Connack(codec.CONNACK_ACCEPTED))


class _Connecting(NamedTuple):
    """A CONNECT waiting for the registry's answer, with what its acceptance still needs."""

    conn: Link
    packet: codec.Connect
    leaf: x509.Certificate
    claimed: Identity | None
    generation: int
    key: DecisionKey | None


class Broker:
    """State shared by all connections of one endpoint; lives on the event loop thread."""

    def __init__(
        self,
        directory: DeviceDirectory,
        context: ServerTls,
        limits: MqttLimits,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.directory = directory
        self.context = context
        self.limits = limits
        self.now = clock
        self.admission = Admission(limits)
        # the admission's own containers, by the names the endpoint's tests and console read
        self.max_connections = self.admission.max_connections
        self.connections = self.admission.connections
        self.pending = self.admission.pending
        self._pending_by_source = self.admission.by_source
        self.sessions: dict[DeviceKey, Link] = {}
        self.router: Router[Link] = Router()
        self.recent = RecentMessages(limits)
        self.activity = Activity()
        """The console's counters and live listeners (see :mod:`server_stub.mqtt.activity`)."""
        self.decisions = Decisions(self.max_connections)
        """The registry's answers to CONNECT, while its trust generation holds."""
        self._lookups: Lookups[_Connecting] = Lookups(directory, self._connect_decided)
        """CONNECTs waiting for the registry, asked in one thread-pool job per loop iteration."""
        self.renewals: RenewalHandler | None = None
        """Certificate renewal (issue 14, docs/renewal.md): told of CONNECTs and PUBLISHes."""

    # --- connection lifecycle ------------------------------------------------------------------

    def new_session(self) -> Session:
        return Session(self.limits, self.now())

    def admit(self, conn: Link) -> bool:
        """Take a new TCP connection, or refuse it; see :meth:`Admission.admit`."""
        return self.admission.admit(conn)

    def _unpend(self, conn: Link) -> None:
        self.admission.unpend(conn)

    def forget(self, conn: Link) -> None:
        """Drop every trace of a closing connection; publish its will if it did not DISCONNECT."""
        self.connections.discard(conn)
        self._unpend(conn)
        session = conn.session
        device = session.device
        for topic_filter in session.filters:
            self.router.unsubscribe(conn, topic_filter)
        outcome = session.handle(SessionClosed())
        if device is None:
            return
        key = (device.product_key, device.device_name)
        if self.sessions.get(key) is conn:
            del self.sessions[key]
            self.recent.left(key, self.now())
        if isinstance(outcome, WillDue):
            will = outcome.will
            if device_may_use(session.prefixes, will.topic):
                qos = min(will.qos, 1)
                self._record(key, will.topic, will.payload, qos)
                self._route(will.topic, will.payload, qos)
            else:
                self._refusal_log(
                    conn,
                    None,
                    f"will topic {clip(will.topic)!r} is outside the device's topics; dropped",
                )

    def sweep(self) -> None:
        """Close connections past their deadline; forget messages of devices long gone."""
        now = self.now()
        for conn in list(self.connections):
            outcome = conn.session.handle(Tick(now))
            if isinstance(outcome, Expired):
                conn.close(outcome.reason, tls_shutdown=outcome.tls_shutdown)
        self.recent.expire(now)

    def recheck(self) -> None:
        """After a registry change: close sessions whose acceptance no longer holds."""
        directory = self.directory
        for conn in list(self.sessions.values()):
            device = conn.session.device
            if device is not None and not directory.is_current(device):
                conn.close(
                    "the registry no longer accepts this device (CA or device disabled, "
                    "association removed)"
                )

    def close_all(self) -> None:
        for conn in list(self.connections):
            conn.close()

    # --- logging -------------------------------------------------------------------------------

    def _refusal_log(self, conn: Link, leaf: x509.Certificate | None, reason: str) -> None:
        device = conn.session.device
        if leaf is not None:
            sn, issuer = certificate_sn(leaf), leaf.issuer.rfc4514_string()
        elif device is not None:
            sn, issuer = device.cert_sn, f"CA SN {device.ca_sn}"
        else:
            sn, issuer = "-", "-"
        log.warning(
            "mqtt %s: %s (cert SN %s, issuer %s, client id %r)",
            conn.peer,
            clip(reason, 4 * LOG_CLIP),
            sn,
            issuer,
            conn.session.client_id,
        )

    def log_close(self, conn: Link, reason: str) -> None:
        self._refusal_log(conn, None, f"closed: {reason}")

    def handshake_failed(self, conn: Link, exc: TlsHandshakeError) -> None:
        log.warning(
            "mqtt %s: TLS handshake refused: %s (%s; cert SN %s, issuer %s)",
            conn.peer,
            exc.verify_message or exc.reason,
            exc.reason,
            exc.cert_sn or "-",
            exc.issuer or "-",
        )

    def handshake_done(self, conn: Link) -> None:
        conn.session.handle(HandshakeDone(self.now()))

    # --- packets -------------------------------------------------------------------------------

    def on_packet(self, conn: Link, packet: codec.Packet) -> None:
        """One decoded packet; raises :class:`MqttProtocolError` for one out of order."""
        session = conn.session
        session.handle(PacketReceived(self.now(), packet))
        if isinstance(packet, codec.Connect):
            self._on_connect(conn, packet)
        elif isinstance(packet, codec.Publish):
            self._on_publish(conn, packet)
        elif isinstance(packet, codec.Pingreq):
            conn.send_bytes(codec.PINGRESP_BYTES)
        elif isinstance(packet, codec.Subscribe):
            self._on_subscribe(conn, packet)
        elif isinstance(packet, codec.Unsubscribe):
            for topic_filter in session.unsubscribe(packet.topics):
                self.router.unsubscribe(conn, topic_filter)
            conn.send(codec.Unsuback(packet.packet_id))
        elif isinstance(packet, codec.Disconnect):
            conn.close()
        elif not isinstance(packet, codec.Puback):  # PUBACK: the session dropped its id
            raise MqttProtocolError(f"{type(packet).__name__.upper()} is sent by servers only")

    # --- CONNECT -------------------------------------------------------------------------------

    def _refuse(self, conn: Link, leaf: x509.Certificate | None, code: int, reason: str) -> None:
        self._refusal_log(conn, leaf, f"CONNECT refused with CONNACK {code}: {reason}")
        conn.send(codec.Connack(code))
        conn.close()

    def _on_connect(self, conn: Link, packet: codec.Connect) -> None:
        session = conn.session
        session.client_id = clip(packet.client_id, self.limits.max_client_id_length)
        der = conn.peer_certificate_der()  # handed over once: the connection keeps no copy
        if not der:
            conn.close("no client certificate after the handshake")
            return
        leaf = x509.load_der_x509_certificate(der)
        remember_model(leaf, der)  # the rules read the model: from this DER, not re-serialised
        if len(packet.client_id) > self.limits.max_client_id_length:
            self._refuse(
                conn,
                leaf,
                codec.CONNACK_IDENTIFIER_REJECTED,
                f"client id of {len(packet.client_id)} characters is longer than "
                f"{self.limits.max_client_id_length} (max_client_id_length)",
            )
            return
        try:
            validate_keepalive(packet.keep_alive)
        except ValueError as exc:
            self._refuse(conn, leaf, codec.CONNACK_IDENTIFIER_REJECTED, str(exc))
            return
        try:
            client_id = ClientId.parse(packet.client_id)
            if client_id.id:  # the platform's id rule (<= 64 characters); MQTT allows none
                ClientId.for_x509(client_id.id)
        except InvalidNameError as exc:
            self._refuse(conn, leaf, codec.CONNACK_IDENTIFIER_REJECTED, str(exc))
            return
        mode = client_id.param("securemode")
        if mode is not None and mode != SECURE_MODE_X509:
            self._refuse(
                conn,
                leaf,
                codec.CONNACK_IDENTIFIER_REJECTED,
                f"securemode={clip(mode)} in the client id; X.509 devices use securemode=2",
            )
            return
        try:
            claimed = parse_username(packet.username or "")
        except InvalidNameError as exc:
            self._refuse(conn, leaf, codec.CONNACK_NOT_AUTHORIZED, str(exc))
            return
        session.handle(ConnectReceived(self.now()))
        generation = self.directory.trust_generation
        issuer = conn.issuer
        key = None if issuer is None else Decisions.key(issuer, der)
        known = None if key is None else self.decisions.get(generation, key)
        if known is not None:  # asked before under this generation: only the clock is new
            try:
                check_validity(leaf, what="device certificate")
            except ClockError as exc:
                self._refuse(conn, leaf, codec.CONNACK_NOT_AUTHORIZED, str(exc))
                return
            self._accept(conn, packet, leaf, claimed, known)
            return
        # The registry reads SQLite: off the event loop, so one CONNECT never stalls every
        # other connection; with the other CONNECTs of this loop iteration, in one job
        # (server_stub.mqtt.lookups). Packets after CONNECT wait until it answers.
        conn.hold()
        self._lookups.ask(_Connecting(conn, packet, leaf, claimed, generation, key), leaf, issuer)

    def _connect_decided(self, connecting: _Connecting, decision: Outcome) -> None:
        conn, packet, leaf, claimed, generation, key = connecting
        if conn.session.closed:
            return
        if isinstance(decision, BaseException):
            log.error(
                "mqtt %s: the registry lookup of CONNECT failed", conn.peer, exc_info=decision
            )
            self._refuse(
                conn, leaf, codec.CONNACK_SERVER_UNAVAILABLE, f"registry lookup failed: {decision}"
            )
            return
        if isinstance(decision, AuthRefused):
            self._refuse(conn, leaf, codec.CONNACK_NOT_AUTHORIZED, decision.reason)
            return
        if self.directory.trust_generation != generation:
            if not self.directory.is_current(decision):
                # the registry changed while it answered: what it said may no longer hold
                self._refuse(
                    conn,
                    leaf,
                    codec.CONNACK_NOT_AUTHORIZED,
                    "the registry changed during the lookup and no longer accepts it",
                )
                return
        elif key is not None:
            self.decisions.put(generation, key, decision)
        self._accept(conn, packet, leaf, claimed, decision)
        conn.release()

    def _accept(
        self,
        conn: Link,
        packet: codec.Connect,
        leaf: x509.Certificate,
        claimed: Identity | None,
        decision: AuthenticatedDevice,
    ) -> None:
        """The registry accepted the certificate: the username must agree, then CONNACK 0."""
        session = conn.session
        if claimed is not None and (claimed.product_key, claimed.device_name) != (
            decision.product_key,
            decision.device_name,
        ):
            self._refuse(
                conn,
                leaf,
                codec.CONNACK_NOT_AUTHORIZED,
                f"username {clip(packet.username or '')!r} names another device than the "
                f"certificate's ({decision.device_name}&{decision.product_key})",
            )
            return
        key = (decision.product_key, decision.device_name)
        previous = self.sessions.get(key)
        if previous is not None:
            previous.close(f"replaced by a new connection of the same device from {conn.peer}")
        session.handle(
            ConnectAccepted(
                self.now(), decision, device_prefixes(*key), packet.keep_alive, packet.will
            )
        )
        self._unpend(conn)
        self.sessions[key] = conn
        self.recent.returned(key)
        answer = _CONNACK_ACCEPTED
        if self.limits.deliver_identity:  # QoS 0, no packet id: the same write as the CONNACK
            identity = identity_payload(Identity(decision.product_key, decision.device_name))
            answer += codec.encode(codec.Publish(IDENTITY_TOPIC, identity))
        conn.send_bytes(answer)  # one TLS record, one socket write
        not_after = leaf.not_valid_after_utc.timestamp()
        self.activity.connected(decision, not_after)
        log.info(
            "mqtt %s: %s&%s connected (cert SN %s, CA SN %s)",
            conn.peer,
            decision.device_name,
            decision.product_key,
            decision.cert_sn,
            decision.ca_sn,
        )
        if self.renewals is not None:
            self.renewals.on_connected(decision, not_after)

    # --- after CONNECT -------------------------------------------------------------------------

    def _on_publish(self, conn: Link, packet: codec.Publish) -> None:
        if packet.qos == 2:
            raise MqttProtocolError("QoS 2 is not supported (the platform offers QoS 0 and 1)")
        session = conn.session
        if device_may_use(session.prefixes, packet.topic):
            device = session.device
            assert device is not None
            self._record(
                (device.product_key, device.device_name), packet.topic, packet.payload, packet.qos
            )
            self._route(packet.topic, packet.payload, packet.qos)
            if self.renewals is not None:
                self.renewals.on_publish(device, packet.topic, packet.payload)
        else:
            self._refusal_log(
                conn,
                None,
                f"PUBLISH to {clip(packet.topic)!r} dropped: outside the device's topics",
            )
        if packet.qos == 1 and packet.packet_id is not None:
            conn.send(codec.Puback(packet.packet_id))

    def _record(self, key: DeviceKey, topic: str, payload: bytes, qos: int) -> None:
        message = DeviceMessage(topic, payload, qos, time.time())
        self.recent.add(key, message)
        self.activity.published(key, message)

    def _route(self, topic: str, payload: bytes, qos: int) -> None:
        for target, granted in self.router.match(topic).items():
            self._send_publish(target, topic, payload, min(qos, granted))

    def _send_publish(self, conn: Link, topic: str, payload: bytes, qos: int) -> None:
        """Send a PUBLISH, numbering QoS 1 messages from the session's free packet ids."""
        if qos == 0:
            conn.send(codec.Publish(topic, payload))
            return
        packet_id = conn.session.allocate_packet_id()
        if packet_id is None:
            log.warning("mqtt %s: 65535 unacknowledged QoS 1 messages; dropping one", conn.peer)
            return
        conn.send(codec.Publish(topic, payload, 1, packet_id=packet_id))

    def _on_subscribe(self, conn: Link, packet: codec.Subscribe) -> None:
        result = conn.session.subscribe(packet.topics)
        for topic_filter, granted in result.granted:
            self.router.subscribe(conn, topic_filter, granted)
        if result.refused:
            more = len(result.refused) - 1
            self._refusal_log(
                conn,
                None,
                f"SUBSCRIBE: {len(result.refused)} of {len(packet.topics)} filters refused "
                f"(0x80): {result.refused[0]}" + (f"; and {more} more" if more else ""),
            )
        conn.send(codec.Suback(packet.packet_id, result.codes))

    # --- cloud side (DeviceMessaging) ----------------------------------------------------------

    def is_online(self, product_key: str, device_name: str) -> bool:
        return (product_key, device_name) in self.sessions

    def deliver(
        self, product_key: str, device_name: str, topic: str, payload: bytes, qos: int
    ) -> bool:
        """Send to the device's live session; False when it is not connected.

        The topic must lie in the device's own space (``device_sdk.platform``'s one rule, which
        the HTTP API calls too), so no caller can reach into another device's topics.
        """
        validate_topic_name(topic)
        if not topic_within_device_space(product_key, device_name, topic):
            raise InvalidMessageError(
                f"topic {clip(topic)!r} is outside device {product_key}/{device_name}'s topic "
                f"space; allowed: {device_topic_space(product_key, device_name)}"
            )
        if qos not in (0, 1):
            raise InvalidMessageError(f"qos {qos} is not 0 or 1")
        if len(payload) > self.limits.max_packet_size:
            raise InvalidMessageError(
                f"payload of {len(payload)} bytes exceeds the maximum packet size "
                f"{self.limits.max_packet_size}"
            )
        conn = self.sessions.get((product_key, device_name))
        if conn is None or conn.session.state is not State.CONNECTED:
            return False
        self._send_publish(conn, topic, payload, qos)
        return True

    def recent_messages(
        self, product_key: str, device_name: str, limit: int = 100
    ) -> list[DeviceMessage]:
        return self.recent.get((product_key, device_name), limit)
