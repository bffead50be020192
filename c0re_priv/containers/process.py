"""The `process` backend: the harness as a plain child process. No isolation at all.

For machines with neither bubblewrap nor NixOS. Everything the daemon's user can read, the
agent can read; `hive up` says so loudly. Limits and the uid drop still apply when the
daemon is root.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterable
from pathlib import Path

import trio

from .base import ContainerSpec, run_supervised_process


def hidden_from_others(paths: Iterable[Path]) -> str | None:
    """Why a user with no tie to these files (an agent's uid) could not run from them.

    Each directory on the way needs `o+x`, the path itself `o+r` (and `o+x` for a directory
    or a program). None when every path is reachable.
    """
    for path in paths:
        real = Path(os.path.realpath(path))
        for step in [*reversed(real.parents), real]:
            try:
                st = step.stat()
            except OSError as exc:
                return f"{step}: {exc.strerror}"
            mode = stat.S_IMODE(st.st_mode)
            is_dir = stat.S_ISDIR(st.st_mode)
            need = stat.S_IXOTH if step != real else stat.S_IROTH
            if step == real and (is_dir or mode & stat.S_IXUSR):
                need |= stat.S_IXOTH
            if mode & need != need:
                return f"{real} is out of their reach ({step} is mode {mode:04o})"
    return None


class ProcessBackend:
    name = "process"
    isolation = "NONE: agents run as plain processes and can read whatever the daemon's user can"

    def __init__(self, code: tuple[Path, ...] = ()) -> None:
        self.code = code
        """The interpreter and hyperhive's code, which an agent's uid must reach."""

    def unavailable(self) -> str | None:
        if os.geteuid() != 0:
            return None  # no uid drop: the agent runs as the daemon's user
        problem = hidden_from_others(self.code)
        if problem is None:
            return None
        return (
            f"agents run as their own uids, and {problem}: put the checkout and its Python"
            " where every user can read them, or use the bwrap backend"
        )

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
