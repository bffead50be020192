"""Shared fixtures: real daemons on temporary sockets, in-process (trio) or as a subprocess."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import pytest
import trio

from c0re_priv.config import AgentConfig, HiveConfig, HiveSettings, Paths, resolve_paths
from c0re_priv.daemon import run_hive
from c0re_priv.hive import Hive
from protocol import messages as m
from protocol.client import HiveClient


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A temp dir with a short path: Unix socket paths are limited to 107 bytes."""
    path = Path(tempfile.mkdtemp(prefix="hv", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def make_config(**settings: object) -> HiveConfig:
    agents = settings.pop("agents", {})
    assert isinstance(agents, dict)
    settings.setdefault("autostart", False)  # tests that want running agents say so
    return HiveConfig(
        hive=HiveSettings(**settings),  # type: ignore[arg-type]
        agents={name: AgentConfig(**spec) for name, spec in agents.items()},
    )


def paths_in(root: Path, config: HiveConfig) -> Paths:
    return resolve_paths(config.hive, root / "state", root / "run")


@pytest.fixture
def config() -> HiveConfig:
    """Default test hive: a manager and two agents. Override in a test module to change it."""
    return make_config(
        agents={"boss": {"role": "manager"}, "alice": {}, "bob": {}},
    )


@pytest.fixture
async def hive(nursery: trio.Nursery, short_tmp: Path, config: HiveConfig) -> AsyncIterator[Hive]:
    """A real daemon in this trio run, serving real sockets under `short_tmp`."""
    started: Hive = await nursery.start(
        partial(run_hive, config, paths_in(short_tmp, config), handle_signals=False)
    )
    yield started


@pytest.fixture
async def admin(hive: Hive) -> AsyncIterator[HiveClient]:
    async with HiveClient.connect(str(hive.paths.admin_sock), client="test-admin") as client:
        yield client


@dataclass
class DaemonProcess:
    """`hive c0re` as a real subprocess; `kill()` is SIGKILL, `stop()` is SIGTERM."""

    root: Path
    config_file: Path
    proc: subprocess.Popen[bytes] | None = None
    wrapper: tuple[str, ...] = ()
    """Run the daemon under this command (e.g. `prlimit --nofile=1024:1024 --`)."""

    @property
    def paths(self) -> Paths:
        return resolve_paths(HiveSettings(), self.root / "state", self.root / "run")

    def start(self, timeout: float = 20.0) -> None:
        log = open(self.root / "daemon.log", "ab")  # noqa: SIM115 - owned by the child
        self.proc = subprocess.Popen(
            [
                *self.wrapper,
                sys.executable,
                "-m",
                "c0re_priv",
                "c0re",
                "--state-dir",
                str(self.root / "state"),
                "--run-dir",
                str(self.root / "run"),
                "--config",
                str(self.config_file),
            ],
            stdout=log,
            stderr=log,
        )
        deadline = time.monotonic() + timeout
        sock = self.paths.admin_sock
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"daemon exited: {(self.root / 'daemon.log').read_text()}")
            if sock.exists() and self._answers():
                return
            time.sleep(0.05)
        raise TimeoutError("daemon did not come up")

    def _answers(self) -> bool:
        from protocol import messages as m
        from protocol.client import HiveError, SyncClient

        try:
            with SyncClient.connect(str(self.paths.admin_sock), timeout=2) as c:
                c.expect(m.Ping(), m.Pong)
            return True
        except (HiveError, OSError):
            return False

    def stop(self, timeout: float = 20.0) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)

    def log(self) -> str:
        return (self.root / "daemon.log").read_text()


@pytest.fixture
def daemon_process(short_tmp: Path) -> Iterator[DaemonProcess]:
    """A daemon subprocess with agents boss (manager), alice and bob; started for you."""
    config_file = short_tmp / "hive.toml"
    config_file.write_text(
        '[hive]\nautostart = false\n\n[agents.boss]\nrole = "manager"\n\n[agents.alice]\n\n[agents.bob]\n'
    )
    daemon = DaemonProcess(short_tmp, config_file)
    daemon.start()
    try:
        yield daemon
    finally:
        if daemon.proc is not None and daemon.proc.poll() is None:
            daemon.proc.kill()
            daemon.proc.wait(10)


LONGEST_FIRST = (
    "tests/soak/test_soak.py",  # 120 s, most of it waiting: begun first, it overlaps the rest
    "tests/ag3nt/test_claude_runtime.py",  # 209 s
    "tests/bench/test_bench_smoke.py",  # 161 s
    "tests/ag3nt/test_mcp_server.py",  # 115 s
    "tests/ag3nt/test_harness.py",  # 88 s
    "tests/c0re_priv/test_federation.py",  # 73 s
    "tests/c0re_priv/test_estop.py",  # 62 s
    "tests/ag3nt/test_claude_hive.py",  # 59 s
    "tests/c0re_priv/test_budgets.py",  # 46 s
    "tests/c0re_priv/test_forge.py",  # 43 s
    "tests/c0re_priv/test_reminders.py",  # 40 s
    "tests/c0re_priv/test_delivery_model.py",  # 39 s
)
"""The files that take longest (2 workers on 2 cores, 2 December 2026), in the order the
workers start them (`--dist loadfile --no-loadscope-reorder` in test.sh): begun last, one of
them left a worker alone for the final minute or two. Every other file follows, in
collection order. A file missing here, or gone, only changes the order."""


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    first = {path: rank for rank, path in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: first.get(item.nodeid.split("::", 1)[0], len(first)))
    if os.environ.get("HIVE_SLOW"):
        return
    skip = pytest.mark.skip(reason="slow; set HIVE_SLOW=1")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


# ------------------------------------------------------------------ talking to a hive as its agents


@asynccontextmanager
async def agent(hive: Hive, name: str) -> AsyncIterator[HiveClient]:
    async with HiveClient.connect(str(hive.paths.agent_sock(name)), client=f"test-{name}") as c:
        yield c


async def recv_all(client: HiveClient, ack: bool = True) -> list[m.MessageRow]:
    got = await client.expect(m.Recv(max=100), m.Deliveries)
    if ack:
        for d in got.items:
            await client.expect(m.Ack(lease=d.lease), m.Ok)
    return [d.message for d in got.items]


async def state_of(admin: HiveClient, message_id: int) -> str:
    rows = (await admin.expect(m.ListMessages(limit=1000), m.Messages)).messages
    return next(r.state for r in rows if r.id == message_id)
