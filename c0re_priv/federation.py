"""Federation: this hive's link to the others over NATS JetStream (docs/federation.md).

`Federation` owns four things. The **directory** of remote hives and their agents (from the
statuses they publish, kept in sqlite), which the broker consults before a remote send.
The **publisher**, which drains `federation_outbox` (rows written by `federation_outbox`
inside the transactions that make them) to JetStream and marks a row published only on
JetStream's ack. The **consumers**, which fetch envelopes from this hive's durable consumer,
commit each batch in one transaction — deduplicated by envelope id in `federation_inbox` —
and ack to NATS only after that commit. And the **status publisher**, which announces this
hive's roster. The NATS client itself runs on its own asyncio thread (`nats_link`).

It never writes a message that a local transaction did not commit first, never acks an
envelope before its effect is durable, and never lets NATS being away stop local delivery.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

import trio

from protocol import messages as m
from protocol.federation import (
    AddressError,
    Envelope,
    EnvelopeError,
    FedAnswer,
    FedBounce,
    FedCancel,
    FedMessage,
    FedQuestion,
    FedReceipt,
    HiveStatus,
    RemoteAgent,
    decode_body,
    decode_envelope,
    decode_status,
    encode,
    split_address,
)

from . import federation_outbox
from .attachments import spill_oversize
from .broker import OPERATOR, SYSTEM, Broker, insert_message, resolve_parent
from .config import FederationSettings, HiveSettings, Paths
from .errors import Fail
from .events import EventBus
from .nats_link import AsyncioLoop, ConsumerGone, Feed, Incoming, LinkError, NatsLink, Outgoing
from .questions import Questions, question_row, question_text
from .registry import Registry
from .store import Store

log = logging.getLogger(__name__)
POLL_SECONDS = 1.0
"""The publisher looks at the outbox this often even when nobody poked it."""
FETCH_WAIT = 2.0
STATUS_DEBOUNCE = 0.5
STATUS_KINDS = ("agent_added", "agent_removed", "status_changed", "agent_state_changed")
INBOX_KEEP_DAYS = 60.0
"""Envelope ids are remembered this long (JetStream's `max_age_days` must be shorter)."""


@dataclass
class Effects:
    """What one committed inbound batch changed, announced after the commit."""

    messages: list[m.MessageRow] = field(default_factory=list)
    events: list[m.AnyEvent] = field(default_factory=list)
    answered: list[tuple[m.QuestionRow, m.MessageRow]] = field(default_factory=list)
    duplicates: int = 0
    received: int = 0
    enqueued: bool = False
    """Something was added to the outbox (a receipt, a bounce): the publisher is poked."""


def _remote_agent_row(hive: str, r: sqlite3.Row, heard_at: float) -> m.RemoteAgentRow:
    return m.RemoteAgentRow(
        address=f"{r['name']}@{hive}",
        hive=hive,
        name=r["name"],
        role=r["role"],
        model=r["model"],
        runtime=r["runtime"],
        running=bool(r["running"]),
        container=r["container"],
        status_text=r["status_text"],
        status_set_at=r["status_set_at"],
        queued=r["queued"],
        heard_at=heard_at,
    )


class Federation:
    """One hive's federation link; build it before serving, run `run` in the daemon's nursery."""

    def __init__(
        self,
        settings: FederationSettings,
        store: Store,
        bus: EventBus,
        registry: Registry,
        broker: Broker,
        questions: Questions,
        hive_settings: HiveSettings,
        paths: Paths,
        now: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.hive = settings.hive
        self._store = store
        self._bus = bus
        self._registry = registry
        self._broker = broker
        self._questions = questions
        self._hive_settings = hive_settings
        self._paths = paths
        self._now = now
        self._ns = settings.namespace
        self.epoch = ""
        self.directory: dict[str, set[str]] = {}
        """Remote hive → its agents' names, as of its last status."""
        self.link: str = "connecting"
        self.detail = ""
        self.published = 0
        self.received = 0
        self.duplicates = 0
        self.rejected = 0
        self._poke = trio.Event()
        self._status_poke = trio.Event()
        self._link_changed = trio.Event()
        self._generation = 0
        """Counts the times the link came up: a new one means the server may have lost state."""

    # ---------------------------------------------------------------- the directory

    async def load(self) -> None:
        """Read the epoch and the last known rosters (before the broker serves a send)."""

        def read(conn: sqlite3.Connection) -> tuple[str, list[tuple[str, str]]]:
            epoch = conn.execute("SELECT value FROM hive_meta WHERE key = 'epoch'").fetchone()
            rows = conn.execute("SELECT hive, name FROM remote_agents").fetchall()
            hives = conn.execute("SELECT hive FROM remote_hives").fetchall()
            return epoch[0], [(r[0], r[1]) for r in rows] + [(h[0], "") for h in hives]

        self.epoch, pairs = await self._store.read(read)
        self.directory = {}
        for hive, name in pairs:
            names = self.directory.setdefault(hive, set())
            if name:
                names.add(name)

    def resolve(self, address: str) -> str:
        """Check a `name@hive` a local sender wants to reach; return it (or the local name).

        `bob@<this hive>` is plain `bob`. A hive that never published its status here, or
        whose last status has no such agent, is `not_found`: a typo fails at once rather
        than waiting in a stream forever.
        """
        try:
            name, hive = split_address(address)
        except AddressError as exc:
            raise Fail("invalid", str(exc)) from None
        if hive is None or hive == self.hive:
            return name
        known = self.directory.get(hive)
        if known is None:
            raise Fail("not_found", f"no hive named {hive!r} has announced itself to this one")
        if name != OPERATOR and name not in known:
            raise Fail(
                "not_found", f"hive {hive!r} has no agent named {name!r} (by its last status)"
            )
        return f"{name}@{hive}"

    def poke(self) -> None:
        """Something was added to the outbox: publish now rather than at the next poll."""
        self._poke.set()

    async def row(self) -> m.FederationRow:
        def read(conn: sqlite3.Connection) -> tuple[sqlite3.Row, list[sqlite3.Row]]:
            outbox = conn.execute(
                "SELECT count(*) AS n, min(created_at) AS oldest,"
                " (SELECT last_error FROM federation_outbox WHERE published_at IS NULL"
                "  AND last_error IS NOT NULL ORDER BY id DESC LIMIT 1) AS last_error"
                " FROM federation_outbox WHERE published_at IS NULL"
            ).fetchone()
            hives = conn.execute(
                "SELECT h.hive, h.status_at, h.heard_at,"
                " (SELECT count(*) FROM remote_agents a WHERE a.hive = h.hive) AS agents"
                " FROM remote_hives h ORDER BY h.hive"
            ).fetchall()
            return outbox, hives

        outbox, hives = await self._store.read(read)
        return m.FederationRow(
            enabled=True,
            hive=self.hive,
            url=self.settings.url,
            link=self.link,  # type: ignore[arg-type]
            detail=self.detail,
            outbox_pending=outbox["n"],
            outbox_oldest_at=outbox["oldest"],
            outbox_last_error=outbox["last_error"],
            published=self.published,
            received=self.received,
            duplicates=self.duplicates,
            rejected=self.rejected,
            hives=[
                m.RemoteHiveRow(
                    hive=h["hive"],
                    agents=h["agents"],
                    status_at=h["status_at"],
                    heard_at=h["heard_at"],
                )
                for h in hives
            ],
        )

    async def remote_agents(self) -> list[m.RemoteAgentRow]:
        def read(conn: sqlite3.Connection) -> list[m.RemoteAgentRow]:
            rows = conn.execute(
                "SELECT a.*, h.heard_at FROM remote_agents a JOIN remote_hives h USING (hive)"
                " ORDER BY a.hive, a.name"
            ).fetchall()
            return [_remote_agent_row(r["hive"], r, r["heard_at"]) for r in rows]

        return await self._store.read(read)

    # ---------------------------------------------------------------- running

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The link's whole life: connect (retrying), then publish, consume and announce.

        Reports started at once: a NATS that is away delays nothing local. Cancelling it
        closes the NATS connection and joins the client thread.
        """
        await self.load()
        await self._prune_inbox()
        async with trio.open_nursery() as owner:
            loop: AsyncioLoop = await owner.start(AsyncioLoop().run)
            link = NatsLink(self.settings, partial(self._state_from_asyncio, loop))
            loop.on_close(link.close)
            task_status.started()
            await self._connect(loop, link)
            owner.start_soon(self._publisher, loop, link)
            owner.start_soon(self._consume, loop, link, "msgs")
            owner.start_soon(self._consume, loop, link, "status")
            owner.start_soon(self._announce, loop, link)

    def _state_from_asyncio(self, loop: AsyncioLoop, link: str, detail: str) -> None:
        loop.to_trio(lambda: self._set_state(link or self.link, detail))

    def _set_state(self, link: str, detail: str) -> None:
        if (link, detail) == (self.link, self.detail):
            return
        changed = link != self.link
        self.link, self.detail = link, detail
        if not changed:  # a new detail (the latest error) is shown on request, not pushed
            return
        log.info("federation link %s: %s", link, detail)
        if link == "connected":
            self._generation += 1
            self._status_poke.set()
        self._link_changed.set()
        self._link_changed = trio.Event()
        self._bus.publish(m.FederationChanged(link=link, detail=detail))

    async def _wait_for_link(self, delay: float) -> None:
        """Sleep `delay`, or less if the link changes state meanwhile."""
        changed = self._link_changed
        with trio.move_on_after(delay):
            await changed.wait()

    def _backoff(self, failures: int) -> float:
        s = self.settings
        return float(
            min(s.retry_backoff_seconds * 2 ** min(failures, 30), s.retry_backoff_max_seconds)
        )

    async def _connect(self, loop: AsyncioLoop, link: NatsLink) -> None:
        """Connect, provision if allowed, bind this hive's consumers; retry until done."""
        failures = 0
        while True:
            try:
                await loop.call(link.connect)
                if self.settings.provision:
                    created = await loop.call(
                        partial(link.provision, [self.hive], self.settings.max_age_days)
                    )
                    if created:
                        log.info("federation: created %s", ", ".join(created))
                await loop.call(link.bind)
                self._set_state("connected", f"connected to {self.settings.url} as {self.hive}")
                return
            except LinkError as exc:
                delay = self._backoff(failures)
                failures += 1
                self._set_state("connecting", f"{exc} (retrying in {delay:.0f}s)")
                log.warning("federation: %s", exc)
                await trio.sleep(delay)

    # ---------------------------------------------------------------- publishing

    async def _publisher(self, loop: AsyncioLoop, link: NatsLink) -> None:
        failures = 0
        batch = self.settings.publish_batch
        generation = self._generation
        while True:
            if generation != self._generation:
                # the link came back: what backed off while it was away goes at once
                generation = self._generation
                await self._store.write(
                    lambda c: c.execute(
                        "UPDATE federation_outbox SET next_attempt_at = NULL"
                        " WHERE published_at IS NULL"
                    )
                )
            self._poke = trio.Event()
            now = self._now()
            rows = await self._store.read(partial(federation_outbox.pending, now=now, limit=batch))
            if not rows:
                with trio.move_on_after(POLL_SECONDS):
                    await self._poke.wait()
                continue
            items = [self._outgoing(r, now) for r in rows]
            try:
                errors = await loop.call(partial(link.publish, items))
            except LinkError:  # nothing was published: the rows stay as they are
                await self._wait_for_link(self._backoff(failures))
                failures += 1
                continue
            await self._mark(rows, errors)
            failed = [e for e in errors if e is not None]
            if failed:
                log.warning(
                    "federation: %d of %d publishes failed: %s", len(failed), len(errors), failed[0]
                )
                # the failed rows wait out their own backoff; the others go on meanwhile
                await self._wait_for_link(self._backoff(failures))
                failures += 1
            else:
                failures = 0

    def _outgoing(self, r: sqlite3.Row, now: float) -> Outgoing:
        envelope_id = f"{self.hive}.{self.epoch}.{r['id']}"
        envelope = Envelope(
            id=envelope_id,
            origin=self.hive,
            to_hive=r["to_hive"],
            sent_at=now,
            body=decode_body(r["body"]),
        )
        return Outgoing(
            subject=f"{self._ns}.msg.{r['to_hive']}.{self.hive}",
            data=encode(envelope),
            msg_id=envelope_id,
        )

    async def _mark(self, rows: list[sqlite3.Row], errors: list[str | None]) -> None:
        now = self._now()
        s = self.settings

        def write(conn: sqlite3.Connection) -> list[tuple[int, str]]:
            forwarded = []
            for r, error in zip(rows, errors, strict=True):
                if error is None:
                    conn.execute(
                        "UPDATE federation_outbox SET published_at = ?, attempts = attempts + 1,"
                        " last_error = NULL WHERE id = ?",
                        (now, r["id"]),
                    )
                    if r["message_id"] is not None and r["kind"] in (
                        "message",
                        "question",
                        "answer",
                    ):
                        row = conn.execute(
                            "UPDATE messages SET state = 'forwarded' WHERE id = ? AND state = 'queued'"
                            " RETURNING id, recipient",
                            (r["message_id"],),
                        ).fetchone()
                        if row is not None:
                            forwarded.append((row[0], row[1]))
                else:
                    delay = min(
                        s.retry_backoff_seconds * 2 ** min(r["attempts"], 30),
                        s.retry_backoff_max_seconds,
                    )
                    conn.execute(
                        "UPDATE federation_outbox SET attempts = attempts + 1, last_error = ?,"
                        " next_attempt_at = ? WHERE id = ?",
                        (error[:500], now + delay, r["id"]),
                    )
            return forwarded

        forwarded = await self._store.write(write)
        self.published += sum(1 for e in errors if e is None)
        for message_id, to in forwarded:
            self._bus.publish(m.MessageForwarded(message_id=message_id, to=to))

    # ---------------------------------------------------------------- consuming

    async def _consume(self, loop: AsyncioLoop, link: NatsLink, feed: Feed) -> None:
        failures = 0
        generation = self._generation
        while True:
            if feed == "msgs" and generation != self._generation:
                # the link came back, perhaps to a server that lost its state: bind again
                generation = self._generation
                await self._rebind(loop, link)
            try:
                got = await loop.call(partial(link.fetch, feed, FETCH_WAIT))
            except LinkError as exc:
                if self.link == "connected":
                    log.warning("federation: %s feed: %s", feed, exc)
                    if isinstance(exc, ConsumerGone) and feed == "msgs":
                        await self._rebind(loop, link)
                await self._wait_for_link(self._backoff(failures))
                failures += 1
                continue
            failures = 0
            if not got:
                continue
            if feed == "msgs":
                acks, terms = await self._receive(got)
            else:
                acks, terms = await self._receive_status(got)
            try:
                await loop.call(partial(link.settle, acks, terms))
            except LinkError as exc:  # they come again, and are dropped by id
                log.warning("federation: %s", exc)

    async def _rebind(self, loop: AsyncioLoop, link: NatsLink) -> None:
        try:
            if self.settings.provision:
                await loop.call(partial(link.provision, [self.hive], self.settings.max_age_days))
            await loop.call(link.bind)
        except LinkError as exc:
            log.warning("federation: binding again: %s", exc)
            self._set_state(self.link, str(exc))

    def _reject(self, item: Incoming, why: str) -> None:
        self.rejected += 1
        log.warning("federation: rejected an envelope on %s: %s", item.subject, why)
        self._bus.publish(
            m.Note(agent=None, text=f"federation: rejected an envelope on {item.subject}: {why}")
        )

    async def _receive(self, batch: list[Incoming]) -> tuple[list[Incoming], list[Incoming]]:
        """Commit a batch of envelopes; return (to ack, to terminate)."""
        good: list[tuple[Incoming, Envelope]] = []
        terms: list[Incoming] = []
        prefix = f"{self._ns}.msg.{self.hive}."
        for item in batch:
            try:
                env = decode_envelope(item.data)
            except EnvelopeError as exc:
                self._reject(item, str(exc))
                terms.append(item)
                continue
            if item.subject != prefix + env.origin or env.to_hive != self.hive:
                # the subject's origin is what NATS permissions vouch for
                self._reject(
                    item, f"envelope from {env.origin!r} to {env.to_hive!r} on the wrong subject"
                )
                terms.append(item)
                continue
            good.append((item, env))
        if not good:
            return [], terms
        bodies = await self._spill_inbound([env for _, env in good])
        now = self._now()
        oldest = now - self._hive_settings.message_retention_days * 86400

        def write(conn: sqlite3.Connection) -> Effects:
            effects = Effects()
            for _, env in good:
                self._apply(conn, env, bodies.get(env.id), now, oldest, effects)
            return effects

        try:
            effects = await self._store.write(write)
        except Exception:  # not acked: JetStream redelivers the whole batch
            log.exception("federation: could not commit %d envelope(s)", len(good))
            return [], terms
        self.received += effects.received
        self.duplicates += effects.duplicates
        if effects.duplicates:
            log.info("federation: %d envelope(s) received again, dropped by id", effects.duplicates)
        self._announce_effects(effects)
        return [item for item, _ in good], terms

    async def _spill_inbound(self, envelopes: list[Envelope]) -> dict[str, str]:
        """Bodies over this hive's cap, written to the recipient's state dir: id → pointer."""
        cap = self._hive_settings.body_max_bytes
        big = [
            e
            for e in envelopes
            if isinstance(e.body, FedMessage | FedQuestion | FedAnswer)
            and len(self._text_of(e.body).encode()) > cap
            and e.body.to in self._registry.agents
        ]
        if not big:
            return {}
        ids = [e.id for e in big]
        seen = await self._store.read(
            lambda c: {
                r[0]
                for r in c.execute(
                    f"SELECT envelope_id FROM federation_inbox WHERE envelope_id IN ({','.join('?' * len(ids))})",
                    ids,
                )
            }
        )
        out = {}
        for e in big:
            if e.id in seen:
                continue
            assert isinstance(e.body, FedMessage | FedQuestion | FedAnswer)
            pointer, _ = await spill_oversize(
                self._text_of(e.body),
                cap=cap,
                agents_root=self._paths.agents_root,
                owner=e.body.to,
                now=self._now(),
            )
            out[e.id] = pointer
        return out

    @staticmethod
    def _text_of(body: FedMessage | FedQuestion | FedAnswer) -> str:
        if isinstance(body, FedMessage):
            return body.body
        if isinstance(body, FedQuestion):
            return body.question
        return body.answer

    def _apply(
        self,
        conn: sqlite3.Connection,
        env: Envelope,
        spilled: str | None,
        now: float,
        oldest: float,
        fx: Effects,
    ) -> None:
        """One envelope's effect, inside the batch's transaction (idempotent by `env.id`)."""
        kind = env.body.__struct_config__.tag
        inserted = conn.execute(
            "INSERT OR IGNORE INTO federation_inbox (envelope_id, origin, kind, received_at)"
            " VALUES (?, ?, ?, ?)",
            (env.id, env.origin, kind, now),
        ).rowcount
        if not inserted:
            fx.duplicates += 1
            return
        fx.received += 1
        made = len(fx.messages)
        origin = env.origin
        body = env.body
        conn.execute("SAVEPOINT envelope")
        try:
            match body:
                case FedMessage():
                    self._apply_message(conn, origin, body, spilled, now, oldest, fx)
                case FedQuestion():
                    self._apply_question(conn, origin, body, spilled, now, fx)
                case FedAnswer():
                    self._apply_answer(conn, origin, body, spilled, now, fx)
                case FedCancel():
                    row = conn.execute(
                        "UPDATE questions SET state = 'cancelled', answered_at = ?"
                        " WHERE asker = ? AND remote_id = ? AND state = 'open' RETURNING *",
                        (now, f"{body.sender}@{origin}", body.question_id),
                    ).fetchone()
                    if row is not None:
                        fx.events.append(
                            m.QuestionCancelled(
                                question_id=row["id"], asker=row["asker"], target=row["target"]
                            )
                        )
                case FedReceipt():
                    recipient = f"{body.by}@{origin}"
                    row = conn.execute(
                        "UPDATE messages SET state = 'acked', acked_at = ? WHERE id = ?"
                        " AND recipient = ? AND state IN ('queued', 'forwarded') RETURNING id",
                        (body.acked_at, body.message_id, recipient),
                    ).fetchone()
                    if row is not None:
                        fx.events.append(m.MessageAcked(message_id=row[0], agent=recipient))
                case FedBounce():
                    self._apply_bounce(conn, origin, body, now, fx)
        except Fail as exc:  # a refusal of ours (no such agent): tell the origin, keep the id
            conn.execute("ROLLBACK TO envelope")
            if isinstance(body, FedMessage | FedQuestion):
                federation_outbox.enqueue_bounce(
                    conn, origin, body.message_id, body.to, exc.message
                )
                fx.enqueued = True
            log.info("federation: envelope %s from %s refused: %s", env.id, origin, exc.message)
        conn.execute("RELEASE envelope")
        if len(fx.messages) > made:  # the message this envelope became, for the record
            conn.execute(
                "UPDATE federation_inbox SET message_id = ? WHERE envelope_id = ?",
                (fx.messages[made].id, env.id),
            )

    def _local_party(self, conn: sqlite3.Connection, name: str) -> None:
        if name == OPERATOR:
            return
        if conn.execute("SELECT 1 FROM agents WHERE name = ?", (name,)).fetchone() is None:
            raise Fail("not_found", f"hive {self.hive!r} has no agent named {name!r}")

    def _apply_message(
        self,
        conn: sqlite3.Connection,
        origin: str,
        body: FedMessage,
        spilled: str | None,
        now: float,
        oldest: float,
        fx: Effects,
    ) -> None:
        self._local_party(conn, body.to)
        sender = f"{body.sender}@{origin}"
        parent, thread = resolve_parent(conn, body.to, body.reply_to, oldest)
        msg = insert_message(
            conn,
            sender=sender,
            recipient=body.to,
            body=spilled or body.body,
            now=now,
            in_reply_to=parent,
            thread=thread,
        )
        self._remember_origin(conn, msg, body.message_id)
        if msg.state == "acked":  # the operator's inbox: delivered on arrival
            federation_outbox.enqueue_receipt(conn, sender, body.message_id, body.to, now)
            fx.enqueued = True
        fx.messages.append(msg)

    def _remember_origin(self, conn: sqlite3.Connection, msg: m.MessageRow, remote_id: int) -> None:
        conn.execute("UPDATE messages SET remote_id = ? WHERE id = ?", (remote_id, msg.id))

    def _apply_question(
        self,
        conn: sqlite3.Connection,
        origin: str,
        body: FedQuestion,
        spilled: str | None,
        now: float,
        fx: Effects,
    ) -> None:
        self._local_party(conn, body.to)
        asker = f"{body.sender}@{origin}"
        text = spilled or body.question
        qid = conn.execute(
            "INSERT INTO questions (asker, target, question, options, multi, asked_at,"
            " expires_at, message_id, remote_id) VALUES (?, ?, ?, ?, ?, ?, ?, 0, ?) RETURNING id",
            (
                asker,
                body.to,
                text,
                json.dumps(body.options) if body.options is not None else None,
                int(body.multi),
                now,
                body.expires_at,
                body.question_id,
            ),
        ).fetchone()[0]
        msg = insert_message(
            conn,
            sender=asker,
            recipient=body.to,
            body=question_text(qid, asker, text, body.options, body.multi),
            now=now,
            kind="question",
            question_id=qid,
        )
        self._remember_origin(conn, msg, body.message_id)
        row = conn.execute(
            "UPDATE questions SET message_id = ? WHERE id = ? RETURNING *", (msg.id, qid)
        ).fetchone()
        fx.events.append(m.QuestionAsked(question=question_row(row)))
        fx.messages.append(msg)

    def _apply_answer(
        self,
        conn: sqlite3.Connection,
        origin: str,
        body: FedAnswer,
        spilled: str | None,
        now: float,
        fx: Effects,
    ) -> None:
        answerer = f"{body.sender}@{origin}"
        row = conn.execute("SELECT * FROM questions WHERE id = ?", (body.question_id,)).fetchone()
        if row is None or split_address(row["target"])[1] != origin:
            return  # only the hive that was asked may answer
        if body.state == "answered" and row["target"] != answerer:
            return  # only its target answers; its hive's system may expire it
        if row["state"] != "open":
            return  # expired or withdrawn here meanwhile: the asker has its answer already
        state = "expired" if body.state == "expired" else "answered"
        q, msg = Questions.close(conn, row, state, spilled or body.answer, answerer, now)
        self._remember_origin(conn, msg, body.message_id)
        fx.answered.append((q, msg))

    def _apply_bounce(
        self, conn: sqlite3.Connection, origin: str, body: FedBounce, now: float, fx: Effects
    ) -> None:
        recipient = f"{body.to}@{origin}"
        row = conn.execute(
            "UPDATE messages SET state = 'dropped', last_error = ? WHERE id = ? AND recipient = ?"
            " AND state IN ('queued', 'forwarded') RETURNING id, sender, kind, question_id",
            (body.reason, body.message_id, recipient),
        ).fetchone()
        if row is None:
            return
        fx.events.append(m.MessageDropped(message_id=row["id"], agent=recipient))
        reason = f"undeliverable: {body.reason}"
        if row["kind"] == "question" and row["question_id"] is not None:
            q = conn.execute(
                "SELECT * FROM questions WHERE id = ? AND state = 'open'", (row["question_id"],)
            ).fetchone()
            if q is not None:
                fx.answered.append(Questions.close(conn, q, "expired", f"[{reason}]", SYSTEM, now))
            return
        if row["sender"] in self._registry.agents or row["sender"] == OPERATOR:
            fx.messages.append(
                insert_message(
                    conn,
                    sender=SYSTEM,
                    recipient=row["sender"],
                    body=f"message #{row['id']} to {recipient} was not delivered: {body.reason}",
                    now=now,
                    in_reply_to=row["id"],
                    thread=None,
                    kind="system",
                )
            )

    def _announce_effects(self, fx: Effects) -> None:
        self._bus.publish_all(fx.events)
        for q, msg in fx.answered:
            self._questions.announce_answer(q, msg)
        self._broker.published(fx.messages)
        if fx.enqueued:
            self.poke()

    # ---------------------------------------------------------------- statuses

    async def _receive_status(self, batch: list[Incoming]) -> tuple[list[Incoming], list[Incoming]]:
        acks: list[Incoming] = []
        terms: list[Incoming] = []
        statuses: list[HiveStatus] = []
        prefix = f"{self._ns}.status."
        for item in batch:
            try:
                status = decode_status(item.data)
            except EnvelopeError as exc:
                self._reject(item, str(exc))
                terms.append(item)
                continue
            if item.subject != prefix + status.hive:
                self._reject(item, f"status of {status.hive!r} on the wrong subject")
                terms.append(item)
                continue
            acks.append(item)
            if status.hive != self.hive:
                statuses.append(status)
        if not statuses:
            return acks, terms
        heard = self._now()

        def write(conn: sqlite3.Connection) -> list[HiveStatus]:
            applied = []
            for st in statuses:
                known = conn.execute(
                    "SELECT status_at FROM remote_hives WHERE hive = ?", (st.hive,)
                ).fetchone()
                if known is not None and known[0] >= st.at:
                    continue  # an older status, delivered again after a newer one
                conn.execute(
                    "INSERT INTO remote_hives (hive, epoch, status_at, heard_at) VALUES (?, ?, ?, ?)"
                    " ON CONFLICT (hive) DO UPDATE SET epoch = excluded.epoch,"
                    " status_at = excluded.status_at, heard_at = excluded.heard_at",
                    (st.hive, st.epoch, st.at, heard),
                )
                conn.execute("DELETE FROM remote_agents WHERE hive = ?", (st.hive,))
                conn.executemany(
                    "INSERT INTO remote_agents (hive, name, role, model, runtime, running,"
                    " container, status_text, status_set_at, queued)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [
                        (
                            st.hive,
                            a.name,
                            a.role,
                            a.model,
                            a.runtime,
                            int(a.running),
                            a.container,
                            a.status_text,
                            a.status_set_at,
                            a.queued,
                        )
                        for a in st.agents
                    ],
                )
                applied.append(st)
            return applied

        try:
            applied = await self._store.write(write)
        except Exception:
            log.exception("federation: could not store %d status(es)", len(statuses))
            return [], terms
        for st in applied:
            self.directory[st.hive] = {a.name for a in st.agents}
            rows = [
                m.RemoteAgentRow(
                    address=f"{a.name}@{st.hive}",
                    hive=st.hive,
                    name=a.name,
                    role=a.role,
                    model=a.model,
                    runtime=a.runtime,
                    running=a.running,
                    container=a.container,
                    status_text=a.status_text,
                    status_set_at=a.status_set_at,
                    queued=a.queued,
                    heard_at=heard,
                )
                for a in st.agents
            ]
            self._bus.publish(m.RemoteAgentsChanged(hive=st.hive, agents=rows))
        return acks, terms

    async def _announce(self, loop: AsyncioLoop, link: NatsLink) -> None:
        """Publish this hive's roster on change (debounced) and every `status_interval_seconds`."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._watch_roster)
            failures = 0
            while True:
                self._status_poke = trio.Event()
                try:
                    data = await self._status_bytes()
                    subject = f"{self._ns}.status.{self.hive}"
                    await loop.call(partial(link.publish_status, subject, data))
                    failures = 0
                    wait = self.settings.status_interval_seconds
                except LinkError as exc:
                    if self.link == "connected":
                        log.warning("federation: %s", exc)
                    wait = self._backoff(failures)
                    failures += 1
                with trio.move_on_after(wait):
                    await self._status_poke.wait()
                    await trio.sleep(STATUS_DEBOUNCE)

    async def _watch_roster(self) -> None:
        while True:
            sub, _ = self._bus.subscribe(STATUS_KINDS, None)
            try:
                async for _event in sub.recv:
                    self._status_poke.set()
            finally:
                sub.close()

    async def _status_bytes(self) -> bytes:
        rows = await self._registry.rows()
        status = HiveStatus(
            hive=self.hive,
            epoch=self.epoch,
            at=self._now(),
            agents=[
                RemoteAgent(
                    name=r.name,
                    role=r.role,
                    model=r.active_model or r.model,
                    runtime=r.runtime,
                    running=r.running,
                    container=r.container,
                    status_text=r.status_text[:500],
                    status_set_at=r.status_set_at,
                    queued=r.queued,
                )
                for r in rows
            ],
        )
        return encode(status)

    async def _prune_inbox(self) -> None:
        cutoff = self._now() - INBOX_KEEP_DAYS * 86400
        await self._store.write(
            lambda c: c.execute("DELETE FROM federation_inbox WHERE received_at < ?", (cutoff,)),
            background=True,
        )
