"""Handlers of the operator's controls: the emergency stop, budgets and the inbox.

Registered in `handlers`' tables like every other verb (the roles that may send them are
decided by the role unions in `protocol.messages`: web and admin); the services they call
are in `estop`, `budgets` and `inbox`.
"""

from __future__ import annotations

from protocol import messages as m
from protocol import operator_controls as oc

from . import inbox
from .handlers import Caller, unary


@unary(oc.EmergencyStop)
async def emergency_stop(c: Caller, req: oc.EmergencyStop) -> m.Reply:
    return oc.EstopInfo(id=0, estop=await c.hive.estop.engage(req.reason))


@unary(oc.Thaw)
async def thaw(c: Caller, req: oc.Thaw) -> m.Reply:
    return oc.EstopInfo(id=0, estop=await c.hive.estop.thaw())


@unary(oc.GetBudget)
async def get_budget(c: Caller, req: oc.GetBudget) -> m.Reply:
    return await c.hive.budgets.budget()


@unary(oc.SetBudget)
async def set_budget(c: Caller, req: oc.SetBudget) -> m.Reply:
    await c.hive.budgets.set(req)
    return await c.hive.budgets.budget()


@unary(oc.DismissBudgetAlert)
async def dismiss_budget_alert(c: Caller, req: oc.DismissBudgetAlert) -> m.Reply:
    await c.hive.budgets.dismiss(req.id)
    return m.Ok(id=0)


@unary(oc.GetInbox)
async def get_inbox(c: Caller, req: oc.GetInbox) -> m.Reply:
    items, total = await inbox.collect(c.hive, req.limit)
    return oc.Inbox(id=0, items=items, total=total, estop=c.hive.estop.row)
