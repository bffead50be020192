"""Wire shapes of the operator's controls for a swarm that spends money: the emergency stop,
budgets that pause by themselves, questions escalated before they go stale, and the inbox of
everything that waits on the operator (docs/operating.md, "Operator controls").

Like every feature module of `protocol.messages`, its verbs join the role unions
(`roles`), its events `AnyEvent` (`events`), and the package re-exports every name.
"""

from __future__ import annotations

from typing import Annotated, Literal

from msgspec import Meta, Struct

from .base import AgentName, Event, Reply, Request, RowId
from .questions import QuestionRow

BudgetKey = Literal["tokens_per_day", "tokens_total", "cost_per_day_usd", "cost_total_usd"]
"""A limit: tokens (input + output, as the runtime reports them) or cost in USD, per rolling
day (the last 24 hours) or in total."""
BUDGET_KEYS: tuple[BudgetKey, ...] = (
    "tokens_per_day",
    "tokens_total",
    "cost_per_day_usd",
    "cost_total_usd",
)
BudgetScope = Literal["hive", "each_agent", "agent"]
"""`hive`: every agent together; `each_agent`: every agent on its own, unless it has limits of
its own; `agent`: one agent (named by `agent`)."""
HoldKind = Literal["estop", "budget"]
LimitValue = Annotated[float, Meta(ge=0, le=1e15)]
InboxKind = Literal[
    "estop",
    "question",
    "approval",
    "dead_message",
    "failed_agent",
    "budget",
    "held_agent",
    "merge_request",
]
InboxAction = Literal[
    "thaw",
    "answer",
    "approve",
    "deny",
    "retry",
    "drop",
    "start",
    "raise_limit",
    "dismiss",
    "resume",
    "review",
]
EscalationStep = Literal["raised", "manager", "operator"]


# --------------------------------------------------------------------------- rows


class BudgetLimits(Struct, kw_only=True, forbid_unknown_fields=True):
    """Spending limits; an unset (`null`) limit is no limit. A day is the last 24 hours."""

    tokens_per_day: Annotated[int, Meta(ge=0, le=2**50)] | None = None
    tokens_total: Annotated[int, Meta(ge=0, le=2**50)] | None = None
    cost_per_day_usd: LimitValue | None = None
    cost_total_usd: LimitValue | None = None


class BudgetLimitRow(Struct, kw_only=True):
    """One limit as configured: where it is set and by whom."""

    scope: BudgetScope
    agent: str | None
    key: BudgetKey
    value: float | None
    """`null`: no limit (the operator lifted one hive.toml sets)."""
    source: Literal["hive.toml", "operator"]


class UsageRow(Struct, kw_only=True):
    """What one agent (or the whole hive) spent, from its turns' own figures, against the
    limits in force for it."""

    scope: Literal["hive", "agent"]
    agent: str | None
    turns_day: int
    tokens_day: int
    cost_day_usd: float
    turns_total: int
    tokens_total: int
    cost_total_usd: float
    limits: BudgetLimits
    """The limits in force (an agent's own, else `each_agent`'s; the hive's for the hive)."""
    used: float | None
    """The highest fraction of any limit in force that is used (1.0 = at the limit); `null`
    when no limit applies."""
    state: Literal["ok", "warn", "over"]
    held: str = ""
    """Why its budget keeps this agent from work (empty: it does not)."""


class BudgetAlertRow(Struct, kw_only=True):
    """A limit crossed: `warn` at the warn fraction, `limit` at the limit itself."""

    id: int
    scope: Literal["hive", "agent"]
    agent: str | None
    key: BudgetKey
    level: Literal["warn", "limit"]
    used: float
    limit: float
    at: float
    text: str
    state: Literal["open", "cleared", "dismissed"]
    """`cleared`: usage fell below the line again or the limit changed; `dismissed` by the
    operator."""


class EstopRow(Struct, kw_only=True):
    """The emergency stop: engaged or not, and what it did."""

    engaged: bool
    at: float | None = None
    """When it was last engaged."""
    reason: str = ""
    parked: list[str] = []
    """Every agent it keeps from work: all but the managers, at the time it was engaged."""
    cancelled: list[str] = []
    """Agents whose running turn it cancelled (their messages went back to the queue)."""
    stopped: list[str] = []
    """Agents whose harness did not park within `estop_grace_seconds`: their containers
    were stopped, and thawing starts them again."""
    park_seconds: float | None = None
    """From the stop to the last cancelled turn confirmed ended by its harness."""
    thawed_at: float | None = None
    resumed: list[str] = []
    """At the thaw: the agents free to work again (not those paused, or held by their
    budget, before or during the stop)."""


