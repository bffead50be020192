"""Agents run only configs the operator approved, even when the meta repo cannot be opened.

The meta repo in git holds every agent's approved config; hive.toml only seeds it. When the
daemon starts and the repo cannot be opened (here its git config is garbage), nothing falls
back to hive.toml: an agent runs the config last deployed to it (the daemon keeps a copy
beside the commit), an agent that never had one is refused with a clear error, and the
log says so. Once the repo opens again, all is as before.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path

import pytest
import trio

from c0re_priv.config import HiveConfig
from c0re_priv.daemon import run_hive
from c0re_priv.hive import Hive
from protocol import messages as m
from protocol.client import HiveClient, HiveError
from tests.conftest import make_config, paths_in


@contextlib.asynccontextmanager
async def daemon(root: Path, config: HiveConfig) -> AsyncIterator[Hive]:
    async with trio.open_nursery() as nursery:
        hive: Hive = await nursery.start(
            partial(run_hive, config, paths_in(root, config), handle_signals=False)
        )
        yield hive
        nursery.cancel_scope.cancel()


async def start_refused(hive: Hive, name: str) -> str:
    async with HiveClient.connect(str(hive.paths.admin_sock)) as admin:
        with pytest.raises(HiveError) as refused:
            await admin.call(m.Start(name=name))
    assert refused.value.code == "unavailable"
    return refused.value.message


async def test_an_unopenable_meta_repo_never_means_hive_toml(short_tmp, caplog):
    approved = make_config(agents={"alice": {"model": "approved-model", "pids": 64}})
    async with daemon(short_tmp, approved) as hive:
        sha = hive.configs.deployed["alice"].sha
    meta_config = short_tmp / "state" / "meta" / "config"
    good = meta_config.read_bytes()
    meta_config.write_text("[core\nthis is not a git config\n")

    # hive.toml now says something else for alice, and names carol, never deployed
    edited = make_config(
        agents={"alice": {"model": "toml-model", "pids": 999}, "carol": {"model": "c"}}
    )
    caplog.clear()
    async with daemon(short_tmp, edited) as hive:
        assert hive.configs.unavailable is not None
        assert hive.configs.deployed["alice"].sha == sha
        assert hive.registry.get("alice").model == "approved-model"
        assert hive.config.agents["alice"].pids == 64
        assert hive.lifecycle is not None
        assert hive.lifecycle.spec("alice").limits.pids == 64
        assert hive.configs.not_runnable("alice") is None
        why = await start_refused(hive, "carol")
        assert "carol: it has no deployed config and the meta repo is unavailable" in why
        assert "hive.toml is not used in its place" in why
    assert "meta repo unavailable" in caplog.text
    assert "1 agent(s) run the config last deployed to them" in caplog.text

    # without the kept copy either, alice is refused too
    (short_tmp / "state" / "deployed" / "alice.toml").unlink()
    async with daemon(short_tmp, edited) as hive:
        assert "alice: it has no deployed config" in await start_refused(hive, "alice")

    # the repo opens again: alice runs her approved commit, carol gets seeded
    meta_config.write_bytes(good)
    async with daemon(short_tmp, edited) as hive:
        assert hive.configs.unavailable is None
        assert hive.configs.deployed["alice"].sha == sha
        assert hive.config.agents["alice"].pids == 64
        assert "carol" in hive.configs.deployed
        assert (short_tmp / "state" / "deployed" / "alice.toml").exists()  # kept again
