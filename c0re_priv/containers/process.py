"""The `process` backend: the harness as a plain child process. No isolation at all.

For machines with neither bubblewrap nor NixOS. Everything the daemon's user can read, the
agent can read; `hive up` says so loudly. Limits and the uid drop still apply when the
daemon is root.
"""

from __future__ import annotations

from collections.abc import Callable

import trio

from .base import ContainerSpec, run_supervised_process


class ProcessBackend:
    name = "process"
    isolation = "NONE: agents run as plain processes and can read whatever the daemon's user can"

    def unavailable(self) -> str | None:
        return None

    async def create(self, spec: ContainerSpec) -> None:
        spec.state_dir.mkdir(parents=True, exist_ok=True)

    async def run(
        self,
        spec: ContainerSpec,
        enter_cgroup: Callable[[], None] | None,
        *,
        task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
    ) -> int:
        return await run_supervised_process(spec.command, spec, enter_cgroup, task_status)

    async def destroy(self, spec: ContainerSpec) -> None:
        return None
