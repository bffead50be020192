"""Live updates without a browser: the patches a batch draws, per-browser queues that
coalesce instead of dropping, replay by Last-Event-ID, resync."""

from __future__ import annotations

import anyio
import msgspec
import pytest

from c0re_web.live import MESSAGE_BACKLOG, Batch, Hub, Listener, Patch, sse_frame
from c0re_web.render import Renderer, conversations
from protocol import messages as m

AGENTS = ("alice", "bob", "carol", "dave")


def msg(
    mid: int,
    sender: str,
    to: str,
    reply_to: int | None = None,
    thread: int | None = None,
    state: m.MessageState = "queued",
) -> m.MessageRow:
    return m.MessageRow(
        id=mid,
        from_=sender,
        to=to,
        body=f"body {mid}",
        in_reply_to=reply_to,
        thread=thread or mid,
        kind="message",
        state=state,
        attempts=0,
        broadcast=False,
        hint=None,
        question_id=None,
        created_at=1.0,
        acked_at=None,
    )


def agent(name: str, **fields: object) -> m.AgentRow:
    row = m.AgentRow(
        name=name,
        role="agent",
        model="",
        runtime="scripted",
        allowed_recipients=None,
        running=False,
        status_text="",
        status_set_at=None,
        last_seen=None,
        created_at=1.0,
        queued=0,
        leased=0,
    )
    return msgspec.structs.replace(row, **fields)  # type: ignore[arg-type]


def state(seq: int = 100, messages: list[m.MessageRow] | None = None) -> m.HiveState:
    return m.HiveState(
        id=0,
        seq=seq,
        rev="test",
        server_time=1.0,
        agents=[agent(name) for name in AGENTS],
        open_threads={name: 0 for name in AGENTS},
        questions=[],
        messages=messages or [],
        failed_reminders=[],
        threads=[],
    )


def at(seq: int, event: m.AnyEvent) -> m.AnyEvent:
    return msgspec.structs.replace(event, seq=seq, at=float(seq))


async def drain(lst: Listener) -> list[str]:
    """Every SSE message the listener has ready now."""
    out: list[str] = []
    while True:
        with anyio.move_on_after(0.01):
            frame = await lst.take()
            if frame is None:
                return out
            out.append(frame)
            continue
        return out


def batch(seq: int, pages: dict[str, str], touched: frozenset[str] = frozenset()) -> Batch:
    return Batch(
        seq=seq,
        pages={page: (Patch(f"k{seq}", html),) for page, html in pages.items()},
        touched=touched,
    )


@pytest.fixture
def hub() -> Hub:
    h = Hub(Renderer(), replay=3)
    h.seed(state())
    return h


# ------------------------------------------------------------------ conversations


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


# ------------------------------------------------------------------ drawing


async def test_a_message_is_drawn_as_one_line_and_the_counts_of_who_it_touched(hub):
    hub.mirror.apply([])
    first = hub.mirror.apply([at(101, m.MessageSent(message=msg(7, "alice", "bob")))])
    patches = {p.key: p for p in hub._dashboard(first)}
    assert set(patches) == {"conv:7", "counts:bob", "seen:alice"}  # no whole rows
    assert 'data-op="upsert"' in patches["conv:7"].html and "body 7" in patches["conv:7"].html
    assert patches["conv:7"].droppable and patches["conv:7"].shows == 1
    reply = hub.mirror.apply(
        [at(102, m.MessageSent(message=msg(8, "bob", "alice", reply_to=7, thread=7)))]
    )
    patches = {p.key: p for p in hub._dashboard(reply)}
    assert (
        'data-op="line"' in patches["line:8"].html
        and 'data-conv="conv-7"' in patches["line:8"].html
    )
    assert "body 7" not in patches["line:8"].html  # only what changed
    acked = hub.mirror.apply([at(103, m.MessageAcked(message_id=7, agent="bob"))])
    (chip,) = [p for p in hub._dashboard(acked) if p.key.startswith("mstate:")]
    assert 'id="mstate-7"' in chip.html and "delivered" in chip.html
    turn = hub.mirror.apply(
        [at(104, m.AgentStateChanged(name="bob", state="harness:turn", reason=""))]
    )
    keys = [p.key for p in hub._dashboard(turn)]
    assert keys == ["row:bob"]  # the harness state chip is part of the row itself


