"""Approvals that change running agents: harnesses in real bwrap sandboxes (scripted runtime)
rebuilt with an approved config, and an agent spawned through an approval."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path

import pytest
import trio

from c0re_priv.daemon import run_hive
from c0re_priv.hive import Hive
from protocol import messages as m
from protocol.client import HiveClient
from tests.conftest import make_config, paths_in

pytestmark = pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap not installed")
QUIET = "# no rules: every message is read and acked, nothing is sent\n"


@pytest.fixture
async def live(nursery: trio.Nursery, short_tmp: Path) -> AsyncIterator[Hive]:
    """boss (the manager, not started: the test speaks on its socket) and alice, running."""
    (short_tmp / "quiet.toml").write_text(QUIET)
    (short_tmp / "quiet.toml").chmod(0o644)  # the agents read it, whatever the umask
    rules = str(short_tmp / "quiet.toml")
    config = make_config(
        max_restarts=1,
        stop_grace_seconds=2,
        agents={
            "boss": {"role": "manager", "rules": rules},
            "alice": {"model": "model-a", "rules": rules},
        },
    )
    hive: Hive = await nursery.start(
        partial(run_hive, config, paths_in(short_tmp, config), handle_signals=False)
    )
    async with HiveClient.connect(str(hive.paths.admin_sock)) as admin:
        await admin.expect(m.Start(name="alice"), m.AgentInfo)
        await wait_row(admin, "alice", lambda r: r.active_model == "model-a")
    yield hive


async def wait_row(admin: HiveClient, name: str, ok, timeout: float = 30.0) -> m.AgentRow:  # type: ignore[no-untyped-def]
    with trio.fail_after(timeout):
        while True:
            row = (await admin.expect(m.AgentStatus(name=name), m.AgentInfo)).agent
            if ok(row):
                return row
            await trio.sleep(0.05)


async def propose(boss: HiveClient, name: str, edit) -> m.Proposed:  # type: ignore[no-untyped-def]
    current = await boss.expect(m.ReadAgentConfig(agent=name), m.AgentConfigText)
    return await boss.expect(m.ProposeConfig(agent=name, agent_toml=edit(current.text)), m.Proposed)


async def told(boss: HiveClient) -> list[str]:
    got = await boss.expect(m.Recv(max=100, wait_seconds=5), m.Deliveries)
    for d in got.items:
        await boss.expect(m.Ack(lease=d.lease), m.Ok)
    return [d.message.body for d in got.items]


async def test_an_approved_model_change_rebuilds_the_agent_onto_the_new_model(live):
    async with (
        HiveClient.connect(str(live.paths.admin_sock)) as admin,
        HiveClient.connect(str(live.paths.agent_sock("boss"))) as boss,
    ):
        before = (await admin.expect(m.AgentStatus(name="alice"), m.AgentInfo)).agent
        proposed = await propose(
            boss, "alice", lambda t: t.replace('model = "model-a"', 'model = "model-b"')
        )
        asked = await boss.expect(
            m.RequestApplyCommit(agent="alice", sha=proposed.branch), m.ApprovalInfo
        )
        state = await admin.expect(m.Snapshot(agent="boss"), m.HiveState)
        assert [a.id for a in state.approvals] == [asked.approval.id]
        assert [t.id for t in state.threads] == [asked.approval.id]  # boss's open thread
        done = await admin.expect(m.Approve(id=asked.approval.id), m.ApprovalInfo)
        assert done.approval.status == "approved", done.approval.outcome
        assert "rebuilt" in done.approval.outcome
        row = await wait_row(admin, "alice", lambda r: r.active_model == "model-b")
        assert (row.deployed_sha, row.model, row.container, row.needs_update) == (
            proposed.sha[:12],
            "model-b",
            "running",
            False,
        )
        assert row.deployed_sha != before.deployed_sha
        async with HiveClient.connect(str(live.paths.agent_sock("alice"))) as alice:
            assert (await alice.expect(m.Whoami(), m.Identity)).model == "model-b"
        (message,) = await told(boss)
        assert "approved and carried out" in message and proposed.sha[:12] in message


async def test_a_deploy_that_fails_puts_the_old_config_back_and_says_why(live):
    async with (
        HiveClient.connect(str(live.paths.admin_sock)) as admin,
        HiveClient.connect(str(live.paths.agent_sock("boss"))) as boss,
    ):
        before = (await admin.expect(m.AgentStatus(name="alice"), m.AgentInfo)).agent
        # a rules file that is not there (in alice's own state dir: the only other root
        # a config from the meta repo may name)
        missing = live.paths.agent_state("alice") / "nonexistent" / "rules.toml"
        proposed = await propose(
            boss,
            "alice",
            lambda t: "\n".join(
                f'rules = "{missing}"' if line.startswith("rules = ") else line
                for line in t.splitlines()
            ),
        )
        asked = await boss.expect(
            m.RequestApplyCommit(agent="alice", sha=proposed.sha), m.ApprovalInfo
        )
        done = await admin.expect(m.Approve(id=asked.approval.id), m.ApprovalInfo)
        assert done.approval.status == "failed"
        assert "harness failed to start" in done.approval.outcome
        assert "Last log lines:" in done.approval.outcome
        assert f"runs {before.deployed_sha}" in done.approval.outcome  # the old one, again
        row = await wait_row(admin, "alice", lambda r: r.harness_state == "idle")
        assert (row.deployed_sha, row.container, row.needs_update) == (
            before.deployed_sha,
            "running",
            True,  # main holds the approved config; it is not what runs
        )
        (message,) = await told(boss)
        assert "was approved but failed" in message and "nonexistent" in message


async def test_spawn_through_an_approval_registers_and_starts_the_new_agent(live):
    async with (
        HiveClient.connect(str(live.paths.admin_sock)) as admin,
        HiveClient.connect(str(live.paths.agent_sock("boss"))) as boss,
    ):
        asked = await boss.expect(
            m.RequestSpawn(
                name="carol",
                role_description="Reviews pull requests.",
                instructions="Be brief.",
                model="model-c",
            ),
            m.ApprovalInfo,
        )
        assert "carol" not in [
            a.name for a in (await admin.expect(m.ListAgents(), m.Agents)).agents
        ]
        done = await admin.expect(m.Approve(id=asked.approval.id), m.ApprovalInfo)
        assert done.approval.status == "approved", done.approval.outcome
        row = await wait_row(admin, "carol", lambda r: r.active_model == "model-c")
        assert (row.role, row.container, row.runtime) == ("agent", "running", "scripted")
        assert row.deployed_sha is not None and not row.needs_update
        notes = (live.paths.agent_state("carol") / "CLAUDE.md").read_text()
        assert "Reviews pull requests." in notes and "Be brief." in notes
        (sent,) = (
            await admin.expect(m.OperatorSend(to="carol", body="welcome"), m.Sent)
        ).message_ids
        with trio.fail_after(20):
            while True:
                rows = (await admin.expect(m.ListMessages(agent="carol"), m.Messages)).messages
                if any(r.id == sent and r.state == "acked" for r in rows):
                    break
                await trio.sleep(0.1)
        (message,) = await told(boss)
        assert "carol is registered and running" in message
