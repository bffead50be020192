"""The rules of the operator's controls, against a real daemon in this trio run: agents here
are protocol clients on their own sockets (as a harness is), so each rule is checked exactly;
the end-to-end tests with sandboxes are in test_estop.py, test_budgets.py and
test_escalation.py."""

from __future__ import annotations

from collections.abc import AsyncIterator
from functools import partial

import pytest
import trio

from c0re_priv.config import BudgetSettings, HiveConfig
from c0re_priv.daemon import run_hive
from c0re_priv.hive import Hive
from protocol import messages as m
from protocol.client import HiveClient, HiveError
from protocol.messages import BudgetLimits
from tests.conftest import make_config, paths_in


@pytest.fixture
def config() -> HiveConfig:
    cfg = make_config(
        agents={"boss": {"role": "manager"}, "alice": {}, "bob": {}},
        question_stale_seconds=0,
    )
    cfg.budget = BudgetSettings(
        hive=BudgetLimits(tokens_total=10_000),
        each_agent=BudgetLimits(cost_per_day_usd=1.0),
        agents={"bob": BudgetLimits(cost_per_day_usd=3.0)},
    )
    return cfg


@pytest.fixture
async def alice(hive: Hive) -> AsyncIterator[HiveClient]:
    async with HiveClient.connect(str(hive.paths.agent_sock("alice")), client="t") as c:
        yield c


@pytest.fixture
async def bob(hive: Hive) -> AsyncIterator[HiveClient]:
    async with HiveClient.connect(str(hive.paths.agent_sock("bob")), client="t") as c:
        yield c


@pytest.fixture
async def boss(hive: Hive) -> AsyncIterator[HiveClient]:
    async with HiveClient.connect(str(hive.paths.agent_sock("boss")), client="t") as c:
        yield c


async def turn(client: HiveClient, cost: float = 0.0, tokens: int = 0) -> None:
    stats = m.TurnStats(ok=True, input_tokens=tokens, cost_usd=cost)
    await client.expect(m.ReportTurn(turn=stats), m.Ok)


async def budget(admin: HiveClient) -> m.Budget:
    return await admin.expect(m.GetBudget(), m.Budget)


async def usage(admin: HiveClient, who: str | None) -> m.UsageRow:
    rows = (await budget(admin)).usage
    return next(r for r in rows if r.agent == who)


async def operator_messages(admin: HiveClient) -> list[str]:
    rows = await admin.expect(m.ListMessages(agent="operator", limit=100), m.Messages)
    return [r.body for r in rows.messages if r.from_ == "system"]


# ------------------------------------------------------------------ budgets


async def test_limits_resolve_from_the_agent_then_each_agent_then_the_operator(hive, admin):
    got = await budget(admin)
    assert got.warn_fraction == 0.8
    assert {(r.scope, r.agent, r.key, r.value, r.source) for r in got.limits} == {
        ("hive", None, "tokens_total", 10_000, "hive.toml"),
        ("each_agent", None, "cost_per_day_usd", 1.0, "hive.toml"),
        ("agent", "bob", "cost_per_day_usd", 3.0, "hive.toml"),
    }
    assert (await usage(admin, "alice")).limits.cost_per_day_usd == 1.0
    assert (await usage(admin, "bob")).limits.cost_per_day_usd == 3.0
    await admin.expect(m.SetBudget(scope="each_agent", limits={"cost_per_day_usd": 2.0}), m.Budget)
    await admin.expect(
        m.SetBudget(scope="agent", agent="bob", limits={"cost_per_day_usd": None}), m.Budget
    )
    assert (await usage(admin, "alice")).limits.cost_per_day_usd == 2.0
    assert (await usage(admin, "bob")).limits.cost_per_day_usd is None  # lifted for bob
    await admin.expect(
        m.SetBudget(scope="agent", agent="bob", reset=["cost_per_day_usd"]), m.Budget
    )
    assert (await usage(admin, "bob")).limits.cost_per_day_usd == 3.0
    for bad in (
        m.SetBudget(scope="agent", limits={"cost_total_usd": 1.0}),  # no agent named
        m.SetBudget(scope="hive", agent="bob", limits={"cost_total_usd": 1.0}),
        m.SetBudget(scope="hive"),  # nothing to change
        m.SetBudget(scope="hive", limits={"tokens_total": 10.5}),
    ):
        with pytest.raises(HiveError) as err:
            await admin.expect(bad, m.Budget)
        assert err.value.code == "invalid"
    with pytest.raises(HiveError) as err:
        await admin.expect(
            m.SetBudget(scope="agent", agent="nobody", limits={"cost_total_usd": 1.0}), m.Budget
        )
    assert err.value.code == "not_found"


