"""Budgets: limits on tokens and cost that warn the operator and pause agents by themselves.

Usage is what the turns themselves reported (`ReportTurn`, the `turns` table): tokens are
input + output tokens, cost is the runtime's USD figure. A day is rolling (the last 24 hours);
totals come from `usage_totals`, which a trigger keeps in the same transaction as each turn.
Limits apply per agent (its own in `[budget.agents.<name>]`, else `[budget.each_agent]`) and
to the hive as a whole (`[budget.hive]`); the operator changes them at run time (`SetBudget`,
kept in `budget_limits`, over hive.toml's).

After each reported turn the agent's limits and the hive's are checked, in one transaction
with what they change. At `warn_fraction` of a limit the operator is warned (an alert, an
event and a `system` message); at the limit the agent is held (every agent but the managers,
for a hive limit), with the reason, and the operator is told the same way. A hold is sticky:
usage falling back under a rolling limit does not lift it. Only the operator does, by
changing limits (every hold is checked again: one no longer justified is released) or by
resuming the agent (`SetPaused{paused=false}`), which lets it go on past the limits it is
over now, until they change or it falls back under them. A running turn is never cut short
by its budget: its cost is already spent, and a turn is only counted once it has ended.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import msgspec
import trio

from protocol.messages import (
    BUDGET_KEYS,
    AgentHeld,
    AgentReleased,
    Budget,
    BudgetAlerted,
    BudgetAlertRow,
    BudgetChanged,
    BudgetKey,
    BudgetLimitRow,
    BudgetLimits,
    BudgetScope,
    MessageRow,
    SetBudget,
    UsageRow,
)

from .broker import OPERATOR, SYSTEM, Broker, insert_message
from .config import BudgetSettings
from .errors import Fail
from .events import EventBus
from .holds import Holds
from .registry import Registry
from .store import Store

DAY = 86400.0
ALERTS_SHOWN = 200
Level = Literal["none", "warn", "limit"]
Scope = tuple[Literal["hive", "agent"], str | None]
"""Whose usage a limit is measured against: the hive's, or one agent's."""
LABELS: dict[BudgetKey, str] = {
    "tokens_per_day": "tokens in the last 24 hours",
    "tokens_total": "tokens in total",
    "cost_per_day_usd": "cost in the last 24 hours",
    "cost_total_usd": "cost in total",
}


def amount(key: str, value: float) -> str:
    return f"${value:,.2f}" if key.startswith("cost") else f"{int(value):,} tokens"


def who(scope: Scope) -> str:
    return "the hive" if scope[0] == "hive" else f"{scope[1]}"


@dataclass
class Usage:
    turns_day: int = 0
    tokens_day: int = 0
    cost_day: float = 0.0
    turns_total: int = 0
    tokens_total: int = 0
    cost_total: float = 0.0

    def of(self, key: BudgetKey) -> float:
        return {
            "tokens_per_day": self.tokens_day,
            "tokens_total": self.tokens_total,
            "cost_per_day_usd": self.cost_day,
            "cost_total_usd": self.cost_total,
        }[key]


def level_of(used: float, limit: float | None, warn: float) -> Level:
    """`limit` at or over a limit, `warn` at `warn` of it; nothing spent is never a crossing."""
    if limit is None or used <= 0:
        return "none"
    if used >= limit:
        return "limit"
    if used >= warn * limit:
        return "warn"
    return "none"


def usage_of(conn: sqlite3.Connection, agent: str | None, since: float) -> Usage:
    """One agent's usage (or, with `None`, the hive's), from the turns it reported."""
    if agent is None:
        day = conn.execute(
            "SELECT count(*), coalesce(sum(input_tokens + output_tokens), 0),"
            " coalesce(sum(cost_usd), 0) FROM turns WHERE at >= ?",
            (since,),
        ).fetchone()
        total = conn.execute(
            "SELECT coalesce(sum(turns), 0), coalesce(sum(tokens), 0), coalesce(sum(cost_usd), 0)"
            " FROM usage_totals"
        ).fetchone()
    else:
        day = conn.execute(
            "SELECT count(*), coalesce(sum(input_tokens + output_tokens), 0),"
            " coalesce(sum(cost_usd), 0) FROM turns WHERE at >= ? AND agent = ?",
            (since, agent),
        ).fetchone()
        total = conn.execute(
            "SELECT turns, tokens, cost_usd FROM usage_totals WHERE agent = ?", (agent,)
        ).fetchone() or (0, 0, 0.0)
    return Usage(day[0], day[1], day[2], total[0], total[1], total[2])


def usage_by_agent(conn: sqlite3.Connection, since: float) -> dict[str, Usage]:
    out: dict[str, Usage] = {}
    for agent, turns, tokens, cost in conn.execute(
        "SELECT agent, turns, tokens, cost_usd FROM usage_totals"
    ):
        out[agent] = Usage(turns_total=turns, tokens_total=tokens, cost_total=cost)
    for agent, turns, tokens, cost in conn.execute(
        "SELECT agent, count(*), sum(input_tokens + output_tokens), sum(cost_usd) FROM turns"
        " WHERE at >= ? GROUP BY agent",
        (since,),
    ):
        u = out.setdefault(agent, Usage())
        u.turns_day, u.tokens_day, u.cost_day = turns, tokens, cost
    return out


def alert_row(r: sqlite3.Row) -> BudgetAlertRow:
    return BudgetAlertRow(
        id=r["id"],
        scope=r["scope"],
        agent=r["agent"] or None,
        key=r["key"],
        level=r["level"],
        used=r["used"],
        limit=r["limit_value"],
        at=r["at"],
        text=r["text"],
        state=r["state"],
    )


@dataclass
class Effects:
    """What a check changed, published once its transaction has committed."""

    events: list[AgentHeld | AgentReleased | BudgetAlerted] = field(default_factory=list)
    messages: list[MessageRow] = field(default_factory=list)
    released: list[str] = field(default_factory=list)
    holds: dict[str, str] = field(default_factory=dict)
    """Every budget hold after the check."""


class Budgets:
    def __init__(
        self,
        store: Store,
        bus: EventBus,
        registry: Registry,
        broker: Broker,
        holds: Holds,
        settings: BudgetSettings,
        now: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._bus = bus
        self._registry = registry
        self._broker = broker
        self._holds = holds
        self._settings = settings
        self._now = now
        self._lock = trio.Lock()
        """Checks run one at a time, so the holds in memory follow the commits' order."""
        self._operator: dict[tuple[str, str, str], float | None] = {}
        """Limits the operator set at run time: (scope, agent or "", key) → value."""

    async def load(self) -> None:
        def read(c: sqlite3.Connection) -> tuple[list[sqlite3.Row], list[sqlite3.Row]]:
            limits = c.execute("SELECT scope, agent, key, value FROM budget_limits").fetchall()
            holds = c.execute("SELECT agent, reason FROM budget_holds").fetchall()
            return limits, holds

        limits, holds = await self._store.read(read)
        self._operator = {(r["scope"], r["agent"], r["key"]): r["value"] for r in limits}
        self._holds.budget = {r["agent"]: r["reason"] for r in holds}

    # ---------------------------------------------------------------- limits

    def warn_fraction(self) -> float:
        value = self._operator.get(("hive", "", "warn_fraction"))
        return value if value is not None else self._settings.warn_fraction

    def limit(self, scope: Scope, key: BudgetKey) -> float | None:
        """The limit in force: the operator's, else hive.toml's (an agent's own, then each
        agent's)."""
        kind, agent = scope
        if kind == "hive":
            if ("hive", "", key) in self._operator:
                return self._operator[("hive", "", key)]
            value: float | None = getattr(self._settings.hive, key)
            return value
        assert agent is not None
        if ("agent", agent, key) in self._operator:
            return self._operator[("agent", agent, key)]
        own = self._settings.agents.get(agent)
        if own is not None and getattr(own, key) is not None:
            value = getattr(own, key)
            return value
        if ("each_agent", "", key) in self._operator:
            return self._operator[("each_agent", "", key)]
        value = getattr(self._settings.each_agent, key)
        return value

    def limits(self, scope: Scope) -> BudgetLimits:
        values = {key: self.limit(scope, key) for key in BUDGET_KEYS}
        for key in ("tokens_per_day", "tokens_total"):
            if values[key] is not None:
                values[key] = int(values[key])  # type: ignore[arg-type]
        return msgspec.convert(values, BudgetLimits)

    def limit_rows(self) -> list[BudgetLimitRow]:
        rows: list[BudgetLimitRow] = []

        def add(scope: BudgetScope, agent: str | None, limits: BudgetLimits) -> None:
            for key in BUDGET_KEYS:
                if (scope, agent or "", key) in self._operator:
                    continue
                value = getattr(limits, key)
                if value is not None:
                    rows.append(
                        BudgetLimitRow(
                            scope=scope, agent=agent, key=key, value=value, source="hive.toml"
                        )
                    )

        add("hive", None, self._settings.hive)
        add("each_agent", None, self._settings.each_agent)
        for name, limits in sorted(self._settings.agents.items()):
            add("agent", name, limits)
        for (scope, agent, key), value in sorted(self._operator.items()):
            if key in BUDGET_KEYS:
                rows.append(
                    BudgetLimitRow(
                        scope=scope,  # type: ignore[arg-type]
                        agent=agent or None,
                        key=key,
                        value=value,
                        source="operator",
                    )
                )
        order = {"hive": 0, "each_agent": 1, "agent": 2}
        rows.sort(key=lambda r: (order[r.scope], r.agent or "", BUDGET_KEYS.index(r.key)))
        return rows

    # ---------------------------------------------------------------- reading

    def _usage_row(self, scope: Scope, u: Usage) -> UsageRow:
        limits = self.limits(scope)
        fractions = [
            u.of(key) / value
            for key in BUDGET_KEYS
            if (value := getattr(limits, key)) is not None and value > 0
        ]
        fractions += [1.0 for key in BUDGET_KEYS if getattr(limits, key) == 0 and u.of(key) > 0]
        used = max(fractions) if fractions else None
        warn = self.warn_fraction()
        levels = {level_of(u.of(key), getattr(limits, key), warn) for key in BUDGET_KEYS}
        state: Literal["ok", "warn", "over"] = (
            "over" if "limit" in levels else "warn" if "warn" in levels else "ok"
        )
        return UsageRow(
            scope=scope[0],
            agent=scope[1],
            turns_day=u.turns_day,
            tokens_day=u.tokens_day,
            cost_day_usd=u.cost_day,
            turns_total=u.turns_total,
            tokens_total=u.tokens_total,
            cost_total_usd=u.cost_total,
            limits=limits,
            used=used,
            state=state,
            held=self._holds.budget.get(scope[1] or "", "") if scope[0] == "agent" else "",
        )

    def usage_rows(self, conn: sqlite3.Connection) -> list[UsageRow]:
        """The hive, then every registered agent."""
        since = self._now() - DAY
        rows = [self._usage_row(("hive", None), usage_of(conn, None, since))]
        by_agent = usage_by_agent(conn, since)
        for name in self._registry.names():
            rows.append(self._usage_row(("agent", name), by_agent.get(name, Usage())))
        return rows

    def row_fields(self, conn: sqlite3.Connection) -> dict[str, dict[str, object]]:
        """The agent rows' usage fields (`Registry.row_counts`)."""
        out: dict[str, dict[str, object]] = {}
        for row in self.usage_rows(conn)[1:]:
            assert row.agent is not None
            out[row.agent] = {
                "tokens_today": row.tokens_day,
                "cost_today_usd": row.cost_day_usd,
                "tokens_total": row.tokens_total,
                "cost_total_usd": row.cost_total_usd,
                "budget_used": row.used,
            }
        return out

    async def budget(self) -> Budget:
        def read(c: sqlite3.Connection) -> tuple[list[UsageRow], list[BudgetAlertRow]]:
            alerts = c.execute(
                "SELECT * FROM budget_alerts WHERE state = 'open' ORDER BY id DESC LIMIT ?",
                (ALERTS_SHOWN,),
            ).fetchall()
            return self.usage_rows(c), [alert_row(r) for r in alerts]

        usage, alerts = await self._store.read(read)
        return Budget(
            warn_fraction=self.warn_fraction(),
            limits=self.limit_rows(),
            usage=usage,
            alerts=alerts,
        )

    async def open_alerts(self) -> list[BudgetAlertRow]:
        rows = await self._store.read(
            lambda c: c.execute(
                "SELECT * FROM budget_alerts WHERE state = 'open' ORDER BY id DESC LIMIT ?",
                (ALERTS_SHOWN,),
            ).fetchall()
        )
        return [alert_row(r) for r in rows]

    async def hold_times(self) -> dict[str, float]:
        rows = await self._store.read(
            lambda c: c.execute("SELECT agent, at FROM budget_holds").fetchall()
        )
        return {r["agent"]: r["at"] for r in rows}

    # ---------------------------------------------------------------- checking

    async def after_turn(self, agent: str) -> None:
        """A turn of `agent` was recorded: check its limits and the hive's."""
        await self._check([("agent", agent), ("hive", None)], release=False)

    async def check_all(self) -> None:
        """Every limit of the hive and of every agent, holds released where no longer due."""
        scopes: list[Scope] = [("hive", None), *(("agent", n) for n in self._registry.names())]
        await self._check(scopes, release=True)

    async def _check(self, scopes: list[Scope], release: bool) -> None:
        async with self._lock:
            fx = await self._store.write(lambda c: self._evaluate(c, scopes, release))
            self._publish(fx)

    def _publish(self, fx: Effects) -> None:
        self._holds.budget = fx.holds
        for event in fx.events:
            self._bus.publish(event)
        self._broker.published(fx.messages)
        for name in fx.released:
            self._broker.notify(name)

    def _evaluate(self, conn: sqlite3.Connection, scopes: list[Scope], release: bool) -> Effects:
        """Inside one write: alerts for every limit of `scopes`, then the holds they imply."""
        now = self._now()
        since = now - DAY
        warn = self.warn_fraction()
        fx = Effects()
        over: dict[Scope, dict[BudgetKey, float]] = {}
        for scope in scopes:
            usage = usage_of(conn, scope[1], since)
            over[scope] = {}
            for key in BUDGET_KEYS:
                limit = self.limit(scope, key)
                used = usage.of(key)
                level = level_of(used, limit, warn)
                self._alert(conn, scope, key, level, used, limit, now, fx)
                if level == "limit":
                    assert limit is not None
                    over[scope][key] = limit
                else:  # a resume past this limit has served its purpose
                    conn.execute(
                        "DELETE FROM budget_overrides WHERE scope = ? AND key = ?"
                        " AND (? = 'hive' OR agent = ?)",
                        (scope[0], key, scope[0], scope[1] or ""),
                    )
        managers = {n for n, r in self._registry.agents.items() if r.role == "manager"}
        hive_over = over.get(("hive", None), {})
        if release:
            affected = set(self._registry.agents)
        else:
            affected = {s[1] for s in scopes if s[0] == "agent" and s[1] is not None}
            if hive_over:
                affected |= set(self._registry.agents) - managers
        held = {
            r["agent"]: r["reason"]
            for r in conn.execute("SELECT agent, reason FROM budget_holds").fetchall()
        }
        for name in sorted(affected):
            if name not in self._registry.agents:
                continue
            reasons = self._reasons(conn, name, over, hive_over if name not in managers else {})
            if reasons and name not in held:
                reason = "; ".join(reasons)
                conn.execute(
                    "INSERT INTO budget_holds (agent, reason, at) VALUES (?, ?, ?)",
                    (name, reason, now),
                )
                held[name] = reason
                fx.events.append(AgentHeld(name=name, hold="budget", reason=reason))
            elif not reasons and name in held and release:
                conn.execute("DELETE FROM budget_holds WHERE agent = ?", (name,))
                del held[name]
                fx.released.append(name)
                fx.events.append(
                    AgentReleased(name=name, hold="budget", reason="its limits allow it again")
                )
        fx.holds = held
        return fx

    def _reasons(
        self,
        conn: sqlite3.Connection,
        name: str,
        over: dict[Scope, dict[BudgetKey, float]],
        hive_over: dict[BudgetKey, float],
    ) -> list[str]:
        """Why `name` must be held: the limits it is over that the operator has not let it
        pass (an override for the same limit value)."""
        passed = {
            (r["scope"], r["key"]): r["limit_value"]
            for r in conn.execute(
                "SELECT scope, key, limit_value FROM budget_overrides WHERE agent = ?", (name,)
            )
        }
        own = over.get(("agent", name))
        if own is None:  # not checked now: its own limits as they stand
            own = {}
            usage = usage_of(conn, name, self._now() - DAY)
            for key in BUDGET_KEYS:
                limit = self.limit(("agent", name), key)
                if level_of(usage.of(key), limit, 1.0) == "limit":
                    assert limit is not None
                    own[key] = limit
        reasons = [
            f"budget: {name} reached its limit of {amount(key, limit)} ({LABELS[key]})"
            for key, limit in own.items()
            if passed.get(("agent", key)) != limit
        ]
        reasons += [
            f"budget: the hive reached its limit of {amount(key, limit)} ({LABELS[key]})"
            for key, limit in hive_over.items()
            if passed.get(("hive", key)) != limit
        ]
        return reasons

    def _alert(
        self,
        conn: sqlite3.Connection,
        scope: Scope,
        key: BudgetKey,
        level: Level,
        used: float,
        limit: float | None,
        now: float,
        fx: Effects,
    ) -> None:
        """Keep one alert per crossed limit: raise it once, clear it once it no longer holds."""
        agent = scope[1] or ""
        current = conn.execute(
            "SELECT * FROM budget_alerts WHERE scope = ? AND agent = ? AND key = ?"
            " AND state != 'cleared' ORDER BY id DESC LIMIT 1",
            (scope[0], agent, key),
        ).fetchone()
        if current is not None:
            if level == current["level"] and limit == current["limit_value"]:
                return
            cleared = conn.execute(
                "UPDATE budget_alerts SET state = 'cleared', closed_at = ? WHERE id = ?"
                " RETURNING *",
                (now, current["id"]),
            ).fetchone()
            fx.events.append(BudgetAlerted(alert=alert_row(cleared)))
        if level == "none" or limit is None:
            return
        text = self._alert_text(scope, key, level, used, limit)
        row = conn.execute(
            "INSERT INTO budget_alerts (scope, agent, key, level, used, limit_value, at, text)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?) RETURNING *",
            (scope[0], agent, key, level, used, limit, now, text),
        ).fetchone()
        fx.events.append(BudgetAlerted(alert=alert_row(row)))
        fx.messages.append(
            insert_message(
                conn, sender=SYSTEM, recipient=OPERATOR, body=text, now=now, kind="system"
            )
        )

    def _alert_text(
        self, scope: Scope, key: BudgetKey, level: Level, used: float, limit: float
    ) -> str:
        spent = f"{amount(key, used)} of {amount(key, limit)} ({LABELS[key]})"
        if level == "warn":
            share = used / limit if limit else 1.0
            return f"budget warning: {who(scope)} has used {share:.0%} of its limit: {spent}."
        if scope[0] == "hive":
            return (
                f"budget: the hive reached its limit: {spent}. Every agent but the managers"
                f" is paused (running turns end first). Raise the limit"
                f" (`hive ctl budget set {key} VALUE`) or resume an agent"
                f" (`hive ctl resume NAME`)."
            )
        return (
            f"budget: {scope[1]} reached its limit: {spent}. It is paused (a running turn ends"
            f" first). Raise the limit (`hive ctl budget set {key} VALUE --agent {scope[1]}`) or resume"
            f" it (`hive ctl resume {scope[1]}`)."
        )

    # ---------------------------------------------------------------- the operator

    async def set(self, req: SetBudget) -> None:
        """Change limits (`SetBudget`), then check every limit and hold again."""
        if (req.scope == "agent") != (req.agent is not None):
            raise Fail("invalid", "name the agent for scope 'agent', and only for it")
        if req.agent is not None:
            self._registry.get(req.agent)
        if not (req.limits or req.reset or req.warn_fraction is not None):
            raise Fail("invalid", "nothing to change: give limits, reset or warn_fraction")
        agent = req.agent or ""
        now = self._now()
        for key, value in req.limits.items():
            if key.startswith("tokens") and value is not None and value != int(value):
                raise Fail("invalid", f"{key} is a whole number of tokens, not {value}")

        def write(c: sqlite3.Connection) -> None:
            for key, value in req.limits.items():
                c.execute(
                    "INSERT INTO budget_limits (scope, agent, key, value, set_at)"
                    " VALUES (?, ?, ?, ?, ?) ON CONFLICT (scope, agent, key)"
                    " DO UPDATE SET value = excluded.value, set_at = excluded.set_at",
                    (req.scope, agent, key, value, now),
                )
            for key in req.reset:
                c.execute(
                    "DELETE FROM budget_limits WHERE scope = ? AND agent = ? AND key = ?",
                    (req.scope, agent, key),
                )
            if req.warn_fraction is not None:
                c.execute(
                    "INSERT INTO budget_limits (scope, agent, key, value, set_at)"
                    " VALUES ('hive', '', 'warn_fraction', ?, ?) ON CONFLICT (scope, agent, key)"
                    " DO UPDATE SET value = excluded.value, set_at = excluded.set_at",
                    (req.warn_fraction, now),
                )

        async with self._lock:
            await self._store.write(write)
            for key, value in req.limits.items():
                self._operator[(req.scope, agent, key)] = value
            for key in req.reset:
                self._operator.pop((req.scope, agent, key), None)
            if req.warn_fraction is not None:
                self._operator[("hive", "", "warn_fraction")] = req.warn_fraction
        self._bus.publish(BudgetChanged(scope=req.scope, agent=req.agent))
        await self.check_all()

    async def resume(self, name: str) -> None:
        """The operator resumes `name`: it goes on past the limits it is over now (until they
        change, or it falls back under them), and its budget hold is lifted."""
        self._registry.get(name)
        now = self._now()
        is_manager = self._registry.agents[name].role == "manager"

        def write(c: sqlite3.Connection) -> bool:
            since = now - DAY
            scopes: list[Scope] = [("agent", name)]
            if not is_manager:
                scopes.append(("hive", None))
            for scope in scopes:
                usage = usage_of(c, scope[1], since)
                for key in BUDGET_KEYS:
                    limit = self.limit(scope, key)
                    if level_of(usage.of(key), limit, 1.0) == "limit":
                        c.execute(
                            "INSERT INTO budget_overrides (agent, scope, key, limit_value, at)"
                            " VALUES (?, ?, ?, ?, ?) ON CONFLICT (agent, scope, key)"
                            " DO UPDATE SET limit_value = excluded.limit_value, at = excluded.at",
                            (name, scope[0], key, limit, now),
                        )
            return (
                c.execute(
                    "DELETE FROM budget_holds WHERE agent = ? RETURNING 1", (name,)
                ).fetchone()
                is not None
            )

        async with self._lock:
            was_held = await self._store.write(write)
            self._holds.budget.pop(name, None)
        if was_held:
            self._bus.publish(
                AgentReleased(name=name, hold="budget", reason="resumed by the operator")
            )
            self._broker.notify(name)

    async def dismiss(self, alert_id: int) -> None:
        row = await self._store.write(
            lambda c: c.execute(
                "UPDATE budget_alerts SET state = 'dismissed', closed_at = ?"
                " WHERE id = ? AND state = 'open' RETURNING *",
                (self._now(), alert_id),
            ).fetchone()
        )
        if row is None:
            raise Fail("not_found", f"no open budget alert #{alert_id}")
        self._bus.publish(BudgetAlerted(alert=alert_row(row)))
