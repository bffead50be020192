"""The daemon over real sockets: roles, identity, the registry, events, clean shutdown."""

from __future__ import annotations

import sqlite3
import threading
import time
from functools import partial

import msgspec
import pytest
import trio

from c0re_priv.daemon import run_hive
from c0re_priv.server import DaemonAlreadyRunning
from protocol import messages as m
from protocol.client import HiveClient, HiveError, SyncClient
from protocol.framing import FrameDecoder, encode_frame
from protocol.wire import encode, reply_decoder, welcome_decoder
from tests.conftest import DaemonProcess, make_config, paths_in


async def test_each_socket_speaks_its_role(hive):
    for path, role, agent in [
        (hive.paths.admin_sock, "admin", None),
        (hive.paths.web_sock, "web", None),
        (hive.paths.agent_sock("alice"), "agent", "alice"),
        (hive.paths.agent_sock("boss"), "manager", "boss"),
    ]:
        async with HiveClient.connect(str(path)) as client:
            assert (client.welcome.role, client.welcome.agent) == (role, agent)
            await client.expect(m.Ping(), m.Pong)


async def test_an_agent_socket_cannot_express_an_admin_verb(hive):
    async with HiveClient.connect(str(hive.paths.agent_sock("alice"))) as alice:
        with pytest.raises(HiveError) as err:
            await alice.call(m.AddAgent(name="mallory"))
        assert err.value.code == "forbidden"
        with pytest.raises(HiveError) as err:
            await alice.call(m.ListAgents())
        assert err.value.code == "forbidden"
    assert "mallory" not in hive.registry.agents


async def test_the_web_socket_cannot_register_agents(hive):
    async with HiveClient.connect(str(hive.paths.web_sock)) as web:
        with pytest.raises(HiveError) as err:
            await web.call(m.AddAgent(name="mallory"))
        assert err.value.code == "forbidden"


async def test_whoami_is_the_socket_identity_whatever_the_payload(hive):
    async with HiveClient.connect(str(hive.paths.agent_sock("bob"))) as bob:
        who = await bob.expect(m.Whoami(), m.Identity)
        assert (who.name, who.role, who.hyperhive_rev) == ("bob", "agent", hive.rev)
        assert who.port == hive.settings.web_port
    # a payload that claims another identity does not even decode
    async with await trio.open_unix_socket(str(hive.paths.agent_sock("bob"))) as raw:
        await raw.send_all(encode(m.Hello(protocol=m.PROTOCOL_VERSION)))
        body = msgspec.msgpack.encode({"id": 9, "req": {"op": "whoami", "name": "alice"}})
        await raw.send_all(encode_frame(body))
        decoder = FrameDecoder()
        frames: list[bytes] = []
        while len(frames) < 2:
            frames += decoder.feed(await raw.receive_some(65536))
        welcome, reply = welcome_decoder.decode(frames[0]), reply_decoder.decode(frames[1])
        assert welcome.agent == "bob"
        assert isinstance(reply, m.Error) and (reply.id, reply.code) == (9, "invalid")


async def test_server_info(admin, hive):
    info = await admin.expect(m.ServerInfo(), m.Info)
    assert info.protocol == m.PROTOCOL_VERSION
    assert info.state_dir == str(hive.paths.state_dir)
    assert info.run_dir == str(hive.paths.run_dir)
    assert info.agents == 3
    assert info.uptime_seconds >= 0


async def test_agents_are_registered_with_a_socket_and_removed_with_it(admin, hive):
    row = (await admin.expect(m.AddAgent(name="carol", model="opus"), m.AgentInfo)).agent
    assert (row.name, row.role, row.model, row.running) == ("carol", "agent", "opus", False)
    sock = hive.paths.agent_sock("carol")
    assert sock.exists()
    assert hive.paths.agent_state("carol").is_dir()
    async with HiveClient.connect(str(sock)) as carol:
        names = {a.name: a for a in (await admin.expect(m.ListAgents(), m.Agents)).agents}
        assert names["carol"].running
        await admin.expect(m.RemoveAgent(name="carol"), m.Ok)
        with pytest.raises(HiveError):
            await carol.call(m.Ping())  # its connection was closed with the socket
    assert not sock.exists()
    names = {a.name for a in (await admin.expect(m.ListAgents(), m.Agents)).agents}
    assert "carol" not in names


async def test_registry_refuses_duplicates_and_reserved_names(admin):
    with pytest.raises(HiveError) as err:
        await admin.call(m.AddAgent(name="alice"))
    assert err.value.code == "conflict"
    for reserved in ("operator", "system"):
        with pytest.raises(HiveError) as err:
            await admin.call(m.AddAgent(name=reserved))
        assert err.value.code == "invalid"
    with pytest.raises(HiveError) as err:
        await admin.call(m.RemoveAgent(name="nobody"))
    assert err.value.code == "not_found"


