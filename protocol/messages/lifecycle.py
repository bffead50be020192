"""Containers and runtimes: the operator's controls, the harness's reports and what they publish."""

from __future__ import annotations

from typing import Annotated, Literal

from msgspec import Meta, Struct

from .base import MODEL_PATTERN, AgentName, ControlAction, Count, Event, MessageId, Reply, Request


class TurnStats(Struct, kw_only=True):
    """One runtime turn, as the harness measured it."""

    ok: bool
    result: Annotated[str, Meta(max_length=4000)] = ""
    tool_calls: list[Annotated[str, Meta(max_length=128)]] = []
    input_tokens: Count = 0
    output_tokens: Count = 0
    cost_usd: Annotated[float, Meta(ge=0, le=1e9)] = 0.0
    duration_ms: Count = 0
    message_id: MessageId | None = None


class StatsRow(Struct, kw_only=True):
    turns: int
    failed_turns: int
    tool_calls: int
    input_tokens: int
    output_tokens: int
    cost_usd: float
    duration_ms: int
    last_turn_at: float | None


class Start(Request, tag="start"):
    """Start an agent's container (and so its harness)."""

    name: AgentName


class Stop(Request, tag="stop"):
    """Stop an agent's container; `graceful` lets the running turn finish first (bounded)."""

    name: AgentName
    graceful: bool = True


class Restart(Request, tag="restart"):
    """Stop then start an agent's container."""

    name: AgentName


class Rebuild(Request, tag="rebuild"):
    """Recreate an agent's container from its config, then start it.

    The agent gets a "container rebuilt" system message that drives a turn.
    """

    name: AgentName


class RebuildAll(Request, tag="rebuild_all"):
    """Rebuild every agent: the manager first, then the others; the manager is told the outcome."""


class SetPaused(Request, tag="set_paused"):
    """Pause (stop, and keep stopped across daemon restarts) or unpause an agent."""

    name: AgentName
    paused: bool


class Destroy(Request, tag="destroy"):
    """Stop and unregister an agent; its state dir is kept as a tombstone."""

    name: AgentName


class AgentStatus(Request, tag="agent_status"):
    """One agent's status row; answered by `AgentInfo`."""

    name: AgentName


class CancelTurn(Request, tag="cancel_turn"):
    """Ask an agent's harness to cancel the turn it is running (a `note` event tells the outcome)."""

    name: AgentName


class Compact(Request, tag="compact"):
    """Ask an agent's harness to compact its session context."""

    name: AgentName


class SetModel(Request, tag="set_model"):
    """Switch the model an agent's harness uses from its next turn on."""

    name: AgentName
    model: Annotated[str, Meta(min_length=1, max_length=128, pattern=MODEL_PATTERN)]


class NewSession(Request, tag="new_session"):
    """Ask an agent's harness to start a fresh session (forgetting the conversation)."""

    name: AgentName


class GetAgentStats(Request, tag="get_agent_stats"):
    """Turn statistics of one agent (turns, tokens, cost, failures)."""

    name: AgentName


class SetAgentLogin(Request, tag="set_agent_login"):
    """Give a `claude` agent a login: a long-lived token from `claude setup-token`.

    The daemon keeps it in a root-only file and hands it to the agent's runtime as
    `CLAUDE_CODE_OAUTH_TOKEN`, restarting the agent if it runs. `token = null` forgets it.
    The token is never sent back by any verb; `AgentRow.has_login_token` says one is set.
    """

    name: AgentName
    token: Annotated[str, Meta(min_length=8, max_length=4096, pattern=r"^[\x21-\x7e]+$")] | None


class WaitForControl(Request, tag="wait_for_control"):
    """Harness only: stream the operator's controls for this agent as `ControlFrame`s."""


class ReportState(Request, tag="report_state"):
    """Harness only: what the harness is doing now (idle, turn, rate_limited, needs_login, error)."""

    state: Literal["idle", "turn", "rate_limited", "needs_login", "error"]
    reason: Annotated[str, Meta(max_length=2000)] = ""
    model: Annotated[str, Meta(max_length=128)] | None = None


class ReportTurn(Request, tag="report_turn"):
    """Harness only: one finished turn's numbers."""

    turn: TurnStats


class ReportControl(Request, tag="report_control"):
    """Harness only: the outcome of an operator control (published as a `note` event)."""

    action: ControlAction
    ok: bool
    detail: Annotated[str, Meta(max_length=2000)] = ""


class GetLogs(Request, tag="get_logs"):
    """Your own harness log, last `lines` lines."""

    lines: Annotated[int, Meta(ge=1, le=5000)] = 200


class ControlFrame(Reply, tag="control"):
    action: ControlAction
    model: str | None = None
    leases: list[str] = []
    """`park`: the leases whose turns to cancel (the daemon has already taken them back)."""


class Stats(Reply, tag="stats"):
    name: str
    stats: StatsRow


class Logs(Reply, tag="logs"):
    lines: list[str]
    path: str


class AgentStateChanged(Event, tag="agent_state_changed"):
    name: str
    state: str
    reason: str


class Note(Event, tag="note"):
    agent: str | None
    text: str


class NeedsLogin(Event, tag="needs_login"):
    name: str
    reason: str


class LoggedIn(Event, tag="logged_in"):
    name: str


class TurnRecorded(Event, tag="turn_recorded"):
    name: str
    turn: TurnStats
