"""Federation over a real `nats-server -js` on loopback: hives that talk (docs/federation.md).

Each test starts its own NATS server (random port, own store dir, one user per hive with
the permissions of docs/federation.md) and real daemons with real sqlite, in this trio run
or as subprocesses. Agents are played through their own sockets, as the harness would.
"""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import msgspec
import nats as nats_py
import pytest
import trio

from c0re_priv.config import FederationSettings, HiveConfig
from c0re_priv.daemon import run_hive
from c0re_priv.hive import Hive
from c0re_priv.nats_link import provision_federation
from protocol import messages as m
from protocol.client import HiveClient, HiveError, SyncClient
from protocol.federation import Envelope, FedMessage, encode
from tests.conftest import DaemonProcess, make_config, paths_in
from tests.natsd import NatsServer, make_certificates

HIVES = ["alpha", "beta", "gamma"]
T = TypeVar("T")


@pytest.fixture
def nats(short_tmp: Path):
    root = short_tmp / "nats"
    root.mkdir()
    server = NatsServer(root, HIVES)
    server.start()
    try:
        yield server
    finally:
        server.kill()


def provision(server: NatsServer, hives: list[str] = HIVES) -> list[str]:
    admin = FederationSettings(
        hive="admin", url=server.url, user="admin", password_file=str(server.password_file("admin"))
    )
    return asyncio.run(provision_federation(admin, hives, 1.0))


def fed_settings(server: NatsServer, hive: str, **extra: object) -> FederationSettings:
    return FederationSettings(
        hive=hive,
        url=server.url,
        user=hive,
        password_file=str(server.password_file(hive)),
        provision=False,
        retry_backoff_seconds=0.2,
        retry_backoff_max_seconds=2.0,
        **extra,  # type: ignore[arg-type]
    )


def hive_config(
    server: NatsServer, hive: str, agents: dict[str, dict[str, object]], **extra: object
) -> HiveConfig:
    config = make_config(agents=agents)
    config.federation = fed_settings(server, hive, **extra)
    return config


async def start_hive(nursery: trio.Nursery, root: Path, config: HiveConfig) -> Hive:
    root.mkdir(exist_ok=True)
    return await nursery.start(
        partial(run_hive, config, paths_in(root, config), handle_signals=False)
    )


@asynccontextmanager
async def agent(hive: Hive, name: str) -> AsyncIterator[HiveClient]:
    async with HiveClient.connect(str(hive.paths.agent_sock(name)), client=f"test-{name}") as c:
        yield c


@asynccontextmanager
async def admin_of(hive: Hive) -> AsyncIterator[HiveClient]:
    async with HiveClient.connect(str(hive.paths.admin_sock), client="test-admin") as c:
        yield c


async def until(
    check: Callable[[], Awaitable[bool]], timeout: float = 20.0, what: str = ""
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await check():
            return
        await trio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what or check}")


async def knows(hive: Hive, address: str) -> bool:
    async with admin_of(hive) as a:
        got = await a.expect(m.ListAgents(include_remote=True), m.Agents)
    return any(r.address == address for r in got.remote)


async def recv(client: HiveClient, wait: float = 10.0) -> list[m.MessageRow]:
    got = await client.expect(m.Recv(max=100, wait_seconds=wait), m.Deliveries)
    for d in got.items:
        await client.expect(m.Ack(lease=d.lease), m.Ok)
    return [d.message for d in got.items]


async def message(hive: Hive, message_id: int) -> m.MessageRow:
    async with admin_of(hive) as a:
        rows = (await a.expect(m.ListMessages(limit=1000), m.Messages)).messages
    return next(r for r in rows if r.id == message_id)


@pytest.fixture
async def pair(nursery: trio.Nursery, short_tmp: Path, nats: NatsServer) -> tuple[Hive, Hive]:
    await trio.to_thread.run_sync(provision, nats)
    alpha = await start_hive(
        nursery,
        short_tmp / "a",
        hive_config(nats, "alpha", {"alice": {}, "ann": {"allowed_recipients": ["alice"]}}),
    )
    beta = await start_hive(
        nursery,
        short_tmp / "b",
        hive_config(nats, "beta", {"bob": {}, "boss": {"role": "manager"}}),
    )
    await until(lambda: knows(alpha, "bob@beta"), what="alpha to hear of bob@beta")
    await until(lambda: knows(beta, "alice@alpha"), what="beta to hear of alice@alpha")
    return alpha, beta


