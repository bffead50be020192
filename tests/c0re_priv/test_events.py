"""The event stream: subscribing, replaying since a seq, resync past the buffer, kinds checked."""

from __future__ import annotations

import pytest

from protocol import messages as m
from protocol.client import HiveError


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