async def test_a_browser_that_reads_slowly_gets_the_latest_of_each_thing_not_every_step():
    lst = Listener("dashboard", since=100)
    for seq in range(101, 111):
        lst.offer(
            Batch(
                seq=seq,
                pages={"dashboard": (Patch("counts:bob", f"<p>{seq}</p>"),)},
                touched=frozenset(),
            )
        )
    (frame,) = await drain(lst)
    assert frame == "id: 110\nevent: update\ndata: <p>110</p>\n\n"


async def test_a_browser_that_falls_behind_is_never_dropped_and_is_told_what_it_missed():
    lst = Listener("dashboard", since=100)
    extra = 70
    for seq in range(101, 101 + MESSAGE_BACKLOG + extra):
        lines = (Patch(f"line:{seq}", f"<i>{seq}</i>", droppable=True, shows=1),)
        lst.offer(Batch(seq=seq, pages={"dashboard": lines}, touched=frozenset()))
    (frame,) = await drain(lst)
    assert lst.not_shown == extra
    assert f'data-not-shown="{extra}"' in frame and f"+{extra} more" in frame
    assert (
        f"<i>{100 + extra}</i>" not in frame and f"<i>{100 + MESSAGE_BACKLOG + extra}</i>" in frame
    )
    lst.offer(batch(1000, {"dashboard": "x"}))
    (after,) = await drain(lst)
    assert "not-shown" not in after  # said once, until the count changes


# ------------------------------------------------------------------ replay and resync


async def test_a_reconnecting_page_gets_what_it_missed_for_its_own_page(hub):
    hub.publish(batch(101, {"dashboard": "a"}))
    hub.publish(batch(102, {"agent:bob": "b"}, frozenset({"bob"})))
    hub.publish(batch(103, {"dashboard": "c"}))
    dash = hub.listen("dashboard", since=101)
    assert await drain(dash) == [sse_frame(103, "c")]
    bob = hub.listen("agent:bob", since=100)
    assert await drain(bob) == [sse_frame(102, "b")]
    hub.publish(batch(104, {"dashboard": "d", "agent:bob": "e"}, frozenset({"bob"})))
    assert await drain(dash) == [sse_frame(104, "d")]
    assert await drain(bob) == [sse_frame(104, "e")]


async def test_a_page_older_than_the_buffer_or_a_restart_must_reload(hub):
    for seq in (101, 102, 103, 104):
        hub.publish(batch(seq, {"dashboard": str(seq)}))
    assert hub.floor == 101
    assert await drain(hub.listen("dashboard", since=100)) == ["event: resync\ndata: 104\n\n"]
    current = hub.listen("dashboard", since=104)
    assert await drain(current) == []
    hub.seed(state(seq=5_000))  # the daemon restarted: seqs start again at its boot time
    assert await drain(current) == ["event: resync\ndata: 5000\n\n"]


async def test_a_page_whose_agent_changed_while_nobody_drew_it_must_reload(hub):
    hub.publish(batch(101, {"dashboard": "a"}, frozenset({"agent:alice"})))
    assert await drain(hub.listen("agent:alice", since=100)) == ["event: resync\ndata: 101\n\n"]
    assert await drain(hub.listen("agent:bob", since=100)) == []


async def test_an_agent_page_just_loaded_is_drawn_before_its_stream_connects(hub):
    hub.expect("carol")
    assert "carol" in hub.watched_agents()
    changes = hub.mirror.apply([at(101, m.MessageSent(message=msg(9, "alice", "carol")))])
    patches = hub._agent_page("carol", changes, None)
    assert [p.key for p in patches] == ["head", "line:9"]
    assert 'data-into="#inbox-list-carol"' in patches[1].html


async def test_before_the_first_subscription_pages_wait_and_then_are_judged():
    h = Hub(Renderer())
    early = h.listen("dashboard", since=50)
    current = h.listen("dashboard", since=90)
    assert await drain(early) == await drain(current) == []
    h.seed(state(seq=90))
    assert await drain(early) == ["event: resync\ndata: 90\n\n"]
    assert await drain(current) == []


