"""Agents that run: harnesses in real bwrap sandboxes, driven by the scripted runtime."""

from __future__ import annotations

import os
import shutil
import signal
from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path

import pytest
import trio

from ag3nt.harness import wake_prompt
from c0re_priv.daemon import run_hive
from c0re_priv.hive import Hive
from protocol import messages as m
from protocol.client import HiveClient, HiveError
from tests.conftest import make_config, paths_in

pytestmark = pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap not installed")

ALICE_RULES = """
[[rule]]
from = "operator"
match = "^slow"
delay = 2.5
tool = "send"
args = { to = "bob", body = "alice finished: {body}" }

[[rule]]
from = "operator"
tool = "send"
args = { to = "bob", body = "alice relays: {body}" }

[[rule]]
kind = "system"
tool = "send"
args = { to = "operator", body = "alice woke for: {body}" }
"""
QUIET_RULES = "# no rules: every message is read and acked, nothing is sent\n"


def write_rules(root: Path) -> dict[str, dict[str, object]]:
    (root / "alice.toml").write_text(ALICE_RULES)
    (root / "quiet.toml").write_text(QUIET_RULES)
    for rules in ("alice.toml", "quiet.toml"):
        (root / rules).chmod(0o644)  # the agents read them, whatever the umask
    return {
        "boss": {"role": "manager", "rules": str(root / "quiet.toml")},
        "alice": {"rules": str(root / "alice.toml")},
        "bob": {"rules": str(root / "quiet.toml")},
    }


@pytest.fixture
async def live(nursery: trio.Nursery, short_tmp: Path) -> AsyncIterator[Hive]:
    config = make_config(
        autostart=True, max_restarts=1, stop_grace_seconds=5, agents=write_rules(short_tmp)
    )
    hive: Hive = await nursery.start(
        partial(run_hive, config, paths_in(short_tmp, config), handle_signals=False)
    )
    yield hive


async def wait_for(admin: HiveClient, predicate, timeout: float = 30.0) -> m.MessageRow:  # type: ignore[no-untyped-def]
    with trio.fail_after(timeout):
        while True:
            rows = (await admin.expect(m.ListMessages(limit=200), m.Messages)).messages
            for row in rows:
                if predicate(row):
                    return row
            await trio.sleep(0.1)


async def wait_connected(hive: Hive, *names: str, timeout: float = 30.0) -> None:
    with trio.fail_after(timeout):
        while any(hive.registry.agents[n].connections == 0 for n in names):
            await trio.sleep(0.05)


def test_wake_prompt_carries_the_message_and_the_queue_hint():
    msg = m.MessageRow(
        id=7,
        from_="bob",
        to="alice",
        body="hi",
        in_reply_to=3,
        thread=3,
        kind="message",
        state="leased",
        attempts=1,
        broadcast=True,
        hint="this was a broadcast and may not need any action from you",
        question_id=None,
        created_at=0.0,
        acked_at=None,
    )
    prompt = wake_prompt(msg, 3)
    assert "New message #7 from bob, in reply to #3:" in prompt
    assert "(this was a broadcast and may not need any action from you)" in prompt
    assert prompt.endswith("(+3 more queued; consider draining before acting)")
    assert "more queued" not in wake_prompt(msg, 0)


async def test_a_message_to_alice_drives_a_turn_in_her_sandbox_and_her_reply_reaches_bob(live):
    await wait_connected(live, "alice", "bob")
    async with HiveClient.connect(str(live.paths.admin_sock)) as admin:
        (mid,) = (
            await admin.expect(m.OperatorSend(to="alice", body="ship it"), m.Sent)
        ).message_ids
        relayed = await wait_for(admin, lambda r: r.from_ == "alice" and r.to == "bob")
        assert relayed.body == "alice relays: ship it"
        await wait_for(admin, lambda r: r.id == mid and r.state == "acked")
        await wait_for(admin, lambda r: r.id == relayed.id and r.state == "acked")  # bob's turn too
        stats = (await admin.expect(m.GetAgentStats(name="alice"), m.Stats)).stats
        assert stats.turns >= 1 and stats.tool_calls >= 1
        row = (await admin.expect(m.AgentStatus(name="alice"), m.AgentInfo)).agent
        assert (row.running, row.container, row.backend) == (True, "running", "bwrap")
    async with HiveClient.connect(str(live.paths.agent_sock("alice"))) as alice:
        logs = await alice.expect(m.GetLogs(lines=50), m.Logs)
        assert any("serving alice" in line for line in logs.lines)


