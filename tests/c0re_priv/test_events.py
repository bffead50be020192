"""The event stream: subscribing, replaying since a seq, resync past the buffer, kinds checked;
a subscriber keeps pace with a bursty publisher (what queued up while one write went out goes
out in the next write, so a burst far larger than one frame per wake-up is not a drop)."""

from __future__ import annotations

import pytest
import trio
import trio.lowlevel

from c0re_priv.events import SUBSCRIBER_BUFFER
from c0re_priv.hive import Hive
from protocol import messages as m
from protocol.client import HiveClient, HiveError


async def test_subscribe_streams_events_and_replays_since_seq(admin, hive):
    async with admin.stream(m.Subscribe(kinds=["status_changed"])) as frames:
        first = await anext(frames)
        assert isinstance(first, m.Subscribed)
        start = first.seq
        await hive.registry.set_status("alice", "reading")
        frame = await anext(frames)
        assert isinstance(frame, m.EventFrame)
        assert isinstance(frame.event, m.StatusChanged)
        assert frame.event.text == "reading" and frame.event.seq > start
    await hive.registry.set_status("bob", "writing")
    async with admin.stream(m.Subscribe(kinds=["status_changed"], since_seq=start)) as frames:
        assert isinstance(await anext(frames), m.Subscribed)
        replayed = [await anext(frames), await anext(frames)]
        assert [f.event.name for f in replayed] == ["alice", "bob"]  # type: ignore[attr-defined]


async def test_subscribe_from_before_the_buffer_gets_resync(admin):
    async with admin.stream(m.Subscribe(since_seq=1)) as frames:
        assert isinstance(await anext(frames), m.Resync)


async def test_subscribe_rejects_unknown_kinds(admin):
    with pytest.raises(HiveError) as err:
        async with admin.stream(m.Subscribe(kinds=["nope"])) as frames:
            await anext(frames)
    assert err.value.code == "invalid"


BURST = SUBSCRIBER_BUFFER * 3 // 4
BURSTS = 12


BUSY_TASKS = 300
"""Other work on the daemon's loop (as many connections' calls would be): every round of the
scheduler runs each of them once, so a subscriber that sent one frame per round would fall
behind the bursts by hundreds of events each time and be dropped."""


async def test_a_burst_of_events_reaches_a_busy_daemons_subscriber_whole_and_in_order(
    hive: Hive,
) -> None:
    async def busy() -> None:
        while True:
            sum(range(300))
            await trio.lowlevel.checkpoint()

    got: list[str] = []
    async with trio.open_nursery() as nursery:
        async with (
            HiveClient.connect(str(hive.paths.admin_sock), client="test-pace") as client,
            client.stream(m.Subscribe(kinds=["note"])) as frames,
        ):
            first = await frames.__anext__()
            assert isinstance(first, m.Subscribed)
            for _ in range(BUSY_TASKS):
                nursery.start_soon(busy)

            async def read() -> None:
                with trio.fail_after(60):
                    while len(got) < BURST * BURSTS:
                        # this client shares the busy loop: it takes what has arrived at once
                        for frame in [await frames.__anext__(), *frames.ready(BURST * BURSTS)]:
                            assert isinstance(frame, m.EventFrame)
                            assert isinstance(frame.event, m.Note)
                            got.append(frame.event.text)

            nursery.start_soon(read)
            for burst in range(BURSTS):
                for i in range(BURST):  # no checkpoint: the subscriber cannot run in between
                    hive.bus.publish(m.Note(agent=None, text=f"{burst}.{i}"))
                await trio.sleep(0.1)
            with trio.fail_after(60):
                while len(got) < BURST * BURSTS:
                    await trio.sleep(0.05)
        nursery.cancel_scope.cancel()
    assert got == [f"{b}.{i}" for b in range(BURSTS) for i in range(BURST)]
