"""`host.sock`, the original hyperhive's JSON-line host socket, against a real daemon: request
lines replayed as its host tools write them, response lines compared field by field.

Agents are registered but not running here; `test_host_sock_live.py` starts and stops real
bwrap agents under a subscription.
"""

from __future__ import annotations

import json
import os
import re
import stat
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio

from c0re_priv.daemon import run_hive
from c0re_priv.hive import Hive
from c0re_priv.host_sock import ADMIN_ROWS, ADMIN_VERBS, ANSWERS, CMDS
from protocol import host_v1 as h
from protocol import messages as m
from protocol.client import HiveClient
from tests.c0re_priv.host_lines import (
    SHA12,
    SHA40,
    TIME,
    HostLines,
    compare,
    containing,
    ok,
    refused,
    row,
)
from tests.conftest import make_config, paths_in

WEB = "https://hive.example.org"


@pytest.fixture
def config():  # type: ignore[no-untyped-def]
    return make_config(
        web_url=WEB,
        agents={"boss": {"role": "manager"}, "alice": {"model": "model-a"}, "bob": {}},
    )


@pytest.fixture
async def host(hive: Hive) -> AsyncIterator[HostLines]:
    client = await HostLines.connect(str(hive.paths.host_sock))
    try:
        yield client
    finally:
        await client.aclose()


def url(name: str) -> str:
    return f"{WEB}/agent/{name}/"


async def replay(client: HostLines, transcript: list[tuple[bytes, dict[str, Any]]]) -> None:
    """Write each request line, read one response line, compare it field by field."""
    for line, expected in transcript:
        got = await client.ask(line)
        compare(got, expected, f"answer to {line!r}")


# ------------------------------------------------------------------ the verbs


async def test_list_status_and_urls_answer_as_the_original_does(hive, host):
    await replay(
        host,
        [
            (b'{"cmd":"list"}\n', ok(agents=["alice", "bob", "boss"])),
            (
                b'{"cmd":"agent_status"}\n',
                ok(
                    agent_statuses=[
                        row("alice", url=url("alice")),
                        row("bob", url=url("bob")),
                        row("boss", url=url("boss")),
                    ]
                ),
            ),
            (
                b'{"cmd":"urls"}\n',
                ok(urls={"domain": "hive.example.org", "home": f"{WEB}/"}),
            ),
        ],
    )
    status = await host.ask({"cmd": "agent_status"})
    shas = {r["deployed_sha"] for r in status["agent_statuses"]}
    assert shas == {hive.configs.deployed["alice"].sha[:12]}  # all three run the first commit


async def test_a_stopped_agents_status_line_is_not_shown(hive, host):
    async with HiveClient.connect(str(hive.paths.agent_sock("alice"))) as alice:
        await alice.expect(m.SetStatus(text="reviewing PR 12"), m.Ok)
        await alice.expect(m.Remind(body="look again", in_seconds=3600), m.Reminded)
    got = await host.ask({"cmd": "agent_status"})
    # its container is not running: what it said before is stale (the live test shows it)
    compare(got["agent_statuses"][0], row("alice", url=url("alice"), pending_reminders=1))


async def test_without_a_dashboard_address_urls_are_null(nursery, short_tmp):
    config = make_config(agents={"alice": {}})
    hive: Hive = await nursery.start(
        lambda task_status: run_hive(
            config, paths_in(short_tmp, config), handle_signals=False, task_status=task_status
        )
    )
    client = await HostLines.connect(str(hive.paths.host_sock))
    await replay(
        client,
        [
            (b'{"cmd":"urls"}\n', ok(urls={"domain": None, "home": None})),
            (b'{"cmd":"agent_status"}\n', ok(agent_statuses=[row("alice")])),
        ],
    )
    await client.aclose()


