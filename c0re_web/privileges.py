"""Giving up root: the web process runs as an unprivileged system user when started as root.

Nothing the dashboard does needs root, so `hive web` started as root (by `hive up` or a
service unit) makes sure its user exists (`hive-web` unless told otherwise; created with
`useradd --system` and a group of the same name), and then drops to it for good: no
supplementary groups, and that user's uid and gid as real, effective and saved ids. Even a
bypassed check in the web process can then read only what that user can. It reaches the
daemon through `web.sock`, which the daemon gives to that group (`web_group = "hive-web"`).
"""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import stat
import subprocess
from pathlib import Path

WEB_USER = "hive-web"


class PrivilegeError(Exception):
    pass


def ensure_user(name: str = WEB_USER) -> pwd.struct_passwd:
    """The system user `name`, created (with its own group, no home, no shell) if missing."""
    try:
        return pwd.getpwnam(name)
    except KeyError:
        pass
    useradd = shutil.which("useradd") or "/usr/sbin/useradd"
    shell = next(
        (s for s in ("/usr/sbin/nologin", "/sbin/nologin") if Path(s).exists()), "/bin/false"
    )
    argv = [
        useradd,
        "--system",
        "--user-group",
        "--no-create-home",
        "--home-dir",
        "/nonexistent",
        "--shell",
        shell,
        "--comment",
        "hyperhive dashboard",
        name,
    ]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    except OSError as exc:
        raise PrivilegeError(f"cannot create user {name}: {exc}") from exc
    if done.returncode not in (0, 9):  # 9: it appeared meanwhile
        raise PrivilegeError(f"useradd {name} failed: {done.stderr.strip() or done.returncode}")
    return pwd.getpwnam(name)


def socket_access_problem(path: Path, user: pwd.struct_passwd) -> str | None:
    """Why `user` (with only its own group) could not connect to the socket at `path`, or None.

    A socket that does not exist yet is no problem: the daemon may start later.
    """
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    mode = st.st_mode
    if st.st_uid == user.pw_uid:
        allowed = bool(mode & stat.S_IWUSR)
    elif st.st_gid == user.pw_gid:
        allowed = bool(mode & stat.S_IWGRP)
    else:
        allowed = bool(mode & stat.S_IWOTH)
    if allowed:
        return None
    try:
        group = grp.getgrgid(st.st_gid).gr_name
    except KeyError:
        group = str(st.st_gid)
    return (
        f"{path} (group {group}, mode {stat.S_IMODE(mode):04o}) is not open to {user.pw_name}: "
        f'set web_group = "{user.pw_name}" in hive.toml and restart the daemon'
    )


def drop_to(user: pwd.struct_passwd) -> None:
    """Become `user` for good (irreversibly); raises if root could be regained."""
    uid, gid = user.pw_uid, user.pw_gid
    if uid == 0 or gid == 0:
        raise PrivilegeError(f"refusing to run the web process as {user.pw_name} (uid/gid 0)")
    os.setgroups([])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
    if os.getresuid() != (uid, uid, uid) or os.getresgid() != (gid, gid, gid):
        raise PrivilegeError("the uid/gid change did not take")
    try:
        os.setuid(0)
    except PermissionError:
        pass
    else:
        raise PrivilegeError("root could be regained after dropping privileges")
    os.umask(0o077)
    os.environ.update(HOME=user.pw_dir, USER=user.pw_name, LOGNAME=user.pw_name)


def unreadable_code() -> list[str]:
    """Directories of this interpreter's code the current user cannot read (after the drop)."""
    roots = {Path(os.__file__).parent, Path(__file__).resolve().parent}
    return sorted(str(p) for p in roots if not os.access(p, os.R_OK | os.X_OK))
