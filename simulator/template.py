"""Device behaviour templates: what a simulated device sends, how often, and whether it answers.

A template is JSON (see ``default_template.json``)::

    {
      "seed": 42,
      "telemetry": {"interval": 10, "topic": "user/update", "qos": 1},
      "fields": {
        "temperature": {"type": "sinusoid", "mean": 21, "amplitude": 4, "period": 600},
        "humidity":    {"type": "random", "min": 30, "max": 60, "decimals": 1},
        "counter":     {"type": "step", "start": 0, "step": 1},
        "state":       {"type": "choice", "values": ["ok", "warn"], "weights": [9, 1]},
        "firmware":    {"type": "constant", "value": "1.4.2"}
      },
      "commands": {"share": 0.5, "topic": "user/get", "replyTopic": "user/get_reply",
                   "interval": 30}
    }

Every generator is driven by a :class:`random.Random` seeded with the template's seed, the
device's index in the fleet and the sample number (never the wall clock), so the n-th message of
device k is the same in every run: a failure seen once can be replayed. (One generator per
message rather than one per device: a ``random.Random`` holds 2.5 KiB of state, which a Locust
worker holding 5,000 devices would keep 5,000 times.)
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Protocol

from simulator.errors import TemplateError

DEFAULT_TEMPLATE_RESOURCE = "default_template.json"
MAX_FIELDS = 64
MIN_INTERVAL = 0.05
MAX_INTERVAL = 86_400.0

JSONScalar = str | int | float | bool | None


class Generator(Protocol):
    """One payload field: ``value(n, rng)`` gives the field's value in sample ``n``."""

    def value(self, n: int, rng: random.Random) -> JSONScalar: ...


# --- generators --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Constant:
    constant: JSONScalar

    def value(self, n: int, rng: random.Random) -> JSONScalar:
        return self.constant


@dataclass(frozen=True)
class RandomRange:
    low: float
    high: float
    decimals: int | None = None
    integer: bool = False

    def value(self, n: int, rng: random.Random) -> JSONScalar:
        if self.integer:
            return rng.randint(int(self.low), int(self.high))
        raw = rng.uniform(self.low, self.high)
        return raw if self.decimals is None else round(raw, self.decimals)


@dataclass(frozen=True)
class Step:
    start: float
    step: float
    wrap_at: float | None = None

    def value(self, n: int, rng: random.Random) -> JSONScalar:
        raw = self.start + n * self.step
        if self.wrap_at is not None:
            span = self.wrap_at - self.start
            raw = self.start + math.fmod(raw - self.start, span)
        raw = round(raw, 9)  # 100 + 3 * -0.01 is 99.97, not 99.97000000000001
        return int(raw) if float(raw).is_integer() else raw


@dataclass(frozen=True)
class Sinusoid:
    mean: float
    amplitude: float
    period: float
    """In seconds of simulated time (sample number x telemetry interval)."""
    interval: float
    phase: float = 0.0
    decimals: int | None = 3

    def value(self, n: int, rng: random.Random) -> JSONScalar:
        angle = 2 * math.pi * (n * self.interval / self.period + self.phase)
        raw = self.mean + self.amplitude * math.sin(angle)
        return raw if self.decimals is None else round(raw, self.decimals)


@dataclass(frozen=True)
class Choice:
    values: tuple[JSONScalar, ...]
    weights: tuple[float, ...] | None = None

    def value(self, n: int, rng: random.Random) -> JSONScalar:
        if self.weights is None:
            return rng.choice(self.values)
        return rng.choices(self.values, weights=self.weights)[0]


# --- the template ------------------------------------------------------------------------------


@dataclass(frozen=True)
class CommandSpec:
    share: float = 0.0
    """Fraction of devices (0..1) that subscribe to commands and answer them."""
    topic: str = "user/get"
    reply_topic: str = "user/get_reply"
    interval: float = 30.0
    """Seconds between two commands the simulated cloud sends to one answering device."""
    timeout: float = 10.0


