"""The connection's fast paths against a real daemon: replies written straight into the socket
when they fit and in order when they do not, verbs answered from memory between two reads,
and the client's own socket I/O (`protocol.client.Wire`)."""

from __future__ import annotations

import math
import random
import socket

import msgspec
import pytest
import trio

from c0re_priv import server
from c0re_priv.server import write_now
from protocol import messages as m
from protocol.client import ConnectionLost, HiveClient
from protocol.framing import FrameDecoder
from protocol.messages import PROTOCOL_VERSION
from protocol.wire import encode, encode_call, reply_decoder, welcome_decoder
from tests.conftest import agent

BODY = "x" * 1000  # under body_max_bytes: kept in the row, not spilled to a file


async def test_a_memory_verb_is_answered_while_a_long_call_waits_on_the_same_connection(hive):
    """`Ping` is answered between two reads; a `Recv` waiting for mail on the same connection
    neither blocks it nor is ended by it."""
    async with agent(hive, "alice") as alice, trio.open_nursery() as nursery:
        waited: list[m.Deliveries] = []

        async def wait_for_mail() -> None:
            waited.append(await alice.expect(m.Recv(max=1, wait_seconds=30), m.Deliveries))

        nursery.start_soon(wait_for_mail)
        await trio.sleep(0.2)  # the Recv is in and waiting
        for _ in range(20):
            await alice.expect(m.Ping(), m.Pong)
        assert waited == []  # still waiting: the pings went past it
        async with agent(hive, "bob") as bob:
            await bob.expect(m.Send(to="alice", body="wake up"), m.Sent)
    assert [d.message.body for d in waited[0].items] == ["wake up"]


async def test_many_calls_in_flight_on_one_connection_each_get_their_own_reply(hive, admin):
    async with trio.open_nursery() as nursery:
        replies: list[m.Reply] = []

        async def one(n: int) -> None:
            reply = await admin.call(m.Ping() if n % 2 else m.ServerInfo())
            replies.append(reply)

        for n in range(400):
            nursery.start_soon(one, n)
    assert sum(isinstance(r, m.Pong) for r in replies) == 200
    assert sum(isinstance(r, m.Info) for r in replies) == 200


async def test_big_replies_to_a_peer_that_reads_late_arrive_whole_and_in_their_own_frames(
    hive, monkeypatch
):
    """Ten calls whose replies (~0.1 MB each, 1 MB in all) overflow the socket buffer while the peer does
    not read: the daemon writes what fits at once and waits for room for the rest, one frame
    at a time, so none is cut into another."""
    async with agent(hive, "bob") as bob:
        for n in range(100):
            await bob.expect(m.Send(to="alice", body=f"{n} {BODY}"), m.Sent)
    partial_writes = []

    def counting_write_now(stream: trio.SocketStream, data: bytes) -> int:
        sent = write_now(stream, data)
        if sent < len(data):
            partial_writes.append(len(data) - sent)
        return sent

    monkeypatch.setattr(server, "write_now", counting_write_now)
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(30)
        sock.connect(str(hive.paths.admin_sock))
        decoder = FrameDecoder(8 << 20)
        sock.sendall(encode(m.Hello(protocol=PROTOCOL_VERSION, client="test-late-reader")))
        calls = b"".join(
            encode_call(n, m.ListMessages(agent="alice", limit=100)) for n in range(1, 11)
        )
        frames: list[bytes] = []

        def read_all() -> None:
            while len(frames) < 11:
                data = sock.recv(1 << 16)
                assert data, "the daemon hung up"
                frames.extend(decoder.feed(data))

        sock.sendall(calls)
        await trio.sleep(1.0)  # the daemon has filled the buffer and waits for room
        await trio.to_thread.run_sync(read_all)
    assert partial_writes, "the socket buffer never filled: the slow path was not taken"
    assert isinstance(welcome_decoder.decode(frames[0]), m.Welcome)
    replies = [reply_decoder.decode(f) for f in frames[1:]]
    assert sorted(r.id for r in replies) == list(range(1, 11))
    for reply in replies:
        assert isinstance(reply, m.Messages), reply
        assert len(reply.messages) == 100
        assert {msg.body for msg in reply.messages} == {f"{n} {BODY}" for n in range(100)}


