"""`hive`: the one command-line entry point (daemon, operator control, agent harness).

Subcommands import what they run lazily, so `hive ctl …` loads only the protocol client, never
the daemon's store or broker. `hive agent …` is an alias of `python -m ag3nt …`, the
in-container entry point the daemon itself launches.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, NoReturn

import msgspec
import typer

from protocol import messages as m
from protocol.client import HiveError, SyncClient

from .terminal import VisibleFormatter, json_text, visible

app = typer.Typer(help="hyperhive: a host for a swarm of AI coding agents.", no_args_is_help=True)
ctl = typer.Typer(help="Operator control over the admin socket.", no_args_is_help=True)
agent_ctl = typer.Typer(help="Register and remove agents.", no_args_is_help=True)
app.add_typer(ctl, name="ctl")
ctl.add_typer(agent_ctl, name="agent")

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
JsonOut = Annotated[bool, typer.Option("--json", help="Machine-readable JSON output.")]


def _setup_logging(verbose: bool = False) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(VisibleFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, handlers=[handler])


def _echo(text: str, err: bool = False) -> None:
    """Every line `hive` prints: agent-written text in it is shown, never obeyed."""
    typer.echo(visible(text, multiline=True), err=err)


def _die(message: str, code: int = 1) -> NoReturn:
    _echo(f"hive: {message}", err=True)
    raise typer.Exit(code)


def _run_dir(run_dir: Path | None) -> Path:
    if run_dir is not None:
        return run_dir
    from .config import default_dirs

    return default_dirs()[1]


@contextmanager
def _admin(run_dir: Path | None, timeout: float | None = 30.0) -> Iterator[SyncClient]:
    path = _run_dir(run_dir) / "admin.sock"
    try:
        with SyncClient.connect(str(path), client="hive-ctl", timeout=timeout) as client:
            yield client
    except HiveError as exc:
        _die(
            exc.message if exc.code != "unavailable" else f"{exc.message} (is the daemon running?)"
        )


def _emit(value: Any, as_json: bool, human: Callable[[], None]) -> None:
    if as_json:
        typer.echo(json_text(value))
    else:
        human()


def _table(rows: list[list[str]], header: list[str]) -> None:
    """Columns of one-line cells: a newline or tab an agent wrote is shown as `\\n`/`\\t`."""
    cells = [[visible(str(cell)) for cell in row] for row in [header, *rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    for row in cells:
        _echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


def _ago(ts: float | None) -> str:
    if ts is None:
        return "-"
    seconds = max(0, int(time.time() - ts))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit} ago"
    return f"{seconds}s ago"


# ------------------------------------------------------------------ daemon


@contextmanager
def _startup_errors() -> Iterator[None]:
    """Turn a failure to bind or open state into one clear line instead of a traceback."""
    from .private_state import UnsafeState
    from .server import DaemonAlreadyRunning
    from .store import CannotOpenStore

    expected = (OSError, DaemonAlreadyRunning, UnsafeState, CannotOpenStore)
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
    from .hive import run_hive

    _setup_logging(verbose)
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
    from .up import run_up

    _setup_logging(verbose)
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
    """`claude` when a logged-in Claude Code CLI is here, else the offline `scripted` runtime."""
    try:
        from ag3nt.runtimes.claude import claude_login_available
    except ImportError:
        return "scripted"
    return "claude" if claude_login_available() else "scripted"


def _web_group(configured: str) -> str:
    """As root, `hive up` gives web.sock to the dashboard user's group unless told otherwise."""
    import os

    if configured or os.geteuid() != 0:
        return configured
    try:
        from c0re_web.privileges import WEB_USER, PrivilegeError, ensure_user
    except ImportError:
        return configured
    try:
        ensure_user(WEB_USER)
    except PrivilegeError as exc:
        _die(f"cannot prepare the dashboard's user: {exc}")
    return WEB_USER


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
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Serve the operator dashboard; unprivileged, it reaches the daemon only through web.sock."""
    from c0re_web.privileges import PrivilegeError
    from c0re_web.serve import StartupError, WebOptions, serve

    _setup_logging(verbose)
    options = WebOptions(
        web_sock=_run_dir(run_dir).absolute() / "web.sock",
        bind=bind,
        user=user,
        allow_hosts=tuple(allow_host or ()),
        session_seconds=session_hours * 3600,
        log_level="debug" if verbose else "info",
    )
    try:
        serve(options)
    except (StartupError, PrivilegeError) as exc:
        _die(f"cannot start the dashboard: {exc}")


# ------------------------------------------------------------------ ctl


@ctl.command("ping")
def ctl_ping(run_dir: RunDir = None, state_dir: StateDir = None, as_json: JsonOut = False) -> None:
    """Round-trip to the daemon."""
    with _admin(run_dir) as c:
        start = time.perf_counter()
        pong = c.expect(m.Ping(), m.Pong)
        rtt = (time.perf_counter() - start) * 1000
    _emit(
        {"ok": True, "rtt_ms": rtt, "server_time": pong.server_time},
        as_json,
        lambda: _echo(f"pong in {rtt:.2f} ms"),
    )


@ctl.command("info")
def ctl_info(run_dir: RunDir = None, state_dir: StateDir = None, as_json: JsonOut = False) -> None:
    """Daemon revision, protocol, uptime and directories."""
    with _admin(run_dir) as c:
        info = c.expect(m.ServerInfo(), m.Info)

    def human() -> None:
        _echo(f"rev:       {info.rev}\nprotocol:  {info.protocol}")
        _echo(f"uptime:    {info.uptime_seconds:.0f}s\nstate dir: {info.state_dir}")
        _echo(f"run dir:   {info.run_dir}\nagents:    {info.agents}")

    _emit(info, as_json, human)


@ctl.command("agents")
def ctl_agents(
    all_: Annotated[
        bool, typer.Option("--all", help="Also the agents of the other hives (read only).")
    ] = False,
    run_dir: RunDir = None,
    state_dir: StateDir = None,
    as_json: JsonOut = False,
) -> None:
    """List registered agents (`--all`: and every federated hive's, as `name@hive`)."""
    with _admin(run_dir) as c:
        got = c.expect(m.ListAgents(include_remote=all_), m.Agents)
    agents = got.agents
    rows = [
        [
            a.name,
            a.role,
            "yes" if a.running else "no",
            str(a.queued),
            str(a.leased),
            _ago(a.last_seen),
            a.status_text,
        ]
        for a in agents
    ]
    rows += [
        [
            r.address,
            r.role,
            "yes" if r.running else "no",
            str(r.queued),
            "-",
            _ago(r.heard_at),
            r.status_text,
        ]
        for r in got.remote
    ]
    _emit(
        {"agents": agents, "remote": got.remote} if all_ else agents,
        as_json,
        lambda: _table(
            rows, ["NAME", "ROLE", "RUNNING", "QUEUED", "LEASED", "LAST SEEN", "STATUS"]
        ),
    )


@agent_ctl.command("add")
def ctl_agent_add(
    name: str,
    role: Annotated[str, typer.Option(help="agent or manager")] = "agent",
    model: str = "",
    runtime: str = "scripted",
    allow: Annotated[list[str] | None, typer.Option(help="Allowed recipient (repeatable).")] = None,
    run_dir: RunDir = None,
    state_dir: StateDir = None,
    as_json: JsonOut = False,
) -> None:
    """Register an agent (opens its socket)."""
    try:
        req = msgspec.convert(
            {
                "name": name,
                "role": role,
                "model": model,
                "runtime": runtime,
                "allowed_recipients": allow or None,
            },
            m.AddAgent,
        )
    except msgspec.ValidationError as exc:
        _die(f"invalid agent: {exc}")
    with _admin(run_dir) as c:
        try:
            row = c.expect(req, m.AgentInfo).agent
        except HiveError as exc:
            _die(exc.message)
    _emit(row, as_json, lambda: _echo(f"added {row.role} {row.name}"))


@agent_ctl.command("rm")
def ctl_agent_rm(
    name: str, run_dir: RunDir = None, state_dir: StateDir = None, as_json: JsonOut = False
) -> None:
    """Remove an agent (closes its socket; its messages stay in the log)."""
    try:
        req = msgspec.convert({"name": name}, m.RemoveAgent)
    except msgspec.ValidationError as exc:
        _die(f"invalid agent name: {exc}")
    with _admin(run_dir) as c:
        try:
            c.expect(req, m.Ok)
        except HiveError as exc:
            _die(exc.message)
    _emit({"removed": name}, as_json, lambda: _echo(f"removed {name}"))


@ctl.command("events")
def ctl_events(
    kinds: Annotated[
        list[str] | None, typer.Option("--kind", help="Only this kind (repeatable).")
    ] = None,
    since: Annotated[int | None, typer.Option(help="Replay events after this seq.")] = None,
    count: Annotated[int | None, typer.Option(help="Stop after this many events.")] = None,
    run_dir: RunDir = None,
    state_dir: StateDir = None,
    as_json: JsonOut = False,
) -> None:
    """Follow the event stream (Ctrl-C to stop)."""
    seen = 0
    with _admin(run_dir, timeout=None) as c:
        try:
            for frame in c.frames(m.Subscribe(kinds=kinds, since_seq=since)):
                if isinstance(frame, m.Resync | m.Subscribed):
                    if not as_json:
                        _echo(f"# {type(frame).__name__.lower()} at seq {frame.seq}")
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
                        _echo(
                            f"{ev.seq} {ev.__struct_config__.tag} {json.dumps(msgspec.to_builtins(fields))}"
                        )
                    seen += 1
                    if count is not None and seen >= count:
                        return
        except HiveError as exc:
            _die(exc.message)
        except KeyboardInterrupt:
            return


@ctl.command("send")
def ctl_send(
    to: Annotated[str, typer.Argument(help="Agent name, or * for every agent.")],
    body: str,
    reply_to: Annotated[
        int | None, typer.Option("--reply-to", help="Message id this answers.")
    ] = None,
    run_dir: RunDir = None,
    state_dir: StateDir = None,
    as_json: JsonOut = False,
) -> None:
    """Send a message as the operator."""
    with _admin(run_dir) as c:
        try:
            sent = c.expect(m.OperatorSend(to=to, body=body, in_reply_to=reply_to), m.Sent)
        except HiveError as exc:
            _die(exc.message)
    _emit(
        sent,
        as_json,
        lambda: _echo(f"sent {len(sent.message_ids)} message(s): {sent.message_ids}"),
    )


@ctl.command("messages")
def ctl_messages(
    agent: Annotated[str | None, typer.Option(help="Only messages from or to this agent.")] = None,
    thread: Annotated[int | None, typer.Option(help="Only this conversation.")] = None,
    state: Annotated[
        str | None,
        typer.Option(help="Only messages in this state: queued, leased, acked, dead, dropped."),
    ] = None,
    limit: int = 50,
    before: Annotated[int | None, typer.Option(help="Only messages with a smaller id.")] = None,
    run_dir: RunDir = None,
    state_dir: StateDir = None,
    as_json: JsonOut = False,
) -> None:
    """Recent messages, newest first; `--state dead` lists those set aside after failing."""
    req = _agent_request(
        m.ListMessages, agent=agent, thread=thread, limit=limit, before=before, state=state
    )
    with _admin(run_dir) as c:
        try:
            rows = c.expect(req, m.Messages).messages
        except HiveError as exc:
            _die(exc.message)
    failures = any(r.failures for r in rows)
    _emit(
        rows,
        as_json,
        lambda: _table(
            [
                [
                    str(r.id),
                    r.from_,
                    r.to,
                    r.state,
                    str(r.in_reply_to or ""),
                    _ago(r.created_at),
                    *([f"{r.failures} ({r.last_error or ''})"[:40]] if failures else []),
                    r.body.replace("\n", " ")[:70],
                ]
                for r in rows
            ],
            ["ID", "FROM", "TO", "STATE", "RE", "SENT", *(["FAILED"] if failures else []), "BODY"],
        ),
    )


@ctl.command("retry-message")
def ctl_retry_message(
    message_id: int, run_dir: RunDir = None, state_dir: StateDir = None, as_json: JsonOut = False
) -> None:
    """Queue a dead message again, with a fresh count of failures."""
    req = _agent_request(m.RetryMessage, id=message_id)
    with _admin(run_dir) as c:
        try:
            row = c.expect(req, m.Messages).messages[0]
        except HiveError as exc:
            _die(exc.message)
    _emit(row, as_json, lambda: typer.echo(f"message #{row.id} to {row.to} is queued again"))


@ctl.command("drop-message")
def ctl_drop_message(
    message_id: int, run_dir: RunDir = None, state_dir: StateDir = None, as_json: JsonOut = False
) -> None:
    """Give up on a dead message (it stays listed as dropped)."""
    req = _agent_request(m.DropMessage, id=message_id)
    with _admin(run_dir) as c:
        try:
            c.expect(req, m.Ok)
        except HiveError as exc:
            _die(exc.message)
    _emit({"dropped": message_id}, as_json, lambda: typer.echo(f"message #{message_id} dropped"))


@ctl.command("questions")
def ctl_questions(
    all_: Annotated[
        bool, typer.Option("--all", help="Include answered, cancelled and expired.")
    ] = False,
    target: Annotated[
        str, typer.Option(help="Whose questions: operator, an agent, or * for all.")
    ] = "operator",
    run_dir: RunDir = None,
    state_dir: StateDir = None,
    as_json: JsonOut = False,
) -> None:
    """Questions waiting for an answer (by default the operator's)."""
    with _admin(run_dir) as c:
        rows = c.expect(
            m.ListQuestions(target=None if target == "*" else target, include_closed=all_),
            m.Questions,
        ).questions
    _emit(
        rows,
        as_json,
        lambda: _table(
            [
                [
                    str(q.id),
                    q.asker,
                    q.target,
                    q.state,
                    _ago(q.asked_at),
                    q.question[:60] + (f" [{' | '.join(q.options)}]" if q.options else ""),
                ]
                for q in rows
            ],
            ["ID", "ASKER", "TARGET", "STATE", "ASKED", "QUESTION"],
        ),
    )


@ctl.command("answer")
def ctl_answer(
    question_id: int,
    text: str,
    run_dir: RunDir = None,
    state_dir: StateDir = None,
    as_json: JsonOut = False,
) -> None:
    """Answer an operator question."""
    with _admin(run_dir) as c:
        try:
            c.expect(m.AnswerQuestion(question_id=question_id, answer=text), m.Ok)
        except HiveError as exc:
            _die(exc.message)
    _emit({"answered": question_id}, as_json, lambda: _echo(f"answered #{question_id}"))


@ctl.command("threads")
def ctl_threads(
    agent: str, run_dir: RunDir = None, state_dir: StateDir = None, as_json: JsonOut = False
) -> None:
    """What is still open against an agent (questions both ways, approvals)."""
    try:
        req = msgspec.convert({"agent": agent}, m.GetAgentOpenThreads)
    except msgspec.ValidationError as exc:
        _die(f"invalid agent name: {exc}")
    with _admin(run_dir) as c:
        try:
            threads = c.expect(req, m.OpenThreads).threads
        except HiveError as exc:
            _die(exc.message)

    def human() -> None:
        rows = []
        for t in threads:
            if isinstance(t, m.QuestionThread):
                who = f"{'waiting on' if t.role == 'asker' else 'owes'} {t.counterparty}"
                rows.append(["question", str(t.id), who, f"{t.age_seconds:.0f}s", t.summary])
            else:
                rows.append(["approval", str(t.id), "operator", f"{t.age_seconds:.0f}s", t.summary])
        _table(rows, ["KIND", "ID", "WITH", "AGE", "SUMMARY"])

    _emit(threads, as_json, human)


def _due(ts: float) -> str:
    ahead = int(ts - time.time())
    if ahead <= 0:
        return _ago(ts)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if ahead >= size:
            return f"in {ahead // size}{unit}"
    return f"in {ahead}s"


@ctl.command("reminders")
def ctl_reminders(
    agent: Annotated[str | None, typer.Option(help="Only this agent's reminders.")] = None,
    state: Annotated[
        str | None, typer.Option(help="Only this state: pending, delivered, failed, cancelled.")
    ] = None,
    limit: int = 100,
    run_dir: RunDir = None,
    state_dir: StateDir = None,
    as_json: JsonOut = False,
) -> None:
    """Reminders, newest first; a failed one shows its attempts and last error."""
    try:
        req = msgspec.convert({"agent": agent, "state": state, "limit": limit}, m.ListReminders)
    except msgspec.ValidationError as exc:
        _die(f"invalid filter: {exc}")
    with _admin(run_dir) as c:
        try:
            rows = c.expect(req, m.Reminders).reminders
        except HiveError as exc:
            _die(exc.message)
    _emit(
        rows,
        as_json,
        lambda: _table(
            [
                [
                    str(r.id),
                    r.owner,
                    r.state,
                    _due(r.due_at),
                    str(r.attempt_count),
                    (r.last_error or "")[:40],
                    r.body.replace("\n", " ")[:50],
                ]
                for r in rows
            ],
            ["ID", "OWNER", "STATE", "DUE", "ATTEMPTS", "LAST ERROR", "BODY"],
        ),
    )


@ctl.command("retry-reminder")
def ctl_retry_reminder(
    reminder_id: int, run_dir: RunDir = None, state_dir: StateDir = None, as_json: JsonOut = False
) -> None:
    """Queue a failed reminder again: due at once, with a fresh set of attempts."""
    try:
        req = msgspec.convert({"id": reminder_id}, m.RetryReminder)
    except msgspec.ValidationError as exc:
        _die(f"invalid reminder id: {exc}")
    with _admin(run_dir) as c:
        try:
            row = c.expect(req, m.ReminderInfo).reminder
        except HiveError as exc:
            _die(exc.message)
    _emit(row, as_json, lambda: _echo(f"reminder #{row.id} of {row.owner} is pending again"))


# ------------------------------------------------------------------ lifecycle


def _agent_request(verb: type[m.Request], **fields: Any) -> m.Request:
    try:
        return msgspec.convert(fields, verb)
    except msgspec.ValidationError as exc:
        _die(f"invalid {verb.__name__}: {exc}")


def _agent_verb(
    verb: type[m.Request], name: str, run_dir: Path | None, as_json: bool, done: str, **fields: Any
) -> None:
    """Send one lifecycle verb; print the agent's row (or `done`) afterwards."""
    _agent_verb_request(_agent_request(verb, name=name, **fields), run_dir, as_json, done)


def _agent_verb_request(req: m.Request, run_dir: Path | None, as_json: bool, done: str) -> None:
    name = getattr(req, "name", "")
    with _admin(run_dir, timeout=None) as c:
        try:
            reply = c.call(req)
        except HiveError as exc:
            _die(exc.message)
    if isinstance(reply, m.AgentInfo):
        row = reply.agent
        _emit(
            row,
            as_json,
            lambda: _echo(f"{row.name}: {done} (container {row.container or '-'})"),
        )
    else:
        _emit({"name": name, "done": done}, as_json, lambda: _echo(f"{name}: {done}"))


@ctl.command("start")
def ctl_start(
    name: str, run_dir: RunDir = None, state_dir: StateDir = None, as_json: JsonOut = False
) -> None:
    """Start an agent's container."""
    _agent_verb(m.Start, name, run_dir, as_json, "started")


@ctl.command("stop")
def ctl_stop(
    name: str,
    now: Annotated[bool, typer.Option("--now", help="Do not wait for the running turn.")] = False,
    run_dir: RunDir = None,
    state_dir: StateDir = None,
    as_json: JsonOut = False,
) -> None:
    """Stop an agent's container (gracefully: the running turn may finish, bounded)."""
    _agent_verb(m.Stop, name, run_dir, as_json, "stopped", graceful=not now)


@ctl.command("restart")
def ctl_restart(
    name: str, run_dir: RunDir = None, state_dir: StateDir = None, as_json: JsonOut = False
) -> None:
    """Stop and start an agent's container."""
    _agent_verb(m.Restart, name, run_dir, as_json, "restarted")


@ctl.command("rebuild")
def ctl_rebuild(
    name: str, run_dir: RunDir = None, state_dir: StateDir = None, as_json: JsonOut = False
) -> None:
    """Recreate an agent's container from its config; the agent gets "container rebuilt"."""
    _agent_verb(m.Rebuild, name, run_dir, as_json, "rebuilt")


@ctl.command("rebuild-all")
def ctl_rebuild_all(
    run_dir: RunDir = None, state_dir: StateDir = None, as_json: JsonOut = False
) -> None:
    """Rebuild every agent, the manager first; the manager is told what happened."""
    with _admin(run_dir, timeout=None) as c:
        try:
            agents = c.expect(m.RebuildAll(), m.Agents).agents
        except HiveError as exc:
            _die(exc.message)
    _emit(agents, as_json, lambda: _echo("rebuilt: " + ", ".join(a.name for a in agents)))


@ctl.command("pause")
def ctl_pause(
    name: str, run_dir: RunDir = None, state_dir: StateDir = None, as_json: JsonOut = False
) -> None:
    """Stop an agent and keep it stopped across daemon restarts."""
    _agent_verb(m.SetPaused, name, run_dir, as_json, "paused", paused=True)


@ctl.command("resume")
def ctl_resume(
    name: str, run_dir: RunDir = None, state_dir: StateDir = None, as_json: JsonOut = False
) -> None:
    """Unpause an agent and start it."""
    unpause = _agent_request(m.SetPaused, name=name, paused=False)
    with _admin(run_dir, timeout=None) as c:
        try:
            c.expect(unpause, m.AgentInfo)
        except HiveError as exc:
            _die(exc.message)
    _agent_verb(m.Start, name, run_dir, as_json, "resumed")


@ctl.command("destroy")
def ctl_destroy(
    name: str,
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask.")] = False,
    run_dir: RunDir = None,
    state_dir: StateDir = None,
    as_json: JsonOut = False,
) -> None:
    """Stop and remove an agent; its state dir is kept as a tombstone."""
    if not yes and not typer.confirm(f"destroy {name}? (its state dir is kept as a tombstone)"):
        _die("not destroyed")
    _agent_verb(m.Destroy, name, run_dir, as_json, "destroyed (state kept as a tombstone)")


@ctl.command("status")
def ctl_status(
    name: str, run_dir: RunDir = None, state_dir: StateDir = None, as_json: JsonOut = False
) -> None:
    """One agent's full status row."""
    req = _agent_request(m.AgentStatus, name=name)
    _show_fields(run_dir, as_json, lambda c: c.expect(req, m.AgentInfo).agent)


def _show_fields(
    run_dir: Path | None, as_json: bool, fetch: Callable[[SyncClient], msgspec.Struct]
) -> None:
    """Fetch one Struct from the daemon and print it as `key value` lines (or JSON)."""
    with _admin(run_dir) as c:
        try:
            value = fetch(c)
        except HiveError as exc:
            _die(exc.message)

    def human() -> None:
        for key, field_value in msgspec.structs.asdict(value).items():
            typer.echo(f"{key:22} {visible(str(field_value))}")

    _emit(value, as_json, human)


@ctl.command("cancel-turn")
def ctl_cancel_turn(
    name: str, run_dir: RunDir = None, state_dir: StateDir = None, as_json: JsonOut = False
) -> None:
    """Cancel the agent's running turn (its message is dropped); the outcome is a note event."""
    _agent_verb(m.CancelTurn, name, run_dir, as_json, "cancel sent")


@ctl.command("compact")
def ctl_compact(
    name: str, run_dir: RunDir = None, state_dir: StateDir = None, as_json: JsonOut = False
) -> None:
    """Ask the agent's runtime to compact its context."""
    _agent_verb(m.Compact, name, run_dir, as_json, "compact sent")


@ctl.command("set-model")
def ctl_set_model(
    name: str,
    model: str,
    run_dir: RunDir = None,
    state_dir: StateDir = None,
    as_json: JsonOut = False,
) -> None:
    """Switch the agent's model for its next turns (until its container is rebuilt)."""
    _agent_verb(m.SetModel, name, run_dir, as_json, f"set-model {model} sent", model=model)


@ctl.command("new-session")
def ctl_new_session(
    name: str, run_dir: RunDir = None, state_dir: StateDir = None, as_json: JsonOut = False
) -> None:
    """Start the agent's next turn in a fresh session."""
    _agent_verb(m.NewSession, name, run_dir, as_json, "new-session sent")


@ctl.command("stats")
def ctl_stats(
    name: str, run_dir: RunDir = None, state_dir: StateDir = None, as_json: JsonOut = False
) -> None:
    """Turns, tool calls, tokens, cost and time the agent's runtime reported."""
    req = _agent_request(m.GetAgentStats, name=name)
    _show_fields(run_dir, as_json, lambda c: c.expect(req, m.Stats).stats)


@ctl.command("login")
def ctl_login(
    name: str,
    clear: Annotated[bool, typer.Option("--clear", help="Forget the agent's token.")] = False,
    run_dir: RunDir = None,
    state_dir: StateDir = None,
    as_json: JsonOut = False,
) -> None:
    """Give a claude agent a login token (from `claude setup-token`), read from stdin."""
    token: str | None = None
    if not clear:
        if sys.stdin.isatty():
            token = typer.prompt(f"token for {name}", hide_input=True).strip()
        else:
            token = sys.stdin.read().strip()
    req = _agent_request(m.SetAgentLogin, name=name, token=token)
    _agent_verb_request(
        req, run_dir, as_json, "login token forgotten" if clear else "login token set"
    )


# ------------------------------------------------------------------ approvals, tombstones, meta inputs


def _call(run_dir: Path | None, req: m.Request, reply: type[Any]) -> Any:
    with _admin(run_dir, timeout=None) as c:
        try:
            return c.expect(req, reply)
        except HiveError as exc:
            _die(exc.message)


@ctl.command("approvals")
def ctl_approvals(
    status: Annotated[
        str | None,
        typer.Option(help="Only this status: pending, approved, denied, failed, cancelled."),
    ] = None,
    limit: int = 100,
    run_dir: RunDir = None,
    state_dir: StateDir = None,
    as_json: JsonOut = False,
) -> None:
    """The manager's requests, newest first: what each would do and what came of it."""
    req = _agent_request(m.ListApprovals, status=status, limit=limit)
    rows = _call(run_dir, req, m.Approvals).approvals
    _emit(
        rows,
        as_json,
        lambda: _table(
            [
                [
                    str(a.id),
                    a.kind,
                    a.agent,
                    a.requested_by,
                    a.status,
                    _ago(a.requested_at),
                    a.description.replace("\n", " ")[:70],
                ]
                for a in rows
            ],
            ["ID", "KIND", "AGENT", "BY", "STATUS", "ASKED", "DESCRIPTION"],
        ),
    )


def _show_approval(a: m.ApprovalRow, diff: str = "") -> None:
    _echo(f"approval #{a.id}: {a.kind} {a.agent} ({a.status})")
    _echo(f"requested by {a.requested_by}, {_ago(a.requested_at)}")
    if a.sha:
        _echo(f"commit {a.sha} (asked for as {a.ref}, pinned as tag approval-{a.id})")
    _echo(a.description)
    if a.note:
        _echo(f"note: {a.note}")
    if a.outcome:
        _echo(f"outcome: {a.outcome}")
    if diff:
        _echo("")
        _echo(diff.rstrip("\n"))


@ctl.command("approval")
def ctl_approval(
    approval_id: int, run_dir: RunDir = None, state_dir: StateDir = None, as_json: JsonOut = False
) -> None:
    """One approval in full, with the diff approving it would deploy."""
    got = _call(run_dir, _agent_request(m.GetApproval, id=approval_id), m.ApprovalInfo)
    _emit(got, as_json, lambda: _show_approval(got.approval, got.diff))


def _decide(
    verb: type[m.Request], approval_id: int, note: str | None, run_dir: Path | None, as_json: bool
) -> None:
    got = _call(run_dir, _agent_request(verb, id=approval_id, note=note), m.ApprovalInfo)
    _emit(got.approval, as_json, lambda: _show_approval(got.approval))
    if got.approval.status == "failed":
        raise typer.Exit(1)


@ctl.command("approve")
def ctl_approve(
    approval_id: int,
    note: Annotated[str | None, typer.Option(help="Told to the manager.")] = None,
    run_dir: RunDir = None,
    state_dir: StateDir = None,
    as_json: JsonOut = False,
) -> None:
    """Carry out a pending approval (returns when it is done; exit 1 when it failed)."""
    _decide(m.Approve, approval_id, note, run_dir, as_json)


@ctl.command("deny")
def ctl_deny(
    approval_id: int,
    note: Annotated[str | None, typer.Option(help="Why; told to the manager.")] = None,
    run_dir: RunDir = None,
    state_dir: StateDir = None,
    as_json: JsonOut = False,
) -> None:
    """Refuse a pending approval; nothing changes and the manager is told why."""
    _decide(m.Deny, approval_id, note, run_dir, as_json)


@ctl.command("tombstones")
def ctl_tombstones(
    run_dir: RunDir = None, state_dir: StateDir = None, as_json: JsonOut = False
) -> None:
    """Destroyed agents whose directories are still kept."""
    rows = _call(run_dir, m.ListTombstones(), m.Tombstones).tombstones
    _emit(
        rows,
        as_json,
        lambda: _table(
            [[t.name, _ago(t.destroyed_at), t.path] for t in rows], ["NAME", "DESTROYED", "PATH"]
        ),
    )


@ctl.command("purge")
def ctl_purge(
    name: str,
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask.")] = False,
    run_dir: RunDir = None,
    state_dir: StateDir = None,
    as_json: JsonOut = False,
) -> None:
    """Delete a destroyed agent's kept directory for good."""
    req = _agent_request(m.PurgeTombstone, name=name)
    if not yes and not typer.confirm(f"delete {name}'s tombstone for good?"):
        _die("not purged")
    _call(run_dir, req, m.Ok)
    _emit({"purged": name}, as_json, lambda: _echo(f"{name}: tombstone purged"))


def _show_inputs(got: m.MetaInputs, as_json: bool) -> None:
    def human() -> None:
        if got.inputs:
            _table(
                [[i.name, i.url, i.rev[:12], _ago(i.last_modified)] for i in got.inputs],
                ["INPUT", "URL", "REV", "MODIFIED"],
            )
        if got.note:
            _echo(got.note)

    _emit(got, as_json, human)


@ctl.command("meta-inputs")
def ctl_meta_inputs(
    run_dir: RunDir = None, state_dir: StateDir = None, as_json: JsonOut = False
) -> None:
    """The meta repo's pinned inputs (nixos backend only; elsewhere it says why there are none)."""
    _show_inputs(_call(run_dir, m.ListMetaInputs(), m.MetaInputs), as_json)


@ctl.command("update-meta-inputs")
def ctl_update_meta_inputs(
    names: Annotated[
        list[str] | None, typer.Argument(help="Inputs to update (default all).")
    ] = None,
    run_dir: RunDir = None,
    state_dir: StateDir = None,
    as_json: JsonOut = False,
) -> None:
    """Update the pinned inputs with `nix flake update` and commit the lock file."""
    req = _agent_request(m.UpdateMetaInputs, names=names or None)
    _show_inputs(_call(run_dir, req, m.MetaInputs), as_json)


# ------------------------------------------------------------------ in-container harness


@app.command(
    "agent",
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    add_help_option=False,
)
def agent(ctx: typer.Context) -> None:
    """In-container commands (`serve`, `mcp`): an alias of `python -m ag3nt`."""
    from ag3nt.cli import main as ag3nt_main

    ag3nt_main(ctx.args, prog_name="hive agent")


from . import federation_cli  # noqa: E402, F401  (its commands mount on `app` and `ctl`)


def main() -> None:
    app()
