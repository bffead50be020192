"""Every wire shape of hyperhive: requests, replies, events and the rows they carry.

This module is the schema, the validator and the documentation at once: constraints live on
the fields (`Meta`), and nothing outside `protocol/` defines a wire shape. Requests travel
inside a `Call{id, req}` envelope whose `id` every reply echoes, so a verb is free to use
`id` for the thing it acts on (`CancelAsk{id}`). Each socket role decodes `req` with its own
union (`AGENT_REQUESTS`, `MANAGER_REQUESTS`, `WEB_REQUESTS`, `ADMIN_REQUESTS`): a verb that
is not in a role's union cannot even be expressed on that role's socket.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, TypeAlias, get_args

import msgspec
from msgspec import Meta, Struct, field

PROTOCOL_VERSION = "1.0"
"""major.minor; a peer with another major is refused with `Error{code="version"}`."""

AGENT_NAME_PATTERN = r"^[a-z][a-z0-9-]{0,30}\Z"
AgentName = Annotated[str, Meta(pattern=AGENT_NAME_PATTERN, max_length=31)]
"""An agent's name: lowercase letter, then up to 30 of `[a-z0-9-]`. Never a path."""

Recipient = Annotated[str, Meta(min_length=1, max_length=63)]
"""An agent name, `"operator"`, `"*"` (every other agent), or `name@hive` in another hive
(see docs/federation.md)."""

RecipientName = Annotated[str, Meta(pattern=r"^(\*|[a-z][a-z0-9-]{0,30})\Z", max_length=31)]
"""An entry of `allowed_recipients`: an agent name, `"operator"` or `"*"`."""

Runtime = Literal["scripted", "claude"]
"""The runtimes a harness knows (`ag3nt/runtimes`); nothing else is ever passed to one."""

MODEL_PATTERN = r"^([A-Za-z0-9][A-Za-z0-9._:@/+\[\]-]*)?\Z"
ModelName = Annotated[str, Meta(pattern=MODEL_PATTERN, max_length=128)]
"""A model name as a runtime takes it (`claude-sonnet-4-5`, `opus[1m]`); empty: the
runtime's default. No spaces, no control characters, never starting with `-`."""

Role = Literal["agent", "manager", "web", "admin"]
AgentRole = Literal["agent", "manager"]
MessageState = Literal["queued", "leased", "acked", "dead", "dropped", "forwarded"]
"""`forwarded`: a message to another hive that JetStream has stored (`acked` once its
recipient there acked it)."""
MessageKind = Literal["message", "question", "answer", "system", "reminder"]
ContainerState = Literal["stopped", "starting", "running", "stopping", "crashed", "failed"]
ControlAction = Literal["cancel", "compact", "set_model", "new_session"]
QuestionState = Literal["open", "answered", "cancelled", "expired"]
ReminderState = Literal["pending", "delivered", "failed", "cancelled"]
ErrorCode = Literal[
    "bad_frame",
    "unknown_op",
    "invalid",
    "not_found",
    "forbidden",
    "too_large",
    "version",
    "rate_limited",
    "conflict",
    "unavailable",
    "storage_full",
    "internal",
]

RowId = Annotated[int, Meta(ge=1, le=2**63 - 1)]
"""A row id: what a sqlite INTEGER PRIMARY KEY can hold (larger is `invalid`, not `internal`)."""
MessageId = RowId
ReminderId = RowId
QuestionId = RowId
Count = Annotated[int, Meta(ge=0, le=2**40)]
"""A reported count (tokens, milliseconds): bounded so sums over many turns stay in 64 bits."""
Body = Annotated[str, Meta(max_length=262_144)]
"""Message text; the frame limit bounds it, the daemon's body cap moves the excess to a file."""


# --------------------------------------------------------------------------- handshake


class Hello(Struct, tag="hello", tag_field="op", kw_only=True, forbid_unknown_fields=True):
    """The client's first frame on every connection."""

    protocol: Annotated[str, Meta(max_length=16)]
    client: Annotated[str, Meta(max_length=64)] = ""


class Welcome(Struct, tag="welcome", tag_field="type", kw_only=True):
    """The daemon's answer to `Hello`: who the socket says you are."""

    protocol: str
    role: Role
    agent: str | None
    server_rev: str


# --------------------------------------------------------------------------- rows


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


class RemoteAgentRow(Struct, kw_only=True):
    """An agent of another hive, as that hive last published it (read only)."""

    address: str
    """`name@hive`: what to send to."""
    hive: str
    name: str
    role: AgentRole
    model: str
    runtime: str
    running: bool
    container: str
    status_text: str
    status_set_at: float | None
    queued: int
    heard_at: float
    """When this hive last received that hive's status (its clock, not theirs)."""


