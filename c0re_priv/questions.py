"""Questions: an agent asks the operator or another agent, and waits for the answer as a message.

A question is a row in `questions` plus a `question` message to its target (so an agent
target is woken like for any message, and the operator sees it on the dashboard). Only the
target may answer, and whoever a stale question was escalated to (`escalation`); the answer
reaches the asker as an `answer` message whose `in_reply_to` is the question message. A
question past its TTL is answered `[expired]` by the daemon.
Every lookup by id is bounded by who asks: another agent's question is `not_found`.
"""

from __future__ import annotations

import json
import math
import sqlite3
import time
from collections.abc import Callable

import trio

from protocol.federation import is_remote
from protocol.messages import (
    AskRow,
    MessageRow,
    QuestionAnswered,
    QuestionAsked,
    QuestionCancelled,
    QuestionRow,
)

from . import federation_outbox
from .broker import OPERATOR, SYSTEM, Broker, insert_message
from .errors import Fail
from .events import EventBus
from .registry import Registry
from .store import Store

EXPIRED = "[expired]"


def question_row(r: sqlite3.Row) -> QuestionRow:
    return QuestionRow(
        id=r["id"],
        asker=r["asker"],
        target=r["target"],
        question=r["question"],
        options=json.loads(r["options"]) if r["options"] is not None else None,
        multi=bool(r["multi"]),
        asked_at=r["asked_at"],
        expires_at=r["expires_at"],
        state=r["state"],
        answer=r["answer"],
        answered_at=r["answered_at"],
        message_id=r["message_id"],
        escalation=json.loads(r["escalation"]),
        escalated_at=r["escalated_at"],
    )


def may_answer(r: sqlite3.Row, answerer: str) -> bool:
    """Its target, and everyone it was escalated to after it went stale (`escalation`)."""
    return bool(r["target"] == answerer or answerer in json.loads(r["escalation"]))


def question_text(
    qid: int, asker: str, question: str, options: list[str] | None, multi: bool
) -> str:
    text = f"Question #{qid} from {asker}: {question}"
    if options:
        how = "choose one or more" if multi else "choose one"
        text += f"\nOptions ({how}): " + " | ".join(options)
    return text + f"\nReply with answer(question_id={qid}, answer=...)."


