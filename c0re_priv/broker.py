"""The message broker: at-least-once delivery of every message, `queued → leased → acked`.

A recipient leases messages (`lease`, `recv`, `wait_for_work`) and acks each once it has been
acted on. A lease is held by one connection: when that connection drops, when the lease
expires, or when the daemon restarts, the message goes back to `queued` (its `attempts`
count keeps the raised value) and is offered again. Nothing is "delivered" until acked.

A failed turn (a `Nack`, a connection lost mid-turn, an expired lease) counts against the
message: it waits out an exponential backoff (`not_before`) while the messages behind it
flow on, and after `max_attempts` failures it is `dead`, set aside for the operator, who
may retry or drop it. A lease handed back because the daemon or the agent was being
stopped is not a failure.

Durability: a `send` returns once its message is on disk (fsynced). Leasing, taking and
acking return once committed, without an fsync of their own (`Store.write(durable=False)`):
the next send's fsync covers them, a crash of the daemon keeps them, and what a power cut
undoes is a message handed out or acked, which then goes out again, as at-least-once allows.

The broker never blocks the trio thread on sqlite and never publishes an event for a write
that did not commit.
"""

from __future__ import annotations

import math
import secrets
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from functools import partial
from typing import Protocol, TypeVar

import trio

from protocol.federation import is_remote
from protocol.messages import (
    Delivery,
    MessageAcked,
    MessageDead,
    MessageDropped,
    MessageKind,
    MessageLeased,
    MessageRequeued,
    MessageRow,
    MessageSent,
)

from . import federation_outbox
from .attachments import spill_oversize
from .config import HiveSettings, Paths
from .errors import Fail
from .events import EventBus
from .registry import Registry
from .store import Store

BROADCAST_HINT = "this was a broadcast and may not need any action from you"
OPERATOR = "operator"
SYSTEM = "system"
MORE_CAP = 10_000
"""`more` (messages still queued after a lease) counts up to this and no further."""
T = TypeVar("T")
COLUMNS = (
    "id, sender, recipient, body, in_reply_to, thread, kind, state, attempts, broadcast,"
    " question_id, created_at, acked_at, reminder_id, failures, not_before, last_error"
)
REQUEUED = "id, sender, recipient, attempts, failures, state, not_before, last_error"
"""What a requeue returns of each message it touched."""


def message_row(r: sqlite3.Row) -> MessageRow:
    return MessageRow(
        id=r["id"],
        from_=r["sender"],
        to=r["recipient"],
        body=r["body"],
        in_reply_to=r["in_reply_to"],
        thread=r["thread"],
        kind=r["kind"],
        state=r["state"],
        attempts=r["attempts"],
        broadcast=bool(r["broadcast"]),
        hint=BROADCAST_HINT if r["broadcast"] else None,
        question_id=r["question_id"],
        created_at=r["created_at"],
        acked_at=r["acked_at"],
        reminder_id=r["reminder_id"],
        failures=r["failures"],
        not_before=r["not_before"],
        last_error=r["last_error"],
    )


def resolve_parent(
    conn: sqlite3.Connection, viewer: str, parent: int | None, oldest: float
) -> tuple[int | None, int | None]:
    """(in_reply_to, thread) for a reply by `viewer`; `(None, None)` makes a new root.

    A parent that is unknown, not visible to `viewer` (neither its sender nor recipient;
    the operator and the system see everything) or older than retention is ignored.
    """
    if parent is None:
        return None, None
    row = conn.execute(
        "SELECT sender, recipient, thread, created_at FROM messages WHERE id = ?", (parent,)
    ).fetchone()
    if row is None or row["created_at"] < oldest:
        return None, None
    if viewer not in (OPERATOR, SYSTEM) and viewer not in (row["sender"], row["recipient"]):
        return None, None
    return parent, row["thread"]


