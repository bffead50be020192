"""`hive ctl ping|info|agents|agent add|agent rm`: the daemon and its registry."""

from __future__ import annotations

import time
from typing import Annotated

import typer

from protocol import messages as m

from .common import JsonOut, RunDir, admin, ago, app, call, echo, emit, request, table

agent_app = typer.Typer(help="Register and remove agents.", no_args_is_help=True)
app.add_typer(agent_app, name="agent")


@app.command("ping")
def ping(run_dir: RunDir = None, as_json: JsonOut = False) -> None:
    """Round-trip to the daemon."""
    with admin(run_dir) as c:
        start = time.perf_counter()
        pong = c.expect(m.Ping(), m.Pong)
        rtt = (time.perf_counter() - start) * 1000
    emit(
        {"ok": True, "rtt_ms": rtt, "server_time": pong.server_time},
        as_json,
        lambda: echo(f"pong in {rtt:.2f} ms"),
    )


@app.command("info")
def info(run_dir: RunDir = None, as_json: JsonOut = False) -> None:
    """Daemon revision, protocol, uptime and directories."""
    got = call(run_dir, m.ServerInfo(), m.Info)

    def human() -> None:
        echo(f"rev:       {got.rev}\nprotocol:  {got.protocol}")
        echo(f"uptime:    {got.uptime_seconds:.0f}s\nstate dir: {got.state_dir}")
        echo(f"run dir:   {got.run_dir}\nagents:    {got.agents}")

    emit(got, as_json, human)


@app.command("agents")
def agents(
    all_: Annotated[
        bool, typer.Option("--all", help="Also the agents of the other hives (read only).")
    ] = False,
    run_dir: RunDir = None,
    as_json: JsonOut = False,
) -> None:
    """List registered agents (`--all`: and every federated hive's, as `name@hive`)."""
    got = call(run_dir, m.ListAgents(include_remote=all_), m.Agents)
    rows = [
        [
            a.name,
            a.role,
            "yes" if a.running else "no",
            str(a.queued),
            str(a.leased),
            ago(a.last_seen),
            (f"[held: {a.held}] " if a.held else "") + a.status_text,
        ]
        for a in got.agents
    ]
    rows += [
        [
            r.address,
            r.role,
            "yes" if r.running else "no",
            str(r.queued),
            "-",
            ago(r.heard_at),
            r.status_text,
        ]
        for r in got.remote
    ]
    emit(
        {"agents": got.agents, "remote": got.remote} if all_ else got.agents,
        as_json,
        lambda: table(rows, ["NAME", "ROLE", "RUNNING", "QUEUED", "LEASED", "LAST SEEN", "STATUS"]),
    )


@agent_app.command("add")
def agent_add(
    name: str,
    role: Annotated[str, typer.Option(help="agent or manager")] = "agent",
    model: str = "",
    runtime: str = "scripted",
    allow: Annotated[list[str] | None, typer.Option(help="Allowed recipient (repeatable).")] = None,
    run_dir: RunDir = None,
    as_json: JsonOut = False,
) -> None:
    """Register an agent (opens its socket)."""
    req = request(
        m.AddAgent,
        "agent",
        name=name,
        role=role,
        model=model,
        runtime=runtime,
        allowed_recipients=allow or None,
    )
    row = call(run_dir, req, m.AgentInfo).agent
    emit(row, as_json, lambda: echo(f"added {row.role} {row.name}"))


@agent_app.command("rm")
def agent_rm(name: str, run_dir: RunDir = None, as_json: JsonOut = False) -> None:
    """Remove an agent (closes its socket; its messages stay in the log)."""
    req = request(m.RemoveAgent, "agent name", name=name)
    call(run_dir, req, m.Ok)
    emit({"removed": name}, as_json, lambda: echo(f"removed {name}"))
