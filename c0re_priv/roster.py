"""Who is in the hive: adding an agent registers it, makes its directories, opens its socket
and gives it a uid; removing one stops it, closes its socket and unregisters it.

The socket hub (`server`) and the container supervisor (`lifecycle`) exist only once the
services' nursery runs, and both sit above this module: the roster knows them by what it
needs of them (`Doors`, `Supervisor`), and the wiring hands them over when they start
(`Hive.serving`). Until then an agent is registered and given directories only.
"""

from __future__ import annotations

import logging
import os
from typing import Protocol, get_args

from protocol.messages import Runtime

from . import private_state
from .config import Paths
from .errors import Fail
from .registry import Registry

log = logging.getLogger(__name__)


class Doors(Protocol):
    """What the roster needs of the socket hub."""

    async def open_agent(self, name: str) -> None: ...

    def close_agent(self, name: str) -> None: ...


class Supervisor(Protocol):
    """What the roster needs of the container supervisor."""

    async def ensure_uid(self, name: str) -> None: ...

    async def stop(self, name: str, graceful: bool = True) -> None: ...


class Roster:
    def __init__(self, registry: Registry, paths: Paths, *, agents_traverse: bool) -> None:
        self.registry = registry
        self.paths = paths
        self.agents_traverse = agents_traverse
        """The `process` backend: agents' uids must reach their state dirs on the host."""
        self.doors: Doors | None = None
        self.supervisor: Supervisor | None = None

    def ensure_dirs(self, name: str, gid: int | None = None) -> None:
        """`<agents_root>/<name>` private to the daemon, and the agent's state dir below it
        (created searchable and readable, as the manager's read-only view of it needs)."""
        for fixed in private_state.secure_agent_dir(self.paths, name, gid, self.agents_traverse):
            log.warning("private state: %s", fixed)
        state = self.paths.agent_state(name)
        if not state.exists():
            state.mkdir()
            os.chmod(state, 0o755)

    async def add(
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
        self.ensure_dirs(name)
        if self.doors is not None:
            await self.doors.open_agent(name)
        if self.supervisor is not None:
            await self.supervisor.ensure_uid(name)

    async def remove(self, name: str) -> None:
        self.registry.get(name)
        if self.supervisor is not None:
            await self.supervisor.stop(name, graceful=False)
        if self.doors is not None:
            self.doors.close_agent(name)
        await self.registry.remove(name)
