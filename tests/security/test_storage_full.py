"""A full disk is an honest, typed error, and the daemon stays up through it.

The hive's state lives on a small tmpfs that the test fills to the last byte (root mounts
it; without the right to mount, the test says so and is skipped). Then every write the
issue saw answered `internal` — `send`, an oversize body moved to a file, `remind`, `recv`'s
lease — answers `storage_full` with a message that says the disk is full; `ping` answers
throughout; nothing half-written is left behind; once space is freed everything works
again. A daemon restarted on the full disk opens its meta repo without writing to it, so
agents keep their approved configs.
"""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
import tempfile
from collections.abc import AsyncIterator, Iterator
from functools import partial
from pathlib import Path

import pytest
import trio

from c0re_priv.config import HiveConfig
from c0re_priv.daemon import run_hive
from c0re_priv.hive import Hive
from protocol import messages as m
from protocol.client import HiveClient, HiveError, SyncClient
from tests.conftest import DaemonProcess, make_config, paths_in
from tests.security.conftest import daemon_in, needs_root

DISK = "8m"


_mounted: list[Path] = []


def mount_tmpfs(where: Path) -> Path:
    """A fresh 8 MiB tmpfs at `where` (unmounted by the `unmount_all` fixture)."""
    where.mkdir(exist_ok=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={DISK},mode=0700", "tmpfs", str(where)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    _mounted.append(where)
    return where


@pytest.fixture(autouse=True)
def unmount_all() -> Iterator[None]:
    yield
    while _mounted:
        subprocess.run(["umount", "-l", str(_mounted.pop())], check=False)


@pytest.fixture
def small_disk() -> Iterator[Path]:
    root = Path(tempfile.mkdtemp(prefix="hf", dir="/tmp"))
    try:
        yield mount_tmpfs(root)
    finally:
        subprocess.run(["umount", "-l", str(root)], check=False)
        with contextlib.suppress(OSError):
            root.rmdir()


def fill(disk: Path) -> Path:
    """Write a filler file until the disk refuses one more byte."""
    filler = disk / "filler"
    with open(filler, "wb", buffering=0) as fh:
        chunk = b"\0" * 65536
        with contextlib.suppress(OSError):
            while True:
                fh.write(chunk)
        with contextlib.suppress(OSError):
            while True:
                fh.write(b"\0")
    with pytest.raises(OSError) as refused:
        (disk / "one-more").write_bytes(b"x")
    assert refused.value.errno == errno.ENOSPC
    return filler


@contextlib.asynccontextmanager
async def daemon(disk: Path, config: HiveConfig) -> AsyncIterator[Hive]:
    async with trio.open_nursery() as nursery:
        hive: Hive = await nursery.start(
            partial(run_hive, config, paths_in(disk, config), handle_signals=False)
        )
        yield hive
        nursery.cancel_scope.cancel()


def hive_config() -> HiveConfig:
    return make_config(agents={"alice": {}, "bob": {}}, body_max_bytes=1024)


async def until_refused(call, attempts: int = 5000) -> HiveError:  # type: ignore[no-untyped-def]
    """Repeat a write until the full disk stops it; what stopped it."""
    for _ in range(attempts):
        try:
            await call()
        except HiveError as exc:
            return exc
    raise AssertionError(f"{attempts} writes fitted on a full disk")


def assert_says_full(err: HiveError) -> None:
    assert err.code == "storage_full", (err.code, err.message)
    assert "disk holding the hive's state is full" in err.message


@needs_root
async def test_a_full_disk_is_storage_full_for_every_write_and_the_daemon_stays_up(
    small_disk, caplog
):
    async with (
        daemon(small_disk, hive_config()) as hive,
        HiveClient.connect(str(hive.paths.admin_sock)) as admin,
        HiveClient.connect(str(hive.paths.agent_sock("alice"))) as alice,
        HiveClient.connect(str(hive.paths.agent_sock("bob"))) as bob,
    ):
        await admin.expect(m.OperatorSend(to="bob", body="before the disk filled"), m.Sent)
        filler = fill(small_disk)

        # an oversize body goes to a file first: that write fails, and leaves nothing
        spill = await until_refused(
            lambda: alice.expect(m.Send(to="bob", body="x" * 200_000), m.Sent), attempts=1
        )
        assert_says_full(spill)
        auto = hive.paths.agent_state("alice") / "auto-msg"
        assert not auto.exists() or list(auto.iterdir()) == []

        # plain sends, until the database's own file cannot grow
        assert_says_full(
            await until_refused(lambda: admin.expect(m.OperatorSend(to="bob", body="hi"), m.Sent))
        )
        assert_says_full(
            await until_refused(lambda: alice.expect(m.Send(to="bob", body="hi"), m.Sent))
        )
        assert_says_full(
            await until_refused(
                lambda: alice.expect(m.Remind(body="later", in_seconds=3600), m.Reminded)
            )
        )
        leased = await until_refused(lambda: bob.expect(m.Recv(max=1), m.Deliveries), attempts=50)
        assert_says_full(leased)
        await admin.expect(m.Ping(), m.Pong)  # the daemon is up and answering

        filler.unlink()  # space again: everything works
        await admin.expect(m.OperatorSend(to="bob", body="after"), m.Sent)
        await alice.expect(m.Remind(body="later", in_seconds=3600), m.Reminded)
        got = await bob.expect(m.Recv(max=10), m.Deliveries)
        assert "before the disk filled" in [d.message.body for d in got.items]
        spilled = await alice.expect(m.Send(to="bob", body="y" * 200_000), m.Sent)
        assert spilled.body_file and os.path.getsize(spilled.body_file) == 200_000

    assert not [r for r in caplog.records if "internal error" in r.getMessage()]
    assert not [r for r in caplog.records if r.exc_info is not None]


@needs_root
def test_restarted_on_a_full_disk_agents_keep_their_approved_configs(open_tmp, daemons, caplog):
    """The issue's run: the disk fills under a running daemon, which is killed and started
    again on the full disk with a hive.toml that says otherwise. The meta repo opens (it is
    not written to) and alice runs what was approved, not what hive.toml now says."""
    state = mount_tmpfs(open_tmp / "state")
    daemon = daemon_in(open_tmp, ALICE.format(model="approved-model", pids=64))
    daemons.append(daemon)
    daemon.start()
    approved = status(daemon, "alice")
    assert approved.model == "approved-model" and approved.deployed_sha
    fill(state)
    daemon.kill()  # -wal and -shm stay, as after a crash
    daemon.config_file.write_text(ALICE.format(model="toml-model", pids=999))
    daemon.start()
    row = status(daemon, "alice")
    assert (row.model, row.deployed_sha) == ("approved-model", approved.deployed_sha)
    assert "meta repo unavailable" not in daemon.log()
    kept = (state / "deployed" / "alice.toml").read_text()
    assert "pids = 64" in kept


ALICE = '[hive]\nautostart = false\n\n[agents.alice]\nmodel = "{model}"\npids = {pids}\n'


def status(daemon: DaemonProcess, name: str) -> m.AgentRow:
    with SyncClient.connect(str(daemon.paths.admin_sock)) as c:
        return c.expect(m.AgentStatus(name=name), m.AgentInfo).agent


@needs_root
def test_a_daemon_that_cannot_open_its_database_on_a_full_disk_says_so(open_tmp, daemons):
    state = mount_tmpfs(open_tmp / "state")
    daemon = daemon_in(open_tmp, ALICE.format(model="m", pids=64))
    daemons.append(daemon)
    fill(state)
    with pytest.raises(RuntimeError, match="daemon exited"):
        daemon.start()
    said = daemon.log()
    # the first write of a start is the hive id, then the database: either says the disk is full
    assert "cannot start: cannot " in said and "is full" in said, said
    assert "Traceback" not in said
