"""Reminders: an agent asks to be woken later, and the scheduler turns each due one into a message.

This module owns the `reminders` table and the scheduler task. A reminder belongs to the
agent whose socket set it and every lookup an agent makes is bounded by `owner = caller`
(another agent's id is `not_found`), so no sequence of calls lets one agent see, cancel or
receive another's reminder. When due, a reminder becomes a `reminder` message to its owner
(with `reminder_id`) whose body is `Reminder #<id>: <body>`, written as the broker's
`insert_message` writes one (but for a group of reminders per statement) and announced with
`Broker.published`: from there it is leased and acked like every message (at least once).
An oversize body is moved to a file at creation by `Broker.spill`, the same code `send`
uses. This module never delivers to anyone but the owner and never holds the writer for
more than one bounded chunk at a time.

Scheduling: `run_scheduler` is one task in the daemon's services nursery. It sleeps until the
earliest `next_attempt_at` of a pending reminder, not on a fixed poll, and is poked awake
when a reminder that is due sooner is added or retried. Each tick is one `Store.write` job,
hence one transaction: every reminder it takes is delivered and marked delivered together,
or neither is. It commits without an fsync of its own (`Store.write(durable=False)`): a power
cut can undo a chunk only whole, and its reminders are then delivered after the restart, as
at-least-once allows; the next durable commit (an agent's reply, say) makes it durable too.

Why a tick takes at most `reminder_batch` (default 64) reminders, stops after
`reminder_chunk_ms` (default 2 ms) of work, and gives way to a waiting write: the store has
one writer, and a job holds it for as long as its transaction runs; a `Send` queued meanwhile
waits behind it. A burst of 10,000 reminders due at one instant, delivered in a single job,
holds the writer for about half a second: every `Send`, lease and ack in the hive stalls that
long. So a tick takes the soonest reminders, `STATEMENT_REMINDERS` (8) per statement, and
between two statements ends early once its time is up or as soon as the store says an
interactive write is queued (`Store.writes_waiting`); while more are due, the next tick
follows at once, behind the writes that arrived meanwhile. A `Send` made during a burst so
waits for at most one statement's worth of reminders. The count and the time limit keep each
transaction, and the events a tick publishes at once, small wherever the hive runs.
`reminder_chunk_ms = 0` turns both limits off: one transaction per `reminder_batch`. A
statement delivers its group with sqlite doing the work per row (`INSERT … SELECT`, then two
updates), which costs a third of a reminder-at-a-time loop in CPU and holds the GIL only
between statements. Measured in `bench/reminders.py`;
figures in `bench/README.md`.

Shutdown: a tick is shielded from cancellation (it is bounded work, and the events of what
it committed must be published); the scheduler is cancelled between ticks, while it sleeps
or between the chunks of a burst. Whatever was due and not yet delivered stays `pending` and goes out on the first tick after
the next start.

Failures: a delivery fails when the owner is no longer a registered agent (removed or
destroyed). The attempt is recorded (`attempt_count`, `last_error`) and retried after
`reminder_retry_seconds`, doubling each time (at most an hour); after
`reminder_max_attempts` attempts the reminder is `failed` until `RetryReminder` queues it
again. Creation is limited per agent by a token bucket and by a cap on pending reminders,
both refused with `rate_limited` and `retry_after_seconds`.
"""

from __future__ import annotations

import json
import logging
import math
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import trio

from protocol.messages import (
    MessageRow,
    ReminderCancelled,
    ReminderDelivered,
    ReminderFailed,
    ReminderRow,
    ReminderScheduled,
    ReminderState,
)

from .broker import COLUMNS as MESSAGE_COLUMNS
from .broker import SYSTEM, Broker, message_row
from .config import HiveConfig
from .errors import Fail
from .events import EventBus
from .rate_limit import Rate, RateLimiter
from .store import Store

log = logging.getLogger(__name__)

