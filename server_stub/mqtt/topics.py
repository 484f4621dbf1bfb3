"""MQTT 3.1.1 topic rules (section 4.7) and the platform's per-device topic space. No I/O.

A topic *name* (in PUBLISH) is 1..65535 bytes of UTF-8 without ``+``, ``#`` or U+0000. A topic
*filter* (in SUBSCRIBE) may hold ``+`` as a whole level and ``#`` as the whole last level. A device
may use only topics under ``/{ProductKey}/{DeviceName}/`` and ``/sys/{ProductKey}/{DeviceName}/``:
the check compares literal prefixes, so a wildcard can never reach into another device's space.
"""

from __future__ import annotations

from device_sdk.platform import device_topic_prefixes, topic_within_prefixes
from server_stub.mqtt.errors import InvalidTopicError

MAX_TOPIC_BYTES = 65535


def _check_common(topic: str, what: str) -> None:
    if not topic:
        raise InvalidTopicError(f"{what} is empty", topic=topic)
    if "\x00" in topic:
        raise InvalidTopicError(f"{what} {topic!r} contains U+0000", topic=topic)
    if (
        len(topic) > MAX_TOPIC_BYTES // 4
        and len(topic.encode("utf-8", "surrogatepass")) > MAX_TOPIC_BYTES
    ):
        raise InvalidTopicError(f"{what} is longer than {MAX_TOPIC_BYTES} bytes", topic=topic)


def validate_topic_name(topic: str) -> str:
    """A topic a message is published to: no wildcards."""
    _check_common(topic, "topic name")
    if "+" in topic or "#" in topic:
        raise InvalidTopicError(
            f"topic name {topic!r} contains a wildcard (+ or #); wildcards belong in filters",
            topic=topic,
        )
    return topic


def validate_topic_filter(topic_filter: str) -> str:
    """A subscription filter: ``+`` fills a whole level, ``#`` only as the whole last level."""
    _check_common(topic_filter, "topic filter")
    if "+" not in topic_filter and "#" not in topic_filter:
        return topic_filter
    levels = topic_filter.split("/")
    last = len(levels) - 1
    for i, level in enumerate(levels):
        if "#" in level and (level != "#" or i != last):
            raise InvalidTopicError(
                f"topic filter {topic_filter!r}: '#' must be the whole last level",
                topic=topic_filter,
            )
        if "+" in level and level != "+":
            raise InvalidTopicError(
                f"topic filter {topic_filter!r}: '+' must fill a whole level", topic=topic_filter
            )
    return topic_filter


def device_prefixes(product_key: str, device_name: str) -> tuple[str, str]:
    """The two topic spaces a device owns (the rule lives in :mod:`device_sdk.platform`)."""
    return device_topic_prefixes(product_key, device_name)


def device_may_use(prefixes: tuple[str, str], topic: str) -> bool:
    """Whether a topic name or filter lies inside the device's own spaces (literal prefix)."""
    return topic_within_prefixes(prefixes, topic)
