"""An in-memory :class:`server_stub.ports.DeviceDirectory` for MQTT endpoint tests and the bench.

It implements the contract the way the registry must: a CA is identified by the *key* that
verifies the device certificate's signature (``device_sdk.certs.signed_by``), never by its
subject name alone, and ``trust_generation`` changes on every change.
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import ssl
import threading
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import paho.mqtt.client as mqtt
from cryptography import x509
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from device_sdk.certs import certificate_sn, is_rsa, signed_by
from firmware_helpers.pki import (
    CertifiedKey,
    create_ca,
    generate_rsa_key,
    issue_device_certificate,
    issue_server_certificate,
)
from server_stub.config import MqttLimits
from server_stub.mqtt import codec
from server_stub.mqtt.service import MqttService
from server_stub.ports import (
    Attribution,
    AuthDecision,
    AuthenticatedDevice,
    AuthRefused,
    IssuerRefused,
    IssuingCa,
)

T = TypeVar("T")


@dataclass
class _Ca:
    cert: x509.Certificate
    active: bool = True
    devices: dict[str, tuple[str, str]] = field(default_factory=dict)
    """cert SN -> (product key, device name)"""


@dataclass(frozen=True)
class _FakeTrustIndex:
    """Attribution by key, as the contract says: the name narrows, exactly one key verifies."""

    cas: tuple[tuple[int, str, x509.Name, Any, bool], ...]

    def attribute(self, leaf: x509.Certificate) -> Attribution:
        verifying = [
            (i, sn, active)
            for i, sn, subject, key, active in self.cas
            if subject == leaf.issuer and signed_by(leaf, key)
        ]
        if len(verifying) > 1:
            return IssuerRefused(
                f"the signature verifies under {len(verifying)} registered CA keys: refused",
                ambiguous=True,
            )
        if not verifying:
            return IssuerRefused("no registered CA key verifies the certificate's signature")
        i, sn, active = verifying[0]
        return IssuingCa(i, 1, sn, active)


class FakeDirectory:
    def __init__(self) -> None:
        self._cas: dict[str, _Ca] = {}
        self._disabled: set[tuple[str, str]] = set()
        self._generation = 0
        self.authenticate_calls = 0

    # --- test controls -------------------------------------------------------------------------

    def _bump(self) -> None:
        self._generation += 1

    def add_ca(self, cert: x509.Certificate, *, active: bool = True) -> str:
        sn = certificate_sn(cert)
        self._cas[sn] = _Ca(cert, active)
        self._bump()
        return sn

    def set_ca_active(self, cert: x509.Certificate, active: bool) -> None:
        self._cas[certificate_sn(cert)].active = active
        self._bump()

    def remove_ca(self, cert: x509.Certificate) -> None:
        del self._cas[certificate_sn(cert)]
        self._bump()

    def associate(
        self, ca: x509.Certificate, leaf: x509.Certificate, product_key: str, device_name: str
    ) -> None:
        self._cas[certificate_sn(ca)].devices[certificate_sn(leaf)] = (product_key, device_name)
        self._bump()

    def set_devices(self, ca: x509.Certificate, product_key: str, devices: dict[str, str]) -> None:
        """Associate many SNs at once: {cert SN: device name}."""
        self._cas[certificate_sn(ca)].devices.update(
            {sn: (product_key, name) for sn, name in devices.items()}
        )
        self._bump()

    def set_device_enabled(self, product_key: str, device_name: str, enabled: bool) -> None:
        if enabled:
            self._disabled.discard((product_key, device_name))
        else:
            self._disabled.add((product_key, device_name))
        self._bump()

    # --- DeviceDirectory -----------------------------------------------------------------------

    @property
    def trust_generation(self) -> int:
        return self._generation

    def active_ca_certificates(self) -> Sequence[x509.Certificate]:
        return [ca.cert for ca in self._cas.values() if ca.active]

    def trust_index(self) -> _FakeTrustIndex:
        return _FakeTrustIndex(
            tuple(
                (i, sn, ca.cert.subject, ca.cert.public_key(), ca.active)
                for i, (sn, ca) in enumerate(self._cas.items())
            )
        )

    def authenticate(self, leaf: x509.Certificate, issuer: IssuingCa | None = None) -> AuthDecision:
        self.authenticate_calls += 1
        sn = certificate_sn(leaf)
        name = leaf.issuer.rfc4514_string()
        if not is_rsa(leaf):
            return AuthRefused("the device certificate is not RSA", sn, name)
        if issuer is None:
            found = self.trust_index().attribute(leaf)
            if isinstance(found, IssuerRefused):
                return AuthRefused(found.reason, sn, name)
            issuer = found
        ca = self._cas.get(issuer.ca_sn)
        if ca is None or not ca.active:
            return AuthRefused(f"CA {issuer.ca_sn} is not active", sn, name)
        device = ca.devices.get(sn)
        if device is None:
            return AuthRefused(
                f"SN {sn} is not associated with a device of CA {issuer.ca_sn}", sn, name
            )
        if device in self._disabled:
            return AuthRefused(f"device {device[1]}&{device[0]} is disabled", sn, name)
        return AuthenticatedDevice(1, device[0], device[1], issuer.ca_sn, sn)

    def is_current(self, device: AuthenticatedDevice) -> bool:
        ca = self._cas.get(device.ca_sn)
        if ca is None or not ca.active:
            return False
        if (device.product_key, device.device_name) in self._disabled:
            return False
        return ca.devices.get(device.cert_sn) == (device.product_key, device.device_name)


# --- a running endpoint for blocking clients (paho, mosquitto_pub) -----------------------------


class ServerThread:
    """An :class:`MqttService` on its own event loop thread (uvloop when installed)."""

    def __init__(
        self, directory: FakeDirectory, server: CertifiedKey, limits: MqttLimits | None = None
    ) -> None:
        self.directory = directory
        self._server_pair = server
        self.limits = limits or MqttLimits()
        self.loop = _new_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.service: MqttService | None = None

    def __enter__(self) -> ServerThread:
        self._thread.start()
        self.service = MqttService(
            self.directory,
            self._server_pair.cert_pem(),
            self._server_pair.key_pem(),
            "127.0.0.1",
            0,
            self.limits,
        )
        self.run(self.service.start())
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.service is not None
        self.run(self.service.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
        self.loop.close()

    @property
    def port(self) -> int:
        assert self.service is not None
        return self.service.port

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 10) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` on the loop thread (DeviceMessaging is called there)."""

        async def _call() -> T:
            return fn(*args)

        return self.run(_call())

    def refresh(self) -> None:
        """Follow the directory now instead of waiting for the 0.25 s poll."""
        assert self.service is not None
        self.call(self.service.refresh_trust)


