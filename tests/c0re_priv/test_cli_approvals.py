"""`hive ctl` for the operator's gate, as an operator types it: approvals, tombstones, inputs."""

from __future__ import annotations

import subprocess
import sys

import msgspec

from protocol import messages as m
from protocol.client import SyncClient
from tests.conftest import DaemonProcess


def ctl(daemon: DaemonProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "c0re_priv", "ctl", *args, "--run-dir", str(daemon.paths.run_dir)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def ask_for_model(daemon: DaemonProcess, name: str, model: str) -> m.ApprovalRow:
    with SyncClient.connect(str(daemon.paths.agent_sock("boss"))) as boss:
        text = boss.expect(m.ReadAgentConfig(agent=name), m.AgentConfigText).text
        proposed = boss.expect(
            m.ProposeConfig(
                agent=name, agent_toml=text.replace('model = ""', f'model = "{model}"')
            ),
            m.Proposed,
        )
        return boss.expect(
            m.RequestApplyCommit(agent=name, sha=proposed.sha), m.ApprovalInfo
        ).approval


def test_list_show_approve_and_deny_from_the_command_line(daemon_process: DaemonProcess) -> None:
    first = ask_for_model(daemon_process, "alice", "model-1")
    second = ask_for_model(daemon_process, "bob", "model-2")
    listed = ctl(daemon_process, "approvals", "--status", "pending")
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.splitlines()[0].split() == [
        "ID",
        "KIND",
        "AGENT",
        "BY",
        "STATUS",
        "ASKED",
        "DESCRIPTION",
    ]
    assert [line.split()[:3] for line in listed.stdout.splitlines()[1:]] == [
        [str(second.id), "apply_commit", "bob"],
        [str(first.id), "apply_commit", "alice"],
    ]
    shown = ctl(daemon_process, "approval", str(first.id))
    assert shown.returncode == 0, shown.stderr
    assert f"pinned as tag approval-{first.id}" in shown.stdout
    assert '+model = "model-1"' in shown.stdout
    approved = ctl(daemon_process, "approve", str(first.id), "--note", "fine", "--json")
    assert approved.returncode == 0, approved.stderr
    row = msgspec.json.decode(approved.stdout, type=m.ApprovalRow)
    assert (row.status, row.note) == ("approved", "fine")
    again = ctl(daemon_process, "approve", str(first.id))
    assert again.returncode == 1 and "can be resolved once" in again.stderr
    denied = ctl(daemon_process, "deny", str(second.id), "--note", "no")
    assert denied.returncode == 0 and "(denied)" in denied.stdout
    assert ctl(daemon_process, "approvals", "--status", "pending").stdout.count("\n") == 1
    assert "invalid" in ctl(daemon_process, "approvals", "--status", "maybe").stderr
    with SyncClient.connect(str(daemon_process.paths.admin_sock)) as c:
        rows = {a.name: a for a in c.expect(m.ListAgents(), m.Agents).agents}
    assert (rows["alice"].model, rows["alice"].deployed_sha) == ("model-1", row.sha[:12])  # type: ignore[index]
    assert rows["bob"].model == ""
    daemon_process.stop()  # what runs, and what was decided, survive a restart
    daemon_process.start()
    with SyncClient.connect(str(daemon_process.paths.admin_sock)) as c:
        alice = c.expect(m.AgentStatus(name="alice"), m.AgentInfo).agent
        decided = c.expect(m.ListApprovals(), m.Approvals).approvals
    assert (alice.model, alice.deployed_sha, alice.needs_update) == ("model-1", row.sha[:12], False)  # type: ignore[index]
    assert [a.status for a in decided] == ["denied", "approved"]


def test_tombstones_purge_and_meta_inputs_from_the_command_line(
    daemon_process: DaemonProcess,
) -> None:
    assert ctl(daemon_process, "destroy", "bob", "--yes").returncode == 0
    listed = ctl(daemon_process, "tombstones")
    assert listed.stdout.splitlines()[1].startswith("bob ")
    hostile = ctl(daemon_process, "purge", "../state", "--yes")
    assert hostile.returncode == 1 and "invalid" in hostile.stderr
    purged = ctl(daemon_process, "purge", "bob", "--yes")
    assert purged.returncode == 0 and purged.stdout.strip() == "bob: tombstone purged"
    assert ctl(daemon_process, "tombstones", "--json").stdout.strip() == "[]"
    inputs = ctl(daemon_process, "meta-inputs")
    assert inputs.returncode == 0 and "nothing is pinned" in inputs.stdout
    update = ctl(daemon_process, "update-meta-inputs")
    assert update.returncode == 1 and "nixos backend" in update.stderr
