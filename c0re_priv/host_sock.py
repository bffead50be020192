"""`host.sock`: the original hyperhive's JSON-line host socket, a fifth door with admin.sock's power.

Existing host tools (`hivectl`, desktop plugins) speak `protocol.host_v1` here. Every cmd is
carried out by admin verbs — requests of `ADMIN_REQUESTS`, run by the very handlers that
serve `admin.sock` — and `ADMIN_VERBS` below says which verbs each cmd may use, so this door
can do nothing `hive ctl` cannot and no verb is implemented twice (`urls` only reads the
configuration). The module ends with its table, `CMDS`, one row per cmd in the shape of the
handlers' verb tables: the cmd, the admin verbs it is carried out with, its answer. The socket has admin.sock's mode and group. A connection's lines are answered
in order, one at a time; a bad line is answered and the connection goes on;
`subscribe_agent_status` turns the connection into a feed of changed rows until the client
hangs up. The socket hub accepts its connections under the bounds of every peer (as its own
peer, with `admin_max_connections`); lines are capped, and answered one at a time per
connection. This module must never change state except through an admin verb.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit

import trio

from protocol import host_v1 as h
from protocol import messages as m
from protocol.terminal import json_text, visible

from .broker import LeaseHolder
from .errors import Fail
from .handlers import TABLE, UNARY, Caller
from .server import PEER_GONE, RECV_CHUNK, Peer

if TYPE_CHECKING:
    from .hive import Hive

log = logging.getLogger(__name__)

ROW_EVENTS = frozenset(
    {
        "agent_added",
        "agent_state_changed",
        "status_changed",
        "needs_login",
        "logged_in",
        "reminder_scheduled",
        "reminder_delivered",
        "reminder_failed",
        "reminder_cancelled",
        "approval_resolved",
    }
)
"""The events after which an `AgentStatusRow` may read differently."""

HOST_KIND: dict[m.ApprovalKind, h.HostApprovalKind] = {
    "spawn": "spawn",
    "init_config": "init_config",
    "apply_commit": "merge_config_pr",
    "update_meta_inputs": "update_meta_inputs",
}

R = TypeVar("R", bound=m.Reply)

ADMIN_ROWS = frozenset(row.request for row in TABLE if "admin" in row.roles and not row.streaming)
"""The unary verbs the handlers' tables give admin.sock: all a cmd may ever be carried out with."""


@dataclass
class NoConnection:
    """The connection a cmd's admin verbs are answered on: none. The unary admin verbs never
    touch their caller's connection (only `cancel` and the harness's verbs do)."""

    holder: LeaseHolder | None = None
    streams: dict[int, trio.CancelScope] = field(default_factory=dict)


class AdminDoor:
    """Runs admin verbs for one cmd, refusing any verb its row of `CMDS` lacks."""

    def __init__(self, hive: Hive, cmd: type[h.HostRequest]) -> None:
        self.hive = hive
        self.cmd = cmd
        self.allowed = ADMIN_VERBS[cmd]

    async def call(self, req: m.Request, expect: type[R]) -> R:
        verb = type(req)
        if verb not in self.allowed or verb not in ADMIN_ROWS:
            raise AssertionError(f"{h.cmd_of(self.cmd)} may not use {m.op_of(verb)}")
        caller = Caller(self.hive, "admin", None, NoConnection(), 0)
        reply = await UNARY[verb](caller, req)
        assert isinstance(reply, expect), reply
        return reply


# ------------------------------------------------------------------ rows


def home_url(web_url: str) -> str | None:
    if not web_url:
        return None
    return web_url if web_url.endswith("/") else web_url + "/"


def status_row(row: m.AgentRow, home: str | None) -> h.AgentStatusRow:
    running = row.container == "running"
    # a stopped agent's status line is what it said before it stopped: stale, so not shown
    has_status = running and bool(row.status_text) and row.status_set_at is not None
    return h.AgentStatusRow(
        name=row.name,
        running=running,
        failed=row.failed,
        needs_update=row.needs_update,
        needs_login=row.needs_login,
        paused=row.paused,
        parent=row.parent or None,
        deployed_sha=row.deployed_sha[:12] if row.deployed_sha else None,
        active_model=row.active_model or None,
        status_text=row.status_text if has_status else None,
        status_set_at=h.rfc3339(row.status_set_at) if has_status else None,
        url=f"{home}agent/{row.name}/" if home is not None else None,
        pending_reminders=row.reminders_pending,
    )