def test_an_sse_frame_carries_the_seq_and_every_line():
    assert sse_frame(7, "<p>\none</p>") == "id: 7\nevent: update\ndata: <p>\ndata: one</p>\n\n"
    odd = sse_frame(8, "a\r\nb\rc\u2028d")
    assert odd == "id: 8\nevent: update\ndata: a\ndata: b\ndata: c\u2028d\n\n"


async def test_a_reply_and_the_ack_of_what_it_answers_in_one_batch_both_show(hub):
    """The harness sends its reply during the turn and acks the message when the turn ends,
    often within one batch: the reply is appended as a line, and the answered message's chip
    must still move to "delivered" (it stayed "queued" on the page when the appended
    conversation counted all its lines as drawn)."""
    hub.mirror.apply([])
    hub._dashboard(hub.mirror.apply([at(101, m.MessageSent(message=msg(7, "alice", "bob")))]))
    both = hub.mirror.apply(
        [
            at(102, m.MessageLeased(message_id=7, agent="bob", attempts=1)),
            at(103, m.MessageSent(message=msg(8, "bob", "alice", reply_to=7, thread=7))),
            at(104, m.MessageAcked(message_id=7, agent="bob")),
        ]
    )
    patches = {p.key: p for p in hub._dashboard(both)}
    assert 'data-op="line"' in patches["line:8"].html
    assert 'id="mstate-7"' in patches["mstate:7"].html and "delivered" in patches["mstate:7"].html
    assert "mstate:8" not in patches  # drawn with its line, in its current state


async def test_conversations_that_came_and_went_in_one_batch_are_counted_not_shown(hub):
    lst = hub.listen("dashboard", since=100)
    burst = [at(101 + i, m.MessageSent(message=msg(10 + i, "alice", "bob"))) for i in range(45)]
    await hub._apply(None, burst)  # type: ignore[arg-type]  # nothing here needs a read
    (frame,) = await drain(lst)
    assert frame.count('data-op="upsert"') == 40  # the flow shows 40 conversations
    assert lst.not_shown == 5 and 'data-not-shown="5"' in frame
    assert "body 10<" not in frame and "body 54<" in frame


async def test_a_forge_page_changed_while_nobody_drew_it_must_reload(hub):
    hub.publish(batch(101, {"dashboard": "a"}, frozenset({"forge", "mr:7", "repo:alice/site"})))
    resync = ["event: resync\ndata: 101\n\n"]
    assert await drain(hub.listen("mr:7", since=100)) == resync
    assert await drain(hub.listen("repo:alice/site", since=100)) == resync
    assert await drain(hub.listen("forge", since=100)) == resync
    assert await drain(hub.listen("mr:8", since=100)) == []
    assert await drain(hub.listen("dashboard", since=100)) != resync


async def test_a_forge_page_just_loaded_is_watched_before_its_stream_connects(hub):
    hub.expect_page("mr:7")
    hub.expect("carol")
    assert hub.watched_pages() == {"mr:7", "agent:carol"}
    assert hub.watched_agents() == {"carol"}


async def test_the_emergency_stop_redraws_its_banner_and_the_inbox_and_nothing_else(hub):
    """What its event carries is drawn at once; the inbox after its read (`GetInbox`)."""
    estop = m.EstopRow(engaged=True, at=101.0, reason="drill", parked=["alice"])
    changes = hub.mirror.apply([at(101, m.EstopChanged(estop=estop))])
    assert changes.read_needs and not changes.read_budget
    changes.needs = True  # what `_read` sets once `GetInbox` answered
    hub.mirror.inbox = [
        m.InboxItem(key="estop", kind="estop", ref=None, agent=None, at=101.0, title="stopped")
    ]
    patches = {p.key: p for p in hub._dashboard(changes)}
    assert set(patches) == {
        "section:estop-panel",
        "section:needs-you",
        "section:needs-count",
        f"toast:{hub.mirror.seq}:0",
    }
    assert "drill" in patches["section:estop-panel"].html
    assert 'data-target="#needs-count"' in patches["section:needs-count"].html
    assert ">1</template>" in patches["section:needs-count"].html
    assert 'data-kind="estop"' in patches["section:needs-you"].html
