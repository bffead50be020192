"""The web process's mirror of the hive: seeded by one snapshot, changed by each event's own
payload, asking the daemon only for what an event does not carry."""

from __future__ import annotations

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from c0re_web.mirror import Mirror
from protocol import messages as m
from tests.c0re_web.test_live import AGENTS, at, msg, state


def test_the_mirror_follows_a_message_through_its_states_from_the_payloads():
    mirror = Mirror()
    mirror.seed(state())
    changes = mirror.apply(
        [
            at(101, m.MessageSent(message=msg(7, "alice", "bob"))),
            at(102, m.MessageLeased(message_id=7, agent="bob", attempts=1)),
            at(103, m.AgentStateChanged(name="bob", state="harness:turn", reason="")),
            at(104, m.StatusChanged(name="bob", text="reading #7")),
        ]
    )
    bob = mirror.agents["bob"]
    assert (bob.queued, bob.leased, bob.harness_state, bob.status_text) == (
        0,
        1,
        "turn",
        "reading #7",
    )
    assert bob.last_seen == 104.0 and mirror.agents["alice"].last_seen == 101.0
    assert mirror.messages[7].state == "leased" and changes.new_messages == [7]
    assert changes.message_states == {7: ("leased", 1)}
    assert changes.rows == {"alice", "bob"} and not changes.read_rows
    changes = mirror.apply([at(105, m.MessageAcked(message_id=7, agent="bob"))])
    assert mirror.agents["bob"].leased == 0 and mirror.messages[7].state == "acked"
    assert changes.involved == {"bob": {7}, "alice": {7}}


def test_events_the_snapshot_already_shows_are_not_applied_again():
    mirror = Mirror()
    mirror.seed(state(seq=100))
    mirror.apply([at(99, m.MessageSent(message=msg(7, "alice", "bob")))])
    assert mirror.agents["bob"].queued == 0 and 7 not in mirror.messages


def test_what_the_payload_lacks_is_asked_for_and_nothing_more():
    mirror = Mirror()
    mirror.seed(state())
    q = m.QuestionRow(
        id=3,
        asker="carol",
        target="operator",
        question="ship?",
        options=None,
        multi=False,
        asked_at=1.0,
        expires_at=None,
        state="open",
        answer=None,
        answered_at=None,
        message_id=9,
    )
    changes = mirror.apply(
        [
            at(101, m.AgentStateChanged(name="dave", state="crashed", reason="exit 1")),
            at(102, m.QuestionAsked(question=q)),
            at(103, m.Note(agent="alice", text="compact done")),
        ]
    )
    assert changes.read_rows == {"dave"}  # restarts, limits…: one row read
    assert changes.read_threads == {"carol"}  # one count read
    assert changes.questions and list(mirror.questions) == [3]
    assert [text for _, text, _ in changes.toasts] == [
        "dave crashed: exit 1",
        "alice: compact done",
    ]
    assert not (changes.read_reminders or changes.read_dead or changes.read_federation)


MESSAGE_OPS = st.lists(
    st.tuples(
        st.sampled_from(["send", "lease", "ack", "expire", "fail", "retry", "drop"]),
        st.sampled_from(AGENTS),
        st.integers(0, 30),
    ),
    max_size=80,
)


