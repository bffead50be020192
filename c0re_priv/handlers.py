"""One handler per verb. A handler gets an already-typed request and a `Caller` whose role and
agent come from the socket; it returns a reply (unary) or emits frames (streaming).

Which verbs a socket may use is decided before any handler runs, by the role's union in
`protocol.messages`; handlers therefore never check "may this role do this?", only the
per-object rules of their verb (e.g. only a question's target may answer it).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import trio

from protocol import messages as m

from . import agent_files, meta_inputs, open_threads, snapshot, tombstones
from .errors import Fail
from .lifecycle import read_tail

if TYPE_CHECKING:
    from .hive import Hive
    from .lifecycle import Lifecycle
    from .server import Connection

log = logging.getLogger(__name__)


@dataclass
class Caller:
    hive: Hive
    role: m.Role
    agent: str | None
    conn: Connection
    call_id: int

    @property
    def name(self) -> str:
        """The calling agent's name (agent and manager sockets only)."""
        assert self.agent is not None, "agent verb reached a non-agent socket"
        return self.agent


Emit = Callable[[m.Reply], Awaitable[None]]
UnaryHandler = Callable[[Caller, Any], Awaitable[m.Reply]]
StreamHandler = Callable[[Caller, Any, Emit], Awaitable[None]]
UNARY: dict[type[m.Request], UnaryHandler] = {}
STREAMING: dict[type[m.Request], StreamHandler] = {}
Req = TypeVar("Req", bound=m.Request)


def unary(
    req_type: type[Req],
) -> Callable[
    [Callable[[Caller, Req], Awaitable[m.Reply]]], Callable[[Caller, Req], Awaitable[m.Reply]]
]:
    def register(
        fn: Callable[[Caller, Req], Awaitable[m.Reply]],
    ) -> Callable[[Caller, Req], Awaitable[m.Reply]]:
        UNARY[req_type] = fn
        return fn

    return register


def streaming(
    req_type: type[Req],
) -> Callable[
    [Callable[[Caller, Req, Emit], Awaitable[None]]], Callable[[Caller, Req, Emit], Awaitable[None]]
]:
    def register(
        fn: Callable[[Caller, Req, Emit], Awaitable[None]],
    ) -> Callable[[Caller, Req, Emit], Awaitable[None]]:
        STREAMING[req_type] = fn
        return fn

    return register


# ------------------------------------------------------------------ every role


@unary(m.Ping)
async def ping(c: Caller, req: m.Ping) -> m.Reply:
    return m.Pong(id=0, server_time=time.time())


@unary(m.Cancel)
async def cancel(c: Caller, req: m.Cancel) -> m.Reply:
    scope = c.conn.streams.get(req.call)
    if scope is None:
        raise Fail("not_found", f"no stream with call id {req.call} on this connection")
    scope.cancel()
    return m.Ok(id=0)


# ------------------------------------------------------------------ operator (web, admin)


@unary(m.ServerInfo)
async def server_info(c: Caller, req: m.ServerInfo) -> m.Reply:
    h = c.hive
    return m.Info(
        id=0,
        rev=h.rev,
        protocol=h.protocol,
        uptime_seconds=h.uptime(),
        state_dir=str(h.paths.state_dir),
        run_dir=str(h.paths.run_dir),
        agents=len(h.registry.agents),
    )


@streaming(m.Subscribe)
async def subscribe(c: Caller, req: m.Subscribe, emit: Emit) -> None:
    if req.kinds is not None:
        unknown = sorted(set(req.kinds) - m.EVENT_KINDS)
        if unknown:
            raise Fail("invalid", f"unknown event kinds: {', '.join(unknown)}")
    bus = c.hive.bus
    sub, replay = bus.subscribe(req.kinds, req.since_seq)
    try:
        if replay is None:
            await emit(m.Resync(id=0, seq=bus.seq))
        else:
            await emit(m.Subscribed(id=0, seq=bus.seq))
            for event in replay:
                await emit(m.EventFrame(id=0, event=event))
        async for event in sub.recv:
            await emit(m.EventFrame(id=0, event=event))
        if sub.dropped:
            raise Fail("unavailable", "subscriber fell behind; subscribe again with since_seq")
    finally:
        sub.close()


@unary(m.ListAgents)
async def list_agents(c: Caller, req: m.ListAgents) -> m.Reply:
    remote = []
    if req.include_remote and c.hive.federation is not None:
        remote = await c.hive.federation.remote_agents()
    return m.Agents(id=0, agents=await c.hive.registry.rows(), remote=remote)


