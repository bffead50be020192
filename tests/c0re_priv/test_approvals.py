"""The manager asks, the operator decides: approvals over the meta repo, with real git and a
real daemon (agents are not running here; `tests/ag3nt/test_approvals_live.py` rebuilds live
ones)."""

from __future__ import annotations

import os
import subprocess
import tomllib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio

from c0re_priv import tombstones
from c0re_priv.errors import Fail
from c0re_priv.hive import Hive
from protocol import messages as m
from protocol.client import HiveClient, HiveError
from tests.conftest import make_config

MANAGER_ONLY = [t for t in m.MANAGER_REQUESTS if t not in m.AGENT_REQUESTS]


@pytest.fixture
def config():  # type: ignore[no-untyped-def]
    return make_config(
        agents={
            "boss": {"role": "manager"},
            "alice": {"model": "model-a", "env": {"API_TOKEN": "s3cret-value"}},
            "bob": {},
        }
    )


@asynccontextmanager
async def agent(hive: Hive, name: str) -> AsyncIterator[HiveClient]:
    async with HiveClient.connect(str(hive.paths.agent_sock(name)), client=f"test-{name}") as c:
        yield c


def git(hive: Hive, *args: str) -> str:
    out = subprocess.run(
        ["git", f"--git-dir={hive.paths.state_dir / 'meta'}", *args],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": os.devnull},
    )
    return out.stdout.strip()


def main_toml(hive: Hive, name: str, rev: str = "main") -> dict[str, object]:
    return tomllib.loads(git(hive, "show", f"{rev}:agents/{name}/agent.toml"))


async def row(admin: HiveClient, name: str) -> m.AgentRow:
    return (await admin.expect(m.AgentStatus(name=name), m.AgentInfo)).agent


async def inbox(client: HiveClient) -> list[str]:
    got = await client.expect(m.Recv(max=100), m.Deliveries)
    for d in got.items:
        await client.expect(m.Ack(lease=d.lease), m.Ok)
    return [d.message.body for d in got.items]


async def propose_model(boss: HiveClient, hive: Hive, name: str, model: str) -> m.Proposed:
    text = git(hive, "show", f"main:agents/{name}/agent.toml")
    changed = "\n".join(
        f'model = "{model}"' if line.startswith("model = ") else line for line in text.splitlines()
    )
    return await boss.expect(
        m.ProposeConfig(agent=name, agent_toml=changed + "\n", message=f"{name} on {model}"),
        m.Proposed,
    )


# ------------------------------------------------------------------ the meta repo


async def test_every_agent_has_its_config_in_the_meta_repo_and_runs_main(hive, admin):
    main = git(hive, "rev-parse", "main")
    assert git(hive, "ls-tree", "-r", "--name-only", "main") == "\n".join(
        f"agents/{n}/agent.toml" for n in ("alice", "bob", "boss")
    )
    alice = main_toml(hive, "alice")
    assert (alice["role"], alice["model"], alice["runtime"], alice["env"]) == (
        "agent",
        "model-a",
        "scripted",
        {},
    )
    assert "s3cret-value" not in git(hive, "log", "-p", "--all")  # hive.toml env stays out of git
    assert hive.config.agents["alice"].env == {"API_TOKEN": "s3cret-value"}  # and still applies
    for name in ("alice", "bob", "boss"):
        r = await row(admin, name)
        assert (r.deployed_sha, r.needs_update) == (main[:12], False)


