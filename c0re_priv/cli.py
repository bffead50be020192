"""The daemon's own commands: `hive c0re` (the daemon), `hive up` (the whole hive),
`hive ctl …` (operator control over admin.sock, in `ctl/`) and `hive federation provision`.

Each command imports what it runs when it runs, so `hive ctl …` loads only the protocol
client. This package imports neither client package (`c0re_web`, `ag3nt`), not even lazily:
`hive up` starts the dashboard as `python -m c0re_web web` and asks `python -m ag3nt
login-available` whether a logged-in Claude Code is here. The `hive` root that mounts these
next to `hive web` and `hive agent` is the top-level `hive_cli` module.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer

from protocol.federation import HIVE_NAME_PATTERN
from protocol.terminal import VisibleFormatter

from .ctl import app as ctl
from .ctl.common import die as _die
from .ctl.common import echo as _echo

app = typer.Typer(help="hyperhive: the daemon's commands.", no_args_is_help=True)
app.add_typer(ctl, name="ctl")
federation_app = typer.Typer(help="Federation over NATS JetStream (docs/federation.md).")
app.add_typer(federation_app, name="federation")

StateDir = Annotated[
    Path | None,
    typer.Option("--state-dir", envvar="HIVE_STATE_DIR", help="Daemon state (sqlite, meta repo)."),
]
RunDir = Annotated[
    Path | None,
    typer.Option(
        "--run-dir", envvar="HIVE_RUN_DIR", help="Sockets: admin.sock, web.sock, agents/."
    ),
]


GIL_SWITCH_SECONDS = 0.001
"""The daemon's GIL switch interval (Python's default is 5 ms). The daemon has two busy
threads, trio's and the store writer's; when one wants the GIL while the other runs Python,
it waits up to this long. During a reminder burst `bench/reminders.py` measured `Send` p50
and p99 ~15 % lower with 1 ms than with 5 ms, at no more daemon CPU."""


def _daemon_process(verbose: bool) -> None:
    """What a process that runs the daemon sets up before it starts."""
    _setup_logging(verbose)
    sys.setswitchinterval(GIL_SWITCH_SECONDS)


def _setup_logging(verbose: bool = False) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(VisibleFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, handlers=[handler])


# ------------------------------------------------------------------ daemon


@contextmanager
def _startup_errors() -> Iterator[None]:
    """Turn a failure to bind or open state into one clear line instead of a traceback."""
    from .containers.host import BadHiveId
    from .private_state import UnsafeState
    from .server import DaemonAlreadyRunning
    from .store import CannotOpenStore

    expected = (OSError, DaemonAlreadyRunning, UnsafeState, CannotOpenStore, BadHiveId)
    try:
        yield
    except expected as exc:
        _die(f"cannot start: {exc}")
    except BaseExceptionGroup as group:
        match, _ = group.split(expected)
        if match is None:
            raise
        leaf: BaseException = match
        while isinstance(leaf, BaseExceptionGroup):
            leaf = leaf.exceptions[0]
        _die(f"cannot start: {leaf}")


@app.command("c0re")
def c0re(
    state_dir: StateDir = None,
    run_dir: RunDir = None,
    config: Annotated[Path | None, typer.Option(help="hive.toml to read settings from.")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Run the privileged daemon in the foreground until SIGTERM/SIGINT."""
    import trio

    from .config import ConfigError, HiveConfig, load_config, resolve_paths
    from .daemon import run_hive

    _daemon_process(verbose)
    try:
        cfg = load_config(config) if config is not None else HiveConfig()
    except ConfigError as exc:
        _die(str(exc))
    paths = resolve_paths(cfg.hive, state_dir, run_dir)
    with _startup_errors():
        trio.run(run_hive, cfg, paths)