@unary(m.FederationStatus)
async def federation_status(c: Caller, req: m.FederationStatus) -> m.Reply:
    federation = c.hive.federation
    row = await federation.row() if federation is not None else m.FederationRow(enabled=False)
    return m.Federation(id=0, federation=row)


@unary(m.ListQuestions)
async def list_questions(c: Caller, req: m.ListQuestions) -> m.Reply:
    return m.Questions(id=0, questions=await c.hive.questions.list(req.target, req.include_closed))


@unary(m.AnswerQuestion)
async def answer_question(c: Caller, req: m.AnswerQuestion) -> m.Reply:
    await c.hive.questions.answer("operator", req.question_id, req.answer)
    return m.Ok(id=0)


@unary(m.OperatorSend)
async def operator_send(c: Caller, req: m.OperatorSend) -> m.Reply:
    rows, spilled = await c.hive.broker.send("operator", req.to, req.body, req.in_reply_to)
    return m.Sent(id=0, message_ids=[r.id for r in rows], body_file=spilled)


@unary(m.ListMessages)
async def list_messages(c: Caller, req: m.ListMessages) -> m.Reply:
    rows = await c.hive.broker.list_messages(
        req.agent, req.thread, req.limit, req.before, req.state
    )
    return m.Messages(id=0, messages=rows)


@unary(m.RetryMessage)
async def retry_message(c: Caller, req: m.RetryMessage) -> m.Reply:
    return m.Messages(id=0, messages=[await c.hive.broker.retry_dead(req.id)])


@unary(m.DropMessage)
async def drop_message(c: Caller, req: m.DropMessage) -> m.Reply:
    await c.hive.broker.drop_dead(req.id)
    return m.Ok(id=0)


@unary(m.GetAgentOpenThreads)
async def agent_open_threads(c: Caller, req: m.GetAgentOpenThreads) -> m.Reply:
    c.hive.registry.get(req.agent)
    now = time.time()
    threads, total = await c.hive.store.read(
        lambda conn: open_threads.for_agent(conn, req.agent, now, req.limit)
    )
    return m.OpenThreads(id=0, threads=threads, total=total)


@unary(m.ListReminders)
async def list_reminders(c: Caller, req: m.ListReminders) -> m.Reply:
    rows = await c.hive.reminders.list(req.agent, req.state, req.limit)
    return m.Reminders(id=0, reminders=rows)


@unary(m.RetryReminder)
async def retry_reminder(c: Caller, req: m.RetryReminder) -> m.Reply:
    return m.ReminderInfo(id=0, reminder=await c.hive.reminders.retry(req.id))


# ------------------------------------------------------------------ dashboard reads (web, admin)


@unary(m.Snapshot)
async def take_snapshot(c: Caller, req: m.Snapshot) -> m.Reply:
    return await snapshot.take(c.hive, req.agent, req.messages)


@unary(m.ReadAgentStateFile)
async def read_agent_state_file(c: Caller, req: m.ReadAgentStateFile) -> m.Reply:
    return await trio.to_thread.run_sync(
        agent_files.read_state_file, c.hive, req.agent, req.rel_path
    )


@unary(m.ListAgentStateDir)
async def list_agent_state_dir(c: Caller, req: m.ListAgentStateDir) -> m.Reply:
    return await trio.to_thread.run_sync(
        agent_files.list_state_dir, c.hive, req.agent, req.rel_path
    )


@unary(m.ReadJournal)
async def read_journal(c: Caller, req: m.ReadJournal) -> m.Reply:
    return await trio.to_thread.run_sync(agent_files.read_journal, c.hive, req.agent, req.lines)


@unary(m.ReadAgentConfig)
async def read_agent_config(c: Caller, req: m.ReadAgentConfig) -> m.Reply:
    if c.role == "manager":
        # the manager edits the meta repo's text, not the operator's view of the registry
        return await c.hive.configs.read_text(req.agent)
    return agent_files.agent_config_text(c.hive, req.agent)


# ------------------------------------------------------------------ admin only


@unary(m.AddAgent)
async def add_agent(c: Caller, req: m.AddAgent) -> m.Reply:
    await c.hive.add_agent(req.name, req.role, req.model, req.runtime, req.allowed_recipients)
    await c.hive.configs.adopt(req.name)
    (row,) = [r for r in await c.hive.registry.rows() if r.name == req.name]
    return m.AgentInfo(id=0, agent=row)