async def test_a_non_manager_agent_cannot_express_any_manager_verb(hive):
    assert {m.op_of(t) for t in MANAGER_ONLY} >= {
        "request_spawn",
        "request_init_config",
        "propose_config",
        "request_apply_commit",
        "cancel_approval",
        "read_agent_config",
    }
    samples: dict[type[m.Request], m.Request] = {
        m.RequestSpawn: m.RequestSpawn(name="mallory"),
        m.RequestInitConfig: m.RequestInitConfig(name="mallory"),
        m.ProposeConfig: m.ProposeConfig(agent="alice", agent_toml='role = "manager"\n'),
        m.RequestApplyCommit: m.RequestApplyCommit(agent="alice", sha="main"),
        m.RequestUpdateMetaInputs: m.RequestUpdateMetaInputs(),
        m.CancelApproval: m.CancelApproval(id=1),
        m.ReadAgentConfig: m.ReadAgentConfig(agent="boss"),
    }
    assert set(samples) == set(MANAGER_ONLY)
    async with agent(hive, "alice") as alice:
        for req in samples.values():
            with pytest.raises(HiveError) as err:
                await alice.call(req)
            assert err.value.code == "forbidden", req
            assert "not available on the agent socket" in err.value.message
    assert git(hive, "branch", "--list") == "* main"
    async with HiveClient.connect(str(hive.paths.admin_sock)) as admin:
        assert (await admin.expect(m.ListApprovals(), m.Approvals)).approvals == []


# ------------------------------------------------------------------ apply_commit


async def test_a_proposal_waits_for_the_operator_then_deploys_exactly_the_pinned_commit(
    hive, admin
):
    before = git(hive, "rev-parse", "main")
    async with (
        agent(hive, "boss") as boss,
        admin.stream(m.Subscribe(kinds=["approval_added", "approval_resolved"])) as events,
    ):
        await anext(events)
        config = await boss.expect(m.ReadAgentConfig(agent="alice"), m.AgentConfigText)
        assert 'model = "model-a"' in config.text and "s3cret" not in config.text
        proposed = await propose_model(boss, hive, "alice", "model-b")
        assert proposed.branch == "proposals/alice"
        assert proposed.summary == 'model: "model-a" → "model-b"'
        assert git(hive, "rev-parse", "main") == before  # proposing deploys nothing
        asked = await boss.expect(
            m.RequestApplyCommit(agent="alice", sha="proposals/alice"), m.ApprovalInfo
        )
        approval = asked.approval
        assert (approval.kind, approval.status, approval.agent) == (
            "apply_commit",
            "pending",
            "alice",
        )
        assert (approval.ref, approval.sha) == ("proposals/alice", proposed.sha)
        assert 'model: "model-a" → "model-b"' in approval.description
        assert git(hive, "rev-parse", f"approval-{approval.id}") == proposed.sha
        added = (await anext(events)).event  # type: ignore[union-attr]
        assert isinstance(added, m.ApprovalAdded) and added.approval.id == approval.id

        # the manager amends its branch after asking: what was asked for stays pinned
        amended = await propose_model(boss, hive, "alice", "model-evil")
        assert git(hive, "rev-parse", "proposals/alice") == amended.sha != proposed.sha

        threads = await boss.expect(m.GetOpenThreads(), m.OpenThreads)
        assert [t.id for t in threads.threads if isinstance(t, m.ApprovalThread)] == [approval.id]
        shown = await admin.expect(m.GetApproval(id=approval.id), m.ApprovalInfo)
        assert '-model = "model-a"' in shown.diff and '+model = "model-b"' in shown.diff
        state = await admin.expect(m.Snapshot(), m.HiveState)
        assert [a.id for a in state.approvals] == [approval.id]

        done = await admin.expect(m.Approve(id=approval.id, note="go"), m.ApprovalInfo)
        assert (done.approval.status, done.approval.note) == ("approved", "go")
        assert proposed.sha[:12] in done.approval.outcome
        resolved = [(await anext(events)).event for _ in range(2)]  # type: ignore[union-attr]
        assert [e.approval.status for e in resolved] == ["approved", "approved"]  # type: ignore[union-attr]

        r = await row(admin, "alice")
        assert (r.deployed_sha, r.model, r.needs_update) == (proposed.sha[:12], "model-b", False)
        assert main_toml(hive, "alice")["model"] == "model-b"
        assert git(hive, "rev-parse", "main") == proposed.sha  # a fast-forward
        assert hive.config.agents["alice"].env == {"API_TOKEN": "s3cret-value"}
        told = await inbox(boss)
        assert len(told) == 1 and f"approval #{approval.id}" in told[0] and "approved" in told[0]
        assert (await boss.expect(m.GetOpenThreads(), m.OpenThreads)).threads == []

        with pytest.raises(HiveError) as twice:
            await admin.call(m.Approve(id=approval.id))
        assert twice.value.code == "conflict"
        with pytest.raises(HiveError) as late:
            await admin.call(m.Deny(id=approval.id))
        assert late.value.code == "conflict"
        with pytest.raises(HiveError) as mine:
            await boss.call(m.CancelApproval(id=approval.id))
        assert mine.value.code == "conflict"


