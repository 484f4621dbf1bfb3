"""Errors of the MQTT device endpoint.

One root, :class:`MqttError`, under the server's root :class:`~server_stub.errors.ServerStubError`
(so the CLI and the process report them like every other server error). A malformed or
forbidden packet raises :class:`MqttProtocolError`; the endpoint then closes that one connection
and logs the message, which names what was wrong.
"""

from __future__ import annotations

from server_stub.errors import ServerStubError


class MqttError(ServerStubError):
    """Root of every error the MQTT endpoint raises."""


class MqttProtocolError(MqttError):
    """Bytes that break MQTT 3.1.1: the connection that sent them is closed."""


class UnacceptableProtocolLevelError(MqttProtocolError):
    """A CONNECT for another MQTT version: answered with CONNACK 1, then closed."""

    def __init__(self, message: str, *, level: int) -> None:
        super().__init__(message)
        self.level = level


class InvalidTopicError(MqttProtocolError, ValueError):
    """A topic name or filter that MQTT forbids (empty, misplaced wildcard, U+0000)."""

    def __init__(self, message: str, *, topic: str) -> None:
        super().__init__(message)
        self.topic = topic


class InvalidMessageError(MqttError, ValueError):
    """A cloud-to-device message the endpoint cannot send (QoS, size)."""


class MqttServiceError(MqttError):
    """The endpoint cannot start (port in use, unusable server certificate)."""
