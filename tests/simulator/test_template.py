"""Device templates: generators, repeatability, and a clear error for every broken rule."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from simulator.errors import TemplateError
from simulator.template import DeviceTemplate


def _template(**overrides: object) -> DeviceTemplate:
    data: dict[str, object] = {
        "seed": 7,
        "telemetry": {"interval": 5, "topic": "user/update", "qos": 1},
        "fields": {
            "c": {"type": "constant", "value": "v1"},
            "r": {"type": "random", "min": 10, "max": 20, "decimals": 1},
            "i": {"type": "random", "min": 1, "max": 3, "integer": True},
            "s": {"type": "step", "start": 100, "step": -0.5},
            "w": {"type": "step", "start": 0, "step": 1, "wrapAt": 3},
            "sin": {"type": "sinusoid", "mean": 20, "amplitude": 5, "period": 20},
            "ch": {"type": "choice", "values": ["a", "b"], "weights": [1, 0]},
        },
        "commands": {"share": 0.5},
    }
    data.update(overrides)
    return DeviceTemplate.from_json(data)


def test_default_template_ships_and_loads() -> None:
    template = DeviceTemplate.default()
    assert template.interval == 10
    assert template.qos == 1
    assert {"temperature", "humidity", "state"} <= set(template.fields)
    payload = template.behaviour(0).next_payload()
    assert payload["seq"] == 0


def test_each_generator_kind_follows_its_definition() -> None:
    behaviour = _template().behaviour(0)
    samples = [behaviour.next_payload() for _ in range(8)]
    assert [p["seq"] for p in samples] == list(range(8))
    assert all(p["c"] == "v1" for p in samples)
    randoms = [float(p["r"]) for p in samples]  # type: ignore[arg-type]
    assert all(10 <= r <= 20 and round(r, 1) == r for r in randoms)
    assert all(p["i"] in (1, 2, 3) for p in samples)
    assert [p["s"] for p in samples[:3]] == [100, 99.5, 99]
    assert [p["w"] for p in samples[:7]] == [0, 1, 2, 0, 1, 2, 0]
    # interval 5 s, period 20 s: a quarter period per sample.
    assert [p["sin"] for p in samples[:4]] == [20, 25, 20, 15]
    assert all(p["ch"] == "a" for p in samples)  # weight 0 never chosen


def test_same_seed_and_device_repeat_exactly_and_devices_differ() -> None:
    run_a, run_b = _template().behaviour(3), _template().behaviour(3)
    stream = [run_a.next_payload_bytes() for _ in range(20)]
    assert stream == [run_b.next_payload_bytes() for _ in range(20)]
    other = _template().behaviour(4)
    assert stream != [other.next_payload_bytes() for _ in range(20)]
    assert run_a.start_offset == _template().behaviour(3).start_offset
    assert 0 <= other.start_offset <= 5


def test_another_seed_changes_the_random_fields() -> None:
    a = _template().behaviour(1)
    b = _template(seed=8).behaviour(1)
    assert [a.next_payload()["r"] for _ in range(10)] != [b.next_payload()["r"] for _ in range(10)]


def test_command_share_selects_about_that_fraction_repeatably() -> None:
    template = _template(commands={"share": 0.3})
    chosen = [template.behaviour(i).answers_commands for i in range(2000)]
    assert 0.25 < sum(chosen) / len(chosen) < 0.35
    assert chosen == [template.behaviour(i).answers_commands for i in range(2000)]
    assert not any(
        _template(commands={"share": 0}).behaviour(i).answers_commands for i in range(100)
    )
    assert all(_template(commands={"share": 1}).behaviour(i).answers_commands for i in range(100))


@given(st.integers(min_value=0, max_value=10**6), st.integers(min_value=0, max_value=50))
def test_random_range_stays_inside_its_bounds(device: int, skip: int) -> None:
    behaviour = _template().behaviour(device)
    for _ in range(skip):
        behaviour.next_payload()
    payload = behaviour.next_payload()
    assert 10 <= payload["r"] <= 20  # type: ignore[operator]
    assert math.isfinite(payload["sin"])  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"telemetry": {"interval": 0}}, "interval must be at least"),
        ({"telemetry": {"qos": 2}}, "qos must be 0 or 1"),
        ({"telemetry": {"topic": "user/#"}}, "without wildcards"),
        ({"telemetry": {"speed": 1}}, "unknown key(s) speed"),
        ({"fields": {"x": {"type": "gauss"}}}, "type must be one of"),
        ({"fields": {"x": {"type": "random", "min": 5, "max": 1}}}, "min (5) is greater than max"),
        ({"fields": {"x": {"type": "random", "min": 0}}}, "'max' is required"),
        ({"fields": {"x": {"type": "constant"}}}, "'value' is required"),
        ({"fields": {"x": {"type": "constant", "value": [1]}}}, "must be a string, number"),
        ({"fields": {"x": {"type": "choice", "values": []}}}, "non-empty list"),
        (
            {"fields": {"x": {"type": "choice", "values": [1, 2], "weights": [1]}}},
            "as long as values",
        ),
        ({"fields": {"x": {"type": "choice", "values": [1], "weights": [0]}}}, "all be zero"),
        ({"fields": {"x": {"type": "sinusoid", "mean": 1}}}, "'period' is required"),
        (
            {"fields": {"x": {"type": "step", "start": 5, "step": 1, "wrapAt": 2}}},
            "wrapAt must lie beyond start",
        ),
        ({"fields": {"x": {"type": "random", "min": "1", "max": 2}}}, "must be a number"),
        ({"fields": {"seq": {"type": "constant", "value": 1}}}, "reserved"),
        ({"commands": {"share": 1.5}}, "share must be at most 1"),
        ({"seed": "abc"}, "seed must be an integer"),
        ({"extra": 1}, "unknown key(s) extra"),
    ],
)
def test_every_broken_rule_gets_a_message_naming_the_field(
    change: dict[str, object], message: str
) -> None:
    with pytest.raises(TemplateError) as caught:
        _template(**change)
    assert message in str(caught.value)


def test_unreadable_and_malformed_files_are_reported(tmp_path: object) -> None:
    from pathlib import Path

    base = Path(str(tmp_path))
    with pytest.raises(TemplateError, match="cannot read template"):
        DeviceTemplate.load(base / "missing.json")
    bad = base / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(TemplateError, match="not valid JSON"):
        DeviceTemplate.load(bad)
    good = base / "good.json"
    good.write_text(json.dumps({"telemetry": {"interval": 2}}))
    assert DeviceTemplate.load(good).interval == 2
