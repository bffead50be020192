"""Live updates: one daemon subscription per web process, fanned out to every browser over SSE.

`Hub.follow` reads the event stream, gathers the events that arrive together into one batch,
asks the daemon once for what the batch changed, and renders it as htmx out-of-band
fragments for each kind of page (`dashboard`, `agent:<name>`). Every fragment replaces a
whole row or section, so applying one twice, or after a snapshot that already showed it, is
harmless. Batches are kept under the seq of their last event in a bounded buffer: a browser
reconnecting with `Last-Event-ID` gets what it missed, and one that missed more than the
buffer holds (or the daemon restarted) is told to `resync`, i.e. reload its snapshot. A
browser that cannot keep up is dropped; its EventSource reconnects and catches up.
"""

from __future__ import annotations

import logging
import re
from collections import deque
from dataclasses import dataclass, field

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from protocol import messages as m
from protocol.client import HiveClient, HiveError

from .render import FLOW_CONVERSATIONS, FLOW_MESSAGES, INBOX_MESSAGES, Renderer, conversations

log = logging.getLogger(__name__)
BATCH_WINDOW = 0.05
"""Events arriving within this many seconds of each other are drawn as one update."""
BATCH_MAX = 500
REPLAY = 512
LISTENER_BUFFER = 64
HEARTBEAT = 15.0
SSE_LINE_BREAK = re.compile(r"\r\n|\r|\n")
"""What an EventSource takes for the end of a line (and nothing else, unlike `str.splitlines`)."""


@dataclass(frozen=True)
class Batch:
    seq: int
    pages: dict[str, str]
    """Page kind → the out-of-band fragments that page needs."""
    touched: frozenset[str]
    """Agents whose own page this batch changed (drawn only for pages someone watches)."""


@dataclass(frozen=True)
class ResyncNote:
    seq: int


Item = Batch | ResyncNote


@dataclass
class Changes:
    """What a batch of events changed, in the dashboard's terms."""

    agents: set[str] = field(default_factory=set)
    roster: bool = False
    flow: bool = False
    inbox: set[str] = field(default_factory=set)
    questions: bool = False
    threads: set[str] = field(default_factory=set)
    reminders: bool = False
    dead: bool = False
    approvals: bool = False
    tombstones: bool = False
    meta_inputs: bool = False
    federation: bool = False
    toasts: list[tuple[str | None, str, str]] = field(default_factory=list)
    """(agent or None, text, tone)."""

    @classmethod
    def of(cls, events: list[m.AnyEvent]) -> Changes:
        c = cls()
        for ev in events:
            c.add(ev)
        return c

    def add(self, ev: m.AnyEvent) -> None:
        match ev:
            case m.AgentAdded(agent=row):
                self.roster = True
                self.agents.add(row.name)
                self.toasts.append((None, f"{row.name} was added", "ok"))
            case m.AgentRemoved(name=name):
                self.roster = True
                self.agents.add(name)
                self.toasts.append((None, f"{name} was removed", "warn"))
            case m.AgentStateChanged(name=name, state=state, reason=reason):
                self.agents.add(name)
                if state in ("failed", "crashed"):
                    self.toasts.append((name, f"{name} {state}: {reason}", "bad"))
            case m.StatusChanged(name=name) | m.TurnRecorded(name=name) | m.LoggedIn(name=name):
                self.agents.add(name)
            case m.NeedsLogin(name=name, reason=reason):
                self.agents.add(name)
                self.toasts.append((name, f"{name} needs login: {reason}", "warn"))
            case m.MessageSent(message=msg):
                self.flow = True
                self.inbox |= {msg.from_, msg.to}
                self.agents |= {msg.from_, msg.to}
            case m.MessageDead(message_id=mid, agent=agent, reason=reason):
                self.dead = self.flow = True
                self.inbox.add(agent)
                self.agents.add(agent)
                self.toasts.append((agent, f"message #{mid} to {agent} is dead: {reason}", "bad"))
            case (
                m.MessageDropped(agent=agent)
                | m.MessageRequeued(agent=agent, reason="operator retry")
            ):
                self.dead = self.flow = True
                self.inbox.add(agent)
                self.agents.add(agent)
            case (
                m.MessageLeased(agent=agent)
                | m.MessageAcked(agent=agent)
                | m.MessageRequeued(agent=agent)
            ):
                self.flow = True
                self.inbox.add(agent)
                self.agents.add(agent)
            case m.QuestionAsked(question=q):
                self._question(q.asker, q.target)
            case (
                m.QuestionAnswered(asker=asker, target=target)
                | m.QuestionCancelled(asker=asker, target=target)
            ):
                self._question(asker, target)
            case m.ReminderScheduled(reminder=r):
                self._reminder(r.owner)
            case m.ReminderFailed(owner=owner, error=error, retry_at=None):
                self._reminder(owner)
                self.toasts.append((owner, f"a reminder of {owner} failed: {error}", "bad"))
            case (
                m.ReminderDelivered(owner=owner)
                | m.ReminderFailed(owner=owner)
                | m.ReminderCancelled(owner=owner)
            ):
                self._reminder(owner)
            case m.ApprovalAdded(approval=a):
                self._approval(a)
                self.toasts.append((None, f"{a.requested_by} asks: {a.description}", "warn"))
            case m.ApprovalResolved(approval=a):
                self._approval(a)
                if a.status == "failed":
                    self.toasts.append((None, f"approval #{a.id} failed: {a.outcome}", "bad"))
            case m.TombstoneAdded() | m.TombstoneRemoved():
                self.tombstones = True
            case m.MetaInputsChanged():
                self.meta_inputs = True
            case m.FederationChanged(link=link, detail=detail):
                self.federation = True
                if link == "disconnected":
                    self.toasts.append((None, f"federation {link}: {detail}", "warn"))
            case m.RemoteAgentsChanged():
                self.federation = True
            case m.MessageForwarded():
                self.flow = self.federation = True
            case m.Note(agent=agent, text=text):
                if agent is not None:
                    self.agents.add(agent)
                self.toasts.append((agent, f"{agent}: {text}" if agent else text, "ok"))
            case _:
                pass

    def _question(self, asker: str, target: str) -> None:
        self.questions = True
        self.threads |= {asker, target}
        self.agents |= {asker, target}

    def _approval(self, a: m.ApprovalRow) -> None:
        # the requester's open threads change; the row of the agent it is about may too
        self.approvals = True
        self.threads.add(a.requested_by)
        self.agents |= {a.requested_by, a.agent}

    def _reminder(self, owner: str) -> None:
        self.reminders = True
        self.agents.add(owner)


