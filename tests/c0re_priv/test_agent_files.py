"""The dashboard's narrow reads: state files, state dirs, the harness log, the config, the snapshot.

The daemon is root and an agent owns everything below its state dir, so every way an agent
could trick a read into leaving it (or into serving what the agent itself hid) is refused.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from c0re_priv.agent_files import STATE_FILE_MAX
from c0re_priv.hive import Hive
from protocol import messages as m
from protocol.client import HiveClient, HiveError


@pytest.fixture
async def web(hive: Hive) -> AsyncIterator[HiveClient]:
    async with HiveClient.connect(str(hive.paths.web_sock), client="test-web") as client:
        yield client


@pytest.fixture
def state(hive: Hive) -> Path:
    path = hive.paths.agent_state("alice")
    (path / "notes").mkdir()
    os.chmod(path / "notes", 0o755)  # as alice makes it: agents run under umask 022
    (path / "notes" / "plan.md").write_text("# plan\nship it\n")
    os.chmod(path / "notes" / "plan.md", 0o644)
    return path


async def refused(web: HiveClient, rel_path: str) -> HiveError:
    with pytest.raises(HiveError) as err:
        await web.call(m.ReadAgentStateFile(agent="alice", rel_path=rel_path))
    return err.value


async def test_a_world_readable_file_is_served(web, state):
    got = await web.expect(
        m.ReadAgentStateFile(agent="alice", rel_path="notes/plan.md"), m.AgentFile
    )
    assert (got.agent, got.rel_path, got.data, got.size) == (
        "alice",
        "notes/plan.md",
        b"# plan\nship it\n",
        15,
    )


@pytest.mark.parametrize(
    "rel_path", ["../bob/state/x", "notes/../../bob", "..", "./notes/plan.md", "notes//plan.md"]
)
async def test_dot_dot_and_empty_components_are_refused(web, state, rel_path):
    assert (await refused(web, rel_path)).code == "invalid"


async def test_an_absolute_path_is_refused(web, state):
    err = await refused(web, "/etc/passwd")
    assert err.code == "invalid"
    assert "absolute" in err.message


async def test_a_symlinked_directory_in_the_middle_is_refused(web, state, short_tmp):
    outside = short_tmp / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("not yours")
    os.chmod(outside / "secret.txt", 0o644)
    (state / "linked").symlink_to(outside)
    err = await refused(web, "linked/secret.txt")
    assert (err.code, "symlink" in err.message) == ("forbidden", True)


async def test_a_symlinked_file_is_refused(web, state):
    (state / "passwd").symlink_to("/etc/passwd")
    err = await refused(web, "passwd")
    assert (err.code, "symlink" in err.message) == ("forbidden", True)


async def test_a_file_that_is_not_world_readable_is_refused(web, state):
    secret = state / "notes" / "token"
    secret.write_text("hunter2")
    os.chmod(secret, 0o600)
    err = await refused(web, "notes/token")
    assert (err.code, "world-readable" in err.message) == ("forbidden", True)


async def test_a_fifo_is_refused_without_blocking(web, state):
    os.mkfifo(state / "pipe")
    os.chmod(state / "pipe", 0o644)
    err = await refused(web, "pipe")
    assert (err.code, "regular file" in err.message) == ("forbidden", True)


async def test_an_oversize_file_is_refused(web, state):
    big = state / "big.log"
    big.write_bytes(b"x" * (STATE_FILE_MAX + 1))
    os.chmod(big, 0o644)
    err = await refused(web, "big.log")
    assert err.code == "too_large"


async def test_a_directory_that_is_not_world_searchable_is_refused(web, state):
    os.chmod(state / "notes", 0o700)
    err = await refused(web, "notes/plan.md")
    assert err.code == "forbidden"


async def test_missing_files_and_unknown_agents_are_not_found(web, state):
    assert (await refused(web, "notes/nope.md")).code == "not_found"
    with pytest.raises(HiveError) as err:
        await web.call(m.ReadAgentStateFile(agent="zed", rel_path="x"))
    assert err.value.code == "not_found"


async def test_a_listing_shows_entries_without_following_them(web, state):
    (state / "passwd").symlink_to("/etc/passwd")
    (state / "private").write_text("x")
    os.chmod(state / "private", 0o600)
    os.chmod(state / "notes", 0o755)
    listing = await web.expect(m.ListAgentStateDir(agent="alice"), m.AgentDir)
    kinds = {e.name: (e.kind, e.readable) for e in listing.entries}
    assert kinds["notes"] == ("dir", True)
    assert kinds["passwd"] == ("symlink", False)
    assert kinds["private"] == ("file", False)
    assert listing.entries[0].name == "notes"  # directories first
    sub = await web.expect(m.ListAgentStateDir(agent="alice", rel_path="notes"), m.AgentDir)
    assert [e.name for e in sub.entries] == ["plan.md"]
    with pytest.raises(HiveError) as err:
        await web.call(m.ListAgentStateDir(agent="alice", rel_path="passwd"))
    assert err.value.code == "forbidden"


async def test_the_journal_is_the_harness_log_tail_or_says_why_it_is_empty(web, hive):
    empty = await web.expect(m.ReadJournal(agent="bob"), m.Journal)
    assert empty.lines == []
    assert "no harness log yet" in empty.note
    log = hive.paths.agents_root / "bob" / "harness.log"
    log.write_text("".join(f"line {i}\n" for i in range(50)))
    tail = await web.expect(m.ReadJournal(agent="bob", lines=3), m.Journal)
    assert (tail.lines, tail.note, tail.path) == (["line 47", "line 48", "line 49"], "", str(log))


async def test_the_config_is_the_registry_record_and_the_hive_toml_section(web):
    got = await web.expect(m.ReadAgentConfig(agent="boss"), m.AgentConfigText)
    assert '[registry]\nname = "boss"\nrole = "manager"' in got.text
    assert "[agents.boss]" in got.text
    assert "network = true" in got.text


async def test_the_snapshot_carries_the_seq_to_follow_from(web, hive):
    async with HiveClient.connect(str(hive.paths.agent_sock("alice"))) as alice:
        await alice.expect(m.Send(to="operator", body="hi"), m.Sent)
        await alice.expect(m.Ask(target="operator", question="ok?", options=["y", "n"]), m.Asked)
        await alice.expect(m.Ask(target="bob", question="lunch?"), m.Asked)
    while hive.registry.agents["alice"].connections:  # its hang-up is an event too
        await trio.sleep(0.01)
    snap = await web.expect(m.Snapshot(), m.HiveState)
    assert snap.seq == hive.bus.seq
    assert [q.question for q in snap.questions] == ["ok?"]
    assert {msg.body for msg in snap.messages} >= {"hi"}
    assert snap.open_threads == {"alice": 2, "bob": 1, "boss": 0}
    assert [a.name for a in snap.agents] == ["alice", "bob", "boss"]
    focus = await web.expect(m.Snapshot(agent="bob", messages=10), m.HiveState)
    assert [(t.role, t.counterparty) for t in focus.threads] == [("target", "alice")]
    assert all("bob" in (msg.from_, msg.to) for msg in focus.messages)
    # nothing was missed between the snapshot and a subscription from its seq
    async with web.stream(m.Subscribe(since_seq=snap.seq)) as frames:
        assert isinstance(await frames.__anext__(), m.Subscribed)


async def test_the_dashboard_reads_are_admin_verbs_too_but_not_agent_verbs(hive, admin, state):
    got = await admin.expect(
        m.ReadAgentStateFile(agent="alice", rel_path="notes/plan.md"), m.AgentFile
    )
    assert got.size == 15
    async with HiveClient.connect(str(hive.paths.agent_sock("alice"))) as alice:
        with pytest.raises(HiveError) as err:
            await alice.call(m.ReadAgentStateFile(agent="alice", rel_path="notes/plan.md"))
    assert err.value.code == "forbidden"


async def test_the_config_names_env_variables_but_never_shows_their_values(nursery, short_tmp):
    from functools import partial

    from c0re_priv.daemon import run_hive
    from tests.conftest import make_config, paths_in

    config = make_config(
        agents={"eve": {"runtime": "claude", "env": {"CLAUDE_CODE_OAUTH_TOKEN": "sk-secret-value"}}}
    )
    hive = await nursery.start(
        partial(run_hive, config, paths_in(short_tmp, config), handle_signals=False)
    )
    async with HiveClient.connect(str(hive.paths.web_sock)) as web:
        got = await web.expect(m.ReadAgentConfig(agent="eve"), m.AgentConfigText)
    assert 'env = { CLAUDE_CODE_OAUTH_TOKEN = "(set)" }' in got.text
    assert "sk-secret-value" not in got.text
