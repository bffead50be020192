"""`hive ctl start|stop|restart|rebuild|rebuild-all|pause|resume|destroy|status|cancel-turn|
compact|set-model|new-session|stats|login`: an agent's container and runtime."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from protocol import messages as m

from .common import JsonOut, RunDir, admin, app, call, die, echo, emit, request, show_fields
from .operator_controls import show_usage


def agent_verb(
    verb: type[m.Request], name: str, run_dir: Path | None, as_json: bool, done: str, **fields: Any
) -> None:
    """Send one lifecycle verb; print the agent's row (or `done`) afterwards."""
    send_agent_verb(request(verb, name=name, **fields), run_dir, as_json, done)


def send_agent_verb(req: m.Request, run_dir: Path | None, as_json: bool, done: str) -> None:
    name = getattr(req, "name", "")
    with admin(run_dir, timeout=None) as c:
        reply = c.call(req)
    if isinstance(reply, m.AgentInfo):
        row = reply.agent
        emit(
            row,
            as_json,
            lambda: echo(f"{row.name}: {done} (container {row.container or '-'})"),
        )
    else:
        emit({"name": name, "done": done}, as_json, lambda: echo(f"{name}: {done}"))


@app.command("start")
def start(name: str, run_dir: RunDir = None, as_json: JsonOut = False) -> None:
    """Start an agent's container."""
    agent_verb(m.Start, name, run_dir, as_json, "started")


@app.command("stop")
def stop(
    name: str,
    now: Annotated[bool, typer.Option("--now", help="Do not wait for the running turn.")] = False,
    run_dir: RunDir = None,
    as_json: JsonOut = False,
) -> None:
    """Stop an agent's container (gracefully: the running turn may finish, bounded)."""
    agent_verb(m.Stop, name, run_dir, as_json, "stopped", graceful=not now)


@app.command("restart")
def restart(name: str, run_dir: RunDir = None, as_json: JsonOut = False) -> None:
    """Stop and start an agent's container."""
    agent_verb(m.Restart, name, run_dir, as_json, "restarted")


@app.command("rebuild")
def rebuild(name: str, run_dir: RunDir = None, as_json: JsonOut = False) -> None:
    """Recreate an agent's container from its config; the agent gets "container rebuilt"."""
    agent_verb(m.Rebuild, name, run_dir, as_json, "rebuilt")


@app.command("rebuild-all")
def rebuild_all(run_dir: RunDir = None, as_json: JsonOut = False) -> None:
    """Rebuild every agent, the manager first; the manager is told what happened."""
    agents = call(run_dir, m.RebuildAll(), m.Agents, timeout=None).agents
    emit(agents, as_json, lambda: echo("rebuilt: " + ", ".join(a.name for a in agents)))


@app.command("pause")
def pause(name: str, run_dir: RunDir = None, as_json: JsonOut = False) -> None:
    """Stop an agent and keep it stopped across daemon restarts."""
    agent_verb(m.SetPaused, name, run_dir, as_json, "paused", paused=True)


@app.command("resume")
def resume(name: str, run_dir: RunDir = None, as_json: JsonOut = False) -> None:
    """Unpause an agent and start it."""
    unpause = request(m.SetPaused, name=name, paused=False)
    call(run_dir, unpause, m.AgentInfo, timeout=None)
    agent_verb(m.Start, name, run_dir, as_json, "resumed")


@app.command("destroy")
def destroy(
    name: str,
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask.")] = False,
    run_dir: RunDir = None,
    as_json: JsonOut = False,
) -> None:
    """Stop and remove an agent; its state dir is kept as a tombstone."""
    if not yes and not typer.confirm(f"destroy {name}? (its state dir is kept as a tombstone)"):
        die("not destroyed")
    agent_verb(m.Destroy, name, run_dir, as_json, "destroyed (state kept as a tombstone)")


@app.command("status")
def status(name: str, run_dir: RunDir = None, as_json: JsonOut = False) -> None:
    """One agent's full status row."""
    req = request(m.AgentStatus, name=name)
    show_fields(call(run_dir, req, m.AgentInfo).agent, as_json)


@app.command("cancel-turn")
def cancel_turn(name: str, run_dir: RunDir = None, as_json: JsonOut = False) -> None:
    """Cancel the agent's running turn (its message is dropped); the outcome is a note event."""
    agent_verb(m.CancelTurn, name, run_dir, as_json, "cancel sent")


@app.command("compact")
def compact(name: str, run_dir: RunDir = None, as_json: JsonOut = False) -> None:
    """Ask the agent's runtime to compact its context."""
    agent_verb(m.Compact, name, run_dir, as_json, "compact sent")


@app.command("set-model")
def set_model(name: str, model: str, run_dir: RunDir = None, as_json: JsonOut = False) -> None:
    """Switch the agent's model for its next turns (until its container is rebuilt)."""
    agent_verb(m.SetModel, name, run_dir, as_json, f"set-model {model} sent", model=model)


@app.command("new-session")
def new_session(name: str, run_dir: RunDir = None, as_json: JsonOut = False) -> None:
    """Start the agent's next turn in a fresh session."""
    agent_verb(m.NewSession, name, run_dir, as_json, "new-session sent")


@app.command("stats")
def stats(
    name: Annotated[
        str | None, typer.Argument(help="One agent (default: all, as a table).")
    ] = None,
    run_dir: RunDir = None,
    as_json: JsonOut = False,
) -> None:
    """Turns, tool calls, tokens, cost and time the agent's runtime reported; without a name,
    every agent's usage (last 24 hours and in total) against its budget."""
    if name is None:
        show_usage(run_dir, as_json)
        return
    req = request(m.GetAgentStats, name=name)
    show_fields(call(run_dir, req, m.Stats).stats, as_json)


@app.command("login")
def login(
    name: str,
    clear: Annotated[bool, typer.Option("--clear", help="Forget the agent's token.")] = False,
    run_dir: RunDir = None,
    as_json: JsonOut = False,
) -> None:
    """Give a claude agent a login token (from `claude setup-token`), read from stdin."""
    token: str | None = None
    if not clear:
        if sys.stdin.isatty():
            token = typer.prompt(f"token for {name}", hide_input=True).strip()
        else:
            token = sys.stdin.read().strip()
    req = request(m.SetAgentLogin, name=name, token=token)
    send_agent_verb(req, run_dir, as_json, "login token forgotten" if clear else "login token set")
