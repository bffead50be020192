"""The daemon's state is its own: no other uid reads the messages, the logs or the meta repo.

Attacked as the issue did: a real `hive c0re` (root) running a real bwrap agent, and a
stranger's uid and the agent's own uid outside its sandbox trying to read `hive.sqlite`,
its `-wal`/`-shm`, the agent's `harness.log` and the state dirs. Each probe is first shown to
work on a world-readable file in the same place, so a refusal is the daemon's modes at work.
Loose modes left by an older daemon are tightened at start; a state dir of another uid, or a
symlink where the database belongs, is refused in one sentence.
"""

from __future__ import annotations

import dataclasses
import os
import pwd
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from c0re_priv.containers.bwrap import BwrapBackend
from c0re_priv.hive import Hive
from c0re_priv.lifecycle import _interpreter_paths
from protocol import messages as m
from protocol.client import SyncClient
from tests.c0re_priv.test_containers import probe_command, run_probe
from tests.conftest import DaemonProcess, make_config
from tests.security.conftest import as_uid, can_read, daemon_in, needs_root, unused_uid

needs_bwrap = pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap not installed")
SECRET = "the launch code is 0000"
ALICE_RUNNING = "[hive]\nautostart = true\n\n[agents.alice]\n"
ALICE_STOPPED = "[hive]\nautostart = false\n\n[agents.alice]\n"


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def wait_idle(daemon: DaemonProcess, name: str, timeout: float = 60.0) -> m.AgentRow:
    deadline = time.monotonic() + timeout
    while True:
        with SyncClient.connect(str(daemon.paths.admin_sock)) as c:
            row = c.expect(m.AgentStatus(name=name), m.AgentInfo).agent
        if row.harness_state == "idle" or time.monotonic() > deadline:
            assert row.harness_state == "idle", (row, daemon.log())
            return row
        time.sleep(0.2)


def private_paths(daemon: DaemonProcess) -> dict[str, Path]:
    state = daemon.paths.state_dir
    db = daemon.paths.db
    return {
        "state dir": state,
        "database": db,
        "database -wal": db.with_name(db.name + "-wal"),
        "database -shm": db.with_name(db.name + "-shm"),
        "agents root": daemon.paths.agents_root,
        "alice's dir": daemon.paths.agents_root / "alice",
        "alice's harness.log": daemon.paths.agents_root / "alice" / "harness.log",
        "meta repo": state / "meta",
        "alice's kept config": state / "deployed" / "alice.toml",
    }


@needs_root
@needs_bwrap
def test_no_other_uid_reads_messages_logs_or_state(open_tmp, daemons):
    daemon = daemon_in(open_tmp, ALICE_RUNNING)
    daemons.append(daemon)
    daemon.start()
    wait_idle(daemon, "alice")
    with SyncClient.connect(str(daemon.paths.admin_sock)) as c:
        c.expect(m.OperatorSend(to="alice", body=SECRET), m.Sent)
    paths = private_paths(daemon)
    for label, path in paths.items():
        assert path.exists(), label
    # the secret is really there, in bytes anyone could read if the modes let them
    stored = b"".join(paths[k].read_bytes() for k in ("database", "database -wal"))
    assert SECRET.encode() in stored
    assert mode(paths["state dir"]) == 0o700
    assert mode(paths["agents root"]) == 0o700
    assert mode(paths["alice's dir"]) == 0o700
    assert mode(paths["meta repo"]) == 0o700
    for label in ("database", "database -wal", "database -shm", "alice's harness.log"):
        assert mode(paths[label]) == 0o600, label
    assert mode(paths["alice's kept config"]) == 0o600

    control = open_tmp / "public.txt"
    control.write_text("anyone may read this")
    os.chmod(control, 0o644)
    stranger = unused_uid()
    agent_uid = os.stat(daemon.paths.agent_state("alice")).st_uid
    assert agent_uid != 0
    for uid in (stranger, agent_uid):
        assert can_read(uid, control), "the probe itself must work"
        readable = [label for label, path in paths.items() if can_read(uid, path)]
        assert readable == [], f"uid {uid} can read {readable}"
    # the dashboard's user, when this host has one, is just another uid to the state dir
    try:
        web = pwd.getpwnam("hive-web")
    except KeyError:
        pass
    else:
        assert [k for k, p in paths.items() if can_read(web.pw_uid, p, web.pw_gid)] == []


@needs_root
@needs_bwrap
async def test_inside_its_sandbox_an_agent_sees_its_state_and_not_the_daemons(hive: Hive):
    """The same agent, in the sandbox the daemon builds for it: its own state dir is there
    and writable (files it makes are 0644, for the manager's read-only view), the database
    and its own harness log are not there at all."""
    assert hive.lifecycle is not None
    await hive.lifecycle.ensure_uid("alice")
    spec = hive.lifecycle.spec("alice")
    state = spec.state_dir
    checks = [
        ("read", str(hive.paths.db)),
        ("read", str(spec.log_file)),
        ("read", str(hive.paths.state_dir)),
        ("read", str(state)),
        ("write", str(state / "made-by-alice")),
    ]
    probe = dataclasses.replace(spec, command=probe_command(checks))
    got = await run_probe(probe, BwrapBackend(ro_extra=_interpreter_paths()))
    assert got["uid"] == hive.registry.get("alice").uid
    assert got["checks"] == {
        f"read {hive.paths.db}": False,
        f"read {spec.log_file}": False,
        f"read {hive.paths.state_dir}": True,  # a sandbox tmpfs standing in for it: empty
        f"read {state}": True,
        f"write {state / 'made-by-alice'}": True,
    }
    assert mode(state / "made-by-alice") == 0o644  # the agent's umask, not the daemon's
    assert mode(spec.log_file) == 0o600


