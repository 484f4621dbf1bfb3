"""Sessions, authentication of CONNECT, routing and the cloud side (``DeviceMessaging``).

Transport-free: connections call in with decoded packets; the broker answers through
``conn.send`` / ``conn.publish`` / ``conn.close``. Every refusal is logged as one line with the
certificate's SN and issuer and the reason, because a device only ever sees a CONNACK code.

CONNACK codes chosen where the platform's documentation is silent:
- 1: protocol level is not 4 (MQTT 3.1.1), as the MQTT specification requires;
- 2 (identifier rejected): the client id or its ``|securemode=..|`` parameters, or a keep-alive
  outside 30..1200 s -- CONNECT fields that break the platform's conventions;
- 5 (not authorised): everything about *who* the device is (registry refusal, username that
  is malformed or names another device).
"""

from __future__ import annotations

import logging
import ssl
import time
from collections import deque
from collections.abc import Callable

from cryptography import x509

from device_sdk.certs import certificate_sn
from device_sdk.errors import InvalidNameError
from device_sdk.identity import Identity
from device_sdk.platform import (
    IDENTITY_TOPIC,
    KEEPALIVE_MAX,
    KEEPALIVE_MIN,
    SECURE_MODE_X509,
    ClientId,
    identity_payload,
    parse_username,
)
from server_stub.config import MqttLimits
from server_stub.mqtt import codec
from server_stub.mqtt.activity import Activity
from server_stub.mqtt.connection import AWAIT_CONNECT, CONNECTED, HANDSHAKE, MqttConnection
from server_stub.mqtt.errors import InvalidMessageError, MqttProtocolError
from server_stub.mqtt.router import Router
from server_stub.mqtt.topics import device_may_use, device_prefixes, validate_topic_name
from server_stub.ports import AuthRefused, DeviceDirectory, DeviceMessage

log = logging.getLogger("server_stub.mqtt")

DeviceKey = tuple[str, str]


