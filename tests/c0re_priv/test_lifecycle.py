"""`lifecycle.py`: what is checked before a container starts (real bwrap sandboxes, as root)."""

from __future__ import annotations

import os
import shutil
from functools import partial
from pathlib import Path

import pytest
import trio

from c0re_priv.daemon import run_hive
from c0re_priv.hive import Hive
from protocol import messages as m
from protocol.client import HiveClient, HiveError
from tests.conftest import make_config, paths_in

pytestmark = [
    pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap not installed"),
    pytest.mark.skipif(os.geteuid() != 0, reason="agents get uids of their own only as root"),
]


async def test_a_rules_file_the_agent_cannot_read_is_refused_in_one_sentence(
    nursery: trio.Nursery, short_tmp: Path
) -> None:
    """An operator under umask 077 writes a 0600 rules file: the harness (the agent's uid)
    could not read it and would crash in a restart loop; `start` says why instead."""
    rules = short_tmp / "rules.toml"
    rules.write_text("# no rules\n")
    rules.chmod(0o600)
    config = make_config(stop_grace_seconds=2, agents={"alice": {"rules": str(rules)}})
    hive: Hive = await nursery.start(
        partial(run_hive, config, paths_in(short_tmp, config), handle_signals=False)
    )
    async with HiveClient.connect(str(hive.paths.admin_sock)) as admin:
        with pytest.raises(HiveError) as refused:
            await admin.expect(m.Start(name="alice"), m.AgentInfo)
        assert refused.value.code == "unavailable"
        assert refused.value.message == (
            f"cannot start alice: its rules file is not readable by the agent's uid "
            f"({rules} is mode 0600); make it readable to others, e.g. chmod o+r {rules}"
        )
        row = (await admin.expect(m.AgentStatus(name="alice"), m.AgentInfo)).agent
        assert row.container == "stopped" and row.restarts == 0 and not row.failed
        rules.chmod(0o644)
        await admin.expect(m.Start(name="alice"), m.AgentInfo)
        with trio.fail_after(30):
            while (
                await admin.expect(m.AgentStatus(name="alice"), m.AgentInfo)
            ).agent.harness_state == "":
                await trio.sleep(0.05)
        await admin.expect(m.Stop(name="alice"), m.AgentInfo)
