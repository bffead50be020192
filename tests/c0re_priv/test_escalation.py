"""Stale questions: a question nobody answers is raised again to its target, then escalated to
the manager, then to the operator, before its TTL runs out; the asker is told each time.

The first tests drive a real daemon in this trio run with agents as protocol clients on
their own sockets (exact timings, each rule on its own); the last one runs the whole thing
with real bwrap sandboxes and scripted agents that never answer, and `hive ctl`.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
import pytest
import trio

from c0re_priv.config import HiveConfig
from c0re_priv.escalation import Step, chain, due_at
from c0re_priv.hive import Hive
from protocol import messages as m
from protocol.client import HiveClient, HiveError, SyncClient
from tests.conftest import DaemonProcess, make_config

STALE = 0.6


@pytest.fixture
def config() -> HiveConfig:
    return make_config(
        agents={"boss": {"role": "manager"}, "alice": {}, "bob": {}, "carol": {}},
        question_stale_seconds=STALE,
    )


@pytest.fixture
async def alice(hive: Hive) -> AsyncIterator[HiveClient]:
    async with HiveClient.connect(str(hive.paths.agent_sock("alice"))) as c:
        yield c


async def inbox_of(hive: Hive, name: str) -> list[m.MessageRow]:
    """Everything queued for `name` (read as the operator sees it, without leasing)."""
    rows = await hive.broker.list_messages(name, None, 100, None)
    return sorted((r for r in rows if r.to == name), key=lambda r: r.id)


async def question(admin: HiveClient, qid: int) -> m.QuestionRow:
    rows = await admin.expect(m.ListQuestions(target=None, include_closed=True), m.Questions)
    return next(q for q in rows.questions if q.id == qid)


async def wait_for_level(
    admin: HiveClient, qid: int, level: int, timeout: float = 10
) -> m.QuestionRow:
    with trio.fail_after(timeout):
        while len((q := await question(admin, qid)).escalation) < level:
            await trio.sleep(0.05)
    return q


def test_the_chain_skips_what_makes_no_sense():
    agents = {"boss", "alice", "bob"}
    assert chain("alice", "bob", ["boss"], agents) == [
        Step("bob", "raised"),
        Step("boss", "manager"),
        Step("operator", "operator"),
    ]
    assert chain("alice", "boss", ["boss"], agents) == [
        Step("boss", "raised"),
        Step("operator", "operator"),
    ]
    assert chain("boss", "bob", ["boss"], agents) == [
        Step("bob", "raised"),
        Step("operator", "operator"),
    ]
    assert chain("alice", "operator", ["boss"], agents) == [Step("operator", "raised")]
    assert chain("alice", "gone", ["boss"], agents) == [  # its target was removed
        Step("boss", "manager"),
        Step("operator", "operator"),
    ]
    assert chain("alice", "bob", [], agents)[-1] == Step("operator", "operator")


def test_a_ttl_brings_every_step_before_the_question_expires():
    # no TTL: one step per stale period
    assert [due_at(100, None, k, 3, 60) for k in (1, 2, 3)] == [160, 220, 280]
    # a TTL shorter than the chain would take: steps at 1/4, 2/4 and 3/4 of it
    assert [due_at(100, 140, k, 3, 60) for k in (1, 2, 3)] == [110, 120, 130]
    # a long TTL leaves the stale period alone
    assert [due_at(100, 100 + 3600, k, 3, 60) for k in (1, 2, 3)] == [160, 220, 280]


async def test_a_question_climbs_three_levels_and_its_asker_is_told_each_time(hive, admin, alice):
    asked = await alice.expect(m.Ask(target="bob", question="which branch?"), m.Asked)
    qid = asked.question_id
    started = trio.current_time()

    q = await wait_for_level(admin, qid, 1)
    assert q.escalation == ["bob"] and trio.current_time() - started >= STALE * 0.9
    bob_msgs = [r for r in await inbox_of(hive, "bob") if r.question_id == qid]
    assert [r.from_ for r in bob_msgs] == ["alice", "system"]
    assert bob_msgs[1].kind == "question" and "Still waiting for your answer" in bob_msgs[1].body

    q = await wait_for_level(admin, qid, 2)
    assert q.escalation == ["bob", "boss"]
    (to_boss,) = [r for r in await inbox_of(hive, "boss") if r.question_id == qid]
    assert "Escalated to you" in to_boss.body and "which branch?" in to_boss.body

    q = await wait_for_level(admin, qid, 3)
    assert q.escalation == ["bob", "boss", "operator"]
    mine = (await admin.expect(m.ListQuestions(), m.Questions)).questions
    assert [x.id for x in mine] == [qid]  # the operator's questions now include it
    inbox = (await admin.expect(m.GetInbox(), m.Inbox)).items
    assert [i.ref for i in inbox if i.kind == "question"] == [qid]

    told = [r.body for r in await inbox_of(hive, "alice") if r.from_ == "system"]
    assert len(told) == 3
    assert "re-raised to bob" in told[0]
    assert "escalated to boss (a manager)" in told[1]
    assert "escalated to the operator" in told[2]

    await trio.sleep(STALE * 2)  # nothing above the operator: it stays there
    assert len((await question(admin, qid)).escalation) == 3

    await admin.expect(m.AnswerQuestion(question_id=qid, answer="main"), m.Ok)
    answers = [r for r in await inbox_of(hive, "alice") if r.kind == "answer"]
    assert [a.body.endswith("main") for a in answers] == [True]


async def test_whoever_it_was_escalated_to_may_answer_and_no_one_else(hive, admin, alice):
    asked = await alice.expect(m.Ask(target="bob", question="deploy?", ttl_seconds=3600), m.Asked)
    qid = asked.question_id
    async with (
        HiveClient.connect(str(hive.paths.agent_sock("carol"))) as carol,
        HiveClient.connect(str(hive.paths.agent_sock("boss"))) as boss,
    ):
        with pytest.raises(HiveError) as err:
            await boss.expect(m.Answer(question_id=qid, answer="too early"), m.Ok)
        assert err.value.code == "not_found"
        await wait_for_level(admin, qid, 2)
        with pytest.raises(HiveError) as err:
            await carol.expect(m.Answer(question_id=qid, answer="not mine"), m.Ok)
        assert err.value.code == "not_found"
        await boss.expect(m.Answer(question_id=qid, answer="yes, ship it"), m.Ok)
    q = await question(admin, qid)
    assert (q.state, q.answer) == ("answered", "yes, ship it")
    await trio.sleep(STALE * 2)
    assert len((await question(admin, qid)).escalation) == 2  # answered: it climbs no more


async def test_a_short_ttl_escalates_within_it(hive, admin, alice):
    # three steps in a TTL of 2 s: at 0.5, 1.0 and 1.5 s, each sooner than STALE would allow
    asked = await alice.expect(m.Ask(target="bob", question="now?", ttl_seconds=2), m.Asked)
    started = trio.current_time()
    q = await wait_for_level(admin, asked.question_id, 3, timeout=1.9)
    assert q.state == "open" and trio.current_time() - started < 2
    with trio.fail_after(5):
        while (await question(admin, asked.question_id)).state != "expired":
            await trio.sleep(0.05)


# ------------------------------------------------------------------ end to end, in sandboxes

NEVER_ANSWER = """
[[rule]]
kind = "question"
tool = "set_status"
args = { text = "saw question {question_id}; not answering" }

