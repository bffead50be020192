"""The event stream.

The `VERBS` table at the end is this feature's surface: each row names a verb, the roles
whose socket may decode it, and its handler."""

from __future__ import annotations

import trio

from protocol import messages as m

from ..errors import Fail
from .base import OPERATOR, Caller, Emit, Verb

EMIT_BATCH = 1024
"""Events a subscription sends with one write when they are already waiting."""


async def subscribe(c: Caller, req: m.Subscribe, emit: Emit) -> None:
    if req.kinds is not None:
        unknown = sorted(set(req.kinds) - m.EVENT_KINDS)
        if unknown:
            raise Fail("invalid", f"unknown event kinds: {', '.join(unknown)}")
    bus = c.hive.bus
    sub, replay = bus.subscribe(req.kinds, req.since_seq)
    try:
        if replay is None:
            await emit(m.Resync(seq=bus.seq))
        else:
            await emit(m.Subscribed(seq=bus.seq))
            for start in range(0, len(replay), EMIT_BATCH):
                chunk = replay[start : start + EMIT_BATCH]
                await emit([m.EventFrame(event=event) for event in chunk])
        async for event in sub.recv:
            # what queued up while the last write went out goes in one write: under load a
            # subscriber keeps pace with the publisher instead of one frame per wake-up
            events = [event]
            while len(events) < EMIT_BATCH:
                try:
                    events.append(sub.recv.receive_nowait())
                except (trio.WouldBlock, trio.EndOfChannel):
                    break
            await emit([m.EventFrame(event=e) for e in events])
        if sub.dropped:
            raise Fail("unavailable", "subscriber fell behind; subscribe again with since_seq")
    finally:
        sub.close()


VERBS: tuple[Verb, ...] = (Verb(m.Subscribe, OPERATOR, subscribe, streaming=True),)
