"""Questions between agents and the operator, and the open threads they leave, over real sockets."""

from __future__ import annotations

import pytest
import trio

from protocol import messages as m
from protocol.client import HiveError
from tests.conftest import agent, recv_all


async def test_ask_the_operator_and_get_the_answer_as_a_threaded_message(hive, admin):
    async with agent(hive, "alice") as alice:
        asked = await alice.expect(
            m.Ask(target="operator", question="deploy now?", options=["yes", "no"]), m.Asked
        )
        (q,) = (await admin.expect(m.ListQuestions(), m.Questions)).questions
        assert (q.id, q.asker, q.target, q.options, q.state) == (
            asked.question_id,
            "alice",
            "operator",
            ["yes", "no"],
            "open",
        )
        mine = (await alice.expect(m.ListMyAsks(), m.Asks)).asks
        assert [(a.id, a.target, a.question) for a in mine] == [(q.id, "operator", "deploy now?")]
        await admin.expect(m.AnswerQuestion(question_id=q.id, answer="yes"), m.Ok)
        (msg,) = await recv_all(alice)
        assert (msg.kind, msg.from_, msg.in_reply_to, msg.question_id) == (
            "answer",
            "operator",
            asked.message_id,
            q.id,
        )
        assert msg.body.endswith(": yes")
        assert (await alice.expect(m.ListMyAsks(), m.Asks)).asks == []
        with pytest.raises(HiveError) as err:
            await admin.call(m.AnswerQuestion(question_id=q.id, answer="again"))
        assert err.value.code == "conflict"


async def test_agent_questions_wake_the_target_and_only_the_target_may_answer(hive):
    async with (
        agent(hive, "alice") as alice,
        agent(hive, "bob") as bob,
        agent(hive, "boss") as boss,
    ):
        asked = await alice.expect(m.Ask(target="bob", question="which branch?"), m.Asked)
        (qmsg,) = await recv_all(bob)
        assert (qmsg.kind, qmsg.question_id) == ("question", asked.question_id)
        assert f"answer(question_id={asked.question_id}" in qmsg.body
        for outsider in (boss, alice):
            with pytest.raises(HiveError) as err:
                await outsider.call(m.Answer(question_id=asked.question_id, answer="main"))
            assert err.value.code == "not_found"
        await bob.expect(m.Answer(question_id=asked.question_id, answer="main"), m.Ok)
        (ans,) = await recv_all(alice)
        assert (ans.in_reply_to, ans.thread) == (asked.message_id, asked.message_id)


async def test_cancel_ask_is_bounded_to_the_asker(hive):
    async with agent(hive, "alice") as alice, agent(hive, "bob") as bob:
        asked = await alice.expect(m.Ask(target="operator", question="lunch?"), m.Asked)
        with pytest.raises(HiveError) as err:
            await bob.call(m.CancelAsk(id=asked.question_id))
        assert err.value.code == "not_found"  # not forbidden: no probing other agents' ids
        await alice.expect(m.CancelAsk(id=asked.question_id), m.Ok)
        assert (await alice.expect(m.ListMyAsks(), m.Asks)).asks == []
        with pytest.raises(HiveError) as err:
            await alice.call(m.CancelAsk(id=asked.question_id))
        assert err.value.code == "not_found"


async def test_a_question_past_its_ttl_is_answered_expired(hive):
    async with agent(hive, "alice") as alice:
        asked = await alice.expect(
            m.Ask(target="operator", question="quick?", ttl_seconds=1), m.Asked
        )
        got: list[m.MessageRow] = []
        with trio.fail_after(5):
            while not any(msg.kind == "answer" for msg in got):
                delivered = await alice.expect(m.Recv(max=10, wait_seconds=5), m.Deliveries)
                got += [d.message for d in delivered.items]
        # a question climbs its chain before its TTL runs out (escalation.py): one to the
        # operator is raised again halfway, and its asker is told so first
        *told, msg = got
        assert [(t.kind, t.from_) for t in told] == [("system", "system")]
        assert f"Your question #{asked.question_id} to operator" in told[0].body
        assert (msg.kind, msg.from_, msg.question_id) == ("answer", "system", asked.question_id)
        assert msg.body.endswith("[expired]")


async def test_questions_need_one_real_target(hive):
    async with agent(hive, "alice") as alice:
        for target, code in (("*", "invalid"), ("alice", "invalid"), ("nobody", "not_found")):
            with pytest.raises(HiveError) as err:
                await alice.call(m.Ask(target=target, question="?"))
            assert err.value.code == code


async def test_open_threads_show_both_directions_and_the_manager_sees_the_hive(hive, admin):
    async with (
        agent(hive, "alice") as alice,
        agent(hive, "bob") as bob,
        agent(hive, "boss") as boss,
    ):
        a1 = await alice.expect(m.Ask(target="bob", question="review my patch?"), m.Asked)
        a2 = await bob.expect(m.Ask(target="operator", question="may I deploy?"), m.Asked)
        await hive.store.write(
            lambda c: c.execute(
                "INSERT INTO approvals (agent, kind, description, requested_by, requested_at)"
                " VALUES ('carol', 'spawn', 'spawn carol', 'boss', 0)"
            )
        )
        alice_threads = (await alice.expect(m.GetOpenThreads(), m.OpenThreads)).threads
        assert [(t.id, t.role, t.counterparty) for t in alice_threads] == [
            (a1.question_id, "asker", "bob")
        ]
        bob_threads = (await bob.expect(m.GetOpenThreads(), m.OpenThreads)).threads
        assert sorted((t.id, t.role, t.counterparty) for t in bob_threads) == sorted(
            [(a1.question_id, "target", "alice"), (a2.question_id, "asker", "operator")]
        )
        hive_wide = (await boss.expect(m.GetOpenThreads(), m.OpenThreads)).threads
        kinds = sorted(type(t).__name__ for t in hive_wide)
        assert kinds == ["ApprovalThread", "QuestionThread", "QuestionThread"]
        via_admin = (await admin.expect(m.GetAgentOpenThreads(agent="bob"), m.OpenThreads)).threads
        assert [(t.id, t.role) for t in via_admin] == [(t.id, t.role) for t in bob_threads]
        boss_own = (await admin.expect(m.GetAgentOpenThreads(agent="boss"), m.OpenThreads)).threads
        assert [(type(t).__name__, t.summary) for t in boss_own] == [
            ("ApprovalThread", "spawn carol: spawn carol")
        ]


async def test_open_threads_are_capped_oldest_first_and_say_how_many_exist(hive, admin):
    async with agent(hive, "alice") as alice, agent(hive, "boss") as boss:
        asked = [
            (await alice.expect(m.Ask(target="bob", question=f"q{i}"), m.Asked)).question_id
            for i in range(5)
        ]
        got = await alice.expect(m.GetOpenThreads(limit=3), m.OpenThreads)
        assert [t.id for t in got.threads] == asked[:3] and got.total == 5
        every = await alice.expect(m.GetOpenThreads(), m.OpenThreads)
        assert len(every.threads) == every.total == 5
        hive_wide = await boss.expect(m.GetOpenThreads(limit=2), m.OpenThreads)
        assert len(hive_wide.threads) == 2 and hive_wide.total == 5
        bob = await admin.expect(m.GetAgentOpenThreads(agent="bob", limit=1), m.OpenThreads)
        assert [t.id for t in bob.threads] == asked[:1] and bob.total == 5
        state = await admin.expect(m.Snapshot(), m.HiveState)
        assert state.open_threads["alice"] == 5 and state.open_threads["bob"] == 5