async def test_a_message_taken_in_one_step_sends_its_receipt_home(pair):
    """`Take` (what the MCP `recv` tools use) acks in the transaction that picks the message,
    and the receipt goes back to the sender's hive as after an `Ack`."""
    alpha, beta = pair
    async with agent(alpha, "alice") as alice, agent(beta, "bob") as bob:
        (mid,) = (await alice.expect(m.Send(to="bob@beta", body="take me"), m.Sent)).message_ids
        got = await bob.expect(m.Take(max=10, wait_seconds=10), m.Taken)
        assert [(g.from_, g.body, g.state) for g in got.messages] == [
            ("alice@alpha", "take me", "acked")
        ]

        async def acked() -> bool:
            return (await message(alpha, mid)).state == "acked"

        await until(acked, what="the receipt")


async def test_a_message_crosses_hives_is_acked_there_and_the_reply_keeps_the_thread(pair):
    alpha, beta = pair
    async with agent(alpha, "alice") as alice, agent(beta, "bob") as bob:
        sent = await alice.expect(m.Send(to="bob@beta", body="hello from alpha"), m.Sent)
        (mid,) = sent.message_ids
        got = await recv(bob)
        assert [(g.from_, g.to, g.body, g.kind) for g in got] == [
            ("alice@alpha", "bob", "hello from alpha", "message")
        ]

        async def acked() -> bool:
            return (await message(alpha, mid)).state == "acked"

        await until(acked, what="the receipt")
        # beta remembers the envelope's id, and which of its rows it became
        inbox = rows(beta.paths.db, "SELECT origin, kind, message_id FROM federation_inbox")
        assert inbox == [("alpha", "message", got[0].id)]
        reply = await bob.expect(
            m.Send(to="alice@alpha", body="hi alice", in_reply_to=got[0].id), m.Sent
        )
        back = await recv(alice)
        assert [(b.from_, b.body, b.in_reply_to, b.thread) for b in back] == [
            ("bob@beta", "hi alice", mid, mid)
        ]
        assert reply.message_ids


async def test_a_question_crosses_and_its_answer_comes_back(pair):
    alpha, beta = pair
    async with agent(alpha, "alice") as alice, agent(beta, "bob") as bob:
        asked = await alice.expect(
            m.Ask(target="bob@beta", question="ship it?", options=["yes", "no"], ttl_seconds=600),
            m.Asked,
        )
        (q,) = await recv(bob)
        assert (q.kind, q.from_) == ("question", "alice@alpha")
        assert "ship it?" in q.body and "yes | no" in q.body
        assert q.question_id is not None
        async with admin_of(beta) as b:
            theirs = (await b.expect(m.ListQuestions(target="bob"), m.Questions)).questions
        assert [(t.asker, t.target, t.state, t.expires_at is not None) for t in theirs] == [
            ("alice@alpha", "bob", "open", True)
        ]
        await bob.expect(m.Answer(question_id=q.question_id, answer="yes"), m.Ok)
        (answer,) = await recv(alice)
        assert (answer.kind, answer.from_, answer.question_id) == (
            "answer",
            "bob@beta",
            asked.question_id,
        )
        assert answer.in_reply_to == asked.message_id and answer.body.endswith(": yes")
        async with admin_of(alpha) as a:
            mine = (
                await a.expect(m.ListQuestions(target="bob@beta", include_closed=True), m.Questions)
            ).questions
        assert [(x.state, x.answer) for x in mine] == [("answered", "yes")]
        # answering twice in beta is refused there and nothing more crosses
        with pytest.raises(HiveError) as err:
            await bob.call(m.Answer(question_id=q.question_id, answer="no"))
        assert err.value.code == "conflict"


async def test_a_withdrawn_question_is_closed_in_the_target_hive(pair):
    alpha, beta = pair
    async with agent(alpha, "alice") as alice, agent(beta, "bob") as bob:
        asked = await alice.expect(m.Ask(target="bob@beta", question="still there?"), m.Asked)
        (q,) = await recv(bob)
        await alice.expect(m.CancelAsk(id=asked.question_id), m.Ok)

        async def closed() -> bool:
            async with admin_of(beta) as b:
                rows = (
                    await b.expect(m.ListQuestions(target="bob", include_closed=True), m.Questions)
                ).questions
            return [r.state for r in rows] == ["cancelled"]

        await until(closed, what="beta to close the withdrawn question")
        with pytest.raises(HiveError) as err:
            await bob.call(m.Answer(question_id=q.question_id or 0, answer="yes"))
        assert err.value.code == "conflict"