class Broker:
    """State shared by all connections of one endpoint; lives on the event loop thread."""

    def __init__(
        self,
        directory: DeviceDirectory,
        context: ssl.SSLContext,
        limits: MqttLimits,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.directory = directory
        self.context = context
        self.limits = limits
        self.now = clock
        self.connections: set[MqttConnection] = set()
        self.sessions: dict[DeviceKey, MqttConnection] = {}
        self.router: Router[MqttConnection] = Router()
        self._recent: dict[DeviceKey, deque[DeviceMessage]] = {}
        self.refused_at_capacity = 0
        self.activity = Activity()
        """The console's counters and live listeners (see :mod:`server_stub.mqtt.activity`)."""

    # --- connection lifecycle ------------------------------------------------------------------

    def admit(self, conn: MqttConnection) -> bool:
        if len(self.connections) >= self.limits.max_connections:
            self.refused_at_capacity += 1
            log.warning(
                "mqtt %s: refused: %d connections is the limit (max_connections)",
                conn.peer, self.limits.max_connections,
            )
            return False
        self.connections.add(conn)
        return True

    def forget(self, conn: MqttConnection) -> None:
        """Drop every trace of a closing connection; publish its will if it did not DISCONNECT."""
        self.connections.discard(conn)
        device = conn.device
        if device is None:
            return
        key = (device.product_key, device.device_name)
        if self.sessions.get(key) is conn:
            del self.sessions[key]
        for topic_filter in conn.filters:
            self.router.unsubscribe(conn, topic_filter)
        conn.filters.clear()
        will, conn.will = conn.will, None
        if will is not None and conn.state == CONNECTED:
            if device_may_use(conn.prefixes, will.topic):
                qos = min(will.qos, 1)
                self._record(conn, will.topic, will.payload, qos)
                self._route(conn, will.topic, will.payload, qos)
            else:
                self._refusal_log(conn, None, f"will topic {will.topic!r} is outside the device's topics; dropped")

    def keepalive_deadline(self, keep_alive: int) -> float:
        return self.now() + keep_alive * 1.5

    def sweep(self) -> None:
        """Close connections past their deadline (handshake, CONNECT, keep-alive x 1.5)."""
        now = self.now()
        expired = [c for c in self.connections if c.deadline <= now]
        for conn in expired:
            if conn.state == HANDSHAKE:
                conn.close(f"no TLS handshake within {self.limits.handshake_timeout:g} s",
                           tls_shutdown=False)
            elif conn.state == AWAIT_CONNECT:
                conn.close(f"no CONNECT within {self.limits.connect_timeout:g} s after the handshake")
            else:
                conn.close(f"keep-alive: nothing received for 1.5 x {conn.keep_alive} s")

    def recheck(self) -> None:
        """After a registry change: close sessions whose acceptance no longer holds."""
        directory = self.directory
        for conn in list(self.sessions.values()):
            device = conn.device
            if device is not None and not directory.is_current(device):
                conn.close("the registry no longer accepts this device (CA or device disabled, "
                           "association removed)")

    def close_all(self) -> None:
        for conn in list(self.connections):
            conn.close()

    # --- logging -------------------------------------------------------------------------------

    def _refusal_log(self, conn: MqttConnection, leaf: x509.Certificate | None, reason: str) -> None:
        if leaf is not None:
            sn, issuer = certificate_sn(leaf), leaf.issuer.rfc4514_string()
        elif conn.device is not None:
            sn, issuer = conn.device.cert_sn, f"CA SN {conn.device.ca_sn}"
        else:
            sn, issuer = "-", "-"
        log.warning(
            "mqtt %s: %s (cert SN %s, issuer %s, client id %r)",
            conn.peer, reason, sn, issuer, conn.client_id,
        )

    def log_close(self, conn: MqttConnection, reason: str) -> None:
        self._refusal_log(conn, None, f"closed: {reason}")

    def handshake_failed(self, conn: MqttConnection, exc: ssl.SSLError) -> None:
        detail = getattr(exc, "verify_message", None) or exc.reason or str(exc)
        log.warning(
            "mqtt %s: TLS handshake refused: %s (%s; the certificate is not available after a "
            "failed handshake)", conn.peer, detail, exc.reason or type(exc).__name__,
        )

    # --- CONNECT -------------------------------------------------------------------------------

    def _refuse(self, conn: MqttConnection, leaf: x509.Certificate | None, code: int,
                reason: str) -> None:
        self._refusal_log(conn, leaf, f"CONNECT refused with CONNACK {code}: {reason}")
        conn.send(codec.Connack(code))
        conn.close()

    def on_connect(self, conn: MqttConnection, packet: codec.Connect) -> None:
        conn.client_id = packet.client_id
        leaf = self._peer_leaf(conn)
        if leaf is None:
            conn.close("no client certificate after the handshake")
            return
        if not KEEPALIVE_MIN <= packet.keep_alive <= KEEPALIVE_MAX:
            self._refuse(conn, leaf, codec.CONNACK_IDENTIFIER_REJECTED,
                         f"keep-alive {packet.keep_alive} s is outside "
                         f"{KEEPALIVE_MIN}..{KEEPALIVE_MAX} s")
            return
        try:
            client_id = ClientId.parse(packet.client_id)
        except InvalidNameError as exc:
            self._refuse(conn, leaf, codec.CONNACK_IDENTIFIER_REJECTED, str(exc))
            return
        mode = client_id.param("securemode")
        if mode is not None and mode != SECURE_MODE_X509:
            self._refuse(conn, leaf, codec.CONNACK_IDENTIFIER_REJECTED,
                         f"securemode={mode} in the client id; X.509 devices use securemode=2")
            return
        decision = self.directory.authenticate(leaf)
        if isinstance(decision, AuthRefused):
            self._refuse(conn, leaf, codec.CONNACK_NOT_AUTHORIZED, decision.reason)
            return
        try:
            claimed = parse_username(packet.username or "")
        except InvalidNameError as exc:
            self._refuse(conn, leaf, codec.CONNACK_NOT_AUTHORIZED, str(exc))
            return
        if claimed is not None and (claimed.product_key, claimed.device_name) != (
            decision.product_key, decision.device_name
        ):
            self._refuse(
                conn, leaf, codec.CONNACK_NOT_AUTHORIZED,
                f"username {packet.username!r} names another device than the certificate's "
                f"({decision.device_name}&{decision.product_key})",
            )
            return
        key = (decision.product_key, decision.device_name)
        previous = self.sessions.get(key)
        conn.device = decision
        if previous is not None:
            previous.close(f"replaced by a new connection of the same device from {conn.peer}")
        self.sessions[key] = conn
        conn.prefixes = device_prefixes(*key)
        conn.keep_alive = packet.keep_alive
        conn.will = packet.will
        conn.state = CONNECTED
        conn.deadline = self.keepalive_deadline(packet.keep_alive)
        conn.send(codec.Connack(codec.CONNACK_ACCEPTED))
        self.activity.connected(decision, leaf.not_valid_after_utc.timestamp())
        log.info("mqtt %s: %s&%s connected (cert SN %s, CA SN %s)", conn.peer,
                 decision.device_name, decision.product_key, decision.cert_sn, decision.ca_sn)
        if self.limits.deliver_identity:
            conn.publish(
                IDENTITY_TOPIC,
                identity_payload(Identity(decision.product_key, decision.device_name)),
                0,
            )

    @staticmethod
    def _peer_leaf(conn: MqttConnection) -> x509.Certificate | None:
        der = conn.peer_certificate_der()
        if not der:
            return None
        return x509.load_der_x509_certificate(der)

    # --- after CONNECT -------------------------------------------------------------------------

    def on_packet(self, conn: MqttConnection, packet: codec.Packet) -> None:
        if isinstance(packet, codec.Publish):
            self._on_publish(conn, packet)
        elif isinstance(packet, codec.Pingreq):
            conn.send_bytes(codec.PINGRESP_BYTES)
        elif isinstance(packet, codec.Puback):
            conn.inflight.discard(packet.packet_id)
        elif isinstance(packet, codec.Subscribe):
            self._on_subscribe(conn, packet)
        elif isinstance(packet, codec.Unsubscribe):
            for topic_filter in packet.topics:
                if conn.filters.pop(topic_filter, None) is not None:
                    self.router.unsubscribe(conn, topic_filter)
            conn.send(codec.Unsuback(packet.packet_id))
        elif isinstance(packet, codec.Disconnect):
            conn.will = None
            conn.close()
        elif isinstance(packet, codec.Connect):
            raise MqttProtocolError("a second CONNECT on one connection")
        else:
            raise MqttProtocolError(f"{type(packet).__name__.upper()} is sent by servers only")

    def _on_publish(self, conn: MqttConnection, packet: codec.Publish) -> None:
        if packet.qos == 2:
            raise MqttProtocolError("QoS 2 is not supported (the platform offers QoS 0 and 1)")
        if device_may_use(conn.prefixes, packet.topic):
            self._record(conn, packet.topic, packet.payload, packet.qos)
            self._route(conn, packet.topic, packet.payload, packet.qos)
        else:
            self._refusal_log(
                conn, None, f"PUBLISH to {packet.topic!r} dropped: outside the device's topics"
            )
        if packet.qos == 1 and packet.packet_id is not None:
            conn.send(codec.Puback(packet.packet_id))

    def _record(self, conn: MqttConnection, topic: str, payload: bytes, qos: int) -> None:
        device = conn.device
        assert device is not None
        key = (device.product_key, device.device_name)
        recent = self._recent.get(key)
        if recent is None:
            recent = self._recent[key] = deque(maxlen=self.limits.recent_messages_per_device)
        message = DeviceMessage(topic, payload, qos, time.time())
        recent.append(message)
        self.activity.published(key, message)

    def _route(self, sender: MqttConnection | None, topic: str, payload: bytes, qos: int) -> None:
        for target, granted in self.router.match(topic).items():
            target.publish(topic, payload, min(qos, granted))

    def _on_subscribe(self, conn: MqttConnection, packet: codec.Subscribe) -> None:
        codes: list[int] = []
        for topic_filter, qos in packet.topics:
            if device_may_use(conn.prefixes, topic_filter):
                granted = min(qos, 1)
                self.router.subscribe(conn, topic_filter, granted)
                conn.filters[topic_filter] = granted
                codes.append(granted)
            else:
                self._refusal_log(
                    conn, None, f"SUBSCRIBE to {topic_filter!r} refused (0x80): outside the "
                    "device's topics",
                )
                codes.append(codec.SUBACK_FAILURE)
        conn.send(codec.Suback(packet.packet_id, tuple(codes)))

    # --- cloud side (DeviceMessaging) ----------------------------------------------------------

    def is_online(self, product_key: str, device_name: str) -> bool:
        return (product_key, device_name) in self.sessions

    def deliver(self, product_key: str, device_name: str, topic: str, payload: bytes,
                qos: int) -> bool:
        validate_topic_name(topic)
        if qos not in (0, 1):
            raise InvalidMessageError(f"qos {qos} is not 0 or 1")
        if len(payload) > self.limits.max_packet_size:
            raise InvalidMessageError(
                f"payload of {len(payload)} bytes exceeds the maximum packet size "
                f"{self.limits.max_packet_size}"
            )
        conn = self.sessions.get((product_key, device_name))
        if conn is None:
            return False
        conn.publish(topic, payload, qos)
        return True

    def recent_messages(self, product_key: str, device_name: str,
                        limit: int = 100) -> list[DeviceMessage]:
        recent = self._recent.get((product_key, device_name))
        if not recent or limit <= 0:
            return []
        items = list(recent)
        return items[-limit:]

