"""`hive ctl estop`, `thaw`, `budget …` and `inbox`: the operator's controls from the terminal.

They talk to the daemon over `admin.sock` like every `hive ctl` command, and print tables
(or, with `--json`, the reply's rows). docs/operating.md, "Operator controls", says what
each one does. `hive ctl stats` without a name (`lifecycle`) prints `usage_table`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from protocol import messages as m

from .common import JsonOut, RunDir, ago, app, call, die, echo, emit, request, table

budget_ctl = typer.Typer(
    help="Spending limits, usage and alerts; without a command, shows them all.",
    invoke_without_command=True,
)
app.add_typer(budget_ctl, name="budget")

AgentOption = Annotated[
    str | None, typer.Option("--agent", help="This agent's own limit (default: the hive's).")
]
EachOption = Annotated[
    bool,
    typer.Option("--each-agent", help="The limit of every agent that has none of its own."),
]


def money(value: float | None) -> str:
    return "-" if value is None else f"${value:,.2f}"


def tokens(value: float | None) -> str:
    return "-" if value is None else f"{int(value):,}"


def fraction(value: float | None) -> str:
    return "-" if value is None else f"{value:.0%}"


# ------------------------------------------------------------------ the emergency stop


def _show_estop(row: m.EstopRow) -> None:
    if row.engaged:
        echo(f"EMERGENCY STOP engaged {ago(row.at)}" + (f": {row.reason}" if row.reason else ""))
        echo(f"  parked:    {', '.join(row.parked) or 'no agent'} (the managers keep running)")
        echo(f"  cancelled: {', '.join(row.cancelled) or 'no turn was running'}")
        if row.park_seconds is not None:
            echo(f"  every cancelled turn ended within {row.park_seconds:.2f}s")
        if row.stopped:
            echo(f"  stopped:   {', '.join(row.stopped)} (their harnesses did not park in time)")
        echo("  `hive ctl thaw` lets them work again")
    else:
        echo(f"thawed {ago(row.thawed_at)}: {', '.join(row.resumed) or 'no agent'} may work")
        if row.stopped:
            echo(f"  started again: {', '.join(row.stopped)}")


@app.command("estop")
def estop(
    reason: Annotated[str, typer.Option(help="Why (shown to whoever looks).")] = "",
    run_dir: RunDir = None,
    as_json: JsonOut = False,
) -> None:
    """EMERGENCY STOP: every agent but the managers stops now (running turns are cancelled,
    their messages stay queued); it lasts, across daemon restarts, until `hive ctl thaw`."""
    req = request(m.EmergencyStop, reason=reason)
    row = call(run_dir, req, m.EstopInfo, timeout=None).estop
    emit(row, as_json, lambda: _show_estop(row))


@app.command("thaw")
def thaw(run_dir: RunDir = None, as_json: JsonOut = False) -> None:
    """Lift the emergency stop: exactly what it stopped works again."""
    row = call(run_dir, m.Thaw(), m.EstopInfo, timeout=None).estop
    emit(row, as_json, lambda: _show_estop(row))


# ------------------------------------------------------------------ budgets


def _scope(agent: str | None, each_agent: bool) -> dict[str, Any]:
    if agent is not None and each_agent:
        die("give --agent NAME or --each-agent, not both")
    if agent is not None:
        return {"scope": "agent", "agent": agent}
    return {"scope": "each_agent" if each_agent else "hive"}


def _limit_text(key: str, value: float | None) -> str:
    if value is None:
        return "no limit"
    return money(value) if key.startswith("cost") else f"{tokens(value)} tokens"


def usagetable(rows: list[m.UsageRow]) -> None:
    def limit(r: m.UsageRow, key: str) -> str:
        value = getattr(r.limits, key)
        return "" if value is None else f" / {_limit_text(key, value)}"

    table(
        [
            [
                "(hive)" if r.scope == "hive" else r.agent or "",
                str(r.turns_day),
                tokens(r.tokens_day) + limit(r, "tokens_per_day"),
                money(r.cost_day_usd) + limit(r, "cost_per_day_usd"),
                tokens(r.tokens_total) + limit(r, "tokens_total"),
                money(r.cost_total_usd) + limit(r, "cost_total_usd"),
                fraction(r.used),
                r.state + (" (paused)" if r.held else ""),
            ]
            for r in rows
        ],
        [
            "WHO",
            "TURNS 24H",
            "TOKENS 24H",
            "COST 24H",
            "TOKENS TOTAL",
            "COST TOTAL",
            "USED",
            "STATE",
        ],
    )


def _show_budget(got: m.Budget) -> None:
    echo(f"warn at {got.warn_fraction:.0%} of a limit; a day is the last 24 hours")
    echo("")
    if got.limits:
        table(
            [
                [
                    "hive"
                    if r.scope == "hive"
                    else "each agent"
                    if r.scope == "each_agent"
                    else r.agent or "",
                    r.key,
                    _limit_text(r.key, r.value),
                    r.source,
                ]
                for r in got.limits
            ],
            ["LIMIT OF", "KEY", "VALUE", "SET IN"],
        )
    else:
        echo("no limits set (hive.toml [budget], or `hive ctl budget set`)")
    echo("")
    usagetable(got.usage)
    if got.alerts:
        echo("")
        table(
            [[str(a.id), a.level, ago(a.at), a.text] for a in got.alerts],
            ["ALERT", "LEVEL", "WHEN", "WHAT"],
        )


@budget_ctl.callback()
def budget(ctx: typer.Context, run_dir: RunDir = None, as_json: JsonOut = False) -> None:
    """Limits, usage (per agent and for the hive) and open alerts."""
    if ctx.invoked_subcommand is not None:
        return
    got = call(run_dir, m.GetBudget(), m.Budget)
    emit(got, as_json, lambda: _show_budget(got))


def _value(text: str) -> float | None:
    if text.lower() in ("none", "unlimited", "-"):
        return None
    try:
        return float(text.replace(",", "").removeprefix("$"))
    except ValueError:
        die(f"{text!r} is not a number (or `none` for no limit)")


@budget_ctl.command("set")
def budget_set(
    key: Annotated[
        str,
        typer.Argument(help="tokens_per_day, tokens_total, cost_per_day_usd or cost_total_usd."),
    ],
    value: Annotated[str, typer.Argument(help="The limit, or `none` for no limit.")],
    agent: AgentOption = None,
    each_agent: EachOption = False,
    run_dir: RunDir = None,
    as_json: JsonOut = False,
) -> None:
    """Set a limit (kept across restarts, over hive.toml's); takes effect at once."""
    req = request(m.SetBudget, **_scope(agent, each_agent), limits={key: _value(value)})
    got = call(run_dir, req, m.Budget)
    who = agent or ("each agent" if each_agent else "the hive")
    emit(got, as_json, lambda: echo(f"{who}: {key} = {_limit_text(key, _value(value))}"))


@budget_ctl.command("reset")
def budget_reset(
    keys: Annotated[list[str], typer.Argument(help="The keys to hand back to hive.toml.")],
    agent: AgentOption = None,
    each_agent: EachOption = False,
    run_dir: RunDir = None,
    as_json: JsonOut = False,
) -> None:
    """Drop limits set with `budget set`: hive.toml's apply again."""
    req = request(m.SetBudget, **_scope(agent, each_agent), reset=keys)
    got = call(run_dir, req, m.Budget)
    emit(got, as_json, lambda: echo(f"reset {', '.join(keys)}: hive.toml's limits apply"))


@budget_ctl.command("warn")
def budget_warn(
    at: Annotated[float, typer.Argument(help="The fraction of a limit to warn at, e.g. 0.8.")],
    run_dir: RunDir = None,
    as_json: JsonOut = False,
) -> None:
    """Warn the operator at this fraction of every limit."""
    req = request(m.SetBudget, scope="hive", warn_fraction=at)
    got = call(run_dir, req, m.Budget)
    emit(got, as_json, lambda: echo(f"warning at {got.warn_fraction:.0%} of a limit"))


@budget_ctl.command("dismiss")
def budget_dismiss(alert_id: int, run_dir: RunDir = None, as_json: JsonOut = False) -> None:
    """Take a budget warning out of the inbox."""
    call(run_dir, request(m.DismissBudgetAlert, id=alert_id), m.Ok)
    emit({"dismissed": alert_id}, as_json, lambda: echo(f"alert #{alert_id} dismissed"))


def show_usage(run_dir: Path | None, as_json: bool) -> None:
    """`hive ctl stats` without a name: every agent's usage against its limits."""
    got = call(run_dir, m.GetBudget(), m.Budget)
    emit(got.usage, as_json, lambda: usagetable(got.usage))


# ------------------------------------------------------------------ the inbox


@app.command("inbox")
def inbox(limit: int = 200, run_dir: RunDir = None, as_json: JsonOut = False) -> None:
    """Everything waiting on you, newest first, each with the command that acts on it."""
    got = call(run_dir, request(m.GetInbox, limit=limit), m.Inbox)

    def human() -> None:
        if not got.items:
            echo("nothing waits on you")
            return
        for item in got.items:
            echo(f"{ago(item.at):>8}  {item.kind:<13} {item.title}")
            if item.detail:
                echo(f"{'':>8}  {'':<13} {item.detail}")
            echo(f"{'':>8}  {'':<13} → {item.command}")
        if got.total > len(got.items):
            echo(f"… and {got.total - len(got.items)} more (--limit)")

    emit(got, as_json, human)