async def test_pause_and_resume_go_through_the_admin_verb(hive, host):
    await replay(
        host,
        [
            (b'{"cmd":"set_paused","name":"bob","paused":true}\n', ok()),
            (
                b'{"cmd":"start","scope":{"agent_names":["bob"]}}\n',
                refused("conflict", "bob is paused; unpause it first"),
            ),
            (b'{"cmd":"set_paused","name":"bob","paused":true}\n', ok()),  # idempotent
        ],
    )
    assert hive.registry.agents["bob"].paused
    got = await host.ask({"cmd": "agent_status"})
    compare(got["agent_statuses"][1], row("bob", url=url("bob"), paused=True))
    await replay(host, [(b'{"cmd":"set_paused","name":"bob","paused":false}\n', ok())])
    assert not hive.registry.agents["bob"].paused


# ------------------------------------------------------------------ the scope rule


async def test_a_scope_never_means_everything(hive, host):
    await replay(
        host,
        [
            (
                b'{"cmd":"start","scope":{}}\n',
                refused("invalid", containing("agent_names is empty", "never means every")),
            ),
            (
                b'{"cmd":"stop","scope":{"agent_names":[]},"graceful":true}\n',
                refused("invalid", containing("agent_names is empty")),
            ),
            (
                b'{"cmd":"start","scope":{"agent_names":[],"agents":true}}\n',
                refused("invalid", containing("scope.agents is not served here")),
            ),
            (
                b'{"cmd":"start","scope":{"agent_names":["alice"],"forge":true}}\n',
                refused("invalid", containing("scope.forge")),
            ),
            (
                b'{"cmd":"stop","scope":{"agent_names":["alice","nobody"]},"graceful":false}\n',
                refused("not_found", "no agent named 'nobody'"),
            ),
            (
                b'{"cmd":"start","scope":{"agent_names":["Alice"]}}\n',
                refused("invalid", containing("start:", "$.scope.agent_names[0]")),
            ),
            # the original's default keys, all false, next to real names: accepted
            (
                b'{"cmd":"stop","scope":{"agent_names":["alice","alice"],"agents":false,'
                b'"ci":false,"forge":false,"gateway":false,"matrix":false},"graceful":true}\n',
                ok(),
            ),
        ],
    )
    assert all(s.scope is None for s in hive.lifecycle.agents.values())  # nothing was started


# ------------------------------------------------------------------ approvals


async def propose(hive: Hive, boss: HiveClient, name: str, model: str) -> m.Proposed:
    text = (await boss.expect(m.ReadAgentConfig(agent=name), m.AgentConfigText)).text
    changed = "\n".join(
        f'model = "{model}"' if line.startswith("model = ") else line for line in text.splitlines()
    )
    return await boss.expect(m.ProposeConfig(agent=name, agent_toml=changed + "\n"), m.Proposed)


async def test_pending_approve_and_deny(hive, host):
    async with HiveClient.connect(str(hive.paths.agent_sock("boss"))) as boss:
        proposed = await propose(hive, boss, "bob", "model-b")
        apply = (
            await boss.expect(
                m.RequestApplyCommit(agent="bob", sha="proposals/bob"), m.ApprovalInfo
            )
        ).approval
        init = (await boss.expect(m.RequestInitConfig(name="carol"), m.ApprovalInfo)).approval
    assert proposed.sha
    await replay(
        host,
        [
            (
                b'{"cmd":"pending"}\n',
                ok(
                    approvals=[
                        {
                            "id": apply.id,
                            "agent": "bob",
                            "kind": "merge_config_pr",
                            "commit_ref": "proposals/bob",
                            "fetched_sha": proposed.sha,
                            "requested_at": TIME,
                            "status": "pending",
                            "description": apply.description,
                            "resolved_at": None,
                            "note": None,
                        },
                        {
                            "id": init.id,
                            "agent": "carol",
                            "kind": "init_config",
                            "commit_ref": "",
                            "fetched_sha": None,
                            "requested_at": TIME,
                            "status": "pending",
                            "description": containing("agents/carol/agent.toml"),
                            "resolved_at": None,
                            "note": None,
                        },
                    ]
                ),
            ),
            (f'{{"cmd":"approve","id":{apply.id}}}\n'.encode(), ok()),
            (f'{{"cmd":"deny","id":{init.id}}}\n'.encode(), ok()),
            (b'{"cmd":"pending"}\n', ok(approvals=[])),
            (
                f'{{"cmd":"approve","id":{apply.id}}}\n'.encode(),
                refused(
                    "conflict", f"approval #{apply.id} is approved already; it can be resolved once"
                ),
            ),
            (
                f'{{"cmd":"deny","id":{init.id}}}\n'.encode(),
                refused("conflict", containing("is denied already")),
            ),
            (b'{"cmd":"deny","id":999999}\n', refused("not_found", "no approval #999999")),
            (b'{"cmd":"approve","id":-1}\n', refused("invalid", containing("$.id"))),
        ],
    )
    status = await host.ask({"cmd": "agent_status"})
    bob = status["agent_statuses"][1]
    assert bob["deployed_sha"] == proposed.sha[:12] and bob["needs_update"] is False
    assert SHA12.matches(bob["deployed_sha"]) and SHA40.matches(proposed.sha)