class Questions:
    def __init__(
        self,
        store: Store,
        bus: EventBus,
        registry: Registry,
        broker: Broker,
        now: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._bus = bus
        self._registry = registry
        self._broker = broker
        self._now = now
        self._expiry_poke = trio.Event()

    async def ask(
        self,
        asker: str,
        target: str,
        question: str,
        options: list[str] | None,
        multi: bool,
        ttl_seconds: int | None,
    ) -> tuple[QuestionRow, MessageRow]:
        if target == "*":
            raise Fail("invalid", "a question needs one target: an agent name or 'operator'")
        if target == asker:
            raise Fail("invalid", "an agent cannot ask itself")
        (recipient,) = self._broker.recipients(asker, target)
        if recipient == asker:
            raise Fail("invalid", "an agent cannot ask itself")
        if not is_remote(recipient):  # another hive gets the whole text and applies its own cap
            question, _ = await self._broker.spill(asker, question)
        now = self._now()
        expires = now + ttl_seconds if ttl_seconds is not None else None

        def write(conn: sqlite3.Connection) -> tuple[QuestionRow, MessageRow]:
            qid = conn.execute(
                "INSERT INTO questions (asker, target, question, options, multi, asked_at,"
                " expires_at, message_id) VALUES (?, ?, ?, ?, ?, ?, ?, 0) RETURNING id",
                (
                    asker,
                    recipient,
                    question,
                    json.dumps(options) if options is not None else None,
                    int(multi),
                    now,
                    expires,
                ),
            ).fetchone()[0]
            msg = insert_message(
                conn,
                sender=asker,
                recipient=recipient,
                body=question_text(qid, asker, question, options, multi),
                now=now,
                kind="question",
                question_id=qid,
            )
            row = conn.execute(
                "UPDATE questions SET message_id = ? WHERE id = ? RETURNING *", (msg.id, qid)
            ).fetchone()
            return question_row(row), msg

        q, msg = await self._store.write(write)
        self._bus.publish(QuestionAsked(question=q))
        self._broker.published([msg])
        if expires is not None:
            self._expiry_poke.set()
        return q, msg

    async def answer(self, answerer: str, question_id: int, answer: str) -> QuestionRow:
        """Answer as `answerer` (an agent, or `"operator"` for operator questions)."""
        asker = await self._store.read(
            lambda c: c.execute(
                "SELECT asker FROM questions WHERE id = ?", (question_id,)
            ).fetchone()
        )
        if asker is None or not is_remote(asker[0]):  # another hive applies its own cap
            answer, _ = await self._broker.spill(answerer, answer)
        now = self._now()

        def write(conn: sqlite3.Connection) -> tuple[QuestionRow, MessageRow]:
            row = conn.execute("SELECT * FROM questions WHERE id = ?", (question_id,)).fetchone()
            if row is None or not may_answer(row, answerer):
                raise Fail("not_found", f"no question #{question_id} addressed to {answerer}")
            if row["state"] != "open":
                raise Fail("conflict", f"question #{question_id} is already {row['state']}")
            return self.close(conn, row, "answered", answer, answerer, now)

        q, msg = await self._store.write(write)
        self.announce_answer(q, msg)
        return q

    @staticmethod
    def close(
        conn: sqlite3.Connection,
        row: sqlite3.Row,
        state: str,
        answer: str,
        sender: str,
        now: float,
    ) -> tuple[QuestionRow, MessageRow]:
        updated = conn.execute(
            "UPDATE questions SET state = ?, answer = ?, answered_at = ? WHERE id = ? RETURNING *",
            (state, answer, now, row["id"]),
        ).fetchone()
        thread = conn.execute(
            "SELECT thread FROM messages WHERE id = ?", (row["message_id"],)
        ).fetchone()
        msg = insert_message(
            conn,
            sender=sender,
            recipient=row["asker"],
            body=f"Answer to question #{row['id']} ({row['question'][:80]}): {answer}",
            now=now,
            in_reply_to=row["message_id"] if thread is not None else None,
            thread=thread[0] if thread is not None else None,
            kind="answer",
            question_id=row["id"],
        )
        return question_row(updated), msg

    def announce_answer(self, q: QuestionRow, msg: MessageRow) -> None:
        self._bus.publish(
            QuestionAnswered(
                question_id=q.id,
                asker=q.asker,
                target=q.target,
                answer=q.answer or "",
                expired=q.state == "expired",
            )
        )
        self._broker.published([msg])

    async def cancel(self, asker: str, question_id: int) -> None:
        def write(conn: sqlite3.Connection) -> sqlite3.Row:
            row = conn.execute(
                "UPDATE questions SET state = 'cancelled', answered_at = ?"
                " WHERE id = ? AND asker = ? AND state = 'open' RETURNING *",
                (self._now(), question_id, asker),
            ).fetchone()
            if row is None:
                raise Fail("not_found", f"no open question #{question_id} of yours")
            if is_remote(row["target"]):  # its copy in the target's hive is withdrawn too
                federation_outbox.enqueue_cancel(conn, row["target"], row["id"], asker)
            return row  # type: ignore[no-any-return]

        row = await self._store.write(write)
        self._bus.publish(
            QuestionCancelled(question_id=row["id"], asker=row["asker"], target=row["target"])
        )
        if is_remote(row["target"]):
            self._broker.poke_remote()

    async def list_mine(self, asker: str) -> list[AskRow]:
        rows = await self._store.read(
            lambda c: c.execute(
                "SELECT id, target, question, asked_at FROM questions"
                " WHERE asker = ? AND state = 'open' ORDER BY id",
                (asker,),
            ).fetchall()
        )
        return [
            AskRow(id=r["id"], target=r["target"], question=r["question"], asked_at=r["asked_at"])
            for r in rows
        ]

    async def list(self, target: str | None, include_closed: bool) -> list[QuestionRow]:
        clauses: list[str] = []
        params: list[object] = []
        if target is not None:  # and the questions escalated to it
            clauses.append(
                "(target = ? OR EXISTS (SELECT 1 FROM json_each(escalation) WHERE value = ?))"
            )
            params += [target, target]
        if not include_closed:
            clauses.append("state = 'open'")
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        rows = await self._store.read(
            lambda c: c.execute(
                f"SELECT * FROM questions {where} ORDER BY id DESC LIMIT 1000", params
            ).fetchall()
        )
        return [question_row(r) for r in rows]

    async def run_expiry(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Answer `[expired]` to questions past their TTL; sleeps until the next one is due."""
        task_status.started()
        while True:
            self._expiry_poke = trio.Event()
            now = self._now()

            def expire(
                conn: sqlite3.Connection, now: float = now
            ) -> tuple[list[tuple[QuestionRow, MessageRow]], float]:
                due = conn.execute(
                    "SELECT * FROM questions WHERE state = 'open' AND expires_at IS NOT NULL"
                    " AND expires_at <= ? ORDER BY expires_at LIMIT 256",
                    (now,),
                ).fetchall()
                closed = [self.close(conn, row, "expired", EXPIRED, SYSTEM, now) for row in due]
                nxt = conn.execute(
                    "SELECT min(expires_at) FROM questions"
                    " WHERE state = 'open' AND expires_at IS NOT NULL"
                ).fetchone()[0]
                return closed, (nxt if nxt is not None else math.inf)

            closed, next_due = await self._store.write_when_space(expire, "question expiry")
            for q, msg in closed:
                self.announce_answer(q, msg)
            if closed:
                continue
            with trio.move_on_after(max(0.0, next_due - self._now())):
                await self._expiry_poke.wait()


__all__ = ["EXPIRED", "OPERATOR", "Questions"]
