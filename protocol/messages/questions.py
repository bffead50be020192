"""Questions between agents and the operator, and the open threads they leave."""

from __future__ import annotations

from typing import Annotated, Literal, TypeAlias

from msgspec import Meta, Struct

from .base import (
    AgentName,
    Body,
    Event,
    QuestionId,
    QuestionState,
    Recipient,
    Reply,
    Request,
    RowId,
)


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
    escalation: list[str] = []
    """Who it was raised to again, in order, after it waited `question_stale_seconds`: its
    target, then a manager, then `operator`; each of them may answer it."""
    escalated_at: float | None = None


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


class Ask(Request, tag="ask"):
    """Ask the operator or another agent a question; the answer comes back as a message."""

    target: Recipient
    question: Body
    options: list[Annotated[str, Meta(max_length=200)]] | None = None
    multi: bool = False
    ttl_seconds: Annotated[int, Meta(ge=1)] | None = None


class Answer(Request, tag="answer"):
    """Answer a question addressed to you, or escalated to you after it went stale."""

    question_id: QuestionId
    answer: Body


class ListMyAsks(Request, tag="list_my_asks"):
    """Your own questions still waiting for an answer; answered by `Asks`."""


class CancelAsk(Request, tag="cancel_ask"):
    """Withdraw one of your own open questions."""

    id: RowId


class GetOpenThreads(Request, tag="get_open_threads"):
    """What is still open against you (a manager gets the hive-wide list), oldest first.

    At most `limit` threads; `OpenThreads.total` says how many there are in all. On the
    operator's sockets the same op is `GetAgentOpenThreads`, which names the agent.
    """

    limit: Annotated[int, Meta(ge=1, le=1000)] = 200


class ListQuestions(Request, tag="list_questions"):
    """Questions, by default the open ones addressed (or escalated) to the operator.

    `target`: whose questions (an agent's include those escalated to it; `null`: all).
    """

    target: Recipient | None = "operator"
    include_closed: bool = False


class AnswerQuestion(Request, tag="answer_question"):
    """The operator answers a question addressed (or escalated) to `"operator"`."""

    question_id: QuestionId
    answer: Body


class GetAgentOpenThreads(Request, tag="get_open_threads"):
    """`get_open_threads` on the operator's sockets: one agent's open threads. It shares the
    agent verb's op (the wire of existing clients); each socket's union holds only one of the
    two, so the decoder picks the meaning."""

    agent: AgentName
    limit: Annotated[int, Meta(ge=1, le=1000)] = 200


class Asked(Reply, tag="asked"):
    question_id: int
    message_id: int


class Asks(Reply, tag="asks"):
    asks: list[AskRow]


class OpenThreads(Reply, tag="open_threads"):
    threads: list[OpenThread]
    """Oldest first: approvals, then questions; at most the request's `limit`."""
    total: int = 0
    """How many threads are open in all (more than `len(threads)` when the limit cut them)."""


class Questions(Reply, tag="questions"):
    questions: list[QuestionRow]


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