@dataclass(frozen=True)
class DeviceTemplate:
    seed: int = 0
    interval: float = 10.0
    topic: str = "user/update"
    qos: int = 1
    fields: Mapping[str, Generator] = field(default_factory=dict)
    commands: CommandSpec = field(default_factory=CommandSpec)

    def behaviour(self, device_index: int) -> DeviceBehaviour:
        """The repeatable behaviour of the fleet's device number ``device_index``."""
        return DeviceBehaviour(self, device_index)

    @classmethod
    def from_json(cls, data: Any, *, source: str = "template") -> DeviceTemplate:
        return _parse_template(data, source)

    @classmethod
    def load(cls, path: str | Path) -> DeviceTemplate:
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise TemplateError(f"cannot read template {path}: {exc.strerror or exc}") from exc
        return cls.loads(text, source=str(path))

    @classmethod
    def loads(cls, text: str, *, source: str = "template") -> DeviceTemplate:
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise TemplateError(f"{source}: not valid JSON ({exc})") from exc
        return cls.from_json(data, source=source)

    @classmethod
    def default(cls) -> DeviceTemplate:
        """The template that ships with the package (``simulator/default_template.json``)."""
        text = resources.files("simulator").joinpath(DEFAULT_TEMPLATE_RESOURCE).read_text("utf-8")
        return cls.loads(text, source=f"simulator/{DEFAULT_TEMPLATE_RESOURCE}")


class DeviceBehaviour:
    """One device's view of a template: its sample counter (its random draws follow from it)."""

    __slots__ = ("_n", "answers_commands", "device_index", "start_offset", "template")

    def __init__(self, template: DeviceTemplate, device_index: int) -> None:
        self.template = template
        self.device_index = device_index
        self._n = 0
        choose = random.Random(f"{template.seed}:commands:{device_index}").random()
        self.answers_commands = choose < template.commands.share
        #: Where in its interval the device starts, so a fleet does not publish in lockstep.
        self.start_offset = random.Random(f"{template.seed}:offset:{device_index}").uniform(
            0.0, template.interval
        )

    def next_payload(self) -> dict[str, JSONScalar]:
        """The next message's fields, with ``seq`` (the sample number) first."""
        n = self._n
        self._n += 1
        payload: dict[str, JSONScalar] = {"seq": n}
        rng = random.Random(f"{self.template.seed}:payload:{self.device_index}:{n}")
        for name, generator in self.template.fields.items():
            payload[name] = generator.value(n, rng)
        return payload

    def next_payload_bytes(self) -> bytes:
        return json.dumps(self.next_payload(), separators=(",", ":")).encode()


# --- parsing -----------------------------------------------------------------------------------


_TEMPLATE_KEYS = {"seed", "telemetry", "fields", "commands", "name", "description"}
_TELEMETRY_KEYS = {"interval", "topic", "qos"}
_COMMAND_KEYS = {"share", "topic", "replyTopic", "interval", "timeout"}
_FIELD_KEYS = {
    "constant": {"value"},
    "random": {"min", "max", "decimals", "integer"},
    "step": {"start", "step", "wrapAt"},
    "sinusoid": {"mean", "amplitude", "period", "phase", "decimals"},
    "choice": {"values", "weights"},
}


def _object(data: Any, where: str, allowed: set[str]) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise TemplateError(f"{where} must be a JSON object, not {type(data).__name__}")
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise TemplateError(
            f"{where}: unknown key(s) {', '.join(unknown)} (allowed: {', '.join(sorted(allowed))})"
        )
    return data


def _number(
    data: Mapping[str, Any],
    key: str,
    where: str,
    default: float | None = None,
    *,
    low: float | None = None,
    high: float | None = None,
) -> float:
    if key not in data:
        if default is None:
            raise TemplateError(f"{where}: '{key}' is required")
        return default
    value = data[key]
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise TemplateError(f"{where}.{key} must be a number, not {value!r}")
    if low is not None and value < low:
        raise TemplateError(f"{where}.{key} must be at least {low}, not {value}")
    if high is not None and value > high:
        raise TemplateError(f"{where}.{key} must be at most {high}, not {value}")
    return float(value)


def _topic(data: Mapping[str, Any], key: str, where: str, default: str) -> str:
    value = data.get(key, default)
    if not isinstance(value, str) or not value or "+" in value or "#" in value:
        raise TemplateError(
            f"{where}.{key} must be a non-empty topic without wildcards, not {value!r}"
        )
    return value


def _decimals(spec: Mapping[str, Any], where: str, default: int | None) -> int | None:
    if "decimals" not in spec:
        return default
    value = spec["decimals"]
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 12:
        raise TemplateError(f"{where}.decimals must be an integer 0..12 or null, not {value!r}")
    return value


def _scalar(value: Any, where: str) -> JSONScalar:
    if value is None or isinstance(value, str | int | float | bool):
        return value
    raise TemplateError(f"{where} must be a string, number, boolean or null, not {value!r}")