[[rule]]
kind = "system"
tool = "set_status"
args = { text = "told: {body}" }

[[rule]]
kind = "answer"
tool = "set_status"
args = { text = "got answer: {body}" }

[[rule]]
from = "operator"
match = '^ask (?P<target>[a-z]+) (?P<text>.*)'
tool = "ask"
args = { target = "{target}", question = "{text}" }
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


def wait_until(check, what: str, timeout: float = 90):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not (got := check()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)
    return got


@pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap not installed")
def test_in_sandboxes_a_question_nobody_answers_reaches_the_operator(short_tmp: Path):
    short_tmp.chmod(0o755)  # the agents' uids read their rules file
    rules = short_tmp / "rules.toml"
    rules.write_text(NEVER_ANSWER)
    rules.chmod(0o644)
    config = short_tmp / "hive.toml"
    config.write_text(
        "[hive]\nquestion_stale_seconds = 4\nstop_grace_seconds = 2\n\n"
        f'[agents.boss]\nrole = "manager"\nrules = "{rules}"\n\n'
        f'[agents.alice]\nrules = "{rules}"\n\n[agents.bob]\nrules = "{rules}"\n'
    )
    d = DaemonProcess(short_tmp, config)
    d.start()
    try:
        ctl(d, "send", "alice", "ask bob which release do we cut?")
        open_qs = lambda: msgspec.json.decode(  # noqa: E731
            ctl(d, "questions", "--target", "*", "--json"), type=list[m.QuestionRow]
        )
        (q,) = wait_until(open_qs, "alice to ask bob")
        assert (q.asker, q.target, q.escalation) == ("alice", "bob", [])
        human = ctl(d, "questions", "--target", "*")
        assert "AGE" in human and "RAISED TO" in human

        q = wait_until(
            lambda: next((x for x in open_qs() if len(x.escalation) == 3), None),
            "the question to reach the operator",
        )
        assert q.escalation == ["bob", "boss", "operator"]
        assert q.escalated_at is not None and q.escalated_at - q.asked_at >= 3 * 4 * 0.9
        human = ctl(d, "questions")  # the operator's own: it is among them now
        assert "bob → boss → operator" in human and "which release" in human
        inbox = ctl(d, "inbox")
        assert "alice asked bob, who has not answered" in inbox
        assert f"hive ctl answer {q.id}" in inbox

        # alice was told each step (her harness ran a turn for each: her status says so)
        with SyncClient.connect(str(d.paths.admin_sock)) as c:
            mine = c.expect(m.ListMessages(agent="alice", limit=100), m.Messages).messages
        told = [r.body for r in sorted(mine, key=lambda r: r.id) if r.from_ == "system"]
        assert len(told) == 3 and "escalated to the operator" in told[-1]
        assert "re-raised to bob" in told[0] and "escalated to boss" in told[1]
        wait_until(
            lambda: all(
                r.state == "acked" for r in c_messages(d) if r.to == "alice" and r.from_ == "system"
            ),
            "alice to have handled what she was told",
        )

        ctl(d, "answer", str(q.id), "cut 2.4")
        wait_until(
            lambda: (
                "got answer" in status_text(d, "alice") and "cut 2.4" in status_text(d, "alice")
            ),
            "alice to get the operator's answer",
        )
    finally:
        d.stop()


def c_messages(d: DaemonProcess) -> list[m.MessageRow]:
    with SyncClient.connect(str(d.paths.admin_sock)) as c:
        return c.expect(m.ListMessages(limit=500), m.Messages).messages


def status_text(d: DaemonProcess, name: str) -> str:
    with SyncClient.connect(str(d.paths.admin_sock)) as c:
        return c.expect(m.AgentStatus(name=name), m.AgentInfo).agent.status_text
