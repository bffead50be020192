"""`Hive`: the daemon's services wired together, and `run_hive`, the nursery that runs them.

`run_hive` is the whole daemon's lifetime in one function. Two nurseries, visibly nested:
the outer one owns the store writer; the inner one owns the sockets, the lease reaper, the
question expiry, the reminder scheduler and the approvals deployer. Shutdown (SIGTERM/SIGINT, or cancelling the
caller) cancels the inner nursery first, so every connection can hand its leases back while
the writer is still alive; then the writer commits whatever is still queued and the sockets
are unlinked.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol, get_args

import trio

from protocol.messages import PROTOCOL_VERSION, Runtime

from . import private_state
from .agent_configs import AgentConfigs
from .approvals import Approvals
from .broker import Broker
from .config import HiveConfig, Paths
from .containers import Backend
from .containers.host import hive_id
from .errors import Fail
from .events import EventBus
from .federation import Federation
from .lifecycle import Lifecycle
from .log_once import RateLimitedLog
from .questions import Questions
from .registry import Registry
from .reminders import Reminders, reminder_counts
from .store import Store

log = logging.getLogger(__name__)


def detect_rev() -> str:
    """`HIVE_REV`, else the git commit of this source tree, else the package version."""
    if rev := os.environ.get("HIVE_REV"):
        return rev
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "-C", str(here), "rev-parse", "--short=12", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
        if out.returncode == 0 and out.stdout.strip():
            return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("hyperhive")
    except PackageNotFoundError:
        return "unknown"


class Hive:
    """Every service of one daemon; built before serving, used by the request handlers."""

    def __init__(
        self,
        config: HiveConfig,
        paths: Paths,
        now: Callable[[], float] = time.time,
        *,
        agents_traverse: bool = False,
    ) -> None:
        self.config = config
        self.now = now
        """The wall clock of the timed services (broker, questions, reminders); tests mock it."""
        self.settings = config.hive
        self.paths = paths
        self.rev = detect_rev()
        self.protocol = PROTOCOL_VERSION
        self.started_at = time.time()
        self._started_mono = time.monotonic()
        self.agents_traverse = agents_traverse
        """The `process` backend: agents' uids must reach their state dirs on the host."""
        for fixed in private_state.prepare(paths, agents_traverse=agents_traverse):
            log.warning("private state: %s", fixed)
        self.id = hive_id(paths.state_dir)
        """Names this hive's cgroups, uid claims and processes on a host shared with others."""
        self.store = Store.open(paths.db)
        for fixed in private_state.secure_db(paths.db):  # -wal and -shm exist from here on
            log.warning("private state: %s", fixed)
        self.storage_log = RateLimitedLog(log)
        """A full disk refuses every write alike: logged once a minute, not once per call."""
        self.bus = EventBus(self.settings.event_replay)
        self.registry = Registry(self.store, self.bus)
        self.broker = Broker(self.store, self.bus, self.registry, self.settings, paths, now)
        self.questions = Questions(self.store, self.bus, self.registry, self.broker, now)
        self.reminders = Reminders(self.store, self.bus, self.broker, config, now)
        self.registry.row_counts = reminder_counts
        self.configs = AgentConfigs(self)
        self.approvals = Approvals(self)
        self.federation: Federation | None = None
        """The link to other hives over NATS JetStream, when `[federation]` is configured."""
        if config.federation is not None:
            self.federation = Federation(
                config.federation,
                self.store,
                self.bus,
                self.registry,
                self.broker,
                self.questions,
                self.settings,
                paths,
                now,
            )
            self.broker.remote = self.federation
        self.sockets: SocketHubLike | None = None
        self.lifecycle: Lifecycle | None = None

    def uptime(self) -> float:
        return time.monotonic() - self._started_mono

    def ensure_agent_dirs(self, name: str, gid: int | None = None) -> None:
        """`<agents_root>/<name>` private to the daemon, and the agent's state dir below it
        (created searchable and readable, as the manager's read-only view of it needs)."""
        for fixed in private_state.secure_agent_dir(self.paths, name, gid, self.agents_traverse):
            log.warning("private state: %s", fixed)
        state = self.paths.agent_state(name)
        if not state.exists():
            state.mkdir()
            os.chmod(state, 0o755)

    async def add_agent(
        self,
        name: str,
        role: str,
        model: str,
        runtime: str,
        allowed_recipients: list[str] | None,
    ) -> None:
        # the protocol's types already refuse these; checked again for every other way in
        if role not in ("agent", "manager"):
            raise Fail("invalid", f"unknown role {role!r}")
        if runtime not in get_args(Runtime):
            raise Fail(
                "invalid", f"unknown runtime {runtime!r} (one of {', '.join(get_args(Runtime))})"
            )
        await self.registry.add(name, role, model, runtime, allowed_recipients)  # type: ignore[arg-type]
        self.ensure_agent_dirs(name)
        if self.sockets is not None:
            await self.sockets.open_agent(name)
        if self.lifecycle is not None:
            await self.lifecycle.ensure_uid(name)

    async def remove_agent(self, name: str) -> None:
        self.registry.get(name)
        if self.lifecycle is not None:
            await self.lifecycle.stop(name, graceful=False)
        if self.sockets is not None:
            self.sockets.close_agent(name)
        await self.registry.remove(name)


