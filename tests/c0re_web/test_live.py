"""Live updates without a browser: what a batch of events redraws, replay by Last-Event-ID, resync."""

from __future__ import annotations

import anyio
import msgspec
import pytest

from c0re_web.live import Batch, Changes, Hub, Listener, ResyncNote, sse_frame
from c0re_web.render import Renderer, conversations
from protocol import messages as m


def msg(
    mid: int, sender: str, to: str, reply_to: int | None = None, thread: int | None = None
) -> m.MessageRow:
    return m.MessageRow(
        id=mid,
        from_=sender,
        to=to,
        body=f"body {mid}",
        in_reply_to=reply_to,
        thread=thread or mid,
        kind="message",
        state="queued",
        attempts=0,
        broadcast=False,
        hint=None,
        question_id=None,
        created_at=1.0,
        acked_at=None,
    )


def drain(lst: Listener) -> list[Batch | ResyncNote]:
    out: list[Batch | ResyncNote] = []
    while True:
        try:
            out.append(lst.recv.receive_nowait())
        except (anyio.WouldBlock, anyio.EndOfStream):
            return out


@pytest.fixture
def hub() -> Hub:
    h = Hub(Renderer(), replay=3)
    h.reset(100)
    return h


def batch(seq: int, pages: dict[str, str], touched: frozenset[str] = frozenset()) -> Batch:
    return Batch(seq=seq, pages=pages, touched=touched)


def test_conversations_group_by_thread_and_nest_replies():
    rows = [
        msg(1, "alice", "bob"),
        msg(2, "bob", "alice", reply_to=1, thread=1),
        msg(3, "operator", "carol"),
        msg(4, "alice", "bob", reply_to=2, thread=1),
        msg(6, "carol", "bob", reply_to=5, thread=5),  # its root is outside the window
    ]
    convs = conversations(reversed(rows), limit=10)
    assert [c.thread for c in convs] == [5, 1, 3]  # newest activity first
    assert [(line.msg.id, line.depth) for line in convs[1].lines] == [(1, 0), (2, 1), (4, 2)]
    assert convs[1].participants == ["alice", "bob"]
    assert (convs[0].complete, convs[0].lines[0].depth) == (False, 1)
    assert [c.thread for c in conversations(rows, limit=2)] == [5, 1]


def test_a_broadcast_is_one_conversation_until_someone_answers_a_copy():
    copies = [
        msgspec.structs.replace(msg(i, "boss", to), broadcast=True, body="standup")
        for i, to in ((10, "alice"), (11, "bob"), (12, "carol"))
    ]
    (folded,) = conversations(copies, limit=10)
    assert [c.to for c in folded.copies] == ["alice", "bob", "carol"]
    answered = conversations([*copies, msg(13, "bob", "boss", reply_to=11, thread=11)], limit=10)
    assert [(c.thread, len(c.copies)) for c in answered] == [(11, 0), (12, 2)]


def test_a_batch_names_what_it_changed():
    changes = Changes.of(
        [
            m.MessageSent(message=msg(7, "alice", "bob")),
            m.MessageAcked(message_id=3, agent="carol"),
            m.QuestionAnswered(
                question_id=1, asker="bob", target="operator", answer="y", expired=False
            ),
            m.Note(agent="alice", text="compact done"),
            m.ReminderFailed(
                reminder_id=2, owner="dave", error="boom", attempt_count=5, retry_at=None
            ),
        ]
    )
    assert changes.flow and changes.questions and changes.reminders and not changes.roster
    assert changes.inbox == {"alice", "bob", "carol"}
    assert changes.threads == {"bob", "operator"}
    assert changes.agents >= {"alice", "bob", "carol", "dave"}
    assert [text for _, text, _ in changes.toasts] == [
        "alice: compact done",
        "a reminder of dave failed: boom",
    ]


def test_a_reconnecting_page_gets_what_it_missed_for_its_own_page(hub):
    hub.publish(batch(101, {"dashboard": "a"}))
    hub.publish(batch(102, {"agent:bob": "b"}, frozenset({"agent:bob"})))
    hub.publish(batch(103, {"dashboard": "c"}))
    dash = hub.listen("dashboard", since=101)
    assert [item.seq for item in drain(dash)] == [103]
    bob = hub.listen("agent:bob", since=100)
    assert [item.seq for item in drain(bob)] == [102]
    hub.publish(batch(104, {"dashboard": "d", "agent:bob": "e"}, frozenset({"agent:bob"})))
    assert [item.seq for item in drain(dash)] == [104]
    assert [item.seq for item in drain(bob)] == [104]


def test_a_page_older_than_the_buffer_or_a_restart_must_reload(hub):
    for seq in (101, 102, 103, 104):
        hub.publish(batch(seq, {"dashboard": str(seq)}))
    assert hub.floor == 101
    assert drain(hub.listen("dashboard", since=100)) == [ResyncNote(104)]
    current = hub.listen("dashboard", since=104)
    assert drain(current) == []
    hub.reset(5_000)  # the daemon restarted: seqs start again at its boot time
    assert drain(current) == [ResyncNote(5_000)]


def test_a_page_whose_agent_changed_while_nobody_drew_it_must_reload(hub):
    hub.publish(batch(101, {"dashboard": "a"}, frozenset({"agent:alice"})))
    assert drain(hub.listen("agent:alice", since=100)) == [ResyncNote(101)]
    assert drain(hub.listen("agent:bob", since=100)) == []


def test_a_page_that_falls_behind_is_dropped_not_waited_for(hub):
    slow = hub.listen("dashboard", since=100)
    for seq in range(101, 101 + 70):
        hub.publish(batch(seq, {"dashboard": "x"}))
    received = drain(slow)
    assert 0 < len(received) < 70  # its stream ended; the browser reconnects with Last-Event-ID


def test_before_the_first_subscription_pages_wait_and_then_are_judged():
    h = Hub(Renderer())
    early = h.listen("dashboard", since=50)
    current = h.listen("dashboard", since=90)
    assert drain(early) == drain(current) == []
    h.reset(90)
    assert drain(early) == [ResyncNote(90)]
    assert drain(current) == []


def test_an_sse_frame_carries_the_seq_and_every_line():
    frame = sse_frame(batch(7, {"dashboard": "<p>\none</p>"}), "dashboard")
    assert frame == "id: 7\nevent: update\ndata: <p>\ndata: one</p>\n\n"
    assert sse_frame(ResyncNote(9), "dashboard") == "event: resync\ndata: 9\n\n"
    odd = sse_frame(batch(8, {"dashboard": "a\r\nb\rc\u2028d"}), "dashboard")
    assert odd == "id: 8\nevent: update\ndata: a\ndata: b\ndata: c\u2028d\n\n"