async def test_kill_9_of_a_harness_mid_turn_delivers_the_message_again(live):
    await wait_connected(live, "alice")
    lifecycle = live.lifecycle
    async with HiveClient.connect(str(live.paths.admin_sock)) as admin:
        async with admin.stream(m.Subscribe(kinds=["message_leased"])) as events:
            await anext(events)
            (mid,) = (
                await admin.expect(m.OperatorSend(to="alice", body="slow job"), m.Sent)
            ).message_ids
            with trio.fail_after(20):
                leased = await anext(events)
            assert leased.event.message_id == mid  # type: ignore[attr-defined]
        # the harness is mid-turn (the rule "thinks" for 2.5 s): kill the whole sandbox
        await trio.sleep(0.5)
        pids = [int(p) for p in os.listdir("/proc") if p.isdigit()]
        killed = 0
        for pid in pids:
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"serve" in cmdline and str(live.paths.agent_sock("alice")).encode() in cmdline:
                os.kill(pid, signal.SIGKILL)
                killed += 1
        assert killed >= 1
        done = await wait_for(
            admin, lambda r: r.from_ == "alice" and r.body == "alice finished: slow job", 40
        )
        assert done.to == "bob"
        row = await wait_for(admin, lambda r: r.id == mid and r.state == "acked", 20)
        assert row.attempts >= 2
        assert lifecycle is not None and lifecycle.agents["alice"].restarts >= 1


async def test_rebuild_while_a_message_is_queued_still_drives_a_turn(live):
    """The seed's missed-wake bug: a message queued across a rebuild must wake the agent."""
    await wait_connected(live, "alice")
    async with HiveClient.connect(str(live.paths.admin_sock)) as admin:
        await admin.expect(m.SetPaused(name="alice", paused=True), m.AgentInfo)
        (mid,) = (
            await admin.expect(m.OperatorSend(to="alice", body="while you were out"), m.Sent)
        ).message_ids
        await admin.expect(m.SetPaused(name="alice", paused=False), m.AgentInfo)
        await admin.expect(m.Rebuild(name="alice"), m.AgentInfo)
        await wait_for(
            admin, lambda r: r.from_ == "alice" and r.body == "alice relays: while you were out"
        )
        await wait_for(admin, lambda r: r.id == mid and r.state == "acked")
        woke = await wait_for(admin, lambda r: r.from_ == "alice" and r.to == "operator")
        assert woke.body == "alice woke for: container rebuilt"


async def test_rebuild_all_brings_the_manager_up_before_anyone_else_and_reports_to_it(live):
    await wait_connected(live, "boss", "alice", "bob")
    async with HiveClient.connect(str(live.paths.admin_sock)) as admin:
        async with admin.stream(m.Subscribe(kinds=["agent_state_changed"])) as events:
            await anext(events)
            order: list[tuple[str, str]] = []

            async def collect() -> None:
                async for frame in events:
                    ev = frame.event  # type: ignore[attr-defined]
                    order.append((ev.name, ev.state))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(collect)
                await admin.expect(m.RebuildAll(), m.Agents)
                await trio.sleep(0.5)
                nursery.cancel_scope.cancel()
        boss_up = order.index(("boss", "connected"))
        for other in ("alice", "bob"):
            assert order.index((other, "starting")) > boss_up, order
        report = await wait_for(
            admin, lambda r: r.to == "boss" and r.body.startswith("rebuild_all finished")
        )
        assert "alice" in report.body and "bob" in report.body and "failed" not in report.body


