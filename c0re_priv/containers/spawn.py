"""Long-lived children forked on the daemon's own thread, so they live until stopped.

Linux ties a parent-death signal (`PR_SET_PDEATHSIG`, which bubblewrap's
`--die-with-parent` sets) to the *thread* that forked the child, not to its process.
`trio.lowlevel.open_process` forks from a worker thread, and trio retires a worker thread
after 10 s idle: every sandbox started that way was SIGKILLed 10 s after it started. Here the
fork happens on the thread that runs trio, which lives exactly as long as the daemon, and
the exit is awaited through a pidfd, so no other thread is ever the child's parent.

The price is that `fork`+`exec` blocks the trio loop for the few milliseconds they take; a
container start is rare, a container that dies of a retired thread is not. Never use this
for short commands (git, nixos-container): `trio.run_process` is right for those.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import signal
import subprocess
from collections.abc import Callable, Mapping, Sequence
from typing import IO

import trio

PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def set_death_signal(sig: int, parent: int) -> None:
    """In a child before exec: receive `sig` when the forking thread (the daemon) dies.

    Must run after any uid/gid change, which clears the setting. If the parent is already
    gone (it died between the fork and here) the child ends itself at once.
    """
    if _libc.prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() != parent:
        os.kill(os.getpid(), sig)


class Child:
    """A running child: its pid, and an exit status awaited without a thread."""

    def __init__(self, popen: subprocess.Popen[bytes]) -> None:
        self._popen = popen
        self.pid = popen.pid
        # a zombie still has a pidfd, so this cannot miss an exit that already happened
        self._pidfd: int | None = os.pidfd_open(popen.pid)
        self.stdout: trio.lowlevel.FdStream | None = None
        if popen.stdout is not None:
            self.stdout = trio.lowlevel.FdStream(os.dup(popen.stdout.fileno()))
            popen.stdout.close()

    @property
    def returncode(self) -> int | None:
        return self._popen.returncode

    async def wait(self) -> int:
        """Wait for the child to exit (reaping it) and return its status."""
        while self._popen.poll() is None:
            assert self._pidfd is not None
            await trio.lowlevel.wait_readable(self._pidfd)
        self._close_pidfd()
        return self._popen.returncode

    def send_signal(self, sig: int) -> None:
        if self._popen.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def _close_pidfd(self) -> None:
        if self._pidfd is not None:
            trio.lowlevel.notify_closing(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = None

    async def aclose(self) -> None:
        if self.stdout is not None:
            await self.stdout.aclose()
        self._close_pidfd()


def spawn(
    argv: Sequence[str],
    *,
    env: Mapping[str, str],
    death_signal: int | None = signal.SIGKILL,
    stdin: int | IO[bytes] | None = subprocess.DEVNULL,
    stdout: int | IO[bytes] | None = None,
    stderr: int | IO[bytes] | None = None,
    start_new_session: bool = True,
    umask: int = -1,
    preexec: Callable[[], None] | None = None,
) -> Child:
    """Fork and exec `argv` on the calling (trio) thread; see the module docstring.

    `preexec` runs in the child first (cgroup join, uid drop); then, with `death_signal`
    set, the child asks to receive that signal when the daemon dies, even by SIGKILL.
    """
    parent = os.getpid()

    def child_setup() -> None:
        if preexec is not None:
            preexec()
        if death_signal is not None:
            set_death_signal(death_signal, parent)

    popen = subprocess.Popen(
        list(argv),
        stdin=stdin,
        stdout=stdout,
        stderr=stderr,
        env=dict(env),
        start_new_session=start_new_session,
        umask=umask,
        preexec_fn=child_setup,
    )
    return Child(popen)