def approval(row: m.ApprovalRow) -> h.Approval:
    return h.Approval(
        id=row.id,
        agent=row.agent,
        kind=HOST_KIND[row.kind],
        commit_ref=row.ref or "",
        fetched_sha=row.sha,
        requested_at=h.rfc3339(row.requested_at),
        status=row.status,
        description=row.description or None,
        resolved_at=h.rfc3339(row.resolved_at),
        note=row.note,
    )


# ------------------------------------------------------------------ cmds


async def status_rows(door: AdminDoor) -> list[h.AgentStatusRow]:
    home = home_url(door.hive.settings.web_url)
    agents = await door.call(m.ListAgents(), m.Agents)
    return [status_row(row, home) for row in agents.agents]


async def names_in(door: AdminDoor, scope: h.Scope) -> list[str]:
    """The agents a scope names, each once, all of them registered; never "everything"."""
    wider = [k for k in ("agents", "ci", "forge", "gateway", "matrix") if getattr(scope, k)]
    if wider:
        raise Fail(
            "invalid",
            f"scope.{wider[0]} is not served here: name the agents in scope.agent_names",
        )
    if not scope.agent_names:
        raise Fail("invalid", "scope.agent_names is empty; an empty scope never means every agent")
    known = {row.name for row in (await door.call(m.ListAgents(), m.Agents)).agents}
    names = list(dict.fromkeys(scope.agent_names))
    unknown = [n for n in names if n not in known]
    if unknown:
        raise Fail("not_found", f"no agent named {', '.join(map(repr, unknown))}")
    return names


async def each(names: list[str], act: Callable[[str], Awaitable[object]]) -> h.HostResponse:
    """Act on every name in turn; one failure does not stop the others, and is reported."""
    failed: list[tuple[str, Fail]] = []
    for name in names:
        try:
            await act(name)
        except Fail as exc:
            failed.append((name, exc))
    if not failed:
        return h.HostResponse(ok=True)
    if len(names) == 1:
        return h.failure(failed[0][1].code, failed[0][1].message)
    return h.failure(failed[0][1].code, "; ".join(f"{n}: {exc.message}" for n, exc in failed))


async def answer_list(door: AdminDoor, req: h.List) -> h.HostResponse:
    agents = await door.call(m.ListAgents(), m.Agents)
    return h.HostResponse(ok=True, agents=[row.name for row in agents.agents])


async def answer_agent_status(door: AdminDoor, req: h.AgentStatus) -> h.HostResponse:
    return h.HostResponse(ok=True, agent_statuses=await status_rows(door))


async def answer_set_paused(door: AdminDoor, req: h.SetPaused) -> h.HostResponse:
    await door.call(m.SetPaused(name=req.name, paused=req.paused), m.AgentInfo)
    return h.HostResponse(ok=True)


async def answer_start(door: AdminDoor, req: h.Start) -> h.HostResponse:
    names = await names_in(door, req.scope)
    return await each(names, lambda name: door.call(m.Start(name=name), m.AgentInfo))


async def answer_stop(door: AdminDoor, req: h.Stop) -> h.HostResponse:
    names = await names_in(door, req.scope)
    return await each(
        names, lambda name: door.call(m.Stop(name=name, graceful=req.graceful), m.AgentInfo)
    )


async def answer_restart(door: AdminDoor, req: h.Restart) -> h.HostResponse:
    await door.call(m.Restart(name=req.name), m.AgentInfo)
    return h.HostResponse(ok=True)


async def answer_urls(door: AdminDoor, req: h.Urls) -> h.HostResponse:
    home = home_url(door.hive.settings.web_url)
    domain = urlsplit(home).hostname if home is not None else None
    return h.HostResponse(ok=True, urls=h.HiveUrls(domain=domain, home=home))


