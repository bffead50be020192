"""Containers and runtimes: the operator's controls and the harness's reports.

The `VERBS` table at the end is this feature's surface: each row names a verb, the roles
whose socket may decode it, and its handler."""

from __future__ import annotations

import logging

import trio

from protocol import messages as m

from .. import tombstones
from ..errors import Fail
from ..lifecycle import Lifecycle, read_tail
from .base import AGENTS, OPERATOR, Caller, Emit, Verb

log = logging.getLogger(__name__)


def _lifecycle(c: Caller) -> Lifecycle:
    if c.hive.lifecycle is None:
        raise Fail("unavailable", "the container supervisor is not running")
    return c.hive.lifecycle


async def _row(c: Caller, name: str) -> m.Reply:
    return m.AgentInfo(agent=await c.hive.registry.row(name))


async def start(c: Caller, req: m.Start) -> m.Reply:
    await _lifecycle(c).start(req.name)
    return await _row(c, req.name)


async def stop(c: Caller, req: m.Stop) -> m.Reply:
    await _lifecycle(c).stop(req.name, req.graceful)
    return await _row(c, req.name)


async def restart(c: Caller, req: m.Restart) -> m.Reply:
    await _lifecycle(c).restart(req.name)
    return await _row(c, req.name)


async def rebuild(c: Caller, req: m.Rebuild) -> m.Reply:
    lifecycle = _lifecycle(c)
    await c.hive.configs.sync_from_main(req.name)  # an approved config not yet deployed
    await lifecycle.rebuild(req.name)
    return await _row(c, req.name)


async def rebuild_all(c: Caller, req: m.RebuildAll) -> m.Reply:
    lifecycle = _lifecycle(c)
    for name in c.hive.registry.names():  # as `Rebuild` does, one agent at a time
        try:
            await c.hive.configs.sync_from_main(name)
        except Fail as exc:  # that agent is rebuilt on the config it already runs
            log.warning("rebuild-all: %s keeps its deployed config: %s", name, exc.message)
    await lifecycle.rebuild_all()
    return m.Agents(agents=await c.hive.registry.rows())


async def set_paused(c: Caller, req: m.SetPaused) -> m.Reply:
    if not req.paused:  # resuming also lets it go on past the budget limits it is over
        await c.hive.budgets.resume(req.name)
    await _lifecycle(c).set_paused(req.name, req.paused)
    return await _row(c, req.name)


async def destroy(c: Caller, req: m.Destroy) -> m.Reply:
    await _lifecycle(c).destroy(req.name)
    tombstones.added(c.hive.paths.state_dir, c.hive.bus, req.name)
    await c.hive.configs.forget(req.name, f"destroy {req.name} (operator)")
    return m.Ok()


async def agent_status(c: Caller, req: m.AgentStatus) -> m.Reply:
    return await _row(c, req.name)


async def _control(
    c: Caller, name: str, action: m.ControlAction, model: str | None = None
) -> m.Reply:
    await _lifecycle(c).control(name, action, model)
    return m.Ok()


async def set_agent_login(c: Caller, req: m.SetAgentLogin) -> m.Reply:
    await _lifecycle(c).set_login(req.name, req.token)
    return await _row(c, req.name)


async def cancel_turn(c: Caller, req: m.CancelTurn) -> m.Reply:
    return await _control(c, req.name, "cancel")


async def compact(c: Caller, req: m.Compact) -> m.Reply:
    return await _control(c, req.name, "compact")


async def set_model(c: Caller, req: m.SetModel) -> m.Reply:
    return await _control(c, req.name, "set_model", req.model)


async def new_session(c: Caller, req: m.NewSession) -> m.Reply:
    return await _control(c, req.name, "new_session")


async def get_agent_stats(c: Caller, req: m.GetAgentStats) -> m.Reply:
    return m.Stats(name=req.name, stats=await _lifecycle(c).stats(req.name))


async def wait_for_control(c: Caller, req: m.WaitForControl, emit: Emit) -> None:
    controls = await _lifecycle(c).controls_for(c.name)
    async for frame in controls:
        await emit(frame)


async def report_state(c: Caller, req: m.ReportState) -> m.Reply:
    _lifecycle(c).report_state(c.name, req.state, req.reason, req.model)
    return m.Ok()


async def report_turn(c: Caller, req: m.ReportTurn) -> m.Reply:
    await _lifecycle(c).report_turn(c.name, req.turn)
    await c.hive.budgets.after_turn(c.name)  # before the harness may lease its next message
    return m.Ok()


async def report_control(c: Caller, req: m.ReportControl) -> m.Reply:
    if req.action == "park":  # the emergency stop's own; it reports the outcome as a whole
        c.hive.estop.confirm(c.name)
        return m.Ok()
    outcome = "done" if req.ok else "failed"
    c.hive.bus.publish(m.Note(agent=c.name, text=f"{req.action} {outcome}: {req.detail}".strip()))
    return m.Ok()


async def get_logs(c: Caller, req: m.GetLogs) -> m.Reply:
    path = _lifecycle(c).log_file(c.name)
    lines = await trio.to_thread.run_sync(read_tail, path, req.lines)
    return m.Logs(lines=lines, path=str(path))


VERBS: tuple[Verb, ...] = (
    Verb(m.Start, OPERATOR, start),
    Verb(m.Stop, OPERATOR, stop),
    Verb(m.Restart, OPERATOR, restart),
    Verb(m.Rebuild, OPERATOR, rebuild),
    Verb(m.RebuildAll, OPERATOR, rebuild_all),
    Verb(m.SetPaused, OPERATOR, set_paused),
    Verb(m.Destroy, OPERATOR, destroy),
    Verb(m.AgentStatus, OPERATOR, agent_status),
    Verb(m.SetAgentLogin, OPERATOR, set_agent_login),
    Verb(m.CancelTurn, OPERATOR, cancel_turn),
    Verb(m.Compact, OPERATOR, compact),
    Verb(m.SetModel, OPERATOR, set_model),
    Verb(m.NewSession, OPERATOR, new_session),
    Verb(m.GetAgentStats, OPERATOR, get_agent_stats),
    Verb(m.WaitForControl, AGENTS, wait_for_control, streaming=True),
    Verb(m.ReportState, AGENTS, report_state),
    Verb(m.ReportTurn, AGENTS, report_turn),
    Verb(m.ReportControl, AGENTS, report_control),
    Verb(m.GetLogs, AGENTS, get_logs),
)
