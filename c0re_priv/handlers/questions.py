"""Questions between agents and the operator, and the open threads they leave.

The `VERBS` table at the end is this feature's surface: each row names a verb, the roles
whose socket may decode it, and its handler."""

from __future__ import annotations

import time

from protocol import messages as m

from .. import open_threads
from .base import AGENTS, OPERATOR, Caller, Verb


async def ask(c: Caller, req: m.Ask) -> m.Reply:
    q, msg = await c.hive.questions.ask(
        c.name, req.target, req.question, req.options, req.multi, req.ttl_seconds
    )
    return m.Asked(question_id=q.id, message_id=msg.id)


async def answer(c: Caller, req: m.Answer) -> m.Reply:
    await c.hive.questions.answer(c.name, req.question_id, req.answer)
    return m.Ok()


async def list_my_asks(c: Caller, req: m.ListMyAsks) -> m.Reply:
    return m.Asks(asks=await c.hive.questions.list_mine(c.name))


async def cancel_ask(c: Caller, req: m.CancelAsk) -> m.Reply:
    await c.hive.questions.cancel(c.name, req.id)
    return m.Ok()


async def list_questions(c: Caller, req: m.ListQuestions) -> m.Reply:
    return m.Questions(questions=await c.hive.questions.list(req.target, req.include_closed))


async def answer_question(c: Caller, req: m.AnswerQuestion) -> m.Reply:
    await c.hive.questions.answer("operator", req.question_id, req.answer)
    return m.Ok()


async def get_open_threads(c: Caller, req: m.GetOpenThreads | m.GetAgentOpenThreads) -> m.Reply:
    """An agent's own threads (a manager: the hive's), or on the operator's sockets the
    named agent's."""
    now = time.time()
    if isinstance(req, m.GetAgentOpenThreads):
        c.hive.registry.get(req.agent)
        name = req.agent
    else:
        name = c.name
    if isinstance(req, m.GetOpenThreads) and c.role == "manager":
        threads, total = await c.hive.store.read(
            lambda conn: open_threads.hive_wide(conn, now, req.limit)
        )
    else:
        threads, total = await c.hive.store.read(
            lambda conn: open_threads.for_agent(conn, name, now, req.limit)
        )
    return m.OpenThreads(threads=threads, total=total)


VERBS: tuple[Verb, ...] = (
    Verb(m.Ask, AGENTS, ask),
    Verb(m.Answer, AGENTS, answer),
    Verb(m.ListMyAsks, AGENTS, list_my_asks),
    Verb(m.CancelAsk, AGENTS, cancel_ask),
    Verb(m.ListQuestions, OPERATOR, list_questions),
    Verb(m.AnswerQuestion, OPERATOR, answer_question),
    Verb(m.GetOpenThreads, AGENTS, get_open_threads),
    Verb(m.GetAgentOpenThreads, OPERATOR, get_open_threads),
)
