"""The dashboard's cold load: one consistent picture of the hive and the event seq it matches.

The seq is read first, before any table, so a client that follows with
`Subscribe{since_seq=seq}` misses nothing: every change after that point comes as an event,
and a change that raced into the snapshot is simply applied twice (every event the dashboard
applies is idempotent). Reads only; one sweep per call, no cache.
"""

from __future__ import annotations

import sqlite3
import time
from typing import TYPE_CHECKING

import trio

from protocol import messages as m

from . import inbox, meta_inputs, open_threads, tombstones

if TYPE_CHECKING:
    from .hive import Hive

FAILED_REMINDERS = 100
DEAD_MESSAGES = 100
OPEN_QUESTIONS = 200
INBOX_ITEMS = 200


async def take(hive: Hive, agent: str | None, messages: int) -> m.HiveState:
    seq = hive.bus.seq
    if agent is not None:
        hive.registry.get(agent)
    now = time.time()
    names = hive.registry.names()

    def thread_counts(conn: sqlite3.Connection) -> dict[str, int]:
        return {name: open_threads.count_for_agent(conn, name) for name in names}

    agents = await hive.registry.rows()
    counts = await hive.store.read(thread_counts)
    questions = await hive.questions.list("operator", include_closed=False)
    recent = await hive.broker.list_messages(agent, None, messages, None) if messages > 0 else []
    failed = await hive.reminders.list(None, "failed", FAILED_REMINDERS)
    dead = await hive.broker.list_messages(agent, None, DEAD_MESSAGES, None, "dead")
    threads: list[m.OpenThread] = []
    if agent is not None:
        focus = agent
        threads, _ = await hive.store.read(lambda conn: open_threads.for_agent(conn, focus, now))
    approvals = await hive.approvals.for_dashboard()
    graves = await trio.to_thread.run_sync(tombstones.list_all, hive.paths.state_dir)
    inputs, inputs_note = await meta_inputs.list_inputs(hive.configs, hive.settings)
    open_questions = await hive.questions.list(None, include_closed=False)
    open_questions = sorted(open_questions[-OPEN_QUESTIONS:], key=lambda q: q.id)
    needs_you, _ = await inbox.collect(hive, INBOX_ITEMS, agents, questions)
    usage = await hive.store.read(hive.budgets.usage_rows)
    federation, remote = None, []
    if hive.federation is not None:
        federation = await hive.federation.row()
        remote = await hive.federation.remote_agents()
    return m.HiveState(
        seq=seq,
        rev=hive.rev,
        server_time=now,
        agents=agents,
        open_threads=counts,
        questions=questions,
        messages=recent,
        failed_reminders=failed,
        threads=threads,
        approvals=approvals,
        tombstones=graves,
        meta_inputs=inputs,
        meta_inputs_note=inputs_note,
        meta_inputs_updatable=meta_inputs.unavailable(hive.configs, hive.settings) is None,
        dead_messages=dead,
        federation=federation,
        remote_agents=remote,
        estop=hive.estop.row,
        inbox=needs_you,
        open_questions=open_questions,
        usage=usage,
    )
