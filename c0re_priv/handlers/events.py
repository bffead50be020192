"""The event stream.

The `VERBS` table at the end is this feature's surface: each row names a verb, the roles
whose socket may decode it, and its handler."""

from __future__ import annotations

from protocol import messages as m

from ..errors import Fail
from .base import OPERATOR, Caller, Emit, Verb


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
            for event in replay:
                await emit(m.EventFrame(event=event))
        async for event in sub.recv:
            await emit(m.EventFrame(event=event))
        if sub.dropped:
            raise Fail("unavailable", "subscriber fell behind; subscribe again with since_seq")
    finally:
        sub.close()


VERBS: tuple[Verb, ...] = (Verb(m.Subscribe, OPERATOR, subscribe, streaming=True),)