@unary(m.RemoveAgent)
async def remove_agent(c: Caller, req: m.RemoveAgent) -> m.Reply:
    await c.hive.remove_agent(req.name)
    await c.hive.configs.forget(req.name, f"remove {req.name} (operator)")
    return m.Ok(id=0)


# ------------------------------------------------------------------ agent and manager


@unary(m.Whoami)
async def whoami(c: Caller, req: m.Whoami) -> m.Reply:
    record = c.hive.registry.get(c.name)
    return m.Identity(
        id=0,
        name=record.name,
        role=record.role,
        model=record.model,
        port=c.hive.settings.web_port,
        hyperhive_rev=c.hive.rev,
        started_at=record.started_at,
    )


@unary(m.Send)
async def send(c: Caller, req: m.Send) -> m.Reply:
    rows, spilled = await c.hive.broker.send(c.name, req.to, req.body, req.in_reply_to)
    return m.Sent(id=0, message_ids=[r.id for r in rows], body_file=spilled)


@unary(m.Recv)
async def recv(c: Caller, req: m.Recv) -> m.Reply:
    assert c.conn.holder is not None
    items, more = await c.hive.broker.recv(c.conn.holder, req.max, req.wait_seconds)
    return m.Deliveries(id=0, items=items, more=more)


@streaming(m.WaitForWork)
async def wait_for_work(c: Caller, req: m.WaitForWork, emit: Emit) -> None:
    assert c.conn.holder is not None
    async for delivery, more in c.hive.broker.wait_for_work(c.conn.holder):
        await emit(m.Work(id=0, delivery=delivery, more=more))


@unary(m.Ack)
async def ack(c: Caller, req: m.Ack) -> m.Reply:
    assert c.conn.holder is not None
    await c.hive.broker.ack(c.conn.holder, req.lease)
    return m.Ok(id=0)


@unary(m.Renew)
async def renew(c: Caller, req: m.Renew) -> m.Reply:
    assert c.conn.holder is not None
    return m.Renewed(id=0, expires_at=await c.hive.broker.renew(c.conn.holder, req.lease))


@unary(m.Ask)
async def ask(c: Caller, req: m.Ask) -> m.Reply:
    q, msg = await c.hive.questions.ask(
        c.name, req.target, req.question, req.options, req.multi, req.ttl_seconds
    )
    return m.Asked(id=0, question_id=q.id, message_id=msg.id)


@unary(m.Answer)
async def answer(c: Caller, req: m.Answer) -> m.Reply:
    await c.hive.questions.answer(c.name, req.question_id, req.answer)
    return m.Ok(id=0)


@unary(m.ListMyAsks)
async def list_my_asks(c: Caller, req: m.ListMyAsks) -> m.Reply:
    return m.Asks(id=0, asks=await c.hive.questions.list_mine(c.name))


@unary(m.CancelAsk)
async def cancel_ask(c: Caller, req: m.CancelAsk) -> m.Reply:
    await c.hive.questions.cancel(c.name, req.id)
    return m.Ok(id=0)


@unary(m.Remind)
async def remind(c: Caller, req: m.Remind) -> m.Reply:
    reminder, spilled = await c.hive.reminders.remind(c.name, req.body, req.at, req.in_seconds)
    return m.Reminded(id=0, reminder=reminder, body_file=spilled)


@unary(m.ListMyReminders)
async def list_my_reminders(c: Caller, req: m.ListMyReminders) -> m.Reply:
    return m.Reminders(id=0, reminders=await c.hive.reminders.list_mine(c.name))


@unary(m.CancelReminder)
async def cancel_reminder(c: Caller, req: m.CancelReminder) -> m.Reply:
    await c.hive.reminders.cancel(c.name, req.id)
    return m.Ok(id=0)


@unary(m.GetOpenThreads)
async def get_open_threads(c: Caller, req: m.GetOpenThreads) -> m.Reply:
    now = time.time()
    name = c.name
    if c.role == "manager":
        threads, total = await c.hive.store.read(
            lambda conn: open_threads.hive_wide(conn, now, req.limit)
        )
    else:
        threads, total = await c.hive.store.read(
            lambda conn: open_threads.for_agent(conn, name, now, req.limit)
        )
    return m.OpenThreads(id=0, threads=threads, total=total)


@unary(m.SetStatus)
async def set_status(c: Caller, req: m.SetStatus) -> m.Reply:
    await c.hive.registry.set_status(c.name, req.text)
    return m.Ok(id=0)


# ------------------------------------------------------------------ manager only


