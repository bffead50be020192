"""The broker as agents live it: direct, broadcast, threaded, leased and acked, spilled."""

from __future__ import annotations

import sqlite3
from functools import partial

import pytest
import trio

from c0re_priv.broker import BROADCAST_HINT
from c0re_priv.daemon import run_hive
from c0re_priv.hive import Hive
from protocol import messages as m
from protocol.client import HiveError, SyncClient
from tests.conftest import DaemonProcess, agent, make_config, paths_in, recv_all, state_of

# ------------------------------------------------------------------ sending


async def test_direct_message_is_queued_then_leased_then_acked(hive, admin):
    async with agent(hive, "alice") as alice, agent(hive, "bob") as bob:
        sent = await alice.expect(m.Send(to="bob", body="hello bob"), m.Sent)
        (mid,) = sent.message_ids
        assert await state_of(admin, mid) == "queued"
        got = await bob.expect(m.Recv(max=10), m.Deliveries)
        assert [d.message.body for d in got.items] == ["hello bob"]
        msg = got.items[0].message
        assert (msg.from_, msg.to, msg.kind, msg.attempts, msg.broadcast) == (
            "alice",
            "bob",
            "message",
            1,
            False,
        )
        assert await state_of(admin, mid) == "leased"
        await bob.expect(m.Ack(lease=got.items[0].lease), m.Ok)
        assert await state_of(admin, mid) == "acked"
        with pytest.raises(HiveError) as err:
            await bob.call(m.Ack(lease=got.items[0].lease))
        assert err.value.code == "not_found"


async def test_only_the_recipient_can_ack(hive):
    async with agent(hive, "alice") as alice, agent(hive, "bob") as bob:
        await alice.expect(m.Send(to="bob", body="x"), m.Sent)
        lease = (await bob.expect(m.Recv(), m.Deliveries)).items[0].lease
        with pytest.raises(HiveError) as err:
            await alice.call(m.Ack(lease=lease))
        assert err.value.code == "not_found"
        await bob.expect(m.Ack(lease=lease), m.Ok)


async def test_broadcast_reaches_every_other_agent_with_the_hint(hive):
    async with (
        agent(hive, "alice") as alice,
        agent(hive, "bob") as bob,
        agent(hive, "boss") as boss,
    ):
        sent = await alice.expect(m.Send(to="*", body="standup in 5"), m.Sent)
        assert len(sent.message_ids) == 2
        for client in (bob, boss):
            (msg,) = await recv_all(client)
            assert (msg.body, msg.broadcast, msg.hint) == ("standup in 5", True, BROADCAST_HINT)
        assert await recv_all(alice) == []


async def test_unknown_and_disallowed_recipients_are_named(short_tmp):
    config = make_config(agents={"alice": {"allowed_recipients": ["bob"]}, "bob": {}, "carl": {}})
    async with trio.open_nursery() as nursery:
        hive = await nursery.start(
            partial(run_hive, config, paths_in(short_tmp, config), handle_signals=False)
        )
        async with agent(hive, "alice") as alice:
            with pytest.raises(HiveError) as err:
                await alice.call(m.Send(to="zed", body="hi"))
            assert err.value.code == "not_found" and "'zed'" in err.value.message
            with pytest.raises(HiveError) as err:
                await alice.call(m.Send(to="carl", body="hi"))
            assert err.value.code == "forbidden" and "'carl'" in err.value.message
            with pytest.raises(HiveError) as err:
                await alice.call(m.Send(to="*", body="hi"))
            assert err.value.code == "forbidden"
            await alice.expect(m.Send(to="bob", body="hi"), m.Sent)
            await alice.expect(
                m.Send(to="operator", body="the operator is always reachable"), m.Sent
            )
        nursery.cancel_scope.cancel()


async def test_in_reply_to_threads_visible_messages_and_ignores_the_rest(hive):
    async with (
        agent(hive, "alice") as alice,
        agent(hive, "bob") as bob,
        agent(hive, "boss") as boss,
    ):
        (root,) = (await alice.expect(m.Send(to="bob", body="q?"), m.Sent)).message_ids
        (secret,) = (await alice.expect(m.Send(to="boss", body="private"), m.Sent)).message_ids
        (reply,) = (
            await bob.expect(m.Send(to="alice", body="a!", in_reply_to=root), m.Sent)
        ).message_ids
        got = {msg.id: msg for msg in await recv_all(alice)}
        assert (got[reply].in_reply_to, got[reply].thread) == (root, root)
        # bob cannot see alice→boss, an unknown id, or a huge id: each becomes a new root
        for parent in (secret, 999_999):
            (mid,) = (
                await bob.expect(m.Send(to="alice", body="x", in_reply_to=parent), m.Sent)
            ).message_ids
            (msg,) = await recv_all(alice)
            assert (msg.in_reply_to, msg.thread) == (None, mid)
        await recv_all(boss)


