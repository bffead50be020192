"""What the pages show, kept in the web process: one snapshot, then each event's own payload.

`Mirror` is seeded from a `HiveState` (when the web process subscribes, and again after a
resync) and changed by every event that follows, in seq order: `MessageSent` carries the
row, `MessageLeased`/`Acked`/`Requeued` move one message between an agent's counts,
`AgentStateChanged` names the harness or connection state, `QuestionAsked` carries the
question, `ApprovalAdded`/`Resolved` the approval, `EstopChanged` the emergency stop,
`QuestionEscalated` the question as escalated, and so on. `apply` returns `Changes`:
which agents, messages and sections changed, and which small daemon reads the events did
not carry enough for (one agent's row after a lifecycle change or a hold, one agent's
open-thread count, the failed reminders, the dead messages, the federation link, the
operator's inbox, the spending against budgets). Forge events name the repositories and
merge requests they changed (`Changes.repos`, `Changes.mrs`): the forge's panels are read
again for those (`live.Hub._forge`), and a merge request's author and reviewers get their
open threads read like a question's. The counts it keeps by
arithmetic are set right again from the daemon every `RECONCILE_SECONDS` while messages
flow (`reconcile`), so a race at the seed or a missed transition cannot stay on screen.

Nothing here talks to the daemon or renders HTML: `live.Hub` does the reads and draws.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import msgspec

from protocol import messages as m
from protocol.messages import forge as f

from .render import FLOW_MESSAGES

RECONCILE_SECONDS = 5.0
OPEN_QUESTIONS = 200
"""The open questions panel shows the newest this many (as `Snapshot` does)."""
APPROVALS_PENDING = 100
APPROVALS_RESOLVED = 10


@dataclass
class Changes:
    """What one batch of events changed, in the pages' terms."""

    rows: set[str] = field(default_factory=set)
    """Agents whose row (or open-thread count) may have changed."""
    added: set[str] = field(default_factory=set)
    removed: set[str] = field(default_factory=set)
    read_rows: set[str] = field(default_factory=set)
    """Agents whose row the events did not describe fully: read it (`AgentStatus`)."""
    read_threads: set[str] = field(default_factory=set)
    """Agents whose open-thread count changed: read it (`GetAgentOpenThreads`)."""
    new_messages: list[int] = field(default_factory=list)
    message_states: dict[int, tuple[str, int]] = field(default_factory=dict)
    """Messages whose delivery state changed: (state, attempts)."""
    questions: bool = False
    approvals: bool = False
    tombstones: bool = False
    meta_inputs: bool = False
    read_reminders: bool = False
    read_dead: bool = False
    dead: bool = False
    read_federation: bool = False
    federation: bool = False
    forge: bool = False
    """A forge event: the dashboard's forge panel and the forge index are read again."""
    repos: set[str] = field(default_factory=set)
    """Repositories whose page (`repo:<repo>`) changed."""
    mrs: set[int] = field(default_factory=set)
    """Merge requests whose page (`mr:<id>`) changed."""
    estop: bool = False
    """The emergency stop changed (its panel; the event carries it)."""
    open_questions: bool = False
    """The hive's open questions (every agent's) changed."""
    read_needs: bool = False
    """What waits on the operator changed: read it (`GetInbox`)."""
    needs: bool = False
    read_budget: bool = False
    """Spending or limits changed: read the usage rows (`GetBudget`)."""
    budget: bool = False
    counted: bool = False
    """A message moved between queued and leased: the counts are arithmetic now."""
    toasts: list[tuple[str | None, str, str]] = field(default_factory=list)
    """(agent or None, text, tone)."""
    involved: dict[str, set[int]] = field(default_factory=dict)
    """Per agent, the messages in or out of it that are new or changed state (its inbox)."""

    @property
    def touched(self) -> set[str]:
        return self.rows | self.added | self.removed | self.read_rows | set(self.involved)

    @property
    def pages(self) -> frozenset[str]:
        """The pages of one thing these changes touch: `agent:<name>`, `forge`,
        `repo:<repo>`, `mr:<id>`."""
        return frozenset(
            {f"agent:{a}" for a in self.touched}
            | {f"repo:{r}" for r in self.repos}
            | {f"mr:{i}" for i in self.mrs}
            | ({"forge"} if self.forge else set())
        )