async def test_an_approval_that_fails_to_be_carried_out_is_not_ok(hive, host, admin):
    async with HiveClient.connect(str(hive.paths.agent_sock("boss"))) as boss:
        spawn = (
            await boss.expect(m.RequestSpawn(name="dave", role_description="x"), m.ApprovalInfo)
        ).approval
    # the operator registers the name by hand before approving: the spawn can no longer happen
    await admin.expect(m.AddAgent(name="dave"), m.AgentInfo)
    got = await host.ask({"cmd": "approve", "id": spawn.id})
    compare(got, refused("internal", containing(f"approval #{spawn.id} failed")))
    listed = await admin.expect(m.GetApproval(id=spawn.id), m.ApprovalInfo)
    assert listed.approval.status == "failed"


async def test_a_spawned_agent_names_its_parent(hive, host, admin):
    async with HiveClient.connect(str(hive.paths.agent_sock("boss"))) as boss:
        spawn = (
            await boss.expect(m.RequestSpawn(name="erin", role_description="x"), m.ApprovalInfo)
        ).approval
    got = await host.ask({"cmd": "approve", "id": spawn.id})
    assert got == {"version": 1, "ok": True, "error": None}, got
    status = await host.ask({"cmd": "agent_status"})
    (erin,) = [r for r in status["agent_statuses"] if r["name"] == "erin"]
    assert erin["parent"] == "boss"
    await admin.expect(m.Stop(name="erin", graceful=False), m.AgentInfo)


# ------------------------------------------------------------------ robustness


async def test_bad_lines_are_answered_and_the_connection_goes_on(hive, host):
    await replay(
        host,
        [
            (
                b'{"cmd":"list","extra":{"nested":[1,2]},"version":7}\n',
                ok(agents=["alice", "bob", "boss"]),
            ),
            (b'{"cmd":"frobnicate"}\n', refused("unknown_op", "unknown cmd 'frobnicate'")),
            (b"not json at all\n", refused("bad_frame", containing("not JSON"))),
            (b"[1, 2, 3]\n", refused("invalid", 'a request is a JSON object with a "cmd"')),
            (b'{"name":"alice"}\n', refused("invalid", 'a request needs a "cmd" string')),
            (b'{"cmd":7}\n', refused("invalid", 'a request needs a "cmd" string')),
            (
                b'{"cmd":"set_paused","name":"alice"}\n',
                refused("invalid", containing("set_paused:", "paused")),
            ),
            (
                b'{"cmd":"restart","name":"nobody"}\n',
                refused("not_found", "no agent named 'nobody'"),
            ),
            (b'\xff\xfe{"cmd":"list"}\n', refused("bad_frame", containing("not JSON"))),
            (b"[" * 5000 + b"\n", refused("bad_frame", containing("nested too deeply"))),
            (b'{"cmd":"list"}\r\n', ok(agents=["alice", "bob", "boss"])),
        ],
    )