@given(MESSAGE_OPS)
@settings(max_examples=150, deadline=None)
def test_counts_kept_by_arithmetic_match_the_messages_states(ops):
    """Against a reference that only knows each message's state, as the daemon does."""
    mirror = Mirror()
    mirror.seed(state(seq=0))
    states: dict[int, tuple[str, str]] = {}  # id → (recipient, state)
    seq = 0
    for op, who, pick in ops:
        seq += 1
        ids = sorted(states)
        mid = ids[pick % len(ids)] if ids else None
        event: m.AnyEvent | None = None
        if op == "send":
            mid = len(states) + 1
            states[mid] = (who, "queued")
            event = m.MessageSent(message=msg(mid, "operator", who))
        elif mid is None:
            continue
        else:
            to, now = states[mid]
            move = {
                ("lease", "queued"): (
                    "leased",
                    m.MessageLeased(message_id=mid, agent=to, attempts=1),
                ),
                ("ack", "leased"): ("acked", m.MessageAcked(message_id=mid, agent=to)),
                ("expire", "leased"): (
                    "queued",
                    m.MessageRequeued(message_id=mid, agent=to, attempts=1, reason="lease expired"),
                ),
                ("fail", "leased"): (
                    "dead",
                    m.MessageDead(message_id=mid, agent=to, attempts=3, reason="boom"),
                ),
                ("retry", "dead"): (
                    "queued",
                    m.MessageRequeued(
                        message_id=mid, agent=to, attempts=0, reason="operator retry"
                    ),
                ),
                ("drop", "dead"): ("dropped", m.MessageDropped(message_id=mid, agent=to)),
            }.get((op, now))
            if move is None:
                continue
            states[mid] = (to, move[0])
            event = move[1]
        mirror.apply([at(seq, event)])
    for name in AGENTS:
        row = mirror.agents[name]
        mine = [s for to, s in states.values() if to == name]
        assert (row.queued, row.leased) == (mine.count("queued"), mine.count("leased"))


def question(qid: int, asker: str, target: str) -> m.QuestionRow:
    return m.QuestionRow(
        id=qid,
        asker=asker,
        target=target,
        question="which branch?",
        options=None,
        multi=False,
        asked_at=1.0,
        expires_at=None,
        state="open",
        answer=None,
        answered_at=None,
        message_id=qid + 100,
    )


def test_the_operator_controls_keep_what_their_events_carry_and_read_the_rest():
    """The stop and a question's escalation come with their rows; the inbox, the holds and
    the spending are read (one `GetInbox`, one `AgentStatus` per held agent, one `GetBudget`)."""
    mirror = Mirror()
    mirror.seed(state())
    estop = m.EstopRow(engaged=True, at=101.0, reason="runaway", parked=["alice", "bob"])
    changes = mirror.apply(
        [
            at(101, m.EstopChanged(estop=estop)),
            at(102, m.AgentHeld(name="alice", hold="estop", reason="emergency stop")),
        ]
    )
    assert mirror.estop == estop and changes.estop
    assert changes.read_needs and changes.read_rows == {"alice"} and changes.read_budget
    assert [text for _, text, _ in changes.toasts] == ["EMERGENCY STOP: 2 agents parked (runaway)"]

    q = question(5, "carol", "dave")
    changes = mirror.apply([at(103, m.QuestionAsked(question=q))])
    assert changes.open_questions and not changes.questions and not changes.read_needs
    assert [x.id for x in mirror.open_question_list()] == [5] and not mirror.questions
    climbed = m.QuestionRow(**{**msgspec.structs.asdict(q), "escalation": ["dave", "alice"]})
    changes = mirror.apply(
        [at(104, m.QuestionEscalated(question=climbed, step="operator", to="operator"))]
    )
    assert mirror.open_questions[5].escalation == ["dave", "alice"]
    assert list(mirror.questions) == [5] and changes.questions and changes.read_needs
    assert changes.toasts[0][1] == "question #5 of carol: escalated to operator"
    changes = mirror.apply(
        [
            at(
                105,
                m.QuestionAnswered(
                    question_id=5, asker="carol", target="dave", answer="main", expired=False
                ),
            )
        ]
    )
    assert not mirror.open_questions and not mirror.questions and changes.read_needs

    changes = mirror.apply([at(106, m.TurnRecorded(name="bob", turn=m.TurnStats(ok=True)))])
    assert changes.read_budget and not changes.read_needs
    limits = m.BudgetLimits(cost_per_day_usd=1.0)
    spent = m.UsageRow(
        scope="agent",
        agent="bob",
        turns_day=1,
        tokens_day=1200,
        cost_day_usd=0.9,
        turns_total=1,
        tokens_total=1200,
        cost_total_usd=0.9,
        limits=limits,
        used=0.9,
        state="warn",
    )
    mirror.set_usage([spent], changes)
    bob = mirror.agents["bob"]
    assert (bob.tokens_today, bob.cost_today_usd, bob.budget_used) == (1200, 0.9, 0.9)
    assert "bob" in changes.rows and changes.budget and mirror.usage == [spent]
