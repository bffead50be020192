"""The container supervisor: start, stop, restart, rebuild, pause and destroy agents.

One supervising task per running agent lives in the daemon's services nursery. It asks the
backend to run the container, and when the container ends without being asked to it
restarts it (up to `max_restarts` within `restart_window_seconds`), after which the agent is
`failed` and the manager's inbox gets a `container_crash` message with the log tail. Every
transition publishes `AgentStateChanged`. The operator's controls for a running harness
(cancel turn, compact, set model, new session) are queued here and streamed to the harness
over its own socket (`WaitForControl`); the harness reports the outcome as a `note` event.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import sqlite3
import stat
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import trio

from protocol import messages as m

from .broker import OPERATOR, SYSTEM, Broker
from .config import AgentConfig, HiveSettings, Paths
from .containers import BACKENDS, Backend, ContainerSpec, Limits
from .containers.bwrap import SANDBOX_PATH, BwrapBackend
from .containers.cgroups import Applied, Cgroups
from .containers.host import MARK, end_leftovers
from .containers.nixos import NixosBackend
from .containers.process import ProcessBackend, hidden_from_others
from .containers.uids import UidAllocator, UidUnavailable
from .errors import Fail
from .events import EventBus
from .forge import forge_helper_dir
from .registry import Registry
from .roster import Roster
from .store import Store

log = logging.getLogger(__name__)
CONNECT_TIMEOUT = 60.0
RESTART_BACKOFF = (1.0, 2.0, 5.0, 10.0)
LOG_TAIL = 40
LOG_TAIL_SHOWN = 10
"""Of those, how many the daemon's own log repeats (the notice carries all of them)."""


@dataclass
class Supervised:
    """What the supervisor knows of one agent's container right now."""

    name: str
    state: m.ContainerState = "stopped"
    scope: trio.CancelScope | None = None
    done: trio.Event = field(default_factory=trio.Event)
    stopping: bool = False
    grace: float = 30.0
    failed: bool = False
    failed_at: float | None = None
    crashes: deque[float] = field(default_factory=deque)
    restarts: int = 0
    limits: str = ""
    harness_state: str = ""
    needs_login: bool = False
    active_model: str = ""
    controls: trio.MemorySendChannel[m.ControlFrame] | None = None
    control_recv: trio.MemoryReceiveChannel[m.ControlFrame] | None = None

    def __post_init__(self) -> None:
        self.controls, self.control_recv = trio.open_memory_channel[m.ControlFrame](16)


def harness_command(runtime: str, socket: Path, rules: Path | None) -> list[str]:
    """The harness's command line: `python -m ag3nt serve`, which never imports this package."""
    argv = [
        sys.executable,
        "-m",
        "ag3nt",
        "serve",
        "--socket",
        str(socket),
        "--runtime",
        runtime,
    ]
    if rules is not None:
        argv += ["--rules", str(rules)]
    return argv


def exit_cause(status: int) -> str:
    """An exit status in the operator's words: `killed by SIGKILL`, `exited with code 1`."""
    if status < 0:
        try:
            return f"killed by {signal.Signals(-status).name}"
        except ValueError:
            return f"killed by signal {-status}"
    if status > 128 and status - 128 in signal.valid_signals():
        # a shell or bwrap reports its child's death by signal N as 128 + N
        return f"exited with code {status} ({signal.Signals(status - 128).name} inside)"
    return f"exited with code {status}"


def _indented(lines: list[str]) -> str:
    return "\n".join(f"    {line}" for line in lines) or "    (the log is empty)"


