"""The operator's inbox: everything that waits on the operator, in one list, newest first.

The emergency stop (while engaged), questions for the operator (and those escalated to it),
pending approvals, dead messages, failed agents, open budget alerts, agents held by their
budget and merge requests that ask the operator to review them or that only the operator may
merge, each with what can be done about it: the actions the dashboard offers and the
`hive ctl` command that does it. Read only; one sweep per call, no cache (the dashboard
draws it after each batch of events, `hive ctl inbox` on demand).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from protocol import messages as m
from protocol.messages import InboxItem

from .attachments import excerpt
from .forge import OPERATOR

if TYPE_CHECKING:
    from .hive import Hive

TITLE_CHARS = 160
DEAD_SHOWN = 200


def _text(text: str) -> str:
    return excerpt(text, TITLE_CHARS)


async def collect(
    hive: Hive,
    limit: int,
    agents: list[m.AgentRow] | None = None,
    questions: list[m.QuestionRow] | None = None,
) -> tuple[list[InboxItem], int]:
    """The inbox, newest first (an engaged emergency stop always first), at most `limit`
    items, and how many there are in all. `agents` and `questions` (the operator's open
    ones) save reading them again when the caller has them (`snapshot`)."""
    items: list[InboxItem] = []
    if questions is None:
        questions = await hive.questions.list("operator", include_closed=False)
    for q in questions:
        escalated = q.target != "operator"
        title = (
            f"{q.asker} asked {q.target}, who has not answered: {_text(q.question)}"
            if escalated
            else f"{q.asker} asks: {_text(q.question)}"
        )
        items.append(
            InboxItem(
                key=f"question:{q.id}",
                kind="question",
                ref=q.id,
                agent=q.asker,
                at=(q.escalated_at or q.asked_at) if escalated else q.asked_at,
                title=title,
                detail=" | ".join(q.options) if q.options else "",
                actions=["answer"],
                command=f'hive ctl answer {q.id} "…"',
                question=q,
            )
        )
    for a in await hive.approvals.recent("pending", 1000):
        items.append(
            InboxItem(
                key=f"approval:{a.id}",
                kind="approval",
                ref=a.id,
                agent=a.agent,
                at=a.requested_at,
                title=f"{a.requested_by} asks: {a.kind} {a.agent}",
                detail=_text(a.description),
                actions=["approve", "deny"],
                command=f"hive ctl approval {a.id}; hive ctl approve {a.id} / deny {a.id}",
            )
        )
    for msg in await hive.broker.list_messages(None, None, DEAD_SHOWN, None, "dead"):
        items.append(
            InboxItem(
                key=f"dead_message:{msg.id}",
                kind="dead_message",
                ref=msg.id,
                agent=msg.to,
                at=msg.created_at,
                title=f"message #{msg.id} from {msg.from_} to {msg.to} is dead"
                f" ({msg.failures} failed turns)",
                detail=_text(msg.last_error or msg.body),
                actions=["retry", "drop"],
                command=f"hive ctl retry-message {msg.id} / drop-message {msg.id}",
            )
        )
    for row in agents if agents is not None else await hive.registry.rows():
        if row.failed:
            items.append(
                InboxItem(
                    key=f"failed_agent:{row.name}",
                    kind="failed_agent",
                    ref=None,
                    agent=row.name,
                    at=row.failed_at or hive.now(),
                    title=f"{row.name} failed: its container kept crashing",
                    detail="its last log lines went to the managers (or to you) as a message",
                    actions=["start"],
                    command=f"hive ctl start {row.name}",
                )
            )
    for alert in await hive.budgets.open_alerts():
        items.append(
            InboxItem(
                key=f"budget:{alert.id}",
                kind="budget",
                ref=alert.id,
                agent=alert.agent,
                at=alert.at,
                title=alert.text,
                detail=f"{alert.key}: {alert.used:g} of {alert.limit:g}",
                actions=["raise_limit", "dismiss"] if alert.level == "warn" else ["raise_limit"],
                budget_key=alert.key,
                command=(
                    f"hive ctl budget set {alert.key} VALUE"
                    + (f" --agent {alert.agent}" if alert.agent else "")
                    + (f"; hive ctl budget dismiss {alert.id}" if alert.level == "warn" else "")
                ),
            )
        )
    held_at = await hive.budgets.hold_times()
    for name, reason in sorted(hive.holds.budget.items()):
        items.append(
            InboxItem(
                key=f"held_agent:{name}",
                kind="held_agent",
                ref=None,
                agent=name,
                at=held_at.get(name, hive.now()),
                title=f"{name} is paused by its budget",
                detail=reason,
                actions=["resume", "raise_limit"],
                command=f"hive ctl resume {name}",
            )
        )
    for mr in await hive.merge_requests.waiting_on_operator():
        asked = OPERATOR in mr.reviewers and OPERATOR not in mr.approvals
        why = "asks you to review" if asked else "only you can merge"
        approved = ", ".join(mr.approvals) if mr.approvals else "nobody yet"
        items.append(
            InboxItem(
                key=f"merge_request:{mr.id}",
                kind="merge_request",
                ref=mr.id,
                agent=mr.author,
                at=mr.updated_at,
                title=f"!{mr.id} by {mr.author} into {mr.repo} ({why}): {_text(mr.title)}",
                detail=f"{mr.source_repo} {mr.source_branch} → {mr.target_branch};"
                f" approved by {approved}; {mr.comments} comments",
                actions=["review"],
                command=f"hive ctl forge mr {mr.id}; hive ctl forge approve {mr.id}"
                f" / merge {mr.id} / close {mr.id}",
            )
        )
    items.sort(key=lambda item: item.at, reverse=True)
    estop = hive.estop.row
    if estop.engaged:
        items.insert(
            0,
            InboxItem(
                key="estop:",
                kind="estop",
                ref=None,
                agent=None,
                at=estop.at or hive.now(),
                title="EMERGENCY STOP: every agent but the managers is parked"
                + (f" ({estop.reason})" if estop.reason else ""),
                detail=f"{len(estop.parked)} parked, {len(estop.cancelled)} turns cancelled"
                + (f", containers stopped: {', '.join(estop.stopped)}" if estop.stopped else ""),
                actions=["thaw"],
                command="hive ctl thaw",
            ),
        )
    return items[:limit], len(items)