def _new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    return loop


# --- a raw MQTT client over TLS (for what real clients refuse to send) -------------------------


class RawClient:
    """A blocking TLS socket speaking MQTT through the codec: sends anything, reads packets."""

    def __init__(
        self, port: int, server_ca: Path, cert: Path | None, key: Path | None, timeout: float = 5.0
    ) -> None:
        ctx = ssl.create_default_context(cafile=str(server_ca))
        if cert is not None:
            ctx.load_cert_chain(str(cert), str(key) if key else None)
        raw = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.sock = ctx.wrap_socket(raw, server_hostname="127.0.0.1")
        self.decoder = codec.Decoder(max_packet_size=codec.MAX_REMAINING_LENGTH)
        self._pending: list[codec.Packet] = []

    def send(self, packet: codec.Packet) -> None:
        self.sock.sendall(codec.encode(packet))

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def connect(
        self,
        client_id: str = "raw|securemode=2|",
        keep_alive: int = 300,
        username: str | None = None,
    ) -> codec.Connack:
        self.send(codec.Connect(client_id, keep_alive, username=username))
        packet = self.read()
        assert isinstance(packet, codec.Connack), packet
        return packet

    def read(self) -> codec.Packet:
        """The next packet; raises ConnectionError when the server closed the connection."""
        while not self._pending:
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("server closed the connection")
            self._pending.extend(self.decoder.feed(data))
        return self._pending.pop(0)

    def closed_by_server(self) -> bool:
        """Read until EOF (True) or timeout (False), discarding packets."""
        try:
            while True:
                self.read()
        except (ConnectionError, ssl.SSLError, OSError) as exc:
            return not isinstance(exc, TimeoutError)

    def close(self) -> None:
        self.sock.close()


# --- certificates and a recording paho client, shared by the endpoint tests ------------------

