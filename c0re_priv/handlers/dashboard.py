"""What the dashboard reads: the snapshot and an agent's files, journal and config.

The `VERBS` table at the end is this feature's surface: each row names a verb, the roles
whose socket may decode it, and its handler."""

from __future__ import annotations

import trio

from protocol import messages as m

from .. import agent_files, snapshot
from .base import MANAGER, OPERATOR, Caller, Verb


async def take_snapshot(c: Caller, req: m.Snapshot) -> m.Reply:
    return await snapshot.take(c.hive, req.agent, req.messages)


async def read_agent_state_file(c: Caller, req: m.ReadAgentStateFile) -> m.Reply:
    return await trio.to_thread.run_sync(
        agent_files.read_state_file,
        c.hive.registry,
        c.hive.paths.agents_root,
        c.hive.settings.max_frame_bytes,
        req.agent,
        req.rel_path,
    )


async def list_agent_state_dir(c: Caller, req: m.ListAgentStateDir) -> m.Reply:
    return await trio.to_thread.run_sync(
        agent_files.list_state_dir,
        c.hive.registry,
        c.hive.paths.agents_root,
        req.agent,
        req.rel_path,
    )


async def read_journal(c: Caller, req: m.ReadJournal) -> m.Reply:
    return await trio.to_thread.run_sync(
        agent_files.read_journal, c.hive.registry, c.hive.paths.agents_root, req.agent, req.lines
    )


async def read_agent_config(c: Caller, req: m.ReadAgentConfig) -> m.Reply:
    if c.role == "manager":
        # the manager edits the meta repo's text, not the operator's view of the registry
        return await c.hive.configs.read_text(req.agent)
    return agent_files.agent_config_text(
        c.hive.registry, c.hive.config.agents, c.hive.configs.deployed, req.agent
    )


VERBS: tuple[Verb, ...] = (
    Verb(m.Snapshot, OPERATOR, take_snapshot),
    Verb(m.ReadAgentStateFile, OPERATOR, read_agent_state_file),
    Verb(m.ListAgentStateDir, OPERATOR, list_agent_state_dir),
    Verb(m.ReadJournal, OPERATOR, read_journal),
    Verb(m.ReadAgentConfig, MANAGER | OPERATOR, read_agent_config),
)