class RemoteHiveRow(Struct, kw_only=True):
    hive: str
    agents: int
    status_at: float
    """When that hive published its last status (its own clock)."""
    heard_at: float
    """When this hive received it."""


class FederationRow(Struct, kw_only=True):
    """The federation link of this hive, as `hive ctl federation` and the dashboard show it."""

    enabled: bool
    hive: str = ""
    url: str = ""
    link: Literal["disabled", "connecting", "connected", "disconnected"] = "disabled"
    detail: str = ""
    """The last connection error, or what the link is doing."""
    outbox_pending: int = 0
    """Envelopes committed here and not yet stored by JetStream."""
    outbox_oldest_at: float | None = None
    outbox_last_error: str | None = None
    published: int = 0
    """Envelopes published since this daemon started."""
    received: int = 0
    """Envelopes committed from other hives since this daemon started."""
    duplicates: int = 0
    """Envelopes received again and dropped by id since this daemon started."""
    rejected: int = 0
    """Envelopes terminated as unreadable or forged since this daemon started."""
    hives: list[RemoteHiveRow] = []


class MessageRow(Struct, kw_only=True):
    id: int
    from_: str = field(name="from")
    to: str
    body: str
    in_reply_to: int | None
    thread: int
    """Id of the root message of this conversation (itself when it is a root)."""
    kind: MessageKind
    state: MessageState
    attempts: int
    broadcast: bool
    hint: str | None
    question_id: int | None
    created_at: float
    acked_at: float | None
    reminder_id: int | None = None
    """Set on a `reminder` message: the reminder it delivers."""
    failures: int = 0
    """How many of its turns failed (a `Nack`, a lost connection, an expired lease); at
    `max_attempts` the message is `dead`."""
    not_before: float | None = None
    """A message whose turn failed is not offered again before this time (backoff)."""
    last_error: str | None = None
    """Why its last attempt failed (a `Nack` reason, a lost connection, an expired lease)."""


class Delivery(Struct, kw_only=True):
    """A message leased to its recipient; `Ack{lease}` marks it delivered."""

    lease: str
    message: MessageRow
    expires_at: float | None = None
    """When the lease runs out unless acked or renewed (`Renew`)."""


class QuestionRow(Struct, kw_only=True):
    id: int
    asker: str
    target: str
    question: str
    options: list[str] | None
    multi: bool
    asked_at: float
    expires_at: float | None
    state: QuestionState
    answer: str | None
    answered_at: float | None
    message_id: int


class ReminderRow(Struct, kw_only=True):
    id: int
    owner: str
    body: str
    """The text to deliver (an excerpt and a file path when the body was over the cap)."""
    due_at: float
    state: ReminderState
    created_at: float
    next_attempt_at: float | None
    """When the scheduler tries next (later than `due_at` after a failed attempt)."""
    attempt_count: int
    """Delivery attempts so far, the successful one included (`RetryReminder` resets it)."""
    last_error: str | None
    delivered_at: float | None
    message_id: int | None
    """The `reminder` message it became, once delivered."""


class AskRow(Struct, kw_only=True):
    id: int
    target: str
    question: str
    asked_at: float


class ApprovalThread(Struct, tag="approval", tag_field="kind", kw_only=True):
    id: int
    agent: str
    summary: str
    age_seconds: float


class QuestionThread(Struct, tag="question", tag_field="kind", kw_only=True):
    id: int
    agent: str
    """Whose thread this is: the asker when `role="asker"`, the target otherwise."""
    role: Literal["asker", "target"]
    counterparty: str
    summary: str
    age_seconds: float


OpenThread: TypeAlias = ApprovalThread | QuestionThread


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


class DirEntry(Struct, kw_only=True):
    """One entry of an agent's state dir, as `ListAgentStateDir` sees it (never followed)."""

    name: str
    kind: Literal["file", "dir", "symlink", "other"]
    size: int
    mtime: float
    readable: bool
    """World-readable (a dir: and searchable), so the daemon would serve it to the dashboard."""


