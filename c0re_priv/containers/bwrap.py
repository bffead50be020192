"""The `bwrap` backend: each agent's harness in a bubblewrap sandbox. The default.

The sandbox gets its own pid, ipc and uts namespaces (and network, when the agent's config
turns it off), the host read-only, a private `/tmp` and `/run`, the daemon's state and run
dirs hidden, and exactly these writable or visible extras: the agent's own state dir (rw,
at its real absolute path), `/shared` (rw), the agent's socket (and no other socket), and for
the manager every other agent's state dir read-only. When the daemon is root the sandbox
runs as the agent's own unprivileged uid.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from collections.abc import Callable
from functools import partial
from pathlib import Path

import trio

from .base import ContainerSpec, run_supervised_process

# Host top-level entries never bound into a sandbox: provided fresh, or hidden (homes).
NOT_FROM_HOST = frozenset(
    {"proc", "dev", "sys", "tmp", "run", "shared", "root", "home", "lost+found"}
)
SANDBOX_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class _Mounts:
    """Builds bwrap mount arguments, creating traversable (0755) parents where bwrap would not."""

    def __init__(self, host_tops: set[str]) -> None:
        self.argv: list[str] = []
        self.host_tops = host_tops
        self.tmpfs: list[Path] = [Path("/tmp"), Path("/run")]
        self.made: set[Path] = set()

    def _needs_dir(self, path: Path) -> bool:
        if any(path != t and path.is_relative_to(t) for t in self.tmpfs):
            return True
        return len(path.parts) > 1 and path.parts[1] not in self.host_tops

    def parents(self, path: Path) -> None:
        for parent in reversed(path.parents[:-1]):  # every ancestor but "/"
            if parent not in self.made and self._needs_dir(parent) and parent not in self.tmpfs:
                self.argv += ["--perms", "0755", "--dir", str(parent)]
                self.made.add(parent)

    def tmpfs_at(self, path: Path, perms: str = "0755") -> None:
        self.parents(path)
        self.argv += ["--perms", perms, "--tmpfs", str(path)]
        self.tmpfs.append(path)

    def bind(self, flag: str, source: Path, dest: Path) -> None:
        self.parents(dest)
        self.argv += [flag, str(source), str(dest)]


def setpriv_prefix(uid: int, gid: int) -> list[str]:
    """Become the agent's uid inside the sandbox, with no capabilities and no way back."""
    return [
        "setpriv",
        f"--reuid={uid}",
        f"--regid={gid}",
        "--clear-groups",
        "--no-new-privs",
        "--inh-caps=-all",
        "--bounding-set=-all",
        "--",
    ]


def bwrap_argv(
    spec: ContainerSpec,
    bwrap: str = "bwrap",
    host_root: Path = Path("/"),
    ro_extra: tuple[Path, ...] = (),
) -> list[str]:
    """The full bubblewrap command line for `spec` (pure: easy to inspect and test).

    bwrap itself runs as the daemon's user (root in production) so it can reach every source
    path; the harness inside runs as `spec.uid` via setpriv when one is set.
    """
    argv = [
        bwrap,
        "--die-with-parent",
        "--new-session",
        "--unshare-pid",
        "--unshare-ipc",
        "--unshare-uts",
        "--hostname",
        f"h-{spec.name}",
    ]
    if not spec.network:
        argv.append("--unshare-net")
    host_tops: set[str] = set()
    for entry in sorted(os.listdir(host_root)):
        if entry in NOT_FROM_HOST:
            continue
        path = host_root / entry
        if path.is_symlink():
            argv += ["--symlink", os.readlink(path), f"/{entry}"]
        elif path.exists():
            argv += ["--ro-bind", str(path), f"/{entry}"]
            host_tops.add(entry)
    argv += ["--proc", "/proc", "--dev", "/dev", "--perms", "1777", "--tmpfs", "/tmp"]
    argv += ["--perms", "0755", "--tmpfs", "/run"]
    mounts = _Mounts(host_tops)
    # Shallower destinations first, so that a deeper mount lands on top of a shallower one
    # whatever the order they are listed in: the daemon's state dir may lie inside the code's
    # checkout (`HIVE_STATE_DIR=$PWD/state`), and bound after it, the code would uncover the
    # state dir again (with its host modes, which the agent's uid cannot traverse) instead of
    # its hiding tmpfs.
    ops: list[tuple[Path, Callable[[], None]]] = []
    for hidden in spec.hide:
        ops.append((hidden, partial(mounts.tmpfs_at, hidden)))
    for extra in ro_extra:  # the harness's own interpreter and code, wherever they live
        ops.append((extra, partial(mounts.bind, "--ro-bind", extra, extra)))
    ops.append((Path("/shared"), partial(mounts.bind, "--bind", spec.shared_dir, Path("/shared"))))
    for peer in spec.peers:
        ops.append((peer, partial(mounts.bind, "--ro-bind", peer, peer)))
    for path in spec.ro_files:
        ops.append((path, partial(mounts.bind, "--ro-bind", path, path)))
    ops.append((spec.state_dir, partial(mounts.bind, "--bind", spec.state_dir, spec.state_dir)))
    ops.append((spec.socket, partial(mounts.bind, "--bind", spec.socket, spec.socket)))
    mounts.argv += ["--perms", "0755", "--dir", "/shared"]
    for _, op in sorted(ops, key=lambda o: len(o[0].parts)):  # stable: same depth, same order
        op()
    argv += mounts.argv
    argv += ["--clearenv"]
    env = {
        "PATH": SANDBOX_PATH,
        "HOME": str(spec.state_dir),
        "LANG": "C.UTF-8",
        "HIVE_AGENT_SOCKET": str(spec.socket),
        "HIVE_AGENT_NAME": spec.name,
        **spec.env,
    }
    for key, value in sorted(env.items()):
        argv += ["--setenv", key, value]
    argv += ["--chdir", str(spec.state_dir), "--"]
    if spec.uid is not None:
        argv += setpriv_prefix(spec.uid, spec.gid if spec.gid is not None else spec.uid)
    return [*argv, *spec.command]


class BwrapBackend:
    name = "bwrap"
    isolation = (
        "bubblewrap: own pid/ipc/uts namespaces, host read-only, only its own state dir writable"
    )

    def __init__(self, ro_extra: tuple[Path, ...] = ()) -> None:
        self.ro_extra = ro_extra

    def unavailable(self) -> str | None:
        if shutil.which("bwrap") is None:
            return "bubblewrap is not installed (apt-get install bubblewrap)"
        return None

    async def create(self, spec: ContainerSpec) -> None:
        spec.state_dir.mkdir(parents=True, exist_ok=True)
        spec.shared_dir.mkdir(parents=True, exist_ok=True)

    async def run(
        self,
        spec: ContainerSpec,
        enter_cgroup: Callable[[], None] | None,
        *,
        task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
    ) -> int:
        bwrap = shutil.which("bwrap") or "bwrap"
        argv = bwrap_argv(spec, bwrap, ro_extra=self.ro_extra)
        # bwrap must run as the daemon's user; the uid drop happens inside (setpriv)
        unprivileged = dataclasses.replace(spec, uid=None, gid=None)
        return await run_supervised_process(argv, unprivileged, enter_cgroup, task_status)

    async def destroy(self, spec: ContainerSpec) -> None:
        return None  # nothing outlives a bwrap sandbox but the state dir, which is kept