def insert_message(
    conn: sqlite3.Connection,
    *,
    sender: str,
    recipient: str,
    body: str,
    now: float,
    in_reply_to: int | None = None,
    thread: int | None = None,
    kind: MessageKind = "message",
    broadcast: bool = False,
    question_id: int | None = None,
    reminder_id: int | None = None,
) -> MessageRow:
    """Insert one message; the operator's inbox is the dashboard, so it is acked on arrival."""
    to_operator = recipient == OPERATOR
    row = conn.execute(
        "INSERT INTO messages (sender, recipient, body, in_reply_to, thread, kind, state,"
        " broadcast, question_id, created_at, acked_at, reminder_id)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
        f" RETURNING {COLUMNS}",
        (
            sender,
            recipient,
            body,
            in_reply_to,
            thread or 0,
            kind,
            "acked" if to_operator else "queued",
            int(broadcast),
            question_id,
            now,
            now if to_operator else None,
            reminder_id,
        ),
    ).fetchone()
    msg = message_row(row)
    if thread is None:
        conn.execute("UPDATE messages SET thread = id WHERE id = ?", (msg.id,))
        msg.thread = msg.id
    if is_remote(recipient):  # the transactional outbox: the envelope commits with the row
        federation_outbox.enqueue_message(conn, msg)
    return msg


class RemoteDirectory(Protocol):
    """What the broker needs of the federation (docs/federation.md), when the hive has one."""

    def resolve(self, address: str) -> str:
        """Check `name@hive` (raising `Fail`); return it, or the plain name if it is local."""
        ...

    def poke(self) -> None:
        """Envelopes were committed to the outbox: publish them now."""
        ...


@dataclass(eq=False)
class LeaseHolder:
    """One connection's leases; released (requeued) when the connection goes away."""

    agent: str
    leases: dict[str, trio.Event] = field(default_factory=dict)
    leased_ids: dict[str, int] = field(default_factory=dict)  # lease -> message id