async def test_the_operators_talk_across_hives(pair):
    alpha, beta = pair
    async with admin_of(alpha) as a, admin_of(beta) as b, agent(beta, "bob") as bob:
        sent = await a.expect(m.OperatorSend(to="bob@beta", body="from alpha's operator"), m.Sent)
        (got,) = await recv(bob)
        assert got.from_ == "operator@alpha"
        await b.expect(m.OperatorSend(to="operator@alpha", body="hello colleague"), m.Sent)

        async def arrived() -> bool:
            rows = (await a.expect(m.ListMessages(agent="operator@beta"), m.Messages)).messages
            return any(r.body == "hello colleague" and r.state == "acked" for r in rows)

        await until(arrived, what="the operator's message to arrive acked on the dashboard")

        # the operator's inbox acks on arrival, and the receipt flows back too
        async def receipted() -> bool:
            rows = (await b.expect(m.ListMessages(agent="operator@alpha"), m.Messages)).messages
            return [r.state for r in rows if r.to == "operator@alpha"] == ["acked"]

        await until(receipted, what="the receipt of the operator's message")
        assert sent.message_ids


async def test_unknown_hives_and_agents_are_refused_at_send(pair):
    alpha, _ = pair
    async with agent(alpha, "alice") as alice:
        for to, code in (
            ("bob@nowhere", "not_found"),
            ("nobody@beta", "not_found"),
            ("bob@Beta", "invalid"),
            ("a@b@c", "invalid"),
            ("*@beta", "invalid"),
        ):
            with pytest.raises(HiveError) as err:
                await alice.call(m.Send(to=to, body="x"))
            assert err.value.code == code, to
        # this hive's own name is just local
        sent = await alice.expect(m.Send(to="ann@alpha", body="local after all"), m.Sent)
        assert (await message(alpha, sent.message_ids[0])).to == "ann"


async def test_allowed_recipients_govern_remote_names(nursery, short_tmp, nats):
    await trio.to_thread.run_sync(provision, nats)
    agents = {
        "only-local": {"allowed_recipients": ["*"]},
        "one-remote": {"allowed_recipients": ["bob@beta"]},
        "whole-hive": {"allowed_recipients": ["*@beta"]},
        "anywhere": {"allowed_recipients": ["*@*"]},
    }
    alpha = await start_hive(nursery, short_tmp / "a", hive_config(nats, "alpha", agents))
    beta = await start_hive(
        nursery, short_tmp / "b", hive_config(nats, "beta", {"bob": {}, "carol": {}})
    )
    await until(lambda: knows(alpha, "carol@beta"))
    expected = {
        ("only-local", "bob@beta"): False,
        ("one-remote", "bob@beta"): True,
        ("one-remote", "carol@beta"): False,
        ("whole-hive", "carol@beta"): True,
        ("whole-hive", "operator@beta"): True,
        ("anywhere", "carol@beta"): True,
    }
    for (sender, to), allowed in expected.items():
        async with agent(alpha, sender) as c:
            if allowed:
                await c.expect(m.Send(to=to, body=f"{sender} to {to}"), m.Sent)
            else:
                with pytest.raises(HiveError) as err:
                    await c.call(m.Send(to=to, body="x"))
                assert err.value.code == "forbidden"
    async with agent(beta, "carol") as carol:
        got = []
        while len(got) < 2:
            got += await recv(carol)
    assert sorted(g.from_ for g in got) == ["anywhere@alpha", "whole-hive@alpha"]


async def test_a_message_for_an_agent_the_other_hive_lost_bounces_to_its_sender(pair):
    alpha, beta = pair
    # between an agent's removal and its hive's next status, alpha's roster is stale:
    # played here by a name alpha believes in and beta never had
    assert alpha.federation is not None
    alpha.federation.directory["beta"].add("ghost")
    async with agent(alpha, "alice") as alice:
        sent = await alice.expect(m.Send(to="ghost@beta", body="are you there?"), m.Sent)
        (notice,) = await recv(alice, wait=15)
        assert notice.kind == "system" and "not delivered" in notice.body
        assert notice.in_reply_to == sent.message_ids[0]
        row = await message(alpha, sent.message_ids[0])
        assert row.state == "dropped"
        assert "no agent named 'ghost'" in (row.last_error or "")
        asked = await alice.expect(m.Ask(target="ghost@beta", question="hello?"), m.Asked)
        (answer,) = await recv(alice, wait=15)
        assert (answer.kind, answer.question_id) == ("answer", asked.question_id)
        assert "[undeliverable:" in answer.body
    async with admin_of(beta) as b:
        rows = (await b.expect(m.ListMessages(limit=100), m.Messages)).messages
    assert not any("ghost" in r.to for r in rows)