async def test_deny_changes_nothing_and_tells_the_manager_why(hive, admin):
    before = git(hive, "rev-parse", "main")
    async with agent(hive, "boss") as boss:
        proposed = await propose_model(boss, hive, "bob", "model-x")
        asked = await boss.expect(
            m.RequestApplyCommit(agent="bob", sha=proposed.sha[:10]), m.ApprovalInfo
        )
        denied = await admin.expect(
            m.Deny(id=asked.approval.id, note="not this week"), m.ApprovalInfo
        )
        assert (denied.approval.status, denied.approval.note) == ("denied", "not this week")
        (told,) = await inbox(boss)
        assert "denied" in told and "not this week" in told and "Nothing was changed" in told
        with pytest.raises(HiveError) as err:
            await admin.call(m.Approve(id=asked.approval.id))
        assert err.value.code == "conflict"
    r = await row(admin, "bob")
    assert (r.deployed_sha, r.model) == (before[:12], "")
    assert git(hive, "rev-parse", "main") == before
    listed = await admin.expect(m.ListApprovals(status="denied"), m.Approvals)
    assert [a.id for a in listed.approvals] == [asked.approval.id]
    assert (await admin.expect(m.ListApprovals(status="pending"), m.Approvals)).approvals == []


async def test_two_operators_approving_at_once_carry_it_out_once(hive, admin):
    async with agent(hive, "boss") as boss:
        proposed = await propose_model(boss, hive, "bob", "model-y")
        asked = await boss.expect(
            m.RequestApplyCommit(agent="bob", sha=proposed.sha), m.ApprovalInfo
        )
    outcomes: list[str] = []

    async def click() -> None:
        async with HiveClient.connect(str(hive.paths.admin_sock)) as op:
            try:
                await op.expect(m.Approve(id=asked.approval.id), m.ApprovalInfo)
                outcomes.append("approved")
            except HiveError as exc:
                outcomes.append(exc.code)

    async with trio.open_nursery() as n:
        n.start_soon(click)
        n.start_soon(click)
    assert sorted(outcomes) == ["approved", "conflict"]
    assert (await row(admin, "bob")).deployed_sha == proposed.sha[:12]


async def test_bad_requests_are_refused_before_anything_is_pinned(hive, admin):
    async with agent(hive, "boss") as boss:
        for req, code in [
            (m.RequestApplyCommit(agent="alice", sha="no-such-branch"), "not_found"),
            (m.RequestApplyCommit(agent="alice", sha="main"), "invalid"),  # nothing to apply
            (m.RequestApplyCommit(agent="nobody", sha="main"), "not_found"),
            (m.ProposeConfig(agent="alice", agent_toml="model = [oops"), "invalid"),
            (m.ProposeConfig(agent="alice", agent_toml='colour = "red"\n'), "invalid"),
            (m.ProposeConfig(agent="alice", agent_toml='role = "manager"\n'), "invalid"),
            (m.RequestSpawn(name="alice"), "conflict"),
            (m.RequestSpawn(name="carol", runtime="gpt-shell"), "invalid"),
            (m.RequestUpdateMetaInputs(), "invalid"),  # bwrap: nothing is pinned
            (m.CancelApproval(id=12345), "not_found"),
        ]:
            with pytest.raises(HiveError) as err:
                await boss.call(req)
            assert err.value.code == code, (req, err.value.message)
        with pytest.raises(HiveError) as sha_option:
            await boss.call(m.RequestApplyCommit(agent="alice", sha="--output=/tmp/x"))
        assert sha_option.value.code == "invalid"  # the decoder refuses it: never reaches git
    assert (await admin.expect(m.ListApprovals(), m.Approvals)).approvals == []
    assert "approval-" not in git(hive, "tag", "--list")