class Broker:
    def __init__(
        self,
        store: Store,
        bus: EventBus,
        registry: Registry,
        settings: HiveSettings,
        paths: Paths,
        now: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._bus = bus
        self._registry = registry
        self._settings = settings
        self._paths = paths
        self._now = now
        self._inbox_signal: dict[str, trio.Event] = {}
        self._holders: dict[str, LeaseHolder] = {}  # lease -> holder
        self._reaper_poke = trio.Event()
        self._reaper_deadline = math.inf
        """The wall-clock time the reaper sleeps until: a lease expiring later needs no poke."""
        self._reaper_scanning = False
        """The reaper's scan may not see a lease made meanwhile: every lease pokes it then."""
        self.remote: RemoteDirectory | None = None
        """The federation's directory of other hives; `None` when this hive is alone."""
        self.gate: Callable[[str], bool] | None = None
        """May this agent be given work now? The operator's controls (`holds.Holds`) keep
        some back; a held agent is leased nothing until `notify` after its release."""

    # ---------------------------------------------------------------- signals

    def notify(self, agent: str) -> None:
        """Wake everyone waiting for work in `agent`'s inbox."""
        event = self._inbox_signal.pop(agent, None)
        if event is not None:
            event.set()

    def _inbox_changed(self, agent: str) -> trio.Event:
        return self._inbox_signal.setdefault(agent, trio.Event())

    def published(self, messages: Iterable[MessageRow]) -> None:
        """Announce committed messages and wake their recipients (or the federation's publisher)."""
        remote = False
        for msg in messages:
            self._bus.publish(MessageSent(message=msg))
            if is_remote(msg.to):
                remote = True
            elif msg.state == "queued":
                self.notify(msg.to)
        if remote:
            self.poke_remote()

    def poke_remote(self) -> None:
        if self.remote is not None:
            self.remote.poke()

    # ---------------------------------------------------------------- sending

    def recipients(self, sender: str, to: str) -> list[str]:
        """Who a message to `to` from `sender` reaches; typed errors name a bad recipient."""
        if is_remote(to):
            if self.remote is None:
                raise Fail(
                    "invalid",
                    f"{to!r} is in another hive, and this hive is not federated"
                    " (no [federation] in hive.toml)",
                )
            to = self.remote.resolve(to)
        if is_remote(to):
            sender_record = self._registry.agents.get(sender)
            if sender_record is not None and not sender_record.may_send_to(to):
                raise Fail("forbidden", f"{sender!r} may not send to {to!r}")
            return [to]
        if to == SYSTEM:
            raise Fail(
                "invalid",
                "'system' is the hive itself (reminders and notices come from it) and reads"
                " nothing: to be reminded again, set a reminder; to tell someone, send to them",
            )
        if to not in ("*", OPERATOR) and to not in self._registry.agents:
            raise Fail("not_found", f"no agent named {to!r}")
        sender_record = self._registry.agents.get(sender)
        if sender_record is not None and not sender_record.may_send_to(to):
            raise Fail("forbidden", f"{sender!r} may not send to {to!r}")
        if to == "*":
            return [name for name in self._registry.names() if name != sender]
        return [to]

    async def spill(self, sender: str, body: str) -> tuple[str, str | None]:
        """Apply the body cap to an agent's text (operator and system text is not capped)."""
        if sender not in self._registry.agents:
            return body, None
        return await spill_oversize(
            body,
            cap=self._settings.body_max_bytes,
            agents_root=self._paths.agents_root,
            owner=sender,
            now=self._now(),
        )

    def oldest_visible(self) -> float:
        return self._now() - self._settings.message_retention_days * 86400

    async def send(
        self, sender: str, to: str, body: str, in_reply_to: int | None = None
    ) -> tuple[list[MessageRow], str | None]:
        """Store one message per recipient; return them and the spill file, if any."""
        targets = self.recipients(sender, to)
        spilled = None
        if not any(is_remote(t) for t in targets):  # another hive applies its own cap
            body, spilled = await self.spill(sender, body)
        now = self._now()
        oldest = self.oldest_visible()
        broadcast = to == "*"

        def write(conn: sqlite3.Connection) -> list[MessageRow]:
            out = []
            for target in targets:
                # a broadcast copy replies in the thread of the parent only if that parent is
                # visible to the sender; each copy is its own root otherwise
                parent, thread = resolve_parent(conn, sender, in_reply_to, oldest)
                out.append(
                    insert_message(
                        conn,
                        sender=sender,
                        recipient=target,
                        body=body,
                        now=now,
                        in_reply_to=parent,
                        thread=thread,
                        kind="system" if sender == SYSTEM else "message",
                        broadcast=broadcast,
                    )
                )
            return out

        rows = await self._store.write(write)
        self.published(rows)
        return rows, spilled

    # ---------------------------------------------------------------- leasing

    async def lease(self, holder: LeaseHolder, limit: int) -> tuple[list[Delivery], int]:
        """Lease up to `limit` queued messages for `holder.agent`; also return how many remain."""
        deliveries, more, _ = await self._lease(holder, limit)
        return deliveries, more

    async def _lease(
        self, holder: LeaseHolder, limit: int
    ) -> tuple[list[Delivery], int, float | None]:
        """`lease`, and when nothing was ready: the time the first backed-off one is."""
        agent = holder.agent
        if self.gate is not None and not self.gate(agent):
            return [], 0, None
        now = self._now()
        expires = now + self._settings.lease_seconds

        def lease(conn: sqlite3.Connection, mid: int) -> tuple[str, MessageRow]:
            token = secrets.token_hex(12)
            row = conn.execute(
                "UPDATE messages SET state = 'leased', lease = ?, lease_expires = ?,"
                f" attempts = attempts + 1 WHERE id = ? RETURNING {COLUMNS}",
                (token, expires, mid),
            ).fetchone()
            return token, message_row(row)

        leased, more, ready_at = await self._store.write(
            partial(self._pick, agent, now, limit, lease), durable=False
        )
        deliveries = []
        for token, msg in leased:
            holder.leases[token] = trio.Event()
            holder.leased_ids[token] = msg.id
            self._holders[token] = holder
            self._bus.publish(MessageLeased(message_id=msg.id, agent=agent, attempts=msg.attempts))
            deliveries.append(Delivery(lease=token, message=msg, expires_at=expires))
        if leased and (self._reaper_scanning or expires < self._reaper_deadline):
            self._reaper_deadline = min(self._reaper_deadline, expires)
            self._reaper_poke.set()
        if leased and self.gate is not None and not self.gate(agent):
            # held while the lease was being written (an emergency stop that came meanwhile
            # took back only the leases it could see): hand these straight back
            await self.release([d.lease for d in deliveries], "held", failed=False)
            return [], more, None
        return deliveries, more, ready_at

    async def _take(self, agent: str, limit: int) -> tuple[list[MessageRow], int, float | None]:
        """`_lease` and `ack` in one transaction: the messages are delivered when it commits."""
        if self.gate is not None and not self.gate(agent):
            return [], 0, None
        now = self._now()
        gate = self.gate

        def take(conn: sqlite3.Connection, mid: int) -> MessageRow | None:
            if gate is not None and not gate(agent):
                # held meanwhile (an emergency stop): nothing taken can be handed back
                # once committed, so the rest stay queued
                return None
            row = conn.execute(
                "UPDATE messages SET state = 'acked', acked_at = ?, attempts = attempts + 1"
                f" WHERE id = ? RETURNING {COLUMNS}, remote_id",
                (now, mid),
            ).fetchone()
            if is_remote(row["sender"]):  # its hive learns it was delivered
                federation_outbox.enqueue_receipt(conn, row["sender"], row["remote_id"], agent, now)
            return message_row(row)

        taken, more, ready_at = await self._store.write(
            partial(self._pick, agent, now, limit, take), durable=False
        )
        for msg in taken:
            self._bus.publish(MessageLeased(message_id=msg.id, agent=agent, attempts=msg.attempts))
            self._bus.publish(MessageAcked(message_id=msg.id, agent=agent))
        if any(is_remote(msg.from_) for msg in taken):
            self.poke_remote()
        return taken, more, ready_at

    @staticmethod
    def _pick(
        agent: str,
        now: float,
        limit: int,
        one: Callable[[sqlite3.Connection, int], T | None],
        conn: sqlite3.Connection,
    ) -> tuple[list[T], int, float | None]:
        """In a write: `one` applied to up to `limit` of `agent`'s queued messages that are
        ready, oldest first (`None` from it ends the run); how many stay queued after them;
        and, when none was ready, when the first one held back (backoff) will be."""
        ids = [
            r[0]
            for r in conn.execute(
                "SELECT id FROM messages WHERE recipient = ? AND state = 'queued'"
                " AND (not_before IS NULL OR not_before <= ?) ORDER BY id LIMIT ?",
                (agent, now, limit),
            )
        ]
        picked: list[T] = []
        for mid in ids:
            got = one(conn, mid)
            if got is None:
                break
            picked.append(got)
        more = conn.execute(
            "SELECT count(*) FROM (SELECT 1 FROM messages"
            " WHERE recipient = ? AND state = 'queued' LIMIT ?)",
            (agent, MORE_CAP),
        ).fetchone()[0]
        ready_at = None
        if not picked and more:
            ready_at = conn.execute(
                "SELECT min(not_before) FROM messages"
                " WHERE recipient = ? AND state = 'queued' AND not_before > ?",
                (agent, now),
            ).fetchone()[0]
        return picked, more, ready_at

    async def _wait_for_inbox(self, changed: trio.Event, ready_at: float | None) -> None:
        """Until the inbox changes, or a backed-off message's time has come."""
        # the time may already have come while the lease was being written
        wait = math.inf if ready_at is None else max(0.0, ready_at - self._now())
        with trio.move_on_after(wait):
            await changed.wait()

    async def recv(
        self, holder: LeaseHolder, limit: int, wait_seconds: float
    ) -> tuple[list[Delivery], int]:
        """Lease up to `limit`, waiting (capped) for the first one if the inbox is empty."""
        return await self._waiting(holder.agent, wait_seconds, lambda: self._lease(holder, limit))

    async def take(
        self, agent: str, limit: int, wait_seconds: float
    ) -> tuple[list[MessageRow], int]:
        """Mark up to `limit` delivered and return them, waiting (capped) for the first one
        if the inbox is empty: `recv` and an `ack` of each, in one transaction."""
        return await self._waiting(agent, wait_seconds, lambda: self._take(agent, limit))

    async def _waiting(
        self,
        agent: str,
        wait_seconds: float,
        attempt: Callable[[], Awaitable[tuple[list[T], int, float | None]]],
    ) -> tuple[list[T], int]:
        deadline = trio.current_time() + min(wait_seconds, self._settings.recv_max_wait_seconds)
        while True:
            changed = self._inbox_changed(agent)
            got, more, ready_at = await attempt()
            if got or trio.current_time() >= deadline:
                return got, more
            with trio.move_on_at(deadline):
                await self._wait_for_inbox(changed, ready_at)

    async def wait_for_work(self, holder: LeaseHolder) -> AsyncIterator[tuple[Delivery, int]]:
        """Yield one leased message at a time, forever; the next only after this one resolves."""
        while True:
            changed = self._inbox_changed(holder.agent)
            deliveries, more, ready_at = await self._lease(holder, 1)
            if not deliveries:
                await self._wait_for_inbox(changed, ready_at)
                continue
            delivery = deliveries[0]
            resolved = holder.leases[delivery.lease]
            yield delivery, more
            await resolved.wait()

    async def ack(self, holder: LeaseHolder, lease: str) -> int:
        """Mark the message under `lease` delivered. Only its recipient can ack it."""
        agent = holder.agent
        now = self._now()

        def write(conn: sqlite3.Connection) -> sqlite3.Row | None:
            row: sqlite3.Row | None = conn.execute(
                "UPDATE messages SET state = 'acked', acked_at = ?, lease = NULL,"
                " lease_expires = NULL WHERE lease = ? AND recipient = ? AND state = 'leased'"
                " RETURNING id, sender, remote_id",
                (now, lease, agent),
            ).fetchone()
            if row is not None and is_remote(row["sender"]):  # its hive learns it was delivered
                federation_outbox.enqueue_receipt(conn, row["sender"], row["remote_id"], agent, now)
            return row

        # durable=False: only a power cut can undo it, and the message then goes out again
        row = await self._store.write(write, durable=False)
        if row is None:
            raise Fail("not_found", "no such lease: already acked, expired, or not yours")
        self._forget(lease)
        self._bus.publish(MessageAcked(message_id=row[0], agent=agent))
        if is_remote(row["sender"]):
            self.poke_remote()
        return int(row[0])

    async def renew(self, holder: LeaseHolder, lease: str) -> float:
        """Push a held lease's expiry `lease_seconds` ahead; return the new expiry."""
        expires = self._now() + self._settings.lease_seconds
        row = await self._store.write(
            lambda c: c.execute(
                "UPDATE messages SET lease_expires = ? WHERE lease = ? AND recipient = ?"
                " AND state = 'leased' RETURNING id",
                (expires, lease, holder.agent),
            ).fetchone()
        )
        if row is None:
            raise Fail("not_found", "no such lease: already acked, expired, or not yours")
        return expires

    def leases_of(self, agent: str) -> list[str]:
        """Every lease `agent` holds now, on any of its connections."""
        return [token for token, holder in self._holders.items() if holder.agent == agent]

    def _forget(self, lease: str) -> None:
        holder = self._holders.pop(lease, None)
        if holder is not None:
            holder.leased_ids.pop(lease, None)
            resolved = holder.leases.pop(lease, None)
            if resolved is not None:
                resolved.set()

    def _requeue_sql(self, failed: bool, reason: str, now: float) -> tuple[str, tuple[object, ...]]:
        """The SET clause that puts a leased message back, and its parameters.

        A failure counts: the message waits `retry_backoff_seconds · 2^(failures-1)` (capped)
        before it is offered again, and at `max_attempts` failures it is `dead`. SQLite
        evaluates every SET expression on the row as it was, so `failures` below is the old
        count.
        """
        if not failed:
            return "state = 'queued', lease = NULL, lease_expires = NULL", ()
        settings = self._settings
        return (
            "lease = NULL, lease_expires = NULL, failures = failures + 1, last_error = ?,"
            " state = CASE WHEN failures + 1 >= ? THEN 'dead' ELSE 'queued' END,"
            " not_before = CASE WHEN failures + 1 >= ? THEN NULL"
            " ELSE ? + min(? * (1 << min(failures, 30)), ?) END",
            (
                reason[:500],
                settings.max_attempts,
                settings.max_attempts,
                now,
                settings.retry_backoff_seconds,
                settings.retry_backoff_max_seconds,
            ),
        )

    async def release(self, leases: Iterable[str], reason: str, failed: bool = True) -> int:
        """Put still-leased messages back in the queue; return how many went back.

        `failed`: their turns failed (see the module docstring), rather than being handed
        back because the daemon or the agent is stopping.
        """
        tokens = list(leases)
        if not tokens:
            return 0
        sets, params = self._requeue_sql(failed, reason, self._now())

        def write(conn: sqlite3.Connection) -> list[sqlite3.Row]:
            out = []
            for token in tokens:
                row = conn.execute(
                    f"UPDATE messages SET {sets} WHERE lease = ? AND state = 'leased'"
                    f" RETURNING {REQUEUED}",
                    (*params, token),
                ).fetchone()
                if row is not None:
                    out.append(row)
            return out

        rows = await self._store.write(write)
        for token in tokens:
            self._forget(token)
        await self._requeued(rows, reason)
        return len(rows)

    async def _requeued(self, rows: list[sqlite3.Row], reason: str) -> None:
        dead = []
        for row in rows:
            if row["state"] == "dead":
                dead.append(row)
                self._bus.publish(
                    MessageDead(
                        message_id=row["id"],
                        agent=row["recipient"],
                        attempts=row["failures"],
                        reason=row["last_error"] or reason,
                    )
                )
                continue
            self._bus.publish(
                MessageRequeued(
                    message_id=row["id"],
                    agent=row["recipient"],
                    attempts=row["attempts"],
                    reason=reason,
                    not_before=row["not_before"],
                )
            )
            self.notify(row["recipient"])
        for row in dead:
            await self.send(
                SYSTEM,
                OPERATOR,
                f"message #{row['id']} from {row['sender']} to {row['recipient']} is dead:"
                f" its turn failed {row['failures']} times (last: {row['last_error'] or reason})."
                f" The messages behind it flow on. `hive ctl retry-message {row['id']}` queues it"
                f" again; `hive ctl drop-message {row['id']}` gives up on it.",
            )

    async def drop_holder(self, holder: LeaseHolder, failed: bool = True) -> None:
        """A connection ended: every lease it still holds goes back to the queue."""
        if holder.leases:
            await self.release(list(holder.leases), "connection closed", failed)

    async def retry_dead(self, message_id: int) -> MessageRow:
        """Queue a dead message again with a fresh count of failures."""
        row = await self._store.write(
            lambda c: c.execute(
                "UPDATE messages SET state = 'queued', failures = 0, not_before = NULL"
                f" WHERE id = ? AND state = 'dead' RETURNING {COLUMNS}",
                (message_id,),
            ).fetchone()
        )
        if row is None:
            raise Fail("not_found", f"no dead message #{message_id}")
        msg = message_row(row)
        self._bus.publish(
            MessageRequeued(
                message_id=msg.id, agent=msg.to, attempts=msg.attempts, reason="operator retry"
            )
        )
        self.notify(msg.to)
        return msg

    async def drop_dead(self, message_id: int) -> None:
        """Give up on a dead message; it stays listed, as `dropped`."""
        row = await self._store.write(
            lambda c: c.execute(
                "UPDATE messages SET state = 'dropped' WHERE id = ? AND state = 'dead'"
                " RETURNING recipient",
                (message_id,),
            ).fetchone()
        )
        if row is None:
            raise Fail("not_found", f"no dead message #{message_id}")
        self._bus.publish(MessageDropped(message_id=message_id, agent=row[0]))

    async def requeue_orphans(self) -> int:
        """At start-up no connection holds a lease: every leased message goes back."""

        def write(conn: sqlite3.Connection) -> int:
            return conn.execute(
                "UPDATE messages SET state = 'queued', lease = NULL, lease_expires = NULL"
                " WHERE state = 'leased'"
            ).rowcount

        return await self._store.write(write)

    async def run_lease_reaper(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Requeue expired leases; sleeps until the earliest expiry or until poked."""
        task_status.started()
        while True:
            self._reaper_poke = trio.Event()
            self._reaper_scanning = True
            now = self._now()

            sets, params = self._requeue_sql(True, "lease expired", now)

            def expire(
                conn: sqlite3.Connection,
                now: float = now,
                sets: str = sets,
                params: tuple[object, ...] = params,
            ) -> tuple[list[sqlite3.Row], float | None]:
                rows = conn.execute(
                    f"UPDATE messages SET {sets} WHERE state = 'leased' AND lease_expires <= ?"
                    f" RETURNING {REQUEUED}",
                    (*params, now),
                ).fetchall()
                nxt = conn.execute(
                    "SELECT min(lease_expires) FROM messages WHERE state = 'leased'"
                ).fetchone()[0]
                return rows, nxt

            # the lease token is gone from the row once requeued: find holders by message id
            expired, next_expiry = await self._store.write_when_space(expire, "lease reaper")
            if expired:
                ids = {row["id"] for row in expired}
                for token, holder in list(self._holders.items()):
                    if holder.leased_ids.get(token) in ids:
                        self._forget(token)
                await self._requeued(expired, "lease expired")
            self._reaper_scanning = False
            if not self._reaper_poke.is_set():  # else it scans again at once
                self._reaper_deadline = next_expiry if next_expiry is not None else math.inf
            delay = next_expiry - self._now() if next_expiry is not None else math.inf
            with trio.move_on_after(max(0.0, delay)):
                await self._reaper_poke.wait()

    # ---------------------------------------------------------------- reading

    async def list_messages(
        self,
        agent: str | None,
        thread: int | None,
        limit: int,
        before: int | None,
        state: str | None = None,
    ) -> list[MessageRow]:
        clauses: list[str] = []
        params: list[object] = []
        if state is not None:
            clauses.append("state = ?")
            params.append(state)
        if agent is not None:
            clauses.append("(sender = ? OR recipient = ?)")
            params += [agent, agent]
        if thread is not None:
            clauses.append("thread = ?")
            params.append(thread)
        if before is not None:
            clauses.append("id < ?")
            params.append(before)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        sql = f"SELECT {COLUMNS} FROM messages {where} ORDER BY id DESC LIMIT ?"
        rows = await self._store.read(lambda c: c.execute(sql, (*params, limit)).fetchall())
        return [message_row(r) for r in rows]
