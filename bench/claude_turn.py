"""One claude turn through the real Claude Code CLI: MCP server started per run vs kept loaded.

A turn is what the harness does for each message to a claude agent: `ClaudeRuntime.turn` runs
`claude -p` (the pinned CLI that `./test.sh` installs), which starts the MCP server named in
its config, asks the model, calls the `send` tool the model asks for, asks again, and exits.
The model is the Messages API TEST STAND-IN (`tests/stand_ins/messages_api.py`, a subprocess
on 127.0.0.1: the real API cannot be reached from here); it answers a wake with one `send`
back to the sender, then with a line of text. The daemon is a subprocess, as in production.

- **Baseline**: the runtime alone, as every turn ran before: the config starts
  `python -m ag3nt mcp`, which imports the `mcp` SDK and builds its tools for each run.
- **Compared**: the same runtime with `serve` running beside it, as the harness runs it: the
  server stays loaded in this process (`ag3nt.mcp_listener`) and each run starts the
  stdlib-only `ag3nt.mcp_relay` instead.

Turns of both alternate. Per turn: wall time (`turn()` called → returned), and CPU of this
process (the runtime, and the loaded server when there is one) plus the CLI's process tree
(`RUSAGE_CHILDREN`: the CLI, and the per-run server it reaps). The stand-in model and the
daemon are other processes and not counted; the daemon's work is the same in both.

Run: `.venv/bin/python bench/claude_turn.py [--quick] [--json]`. It measures; it never judges.
"""

from __future__ import annotations

import logging
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import anyio
from daemon_process import Daemon, running_daemon
from measure import percentile
from report import Report, parse_args

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the stand-in model lives with the tests

from ag3nt.cli import command_prefix  # noqa: E402
from ag3nt.harness import wake_prompt  # noqa: E402
from ag3nt.runtimes.base import AgentContext, Turn  # noqa: E402
from ag3nt.runtimes.claude import ClaudeRuntime  # noqa: E402
from protocol import messages as m  # noqa: E402
from protocol.client import SyncClient  # noqa: E402
from tests.stand_ins.messages_api import API_KEY, OFFLINE_ENV  # noqa: E402

SECTION = "one claude turn (real CLI, stand-in model): wake → send tool call → text"
PER_RUN = "MCP server started per run (python -m ag3nt mcp)"
LOADED = "MCP server kept loaded in the harness (ag3nt.mcp_relay)"
CONFIG = '[hive]\nautostart = false\nbackend = "process"\n\n[agents.alice]\n\n[agents.bob]\n'


def claude_binary() -> Path:
    """The pinned CLI `./test.sh` installs into the venv (or `HIVE_TEST_CLAUDE`)."""
    path = Path(
        os.environ.get("HIVE_TEST_CLAUDE")
        or Path(sys.prefix) / "claude-code" / "node_modules" / ".bin" / "claude"
    )
    if not os.access(path, os.X_OK):
        raise SystemExit(
            f"no Claude Code CLI at {path}: run ./test.sh once, or "
            "`bash -c 'source scripts/bootstrap.sh; ensure_claude_code'`"
        )
    return path


@contextmanager
def stand_in_model() -> Iterator[str]:
    """The stand-in Messages API as a subprocess; yields its base URL."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.stand_ins.messages_api"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        yield proc.stdout.readline().strip()
    finally:
        proc.terminate()
        proc.wait(10)


def cpu_now() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def message(daemon: Daemon, body: str) -> m.MessageRow:
    with SyncClient.connect(str(daemon.paths.agent_sock("bob"))) as bob:
        (mid,) = bob.expect(m.Send(to="alice", body=body), m.Sent).message_ids
    with SyncClient.connect(str(daemon.paths.admin_sock)) as admin:
        rows = admin.expect(m.ListMessages(limit=20), m.Messages).messages
    return next(r for r in rows if r.id == mid)


async def bench(report: Report, turns: int, scratch: Path) -> None:
    with running_daemon(scratch, CONFIG, ["alice", "bob"]) as daemon, stand_in_model() as url:

        def runtime(state: Path) -> ClaudeRuntime:
            """alice's runtime with a state dir (and so a Claude session) of its own."""
            state.mkdir()
            env = {"ANTHROPIC_BASE_URL": url, "ANTHROPIC_API_KEY": API_KEY, **OFFLINE_ENV}
            env |= {"HIVE_CLAUDE_BIN": str(claude_binary()), "HOME": str(state)}
            ctx = AgentContext(
                name="alice",
                role="agent",
                model="claude-sonnet-4-5",
                socket=daemon.paths.agent_sock("alice"),
                state_dir=state,
                ag3nt_command=command_prefix(),
                extra_env=env,
            )
            return ClaudeRuntime(ctx)

        per_run, loaded = runtime(scratch / "per-run"), runtime(scratch / "loaded")
        samples: dict[str, list[tuple[float, float]]] = {PER_RUN: [], LOADED: []}

        async def timed(label: str, runtime: ClaudeRuntime, n: int) -> None:
            row = message(daemon, f"turn {n}")
            turn = Turn(prompt=wake_prompt(row, 0), message=row)
            cpu0, t0 = cpu_now(), time.perf_counter()
            stats = await runtime.turn(turn)
            wall, cpu = time.perf_counter() - t0, cpu_now() - cpu0
            if not stats.ok or stats.tool_calls != ["send"]:
                raise RuntimeError(f"{label}: turn {n} did not send: {stats}")
            if n >= 0:  # the first of each is a warm-up (the CLI's own first-run files)
                samples[label].append((wall, cpu))

        async with anyio.create_task_group() as tg:
            if await tg.start(loaded.serve) is None:
                raise RuntimeError("the runtime could not keep its MCP server loaded")
            for n in range(-1, turns):
                await timed(PER_RUN, per_run, n)
                await timed(LOADED, loaded, n)
            tg.cancel_scope.cancel()
    for label, got in samples.items():
        walls = [w * 1000 for w, _ in got]
        cpus = [c * 1000 for _, c in got]
        extra: dict[str, Any] = {
            "p50_ms": percentile(walls, 50),
            "max_ms": max(walls),
            "cpu_ms_per_turn": percentile(cpus, 50),
            "turns": len(got),
        }
        report.add(
            SECTION,
            label,
            extra["p50_ms"],
            "ms p50",
            f"max {extra['max_ms']:.0f} ms; CPU {extra['cpu_ms_per_turn']:.0f} ms/turn (p50)",
            **extra,
        )
    report.ratio("turn wall: loaded / per run", LOADED, PER_RUN)
    report.ratio("turn CPU: loaded / per run", LOADED, PER_RUN, key="cpu_ms_per_turn")


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    logging.basicConfig(level=logging.WARNING)  # before the SDK installs its own at INFO
    report = Report("claude_turn", args.quick)
    with tempfile.TemporaryDirectory(prefix="hv-bench-", dir="/tmp") as scratch:
        anyio.run(bench, report, 2 if args.quick else 12, Path(scratch), backend="asyncio")
    report.emit(args.json)


if __name__ == "__main__":
    main()
