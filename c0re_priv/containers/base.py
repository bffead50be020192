"""What every container backend is given and must do.

A backend turns a `ContainerSpec` into a running harness and back. `run` is the whole life
of one container start: it reports `started` once the harness process exists, returns the
exit status when it ends, and when cancelled stops it (SIGTERM, then SIGKILL after the
spec's grace period). Backends never decide policy (restarts, ordering, who may ask): the
lifecycle supervisor does.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import trio

from ..private_state import AGENT_UMASK, open_private_log
from .spawn import Child, spawn


@dataclass(frozen=True)
class Limits:
    memory_bytes: int | None = None
    cpu: float | None = None
    """CPU cores (1.5 = one and a half cores of time)."""
    pids: int | None = None

    def any(self) -> bool:
        return any(v is not None for v in (self.memory_bytes, self.cpu, self.pids))

    def describe(self) -> str:
        parts = []
        if self.memory_bytes is not None:
            parts.append(f"memory={self.memory_bytes // (1024 * 1024)}MiB")
        if self.cpu is not None:
            parts.append(f"cpu={self.cpu:g}")
        if self.pids is not None:
            parts.append(f"pids={self.pids}")
        return " ".join(parts)


@dataclass(frozen=True)
class ContainerSpec:
    name: str
    role: str
    command: list[str]
    """The harness argv, run inside the container."""
    socket: Path
    state_dir: Path
    """`<agents_root>/<name>/state`: bound read-write at the same absolute path."""
    log_file: Path
    """Host file that receives the harness's stdout and stderr (the agent cannot write it)."""
    shared_dir: Path
    """Host dir bound read-write at `/shared` in every container."""
    hide: tuple[Path, ...]
    """Host dirs the container must not see (daemon state, run dir)."""
    peers: tuple[Path, ...] = ()
    """Other agents' state dirs, bound read-only at the same paths (the manager's view)."""
    ro_files: tuple[Path, ...] = ()
    """Host files the harness reads (its rules file), bound read-only at the same paths."""
    env: dict[str, str] = field(default_factory=dict)
    uid: int | None = None
    gid: int | None = None
    network: bool = True
    limits: Limits = Limits()
    grace_seconds: float = 30.0
    nix_config: str = ""
    """The rendered NixOS container config (nixos backend only)."""


class Backend(Protocol):
    name: str
    isolation: str
    """One line for the operator: what this backend isolates."""

    def unavailable(self) -> str | None:
        """Why this backend cannot run here, or None when it can."""
        ...

    async def create(self, spec: ContainerSpec) -> None: ...

    async def run(
        self,
        spec: ContainerSpec,
        enter_cgroup: Callable[[], None] | None,
        *,
        task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
    ) -> int:
        """Start the container, report its pid, return its exit status."""
        ...

    async def destroy(self, spec: ContainerSpec) -> None: ...


def drop_privileges(
    uid: int | None, gid: int | None, enter_cgroup: Callable[[], None] | None
) -> Callable[[], None]:
    """A `preexec_fn`: join the cgroup while still root, then become the agent's uid."""

    def preexec() -> None:
        if enter_cgroup is not None:
            enter_cgroup()
        if gid is not None:
            os.setgroups([])
            os.setgid(gid)
        if uid is not None:
            os.setuid(uid)

    return preexec


async def run_supervised_process(
    argv: list[str],
    spec: ContainerSpec,
    enter_cgroup: Callable[[], None] | None,
    task_status: trio.TaskStatus[int],
) -> int:
    """Run `argv` in its own session, logging to the spec's log file; stop it when cancelled."""
    spec.log_file.parent.mkdir(parents=True, exist_ok=True)
    # the log is the daemon's (0600): the agent's uid must not read it, whatever the umask
    with os.fdopen(open_private_log(spec.log_file), "ab") as log:
        # forked on the trio thread: a death signal tied to a worker thread fires when trio
        # retires that thread (10 s idle), which killed every sandbox (see spawn.py)
        proc = spawn(
            argv,
            stdout=log,
            stderr=log,
            umask=AGENT_UMASK,
            env={**os.environ, **spec.env},
            preexec=drop_privileges(spec.uid, spec.gid, enter_cgroup),
        )
    task_status.started(proc.pid)
    try:
        return await proc.wait()
    finally:
        with trio.CancelScope(shield=True):
            if proc.returncode is None:
                await terminate_group(proc, spec.grace_seconds)
            await proc.aclose()


def _stat(pid: int) -> list[str] | None:
    """/proc/PID/stat fields after the command name (so index 0 is field 3, the state)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def _start_time(pid: int) -> str | None:
    """Field 22: with the pid, it names one process, not a reused pid."""
    fields = _stat(pid)
    return fields[19] if fields else None


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _sandboxed_command(pid: int) -> bool:
    """The command a bubblewrap runs (the harness): not bwrap itself, and bwrap's child."""
    fields = _stat(pid)
    return fields is not None and _comm(pid) != "bwrap" and _comm(int(fields[1])) == "bwrap"


def descendants(pid: int) -> dict[int, str]:
    """Every process below `pid` (by /proc children links), with its start time."""
    found: dict[int, str] = {}
    todo = [pid]
    while todo:
        parent = todo.pop()
        try:
            tasks = os.listdir(f"/proc/{parent}/task")
        except OSError:
            continue
        for task in tasks:
            try:
                children = Path(f"/proc/{parent}/task/{task}/children").read_text().split()
            except OSError:
                continue
            for child in map(int, children):
                started = _start_time(child)
                if started is not None and child not in found:
                    found[child] = started
                    todo.append(child)
    return found


def _signal_all(pids: dict[int, str], sig: int) -> None:
    for pid, started in pids.items():
        if _start_time(pid) == started:  # still the same process
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)


async def terminate_group(proc: Child, grace: float) -> None:
    """SIGTERM the harness (in a sandbox, the command bwrap runs; else the process group),
    wait up to `grace` seconds, then SIGKILL everything left below it.

    A sandbox puts its inside in a session and a pid namespace of its own, whose init
    ignores SIGTERM: a process group signal stops at bubblewrap, and an inside whose outer
    bwrap died could live on, orphaned. Only the harness gets the SIGTERM, so it can let
    its running turn (and that turn's own children) finish.
    """
    inside = descendants(proc.pid)
    harness = {pid: started for pid, started in inside.items() if _sandboxed_command(pid)}
    if harness:  # bwrap exits once its command has: signalling bwrap would cut the grace short
        _signal_all(harness, signal.SIGTERM)
    else:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
    with trio.move_on_after(grace):
        await proc.wait()
    inside |= descendants(proc.pid)
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()
    _signal_all(inside, signal.SIGKILL)