class InboxItem(Struct, kw_only=True):
    """One thing waiting on the operator, with what can be done about it."""

    key: str
    """Unique in the inbox: `<kind>:<ref>`."""
    kind: InboxKind
    ref: int | None
    """The question, approval, message, alert or merge request id (`null` for agents and the
    stop)."""
    agent: str | None
    at: float
    """When it started waiting on the operator; the inbox is newest first."""
    title: str
    detail: str = ""
    actions: list[InboxAction] = []
    command: str = ""
    """The `hive ctl` command that acts on it."""
    question: QuestionRow | None = None
    """For `question`: the question, with its options."""
    budget_key: BudgetKey | None = None
    """For `budget`: the limit crossed (`agent` is null for the hive's)."""


# --------------------------------------------------------------------------- requests


class EmergencyStop(Request, tag="estop"):
    """Stop every agent but the managers at once: running turns are cancelled and their
    messages go back to the queue (not counted as failures), harnesses are parked (they get
    no work), nothing is lost. Persisted: a daemon restart keeps the hive stopped. A harness
    that does not confirm within `estop_grace_seconds` has its container stopped.

    Answered by `EstopInfo` once every cancelled turn has ended (or its container stopped).
    Engaging it again parks whatever is not parked yet.
    """

    reason: Annotated[str, Meta(max_length=500)] = ""


class Thaw(Request, tag="thaw"):
    """Lift the emergency stop: exactly what it parked works again (an agent paused, or held
    by its budget, stays so) and containers it stopped are started. `conflict` when the hive
    is not stopped."""


class GetBudget(Request, tag="get_budget"):
    """Limits, usage per agent and for the hive, and budget alerts; answered by `Budget`."""


class SetBudget(Request, tag="set_budget"):
    """Change limits at run time (kept across restarts, over hive.toml's).

    `limits` sets keys (`null`: no limit); `reset` drops the operator's value of keys so
    hive.toml's applies again; `warn_fraction` changes when the operator is warned (hive-wide).
    Every limit is checked again at once: an agent held by a limit no longer crossed is
    released, one over a lowered limit is held. Answered by `Budget`.
    """

    scope: BudgetScope
    agent: AgentName | None = None
    """The agent, for `scope = "agent"` (and only then)."""
    limits: dict[BudgetKey, LimitValue | None] = {}
    reset: list[BudgetKey] = []
    warn_fraction: Annotated[float, Meta(gt=0, le=1)] | None = None


class DismissBudgetAlert(Request, tag="dismiss_budget_alert"):
    """Take a budget warning out of the inbox (it is raised again only after usage falls
    below the warn line and crosses it again)."""

    id: RowId


class GetInbox(Request, tag="get_inbox"):
    """Everything that waits on the operator, newest first (the emergency stop, when
    engaged, first of all); answered by `Inbox`."""

    limit: Annotated[int, Meta(ge=1, le=1000)] = 200


# --------------------------------------------------------------------------- replies


class EstopInfo(Reply, tag="estop"):
    estop: EstopRow


class Budget(Reply, tag="budget"):
    warn_fraction: float
    limits: list[BudgetLimitRow]
    """Every limit set, in hive.toml or by the operator."""
    usage: list[UsageRow]
    """The hive first, then every agent by name."""
    alerts: list[BudgetAlertRow]
    """Open alerts, newest first."""


class Inbox(Reply, tag="inbox"):
    items: list[InboxItem]
    total: int
    """How many items there are in all (more than `len(items)` when `limit` cut them)."""
    estop: EstopRow


# --------------------------------------------------------------------------- events


class EstopChanged(Event, tag="estop_changed"):
    """The emergency stop was engaged (`estop.engaged`) or thawed."""

    estop: EstopRow


class AgentHeld(Event, tag="agent_held"):
    """The daemon keeps an agent from work: the emergency stop, or its budget."""

    name: str
    hold: HoldKind
    reason: str


class AgentReleased(Event, tag="agent_released"):
    name: str
    hold: HoldKind
    reason: str


class BudgetAlerted(Event, tag="budget_alerted"):
    """A limit was crossed (the operator is told by message too), or an alert changed state."""

    alert: BudgetAlertRow


class BudgetChanged(Event, tag="budget_changed"):
    """The operator changed limits."""

    scope: BudgetScope
    agent: str | None


class QuestionEscalated(Event, tag="question_escalated"):
    """A question waited `question_stale_seconds`: it was raised again to its target, or
    escalated to a manager or to the operator (who may now answer it). Its asker is told."""

    question: QuestionRow
    step: EscalationStep
    to: str
