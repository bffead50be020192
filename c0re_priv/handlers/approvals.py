"""The manager's requests, the operator's decisions, tombstones and the meta repo's inputs.

The `VERBS` table at the end is this feature's surface: each row names a verb, the roles
whose socket may decode it, and its handler."""

from __future__ import annotations

import trio

from protocol import messages as m

from .. import meta_inputs, tombstones
from .base import MANAGER, OPERATOR, Caller, Verb


async def request_spawn(c: Caller, req: m.RequestSpawn) -> m.Reply:
    return m.ApprovalInfo(approval=await c.hive.approvals.request_spawn(c.name, req))


async def request_init_config(c: Caller, req: m.RequestInitConfig) -> m.Reply:
    row = await c.hive.approvals.request_init_config(c.name, req.name)
    return m.ApprovalInfo(approval=row)


async def propose_config(c: Caller, req: m.ProposeConfig) -> m.Reply:
    return await c.hive.configs.propose(c.name, req.agent, req.agent_toml, req.message)


async def request_apply_commit(c: Caller, req: m.RequestApplyCommit) -> m.Reply:
    row = await c.hive.approvals.request_apply_commit(c.name, req.agent, req.sha)
    return m.ApprovalInfo(approval=row)


async def request_update_meta_inputs(c: Caller, req: m.RequestUpdateMetaInputs) -> m.Reply:
    row = await c.hive.approvals.request_update_meta_inputs(c.name, req.names)
    return m.ApprovalInfo(approval=row)


async def cancel_approval(c: Caller, req: m.CancelApproval) -> m.Reply:
    return m.ApprovalInfo(approval=await c.hive.approvals.cancel(c.name, req.id))


async def list_approvals(c: Caller, req: m.ListApprovals) -> m.Reply:
    return m.Approvals(approvals=await c.hive.approvals.recent(req.status, req.limit))


async def get_approval(c: Caller, req: m.GetApproval) -> m.Reply:
    row, diff = await c.hive.approvals.get(req.id)
    return m.ApprovalInfo(approval=row, diff=diff)


async def approve(c: Caller, req: m.Approve) -> m.Reply:
    return m.ApprovalInfo(approval=await c.hive.approvals.approve(req.id, req.note))


async def deny(c: Caller, req: m.Deny) -> m.Reply:
    return m.ApprovalInfo(approval=await c.hive.approvals.deny(req.id, req.note))


async def list_tombstones(c: Caller, req: m.ListTombstones) -> m.Reply:
    rows = await trio.to_thread.run_sync(tombstones.list_all, c.hive.paths.state_dir)
    return m.Tombstones(tombstones=rows)


async def purge_tombstone(c: Caller, req: m.PurgeTombstone) -> m.Reply:
    await tombstones.purge(c.hive.paths.state_dir, c.hive.bus, req.name)
    return m.Ok()


async def list_meta_inputs(c: Caller, req: m.ListMetaInputs) -> m.Reply:
    rows, note = await meta_inputs.list_inputs(c.hive.configs, c.hive.settings)
    return m.MetaInputs(inputs=rows, note=note)


async def update_meta_inputs(c: Caller, req: m.UpdateMetaInputs) -> m.Reply:
    return await meta_inputs.update(c.hive.configs, c.hive.settings, c.hive.bus, req.names)


VERBS: tuple[Verb, ...] = (
    Verb(m.RequestSpawn, MANAGER, request_spawn),
    Verb(m.RequestInitConfig, MANAGER, request_init_config),
    Verb(m.ProposeConfig, MANAGER, propose_config),
    Verb(m.RequestApplyCommit, MANAGER, request_apply_commit),
    Verb(m.RequestUpdateMetaInputs, MANAGER, request_update_meta_inputs),
    Verb(m.CancelApproval, MANAGER, cancel_approval),
    Verb(m.ListApprovals, OPERATOR, list_approvals),
    Verb(m.GetApproval, OPERATOR, get_approval),
    Verb(m.Approve, OPERATOR, approve),
    Verb(m.Deny, OPERATOR, deny),
    Verb(m.ListTombstones, OPERATOR, list_tombstones),
    Verb(m.PurgeTombstone, OPERATOR, purge_tombstone),
    Verb(m.ListMetaInputs, OPERATOR, list_meta_inputs),
    Verb(m.UpdateMetaInputs, OPERATOR, update_meta_inputs),
)