@needs_root
def test_loose_modes_left_by_an_older_daemon_are_tightened_at_start(open_tmp, daemons):
    daemon = daemon_in(open_tmp, ALICE_STOPPED)
    daemons.append(daemon)
    daemon.start()
    daemon.stop()
    paths = daemon.paths
    log = paths.agents_root / "alice" / "harness.log"
    log.write_text("an old log\n")
    loose = {
        paths.state_dir: 0o755,
        paths.agents_root: 0o755,
        paths.agents_root / "alice": 0o755,
        paths.db: 0o644,
        log: 0o644,
    }
    for path, bits in loose.items():
        os.chmod(path, bits)
    stranger = unused_uid()
    assert can_read(stranger, paths.db)  # as the issue found it
    daemon.start()
    for path in loose:
        assert mode(path) & 0o077 == 0, f"{path} is {mode(path):04o}"
        assert not can_read(stranger, path)
    said = daemon.log()
    assert f"private state: {paths.db} was 0644, now 0600" in said
    assert f"{log} was 0644, now 0600" in said


@needs_root
def test_a_state_dir_that_is_not_the_daemons_is_refused_in_one_sentence(open_tmp, daemons):
    daemon = daemon_in(open_tmp, ALICE_STOPPED)
    daemons.append(daemon)
    stranger = unused_uid()
    daemon.paths.state_dir.mkdir()
    os.chown(daemon.paths.state_dir, stranger, stranger)
    with pytest.raises(RuntimeError, match="daemon exited"):
        daemon.start(timeout=20)
    said = daemon.log()
    assert f"belongs to uid {stranger}, not to the daemon (uid 0)" in said
    assert "Traceback" not in said
    assert daemon.proc is not None and daemon.proc.returncode == 1


@needs_root
def test_a_symlink_where_the_database_belongs_is_refused(open_tmp, daemons):
    daemon = daemon_in(open_tmp, ALICE_STOPPED)
    daemons.append(daemon)
    daemon.paths.state_dir.mkdir(mode=0o700)
    elsewhere = open_tmp / "elsewhere.sqlite"
    elsewhere.write_bytes(b"")
    daemon.paths.db.symlink_to(elsewhere)
    with pytest.raises(RuntimeError, match="daemon exited"):
        daemon.start(timeout=20)
    said = daemon.log()
    assert "is not a regular file (a symlink or worse)" in said
    assert "Traceback" not in said


@pytest.fixture
def config():
    return make_config(agents={"alice": {}})


@needs_root
def test_parents_the_daemon_makes_let_others_reach_the_run_dir(open_tmp):
    """`HIVE_STATE_DIR=$PWD/hive2/state HIVE_RUN_DIR=$PWD/hive2/run` with no `hive2` yet (the
    README's second hive): made under the daemon's umask 077, `hive2` was 0700, so neither the
    dashboard (`hive-web`) nor any agent's uid could reach its socket, and that hive never
    delivered a message. The parents the daemon makes are 0755; a parent it did not make and
    others cannot enter is named in a warning at start."""
    config = open_tmp / "hive.toml"
    config.write_text("[hive]\nautostart = false\n")
    stranger = unused_uid()

    def start(top: Path) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "c0re_priv",
                "c0re",
                "--state-dir",
                str(top / "state"),
                "--run-dir",
                str(top / "run"),
                "--config",
                str(config),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )

    def serving(top: Path) -> bool:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not (top / "run" / "admin.sock").exists():
            time.sleep(0.05)
        return (top / "run" / "admin.sock").exists()

    made = open_tmp / "a" / "hive2"
    daemon = start(made)
    try:
        assert serving(made)
        assert (mode(open_tmp / "a"), mode(made)) == (0o755, 0o755)
        assert (mode(made / "state"), mode(made / "run")) == (0o700, 0o751)
        reach = ["/bin/sh", "-c", 'test -S "$1"', "probe", str(made / "run" / "web.sock")]
        assert as_uid(stranger, reach).returncode == 0
        assert not can_read(stranger, made / "state")
    finally:
        daemon.terminate()
        out, _ = daemon.communicate(timeout=30)
    assert b"cannot enter" not in out
    closed = open_tmp / "closed"
    closed.mkdir(mode=0o700)
    os.chmod(closed, 0o700)
    daemon = start(closed / "hive3")
    try:
        assert serving(closed / "hive3")
    finally:
        daemon.terminate()
        out, _ = daemon.communicate(timeout=30)
    said = out.decode()
    assert f"is inside {closed}, which other users cannot enter" in said, said
    assert "Traceback" not in said
