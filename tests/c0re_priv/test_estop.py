"""The emergency stop with agents mid-turn: a daemon subprocess, real bwrap sandboxes, scripted
agents whose turns last (a rule with `delay`), and the operator's `hive ctl`.

`hive ctl estop` cancels every running turn but the manager's, gives the messages back to the
queue without counting a failure, and parks the harnesses (their containers keep running,
they get no work) until `hive ctl thaw`, across a daemon restart; a harness that does not
park in time (here: frozen with SIGSTOP) has its container stopped, and the thaw starts it
again. Agents paused before the stop stay paused after it.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import msgspec
import pytest

from protocol import messages as m
from protocol.client import SyncClient
from tests.conftest import DaemonProcess

pytestmark = pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap not installed")

WORKERS = ("ann", "ben", "cat")
SLOW = 8.0
RULES = f"""
[[rule]]
match = '^slow'
tool = "set_status"
args = {{ text = "finished: {{body}}" }}
delay = {SLOW}

[[rule]]
tool = "set_status"
args = {{ text = "handled: {{body}}" }}
"""


def ctl(daemon: DaemonProcess, *args: str) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "c0re_priv", "ctl", *args, "--run-dir", str(daemon.paths.run_dir)],
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert out.returncode == 0, (args, out.stdout, out.stderr)
    return out.stdout


def call(daemon: DaemonProcess, req: m.Request, reply: type[Any]) -> Any:
    with SyncClient.connect(str(daemon.paths.admin_sock), timeout=60) as c:
        return c.expect(req, reply)


def rows(daemon: DaemonProcess) -> dict[str, m.AgentRow]:
    return {a.name: a for a in call(daemon, m.ListAgents(), m.Agents).agents}


def messages(daemon: DaemonProcess) -> dict[int, m.MessageRow]:
    got = call(daemon, m.ListMessages(limit=500), m.Messages).messages
    return {r.id: r for r in got}


def send(daemon: DaemonProcess, to: str, body: str) -> int:
    (mid,) = call(daemon, m.OperatorSend(to=to, body=body), m.Sent).message_ids
    return int(mid)


def wait_until(check, what: str, daemon: DaemonProcess, timeout: float = 90):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not (got := check()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}:\n{daemon.log()[-3000:]}")
        time.sleep(0.1)
    return got


def serving(daemon: DaemonProcess, names: tuple[str, ...]) -> bool:
    r = rows(daemon)
    return all(r[n].container == "running" and r[n].harness_state == "idle" for n in names)


def mid_turn(daemon: DaemonProcess, names: tuple[str, ...]) -> bool:
    r = rows(daemon)
    return all(r[n].harness_state == "turn" and r[n].leased == 1 for n in names)


def harness_pid(daemon: DaemonProcess, name: str) -> int:
    """The harness process of `name`'s sandbox, as the host sees it."""
    sock = str(daemon.paths.agent_sock(name)).encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        python = Path(os.fsdecode(argv[0])).name.startswith("python")  # not bwrap, setpriv
        if python and b"ag3nt" in argv and b"serve" in argv and sock in argv:
            return int(entry.name)
    raise AssertionError(f"no harness process for {name}")


@pytest.fixture
def hive(short_tmp: Path) -> DaemonProcess:
    short_tmp.chmod(0o755)  # the agents' uids read their rules file
    rules = short_tmp / "rules.toml"
    rules.write_text(RULES)
    rules.chmod(0o644)
    agents = "".join(f'[agents.{n}]\nrules = "{rules}"\n\n' for n in (*WORKERS, "dan"))
    config = short_tmp / "hive.toml"
    config.write_text(
        "[hive]\nstop_grace_seconds = 2\nestop_grace_seconds = 3\nquestion_stale_seconds = 0\n\n"
        f'[agents.boss]\nrole = "manager"\nrules = "{rules}"\n\n{agents}'
    )
    return DaemonProcess(short_tmp, config)


