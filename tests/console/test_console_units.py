"""The console's bounded parts, fed events: the per-second ring, last connections, listener
bounds, and the event stream that ends (and gives its slot back) when the client disconnects."""

from __future__ import annotations

import asyncio
from collections.abc import MutableMapping
from typing import Any

from server_stub.api.console_routes import EventStreamResponse, StreamSlots
from server_stub.mqtt.activity import MAX_LISTENERS_PER_DEVICE, Activity
from server_stub.ports import AuthenticatedDevice, DeviceMessage


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def device(account: int, name: str = "dev-0001") -> AuthenticatedDevice:
    return AuthenticatedDevice(account, "PK1", name, "CA01", "0A")


def test_connections_are_counted_per_second_and_per_account() -> None:
    clock = Clock()
    activity = Activity(window=10, clock=clock)
    activity.connected(device(1), 2e9)
    activity.connected(device(1, "dev-0002"), 2e9)
    activity.connected(device(2), 2e9)
    clock.now += 1
    activity.connected(device(1), 2e9)
    samples = activity.timeline(1, 3)
    assert [s.connections for s in samples] == [0, 2, 1]
    assert [s.connections for s in activity.timeline(2, 2)] == [1, 0]
    assert [s.connections for s in activity.timeline(3, 2)] == [0, 0]  # unknown account


def test_the_ring_forgets_what_is_older_than_its_window() -> None:
    clock = Clock()
    activity = Activity(window=5, clock=clock)
    activity.connected(device(1), 2e9)
    clock.now += 5  # the same slot, five seconds later
    activity.connected(device(1), 2e9)
    assert [s.connections for s in activity.timeline(1, 5)] == [0, 0, 0, 0, 1]
    assert len(activity.timeline(1, 500)) == 5  # never more than the window


def test_online_samples_carry_forward_between_samples() -> None:
    clock = Clock()
    activity = Activity(window=10, clock=clock)
    activity.sample_online({1: 3})
    clock.now += 3
    activity.sample_online({1: 1, 2: 4})
    assert [s.online for s in activity.timeline(1, 5)] == [0, 3, 3, 3, 1]
    assert [s.online for s in activity.timeline(2, 2)] == [0, 4]
    clock.now += 1
    activity.sample_online({})  # everyone left
    assert activity.timeline(1, 1)[0].online == 0


def test_last_connections_are_bounded_oldest_forgotten_first() -> None:
    clock = Clock()
    activity = Activity(max_devices=2, clock=clock)
    for name in ("dev-0001", "dev-0002", "dev-0003"):
        clock.now += 1
        activity.connected(device(1, name), 2e9)
    assert activity.last_connection("PK1", "dev-0001") is None
    last = activity.last_connection("PK1", "dev-0003")
    assert last is not None and (last.at, last.cert_not_after) == (clock.now, 2e9)


def test_listeners_are_bounded_and_removed() -> None:
    activity = Activity()
    got: list[DeviceMessage] = []
    stops = [
        activity.listen(("PK1", "dev-0001"), got.append) for _ in range(MAX_LISTENERS_PER_DEVICE)
    ]
    assert activity.listen(("PK1", "dev-0001"), got.append) is None
    message = DeviceMessage("/PK1/dev-0001/user/update", b"x", 0, 1.0)
    activity.published(("PK1", "dev-0001"), message)
    activity.published(("PK1", "dev-0002"), message)  # another device: nobody listens
    assert got == [message] * MAX_LISTENERS_PER_DEVICE
    for stop in stops:
        assert stop is not None
        stop()
    assert activity.listener_count() == 0


def test_a_failing_listener_does_not_stop_the_others() -> None:
    activity = Activity()
    got: list[DeviceMessage] = []

    def broken(_: DeviceMessage) -> None:
        raise RuntimeError("listener bug")

    activity.listen(("PK1", "dev-0001"), broken)
    activity.listen(("PK1", "dev-0001"), got.append)
    activity.published(("PK1", "dev-0001"), DeviceMessage("/t", b"", 0, 1.0))
    assert len(got) == 1


def test_stream_slots_are_bounded_per_account() -> None:
    slots = StreamSlots(limit=2)
    assert slots.take(1) and slots.take(1) and not slots.take(1)
    assert slots.take(2)  # another account has its own
    slots.give_back(1)
    assert slots.take(1)


def _run_stream(
    events: list[dict[str, Any]], queued: list[DeviceMessage], dropped: int = 0
) -> tuple[list[dict[str, Any]], list[str]]:
    """Run the stream until the client's events are used up (the last is a disconnect)."""
    sent: list[dict[str, Any]] = []
    closed: list[str] = []

    async def main() -> None:
        queue: asyncio.Queue[DeviceMessage] = asyncio.Queue()
        for msg in queued:
            queue.put_nowait(msg)
        incoming: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        ready = asyncio.Event()

        async def receive() -> dict[str, Any]:
            await ready.wait()  # the client disconnects once it has read what was queued
            return await incoming.get()

        async def send(message: MutableMapping[str, Any]) -> None:
            sent.append(dict(message))
            if sum(1 for m in sent if b"event: message" in m.get("body", b"")) >= len(queued):
                ready.set()

        for event in events:
            incoming.put_nowait(event)
        response = EventStreamResponse(queue, lambda: dropped, lambda: closed.append("closed"))
        await asyncio.wait_for(response({"type": "http"}, receive, send), 10)

    asyncio.run(main())
    return sent, closed


def test_stream_sends_ready_then_messages_and_ends_on_disconnect() -> None:
    msg = DeviceMessage("/PK1/dev-0001/user/update", b"<b>hi</b>", 1, 1_700_000_000.0)
    sent, closed = _run_stream([{"type": "http.disconnect"}], [msg])
    assert closed == ["closed"]  # the listener and the slot are given back
    assert sent[0]["type"] == "http.response.start"
    assert (b"content-type", b"text/event-stream; charset=utf-8") in sent[0]["headers"]
    bodies = [m.get("body", b"") for m in sent[1:]]
    assert bodies[0] == b"event: ready\ndata: {}\n\n"
    assert bodies[1] == (
        b'event: message\ndata: {"topic":"/PK1/dev-0001/user/update","payload":"<b>hi</b>",'
        b'"payloadEncoding":"utf-8","qos":1,"receivedAt":"2023-11-14T22:13:20Z"}\n\n'
    )
    assert sent[-1] == {"type": "http.response.body", "body": b"", "more_body": False}


def test_stream_reports_dropped_messages_and_base64_for_binary() -> None:
    msg = DeviceMessage("/PK1/dev-0001/raw", b"\xff\x00", 0, 1_700_000_000.0)
    sent, closed = _run_stream([{"type": "http.disconnect"}], [msg], dropped=4)
    body = sent[2]["body"]
    assert body.startswith(b'event: dropped\ndata: {"dropped":4}\n\n')
    assert b'"payload":"/wA=","payloadEncoding":"base64"' in body
    assert closed == ["closed"]


def test_stream_closes_when_the_client_is_gone_while_writing() -> None:
    closed: list[str] = []

    async def main() -> None:
        async def receive() -> dict[str, Any]:
            await asyncio.Event().wait()  # never says anything
            raise AssertionError

        async def send(message: MutableMapping[str, Any]) -> None:
            if message["type"] == "http.response.body":
                raise OSError("connection reset")

        response = EventStreamResponse(asyncio.Queue(), lambda: 0, lambda: closed.append("x"))
        await asyncio.wait_for(response({"type": "http"}, receive, send), 10)

    asyncio.run(main())
    assert closed == ["x"]