@app.command("up")
def up(
    config: Annotated[
        Path, typer.Option(help="hive.toml; a default is written on first run.")
    ] = Path("hive.toml"),
    state_dir: StateDir = None,
    run_dir: RunDir = None,
    web_port: Annotated[
        int | None, typer.Option(help="Dashboard port (default from config).")
    ] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Bring up the whole hive from hive.toml (daemon, dashboard, agents); Ctrl-C stops all."""
    import trio

    from .config import ConfigError, load_config, resolve_paths, write_default_config
    from .hive import Hive
    from .up import run_up, web_available, web_port_problem

    _daemon_process(verbose)
    if not config.exists():
        runtime = _default_runtime()
        write_default_config(config, runtime)
        _echo(f"wrote a default configuration to {config} (runtime: {runtime})")
    try:
        cfg = load_config(config)
    except ConfigError as exc:
        _die(str(exc))
    if web_port is not None:
        cfg.hive.web_port = web_port
    cfg.hive.web_group = _web_group(cfg.hive.web_group)
    paths = resolve_paths(cfg.hive, state_dir, run_dir)
    if web_available() and (problem := web_port_problem(cfg.hive.web_port)) is not None:
        _die(problem)

    def ready(hive: Hive) -> None:
        lifecycle = hive.lifecycle
        assert lifecycle is not None
        backend = lifecycle.backend
        _echo(f"hyperhive {hive.rev} is up")
        _echo(f"  state:    {paths.state_dir}")
        _echo(f"  sockets:  {paths.run_dir}   (HIVE_RUN_DIR={paths.run_dir} hive ctl …)")
        _echo(f"  backend:  {backend.name}: {backend.isolation}")
        if backend.name == "process":
            _echo("  WARNING:  the process backend does not isolate agents at all", err=True)
        if (why := backend.unavailable()) is not None:
            _echo(f"  WARNING:  agents cannot start: {why}", err=True)
        for name in hive.registry.names():
            rec = hive.registry.agents[name]
            _echo(
                f"  agent:    {name:<12} {rec.role:<8} {rec.runtime:<9} {lifecycle.log_file(name)}"
            )
        _echo("Ctrl-C stops everything.")

    with _startup_errors():
        trio.run(run_up, cfg, paths, ready)


def _default_runtime() -> str:
    """`claude` when a logged-in Claude Code CLI is here, else the offline `scripted` runtime.

    The harness package knows what a login looks like; it is asked in a child process
    (`python -m ag3nt login-available`) because this package never imports it. A build
    without the harness answers with an error, which means `scripted`."""
    probe = [sys.executable, "-m", "ag3nt", "login-available"]
    done = subprocess.run(probe, capture_output=True, check=False)
    return "claude" if done.returncode == 0 else "scripted"


def _web_group(configured: str) -> str:
    """As root, `hive up` gives web.sock to the dashboard user's group unless told otherwise.

    The dashboard's package makes that user (`python -m c0re_web ensure-user`), in a child
    process: this package never imports it. A build without the dashboard keeps `configured`."""
    from .up import web_available

    if configured or os.geteuid() != 0 or not web_available():
        return configured
    done = subprocess.run(
        [sys.executable, "-m", "c0re_web", "ensure-user"],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        _die(f"cannot prepare the dashboard's user: {done.stderr.strip()}")
    return done.stdout.strip()


@federation_app.command("provision")
def federation_provision(
    hives: Annotated[list[str], typer.Argument(help="The hives to create consumers for.")],
    url: Annotated[str, typer.Option(help="NATS server URL(s), comma-separated.")] = (
        "nats://127.0.0.1:4222"
    ),
    user: Annotated[str, typer.Option(help="An administrator's NATS user.")] = "",
    password_file: Annotated[Path | None, typer.Option(help="That user's password.")] = None,
    token_file: Annotated[Path | None, typer.Option(help="A NATS token instead.")] = None,
    creds_file: Annotated[Path | None, typer.Option(help="A NATS .creds file instead.")] = None,
    tls_ca: Annotated[Path | None, typer.Option(help="CA bundle of the server (TLS).")] = None,
    tls_cert: Annotated[Path | None, typer.Option(help="Client certificate (TLS).")] = None,
    tls_key: Annotated[Path | None, typer.Option(help="Its key.")] = None,
    namespace: Annotated[str, typer.Option(help="Subject prefix of the federation.")] = (
        "hyperhive"
    ),
    max_age_days: Annotated[
        float, typer.Option(help="How long an envelope nobody consumed is kept.")
    ] = 14.0,
    ack_wait_seconds: Annotated[
        float, typer.Option(help="How long NATS waits for a hive's ack.")
    ] = 30.0,
) -> None:
    """Create (or check) the federation's streams and the consumers of HIVES, once, as an
    administrator; hives then run with `provision = false` and no right to change them."""
    import msgspec

    from .config import FederationSettings
    from .nats_link import LinkError, provision_federation

    try:
        settings = msgspec.convert(
            {
                "hive": "provisioner",
                "url": url,
                "user": user,
                "password_file": str(password_file or ""),
                "token_file": str(token_file or ""),
                "creds_file": str(creds_file or ""),
                "tls_ca": str(tls_ca or ""),
                "tls_cert": str(tls_cert or ""),
                "tls_key": str(tls_key or ""),
                "namespace": namespace,
                "ack_wait_seconds": ack_wait_seconds,
            },
            FederationSettings,
        )
    except msgspec.ValidationError as exc:
        _die(str(exc))
    for hive in hives:
        if not re.match(HIVE_NAME_PATTERN, hive):
            _die(f"{hive!r} is not a hive name: a lowercase letter, then up to 30 of [a-z0-9-]")
    started = time.monotonic()
    try:
        created = asyncio.run(provision_federation(settings, hives, max_age_days))
    except LinkError as exc:
        _die(str(exc))
    for what in created:
        _echo(f"created {what}")
    _echo(
        f"federation {namespace!r} ready for {', '.join(hives)}"
        f" ({len(created)} created, {time.monotonic() - started:.1f}s)"
    )


def main() -> None:
    app()
