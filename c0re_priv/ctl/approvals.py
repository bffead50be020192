"""`hive ctl approvals|approval|approve|deny`: the manager's requests, decided by the operator."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from protocol import messages as m

from .common import JsonOut, RunDir, ago, app, call, echo, emit, request, table


@app.command("approvals")
def approvals(
    status: Annotated[
        str | None,
        typer.Option(help="Only this status: pending, approved, denied, failed, cancelled."),
    ] = None,
    limit: int = 100,
    run_dir: RunDir = None,
    as_json: JsonOut = False,
) -> None:
    """The manager's requests, newest first: what each would do and what came of it."""
    req = request(m.ListApprovals, status=status, limit=limit)
    rows = call(run_dir, req, m.Approvals, timeout=None).approvals
    emit(
        rows,
        as_json,
        lambda: table(
            [
                [
                    str(a.id),
                    a.kind,
                    a.agent,
                    a.requested_by,
                    a.status,
                    ago(a.requested_at),
                    a.description.replace("\n", " ")[:70],
                ]
                for a in rows
            ],
            ["ID", "KIND", "AGENT", "BY", "STATUS", "ASKED", "DESCRIPTION"],
        ),
    )


def show_approval(a: m.ApprovalRow, diff: str = "") -> None:
    echo(f"approval #{a.id}: {a.kind} {a.agent} ({a.status})")
    echo(f"requested by {a.requested_by}, {ago(a.requested_at)}")
    if a.sha:
        echo(f"commit {a.sha} (asked for as {a.ref}, pinned as tag approval-{a.id})")
    echo(a.description)
    if a.note:
        echo(f"note: {a.note}")
    if a.outcome:
        echo(f"outcome: {a.outcome}")
    if diff:
        echo("")
        echo(diff.rstrip("\n"))


@app.command("approval")
def approval(approval_id: int, run_dir: RunDir = None, as_json: JsonOut = False) -> None:
    """One approval in full, with the diff approving it would deploy."""
    got = call(run_dir, request(m.GetApproval, id=approval_id), m.ApprovalInfo, timeout=None)
    emit(got, as_json, lambda: show_approval(got.approval, got.diff))


def decide(
    verb: type[m.Request], approval_id: int, note: str | None, run_dir: Path | None, as_json: bool
) -> None:
    got = call(run_dir, request(verb, id=approval_id, note=note), m.ApprovalInfo, timeout=None)
    emit(got.approval, as_json, lambda: show_approval(got.approval))
    if got.approval.status == "failed":
        raise typer.Exit(1)


@app.command("approve")
def approve(
    approval_id: int,
    note: Annotated[str | None, typer.Option(help="Told to the manager.")] = None,
    run_dir: RunDir = None,
    as_json: JsonOut = False,
) -> None:
    """Carry out a pending approval (returns when it is done; exit 1 when it failed)."""
    decide(m.Approve, approval_id, note, run_dir, as_json)


@app.command("deny")
def deny(
    approval_id: int,
    note: Annotated[str | None, typer.Option(help="Why; told to the manager.")] = None,
    run_dir: RunDir = None,
    as_json: JsonOut = False,
) -> None:
    """Refuse a pending approval; nothing changes and the manager is told why."""
    decide(m.Deny, approval_id, note, run_dir, as_json)
