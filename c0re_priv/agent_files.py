"""Narrow, defended reads of what an agent leaves on disk, for the dashboard and `hive ctl`.

The daemon runs as root and an agent controls everything below its state dir, so nothing
here takes a path to open. It takes an agent name and a path relative to that agent's state
dir, walks it one component at a time from the agent's own directory with `openat` and
`O_NOFOLLOW` (a symlink at any component is refused, never resolved), and serves only what
any user of the host could read anyway: directories that are world-searchable (and, to be
listed, world-readable), regular files that are world-readable, at most `STATE_FILE_MAX`
bytes. `..`, `.`, empty components, absolute paths and NULs are refused before any file is
touched. Nothing here writes.
"""

from __future__ import annotations

import errno
import json
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec

from protocol import messages as m

from .config import AgentConfig
from .errors import Fail
from .registry import Registry
from .safe_fs import DIR_FLAGS, UnsafePath, open_dir

STATE_FILE_MAX = 512 * 1024
"""Largest state file served (a frame must carry it; the dashboard shows text, not media)."""
DIR_ENTRIES_MAX = 2000
JOURNAL_TAIL_BYTES = 256 * 1024
JOURNAL_FILE = "harness.log"
FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
"""`O_NONBLOCK` so that a fifo swapped in after the checks cannot hang the read."""


def split_rel_path(rel_path: str) -> list[str]:
    """`"a/b/c"` as components; `""` is the state dir itself. Refuses anything but plain names."""
    if rel_path.startswith("/"):
        raise Fail("invalid", "absolute paths are refused: give a path relative to the state dir")
    if "\0" in rel_path:
        raise Fail("invalid", "a path may not contain NUL")
    trimmed = rel_path[:-1] if rel_path.endswith("/") else rel_path
    if trimmed == "":
        return []
    parts = trimmed.split("/")
    for part in parts:
        if part in ("", ".", ".."):
            raise Fail("invalid", f"refusing path component {part!r}")
    return parts


def _world(mode: int, bits: int) -> bool:
    return mode & bits == bits


@contextmanager
def _fd(fd: int) -> Iterator[int]:
    try:
        yield fd
    finally:
        os.close(fd)


def _open_agent_dir(registry: Registry, agents_root: Path, agent: str, *sub: str) -> int:
    """An fd of `<agents_root>/<agent>/<sub…>`, opened without following symlinks."""
    registry.get(agent)
    try:
        return open_dir(agents_root, [agent, *sub])
    except FileNotFoundError:
        raise Fail("not_found", f"{agent} has no {'/'.join(sub) or 'directory'} yet") from None
    except UnsafePath as exc:
        raise Fail("forbidden", str(exc)) from None


def _walk(root_fd: int, parts: list[str]) -> int:
    """Descend from `root_fd` (not consumed) through `parts`; return a new fd of the last dir.

    Every directory on the way, the root included, must be world-searchable.
    """
    fd = os.dup(root_fd)
    try:
        _require_mode(os.fstat(fd), stat.S_IXOTH, "the state dir is not world-searchable")
        walked: list[str] = []
        for part in parts:
            walked.append(part)
            where = "/".join(walked)
            st = _lstat(fd, part, where)
            if stat.S_ISLNK(st.st_mode):
                raise Fail("forbidden", f"{where} is a symlink; symlinks are not followed")
            if not stat.S_ISDIR(st.st_mode):
                raise Fail("invalid", f"{where} is not a directory")
            try:
                nxt = os.open(part, DIR_FLAGS, dir_fd=fd)
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise Fail("forbidden", f"{where} changed into a symlink") from None
                raise
            os.close(fd)
            fd = nxt
            _require_mode(os.fstat(fd), stat.S_IXOTH, f"{where} is not world-searchable")
        return fd
    except BaseException:
        os.close(fd)
        raise


def _lstat(dir_fd: int, name: str, where: str) -> os.stat_result:
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        raise Fail("not_found", f"{where} does not exist") from None


def _require_mode(st: os.stat_result, bits: int, message: str) -> None:
    if not _world(st.st_mode, bits):
        raise Fail("forbidden", message)


def _check_file(st: os.stat_result, where: str, limit: int) -> None:
    if stat.S_ISLNK(st.st_mode):
        raise Fail("forbidden", f"{where} is a symlink; symlinks are not followed")
    if not stat.S_ISREG(st.st_mode):
        raise Fail("forbidden", f"{where} is not a regular file")
    if not _world(st.st_mode, stat.S_IROTH):
        raise Fail("forbidden", f"{where} is not world-readable (mode {st.st_mode & 0o7777:04o})")
    if st.st_size > limit:
        raise Fail("too_large", f"{where} is {st.st_size} bytes; at most {limit} are served")


