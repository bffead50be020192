"""Live updates: one daemon subscription per web process, drawn as small patches for every browser.

`Hub.follow` reads the event stream and takes whatever has arrived as one batch, without a
fixed wait: at idle a batch is one event, drawn at once; under load the events that came in
while the last batch was drawn make the next one. Each batch changes the `Mirror` from the
events' own payloads (a full snapshot only on the first subscription and after a resync;
a few small targeted reads where an event lacks what a fragment needs) and is drawn as keyed
patches for each kind of page (`dashboard`, `agent:<name>`, and the forge's `forge`,
`repo:<repo>`, `mr:<id>`): one agent row or just its counts, one message line, one state
chip, one section. The forge's panels are the one part not kept in the mirror: a batch with
forge events reads them again from the daemon (`_forge`, the same `forge_pages` reads a cold
load makes), for the dashboard's forge panel and for the forge pages someone watches. Every
patch replaces or inserts an element by id, so applying it twice, or after a snapshot that
already showed it, is harmless; `static/app.js` applies them.

Batches are kept under the seq of their last event in a bounded buffer: a browser
reconnecting with `Last-Event-ID` gets what it missed, and one that missed more than the
buffer holds (or the daemon restarted) is told to `resync`, i.e. reload its snapshot.

Each browser has its own queue of patches keyed by what they draw (`Listener`): a later
patch of the same row replaces the earlier one, so a browser that reads slowly gets fewer,
fresher updates instead of a longer queue. Its stream is never dropped: when more message
lines wait than `MESSAGE_BACKLOG`, the oldest are left out and the page says how many
("+N more").
"""

from __future__ import annotations

import logging
import re
import time
from collections import OrderedDict, deque
from dataclasses import dataclass

import anyio
import msgspec

from protocol import messages as m
from protocol.client import ConnectionLost, HiveClient, HiveError

from . import forge_pages
from .mirror import RECONCILE_SECONDS, Changes, Mirror
from .render import (
    FLOW_CONVERSATIONS,
    FLOW_MESSAGES,
    INBOX_MESSAGES,
    Conversation,
    Renderer,
    conversations,
)

log = logging.getLogger(__name__)
BATCH_MAX = 2000
"""At most this many events are drawn as one batch (the rest make the next one)."""
REPLAY = 512
MESSAGE_BACKLOG = 200
"""Message lines (and state chips, toasts) one browser may have waiting before the oldest
are left out and counted in its "+N more"."""
TOASTS_PER_BATCH = 5
INBOX_ITEMS = 200
"""The operator's inbox shows the newest this many items (as `Snapshot` does)."""
INTEREST_SECONDS = 60.0
"""A page of one thing (an agent, a repository, a merge request, the forge index) is drawn
for this long after it was loaded, even before its stream connects."""
HEARTBEAT = 15.0
SSE_LINE_BREAK = re.compile(r"\r\n|\r|\n")
"""What an EventSource takes for the end of a line (and nothing else, unlike `str.splitlines`)."""
LIVE_FIELDS = {
    "queued": 0,
    "leased": 0,
    "last_seen": None,
    "reminders_pending": 0,
    "reminders_delivered": 0,
    "reminders_failed": 0,
}


@dataclass(frozen=True)
class Patch:
    key: str
    """What it draws (`row:alice`, `line:42`, `section:questions`): a later patch with the
    same key supersedes it in a browser's queue."""
    html: str
    droppable: bool = False
    """A message line, state chip or toast: left out (and counted) for a browser that
    cannot keep up, rather than letting its queue grow."""
    shows: int = 0
    """New messages it shows (what "+N more" counts when it is left out)."""


@dataclass(frozen=True)
class Batch:
    seq: int
    pages: dict[str, tuple[Patch, ...]]
    """Page kind → the patches that page needs."""
    touched: frozenset[str]
    """Pages of one thing (`agent:<name>`, `forge`, `repo:<repo>`, `mr:<id>`) this batch
    changed, drawn only for pages someone watches: a page that connects later and finds
    itself touched but not drawn reloads its snapshot."""
    skipped: int = 0
    """New messages the dashboard's flow never drew: more new conversations came in this
    batch than the flow shows, so the oldest of them were out of it before being drawn."""


@dataclass(frozen=True)
class ResyncNote:
    seq: int


Item = Batch | ResyncNote


