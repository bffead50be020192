"""Sandboxes live until they are stopped, and never outlive their daemon.

The first of these reproduces the trap that killed every sandbox 10 s after it started
(a death signal tied to a trio worker thread that retires when idle), with trio's idle
timeout shortened so the test does not wait 10 s; the rest kill real daemons with SIGKILL.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import trio
import trio._core._thread_cache as thread_cache

from c0re_priv.containers.host import MARK, end_leftovers, hive_id, marked
from c0re_priv.containers.spawn import spawn
from tests.conftest import DaemonProcess

pytestmark = pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap not installed")

SLEEPER = ["bwrap", "--die-with-parent", "--dev-bind", "/", "/", "sleep", "30"]


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


async def retire_worker_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make trio retire its idle worker threads after 0.2 s, and let them go idle."""
    monkeypatch.setattr(thread_cache, "IDLE_TIMEOUT", 0.2)
    await trio.to_thread.run_sync(lambda: None)  # a fresh worker, under the short timeout
    await trio.sleep(1.0)


async def test_the_trap_a_child_forked_by_a_worker_thread_dies_when_it_retires(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(thread_cache, "IDLE_TIMEOUT", 0.2)
    proc = await trio.lowlevel.open_process(SLEEPER)
    with trio.fail_after(10):
        status = await proc.wait()
    assert status == -signal.SIGKILL


async def test_a_sandbox_outlives_every_worker_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    child = spawn(SLEEPER, env=os.environ)
    try:
        await retire_worker_threads(monkeypatch)
        assert child.returncode is None and alive(child.pid)
    finally:
        child.kill()
        await child.wait()
        await child.aclose()


def write_config(root: Path, backend: str) -> Path:
    config = root / "hive.toml"
    config.write_text(
        f'[hive]\nbackend = "{backend}"\nstop_grace_seconds = 2\n\n'
        '[agents.boss]\nrole = "manager"\n\n[agents.alice]\n\n[agents.bob]\n'
    )
    return config


def wait_for(check, timeout: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def process_backend_unavailable() -> str | None:
    from c0re_priv.containers.process import ProcessBackend
    from c0re_priv.lifecycle import _interpreter_paths

    return ProcessBackend(code=(Path(sys.executable), *_interpreter_paths())).unavailable()


@pytest.mark.parametrize("backend", ["bwrap", "process"])
def test_no_container_survives_a_daemon_killed_with_sigkill(short_tmp: Path, backend: str) -> None:
    if backend == "process" and (why := process_backend_unavailable()):
        pytest.skip(f"the process backend cannot run from this checkout: {why}")
    daemon = DaemonProcess(short_tmp, write_config(short_tmp, backend))
    daemon.start()
    try:
        ours = hive_id(daemon.paths.state_dir)
        # three harnesses (python) plus, for bwrap, each sandbox's two bwrap processes
        wait_for(lambda: len(marked(ours)) >= (9 if backend == "bwrap" else 3))
        inside = marked(ours)
        assert inside
    finally:
        daemon.kill()
    wait_for(lambda: not any(alive(pid) for pid in inside), timeout=10)
    assert marked(ours) == []


def test_the_next_start_ends_what_a_predecessor_left(short_tmp: Path) -> None:
    """A process carrying the hive's mark that no death signal reached (here: started by
    hand, in a session of its own) is ended before the daemon starts any container."""
    state = short_tmp / "state"
    state.mkdir()
    ours = hive_id(state)
    leftover = subprocess.Popen(
        ["sleep", "300"], env={**os.environ, MARK: ours}, start_new_session=True
    )
    stranger = subprocess.Popen(
        ["sleep", "300"], env={**os.environ, MARK: "0123456789ab"}, start_new_session=True
    )
    config = short_tmp / "hive.toml"
    config.write_text("[hive]\nautostart = false\n\n[agents.alice]\n")
    daemon = DaemonProcess(short_tmp, config)
    try:
        daemon.start()
        assert leftover.wait(10) == -signal.SIGKILL
        assert stranger.poll() is None, "another hive's process was touched"
        assert "left running by a previous run of this hive" in daemon.log()
        daemon.stop()
    finally:
        for proc in (leftover, stranger):
            proc.kill()
            proc.wait()
        if daemon.proc is not None and daemon.proc.poll() is None:
            daemon.kill()


def test_end_leftovers_spares_other_hives_and_itself(short_tmp: Path) -> None:
    ours = hive_id(short_tmp)
    assert hive_id(short_tmp) == ours, "the id is kept"
    other = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)"],
        env={**os.environ, MARK: ours + "x"},
    )
    try:
        assert end_leftovers(ours) == []
        assert other.poll() is None
    finally:
        other.kill()
        other.wait()


def test_the_process_backend_refuses_code_its_agents_cannot_reach(short_tmp: Path) -> None:
    from c0re_priv.containers.process import ProcessBackend, hidden_from_others

    short_tmp.chmod(0o755)
    home = short_tmp / "home"
    program = home / "venv" / "bin" / "python"
    program.parent.mkdir(parents=True)
    for below in (program.parent, program.parent.parent):  # whatever the umask made them
        below.chmod(0o755)
    program.write_text("")
    program.chmod(0o755)
    home.chmod(0o700)
    problem = hidden_from_others([program])
    assert problem == f"{program} is out of their reach ({home} is mode 0700)"
    home.chmod(0o711)
    assert hidden_from_others([program]) is None
    program.chmod(0o750)
    assert (
        hidden_from_others([program]) == f"{program} is out of their reach ({program} is mode 0750)"
    )
    if os.geteuid() == 0:
        why = ProcessBackend(code=(program,)).unavailable()
        assert why is not None and why.startswith("agents run as their own uids, and ")
        assert why.endswith("or use the bwrap backend")
