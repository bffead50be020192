"""`hive ctl reminders|retry-reminder`: the reminder scheduler's rows."""

from __future__ import annotations

from typing import Annotated

import typer

from protocol import messages as m

from .common import JsonOut, RunDir, app, call, due, echo, emit, request, table


@app.command("reminders")
def reminders(
    agent: Annotated[str | None, typer.Option(help="Only this agent's reminders.")] = None,
    state: Annotated[
        str | None, typer.Option(help="Only this state: pending, delivered, failed, cancelled.")
    ] = None,
    limit: int = 100,
    run_dir: RunDir = None,
    as_json: JsonOut = False,
) -> None:
    """Reminders, newest first; a failed one shows its attempts and last error."""
    req = request(m.ListReminders, "filter", agent=agent, state=state, limit=limit)
    rows = call(run_dir, req, m.Reminders).reminders
    emit(
        rows,
        as_json,
        lambda: table(
            [
                [
                    str(r.id),
                    r.owner,
                    r.state,
                    due(r.due_at),
                    str(r.attempt_count),
                    (r.last_error or "")[:40],
                    r.body.replace("\n", " ")[:50],
                ]
                for r in rows
            ],
            ["ID", "OWNER", "STATE", "DUE", "ATTEMPTS", "LAST ERROR", "BODY"],
        ),
    )


@app.command("retry-reminder")
def retry_reminder(reminder_id: int, run_dir: RunDir = None, as_json: JsonOut = False) -> None:
    """Queue a failed reminder again: due at once, with a fresh set of attempts."""
    req = request(m.RetryReminder, "reminder id", id=reminder_id)
    row = call(run_dir, req, m.ReminderInfo).reminder
    emit(row, as_json, lambda: echo(f"reminder #{row.id} of {row.owner} is pending again"))