async def test_a_manager_cancels_its_own_pending_approval_only(hive, admin):
    async with agent(hive, "boss") as boss:
        proposed = await propose_model(boss, hive, "bob", "model-z")
        asked = await boss.expect(
            m.RequestApplyCommit(agent="bob", sha=proposed.sha), m.ApprovalInfo
        )
        cancelled = await boss.expect(m.CancelApproval(id=asked.approval.id), m.ApprovalInfo)
        assert cancelled.approval.status == "cancelled"
        with pytest.raises(HiveError) as err:
            await admin.call(m.Approve(id=asked.approval.id))
        assert err.value.code == "conflict"


# ------------------------------------------------------------------ init_config and spawn


async def test_init_config_then_propose_then_spawn_uses_the_edited_config(hive, admin):
    async with agent(hive, "boss") as boss:
        init = await boss.expect(m.RequestInitConfig(name="carol"), m.ApprovalInfo)
        with pytest.raises(HiveError) as again:
            await boss.call(m.RequestInitConfig(name="carol"))
        assert again.value.code == "conflict"  # one pending per name
        done = await admin.expect(m.Approve(id=init.approval.id), m.ApprovalInfo)
        assert done.approval.status == "approved", done.approval.outcome
        template = await boss.expect(m.ReadAgentConfig(agent="carol"), m.AgentConfigText)
        assert 'parent = "boss"' in template.text and "not registered" in template.source
        edited = template.text.replace("network = true", "network = false")
        proposed = await boss.expect(m.ProposeConfig(agent="carol", agent_toml=edited), m.Proposed)
        assert proposed.summary == "network: true → false"
        applied = await boss.expect(
            m.RequestApplyCommit(agent="carol", sha=proposed.sha), m.ApprovalInfo
        )
        done = await admin.expect(m.Approve(id=applied.approval.id), m.ApprovalInfo)
        assert "not registered yet" in done.approval.outcome
        assert main_toml(hive, "carol")["network"] is False
        await inbox(boss)
    assert "carol" not in hive.registry.agents  # nothing runs until a spawn is approved


async def test_spawn_is_denied_without_a_trace(hive, admin):
    async with agent(hive, "boss") as boss:
        asked = await boss.expect(
            m.RequestSpawn(name="dave", role_description="reviews PRs", model="m1"),
            m.ApprovalInfo,
        )
        assert asked.approval.description == "spawn dave (scripted, m1): reviews PRs"
        shown = await admin.expect(m.GetApproval(id=asked.approval.id), m.ApprovalInfo)
        assert '+model = "m1"' in shown.diff and '+parent = "boss"' in shown.diff
        await admin.expect(m.Deny(id=asked.approval.id), m.ApprovalInfo)
        assert "no reason given" in (await inbox(boss))[0]
    assert "dave" not in hive.registry.agents
    assert "agents/dave" not in git(hive, "ls-tree", "-r", "--name-only", "main")
    assert not hive.paths.agent_sock("dave").exists()


# ------------------------------------------------------------------ tombstones


async def test_destroy_keeps_a_tombstone_and_purge_deletes_only_it(hive, admin):
    state = hive.paths.agent_state("bob")
    (state / "notes.md").write_text("keep me until purged")
    async with admin.stream(m.Subscribe(kinds=["tombstone_added", "tombstone_removed"])) as events:
        await anext(events)
        await admin.expect(m.Destroy(name="bob"), m.Ok)
        added = (await anext(events)).event  # type: ignore[union-attr]
        assert isinstance(added, m.TombstoneAdded) and added.tombstone.name == "bob"
        listed = await admin.expect(m.ListTombstones(), m.Tombstones)
        assert [t.name for t in listed.tombstones] == ["bob"]
        assert (hive.paths.state_dir / "tombstones" / "bob" / "state" / "notes.md").is_file()
        assert "agents/bob" not in git(hive, "ls-tree", "-r", "--name-only", "main")
        async with agent(hive, "boss") as boss:
            with pytest.raises(HiveError) as err:
                await boss.call(m.RequestSpawn(name="bob"))
            assert err.value.code == "conflict" and "purge" in err.value.message
        await admin.expect(m.PurgeTombstone(name="bob"), m.Ok)
        removed = (await anext(events)).event  # type: ignore[union-attr]
        assert removed == m.TombstoneRemoved(name="bob", seq=removed.seq, at=removed.at)
    assert not (hive.paths.state_dir / "tombstones" / "bob").exists()
    assert (await admin.expect(m.ListTombstones(), m.Tombstones)).tombstones == []


