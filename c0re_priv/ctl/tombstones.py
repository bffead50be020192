"""`hive ctl tombstones|purge`: the directories destroyed agents left behind."""

from __future__ import annotations

from typing import Annotated

import typer

from protocol import messages as m

from .common import JsonOut, RunDir, ago, app, call, die, echo, emit, request, table


@app.command("tombstones")
def tombstones(run_dir: RunDir = None, as_json: JsonOut = False) -> None:
    """Destroyed agents whose directories are still kept."""
    rows = call(run_dir, m.ListTombstones(), m.Tombstones, timeout=None).tombstones
    emit(
        rows,
        as_json,
        lambda: table(
            [[t.name, ago(t.destroyed_at), t.path] for t in rows], ["NAME", "DESTROYED", "PATH"]
        ),
    )


@app.command("purge")
def purge(
    name: str,
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask.")] = False,
    run_dir: RunDir = None,
    as_json: JsonOut = False,
) -> None:
    """Delete a destroyed agent's kept directory for good."""
    req = request(m.PurgeTombstone, name=name)
    if not yes and not typer.confirm(f"delete {name}'s tombstone for good?"):
        die("not purged")
    call(run_dir, req, m.Ok, timeout=None)
    emit({"purged": name}, as_json, lambda: echo(f"{name}: tombstone purged"))
