"""The contract between the harness and a runtime: one call per turn, typed outcomes.

A runtime turns a wake prompt into work (tool calls through the agent's MCP server) and
reports what happened as a `TurnStats`. It never acks or leases: the harness does that
around it, so a runtime that raises loses nothing (the message comes back). Failures that
the harness must treat differently are distinct exceptions.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from protocol.messages import MessageRow, TurnStats


class TurnFailed(Exception):
    """The turn did not complete; the message must be offered again."""


class RateLimited(TurnFailed):
    """The model provider refused for now; retry the same message after `retry_after` seconds."""

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class LoginRequired(TurnFailed):
    """The runtime has no valid login; an operator must log it in."""


@dataclass
class AgentContext:
    """Who the agent is and where its tools are, fixed for the harness's lifetime."""

    name: str
    role: str
    model: str
    socket: Path
    state_dir: Path
    ag3nt_command: list[str]
    """argv prefix that runs `python -m ag3nt` (its `mcp` command is the agent's MCP server)."""
    rules_file: Path | None = None
    extra_env: dict[str, str] = field(default_factory=dict)


@dataclass
class Turn:
    """One wake: the prompt to drive and the message that caused it."""

    prompt: str
    message: MessageRow


class Runtime(Protocol):
    name: str
    model: str

    async def turn(self, turn: Turn) -> TurnStats:
        """Drive one turn. Raises `TurnFailed` (or a subclass) when it did not complete."""
        ...

    async def compact(self) -> str:
        """Shrink the session context; return a one-line outcome for the operator."""
        ...

    async def new_session(self) -> str:
        """Forget the session; the next turn starts fresh. Return a one-line outcome."""
        ...

    def set_model(self, model: str) -> str:
        """Use `model` from the next turn on. Return a one-line outcome."""
        ...

    async def serve(self) -> None:
        """What the runtime keeps running for its life (an MCP session), run by the harness
        beside the turns and cancelled when the harness stops; may return at once."""
        ...

    async def aclose(self) -> None:
        """Release whatever the runtime holds (MCP sessions, subprocesses)."""
        ...