async def test_purge_with_hostile_names_deletes_nothing(hive, admin, short_tmp):
    root = hive.paths.state_dir / "tombstones"
    root.mkdir(exist_ok=True)
    (root / "keep").mkdir()
    (root / "keep" / "file").write_text("x")
    outside = short_tmp / "outside"
    outside.mkdir()
    (outside / "precious").write_text("y")
    (root / "link").symlink_to(outside)  # a symlinked "tombstone" pointing elsewhere
    (root / "plain").write_text("not a dir")
    hostile = ["..", ".", "", "/", "/etc", "../keep", "keep/..", "a\0b", "Keep", "x" * 40, "-rf"]
    for name in hostile:
        with pytest.raises(HiveError) as err:
            await admin.call(m.PurgeTombstone(name=name))
        assert err.value.code == "invalid", name  # the decoder refuses it
        with pytest.raises(Fail) as failed:
            tombstones.checked_path(hive.paths.state_dir, name)
        assert failed.value.code == "invalid", name  # and so does the daemon's own check
    for name, code in [("link", "forbidden"), ("plain", "forbidden"), ("ghost", "not_found")]:
        with pytest.raises(HiveError) as err:
            await admin.call(m.PurgeTombstone(name=name))
        assert err.value.code == code, name
    assert (root / "keep" / "file").read_text() == "x"
    assert (outside / "precious").read_text() == "y"
    assert (root / "link").is_symlink() and (root / "plain").is_file()
    assert hive.paths.state_dir.is_dir() and hive.paths.db.is_file()
    assert [t.name for t in (await admin.expect(m.ListTombstones(), m.Tombstones)).tombstones] == [
        "keep"
    ]


# ------------------------------------------------------------------ meta inputs


async def test_meta_inputs_are_empty_off_nixos_and_say_why(hive, admin):
    got = await admin.expect(m.ListMetaInputs(), m.MetaInputs)
    assert got.inputs == [] and "bwrap backend" in got.note and "nothing is pinned" in got.note
    with pytest.raises(HiveError) as err:
        await admin.call(m.UpdateMetaInputs())
    assert err.value.code == "invalid" and "nixos backend" in err.value.message
    state = await admin.expect(m.Snapshot(), m.HiveState)
    assert state.meta_inputs == [] and "bwrap backend" in state.meta_inputs_note


# ------------------------------------------------------------------ without git


async def test_without_git_the_hive_runs_and_the_gate_says_why(nursery, short_tmp, monkeypatch):
    from functools import partial

    from c0re_priv.daemon import run_hive
    from c0re_priv.meta_repo import MetaRepo
    from tests.conftest import paths_in

    monkeypatch.setattr(MetaRepo, "available", property(lambda self: False))
    config = make_config(agents={"boss": {"role": "manager"}, "alice": {"model": "m"}})
    hive = await nursery.start(
        partial(run_hive, config, paths_in(short_tmp, config), handle_signals=False)
    )
    async with agent(hive, "boss") as boss:
        for req in (m.RequestSpawn(name="carol"), m.ReadAgentConfig(agent="alice")):
            with pytest.raises(HiveError) as err:
                await boss.call(req)
            assert err.value.code == "unavailable" and "git is not installed" in err.value.message
    async with HiveClient.connect(str(hive.paths.admin_sock)) as admin:
        alice = await row(admin, "alice")
    assert (alice.model, alice.deployed_sha) == ("m", None)
    assert not (hive.paths.state_dir / "meta").exists()
