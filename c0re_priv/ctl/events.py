"""`hive ctl events`: follow the daemon's event stream."""

from __future__ import annotations

import json
from typing import Annotated

import msgspec
import typer

from protocol import messages as m
from protocol.terminal import json_text

from .common import JsonOut, RunDir, admin, app, echo


@app.command("events")
def events(
    kinds: Annotated[
        list[str] | None, typer.Option("--kind", help="Only this kind (repeatable).")
    ] = None,
    since: Annotated[int | None, typer.Option(help="Replay events after this seq.")] = None,
    count: Annotated[int | None, typer.Option(help="Stop after this many events.")] = None,
    run_dir: RunDir = None,
    as_json: JsonOut = False,
) -> None:
    """Follow the event stream (Ctrl-C to stop)."""
    seen = 0
    with admin(run_dir, timeout=None) as c:
        try:
            for frame in c.frames(m.Subscribe(kinds=kinds, since_seq=since)):
                if isinstance(frame, m.Resync | m.Subscribed):
                    if not as_json:
                        echo(f"# {type(frame).__name__.lower()} at seq {frame.seq}")
                    continue
                if isinstance(frame, m.EventFrame):
                    ev = frame.event
                    if as_json:
                        typer.echo(json_text(ev))
                    else:
                        fields = {
                            k: v
                            for k, v in msgspec.structs.asdict(ev).items()
                            if k not in ("seq", "at")
                        }
                        echo(
                            f"{ev.seq} {ev.__struct_config__.tag} {json.dumps(msgspec.to_builtins(fields))}"
                        )
                    seen += 1
                    if count is not None and seen >= count:
                        return
        except KeyboardInterrupt:
            return
