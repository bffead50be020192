"""The event stream: subscribing, the union of every event, and the frame that carries one."""

from __future__ import annotations

from typing import Annotated, TypeAlias, get_args

from msgspec import Meta

from .agents import AgentAdded, AgentRemoved, StatusChanged
from .approvals import (
    ApprovalAdded,
    ApprovalResolved,
    MetaInputsChanged,
    TombstoneAdded,
    TombstoneRemoved,
)
from .base import Reply, Request
from .federation import FederationChanged, RemoteAgentsChanged
from .lifecycle import AgentStateChanged, LoggedIn, NeedsLogin, Note, TurnRecorded
from .messaging import (
    MessageAcked,
    MessageDead,
    MessageDropped,
    MessageForwarded,
    MessageLeased,
    MessageRequeued,
    MessageSent,
)
from .operator_controls import (
    AgentHeld,
    AgentReleased,
    BudgetAlerted,
    BudgetChanged,
    EstopChanged,
    QuestionEscalated,
)
from .questions import QuestionAnswered, QuestionAsked, QuestionCancelled
from .reminders import ReminderCancelled, ReminderDelivered, ReminderFailed, ReminderScheduled


class Subscribe(Request, tag="subscribe"):
    """Stream events (`EventFrame`), replaying those after `since_seq` from the buffer.

    Answered first by `Subscribed{seq}`, or by `Resync{seq}` when `since_seq` is older than
    the replay buffer (fetch a fresh snapshot; live events follow either way).
    """

    kinds: list[Annotated[str, Meta(max_length=64)]] | None = None
    since_seq: Annotated[int, Meta(ge=0)] | None = None


class Subscribed(Reply, tag="subscribed"):
    seq: int
    """The newest event seq at the time of subscribing."""


class Resync(Reply, tag="resync"):
    seq: int
    """`since_seq` was older than the replay buffer: reload state, then follow from `seq`."""


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
    | EstopChanged
    | AgentHeld
    | AgentReleased
    | BudgetAlerted
    | BudgetChanged
    | QuestionEscalated
)


EVENT_KINDS: frozenset[str] = frozenset(t.__struct_config__.tag for t in get_args(AnyEvent))


class EventFrame(Reply, tag="event"):
    event: AnyEvent