async def test_blank_lines_are_skipped_and_pipelined_lines_answered_in_order(hive, host):
    await host.write(b'\n  \n{"cmd":"list"}\n{"cmd":"nope"}\n\n{"cmd":"urls"}\n')
    compare(await host.response(), ok(agents=["alice", "bob", "boss"]))
    compare(await host.response(), refused("unknown_op", "unknown cmd 'nope'"))
    compare(await host.response(), ok(urls={"domain": "hive.example.org", "home": f"{WEB}/"}))


async def test_a_line_over_the_cap_is_refused_without_being_held(hive, host):
    huge = b'{"cmd":"list","pad":"' + b"x" * (h.LINE_MAX * 3) + b'"}\n'
    await host.write(huge[: h.LINE_MAX // 2])
    await host.write(huge[h.LINE_MAX // 2 :] + b'{"cmd":"list"}\n')
    compare(
        await host.response(), refused("too_large", f"a request line is at most {h.LINE_MAX} bytes")
    )
    compare(await host.response(), ok(agents=["alice", "bob", "boss"]))
    exact = b'{"cmd":"list","pad":"' + b"y" * (h.LINE_MAX - 23) + b'"}'
    assert len(exact) == h.LINE_MAX
    compare(await host.ask(exact + b"\n"), ok(agents=["alice", "bob", "boss"]))


async def test_a_client_that_hangs_up_mid_line_or_mid_answer_harms_nobody(hive, host):
    for data in (b'{"cmd":"li', b'{"cmd":"agent_status"}\n' * 50):
        rude = await HostLines.connect(str(hive.paths.host_sock))
        await rude.write(data)
        await rude.aclose()
    compare(await host.ask({"cmd": "list"}), ok(agents=["alice", "bob", "boss"]))


async def start_hive(nursery: trio.Nursery, root: Path, **settings: Any) -> Hive:
    config = make_config(agents={"alice": {}, "bob": {}}, **settings)
    hive: Hive = await nursery.start(
        lambda task_status: run_hive(
            config, paths_in(root, config), handle_signals=False, task_status=task_status
        )
    )
    return hive


async def test_connections_are_bounded_apart_from_admin_socks(nursery, short_tmp):
    hive = await start_hive(nursery, short_tmp, admin_max_connections=4)
    path = str(hive.paths.host_sock)
    held = [await HostLines.connect(path) for _ in range(4)]
    try:
        extra = await HostLines.connect(path)
        compare(
            await extra.response(),
            refused("rate_limited", "too many connections to this socket (4 open, the limit is 4)"),
        )
        assert await extra.stream.receive_some(10) == b""  # and closed
        await extra.aclose()
        compare(await held[-1].ask({"cmd": "list"}), ok(agents=["alice", "bob"]))
        # host.sock's connections are its own allowance: admin.sock still takes the operator
        async with HiveClient.connect(str(hive.paths.admin_sock)) as admin:
            await admin.expect(m.Ping(), m.Pong)
    finally:
        for c in held:
            await c.aclose()
    with trio.fail_after(5):
        while hive.sockets.peers["host"].connections:  # type: ignore[union-attr]
            await trio.sleep(0.01)
    again = await HostLines.connect(path)
    compare(await again.ask({"cmd": "list"}), ok(agents=["alice", "bob"]))
    await again.aclose()


async def test_an_idle_connection_is_closed_but_a_subscription_never_is(nursery, short_tmp):
    hive = await start_hive(nursery, short_tmp, idle_timeout_seconds=0.5)
    idle = await HostLines.connect(str(hive.paths.host_sock))
    compare(await idle.ask({"cmd": "list"}), ok(agents=["alice", "bob"]))
    subscriber = await HostLines.connect(str(hive.paths.host_sock))
    compare(await subscriber.ask({"cmd": "subscribe_agent_status"}), ok())
    compare(await idle.response(timeout=5), refused("unavailable", "idle for 0.5s"))
    assert await idle.stream.receive_some(10) == b""
    await trio.sleep(1.0)  # twice the idle timeout
    async with HiveClient.connect(str(hive.paths.admin_sock)) as admin:
        await admin.expect(m.SetPaused(name="bob", paused=True), m.AgentInfo)
    compare(await subscriber.response(), ok(agent_statuses=[row("bob", paused=True)]))
    await subscriber.aclose()
    await idle.aclose()


async def test_a_line_not_finished_in_time_is_dropped(nursery, short_tmp):
    hive = await start_hive(nursery, short_tmp, frame_timeout_seconds=0.5)
    slow = await HostLines.connect(str(hive.paths.host_sock))
    await slow.write(b'{"cmd":"li')
    with trio.move_on_after(0.3):
        await slow.write(b"s")  # a byte now and then does not keep it alive
    compare(
        await slow.response(timeout=5),
        refused("bad_frame", "a line was not completed within 0.5s (11 bytes of it arrived)"),
    )
    assert await slow.stream.receive_some(10) == b""
    await slow.aclose()


async def test_a_subscriber_that_reads_nothing_is_dropped(nursery, short_tmp):
    hive = await start_hive(nursery, short_tmp, write_timeout_seconds=0.5)
    deaf = await HostLines.connect(str(hive.paths.host_sock))
    compare(await deaf.ask({"cmd": "subscribe_agent_status"}), ok())
    async with HiveClient.connect(str(hive.paths.admin_sock)) as admin:
        with trio.fail_after(60):
            # until the socket buffers are full and a push waits past the write timeout
            i = 0
            while hive.sockets.peers["host"].connections:  # type: ignore[union-attr]
                await admin.expect(m.SetPaused(name="bob", paused=i % 2 == 0), m.AgentInfo)
                i += 1
        await admin.expect(m.Ping(), m.Pong)
    other = await HostLines.connect(str(hive.paths.host_sock))
    compare(await other.ask({"cmd": "list"}), ok(agents=["alice", "bob"]))
    await other.aclose()
    await deaf.aclose()


# ------------------------------------------------------------------ the socket itself


async def test_the_socket_has_admin_socks_permissions(hive):
    host_mode = os.stat(hive.paths.host_sock)
    admin_mode = os.stat(hive.paths.admin_sock)
    assert stat.S_ISSOCK(host_mode.st_mode)
    assert stat.S_IMODE(host_mode.st_mode) == stat.S_IMODE(admin_mode.st_mode) == 0o660
    assert (host_mode.st_uid, host_mode.st_gid) == (admin_mode.st_uid, admin_mode.st_gid)


async def test_the_socket_follows_admin_group(nursery, short_tmp):
    import grp

    if os.geteuid() == 0:
        group = next(g for g in grp.getgrall() if g.gr_gid != os.getegid())
    else:  # a non-root daemon may hand its sockets only to a group it is in
        mine = [gid for gid in os.getgroups() if gid != os.getegid()]
        if not mine:
            pytest.skip("this user is in no second group to hand the socket to")
        group = grp.getgrgid(mine[0])
    config = make_config(admin_group=group.gr_name)
    hive: Hive = await nursery.start(
        lambda task_status: run_hive(
            config, paths_in(short_tmp, config), handle_signals=False, task_status=task_status
        )
    )
    assert os.stat(hive.paths.host_sock).st_gid == group.gr_gid
    assert os.stat(hive.paths.admin_sock).st_gid == group.gr_gid


async def test_it_can_be_turned_off(nursery, short_tmp):
    config = make_config(host_sock=False)
    hive: Hive = await nursery.start(
        lambda task_status: run_hive(
            config, paths_in(short_tmp, config), handle_signals=False, task_status=task_status
        )
    )
    assert hive.paths.admin_sock.exists()
    assert not hive.paths.host_sock.exists()


async def test_the_socket_is_unlinked_at_shutdown(short_tmp):
    config = make_config()
    async with trio.open_nursery() as nursery:
        hive: Hive = await nursery.start(
            lambda task_status: run_hive(
                config, paths_in(short_tmp, config), handle_signals=False, task_status=task_status
            )
        )
        subscriber = await HostLines.connect(str(hive.paths.host_sock))
        compare(await subscriber.ask({"cmd": "subscribe_agent_status"}), ok())
        nursery.cancel_scope.cancel()
    assert not hive.paths.host_sock.exists()
    assert await subscriber.stream.receive_some(10) == b""
    await subscriber.aclose()


# ------------------------------------------------------------------ the door's table


def test_every_cmd_is_answered_and_uses_admin_verbs_only():
    requests = [row.request for row in CMDS]
    assert len(requests) == len(set(requests)), "a cmd with two rows"
    assert set(ADMIN_VERBS) == set(h.HOST_REQUESTS)
    assert set(ANSWERS) == set(h.HOST_REQUESTS) - {h.SubscribeAgentStatus}
    # each verb is a unary row of the handlers' tables that admin.sock decodes
    assert set(m.ADMIN_REQUESTS) >= ADMIN_ROWS
    assert m.Subscribe not in ADMIN_ROWS and m.OperatorSend in ADMIN_ROWS
    for cmd, verbs in ADMIN_VERBS.items():
        assert verbs <= ADMIN_ROWS, cmd
        assert not verbs & {m.AddAgent, m.RemoveAgent, m.Destroy, m.SetAgentLogin}, cmd


async def test_a_cmd_cannot_reach_a_verb_outside_its_row(hive):
    from c0re_priv.host_sock import AdminDoor

    door = AdminDoor(hive, h.List)
    with pytest.raises(AssertionError, match="list may not use destroy"):
        await door.call(m.Destroy(name="alice"), m.Ok)
    assert "alice" in hive.registry.agents


def test_the_wire_names_match_the_original():
    assert sorted(h.CMDS) == sorted(
        [
            "list",
            "agent_status",
            "subscribe_agent_status",
            "set_paused",
            "start",
            "stop",
            "restart",
            "urls",
            "pending",
            "approve",
            "deny",
        ]
    )
    line = h.encode_response(h.HostResponse(ok=True, agents=[]))
    assert json.loads(line) == {"version": 1, "ok": True, "error": None, "agents": []}


# ------------------------------------------------------------------ a slow subscriber


async def test_a_subscriber_that_stops_reading_neither_slows_the_daemon_nor_ends_stale(
    nursery, short_tmp
):
    hive = await start_hive(nursery, short_tmp, write_timeout_seconds=600)
    host = await HostLines.connect(str(hive.paths.host_sock))
    compare(await host.ask({"cmd": "subscribe_agent_status"}), ok())
    # far more changes than the socket buffers hold: the daemon's write to this client
    # waits (within the write timeout) while everyone else is served
    toggles = 3000
    async with HiveClient.connect(str(hive.paths.admin_sock)) as admin:
        with trio.fail_after(120):
            for i in range(toggles):
                await admin.expect(m.SetPaused(name="bob", paused=i % 2 == 0), m.AgentInfo)
            await admin.expect(m.SetPaused(name="alice", paused=True), m.AgentInfo)
    other = await HostLines.connect(str(hive.paths.host_sock))
    compare(await other.ask({"cmd": "list"}), ok(agents=["alice", "bob"]))
    roster = {r["name"]: r for r in (await other.ask({"cmd": "agent_status"}))["agent_statuses"]}
    await other.aclose()
    assert roster["bob"]["paused"] is False and roster["alice"]["paused"] is True

    pushes: list[dict[str, Any]] = []
    last: dict[str, dict[str, Any]] = {}
    while last.get("alice") != roster["alice"] or last.get("bob") != roster["bob"]:
        push = await host.response(timeout=30)
        (one,) = push["agent_statuses"]
        last[one["name"]] = one
        pushes.append(one)
    assert len(pushes) < toggles  # intermediate states were coalesced, the latest was not lost
    with trio.move_on_after(0.5):
        extra = await host.response()
        pytest.fail(f"pushed after the latest state: {extra}")
    await host.aclose()


async def test_one_watcher_serves_every_subscriber_and_ends_with_the_last(hive, host, admin):
    before = len(hive.bus._subscribers)
    second = await HostLines.connect(str(hive.paths.host_sock))
    for client in (host, second):
        compare(await client.ask({"cmd": "subscribe_agent_status"}), ok())
    assert len(hive.bus._subscribers) == before + 1  # one watcher, not one per subscriber
    await admin.expect(m.SetPaused(name="boss", paused=True), m.AgentInfo)
    for client in (host, second):
        compare(
            await client.response(),
            ok(agent_statuses=[row("boss", url=url("boss"), paused=True)]),
        )
    await second.aclose()
    await admin.expect(m.SetPaused(name="boss", paused=False), m.AgentInfo)
    compare(await host.response(), ok(agent_statuses=[row("boss", url=url("boss"))]))
    await host.aclose()
    with trio.fail_after(5):
        while len(hive.bus._subscribers) != before:
            await trio.sleep(0.01)
    # a new subscriber starts a fresh watcher, with fresh rows
    third = await HostLines.connect(str(hive.paths.host_sock))
    compare(await third.ask({"cmd": "subscribe_agent_status"}), ok())
    await admin.expect(m.SetPaused(name="alice", paused=True), m.AgentInfo)
    compare(
        await third.response(),
        ok(agent_statuses=[row("alice", url=url("alice"), paused=True)]),
    )
    await third.aclose()


@pytest.mark.parametrize(
    "web_url",
    ["javascript:alert(1)", "hive.example.org", "https://", "http://a b/", "https://h/?q=1"],
)
def test_web_url_must_be_a_plain_http_address(tmp_path, web_url):
    from c0re_priv.config import ConfigError, load_config

    path = tmp_path / "hive.toml"
    path.write_text(f"[hive]\nweb_url = {json.dumps(web_url)}\n")
    with pytest.raises(ConfigError, match="web_url"):
        load_config(path)


def test_web_url_and_host_sock_load_from_hive_toml(tmp_path):
    from c0re_priv.config import load_config

    path = tmp_path / "hive.toml"
    path.write_text('[hive]\nweb_url = "https://hive.example.org/hive"\nhost_sock = false\n')
    settings = load_config(path).hive
    assert (settings.web_url, settings.host_sock) == ("https://hive.example.org/hive", False)


async def test_the_docs_example_session_is_what_the_daemon_says(nursery, short_tmp):
    """docs/host-sock.md's `→`/`←` lines, replayed byte for byte."""
    doc = (Path(__file__).resolve().parents[2] / "docs" / "host-sock.md").read_text()
    pairs = re.findall(r"^→ (.*)\n← (.*)$", doc, flags=re.MULTILINE)
    assert len(pairs) >= 3
    config = make_config(
        web_url="http://127.0.0.1:8765/",
        agents={"manager": {"role": "manager"}, "alice": {}, "bob": {}},
    )
    hive: Hive = await nursery.start(
        lambda task_status: run_hive(
            config, paths_in(short_tmp, config), handle_signals=False, task_status=task_status
        )
    )
    client = await HostLines.connect(str(hive.paths.host_sock))
    for request, response in pairs:
        await client.write(request.encode() + b"\n")
        assert (await client.line()).decode() == response
    await client.aclose()


async def test_what_agents_write_reaches_host_tools_escaped_and_unchanged(hive, host):
    evil = "opus\x1b]0;pwned\x07\x1b[2J\x9b31m\u202edesrever\u2028line\x7f"
    async with HiveClient.connect(str(hive.paths.agent_sock("alice"))) as alice:
        await alice.expect(m.ReportState(state="idle", reason="", model=evil), m.Ok)
    await host.write(b'{"cmd":"agent_status"}\n')
    raw = await host.line()
    assert raw.decode().isprintable(), raw  # no byte a terminal would act on
    (alice_row,) = [r for r in json.loads(raw)["agent_statuses"] if r["name"] == "alice"]
    assert alice_row["active_model"] == evil  # the same text, escaped as JSON allows