class Listener:
    """One browser's SSE stream: the patches waiting for it, keyed, in order of arrival."""

    def __init__(self, page: str, since: int | None) -> None:
        self.page = page
        self.agent = page.removeprefix("agent:") if page.startswith("agent:") else None
        self.one_thing = page != "dashboard"
        """A page of one thing: drawn only while someone watches it."""
        self.since = since
        self.not_shown = 0
        """Message lines left out because this browser fell behind (its "+N more")."""
        self._told = 0
        self._pending: OrderedDict[str, Patch] = OrderedDict()
        self._droppable = 0
        self._seq: int | None = None
        self._resync: int | None = None
        self._closed = False
        self._wake: anyio.Event | None = None

    @property
    def waiting(self) -> int:
        return len(self._pending)

    def offer(self, item: Item) -> None:
        """Queue what `item` changes on this page (never blocks, never ends the stream)."""
        if self._closed:
            return
        if isinstance(item, ResyncNote):
            self._resync = item.seq
            self._pending.clear()
            self._droppable = 0
        else:
            for patch in item.pages.get(self.page, ()):
                old = self._pending.pop(patch.key, None)
                if old is not None and old.droppable:
                    self._droppable -= 1
                self._pending[patch.key] = patch
                if patch.droppable:
                    self._droppable += 1
            while self._droppable > MESSAGE_BACKLOG:
                self._drop_oldest()
            if self.page == "dashboard":
                self.not_shown += item.skipped
            self._seq = item.seq
            self.since = item.seq
        if self._wake is not None:
            self._wake.set()

    def _drop_oldest(self) -> None:
        for key, patch in self._pending.items():
            if patch.droppable:
                del self._pending[key]
                self._droppable -= 1
                self.not_shown += patch.shows
                return

    async def take(self) -> str | None:
        """The next SSE message: everything waiting, merged; `None` once closed."""
        while not (self._pending or self._resync is not None or self._closed):
            self._wake = anyio.Event()
            await self._wake.wait()
        if self._resync is not None:
            seq, self._resync = self._resync, None
            return f"event: resync\ndata: {seq}\n\n"
        if self._closed and not self._pending:
            return None
        html = "".join(p.html for p in self._pending.values())
        self._pending.clear()
        self._droppable = 0
        if self.not_shown != self._told:
            self._told = self.not_shown
            html += not_shown_patch(self.not_shown)
        assert self._seq is not None
        return sse_frame(self._seq, html)

    def close(self) -> None:
        self._closed = True
        if self._wake is not None:
            self._wake.set()


def not_shown_patch(count: int) -> str:
    note = (
        f'<p id="flow-more" class="more" data-not-shown="{count}">+{count} more: messages'
        " arrived faster than this page could draw them and are not shown; reload for the"
        " latest</p>"
    )
    return f'<template data-op="replace" data-id="flow-more">{note}</template>'