def bodies(reply: m.Reply) -> list[str]:
    if isinstance(reply, m.Deliveries):
        return [d.message.body for d in reply.items]
    assert isinstance(reply, m.Taken)
    return [msg.body for msg in reply.messages]


@pytest.mark.parametrize("verb", [m.Recv, m.Take])
async def test_recv_and_take_wait_for_the_first_message_up_to_wait_seconds(hive, verb):
    async with agent(hive, "alice") as alice, agent(hive, "bob") as bob:
        with trio.fail_after(5):
            assert bodies(await bob.call(verb(wait_seconds=0))) == []

            async def later() -> None:
                await trio.sleep(0.2)
                await alice.expect(m.Send(to="bob", body="woke you"), m.Sent)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(later)
                got = await bob.call(verb(wait_seconds=30))
            assert bodies(got) == ["woke you"]


async def test_a_lease_says_how_many_more_are_waiting(hive):
    async with agent(hive, "alice") as alice, agent(hive, "bob") as bob:
        for n in range(4):
            await alice.expect(m.Send(to="bob", body=f"m{n}"), m.Sent)
        got = await bob.expect(m.Recv(max=1), m.Deliveries)
        assert (len(got.items), got.more) == (1, 3)
        got = await bob.expect(m.Recv(max=10), m.Deliveries)
        assert (len(got.items), got.more) == (3, 0)


async def test_take_delivers_in_one_step_and_says_how_many_more(hive, admin):
    """`Take` is a `Recv` and an `Ack` of each in one transaction: the messages come back
    already acked, oldest first, and the events say leased then acked, as for a lease."""
    async with agent(hive, "alice") as alice, agent(hive, "bob") as bob:
        async with admin.stream(m.Subscribe(kinds=["message_leased", "message_acked"])) as ev:
            await anext(ev)  # Subscribed
            ids = [
                (await alice.expect(m.Send(to="bob", body=f"m{n}"), m.Sent)).message_ids[0]
                for n in range(3)
            ]
            got = await bob.expect(m.Take(max=2), m.Taken)
            assert [(msg.body, msg.state, msg.attempts) for msg in got.messages] == [
                ("m0", "acked", 1),
                ("m1", "acked", 1),
            ]
            assert got.more == 1 and all(msg.acked_at for msg in got.messages)
            assert [await state_of(admin, mid) for mid in ids] == ["acked", "acked", "queued"]
            seen = []
            with trio.fail_after(5):
                while len(seen) < 4:
                    frame = await anext(ev)
                    assert isinstance(frame, m.EventFrame)
                    seen.append((type(frame.event).__name__, frame.event.message_id))
            assert seen == [
                ("MessageLeased", ids[0]),
                ("MessageAcked", ids[0]),
                ("MessageLeased", ids[1]),
                ("MessageAcked", ids[1]),
            ]
        assert [msg.body for msg in (await bob.expect(m.Take(max=10), m.Taken)).messages] == ["m2"]
        assert (await bob.expect(m.Take(max=10), m.Taken)).messages == []
        assert await recv_all(bob) == []  # nothing is left leased or queued


async def test_wait_for_work_streams_one_message_at_a_time(hive):
    async with agent(hive, "alice") as alice, agent(hive, "bob") as bob:
        await alice.expect(m.Send(to="bob", body="first"), m.Sent)
        await alice.expect(m.Send(to="bob", body="second"), m.Sent)
        with trio.fail_after(5):
            async with bob.stream(m.WaitForWork()) as work:
                one = await anext(work)
                assert isinstance(one, m.Work) and one.delivery.message.body == "first"
                assert one.more == 1
                with trio.move_on_after(0.2) as idle:
                    await anext(work)  # the next one only comes after the ack
                assert idle.cancelled_caught
                await bob.expect(m.Ack(lease=one.delivery.lease), m.Ok)
                two = await anext(work)
                assert isinstance(two, m.Work) and two.delivery.message.body == "second"
                await bob.expect(m.Ack(lease=two.delivery.lease), m.Ok)
                await alice.expect(m.Send(to="bob", body="third"), m.Sent)
                three = await anext(work)
                assert isinstance(three, m.Work) and three.delivery.message.body == "third"


# ------------------------------------------------------------------ at-least-once


