"""The device's subscriptions and the messages it receives on them.

A subscription is kept as the application gave it (maybe relative: ``user/get``) and resolved
against the identity each time the device comes online, so it is renewed after every
reconnection and moves to the new topics when the platform reports another identity.

Not locked by itself: the client calls it under its own lock, and calls the application's
callbacks outside that lock (:func:`deliver`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import paho.mqtt.client as mqtt

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Message:
    """A message the device received on one of its subscriptions."""

    topic: str
    payload: bytes
    qos: int
    retain: bool


MessageCallback = Callable[[Message], None]


@dataclass
class Subscription:
    topic: str
    """As the application gave it (relative or absolute, may hold ``+``/``#``)."""
    qos: int
    callback: MessageCallback
    resolved: str | None = None
    """The absolute filter subscribed on the current connection (None: not subscribed)."""


class Subscriptions:
    """Every subscription of one client, by the topic the application gave."""

    def __init__(self) -> None:
        self._subs: dict[str, Subscription] = {}

    def add(self, topic: str, qos: int, callback: MessageCallback) -> Subscription:
        sub = Subscription(topic, qos, callback)
        self._subs[topic] = sub
        return sub

    def remove(self, topic: str) -> str | None:
        """Forget ``topic``; the filter to unsubscribe from, if it was subscribed."""
        sub = self._subs.pop(topic, None)
        return sub.resolved if sub is not None else None

    def renew(self, resolve: Callable[[str], str | None]) -> list[tuple[str, int]]:
        """Resolve every subscription for the current connection; the (filter, QoS) pairs to
        subscribe. ``resolve`` returns None for a topic that cannot be resolved yet (relative,
        identity unknown): it is renewed when the identity arrives."""
        renewed = []
        for sub in self._subs.values():
            sub.resolved = resolve(sub.topic)
            if sub.resolved is not None:
                renewed.append((sub.resolved, sub.qos))
        return renewed

    def release(self) -> list[str]:
        """The identity changed: the filters to unsubscribe from (renewed later)."""
        released = [sub.resolved for sub in self._subs.values() if sub.resolved]
        for sub in self._subs.values():
            sub.resolved = None
        return released

    def matching(self, topic: str) -> list[Subscription]:
        return [
            sub
            for sub in self._subs.values()
            if sub.resolved and mqtt.topic_matches_sub(sub.resolved, topic)
        ]


def deliver(targets: list[Subscription], message: Message) -> None:
    """Call each target's callback; one failing callback does not stop the others."""
    for sub in targets:
        try:
            sub.callback(message)
        except Exception:
            log.exception("message callback for %r failed", sub.topic)