class Hub:
    def __init__(self, renderer: Renderer, replay: int = REPLAY) -> None:
        self.renderer = renderer
        self.mirror = Mirror()
        self.floor: int | None = None
        """Every batch after this seq is in the buffer; `None` until first subscribed."""
        self.latest = 0
        self._replay = replay
        self._buffer: deque[Batch] = deque()
        self._listeners: set[Listener] = set()
        self._interest: dict[str, float] = {}
        self._closed = False
        self._drawn_rows: dict[str, tuple[m.AgentRow, int]] = {}
        self._shown: dict[int, tuple[bool, tuple[int, ...]]] = {}
        """Conversations on the dashboard by thread: (a folded broadcast, its message ids)."""
        self._reconciled = time.monotonic()
        self._skipped = 0

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
                lst.offer(batch)
            elif page in batch.touched:
                lst.offer(ResyncNote(self.latest))
                break
        return lst

    def forget(self, lst: Listener) -> None:
        self._listeners.discard(lst)
        lst.close()

    def expect(self, agent: str) -> None:
        """An agent page was just loaded: draw its updates before its stream connects."""
        self.expect_page(f"agent:{agent}")

    def expect_page(self, page: str) -> None:
        """A page of one thing was just loaded: draw its updates before its stream connects."""
        self._interest[page] = time.monotonic()

    def watched_pages(self) -> set[str]:
        now = time.monotonic()
        self._interest = {p: t for p, t in self._interest.items() if now - t < INTEREST_SECONDS}
        watched = {lst.page for lst in self._listeners if lst.one_thing}
        return watched | set(self._interest)

    def watched_agents(self) -> set[str]:
        return {p.removeprefix("agent:") for p in self.watched_pages() if p.startswith("agent:")}

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
            if lst.since is not None and batch.seq < lst.since:
                continue  # its snapshot is newer than this batch
            if lst.page in batch.pages:
                lst.offer(batch)
            elif lst.page in batch.touched:
                lst.offer(ResyncNote(batch.seq))

    def reset(self, seq: int) -> None:
        """Start over at `seq`: the buffer is gone, and every page older than it must reload."""
        self._buffer.clear()
        self.floor = seq
        self.latest = seq
        for lst in list(self._listeners):
            if lst.since is None or lst.since < seq:
                lst.offer(ResyncNote(seq))

    def seed(self, state: m.HiveState) -> None:
        """The mirror starts over from a snapshot (first subscription, or after a resync)."""
        self.mirror.seed(state)
        self._drawn_rows = {a.name: (a, state.open_threads.get(a.name, 0)) for a in state.agents}
        convs = conversations(state.messages, FLOW_CONVERSATIONS)
        self._shown = {c.thread: _signature(c) for c in convs}
        self._reconciled = time.monotonic()
        self.reset(state.seq)

    async def follow(self, client: HiveClient) -> None:
        """Subscribe (resuming after `latest` when we can) and publish batches until it fails."""
        since = self.latest if self.floor is not None else None
        async with client.stream(m.Subscribe(since_seq=since)) as frames:
            first = await frames.__anext__()
            if isinstance(first, m.Resync) or (isinstance(first, m.Subscribed) and since is None):
                self.seed(await client.expect(m.Snapshot(messages=FLOW_MESSAGES), m.HiveState))
            while True:
                frame: m.Reply | None = None
                if self.mirror.counted_since_reconcile:
                    # counts were kept by arithmetic: set them right when traffic pauses
                    with anyio.move_on_after(RECONCILE_SECONDS):
                        frame = await frames.__anext__()
                    if frame is None:
                        await self._apply(client, [])
                        continue
                else:
                    frame = await frames.__anext__()
                events = [_event(frame)]
                events += [_event(f) for f in frames.ready(BATCH_MAX - 1)]
                await self._apply(client, events)

    async def _apply(self, client: HiveClient, events: list[m.AnyEvent]) -> None:
        mirror = self.mirror
        changes = mirror.apply(events)
        seq = max([mirror.seq, *(ev.seq for ev in events)])
        watched = self.watched_agents()
        try:
            threads = await self._read(client, changes, watched)
            pages = {"dashboard": self._dashboard(changes)}
            for name in sorted(changes.touched & watched):
                pages[f"agent:{name}"] = self._agent_page(name, changes, threads.get(name))
            if changes.forge:
                for page, patches in (await self._forge(client, changes)).items():
                    pages.setdefault(page, []).extend(patches)
        except HiveError as exc:
            if exc.code == "unavailable":
                raise
            log.error("could not draw events up to seq %d: %s; pages will reload", seq, exc)
            await self._resync(client)
            return
        except Exception:
            # a bug in drawing one batch must not end live updates for every page
            log.exception("could not draw events up to seq %d; pages will reload", seq)
            await self._resync(client)
            return
        if seq <= self.latest and not any(pages.values()):
            return
        batch = Batch(
            seq=max(seq, self.latest),
            pages={page: tuple(patches) for page, patches in pages.items() if patches},
            touched=changes.pages,
            skipped=self._skipped,
        )
        self._skipped = 0
        self.publish(batch)

    async def _resync(self, client: HiveClient) -> None:
        self.seed(await client.expect(m.Snapshot(messages=FLOW_MESSAGES), m.HiveState))

    async def _read(
        self, client: HiveClient, changes: Changes, watched: set[str]
    ) -> dict[str, list[m.OpenThread]]:
        """The small daemon reads the events did not carry enough for."""
        mirror = self.mirror
        for name in sorted(changes.read_rows & mirror.agents.keys()):
            try:
                info = await client.expect(m.AgentStatus(name=name), m.AgentInfo)
            except HiveError as exc:
                if exc.code != "not_found":
                    raise
                continue  # removed since: its `agent_removed` is on the way
            mirror.set_row(info.agent)
        threads: dict[str, list[m.OpenThread]] = {}
        for name in sorted(changes.read_threads & mirror.agents.keys()):
            limit = 200 if name in watched else 1
            try:
                got = await client.expect(
                    m.GetAgentOpenThreads(agent=name, limit=limit), m.OpenThreads
                )
            except HiveError as exc:
                if exc.code != "not_found":
                    raise
                continue
            mirror.open_threads[name] = got.total
            if name in watched:
                threads[name] = got.threads
        if changes.read_reminders:
            got_r = await client.expect(m.ListReminders(state="failed", limit=100), m.Reminders)
            mirror.failed_reminders = got_r.reminders
        if changes.read_dead:
            got_d = await client.expect(m.ListMessages(state="dead", limit=100), m.Messages)
            mirror.dead_messages = got_d.messages
            changes.dead = True
        if changes.read_federation and mirror.federation is not None:
            got_f = await client.expect(m.FederationStatus(), m.Federation)
            mirror.federation = got_f.federation
            changes.federation = True
        if changes.read_needs:
            got_i = await client.expect(m.GetInbox(limit=INBOX_ITEMS), m.Inbox)
            mirror.inbox = got_i.items
            mirror.estop = got_i.estop
            changes.needs = True
        if changes.read_budget:
            got_b = await client.expect(m.GetBudget(), m.Budget)
            mirror.set_usage(got_b.usage, changes)
        now = time.monotonic()
        if mirror.counted_since_reconcile and now - self._reconciled >= RECONCILE_SECONDS:
            self._reconciled = now
            rows = (await client.expect(m.ListAgents(), m.Agents)).agents
            changes.rows |= mirror.reconcile(rows)
        return threads

    # ---------------------------------------------------------------- drawing

    def _dashboard(self, changes: Changes) -> list[Patch]:
        r = self.renderer
        mirror = self.mirror
        out: list[Patch] = []
        for name in sorted(changes.removed):
            self._drawn_rows.pop(name, None)
            out.append(Patch(f"row:{name}", r.op("remove", id=f"agent-{name}")))
        for name in sorted(changes.rows | changes.added):
            row = mirror.agents.get(name)
            if row is None:
                continue
            out += self._row(row, mirror.open_threads.get(name, 0), name in changes.added)
        if changes.added or changes.removed:
            options = r.part("agent_options", list(mirror.agents.values()))
            out.append(Patch("options", r.op("inner", options, target="#agent-names")))
        sections: list[tuple[bool, str, str, tuple[object, ...]]] = [
            (changes.questions, "questions", "question_list", (mirror.operator_questions(),)),
            (changes.approvals, "approvals", "approval_list", (mirror.approvals,)),
            (changes.read_reminders, "reminders", "reminder_list", (mirror.failed_reminders,)),
            (changes.dead, "dead", "dead_list", (mirror.dead_messages,)),
            (changes.tombstones, "tombstones", "tombstone_list", (mirror.tombstones,)),
        ]
        if changes.estop:
            sections.append((True, "estop-panel", "estop_panel", (mirror.estop,)))
        if changes.needs:
            sections.append((True, "needs-you", "inbox_list", (mirror.inbox,)))
        if changes.budget:
            sections.append((True, "budget", "budget_panel", (mirror.usage,)))
        if changes.open_questions:
            questions = (mirror.open_question_list(),)
            sections.append((True, "open-questions", "open_question_list", questions))
        if changes.meta_inputs:
            inputs = (mirror.meta_inputs, mirror.meta_inputs_note, mirror.meta_inputs_updatable)
            sections.append((True, "meta-inputs", "meta_inputs", inputs))
        if changes.federation and mirror.federation is not None:
            fed = (mirror.federation, mirror.remote_agents)
            sections.append((True, "federation", "federation_panel", fed))
        for changed, target, macro, args in sections:
            if changed:
                html = r.op("inner", r.part(macro, *args), target=f"#{target}")
                out.append(Patch(f"section:{target}", html))
        if changes.needs:
            count = r.op("inner", str(len(mirror.inbox)), target="#needs-count")
            out.append(Patch("section:needs-count", count))
        if (
            changes.questions
            or changes.approvals
            or changes.dead
            or changes.read_reminders
            or changes.added
            or changes.removed
        ):
            counts = (
                len(mirror.agents),
                len(mirror.questions),
                sum(1 for a in mirror.approvals if a.status == "pending"),
                len(mirror.dead_messages),
                len(mirror.failed_reminders),
            )
            out.append(Patch("jump", r.op("replace", r.part("jump", *counts), id="jump")))
        out += self._flow(changes)
        out += self._toasts(changes, None)
        return out

    def _row(self, row: m.AgentRow, threads: int, added: bool) -> list[Patch]:
        r = self.renderer
        old = self._drawn_rows.get(row.name)
        self._drawn_rows[row.name] = (row, threads)
        name = row.name
        if old is None or added:
            html = r.op("upsert", r.part("agent_row", row, threads), into="#agents", at="last")
            return [Patch(f"row:{name}", html)]
        old_row, old_threads = old
        if old_row == row and old_threads == threads:
            return []
        if _without_live(old_row) != _without_live(row):
            html = r.op("replace", r.part("agent_row", row, threads), id=f"agent-{name}")
            return [Patch(f"row:{name}", html)]
        out = []
        if old_row.last_seen != row.last_seen:
            seen = r.op("replace", r.part("agent_seen", row), id=f"seen-{name}")
            out.append(Patch(f"seen:{name}", seen))
        if _without(old_row, "last_seen") != _without(row, "last_seen") or old_threads != threads:
            counts = r.op("replace", r.part("agent_counts", row, threads), id=f"counts-{name}")
            out.append(Patch(f"counts:{name}", counts))
        return out

    def _flow(self, changes: Changes) -> list[Patch]:
        if not changes.new_messages and not changes.message_states:
            return []
        r = self.renderer
        new = set(changes.new_messages)
        convs = conversations(self.mirror.recent(), FLOW_CONVERSATIONS)
        out: list[Patch] = []
        drawn: set[int] = set()
        shown: dict[int, tuple[bool, tuple[int, ...]]] = {}
        for conv in reversed(convs):  # oldest activity first: the newest ends on top
            sig = _signature(conv)
            shown[conv.thread] = sig
            old = self._shown.get(conv.thread)
            if old == sig:
                continue
            ids = sig[1]
            fresh = [i for i in ids if i in new]
            if old is not None and not old[0] and not sig[0] and ids[: len(old[1])] == old[1]:
                # only the new lines are drawn: the older ones keep their chips, which the
                # state patches below bring up to date (a reply and the ack of the message it
                # answers often come in one batch)
                head = " · ".join(conv.participants)
                for line in conv.lines[len(old[1]) :]:
                    drawn.add(line.msg.id)
                    html = r.op(
                        "line",
                        r.part("message_line", line),
                        conv=f"conv-{conv.thread}",
                        head=head,
                        keep=FLOW_CONVERSATIONS,
                    )
                    out.append(Patch(f"line:{line.msg.id}", html, True, 1))
                continue
            drawn.update(ids)
            html = r.op(
                "upsert",
                r.part("conversation", conv),
                into="#flow",
                at="first",
                keep=FLOW_CONVERSATIONS,
                move="1" if fresh else "",
            )
            out.append(Patch(f"conv:{conv.thread}", html, True, len(fresh)))
        self._shown = shown
        on_page = {i for sig in shown.values() for i in sig[1]}
        self._skipped += len(new - on_page)
        for mid in sorted(changes.message_states.keys() - drawn):
            out.append(self._state_chip(mid, changes))
        return out

    def _state_chip(self, mid: int, changes: Changes) -> Patch:
        state, attempts = changes.message_states[mid]
        chip = self.renderer.part("state_chip", mid, state, attempts)
        return Patch(f"mstate:{mid}", self.renderer.op("replace", chip, id=f"mstate-{mid}"), True)

    def _agent_page(
        self, name: str, changes: Changes, threads: list[m.OpenThread] | None
    ) -> list[Patch]:
        r = self.renderer
        mirror = self.mirror
        row = mirror.agents.get(name)
        if row is None:
            gone = r.op("replace", r.part("agent_gone", name), id=f"agent-head-{name}")
            return [Patch("head", gone)]
        out: list[Patch] = []
        if name in changes.rows | changes.added | changes.read_rows:
            head = r.part("agent_head", row, mirror.open_threads.get(name, 0))
            out.append(Patch("head", r.op("replace", head, id=f"agent-head-{name}")))
        involved = changes.involved.get(name, set())
        new = set(changes.new_messages)
        for mid in sorted(involved):
            msg = mirror.messages.get(mid)
            if mid in new and msg is not None:
                html = r.op(
                    "upsert",
                    r.part("inbox_line", name, msg),
                    into=f"#inbox-list-{name}",
                    at="first",
                    keep=INBOX_MESSAGES,
                )
                out.append(Patch(f"line:{mid}", html, True, 1))
            elif mid in changes.message_states:
                out.append(self._state_chip(mid, changes))
        if threads is not None:
            listing = r.part("thread_list", name, threads)
            out.append(Patch("threads", r.op("inner", listing, target=f"#threads-{name}")))
        out += self._toasts(changes, name)
        return out

    async def _forge(self, client: HiveClient, changes: Changes) -> dict[str, list[Patch]]:
        """The forge's panels the changes touched, read again from the daemon: the
        dashboard's, and those of the forge pages someone watches."""
        r = self.renderer
        ask = client.expect
        try:
            panel = await forge_pages.draw_dashboard_panel(ask, r)
        except ConnectionLost:
            raise
        except HiveError as exc:
            if exc.code != "unavailable":
                raise
            return {}  # the forge is off: nothing of it is on any page
        out = {
            "dashboard": [
                Patch("section:forge-summary", r.op("inner", panel, target="#forge-summary"))
            ]
        }
        watched = self.watched_pages() & changes.pages
        toasts = self._toasts(changes, None, hive_only=True)
        if "forge" in watched:
            index = await forge_pages.draw_index(ask, r)
            out["forge"] = [
                Patch("section:forge-index", r.op("inner", index, target="#forge-index"))
            ]
        for page in sorted(watched):
            kind, _, key = page.partition(":")
            if kind not in ("repo", "mr"):
                continue
            try:
                if kind == "repo":
                    html = await forge_pages.draw_repo(ask, r, key)
                    patch = Patch(
                        "section:repo-summary", r.op("inner", html, target="#repo-summary")
                    )
                else:
                    html = await forge_pages.draw_mr(ask, r, int(key))
                    patch = Patch("section:mr-panel", r.op("replace", html, id="mr-panel"))
            except HiveError as exc:
                if exc.code != "not_found":
                    raise
                gone = r.op(
                    "append", r.part("toast_item", f"{key} is gone", "warn"), into="#toasts"
                )
                patch = Patch(f"gone:{self.mirror.seq}", gone, True)
            out[page] = [patch]
        for page in ("forge", *(p for p in watched if p.startswith(("repo:", "mr:")))):
            if page in out:
                out[page] += toasts
        return out

    def _toasts(
        self, changes: Changes, agent: str | None, *, hive_only: bool = False
    ) -> list[Patch]:
        """The toasts of a page: an agent's and the hive's, every one for the dashboard
        (`agent` None), the hive's alone for a forge page (`hive_only`)."""
        r = self.renderer
        mine = [
            (t, tone)
            for who, t, tone in changes.toasts
            if (who is None if hive_only else agent is None or who in (None, agent))
        ]
        shown = mine[:TOASTS_PER_BATCH]
        if len(mine) > len(shown):
            shown.append((f"+{len(mine) - len(shown)} more notices", "ok"))
        return [
            Patch(
                f"toast:{self.mirror.seq}:{i}",
                r.op("append", r.part("toast_item", text, tone), into="#toasts"),
                True,
            )
            for i, (text, tone) in enumerate(shown)
        ]


def _signature(conv: Conversation) -> tuple[bool, tuple[int, ...]]:
    folded = len(conv.copies) > 1
    ids = tuple(c.id for c in conv.copies) if folded else tuple(ln.msg.id for ln in conv.lines)
    return folded, ids


def _without(row: m.AgentRow, *names: str) -> m.AgentRow:
    return msgspec.structs.replace(row, **{n: LIVE_FIELDS[n] for n in names})


def _without_live(row: m.AgentRow) -> m.AgentRow:
    return _without(row, *LIVE_FIELDS)


def _event(frame: m.Reply) -> m.AnyEvent:
    if not isinstance(frame, m.EventFrame):
        raise HiveError("internal", f"unexpected {type(frame).__name__} on the event stream")
    return frame.event


def sse_frame(seq: int, html: str) -> str:
    """One SSE `update` message: the patches, with the seq they bring the page up to as id."""
    lines = SSE_LINE_BREAK.split(html)
    return f"id: {seq}\nevent: update\n" + "".join(f"data: {line}\n" for line in lines) + "\n"
