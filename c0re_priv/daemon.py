"""`run_hive`: one daemon's whole lifetime in one function.

Two nurseries, visibly nested: the outer one owns the store writer; the inner one owns the
sockets, the lease reaper, the question expiry, the reminder scheduler, the approvals
deployer and the container supervisor. Shutdown (SIGTERM/SIGINT, or cancelling the caller)
cancels the inner nursery first, so every connection can hand its leases back while the
writer is still alive; then the writer commits whatever is still queued and the sockets are
unlinked. `hive.Hive` wires the services; this module runs them, above the transport
(`server`) it starts.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import time
from collections.abc import Callable

import trio

from . import private_state
from .config import HiveConfig, Paths
from .containers import Backend
from .errors import Fail
from .hive import Hive
from .host_sock import HostDoor
from .server import SocketHub

log = logging.getLogger(__name__)


def sd_notify(message: str) -> bool:
    """Send a systemd notification (`READY=1`, …) if `NOTIFY_SOCKET` is set."""
    target = os.environ.get("NOTIFY_SOCKET")
    if not target:
        return False
    address = "\0" + target[1:] if target.startswith("@") else target
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.connect(address)
        sock.sendall(message.encode())
    return True


async def sync_config_agents(hive: Hive) -> list[str]:
    """Register every agent named in the config that the registry does not know yet."""
    added = []
    for name, agent in sorted(hive.config.agents.items()):
        if name in hive.registry.agents:
            continue
        await hive.roster.add(
            name, agent.role, agent.model, agent.runtime, agent.allowed_recipients
        )
        added.append(name)
    return added


async def run_hive(
    config: HiveConfig,
    paths: Paths,
    *,
    handle_signals: bool = True,
    backend: Backend | None = None,
    on_ready: Callable[[Hive], None] | None = None,
    now: Callable[[], float] = time.time,
    task_status: trio.TaskStatus[Hive] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run one daemon until cancelled or signalled; returns after a clean shutdown.

    `now` is the wall clock of the timed services; a test passes one derived from
    `trio.current_time()` to drive them with trio's `MockClock`. The daemon runs under its
    own umask (`private_state.DAEMON_UMASK`): what it creates is private unless it says so.
    """
    with private_state.daemon_umask():
        await _run_hive(config, paths, handle_signals, backend, on_ready, now, task_status)


async def _run_hive(
    config: HiveConfig,
    paths: Paths,
    handle_signals: bool,
    backend: Backend | None,
    on_ready: Callable[[Hive], None] | None,
    now: Callable[[], float],
    task_status: trio.TaskStatus[Hive],
) -> None:
    backend_name = backend.name if backend is not None else config.hive.backend
    hive = Hive(config, paths, now, agents_traverse=backend_name == "process")
    try:
        async with trio.open_nursery() as core:
            await core.start(hive.store.run_writer)
            async with trio.open_nursery() as services:
                if handle_signals:
                    await services.start(_cancel_on_signal, services.cancel_scope, hive.stopping)
                await hive.registry.load()
                # before any socket serves: a held agent must never be leased a message
                await hive.estop.load()
                await hive.budgets.load()
                await hive.configs.open()
                orphans = await hive.broker.requeue_orphans()
                if orphans:
                    log.info("requeued %d message(s) leased before the last shutdown", orphans)
                hub = SocketHub(hive, services)
                hive.open_doors(hub)
                added = await sync_config_agents(hive)
                for name in hive.registry.names():
                    if name not in added:
                        hive.roster.ensure_dirs(name)
                        await hub.open_agent(name)
                await hive.configs.seed_missing()
                await hive.forge.open()
                # the fixed sockets last: once admin.sock answers, every agent's socket exists
                # (not every service yet: uids for hundreds of agents take a while, and an
                # approval made meanwhile waits for the deployer)
                await hub.open_fixed()
                if hive.settings.host_sock:
                    # the original's JSON-line door, with admin.sock's power and permissions
                    host = HostDoor(hive, services)
                    group = hive.settings.admin_group
                    await hub.open_door("host", paths.host_sock, group, host)
                lifecycle = hive.supervise(services, backend)
                lifecycle.end_leftovers()
                for name in hive.registry.names():
                    try:
                        await lifecycle.ensure_uid(name)
                    except Fail as exc:  # that agent will not start; the others do
                        log.error("%s: %s", name, exc.message)
                await hive.configs.render_nix(hive.registry.names())
                await services.start(hive.broker.run_lease_reaper)
                await services.start(hive.questions.run_expiry)
                await services.start(hive.reminders.run_scheduler)
                await services.start(hive.approvals.run_deployer)
                await services.start(hive.escalation.run)
                if hive.federation is not None:  # reports started at once; NATS may be away
                    await services.start(hive.federation.run)
                log.info(
                    "hyperhive %s serving on %s (%d agents)",
                    hive.rev,
                    paths.run_dir,
                    len(hive.registry.agents),
                )
                if hive.settings.autostart:
                    await lifecycle.start_all()
                sd_notify("READY=1")
                if on_ready is not None:
                    on_ready(hive)
                task_status.started(hive)
            core.cancel_scope.cancel()
    finally:
        hive.store.close()
        log.info("hyperhive stopped")


async def _cancel_on_signal(
    scope: trio.CancelScope,
    stopping: trio.Event,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        task_status.started()
        async for signum in signals:
            log.info("received %s, shutting down", signal.Signals(signum).name)
            sd_notify("STOPPING=1")
            stopping.set()
            scope.cancel()
            return