def _read_checked(dir_fd: int, name: str, where: str, limit: int) -> tuple[os.stat_result, bytes]:
    """Read a world-readable regular file of at most `limit` bytes, refusing any swap after the check."""
    before = _lstat(dir_fd, name, where)
    _check_file(before, where, limit)
    try:
        fd = os.open(name, FILE_FLAGS, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise Fail("forbidden", f"{where} changed into a symlink") from None
        raise
    with _fd(fd):
        st = os.fstat(fd)
        if (st.st_dev, st.st_ino) != (before.st_dev, before.st_ino):
            raise Fail("conflict", f"{where} was replaced while being read; try again")
        _check_file(st, where, limit)
        data = os.read(fd, limit + 1)
    if len(data) > limit:
        raise Fail("too_large", f"{where} grew past {limit} bytes")
    return st, data


def read_state_file(
    registry: Registry, agents_root: Path, max_frame_bytes: int, agent: str, rel_path: str
) -> m.AgentFile:
    """Blocking: one file of `agent`'s state dir (run it in a thread)."""
    parts = split_rel_path(rel_path)
    if not parts:
        raise Fail("invalid", "name a file, not the state dir")
    *dirs, name = parts
    limit = min(STATE_FILE_MAX, max_frame_bytes - 16 * 1024)
    with (
        _fd(_open_agent_dir(registry, agents_root, agent, "state")) as root,
        _fd(_walk(root, dirs)) as dir_fd,
    ):
        st, data = _read_checked(dir_fd, name, "/".join(parts), limit)
    return m.AgentFile(
        agent=agent, rel_path="/".join(parts), size=st.st_size, mtime=st.st_mtime, data=data
    )


def _entry(dir_fd: int, name: str) -> m.DirEntry:
    st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    mode = st.st_mode
    kind: Any
    if stat.S_ISLNK(mode):
        kind, readable = "symlink", False
    elif stat.S_ISDIR(mode):
        kind, readable = "dir", _world(mode, stat.S_IROTH | stat.S_IXOTH)
    elif stat.S_ISREG(mode):
        kind, readable = "file", _world(mode, stat.S_IROTH)
    else:
        kind, readable = "other", False
    shown = os.fsencode(name).decode("utf-8", "replace")
    return m.DirEntry(
        name=shown,
        kind=kind,
        size=st.st_size,
        mtime=st.st_mtime,
        readable=readable and shown == name,
    )


def list_state_dir(registry: Registry, agents_root: Path, agent: str, rel_path: str) -> m.AgentDir:
    """Blocking: the entries of one directory of `agent`'s state dir (run it in a thread)."""
    parts = split_rel_path(rel_path)
    entries: list[m.DirEntry] = []
    truncated = False
    with (
        _fd(_open_agent_dir(registry, agents_root, agent, "state")) as root,
        _fd(_walk(root, parts)) as dir_fd,
    ):
        where = "/".join(parts) or "the state dir"
        _require_mode(os.fstat(dir_fd), stat.S_IROTH, f"{where} is not world-readable")
        with os.scandir(dir_fd) as it:
            for item in it:
                if len(entries) >= DIR_ENTRIES_MAX:
                    truncated = True
                    break
                try:
                    entries.append(_entry(dir_fd, item.name))
                except FileNotFoundError:
                    continue  # removed while we listed
    entries.sort(key=lambda e: (e.kind != "dir", e.name))
    return m.AgentDir(agent=agent, rel_path="/".join(parts), entries=entries, truncated=truncated)


def read_journal(registry: Registry, agents_root: Path, agent: str, lines: int) -> m.Journal:
    """Blocking: the tail of `<agents_root>/<agent>/harness.log` (run it in a thread)."""
    path = str(agents_root / agent / JOURNAL_FILE)
    with _fd(_open_agent_dir(registry, agents_root, agent)) as dir_fd:
        try:
            st = os.stat(JOURNAL_FILE, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            note = (
                f"no harness log yet: {path} does not exist "
                "(the harness writes it once the agent's container has started)"
            )
            return m.Journal(agent=agent, path=path, lines=[], note=note)
        if not stat.S_ISREG(st.st_mode):
            raise Fail("forbidden", f"{path} is not a regular file")
        try:
            fd = os.open(JOURNAL_FILE, FILE_FLAGS, dir_fd=dir_fd)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise Fail("forbidden", f"{path} is a symlink") from None
            raise
    with _fd(fd):
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise Fail("forbidden", f"{path} is not a regular file")
        start = max(0, st.st_size - JOURNAL_TAIL_BYTES)
        data = os.pread(fd, JOURNAL_TAIL_BYTES, start)
    text = data.decode(errors="replace").splitlines()
    if start > 0 and text:
        text = text[1:]  # the first line was cut in the middle
    note = "" if text else f"{path} is empty"
    return m.Journal(agent=agent, path=path, lines=text[-lines:], note=note)


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(f"no TOML form for {type(value).__name__}")


def _toml_table(header: str, values: dict[str, object]) -> list[str]:
    out = [f"[{header}]"]
    for key, value in values.items():
        if value is None:
            out.append(f"# {key} is not set")
        else:
            out.append(f"{key} = {_toml_value(value)}")
    return out


def _stamp(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")


def agent_config_text(
    registry: Registry,
    configured_agents: dict[str, AgentConfig],
    deployed_agents: dict[str, Any],
    agent: str,
) -> m.AgentConfigText:
    """The registry record and the config one agent runs (its deployed agent.toml), as TOML."""
    record = registry.get(agent)
    configured = configured_agents.get(agent)
    deployed = deployed_agents.get(agent)
    section = msgspec.structs.asdict(configured or AgentConfig())
    # env values are often credentials: the dashboard learns which variables are set, not what
    section["env"] = {key: "(set)" for key in section["env"]}
    lines = [
        "# The registry record (changed with `hive ctl agent …`).",
        *_toml_table(
            "registry",
            {
                "name": record.name,
                "role": record.role,
                "model": record.model,
                "runtime": record.runtime,
                "allowed_recipients": record.allowed_recipients,
                "paused": record.paused,
                "uid": record.uid,
                "created_at": _stamp(record.created_at),
                "status_text": record.status_text,
            },
        ),
        "",
        (
            f"# The deployed config: meta repo agents/{agent}/agent.toml at {deployed.sha[:12]},"
            " with hive.toml's env (values hidden)."
            if deployed is not None
            else "# hive.toml"
            + ("" if configured is not None else " (not listed there: these are the defaults)")
        ),
        *_toml_table(f"agents.{agent}", section),
    ]
    return m.AgentConfigText(
        agent=agent,
        source="the registry and the meta repo" if deployed else "the registry and hive.toml",
        text="\n".join(lines) + "\n",
    )
