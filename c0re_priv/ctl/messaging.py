"""`hive ctl send|messages|retry-message|drop-message`: the operator's side of the broker."""

from __future__ import annotations

from typing import Annotated

import typer

from protocol import messages as m

from .common import JsonOut, RunDir, ago, app, call, echo, emit, request, table


@app.command("send")
def send(
    to: Annotated[str, typer.Argument(help="Agent name, or * for every agent.")],
    body: str,
    reply_to: Annotated[
        int | None, typer.Option("--reply-to", help="Message id this answers.")
    ] = None,
    run_dir: RunDir = None,
    as_json: JsonOut = False,
) -> None:
    """Send a message as the operator."""
    sent = call(run_dir, m.OperatorSend(to=to, body=body, in_reply_to=reply_to), m.Sent)
    emit(
        sent,
        as_json,
        lambda: echo(f"sent {len(sent.message_ids)} message(s): {sent.message_ids}"),
    )


@app.command("messages")
def messages(
    agent: Annotated[str | None, typer.Option(help="Only messages from or to this agent.")] = None,
    thread: Annotated[int | None, typer.Option(help="Only this conversation.")] = None,
    state: Annotated[
        str | None,
        typer.Option(help="Only messages in this state: queued, leased, acked, dead, dropped."),
    ] = None,
    limit: int = 50,
    before: Annotated[int | None, typer.Option(help="Only messages with a smaller id.")] = None,
    run_dir: RunDir = None,
    as_json: JsonOut = False,
) -> None:
    """Recent messages, newest first; `--state dead` lists those set aside after failing."""
    req = request(
        m.ListMessages, agent=agent, thread=thread, limit=limit, before=before, state=state
    )
    rows = call(run_dir, req, m.Messages).messages
    failures = any(r.failures for r in rows)
    emit(
        rows,
        as_json,
        lambda: table(
            [
                [
                    str(r.id),
                    r.from_,
                    r.to,
                    r.state,
                    str(r.in_reply_to or ""),
                    ago(r.created_at),
                    *([f"{r.failures} ({r.last_error or ''})"[:40]] if failures else []),
                    r.body.replace("\n", " ")[:70],
                ]
                for r in rows
            ],
            ["ID", "FROM", "TO", "STATE", "RE", "SENT", *(["FAILED"] if failures else []), "BODY"],
        ),
    )


@app.command("retry-message")
def retry_message(message_id: int, run_dir: RunDir = None, as_json: JsonOut = False) -> None:
    """Queue a dead message again, with a fresh count of failures."""
    req = request(m.RetryMessage, id=message_id)
    row = call(run_dir, req, m.Messages).messages[0]
    emit(row, as_json, lambda: echo(f"message #{row.id} to {row.to} is queued again"))


@app.command("drop-message")
def drop_message(message_id: int, run_dir: RunDir = None, as_json: JsonOut = False) -> None:
    """Give up on a dead message (it stays listed as dropped)."""
    req = request(m.DropMessage, id=message_id)
    call(run_dir, req, m.Ok)
    emit({"dropped": message_id}, as_json, lambda: echo(f"message #{message_id} dropped"))
