"""The loose-ends aggregator: what is still open against an agent, or across the hive.

One sweep per call, no cache (calls are rare and the answer must be current). The same
functions serve the `get_open_threads` MCP tool, the per-agent web page and `hive ctl
threads`. Questions count in both directions (`role="asker"`: waiting on someone;
`role="target"`: owes an answer); approvals count for the agent that requested them; open
merge requests of the forge count for their author and for each of their reviewers.
"""

from __future__ import annotations

import sqlite3

from protocol.messages import ApprovalThread, OpenThread, QuestionThread
from protocol.messages.forge import MergeRequestThread

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
    threads += _merge_requests(conn, agent, now, max(0, limit - len(threads)))
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
    mrs = conn.execute(
        "SELECT (SELECT count(*) FROM merge_requests WHERE state = 'open' AND author = ?)"
        " + (SELECT count(*) FROM merge_request_reviewers v JOIN merge_requests r"
        "    ON r.id = v.mr_id WHERE r.state = 'open' AND v.agent = ? AND r.author != ?)",
        (agent, agent, agent),
    ).fetchone()[0]
    return int(approvals) + int(questions) + int(mrs)


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
    threads += [
        _merge_request(conn, r, r["author"], "author", now)
        for r in conn.execute(
            "SELECT * FROM merge_requests WHERE state = 'open' ORDER BY id LIMIT ?",
            (max(0, limit - len(threads)),),
        )
    ]
    total = conn.execute(
        "SELECT (SELECT count(*) FROM approvals WHERE status = 'pending')"
        " + (SELECT count(*) FROM questions WHERE state = 'open')"
        " + (SELECT count(*) FROM merge_requests WHERE state = 'open')"
    ).fetchone()[0]
    return threads, int(total)


def _merge_requests(
    conn: sqlite3.Connection, agent: str, now: float, limit: int
) -> list[OpenThread]:
    """The agent's open merge requests, as author or reviewer, oldest first."""
    rows = conn.execute(
        "SELECT * FROM merge_requests WHERE state = 'open' AND (author = ? OR id IN"
        " (SELECT mr_id FROM merge_request_reviewers WHERE agent = ?)) ORDER BY id LIMIT ?",
        (agent, agent, limit),
    )
    return [
        _merge_request(conn, r, agent, "author" if r["author"] == agent else "reviewer", now)
        for r in list(rows)
    ]


def _merge_request(
    conn: sqlite3.Connection, r: sqlite3.Row, agent: str, role: str, now: float
) -> MergeRequestThread:
    if role == "author":
        reviewers = conn.execute(
            "SELECT agent FROM merge_request_reviewers WHERE mr_id = ? ORDER BY agent", (r["id"],)
        )
        counterparty = ", ".join(x[0] for x in reviewers)
    else:
        counterparty = r["author"]
    return MergeRequestThread(
        id=r["id"],
        agent=agent,
        role="author" if role == "author" else "reviewer",
        repo=r["repo"],
        counterparty=counterparty,
        summary=excerpt(
            f"{r['title']} ({r['source_branch']} → {r['target_branch']})", SUMMARY_CHARS
        ),
        age_seconds=max(0.0, now - r["created_at"]),
    )


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