class Mirror:
    def __init__(self) -> None:
        self.seq = 0
        self.agents: dict[str, m.AgentRow] = {}
        self.open_threads: dict[str, int] = {}
        self.questions: dict[int, m.QuestionRow] = {}
        self.messages: dict[int, m.MessageRow] = {}
        self.failed_reminders: list[m.ReminderRow] = []
        self.dead_messages: list[m.MessageRow] = []
        self.approvals: list[m.ApprovalRow] = []
        self.tombstones: list[m.TombstoneRow] = []
        self.meta_inputs: list[m.MetaInputRow] = []
        self.meta_inputs_note = ""
        self.meta_inputs_updatable = False
        self.federation: m.FederationRow | None = None
        self.remote_agents: list[m.RemoteAgentRow] = []
        self.estop: m.EstopRow | None = None
        self.inbox: list[m.InboxItem] = []
        self.open_questions: dict[int, m.QuestionRow] = {}
        self.usage: list[m.UsageRow] = []
        self.counted_since_reconcile = False

    def seed(self, state: m.HiveState) -> None:
        self.seq = state.seq
        self.agents = {a.name: a for a in state.agents}
        self.open_threads = dict(state.open_threads)
        self.questions = {q.id: q for q in state.questions}
        self.messages = {msg.id: msg for msg in state.messages}
        self.failed_reminders = list(state.failed_reminders)
        self.dead_messages = list(state.dead_messages)
        self.approvals = list(state.approvals)
        self.tombstones = list(state.tombstones)
        self.meta_inputs = list(state.meta_inputs)
        self.meta_inputs_note = state.meta_inputs_note
        self.meta_inputs_updatable = state.meta_inputs_updatable
        self.federation = state.federation
        self.remote_agents = list(state.remote_agents)
        self.estop = state.estop
        self.inbox = list(state.inbox)
        self.open_questions = {q.id: q for q in state.open_questions}
        self.usage = list(state.usage)
        self.counted_since_reconcile = False

    # ---------------------------------------------------------------- reads

    def recent(self) -> list[m.MessageRow]:
        """The window, newest first (as `Snapshot` gives it)."""
        return [self.messages[i] for i in sorted(self.messages, reverse=True)]

    def operator_questions(self) -> list[m.QuestionRow]:
        return [self.questions[i] for i in sorted(self.questions, reverse=True)]

    def open_question_list(self) -> list[m.QuestionRow]:
        """Every agent's open questions, oldest first (the newest `OPEN_QUESTIONS`)."""
        return [self.open_questions[i] for i in sorted(self.open_questions)[-OPEN_QUESTIONS:]]

    # ---------------------------------------------------------------- what daemon reads bring

    def set_row(self, row: m.AgentRow) -> None:
        if row.name in self.agents:
            self.agents[row.name] = row

    def set_usage(self, usage: list[m.UsageRow], c: Changes) -> None:
        """The usage rows (`GetBudget`) replace the kept ones, and set each agent row's
        spending fields (as `Registry.rows` does)."""
        self.usage = list(usage)
        c.budget = True
        for u in usage:
            if u.scope != "agent" or u.agent is None:
                continue
            row = self.agents.get(u.agent)
            if row is None:
                continue
            fields = {
                "tokens_today": u.tokens_day,
                "cost_today_usd": u.cost_day_usd,
                "tokens_total": u.tokens_total,
                "cost_total_usd": u.cost_total_usd,
                "budget_used": u.used,
            }
            if any(getattr(row, k) != v for k, v in fields.items()):
                self._row(u.agent, c, **fields)

    def reconcile(self, rows: list[m.AgentRow]) -> set[str]:
        """The daemon's rows replace the kept ones; the names whose row differed."""
        self.counted_since_reconcile = False
        differ = set()
        for row in rows:
            if self.agents.get(row.name) != row and row.name in self.agents:
                self.agents[row.name] = row
                differ.add(row.name)
        return differ

    # ---------------------------------------------------------------- events

    def apply(self, events: list[m.AnyEvent]) -> Changes:
        c = Changes()
        for ev in events:
            if ev.seq <= self.seq:
                continue  # the seed already shows it
            self.seq = ev.seq
            self._apply(ev, c)
        return c

    def _row(self, name: str, c: Changes, **fields: object) -> None:
        row = self.agents.get(name)
        if row is None:
            return
        self.agents[name] = msgspec.structs.replace(row, **fields)
        c.rows.add(name)

    def _count(self, name: str, c: Changes, queued: int = 0, leased: int = 0) -> None:
        row = self.agents.get(name)
        if row is None:
            return
        self.counted_since_reconcile = c.counted = True
        self._row(name, c, queued=max(0, row.queued + queued), leased=max(0, row.leased + leased))

    def _seen(self, name: str, at: float, c: Changes) -> None:
        row = self.agents.get(name)
        if row is not None and (row.last_seen or 0.0) < at:
            self._row(name, c, last_seen=at)

    def _message_state(
        self, mid: int, agent: str, c: Changes, state: m.MessageState, **fields: object
    ) -> None:
        c.involved.setdefault(agent, set()).add(mid)
        msg = self.messages.get(mid)
        attempts = fields.get("attempts")
        if msg is not None:
            msg = msgspec.structs.replace(msg, state=state, **fields)
            self.messages[mid] = msg
            attempts = msg.attempts
            for who in (msg.from_, msg.to):
                c.involved.setdefault(who, set()).add(mid)
        c.message_states[mid] = (state, attempts if isinstance(attempts, int) else 0)

    def _apply(self, ev: m.AnyEvent, c: Changes) -> None:
        match ev:
            case m.AgentAdded(agent=row):
                self.agents[row.name] = row
                self.open_threads.setdefault(row.name, 0)
                c.added.add(row.name)
                c.removed.discard(row.name)
                c.read_needs = True  # who may merge a forge request can change
                c.toasts.append((None, f"{row.name} was added", "ok"))
            case m.AgentRemoved(name=name):
                self.agents.pop(name, None)
                self.open_threads.pop(name, None)
                c.removed.add(name)
                c.added.discard(name)
                c.read_needs = True  # requests into its repositories are the operator's now
                c.toasts.append((None, f"{name} was removed", "warn"))
            case m.AgentStateChanged(name=name, state=state, reason=reason):
                if state in ("connected", "disconnected"):
                    self._row(name, c, running=state == "connected")
                    self._seen(name, ev.at, c)
                elif state.startswith("harness:"):
                    self._row(name, c, harness_state=state.removeprefix("harness:"))
                    self._seen(name, ev.at, c)
                else:  # the container's state, a deployed config: the row says the rest
                    c.read_rows.add(name)
                    c.rows.add(name)
                if state in ("failed", "crashed"):
                    c.toasts.append((name, f"{name} {state}: {reason}", "bad"))
                if state in ("failed", "starting"):  # a failed agent enters or leaves the inbox
                    c.read_needs = True
            case m.StatusChanged(name=name, text=text):
                self._row(name, c, status_text=text, status_set_at=ev.at)
                self._seen(name, ev.at, c)
            case m.TurnRecorded(name=name):
                self._seen(name, ev.at, c)
                c.read_budget = True
            case m.LoggedIn(name=name):
                self._row(name, c, needs_login=False)
            case m.NeedsLogin(name=name, reason=reason):
                self._row(name, c, needs_login=True)
                c.toasts.append((name, f"{name} needs login: {reason}", "warn"))
            case m.MessageSent(message=msg):
                self.messages[msg.id] = msg
                if len(self.messages) > FLOW_MESSAGES:
                    for old in sorted(self.messages)[: len(self.messages) - FLOW_MESSAGES]:
                        del self.messages[old]
                c.new_messages.append(msg.id)
                for who in (msg.from_, msg.to):
                    c.involved.setdefault(who, set()).add(msg.id)
                if msg.state == "queued":
                    self._count(msg.to, c, queued=1)
                self._seen(msg.from_, ev.at, c)
            case m.MessageLeased(message_id=mid, agent=agent, attempts=attempts):
                self._count(agent, c, queued=-1, leased=1)
                self._seen(agent, ev.at, c)
                self._message_state(mid, agent, c, state="leased", attempts=attempts)
            case m.MessageAcked(message_id=mid, agent=agent):
                self._count(agent, c, leased=-1)
                self._seen(agent, ev.at, c)
                self._message_state(mid, agent, c, state="acked", acked_at=ev.at)
            case m.MessageRequeued(message_id=mid, agent=agent, attempts=attempts, reason=reason):
                if reason == "operator retry":  # a dead message, queued again
                    self._count(agent, c, queued=1)
                    self._drop_dead(mid, c)
                    c.read_needs = True
                else:
                    self._count(agent, c, queued=1, leased=-1)
                self._message_state(mid, agent, c, state="queued", attempts=attempts)
            case m.MessageDead(message_id=mid, agent=agent, reason=reason):
                self._count(agent, c, leased=-1)
                self._message_state(mid, agent, c, state="dead", last_error=reason)
                c.read_dead = c.read_needs = True
                c.toasts.append((agent, f"message #{mid} to {agent} is dead: {reason}", "bad"))
            case m.MessageDropped(message_id=mid, agent=agent):
                self._drop_dead(mid, c)
                self._message_state(mid, agent, c, state="dropped")
                c.read_needs = True
            case m.MessageForwarded(message_id=mid):
                sent = self.messages.get(mid)
                if sent is not None:
                    self._message_state(mid, sent.from_, c, state="forwarded")
                c.read_federation = True
            case m.QuestionAsked(question=q):
                if q.target == "operator":
                    self.questions[q.id] = q
                    c.questions = c.read_needs = True
                self.open_questions[q.id] = q
                c.open_questions = True
                self._threads(c, q.asker, q.target)
            case m.QuestionEscalated(question=q, step=step, to=to):
                if to == "operator" or q.id in self.questions:
                    # escalated to the operator: theirs to answer too
                    self.questions[q.id] = q
                    c.questions = c.read_needs = True
                self.open_questions[q.id] = q
                c.open_questions = True
                self._threads(c, q.asker, q.target, to)
                where = "raised again to" if step == "raised" else "escalated to"
                c.toasts.append((q.asker, f"question #{q.id} of {q.asker}: {where} {to}", "warn"))
            case (
                m.QuestionAnswered(question_id=qid, asker=asker, target=target)
                | m.QuestionCancelled(question_id=qid, asker=asker, target=target)
            ):
                if self.questions.pop(qid, None) is not None:
                    c.questions = c.read_needs = True
                if self.open_questions.pop(qid, None) is not None:
                    c.open_questions = True
                self._threads(c, asker, target)
            case m.ReminderScheduled(reminder=r):
                c.read_rows.add(r.owner)
                c.rows.add(r.owner)
                if any(f.id == r.id for f in self.failed_reminders):
                    c.read_reminders = True
            case m.ReminderDelivered(owner=owner):
                owner_row = self.agents.get(owner)
                if owner_row is not None:
                    self.counted_since_reconcile = True
                    self._row(
                        owner,
                        c,
                        reminders_pending=max(0, owner_row.reminders_pending - 1),
                        reminders_delivered=owner_row.reminders_delivered + 1,
                    )
            case m.ReminderFailed(owner=owner, error=error, retry_at=None):
                failed_row = self.agents.get(owner)
                if failed_row is not None:
                    self.counted_since_reconcile = True
                    self._row(
                        owner,
                        c,
                        reminders_pending=max(0, failed_row.reminders_pending - 1),
                        reminders_failed=failed_row.reminders_failed + 1,
                    )
                c.read_reminders = True
                c.toasts.append((owner, f"a reminder of {owner} failed: {error}", "bad"))
            case m.ReminderFailed():
                pass  # tried again later: still pending
            case m.ReminderCancelled(reminder_id=rid, owner=owner):
                c.read_rows.add(owner)
                c.rows.add(owner)
                if any(f.id == rid for f in self.failed_reminders):
                    c.read_reminders = True
            case m.ApprovalAdded(approval=a):
                self._approval(a, c)
                c.toasts.append((None, f"{a.requested_by} asks: {a.description}", "warn"))
            case m.ApprovalResolved(approval=a):
                self._approval(a, c)
                c.read_rows.add(a.agent)
                c.rows.add(a.agent)
                if a.status == "failed":
                    c.toasts.append((None, f"approval #{a.id} failed: {a.outcome}", "bad"))
            case m.TombstoneAdded(tombstone=t):
                self.tombstones = [x for x in self.tombstones if x.name != t.name]
                self.tombstones.append(t)
                self.tombstones.sort(key=lambda x: x.destroyed_at, reverse=True)
                c.tombstones = True
            case m.TombstoneRemoved(name=name):
                self.tombstones = [x for x in self.tombstones if x.name != name]
                c.tombstones = True
            case m.MetaInputsChanged(inputs=inputs):
                self.meta_inputs = list(inputs)
                c.meta_inputs = True
            case m.FederationChanged(link=link, detail=detail):
                c.read_federation = True
                if link == "disconnected":
                    c.toasts.append((None, f"federation {link}: {detail}", "warn"))
            case m.RemoteAgentsChanged(hive=hive, agents=agents):
                others = [r for r in self.remote_agents if r.hive != hive]
                self.remote_agents = sorted([*others, *agents], key=lambda r: (r.hive, r.name))
                c.read_federation = True
            case f.RepoCreated(repo=row) | f.RepoUpdated(repo=row):
                c.forge = True
                c.repos.add(row.repo)
            case f.RepoDeleted(repo=repo) | f.Pushed(repo=repo):
                c.forge = True
                c.repos.add(repo)
            case f.MergeRequestOpened(mr=mr):
                self._merge_request(mr, c)
                c.toasts.append(
                    (None, f"{mr.author} opened !{mr.id} on {mr.repo}: {mr.title}", "ok")
                )
            case f.MergeRequestMerged(mr=mr):
                self._merge_request(mr, c)
                c.toasts.append((None, f"!{mr.id} merged into {mr.repo} by {mr.resolved_by}", "ok"))
            case f.MergeRequestUpdated(mr=mr) | f.MergeRequestClosed(mr=mr):
                self._merge_request(mr, c)
            case m.EstopChanged(estop=e):
                self.estop = e
                c.estop = c.read_needs = True
                if e.engaged:
                    text = f"EMERGENCY STOP: {len(e.parked)} agents parked"
                    c.toasts.append((None, text + (f" ({e.reason})" if e.reason else ""), "bad"))
                else:
                    c.toasts.append((None, "the emergency stop was thawed", "ok"))
            case m.AgentHeld(name=name, hold=hold, reason=reason):
                # `held` joins every hold's reason: the daemon's row says it
                c.read_rows.add(name)
                c.rows.add(name)
                c.read_needs = c.read_budget = True
                if hold == "budget":
                    c.toasts.append((name, f"{name} paused: {reason}", "bad"))
            case m.AgentReleased(name=name, hold=hold, reason=reason):
                c.read_rows.add(name)
                c.rows.add(name)
                c.read_needs = c.read_budget = True
                if hold == "budget":
                    c.toasts.append((name, f"{name} may work again: {reason}", "ok"))
            case m.BudgetAlerted(alert=a):
                c.read_needs = c.read_budget = True
                if a.state == "open":
                    c.toasts.append((a.agent, a.text, "warn" if a.level == "warn" else "bad"))
            case m.BudgetChanged():
                c.read_needs = c.read_budget = True
            case m.Note(agent=agent, text=text):
                c.toasts.append((agent, f"{agent}: {text}" if agent else text, "ok"))
            case _:
                pass

    def _threads(self, c: Changes, *names: str) -> None:
        for name in names:
            if name in self.agents:
                c.read_threads.add(name)
                c.rows.add(name)

    def _merge_request(self, mr: f.MergeRequestRow, c: Changes) -> None:
        # the pages that show it, its author's and reviewers' open threads, and the operator's
        # inbox (a request may ask the operator to review it, or wait for its merge)
        c.forge = c.read_needs = True
        c.repos |= {mr.repo, mr.source_repo}
        c.mrs.add(mr.id)
        self._threads(c, mr.author, *mr.reviewers)

    def _drop_dead(self, mid: int, c: Changes) -> None:
        kept = [d for d in self.dead_messages if d.id != mid]
        if len(kept) != len(self.dead_messages):
            self.dead_messages = kept
            c.dead = True

    def _approval(self, a: m.ApprovalRow, c: Changes) -> None:
        rows = {x.id: x for x in self.approvals}
        rows[a.id] = a
        pending = sorted((x for x in rows.values() if x.status == "pending"), key=lambda x: x.id)
        resolved = sorted(
            (x for x in rows.values() if x.status != "pending"), key=lambda x: x.id, reverse=True
        )
        self.approvals = pending[:APPROVALS_PENDING] + resolved[:APPROVALS_RESOLVED]
        c.approvals = c.read_needs = True
        self._threads(c, a.requested_by)
