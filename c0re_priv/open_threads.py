"""The loose-ends aggregator: what is still open against an agent, or across the hive.

One sweep per call, no cache (calls are rare and the answer must be current). The same
functions serve the `get_open_threads` MCP tool, the per-agent web page and `hive ctl
threads`. Questions count in both directions (`role="asker"`: waiting on someone;
`role="target"`: owes an answer); approvals count for the agent that requested them.
"""

from __future__ import annotations

import sqlite3

from protocol.messages import ApprovalThread, OpenThread, QuestionThread

from .attachments import excerpt

SUMMARY_CHARS = 120
DEFAULT_LIMIT = 200


def for_agent(
    conn: sqlite3.Connection, agent: str, now: float, limit: int = DEFAULT_LIMIT
) -> tuple[list[OpenThread], int]:
    """The agent's open threads, oldest first (approvals, then questions), at most `limit`,
    and how many there are in all."""
    threads: list[OpenThread] = [
        _approval(r, now)
        for r in conn.execute(
            "SELECT id, kind, agent, description, requested_at FROM approvals"
            " WHERE requested_by = ? AND status = 'pending' ORDER BY id LIMIT ?",
            (agent, limit),
        )
    ]
    for r in conn.execute(
        "SELECT id, asker, target, question, asked_at FROM questions"
        " WHERE state = 'open' AND (asker = ? OR target = ?) ORDER BY id LIMIT ?",
        (agent, agent, limit),
    ):
        if r["asker"] == agent:
            threads.append(_question(r, "asker", now))
        if r["target"] == agent:
            threads.append(_question(r, "target", now))
    return threads[:limit], count_for_agent(conn, agent)


def count_for_agent(conn: sqlite3.Connection, agent: str) -> int:
    approvals = conn.execute(
        "SELECT count(*) FROM approvals WHERE requested_by = ? AND status = 'pending'", (agent,)
    ).fetchone()[0]
    questions = conn.execute(
        "SELECT coalesce(sum((asker = ?) + (target = ?)), 0) FROM questions"
        " WHERE state = 'open' AND (asker = ? OR target = ?)",
        (agent, agent, agent, agent),
    ).fetchone()[0]
    return int(approvals) + int(questions)


def hive_wide(
    conn: sqlite3.Connection, now: float, limit: int = DEFAULT_LIMIT
) -> tuple[list[OpenThread], int]:
    """Every open thread in the hive, each question once from its asker's side, oldest first;
    at most `limit`, and how many there are in all."""
    threads: list[OpenThread] = [
        _approval(r, now)
        for r in conn.execute(
            "SELECT id, kind, agent, description, requested_at FROM approvals"
            " WHERE status = 'pending' ORDER BY id LIMIT ?",
            (limit,),
        )
    ]
    threads += [
        _question(r, "asker", now)
        for r in conn.execute(
            "SELECT id, asker, target, question, asked_at FROM questions"
            " WHERE state = 'open' ORDER BY id LIMIT ?",
            (max(0, limit - len(threads)),),
        )
    ]
    total = conn.execute(
        "SELECT (SELECT count(*) FROM approvals WHERE status = 'pending')"
        " + (SELECT count(*) FROM questions WHERE state = 'open')"
    ).fetchone()[0]
    return threads, int(total)


def _approval(r: sqlite3.Row, now: float) -> ApprovalThread:
    return ApprovalThread(
        id=r["id"],
        agent=r["agent"],
        summary=excerpt(f"{r['kind']} {r['agent']}: {r['description']}", SUMMARY_CHARS),
        age_seconds=max(0.0, now - r["requested_at"]),
    )


def _question(r: sqlite3.Row, role: str, now: float) -> QuestionThread:
    asker, target = r["asker"], r["target"]
    return QuestionThread(
        id=r["id"],
        agent=asker if role == "asker" else target,
        role="asker" if role == "asker" else "target",
        counterparty=target if role == "asker" else asker,
        summary=excerpt(r["question"], SUMMARY_CHARS),
        age_seconds=max(0.0, now - r["asked_at"]),
    )
