"""Reminders an agent sets for itself, and the operator's view of them.

The `VERBS` table at the end is this feature's surface: each row names a verb, the roles
whose socket may decode it, and its handler."""

from __future__ import annotations

from protocol import messages as m

from .base import AGENTS, OPERATOR, Caller, Verb


async def remind(c: Caller, req: m.Remind) -> m.Reply:
    reminder, spilled = await c.hive.reminders.remind(c.name, req.body, req.at, req.in_seconds)
    return m.Reminded(reminder=reminder, body_file=spilled)


async def list_my_reminders(c: Caller, req: m.ListMyReminders) -> m.Reply:
    return m.Reminders(reminders=await c.hive.reminders.list_mine(c.name))


async def cancel_reminder(c: Caller, req: m.CancelReminder) -> m.Reply:
    await c.hive.reminders.cancel(c.name, req.id)
    return m.Ok()


async def list_reminders(c: Caller, req: m.ListReminders) -> m.Reply:
    rows = await c.hive.reminders.list(req.agent, req.state, req.limit)
    return m.Reminders(reminders=rows)


async def retry_reminder(c: Caller, req: m.RetryReminder) -> m.Reply:
    return m.ReminderInfo(reminder=await c.hive.reminders.retry(req.id))


VERBS: tuple[Verb, ...] = (
    Verb(m.Remind, AGENTS, remind),
    Verb(m.ListMyReminders, AGENTS, list_my_reminders),
    Verb(m.CancelReminder, AGENTS, cancel_reminder),
    Verb(m.ListReminders, OPERATOR, list_reminders),
    Verb(m.RetryReminder, OPERATOR, retry_reminder),
)