class SocketHubLike(Protocol):
    """What `Hive` needs of the socket hub (defined in `server`, which imports this module)."""

    async def open_agent(self, name: str) -> None: ...

    def close_agent(self, name: str) -> None: ...


def sd_notify(message: str) -> bool:
    """Send a systemd notification (`READY=1`, …) if `NOTIFY_SOCKET` is set."""
    target = os.environ.get("NOTIFY_SOCKET")
    if not target:
        return False
    address = "\0" + target[1:] if target.startswith("@") else target
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.connect(address)
        sock.sendall(message.encode())
    return True


async def sync_config_agents(hive: Hive) -> list[str]:
    """Register every agent named in the config that the registry does not know yet."""
    added = []
    for name, agent in sorted(hive.config.agents.items()):
        if name in hive.registry.agents:
            continue
        await hive.add_agent(name, agent.role, agent.model, agent.runtime, agent.allowed_recipients)
        added.append(name)
    return added


async def run_hive(
    config: HiveConfig,
    paths: Paths,
    *,
    handle_signals: bool = True,
    backend: Backend | None = None,
    on_ready: Callable[[Hive], None] | None = None,
    now: Callable[[], float] = time.time,
    task_status: trio.TaskStatus[Hive] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run one daemon until cancelled or signalled; returns after a clean shutdown.

    `now` is the wall clock of the timed services; a test passes one derived from
    `trio.current_time()` to drive them with trio's `MockClock`. The daemon runs under its
    own umask (`private_state.DAEMON_UMASK`): what it creates is private unless it says so.
    """
    with private_state.daemon_umask():
        await _run_hive(config, paths, handle_signals, backend, on_ready, now, task_status)


async def _run_hive(
    config: HiveConfig,
    paths: Paths,
    handle_signals: bool,
    backend: Backend | None,
    on_ready: Callable[[Hive], None] | None,
    now: Callable[[], float],
    task_status: trio.TaskStatus[Hive],
) -> None:
    from .server import SocketHub

    backend_name = backend.name if backend is not None else config.hive.backend
    hive = Hive(config, paths, now, agents_traverse=backend_name == "process")
    try:
        async with trio.open_nursery() as core:
            await core.start(hive.store.run_writer)
            async with trio.open_nursery() as services:
                if handle_signals:
                    await services.start(_cancel_on_signal, services.cancel_scope)
                await hive.registry.load()
                await hive.configs.open()
                orphans = await hive.broker.requeue_orphans()
                if orphans:
                    log.info("requeued %d message(s) leased before the last shutdown", orphans)
                hub = SocketHub(hive, services)
                hive.sockets = hub
                added = await sync_config_agents(hive)
                for name in hive.registry.names():
                    if name not in added:
                        hive.ensure_agent_dirs(name)
                        await hub.open_agent(name)
                await hive.configs.seed_missing()
                # the fixed sockets last: once admin.sock answers, every agent's socket exists
                await hub.open_fixed()
                lifecycle = Lifecycle(hive, services, backend)
                hive.lifecycle = lifecycle
                lifecycle.end_leftovers()
                hive.registry.row_extras = lambda name: {
                    **lifecycle.row_extras(name),
                    **hive.configs.row_extras(name),
                }
                for name in hive.registry.names():
                    try:
                        await lifecycle.ensure_uid(name)
                    except Fail as exc:  # that agent will not start; the others do
                        log.error("%s: %s", name, exc.message)
                await hive.configs.render_nix(hive.registry.names())
                await services.start(hive.broker.run_lease_reaper)
                await services.start(hive.questions.run_expiry)
                await services.start(hive.reminders.run_scheduler)
                await services.start(hive.approvals.run_deployer)
                if hive.federation is not None:  # reports started at once; NATS may be away
                    await services.start(hive.federation.run)
                log.info(
                    "hyperhive %s serving on %s (%d agents)",
                    hive.rev,
                    paths.run_dir,
                    len(hive.registry.agents),
                )
                if hive.settings.autostart:
                    await lifecycle.start_all()
                sd_notify("READY=1")
                if on_ready is not None:
                    on_ready(hive)
                task_status.started(hive)
            core.cancel_scope.cancel()
    finally:
        hive.store.close()
        log.info("hyperhive stopped")


async def _cancel_on_signal(
    scope: trio.CancelScope, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        task_status.started()
        async for signum in signals:
            log.info("received %s, shutting down", signal.Signals(signum).name)
            sd_notify("STOPPING=1")
            scope.cancel()
            return
