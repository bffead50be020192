"""`Hive`: the one module that wires the daemon's services together.

Each service is built here from the narrow dependencies it needs (`Broker(store, bus,
registry, settings, paths, now)`, `Approvals(store, bus, registry, broker, configs,
settings)`, …), in an order that is also the import order of their modules
(tests/test_layout.py); no service below this module imports it, except the two still
listed there as debt (`agent_configs`, `lifecycle`, which take the whole hive). Handlers and
the transport sit above: they reach services through this object. Running the wired
services is `daemon.run_hive`.
"""

from __future__ import annotations

import logging
import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol, get_args

from protocol.messages import PROTOCOL_VERSION, Runtime

from . import private_state
from .agent_configs import AgentConfigs
from .approvals import Approvals
from .broker import Broker
from .config import HiveConfig, Paths
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
        self.registry = Registry(self.store, self.bus, row_counts=reminder_counts)
        self.broker = Broker(self.store, self.bus, self.registry, self.settings, paths, now)
        self.questions = Questions(self.store, self.bus, self.registry, self.broker, now)
        self.reminders = Reminders(self.store, self.bus, self.broker, config, now)
        self.configs = AgentConfigs(self)
        self.approvals = Approvals(
            self.store, self.bus, self.registry, self.broker, self.configs, self.settings
        )
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
    """What `Hive` needs of the socket hub (`server.SocketHub`, which sits above this module)."""

    async def open_agent(self, name: str) -> None: ...

    def close_agent(self, name: str) -> None: ...