async def test_a_dropped_connection_puts_its_leases_back(hive, admin):
    async with agent(hive, "alice") as alice:
        (mid,) = (await alice.expect(m.Send(to="bob", body="careful"), m.Sent)).message_ids
    async with admin.stream(m.Subscribe(kinds=["message_requeued"])) as events:
        await anext(events)  # Subscribed
        async with agent(hive, "bob") as bob:
            await bob.expect(m.Recv(), m.Deliveries)
            assert await state_of(admin, mid) == "leased"
        with trio.fail_after(5):
            requeued = await anext(events)
    assert isinstance(requeued, m.EventFrame) and isinstance(requeued.event, m.MessageRequeued)
    assert (requeued.event.message_id, requeued.event.reason) == (mid, "connection closed")
    # a harness that died mid-turn is a failed attempt: the message waits out a backoff
    assert requeued.event.not_before is not None
    assert await state_of(admin, mid) == "queued"
    async with agent(hive, "bob") as bob:
        assert await recv_all(bob) == []
        with trio.fail_after(10):
            got = await bob.expect(m.Recv(wait_seconds=10), m.Deliveries)
        (msg,) = [d.message for d in got.items]
        assert (msg.id, msg.attempts, msg.failures) == (mid, 2, 1)
        assert msg.last_error == "connection closed"


async def test_an_expired_lease_is_queued_again(short_tmp):
    config = make_config(lease_seconds=0.2, agents={"alice": {}, "bob": {}})
    async with trio.open_nursery() as nursery:
        hive = await nursery.start(
            partial(run_hive, config, paths_in(short_tmp, config), handle_signals=False)
        )
        async with agent(hive, "alice") as alice, agent(hive, "bob") as bob:
            await alice.expect(m.Send(to="bob", body="slow"), m.Sent)
            first = (await bob.expect(m.Recv(), m.Deliveries)).items[0]
            with trio.fail_after(5):
                again = await bob.expect(m.Recv(wait_seconds=5), m.Deliveries)
            assert again.items[0].message.id == first.message.id
            assert again.items[0].message.attempts == 2
            with pytest.raises(HiveError):
                await bob.call(m.Ack(lease=first.lease))  # the old lease is dead
            await bob.expect(m.Ack(lease=again.items[0].lease), m.Ok)
        nursery.cancel_scope.cancel()


def test_kill_9_between_lease_and_ack_delivers_again_after_restart(daemon_process: DaemonProcess):
    paths = daemon_process.paths
    with SyncClient.connect(str(paths.agent_sock("alice"))) as alice:
        (mid,) = alice.expect(m.Send(to="bob", body="survive"), m.Sent).message_ids
    with SyncClient.connect(str(paths.agent_sock("bob"))) as bob:
        got = bob.expect(m.Recv(), m.Deliveries)
        assert got.items[0].message.id == mid
        daemon_process.kill()
    daemon_process.start()
    with SyncClient.connect(str(paths.agent_sock("bob"))) as bob:
        got = bob.expect(m.Recv(), m.Deliveries)
        assert [(d.message.id, d.message.body, d.message.attempts) for d in got.items] == [
            (mid, "survive", 2)
        ]
        bob.expect(m.Ack(lease=got.items[0].lease), m.Ok)
    with sqlite3.connect(paths.db) as db:
        assert (
            db.execute("SELECT state FROM messages WHERE id = ?", (mid,)).fetchone()[0] == "acked"
        )


def test_kill_9_after_an_ack_or_a_take_keeps_them_although_neither_waited_for_an_fsync(
    daemon_process: DaemonProcess,
):
    """`Ack` and `Take` answer before an fsync (`durable=False`): a crash of the daemon alone
    must still keep them, since their WAL frames are written before the reply, and only a
    power cut may undo them. Both messages are acked after the restart, none handed out."""
    paths = daemon_process.paths
    with SyncClient.connect(str(paths.agent_sock("alice"))) as alice:
        (acked,) = alice.expect(m.Send(to="bob", body="ack me"), m.Sent).message_ids
        (taken,) = alice.expect(m.Send(to="bob", body="take me"), m.Sent).message_ids
    with SyncClient.connect(str(paths.agent_sock("bob"))) as bob:
        got = bob.expect(m.Recv(), m.Deliveries)
        assert got.items[0].message.id == acked
        bob.expect(m.Ack(lease=got.items[0].lease), m.Ok)
        assert [msg.id for msg in bob.expect(m.Take(max=10), m.Taken).messages] == [taken]
        daemon_process.kill()
    daemon_process.start()
    with SyncClient.connect(str(paths.agent_sock("bob"))) as bob:
        assert bob.expect(m.Recv(max=10), m.Deliveries).items == []
    with sqlite3.connect(paths.db) as db:
        states = dict(db.execute("SELECT id, state FROM messages").fetchall())
    assert states == {acked: "acked", taken: "acked"}


# ------------------------------------------------------------------ oversize bodies


def auto_msg_files(hive: Hive, sender: str) -> list:
    return sorted((hive.paths.agent_state(sender) / "auto-msg").glob("*.md"))


