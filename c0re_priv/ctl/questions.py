"""`hive ctl questions|answer|threads`: questions waiting on someone, and open threads."""

from __future__ import annotations

import time
from typing import Annotated

import typer

from protocol import messages as m

from .common import JsonOut, RunDir, app, call, echo, emit, request, table


@app.command("questions")
def questions(
    all_: Annotated[
        bool, typer.Option("--all", help="Include answered, cancelled and expired.")
    ] = False,
    target: Annotated[
        str, typer.Option(help="Whose questions: operator, an agent, or * for all.")
    ] = "operator",
    run_dir: RunDir = None,
    as_json: JsonOut = False,
) -> None:
    """Questions waiting for an answer (by default the operator's, and those escalated to
    the operator), with how long each has waited and whom it was raised to."""
    rows = call(
        run_dir,
        m.ListQuestions(target=None if target == "*" else target, include_closed=all_),
        m.Questions,
    ).questions
    emit(
        rows,
        as_json,
        lambda: table(
            [
                [
                    str(q.id),
                    q.asker,
                    q.target,
                    q.state,
                    age(q.asked_at, q.answered_at),
                    " → ".join(q.escalation) if q.escalation else "-",
                    q.question[:60] + (f" [{' | '.join(q.options)}]" if q.options else ""),
                ]
                for q in rows
            ],
            ["ID", "ASKER", "TARGET", "STATE", "AGE", "RAISED TO", "QUESTION"],
        ),
    )


def age(since: float, until: float | None) -> str:
    """How long a question has waited (or waited, once closed): `3m`, `1h 5m`."""
    seconds = max(0, int((until or time.time()) - since))
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            parts.append(f"{seconds // size}{unit}")
            seconds %= size
    return " ".join([*parts, f"{seconds}s"][:2]) if parts else f"{seconds}s"


@app.command("answer")
def answer(question_id: int, text: str, run_dir: RunDir = None, as_json: JsonOut = False) -> None:
    """Answer an operator question."""
    call(run_dir, m.AnswerQuestion(question_id=question_id, answer=text), m.Ok)
    emit({"answered": question_id}, as_json, lambda: echo(f"answered #{question_id}"))


@app.command("threads")
def threads(agent: str, run_dir: RunDir = None, as_json: JsonOut = False) -> None:
    """What is still open against an agent (questions both ways, approvals)."""
    req = request(m.GetAgentOpenThreads, "agent name", agent=agent)
    got = call(run_dir, req, m.OpenThreads).threads

    def human() -> None:
        rows = []
        for t in got:
            if isinstance(t, m.QuestionThread):
                who = f"{'waiting on' if t.role == 'asker' else 'owes'} {t.counterparty}"
                rows.append(["question", str(t.id), who, f"{t.age_seconds:.0f}s", t.summary])
            else:
                rows.append(["approval", str(t.id), "operator", f"{t.age_seconds:.0f}s", t.summary])
        table(rows, ["KIND", "ID", "WITH", "AGE", "SUMMARY"])

    emit(got, as_json, human)
