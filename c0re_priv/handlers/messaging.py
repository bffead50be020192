"""The broker's verbs: sending, leasing, acking, and the operator's dead-letter tools.

The `VERBS` table at the end is this feature's surface: each row names a verb, the roles
whose socket may decode it, and its handler."""

from __future__ import annotations

from protocol import messages as m

from ..errors import Fail
from .base import AGENTS, OPERATOR, Caller, Emit, Verb


async def send(c: Caller, req: m.Message) -> m.Reply:
    """`Send` from an agent, `OperatorSend` from the operator: the socket names the sender."""
    sender = c.name if isinstance(req, m.Send) else "operator"
    rows, spilled = await c.hive.broker.send(sender, req.to, req.body, req.in_reply_to)
    return m.Sent(message_ids=[r.id for r in rows], body_file=spilled)


async def recv(c: Caller, req: m.Recv) -> m.Reply:
    assert c.conn.holder is not None
    items, more = await c.hive.broker.recv(c.conn.holder, req.max, req.wait_seconds)
    return m.Deliveries(items=items, more=more)


async def take(c: Caller, req: m.Take) -> m.Reply:
    assert c.conn.holder is not None
    messages, more = await c.hive.broker.take(c.conn.holder.agent, req.max, req.wait_seconds)
    return m.Taken(messages=messages, more=more)


async def wait_for_work(c: Caller, req: m.WaitForWork, emit: Emit) -> None:
    assert c.conn.holder is not None
    async for delivery, more in c.hive.broker.wait_for_work(c.conn.holder):
        await emit(m.Work(delivery=delivery, more=more))


async def ack(c: Caller, req: m.Ack) -> m.Reply:
    assert c.conn.holder is not None
    await c.hive.broker.ack(c.conn.holder, req.lease)
    return m.Ok()


async def renew(c: Caller, req: m.Renew) -> m.Reply:
    assert c.conn.holder is not None
    return m.Renewed(expires_at=await c.hive.broker.renew(c.conn.holder, req.lease))


async def nack(c: Caller, req: m.Nack) -> m.Reply:
    assert c.conn.holder is not None
    if req.lease not in c.conn.holder.leases:
        raise Fail("not_found", "no such lease on this connection")
    await c.hive.broker.release([req.lease], req.reason or "turn failed")
    return m.Ok()


async def list_messages(c: Caller, req: m.ListMessages) -> m.Reply:
    rows = await c.hive.broker.list_messages(
        req.agent, req.thread, req.limit, req.before, req.state
    )
    return m.Messages(messages=rows)


async def retry_message(c: Caller, req: m.RetryMessage) -> m.Reply:
    return m.Messages(messages=[await c.hive.broker.retry_dead(req.id)])


async def drop_message(c: Caller, req: m.DropMessage) -> m.Reply:
    await c.hive.broker.drop_dead(req.id)
    return m.Ok()


VERBS: tuple[Verb, ...] = (
    Verb(m.Send, AGENTS, send),
    Verb(m.OperatorSend, OPERATOR, send),
    Verb(m.Recv, AGENTS, recv),
    Verb(m.Take, AGENTS, take),
    Verb(m.WaitForWork, AGENTS, wait_for_work, streaming=True),
    Verb(m.Ack, AGENTS, ack),
    Verb(m.Renew, AGENTS, renew),
    Verb(m.Nack, AGENTS, nack),
    Verb(m.ListMessages, OPERATOR, list_messages),
    Verb(m.RetryMessage, OPERATOR, retry_message),
    Verb(m.DropMessage, OPERATOR, drop_message),
)