@pytest.mark.parametrize("bad", ["", "A", "../x", "a/b", "a" * 32, "1abc", "a b", "a\n", "a\0"])
async def test_bad_agent_names_are_invalid(admin, bad):
    # msgspec Structs do not validate on construction: the daemon is the one that refuses
    with pytest.raises(HiveError) as err:
        await admin.call(m.AddAgent(name=bad))
    assert err.value.code == "invalid"


async def test_subscribe_streams_events_and_replays_since_seq(admin, hive):
    async with admin.stream(m.Subscribe(kinds=["status_changed"])) as frames:
        first = await anext(frames)
        assert isinstance(first, m.Subscribed)
        start = first.seq
        await hive.registry.set_status("alice", "reading")
        frame = await anext(frames)
        assert isinstance(frame, m.EventFrame)
        assert isinstance(frame.event, m.StatusChanged)
        assert frame.event.text == "reading" and frame.event.seq > start
    await hive.registry.set_status("bob", "writing")
    async with admin.stream(m.Subscribe(kinds=["status_changed"], since_seq=start)) as frames:
        assert isinstance(await anext(frames), m.Subscribed)
        replayed = [await anext(frames), await anext(frames)]
        assert [f.event.name for f in replayed] == ["alice", "bob"]  # type: ignore[attr-defined]


async def test_subscribe_from_before_the_buffer_gets_resync(admin):
    async with admin.stream(m.Subscribe(since_seq=1)) as frames:
        assert isinstance(await anext(frames), m.Resync)


async def test_subscribe_rejects_unknown_kinds(admin):
    with pytest.raises(HiveError) as err:
        async with admin.stream(m.Subscribe(kinds=["nope"])) as frames:
            await anext(frames)
    assert err.value.code == "invalid"


async def test_a_second_daemon_refuses_to_steal_live_sockets(hive, config):
    with pytest.RaisesGroup(
        pytest.RaisesExc(DaemonAlreadyRunning, match="another daemon"), flatten_subgroups=True
    ):
        async with trio.open_nursery() as nursery:
            await nursery.start(partial(run_hive, config, hive.paths, handle_signals=False))


async def test_config_agents_are_registered_at_start(short_tmp):
    config = make_config(agents={"ada": {"model": "m1"}, "max": {"role": "manager"}})
    async with trio.open_nursery() as nursery:
        hive = await nursery.start(
            partial(run_hive, config, paths_in(short_tmp, config), handle_signals=False)
        )
        assert {n: r.role for n, r in hive.registry.agents.items()} == {
            "ada": "agent",
            "max": "manager",
        }
        assert hive.paths.agent_sock("ada").exists()
        nursery.cancel_scope.cancel()
    assert not hive.paths.agent_sock("ada").exists()
    assert not hive.paths.admin_sock.exists()


def test_sigterm_with_50_writes_in_flight_keeps_every_acknowledged_write(
    daemon_process: DaemonProcess,
):
    acknowledged: list[int] = []
    lock = threading.Lock()
    go = threading.Barrier(50)

    def writer(n: int) -> None:
        try:
            with SyncClient.connect(str(daemon_process.paths.admin_sock), timeout=10) as c:
                go.wait()
                sent = c.expect(m.OperatorSend(to="alice", body=f"write {n}"), m.Sent)
                with lock:
                    acknowledged.extend(sent.message_ids)
        except (HiveError, OSError, threading.BrokenBarrierError):
            pass  # cut off by the shutdown: not acknowledged, so no promise to keep

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(50)]
    for t in threads:
        t.start()
    time.sleep(0.05)
    assert daemon_process.stop() == 0
    for t in threads:
        t.join(10)
    paths = daemon_process.paths
    assert not paths.admin_sock.exists() and not paths.web_sock.exists()
    assert not paths.agent_sock("alice").exists()
    with sqlite3.connect(paths.db) as db:
        stored = {row[0] for row in db.execute("SELECT id FROM messages")}
    assert set(acknowledged) <= stored
    assert "Traceback" not in daemon_process.log()


def test_sigterm_exits_zero_and_sigint_too(daemon_process: DaemonProcess):
    assert daemon_process.stop() == 0
    daemon_process.start()
    assert daemon_process.proc is not None
    import signal

    daemon_process.proc.send_signal(signal.SIGINT)
    assert daemon_process.proc.wait(20) == 0
