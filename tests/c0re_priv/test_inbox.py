"""The operator's inbox: every kind of thing that waits on the operator, newest first, each
with its action, from one real daemon (agents here are protocol clients on their own
sockets; one agent's harness cannot even be executed, so it really fails), and the same
list from `hive ctl inbox`."""

from __future__ import annotations

import sys
from functools import partial

import msgspec
import trio

from c0re_priv import lifecycle
from c0re_priv.config import BudgetSettings
from c0re_priv.containers.process import ProcessBackend
from c0re_priv.daemon import run_hive
from protocol import messages as m
from protocol.client import HiveClient
from protocol.messages import BudgetLimits
from tests.conftest import make_config, paths_in


async def test_everything_that_waits_on_the_operator_newest_first(short_tmp, nursery, monkeypatch):
    missing = short_tmp / "no-such-interpreter"
    monkeypatch.setattr(lifecycle, "harness_command", lambda *a: [str(missing), "serve"])
    config = make_config(
        max_restarts=0,
        max_attempts=1,
        question_stale_seconds=0,
        agents={"boss": {"role": "manager"}, "alice": {}, "bob": {}, "carol": {}},
    )
    config.budget = BudgetSettings(each_agent=BudgetLimits(cost_per_day_usd=1.0))
    paths = paths_in(short_tmp, config)
    hive = await nursery.start(
        partial(run_hive, config, paths, handle_signals=False, backend=ProcessBackend())
    )
    async with (
        HiveClient.connect(str(paths.admin_sock)) as admin,
        HiveClient.connect(str(paths.agent_sock("alice"))) as alice,
        HiveClient.connect(str(paths.agent_sock("bob"))) as bob,
        HiveClient.connect(str(paths.agent_sock("boss"))) as boss,
    ):
        assert (await admin.expect(m.GetInbox(), m.Inbox)).items == []

        # a failed agent
        await admin.expect(m.Start(name="carol"), m.AgentInfo)
        with trio.fail_after(30):
            while not (await admin.expect(m.AgentStatus(name="carol"), m.AgentInfo)).agent.failed:
                await trio.sleep(0.05)
        # a dead message
        await admin.expect(m.OperatorSend(to="bob", body="poison"), m.Sent)
        (d,) = (await bob.expect(m.Recv(max=1), m.Deliveries)).items
        await bob.expect(m.Nack(lease=d.lease, reason="it broke"), m.Ok)
        # an approval
        spawn = await boss.expect(
            m.RequestSpawn(name="dora", role_description="docs"), m.ApprovalInfo
        )
        # a budget warning, then an agent held by its budget
        await bob.expect(m.ReportTurn(turn=m.TurnStats(ok=True, cost_usd=0.9)), m.Ok)
        await alice.expect(m.ReportTurn(turn=m.TurnStats(ok=True, cost_usd=1.2)), m.Ok)
        # a question for the operator
        asked = await alice.expect(
            m.Ask(target="operator", question="ship it?", options=["yes", "no"]), m.Asked
        )
        # the emergency stop
        await admin.expect(m.EmergencyStop(reason="drill"), m.EstopInfo)

        inbox = await admin.expect(m.GetInbox(), m.Inbox)
        kinds = [i.kind for i in inbox.items]
        assert kinds[0] == "estop" and inbox.estop.engaged
        assert sorted(kinds) == sorted(
            [
                "estop",
                "question",
                "approval",
                "dead_message",
                "failed_agent",
                "budget",  # bob's warning
                "budget",  # alice's limit
                "held_agent",
            ]
        )
        rest = inbox.items[1:]
        assert [i.at for i in rest] == sorted((i.at for i in rest), reverse=True)
        by_key = {i.key: i for i in inbox.items}
        q = by_key[f"question:{asked.question_id}"]
        assert q.actions == ["answer"] and q.detail == "yes | no" and q.question is not None
        assert by_key[f"approval:{spawn.approval.id}"].actions == ["approve", "deny"]
        dead = next(i for i in rest if i.kind == "dead_message")
        assert dead.actions == ["retry", "drop"] and "it broke" in dead.detail
        failed = by_key["failed_agent:carol"]
        assert failed.actions == ["start"] and failed.command == "hive ctl start carol"
        held = by_key["held_agent:alice"]
        assert held.actions == ["resume", "raise_limit"] and "alice reached" in held.detail
        warn = next(i for i in rest if i.kind == "budget" and i.agent == "bob")
        assert warn.actions == ["raise_limit", "dismiss"]
        assert warn.command.startswith("hive ctl budget set cost_per_day_usd VALUE --agent bob")
        assert by_key["estop:"].actions == ["thaw"] and "drill" in by_key["estop:"].title

        limited = await admin.expect(m.GetInbox(limit=3), m.Inbox)
        assert len(limited.items) == 3 and limited.total == len(inbox.items)

        # the same from the terminal
        run_dir = str(paths.run_dir)
        got = await trio.run_process(
            [sys.executable, "-m", "c0re_priv", "ctl", "inbox", "--run-dir", run_dir],
            capture_stdout=True,
        )
        text = got.stdout.decode()
        assert text.splitlines()[0].split()[2] == "estop"
        for command in ("hive ctl thaw", "hive ctl start carol", "hive ctl resume alice"):
            assert command in text
        got = await trio.run_process(
            [sys.executable, "-m", "c0re_priv", "ctl", "inbox", "--json", "--run-dir", run_dir],
            capture_stdout=True,
        )
        assert msgspec.json.decode(got.stdout, type=m.Inbox).total == inbox.total

        # acting on them empties it
        await admin.expect(m.Thaw(), m.EstopInfo)
        await admin.expect(m.AnswerQuestion(question_id=asked.question_id, answer="yes"), m.Ok)
        await admin.expect(m.Deny(id=spawn.approval.id), m.ApprovalInfo)
        await admin.expect(m.DropMessage(id=dead.ref or 0), m.Ok)
        await admin.expect(m.DismissBudgetAlert(id=warn.ref or 0), m.Ok)
        await admin.expect(
            m.SetBudget(scope="each_agent", limits={"cost_per_day_usd": 10.0}), m.Budget
        )
        left = (await admin.expect(m.GetInbox(), m.Inbox)).items
        assert [i.key for i in left] == ["failed_agent:carol"]
    assert hive.holds.budget == {}
