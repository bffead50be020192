"""What the NixOS units assume of the Python side, tested on the real processes: the daemon
really sends `READY=1` (Type=notify) once it serves and `STOPPING=1` on SIGTERM."""

from __future__ import annotations

import os
import socket
from pathlib import Path

from tests.conftest import DaemonProcess


def test_the_daemon_notifies_systemd_when_it_serves_and_when_it_stops(short_tmp: Path) -> None:
    notify_path = short_tmp / "notify.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(str(notify_path))
    listener.settimeout(20)
    config = short_tmp / "hive.toml"
    config.write_text("[hive]\nautostart = false\n\n[agents.alice]\n")
    daemon = DaemonProcess(short_tmp, config)
    os.environ["NOTIFY_SOCKET"] = str(notify_path)
    try:
        daemon.start()
    finally:
        del os.environ["NOTIFY_SOCKET"]
    try:
        ready = listener.recv(4096).decode()
        assert "READY=1" in ready.split("\n")
        # READY means serving: admin.sock and the agent's socket answer at once
        from protocol import messages as m
        from protocol.client import SyncClient

        with SyncClient.connect(str(daemon.paths.agent_sock("alice")), timeout=5) as alice:
            assert alice.expect(m.Whoami(), m.Identity).name == "alice"
        assert daemon.stop() == 0
        assert "STOPPING=1" in listener.recv(4096).decode().split("\n")
    finally:
        listener.close()
        if daemon.proc is not None and daemon.proc.poll() is None:
            daemon.kill()
