"""Budgets crossed by what turns report, end to end: a daemon subprocess, real bwrap sandboxes,
and `hive ctl`.

Scripted agents report the usage their rules say (`usage = {…}`), so the figures are exact:
a warning at 80 % of an agent's daily cost, a pause at its limit with the reason and a
message to the operator, the operator raising the limit, the hive-wide token limit pausing
every agent but the manager, a resume past it, and all of it across a daemon restart. A
`claude` agent then crosses its limit with the cost the real Claude Code CLI computed for a
turn against the stand-in Messages API.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import msgspec
import pytest

from protocol import messages as m
from protocol.client import SyncClient
from tests.claude_code import claude_bin
from tests.conftest import DaemonProcess
from tests.stand_ins.messages_api import API_KEY, OFFLINE_ENV, MessagesAPI

pytestmark = pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap not installed")

RULES = """
[[rule]]
match = '^work'
tool = "set_status"
args = { text = "did: {body}" }
usage = { input_tokens = 3000, output_tokens = 1000, cost_usd = 0.45 }

[[rule]]
tool = "set_status"
args = { text = "saw: {body}" }
"""


def ctl(daemon: DaemonProcess, *args: str) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "c0re_priv", "ctl", *args, "--run-dir", str(daemon.paths.run_dir)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, (args, out.stdout, out.stderr)
    return out.stdout


def call(daemon: DaemonProcess, req: m.Request, reply: type[Any]) -> Any:
    with SyncClient.connect(str(daemon.paths.admin_sock), timeout=30) as c:
        return c.expect(req, reply)


def rows(daemon: DaemonProcess) -> dict[str, m.AgentRow]:
    return {a.name: a for a in call(daemon, m.ListAgents(), m.Agents).agents}


def state(daemon: DaemonProcess, mid: int) -> str:
    got = call(daemon, m.ListMessages(limit=500), m.Messages).messages
    return next(r.state for r in got if r.id == mid)


def send(daemon: DaemonProcess, to: str, body: str) -> int:
    (mid,) = call(daemon, m.OperatorSend(to=to, body=body), m.Sent).message_ids
    return int(mid)


def told(daemon: DaemonProcess) -> list[str]:
    got = call(daemon, m.ListMessages(agent="operator", limit=500), m.Messages).messages
    return [r.body for r in sorted(got, key=lambda r: r.id) if r.from_ == "system"]


def wait_until(check, what: str, daemon: DaemonProcess, timeout: float = 90):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not (got := check()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}:\n{daemon.log()[-3000:]}")
        time.sleep(0.1)
    return got


def work(daemon: DaemonProcess, to: str, body: str) -> int:
    mid = send(daemon, to, body)
    wait_until(lambda: state(daemon, mid) == "acked", f"{to} to do {body!r}", daemon)
    return mid


def budget(daemon: DaemonProcess) -> m.Budget:
    return msgspec.json.decode(ctl(daemon, "budget", "--json"), type=m.Budget)


@pytest.fixture
def hive(short_tmp: Path) -> DaemonProcess:
    short_tmp.chmod(0o755)  # the agents' uids read their rules file
    rules = short_tmp / "rules.toml"
    rules.write_text(RULES)
    rules.chmod(0o644)
    config = short_tmp / "hive.toml"
    config.write_text(
        "[hive]\nstop_grace_seconds = 2\nquestion_stale_seconds = 0\n\n"
        "[budget.hive]\ntokens_total = 20000\n\n"
        "[budget.each_agent]\ncost_per_day_usd = 1.0\n\n"
        f'[agents.boss]\nrole = "manager"\nrules = "{rules}"\n\n'
        f'[agents.alice]\nrules = "{rules}"\n\n[agents.bob]\nrules = "{rules}"\n'
    )
    return DaemonProcess(short_tmp, config)


def test_a_budget_crossed_by_reported_cost_pauses_and_the_operator_decides(
    hive: DaemonProcess,
) -> None:
    d = hive
    d.start()
    try:
        wait_until(
            lambda: all(r.harness_state == "idle" for r in rows(d).values()), "the harnesses", d
        )
        work(d, "alice", "work 1")  # $0.45 of $1.00
        assert rows(d)["alice"].cost_today_usd == pytest.approx(0.45)
        assert not [t for t in told(d) if t.startswith("budget")]
        work(d, "alice", "work 2")  # $0.90: past the 80 % warning line
        (warning,) = [t for t in told(d) if t.startswith("budget")]
        assert "alice has used 90% of its limit" in warning
        assert [(a.agent, a.level) for a in budget(d).alerts] == [("alice", "warn")]

        work(d, "alice", "work 3")  # $1.35: over; alice is paused, with the reason
        alice = rows(d)["alice"]
        assert "alice reached its limit of $1.00 (cost in the last 24 hours)" in alice.held
        assert alice.container == "running" and alice.budget_used == pytest.approx(1.35)
        assert any("alice reached its limit" in t and "resume alice" in t for t in told(d))
        waiting = send(d, "alice", "work 4")
        time.sleep(3)
        assert state(d, waiting) == "queued"
        stats = ctl(d, "stats")
        line = next(x for x in stats.splitlines() if x.startswith("alice"))
        assert "$1.35 / $1.00" in line and "over (paused)" in line
        inbox = ctl(d, "inbox")
        assert "alice is paused by its budget" in inbox and "hive ctl resume alice" in inbox

        # the operator raises her limit: she works on at once
        ctl(d, "budget", "set", "cost_per_day_usd", "2", "--agent", "alice")
        wait_until(lambda: state(d, waiting) == "acked", "alice's held message", d)
        assert rows(d)["alice"].held == ""
        # 4 turns of alice: 16,000 tokens of the hive's 20,000 (80 %: a hive warning)
        assert any("the hive has used 80% of its limit" in t for t in told(d))

        # the hive's token limit: every agent but the manager stops
        work(d, "bob", "work for bob")  # 20,000 tokens
        r = rows(d)
        assert "the hive reached its limit of 20,000 tokens" in r["bob"].held
        assert "the hive reached" in r["alice"].held and r["boss"].held == ""
        assert any("Every agent but the managers is paused" in t for t in told(d))
        work(d, "boss", "the manager works on")  # no need to wait: it is not held
        held_for_bob = send(d, "bob", "work while held")

        # held across a restart
        assert d.stop() == 0
        d.start()
        wait_until(
            lambda: all(r.harness_state == "idle" for r in rows(d).values()), "the restart", d
        )
        time.sleep(2)
        assert state(d, held_for_bob) == "queued"
        assert "the hive reached" in rows(d)["bob"].held
        limits = {(r.scope, r.agent, r.key): (r.value, r.source) for r in budget(d).limits}
        assert limits[("agent", "alice", "cost_per_day_usd")] == (2.0, "operator")
        assert limits[("hive", None, "tokens_total")] == (20000, "hive.toml")

        # resuming bob lets him past the hive limit; alice stays held
        ctl(d, "resume", "bob")
        wait_until(lambda: state(d, held_for_bob) == "acked", "bob after his resume", d)
        assert rows(d)["bob"].held == "" and "the hive reached" in rows(d)["alice"].held
        # still over the hive's limit, which he was resumed past; but this turn takes him
        # over his own daily $1.00, a limit he was not resumed past: paused again, for it
        work(d, "bob", "work once more")
        r = rows(d)
        assert r["bob"].held == "budget: bob reached its limit of $1.00 (cost in the last 24 hours)"
        usage = {u.agent: u for u in budget(d).usage}
        assert (
            usage[None].tokens_total == 28000
        )  # alice 4 turns, bob 3 and usage[None].state == "over"
        assert usage["bob"].cost_day_usd == pytest.approx(1.35) and usage["bob"].state == "over"
    finally:
        if d.proc is not None and d.proc.poll() is None:
            d.stop()


def test_a_claude_agent_is_paused_by_the_cost_its_cli_reported(short_tmp: Path) -> None:
    with MessagesAPI(api_keys=[API_KEY]) as api:
        env = {**OFFLINE_ENV, "ANTHROPIC_API_KEY": API_KEY}
        config = short_tmp / "hive.toml"
        config.write_text(
            "\n".join(
                [
                    "[hive]",
                    "stop_grace_seconds = 5",
                    "question_stale_seconds = 0",
                    "claude_pass_env = []",
                    f'claude_base_url = "{api.base_url}"',
                    f'claude_bin = "{claude_bin()}"',
                    "",
                    "[hive.claude_env]",
                    *(f'{k} = "{v}"' for k, v in env.items()),
                    "",
                    "[budget.agents.carl]",
                    "cost_total_usd = 0.001",
                    "",
                    "[agents.carl]",
                    'runtime = "claude"',
                    'model = "claude-sonnet-4-5"',
                    "",
                ]
            )
        )
        d = DaemonProcess(short_tmp, config)
        d.start()
        try:
            wait_until(lambda: rows(d)["carl"].harness_state == "idle", "carl's harness", d)
            work(d, "carl", "ping 1")  # one turn: the CLI prices its 1,200 + 40 tokens
            carl = rows(d)["carl"]
            assert carl.cost_total_usd > 0.001 and carl.tokens_total > 0
            assert "carl reached its limit of $0.00 (cost in total)" in carl.held
            stats = msgspec.json.decode(ctl(d, "stats", "carl", "--json"), type=m.StatsRow)
            assert stats.cost_usd == pytest.approx(carl.cost_total_usd)
            before = len(api.messages_requests())
            waiting = send(d, "carl", "ping 2")
            time.sleep(3)
            assert state(d, waiting) == "queued" and len(api.messages_requests()) == before
            ctl(d, "budget", "set", "cost_total_usd", "none", "--agent", "carl")
            wait_until(lambda: state(d, waiting) == "acked", "carl after the limit is lifted", d)
            assert len(api.messages_requests()) > before
        finally:
            d.stop(timeout=30)