async def test_the_operator_sees_the_link_and_the_remote_agents(pair):
    alpha, _ = pair
    async with admin_of(alpha) as a:
        fed = (await a.expect(m.FederationStatus(), m.Federation)).federation
        assert (fed.enabled, fed.hive, fed.link) == (True, "alpha", "connected")
        assert [(h.hive, h.agents) for h in fed.hives] == [("beta", 2)]
        agents = await a.expect(m.ListAgents(include_remote=True), m.Agents)
        assert [r.address for r in agents.remote] == ["bob@beta", "boss@beta"]
        assert {r.role for r in agents.remote} == {"agent", "manager"}
        plain = await a.expect(m.ListAgents(), m.Agents)
        assert plain.remote == []
        state = await a.expect(m.Snapshot(), m.HiveState)
        assert state.federation is not None and state.federation.link == "connected"
        assert [r.address for r in state.remote_agents] == ["bob@beta", "boss@beta"]


async def test_a_status_line_set_in_one_hive_shows_in_the_other(pair):
    alpha, beta = pair
    async with agent(beta, "bob") as bob:
        await bob.expect(m.SetStatus(text="reviewing PR 12"), m.Ok)

    async def shows() -> bool:
        async with admin_of(alpha) as a:
            got = await a.expect(m.ListAgents(include_remote=True), m.Agents)
        return any(
            r.address == "bob@beta" and r.status_text == "reviewing PR 12" for r in got.remote
        )

    await until(shows, what="bob's status line in alpha")


async def test_a_hive_without_federation_refuses_remote_addresses(hive):
    async with HiveClient.connect(str(hive.paths.agent_sock("alice"))) as alice:
        with pytest.raises(HiveError) as err:
            await alice.call(m.Send(to="bob@beta", body="x"))
        assert err.value.code == "invalid" and "not federated" in err.value.message
    async with HiveClient.connect(str(hive.paths.admin_sock)) as a:
        fed = (await a.expect(m.FederationStatus(), m.Federation)).federation
        assert (fed.enabled, fed.link) == (False, "disabled")


async def test_partition_sends_wait_in_the_outbox_and_flow_when_nats_comes_back(pair, nats):
    alpha, beta = pair
    async with agent(alpha, "alice") as alice, agent(beta, "bob") as bob:
        await alice.expect(m.Send(to="bob@beta", body="before"), m.Sent)
        assert [g.body for g in await recv(bob)] == ["before"]
        await trio.to_thread.run_sync(nats.stop)

        async def link_is(state: str) -> bool:
            return alpha.federation is not None and alpha.federation.link == state

        await until(lambda: link_is("disconnected"), what="alpha to notice the partition")
        ids = []
        for i in range(20):
            ids += (
                await alice.expect(m.Send(to="bob@beta", body=f"during {i}"), m.Sent)
            ).message_ids
        # local delivery goes on untouched meanwhile
        await alice.expect(m.Send(to="ann", body="still local"), m.Sent)
        async with agent(alpha, "ann") as ann:
            assert [g.body for g in await recv(ann)] == ["still local"]
        async with admin_of(alpha) as a:
            fed = (await a.expect(m.FederationStatus(), m.Federation)).federation
        assert fed.link == "disconnected" and fed.outbox_pending >= 20
        assert {(await message(alpha, i)).state for i in ids} == {"queued"}
        await trio.sleep(1.5)  # the publisher backs off meanwhile
        await trio.to_thread.run_sync(nats.start)
        got: list[m.MessageRow] = []
        with trio.fail_after(30):
            while len(got) < 20:
                got += await recv(bob)
        assert [g.body for g in got] == [f"during {i}" for i in range(20)]

        async def all_acked() -> bool:
            return {(await message(alpha, i)).state for i in ids} == {"acked"}

        await until(all_acked, what="the receipts after healing")


# ------------------------------------------------------------------ kill -9, for real


def daemon_config(server: NatsServer, hive: str, agents: list[str]) -> str:
    lines = ["[hive]", "autostart = false", ""]
    for name in agents:
        lines += [f"[agents.{name}]", ""]
    lines += [
        "[federation]",
        f'hive = "{hive}"',
        f'url = "{server.url}"',
        f'user = "{hive}"',
        f'password_file = "{server.password_file(hive)}"',
        "provision = false",
        "retry_backoff_seconds = 0.2",
        "retry_backoff_max_seconds = 1.0",
        "ack_wait_seconds = 2",
        "",
    ]
    return "\n".join(lines)


