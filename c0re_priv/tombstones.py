"""Tombstones: the directories of destroyed agents, kept under `<state>/tombstones/<name>`.

`Destroy` moves an agent's directory here (`lifecycle.destroy`); this module lists them and
purges one for good. A purge is the one place the daemon deletes a tree on request, so the
name is checked before any path is built (`..`, `.`, `/`, empty, NUL and anything outside
the agent-name pattern are refused), and the path must then be a real directory, not a
symlink, whose resolved parent is the tombstone root itself. It never deletes anything else.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
from pathlib import Path

import trio

from protocol import messages as m

from .errors import Fail
from .events import EventBus

NAME = re.compile(m.AGENT_NAME_PATTERN)


def root(state_dir: Path) -> Path:
    return state_dir / "tombstones"


def _row(path: Path) -> m.TombstoneRow:
    return m.TombstoneRow(name=path.name, path=str(path), destroyed_at=path.lstat().st_mtime)


def list_all(state_dir: Path) -> list[m.TombstoneRow]:
    """Every tombstone, newest first (entries that are not plain dirs are not tombstones)."""
    try:
        entries = list(os.scandir(root(state_dir)))
    except FileNotFoundError:
        return []
    rows = [
        _row(Path(e.path))
        for e in entries
        if NAME.match(e.name) and e.is_dir(follow_symlinks=False)
    ]
    return sorted(rows, key=lambda r: r.destroyed_at, reverse=True)


def row(state_dir: Path, name: str) -> m.TombstoneRow | None:
    path = root(state_dir) / name
    return _row(path) if path.is_dir() and not path.is_symlink() else None


def checked_path(state_dir: Path, name: object) -> Path:
    """The tombstone dir `name` names, or `Fail` — before anything is deleted."""
    if (
        not isinstance(name, str)
        or name in ("", ".", "..")
        or "\0" in name
        or "/" in name
        or not NAME.match(name)
    ):
        raise Fail("invalid", f"not an agent name: {name!r}")
    base = root(state_dir)
    path = base / name
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        raise Fail("not_found", f"no tombstone named {name!r}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise Fail("forbidden", f"{path} is not a directory (symlinks are never followed)")
    if path.resolve().parent != base.resolve():
        raise Fail("forbidden", f"{path} is not directly under {base}")
    return path


async def purge(state_dir: Path, bus: EventBus, name: str) -> None:
    """Delete the tombstone `name` and publish `TombstoneRemoved`."""
    path = checked_path(state_dir, name)
    # rmtree's fd-based walk never follows a symlink inside the tree
    assert shutil.rmtree.avoids_symlink_attacks
    await trio.to_thread.run_sync(shutil.rmtree, path)
    bus.publish(m.TombstoneRemoved(name=name))


def added(state_dir: Path, bus: EventBus, name: str) -> None:
    """After `Destroy`: publish `TombstoneAdded` for the dir it left."""
    found = row(state_dir, name)
    if found is not None:
        bus.publish(m.TombstoneAdded(tombstone=found))
