"""`hive`: the root command. Each package owns its commands; this module only mounts them.

`c0re_priv` owns `hive c0re`, `hive up`, `hive ctl …` and `hive federation …`; `c0re_web`
owns `hive web`; `ag3nt` owns `hive agent serve|mcp` (the same app as `python -m ag3nt`). A
package is imported only when one of its commands runs, so `hive ctl ping` never loads the
dashboard or the harness, and `hive --help` lists every command from the table below without
importing any of them (tests/test_hive_cli.py holds the table to each command's own help).
The root lives outside the packages because it names all of them, and the daemon's package
may import neither client.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import typer
from typer.core import TyperCommand, TyperGroup

COMMANDS: dict[str, tuple[str, str | None, str]] = {
    # name: (module whose typer `app` has it, its name there or None for the whole app, help)
    "c0re": ("c0re_priv.cli", "c0re", "Run the privileged daemon in the foreground until SIGTERM/SIGINT."),
    "up": ("c0re_priv.cli", "up", "Bring up the whole hive from hive.toml (daemon, dashboard, agents); Ctrl-C stops all."),
    "web": ("c0re_web.cli", "web", "Serve the operator dashboard; unprivileged, it reaches the daemon only through web.sock."),
    "ctl": ("c0re_priv.cli", "ctl", "Operator control over the admin socket."),
    "agent": ("ag3nt.cli", None, "hyperhive's in-container commands: the agent harness and its MCP server."),
    "federation": ("c0re_priv.cli", "federation", "Federation over NATS JetStream (docs/federation.md)."),
}  # fmt: skip


def load(name: str) -> Any:
    """The command `name` as its package defines it (importing that package now)."""
    module, inner, _ = COMMANDS[name]
    command = typer.main.get_command(importlib.import_module(module).app)
    if inner is None:
        return command
    assert isinstance(command, TyperGroup), module
    return command.commands[inner]


class LazyRoot(TyperGroup):
    """The root group: a subcommand's package is imported only when that subcommand runs.
    Listing them for `hive --help` uses the table's help lines instead."""

    listing = False

    def list_commands(self, ctx: Any) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        if cmd_name not in COMMANDS:
            return None
        if self.listing:
            return TyperCommand(name=cmd_name, help=COMMANDS[cmd_name][2])
        return load(cmd_name)

    def format_help(self, ctx: Any, formatter: Any) -> None:
        with self._listing():
            super().format_help(ctx, formatter)

    @contextmanager
    def _listing(self) -> Iterator[None]:
        self.listing = True
        try:
            yield
        finally:
            self.listing = False


app = LazyRoot(
    name="hive",
    help="hyperhive: a host for a swarm of AI coding agents.",
    no_args_is_help=True,
)


def main() -> None:
    app(prog_name="hive")


if __name__ == "__main__":
    main()
