"""`Hive`: the one module that wires the daemon's services together.

Each service is built here from the narrow dependencies it needs (`Broker(store, bus,
registry, settings, paths, now)`, `Lifecycle(registry, bus, store, broker, roster, …)`, …),
in an order that is also the import order of their modules (tests/test_layout.py); no
service imports this module, so none can reach another through it. The socket hub and the
container supervisor need the running services' nursery, so `open_doors` and `supervise`
hand them to the services that act through them once they exist. Besides those, only the
operator's controls are given after building what they watch: the broker's `gate` (`Holds`)
and the registry's per-agent usage counts (`Budgets`), which are built on the broker and
the registry. Handlers and the transport sit above and reach services through
this object. Running the wired services is `daemon.run_hive`.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import subprocess
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import trio

from protocol.messages import PROTOCOL_VERSION

from . import private_state
from .agent_configs import AgentConfigs
from .approvals import Approvals
from .broker import Broker
from .budgets import Budgets
from .config import HiveConfig, Paths
from .containers import Backend
from .containers.host import hive_id
from .escalation import Escalation
from .estop import EmergencyStop
from .events import EventBus
from .federation import Federation
from .forge import Forge
from .holds import Holds
from .lifecycle import Lifecycle
from .log_once import RateLimitedLog
from .merge_requests import MergeRequests
from .questions import Questions
from .registry import Registry
from .reminders import Reminders, reminder_counts
from .roster import Doors, Roster
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
        self.stopping = trio.Event()
        """Set when a signal has asked the daemon to stop (its shutdown is under way)."""
        self.rev = detect_rev()
        self.protocol = PROTOCOL_VERSION
        self.started_at = time.time()
        self._started_mono = time.monotonic()
        self.agents_traverse = agents_traverse
        """The `process` backend: agents' uids must reach their state dirs on the host."""
        for fixed in private_state.prepare(paths, agents_traverse=agents_traverse):
            log.warning("private state: %s", fixed)
        if (closed := private_state.unreachable_parent(paths.run_dir)) is not None:
            log.warning(
                "the run dir %s is inside %s, which other users cannot enter: the dashboard"
                " and agents running as their own uids cannot reach their sockets; make it"
                " searchable (chmod o+x %s) or use another run dir",
                paths.run_dir,
                closed,
                closed,
            )
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
        self.holds = Holds(self.registry)
        """Agents the operator's controls keep from work (the broker leases them nothing)."""
        self.broker.gate = self.holds.allows
        self.estop = EmergencyStop(
            self.store, self.bus, self.registry, self.broker, self.holds, self.settings, now
        )
        self.budgets = Budgets(
            self.store, self.bus, self.registry, self.broker, self.holds, config.budget, now
        )
        self.escalation = Escalation(
            self.store, self.bus, self.registry, self.broker, self.settings, now
        )
        self.registry.row_counts = merged_counts(reminder_counts, self.budgets.row_fields)
        self.roster = Roster(self.registry, paths, agents_traverse=agents_traverse)
        self.configs = AgentConfigs(
            self.store,
            self.bus,
            self.registry,
            self.roster,
            self.settings,
            paths,
            config.agents,
        )
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
        self.forge = Forge(
            config.forge,
            self.store,
            self.bus,
            self.registry,
            paths,
            self.settings.max_frame_bytes,
            now,
        )
        """The hive's git repositories (docs/forge.md)."""
        self.merge_requests = MergeRequests(self.forge, self.store, self.bus, self.registry, now)
        self.sockets: Doors | None = None
        self.lifecycle: Lifecycle | None = None

    def uptime(self) -> float:
        return time.monotonic() - self._started_mono

    def open_doors(self, sockets: Doors) -> None:
        """The socket hub runs (it needs the services' nursery): agents added from now on
        get their socket at once."""
        self.sockets = sockets
        self.roster.doors = sockets

    def supervise(self, nursery: trio.Nursery, backend: Backend | None = None) -> Lifecycle:
        """Build the container supervisor in the services' nursery and hand it to the
        services that act through it. With `open_doors`, the only place anything is given
        to a service after it was built: both need the running nursery."""
        lifecycle = Lifecycle(
            self.registry,
            self.bus,
            self.store,
            self.broker,
            self.roster,
            self.settings,
            self.paths,
            self.config.agents,
            self.id,
            self.configs.not_runnable,
            nursery,
            backend,
        )
        self.lifecycle = lifecycle
        self.roster.supervisor = lifecycle
        self.configs.lifecycle = lifecycle
        self.estop.lifecycle = lifecycle
        configs, holds = self.configs, self.holds
        self.registry.row_extras = lambda name: {
            **lifecycle.row_extras(name),
            **configs.row_extras(name),
            **holds.row_extras(name),
        }
        return lifecycle


def merged_counts(
    *sources: Callable[[sqlite3.Connection], Mapping[str, Mapping[str, object]]],
) -> Callable[[sqlite3.Connection], dict[str, dict[str, object]]]:
    """One `Registry.row_counts` from several services' per-agent counts."""

    def counts(conn: sqlite3.Connection) -> dict[str, dict[str, object]]:
        out: dict[str, dict[str, object]] = {}
        for source in sources:
            for name, fields in source(conn).items():
                out.setdefault(name, {}).update(fields)
        return out

    return counts