async def test_the_client_waits_out_a_full_listen_backlog(short_tmp):
    """A daemon too busy to accept: `connect` fails with EAGAIN on a full backlog (Unix
    sockets do not queue past it); the client tries again until it is accepted."""
    path = str(short_tmp / "busy.sock")
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(path)
    listener.listen(0)
    fillers = []
    try:
        for _ in range(8):  # fill the backlog
            s = socket.socket(socket.AF_UNIX)
            s.setblocking(False)
            try:
                s.connect(path)
            except BlockingIOError:
                s.close()
                break
            fillers.append(s)
        else:
            raise AssertionError("the backlog never filled")

        async def serve_late() -> None:
            await trio.sleep(0.5)
            for _ in fillers:
                listener.accept()[0].close()
            conn, _ = await trio.to_thread.run_sync(listener.accept)
            with conn:
                await trio.to_thread.run_sync(conn.recv, 4096)  # the Hello
                welcome = m.Welcome(
                    protocol=PROTOCOL_VERSION, role="admin", agent=None, server_rev="t"
                )
                conn.sendall(encode(welcome))
                body = FrameDecoder().feed(await trio.to_thread.run_sync(conn.recv, 4096))[0]
                call = msgspec.msgpack.decode(body)
                conn.sendall(encode(m.Pong(id=call["id"], server_time=0.0)))
                await trio.to_thread.run_sync(conn.recv, 4096)  # until the client hangs up

        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve_late)
            async with HiveClient.connect(path, client="test-backlog") as client:
                assert client.welcome.server_rev == "t"
                await client.expect(m.Ping(), m.Pong)
    finally:
        for s in fillers:
            s.close()
        listener.close()


async def test_calls_cancelled_while_reading_for_others_leave_every_other_call_answered(
    hive, admin
):
    """Leader/follower: the call that reads the socket may be cancelled midway (its caller
    gave up), while others wait on what it reads. Another reader takes over; every call that
    was not cancelled gets its own reply, and the connection stays usable."""
    rng = random.Random(17)
    expected = {m.Ping: m.Pong, m.ServerInfo: m.Info, m.ListAgents: m.Agents}
    answered: list[tuple[type[m.Request], m.Reply]] = []
    cancelled = 0

    async def one(req: m.Request, timeout: float | None) -> None:
        nonlocal cancelled
        with trio.move_on_after(math.inf if timeout is None else timeout) as scope:
            answered.append((type(req), await admin.call(req)))
        cancelled += scope.cancelled_caught

    async def volley() -> None:
        async with trio.open_nursery() as nursery:
            for _ in range(100):
                req = rng.choice([m.Ping(), m.ServerInfo(), m.ListAgents()])
                timeout = rng.choice([None, None, 0.0, 0.0005, 0.002])
                nursery.start_soon(one, req, timeout)
                if rng.random() < 0.3:
                    await trio.lowlevel.checkpoint()

    with trio.fail_after(60):
        for _ in range(10):
            await volley()
        async with admin.stream(m.Subscribe(kinds=["status_changed"])) as events:
            await anext(events)  # with a stream open, the reader task reads throughout
            await volley()
        for _ in range(20):  # one at a time, each reading for itself again
            assert isinstance(await admin.call(m.Ping()), m.Pong)
    assert cancelled > 0 and len(answered) > 100
    assert all(isinstance(reply, expected[req]) for req, reply in answered)
    assert admin.closed is None


async def test_a_daemon_gone_while_the_connection_idles_is_found_by_the_next_call(short_tmp):
    """Nothing in flight, nothing reads: a daemon that went away meanwhile is found by the
    next call, which fails as not sent (so the MCP link sends it again on a new
    connection), and the connection then says it is closed."""
    path = str(short_tmp / "gone.sock")
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(path)
    listener.listen(1)

    async def serve_then_go() -> None:
        conn, _ = await trio.to_thread.run_sync(listener.accept)
        with conn:
            await trio.to_thread.run_sync(conn.recv, 4096)  # the Hello
            welcome = m.Welcome(protocol=PROTOCOL_VERSION, role="admin", agent=None, server_rev="t")
            conn.sendall(encode(welcome))

    with listener, trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve_then_go)
            async with HiveClient.connect(path) as client:
                while nursery.child_tasks:  # the server has closed its end
                    await trio.sleep(0.01)
                await trio.sleep(0.05)
                assert client.closed is None  # idle: not watched
                with pytest.raises(ConnectionLost) as lost:
                    await client.call(m.Ping())
                assert lost.value.sent is False
                assert client.closed is not None
                assert (await client.wait_closed()) is client.closed