COLUMNS = (
    "id, owner, body, due_at, state, created_at, next_attempt_at, attempt_count, last_error,"
    " delivered_at, message_id"
)
MAX_BACKOFF_SECONDS = 3600.0
LIST_MINE_LIMIT = 1000


def reminder_row(r: sqlite3.Row) -> ReminderRow:
    return ReminderRow(
        id=r["id"],
        owner=r["owner"],
        body=r["body"],
        due_at=r["due_at"],
        state=r["state"],
        created_at=r["created_at"],
        next_attempt_at=r["next_attempt_at"],
        attempt_count=r["attempt_count"],
        last_error=r["last_error"],
        delivered_at=r["delivered_at"],
        message_id=r["message_id"],
    )


def backoff(retry_seconds: float, attempts: int) -> float:
    """Seconds to wait after the `attempts`-th failed attempt: doubling, at most an hour."""
    return float(min(MAX_BACKOFF_SECONDS, retry_seconds * 2 ** min(attempts - 1, 30)))


def reminder_counts(conn: sqlite3.Connection) -> dict[str, dict[str, int]]:
    """Per owner: `reminders_pending`, `reminders_delivered`, `reminders_failed` (agent rows)."""
    counts: dict[str, dict[str, int]] = {}
    rows = conn.execute(
        "SELECT owner, state, count(*) FROM reminders"
        " WHERE state IN ('pending', 'delivered', 'failed') GROUP BY owner, state"
    )
    for owner, state, n in rows:
        counts.setdefault(owner, {})[f"reminders_{state}"] = n
    return counts


STATEMENT_REMINDERS = 8
"""Reminders delivered by one statement; between two, a chunk looks at the clock and the queue."""


@dataclass
class Tick:
    """What one scheduler transaction did."""

    delivered: list[MessageRow]
    """The reminder messages inserted, each addressed to its owner, with its `reminder_id`."""
    failed: list[ReminderRow]
    """Failed attempts: still `pending` (retried at `next_attempt_at`) or now `failed`."""
    next_due: float
    """The earliest `next_attempt_at` still pending after this tick; `inf` when none is."""


def deliver_due(
    conn: sqlite3.Connection,
    *,
    now: float,
    limit: int,
    max_attempts: int,
    retry_seconds: float,
    budget_seconds: float = 0.0,
    writes_waiting: Callable[[], bool] | None = None,
) -> Tick:
    """Deliver up to `limit` reminders due at `now`, soonest first, in the caller's transaction.

    They go `STATEMENT_REMINDERS` at a time, each group in three set-based statements: sqlite
    does the per-reminder work, and releases the GIL while it does. Between two groups the
    chunk ends early (having delivered one group at least) once `budget_seconds` have gone,
    or as soon as `writes_waiting()` says a write is queued behind it.
    """
    stop_at = time.perf_counter() + budget_seconds if budget_seconds > 0 else math.inf
    registered: set[str] | None = None
    delivered: list[MessageRow] = []
    failed: list[ReminderRow] = []
    while (done := len(delivered) + len(failed)) < limit:
        if done and (
            time.perf_counter() >= stop_at or (writes_waiting is not None and writes_waiting())
        ):
            break  # the rest are still due: the next tick follows
        # the soonest still due: each group leaves the due set (delivered, failed, or retried
        # later than `now`), so the index walk starts afresh and no reminder is tried twice
        group = conn.execute(
            "SELECT id, owner, attempt_count FROM reminders"
            " WHERE state = 'pending' AND next_attempt_at <= ?"
            " ORDER BY next_attempt_at, id LIMIT ?",
            (now, min(STATEMENT_REMINDERS, limit - done)),
        ).fetchall()
        if not group:
            break
        if registered is None:
            registered = {r[0] for r in conn.execute("SELECT name FROM agents")}
        owned = [rid for rid, owner, _ in group if owner in registered]
        if owned:
            delivered += _deliver(conn, owned, now)
        for rid, owner, attempts in group:
            if owner not in registered:
                failed.append(
                    _fail(conn, rid, owner, attempts + 1, now, max_attempts, retry_seconds)
                )
    nxt = conn.execute(
        "SELECT min(next_attempt_at) FROM reminders WHERE state = 'pending'"
    ).fetchone()[0]
    return Tick(delivered, failed, nxt if nxt is not None else math.inf)