def _generator(name: str, spec: Any, interval: float, source: str) -> Generator:
    where = f"{source}: fields.{name}"
    if not isinstance(spec, dict):
        raise TemplateError(f"{where} must be a JSON object with a 'type'")
    kind = spec.get("type")
    if kind not in _FIELD_KEYS:
        raise TemplateError(
            f"{where}.type must be one of {', '.join(sorted(_FIELD_KEYS))}, not {kind!r}"
        )
    _object(spec, where, _FIELD_KEYS[kind] | {"type"})
    if kind == "constant":
        if "value" not in spec:
            raise TemplateError(f"{where}: 'value' is required")
        return Constant(_scalar(spec["value"], f"{where}.value"))
    if kind == "random":
        low, high = _number(spec, "min", where), _number(spec, "max", where)
        if low > high:
            raise TemplateError(f"{where}: min ({low:g}) is greater than max ({high:g})")
        integer = spec.get("integer", False)
        if not isinstance(integer, bool):
            raise TemplateError(f"{where}.integer must be true or false")
        if integer and not (low.is_integer() and high.is_integer()):
            raise TemplateError(f"{where}: integer ranges need whole-number min and max")
        return RandomRange(low, high, _decimals(spec, where, 2), integer)
    if kind == "step":
        start = _number(spec, "start", where, 0.0)
        step = _number(spec, "step", where, 1.0)
        wrap = spec.get("wrapAt")
        wrap_at = None if wrap is None else _number(spec, "wrapAt", where)
        if wrap_at is not None and (wrap_at - start) * (step or 1) <= 0:
            raise TemplateError(f"{where}.wrapAt must lie beyond start in the step's direction")
        return Step(start, step, wrap_at)
    if kind == "sinusoid":
        return Sinusoid(
            mean=_number(spec, "mean", where, 0.0),
            amplitude=_number(spec, "amplitude", where, 1.0),
            period=_number(spec, "period", where, low=MIN_INTERVAL),
            interval=interval,
            phase=_number(spec, "phase", where, 0.0),
            decimals=_decimals(spec, where, 3),
        )
    values = spec.get("values")
    if not isinstance(values, list) or not values:
        raise TemplateError(f"{where}.values must be a non-empty list")
    choices = tuple(_scalar(v, f"{where}.values[{i}]") for i, v in enumerate(values))
    weights = spec.get("weights")
    if weights is None:
        return Choice(choices)
    if not isinstance(weights, list) or len(weights) != len(choices):
        raise TemplateError(f"{where}.weights must be a list as long as values ({len(choices)})")
    parsed = tuple(
        _number({"w": w}, "w", f"{where}.weights[{i}]", low=0) for i, w in enumerate(weights)
    )
    if sum(parsed) <= 0:
        raise TemplateError(f"{where}.weights must not all be zero")
    return Choice(choices, parsed)


def _parse_template(data: Any, source: str) -> DeviceTemplate:
    top = _object(data, source, _TEMPLATE_KEYS)
    seed = top.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TemplateError(f"{source}: seed must be an integer, not {seed!r}")
    telemetry = _object(top.get("telemetry", {}), f"{source}: telemetry", _TELEMETRY_KEYS)
    where = f"{source}: telemetry"
    interval = _number(telemetry, "interval", where, 10.0, low=MIN_INTERVAL, high=MAX_INTERVAL)
    qos = telemetry.get("qos", 1)
    if qos not in (0, 1) or isinstance(qos, bool):
        raise TemplateError(f"{where}.qos must be 0 or 1 (the platform supports no QoS 2)")
    topic = _topic(telemetry, "topic", where, "user/update")
    raw_fields = top.get("fields", {})
    if not isinstance(raw_fields, dict):
        raise TemplateError(f"{source}: fields must be a JSON object of name -> generator")
    if len(raw_fields) > MAX_FIELDS:
        raise TemplateError(f"{source}: at most {MAX_FIELDS} fields, not {len(raw_fields)}")
    if "seq" in raw_fields:
        raise TemplateError(f"{source}: fields.seq is reserved for the sample number")
    fields = {name: _generator(name, spec, interval, source) for name, spec in raw_fields.items()}
    cmd = _object(top.get("commands", {}), f"{source}: commands", _COMMAND_KEYS)
    where = f"{source}: commands"
    commands = CommandSpec(
        share=_number(cmd, "share", where, 0.0, low=0.0, high=1.0),
        topic=_topic(cmd, "topic", where, "user/get"),
        reply_topic=_topic(cmd, "replyTopic", where, "user/get_reply"),
        interval=_number(cmd, "interval", where, 30.0, low=MIN_INTERVAL, high=MAX_INTERVAL),
        timeout=_number(cmd, "timeout", where, 10.0, low=0.1, high=600.0),
    )
    return DeviceTemplate(seed, interval, topic, int(qos), fields, commands)


def field_names(template: DeviceTemplate) -> Sequence[str]:
    return ["seq", *template.fields]