def test_estop_and_thaw_with_agents_mid_turn(hive: DaemonProcess) -> None:
    d = hive
    d.start()
    try:
        wait_until(lambda: serving(d, ("boss", *WORKERS, "dan")), "every harness", d)
        ctl(d, "pause", "dan")  # paused before the stop: must stay paused after the thaw
        slow = {n: send(d, n, f"slow job for {n}") for n in WORKERS}
        wait_until(lambda: mid_turn(d, WORKERS), "three turns under way", d)

        # ---- the stop: every running turn cancelled, no failure counted, all parked
        stopped = msgspec.json.decode(
            ctl(d, "estop", "--reason", "runaway spend", "--json"), type=m.EstopRow
        )
        assert stopped.engaged and stopped.reason == "runaway spend"
        assert stopped.parked == sorted([*WORKERS, "dan"])  # every agent but the manager
        assert stopped.cancelled == sorted(WORKERS)
        assert stopped.stopped == [] and stopped.park_seconds is not None
        assert stopped.park_seconds < 3  # each harness confirmed within the grace
        now = messages(d)
        assert {(now[i].state, now[i].failures) for i in slow.values()} == {("queued", 0)}
        r = rows(d)
        for n in WORKERS:
            assert r[n].container == "running" and r[n].running  # parked, not stopped
            assert r[n].harness_state == "idle" and r[n].held == "emergency stop"
            assert not r[n].status_text.startswith("finished")  # the turn never finished
        assert r["boss"].held == ""

        # parked: new work waits; the manager goes on working
        extra = send(d, "ann", "quick one")
        for_boss = send(d, "boss", "coordinate the stop")
        wait_until(lambda: messages(d)[for_boss].state == "acked", "the manager's turn", d)
        time.sleep(SLOW + 1)  # long enough for any turn that had not really stopped
        now = messages(d)
        assert {now[i].state for i in (*slow.values(), extra)} == {"queued"}
        assert not any(rows(d)[n].status_text.startswith("finished") for n in WORKERS)
        inbox = ctl(d, "inbox")
        assert inbox.splitlines()[0].split(None, 2)[-1].startswith("estop")
        assert "EMERGENCY STOP" in inbox and "hive ctl thaw" in inbox

        # ---- the stop survives a daemon restart: harnesses come back parked
        assert d.stop() == 0
        d.start()
        wait_until(lambda: serving(d, ("boss", *WORKERS)), "the harnesses after the restart", d)
        time.sleep(2)
        now = messages(d)
        assert {now[i].state for i in (*slow.values(), extra)} == {"queued"}
        assert rows(d)["ann"].held == "emergency stop"

        # ---- thaw: exactly what the stop held works again; dan stays paused
        thawed = msgspec.json.decode(ctl(d, "thaw", "--json"), type=m.EstopRow)
        assert not thawed.engaged and thawed.resumed == sorted(WORKERS)
        wait_until(lambda: mid_turn(d, WORKERS), "the slow jobs to start again", d)
        assert rows(d)["dan"].paused and rows(d)["dan"].container == "stopped"

        # ---- a harness that does not park in time has its container stopped
        frozen = harness_pid(d, "ben")
        os.kill(frozen, signal.SIGSTOP)
        again = msgspec.json.decode(ctl(d, "estop", "--json"), type=m.EstopRow)
        assert again.cancelled == sorted(WORKERS) and again.stopped == ["ben"]
        assert not Path(f"/proc/{frozen}").exists() or _zombie(frozen)
        r = rows(d)
        assert r["ben"].container == "stopped" and r["ann"].container == "running"
        now = messages(d)
        assert {(now[i].state, now[i].failures) for i in slow.values()} == {("queued", 0)}

        thawed = msgspec.json.decode(ctl(d, "thaw", "--json"), type=m.EstopRow)
        assert thawed.stopped == ["ben"] and thawed.resumed == sorted(WORKERS)
        wait_until(
            lambda: all(messages(d)[i].state == "acked" for i in (*slow.values(), extra)),
            "every held message to be handled after the thaw",
            d,
            timeout=120,
        )
        r = rows(d)
        assert all(r[n].status_text.startswith(("finished", "handled")) for n in WORKERS)
        assert all(r[n].restarts == 0 for n in WORKERS)  # stopped and started, never crashed
        assert {messages(d)[i].failures for i in slow.values()} == {0}
    finally:
        if d.proc is not None and d.proc.poll() is None:
            d.stop()


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True