async def answer_pending(door: AdminDoor, req: h.Pending) -> h.HostResponse:
    rows = await door.call(m.ListApprovals(status="pending", limit=1000), m.Approvals)
    return h.HostResponse(ok=True, approvals=[approval(r) for r in reversed(rows.approvals)])


async def answer_approve(door: AdminDoor, req: h.Approve) -> h.HostResponse:
    done = (await door.call(m.Approve(id=req.id), m.ApprovalInfo)).approval
    if done.status == "failed":
        return h.failure("internal", f"approval #{done.id} failed: {done.outcome}")
    return h.HostResponse(ok=True)


async def answer_deny(door: AdminDoor, req: h.Deny) -> h.HostResponse:
    await door.call(m.Deny(id=req.id), m.ApprovalInfo)
    return h.HostResponse(ok=True)


# ------------------------------------------------------------------ transport


class RosterWatch:
    """Every agent's row for every subscriber, read once per change, not once per subscriber.

    One task, alive while anyone subscribes (in the host socket's nursery), follows the
    events after which a row may read differently and rereads the rows after each burst of
    them; each change bumps `version`. Subscribers wait for a version past the one they
    sent and compare rows. A subscriber that is slow to read simply finds a later version
    when it comes back, so it never holds anything up; if the watcher itself falls behind
    the event bus, it subscribes again and rereads.
    """

    def __init__(self, hive: Hive, nursery: trio.Nursery) -> None:
        self.hive = hive
        self._nursery = nursery
        self.rows: dict[str, h.AgentStatusRow] = {}
        self.version = 0
        self.broken = False
        self._changed = trio.Event()
        self._users = 0
        self._scope: trio.CancelScope | None = None
        self._lock = trio.Lock()

    @contextlib.asynccontextmanager
    async def joined(self) -> AsyncIterator[RosterWatch]:
        """Be a subscriber: the watcher runs (with fresh rows) for as long as anyone is one."""
        async with self._lock:
            self._users += 1
            try:
                if self._scope is None:
                    await self._nursery.start(self._watch)
            except BaseException:
                self._users -= 1
                raise
        try:
            yield self
        finally:
            self._users -= 1
            if self._users == 0 and self._scope is not None:
                self._scope.cancel()
                self._scope = None

    async def wait_past(self, version: int) -> int:
        """Wait for a version after `version`; return it (`rows` is that version's)."""
        while self.version == version and not self.broken:
            await self._changed.wait()
        if self.broken:
            raise RuntimeError("the agent status watcher failed; see the daemon log")
        return self.version

    async def _watch(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        door = AdminDoor(self.hive, h.SubscribeAgentStatus)
        bus = self.hive.bus
        with trio.CancelScope() as scope:
            self._scope = scope
            self.broken = False
            sub, _ = bus.subscribe(ROW_EVENTS, None)
            try:
                self._publish(await status_rows(door))
                task_status.started()
                while True:
                    if not await _next_events(sub.recv):
                        log.info("host.sock: the status watcher fell behind; rereading every row")
                        sub.close()
                        sub, _ = bus.subscribe(ROW_EVENTS, None)
                    self._publish(await status_rows(door))
            except Exception:
                # its subscribers hang up; the next subscriber starts a fresh watcher
                log.exception("host.sock: the agent status watcher failed")
                self.broken = True
                self._changed.set()
                if self._scope is scope:
                    self._scope = None
            finally:
                sub.close()

    def _publish(self, rows: list[h.AgentStatusRow]) -> None:
        latest = {row.name: row for row in rows}
        if latest == self.rows and self.version:
            return
        self.rows = latest
        self.version += 1
        self._changed.set()
        self._changed = trio.Event()


class HostGone(Exception):
    """The daemon closes a host.sock connection on its own account (a timeout, a client that
    stopped reading); `final` says whether the client can still be told why."""

    def __init__(self, code: m.ErrorCode, message: str, *, final: bool = True) -> None:
        super().__init__(message)
        self.code: m.ErrorCode = code
        self.message = message
        self.final = final


class HostConnection:
    """One client: its lines answered in order until it hangs up, subscribes or is dropped.

    The peer bounds of every socket apply (`docs/security.md`): a line that has begun must
    end within `frame_timeout_seconds`; with no request running the client may stay silent
    for `idle_timeout_seconds` (a subscription is a request running, so it never is idle);
    an answer or push not read within `write_timeout_seconds` drops the connection; the
    bytes of an unfinished line count against the peer's budget, and each request holds one
    of the peer's calls while it runs.
    """

    def __init__(
        self, hive: Hive, roster: RosterWatch, stream: trio.SocketStream, peer: Peer
    ) -> None:
        self.hive = hive
        self.roster = roster
        self.stream = stream
        self.peer = peer
        settings = hive.settings
        self.frame_timeout = settings.frame_timeout_seconds
        self.idle_timeout = settings.idle_timeout_seconds
        self.write_timeout = settings.write_timeout_seconds
        self._buffered = 0

    async def send(self, response: h.HostResponse) -> None:
        # agent-written text (status lines, descriptions) reaches terminals: see terminal.py
        line = json_text(response).encode() + b"\n"
        with trio.move_on_after(self.write_timeout) as waited:
            await self.stream.send_all(line)
        if waited.cancelled_caught:
            raise HostGone(
                "unavailable", f"no answer read for {self.write_timeout:g}s", final=False
            )

    async def serve(self) -> None:
        try:
            await self._serve()
        except HostGone as gone:
            log.warning("host.sock: closing connection: %s", gone.message)
            if gone.final:
                with contextlib.suppress(HostGone, *PEER_GONE):
                    await self.send(h.failure(gone.code, gone.message))
        finally:
            self.peer.budget.adjust(-self._buffered)
            self._buffered = 0

    async def _serve(self) -> None:
        lines = h.LineSplitter(h.LINE_MAX)
        while True:
            got = await self._read(lines)
            if not got:
                return
            for line in got:
                if isinstance(line, h.TooLong):
                    log.warning("host.sock: refused a line over %d bytes", line.limit)
                    await self.send(
                        h.failure("too_large", f"a request line is at most {line.limit} bytes")
                    )
                    continue
                if not line.strip():
                    continue  # a stray newline is not a request
                try:
                    req = h.decode_line(line)
                except h.LineError as exc:
                    log.warning("host.sock: %s: %s", exc.code, visible(exc.message))
                    await self.send(h.failure(exc.code, exc.message))
                    continue
                async with self.peer.calls:
                    if isinstance(req, h.SubscribeAgentStatus):
                        await self.subscribe()
                        return  # a subscribed connection reads no further requests
                    response = await self.answer(req)
                await self.send(response)

    async def _read(self, lines: h.LineSplitter) -> list[bytes | h.TooLong]:
        """Receive until at least one whole line (or a refused one) is in; `[]` at the end.

        Raises `HostGone` when a begun line is not finished within the frame timeout, or the
        client stays silent, with nothing begun, for the idle timeout.
        """
        now = trio.current_time()
        line_deadline = now + self.frame_timeout
        idle_deadline = now + self.idle_timeout
        while True:
            partial = lines.pending > 0
            with trio.move_on_at(line_deadline if partial else idle_deadline) as waited:
                data = await self.stream.receive_some(RECV_CHUNK)
            if waited.cancelled_caught:
                if partial:
                    raise HostGone(
                        "bad_frame",
                        f"a line was not completed within {self.frame_timeout:g}s "
                        f"({lines.pending} bytes of it arrived)",
                    )
                raise HostGone("unavailable", f"idle for {self.idle_timeout:g}s")
            if not data:
                return []
            if not partial:  # a new line begins in this chunk
                line_deadline = trio.current_time() + self.frame_timeout
            got = lines.feed(data)
            del data
            self._account(lines.pending)
            if got:
                return got
            if self.peer.budget.over():
                with trio.move_on_at(line_deadline):
                    await self.peer.budget.wait_until_under()

    def _account(self, pending: int) -> None:
        delta = pending - self._buffered
        if delta:
            self.peer.budget.adjust(delta)
            self._buffered = pending

    async def answer(self, req: h.HostRequest) -> h.HostResponse:
        door = AdminDoor(self.hive, type(req))
        try:
            answer = ANSWERS[type(req)]
            return await answer(door, req)
        except Fail as exc:
            return h.failure(exc.code, exc.message)
        except Exception:
            log.exception("host.sock: internal error handling %s", h.cmd_of(type(req)))
            return h.failure("internal", "internal error; see daemon log")

    async def subscribe(self) -> None:
        """A bare success, then one response per agent whose row changed, until hangup.

        Rows are compared, not events forwarded (see `RosterWatch`): a slow reader misses
        intermediate states, never the latest one, and never slows the daemon; one that
        reads nothing for the write timeout is dropped.
        """
        async with self.roster.joined() as roster:
            sent, version = roster.rows, roster.version
            await self.send(h.HostResponse(ok=True))
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._until_hangup, nursery.cancel_scope)
                while True:
                    version = await roster.wait_past(version)
                    rows = roster.rows
                    for name, row in rows.items():
                        if sent.get(name) != row:
                            await self.send(h.HostResponse(ok=True, agent_statuses=[row]))
                    sent = rows

    async def _until_hangup(self, scope: trio.CancelScope) -> None:
        """Read and drop what a subscriber sends; its hangup ends the subscription."""
        with contextlib.suppress(*PEER_GONE):
            while await self.stream.receive_some(RECV_CHUNK):
                pass
        scope.cancel()


