"""A harness outlives its daemon's restart: it says it lost the daemon, reconnects and serves,
with no error and no traceback in its log (which is what the operator reads).

A real daemon subprocess, stopped with SIGTERM as `systemctl restart` does, and a real
`python -m ag3nt serve` harness (the scripted runtime, no rules: it reads and acks).
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import trio

from ag3nt import harness as harness_module
from ag3nt.harness import sole_cause
from ag3nt.runtimes.base import AgentContext, Runtime
from protocol import messages as m
from protocol.client import ConnectionLost, HiveError, SyncClient
from tests.conftest import DaemonProcess


def operator_send(daemon: DaemonProcess, body: str) -> int:
    with SyncClient.connect(str(daemon.paths.admin_sock)) as c:
        (mid,) = c.expect(m.OperatorSend(to="alice", body=body), m.Sent).message_ids
    return mid


def acked(daemon: DaemonProcess, mid: int) -> bool:
    with SyncClient.connect(str(daemon.paths.admin_sock)) as c:
        rows = c.expect(m.ListMessages(limit=50), m.Messages).messages
    return any(r.id == mid and r.state == "acked" for r in rows)


def wait(predicate: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def test_the_harness_reconnects_after_a_daemon_restart_without_an_error(
    daemon_process: DaemonProcess, tmp_path: Path
) -> None:
    log_path = tmp_path / "harness.log"
    argv = [sys.executable, "-m", "ag3nt", "serve", "--runtime", "scripted"]
    argv += ["--socket", str(daemon_process.paths.agent_sock("alice"))]
    argv += ["--state-dir", str(tmp_path)]
    with open(log_path, "wb") as log:
        harness = subprocess.Popen(argv, stderr=log)
    try:
        first = operator_send(daemon_process, "before the restart")
        wait(lambda: acked(daemon_process, first), "the first message to be acked")

        daemon_process.stop()
        wait(lambda: "lost the daemon" in log_path.read_text(), "the harness to notice")
        daemon_process.start()
        second = operator_send(daemon_process, "after the restart")
        wait(lambda: acked(daemon_process, second), "the harness to serve again")
    finally:
        harness.send_signal(signal.SIGTERM)
        harness.wait(20)
    text = log_path.read_text()
    assert "ERROR" not in text and "Traceback" not in text, text
    assert text.count("serving alice (agent) with the scripted runtime") == 2


def test_a_task_group_of_one_kind_of_failure_is_that_failure() -> None:
    lost = ConnectionLost()
    assert sole_cause(ExceptionGroup("g", [lost, ConnectionLost()])) is lost
    assert sole_cause(ExceptionGroup("g", [ExceptionGroup("h", [lost])])) is lost
    mixed = ExceptionGroup("g", [lost, ValueError("x")])
    assert sole_cause(mixed) is mixed
    refused = HiveError("forbidden", "no")
    assert sole_cause(refused) is refused


async def test_a_harness_whose_loop_keeps_crashing_exits_so_the_daemon_can_fail_the_agent(
    daemon_process: DaemonProcess, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A runtime that cannot even be made (as when the agent's uid could not reach its state
    dir) crashed the loop forever, retried every 30 s, while the agent looked alive and nothing
    reached the operator. After `MAX_CRASHES` in a row the harness exits instead."""
    monkeypatch.setattr(harness_module, "BACKOFF", (0.01,))
    made: list[int] = []

    def broken(ctx: AgentContext) -> Runtime:
        made.append(1)
        raise PermissionError(13, "Permission denied", str(ctx.state_dir / "rules.toml"))

    ctx = AgentContext(
        name="",
        role="agent",
        model="",
        socket=daemon_process.paths.agent_sock("alice"),
        state_dir=tmp_path,
        ag3nt_command=[],
    )
    with pytest.raises(harness_module.CrashLoop) as stopped, trio.fail_after(30):
        await harness_module.Harness(ctx, broken).serve()
    assert len(made) == harness_module.MAX_CRASHES
    assert isinstance(stopped.value.__cause__, PermissionError)
