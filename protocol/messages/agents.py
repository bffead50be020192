"""The registry: agents added, removed, listed, and the status line each one sets."""

from __future__ import annotations

from typing import Annotated

from msgspec import Meta, Struct

from .base import (
    AgentName,
    AgentRole,
    ContainerState,
    Event,
    ModelName,
    RecipientName,
    Reply,
    Request,
    Runtime,
)
from .federation import RemoteAgentRow


class AgentRow(Struct, kw_only=True):
    name: str
    role: AgentRole
    model: str
    runtime: str
    allowed_recipients: list[str] | None
    running: bool
    status_text: str
    status_set_at: float | None
    last_seen: float | None
    created_at: float
    queued: int
    leased: int
    # container and harness state (the lifecycle supervisor's view)
    backend: str = ""
    container: ContainerState = "stopped"
    failed: bool = False
    paused: bool = False
    needs_login: bool = False
    needs_update: bool = False
    parent: str | None = None
    deployed_sha: str | None = None
    active_model: str = ""
    harness_state: str = ""
    """What the harness last reported: idle, turn, rate_limited, needs_login, error."""
    limits: str = ""
    """Resource limits in force, or why none could be applied."""
    restarts: int = 0
    has_login_token: bool = False
    """A login token was given with `SetAgentLogin` (the token itself is never sent)."""
    # reminders, for the dashboard chip
    reminders_pending: int = 0
    reminders_delivered: int = 0
    reminders_failed: int = 0
    # the operator's controls (docs/operating.md, "Operator controls")
    held: str = ""
    """Why the daemon keeps this agent from work (the emergency stop, its budget); empty: it
    does not. A held agent's harness runs but is given no message."""
    failed_at: float | None = None
    """When the agent became `failed`."""
    tokens_today: int = 0
    """Tokens (input + output) its turns reported in the last 24 hours."""
    cost_today_usd: float = 0.0
    tokens_total: int = 0
    cost_total_usd: float = 0.0
    budget_used: float | None = None
    """The highest fraction of any of its own limits used (1.0 = at the limit); `null`: none."""


class AddAgent(Request, tag="add_agent"):
    """Register an agent and open its socket `agents/<name>.sock`."""

    name: AgentName
    role: AgentRole = "agent"
    model: ModelName = ""
    runtime: Runtime = "scripted"
    allowed_recipients: list[RecipientName] | None = None


class RemoveAgent(Request, tag="remove_agent"):
    """Unregister an agent and remove its socket. Its messages stay in the log."""

    name: AgentName


class ListAgents(Request, tag="list_agents"):
    """Every registered agent; answered by `Agents`.

    `include_remote`: also every agent of the other hives of the federation, as they last
    published themselves (`Agents.remote`, read only).
    """

    include_remote: bool = False


class SetStatus(Request, tag="set_status"):
    """Say what you are doing; shown on the dashboard next to your name."""

    text: Annotated[str, Meta(max_length=500)]


class Agents(Reply, tag="agents"):
    agents: list[AgentRow]
    remote: list[RemoteAgentRow] = []
    """With `include_remote`: the other hives' agents, by hive then name."""


class AgentInfo(Reply, tag="agent"):
    agent: AgentRow


class AgentAdded(Event, tag="agent_added"):
    agent: AgentRow


class AgentRemoved(Event, tag="agent_removed"):
    name: str


class StatusChanged(Event, tag="status_changed"):
    name: str
    text: str
