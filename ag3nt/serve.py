"""`python -m ag3nt serve`: build the agent's context and runtime, then run the harness."""

from __future__ import annotations

import logging
from pathlib import Path

import anyio

from .cli import command_prefix
from .harness import Harness
from .runtimes.base import AgentContext, Runtime

log = logging.getLogger("ag3nt.serve")
RUNTIMES = ("scripted", "claude")


def make_runtime(name: str) -> type[Runtime] | None:
    if name == "scripted":
        from .runtimes.scripted import ScriptedRuntime

        return ScriptedRuntime
    if name == "claude":
        from .runtimes.claude import ClaudeRuntime

        return ClaudeRuntime
    return None


def run_harness(
    socket: Path, runtime: str, state_dir: Path, rules: Path | None, model: str
) -> None:
    factory = make_runtime(runtime)
    if factory is None:
        raise SystemExit(
            f"ag3nt serve: unknown runtime {runtime!r} (choose from {', '.join(RUNTIMES)})"
        )
    ctx = AgentContext(
        name="",
        role="agent",
        model=model,
        socket=socket,
        state_dir=state_dir,
        ag3nt_command=command_prefix(),
        rules_file=rules,
    )
    harness = Harness(ctx, factory)
    # the log is what the operator reads after a crash: it must say why the harness stopped
    try:
        # asyncio: the official mcp client the runtimes use is developed and tested on it
        anyio.run(harness.serve, backend="asyncio")
    except KeyboardInterrupt:
        log.info("harness stopped: interrupted")
        raise
    except BaseException as exc:
        log.critical("harness stopped: %s: %s", type(exc).__name__, exc, exc_info=True)
        raise
    log.info("harness stopped: %s", harness.stop_reason or "its loop ended")
