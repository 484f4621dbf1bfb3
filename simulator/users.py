"""``DeviceUser``: a Locust user that *is* one device of the fleet.

Each user leases one device (never shared, see :mod:`simulator.distribution`), connects with its
certificate and reports Locust request events (request type ``MQTT``):

- ``connect``: TLS handshake + CONNECT until CONNACK (failures carry the SDK error's message);
- ``identity``: CONNACK until the platform's identity message; a different ProductKey/DeviceName
  than the fleet expects is a failure;
- ``publish``: one telemetry message, QoS 1 timed to PUBACK;
- ``command``: the simulated cloud sends a command over the HTTP API, the device answers on its
  reply topic; timed until the answer's PUBACK;
- ``connection lost`` (failure only) and ``reconnect`` (time from the loss until the device is
  back, or the failed attempt's error).

Use it in your own locustfile::

    from simulator.users import DeviceUser

    class Sensor(DeviceUser):
        pass  # configured by --fleet/--template; override on_device_ready() to add behaviour
"""

from __future__ import annotations

import json
import logging
import random
import time

import gevent
from gevent.event import AsyncResult
from locust import task
from locust.env import Environment
from locust.exception import StopUser

from device_sdk.backoff import BackoffPolicy
from device_sdk.errors import DeviceSDKError
from firmware_helpers.platform_client import PlatformAPIError, PlatformClient
from simulator.config import SimulationConfig
from simulator.device import SimDevice
from simulator.leased_user import LeasedDeviceUser

log = logging.getLogger(__name__)

REQUEST_TYPE = "MQTT"


class DeviceUser(LeasedDeviceUser):
    """One simulated device per user; the fleet, template and scenario come from the options."""

    abstract = True
    request_type = REQUEST_TYPE

    def __init__(self, environment: Environment) -> None:
        super().__init__(environment)
        self.device: SimDevice | None = None
        self._next_publish = 0.0
        self._next_command = float("inf")
        self._command_seq = 0
        self._replies: dict[str, AsyncResult] = {}
        self._api: PlatformClient | None = None

    # --- Locust's hooks ------------------------------------------------------------------------

    def wait_time(self) -> float:
        """Sleep until the next telemetry message or command is due."""
        return max(0.0, min(self._next_publish, self._next_command) - time.monotonic())

    def _set_up(self, config: SimulationConfig, index: int) -> None:
        entry = config.fleet.devices[index]
        self.behaviour = config.template.behaviour(index)
        config.record_lease(index, entry.device_name)
        host, port = config.endpoint
        try:
            self.device = SimDevice(
                host,
                port,
                config.fleet.path(entry.cert),
                config.fleet.path(entry.key),
                entry.cert_sn,
                server_ca=config.server_ca,
                expected=entry.identity,
                expect_identity=config.expect_identity,
                keepalive=config.keepalive,
                backoff=BackoffPolicy(
                    config.reconnect_base, config.reconnect_cap, config.stable_period
                ),
                rng=f"{config.template.seed}:backoff:{index}",
                on_event=self._fire,
            )
        except DeviceSDKError as exc:
            self._fire("credentials", 0.0, exc)
            raise StopUser() from exc
        if self.behaviour.answers_commands:
            self.device.subscribe(config.template.commands.topic, self._on_command)
        now = time.monotonic()
        self._next_publish = now + self.behaviour.start_offset
        if self.behaviour.answers_commands and config.fleet_api_token and config.fleet.http_url:
            self._api = PlatformClient(config.fleet.http_url, config.fleet_api_token)
            self._next_command = (
                now
                + config.template.commands.interval
                * random.Random(f"{config.template.seed}:cmd-offset:{index}").random()
            )
        self.device.keep_connected()

    def on_stop(self) -> None:
        if self.device is not None:
            self.device.close()
            self.device = None
        super().on_stop()

    # --- behaviour -----------------------------------------------------------------------------

    @task
    def next_due(self) -> None:
        """Do whatever is due: telemetry, and (for answering devices) a command round trip."""
        if self.device is None:
            raise StopUser()
        now = time.monotonic()
        if now >= self._next_publish:
            self._next_publish = max(self._next_publish + self.config.template.interval, now)
            self.publish_telemetry()
        if now >= self._next_command:
            self._next_command = max(
                self._next_command + self.config.template.commands.interval, now
            )
            self.command_round_trip()

    def publish_telemetry(self) -> None:
        assert self.device is not None
        if not self.device.online:
            return  # offline: the outage shows in connect/reconnect events, not per message
        template = self.config.template
        payload = self.behaviour.next_payload_bytes()
        started = time.perf_counter()
        try:
            seconds = self.device.publish(template.topic, payload, qos=template.qos)
        except DeviceSDKError as exc:
            self._fire("publish", time.perf_counter() - started, exc, len(payload))
            return
        self._fire("publish", seconds, None, len(payload))

    def command_round_trip(self) -> None:
        """POST a command to the device through the HTTP API; wait for its answer's PUBACK."""
        assert self.device is not None and self._api is not None
        device = self.device
        if not device.online or device.identity is None:
            return
        commands = self.config.template.commands
        self._command_seq += 1
        command_id = f"{self.device_index}-{self._command_seq}"
        reply: AsyncResult = AsyncResult()
        self._replies[command_id] = reply
        identity = device.identity
        body = json.dumps({"id": command_id, "method": "get", "params": {}})
        started = time.perf_counter()
        error: BaseException | None = None
        try:
            self._api.send_message(
                identity.product_key,
                identity.device_name,
                identity.topic(commands.topic),
                body,
                qos=1,
            )
            outcome = reply.get(timeout=commands.timeout)
            if isinstance(outcome, BaseException):
                error = outcome
        except PlatformAPIError as exc:
            error = exc
        except gevent.Timeout:
            error = TimeoutError(f"no answer to command {command_id} within {commands.timeout:g} s")
        finally:
            self._replies.pop(command_id, None)
        self._fire("command", time.perf_counter() - started, error, len(body))

    def _on_command(self, payload: bytes) -> None:
        """The device side: answer a command on the reply topic (QoS 1)."""
        assert self.device is not None
        try:
            command = json.loads(payload)
            command_id = str(command["id"])
        except (ValueError, KeyError, TypeError):
            log.warning('device %s got a command that is not {"id": ...}', self.device_index)
            return
        answer = json.dumps({"id": command_id, "code": 200, "data": self.behaviour.next_payload()})
        waiter = self._replies.get(command_id)
        try:
            self.device.publish(self.config.template.commands.reply_topic, answer.encode(), qos=1)
        except DeviceSDKError as exc:
            if waiter is not None and not waiter.ready():
                waiter.set(exc)
            return
        if waiter is not None and not waiter.ready():
            waiter.set(True)


__all__ = ["REQUEST_TYPE", "DeviceUser"]
