"""Federation over a real `nats-server -js` on loopback: hives that talk (docs/federation.md).

Each test starts its own NATS server (random port, own store dir, one user per hive with
the permissions of docs/federation.md) and real daemons with real sqlite, in this trio run
or as subprocesses. Agents are played through their own sockets, as the harness would.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path

import pytest
import trio

from c0re_priv.config import FederationSettings, HiveConfig
from c0re_priv.hive import Hive, run_hive
from c0re_priv.nats_link import provision_federation
from protocol import messages as m
from protocol.client import HiveClient
from tests.conftest import make_config, paths_in
from tests.natsd import NatsServer

HIVES = ["alpha", "beta", "gamma"]


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
        reply = await bob.expect(
            m.Send(to="alice@alpha", body="hi alice", in_reply_to=got[0].id), m.Sent
        )
        back = await recv(alice)
        assert [(b.from_, b.body, b.in_reply_to, b.thread) for b in back] == [
            ("bob@beta", "hi alice", mid, mid)
        ]
        assert reply.message_ids