def read_tail(path: Path, lines: int) -> list[str]:
    """The last `lines` lines of a log file (empty when it does not exist yet)."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - 256 * 1024))
            data = fh.read()
    except FileNotFoundError:
        return []
    return data.decode(errors="replace").splitlines()[-lines:]


class Lifecycle:
    """The container supervisor: each agent's sandbox started, watched, restarted within
    bounds and stopped, inside the services' nursery it is given."""

    def __init__(
        self,
        registry: Registry,
        bus: EventBus,
        store: Store,
        broker: Broker,
        roster: Roster,
        settings: HiveSettings,
        paths: Paths,
        agent_configs: dict[str, AgentConfig],
        hive_id: str,
        not_runnable: Callable[[str], str | None],
        nursery: trio.Nursery,
        backend: Backend | None = None,
    ) -> None:
        self.registry = registry
        self.bus = bus
        self.store = store
        self.broker = broker
        self.roster = roster
        self.settings = settings
        self.paths = paths
        self.agent_configs = agent_configs
        """hive.toml's agents with each one's deployed config laid over (the configs service
        keeps this dict current; the supervisor only reads it)."""
        self.hive_id = hive_id
        self.not_runnable = not_runnable
        """Why an agent may not start (no approved config), from the configs service."""
        self._nursery = nursery
        if backend is None:
            cls = BACKENDS[settings.backend]
            if cls is BwrapBackend:
                backend = BwrapBackend(ro_extra=_interpreter_paths())
            elif cls is ProcessBackend:
                backend = ProcessBackend(code=(Path(sys.executable), *_interpreter_paths()))
            elif cls is NixosBackend:
                backend = NixosBackend(declarative=settings.nixos_declarative)
            else:
                backend = cls()
        self.backend: Backend = backend
        self.cgroups = Cgroups(group=f"hyperhive-{hive_id}")
        self.uids = UidAllocator(
            settings.uid_first,
            settings.uid_last,
            Path(settings.uid_claims_dir),
            hive_id,
            paths.state_dir,
        )
        self._uid_lock = trio.Lock()
        self.agents: dict[str, Supervised] = {}
        self.shared_dir = (
            Path(settings.shared_dir) if settings.shared_dir else paths.state_dir / "shared"
        )

    def end_leftovers(self) -> list[int]:
        """Before the first start: end whatever a previous run of this hive left running."""
        return end_leftovers(self.hive_id)

    # ---------------------------------------------------------------- state

    def sup(self, name: str) -> Supervised:
        self.registry.get(name)
        if name not in self.agents:
            self.agents[name] = Supervised(name, grace=self.settings.stop_grace_seconds)
        return self.agents[name]

    def _set_state(self, s: Supervised, state: m.ContainerState, reason: str = "") -> None:
        s.state = state
        self.bus.publish(m.AgentStateChanged(name=s.name, state=state, reason=reason))

    def log_file(self, name: str) -> Path:
        return self.paths.agents_root / name / "harness.log"

    def agent_config(self, name: str) -> AgentConfig:
        return self.agent_configs.get(name, AgentConfig())

    def spec(self, name: str) -> ContainerSpec:
        record = self.registry.get(name)
        cfg = self.agent_config(name)
        paths = self.paths
        rules = Path(cfg.rules).absolute() if cfg.rules else None
        peers: tuple[Path, ...] = ()
        if record.role == "manager":
            peers = tuple(paths.agent_state(n) for n in self.registry.names() if n != name)
        uid = record.uid
        return ContainerSpec(
            name=name,
            role=record.role,
            command=harness_command(record.runtime, paths.agent_sock(name), rules),
            socket=paths.agent_sock(name),
            state_dir=paths.agent_state(name),
            log_file=self.log_file(name),
            shared_dir=self.shared_dir,
            hide=(paths.state_dir, paths.run_dir),
            peers=peers,
            ro_files=(rules,) if rules is not None and self._bindable(rules) else (),
            env={
                **self.forge_env(name),
                **(self.claude_env(name) if record.runtime == "claude" else {}),
                **cfg.env,
                **({"HIVE_AGENT_MODEL": record.model} if record.model else {}),
                # every process of the container carries the hive's mark (see host.py)
                MARK: self.hive_id,
            },
            uid=uid,
            gid=uid,
            network=cfg.network,
            limits=Limits(
                memory_bytes=cfg.memory_mb * 1024 * 1024 if cfg.memory_mb else None,
                cpu=cfg.cpus,
                pids=cfg.pids,
            ),
            grace_seconds=self.settings.stop_grace_seconds,
        )

    def rules_unreadable(self, spec: ContainerSpec) -> str | None:
        """Why the agent's uid could not read the rules file the operator named, or None.

        The harness reads it as the agent's uid: a file written under umask 077 (mode 0600)
        would otherwise crash the harness in a restart loop with "path is not readable". A
        sandbox binds the file at its own path, so only its mode counts; the `process`
        backend also needs every directory on the way. A file in the agent's own tree is not
        bound (see `_bindable`) and is not checked here."""
        if spec.uid is None or os.geteuid() != 0 or "--rules" not in spec.command:
            return None
        rules = Path(spec.command[spec.command.index("--rules") + 1])
        if isinstance(self.backend, ProcessBackend):
            problem = hidden_from_others([rules])
        elif rules not in spec.ro_files:
            return None  # in the agent's own tree, not bound: what it sees is its own to fix
        else:
            try:
                mode = stat.S_IMODE(rules.stat().st_mode)
            except OSError as exc:
                return f"its rules file {rules}: {exc.strerror}"
            problem = None if mode & stat.S_IROTH else f"{rules} is mode {mode:04o}"
        if problem is None:
            return None
        return (
            f"its rules file is not readable by the agent's uid ({problem}); "
            f"make it readable to others, e.g. chmod o+r {rules}"
        )

    def _bindable(self, path: Path) -> bool:
        """A host file the operator named may be bound read-only into a sandbox; one inside
        an agent-writable tree never is (its own state dir is visible there already, and a
        symlink planted there would be resolved by root)."""
        writable = (self.paths.agents_root, self.shared_dir)
        return not any(path.is_relative_to(root) for root in writable) and path.is_file()

    def forge_env(self, name: str) -> dict[str, str]:
        """What makes `git clone hive://…` work in the container: `git-remote-hive` on the
        PATH (after the system's own dirs) and the agent's name on its commits."""
        env = {
            "GIT_AUTHOR_NAME": name,
            "GIT_AUTHOR_EMAIL": f"{name}@hyperhive",
            "GIT_COMMITTER_NAME": name,
            "GIT_COMMITTER_EMAIL": f"{name}@hyperhive",
        }
        helper = forge_helper_dir()
        if helper is not None and self.backend.name == "bwrap":
            env["PATH"] = f"{SANDBOX_PATH}:{helper}"
        elif helper is not None and self.backend.name == "process":
            env["PATH"] = f"{os.environ.get('PATH') or SANDBOX_PATH}:{helper}"
        return env

    def claude_env(self, name: str) -> dict[str, str]:
        """What a `claude` agent gets to reach its model: the hive's `claude_env`, its endpoint
        (`claude_base_url`) and CLI (`claude_bin`), the daemon's own credentials named in
        `claude_pass_env`, and over all of them a token the operator gave this agent."""
        settings = self.settings
        env = dict(settings.claude_env)
        if settings.claude_base_url:
            env["ANTHROPIC_BASE_URL"] = settings.claude_base_url
        if settings.claude_bin:
            env["HIVE_CLAUDE_BIN"] = settings.claude_bin
        env |= {k: os.environ[k] for k in settings.claude_pass_env if os.environ.get(k)}
        token = self.login_token(name)
        if token:
            env["CLAUDE_CODE_OAUTH_TOKEN"] = token
        return env

    def login_token_file(self, name: str) -> Path:
        # outside agents_root: no container binds it, and the web process cannot read it
        return self.paths.state_dir / "secrets" / f"{name}.token"

    def login_token(self, name: str) -> str:
        try:
            return self.login_token_file(name).read_text().strip()
        except FileNotFoundError:
            return ""

    async def set_login(self, name: str, token: str | None) -> None:
        """Keep (or, with None, forget) an agent's login token; restart it if it runs."""
        self.registry.get(name)
        path = self.login_token_file(name)
        path.parent.mkdir(mode=0o700, exist_ok=True)
        os.chmod(path.parent, 0o700)
        if token is None:
            path.unlink(missing_ok=True)
        else:
            tmp = path.with_suffix(".tmp")
            tmp.unlink(missing_ok=True)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(token)
            os.replace(tmp, path)
        state = "login_token_set" if token is not None else "login_token_cleared"
        self.bus.publish(m.AgentStateChanged(name=name, state=state, reason="operator"))
        s = self.agents.get(name)
        if s is not None and s.scope is not None:
            await self.restart(name)

    def hand_over_claude_login(self, name: str, uid: int | None) -> None:
        """Copy `claude_credentials` into a `claude` agent's `~/.claude` unless it has its own.

        Inside its container an agent's HOME is its state dir, so the operator's own login
        is not visible there; this gives each agent a copy it owns (0600), once.
        """
        source = self.settings.claude_credentials
        if not source or self.registry.get(name).runtime != "claude":
            return
        home = self.paths.agent_state(name) / ".claude"
        target = home / ".credentials.json"
        if target.exists() or target.is_symlink():
            return
        try:
            data = Path(source).expanduser().read_bytes()
        except OSError as exc:
            log.warning("%s: cannot read claude_credentials %s: %s", name, source, exc)
            return
        home.mkdir(mode=0o700, exist_ok=True)
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        if uid is not None:
            os.chown(home, uid, uid)
            os.chown(target, uid, uid)

    def row_extras(self, name: str) -> dict[str, object]:
        s = self.agents.get(name)
        if s is None:
            return {
                "backend": self.backend.name,
                "has_login_token": self.login_token_file(name).exists(),
            }
        return {
            "backend": self.backend.name,
            "has_login_token": self.login_token_file(name).exists(),
            "container": s.state,
            "failed": s.failed,
            "failed_at": s.failed_at if s.failed else None,
            "needs_login": s.needs_login,
            "active_model": s.active_model,
            "harness_state": s.harness_state,
            "limits": s.limits,
            "restarts": s.restarts,
        }

    # ---------------------------------------------------------------- ownership

    async def ensure_uid(self, name: str) -> None:
        """As root, give each agent its own uid and hand it its state dir and socket."""
        record = self.registry.get(name)
        if os.geteuid() != 0:
            self.roster.ensure_dirs(name)
            self.hand_over_claude_login(name, None)
            return
        try:
            # The claims dir is shared by every hive on the host and may hold hundreds of
            # claims: scanned in a worker thread, never in the loop every socket is served
            # from; one allocation at a time, so two agents of this hive never pick one uid.
            async with self._uid_lock:
                if record.uid is None:
                    taken = {r.uid for r in self.registry.agents.values() if r.uid is not None}
                    uid = await trio.to_thread.run_sync(self.uids.allocate, name, taken)
                    await self.store.write(
                        lambda c: c.execute("UPDATE agents SET uid = ? WHERE name = ?", (uid, name))
                    )
                    record.uid = uid
                else:
                    await trio.to_thread.run_sync(self.uids.claim, record.uid, name)
        except UidUnavailable as exc:
            raise Fail("unavailable", str(exc)) from None
        uid = record.uid
        state = self.paths.agent_state(name)
        self.roster.ensure_dirs(name, gid=uid)
        os.chown(state, uid, uid)
        sock = self.paths.agent_sock(name)
        if sock.exists():
            os.chown(sock, uid, uid)
        self.shared_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.shared_dir, 0o1777)
        self.hand_over_claude_login(name, uid)

    # ---------------------------------------------------------------- verbs

    async def start(self, name: str) -> None:
        s = self.sup(name)
        if s.scope is not None:
            return
        if (reason := self.backend.unavailable()) is not None:
            raise Fail("unavailable", f"cannot start {name}: {reason}")
        record = self.registry.get(name)
        if record.paused:
            raise Fail("conflict", f"{name} is paused; unpause it first")
        if (why := self.not_runnable(name)) is not None:
            raise Fail("unavailable", f"cannot start {name}: {why}")
        await self.ensure_uid(name)
        self.shared_dir.mkdir(parents=True, exist_ok=True)
        spec = self.spec(name)
        if (why := self.rules_unreadable(spec)) is not None:
            raise Fail("unavailable", f"cannot start {name}: {why}")
        await self.backend.create(spec)
        s.failed = False
        s.crashes.clear()
        s.stopping = False
        s.done = trio.Event()
        await self._nursery.start(self._supervise, s)

    async def stop(self, name: str, graceful: bool = True) -> None:
        s = self.sup(name)
        if s.scope is None:
            return
        s.stopping = True
        s.grace = self.settings.stop_grace_seconds if graceful else 0.0
        self._set_state(s, "stopping", "graceful" if graceful else "immediate")
        s.scope.cancel()
        await s.done.wait()

    async def restart(self, name: str) -> None:
        await self.stop(name)
        await self.start(name)

    async def rebuild(self, name: str) -> None:
        """Recreate the container from config and start it; the agent is told by message."""
        await self.stop(name)
        spec = self.spec(name)
        await self.backend.destroy(spec)
        await self.start(name)
        await self.broker.send(SYSTEM, name, "container rebuilt")

    async def rebuild_all(self) -> tuple[list[str], dict[str, str]]:
        """Rebuild the manager first, then everyone else; tell the manager what happened."""
        registry = self.registry
        managers = [n for n in registry.names() if registry.agents[n].role == "manager"]
        others = [
            n for n in registry.names() if n not in managers and not registry.agents[n].paused
        ]
        done: list[str] = []
        failed: dict[str, str] = {}

        async def one(name: str) -> None:
            try:
                await self.rebuild(name)
                done.append(name)
            except Fail as exc:
                failed[name] = exc.message

        for name in managers:
            await one(name)
            with trio.move_on_after(CONNECT_TIMEOUT):
                # connections are counted by the socket server; no event to wait on is worth it here
                while name not in failed and registry.agents[name].connections == 0:  # noqa: ASYNC110
                    await trio.sleep(0.05)
        async with trio.open_nursery() as nursery:
            for name in others:
                nursery.start_soon(one, name)
        for name in managers:
            lines = [f"rebuilt: {', '.join(sorted(done)) or 'none'}"]
            lines += [f"failed: {n}: {why}" for n, why in sorted(failed.items())]
            await self.broker.send(SYSTEM, name, "rebuild_all finished\n" + "\n".join(lines))
        return done, failed

    async def set_paused(self, name: str, paused: bool) -> None:
        record = self.registry.get(name)
        if paused:
            await self.stop(name)
        await self.store.write(
            lambda c: c.execute("UPDATE agents SET paused = ? WHERE name = ?", (int(paused), name))
        )
        record.paused = paused
        self.bus.publish(
            m.AgentStateChanged(
                name=name, state="paused" if paused else "unpaused", reason="operator"
            )
        )
        if not paused and self.settings.autostart:
            await self.start(name)

    async def destroy(self, name: str) -> Path:
        """Stop and unregister; the agent's dir moves to the tombstones. Returns its new path."""
        self.registry.get(name)
        tomb_root = self.paths.state_dir / "tombstones"
        tomb = tomb_root / name
        if tomb.exists():
            raise Fail("conflict", f"a tombstone for {name!r} exists; purge it first")
        await self.stop(name, graceful=False)
        await self.backend.destroy(self.spec(name))
        uid = self.registry.get(name).uid
        await self.roster.remove(name)
        if uid is not None:
            self.uids.release(uid)
        self.agents.pop(name, None)
        self.login_token_file(name).unlink(missing_ok=True)
        tomb_root.mkdir(parents=True, exist_ok=True)
        agent_dir = self.paths.agents_root / name
        if agent_dir.exists():
            shutil.move(str(agent_dir), str(tomb))
        return tomb

    async def start_all(self) -> None:
        registry = self.registry
        names = sorted(registry.names(), key=lambda n: registry.agents[n].role != "manager")
        for name in names:
            if registry.agents[name].paused:
                continue
            try:
                await self.start(name)
            except Fail as exc:
                log.error("%s: %s", name, exc.message)

    # ---------------------------------------------------------------- supervision

    async def _supervise(
        self, s: Supervised, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        applied: Applied | None = None
        try:
            with trio.CancelScope() as scope:
                s.scope = scope
                task_status.started()
                while True:
                    spec = self.spec(s.name)
                    applied = self.cgroups.prepare(s.name, spec.limits)
                    s.limits = applied.description
                    self._set_state(s, "starting")
                    started = time.monotonic()
                    cause = await self._run_once(s, spec, applied)
                    if s.stopping:
                        break
                    now = time.monotonic()
                    s.crashes.append(now)
                    window = self.settings.restart_window_seconds
                    while s.crashes and s.crashes[0] < now - window:
                        s.crashes.popleft()
                    tail = read_tail(self.log_file(s.name), LOG_TAIL)
                    lasted = now - started
                    if len(s.crashes) > self.settings.max_restarts:
                        s.failed = True
                        s.failed_at = time.time()
                        reason = f"{cause} after {lasted:.1f}s, {len(s.crashes)} times"
                        log.error(
                            "%s: FAILED, not restarting: %s; last log lines:\n%s",
                            s.name,
                            reason,
                            _indented(tail[-LOG_TAIL_SHOWN:]),
                        )
                        self._set_state(s, "failed", reason)
                        await self._report_crash(s.name, cause, tail)
                        break
                    delay = RESTART_BACKOFF[min(len(s.crashes), len(RESTART_BACKOFF)) - 1]
                    log.warning(
                        "%s: crashed: %s after %.1fs; restarting in %gs; last log lines:\n%s",
                        s.name,
                        cause,
                        lasted,
                        delay,
                        _indented(tail[-LOG_TAIL_SHOWN:]),
                    )
                    self._set_state(s, "crashed", f"{cause} after {lasted:.1f}s")
                    s.restarts += 1
                    await trio.sleep(delay)
        finally:
            s.scope = None
            if applied is not None:
                self.cgroups.remove(applied)
            if not s.failed:
                s.state = "stopped"
                self.bus.publish(m.AgentStateChanged(name=s.name, state="stopped", reason=""))
            s.done.set()

    async def _run_once(self, s: Supervised, spec: ContainerSpec, applied: Applied) -> str:
        """Run the container once; say how it ended, in the operator's words."""
        result: list[int] = []

        async def run(task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
            result.append(await self.backend.run(spec, applied.enter, task_status=task_status))

        failures: list[OSError] = []
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(run)
                self._set_state(s, "running")
        except* OSError as group:
            # exec failed (permissions, a missing binary): a crash of this agent, which the
            # restart policy counts, never an error that takes the daemon down
            failures.extend(e for e in group.exceptions if isinstance(e, OSError))
        for exc in failures:
            log.error("%s: could not run its container: %s", s.name, exc)
            with open(self.log_file(s.name), "a") as fh:  # noqa: ASYNC230 - one short local append
                fh.write(f"hyperhive: could not run the container: {exc}\n")
        if failures:
            return f"could not be run ({failures[0]})"
        return exit_cause(result[0]) if result else "ended without a status"

    async def _report_crash(self, name: str, cause: str, tail: list[str]) -> None:
        """Tell the running managers; when none runs (it may be the one that failed), the
        operator, whose inbox is the dashboard and `hive ctl messages`."""
        managers = [
            n
            for n, r in self.registry.agents.items()
            if r.role == "manager"
            and n != name
            and n in self.agents
            and self.agents[n].state == "running"
        ]
        body = (
            f"container_crash: {name} {cause} and will not be restarted"
            f" (hive ctl start {name} to try again).\nLast log lines:\n" + "\n".join(tail)
        )
        for recipient in managers or [OPERATOR]:
            await self.broker.send(SYSTEM, recipient, body)

    # ---------------------------------------------------------------- harness reports and controls

    async def control(self, name: str, action: m.ControlAction, model: str | None = None) -> None:
        s = self.sup(name)
        # a stopped container's connection may not have been noticed as closed yet
        if s.stopping or self.registry.agents[name].connections == 0:
            raise Fail("unavailable", f"{name}'s harness is not connected")
        assert s.controls is not None
        try:
            s.controls.send_nowait(m.ControlFrame(action=action, model=model))
        except trio.WouldBlock:
            raise Fail("rate_limited", f"{name} has too many pending controls", 1.0) from None

    async def controls_for(self, name: str) -> trio.MemoryReceiveChannel[m.ControlFrame]:
        s = self.sup(name)
        assert s.control_recv is not None
        return s.control_recv

    def report_state(self, name: str, state: str, reason: str, model: str | None) -> None:
        s = self.sup(name)
        s.harness_state = state
        if model is not None:
            s.active_model = model
        if state == "needs_login" and not s.needs_login:
            s.needs_login = True
            self.bus.publish(m.NeedsLogin(name=name, reason=reason))
        self.bus.publish(m.AgentStateChanged(name=name, state=f"harness:{state}", reason=reason))

    async def report_turn(self, name: str, turn: m.TurnStats) -> None:
        s = self.sup(name)
        now = time.time()
        await self.store.write(
            lambda c: c.execute(
                "INSERT INTO turns (agent, at, ok, result, tool_calls, input_tokens, output_tokens,"
                " cost_usd, duration_ms, message_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    name,
                    now,
                    int(turn.ok),
                    turn.result,
                    json.dumps(turn.tool_calls),
                    turn.input_tokens,
                    turn.output_tokens,
                    turn.cost_usd,
                    turn.duration_ms,
                    turn.message_id,
                ),
            )
        )
        self.bus.publish(m.TurnRecorded(name=name, turn=turn))
        if turn.ok and s.needs_login:
            s.needs_login = False
            self.bus.publish(m.LoggedIn(name=name))

    async def stats(self, name: str) -> m.StatsRow:
        self.registry.get(name)

        def read(c: sqlite3.Connection) -> m.StatsRow:
            row = c.execute(
                "SELECT count(*), sum(1 - ok), sum(json_array_length(tool_calls)),"
                " sum(input_tokens), sum(output_tokens), sum(cost_usd), sum(duration_ms), max(at)"
                " FROM turns WHERE agent = ?",
                (name,),
            ).fetchone()
            return m.StatsRow(
                turns=row[0],
                failed_turns=row[1] or 0,
                tool_calls=row[2] or 0,
                input_tokens=row[3] or 0,
                output_tokens=row[4] or 0,
                cost_usd=row[5] or 0.0,
                duration_ms=row[6] or 0,
                last_turn_at=row[7],
            )

        return await self.store.read(read)


def _interpreter_paths() -> tuple[Path, ...]:
    """The interpreter and hyperhive's own code, which a sandbox must see to run the harness."""
    package_root = Path(__file__).resolve().parent.parent
    candidates = {Path(sys.prefix).resolve(), Path(sys.base_prefix).resolve(), package_root}
    return tuple(sorted(p for p in candidates if p.exists()))
