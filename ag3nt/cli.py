"""`python -m ag3nt serve|mcp`: the commands that run inside an agent's container.

This is the in-container entry point. It loads the harness, its runtimes and the MCP server,
and never the daemon package (`c0re_priv`): a container's command line imports only `ag3nt`,
`protocol` and their libraries (tests/test_layout.py checks it). `hive agent serve|mcp` are
this same app, mounted by the `hive` root (`hive_cli`).
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(
    help="hyperhive's in-container commands: the agent harness and its MCP server.",
    no_args_is_help=True,
)

Socket = Annotated[Path, typer.Option(envvar="HIVE_AGENT_SOCKET", help="This agent's socket.")]


def command_prefix() -> list[str]:
    """The argv prefix that runs this app again (for the MCP server a runtime starts)."""
    return [sys.executable, "-m", "ag3nt"]


@app.command("mcp")
def mcp(socket: Socket) -> None:
    """Serve the hyperhive MCP tools on stdio (started by the agent's runtime)."""
    from .mcp_server import run_stdio

    run_stdio(str(socket))


@app.command("serve")
def serve(
    socket: Socket,
    runtime: Annotated[str, typer.Option(help="scripted or claude.")] = "scripted",
    rules: Annotated[Path | None, typer.Option(help="Rules file for the scripted runtime.")] = None,
    state_dir: Annotated[
        Path | None, typer.Option("--state-dir", help="The agent's state dir (default: $HOME).")
    ] = None,
    model: Annotated[str, typer.Option(envvar="HIVE_AGENT_MODEL", help="Model to use.")] = "",
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Run the harness: lease messages, drive one runtime turn each, ack them."""
    from .serve import run_harness

    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    home = state_dir or Path(os.environ.get("HOME") or Path.cwd())
    run_harness(socket, runtime, home, rules, model)


@app.command("login-available", hidden=True)
def login_available() -> None:
    """Exit 0 when a logged-in Claude Code CLI is on this host, else 1 (asked by `hive up`,
    whose package never imports this one, to pick the default runtime)."""
    from .runtimes.claude import claude_login_available

    if not claude_login_available():
        raise typer.Exit(1)


def main(args: Sequence[str] | None = None, prog_name: str = "python -m ag3nt") -> None:
    app(args=None if args is None else list(args), prog_name=prog_name)
