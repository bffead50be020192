"""`hive ctl` lifecycle commands, as an operator types them, against a daemon running real
bwrap agents (scripted runtime)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time

import msgspec
import pytest

from protocol import messages as m
from tests.conftest import DaemonProcess

pytestmark = pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap not installed")


def ctl(daemon: DaemonProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "c0re_priv", "ctl", *args, "--run-dir", str(daemon.paths.run_dir)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def status(daemon: DaemonProcess, name: str) -> m.AgentRow:
    out = ctl(daemon, "status", name, "--json")
    assert out.returncode == 0, out.stderr
    return msgspec.json.decode(out.stdout, type=m.AgentRow)


def wait_until(check, timeout: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def test_start_stop_pause_resume_stats_and_destroy(daemon_process: DaemonProcess) -> None:
    d = daemon_process
    assert status(d, "alice").container in ("", "stopped")
    started = ctl(d, "start", "alice")
    assert started.returncode == 0 and started.stdout.startswith("alice: started"), started.stderr
    wait_until(lambda: status(d, "alice").running)

    sent = ctl(d, "send", "alice", "hello from the cli")
    assert sent.returncode == 0, sent.stderr
    wait_until(
        lambda: (
            (s := ctl(d, "stats", "alice", "--json")).returncode == 0
            and msgspec.json.decode(s.stdout)["turns"] >= 1
        )
    )

    assert ctl(d, "set-model", "alice", "opus-x").returncode == 0
    wait_until(lambda: status(d, "alice").active_model == "opus-x")

    assert ctl(d, "pause", "alice").returncode == 0
    row = status(d, "alice")
    assert row.paused and not row.running
    refused = ctl(d, "compact", "alice")
    assert refused.returncode == 1 and "not connected" in refused.stderr
    assert ctl(d, "resume", "alice").returncode == 0
    wait_until(lambda: status(d, "alice").running and not status(d, "alice").paused)

    stopped = ctl(d, "stop", "alice", "--now")
    assert stopped.returncode == 0 and "stopped" in stopped.stdout
    assert not status(d, "alice").running

    unknown = ctl(d, "start", "nobody")
    assert unknown.returncode == 1 and "nobody" in unknown.stderr
    bad = ctl(d, "start", "Not A Name")
    assert bad.returncode == 1 and "invalid" in bad.stderr

    asked = subprocess.run(
        [
            sys.executable,
            "-m",
            "c0re_priv",
            "ctl",
            "destroy",
            "bob",
            "--run-dir",
            str(d.paths.run_dir),
        ],
        input="n\n",
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert asked.returncode == 1 and "not destroyed" in asked.stderr
    assert ctl(d, "destroy", "bob", "--yes").returncode == 0
    names = [
        a.name
        for a in msgspec.json.decode(ctl(d, "agents", "--json").stdout, type=list[m.AgentRow])
    ]
    assert "bob" not in names and "alice" in names


def test_login_reads_the_token_from_stdin_and_never_prints_it(
    daemon_process: DaemonProcess,
) -> None:
    d = daemon_process
    cmd = [
        sys.executable,
        "-m",
        "c0re_priv",
        "ctl",
        "login",
        "alice",
        "--run-dir",
        str(d.paths.run_dir),
    ]
    given = subprocess.run(
        cmd, input="sk-ant-oat01-secret\n", capture_output=True, text=True, timeout=60, check=False
    )
    assert given.returncode == 0, given.stderr
    assert "login token set" in given.stdout and "secret" not in given.stdout + given.stderr
    assert status(d, "alice").has_login_token
    assert "secret" not in ctl(d, "status", "alice", "--json").stdout
    cleared = ctl(d, "login", "alice", "--clear")
    assert cleared.returncode == 0 and "forgotten" in cleared.stdout
    assert not status(d, "alice").has_login_token
    bad = subprocess.run(
        cmd, input="short\n", capture_output=True, text=True, timeout=60, check=False
    )
    assert bad.returncode == 1 and "invalid" in bad.stderr