def make_daemon(root: Path, server: NatsServer, hive: str, agents: list[str]) -> DaemonProcess:
    root.mkdir()
    config_file = root / "hive.toml"
    config_file.write_text(daemon_config(server, hive, agents))
    return DaemonProcess(root, config_file)


def sync_agent(daemon: DaemonProcess, name: str) -> SyncClient:
    return SyncClient.connect(str(daemon.paths.agent_sock(name)), client=f"test-{name}", timeout=5)


def wait_for(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def knows_sync(daemon: DaemonProcess, address: str) -> bool:
    try:
        with SyncClient.connect(str(daemon.paths.admin_sock), timeout=5) as a:
            got = a.expect(m.ListAgents(include_remote=True), m.Agents)
    except (HiveError, OSError):
        return False
    return any(r.address == address for r in got.remote)


def rows(db: Path, sql: str, *params: object) -> list[tuple[object, ...]]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        return [tuple(r) for r in conn.execute(sql, params)]
    finally:
        conn.close()


def test_kill_9_of_either_hive_and_of_nats_mid_traffic_loses_nothing_and_doubles_nothing(
    short_tmp: Path, nats: NatsServer
):
    chaos(short_tmp, nats, cycles=1)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_ten_rounds_of_kill_9_lose_nothing_and_double_nothing(short_tmp: Path, nats: NatsServer):
    chaos(short_tmp, nats, cycles=10)


def chaos(short_tmp: Path, nats: NatsServer, cycles: int) -> None:
    """Traffic alice@alpha → bob@beta while alpha, beta and NATS are each SIGKILLed and
    restarted `cycles` times; then every committed message is in beta exactly once."""
    provision(nats)
    alpha = make_daemon(short_tmp / "a", nats, "alpha", ["alice"])
    beta = make_daemon(short_tmp / "b", nats, "beta", ["bob"])
    alpha.start()
    beta.start()
    try:
        wait_for(lambda: knows_sync(alpha, "bob@beta"), 20, "alpha to know bob@beta")
        stop = threading.Event()
        sent_ok: list[str] = []
        received: list[tuple[int, str]] = []  # (beta's row id, body), every delivery bob saw
        errors: list[str] = []

        def sender() -> None:
            n = 0
            while not stop.is_set():
                try:
                    with sync_agent(alpha, "alice") as alice:
                        while not stop.is_set():
                            body = f"msg-{n:05d}"
                            n += 1
                            alice.expect(m.Send(to="bob@beta", body=body), m.Sent)
                            sent_ok.append(body)
                            time.sleep(0.002)
                except (
                    HiveError,
                    OSError,
                ) as exc:  # alpha is down: that send may or may not have committed
                    errors.append(f"send: {exc}")
                    time.sleep(0.2)

        def receiver() -> None:
            while not stop.is_set():
                try:
                    with sync_agent(beta, "bob") as bob:
                        while not stop.is_set():
                            got = bob.expect(m.Recv(max=50, wait_seconds=0.5), m.Deliveries)
                            for d in got.items:
                                received.append((d.message.id, d.message.body))
                                bob.expect(m.Ack(lease=d.lease), m.Ok)
                except (HiveError, OSError) as exc:
                    errors.append(f"recv: {exc}")
                    time.sleep(0.2)

        threads = [threading.Thread(target=sender), threading.Thread(target=receiver)]
        for t in threads:
            t.start()
        try:
            for _ in range(cycles):
                time.sleep(2)
                alpha.kill()  # the sender's hive, between commits and publishes
                time.sleep(0.5)
                alpha.start()
                time.sleep(2)
                beta.kill()  # the receiver's hive, between its commits and its acks to NATS
                time.sleep(0.5)
                beta.start()
                time.sleep(2)
                nats.kill()  # JetStream itself, with envelopes in flight
                time.sleep(1.5)
                nats.start()
            time.sleep(3)
        finally:
            stop.set()
            for t in threads:
                t.join(30)
        assert len(sent_ok) > 200 * cycles, (len(sent_ok), errors[-5:])

        a_db, b_db = alpha.paths.db, beta.paths.db
        committed = {
            r[1]: r[0]
            for r in rows(a_db, "SELECT id, body FROM messages WHERE recipient = 'bob@beta'")
        }
        assert set(sent_ok) <= set(committed)  # every send that was answered was committed

        def all_arrived() -> bool:
            got = rows(b_db, "SELECT remote_id FROM messages WHERE sender = 'alice@alpha'")
            return {r[0] for r in got} >= set(committed.values())

        wait_for(all_arrived, 60, "every committed message to reach beta")
        at_beta = rows(b_db, "SELECT remote_id, body FROM messages WHERE sender = 'alice@alpha'")
        origin_ids = [r[0] for r in at_beta]
        assert len(origin_ids) == len(set(origin_ids)), "an envelope was stored twice"
        assert {r[1] for r in at_beta} == set(committed)
        # bob never got two different rows carrying the same message
        rows_per_body: dict[str, set[int]] = {}
        for row_id, body in received:
            rows_per_body.setdefault(body, set()).add(row_id)
        assert all(len(ids) == 1 for ids in rows_per_body.values())

        def all_acked_home() -> bool:
            states = rows(
                a_db,
                "SELECT state, count(*) FROM messages WHERE recipient = 'bob@beta' GROUP BY state",
            )
            left = dict(states)  # type: ignore[arg-type]
            return set(left) == {"acked"}

        # drain what bob has not taken yet, then every receipt comes home
        with sync_agent(beta, "bob") as bob:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                got = bob.expect(m.Recv(max=100, wait_seconds=0.5), m.Deliveries)
                for d in got.items:
                    bob.expect(m.Ack(lease=d.lease), m.Ok)
                if (
                    not got.items
                    and rows(
                        b_db,
                        "SELECT count(*) FROM messages WHERE recipient = 'bob' AND state != 'acked'",
                    )[0][0]
                    == 0
                ):
                    break
        wait_for(all_acked_home, 60, "every receipt to come home")
        # and a federated daemon still stops cleanly: NATS closed, its thread joined
        assert alpha.stop() == 0 and beta.stop() == 0
        assert "Traceback" not in alpha.log() + beta.log()
    finally:
        for d in (alpha, beta):
            if d.proc is not None and d.proc.poll() is None:
                d.kill()


# ------------------------------------------------------------------ security


async def as_user(
    server: NatsServer, user: str, fn: Callable[[Any], Awaitable[T]]
) -> tuple[T, list[str]]:
    """Run `fn(nc)` connected as `user`; return its result and the server's errors."""
    errors: list[str] = []

    async def main() -> T:
        async def on_error(exc: Exception) -> None:
            errors.append(str(exc))

        nc = await nats_py.connect(
            server.url,
            user=user,
            password=server.password(user),
            inbox_prefix=f"_INBOX_{user}",
            error_cb=on_error,
            allow_reconnect=False,
        )
        try:
            result = await fn(nc)
            await nc.flush()
            await asyncio.sleep(0.3)  # permission violations arrive asynchronously
            return result
        finally:
            await nc.close()

    result = await trio.to_thread.run_sync(asyncio.run, main())
    return result, errors


async def test_nats_permissions_keep_each_hive_to_its_own_subjects(pair, nats):
    del pair  # the two hives must be up; this test only talks to NATS

    async def forge(nc: Any) -> None:
        # beta pretends to be gamma, and tries to read alpha's envelopes
        await nc.publish("hyperhive.msg.alpha.gamma", b"forged")
        await nc.publish(
            "$JS.API.CONSUMER.MSG.NEXT.HYPERHIVE_MSGS.alpha", b'{"batch": 1}', reply="_INBOX_beta.x"
        )
        await nc.publish("hyperhive.status.alpha", b"forged")

    _, errors = await as_user(nats, "beta", forge)
    text = " ".join(errors).lower()
    assert text.count("permissions violation") >= 3, errors
    assert "hyperhive.msg.alpha.gamma" in text and "msg.next.hyperhive_msgs.alpha" in text

    async def snoop(nc: Any) -> None:
        await nc.subscribe("_INBOX_alpha.>")

    _, errors = await as_user(nats, "beta", snoop)
    assert any("permissions violation for subscription" in e.lower() for e in errors), errors


async def test_a_forged_or_unreadable_envelope_is_terminated_and_counted(pair, nats):
    alpha, _ = pair
    forged = encode(
        Envelope(
            id="gamma.x.1",
            origin="gamma",  # on beta's subject: the origin the server vouches for is beta
            to_hive="alpha",
            sent_at=time.time(),
            body=FedMessage(
                message_id=1, sender="eve", to="alice", body="trust me", created_at=time.time()
            ),
        )
    )

    async def publish(nc: Any) -> None:
        js = nc.jetstream()
        await js.publish("hyperhive.msg.alpha.beta", forged)
        await js.publish("hyperhive.msg.alpha.beta", b"\xc1 not msgpack")

    _, errors = await as_user(nats, "beta", publish)
    assert errors == []
    assert alpha.federation is not None

    async def rejected() -> bool:
        return alpha.federation is not None and alpha.federation.rejected == 2

    await until(rejected, what="both envelopes to be rejected")
    async with agent(alpha, "alice") as alice:
        got = await alice.expect(m.Recv(max=10), m.Deliveries)
    assert got.items == []


# ------------------------------------------------------------------ the operator's commands


def hive_cli(*args: str, run_dir: Path | None = None) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "c0re_priv", *args]
    if run_dir is not None:
        cmd += ["--run-dir", str(run_dir)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)


