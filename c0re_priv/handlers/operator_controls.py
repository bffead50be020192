"""The operator's controls: the emergency stop, budgets and the inbox.

The `VERBS` table at the end is this feature's surface (the operator's sockets only); the
services they call are `estop`, `budgets` and `inbox`. Its other hooks sit in the verbs they
change: `lifecycle.report_turn` checks the budget after each turn, `lifecycle.set_paused`
resuming an agent lifts its budget hold, `lifecycle.report_control` takes the harness's
`park` confirmation.
"""

from __future__ import annotations

from protocol import messages as m

from .. import inbox
from .base import OPERATOR, Caller, Verb


async def emergency_stop(c: Caller, req: m.EmergencyStop) -> m.Reply:
    return m.EstopInfo(estop=await c.hive.estop.engage(req.reason))


async def thaw(c: Caller, req: m.Thaw) -> m.Reply:
    return m.EstopInfo(estop=await c.hive.estop.thaw())


async def get_budget(c: Caller, req: m.GetBudget) -> m.Reply:
    return await c.hive.budgets.budget()


async def set_budget(c: Caller, req: m.SetBudget) -> m.Reply:
    await c.hive.budgets.set(req)
    return await c.hive.budgets.budget()


async def dismiss_budget_alert(c: Caller, req: m.DismissBudgetAlert) -> m.Reply:
    await c.hive.budgets.dismiss(req.id)
    return m.Ok()


async def get_inbox(c: Caller, req: m.GetInbox) -> m.Reply:
    items, total = await inbox.collect(c.hive, req.limit)
    return m.Inbox(items=items, total=total, estop=c.hive.estop.row)


VERBS: tuple[Verb, ...] = (
    Verb(m.EmergencyStop, OPERATOR, emergency_stop),
    Verb(m.Thaw, OPERATOR, thaw),
    Verb(m.GetBudget, OPERATOR, get_budget),
    Verb(m.SetBudget, OPERATOR, set_budget),
    Verb(m.DismissBudgetAlert, OPERATOR, dismiss_budget_alert),
    Verb(m.GetInbox, OPERATOR, get_inbox),
)
