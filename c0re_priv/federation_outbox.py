"""The federation outbox: envelopes to other hives, written inside the transaction that makes them.

Every function here takes the writer's connection and runs inside a caller's transaction
(the broker's `insert_message`, its `ack`, the questions' `cancel`, the federation's own
inbound batch), so an envelope exists exactly when the change it reports committed: the
transactional outbox of docs/federation.md. Nothing here publishes, sleeps or touches trio;
the publisher in `federation` drains the table. A row stores the envelope's body only: the
origin, the epoch and the envelope id are added when it is published, from the row's id.
"""

from __future__ import annotations

import json
import sqlite3
import time

from protocol.federation import (
    AnyFedBody,
    FedAnswer,
    FedBounce,
    FedCancel,
    FedMessage,
    FedQuestion,
    FedReceipt,
    encode,
    split_address,
)
from protocol.messages import MessageRow


def enqueue(
    conn: sqlite3.Connection,
    to_hive: str,
    body: AnyFedBody,
    message_id: int | None = None,
    now: float | None = None,
) -> int:
    """Add one envelope for `to_hive`; return its outbox row id."""
    at = time.time() if now is None else now
    kind = body.__struct_config__.tag
    row = conn.execute(
        "INSERT INTO federation_outbox (to_hive, kind, message_id, body, created_at,"
        " next_attempt_at) VALUES (?, ?, ?, ?, ?, ?) RETURNING id",
        (to_hive, kind, message_id, encode(body), at, at),
    ).fetchone()
    return int(row[0])


def enqueue_message(conn: sqlite3.Connection, msg: MessageRow) -> None:
    """`msg` (just inserted) is addressed to another hive: queue the envelope that carries it.

    A question carries its options and expiry; an answer names the asking hive's question
    id (kept in `questions.remote_id` when the question arrived). A reply to a message that
    came from the same hive names that hive's own id of it, so the thread continues there.
    """
    name, hive = split_address(msg.to)
    assert hive is not None, "enqueue_message is for remote recipients"
    body: AnyFedBody
    if msg.kind == "question" and msg.question_id is not None:
        q = conn.execute(
            "SELECT question, options, multi, expires_at FROM questions WHERE id = ?",
            (msg.question_id,),
        ).fetchone()
        body = FedQuestion(
            message_id=msg.id,
            question_id=msg.question_id,
            sender=msg.from_,
            to=name,
            question=q["question"],
            options=json.loads(q["options"]) if q["options"] is not None else None,
            multi=bool(q["multi"]),
            expires_at=q["expires_at"],
            created_at=msg.created_at,
        )
    elif msg.kind == "answer" and msg.question_id is not None:
        q = conn.execute(
            "SELECT remote_id, answer, state FROM questions WHERE id = ?", (msg.question_id,)
        ).fetchone()
        if q is None or q["remote_id"] is None:
            return  # not a question that came from that hive: nothing to answer there
        body = FedAnswer(
            message_id=msg.id,
            question_id=q["remote_id"],
            sender=msg.from_,
            to=name,
            answer=q["answer"] or "",
            state="expired" if q["state"] == "expired" else "answered",
            created_at=msg.created_at,
        )
    else:
        reply_to = None
        if msg.in_reply_to is not None:
            parent = conn.execute(
                "SELECT sender, remote_id FROM messages WHERE id = ?", (msg.in_reply_to,)
            ).fetchone()
            if parent is not None and parent["sender"] == msg.to:
                reply_to = parent["remote_id"]
        body = FedMessage(
            message_id=msg.id,
            sender=msg.from_,
            to=name,
            body=msg.body,
            reply_to=reply_to,
            created_at=msg.created_at,
        )
    enqueue(conn, hive, body, msg.id, msg.created_at)


def enqueue_receipt(
    conn: sqlite3.Connection, sender: str, remote_id: int | None, by: str, acked_at: float
) -> None:
    """A message from `sender` (`name@hive`) was acked here by `by`: tell its hive."""
    _, hive = split_address(sender)
    if hive is None or remote_id is None:
        return
    enqueue(conn, hive, FedReceipt(message_id=remote_id, by=by, acked_at=acked_at), now=acked_at)


def enqueue_cancel(conn: sqlite3.Connection, target: str, question_id: int, asker: str) -> None:
    """`asker` withdrew `question_id`, asked of `target` in another hive."""
    _, hive = split_address(target)
    if hive is not None:
        enqueue(conn, hive, FedCancel(question_id=question_id, sender=asker))


def enqueue_bounce(
    conn: sqlite3.Connection, origin: str, message_id: int, to: str, reason: str
) -> None:
    """A message from `origin` (its id `message_id` there) cannot be delivered here."""
    enqueue(conn, origin, FedBounce(message_id=message_id, to=to, reason=reason[:4000]))


def pending(conn: sqlite3.Connection, now: float, limit: int) -> list[sqlite3.Row]:
    """The rows due for publishing, oldest first."""
    return conn.execute(
        "SELECT id, to_hive, kind, message_id, body, attempts FROM federation_outbox"
        " WHERE published_at IS NULL AND (next_attempt_at IS NULL OR next_attempt_at <= ?)"
        " ORDER BY id LIMIT ?",
        (now, limit),
    ).fetchall()