def _deliver(conn: sqlite3.Connection, ids: list[int], now: float) -> list[MessageRow]:
    """Each reminder of `ids` (all pending, all owned by registered agents) becomes a message
    to its owner, as `insert_message` would write it, and is marked delivered."""
    rows = conn.execute(
        "INSERT INTO messages (sender, recipient, body, thread, kind, state, broadcast,"
        " created_at, reminder_id)"
        " SELECT ?, owner, 'Reminder #' || id || ': ' || body, 0, 'reminder', 'queued', 0, ?, id"
        " FROM reminders WHERE id IN (SELECT value FROM json_each(?)) ORDER BY id"
        f" RETURNING {MESSAGE_COLUMNS}",
        (SYSTEM, now, json.dumps(ids)),
    ).fetchall()
    messages = [message_row(r) for r in rows]
    # each is a thread of its own; the ids are consecutive, taken by this one statement
    first, last = min(msg.id for msg in messages), max(msg.id for msg in messages)
    conn.execute(
        "UPDATE messages SET thread = id WHERE id BETWEEN ? AND ? AND thread = 0", (first, last)
    )
    for msg in messages:
        msg.thread = msg.id
    conn.executemany(
        "UPDATE reminders SET state = 'delivered', delivered_at = ?, message_id = ?,"
        " attempt_count = attempt_count + 1, next_attempt_at = NULL WHERE id = ?",
        [(now, msg.id, msg.reminder_id) for msg in messages],
    )
    return messages


def _fail(
    conn: sqlite3.Connection,
    reminder_id: int,
    owner: str,
    attempts: int,
    now: float,
    max_attempts: int,
    retry_seconds: float,
) -> ReminderRow:
    """Record the `attempts`-th failed attempt: the owner is no longer a registered agent."""
    if attempts >= max_attempts:
        state, retry_at = "failed", None
    else:
        state, retry_at = "pending", now + backoff(retry_seconds, attempts)
    row = conn.execute(
        "UPDATE reminders SET state = ?, attempt_count = ?, last_error = ?,"
        f" next_attempt_at = ? WHERE id = ? RETURNING {COLUMNS}",
        (state, attempts, f"owner {owner!r} is not a registered agent", retry_at, reminder_id),
    ).fetchone()
    return reminder_row(row)


