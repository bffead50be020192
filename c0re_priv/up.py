"""`hive up`: the daemon and the dashboard process under one nursery, stopped together.

The daemon runs in this process (it owns the signals); the web process is a child that runs
unprivileged. When the daemon stops (Ctrl-C, SIGTERM) the nursery is cancelled, which stops
the web process; the daemon's own shutdown stops every agent's container. A web process that
ends while the hive is not stopping (killed, crashed) is logged and started again.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from functools import partial

import trio

from .config import HiveConfig, Paths
from .containers.spawn import spawn
from .daemon import run_hive
from .hive import Hive

log = logging.getLogger(__name__)


def web_available() -> bool:
    """Whether this build has the dashboard; finding a top-level package imports nothing."""
    return importlib.util.find_spec("c0re_web") is not None


def web_port_problem(port: int) -> str | None:
    """Why the dashboard could not listen on 127.0.0.1:`port`, asked before anything starts:
    a port another hive's dashboard (or any program) holds is one sentence at once, not a
    hive that says it is up and a dashboard failing again and again behind it."""
    if port == 0:
        return None  # any free port
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the web process does
        try:
            probe.bind(("127.0.0.1", port))
        except OSError as exc:
            reason = exc.strerror or str(exc)
        else:
            return None
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        other = free.getsockname()[1]
    return (
        f"the dashboard's port 127.0.0.1:{port} is taken ({reason}): another hive's"
        f" dashboard, or another program. Give this hive another port: --web-port {other},"
        f" or web_port = {other} in its hive.toml"
    )


WEB_RESTART_SECONDS = (1.0, 2.0, 5.0, 15.0, 60.0)
"""Pauses before the dashboard process is started again after it ended on its own, one more
step each time it ends within `WEB_STEADY_SECONDS` of its start."""
WEB_STEADY_SECONDS = 60.0
STOP_GRACE_SECONDS = 1.0
"""How long to wait, once the web process ended, for the daemon to say it is stopping: a
signal sent to the whole process group (Ctrl-C in a terminal, `systemctl stop`) reaches both,
and the web process may end first. Not stopping by then, the web process failed."""


async def run_web(
    paths: Paths,
    port: int,
    stopping: trio.Event,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run `hive web` (as `python -m c0re_web web`: this package never imports the dashboard)
    as a child, echoing what it prints (its login link) to our stdout; started again, after a
    pause, whenever it ends while the hive is not stopping."""
    failures = 0
    while True:
        started = trio.current_time()
        code = await _web_process(paths, port, task_status)
        task_status = trio.TASK_STATUS_IGNORED
        with trio.move_on_after(STOP_GRACE_SECONDS):
            await stopping.wait()
        if stopping.is_set():
            return  # the same signal stopped it: the daemon's shutdown is under way
        if trio.current_time() - started > WEB_STEADY_SECONDS:
            failures = 0
        pause = WEB_RESTART_SECONDS[min(failures, len(WEB_RESTART_SECONDS) - 1)]
        failures += 1
        log.error("the dashboard process exited with %s; starting it again in %.0fs", code, pause)
        await trio.sleep(pause)


async def _web_process(paths: Paths, port: int, task_status: trio.TaskStatus[None]) -> int:
    """One run of the web process, until it ends (its exit code) or we are cancelled."""
    argv = [
        sys.executable,
        "-m",
        "c0re_web",
        "web",
        "--run-dir",
        str(paths.run_dir),
        "--bind",
        f"127.0.0.1:{port}",
    ]
    # it must end with the daemon, even a SIGKILLed one (see containers/spawn.py)
    proc = spawn(
        argv,
        env=os.environ,
        death_signal=signal.SIGTERM,
        stdin=None,
        stdout=subprocess.PIPE,
        start_new_session=False,
    )
    assert proc.stdout is not None
    task_status.started()
    try:
        buffered = b""
        async for chunk in proc.stdout:
            buffered += chunk
            *lines, buffered = buffered.split(b"\n")
            for line in lines:
                print(f"  web:      {line.decode(errors='replace')}", flush=True)
        return await proc.wait()
    finally:
        with trio.CancelScope(shield=True):
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
                with trio.move_on_after(5):
                    await proc.wait()
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()
            await proc.aclose()


async def run_up(config: HiveConfig, paths: Paths, on_ready: Callable[[Hive], None]) -> None:
    if not config.hive.web_url and web_available():
        # the dashboard is ours and serves here, so host.sock can give each agent's page
        config.hive.web_url = f"http://127.0.0.1:{config.hive.web_port}/"
    async with trio.open_nursery() as nursery:

        async def daemon(task_status: trio.TaskStatus[Hive] = trio.TASK_STATUS_IGNORED) -> None:
            await run_hive(config, paths, on_ready=on_ready, task_status=task_status)
            nursery.cancel_scope.cancel()  # the daemon stopped: stop everything else too

        hive = await nursery.start(daemon)
        if web_available():
            await nursery.start(partial(run_web, paths, config.hive.web_port, hive.stopping))
        else:
            print("  web:      the dashboard is not part of this build", flush=True)