async def test_hive_ctl_shows_the_link_the_remote_agents_and_sends_across(pair):
    alpha, beta = pair
    run = alpha.paths.run_dir
    out = await trio.to_thread.run_sync(partial(hive_cli, "ctl", "federation", run_dir=run))
    assert out.returncode == 0, out.stderr
    assert "link:      connected" in out.stdout and "beta" in out.stdout
    out = await trio.to_thread.run_sync(partial(hive_cli, "ctl", "agents", "--all", run_dir=run))
    assert out.returncode == 0, out.stderr
    names = [line.split()[0] for line in out.stdout.splitlines()[1:]]
    assert names == ["alice", "ann", "bob@beta", "boss@beta"]
    out = await trio.to_thread.run_sync(partial(hive_cli, "ctl", "agents", run_dir=run))
    assert "bob@beta" not in out.stdout
    out = await trio.to_thread.run_sync(
        partial(hive_cli, "ctl", "send", "bob@beta", "from the terminal", run_dir=run)
    )
    assert out.returncode == 0, out.stderr
    async with agent(beta, "bob") as bob:
        (got,) = await recv(bob)
    assert (got.from_, got.body) == ("operator@alpha", "from the terminal")
    out = await trio.to_thread.run_sync(
        partial(hive_cli, "ctl", "send", "bob@nowhere", "x", run_dir=run)
    )
    assert out.returncode == 1 and "no hive named 'nowhere'" in out.stderr


