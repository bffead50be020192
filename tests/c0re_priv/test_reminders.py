"""Reminders as agents and the operator live them: set, fire on time, survive restarts, fail
visibly and get retried, stay private to their owner, and stay within per-agent limits.

Time is trio's `MockClock`: the daemon runs with `now = EPOCH + trio.current_time()`, so its
scheduler sleeps on the same clock the test jumps. The clock autojumps once every task has
been idle for `AUTOJUMP` real seconds rather than at once: with a zero threshold it would
also jump while a task waits for sqlite in a worker thread, i.e. in the middle of a request,
which makes "not yet" observations racy (the reminder would fire during the call that
checks it has not fired).
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import msgspec
import pytest
import trio
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from trio.testing import MockClock

from c0re_priv.config import HiveConfig
from c0re_priv.daemon import run_hive
from c0re_priv.hive import Hive
from c0re_priv.migrations import MIGRATIONS, migrate
from c0re_priv.rate_limit import Rate, TokenBucket
from c0re_priv.reminders import STATEMENT_REMINDERS, deliver_due
from protocol import messages as m
from protocol.client import HiveClient, HiveError, SyncClient
from tests.conftest import DaemonProcess, make_config, paths_in

EPOCH = 1_700_000_000.0
AUTOJUMP = 0.2
FIXTURE_DB = Path(__file__).resolve().parent.parent / "fixtures" / "hive-v3.sqlite"


def mock_now() -> float:
    """The hive's clock on trio's mock clock; also from the store's worker threads (the
    budgets read the clock there, as they may with the real one)."""
    try:
        return EPOCH + trio.current_time()
    except RuntimeError:
        return EPOCH + trio.from_thread.run_sync(trio.current_time)


@pytest.fixture
def clock() -> MockClock:
    """pytest-trio runs a test that takes this fixture on this clock."""
    return MockClock(autojump_threshold=AUTOJUMP)


@asynccontextmanager
async def daemon(root: Path, config: HiveConfig) -> AsyncIterator[Hive]:
    """A real daemon on `root` for the block; leaving the block shuts it down cleanly."""
    # the clock jumps hours while the test's clients wait between calls: connections idle
    # that long in mock time must not be closed under them
    config.hive.idle_timeout_seconds = 1e9
    async with trio.open_nursery() as nursery:
        hive = await nursery.start(
            partial(run_hive, config, paths_in(root, config), handle_signals=False, now=mock_now)
        )
        try:
            yield hive
        finally:
            nursery.cancel_scope.cancel()


@asynccontextmanager
async def agent(hive: Hive, name: str) -> AsyncIterator[HiveClient]:
    async with HiveClient.connect(str(hive.paths.agent_sock(name)), client=f"test-{name}") as c:
        yield c


@asynccontextmanager
async def admin_of(hive: Hive) -> AsyncIterator[HiveClient]:
    async with HiveClient.connect(str(hive.paths.admin_sock), client="test-admin") as c:
        yield c


async def next_delivery(client: HiveClient) -> m.Delivery:
    """Block (in mock time) until the next message is leased to this agent."""
    async with client.stream(m.WaitForWork()) as work:
        frame = await anext(work)
    assert isinstance(frame, m.Work)
    return frame.delivery


async def inbox(client: HiveClient) -> list[m.MessageRow]:
    """Lease and ack whatever is queued right now."""
    got = await client.expect(m.Recv(max=100), m.Deliveries)
    for d in got.items:
        await client.expect(m.Ack(lease=d.lease), m.Ok)
    return [d.message for d in got.items]


async def remind(client: HiveClient, body: str = "x", **when: float) -> m.ReminderRow:
    return (await client.expect(m.Remind(body=body, **when), m.Reminded)).reminder


async def refused(client: HiveClient, req: m.Request) -> HiveError:
    with pytest.raises(HiveError) as err:
        await client.call(req)
    return err.value


async def reminders_of(admin: HiveClient, **filters: object) -> list[m.ReminderRow]:
    return (await admin.expect(m.ListReminders(**filters), m.Reminders)).reminders  # type: ignore[arg-type]


def messages_per_reminder(db: Path) -> dict[int, int]:
    with sqlite3.connect(db) as conn:
        return dict(
            conn.execute(
                "SELECT reminder_id, count(*) FROM messages"
                " WHERE reminder_id IS NOT NULL GROUP BY reminder_id"
            ).fetchall()
        )


# ------------------------------------------------------------------ firing on time


async def test_a_reminder_fires_at_its_time_not_before(clock, short_tmp):
    config = make_config(agents={"alice": {}})
    async with daemon(short_tmp, config) as hive, agent(hive, "alice") as alice:
        start = mock_now()
        r = await remind(alice, "check the nightly build", in_seconds=3600)
        assert (r.owner, r.state, r.due_at, r.attempt_count) == (
            "alice",
            "pending",
            start + 3600,
            0,
        )
        assert await inbox(alice) == []
        await trio.sleep(3599)
        assert await inbox(alice) == []
        (mine,) = (await alice.expect(m.ListMyReminders(), m.Reminders)).reminders
        assert (mine.id, mine.state) == (r.id, "pending")

        delivery = await next_delivery(alice)
        msg = delivery.message
        assert mock_now() >= r.due_at
        assert (msg.kind, msg.from_, msg.to, msg.reminder_id) == (
            "reminder",
            "system",
            "alice",
            r.id,
        )
        assert msg.body == f"Reminder #{r.id}: check the nightly build"
        assert r.due_at <= msg.created_at < r.due_at + 0.001
        # answering the reminder's sender is a clear refusal that says what to do instead
        err = await refused(alice, m.Send(to=msg.from_, body="done", in_reply_to=msg.id))
        assert err.code == "invalid" and "set a reminder" in err.message, err
        await alice.expect(m.Ack(lease=delivery.lease), m.Ok)

        assert (await alice.expect(m.ListMyReminders(), m.Reminders)).reminders == []
        async with admin_of(hive) as admin:
            (done,) = await reminders_of(admin, agent="alice")
            assert (done.state, done.message_id, done.attempt_count) == ("delivered", msg.id, 1)
            assert done.delivered_at == msg.created_at
            (row,) = [a for a in (await admin.expect(m.ListAgents(), m.Agents)).agents]
            assert (row.reminders_pending, row.reminders_delivered) == (0, 1)


async def test_reminders_fire_in_due_order_and_an_earlier_one_wakes_the_scheduler(clock, short_tmp):
    config = make_config(agents={"alice": {}})
    async with daemon(short_tmp, config) as hive, agent(hive, "alice") as alice:
        late = await remind(alice, "late", in_seconds=7200)
        soon = await remind(alice, "soon", in_seconds=60)  # added while the scheduler sleeps
        past = await remind(alice, "past", at=EPOCH - 10)  # a time in the past is due at once
        order = []
        for _ in range(3):
            d = await next_delivery(alice)
            order.append((d.message.reminder_id, d.message.created_at))
            await alice.expect(m.Ack(lease=d.lease), m.Ok)
        assert [rid for rid, _ in order] == [past.id, soon.id, late.id]
        assert order[1][1] == soon.due_at and order[2][1] == late.due_at


async def test_a_reminder_survives_a_daemon_restart(clock, short_tmp):
    config = make_config(agents={"alice": {}})
    async with daemon(short_tmp, config) as hive, agent(hive, "alice") as alice:
        during = await remind(alice, "due while the daemon is down", in_seconds=600)
        after = await remind(alice, "due after the restart", in_seconds=3600)
    await trio.sleep(1200)  # no daemon: nothing can fire
    async with daemon(short_tmp, config) as hive, agent(hive, "alice") as alice:
        restarted_at = mock_now()
        first = await next_delivery(alice)
        assert first.message.reminder_id == during.id
        assert first.message.created_at == restarted_at  # delivered on start, not before
        await alice.expect(m.Ack(lease=first.lease), m.Ok)
        second = await next_delivery(alice)
        assert second.message.reminder_id == after.id
        assert second.message.created_at == after.due_at
        await alice.expect(m.Ack(lease=second.lease), m.Ok)
    assert messages_per_reminder(paths_in(short_tmp, config).db) == {during.id: 1, after.id: 1}


async def test_shutdown_mid_burst_leaves_nothing_half_delivered(clock, short_tmp):
    count = 300
    config = make_config(
        reminder_batch=20,
        agents={"alice": {"reminder_burst": count, "reminder_max_pending": count}},
    )
    db = paths_in(short_tmp, config).db
    async with daemon(short_tmp, config) as hive, agent(hive, "alice") as alice:
        ids = [(await remind(alice, f"r{n}", at=EPOCH + 100)).id for n in range(count)]
        async with (
            admin_of(hive) as admin,
            admin.stream(m.Subscribe(kinds=["reminder_delivered"])) as events,
        ):
            await anext(events)  # Subscribed
            await anext(events)  # the first delivery: the burst has begun; stop now
    with sqlite3.connect(db) as conn:
        states = dict(conn.execute("SELECT id, state FROM reminders").fetchall())
    delivered = {rid for rid, state in states.items() if state == "delivered"}
    assert 0 < len(delivered) < count, "the shutdown did not land mid-burst"
    assert messages_per_reminder(db) == dict.fromkeys(delivered, 1)

    async with daemon(short_tmp, config) as hive, agent(hive, "alice") as alice:
        received: list[int | None] = []
        while len(received) < count:
            first = await next_delivery(alice)
            rest = (await alice.expect(m.Recv(max=100), m.Deliveries)).items
            for d in [first, *rest]:
                received.append(d.message.reminder_id)
                await alice.expect(m.Ack(lease=d.lease), m.Ok)
    assert sorted(received) == ids  # every one, once, across the restart
    assert messages_per_reminder(db) == dict.fromkeys(ids, 1)


def _due_reminders(tmp_path: Path, count: int) -> sqlite3.Connection:
    conn = sqlite3.connect(tmp_path / "db.sqlite", isolation_level=None)
    conn.row_factory = sqlite3.Row
    migrate(conn)
    conn.execute(
        "INSERT INTO agents (name, role, created_at, started_at) VALUES ('a', 'agent', 0, 0)"
    )
    for n in range(count):
        conn.execute(
            "INSERT INTO reminders (owner, body, due_at, created_at, next_attempt_at)"
            " VALUES ('a', ?, 10, 0, 10)",
            (f"r{n}",),
        )
    return conn


def test_a_chunk_ends_when_its_time_is_up_and_the_rest_stay_due(tmp_path: Path):
    """`reminder_chunk_ms` bounds a tick by time: with no time to spare each tick delivers
    one statement's group (never none), says the rest are still due, and none is delivered
    twice."""
    group = STATEMENT_REMINDERS
    conn = _due_reminders(tmp_path, 2 * group + 3)
    tick = partial(deliver_due, now=20.0, limit=64, max_attempts=5, retry_seconds=30)
    delivered = []
    for size, more in ((group, True), (group, True), (3, False)):
        got = tick(conn, budget_seconds=1e-9)
        assert len(got.delivered) == size
        assert got.next_due <= 20.0 if more else got.next_due == math.inf
        delivered += [msg.reminder_id for msg in got.delivered]
    assert sorted(delivered) == list(range(1, 2 * group + 4))
    assert tick(conn, budget_seconds=1e-9).delivered == []
    conn.close()


def test_a_group_with_a_removed_owner_delivers_the_rest_and_retries_that_one(tmp_path: Path):
    """One statement's group mixes owners: the registered ones' reminders are delivered, the
    one whose owner is gone records a failed attempt and is due again after the backoff."""
    conn = _due_reminders(tmp_path, 3)
    conn.execute("UPDATE reminders SET owner = 'gone' WHERE id = 2")
    got = deliver_due(conn, now=20.0, limit=64, max_attempts=5, retry_seconds=30)
    assert [msg.reminder_id for msg in got.delivered] == [1, 3]
    assert [(r.id, r.state, r.attempt_count, r.next_attempt_at) for r in got.failed] == [
        (2, "pending", 1, 50.0)
    ]
    assert got.failed[0].last_error == "owner 'gone' is not a registered agent"
    assert got.next_due == 50.0
    assert deliver_due(conn, now=20.0, limit=64, max_attempts=5, retry_seconds=30).failed == []
    conn.close()


def test_a_chunk_gives_way_to_a_waiting_write_after_one_group(tmp_path: Path):
    """A write queued behind a chunk ends it at the next group: the chunk that had a whole
    second to spare delivers one group, and the next tick (nobody waiting) the rest."""
    conn = _due_reminders(tmp_path, 3 * STATEMENT_REMINDERS)
    tick = partial(deliver_due, now=20.0, limit=64, max_attempts=5, retry_seconds=30)
    asked = []

    def waiting() -> bool:
        asked.append(True)
        return True

    first = tick(conn, budget_seconds=1.0, writes_waiting=waiting)
    assert len(first.delivered) == STATEMENT_REMINDERS
    assert asked == [True]  # asked once, between the first group and the second
    rest = tick(conn, budget_seconds=1.0, writes_waiting=lambda: False)
    assert len(rest.delivered) == 2 * STATEMENT_REMINDERS
    assert rest.next_due == math.inf
    rows = conn.execute(
        "SELECT m.id, m.thread, m.sender, m.recipient, m.body, m.kind, m.state, r.id AS rid,"
        " r.state AS rstate, r.message_id, r.attempt_count, r.body AS rbody"
        " FROM reminders r JOIN messages m ON m.reminder_id = r.id"
    ).fetchall()
    assert len(rows) == 3 * STATEMENT_REMINDERS
    for r in rows:
        assert (r["thread"], r["sender"], r["recipient"], r["kind"], r["state"]) == (
            r["id"],
            "system",
            "a",
            "reminder",
            "queued",
        )
        assert r["body"] == f"Reminder #{r['rid']}: {r['rbody']}"
        assert (r["rstate"], r["message_id"], r["attempt_count"]) == ("delivered", r["id"], 1)
    returned = {msg.id: msg for msg in first.delivered + rest.delivered}
    assert {msg.thread for msg in returned.values()} == set(returned)
    conn.close()


# ------------------------------------------------------------------ limits


def test_a_token_bucket_bursts_then_refills_and_never_exceeds_its_burst():
    bucket = TokenBucket(Rate(burst=3, per_second=0.5), tokens=3, updated=100.0)
    assert [bucket.take(100.0) for _ in range(3)] == [None, None, None]
    assert bucket.take(100.0) == pytest.approx(2.0)
    assert bucket.take(101.0) == pytest.approx(1.0)
    assert bucket.take(102.0) is None
    assert bucket.take(50.0) == pytest.approx(2.0)  # a clock stepping back refills nothing
    assert [bucket.take(1000.0) for _ in range(4)][-1] == pytest.approx(2.0)


async def test_rate_limit_bursts_then_refills_per_agent_independently(clock, short_tmp):
    config = make_config(
        reminder_burst=3,
        reminder_refill_per_minute=60,  # one a second
        agents={"alice": {"reminder_burst": 5, "reminder_refill_per_minute": 30}, "bob": {}},
    )
    far = {"in_seconds": 10**6}
    async with (
        daemon(short_tmp, config) as hive,
        agent(hive, "alice") as alice,
        agent(hive, "bob") as bob,
    ):
        for _ in range(5):
            await remind(alice, **far)
        err = await refused(alice, m.Remind(body="x", **far))
        assert err.code == "rate_limited" and err.retry_after_seconds == pytest.approx(2.0)

        for _ in range(3):  # alice's empty bucket is not bob's
            await remind(bob, **far)
        err = await refused(bob, m.Remind(body="x", **far))
        assert err.code == "rate_limited" and err.retry_after_seconds == pytest.approx(1.0)

        await trio.sleep(1.0)
        assert (await refused(alice, m.Remind(body="x", **far))).retry_after_seconds == (
            pytest.approx(1.0)
        )
        await remind(bob, **far)
        await trio.sleep(1.0)
        await remind(alice, **far)
        assert (await refused(alice, m.Remind(body="x", **far))).code == "rate_limited"

        await trio.sleep(600)  # a long pause refills up to the burst, not beyond
        for _ in range(5):
            await remind(alice, **far)
        assert (await refused(alice, m.Remind(body="x", **far))).code == "rate_limited"


async def test_pending_reminders_are_capped_per_agent(clock, short_tmp):
    config = make_config(
        reminder_max_pending=3, agents={"alice": {}, "bob": {"reminder_max_pending": 1}}
    )
    async with (
        daemon(short_tmp, config) as hive,
        agent(hive, "alice") as alice,
        agent(hive, "bob") as bob,
    ):
        soon = await remind(alice, in_seconds=60)
        await remind(alice, in_seconds=120)
        later = await remind(alice, in_seconds=180)
        err = await refused(alice, m.Remind(body="x", in_seconds=10))
        assert err.code == "rate_limited" and "cap" in err.message
        assert err.retry_after_seconds == pytest.approx(60)  # when the soonest one frees a slot
        await remind(bob, in_seconds=10)
        assert (await refused(bob, m.Remind(body="x", in_seconds=10))).code == "rate_limited"

        await alice.expect(m.CancelReminder(id=later.id), m.Ok)
        await remind(alice, in_seconds=240)
        assert (await refused(alice, m.Remind(body="x", in_seconds=10))).code == "rate_limited"
        delivery = await next_delivery(alice)  # a delivered reminder no longer counts
        assert delivery.message.reminder_id == soon.id
        await remind(alice, in_seconds=300)


async def test_remind_needs_exactly_one_time(hive):
    async with agent(hive, "alice") as alice:
        for req in (
            m.Remind(body="x"),
            m.Remind(body="x", at=EPOCH + 1, in_seconds=1),
        ):
            assert (await refused(alice, req)).code == "invalid"
        async with admin_of(hive) as admin:
            assert await reminders_of(admin) == []


# ------------------------------------------------------------------ oversize bodies


async def test_an_oversize_body_is_attached_like_a_message_body(clock, short_tmp):
    config = make_config(agents={"alice": {}})
    body = "context for later\n" * 300
    async with daemon(short_tmp, config) as hive, agent(hive, "alice") as alice:
        reminded = await alice.expect(m.Remind(body=body, in_seconds=5), m.Reminded)
        (path,) = sorted((hive.paths.agent_state("alice") / "auto-msg").glob("*.md"))
        assert reminded.body_file == str(path) and path.read_text() == body
        assert reminded.reminder.body.endswith(f"— full body at {path}")
        delivery = await next_delivery(alice)
        assert (
            delivery.message.body == f"Reminder #{reminded.reminder.id}: {reminded.reminder.body}"
        )
        assert len(delivery.message.body.encode()) < 1024


async def test_the_body_cap_refuses_a_symlinked_attachment_dir_for_reminders_too(hive, short_tmp):
    outside = short_tmp / "outside"
    outside.mkdir()
    (hive.paths.agent_state("alice") / "auto-msg").symlink_to(outside)
    async with agent(hive, "alice") as alice:
        err = await refused(alice, m.Remind(body="y" * 4096, in_seconds=5))
        assert err.code == "invalid" and "symlink" in err.message
        assert (await alice.expect(m.ListMyReminders(), m.Reminders)).reminders == []
    assert list(outside.iterdir()) == []


# ------------------------------------------------------------------ failures and retry


async def test_a_failed_delivery_is_recorded_and_retry_brings_it_back(clock, short_tmp):
    config = make_config(
        reminder_max_attempts=3, reminder_retry_seconds=10, agents={"alice": {}, "bob": {}}
    )
    async with daemon(short_tmp, config) as hive, admin_of(hive) as admin:
        async with agent(hive, "alice") as alice:
            r = await remind(alice, "water the plants", in_seconds=60)
        await admin.expect(m.RemoveAgent(name="alice"), m.Ok)
        failures = []
        async with admin.stream(m.Subscribe(kinds=["reminder_failed"])) as events:
            await anext(events)
            while len(failures) < 3:
                frame = await anext(events)
                assert isinstance(frame, m.EventFrame)
                assert isinstance(frame.event, m.ReminderFailed)
                failures.append((mock_now(), frame.event))
        assert [(e.reminder_id, e.attempt_count) for _, e in failures] == [
            (r.id, n) for n in (1, 2, 3)
        ]
        # backoff: the first retry 10 s after the due time, the next 20 s after that; then give up
        assert [at - r.due_at for at, _ in failures] == pytest.approx([0, 10, 30], abs=0.01)
        assert [e.retry_at is None for _, e in failures] == [False, False, True]
        assert "'alice'" in failures[0][1].error

        (failed,) = await reminders_of(admin, state="failed")
        assert (failed.id, failed.attempt_count, failed.message_id) == (r.id, 3, None)
        assert failed.last_error == failures[0][1].error
        assert messages_per_reminder(hive.paths.db) == {}

        await admin.expect(m.AddAgent(name="alice"), m.AgentInfo)
        rows = {a.name: a for a in (await admin.expect(m.ListAgents(), m.Agents)).agents}
        assert (rows["alice"].reminders_failed, rows["alice"].reminders_pending) == (1, 0)
        again = (await admin.expect(m.RetryReminder(id=r.id), m.ReminderInfo)).reminder
        assert (again.state, again.attempt_count) == ("pending", 0)
        async with agent(hive, "alice") as alice:
            delivery = await next_delivery(alice)
            assert delivery.message.reminder_id == r.id
            await alice.expect(m.Ack(lease=delivery.lease), m.Ok)
        (done,) = await reminders_of(admin, agent="alice")
        assert (done.state, done.attempt_count, done.message_id) == (
            "delivered",
            1,
            delivery.message.id,
        )
        assert done.last_error == failed.last_error  # the history stays visible
        rows = {a.name: a for a in (await admin.expect(m.ListAgents(), m.Agents)).agents}
        assert (rows["alice"].reminders_failed, rows["alice"].reminders_delivered) == (0, 1)

        assert (await refused(admin, m.RetryReminder(id=r.id))).code == "conflict"
        assert (await refused(admin, m.RetryReminder(id=9999))).code == "not_found"


# ------------------------------------------------------------------ self-management


async def test_agents_list_and_cancel_only_their_own_reminders(hive):
    async with agent(hive, "alice") as alice, agent(hive, "bob") as bob:
        a1 = await remind(alice, "alice one", in_seconds=600)
        a2 = await remind(alice, "alice two", in_seconds=60)
        b1 = await remind(bob, "bob one", in_seconds=600)
        mine = (await alice.expect(m.ListMyReminders(), m.Reminders)).reminders
        assert [r.id for r in mine] == [a2.id, a1.id]  # soonest first
        assert [r.id for r in (await bob.expect(m.ListMyReminders(), m.Reminders)).reminders] == [
            b1.id
        ]
        err = await refused(bob, m.CancelReminder(id=a1.id))
        assert err.code == "not_found"  # not forbidden: no probing of other agents' ids
        assert (await refused(bob, m.CancelReminder(id=424242))).code == "not_found"
        await alice.expect(m.CancelReminder(id=a1.id), m.Ok)
        assert (await refused(alice, m.CancelReminder(id=a1.id))).code == "conflict"
        assert [r.id for r in (await alice.expect(m.ListMyReminders(), m.Reminders)).reminders] == [
            a2.id
        ]
        for verb in (m.ListReminders(), m.RetryReminder(id=a1.id)):
            assert (await refused(alice, verb)).code == "forbidden"


async def test_the_operator_lists_reminders_by_agent_and_state_from_web_and_admin(hive):
    async with agent(hive, "alice") as alice, agent(hive, "bob") as bob:
        a1 = await remind(alice, in_seconds=600)
        b1 = await remind(bob, in_seconds=600)
        await bob.expect(m.CancelReminder(id=b1.id), m.Ok)
    for sock in (hive.paths.web_sock, hive.paths.admin_sock):
        async with HiveClient.connect(str(sock)) as op:
            assert [r.id for r in await reminders_of(op)] == [b1.id, a1.id]  # newest first
            assert [r.id for r in await reminders_of(op, agent="alice")] == [a1.id]
            assert [r.id for r in await reminders_of(op, state="cancelled")] == [b1.id]
            assert [r.id for r in await reminders_of(op, limit=1)] == [b1.id]


async def test_every_change_is_an_event(clock, short_tmp):
    config = make_config(agents={"alice": {}})
    kinds = ["reminder_scheduled", "reminder_delivered", "reminder_cancelled"]
    async with (
        daemon(short_tmp, config) as hive,
        admin_of(hive) as admin,
        agent(hive, "alice") as alice,
        admin.stream(m.Subscribe(kinds=kinds)) as events,
    ):
        await anext(events)
        kept = await remind(alice, in_seconds=30)
        dropped = await remind(alice, in_seconds=60)
        await alice.expect(m.CancelReminder(id=dropped.id), m.Ok)
        delivery = await next_delivery(alice)
        seen = []
        for _ in range(4):
            frame = await anext(events)
            assert isinstance(frame, m.EventFrame)
            seen.append(frame.event)
    assert [type(e).__name__ for e in seen] == [
        "ReminderScheduled",
        "ReminderScheduled",
        "ReminderCancelled",
        "ReminderDelivered",
    ]
    assert isinstance(seen[0], m.ReminderScheduled) and seen[0].reminder == kept
    assert isinstance(seen[3], m.ReminderDelivered)
    assert (seen[3].reminder_id, seen[3].owner, seen[3].message_id) == (
        kept.id,
        "alice",
        delivery.message.id,
    )


# ------------------------------------------------------------------ migration


def test_a_database_from_before_delivery_errors_upgrades_in_place_and_keeps_its_rows(short_tmp):
    db = short_tmp / "hive.sqlite"
    shutil.copy(FIXTURE_DB, db)
    conn = sqlite3.connect(db, isolation_level=None)
    conn.row_factory = sqlite3.Row
    try:

        def columns() -> set[str]:
            return {r["name"] for r in conn.execute("PRAGMA table_info(reminders)")}

        def rows() -> list[tuple[object, ...]]:
            return [
                tuple(r)
                for r in conn.execute(
                    "SELECT id, owner, body, due_at, state, created_at, delivered_at, message_id"
                    " FROM reminders ORDER BY id"
                )
            ]

        before = rows()
        assert len(before) == 4 and not {"last_error", "attempt_count"} & columns()
        applied = migrate(conn)
        assert applied and min(applied) == 4
        assert {"last_error", "attempt_count", "next_attempt_at"} <= columns()
        assert rows() == before
        upgraded = {
            r["id"]: (r["attempt_count"], r["last_error"], r["next_attempt_at"])
            for r in conn.execute("SELECT * FROM reminders")
        }
        assert upgraded == {
            1: (0, None, None),
            2: (0, None, before[1][3]),  # pending: next attempt at its due time
            3: (0, None, before[2][3]),
            4: (0, None, None),
        }
        assert conn.execute("SELECT count(*) FROM messages").fetchone()[0] == 2

        assert migrate(conn) == []  # twice is harmless
        (step,) = [fn for number, _, fn in MIGRATIONS if number == 4]
        migrate(conn, [(4, "again", step)])  # already recorded: skipped
        conn.execute("DELETE FROM _migrations WHERE number = 4")  # as if it crashed before
        assert migrate(conn, [(4, "again", step)]) == [4]  # its bookkeeping row: reapplied
        assert rows() == before
        assert {
            r["id"]: (r["attempt_count"], r["last_error"], r["next_attempt_at"])
            for r in conn.execute("SELECT * FROM reminders")
        } == upgraded
    finally:
        conn.close()


async def test_a_daemon_started_on_the_old_database_delivers_its_due_reminders(clock, short_tmp):
    config = make_config(agents={"alice": {}, "bob": {}})
    paths = paths_in(short_tmp, config)
    paths.state_dir.mkdir(parents=True)
    shutil.copy(FIXTURE_DB, paths.db)
    async with daemon(short_tmp, config) as hive, admin_of(hive) as admin:
        async with agent(hive, "alice") as alice:
            delivery = await next_delivery(alice)
        assert delivery.message.reminder_id == 2
        assert delivery.message.body == "Reminder #2: rerun the soak test"
        states = {r.id: r.state for r in await reminders_of(admin)}
        assert states == {1: "delivered", 2: "delivered", 3: "pending", 4: "cancelled"}
        old = (await admin.expect(m.ListMessages(agent="alice"), m.Messages)).messages
        assert [r.body for r in old][-1] == "hello from before the upgrade"


# ------------------------------------------------------------------ command line


def test_hive_ctl_reminders_and_retry_reminder(daemon_process: DaemonProcess):
    paths = daemon_process.paths
    with SyncClient.connect(str(paths.agent_sock("alice"))) as alice:
        r = alice.expect(m.Remind(body="ship it", in_seconds=3600), m.Reminded).reminder

    def ctl(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "c0re_priv", "ctl", *args, "--run-dir", str(paths.run_dir)],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )

    out = ctl("reminders", "--agent", "alice", "--json")
    assert out.returncode == 0, out.stderr
    (row,) = msgspec.json.decode(out.stdout, type=list[m.ReminderRow])
    assert (row.id, row.owner, row.state, row.body) == (r.id, "alice", "pending", "ship it")
    table = ctl("reminders", "--state", "pending")
    assert table.returncode == 0 and "ship it" in table.stdout and "in 59m" in table.stdout
    bad = ctl("reminders", "--state", "lost")
    assert bad.returncode == 1 and "invalid filter" in bad.stderr
    not_failed = ctl("retry-reminder", str(r.id))
    assert not_failed.returncode == 1 and "not failed" in not_failed.stderr


# ------------------------------------------------------------------ ownership, fuzzed

OWNERS = ["ann", "ben", "cat"]


@dataclass
class World:
    """What the daemon holds, as the examples saw it; one daemon serves every example."""

    owner: dict[int, str] = field(default_factory=dict)
    cancelled: set[int] = field(default_factory=set)
    received: set[int] = field(default_factory=set)


class OwnershipMachine(RuleBasedStateMachine):
    """Any interleaving of remind, list, cancel (of anyone's id), receive and restart.

    Invariants: an agent lists only its own reminders, cancels only its own (anyone else's
    id is `not_found` and leaves it untouched), and receives only its own, each once; a
    reminder it cancelled never arrives. Real time, one daemon process for every example.
    """

    def __init__(self, daemon: DaemonProcess, world: World) -> None:
        super().__init__()
        self.daemon = daemon
        self.world = world
        self.stacks: dict[str, contextlib.ExitStack] = {}
        self.clients: dict[str, SyncClient] = {}
        self.restarted = False

    def client(self, name: str) -> SyncClient:
        if name not in self.clients:
            stack = contextlib.ExitStack()
            self.clients[name] = stack.enter_context(
                SyncClient.connect(str(self.daemon.paths.agent_sock(name)), timeout=10)
            )
            self.stacks[name] = stack
        return self.clients[name]

    def drop_all(self) -> None:
        for stack in self.stacks.values():
            stack.close()
        self.stacks.clear()
        self.clients.clear()

    @rule(name=st.sampled_from(OWNERS), delay=st.sampled_from([0.0, 0.05, 0.3, 3600.0]))
    def remind(self, name: str, delay: float) -> None:
        r = self.client(name).expect(m.Remind(body=name, in_seconds=delay), m.Reminded).reminder
        assert r.owner == name and r.id not in self.world.owner
        self.world.owner[r.id] = name

    @rule(name=st.sampled_from(OWNERS))
    def list_mine(self, name: str) -> None:
        rows = self.client(name).expect(m.ListMyReminders(), m.Reminders).reminders
        for r in rows:
            assert r.owner == name and self.world.owner.get(r.id) == name, f"{name} sees #{r.id}"
            assert r.id not in self.world.cancelled

    @rule(name=st.sampled_from(OWNERS), pick=st.integers(0, 10_000), known=st.booleans())
    def cancel(self, name: str, pick: int, known: bool) -> None:
        # an id some agent really holds (often another's), or any number at all
        ids = sorted(self.world.owner)
        rid = ids[pick % len(ids)] if known and ids else pick + 1
        try:
            self.client(name).expect(m.CancelReminder(id=rid), m.Ok)
        except HiveError as exc:
            if self.world.owner.get(rid) == name:
                assert exc.code == "conflict"  # already delivered or cancelled
            else:
                assert exc.code == "not_found", f"{name} probed #{rid}: {exc.code}"
            return
        assert self.world.owner.get(rid) == name, f"{name} cancelled someone else's #{rid}"
        self.world.cancelled.add(rid)

    @rule(name=st.sampled_from(OWNERS))
    def receive(self, name: str) -> None:
        client = self.client(name)
        got = client.expect(m.Recv(max=100), m.Deliveries)
        for d in got.items:
            rid = d.message.reminder_id
            assert d.message.kind == "reminder" and rid is not None
            assert self.world.owner.get(rid) == name, f"{name} received #{rid}"
            assert rid not in self.world.cancelled and rid not in self.world.received
            client.expect(m.Ack(lease=d.lease), m.Ok)
            self.world.received.add(rid)

    @precondition(lambda self: not self.restarted)
    @rule()
    def restart_daemon(self) -> None:
        self.restarted = True
        self.drop_all()
        assert self.daemon.stop() == 0
        self.daemon.start()

    @invariant()
    def the_operator_sees_each_owner_and_no_foreign_cancellation(self) -> None:
        with SyncClient.connect(str(self.daemon.paths.admin_sock)) as admin:
            rows = admin.expect(m.ListReminders(limit=1000), m.Reminders).reminders
        for r in rows:
            assert r.owner == self.world.owner[r.id]
            assert (r.state == "cancelled") == (r.id in self.world.cancelled)

    def teardown(self) -> None:
        try:
            time.sleep(0.4)  # every short one is due by now
            for name in OWNERS:
                self.receive(name)
            with sqlite3.connect(self.daemon.paths.db) as db:
                pending = {
                    r for (r,) in db.execute("SELECT id FROM reminders WHERE state = 'pending'")
                }
            world = self.world
            assert world.received == set(world.owner) - world.cancelled - pending
        finally:
            self.drop_all()


def test_no_sequence_of_calls_crosses_reminder_ownership(short_tmp: Path) -> None:
    config_file = short_tmp / "hive.toml"
    config_file.write_text(
        "[hive]\nautostart = false\nreminder_burst = 100000\nreminder_max_pending = 100000\n"
        + "".join(f"[agents.{name}]\n" for name in OWNERS)
    )
    daemon = DaemonProcess(short_tmp, config_file)
    daemon.start()
    world = World()
    try:
        run_state_machine_as_test(
            lambda: OwnershipMachine(daemon, world),
            settings=settings(
                max_examples=int(os.environ.get("HIVE_MODEL_EXAMPLES", "10")),
                stateful_step_count=25,
                deadline=None,
                suppress_health_check=[HealthCheck.too_slow],
            ),
        )
    finally:
        if daemon.proc is not None and daemon.proc.poll() is None:
            daemon.proc.kill()
            daemon.proc.wait(10)
