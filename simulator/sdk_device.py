"""``--device-client sdk``: the simulated device is the SDK's own ``DeviceClient``, unchanged.

Full fidelity with what runs on a board (its reconnect loop, offline queue, identity store
logic), at the SDK's limits under Locust: its network thread (a greenlet under gevent) runs
paho's ``select()`` loop, which stops at about 340 devices per process (FD_SETSIZE; measured 341
of 600, the others reported as ``CertificateRejectedError``). Use it to check the SDK's own
behaviour with a few hundred devices; use the default client (:mod:`simulator.device`) for load.

Events are the same names as the default client's, with one difference: ``DeviceClient.connect``
returns only once the identity arrived, so ``connect`` covers TLS + CONNACK + identity and
``identity`` only records the comparison with the fleet (0 ms).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from pathlib import Path

import gevent

from device_sdk.backoff import BackoffPolicy
from device_sdk.client import PERMANENT_ERRORS, ConnectionState, DeviceClient, Message
from device_sdk.credentials import Credentials
from device_sdk.errors import DeviceSDKError, NotConnectedError
from device_sdk.identity import Identity
from simulator.device import EventSink, IdentityMismatchError


class SdkDevice:
    """Adapter: ``DeviceClient`` behind the interface :class:`~simulator.users.DeviceUser` uses."""

    def __init__(
        self, host: str, port: int, credentials: Credentials, *, server_ca: Path | None,
        expected: Identity | None = None, keepalive: int = 300,
        backoff: BackoffPolicy | None = None, rng: random.Random | None = None,
        on_event: EventSink | None = None, connect_timeout: float = 30.0,
    ) -> None:
        policy = self._policy = backoff or BackoffPolicy()
        self.expected = expected
        self.on_event = on_event or (lambda name, seconds, error: None)
        self.connect_timeout = connect_timeout
        self._lost_at: float | None = None
        self._was_online = False
        self._closing = False
        self._starter: gevent.Greenlet | None = None
        self.client = DeviceClient(
            host, port, credentials, server_ca=server_ca, keepalive=keepalive,
            reconnect_base=policy.base, reconnect_cap=policy.cap,
            stable_period=policy.stable_period, rng=rng,
            on_connection_state=self._on_state,
        )

    @property
    def online(self) -> bool:
        return self.client.state is ConnectionState.ONLINE

    @property
    def identity(self) -> Identity | None:
        return self.client.identity

    def keep_connected(self) -> None:
        if self._starter is None or self._starter.dead:
            self._starter = gevent.spawn(self._first_connect)

    def _first_connect(self) -> None:
        while not self._closing:
            started = time.perf_counter()
            try:
                identity = self.client.connect(self.connect_timeout)
            except DeviceSDKError as exc:
                self.on_event("connect", time.perf_counter() - started, exc)
                gevent.sleep(self._policy.cap if isinstance(exc, PERMANENT_ERRORS)
                             else self._policy.base)
                continue
            self.on_event("connect", time.perf_counter() - started, None)
            self._was_online = True
            mismatch = None
            if self.expected is not None and identity != self.expected:
                mismatch = IdentityMismatchError(
                    f"the platform says this device is {identity}; the fleet expects "
                    f"{self.expected}")
            self.on_event("identity", 0.0, mismatch)
            return

    def _on_state(self, state: ConnectionState, error: DeviceSDKError | None) -> None:
        if not self._was_online or self._closing:
            return
        if state is ConnectionState.OFFLINE and error is not None:
            if self._lost_at is None:
                self._lost_at = time.perf_counter()
                self.on_event("connection lost", 0.0, error)
            else:
                self.on_event("reconnect", 0.0, error)
        elif state is ConnectionState.ONLINE and self._lost_at is not None:
            self.on_event("reconnect", time.perf_counter() - self._lost_at, None)
            self._lost_at = None

    def publish(self, topic: str, payload: bytes, qos: int = 1, timeout: float = 30.0) -> float:
        if not self.online:
            raise NotConnectedError("the device is offline")
        started = time.perf_counter()
        delivery = self.client.publish(topic, payload, qos=qos)
        if not delivery.wait(timeout):
            raise NotConnectedError(f"no PUBACK within {timeout:g} s")
        return time.perf_counter() - started

    def subscribe(self, topic: str, callback: Callable[[bytes], None]) -> None:
        def deliver(message: Message) -> None:
            gevent.spawn(callback, message.payload)

        self.client.subscribe(topic, deliver)

    def close(self) -> None:
        self._closing = True
        if self._starter is not None:
            self._starter.kill(block=False)
        self.client.disconnect()