class Reminders:
    def __init__(
        self,
        store: Store,
        bus: EventBus,
        broker: Broker,
        config: HiveConfig,
        now: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._bus = bus
        self._broker = broker
        self._config = config
        self._settings = config.hive
        self._now = now
        self._limiter = RateLimiter(self.rate_of)
        self._poke = trio.Event()
        self._wake_at = math.inf
        """When the scheduler next wakes on its own; `inf` while it is busy (poke on any add)."""

    # ---------------------------------------------------------------- limits

    def rate_of(self, agent: str) -> Rate:
        """`agent`'s creation bucket: its `[agents.<name>]` override, else the hive default."""
        own = self._config.agents.get(agent)
        burst = own.reminder_burst if own is not None else None
        per_minute = own.reminder_refill_per_minute if own is not None else None
        return Rate(
            burst=burst if burst is not None else self._settings.reminder_burst,
            per_second=(
                per_minute if per_minute is not None else self._settings.reminder_refill_per_minute
            )
            / 60.0,
        )

    def max_pending(self, agent: str) -> int:
        own = self._config.agents.get(agent)
        if own is not None and own.reminder_max_pending is not None:
            return own.reminder_max_pending
        return self._settings.reminder_max_pending

    @staticmethod
    def _refuse_over_cap(conn: sqlite3.Connection, owner: str, cap: int, now: float) -> None:
        pending, soonest = conn.execute(
            "SELECT count(*), min(next_attempt_at) FROM reminders"
            " WHERE owner = ? AND state = 'pending'",
            (owner,),
        ).fetchone()
        if pending >= cap:
            raise Fail(
                "rate_limited",
                f"you already have {pending} pending reminders (the cap is {cap});"
                " cancel one or wait for one to fire",
                retry_after_seconds=max(0.0, (soonest or now) - now),
            )

    # ---------------------------------------------------------------- verbs

    async def remind(
        self, owner: str, body: str, at: float | None, in_seconds: float | None
    ) -> tuple[ReminderRow, str | None]:
        """Set a reminder for `owner`; return it and the file an oversize body went to."""
        if (at is None) == (in_seconds is None):
            raise Fail("invalid", "give exactly one of `at` (a unix time) or `in_seconds`")
        now = self._now()
        due = at if at is not None else now + (in_seconds or 0.0)
        wait = self._limiter.take(owner, now)
        if wait is not None:
            rate = self.rate_of(owner)
            raise Fail(
                "rate_limited",
                f"too many reminders: {rate.burst} at once, then"
                f" {rate.per_second * 60:g} a minute; try again in {wait:.1f}s",
                retry_after_seconds=wait,
            )
        cap = self.max_pending(owner)
        # refuse before the body cap writes a file for a reminder that will not exist
        await self._store.read(lambda c: self._refuse_over_cap(c, owner, cap, now))
        body, spilled = await self._broker.spill(owner, body)

        def write(conn: sqlite3.Connection) -> ReminderRow:
            self._refuse_over_cap(conn, owner, cap, now)
            row = conn.execute(
                "INSERT INTO reminders (owner, body, body_file, due_at, state, created_at,"
                " next_attempt_at) VALUES (?, ?, ?, ?, 'pending', ?, ?)"
                f" RETURNING {COLUMNS}",
                (owner, body, spilled, due, now, due),
            ).fetchone()
            return reminder_row(row)

        reminder = await self._store.write(write)
        self._bus.publish(ReminderScheduled(reminder=reminder))
        self._wake(due)
        return reminder, spilled

    async def list_mine(self, owner: str) -> list[ReminderRow]:
        rows = await self._store.read(
            lambda c: c.execute(
                f"SELECT {COLUMNS} FROM reminders WHERE owner = ? AND state IN ('pending', 'failed')"
                " ORDER BY due_at, id LIMIT ?",
                (owner, LIST_MINE_LIMIT),
            ).fetchall()
        )
        return [reminder_row(r) for r in rows]

    async def list(
        self, agent: str | None, state: ReminderState | None, limit: int
    ) -> list[ReminderRow]:
        clauses: list[str] = []
        params: list[object] = []
        if agent is not None:
            clauses.append("owner = ?")
            params.append(agent)
        if state is not None:
            clauses.append("state = ?")
            params.append(state)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        sql = f"SELECT {COLUMNS} FROM reminders {where} ORDER BY id DESC LIMIT ?"
        rows = await self._store.read(lambda c: c.execute(sql, (*params, limit)).fetchall())
        return [reminder_row(r) for r in rows]

    async def cancel(self, owner: str, reminder_id: int) -> ReminderRow:
        """Cancel `owner`'s own pending or failed reminder; anyone else's is `not_found`."""

        def write(conn: sqlite3.Connection) -> ReminderRow:
            row = conn.execute(
                "SELECT state FROM reminders WHERE id = ? AND owner = ?", (reminder_id, owner)
            ).fetchone()
            if row is None:
                raise Fail("not_found", f"no reminder #{reminder_id} of yours")
            if row["state"] not in ("pending", "failed"):
                raise Fail("conflict", f"reminder #{reminder_id} is already {row['state']}")
            updated = conn.execute(
                "UPDATE reminders SET state = 'cancelled', next_attempt_at = NULL"
                f" WHERE id = ? RETURNING {COLUMNS}",
                (reminder_id,),
            ).fetchone()
            return reminder_row(updated)

        reminder = await self._store.write(write)
        self._bus.publish(ReminderCancelled(reminder_id=reminder.id, owner=reminder.owner))
        return reminder

    async def retry(self, reminder_id: int) -> ReminderRow:
        """The operator queues a `failed` reminder again: due now, with fresh attempts."""
        now = self._now()

        def write(conn: sqlite3.Connection) -> ReminderRow:
            row = conn.execute(
                "SELECT state FROM reminders WHERE id = ?", (reminder_id,)
            ).fetchone()
            if row is None:
                raise Fail("not_found", f"no reminder #{reminder_id}")
            if row["state"] != "failed":
                raise Fail("conflict", f"reminder #{reminder_id} is {row['state']}, not failed")
            updated = conn.execute(
                "UPDATE reminders SET state = 'pending', attempt_count = 0, next_attempt_at = ?"
                f" WHERE id = ? RETURNING {COLUMNS}",
                (now, reminder_id),
            ).fetchone()
            return reminder_row(updated)

        reminder = await self._store.write(write)
        self._bus.publish(ReminderScheduled(reminder=reminder))
        self._wake(now)
        return reminder

    # ---------------------------------------------------------------- scheduler

    def _wake(self, due: float) -> None:
        if due < self._wake_at:
            self._poke.set()

    async def run_scheduler(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Deliver due reminders until cancelled; sleeps until the next is due or a poke."""
        task_status.started()
        while True:
            self._poke = trio.Event()
            self._wake_at = math.inf
            with trio.CancelScope(shield=True):
                next_due = await self.tick()
            delay = next_due - self._now()
            if delay <= 0:
                await trio.lowlevel.checkpoint()  # the rest of a burst: next chunk at once
                continue
            self._wake_at = next_due
            with trio.move_on_after(delay):
                await self._poke.wait()

    async def tick(self) -> float:
        """One transaction's worth of due deliveries, then their events; the next due time."""
        s = self._settings
        tick = await self._store.write_when_space(
            partial(
                deliver_due,
                now=self._now(),
                limit=s.reminder_batch,
                max_attempts=s.reminder_max_attempts,
                retry_seconds=s.reminder_retry_seconds,
                budget_seconds=s.reminder_chunk_ms / 1000,
                # no time limit: one transaction, not cut short for anyone either
                writes_waiting=self._store.writes_waiting if s.reminder_chunk_ms else None,
            ),
            "reminder scheduler",
            background=True,  # behind any message traffic that is waiting
            # a power cut can undo a chunk only whole, reminders and their messages together,
            # and they then go out after the restart: no fsync of its own (`Store.write`)
            durable=False,
        )
        self._broker.published(tick.delivered)
        for msg in tick.delivered:
            assert msg.reminder_id is not None
            self._bus.publish(
                ReminderDelivered(reminder_id=msg.reminder_id, owner=msg.to, message_id=msg.id)
            )
        for reminder in tick.failed:
            final = reminder.state == "failed"
            if final:
                log.warning(
                    "reminder #%d of %s failed after %d attempts: %s",
                    reminder.id,
                    reminder.owner,
                    reminder.attempt_count,
                    reminder.last_error,
                )
            self._bus.publish(
                ReminderFailed(
                    reminder_id=reminder.id,
                    owner=reminder.owner,
                    error=reminder.last_error or "",
                    attempt_count=reminder.attempt_count,
                    retry_at=None if final else reminder.next_attempt_at,
                )
            )
        return tick.next_due
