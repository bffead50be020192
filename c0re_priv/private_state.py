"""The daemon's files are its own: the umask it runs under, and the modes of its state at start.

The state dir holds every message ever sent (`hive.sqlite` and its `-wal`/`-shm`), the meta
repo, login tokens and each agent's `harness.log`; none of it is for the web process, the
agents' uids or any other local user. `prepare` creates the layout with exact modes and
tightens every loose one it finds (saying what it changed); it refuses, with one sentence
saying what to do, a state it cannot trust: a path owned by another user, or a file where a
directory belongs (or a symlink where a file belongs). It never loosens a mode an operator
set tighter than this layout needs, and never follows a link when it fixes something.

Agents' own state dirs (`<agents_root>/<name>/state`) belong to the agents and keep the modes
they choose; what keeps other users out of them is the root-owned `<agents_root>/<name>`
above each one. With the `process` backend (no sandbox) an agent's uid must reach its state
dir on the host, so its dirs are searchable (0711 / 0710 to its group), never listable.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .config import Paths

DAEMON_UMASK = 0o077
"""What the daemon creates is private unless it says otherwise (sockets, agents' dirs)."""
AGENT_UMASK = 0o022
"""What an agent's harness runs under: its files are readable by the manager's read-only
view of its state dir and by the other agents in `/shared`, as before the daemon went private."""
PRIVATE_DIR = 0o700
SEARCHABLE_DIR = 0o711
PRIVATE_FILE = 0o600
PARENT_DIR = 0o755
"""A missing parent of the state or run dir, made by the daemon."""
RUN_DIR = 0o751
"""The web user and the admin group must reach their sockets; nobody may list the dir."""
AGENT_SOCKETS_DIR = 0o711
DB_SUFFIXES = ("", "-wal", "-shm", "-journal")
PRIVATE_SUBDIRS = ("meta", "secrets", "tombstones", "deployed", "forge")


class UnsafeState(Exception):
    """The daemon's state cannot be trusted as it is; the message says what to do."""


@contextmanager
def daemon_umask() -> Iterator[None]:
    """Run the daemon under `DAEMON_UMASK`; the previous umask is back when it returns."""
    previous = os.umask(DAEMON_UMASK)
    try:
        yield
    finally:
        os.umask(previous)


def _own(path: Path, st: os.stat_result, kind: str) -> None:
    me = os.geteuid()
    if st.st_uid != me:
        raise UnsafeState(
            f"{path} belongs to uid {st.st_uid}, not to the daemon (uid {me}): "
            f"chown it to uid {me} or point the daemon at another {kind}"
        )


def _tighten(path: Path, st: os.stat_result, mode: int, fixed: list[str], exact: bool) -> None:
    """Make `path`'s permission bits at most `mode` (exactly `mode` when `exact`)."""
    current = stat.S_IMODE(st.st_mode)
    wanted = mode if exact else current & mode
    if current != wanted:
        os.chmod(path, wanted, follow_symlinks=False)
        fixed.append(f"{path} was {current:04o}, now {wanted:04o}")


def ensure_dir(path: Path, mode: int, fixed: list[str], *, exact: bool = False) -> None:
    """`path` exists as a directory of ours with no more access than `mode` (or exactly it)."""
    try:
        st = os.stat(path)  # a symlinked state dir is an operator's choice; its target counts
    except FileNotFoundError:
        for parent in reversed(path.parents):
            if not parent.exists():
                # what `mkdir -p` makes under a usual umask, not under the daemon's 077: the
                # web user and the agents' uids go through these to reach their sockets (and,
                # inside a sandbox that binds the checkout, to their own state dirs)
                parent.mkdir(exist_ok=True)
                os.chmod(parent, PARENT_DIR)
        path.mkdir(exist_ok=True)
        os.chmod(path, mode)
        return
    if not stat.S_ISDIR(st.st_mode):
        raise UnsafeState(f"{path} is not a directory: move it away and start again")
    _own(path, st, "directory")
    _tighten(path.resolve(), st, mode, fixed, exact)


def secure_file(path: Path, fixed: list[str], mode: int = PRIVATE_FILE) -> None:
    """A file of ours, if it exists, is a regular file (not a link) with at most `mode`."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISREG(st.st_mode):
        raise UnsafeState(
            f"{path} is not a regular file (a symlink or worse): remove it and start again"
        )
    _own(path, st, "file")
    _tighten(path, st, mode, fixed, exact=False)


def secure_db(db: Path) -> list[str]:
    """`hive.sqlite` and its companions: created 0600 (sqlite gives `-wal`/`-shm` the mode of
    the database file), and tightened to 0600 if they exist with more."""
    fixed: list[str] = []
    if not db.exists():
        fd = os.open(db, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, PRIVATE_FILE)
        os.close(fd)
    for suffix in DB_SUFFIXES:
        secure_file(db.with_name(db.name + suffix), fixed)
    return fixed


def prepare(paths: Paths, *, agents_traverse: bool = False) -> list[str]:
    """Create or check the daemon's dirs and private files; return what it had to tighten.

    `agents_traverse` (the `process` backend) leaves the dirs above agents' state dirs
    searchable (never listable) so an agent's uid can reach its own state dir on the host.
    """
    fixed: list[str] = []
    agents_inside = paths.agents_root.is_relative_to(paths.state_dir)
    top = SEARCHABLE_DIR if agents_traverse and agents_inside else PRIVATE_DIR
    ensure_dir(paths.state_dir, top, fixed, exact=True)
    ensure_dir(paths.run_dir, RUN_DIR, fixed, exact=True)
    ensure_dir(paths.run_dir / "agents", AGENT_SOCKETS_DIR, fixed, exact=True)
    for sub in PRIVATE_SUBDIRS:
        if (paths.state_dir / sub).exists():
            ensure_dir(paths.state_dir / sub, PRIVATE_DIR, fixed)
    secrets = paths.state_dir / "secrets"
    if secrets.is_dir():
        for entry in secrets.iterdir():
            secure_file(entry, fixed)
    ensure_dir(
        paths.agents_root, SEARCHABLE_DIR if agents_traverse else PRIVATE_DIR, fixed, exact=True
    )
    for entry in sorted(paths.agents_root.iterdir()):
        if entry.is_dir() and not entry.is_symlink():
            fixed += secure_agent_dir(paths, entry.name, gid=None, traverse=agents_traverse)
    fixed += secure_db(paths.db)
    return fixed


def unreachable_parent(path: Path) -> Path | None:
    """The first directory above `path` that other users cannot search (no `o+x`), if any:
    the web user and the agents' uids could not reach a socket below it."""
    for parent in reversed(path.resolve().parents):
        if not os.stat(parent).st_mode & stat.S_IXOTH:
            return parent
    return None


def secure_agent_dir(paths: Paths, name: str, gid: int | None, traverse: bool) -> list[str]:
    """`<agents_root>/<name>`: root's, private (0710 to the agent's group when `traverse`);
    its `harness.log` private. The state dir below is the agent's and is left alone."""
    fixed: list[str] = []
    agent_dir = paths.agents_root / name
    ensure_dir(agent_dir, 0o710 if traverse else PRIVATE_DIR, fixed)
    if traverse and gid is not None:
        if os.stat(agent_dir).st_gid != gid:
            os.chown(agent_dir, -1, gid)
        os.chmod(agent_dir, 0o710)
    secure_file(agent_dir / "harness.log", fixed)
    return fixed


def open_private_log(path: Path) -> int:
    """An fd appending to a log only the daemon reads (0600, never through a symlink)."""
    fd = os.open(
        path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, PRIVATE_FILE
    )
    if stat.S_IMODE(os.fstat(fd).st_mode) & 0o077:
        os.fchmod(fd, PRIVATE_FILE)
    return fd