PK = "pk1"
MOSQUITTO_PUB = shutil.which("mosquitto_pub") or "/usr/bin/mosquitto_pub"
MOSQUITTO_SUB = shutil.which("mosquitto_sub") or "/usr/bin/mosquitto_sub"


@dataclass
class Device:
    name: str
    pair: CertifiedKey
    cert: Path
    key: Path


class World:
    """Certificates for one module: a server, a registered CA, look-alikes, strangers."""

    def __init__(self, root: Path) -> None:
        self.root = root
        keys = [generate_rsa_key() for _ in range(4)]
        self.server_ca = create_ca("MQTT test server CA", key=keys[0])
        self.server = issue_server_certificate(self.server_ca)
        self.server_ca_file = root / "server_ca.pem"
        self.server_ca_file.write_bytes(self.server_ca.cert_pem())
        self.ca = create_ca("Device CA", key=keys[1])
        self.twin = create_ca("Device CA", key=keys[2])  # same subject, other key
        self.stranger = create_ca("Stranger CA", key=keys[3])
        self._device_key = keys[0]
        self._n = 0

    def device(self, name: str, ca: CertifiedKey | None = None) -> Device:
        self._n += 1
        pair = issue_device_certificate(ca or self.ca, name, product_key=PK, key=self._device_key)
        return self._write(name, pair)

    def _write(self, name: str, pair: CertifiedKey) -> Device:
        cert, key = self.root / f"{name}-{self._n}.cer", self.root / f"{name}-{self._n}.key"
        pair.write(cert, key)
        return Device(name, pair, cert, key)


def registered(
    world: World, directory: FakeDirectory, name: str, ca: CertifiedKey | None = None
) -> Device:
    dev = world.device(name, ca)
    directory.associate((ca or world.ca).certificate, dev.pair.certificate, PK, name)
    return dev


class Paho:
    """paho-mqtt 2.x client that records what happens, for assertions."""

    def __init__(
        self,
        port: int,
        world: World,
        dev: Device | None,
        client_id: str = "",
        username: str | None = None,
        keepalive: int = 300,
    ) -> None:
        self.connected = threading.Event()
        self.disconnected = threading.Event()
        self.messages: list[mqtt.MQTTMessage] = []
        self.message_event = threading.Event()
        self.reason: ReasonCode | None = None
        self.granted: list[int] = []
        self.subscribed = threading.Event()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id or f"{dev.name if dev else 'x'}|securemode=2,signmethod=x509|",
            protocol=mqtt.MQTTv311,
        )
        self.client.tls_set(
            ca_certs=str(world.server_ca_file),
            certfile=str(dev.cert) if dev else None,
            keyfile=str(dev.key) if dev else None,
        )
        if username is not None:
            self.client.username_pw_set(username, "password is ignored")
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message
        self.client.on_subscribe = self._on_subscribe
        self.port, self.keepalive = port, keepalive

    def _on_connect(
        self,
        client: mqtt.Client,
        userdata: object,
        flags: object,
        reason: ReasonCode,
        props: object,
    ) -> None:
        self.reason = reason
        self.connected.set()

    def _on_disconnect(
        self,
        client: mqtt.Client,
        userdata: object,
        flags: object,
        reason: ReasonCode,
        props: object,
    ) -> None:
        self.disconnected.set()

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        self.messages.append(msg)
        self.message_event.set()

    def _on_subscribe(
        self,
        client: mqtt.Client,
        userdata: object,
        mid: int,
        codes: list[ReasonCode],
        props: object,
    ) -> None:
        self.granted = [c.value for c in codes]
        self.subscribed.set()

    def start(self) -> Paho:
        self.client.connect("127.0.0.1", self.port, self.keepalive)
        self.client.loop_start()
        return self

    def wait_message(self, topic: str, timeout: float = 5) -> mqtt.MQTTMessage:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for m in self.messages:
                if m.topic == topic:
                    return m
            self.message_event.wait(0.05)
            self.message_event.clear()
        raise AssertionError(f"no message on {topic}; got {[m.topic for m in self.messages]}")

    def subscribe(self, topic: str, qos: int = 1) -> list[int]:
        self.subscribed.clear()
        self.client.subscribe(topic, qos)
        assert self.subscribed.wait(5)
        return self.granted

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def wait_for(predicate: object, timeout: float = 5) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(0.02)
    return False
