"""The SDK's default numbers, in one place: the client, the CLI, the backoff policy and the
fleet simulator all read them from here.

Platform facts (the keep-alive range, the MQTT port) live in :mod:`device_sdk.platform`; this
module names them again only so that a caller finds every default in one import.
"""

from __future__ import annotations

from device_sdk.platform import DEFAULT_MQTT_PORT, KEEPALIVE_DEFAULT

#: First reconnect delay ceiling (s): full jitter draws from [0, base * 2**n].
DEFAULT_RECONNECT_BASE = 1.0
#: Largest reconnect delay (s); also the wait after a refusal that retrying cannot fix.
DEFAULT_RECONNECT_CAP = 120.0
#: A connection must stay up this long (s) before the backoff starts again from ``base``.
DEFAULT_STABLE_PERIOD = 30.0
#: Seconds for one attempt's TCP connect + TLS handshake, and again for CONNACK.
DEFAULT_ATTEMPT_TIMEOUT = 10.0
#: Seconds after CONNACK to wait for the platform's identity message.
DEFAULT_IDENTITY_TIMEOUT = 10.0
#: QoS 1 publishes kept while offline.
DEFAULT_OFFLINE_QUEUE_SIZE = 1000
#: MQTT keep-alive (s): the platform's recommended value.
DEFAULT_KEEPALIVE = KEEPALIVE_DEFAULT

__all__ = [
    "DEFAULT_ATTEMPT_TIMEOUT",
    "DEFAULT_IDENTITY_TIMEOUT",
    "DEFAULT_KEEPALIVE",
    "DEFAULT_MQTT_PORT",
    "DEFAULT_OFFLINE_QUEUE_SIZE",
    "DEFAULT_RECONNECT_BASE",
    "DEFAULT_RECONNECT_CAP",
    "DEFAULT_STABLE_PERIOD",
]
