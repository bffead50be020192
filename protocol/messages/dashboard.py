"""What the dashboard reads: one snapshot of the hive, and an agent's files, journal and config."""

from __future__ import annotations

from typing import Annotated, Literal

from msgspec import Meta, Struct

from .agents import AgentRow
from .approvals import ApprovalRow, MetaInputRow, TombstoneRow
from .base import AgentName, Reply, Request
from .federation import FederationRow, RemoteAgentRow
from .messaging import MessageRow
from .operator_controls import EstopRow, InboxItem, UsageRow
from .questions import OpenThread, QuestionRow
from .reminders import ReminderRow


class DirEntry(Struct, kw_only=True):
    """One entry of an agent's state dir, as `ListAgentStateDir` sees it (never followed)."""

    name: str
    kind: Literal["file", "dir", "symlink", "other"]
    size: int
    mtime: float
    readable: bool
    """World-readable (a dir: and searchable), so the daemon would serve it to the dashboard."""


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
    estop: EstopRow | None = None
    """The emergency stop (engaged or not, and what it last did)."""
    inbox: list[InboxItem] = []
    """What waits on the operator, newest first (as `GetInbox`)."""
    open_questions: list[QuestionRow] = []
    """Every open question of the hive, oldest first, with its escalation."""
    usage: list[UsageRow] = []
    """Spending against budgets: the hive first, then each agent."""


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