def test_hive_federation_provision_creates_once_and_then_only_checks(nats: NatsServer):
    args = [
        "federation",
        "provision",
        "--url",
        nats.url,
        "--user",
        "admin",
        "--password-file",
        str(nats.password_file("admin")),
        "--namespace",
        "other-fed",
        "alpha",
        "beta",
    ]
    first = hive_cli(*args)
    assert first.returncode == 0, first.stderr
    assert "created stream OTHER_FED_MSGS" in first.stdout
    assert "created consumer OTHER_FED_MSGS/beta" in first.stdout
    assert "(6 created" in first.stdout
    again = hive_cli(*args)
    assert again.returncode == 0 and "(0 created" in again.stdout
    wrong = hive_cli(*args[:-2], "Not-A-Hive")
    assert wrong.returncode == 1 and "Not-A-Hive" in wrong.stderr
    denied = hive_cli(
        *[a if a != "admin" else "alpha" for a in args[:5]],
        "--password-file",
        str(nats.password_file("alpha")),
        "alpha",
    )
    assert denied.returncode == 1


# ------------------------------------------------------------------ the dashboard


async def test_the_dashboard_draws_the_federation_panel_and_redraws_it_on_events(pair):
    from c0re_web.live import Hub
    from c0re_web.render import Renderer

    alpha, beta = pair
    async with agent(beta, "bob") as bob:
        await bob.expect(m.SetStatus(text="<script>alert(1)</script>"), m.Ok)

    async def escaped_status_arrived() -> bool:
        async with admin_of(alpha) as a:
            got = await a.expect(m.ListAgents(include_remote=True), m.Agents)
        return any(r.status_text.startswith("<script>") for r in got.remote)

    await until(escaped_status_arrived)
    async with admin_of(alpha) as a:
        state = await a.expect(m.Snapshot(), m.HiveState)
        renderer = Renderer()
        html = renderer.part("federation_panel", state.federation, state.remote_agents)
        assert 'data-link="connected"' in html and "bob@beta" in html and "boss@beta" in html
        assert "<script>" not in html and "&lt;script&gt;" in html  # another hive's text is data
        hub = Hub(renderer)
        hub.seed(state)
        seq = state.seq
        for event in (
            m.RemoteAgentsChanged(hive="beta", agents=state.remote_agents),
            m.FederationChanged(link="disconnected", detail="lost it"),
            m.MessageForwarded(message_id=1, to="bob@beta"),
        ):
            seq += 1
            changes = hub.mirror.apply([msgspec.structs.replace(event, seq=seq)])
            await hub._read(a, changes, set())  # the link's state is read from the daemon
            patches = hub._dashboard(changes)
            assert any(p.key == "section:federation" for p in patches), [p.key for p in patches]
            drawn = "".join(p.html for p in patches if p.key == "section:federation")
            assert "bob@beta" in drawn and "<script>" not in drawn
            if isinstance(event, m.FederationChanged):
                assert any("federation disconnected: lost it" in p.html for p in patches)


