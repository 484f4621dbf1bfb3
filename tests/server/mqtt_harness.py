"""What the MQTT endpoint tests share: the endpoint on its own loop thread, on the REAL registry.

The endpoint authenticates against :class:`server_stub.registry.Registry` on a temporary SQLite
file (:class:`EndpointRegistry`, built on :mod:`testkit.registry`): CAs are registered with
their proof of possession and devices associated through association CSVs, so every rule a
device meets (attribution by key, CA status, validity, product eligibility, device status) is
production's own code, never a re-implementation. Clients are real: paho-mqtt, mosquitto_pub/_sub
and :class:`RawClient`, a TLS socket speaking MQTT through the server's codec (for what real
clients refuse to send).
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import ssl
import threading
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

import paho.mqtt.client as mqtt
from cryptography import x509
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from device_sdk.certs import certificate_sn
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
from server_stub.ports import DeviceDirectory
from server_stub.registry import Registry
from testkit.registry import RealRegistry, Tenant
from tests.common import wait_for

__all__ = [
    "MOSQUITTO_PUB",
    "MOSQUITTO_SUB",
    "PK",
    "ClientFiles",
    "Device",
    "EndpointRegistry",
    "Paho",
    "RawClient",
    "ServerThread",
    "World",
    "wait_for",
]

T = TypeVar("T")


# --- a running endpoint for blocking clients (paho, mosquitto_pub) -----------------------------


class ServerThread:
    """An :class:`MqttService` on its own event loop thread (uvloop when installed)."""

    def __init__(
        self, directory: DeviceDirectory, server: CertifiedKey, limits: MqttLimits | None = None
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
        """Follow the registry now instead of waiting for the service's 0.25 s poll."""
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
        self.proof_key = keys[0]  # verification certificates: any key does, reuse one for speed
        self._n = 0

    def scratch(self, prefix: str) -> Path:
        """A new empty directory under the module's root (a registry file per test)."""
        self._n += 1
        path = self.root / f"{prefix}-{self._n}"
        path.mkdir()
        return path

    def device(self, name: str, ca: CertifiedKey | None = None) -> Device:
        self._n += 1
        pair = issue_device_certificate(ca or self.ca, name, product_key=PK, key=self._device_key)
        return self._write(name, pair)

    def _write(self, name: str, pair: CertifiedKey) -> Device:
        cert, key = self.root / f"{name}-{self._n}.cer", self.root / f"{name}-{self._n}.key"
        pair.write(cert, key)
        return Device(name, pair, cert, key)


class EndpointRegistry:
    """The real registry on a new SQLite file under the world's root: one account, its product
    ``PK``, and the given CAs registered with their proof of possession."""

    def __init__(
        self,
        world: World,
        cas: Sequence[CertifiedKey] = (),
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.world = world
        self.real = RealRegistry(world.scratch("registry"), clock=clock, proof_key=world.proof_key)
        self.tenant: Tenant = self.real.tenant("endpoint", PK)
        for ca in cas:
            self.add_ca(ca)

    @property
    def registry(self) -> Registry:
        return self.real.registry

    def add_ca(self, ca: CertifiedKey) -> str:
        return self.tenant.register_ca(ca)

    def associate(self, ca: CertifiedKey, leaf: x509.Certificate, device_name: str) -> None:
        """Associate ``leaf``'s SN with ``device_name`` under ``ca`` (the caSn is the CA's SN)."""
        self.tenant.associate(ca.sn, {certificate_sn(leaf): device_name})

    def device(self, name: str, ca: CertifiedKey | None = None) -> Device:
        """A new device certificate of ``ca`` (default: the world's CA), associated under it."""
        ca = ca or self.world.ca
        dev = self.world.device(name, ca)
        self.associate(ca, dev.pair.certificate, name)
        return dev

    def set_ca_active(self, ca: CertifiedKey, active: bool) -> None:
        self.tenant.set_ca_active(ca.sn, active)

    def set_device_enabled(self, device_name: str, enabled: bool) -> None:
        self.tenant.set_device_enabled(device_name, enabled)

    def close(self) -> None:
        self.real.close()


class ClientFiles(Protocol):
    """A device's name and certificate/key files (:class:`Device` is one)."""

    @property
    def name(self) -> str: ...

    @property
    def cert(self) -> Path: ...

    @property
    def key(self) -> Path: ...


class Paho:
    """paho-mqtt 2.x client that records what happens, for assertions."""

    def __init__(
        self,
        port: int,
        server_ca_file: Path,
        dev: ClientFiles | None,
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
            ca_certs=str(server_ca_file),
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