async def _next_events(events: trio.MemoryReceiveChannel[Any]) -> bool:
    """Wait for at least one event and take every one already queued; False once dropped."""
    try:
        await events.receive()
        while True:
            events.receive_nowait()
    except trio.WouldBlock:
        return True
    except trio.EndOfChannel:
        return False


class HostDoor:
    """`host.sock` as a door of the socket hub: the hub accepts, bounds and counts its
    connections; this serves each one, and keeps the one status watcher they share."""

    def __init__(self, hive: Hive, nursery: trio.Nursery) -> None:
        self.hive = hive
        self.roster = RosterWatch(hive, nursery)

    def refusal(self, message: str) -> bytes:
        return h.encode_response(h.failure("rate_limited", message))

    async def handle(self, stream: trio.SocketStream, peer: Peer) -> None:
        conn = HostConnection(self.hive, self.roster, stream, peer)
        try:
            await conn.serve()
        except PEER_GONE:
            pass  # a reset is how some clients hang up
        except Exception:  # one broken connection must never take the daemon down
            log.exception("host.sock: connection failed")


# ------------------------------------------------------------------ the door's table

Answer = Callable[[AdminDoor, Any], Awaitable[h.HostResponse]]


@dataclass(frozen=True)
class Cmd:
    """One row of the door's table: a cmd, the admin verbs it is carried out with and no
    others (each one a row of the handlers' tables that admin.sock may send), and its answer;
    none for `subscribe_agent_status`, which takes the connection over (`HostConnection`)."""

    request: type[h.HostRequest]
    verbs: frozenset[type[m.Request]]
    answer: Answer | None


