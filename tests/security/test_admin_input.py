"""Every admin input is validated: a runtime is one the harness knows, a model is a model name,
a name is a name, and a path a config names stays under the roots allowed for it.

The issue's `add_agent` with `runtime = "../../../bin/sh"` was accepted; now the admin
socket's decoder refuses it (`invalid`), as `hive ctl agent add` does before sending, and
the daemon refuses it again for every other way in (hive.toml, a spawn). A manager cannot
have the daemon bind a host file of its choosing into a sandbox by proposing `rules`.
"""

from __future__ import annotations

import sys
from typing import get_args

import pytest
import trio

from ag3nt import serve
from c0re_priv.config import ConfigError, load_config
from c0re_priv.hive import Hive
from protocol import messages as m
from protocol.client import HiveClient, HiveError


def test_the_protocols_runtimes_are_the_harness_runtimes():
    assert set(get_args(m.Runtime)) == set(serve.RUNTIMES)
    for name in get_args(m.Runtime):
        assert serve.make_runtime(name) is not None


@pytest.mark.parametrize(
    "fields",
    [
        {"runtime": "../../../bin/sh"},
        {"runtime": "/bin/sh"},
        {"runtime": "Scripted"},
        {"model": "--dangerously-skip-permissions"},
        {"model": "opus; rm -rf ~"},
        {"model": "opus\x1b]0;x\x07"},
        {"allowed_recipients": ["../../etc"]},
        {"allowed_recipients": ["bob\n"]},
        {"name": "../x"},
        {"name": "Alice"},
    ],
)
async def test_add_agent_refuses_what_is_not_a_runtime_model_or_name(hive: Hive, fields):
    req = m.AddAgent(**{"name": "dave", **fields})  # a Struct is not validated until decoded
    async with HiveClient.connect(str(hive.paths.admin_sock)) as admin:
        with pytest.raises(HiveError) as refused:
            await admin.call(req)
        assert refused.value.code == "invalid"
        rows = (await admin.expect(m.ListAgents(), m.Agents)).agents
    assert "dave" not in {r.name for r in rows}
    assert not (hive.paths.agents_root / "dave").exists()


async def test_good_names_pass(hive: Hive):
    async with HiveClient.connect(str(hive.paths.admin_sock)) as admin:
        row = (
            await admin.expect(
                m.AddAgent(
                    name="dave",
                    runtime="claude",
                    model="claude-sonnet-4-5",
                    allowed_recipients=["bob", "*", "operator"],
                ),
                m.AgentInfo,
            )
        ).agent
        assert (row.runtime, row.model) == ("claude", "claude-sonnet-4-5")
        with pytest.raises(HiveError) as not_running:
            await admin.call(m.SetModel(name="dave", model="opus[1m]"))
        assert not_running.value.code == "unavailable"  # decoded; dave has no harness yet
        with pytest.raises(HiveError) as bad:
            await admin.call(m.SetModel(name="dave", model="-x"))
        assert bad.value.code == "invalid"


async def test_hive_ctl_refuses_a_path_for_a_runtime(hive: Hive):
    done = await trio.run_process(
        [
            sys.executable,
            "-m",
            "c0re_priv",
            "ctl",
            "agent",
            "add",
            "eve",
            "--runtime",
            "../../../bin/sh",
            "--run-dir",
            str(hive.paths.run_dir),
        ],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    assert done.returncode == 1
    assert b"invalid agent" in done.stderr and b"runtime" in done.stderr


def test_hive_toml_refuses_an_unknown_runtime(tmp_path):
    path = tmp_path / "hive.toml"
    path.write_text('[agents.alice]\nruntime = "../../../bin/sh"\n')
    with pytest.raises(ConfigError, match="runtime"):
        load_config(path)


async def test_the_daemon_refuses_an_unknown_runtime_however_it_arrives(hive: Hive):
    with pytest.raises(Exception) as refused:
        await hive.roster.add("frank", "agent", "", "../../../bin/sh", None)
    assert getattr(refused.value, "code", "") == "invalid"
    assert "frank" not in hive.registry.agents


async def test_a_manager_cannot_point_rules_outside_the_agents_own_state(hive: Hive):
    async with HiveClient.connect(str(hive.paths.agent_sock("boss"))) as boss:
        text = (await boss.expect(m.ReadAgentConfig(agent="alice"), m.AgentConfigText)).text
        for outside in ("/etc/shadow", str(hive.paths.db), str(hive.paths.agent_state("bob"))):
            proposal = text.replace('rules = ""', f'rules = "{outside}"')
            assert proposal != text
            with pytest.raises(HiveError) as refused:
                await boss.call(m.ProposeConfig(agent="alice", agent_toml=proposal))
            assert refused.value.code == "invalid"
            assert "is outside alice's state dir" in refused.value.message
        inside = str(hive.paths.agent_state("alice") / "rules.toml")
        ok = text.replace('rules = ""', f'rules = "{inside}"')
        await boss.expect(m.ProposeConfig(agent="alice", agent_toml=ok), m.Proposed)


async def test_a_rules_file_in_an_agent_writable_tree_is_never_bound(hive: Hive):
    """Root resolves a bind's source: a symlink an agent planted in its state dir (or in
    /shared) must never become a bind of whatever it points at."""
    assert hive.lifecycle is not None
    planted = hive.paths.agent_state("alice") / "rules.toml"
    planted.symlink_to("/etc/shadow")
    hive.config.agents["alice"].rules = str(planted)
    assert hive.lifecycle.spec("alice").ro_files == ()
    shared = hive.lifecycle.shared_dir
    shared.mkdir(parents=True, exist_ok=True)
    (shared / "rules.toml").symlink_to("/etc/shadow")
    hive.config.agents["alice"].rules = str(shared / "rules.toml")
    assert hive.lifecycle.spec("alice").ro_files == ()
