"""The daemon over real sockets: its info, one daemon per socket dir, clean shutdown."""

from __future__ import annotations

import sqlite3
import threading
import time
from functools import partial

import pytest
import trio

from c0re_priv.daemon import run_hive
from c0re_priv.server import DaemonAlreadyRunning
from protocol import messages as m
from protocol.client import HiveError, SyncClient
from tests.conftest import DaemonProcess


async def test_server_info(admin, hive):
    info = await admin.expect(m.ServerInfo(), m.Info)
    assert info.protocol == m.PROTOCOL_VERSION
    assert info.state_dir == str(hive.paths.state_dir)
    assert info.run_dir == str(hive.paths.run_dir)
    assert info.agents == 3
    assert info.uptime_seconds >= 0


async def test_a_second_daemon_refuses_to_steal_live_sockets(hive, config):
    with pytest.RaisesGroup(
        pytest.RaisesExc(DaemonAlreadyRunning, match="another daemon"), flatten_subgroups=True
    ):
        async with trio.open_nursery() as nursery:
            await nursery.start(partial(run_hive, config, hive.paths, handle_signals=False))


def test_sigterm_with_50_writes_in_flight_keeps_every_acknowledged_write(
    daemon_process: DaemonProcess,
):
    acknowledged: list[int] = []
    lock = threading.Lock()
    go = threading.Barrier(50)

    def writer(n: int) -> None:
        try:
            with SyncClient.connect(str(daemon_process.paths.admin_sock), timeout=10) as c:
                go.wait()
                sent = c.expect(m.OperatorSend(to="alice", body=f"write {n}"), m.Sent)
                with lock:
                    acknowledged.extend(sent.message_ids)
        except (HiveError, OSError, threading.BrokenBarrierError):
            # cut off by the shutdown: not acknowledged, so no promise to keep; a writer that
            # never reached the barrier breaks it, or the others would wait at it for ever
            # (seen on a loaded machine: pytest passed, then hung at exit on those threads)
            go.abort()

    threads = [threading.Thread(target=writer, args=(n,), daemon=True) for n in range(50)]
    for t in threads:
        t.start()
    time.sleep(0.05)
    assert daemon_process.stop() == 0
    for t in threads:
        t.join(10)
    paths = daemon_process.paths
    assert not paths.admin_sock.exists() and not paths.web_sock.exists()
    assert not paths.agent_sock("alice").exists()
    with sqlite3.connect(paths.db) as db:
        stored = {row[0] for row in db.execute("SELECT id FROM messages")}
    assert set(acknowledged) <= stored
    assert "Traceback" not in daemon_process.log()


def test_sigterm_exits_zero_and_sigint_too(daemon_process: DaemonProcess):
    assert daemon_process.stop() == 0
    daemon_process.start()
    assert daemon_process.proc is not None
    import signal

    daemon_process.proc.send_signal(signal.SIGINT)
    assert daemon_process.proc.wait(20) == 0