@unary(m.RequestSpawn)
async def request_spawn(c: Caller, req: m.RequestSpawn) -> m.Reply:
    return m.ApprovalInfo(id=0, approval=await c.hive.approvals.request_spawn(c.name, req))


@unary(m.RequestInitConfig)
async def request_init_config(c: Caller, req: m.RequestInitConfig) -> m.Reply:
    row = await c.hive.approvals.request_init_config(c.name, req.name)
    return m.ApprovalInfo(id=0, approval=row)


@unary(m.ProposeConfig)
async def propose_config(c: Caller, req: m.ProposeConfig) -> m.Reply:
    return await c.hive.configs.propose(c.name, req.agent, req.agent_toml, req.message)


@unary(m.RequestApplyCommit)
async def request_apply_commit(c: Caller, req: m.RequestApplyCommit) -> m.Reply:
    row = await c.hive.approvals.request_apply_commit(c.name, req.agent, req.sha)
    return m.ApprovalInfo(id=0, approval=row)


@unary(m.RequestUpdateMetaInputs)
async def request_update_meta_inputs(c: Caller, req: m.RequestUpdateMetaInputs) -> m.Reply:
    row = await c.hive.approvals.request_update_meta_inputs(c.name, req.names)
    return m.ApprovalInfo(id=0, approval=row)


@unary(m.CancelApproval)
async def cancel_approval(c: Caller, req: m.CancelApproval) -> m.Reply:
    return m.ApprovalInfo(id=0, approval=await c.hive.approvals.cancel(c.name, req.id))


# ------------------------------------------------------------------ approvals, tombstones, meta inputs (web, admin)


@unary(m.ListApprovals)
async def list_approvals(c: Caller, req: m.ListApprovals) -> m.Reply:
    return m.Approvals(id=0, approvals=await c.hive.approvals.recent(req.status, req.limit))


@unary(m.GetApproval)
async def get_approval(c: Caller, req: m.GetApproval) -> m.Reply:
    row, diff = await c.hive.approvals.get(req.id)
    return m.ApprovalInfo(id=0, approval=row, diff=diff)


@unary(m.Approve)
async def approve(c: Caller, req: m.Approve) -> m.Reply:
    return m.ApprovalInfo(id=0, approval=await c.hive.approvals.approve(req.id, req.note))


@unary(m.Deny)
async def deny(c: Caller, req: m.Deny) -> m.Reply:
    return m.ApprovalInfo(id=0, approval=await c.hive.approvals.deny(req.id, req.note))


@unary(m.ListTombstones)
async def list_tombstones(c: Caller, req: m.ListTombstones) -> m.Reply:
    rows = await trio.to_thread.run_sync(tombstones.list_all, c.hive)
    return m.Tombstones(id=0, tombstones=rows)


@unary(m.PurgeTombstone)
async def purge_tombstone(c: Caller, req: m.PurgeTombstone) -> m.Reply:
    await tombstones.purge(c.hive, req.name)
    return m.Ok(id=0)


@unary(m.ListMetaInputs)
async def list_meta_inputs(c: Caller, req: m.ListMetaInputs) -> m.Reply:
    rows, note = await meta_inputs.list_inputs(c.hive)
    return m.MetaInputs(id=0, inputs=rows, note=note)


@unary(m.UpdateMetaInputs)
async def update_meta_inputs(c: Caller, req: m.UpdateMetaInputs) -> m.Reply:
    return await meta_inputs.update(c.hive, req.names)


# ------------------------------------------------------------------ lifecycle (web, admin)


def _lifecycle(c: Caller) -> Lifecycle:
    if c.hive.lifecycle is None:
        raise Fail("unavailable", "the container supervisor is not running")
    return c.hive.lifecycle


async def _row(c: Caller, name: str) -> m.Reply:
    return m.AgentInfo(id=0, agent=await c.hive.registry.row(name))


@unary(m.Start)
async def start(c: Caller, req: m.Start) -> m.Reply:
    await _lifecycle(c).start(req.name)
    return await _row(c, req.name)


@unary(m.Stop)
async def stop(c: Caller, req: m.Stop) -> m.Reply:
    await _lifecycle(c).stop(req.name, req.graceful)
    return await _row(c, req.name)


@unary(m.Restart)
async def restart(c: Caller, req: m.Restart) -> m.Reply:
    await _lifecycle(c).restart(req.name)
    return await _row(c, req.name)