async def test_a_turn_over_the_warn_line_warns_once_and_one_at_the_limit_pauses(hive, admin, alice):
    await admin.expect(m.OperatorSend(to="alice", body="later"), m.Sent)
    await turn(alice, cost=0.5)
    assert (await usage(admin, "alice")).state == "ok"
    await turn(alice, cost=0.35)  # 0.85 of 1.00
    got = await budget(admin)
    (warn,) = got.alerts
    assert (warn.agent, warn.key, warn.level) == ("alice", "cost_per_day_usd", "warn")
    await turn(alice, cost=0.01)  # still warned: no second alert
    assert len((await budget(admin)).alerts) == 1
    assert not (await admin.expect(m.AgentStatus(name="alice"), m.AgentInfo)).agent.held
    assert (await alice.expect(m.Recv(max=1), m.Deliveries)).items  # still given work

    await turn(alice, cost=0.2)  # 1.06: over
    row = (await admin.expect(m.AgentStatus(name="alice"), m.AgentInfo)).agent
    assert "alice reached its limit of $1.00" in row.held
    assert row.cost_today_usd == pytest.approx(1.06) and row.budget_used == pytest.approx(1.06)
    alerts = (await budget(admin)).alerts
    assert [(a.level, a.state) for a in alerts] == [("limit", "open")]  # the warning cleared
    told = await operator_messages(admin)
    assert any("alice has used 85%" in t for t in told)
    assert any("alice reached its limit" in t and "hive ctl resume alice" in t for t in told)
    await admin.expect(m.OperatorSend(to="alice", body="now"), m.Sent)
    assert (await alice.expect(m.Recv(max=1, wait_seconds=0.3), m.Deliveries)).items == []
    assert (await alice.expect(m.Take(max=1, wait_seconds=0.3), m.Taken)).messages == []
    inbox = (await admin.expect(m.GetInbox(), m.Inbox)).items
    assert {i.kind for i in inbox} >= {"budget", "held_agent"}
    assert next(i for i in inbox if i.kind == "held_agent").command == "hive ctl resume alice"


async def test_a_hold_is_lifted_by_raising_the_limit_or_resuming_never_by_itself(
    hive, admin, alice
):
    await turn(alice, cost=1.5)
    assert hive.holds.budget.keys() == {"alice"}
    # an unrelated change checks again, but alice is still over: she stays held
    await admin.expect(m.SetBudget(scope="hive", limits={"tokens_total": 20_000}), m.Budget)
    assert hive.holds.budget.keys() == {"alice"}
    # raised above her usage: released, and given work again
    await admin.expect(
        m.SetBudget(scope="agent", agent="alice", limits={"cost_per_day_usd": 2.0}), m.Budget
    )
    assert hive.holds.budget == {}
    await admin.expect(m.OperatorSend(to="alice", body="go on"), m.Sent)
    assert (await alice.expect(m.Recv(max=1, wait_seconds=2), m.Deliveries)).items
    # over again, then resumed: she goes on past that limit...
    await turn(alice, cost=1.0)
    assert "alice" in hive.holds.budget
    await admin.expect(m.SetPaused(name="alice", paused=False), m.AgentInfo)
    assert hive.holds.budget == {}
    await turn(alice, cost=0.5)
    assert hive.holds.budget == {}
    # ...until that limit changes: a lower one holds her again
    await admin.expect(
        m.SetBudget(scope="agent", agent="alice", limits={"cost_per_day_usd": 1.5}), m.Budget
    )
    assert "alice" in hive.holds.budget


async def test_the_hive_limit_pauses_everyone_but_the_manager(hive, admin, alice, bob, boss):
    await turn(alice, tokens=6_000)
    await turn(boss, tokens=4_500)  # the hive: 10,500 of 10,000
    assert set(hive.holds.budget) == {"alice", "bob"}
    assert "the hive reached its limit of 10,000 tokens" in hive.holds.budget["bob"]
    await admin.expect(m.OperatorSend(to="boss", body="you still work"), m.Sent)
    assert (await boss.expect(m.Recv(max=1, wait_seconds=2), m.Deliveries)).items
    await admin.expect(m.OperatorSend(to="bob", body="you do not"), m.Sent)
    assert (await bob.expect(m.Recv(max=1, wait_seconds=0.3), m.Deliveries)).items == []
    hive_row = await usage(admin, None)
    assert hive_row.tokens_total == 10_500 and hive_row.state == "over"
    await admin.expect(m.SetBudget(scope="hive", limits={"tokens_total": None}), m.Budget)
    assert hive.holds.budget == {}
    assert (await bob.expect(m.Recv(max=1, wait_seconds=2), m.Deliveries)).items