ApprovalKind = Literal["spawn", "init_config", "apply_commit", "update_meta_inputs"]
ApprovalStatus = Literal["pending", "approved", "denied", "failed", "cancelled"]
ApprovalId = RowId
GitRev = Annotated[str, Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,199}\Z")]
"""A commit sha (full or abbreviated) or a branch/tag name of the meta repo; never an option."""
InputName = Annotated[str, Meta(pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}\Z")]
"""The name of a pinned input of the meta repo's flake (`nixpkgs`, `hyperhive`, …)."""
OperatorNote = Annotated[str, Meta(max_length=2000)]


class ApprovalRow(Struct, kw_only=True):
    """One request of the manager that waits for (or got) the operator's decision."""

    id: int
    agent: str
    """The agent it is about (for `spawn` and `init_config`: the name to create)."""
    kind: ApprovalKind
    description: str
    """What approving does, in one paragraph (for `apply_commit`: the keys it changes)."""
    requested_by: str
    requested_at: float
    status: ApprovalStatus
    resolved_at: float | None
    note: str | None
    """The operator's note given with `Approve` or `Deny`."""
    outcome: str = ""
    """What carrying it out did: the deployed commit, or why it failed (with the log tail)."""
    ref: str | None = None
    """`apply_commit`: the ref or sha the manager named."""
    sha: str | None = None
    """`apply_commit`: the commit pinned when it was requested (tag `approval-<id>`); what
    approving deploys, whatever the named ref points at later."""


class TombstoneRow(Struct, kw_only=True):
    """A destroyed agent's directory, kept until it is purged."""

    name: str
    path: str
    destroyed_at: float


class MetaInputRow(Struct, kw_only=True):
    """One pinned input of the meta repo's flake (`flake.lock`)."""

    name: str
    url: str
    rev: str
    last_modified: float | None


# --------------------------------------------------------------------------- requests


class Request(Struct, tag_field="op", kw_only=True, forbid_unknown_fields=True):
    """Base of every verb; the concrete class's `tag` is its `op` on the wire."""


class Ping(Request, tag="ping"):
    """Liveness check; answered by `Pong`."""


class Cancel(Request, tag="cancel"):
    """End a streaming request of this connection (`Subscribe`, `WaitForWork`)."""

    call: Annotated[int, Meta(ge=0)]


class ServerInfo(Request, tag="server_info"):
    """Daemon revision, protocol, uptime and directories; answered by `Info`."""


class Subscribe(Request, tag="subscribe"):
    """Stream events (`EventFrame`), replaying those after `since_seq` from the buffer.

    Answered first by `Subscribed{seq}`, or by `Resync{seq}` when `since_seq` is older than
    the replay buffer (fetch a fresh snapshot; live events follow either way).
    """

    kinds: list[Annotated[str, Meta(max_length=64)]] | None = None
    since_seq: Annotated[int, Meta(ge=0)] | None = None


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


class FederationStatus(Request, tag="federation_status"):
    """The federation link, the outbox and the known hives; answered by `Federation`."""


class Whoami(Request, tag="whoami"):
    """Who the calling agent is, from its socket; answered by `Identity`."""


class Send(Request, tag="send"):
    """Send a message to an agent, to `"operator"`, or to `"*"` (every other agent)."""

    to: Recipient
    body: Body
    in_reply_to: MessageId | None = None


class Recv(Request, tag="recv"):
    """Lease up to `max` queued messages, waiting up to `wait_seconds` for the first."""

    max: Annotated[int, Meta(ge=1, le=100)] = 1
    wait_seconds: Annotated[float, Meta(ge=0)] = 0.0


class WaitForWork(Request, tag="wait_for_work"):
    """Streaming long-poll for the harness: one `Work` frame per leased message.

    The next message is leased only once the previous lease is acked or released.
    """


class Ack(Request, tag="ack"):
    """Mark a leased message delivered. Only the recipient's socket can ack it."""

    lease: Annotated[str, Meta(min_length=1, max_length=64)]


class Renew(Request, tag="renew"):
    """Keep a lease you hold while its turn runs: it expires `lease_seconds` from now again.

    Answered by `Renewed`; a lease that is no longer yours (acked, expired) is `not_found`.
    """

    lease: Annotated[str, Meta(min_length=1, max_length=64)]


class Ask(Request, tag="ask"):
    """Ask the operator or another agent a question; the answer comes back as a message."""

    target: Recipient
    question: Body
    options: list[Annotated[str, Meta(max_length=200)]] | None = None
    multi: bool = False
    ttl_seconds: Annotated[int, Meta(ge=1)] | None = None


class Answer(Request, tag="answer"):
    """Answer a question addressed to you."""

    question_id: QuestionId
    answer: Body


class ListMyAsks(Request, tag="list_my_asks"):
    """Your own questions still waiting for an answer; answered by `Asks`."""


class CancelAsk(Request, tag="cancel_ask"):
    """Withdraw one of your own open questions."""

    id: RowId


class Remind(Request, tag="remind"):
    """Set a reminder for yourself, `at` a unix time or `in_seconds` from now (give exactly one).

    When due it comes back to you as a `reminder` message (with `reminder_id`), leased and
    acked like any message; a time in the past is due at once. A body over the cap is moved
    to a file, as for `send`. Limited per agent (`rate_limited` says when to try again) and
    capped in how many may be pending at once.
    """

    body: Body
    at: Annotated[float, Meta(ge=0, le=4_102_444_800)] | None = None
    in_seconds: Annotated[float, Meta(ge=0, le=315_360_000)] | None = None


class ListMyReminders(Request, tag="list_my_reminders"):
    """Your own pending and failed reminders, soonest first; answered by `Reminders`."""


class CancelReminder(Request, tag="cancel_reminder"):
    """Cancel one of your own pending (or failed) reminders."""

    id: ReminderId


class GetOpenThreads(Request, tag="get_open_threads"):
    """What is still open against you (a manager gets the hive-wide list), oldest first.

    At most `limit` threads; `OpenThreads.total` says how many there are in all.
    """

    limit: Annotated[int, Meta(ge=1, le=1000)] = 200


class SetStatus(Request, tag="set_status"):
    """Say what you are doing; shown on the dashboard next to your name."""

    text: Annotated[str, Meta(max_length=500)]


class ListQuestions(Request, tag="list_questions"):
    """Questions, by default the open ones addressed to the operator."""

    target: Recipient | None = "operator"
    include_closed: bool = False


class AnswerQuestion(Request, tag="answer_question"):
    """The operator answers a question addressed to `"operator"`."""

    question_id: QuestionId
    answer: Body


class OperatorSend(Request, tag="operator_send"):
    """The operator sends a message to an agent or to `"*"`."""

    to: Recipient
    body: Body
    in_reply_to: MessageId | None = None


class ListMessages(Request, tag="list_messages"):
    """Recent messages, newest first, optionally only one agent's or one thread's."""

    agent: Recipient | None = None
    thread: MessageId | None = None
    limit: Annotated[int, Meta(ge=1, le=1000)] = 100
    before: MessageId | None = None
    state: MessageState | None = None
    """Only messages in this state (`dead`: those set aside after `max_attempts`)."""


class ListReminders(Request, tag="list_reminders"):
    """Reminders, newest first, optionally only one agent's or only those in one state."""

    agent: AgentName | None = None
    state: ReminderState | None = None
    limit: Annotated[int, Meta(ge=1, le=1000)] = 100


class RetryReminder(Request, tag="retry_reminder"):
    """Queue a `failed` reminder again: it is due at once, with a fresh set of attempts."""

    id: ReminderId


class RetryMessage(Request, tag="retry_message"):
    """Queue a `dead` message again, with a fresh set of attempts."""

    id: MessageId


class DropMessage(Request, tag="drop_message"):
    """Give up on a `dead` message for good (it stays listed as `dropped`)."""

    id: MessageId


class GetAgentOpenThreads(Request, tag="get_open_threads"):
    """Operator flavour of `GetOpenThreads`: one agent's open threads (same op on the wire)."""

    agent: AgentName
    limit: Annotated[int, Meta(ge=1, le=1000)] = 200


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


class Nack(Request, tag="nack"):
    """Harness only: give a leased message back at once (its turn failed); it is queued again."""

    lease: Annotated[str, Meta(min_length=1, max_length=64)]
    reason: Annotated[str, Meta(max_length=500)] = ""


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


class Snapshot(Request, tag="snapshot"):
    """Everything a dashboard page's cold load needs, and the event `seq` it is consistent with.

    `seq` is read before anything else, so every later change arrives as an event with a
    larger seq (some may already show in the snapshot; applying them again is harmless).
    With `agent`, `messages` and `threads` are that agent's. Answered by `HiveState`.
    """

    agent: AgentName | None = None
    messages: Annotated[int, Meta(ge=0, le=1000)] = 200


class ReadAgentStateFile(Request, tag="read_agent_state_file"):
    """One file of an agent's state dir, `rel_path` relative to it; answered by `AgentFile`.

    Walked one component at a time without following symlinks (a symlink anywhere is
    refused); refused unless it is a regular, world-readable file of at most 512 KiB.
    """

    agent: AgentName
    rel_path: Annotated[str, Meta(min_length=1, max_length=4096)]


class ListAgentStateDir(Request, tag="list_agent_state_dir"):
    """One directory of an agent's state dir (`""`: the state dir itself); answered by `AgentDir`.

    The same walk and refusals as `ReadAgentStateFile`; the directory must be world-readable.
    """

    agent: AgentName
    rel_path: Annotated[str, Meta(max_length=4096)] = ""


class ReadJournal(Request, tag="read_journal"):
    """The last `lines` lines of an agent's harness log; answered by `Journal`."""

    agent: AgentName
    lines: Annotated[int, Meta(ge=1, le=5000)] = 200


class ReadAgentConfig(Request, tag="read_agent_config"):
    """An agent's config as TOML text; answered by `AgentConfigText`.

    Operator: its registry record and the config it runs (env values hidden). Manager: the
    meta repo's `agents/<agent>/agent.toml` on `main`, the text `ProposeConfig` replaces.
    """

    agent: AgentName


class RequestSpawn(Request, tag="request_spawn"):
    """Manager: ask the operator to create a new agent; answered by `ApprovalInfo`.

    On approval the daemon writes `agents/<name>/agent.toml` (and `instructions.md`) in the
    meta repo, registers the agent, gives it `CLAUDE.md` from the instructions and starts its
    container. An empty `runtime` means the manager's own; an empty `model` the runtime's
    default.
    """

    name: AgentName
    role_description: Annotated[str, Meta(max_length=2000)] = ""
    instructions: Annotated[str, Meta(max_length=65_536)] = ""
    model: ModelName = ""
    runtime: Runtime | Literal[""] = ""


class RequestInitConfig(Request, tag="request_init_config"):
    """Manager: ask for a config template `agents/<name>/agent.toml` to edit before spawning."""

    name: AgentName


class ProposeConfig(Request, tag="propose_config"):
    """Manager: commit `agent_toml` as `agents/<agent>/agent.toml` on the branch
    `proposals/<agent>` (on top of the meta repo's `main`); answered by `Proposed`.

    Proposing again for the same agent replaces the branch (an amend). Nothing is deployed:
    follow with `RequestApplyCommit{agent, sha}`.
    """

    agent: AgentName
    agent_toml: Annotated[str, Meta(min_length=1, max_length=65_536)]
    message: Annotated[str, Meta(max_length=2000)] = ""


class RequestApplyCommit(Request, tag="request_apply_commit"):
    """Manager: ask to deploy the meta repo's `agents/<agent>/` as of commit `sha` (a sha or a
    branch such as `proposals/<agent>`); answered by `ApprovalInfo`.

    The commit is resolved and pinned at once (tag `approval-<id>`), so moving the branch
    later does not change what the operator approves. On approval the agent runs with that
    config (rebuilt if it was running) and its `deployed_sha` is that commit.
    """

    agent: AgentName
    sha: GitRev


class RequestUpdateMetaInputs(Request, tag="request_update_meta_inputs"):
    """Manager: ask to update the meta repo's pinned inputs (all, or only `names`)."""

    names: list[InputName] | None = None


class CancelApproval(Request, tag="cancel_approval"):
    """Manager: withdraw one of its own pending approvals."""

    id: ApprovalId


class ListApprovals(Request, tag="list_approvals"):
    """Approvals, newest first, optionally only those with one `status`; answered by `Approvals`."""

    status: ApprovalStatus | None = None
    limit: Annotated[int, Meta(ge=1, le=1000)] = 100


class GetApproval(Request, tag="get_approval"):
    """One approval and the diff it would deploy; answered by `ApprovalInfo`."""

    id: ApprovalId


class Approve(Request, tag="approve"):
    """Carry out a pending approval; answered by `ApprovalInfo` once it is done (or failed).

    An approval is resolved once: approving or denying it again is `conflict`.
    """

    id: ApprovalId
    note: OperatorNote | None = None


class Deny(Request, tag="deny"):
    """Refuse a pending approval; the manager is told, with `note`."""

    id: ApprovalId
    note: OperatorNote | None = None


class ListTombstones(Request, tag="list_tombstones"):
    """The directories of destroyed agents still kept; answered by `Tombstones`."""


class PurgeTombstone(Request, tag="purge_tombstone"):
    """Delete a destroyed agent's kept directory for good."""

    name: AgentName


class ListMetaInputs(Request, tag="list_meta_inputs"):
    """The meta repo's pinned inputs; answered by `MetaInputs` (empty, with a note, off NixOS)."""


class UpdateMetaInputs(Request, tag="update_meta_inputs"):
    """Update the meta repo's pinned inputs (all, or only `names`) and commit the lock file."""

    names: list[InputName] | None = None


# --------------------------------------------------------------------------- replies


class Reply(Struct, tag_field="type", kw_only=True):
    """Base of every answer; `id` echoes the `Call` it answers."""

    id: int


class Error(Reply, tag="error"):
    code: ErrorCode
    message: str
    retry_after_seconds: float | None = None


class Ok(Reply, tag="ok"):
    pass


class Pong(Reply, tag="pong"):
    server_time: float


class Info(Reply, tag="info"):
    rev: str
    protocol: str
    uptime_seconds: float
    state_dir: str
    run_dir: str
    agents: int


class Agents(Reply, tag="agents"):
    agents: list[AgentRow]
    remote: list[RemoteAgentRow] = []
    """With `include_remote`: the other hives' agents, by hive then name."""


class Federation(Reply, tag="federation"):
    federation: FederationRow


class AgentInfo(Reply, tag="agent"):
    agent: AgentRow


class Identity(Reply, tag="identity"):
    name: str
    role: AgentRole
    model: str
    port: int | None
    hyperhive_rev: str
    started_at: float


class Subscribed(Reply, tag="subscribed"):
    seq: int
    """The newest event seq at the time of subscribing."""


class Resync(Reply, tag="resync"):
    seq: int
    """`since_seq` was older than the replay buffer: reload state, then follow from `seq`."""


class Sent(Reply, tag="sent"):
    message_ids: list[int]
    body_file: str | None
    """Where an oversize body was written in full, if it was."""


class Deliveries(Reply, tag="deliveries"):
    items: list[Delivery]
    more: int
    """Messages still queued for you after these (counted up to 10,000)."""


class Work(Reply, tag="work"):
    delivery: Delivery
    more: int


class Renewed(Reply, tag="renewed"):
    expires_at: float


class Asked(Reply, tag="asked"):
    question_id: int
    message_id: int


class Reminded(Reply, tag="reminded"):
    reminder: ReminderRow
    body_file: str | None
    """Where an oversize body was written in full, if it was."""


class Reminders(Reply, tag="reminders"):
    reminders: list[ReminderRow]


class ReminderInfo(Reply, tag="reminder"):
    reminder: ReminderRow


class Asks(Reply, tag="asks"):
    asks: list[AskRow]


class OpenThreads(Reply, tag="open_threads"):
    threads: list[OpenThread]
    """Oldest first: approvals, then questions; at most the request's `limit`."""
    total: int = 0
    """How many threads are open in all (more than `len(threads)` when the limit cut them)."""


class Questions(Reply, tag="questions"):
    questions: list[QuestionRow]


class Messages(Reply, tag="messages"):
    messages: list[MessageRow]


class ControlFrame(Reply, tag="control"):
    action: ControlAction
    model: str | None = None


class Stats(Reply, tag="stats"):
    name: str
    stats: StatsRow


class Logs(Reply, tag="logs"):
    lines: list[str]
    path: str


class HiveState(Reply, tag="hive_state"):
    seq: int
    """The event seq this state is consistent with: follow with `Subscribe{since_seq=seq}`."""
    rev: str
    server_time: float
    agents: list[AgentRow]
    open_threads: dict[str, int]
    """Per agent, how many threads are open against it (as `GetAgentOpenThreads` counts)."""
    questions: list[QuestionRow]
    """Open questions addressed to the operator, newest first."""
    messages: list[MessageRow]
    """Recent messages (the focus agent's, with `agent`), newest first."""
    failed_reminders: list[ReminderRow]
    threads: list[OpenThread]
    """The focus agent's open threads (empty without `agent`)."""
    approvals: list[ApprovalRow] = []
    """Pending approvals (oldest first), then the most recently resolved ones."""
    tombstones: list[TombstoneRow] = []
    meta_inputs: list[MetaInputRow] = []
    meta_inputs_note: str = ""
    """Why `meta_inputs` is empty, when it is."""
    meta_inputs_updatable: bool = False
    """This hive has meta inputs (nixos backend), so `UpdateMetaInputs` can run."""
    dead_messages: list[MessageRow] = []
    """Messages set aside after `max_attempts` failed turns, newest first."""
    federation: FederationRow | None = None
    """The federation link (`None`: this hive is not federated)."""
    remote_agents: list[RemoteAgentRow] = []
    """The other hives' agents, read only."""


class AgentFile(Reply, tag="agent_file"):
    agent: str
    rel_path: str
    size: int
    mtime: float
    data: bytes


class AgentDir(Reply, tag="agent_dir"):
    agent: str
    rel_path: str
    entries: list[DirEntry]
    """Directories first, then by name."""
    truncated: bool
    """More entries exist than one listing returns."""


class Journal(Reply, tag="journal"):
    agent: str
    path: str
    lines: list[str]
    note: str
    """Why `lines` is empty (no log yet), or `""`."""


class AgentConfigText(Reply, tag="agent_config"):
    agent: str
    source: str
    """Where the text comes from (and, for the meta repo, at which commit)."""
    text: str


class Approvals(Reply, tag="approvals"):
    approvals: list[ApprovalRow]


class ApprovalInfo(Reply, tag="approval"):
    approval: ApprovalRow
    diff: str = ""
    """What approving changes in the meta repo, as a unified diff (`GetApproval` only)."""


class Proposed(Reply, tag="proposed"):
    agent: str
    sha: str
    """The new commit; pass it (or `branch`) to `RequestApplyCommit`."""
    branch: str
    summary: str
    """The keys it changes against what is deployed."""


class Tombstones(Reply, tag="tombstones"):
    tombstones: list[TombstoneRow]


class MetaInputs(Reply, tag="meta_inputs"):
    inputs: list[MetaInputRow]
    note: str
    """Why the list is empty (not the nixos backend, no lock file yet), or what was updated."""


# --------------------------------------------------------------------------- events


class Event(Struct, tag_field="kind", kw_only=True):
    seq: int = 0
    at: float = 0.0


class AgentAdded(Event, tag="agent_added"):
    agent: AgentRow


class AgentRemoved(Event, tag="agent_removed"):
    name: str


class AgentStateChanged(Event, tag="agent_state_changed"):
    name: str
    state: str
    reason: str


class StatusChanged(Event, tag="status_changed"):
    name: str
    text: str


class MessageSent(Event, tag="message_sent"):
    message: MessageRow


class MessageLeased(Event, tag="message_leased"):
    message_id: int
    agent: str
    attempts: int


class MessageAcked(Event, tag="message_acked"):
    message_id: int
    agent: str


class MessageRequeued(Event, tag="message_requeued"):
    message_id: int
    agent: str
    attempts: int
    reason: str
    not_before: float | None = None
    """Not offered again before this time (the retry backoff); None: at once."""


class MessageDead(Event, tag="message_dead"):
    """A message failed `max_attempts` times and is set aside for the operator."""

    message_id: int
    agent: str
    attempts: int
    reason: str


class MessageDropped(Event, tag="message_dropped"):
    message_id: int
    agent: str


class MessageForwarded(Event, tag="message_forwarded"):
    """A message to another hive (`to` is `name@hive`) was stored by JetStream."""

    message_id: int
    to: str


class QuestionAsked(Event, tag="question_asked"):
    question: QuestionRow


class QuestionAnswered(Event, tag="question_answered"):
    question_id: int
    asker: str
    target: str
    answer: str
    expired: bool


class QuestionCancelled(Event, tag="question_cancelled"):
    question_id: int
    asker: str
    target: str


class ReminderScheduled(Event, tag="reminder_scheduled"):
    """A reminder was set, or a failed one was queued again."""

    reminder: ReminderRow


class ReminderDelivered(Event, tag="reminder_delivered"):
    reminder_id: int
    owner: str
    message_id: int


class ReminderFailed(Event, tag="reminder_failed"):
    """A delivery attempt failed; `retry_at` is `None` when the reminder is now `failed`."""

    reminder_id: int
    owner: str
    error: str
    attempt_count: int
    retry_at: float | None


class ReminderCancelled(Event, tag="reminder_cancelled"):
    reminder_id: int
    owner: str


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


class ApprovalAdded(Event, tag="approval_added"):
    approval: ApprovalRow


class ApprovalResolved(Event, tag="approval_resolved"):
    """An approval changed status (approved, denied, cancelled; failed after approval)."""

    approval: ApprovalRow


class TombstoneAdded(Event, tag="tombstone_added"):
    tombstone: TombstoneRow


class TombstoneRemoved(Event, tag="tombstone_removed"):
    name: str


class MetaInputsChanged(Event, tag="meta_inputs_changed"):
    inputs: list[MetaInputRow]


class FederationChanged(Event, tag="federation_changed"):
    """The federation link changed state (connected, disconnected, …)."""

    link: str
    detail: str


class RemoteAgentsChanged(Event, tag="remote_agents_changed"):
    """Another hive published its roster."""

    hive: str
    agents: list[RemoteAgentRow]


AnyEvent: TypeAlias = (
    AgentAdded
    | AgentRemoved
    | AgentStateChanged
    | StatusChanged
    | MessageSent
    | MessageLeased
    | MessageAcked
    | MessageRequeued
    | MessageDead
    | MessageDropped
    | MessageForwarded
    | QuestionAsked
    | QuestionAnswered
    | QuestionCancelled
    | ReminderScheduled
    | ReminderDelivered
    | ReminderFailed
    | ReminderCancelled
    | Note
    | NeedsLogin
    | LoggedIn
    | TurnRecorded
    | ApprovalAdded
    | ApprovalResolved
    | TombstoneAdded
    | TombstoneRemoved
    | MetaInputsChanged
    | FederationChanged
    | RemoteAgentsChanged
)
EVENT_KINDS: frozenset[str] = frozenset(t.__struct_config__.tag for t in get_args(AnyEvent))


class EventFrame(Reply, tag="event"):
    event: AnyEvent


AnyReply: TypeAlias = (
    Error
    | Ok
    | Pong
    | Info
    | Agents
    | AgentInfo
    | Identity
    | Subscribed
    | Resync
    | EventFrame
    | Sent
    | Deliveries
    | Work
    | Renewed
    | Asked
    | Asks
    | Reminded
    | Reminders
    | ReminderInfo
    | OpenThreads
    | Questions
    | Messages
    | ControlFrame
    | Stats
    | Logs
    | HiveState
    | AgentFile
    | AgentDir
    | Journal
    | AgentConfigText
    | Approvals
    | ApprovalInfo
    | Proposed
    | Tombstones
    | MetaInputs
    | Federation
)


# --------------------------------------------------------------------------- role unions

AGENT_REQUESTS: tuple[type[Request], ...] = (
    Ping,
    Cancel,
    Whoami,
    Send,
    Recv,
    WaitForWork,
    Ack,
    Renew,
    Ask,
    Answer,
    ListMyAsks,
    CancelAsk,
    Remind,
    ListMyReminders,
    CancelReminder,
    GetOpenThreads,
    SetStatus,
    GetLogs,
    WaitForControl,
    Nack,
    ReportState,
    ReportTurn,
    ReportControl,
)
MANAGER_REQUESTS: tuple[type[Request], ...] = (
    *AGENT_REQUESTS,
    RequestSpawn,
    RequestInitConfig,
    ProposeConfig,
    RequestApplyCommit,
    RequestUpdateMetaInputs,
    CancelApproval,
    ReadAgentConfig,
)
OPERATOR_REQUESTS: tuple[type[Request], ...] = (
    Ping,
    Cancel,
    ServerInfo,
    Subscribe,
    ListAgents,
    ListQuestions,
    AnswerQuestion,
    OperatorSend,
    ListMessages,
    GetAgentOpenThreads,
    ListReminders,
    RetryReminder,
    RetryMessage,
    DropMessage,
    Start,
    Stop,
    Restart,
    Rebuild,
    RebuildAll,
    SetPaused,
    Destroy,
    AgentStatus,
    CancelTurn,
    Compact,
    SetModel,
    NewSession,
    GetAgentStats,
    SetAgentLogin,
    Snapshot,
    ReadAgentStateFile,
    ListAgentStateDir,
    ReadJournal,
    ReadAgentConfig,
    ListApprovals,
    GetApproval,
    Approve,
    Deny,
    ListTombstones,
    PurgeTombstone,
    ListMetaInputs,
    UpdateMetaInputs,
    FederationStatus,
)
WEB_REQUESTS: tuple[type[Request], ...] = OPERATOR_REQUESTS
ADMIN_REQUESTS: tuple[type[Request], ...] = (*OPERATOR_REQUESTS, AddAgent, RemoveAgent)

ROLE_REQUESTS: dict[Role, tuple[type[Request], ...]] = {
    "agent": AGENT_REQUESTS,
    "manager": MANAGER_REQUESTS,
    "web": WEB_REQUESTS,
    "admin": ADMIN_REQUESTS,
}


def op_of(request_type: type[Request]) -> str:
    """The `op` string a request type carries on the wire."""
    tag = request_type.__struct_config__.tag
    assert isinstance(tag, str)
    return tag


ALL_OPS: frozenset[str] = frozenset(op_of(t) for ts in ROLE_REQUESTS.values() for t in ts)


def _union(members: tuple[type[Request], ...]) -> Any:
    union: Any = members[0]
    for member in members[1:]:
        union = union | member
    return union


AgentRequest: Any = _union(AGENT_REQUESTS)
ManagerRequest: Any = _union(MANAGER_REQUESTS)
WebRequest: Any = _union(WEB_REQUESTS)
AdminRequest: Any = _union(ADMIN_REQUESTS)
ROLE_UNIONS: dict[Role, Any] = {
    "agent": AgentRequest,
    "manager": ManagerRequest,
    "web": WebRequest,
    "admin": AdminRequest,
}

CallId = Annotated[int, Meta(ge=0, le=2**53)]


class Call(Struct, kw_only=True, forbid_unknown_fields=True):
    """The envelope of every request: `id` correlates, `req` is the verb.

    Clients encode with this class; the daemon decodes with `call_type(role)`, the same
    shape with `req` narrowed to that role's union.
    """

    id: CallId
    req: Request


class CallHeader(Struct):
    """What the daemon can still read of a call it could not decode, to name the error."""

    id: CallId | None = None
    req: dict[str, Any] | None = None


def call_type(role: Role) -> Any:
    """The `Call` shape a role's socket decodes: `req` restricted to that role's union."""
    return msgspec.defstruct(
        f"{role.title()}Call",
        [("id", CallId), ("req", ROLE_UNIONS[role])],
        kw_only=True,
        forbid_unknown_fields=True,
    )
