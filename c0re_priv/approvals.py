"""Approvals: the manager asks, the operator decides, the daemon carries it out.

A request of the manager (`spawn`, `init_config`, `apply_commit`, `update_meta_inputs`)
becomes a `pending` row with everything the decision rests on fixed at once: an
apply_commit's commit is resolved and tagged `approval-<id>` before anyone sees the row, so
moving the manager's branch later cannot change what is approved, and the diff shown is the
one that will be deployed. `Approve` and `Deny` resolve a row exactly once (a check-and-set
inside one write transaction: a second decision is `conflict`). One deployer task in the
daemon's nursery carries out approved rows, one at a time, so two deploys never interleave
and a caller that hangs up does not cut one short; each ends `approved` or `failed`. Every
change publishes `ApprovalAdded` / `ApprovalResolved`, and the requester hears every outcome
as a `system` message. The work itself is `agent_configs`' and `meta_inputs`'; this module
never runs git or touches a container.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from dataclasses import dataclass, field
from typing import Any

import msgspec
import trio

from protocol import messages as m

from . import meta_inputs
from .agent_configs import AgentConfigs, DeployFailed
from .broker import SYSTEM, Broker
from .config import HiveSettings
from .errors import Fail, storage_full
from .events import EventBus
from .meta_repo import GitError
from .registry import Registry
from .store import Store

log = logging.getLogger(__name__)
DEPLOYER_START_WAIT = 60.0
"""How long an approval made while the daemon starts waits for the deployer."""
RECENT_RESOLVED = 10
PENDING_SHOWN = 100


def _row(r: sqlite3.Row) -> m.ApprovalRow:
    return m.ApprovalRow(
        id=r["id"],
        agent=r["agent"],
        kind=r["kind"],
        description=r["description"],
        requested_by=r["requested_by"],
        requested_at=r["requested_at"],
        status=r["status"],
        resolved_at=r["resolved_at"],
        note=r["note"],
        outcome=r["outcome"],
        ref=r["ref"],
        sha=r["sha"],
    )


@dataclass
class _Job:
    id: int
    done: trio.Event = field(default_factory=trio.Event)


class Approvals:
    """The manager's requests and the operator's decisions; a deployer task carries out what
    is approved, one at a time, through the configs service."""

    def __init__(
        self,
        store: Store,
        bus: EventBus,
        registry: Registry,
        broker: Broker,
        configs: AgentConfigs,
        settings: HiveSettings,
    ) -> None:
        self.store = store
        self.bus = bus
        self.registry = registry
        self.broker = broker
        self.configs = configs
        self.settings = settings
        self._send, self._recv = trio.open_memory_channel[_Job](256)
        self.deploying = False
        """True while the deployer task runs (approving needs it)."""
        self._deployer_started = trio.Event()

    # ---------------------------------------------------------------- reads

    async def recent(self, status: m.ApprovalStatus | None, limit: int) -> list[m.ApprovalRow]:
        def read(c: sqlite3.Connection) -> list[m.ApprovalRow]:
            if status is None:
                rows = c.execute("SELECT * FROM approvals ORDER BY id DESC LIMIT ?", (limit,))
            else:
                rows = c.execute(
                    "SELECT * FROM approvals WHERE status = ? ORDER BY id DESC LIMIT ?",
                    (status, limit),
                )
            return [_row(r) for r in rows]

        return await self.store.read(read)

    async def for_dashboard(self) -> list[m.ApprovalRow]:
        """Pending ones oldest first, then the most recently resolved."""

        def read(c: sqlite3.Connection) -> list[m.ApprovalRow]:
            pending = c.execute(
                "SELECT * FROM approvals WHERE status = 'pending' ORDER BY id LIMIT ?",
                (PENDING_SHOWN,),
            ).fetchall()
            resolved = c.execute(
                "SELECT * FROM approvals WHERE status != 'pending' ORDER BY id DESC LIMIT ?",
                (RECENT_RESOLVED,),
            ).fetchall()
            return [_row(r) for r in (*pending, *resolved)]

        return await self.store.read(read)

    async def get(self, id: int) -> tuple[m.ApprovalRow, str]:
        r = await self.store.read(
            lambda c: c.execute("SELECT * FROM approvals WHERE id = ?", (id,)).fetchone()
        )
        if r is None:
            raise Fail("not_found", f"no approval #{id}")
        return _row(r), r["diff"]

    # ---------------------------------------------------------------- the manager's requests

    async def _add(
        self,
        by: str,
        agent: str,
        kind: m.ApprovalKind,
        description: str,
        diff: str,
        *,
        ref: str | None = None,
        sha: str | None = None,
        base: str | None = None,
        payload: dict[str, Any] | None = None,
        unique: bool = False,
    ) -> m.ApprovalRow:
        """Insert a pending row (`unique`: refused while one of this kind for `agent` waits)."""
        now = time.time()

        def insert(c: sqlite3.Connection) -> sqlite3.Row | None:
            if (
                unique
                and c.execute(
                    "SELECT 1 FROM approvals WHERE kind = ? AND agent = ? AND status = 'pending'",
                    (kind, agent),
                ).fetchone()
            ):
                return None
            cur = c.execute(
                "INSERT INTO approvals (agent, kind, description, requested_by, requested_at,"
                " ref, sha, base_sha, diff, payload) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    agent,
                    kind,
                    description,
                    by,
                    now,
                    ref,
                    sha,
                    base,
                    diff,
                    json.dumps(payload) if payload is not None else None,
                ),
            )
            row: sqlite3.Row = c.execute(
                "SELECT * FROM approvals WHERE id = ?", (cur.lastrowid,)
            ).fetchone()
            return row

        r = await self.store.write(insert)
        if r is None:
            raise Fail("conflict", f"a {kind} approval for {agent!r} is already pending")
        row = _row(r)
        if sha is not None:
            try:
                await self.configs.repo.tag(f"approval-{row.id}", sha)
            except GitError as exc:
                await self._finish(row.id, "failed", f"could not pin {sha[:12]}: {exc}")
                raise Fail("internal", f"could not pin {sha[:12]}: {exc}") from exc
        self.bus.publish(m.ApprovalAdded(approval=row))
        return row

    async def request_spawn(self, by: str, req: m.RequestSpawn) -> m.ApprovalRow:
        cfg, _, diff = await self.configs.spawn_preview(by, req)
        what = f"spawn {req.name} ({cfg.runtime}{', ' + cfg.model if cfg.model else ''})"
        description = what + (f": {req.role_description}" if req.role_description else "")
        payload = msgspec.to_builtins(req)
        return await self._add(
            by, req.name, "spawn", description, diff, payload=payload, unique=True
        )

    async def request_init_config(self, by: str, name: str) -> m.ApprovalRow:
        _, diff = await self.configs.init_preview(by, name)
        description = f"create a config template agents/{name}/agent.toml to edit before spawning"
        return await self._add(by, name, "init_config", description, diff, unique=True)

    async def request_apply_commit(self, by: str, agent: str, ref: str) -> m.ApprovalRow:
        prepared = await self.configs.prepare_apply(agent, ref)
        return await self._add(
            by,
            agent,
            "apply_commit",
            prepared.description,
            prepared.diff,
            ref=ref,
            sha=prepared.sha,
            base=prepared.base,
        )

    async def request_update_meta_inputs(self, by: str, names: list[str] | None) -> m.ApprovalRow:
        if (why := meta_inputs.unavailable(self.configs, self.settings)) is not None:
            raise Fail("invalid", why)
        which = ", ".join(names) if names else "every input"
        return await self._add(
            by,
            "meta",
            "update_meta_inputs",
            f"update the meta repo's pinned inputs: {which}",
            "",
            payload={"names": names},
        )

    async def cancel(self, by: str, id: int) -> m.ApprovalRow:
        return await self._resolve(id, "cancelled", None, requester=by)

    # ---------------------------------------------------------------- the operator's decision

    async def approve(self, id: int, note: str | None) -> m.ApprovalRow:
        """Resolve `id` as approved and wait until the deployer has carried it out."""
        if not self.deploying and not self._deployer_started.is_set():
            # the daemon is still starting (its sockets open before the deployer)
            with trio.move_on_after(DEPLOYER_START_WAIT):
                await self._deployer_started.wait()
        if not self.deploying:
            raise Fail("unavailable", "the deployer is not running")
        await self._resolve(id, "approved", note)
        job = _Job(id)
        with trio.CancelScope(shield=True):
            await self._send.send(job)
        await job.done.wait()
        row, _ = await self.get(id)
        return row

    async def deny(self, id: int, note: str | None) -> m.ApprovalRow:
        row = await self._resolve(id, "denied", note)
        await self._tell(row)
        return row

    async def _resolve(
        self, id: int, status: m.ApprovalStatus, note: str | None, requester: str | None = None
    ) -> m.ApprovalRow:
        """pending → `status`, exactly once; with `requester`, only that agent's own rows."""
        now = time.time()

        def resolve(c: sqlite3.Connection) -> tuple[sqlite3.Row | None, str | None]:
            r = c.execute("SELECT * FROM approvals WHERE id = ?", (id,)).fetchone()
            if r is None or (requester is not None and r["requested_by"] != requester):
                return None, None
            if r["status"] != "pending":
                return r, r["status"]
            c.execute(
                "UPDATE approvals SET status = ?, resolved_at = ?, note = ?"
                " WHERE id = ? AND status = 'pending'",
                (status, now, note, id),
            )
            return c.execute("SELECT * FROM approvals WHERE id = ?", (id,)).fetchone(), None

        r, was = await self.store.write(resolve)
        if r is None:
            raise Fail("not_found", f"no approval #{id}" + (" of yours" if requester else ""))
        if was is not None:
            raise Fail("conflict", f"approval #{id} is {was} already; it can be resolved once")
        row = _row(r)
        self.bus.publish(m.ApprovalResolved(approval=row))
        return row

    async def _finish(self, id: int, status: m.ApprovalStatus, outcome: str) -> m.ApprovalRow:
        def write(c: sqlite3.Connection) -> sqlite3.Row:
            c.execute(
                "UPDATE approvals SET status = ?, outcome = ?, resolved_at = coalesce(resolved_at, ?)"
                " WHERE id = ?",
                (status, outcome, time.time(), id),
            )
            row: sqlite3.Row = c.execute("SELECT * FROM approvals WHERE id = ?", (id,)).fetchone()
            return row

        # the deployer must record what it did even on a full disk, and must not end there
        return _row(await self.store.write_when_space(write, "approvals"))

    # ---------------------------------------------------------------- carrying out

    async def run_deployer(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Carry out approved rows one at a time until cancelled.

        A row left `approved` with no outcome by an earlier daemon (it stopped mid-deploy) is
        marked `failed` at start: what it did is unknown, so it is not silently redone.
        """
        stale = await self.store.read(
            lambda c: [
                r["id"]
                for r in c.execute(
                    "SELECT id FROM approvals WHERE status = 'approved' AND outcome = ''"
                )
            ]
        )
        for id in stale:
            row = await self._finish(
                id, "failed", "the daemon stopped before this was carried out; ask again"
            )
            self.bus.publish(m.ApprovalResolved(approval=row))
        self.deploying = True
        self._deployer_started.set()
        task_status.started()
        try:
            async for job in self._recv:
                try:
                    await self._carry_out(job.id)
                finally:
                    job.done.set()
        finally:
            self.deploying = False

    async def _carry_out(self, id: int) -> None:
        r = await self.store.read(
            lambda c: c.execute("SELECT * FROM approvals WHERE id = ?", (id,)).fetchone()
        )
        row = _row(r)
        payload = json.loads(r["payload"]) if r["payload"] else {}
        configs = self.configs
        status: m.ApprovalStatus = "approved"
        try:
            match row.kind:
                case "apply_commit":
                    assert row.sha is not None
                    outcome = await configs.apply(row.agent, row.sha)
                case "spawn":
                    req = msgspec.convert(payload, m.RequestSpawn)
                    outcome = await configs.spawn(row.requested_by, req)
                case "init_config":
                    outcome = await configs.init_config(row.requested_by, row.agent)
                case "update_meta_inputs":
                    outcome = (
                        await meta_inputs.update(
                            self.configs, self.settings, self.bus, payload.get("names")
                        )
                    ).note
        except DeployFailed as exc:
            status, outcome = "failed", str(exc)
        except (Fail, GitError) as exc:
            status, outcome = "failed", exc.message if isinstance(exc, Fail) else str(exc)
        except Exception as exc:
            # a bug in one deploy must not stop the deployer (and with it every later approval)
            if (full := storage_full(exc)) is not None:
                log.warning(
                    "approval #%d (%s %s) failed: %s", id, row.kind, row.agent, full.message
                )
                status, outcome = "failed", full.message
            else:
                log.exception("approval #%d (%s %s) failed", id, row.kind, row.agent)
                status, outcome = (
                    "failed",
                    f"internal error ({type(exc).__name__}); see the daemon log",
                )
        done = await self._finish(id, status, outcome)
        self.bus.publish(m.ApprovalResolved(approval=done))
        try:
            await self._tell(done)
        except Exception as exc:
            if (full := storage_full(exc)) is None:
                raise
            log.warning("approval #%d: its requester was not told: %s", id, full.message)

    async def _tell(self, row: m.ApprovalRow) -> None:
        """The requester hears the outcome as a `system` message (unless it is gone)."""
        if row.requested_by not in self.registry.agents:
            return
        what = f"approval #{row.id} ({row.kind} {row.agent})"
        note = f" Operator's note: {row.note}" if row.note else ""
        if row.status == "approved":
            text = f"{what} was approved and carried out: {row.outcome}{note}"
        elif row.status == "denied":
            text = (
                f"{what} was denied by the operator: {row.note or 'no reason given'}. "
                "Nothing was changed."
            )
        else:
            text = f"{what} was approved but failed: {row.outcome}{note}"
        await self.broker.send(SYSTEM, row.requested_by, text)
