"""Stale questions: a question nobody answers is raised again, then escalated, before it expires.

Every `question_stale_seconds` an open question waits, it climbs one step of its chain: first
it is raised again to its own target (a fresh `question` message), then escalated to a
manager, then to the operator. Each one it reaches may answer it (`Questions.answer`), and
the asker is told each time by a `system` message. The chain skips what makes no sense: a
question to a manager goes from it straight to the operator, one the manager asked never
comes back to the manager, and one to the operator is only raised again (nobody is above).
A question with a TTL climbs faster when it must: step k of n happens at
`asked_at + min(k · stale, k · ttl / (n + 1))`, so the last step comes with a quarter (for
three steps) of its TTL still to run.

Questions to another hive are left to that hive; an asker in another hive is not told here.
The scheduler sleeps until the next step is due, or until a new question is asked.
"""

from __future__ import annotations

import json
import logging
import math
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass

import trio

from protocol.federation import is_remote
from protocol.messages import EscalationStep, MessageRow, QuestionEscalated

from .broker import OPERATOR, SYSTEM, Broker, insert_message
from .config import HiveSettings
from .events import EventBus
from .questions import question_row, question_text
from .registry import Registry
from .store import Store

log = logging.getLogger(__name__)
BATCH = 256
"""Most questions stepped in one transaction; more due at once go in the next ones."""


def age_text(seconds: float) -> str:
    seconds = int(seconds)
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            parts.append(f"{seconds // size}{unit}")
            seconds %= size
    if seconds or not parts:
        parts.append(f"{seconds}s")
    return " ".join(parts[:2])


@dataclass(frozen=True)
class Step:
    to: str
    kind: EscalationStep


def chain(asker: str, target: str, managers: list[str], agents: set[str]) -> list[Step]:
    """The steps a question from `asker` to `target` climbs, in order."""
    steps = [Step(target, "raised")] if target == OPERATOR or target in agents else []
    if target == OPERATOR:
        return steps
    above = [n for n in managers if n not in (target, asker)]
    if above:
        steps.append(Step(above[0], "manager"))
    steps.append(Step(OPERATOR, "operator"))
    return steps


def due_at(asked_at: float, expires_at: float | None, step: int, steps: int, stale: float) -> float:
    """When step `step` (1-based) of `steps` is due."""
    at = step * stale
    if expires_at is not None:
        at = min(at, step * (expires_at - asked_at) / (steps + 1))
    return asked_at + at


class Escalation:
    def __init__(
        self,
        store: Store,
        bus: EventBus,
        registry: Registry,
        broker: Broker,
        settings: HiveSettings,
        now: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._bus = bus
        self._registry = registry
        self._broker = broker
        self._settings = settings
        self._now = now

    def _chain(self, asker: str, target: str) -> list[Step]:
        agents = self._registry.agents
        managers = sorted(n for n, r in agents.items() if r.role == "manager")
        return chain(asker, target, managers, set(agents))

    def _next(self, r: sqlite3.Row) -> tuple[float, Step] | None:
        """When the question of row `r` climbs next, and where to; None when it is done."""
        if is_remote(r["target"]):
            return None
        steps = self._chain(r["asker"], r["target"])
        taken = len(json.loads(r["escalation"]))
        if taken >= len(steps):
            return None
        at = due_at(
            r["asked_at"],
            r["expires_at"],
            taken + 1,
            len(steps),
            self._settings.question_stale_seconds,
        )
        return at, steps[taken]

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Step due questions; sleep until the next is due or a question is asked."""
        sub, _ = self._bus.subscribe(["question_asked"], None)
        task_status.started()
        try:
            while True:
                next_at = await self._step_due()
                if next_at is None:
                    continue
                delay = (
                    math.inf
                    if self._settings.question_stale_seconds <= 0
                    else next_at - self._now()
                )
                with trio.move_on_after(max(0.0, delay)):
                    try:
                        await sub.recv.receive()
                    except trio.EndOfChannel:  # dropped for falling behind: follow anew
                        sub, _ = self._bus.subscribe(["question_asked"], None)
                while True:  # a burst of questions wakes us once
                    try:
                        sub.recv.receive_nowait()
                    except (trio.WouldBlock, trio.EndOfChannel):
                        break
        finally:
            sub.close()

    async def _step_due(self) -> float | None:
        """Climb due questions one step (a batch at most); return when the next one is due
        (`inf`: none), or None when some stepped (their next step is due later: look again)."""
        if self._settings.question_stale_seconds <= 0:
            return math.inf
        now = self._now()
        rows = await self._store.read(
            lambda c: c.execute(
                "SELECT id, asker, target, asked_at, expires_at, escalation FROM questions"
                " WHERE state = 'open'"
            ).fetchall()
        )
        due: list[tuple[int, int, Step]] = []
        next_at = math.inf
        for r in rows:
            step = self._next(r)
            if step is None:
                continue
            at, where = step
            if at <= now:
                due.append((r["id"], len(json.loads(r["escalation"])), where))
            else:
                next_at = min(next_at, at)
        if not due:
            return next_at
        batch = due[:BATCH]
        done = await self._store.write_when_space(
            lambda c: [x for q in batch if (x := self._climb(c, *q, now)) is not None],
            "question escalation",
        )
        for event, messages in done:
            self._bus.publish(event)
            self._broker.published(messages)
        return None  # look again: those stepped have a next step of their own

    def _climb(
        self, conn: sqlite3.Connection, qid: int, taken: int, step: Step, now: float
    ) -> tuple[QuestionEscalated, list[MessageRow]] | None:
        row = conn.execute("SELECT * FROM questions WHERE id = ?", (qid,)).fetchone()
        if row is None or row["state"] != "open" or len(json.loads(row["escalation"])) != taken:
            return None  # answered, cancelled or stepped meanwhile
        escalation = [*json.loads(row["escalation"]), step.to]
        updated = conn.execute(
            "UPDATE questions SET escalation = ?, escalated_at = ? WHERE id = ? RETURNING *",
            (json.dumps(escalation), now, qid),
        ).fetchone()
        waited = age_text(now - row["asked_at"])
        asker, target = row["asker"], row["target"]
        options = json.loads(row["options"]) if row["options"] is not None else None
        text = question_text(qid, asker, row["question"], options, bool(row["multi"]))
        if step.kind == "raised":
            head = f"Still waiting for your answer ({waited}):"
            told = f"re-raised to {target}"
        else:
            who = "the operator" if step.to == OPERATOR else f"{step.to} (a manager)"
            head = (
                f"Escalated to you: {target} has not answered this question in {waited};"
                " you may answer it in its place."
            )
            told = f"escalated to {who}, who may answer it in {target}'s place"
        messages = [
            insert_message(
                conn,
                sender=SYSTEM,
                recipient=step.to,
                body=f"{head}\n{text}",
                now=now,
                kind="question",
                question_id=qid,
            )
        ]
        if not is_remote(asker) and asker in self._registry.agents:
            messages.append(
                insert_message(
                    conn,
                    sender=SYSTEM,
                    recipient=asker,
                    body=f"Your question #{qid} to {target} has waited {waited} without an"
                    f" answer: {told}.",
                    now=now,
                    kind="system",
                )
            )
        log.info("question #%d (%s → %s) waited %s: %s", qid, asker, target, waited, told)
        event = QuestionEscalated(question=question_row(updated), step=step.kind, to=step.to)
        return event, messages
