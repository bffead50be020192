"""Every socket's housekeeping and the registry: ping, cancel, who is there.

The `VERBS` table at the end is this feature's surface: each row names a verb, the roles
whose socket may decode it, and its handler."""

from __future__ import annotations

import time

from protocol import messages as m

from ..errors import Fail
from .base import ADMIN, AGENTS, EVERYONE, OPERATOR, Caller, Verb


async def ping(c: Caller, req: m.Ping) -> m.Reply:
    return m.Pong(server_time=time.time())


async def cancel(c: Caller, req: m.Cancel) -> m.Reply:
    scope = c.conn.streams.get(req.call)
    if scope is None:
        raise Fail("not_found", f"no stream with call id {req.call} on this connection")
    scope.cancel()
    return m.Ok()


async def server_info(c: Caller, req: m.ServerInfo) -> m.Reply:
    h = c.hive
    return m.Info(
        rev=h.rev,
        protocol=h.protocol,
        uptime_seconds=h.uptime(),
        state_dir=str(h.paths.state_dir),
        run_dir=str(h.paths.run_dir),
        agents=len(h.registry.agents),
    )


async def list_agents(c: Caller, req: m.ListAgents) -> m.Reply:
    remote = []
    if req.include_remote and c.hive.federation is not None:
        remote = await c.hive.federation.remote_agents()
    return m.Agents(agents=await c.hive.registry.rows(), remote=remote)


async def add_agent(c: Caller, req: m.AddAgent) -> m.Reply:
    await c.hive.roster.add(req.name, req.role, req.model, req.runtime, req.allowed_recipients)
    await c.hive.configs.adopt(req.name)
    (row,) = [r for r in await c.hive.registry.rows() if r.name == req.name]
    return m.AgentInfo(agent=row)


async def remove_agent(c: Caller, req: m.RemoveAgent) -> m.Reply:
    await c.hive.roster.remove(req.name)
    await c.hive.configs.forget(req.name, f"remove {req.name} (operator)")
    return m.Ok()


async def whoami(c: Caller, req: m.Whoami) -> m.Reply:
    record = c.hive.registry.get(c.name)
    return m.Identity(
        name=record.name,
        role=record.role,
        model=record.model,
        port=c.hive.settings.web_port,
        hyperhive_rev=c.hive.rev,
        started_at=record.started_at,
    )


async def set_status(c: Caller, req: m.SetStatus) -> m.Reply:
    await c.hive.registry.set_status(c.name, req.text)
    return m.Ok()


VERBS: tuple[Verb, ...] = (
    Verb(m.Ping, EVERYONE, ping, inline=True),
    Verb(m.Cancel, EVERYONE, cancel, inline=True),
    Verb(m.ServerInfo, OPERATOR, server_info, inline=True),
    Verb(m.ListAgents, OPERATOR, list_agents),
    Verb(m.AddAgent, ADMIN, add_agent),
    Verb(m.RemoveAgent, ADMIN, remove_agent),
    Verb(m.Whoami, AGENTS, whoami, inline=True),
    Verb(m.SetStatus, AGENTS, set_status),
)
