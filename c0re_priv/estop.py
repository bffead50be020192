"""The emergency stop: one switch that stops every agent but the managers, and `thaw`.

Engaging it holds every agent that is not a manager (`holds.Holds`: the broker leases them
nothing), takes back every lease they hold at once (their messages are queued again, not
counted as failures: an operator's stop is nobody's fault), and tells each harness that was
working on one to cancel that turn (a `park` control naming the leases). A harness confirms
with `ReportControl{action="park"}`; one that has not within `estop_grace_seconds` (hung,
stopped, misbehaving) has its container stopped, and thawing starts it again. Nothing is
lost: messages stay queued, and a harness that reconnects while the stop is engaged still
gets no work.

The stop is one row of `hive_meta` (key `estop`), so a daemon that restarts stays stopped
and its harnesses start parked. Thawing releases exactly what the stop held: an agent paused
by the operator, or held by its budget, before or during the stop, stays so. Engage and thaw
run one at a time.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import msgspec
import trio

from protocol import messages as m
from protocol.messages import AgentHeld, AgentReleased, EstopChanged, EstopRow

from .broker import Broker
from .config import HiveSettings
from .errors import Fail
from .events import EventBus
from .holds import ESTOP_REASON, Holds
from .registry import Registry
from .store import Store

if TYPE_CHECKING:
    from .lifecycle import Lifecycle

log = logging.getLogger(__name__)
META_KEY = "estop"
TURN_STATES = ("turn", "rate_limited")
"""What a harness reports while a turn (or its retry after a rate limit) is under way."""


class EmergencyStop:
    def __init__(
        self,
        store: Store,
        bus: EventBus,
        registry: Registry,
        broker: Broker,
        holds: Holds,
        settings: HiveSettings,
        now: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._bus = bus
        self._registry = registry
        self._broker = broker
        self._holds = holds
        self._settings = settings
        self.lifecycle: Lifecycle | None = None
        """The container supervisor, handed over by the wiring (`Hive.supervise`) once it runs."""
        self._now = now
        self._lock = trio.Lock()
        self.row = EstopRow(engaged=False)
        self._waiting: dict[str, trio.Event] = {}
        """Harnesses told to park whose confirmation the stop in progress waits for."""
        self._confirmed_at: dict[str, float] = {}

    async def load(self) -> None:
        """Read the persisted stop (before any socket serves: a held agent must never lease)."""
        raw = await self._store.read(
            lambda c: c.execute("SELECT value FROM hive_meta WHERE key = ?", (META_KEY,)).fetchone()
        )
        if raw is not None:
            self.row = msgspec.json.decode(raw[0], type=EstopRow)
        self._holds.estop = self.row.engaged
        if self.row.engaged:
            log.warning(
                "the emergency stop is engaged (since %s%s): every agent but the managers is "
                "parked; `hive ctl thaw` lifts it",
                time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.row.at or 0)),
                f", {self.row.reason}" if self.row.reason else "",
            )

    async def _persist(self, row: EstopRow) -> None:
        value = msgspec.json.encode(row).decode()
        await self._store.write(
            lambda c: c.execute(
                "INSERT INTO hive_meta (key, value) VALUES (?, ?)"
                " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (META_KEY, value),
            )
        )
        self.row = row

    def _targets(self) -> list[str]:
        return [n for n in self._registry.names() if self._registry.agents[n].role != "manager"]

    async def engage(self, reason: str) -> EstopRow:
        """Stop every agent but the managers; return once every cancelled turn has ended
        (or, past `estop_grace_seconds`, its container was stopped)."""
        async with self._lock:
            started = trio.current_time()
            targets = self._targets()
            was = self.row
            fresh = not was.engaged
            row = EstopRow(
                engaged=True,
                at=self._now() if fresh else was.at,
                reason=reason or ("" if fresh else was.reason),
                parked=targets,
                stopped=[] if fresh else list(was.stopped),
            )
            # hold and tell the harnesses first, from memory: their turns stop while the
            # daemon writes down the stop and takes the leases back (the turns are what costs)
            self._holds.estop = True
            revoked = {n: self._broker.leases_of(n) for n in targets}
            to_park = self._tell_harnesses(targets, revoked)
            row.cancelled = sorted(to_park)
            await self._persist(row)
            tokens = [t for ts in revoked.values() for t in ts]
            if tokens:
                await self._broker.release(tokens, ESTOP_REASON, failed=False)
            if fresh:
                for name in targets:
                    self._bus.publish(AgentHeld(name=name, hold="estop", reason=ESTOP_REASON))
            self._bus.publish(EstopChanged(estop=row))
            log.warning(
                "EMERGENCY STOP%s: %d agents parked, %d turns being cancelled",
                f" ({row.reason})" if row.reason else "",
                len(targets),
                len(to_park),
            )
            with trio.move_on_after(self._settings.estop_grace_seconds):
                for event in to_park.values():
                    await event.wait()
            confirmed = [self._confirmed_at[n] for n in to_park if n in self._confirmed_at]
            row.park_seconds = max(confirmed, default=started) - started
            late = sorted(n for n, event in to_park.items() if not event.is_set())
            self._waiting = {}
            if late:
                await self._stop_containers(late)
                row.stopped = sorted({*row.stopped, *late})
            await self._persist(row)
            self._bus.publish(EstopChanged(estop=row))
            return row

    def _tell_harnesses(
        self, targets: list[str], revoked: dict[str, list[str]]
    ) -> dict[str, trio.Event]:
        """Send `park` to every connected harness that was working; return whom to wait for."""
        lifecycle = self.lifecycle
        waiting: dict[str, trio.Event] = {}
        self._confirmed_at = {}
        for name in targets:
            s = lifecycle.agents.get(name) if lifecycle is not None else None
            working = bool(revoked[name]) or (s is not None and s.harness_state in TURN_STATES)
            if not working:
                continue
            connected = self._registry.agents[name].connections > 0
            if s is None or s.controls is None or not connected or s.stopping:
                continue  # no harness to tell: its leases are back, and it gets no more
            try:
                s.controls.send_nowait(m.ControlFrame(action="park", leases=revoked[name]))
            except trio.WouldBlock:
                log.warning(
                    "%s: its control queue is full; it will be stopped if it works on", name
                )
            waiting[name] = trio.Event()
        self._waiting = waiting
        return waiting

    def confirm(self, name: str) -> None:
        """A harness reports its turn cancelled (or that none ran): it is parked."""
        event = self._waiting.get(name)
        if event is not None and not event.is_set():
            self._confirmed_at[name] = trio.current_time()
            event.set()

    async def _stop_containers(self, names: list[str]) -> None:
        lifecycle = self.lifecycle
        if lifecycle is None:
            return
        for name in names:
            log.error(
                "%s: its harness did not park within %gs; stopping its container",
                name,
                self._settings.estop_grace_seconds,
            )
        async with trio.open_nursery() as nursery:
            for name in names:
                nursery.start_soon(lifecycle.stop, name, False)

    async def thaw(self) -> EstopRow:
        """Lift the stop: what it held works again, containers it stopped start again."""
        async with self._lock:
            row = self.row
            if not row.engaged:
                raise Fail("conflict", "the emergency stop is not engaged")
            self._holds.estop = False
            registry = self._registry
            held = [n for n in registry.names() if registry.agents[n].role != "manager"]
            row = msgspec.structs.replace(
                row,
                engaged=False,
                thawed_at=self._now(),
                resumed=[
                    n for n in held if self._holds.allows(n) and not registry.agents[n].paused
                ],
            )
            await self._persist(row)
            for name in held:
                self._bus.publish(AgentReleased(name=name, hold="estop", reason="thawed"))
                self._broker.notify(name)
            lifecycle = self.lifecycle
            if lifecycle is not None:
                for name in row.stopped:
                    record = registry.agents.get(name)
                    if record is None or record.paused:
                        continue
                    try:
                        await lifecycle.start(name)
                    except Fail as exc:
                        log.error("thaw: %s was not started again: %s", name, exc.message)
            log.warning("thawed: %d agents may work again", len(row.resumed))
            self._bus.publish(EstopChanged(estop=row))
            return row
