"""What one hive is on a host it may share with other hives: its id, and its leftovers.

Every hive has an id of its own (`<state_dir>/hive-id`, made once), which names its cgroups
and marks every process it starts (`HIVE_INSTANCE=<id>` in the environment). Containers end
with the daemon (a death signal; see `spawn.py`), but a daemon that starts must not trust
that its predecessor's did: before it starts anything it ends every process that still
carries its mark. A process marked by another hive is never touched.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import signal
from pathlib import Path

from ..errors import storage_full

log = logging.getLogger(__name__)

MARK = "HIVE_INSTANCE"
ID_FILE = "hive-id"


class BadHiveId(Exception):
    """The hive id file cannot be read or written; the message says which and why."""


def hive_id(state_dir: Path) -> str:
    """This hive's id, made on first use and kept in its state dir."""
    path = state_dir / ID_FILE
    try:
        return _parse_id(path)
    except FileNotFoundError:
        pass
    tmp = path.with_name(f".{ID_FILE}.{os.getpid()}")
    try:
        tmp.write_text(secrets.token_hex(6) + "\n")
        os.link(tmp, path)  # first writer wins; a concurrent start reads the winner's id
    except FileExistsError:
        pass
    except OSError as exc:
        full = storage_full(exc)
        raise BadHiveId(f"cannot write {path}: {full.message if full else exc}") from exc
    finally:
        tmp.unlink(missing_ok=True)
    return _parse_id(path)


def _parse_id(path: Path) -> str:
    value = path.read_text().strip()
    if len(value) != 12 or any(c not in "0123456789abcdef" for c in value):
        raise BadHiveId(f"{path} does not hold a hive id; remove it to make a new one")
    return value


def marked(hive: str, proc: Path = Path("/proc")) -> list[int]:
    """Pids of the processes (other than this one) whose environment carries `hive`'s mark."""
    needle = f"{MARK}={hive}".encode()
    me = os.getpid()
    found = []
    for entry in os.scandir(proc):
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        try:
            environ = Path(entry.path, "environ").read_bytes()
        except OSError:  # gone, or not ours to read (then not ours at all)
            continue
        if needle in environ.split(b"\0"):
            found.append(int(entry.name))
    return sorted(found)


def end_leftovers(hive: str, proc: Path = Path("/proc")) -> list[int]:
    """SIGKILL every process a previous run of this hive left; return their pids.

    Called at start-up before any container starts, so a live container of this very
    daemon cannot be among them.
    """
    pids = marked(hive, proc)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    if pids:
        log.warning(
            "ended %d process(es) left running by a previous run of this hive: %s",
            len(pids),
            " ".join(map(str, pids)),
        )
    return pids