class Listener:
    """One browser's SSE stream: a bounded queue of what to send it."""

    def __init__(self, page: str, since: int | None) -> None:
        self.page = page
        self.agent = page.removeprefix("agent:") if page.startswith("agent:") else None
        self.since = since
        send, recv = anyio.create_memory_object_stream[Item](LISTENER_BUFFER)
        self._send: MemoryObjectSendStream[Item] = send
        self.recv: MemoryObjectReceiveStream[Item] = recv

    def offer(self, item: Item) -> bool:
        """Queue `item`; `False` (and the stream closed) when the browser fell behind."""
        try:
            self._send.send_nowait(item)
        except anyio.WouldBlock:
            self.close()
            return False
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            return False
        if isinstance(item, Batch):
            self.since = item.seq
        return True

    def close(self) -> None:
        self._send.close()


class Hub:
    def __init__(self, renderer: Renderer, replay: int = REPLAY) -> None:
        self.renderer = renderer
        self.floor: int | None = None
        """Every batch after this seq is in the buffer; `None` until first subscribed."""
        self.latest = 0
        self._replay = replay
        self._buffer: deque[Batch] = deque()
        self._listeners: set[Listener] = set()
        self._closed = False

    # ---------------------------------------------------------------- browsers

    def listen(self, page: str, since: int | None) -> Listener:
        """Register a browser page that has seen everything up to `since`, and queue what it missed."""
        lst = Listener(page, since)
        if self._closed:
            lst.close()
            return lst
        self._listeners.add(lst)
        if self.floor is None:
            return lst  # judged when the first subscription starts (`reset`)
        if since is None or since < self.floor:
            lst.offer(ResyncNote(self.latest))
            return lst
        for batch in self._buffer:
            if batch.seq <= since:
                continue
            if page in batch.pages:
                if not lst.offer(batch):
                    break
            elif lst.agent is not None and lst.agent in batch.touched:
                lst.offer(ResyncNote(self.latest))
                break
        return lst

    def forget(self, lst: Listener) -> None:
        self._listeners.discard(lst)
        lst.close()

    def watched_agents(self) -> set[str]:
        return {lst.agent for lst in self._listeners if lst.agent is not None}

    def close(self) -> None:
        """End every browser stream (the web process is stopping)."""
        self._closed = True
        for lst in self._listeners:
            lst.close()
        self._listeners.clear()

    # ---------------------------------------------------------------- batches

    def publish(self, batch: Batch) -> None:
        self.latest = batch.seq
        self._buffer.append(batch)
        while len(self._buffer) > self._replay:
            self.floor = self._buffer.popleft().seq
        for lst in list(self._listeners):
            if lst.page in batch.pages:
                lst.offer(batch)
            elif lst.agent is not None and lst.agent in batch.touched:
                lst.offer(ResyncNote(batch.seq))

    def reset(self, seq: int) -> None:
        """Start over at `seq`: the buffer is gone, and every page older than it must reload."""
        self._buffer.clear()
        self.floor = seq
        self.latest = seq
        for lst in list(self._listeners):
            if lst.since is None or lst.since < seq:
                lst.offer(ResyncNote(seq))

    async def follow(self, client: HiveClient) -> None:
        """Subscribe (resuming after `latest` when we can) and publish batches until it fails."""
        since = self.latest if self.floor is not None else None
        async with client.stream(m.Subscribe(since_seq=since)) as frames:
            first = await frames.__anext__()
            if isinstance(first, m.Resync) or (isinstance(first, m.Subscribed) and since is None):
                self.reset(first.seq)
            while True:
                events = [_event(await frames.__anext__())]
                with anyio.move_on_after(BATCH_WINDOW):
                    while len(events) < BATCH_MAX:
                        events.append(_event(await frames.__anext__()))
                await self._apply(client, events)

    async def _apply(self, client: HiveClient, events: list[m.AnyEvent]) -> None:
        changes = Changes.of(events)
        seq = max(ev.seq for ev in events)
        try:
            state = await client.expect(
                m.Snapshot(messages=FLOW_MESSAGES if changes.flow else 0), m.HiveState
            )
            pages = {"dashboard": self._dashboard(state, changes)}
            for name in sorted(changes.agents & self.watched_agents()):
                pages[f"agent:{name}"] = await self._agent_page(client, name, state, changes)
        except HiveError as exc:
            if exc.code == "unavailable":
                raise
            log.error("could not draw events up to seq %d: %s; pages will reload", seq, exc)
            self.reset(seq)
            return
        except Exception:
            # a bug in drawing one batch must not end live updates for every page
            log.exception("could not draw events up to seq %d; pages will reload", seq)
            self.reset(seq)
            return
        batch = Batch(
            seq=seq,
            pages={page: html for page, html in pages.items() if html},
            touched=frozenset(changes.agents),
        )
        self.publish(batch)

    def _dashboard(self, state: m.HiveState, changes: Changes) -> str:
        r = self.renderer
        rows = {a.name: a for a in state.agents}
        out = []
        if changes.roster:
            out.append(
                r.oob("innerHTML:#agents", r.part("agent_rows", state.agents, state.open_threads))
            )
            out.append(r.oob("innerHTML:#agent-names", r.part("agent_options", state.agents)))
        else:
            for name in sorted(changes.agents & rows.keys()):
                out.append(
                    r.part("agent_row", rows[name], state.open_threads.get(name, 0), oob=True)
                )
        if changes.questions:
            out.append(r.oob("innerHTML:#questions", r.part("question_list", state.questions)))
        if changes.reminders:
            out.append(
                r.oob("innerHTML:#reminders", r.part("reminder_list", state.failed_reminders))
            )
        if changes.dead:
            out.append(r.oob("innerHTML:#dead", r.part("dead_list", state.dead_messages)))
        if changes.approvals:
            out.append(r.oob("innerHTML:#approvals", r.part("approval_list", state.approvals)))
        if changes.tombstones:
            out.append(r.oob("innerHTML:#tombstones", r.part("tombstone_list", state.tombstones)))
        if changes.federation and state.federation is not None:
            panel = r.part("federation_panel", state.federation, state.remote_agents)
            out.append(r.oob("innerHTML:#federation", panel))
        if changes.meta_inputs:
            inputs = r.part(
                "meta_inputs",
                state.meta_inputs,
                state.meta_inputs_note,
                state.meta_inputs_updatable,
            )
            out.append(r.oob("innerHTML:#meta-inputs", inputs))
        if changes.flow:
            convs = conversations(state.messages, FLOW_CONVERSATIONS)
            out.append(r.oob("innerHTML:#flow", r.part("flow", convs)))
        out += [r.toast(text, tone) for _, text, tone in changes.toasts]
        return "".join(out)

    async def _agent_page(
        self, client: HiveClient, name: str, state: m.HiveState, changes: Changes
    ) -> str:
        r = self.renderer
        row = next((a for a in state.agents if a.name == name), None)
        if row is None:
            return r.part("agent_gone", name, oob=True)
        out = [r.part("agent_head", row, state.open_threads.get(name, 0), oob=True)]
        if name in changes.inbox:
            inbox = await client.expect(
                m.ListMessages(agent=name, limit=INBOX_MESSAGES), m.Messages
            )
            out.append(r.oob(f"innerHTML:#inbox-{name}", r.part("inbox", name, inbox.messages)))
        if name in changes.threads:
            threads = await client.expect(m.GetAgentOpenThreads(agent=name), m.OpenThreads)
            out.append(
                r.oob(f"innerHTML:#threads-{name}", r.part("thread_list", name, threads.threads))
            )
        out += [r.toast(text, tone) for who, text, tone in changes.toasts if who in (None, name)]
        return "".join(out)


def _event(frame: m.Reply) -> m.AnyEvent:
    if not isinstance(frame, m.EventFrame):
        raise HiveError("internal", f"unexpected {type(frame).__name__} on the event stream")
    return frame.event


def sse_frame(item: Item, page: str) -> str:
    """One SSE message: a batch's fragments for `page` (with its seq as id), or a resync."""
    if isinstance(item, ResyncNote):
        return f"event: resync\ndata: {item.seq}\n\n"
    lines = SSE_LINE_BREAK.split(item.pages[page])
    return f"id: {item.seq}\nevent: update\n" + "".join(f"data: {line}\n" for line in lines) + "\n"
