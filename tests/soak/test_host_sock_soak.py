"""`host.sock` under a real `hive up` for minutes: subscribers, pollers, lifecycle churn,
garbage and operator traffic at once (HIVE_SLOW=1; `HIVE_HOST_SOAK_SECONDS`, default 300).

Three subscribers stay connected throughout while a chaos loop restarts, stops, starts,
pauses and unpauses agents over host.sock, opens and drops subscribers, writes bad lines,
and the operator keeps the scripted agents talking. At the end every agent runs again and,
once quiet, every subscriber's latest row of each agent equals what `agent_status` says;
every push was well formed; the daemon logged no traceback, crashed no agent, and its
open fds and RSS did not grow.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import socket
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from protocol import messages as m
from tests.c0re_priv.host_lines import ROW_FIELDS

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from hive_up import HiveUp, remove, soak_dir  # bench/ is not a package
from soak import fds, rss_mib

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap not installed"),
]
SECONDS = float(os.environ.get("HIVE_HOST_SOAK_SECONDS", "300"))
AGENTS = ("manager", "alice", "bob")


class Lines:
    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(120)
        self.sock.connect(str(path))
        self.buffer = b""

    def line(self) -> dict[str, Any]:
        while b"\n" not in self.buffer:
            data = self.sock.recv(65536)
            if not data:
                raise EOFError("closed")
            self.buffer += data
        line, self.buffer = self.buffer.split(b"\n", 1)
        value = json.loads(line)
        assert isinstance(value, dict)
        return value

    def ask(self, request: bytes | dict[str, Any]) -> dict[str, Any]:
        if isinstance(request, dict):
            request = json.dumps(request).encode() + b"\n"
        self.sock.sendall(request)
        return self.line()

    def close(self) -> None:
        self.sock.close()


class Subscriber(threading.Thread):
    def __init__(self, path: Path) -> None:
        super().__init__(daemon=True)
        self.conn = Lines(path)
        assert self.conn.ask({"cmd": "subscribe_agent_status"}) == {
            "version": 1,
            "ok": True,
            "error": None,
        }
        self.latest: dict[str, dict[str, Any]] = {}
        self.pushes = 0
        self.errors: list[BaseException] = []
        self.lock = threading.Lock()

    def run(self) -> None:
        try:
            while True:
                push = self.conn.line()
                assert list(push) == ["version", "ok", "error", "agent_statuses"], push
                (row,) = push["agent_statuses"]
                assert tuple(row) == ROW_FIELDS, row
                with self.lock:
                    assert row != self.latest.get(row["name"]), "a push without a change"
                    self.latest[row["name"]] = row
                    self.pushes += 1
        except (EOFError, OSError):
            pass
        except BaseException as exc:
            self.errors.append(exc)


@pytest.fixture
def up() -> Iterator[HiveUp]:
    root = soak_dir("hostsoak")
    hive = HiveUp(root, config_text=None)
    try:
        hive.start()
        hive.wait(hive.all_serving, 120)
        yield hive
    finally:
        hive.stop()
        remove(root)


@pytest.mark.timeout(SECONDS + 600)
def test_host_sock_survives_minutes_of_churn_under_traffic(up: HiveUp) -> None:
    path = up.run_dir / "host.sock"
    assert up.proc is not None
    pid = up.proc.pid
    ctl = Lines(path)
    first = ctl.ask({"cmd": "agent_status"})
    assert [r["name"] for r in first["agent_statuses"]] == sorted(AGENTS)
    baseline = {r["name"]: r for r in first["agent_statuses"]}
    subscribers = [Subscriber(path) for _ in range(3)]
    for s in subscribers:
        s.start()
    time.sleep(2)
    fds0, rss0 = fds(pid), rss_mib(pid)

    rng = random.Random(16)
    stop_at = time.monotonic() + SECONDS
    counts: dict[str, int] = {}
    n = 0
    while time.monotonic() < stop_at:
        n += 1
        up.call(m.OperatorSend(to=rng.choice(["alice", "bob"]), body=f"@manager ping {n}"), m.Sent)
        action = rng.choice(
            ["restart", "stop-start", "pause-unpause", "poll", "churn", "garbage", "urls"]
        )
        counts[action] = counts.get(action, 0) + 1
        name = rng.choice(["alice", "bob"])
        scope = {"agent_names": [name]}
        if action == "restart":
            assert ctl.ask({"cmd": "restart", "name": name})["ok"]
        elif action == "stop-start":
            assert ctl.ask({"cmd": "stop", "scope": scope, "graceful": rng.random() < 0.5})["ok"]
            assert ctl.ask({"cmd": "start", "scope": scope})["ok"]
        elif action == "pause-unpause":
            assert ctl.ask({"cmd": "set_paused", "name": name, "paused": True})["ok"]
            assert ctl.ask({"cmd": "set_paused", "name": name, "paused": False})["ok"]
        elif action == "poll":
            assert len(ctl.ask({"cmd": "agent_status"})["agent_statuses"]) == len(AGENTS)
        elif action == "churn":
            extra = Lines(path)
            assert extra.ask({"cmd": "subscribe_agent_status"})["ok"]
            extra.close()
        elif action == "garbage":
            got = ctl.ask(rng.choice([b"{\n", b'{"cmd":"nope"}\n', b"x" * 70000 + b"\n"]))
            assert got["ok"] is False and got["code"] in ("bad_frame", "unknown_op", "too_large")
        else:
            assert ctl.ask({"cmd": "urls"})["urls"]["home"] == up.dashboard() + "/"
        time.sleep(rng.uniform(0.5, 3.0))

    # settle: everyone runs again and nothing changes for a while
    assert ctl.ask({"cmd": "start", "scope": {"agent_names": list(AGENTS)}})["ok"]
    up.wait(up.all_serving, 120)
    time.sleep(5)
    final = {r["name"]: r for r in ctl.ask({"cmd": "agent_status"})["agent_statuses"]}
    for s in subscribers:
        assert s.is_alive() and s.errors == [], s.errors
        with s.lock:
            for name in AGENTS:
                assert s.latest.get(name, baseline[name]) == final[name], name
    assert all(final[name]["running"] for name in AGENTS)
    assert up.crashes() == [], up.log()[-4000:]
    assert "Traceback" not in up.log()
    fds1, rss1 = fds(pid), rss_mib(pid)
    print(
        f"\nhost.sock soak: {SECONDS:.0f}s, {n} rounds {counts}, pushes per subscriber "
        f"{[s.pushes for s in subscribers]}, daemon fds {fds0}->{fds1}, RSS {rss0:.1f}->{rss1:.1f} MiB"
    )
    assert fds1 <= fds0 + 8
    assert rss1 <= rss0 * 1.25 + 5
    for s in subscribers:
        s.conn.close()
    ctl.close()
