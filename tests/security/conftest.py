"""Attackers for the security tests: another local uid, an agent's uid, a small disk.

`as_uid` runs a command as a uid that exists nowhere else on the host (via `setpriv`, with no
supplementary groups), which is all another local user is to the kernel. `open_tmp` is a
directory every uid may enter, so what keeps an attacker out in these tests is the daemon's
own modes, not the 0700 of pytest's temp dirs. `daemon_in` starts a real `hive c0re`
process over a hive.toml.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import DaemonProcess

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (other uids, mounts)")
ATTACKER_UIDS = range(47000, 48000)


def unused_uid() -> int:
    """A uid with no account and no process on this host."""
    owners = set()
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            with contextlib.suppress(OSError):
                owners.add(os.stat(f"/proc/{pid}").st_uid)
    for uid in ATTACKER_UIDS:
        try:
            pwd.getpwuid(uid)
        except KeyError:
            if uid not in owners:
                return uid
    raise RuntimeError("no unused uid in the attacker range")


def as_uid(uid: int, argv: list[str], gid: int | None = None) -> subprocess.CompletedProcess[str]:
    """Run `argv` as `uid` (and `gid`, default the same number), no groups, no privileges."""
    setpriv = shutil.which("setpriv") or "setpriv"
    return subprocess.run(
        [
            setpriv,
            f"--reuid={uid}",
            f"--regid={gid if gid is not None else uid}",
            "--clear-groups",
            "--no-new-privs",
            "--",
            *argv,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def can_read(uid: int, path: Path, gid: int | None = None) -> bool:
    """Whether `uid` can read `path` (a file's first byte, or a directory's listing)."""
    probe = 'if [ -d "$1" ]; then ls -- "$1"; else head -c 1 -- "$1"; fi >/dev/null'
    done = as_uid(uid, ["/bin/sh", "-c", probe, "probe", str(path)], gid)
    return done.returncode == 0


@pytest.fixture
def open_tmp() -> Iterator[Path]:
    """A short temp dir that every uid may enter (0755, like /var/lib)."""
    path = Path(tempfile.mkdtemp(prefix="hs", dir="/tmp"))
    os.chmod(path, 0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def daemon_in(root: Path, toml: str) -> DaemonProcess:
    config = root / "hive.toml"
    config.write_text(toml)
    os.chmod(config, 0o600)
    return DaemonProcess(root, config)


@pytest.fixture
def daemons() -> Iterator[list[DaemonProcess]]:
    """Daemon processes a test starts; each is stopped (or killed) afterwards."""
    started: list[DaemonProcess] = []
    try:
        yield started
    finally:
        for daemon in started:
            if daemon.proc is not None and daemon.proc.poll() is None:
                try:
                    daemon.stop(30)
                except subprocess.TimeoutExpired:
                    daemon.kill()
