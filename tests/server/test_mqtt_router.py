"""Topic rules, the device topic space and the subscription trie."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from server_stub.mqtt.errors import InvalidTopicError
from server_stub.mqtt.router import Router
from server_stub.mqtt.topics import (
    device_may_use,
    device_prefixes,
    validate_topic_filter,
    validate_topic_name,
)


@pytest.mark.parametrize(
    ("topic_filter", "topic", "matches"),
    [
        ("a/b", "a/b", True),
        ("a/b", "a/c", False),
        ("a/+", "a/b", True),
        ("a/+", "a/b/c", False),
        ("a/#", "a", True),
        ("a/#", "a/b/c", True),
        ("#", "a/b", True),
        ("+/+", "/x", True),
        ("/pk/dn/#", "/pk/dn/user/up", True),
        ("/pk/+/user/up", "/pk/dn/user/up", True),
        ("#", "$SYS/x", False),
        ("+/x", "$SYS/x", False),
        ("$SYS/#", "$SYS/x", True),
    ],
)
def test_filter_matching(topic_filter: str, topic: str, matches: bool) -> None:
    router: Router[str] = Router()
    router.subscribe("s", topic_filter, 1)
    assert (router.match(topic) == {"s": 1}) is matches


def test_highest_qos_wins_and_unsubscribe_prunes() -> None:
    router: Router[str] = Router()
    router.subscribe("s", "a/#", 0)
    router.subscribe("s", "a/b", 1)
    router.subscribe("t", "a/+", 0)
    assert router.match("a/b") == {"s": 1, "t": 0}
    assert router.unsubscribe("s", "a/b")
    assert not router.unsubscribe("s", "a/b")
    assert router.match("a/b") == {"s": 0, "t": 0}
    router.unsubscribe("s", "a/#")
    router.unsubscribe("t", "a/+")
    assert len(router) == 0
    assert router.match("a/b") == {}


def _naive_match(topic_filter: str, topic: str) -> bool:
    f, t = topic_filter.split("/"), topic.split("/")
    if topic.startswith("$") and f[0] in ("+", "#"):
        return False
    for i, level in enumerate(f):
        if level == "#":
            return True
        if i >= len(t) or (level != "+" and level != t[i]):
            return False
    return len(f) == len(t)


_lvl = st.sampled_from(["a", "b", "", "$x"])


@given(
    st.lists(
        st.lists(st.one_of(_lvl, st.just("+")), min_size=1, max_size=3)
        .flatmap(lambda ls: st.sampled_from([ls, [*ls, "#"]]))
        .map("/".join),
        min_size=1,
        max_size=6,
    ),
    st.lists(_lvl, min_size=1, max_size=4).map("/".join),
)
def test_trie_agrees_with_a_naive_matcher(filters: list[str], topic: str) -> None:
    router: Router[int] = Router()
    for i, f in enumerate(filters):
        router.subscribe(i, f, 0)
    expected = {i for i, f in enumerate(filters) if _naive_match(f, topic)}
    assert set(router.match(topic)) == expected


@pytest.mark.parametrize("bad", ["", "a/+", "#", "a\x00"])
def test_topic_name_rules(bad: str) -> None:
    with pytest.raises(InvalidTopicError):
        validate_topic_name(bad)


@pytest.mark.parametrize("bad", ["", "a/#/b", "a#", "a/b+", "+a"])
def test_topic_filter_rules(bad: str) -> None:
    with pytest.raises(InvalidTopicError):
        validate_topic_filter(bad)


def test_device_topic_space_is_a_literal_prefix() -> None:
    prefixes = device_prefixes("pk1", "dev01")
    assert device_may_use(prefixes, "/pk1/dev01/user/up")
    assert device_may_use(prefixes, "/sys/pk1/dev01/thing/event")
    assert device_may_use(prefixes, "/pk1/dev01/#")
    assert not device_may_use(prefixes, "/pk1/dev01")
    assert not device_may_use(prefixes, "/pk1/dev02/user/up")
    assert not device_may_use(prefixes, "/+/dev01/user/up")
    assert not device_may_use(prefixes, "/pk1/+/user/up")
    assert not device_may_use(prefixes, "#")
    assert not device_may_use(prefixes, "/pk1/dev01x/user")