async def test_three_hives_hear_each_other_and_relay_a_question(nursery, short_tmp, nats):
    await trio.to_thread.run_sync(provision, nats)
    hives = {
        name: await start_hive(nursery, short_tmp / name[0], hive_config(nats, name, {agent: {}}))
        for name, agent in (("alpha", "alice"), ("beta", "bob"), ("gamma", "carol"))
    }
    for name, hive in hives.items():
        for other, agent_name in (("alpha", "alice"), ("beta", "bob"), ("gamma", "carol")):
            if other != name:
                await until(partial(knows, hive, f"{agent_name}@{other}"))
        async with admin_of(hive) as a:
            fed = (await a.expect(m.FederationStatus(), m.Federation)).federation
        assert sorted(h.hive for h in fed.hives) == sorted(set(hives) - {name})
    alpha, beta, gamma = hives["alpha"], hives["beta"], hives["gamma"]
    async with (
        agent(alpha, "alice") as alice,
        agent(beta, "bob") as bob,
        agent(gamma, "carol") as carol,
    ):
        asked = await alice.expect(
            m.Ask(target="bob@beta", question="what does carol think?"), m.Asked
        )
        (q1,) = await recv(bob)
        relay = await bob.expect(
            m.Ask(target="carol@gamma", question="alice asks: your view?"), m.Asked
        )
        (q2,) = await recv(carol)
        assert q2.from_ == "bob@beta"
        await carol.expect(m.Answer(question_id=q2.question_id or 0, answer="ship it"), m.Ok)
        (a2,) = await recv(bob)
        assert (a2.from_, a2.question_id, a2.body.endswith("ship it")) == (
            "carol@gamma",
            relay.question_id,
            True,
        )
        await bob.expect(
            m.Answer(question_id=q1.question_id or 0, answer="carol says ship it"), m.Ok
        )
        (a1,) = await recv(alice)
        assert (a1.from_, a1.question_id) == ("bob@beta", asked.question_id)
        assert a1.body.endswith("carol says ship it")


async def test_hives_talk_over_tls_with_client_certificates_and_one_without_is_refused(
    nursery, short_tmp: Path
):
    root = short_tmp / "tlsnats"
    root.mkdir()
    certs = await trio.to_thread.run_sync(make_certificates, root)
    server = NatsServer(root, HIVES, certs=certs)
    await trio.to_thread.run_sync(server.start)
    try:
        tls = {
            "tls_ca": str(certs["ca.pem"]),
            "tls_cert": str(certs["client.pem"]),
            "tls_key": str(certs["client.key"]),
        }
        admin = FederationSettings(
            hive="admin",
            url=server.url,
            user="admin",
            password_file=str(server.password_file("admin")),
            **tls,
        )
        await trio.to_thread.run_sync(asyncio.run, provision_federation(admin, HIVES, 1.0))
        alpha = await start_hive(
            nursery, short_tmp / "a", hive_config(server, "alpha", {"alice": {}}, **tls)
        )
        beta = await start_hive(
            nursery, short_tmp / "b", hive_config(server, "beta", {"bob": {}}, **tls)
        )
        await until(lambda: knows(alpha, "bob@beta"), what="alpha to hear of bob over TLS")
        async with agent(alpha, "alice") as alice, agent(beta, "bob") as bob:
            await alice.expect(m.Send(to="bob@beta", body="sealed"), m.Sent)
            assert [g.body for g in await recv(bob)] == ["sealed"]
        # a hive without a client certificate does not get in
        lone = await start_hive(
            nursery,
            short_tmp / "c",
            hive_config(server, "gamma", {"carol": {}}, tls_ca=str(certs["ca.pem"])),
        )
        await trio.sleep(2)
        assert lone.federation is not None and lone.federation.link == "connecting"
        assert lone.federation.detail  # why, for `hive ctl federation`
        assert not await knows(alpha, "carol@gamma")
    finally:
        await trio.to_thread.run_sync(server.kill)