async def test_the_stop_holds_limits_and_alerts_survive_a_restart(short_tmp, config):
    paths = paths_in(short_tmp, config)
    async with trio.open_nursery() as nursery:
        hive = await nursery.start(partial(run_hive, config, paths, handle_signals=False))
        async with (
            HiveClient.connect(str(hive.paths.admin_sock)) as admin,
            HiveClient.connect(str(hive.paths.agent_sock("alice"))) as alice,
        ):
            await admin.expect(
                m.SetBudget(scope="agent", agent="alice", limits={"cost_total_usd": 0.5}),
                m.Budget,
            )
            await turn(alice, cost=0.6)
            await admin.expect(m.EmergencyStop(reason="before the restart"), m.EstopInfo)
        nursery.cancel_scope.cancel()

    async with trio.open_nursery() as nursery:
        hive = await nursery.start(partial(run_hive, config, paths, handle_signals=False))
        async with (
            HiveClient.connect(str(hive.paths.admin_sock)) as admin,
            HiveClient.connect(str(hive.paths.agent_sock("bob"))) as bob,
        ):
            inbox = await admin.expect(m.GetInbox(), m.Inbox)
            assert inbox.estop.engaged and inbox.estop.reason == "before the restart"
            rows = {r.name: r for r in (await admin.expect(m.ListAgents(), m.Agents)).agents}
            assert "alice reached its limit" in rows["alice"].held
            assert rows["bob"].held == "emergency stop" and rows["boss"].held == ""
            got = await budget(admin)
            assert ("agent", "alice", "cost_total_usd", 0.5, "operator") in {
                (r.scope, r.agent, r.key, r.value, r.source) for r in got.limits
            }
            assert [a.level for a in got.alerts] == ["limit"]
            await admin.expect(m.OperatorSend(to="bob", body="parked"), m.Sent)
            assert (await bob.expect(m.Recv(max=1, wait_seconds=0.3), m.Deliveries)).items == []
            await admin.expect(m.Thaw(), m.EstopInfo)
            assert (await bob.expect(m.Recv(max=1, wait_seconds=2), m.Deliveries)).items
            assert "alice" in hive.holds.budget  # the thaw does not lift a budget hold
        nursery.cancel_scope.cancel()


async def test_dismissing_a_warning_takes_it_out_of_the_inbox(hive, admin, alice):
    await turn(alice, cost=0.9)
    (alert,) = (await budget(admin)).alerts
    await admin.expect(m.DismissBudgetAlert(id=alert.id), m.Ok)
    assert (await budget(admin)).alerts == []
    assert not [i for i in (await admin.expect(m.GetInbox(), m.Inbox)).items if i.kind == "budget"]
    await turn(alice, cost=0.01)  # still in the warned band: not raised again
    assert (await budget(admin)).alerts == []
    with pytest.raises(HiveError) as err:
        await admin.expect(m.DismissBudgetAlert(id=alert.id), m.Ok)
    assert err.value.code == "not_found"


# ------------------------------------------------------------------ the emergency stop


async def test_estop_takes_back_leases_without_failure_and_parks_all_but_the_manager(
    hive, admin, alice, boss
):
    (mid,) = (await admin.expect(m.OperatorSend(to="alice", body="work"), m.Sent)).message_ids
    (leased,) = (await alice.expect(m.Recv(max=1), m.Deliveries)).items
    row = (await admin.expect(m.EmergencyStop(reason="drill"), m.EstopInfo)).estop
    assert row.engaged and row.parked == ["alice", "bob"] and row.reason == "drill"
    msg = (await admin.expect(m.ListMessages(agent="alice", limit=5), m.Messages)).messages
    mine = next(r for r in msg if r.id == mid)
    assert (mine.state, mine.failures) == ("queued", 0)
    with pytest.raises(HiveError):
        await alice.expect(m.Ack(lease=leased.lease), m.Ok)
    assert (await alice.expect(m.Recv(max=1, wait_seconds=0.3), m.Deliveries)).items == []
    await admin.expect(m.OperatorSend(to="boss", body="coordinate"), m.Sent)
    assert (await boss.expect(m.Recv(max=1, wait_seconds=2), m.Deliveries)).items
    status = (await admin.expect(m.AgentStatus(name="alice"), m.AgentInfo)).agent
    assert status.held == "emergency stop"
    inbox = await admin.expect(m.GetInbox(), m.Inbox)
    assert inbox.items[0].kind == "estop" and inbox.estop.engaged

    thawed = (await admin.expect(m.Thaw(), m.EstopInfo)).estop
    assert not thawed.engaged and thawed.resumed == ["alice", "bob"]
    again = (await alice.expect(m.Recv(max=1, wait_seconds=2), m.Deliveries)).items
    assert [d.message.id for d in again] == [mid]
    with pytest.raises(HiveError) as err:
        await admin.expect(m.Thaw(), m.EstopInfo)
    assert err.value.code == "conflict"


async def test_thaw_leaves_paused_and_budget_held_agents_as_they_were(hive, admin, bob):
    await admin.expect(m.SetPaused(name="alice", paused=True), m.AgentInfo)
    await turn(bob, cost=5.0)  # over bob's own $3
    await admin.expect(m.EmergencyStop(), m.EstopInfo)
    thawed = (await admin.expect(m.Thaw(), m.EstopInfo)).estop
    assert thawed.resumed == []
    rows = {r.name: r for r in (await admin.expect(m.ListAgents(), m.Agents)).agents}
    assert rows["alice"].paused and "bob reached its limit" in rows["bob"].held
