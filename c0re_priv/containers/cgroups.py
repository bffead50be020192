"""Per-agent CPU, memory and pids limits in a cgroup the daemon creates.

Works with cgroup v2 (one unified tree) and with the v1 `memory`, `cpu` and `pids`
controllers mounted separately. The agent's process joins the cgroup from `preexec_fn`,
before it execs anything, so no byte of the harness runs unconfined. When limits cannot be
applied (not root, controllers missing) `prepare` says why, and that sentence is what the
agent's status row shows: never a silent pretence.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .base import Limits

CGROUP_ROOT = Path("/sys/fs/cgroup")
GROUP = "hyperhive"
CPU_PERIOD_US = 100_000


@dataclass
class Applied:
    description: str
    """What the status row says (e.g. "memory=512MiB pids=256 (cgroup v1)")."""
    enter: Callable[[], None] | None
    """Called in the child before exec: moves the process into the cgroup."""
    dirs: list[Path]


class Cgroups:
    def __init__(self, root: Path = CGROUP_ROOT, group: str = GROUP) -> None:
        self.root = root
        self.group = group

    def version(self) -> int | None:
        if (self.root / "cgroup.controllers").exists():
            return 2
        if (self.root / "memory").is_dir() or (self.root / "pids").is_dir():
            return 1
        return None

    def prepare(self, agent: str, limits: Limits) -> Applied:
        """Create (or reset) the agent's cgroup with `limits`; say what was applied."""
        if not limits.any():
            return Applied("none configured", None, [])
        if os.geteuid() != 0:
            return Applied("not applied: the daemon is not root", None, [])
        version = self.version()
        try:
            if version == 2:
                return self._prepare_v2(agent, limits)
            if version == 1:
                return self._prepare_v1(agent, limits)
        except OSError as exc:
            return Applied(f"not applied: {exc.strerror} ({exc.filename})", None, [])
        return Applied("not applied: no cgroup controllers mounted", None, [])

    def _prepare_v1(self, agent: str, limits: Limits) -> Applied:
        writes: list[tuple[str, str, str]] = []
        if limits.memory_bytes is not None:
            writes.append(("memory", "memory.limit_in_bytes", str(limits.memory_bytes)))
        if limits.cpu is not None:
            writes += [
                ("cpu", "cpu.cfs_period_us", str(CPU_PERIOD_US)),
                ("cpu", "cpu.cfs_quota_us", str(int(limits.cpu * CPU_PERIOD_US))),
            ]
        if limits.pids is not None:
            writes.append(("pids", "pids.max", str(limits.pids)))
        missing = sorted({c for c, _, _ in writes if not (self.root / c).is_dir()})
        if missing:
            return Applied(
                f"not applied: cgroup v1 controller(s) {', '.join(missing)} missing", None, []
            )
        dirs: list[Path] = []
        for controller, knob, value in writes:
            path = self.root / controller / self.group / agent
            path.mkdir(parents=True, exist_ok=True)
            if path not in dirs:
                dirs.append(path)
            (path / knob).write_text(value)
        if limits.memory_bytes is not None:
            # without swap accounting a limited process could page out instead of stopping
            with contextlib.suppress(OSError):
                (
                    self.root / "memory" / self.group / agent / "memory.memsw.limit_in_bytes"
                ).write_text(str(limits.memory_bytes))
        procs = [d / "cgroup.procs" for d in dirs]
        return Applied(f"{limits.describe()} (cgroup v1)", _enter(procs), dirs)

    def _prepare_v2(self, agent: str, limits: Limits) -> Applied:
        parent = self.root / self.group
        parent.mkdir(exist_ok=True)
        wanted = [
            c
            for c, v in (
                ("memory", limits.memory_bytes),
                ("cpu", limits.cpu),
                ("pids", limits.pids),
            )
            if v is not None
        ]
        available = (self.root / "cgroup.controllers").read_text().split()
        missing = [c for c in wanted if c not in available]
        if missing:
            return Applied(
                f"not applied: cgroup v2 controller(s) {', '.join(missing)} unavailable", None, []
            )
        enable = " ".join(f"+{c}" for c in wanted)
        (self.root / "cgroup.subtree_control").write_text(enable)
        (parent / "cgroup.subtree_control").write_text(enable)
        path = parent / agent
        path.mkdir(exist_ok=True)
        if limits.memory_bytes is not None:
            (path / "memory.max").write_text(str(limits.memory_bytes))
            with contextlib.suppress(OSError):
                (path / "memory.swap.max").write_text("0")
        if limits.cpu is not None:
            (path / "cpu.max").write_text(f"{int(limits.cpu * CPU_PERIOD_US)} {CPU_PERIOD_US}")
        if limits.pids is not None:
            (path / "pids.max").write_text(str(limits.pids))
        return Applied(f"{limits.describe()} (cgroup v2)", _enter([path / "cgroup.procs"]), [path])

    def remove(self, applied: Applied) -> None:
        """Remove the agent's cgroup dirs once its processes are gone (best effort)."""
        for path in applied.dirs:
            with contextlib.suppress(OSError):
                path.rmdir()


def _enter(procs: list[Path]) -> Callable[[], None]:
    def enter() -> None:
        pid = str(os.getpid())
        for path in procs:
            with open(path, "w") as fh:
                fh.write(pid)

    return enter