async def test_an_oversize_body_goes_to_one_file_and_the_recipient_gets_a_pointer(hive):
    body = "line of context\n" * 320  # 5 KiB
    async with agent(hive, "alice") as alice, agent(hive, "bob") as bob:
        sent = await alice.expect(m.Send(to="bob", body=body), m.Sent)
        (path,) = auto_msg_files(hive, "alice")
        assert sent.body_file == str(path)
        assert path.read_text() == body
        assert path.stat().st_mode & 0o777 == 0o644
        (msg,) = await recv_all(bob)
        assert msg.body.endswith(f"— full body at {path}")
        assert len(msg.body.encode()) < 1024


async def test_an_oversize_broadcast_writes_one_file_for_all(hive):
    body = "x" * 5 * 1024
    async with (
        agent(hive, "alice") as alice,
        agent(hive, "bob") as bob,
        agent(hive, "boss") as boss,
    ):
        sent = await alice.expect(m.Send(to="*", body=body), m.Sent)
        assert len(sent.message_ids) == 2
        (path,) = auto_msg_files(hive, "alice")
        assert path.read_text() == body
        for client in (bob, boss):
            (msg,) = await recv_all(client)
            assert str(path) in msg.body


async def test_a_symlinked_auto_msg_dir_is_refused_not_followed(hive, short_tmp):
    outside = short_tmp / "outside"
    outside.mkdir()
    (hive.paths.agent_state("alice") / "auto-msg").symlink_to(outside)
    async with agent(hive, "alice") as alice:
        with pytest.raises(HiveError) as err:
            await alice.call(m.Send(to="bob", body="y" * 4096))
        assert err.value.code == "invalid" and "symlink" in err.value.message
    assert list(outside.iterdir()) == []


# ------------------------------------------------------------------ questions


# ------------------------------------------------------------------ open threads and status


async def test_set_status_shows_in_the_agent_rows(hive, admin):
    async with agent(hive, "alice") as alice:
        await alice.expect(m.SetStatus(text="refactoring the broker"), m.Ok)
    rows = {a.name: a for a in (await admin.expect(m.ListAgents(), m.Agents)).agents}
    assert rows["alice"].status_text == "refactoring the broker"
    assert rows["alice"].status_set_at is not None
    assert rows["alice"].last_seen is not None


async def test_operator_send_and_list_messages_filters(hive, admin):
    (m1,) = (await admin.expect(m.OperatorSend(to="alice", body="to alice"), m.Sent)).message_ids
    await admin.expect(m.OperatorSend(to="bob", body="to bob"), m.Sent)
    (m3,) = (
        await admin.expect(m.OperatorSend(to="alice", body="again", in_reply_to=m1), m.Sent)
    ).message_ids
    alice_rows = (await admin.expect(m.ListMessages(agent="alice"), m.Messages)).messages
    assert [r.id for r in alice_rows] == [m3, m1]
    thread = (await admin.expect(m.ListMessages(thread=m1), m.Messages)).messages
    assert [r.id for r in thread] == [m3, m1]
    older = (await admin.expect(m.ListMessages(before=m3, limit=1), m.Messages)).messages
    assert len(older) == 1 and older[0].id < m3


async def test_a_lease_whose_caller_is_cancelled_mid_write_is_still_owned_and_released(hive):
    """A cancelled `lease` once left its message leased by nobody until the lease expired
    (a rebuild right after an unpause lost a queued message for 15 minutes). Cancel the
    caller after every number of scheduler steps: each time, the message is either still
    queued or leased by a holder that knows it and can hand it back."""
    from c0re_priv.broker import LeaseHolder

    await hive.broker.send("alice", "bob", "do not strand me")
    owned = 0
    for steps in range(12):
        holder = LeaseHolder("bob")
        with trio.CancelScope() as scope:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(hive.broker.lease, holder, 1)
                for _ in range(steps):
                    await trio.lowlevel.checkpoint()
                scope.cancel()
        (row,) = await hive.broker.list_messages("bob", None, 10, None)
        if holder.leases:
            owned += 1
            assert row.state == "leased"
            assert await hive.broker.release(list(holder.leases), "connection closed") == 1
        else:
            assert row.state == "queued", f"leased by nobody after {steps} steps"
    assert owned > 0, "no cancellation landed while the lease was being written"


async def test_a_backed_off_message_whose_time_passed_while_leasing_is_not_waited_for(hive):
    """The broker reads when the first backed-off message is ready, then waits for that
    moment; on a loaded machine it may have passed by then: the wait is zero, not an error."""
    with trio.fail_after(2):
        await hive.broker._wait_for_inbox(trio.Event(), hive.now() - 5.0)
