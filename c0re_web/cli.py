"""`hive web` (and `python -m c0re_web web`): the dashboard's own commands.

`ensure-user` (hidden) makes the dashboard's unprivileged user; `hive up`, running as root,
asks for it in a child process before the daemon gives web.sock to that user's group, since
the daemon's package never imports this one. Neither command loads a daemon module.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Annotated

import typer

from protocol.client import default_run_dir
from protocol.terminal import VisibleFormatter, visible

from .peer_limits import PER_CLIENT_CONNECTIONS, REQUEST_SECONDS

app = typer.Typer(help="hyperhive's operator dashboard.", no_args_is_help=True)

RunDir = Annotated[
    Path | None,
    typer.Option(
        "--run-dir", envvar="HIVE_RUN_DIR", help="Sockets: admin.sock, web.sock, agents/."
    ),
]


def _die(message: str) -> None:
    typer.echo(visible(f"hive: {message}", multiline=True), err=True)
    raise typer.Exit(1)


@app.command("web")
def web(
    run_dir: RunDir = None,
    bind: Annotated[
        str, typer.Option(help="HOST:PORT to serve on (port 0 picks one); keep it loopback.")
    ] = "127.0.0.1:8765",
    user: Annotated[
        str, typer.Option(help="Unprivileged user to run as when started as root.")
    ] = "hive-web",
    allow_host: Annotated[
        list[str] | None,
        typer.Option("--allow-host", help="Another Host[:PORT] browsers use (repeatable)."),
    ] = None,
    session_hours: Annotated[float, typer.Option(min=0.01, help="How long a login lasts.")] = 12.0,
    max_connections_per_client: Annotated[
        int,
        typer.Option(
            min=1,
            help="Connections one client (a local uid, else an address) may hold open at once.",
        ),
    ] = PER_CLIENT_CONNECTIONS,
    request_timeout: Annotated[
        float,
        typer.Option(min=0.1, help="Seconds a client has to send a whole request; then closed."),
    ] = REQUEST_SECONDS,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Serve the operator dashboard; unprivileged, it reaches the daemon only through web.sock."""
    from .privileges import PrivilegeError
    from .serve import StartupError, WebOptions, serve

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(VisibleFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, handlers=[handler])
    options = WebOptions(
        web_sock=(run_dir or default_run_dir()).absolute() / "web.sock",
        bind=bind,
        user=user,
        allow_hosts=tuple(allow_host or ()),
        session_seconds=session_hours * 3600,
        max_connections_per_client=max_connections_per_client,
        request_seconds=request_timeout,
        log_level="debug" if verbose else "info",
    )
    try:
        serve(options)
    except (StartupError, PrivilegeError) as exc:
        _die(f"cannot start the dashboard: {exc}")


@app.command("ensure-user", hidden=True)
def ensure_user_command() -> None:
    """Make the dashboard's user (as root) and print its name; exit 1 with the reason if not."""
    from .privileges import WEB_USER, PrivilegeError, ensure_user

    try:
        ensure_user(WEB_USER)
    except PrivilegeError as exc:
        typer.echo(visible(str(exc)), err=True)
        raise typer.Exit(1) from None
    typer.echo(visible(WEB_USER))


def main() -> None:
    app(prog_name="python -m c0re_web")
