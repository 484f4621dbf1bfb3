"""The paho-mqtt client the SDK drives, set up once: MQTT 3.1.1, clean session, the SDK's own
TLS context, no paho queue limit, socket I/O by a network driver, and paho's log caught.

Why catch paho's log: paho logs socket errors (with the exception object) and returns a bare
code. :class:`LastSocketError` keeps the object, so a TLS alert read after a TLS 1.3 handshake
can be mapped to its real meaning (:mod:`device_sdk.refusals`). paho's records are passed on to
the ``device_sdk.paho`` logger at DEBUG level at most: the SDK reports failures itself, with a
message that says what to do.
"""

from __future__ import annotations

import logging
import ssl

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from device_sdk.network import NetworkDriver


class LastSocketError(logging.Handler):
    """Keeps the last exception paho logged for one client."""

    def __init__(self, forward_to: logging.Logger) -> None:
        super().__init__(logging.DEBUG)
        self.error: BaseException | None = None
        self._forward_to = forward_to

    def emit(self, record: logging.LogRecord) -> None:
        args = record.args if isinstance(record.args, tuple) else ()
        for arg in args:
            if isinstance(arg, BaseException):
                self.error = arg
        if self._forward_to.isEnabledFor(logging.DEBUG):
            self._forward_to.debug("%s", record.getMessage())


def new_paho_client(
    client_id: str, context: ssl.SSLContext, *, connect_timeout: float, network: NetworkDriver
) -> tuple[mqtt.Client, LastSocketError]:
    """A paho client for one device, and the handler holding its last socket error.

    The caller installs its callbacks (``on_connect``, ...). The driver installs paho's
    external-loop socket callbacks: only its thread reads and writes the TLS socket (paho then
    never writes from the application's thread either).
    """
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=True, protocol=mqtt.MQTTv311
    )
    client.tls_set_context(context)
    client.connect_timeout = connect_timeout
    client.max_queued_messages_set(0)
    forward_to = logging.getLogger("device_sdk.paho")
    socket_error = LastSocketError(forward_to)
    # A private logger (not registered with logging): it exists to catch paho's socket errors
    # for this client only; DEBUG records only when someone listens for them.
    paho_log = logging.Logger("device_sdk.paho.client")
    paho_log.propagate = False
    paho_log.addHandler(socket_error)
    paho_log.setLevel(logging.DEBUG if forward_to.isEnabledFor(logging.DEBUG) else logging.ERROR)
    client.enable_logger(paho_log)
    network.attach(client)
    return client, socket_error