async def test_a_container_that_keeps_crashing_is_marked_failed_and_the_manager_is_told(live):
    async with (
        HiveClient.connect(str(live.paths.admin_sock)) as admin,
        HiveClient.connect(str(live.paths.agent_sock("boss"))) as boss,
    ):
        await admin.expect(m.AddAgent(name="crashy"), m.AgentInfo)
        # an approved config whose harness cannot even start: Python without its home (a
        # runtime the harness does not know is refused before it gets this far)
        text = (await boss.expect(m.ReadAgentConfig(agent="crashy"), m.AgentConfigText)).text
        broken = "\n".join(
            'env = { PYTHONHOME = "/nonexistent" }' if line.startswith("env = ") else line
            for line in text.splitlines()
        )
        proposed = await boss.expect(m.ProposeConfig(agent="crashy", agent_toml=broken), m.Proposed)
        asked = await boss.expect(
            m.RequestApplyCommit(agent="crashy", sha=proposed.sha), m.ApprovalInfo
        )
        done = await admin.expect(m.Approve(id=asked.approval.id), m.ApprovalInfo)
        assert done.approval.status == "approved", done.approval.outcome
        await admin.expect(m.Start(name="crashy"), m.AgentInfo)
        crash = await wait_for(
            admin, lambda r: r.to == "boss" and r.body.startswith("container_crash: crashy"), 40
        )
        assert "No module named 'encodings'" in crash.body
        row = (await admin.expect(m.AgentStatus(name="crashy"), m.AgentInfo)).agent
        assert row.failed and row.container == "failed"


async def test_operator_controls_reach_the_harness_and_come_back_as_notes(live):
    await wait_connected(live, "alice")
    async with HiveClient.connect(str(live.paths.admin_sock)) as admin:
        async with admin.stream(m.Subscribe(kinds=["note"])) as notes:
            await anext(notes)
            await admin.expect(m.SetModel(name="alice", model="opus-test"), m.Ok)
            with trio.fail_after(10):
                note = (await anext(notes)).event  # type: ignore[attr-defined]
            assert note.agent == "alice" and note.text.startswith("set_model done")
            await admin.expect(m.CancelTurn(name="alice"), m.Ok)
            with trio.fail_after(10):
                note = (await anext(notes)).event  # type: ignore[attr-defined]
            assert note.text == "cancel failed: no turn is running"
        with trio.fail_after(10):
            while (
                await admin.expect(m.AgentStatus(name="alice"), m.AgentInfo)
            ).agent.active_model != "opus-test":
                await trio.sleep(0.05)
        await admin.expect(m.Stop(name="alice"), m.AgentInfo)
        with pytest.raises(HiveError) as err:
            await admin.call(m.Compact(name="alice"))
        assert err.value.code == "unavailable"


async def test_a_turn_longer_than_the_lease_keeps_its_message_by_renewing_it(nursery, short_tmp):
    # the "slow" rule thinks for 2.5 s; leases last 1 s: only renewals keep the message
    config = make_config(autostart=True, lease_seconds=1.0, agents=write_rules(short_tmp))
    hive: Hive = await nursery.start(
        partial(run_hive, config, paths_in(short_tmp, config), handle_signals=False)
    )
    await wait_connected(hive, "alice")
    async with HiveClient.connect(str(hive.paths.admin_sock)) as admin:
        (mid,) = (
            await admin.expect(m.OperatorSend(to="alice", body="slow and steady"), m.Sent)
        ).message_ids
        await wait_for(admin, lambda r: r.id == mid and r.state == "acked")
        rows = (await admin.expect(m.ListMessages(limit=200), m.Messages)).messages
        (original,) = [r for r in rows if r.id == mid]
        assert original.attempts == 1
        done = [
            r for r in rows if r.from_ == "alice" and r.body == "alice finished: slow and steady"
        ]
        assert len(done) == 1
