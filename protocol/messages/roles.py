"""Which verbs each socket role may send, and the envelope each role decodes."""

from __future__ import annotations

from typing import Annotated, Any, TypeAlias

import msgspec
from msgspec import Meta, Struct

from .agents import AddAgent, AgentInfo, Agents, ListAgents, RemoveAgent, SetStatus
from .approvals import (
    ApprovalInfo,
    Approvals,
    Approve,
    CancelApproval,
    Deny,
    GetApproval,
    ListApprovals,
    ListMetaInputs,
    ListTombstones,
    MetaInputs,
    ProposeConfig,
    Proposed,
    PurgeTombstone,
    RequestApplyCommit,
    RequestInitConfig,
    RequestSpawn,
    RequestUpdateMetaInputs,
    Tombstones,
    UpdateMetaInputs,
)
from .base import Error, Ok, Request, Role
from .dashboard import (
    AgentConfigText,
    AgentDir,
    AgentFile,
    HiveState,
    Journal,
    ListAgentStateDir,
    ReadAgentConfig,
    ReadAgentStateFile,
    ReadJournal,
    Snapshot,
)
from .events import EventFrame, Resync, Subscribe, Subscribed
from .federation import Federation, FederationStatus
from .forge import (
    FORGE_ADMIN_REQUESTS,
    FORGE_AGENT_REQUESTS,
    FORGE_OPERATOR_REQUESTS,
    ForgeClosed,
    ForgeData,
    ForgeOpened,
    MergeRequestInfo,
    MergeRequests,
    RepoBlob,
    RepoInfo,
    Repos,
    RepoTree,
    RepoView,
)
from .lifecycle import (
    AgentStatus,
    CancelTurn,
    Compact,
    ControlFrame,
    Destroy,
    GetAgentStats,
    GetLogs,
    Logs,
    NewSession,
    Rebuild,
    RebuildAll,
    ReportControl,
    ReportState,
    ReportTurn,
    Restart,
    SetAgentLogin,
    SetModel,
    SetPaused,
    Start,
    Stats,
    Stop,
    WaitForControl,
)
from .messaging import (
    Ack,
    Deliveries,
    DropMessage,
    ListMessages,
    Messages,
    Nack,
    OperatorSend,
    Recv,
    Renew,
    Renewed,
    RetryMessage,
    Send,
    Sent,
    Take,
    Taken,
    WaitForWork,
    Work,
)
from .operator_controls import (
    Budget,
    DismissBudgetAlert,
    EmergencyStop,
    EstopInfo,
    GetBudget,
    GetInbox,
    Inbox,
    SetBudget,
    Thaw,
)
from .questions import (
    Answer,
    AnswerQuestion,
    Ask,
    Asked,
    Asks,
    CancelAsk,
    GetAgentOpenThreads,
    GetOpenThreads,
    ListMyAsks,
    ListQuestions,
    OpenThreads,
    Questions,
)
from .reminders import (
    CancelReminder,
    ListMyReminders,
    ListReminders,
    Remind,
    Reminded,
    ReminderInfo,
    Reminders,
    RetryReminder,
)
from .session import Cancel, Identity, Info, Ping, Pong, ServerInfo, Whoami

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
    | Taken
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
    | ForgeOpened
    | ForgeData
    | ForgeClosed
    | RepoInfo
    | Repos
    | RepoView
    | RepoTree
    | RepoBlob
    | MergeRequestInfo
    | MergeRequests
    | EstopInfo
    | Budget
    | Inbox
)


AGENT_REQUESTS: tuple[type[Request], ...] = (
    Ping,
    Cancel,
    Whoami,
    Send,
    Recv,
    Take,
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
    *FORGE_AGENT_REQUESTS,
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
    *FORGE_OPERATOR_REQUESTS,
    EmergencyStop,
    Thaw,
    GetBudget,
    SetBudget,
    DismissBudgetAlert,
    GetInbox,
)


WEB_REQUESTS: tuple[type[Request], ...] = OPERATOR_REQUESTS


ADMIN_REQUESTS: tuple[type[Request], ...] = (
    *OPERATOR_REQUESTS,
    AddAgent,
    RemoveAgent,
    *FORGE_ADMIN_REQUESTS,
)


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
