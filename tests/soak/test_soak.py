"""A hive that stays up: `hive up` on its default configuration, run as an operator runs it.

Two hives side by side on this host, as two operators would run them: one left idle for
90 s (zero restarts, zero crash events, every agent still serving), the other driven for
60 s by the operator and by the scripted agents messaging each other (every message acked
in the end, nothing restarted). They run at once, so the suite waits 90 s, not 150 s. Last,
the idle hive's dashboard process is killed (`hive up` starts it again) and the hive is
stopped as a terminal's Ctrl-C stops it, with SIGINT to its whole process group. The long
version is `bench/soak.py`.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from protocol import messages as m

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from hive_up import HiveUp, remove, soak_dir  # bench/ is not a package

pytestmark = pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap not installed")

IDLE_SECONDS = 90.0
TRAFFIC_SECONDS = 60.0


class Hives:
    def __init__(self) -> None:
        self.idle = HiveUp(soak_dir("soak-idle"))
        self.busy = HiveUp(soak_dir("soak-busy"))
        self.idle_since = 0.0


@pytest.fixture(scope="module")
def hives() -> Iterator[Hives]:
    both = Hives()
    try:
        both.idle.start()
        both.busy.start()
        both.idle.wait(both.idle.all_serving, 90)
        both.idle_since = time.monotonic()
        both.busy.wait(both.busy.all_serving, 90)
        yield both
    finally:
        for up in (both.idle, both.busy):
            up.stop()
            remove(up.root)


def assert_steady(up: HiveUp) -> None:
    assert up.crashes() == [], up.log()[-4000:]
    rows = up.agents()
    assert [r.name for r in rows if r.restarts or r.failed or r.container != "running"] == []
    assert all(r.running for r in rows), "an agent's harness is not connected"
    assert up.proc is not None and up.proc.poll() is None
    assert up.web_answers(), "the dashboard stopped answering"
    assert up.follower_error == []


@pytest.mark.timeout(600)
def test_traffic_for_a_minute_is_all_acked_and_nothing_restarts(hives: Hives) -> None:
    hive = hives.busy
    sent = 0
    started = time.monotonic()
    n = 0
    while time.monotonic() - started < TRAFFIC_SECONDS:
        n += 1
        # alice relays to bob and bob answers her (and the reverse): agents talking to agents
        to, body = [
            ("alice", f"@bob ping {n}"),
            ("bob", f"@alice ping {n}"),
            ("manager", f"status {n}?"),
            ("alice", f"direct {n}"),
        ][n % 4]
        if n % 20 == 0:
            to, body = "*", f"broadcast {n}"
        hive.call(m.OperatorSend(to=to, body=body), m.Sent)
        sent += 1
        time.sleep(0.5)

    def drained() -> bool:
        return all(r.state == "acked" for r in hive.messages())

    hive.wait(drained, 240)
    rows = hive.messages()
    between_agents = [r for r in rows if r.from_ in ("alice", "bob") and r.to in ("alice", "bob")]
    assert sent >= 100 and len(between_agents) >= sent // 4
    assert {r.state for r in rows} == {"acked"}
    assert not [e for e in hive.events if isinstance(e, m.MessageDead)]
    assert_steady(hive)


@pytest.mark.timeout(300)
def test_the_default_hive_stays_up_idle(hives: Hives) -> None:
    """Runs after the traffic test: by then most of its 90 s have passed."""
    hive = hives.idle
    names = {r.name for r in hive.agents()}
    assert names == {"manager", "alice", "bob"}
    time.sleep(max(0.0, hives.idle_since + IDLE_SECONDS - time.monotonic()))
    assert time.monotonic() - hives.idle_since >= IDLE_SECONDS
    assert_steady(hive)
    assert "crashed" not in hive.log() and "FAILED" not in hive.log()
    assert hive.messages() == [], "the idle hive was sent something"


@pytest.mark.timeout(180)
def test_a_dashboard_that_dies_comes_back_and_ctrl_c_stops_all_quietly(hives: Hives) -> None:
    """Runs last, on the idle hive: its web process is killed and started again (with a new
    login link); then Ctrl-C as a terminal sends it, SIGINT to the whole process group, web
    process included, stops everything with no error said."""
    hive = hives.idle
    assert hive.proc is not None
    killed = hive.web_pid()
    assert killed is not None
    links = hive.log().count("login link")
    os.kill(killed, signal.SIGKILL)
    hive.wait(lambda: hive.log().count("login link") > links and hive.web_answers(), 60)
    assert hive.web_pid() not in (None, killed)
    assert "the dashboard process exited with -9; starting it again" in hive.log()
    stopped_at = len(hive.log())
    os.killpg(hive.proc.pid, signal.SIGINT)
    assert hive.proc.wait(90) == 0
    after = hive.log()[stopped_at:]
    assert "shutting down" in after and "hyperhive stopped" in after
    assert " ERROR " not in after and "Traceback" not in after, after