def _cmd(request: type[h.HostRequest], verbs: set[type[m.Request]], answer: Answer | None) -> Cmd:
    return Cmd(request, frozenset(verbs), answer)


CMDS: tuple[Cmd, ...] = (
    _cmd(h.List, {m.ListAgents}, answer_list),
    _cmd(h.AgentStatus, {m.ListAgents}, answer_agent_status),
    _cmd(h.SubscribeAgentStatus, {m.ListAgents}, None),
    _cmd(h.SetPaused, {m.SetPaused}, answer_set_paused),
    _cmd(h.Start, {m.ListAgents, m.Start}, answer_start),
    _cmd(h.Stop, {m.ListAgents, m.Stop}, answer_stop),
    _cmd(h.Restart, {m.Restart}, answer_restart),
    _cmd(h.Urls, set(), answer_urls),
    _cmd(h.Pending, {m.ListApprovals}, answer_pending),
    _cmd(h.Approve, {m.Approve}, answer_approve),
    _cmd(h.Deny, {m.Deny}, answer_deny),
)
ADMIN_VERBS: dict[type[h.HostRequest], frozenset[type[m.Request]]] = {
    row.request: row.verbs for row in CMDS
}
ANSWERS: dict[type[h.HostRequest], Answer] = {
    row.request: row.answer for row in CMDS if row.answer is not None
}
