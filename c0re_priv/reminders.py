"""Reminders: an agent asks to be woken later, and the scheduler turns each due one into a message.

This module owns the `reminders` table and the scheduler task. A reminder belongs to the
agent whose socket set it and every lookup an agent makes is bounded by `owner = caller`
(another agent's id is `not_found`), so no sequence of calls lets one agent see, cancel or
receive another's reminder. When due, a reminder becomes a `reminder` message to its owner
(with `reminder_id`), inserted with the broker's `insert_message` and announced with
`Broker.published`: from there it is leased and acked like every message (at least once).
An oversize body is moved to a file at creation by `Broker.spill`, the same code `send`
uses. This module never delivers to anyone but the owner and never holds the writer for
more than one bounded chunk at a time.

Scheduling: `run_scheduler` is one task in the daemon's services nursery. It sleeps until the
earliest `next_attempt_at` of a pending reminder, not on a fixed poll, and is poked awake
when a reminder that is due sooner is added or retried. Each tick is one `Store.write` job,
hence one transaction: every reminder it takes is delivered and marked delivered together,
or neither is.

Why a tick takes at most `reminder_batch` (default 64) reminders, and stops after
`reminder_chunk_ms` (default 2 ms) of work: the store has one writer,
and a job holds it for as long as its transaction runs; a `Send` queued meanwhile waits
behind it. A burst of 10,000 reminders due at one instant, delivered in a single job, holds
the writer (and, through the GIL, most of the daemon) for about 0.6 s: every `Send`, lease
and ack in the hive stalls that long. So a tick takes the soonest `reminder_batch` and,
while more are due, the next tick follows at once: its job queues behind whatever writes
arrived meanwhile, so those wait for about one chunk instead of the whole burst. 64 is
where `bench/reminders.py` found the knee on the development VM: `Send` p99 during the
burst ~11 ms (one transaction: ~600 ms; chunks of 256: ~55 ms; of 32: ~9 ms) while the
burst still goes out at ~10,000 reminders a second (one transaction: ~18,000; chunks of
32: ~7,000). The count also bounds the events one tick publishes at once. A count alone
holds the writer for as long as that many take on the host at hand (17 ms for 64 on a
loaded VM, where a `Send` then waited 7× its idle time); the time limit bounds the wait
itself, wherever the hive runs.

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

from .broker import SYSTEM, Broker, insert_message
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


def reminder_text(reminder_id: int, body: str) -> str:
    return f"Reminder #{reminder_id}: {body}"


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


@dataclass
class Tick:
    """What one scheduler transaction did."""

    delivered: list[tuple[ReminderRow, MessageRow]]
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
) -> Tick:
    """Deliver up to `limit` reminders due at `now`, soonest first, in the caller's transaction;
    with a `budget_seconds`, stop once that much time has gone (after one at least)."""
    stop_at = time.perf_counter() + budget_seconds if budget_seconds > 0 else math.inf
    due = conn.execute(
        f"SELECT {COLUMNS} FROM reminders WHERE state = 'pending' AND next_attempt_at <= ?"
        " ORDER BY next_attempt_at, id LIMIT ?",
        (now, limit),
    ).fetchall()
    registered = {r[0] for r in conn.execute("SELECT name FROM agents")}
    delivered: list[tuple[ReminderRow, MessageRow]] = []
    failed: list[ReminderRow] = []
    for r in due:
        if (delivered or failed) and time.perf_counter() >= stop_at:
            break  # the rest are still due: the next tick follows at once
        attempts = r["attempt_count"] + 1
        if r["owner"] in registered:
            msg = insert_message(
                conn,
                sender=SYSTEM,
                recipient=r["owner"],
                body=reminder_text(r["id"], r["body"]),
                now=now,
                kind="reminder",
                reminder_id=r["id"],
            )
            row = conn.execute(
                "UPDATE reminders SET state = 'delivered', delivered_at = ?, message_id = ?,"
                f" attempt_count = ?, next_attempt_at = NULL WHERE id = ? RETURNING {COLUMNS}",
                (now, msg.id, attempts, r["id"]),
            ).fetchone()
            delivered.append((reminder_row(row), msg))
            continue
        error = f"owner {r['owner']!r} is not a registered agent"
        if attempts >= max_attempts:
            state, retry_at = "failed", None
        else:
            state, retry_at = "pending", now + backoff(retry_seconds, attempts)
        row = conn.execute(
            "UPDATE reminders SET state = ?, attempt_count = ?, last_error = ?,"
            f" next_attempt_at = ? WHERE id = ? RETURNING {COLUMNS}",
            (state, attempts, error, retry_at, r["id"]),
        ).fetchone()
        failed.append(reminder_row(row))
    nxt = conn.execute(
        "SELECT min(next_attempt_at) FROM reminders WHERE state = 'pending'"
    ).fetchone()[0]
    return Tick(delivered, failed, nxt if nxt is not None else math.inf)


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
            ),
            "reminder scheduler",
            background=True,  # behind any message traffic that is waiting
        )
        self._broker.published(msg for _, msg in tick.delivered)
        for reminder, msg in tick.delivered:
            self._bus.publish(
                ReminderDelivered(reminder_id=reminder.id, owner=reminder.owner, message_id=msg.id)
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