@unary(m.Rebuild)
async def rebuild(c: Caller, req: m.Rebuild) -> m.Reply:
    lifecycle = _lifecycle(c)
    await c.hive.configs.sync_from_main(req.name)  # an approved config not yet deployed
    await lifecycle.rebuild(req.name)
    return await _row(c, req.name)


@unary(m.RebuildAll)
async def rebuild_all(c: Caller, req: m.RebuildAll) -> m.Reply:
    lifecycle = _lifecycle(c)
    for name in c.hive.registry.names():  # as `Rebuild` does, one agent at a time
        try:
            await c.hive.configs.sync_from_main(name)
        except Fail as exc:  # that agent is rebuilt on the config it already runs
            log.warning("rebuild-all: %s keeps its deployed config: %s", name, exc.message)
    await lifecycle.rebuild_all()
    return m.Agents(id=0, agents=await c.hive.registry.rows())


@unary(m.SetPaused)
async def set_paused(c: Caller, req: m.SetPaused) -> m.Reply:
    await _lifecycle(c).set_paused(req.name, req.paused)
    return await _row(c, req.name)


@unary(m.Destroy)
async def destroy(c: Caller, req: m.Destroy) -> m.Reply:
    await _lifecycle(c).destroy(req.name)
    tombstones.added(c.hive, req.name)
    await c.hive.configs.forget(req.name, f"destroy {req.name} (operator)")
    return m.Ok(id=0)


@unary(m.AgentStatus)
async def agent_status(c: Caller, req: m.AgentStatus) -> m.Reply:
    return await _row(c, req.name)


async def _control(
    c: Caller, name: str, action: m.ControlAction, model: str | None = None
) -> m.Reply:
    await _lifecycle(c).control(name, action, model)
    return m.Ok(id=0)


@unary(m.SetAgentLogin)
async def set_agent_login(c: Caller, req: m.SetAgentLogin) -> m.Reply:
    await _lifecycle(c).set_login(req.name, req.token)
    return await _row(c, req.name)


@unary(m.CancelTurn)
async def cancel_turn(c: Caller, req: m.CancelTurn) -> m.Reply:
    return await _control(c, req.name, "cancel")


@unary(m.Compact)
async def compact(c: Caller, req: m.Compact) -> m.Reply:
    return await _control(c, req.name, "compact")


@unary(m.SetModel)
async def set_model(c: Caller, req: m.SetModel) -> m.Reply:
    return await _control(c, req.name, "set_model", req.model)


@unary(m.NewSession)
async def new_session(c: Caller, req: m.NewSession) -> m.Reply:
    return await _control(c, req.name, "new_session")


@unary(m.GetAgentStats)
async def get_agent_stats(c: Caller, req: m.GetAgentStats) -> m.Reply:
    return m.Stats(id=0, name=req.name, stats=await _lifecycle(c).stats(req.name))


# ------------------------------------------------------------------ harness (agent, manager)


@streaming(m.WaitForControl)
async def wait_for_control(c: Caller, req: m.WaitForControl, emit: Emit) -> None:
    controls = await _lifecycle(c).controls_for(c.name)
    async for frame in controls:
        await emit(frame)


@unary(m.Nack)
async def nack(c: Caller, req: m.Nack) -> m.Reply:
    assert c.conn.holder is not None
    if req.lease not in c.conn.holder.leases:
        raise Fail("not_found", "no such lease on this connection")
    await c.hive.broker.release([req.lease], req.reason or "turn failed")
    return m.Ok(id=0)


@unary(m.ReportState)
async def report_state(c: Caller, req: m.ReportState) -> m.Reply:
    _lifecycle(c).report_state(c.name, req.state, req.reason, req.model)
    return m.Ok(id=0)


@unary(m.ReportTurn)
async def report_turn(c: Caller, req: m.ReportTurn) -> m.Reply:
    await _lifecycle(c).report_turn(c.name, req.turn)
    return m.Ok(id=0)


@unary(m.ReportControl)
async def report_control(c: Caller, req: m.ReportControl) -> m.Reply:
    outcome = "done" if req.ok else "failed"
    c.hive.bus.publish(m.Note(agent=c.name, text=f"{req.action} {outcome}: {req.detail}".strip()))
    return m.Ok(id=0)


@unary(m.GetLogs)
async def get_logs(c: Caller, req: m.GetLogs) -> m.Reply:
    path = _lifecycle(c).log_file(c.name)
    lines = await trio.to_thread.run_sync(read_tail, path, req.lines)
    return m.Logs(id=0, lines=lines, path=str(path))
