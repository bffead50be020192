"""The agent registry: who exists, in what role, and what the daemon knows of them right now.

The `agents` table is the record; this class keeps it in memory as well, because the daemon
is its only writer and every request consults it (identity, allowed recipients). Liveness
(`connections`, `last_seen`) is memory only: it describes this boot, not history.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgspec

from protocol.messages import AgentAdded, AgentRemoved, AgentRole, AgentRow, StatusChanged

from .errors import Fail
from .events import EventBus
from .store import Store


@dataclass
class AgentRecord:
    name: str
    role: AgentRole
    model: str
    runtime: str
    allowed_recipients: list[str] | None
    status_text: str
    status_set_at: float | None
    created_at: float
    started_at: float
    last_seen: float | None = None
    connections: int = 0
    uid: int | None = None
    paused: bool = False

    def may_send_to(self, recipient: str) -> bool:
        """`allowed_recipients`: names, `*` (every local agent), `name@hive`, `*@hive`, `*@*`."""
        if recipient == "operator" or self.allowed_recipients is None:
            return True
        allowed = self.allowed_recipients
        if "@" in recipient:  # another hive's: only what names it (docs/federation.md)
            hive = recipient.partition("@")[2]
            return recipient in allowed or f"*@{hive}" in allowed or "*@*" in allowed
        return recipient in allowed or "*" in allowed

    def row(self, queued: int = 0, leased: int = 0) -> AgentRow:
        return AgentRow(
            name=self.name,
            role=self.role,
            model=self.model,
            runtime=self.runtime,
            allowed_recipients=self.allowed_recipients,
            running=self.connections > 0,
            status_text=self.status_text,
            status_set_at=self.status_set_at,
            last_seen=self.last_seen,
            created_at=self.created_at,
            queued=queued,
            leased=leased,
            paused=self.paused,
        )


def _record(row: sqlite3.Row) -> AgentRecord:
    allowed = row["allowed_recipients"]
    return AgentRecord(
        name=row["name"],
        role=row["role"],
        model=row["model"],
        runtime=row["runtime"],
        allowed_recipients=json.loads(allowed) if allowed is not None else None,
        status_text=row["status_text"],
        status_set_at=row["status_set_at"],
        created_at=row["created_at"],
        started_at=row["started_at"],
        uid=row["uid"],
        paused=bool(row["paused"]),
    )


class Registry:
    def __init__(
        self,
        store: Store,
        bus: EventBus,
        row_counts: Callable[[sqlite3.Connection], dict[str, dict[str, Any]]] | None = None,
    ) -> None:
        self._store = store
        self._bus = bus
        self.agents: dict[str, AgentRecord] = {}
        self.row_counts = row_counts
        """Per-agent row fields other services count in sqlite (reminders), by agent name."""
        self.row_extras: Callable[[str], dict[str, Any]] | None = None
        """Fields the container supervisor and the configs add to an agent's row. Set by the
        wiring once the supervisor runs (it needs the services' nursery), never elsewhere."""

    async def load(self) -> None:
        rows = await self._store.read(lambda c: c.execute("SELECT * FROM agents").fetchall())
        self.agents = {row["name"]: _record(row) for row in rows}

    def get(self, name: str) -> AgentRecord:
        try:
            return self.agents[name]
        except KeyError:
            raise Fail("not_found", f"no agent named {name!r}") from None

    def names(self) -> list[str]:
        return sorted(self.agents)

    async def add(
        self,
        name: str,
        role: AgentRole,
        model: str,
        runtime: str,
        allowed_recipients: list[str] | None,
    ) -> AgentRecord:
        if name in ("operator", "system"):
            raise Fail("invalid", f"{name!r} is reserved")
        if name in self.agents:
            raise Fail("conflict", f"agent {name!r} already exists")
        now = time.time()
        record = AgentRecord(
            name=name,
            role=role,
            model=model,
            runtime=runtime,
            allowed_recipients=allowed_recipients,
            status_text="",
            status_set_at=None,
            created_at=now,
            started_at=now,
        )

        def insert(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO agents (name, role, model, runtime, allowed_recipients, created_at,"
                " started_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    name,
                    role,
                    model,
                    runtime,
                    json.dumps(allowed_recipients) if allowed_recipients is not None else None,
                    now,
                    now,
                ),
            )

        try:
            await self._store.write(insert)
        except sqlite3.IntegrityError:
            raise Fail("conflict", f"agent {name!r} already exists") from None
        self.agents[name] = record
        self._bus.publish(AgentAdded(agent=record.row()))
        return record

    async def remove(self, name: str) -> AgentRecord:
        record = self.get(name)
        await self._store.write(lambda c: c.execute("DELETE FROM agents WHERE name = ?", (name,)))
        del self.agents[name]
        self._bus.publish(AgentRemoved(name=name))
        return record

    async def set_config(
        self, name: str, model: str, runtime: str, allowed_recipients: list[str] | None
    ) -> None:
        """The fields of a deployed config that the registry record carries (see `agent_configs`)."""
        record = self.get(name)
        if (record.model, record.runtime, record.allowed_recipients) == (
            model,
            runtime,
            allowed_recipients,
        ):
            return
        allowed = json.dumps(allowed_recipients) if allowed_recipients is not None else None
        await self._store.write(
            lambda c: c.execute(
                "UPDATE agents SET model = ?, runtime = ?, allowed_recipients = ? WHERE name = ?",
                (model, runtime, allowed, name),
            )
        )
        record.model, record.runtime, record.allowed_recipients = model, runtime, allowed_recipients

    async def set_status(self, name: str, text: str) -> None:
        record = self.get(name)
        now = time.time()
        await self._store.write(
            lambda c: c.execute(
                "UPDATE agents SET status_text = ?, status_set_at = ? WHERE name = ?",
                (text, now, name),
            )
        )
        record.status_text, record.status_set_at = text, now
        self._bus.publish(StatusChanged(name=name, text=text))

    def seen(self, name: str) -> None:
        record = self.agents.get(name)
        if record is not None:
            record.last_seen = time.time()

    async def rows(self) -> list[AgentRow]:
        counts = await self._store.read(
            lambda c: c.execute(
                "SELECT recipient, state, count(*) FROM messages"
                " WHERE state IN ('queued', 'leased') GROUP BY recipient, state"
            ).fetchall()
        )
        by_agent: dict[tuple[str, str], int] = {(r[0], r[1]): r[2] for r in counts}
        counted = await self._store.read(self.row_counts) if self.row_counts is not None else {}
        rows = []
        for name, rec in sorted(self.agents.items()):
            row = rec.row(by_agent.get((name, "queued"), 0), by_agent.get((name, "leased"), 0))
            if name in counted:
                row = msgspec.structs.replace(row, **counted[name])
            if self.row_extras is not None:
                row = msgspec.structs.replace(row, **self.row_extras(name))
            rows.append(row)
        return rows

    async def row(self, name: str) -> AgentRow:
        self.get(name)
        return next(r for r in await self.rows() if r.name == name)
