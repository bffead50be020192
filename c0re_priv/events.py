"""The event bus: every state change becomes a typed event with a monotonically increasing seq.

Seqs start each boot at the wall clock in microseconds, so a seq from an earlier boot is
always older than this boot's buffer and gets a `Resync` instead of a silent gap. The
replay buffer is bounded; a subscriber that cannot keep up is dropped (its channel is
closed) rather than slowing the publisher, and resubscribes with the last seq it saw.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Iterable

import msgspec
import trio

from protocol.messages import AnyEvent

DEFAULT_REPLAY = 4096
SUBSCRIBER_BUFFER = 1024


class Subscription:
    """One subscriber's live feed; `receive` ends (EndOfChannel) when it was dropped."""

    def __init__(self, bus: EventBus, kinds: frozenset[str] | None) -> None:
        self.kinds = kinds
        self._bus = bus
        self.send, self.recv = trio.open_memory_channel[AnyEvent](SUBSCRIBER_BUFFER)
        self.dropped = False

    def wants(self, event: AnyEvent) -> bool:
        return self.kinds is None or event.__struct_config__.tag in self.kinds

    def close(self) -> None:
        self._bus._subscribers.discard(self)
        self.send.close()


class EventBus:
    def __init__(self, replay: int = DEFAULT_REPLAY) -> None:
        self.seq = time.time_ns() // 1000
        self._floor = self.seq  # every event with seq > floor is still in the buffer
        self._buffer: collections.deque[AnyEvent] = collections.deque()
        self._replay = replay
        self._subscribers: set[Subscription] = set()

    def publish(self, event: AnyEvent) -> AnyEvent:
        """Stamp `event` with the next seq and the time, buffer it, hand it to subscribers."""
        self.seq += 1
        stamped = msgspec.structs.replace(event, seq=self.seq, at=time.time())
        self._buffer.append(stamped)
        if len(self._buffer) > self._replay:
            self._floor = self._buffer.popleft().seq
        for sub in list(self._subscribers):
            if not sub.wants(stamped):
                continue
            try:
                sub.send.send_nowait(stamped)
            except trio.WouldBlock:
                sub.dropped = True
                sub.close()
        return stamped

    def publish_all(self, events: Iterable[AnyEvent]) -> None:
        for event in events:
            self.publish(event)

    def subscribe(
        self, kinds: Iterable[str] | None, since_seq: int | None
    ) -> tuple[Subscription, list[AnyEvent] | None]:
        """Start a subscription; return it and the events to replay first.

        The replay list is `None` when `since_seq` cannot be served from the buffer (it is
        older than the buffer, or from the future): the caller must answer `Resync`.
        """
        sub = Subscription(self, frozenset(kinds) if kinds is not None else None)
        self._subscribers.add(sub)
        if since_seq is None:
            return sub, []
        if since_seq < self._floor or since_seq > self.seq:
            return sub, None
        return sub, [e for e in self._buffer if e.seq > since_seq and sub.wants(e)]
