"""`python -m ag3nt serve`: build the agent's context and runtime, then run the harness."""

from __future__ import annotations

from pathlib import Path

import anyio

from .cli import command_prefix
from .harness import Harness
from .runtimes.base import AgentContext, Runtime

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
    # asyncio: the official mcp client the runtimes use is developed and tested on it
    anyio.run(harness.serve, backend="asyncio")
