"""What every `hive ctl` command shares: the admin-socket connection, its one error path,
the options every command takes, and how a result is printed (a table, `key value` lines or
`--json`). It imports only `protocol`: `hive ctl` never loads the daemon's store or broker.

Every line printed goes through `protocol.terminal`: agent-written text is shown, never
obeyed.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

import msgspec
import typer

from protocol import messages as m
from protocol.client import HiveError, SyncClient, default_run_dir
from protocol.terminal import json_text, visible
from protocol.validate import InvalidRequest, build

app = typer.Typer(help="Operator control over the admin socket.", no_args_is_help=True)

RunDir = Annotated[
    Path | None,
    typer.Option(
        "--run-dir", envvar="HIVE_RUN_DIR", help="Sockets: admin.sock, web.sock, agents/."
    ),
]
JsonOut = Annotated[bool, typer.Option("--json", help="Machine-readable JSON output.")]
R = TypeVar("R", bound=m.Reply)
Q = TypeVar("Q", bound=m.Request)


def echo(text: str, err: bool = False) -> None:
    """Every line `hive` prints: agent-written text in it is shown, never obeyed."""
    typer.echo(visible(text, multiline=True), err=err)


def die(message: str, code: int = 1) -> NoReturn:
    echo(f"hive: {message}", err=True)
    raise typer.Exit(code)


@contextmanager
def admin(run_dir: Path | None, timeout: float | None = 30.0) -> Iterator[SyncClient]:
    """A connection to admin.sock; any `HiveError` inside the block ends the command with the
    daemon's message. Failing to connect at all adds a hint that the daemon may be down."""
    path = (run_dir or default_run_dir()) / "admin.sock"
    connected = False
    try:
        with SyncClient.connect(str(path), client="hive-ctl", timeout=timeout) as client:
            connected = True
            yield client
    except HiveError as exc:
        if connected or exc.code != "unavailable":
            die(exc.message)
        die(f"{exc.message} (is the daemon running?)")


def call(run_dir: Path | None, req: m.Request, reply: type[R], timeout: float | None = 30.0) -> R:
    """One request, its one expected reply."""
    with admin(run_dir, timeout) as c:
        return c.expect(req, reply)


def request(verb: type[Q], what: str | None = None, **fields: Any) -> Q:
    """The request the operator typed, checked by the verb's own Struct (`protocol.validate`);
    a refused field ends the command with `invalid <what>: <msgspec's reason>`."""
    try:
        return build(verb, fields)
    except InvalidRequest as exc:
        die(f"invalid {what or verb.__name__}: {exc}")


def emit(value: Any, as_json: bool, human: Callable[[], None]) -> None:
    if as_json:
        typer.echo(json_text(value))
    else:
        human()


def table(rows: list[list[str]], header: list[str]) -> None:
    """Columns of one-line cells: a newline or tab an agent wrote is shown as `\\n`/`\\t`."""
    cells = [[visible(str(cell)) for cell in row] for row in [header, *rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    for row in cells:
        echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


def show_fields(value: msgspec.Struct, as_json: bool) -> None:
    """One Struct as `key value` lines (or JSON)."""

    def human() -> None:
        for key, field_value in msgspec.structs.asdict(value).items():
            typer.echo(f"{key:22} {visible(str(field_value))}")

    emit(value, as_json, human)


def ago(ts: float | None) -> str:
    if ts is None:
        return "-"
    seconds = max(0, int(time.time() - ts))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit} ago"
    return f"{seconds}s ago"


def due(ts: float) -> str:
    ahead = int(ts - time.time())
    if ahead <= 0:
        return ago(ts)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if ahead >= size:
            return f"in {ahead // size}{unit}"
    return f"in {ahead}s"
