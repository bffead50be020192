"""Poison messages stop: a message whose turn keeps failing backs off while the messages
behind it flow on, becomes `dead` after `max_attempts`, the operator is told, and `hive ctl`
retries or drops it. A real daemon, a real bwrap sandbox, the scripted runtime."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import msgspec
import pytest

from protocol import messages as m
from protocol.client import SyncClient
from tests.conftest import DaemonProcess

pytestmark = pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap not installed")

RULES = """
[[rule]]
match = '^poison'
tool = "send"
args = { to = "nobody", body = "this fails: there is no such agent" }

[[rule]]
tool = "set_status"
args = { text = "handled: {body}" }
"""


def ctl(daemon: DaemonProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "c0re_priv", "ctl", *args, "--run-dir", str(daemon.paths.run_dir)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def messages(daemon: DaemonProcess) -> dict[int, m.MessageRow]:
    with SyncClient.connect(str(daemon.paths.admin_sock), timeout=10) as c:
        rows = c.expect(m.ListMessages(limit=1000), m.Messages).messages
    return {r.id: r for r in rows}


def wait_until(check, timeout: float = 60.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


@pytest.fixture
def poisoned(short_tmp: Path) -> DaemonProcess:
    short_tmp.chmod(0o755)  # the agent's uid reads its rules file
    rules = short_tmp / "rules.toml"
    rules.write_text(RULES)
    rules.chmod(0o644)
    config = short_tmp / "hive.toml"
    config.write_text(
        "[hive]\nmax_attempts = 2\nretry_backoff_seconds = 3\nstop_grace_seconds = 2\n\n"
        f'[agents.alice]\nrules = "{rules}"\n'
    )
    return DaemonProcess(short_tmp, config)


def test_a_poison_message_dies_while_the_next_flows_and_the_operator_retries_or_drops_it(
    poisoned: DaemonProcess,
) -> None:
    d = poisoned
    d.start()
    try:
        assert ctl(d, "send", "alice", "poison pill").returncode == 0
        poison = max(r.id for r in messages(d).values() if r.body == "poison pill")
        assert ctl(d, "send", "alice", "after the poison").returncode == 0
        fine = max(r.id for r in messages(d).values() if r.body == "after the poison")

        # the message behind flows while the poison waits out its backoff
        wait_until(lambda: messages(d)[fine].state == "acked")
        assert messages(d)[poison].state != "acked"

        wait_until(lambda: messages(d)[poison].state == "dead")
        dead = messages(d)[poison]
        assert dead.failures == 2
        assert dead.last_error is not None and "nobody" in dead.last_error

        listed = ctl(d, "messages", "--state", "dead", "--json")
        assert listed.returncode == 0, listed.stderr
        assert [r["id"] for r in msgspec.json.decode(listed.stdout)] == [poison]
        told = [
            r
            for r in messages(d).values()
            if r.to == "operator" and r.from_ == "system" and f"message #{poison} " in r.body
        ]
        assert told and "retry-message" in told[0].body

        # the harness is idle and stays so: a dead message is never offered on its own
        time.sleep(4)
        assert messages(d)[poison].state == "dead"

        again = ctl(d, "retry-message", str(poison))
        assert again.returncode == 0 and "queued again" in again.stdout, again.stderr
        wait_until(lambda: messages(d)[poison].state == "dead")
        assert ctl(d, "retry-message", str(fine)).returncode == 1  # not dead: a clear refusal

        dropped = ctl(d, "drop-message", str(poison))
        assert dropped.returncode == 0, dropped.stderr
        assert messages(d)[poison].state == "dropped"
        assert ctl(d, "messages", "--state", "bogus").returncode != 0

        agents = msgspec.json.decode(ctl(d, "agents", "--json").stdout)
        assert [a["restarts"] for a in agents if a["name"] == "alice"] == [0]
    finally:
        d.stop()
