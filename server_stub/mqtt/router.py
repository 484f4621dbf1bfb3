"""Subscriptions with ``+``/``#`` filters in a topic trie. No I/O.

A trie keeps matching cost proportional to the topic's depth, not to the number of sessions,
so 10,000 connected devices do not make each PUBLISH slower. Subscribers are any hashable
objects (the endpoint uses its connection objects).
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Generic, TypeVar

S = TypeVar("S", bound=Hashable)


class _Node(Generic[S]):
    __slots__ = ("children", "subscribers")

    def __init__(self) -> None:
        self.children: dict[str, _Node[S]] = {}
        self.subscribers: dict[S, int] = {}


class Router(Generic[S]):
    """Topic filter -> subscribers with their granted QoS."""

    def __init__(self) -> None:
        self._root: _Node[S] = _Node()
        self._count = 0

    def __len__(self) -> int:
        """Number of (subscriber, filter) pairs."""
        return self._count

    def subscribe(self, subscriber: S, topic_filter: str, qos: int) -> None:
        node = self._root
        for level in topic_filter.split("/"):
            child = node.children.get(level)
            if child is None:
                child = node.children[level] = _Node()
            node = child
        if subscriber not in node.subscribers:
            self._count += 1
        node.subscribers[subscriber] = qos

    def unsubscribe(self, subscriber: S, topic_filter: str) -> bool:
        """Remove one subscription; prune empty branches. False when there was none."""
        path: list[tuple[_Node[S], str]] = []
        node = self._root
        for level in topic_filter.split("/"):
            child = node.children.get(level)
            if child is None:
                return False
            path.append((node, level))
            node = child
        if node.subscribers.pop(subscriber, None) is None:
            return False
        self._count -= 1
        for parent, level in reversed(path):
            child = parent.children[level]
            if child.subscribers or child.children:
                break
            del parent.children[level]
        return True

    def match(self, topic: str) -> dict[S, int]:
        """Every subscriber whose filter matches ``topic``, with its highest granted QoS.

        Iterative (an explicit stack), because the depth is the client's to choose: a recursive
        walk raised ``RecursionError`` on a topic matching a 3,000-level filter. Each trie node
        sits at one depth, so one match visits every node at most once.
        """
        found: dict[S, int] = {}
        levels = topic.split("/")
        depth = len(levels)
        # Section 4.7.2: wildcards at the first level do not match topics starting with '$'.
        dollar = topic.startswith("$")
        stack: list[tuple[_Node[S], int]] = [(self._root, 0)]
        while stack:
            node, i = stack.pop()
            wild_ok = not (dollar and i == 0)
            children = node.children
            if wild_ok:
                hash_node = children.get("#")
                if hash_node is not None:
                    _merge(found, hash_node.subscribers)
            if i == depth:
                _merge(found, node.subscribers)
                continue
            exact = children.get(levels[i])
            if exact is not None:
                stack.append((exact, i + 1))
            if wild_ok:
                plus = children.get("+")
                if plus is not None:
                    stack.append((plus, i + 1))
        return found


def _merge(found: dict[S, int], subscribers: dict[S, int]) -> None:
    for sub, qos in subscribers.items():
        if found.get(sub, -1) < qos:
            found[sub] = qos
