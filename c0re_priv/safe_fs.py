"""Filesystem access inside agent-writable trees without following an agent's symlinks.

The daemon runs as root and agents control the contents of their state dirs, so every path
below an agent root is walked one component at a time with `openat` and `O_NOFOLLOW`: a
symlink anywhere is refused, never resolved. Callers pass path components, never a joined
string, and each component is checked before use.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Sequence
from pathlib import Path

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class UnsafePath(Exception):
    """A component is a symlink, not a directory, or not a plain name."""


def check_component(part: str) -> str:
    if part in ("", ".", "..") or "/" in part or "\0" in part:
        raise UnsafePath(f"refusing path component {part!r}")
    return part


def open_dir(base: Path, parts: Sequence[str], *, create: bool = False, mode: int = 0o755) -> int:
    """Open `base/parts…` as a directory fd, refusing symlinks at every component."""
    fd = os.open(base, DIR_FLAGS)
    try:
        for part in parts:
            check_component(part)
            try:
                nxt = os.open(part, DIR_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                if not create:
                    raise
                made = False
                with contextlib.suppress(FileExistsError):
                    os.mkdir(part, mode, dir_fd=fd)
                    made = True
                nxt = os.open(part, DIR_FLAGS, dir_fd=fd)
                if made:
                    os.fchmod(nxt, mode)  # exactly `mode`, whatever the daemon's umask
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise UnsafePath(f"{part!r} is a symlink or not a directory") from exc
                raise
            os.close(fd)
            fd = nxt
        return fd
    except BaseException:
        os.close(fd)
        raise


def write_new_file(
    base: Path,
    parts: Sequence[str],
    name: str,
    data: bytes,
    *,
    mode: int = 0o644,
    owner: tuple[int, int] | None = None,
) -> None:
    """Create `base/parts…/name` exclusively (never overwrite, never follow a link); a write
    that fails (a full disk) leaves no partial file behind."""
    check_component(name)
    dir_fd = open_dir(base, parts, create=True)
    try:
        if owner is not None:
            os.fchown(dir_fd, *owner)
        fd = os.open(
            name,
            os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
            mode,
            dir_fd=dir_fd,
        )
        try:
            view = memoryview(data)
            while view:  # a write may be short (a disk filling up): the file is all or nothing
                view = view[os.write(fd, view) :]
            if owner is not None:
                os.fchown(fd, *owner)
            os.fchmod(fd, mode)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(name, dir_fd=dir_fd)
            raise
        finally:
            os.close(fd)
    finally:
        os.close(dir_fd)
