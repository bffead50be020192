"""The registry over real sockets: agents registered with a socket, removed with it, names checked."""

from __future__ import annotations

from functools import partial

import pytest
import trio

from c0re_priv.daemon import run_hive
from protocol import messages as m
from protocol.client import HiveClient, HiveError
from tests.conftest import make_config, paths_in


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
