"""`hive ctl estop`, `thaw`, `budget …` and `inbox`: the operator's controls from the terminal.

They talk to the daemon over `admin.sock` like every `hive ctl` command, and print tables
(or, with `--json`, the reply's rows). docs/operating.md, "Operator controls", says what
each one does.
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
import typer

from protocol import messages as m
from protocol import operator_controls as oc
from protocol.client import HiveError

from .cli import JsonOut, RunDir, StateDir, _admin, _ago, _die, _echo, _emit, _table, ctl

budget_ctl = typer.Typer(
    help="Spending limits, usage and alerts; without a command, shows them all.",
    invoke_without_command=True,
)
ctl.add_typer(budget_ctl, name="budget")

AgentOption = Annotated[
    str | None, typer.Option("--agent", help="This agent's own limit (default: the hive's).")
]
EachOption = Annotated[
    bool,
    typer.Option("--each-agent", help="The limit of every agent that has none of its own."),
]


def _call(run_dir: Any, req: m.Request, reply: type[Any]) -> Any:
    with _admin(run_dir, timeout=None) as c:
        try:
            return c.expect(req, reply)
        except HiveError as exc:
            _die(exc.message)


def money(value: float | None) -> str:
    return "-" if value is None else f"${value:,.2f}"


def tokens(value: float | None) -> str:
    return "-" if value is None else f"{int(value):,}"


def fraction(value: float | None) -> str:
    return "-" if value is None else f"{value:.0%}"


# ------------------------------------------------------------------ the emergency stop


def _show_estop(row: oc.EstopRow) -> None:
    if row.engaged:
        _echo(f"EMERGENCY STOP engaged {_ago(row.at)}" + (f": {row.reason}" if row.reason else ""))
        _echo(f"  parked:    {', '.join(row.parked) or 'no agent'} (the managers keep running)")
        _echo(f"  cancelled: {', '.join(row.cancelled) or 'no turn was running'}")
        if row.park_seconds is not None:
            _echo(f"  every cancelled turn ended within {row.park_seconds:.2f}s")
        if row.stopped:
            _echo(f"  stopped:   {', '.join(row.stopped)} (their harnesses did not park in time)")
        _echo("  `hive ctl thaw` lets them work again")
    else:
        _echo(f"thawed {_ago(row.thawed_at)}: {', '.join(row.resumed) or 'no agent'} may work")
        if row.stopped:
            _echo(f"  started again: {', '.join(row.stopped)}")


@ctl.command("estop")
def ctl_estop(
    reason: Annotated[str, typer.Option(help="Why (shown to whoever looks).")] = "",
    run_dir: RunDir = None,
    state_dir: StateDir = None,
    as_json: JsonOut = False,
) -> None:
    """EMERGENCY STOP: every agent but the managers stops now (running turns are cancelled,
    their messages stay queued); it lasts, across daemon restarts, until `hive ctl thaw`."""
    req = _request(oc.EmergencyStop, reason=reason)
    row = _call(run_dir, req, oc.EstopInfo).estop
    _emit(row, as_json, lambda: _show_estop(row))


@ctl.command("thaw")
def ctl_thaw(run_dir: RunDir = None, state_dir: StateDir = None, as_json: JsonOut = False) -> None:
    """Lift the emergency stop: exactly what it stopped works again."""
    row = _call(run_dir, oc.Thaw(), oc.EstopInfo).estop
    _emit(row, as_json, lambda: _show_estop(row))


def _request(verb: type[Any], **fields: Any) -> Any:
    try:
        return msgspec.convert(fields, verb)
    except msgspec.ValidationError as exc:
        _die(f"invalid {verb.__name__}: {exc}")


# ------------------------------------------------------------------ budgets


def _scope(agent: str | None, each_agent: bool) -> dict[str, Any]:
    if agent is not None and each_agent:
        _die("give --agent NAME or --each-agent, not both")
    if agent is not None:
        return {"scope": "agent", "agent": agent}
    return {"scope": "each_agent" if each_agent else "hive"}


def _limit_text(key: str, value: float | None) -> str:
    if value is None:
        return "no limit"
    return money(value) if key.startswith("cost") else f"{tokens(value)} tokens"


def usage_table(rows: list[oc.UsageRow]) -> None:
    def limit(r: oc.UsageRow, key: str) -> str:
        value = getattr(r.limits, key)
        return "" if value is None else f" / {_limit_text(key, value)}"

    _table(
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


def _show_budget(got: oc.Budget) -> None:
    _echo(f"warn at {got.warn_fraction:.0%} of a limit; a day is the last 24 hours")
    _echo("")
    if got.limits:
        _table(
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
        _echo("no limits set (hive.toml [budget], or `hive ctl budget set`)")
    _echo("")
    usage_table(got.usage)
    if got.alerts:
        _echo("")
        _table(
            [[str(a.id), a.level, _ago(a.at), a.text] for a in got.alerts],
            ["ALERT", "LEVEL", "WHEN", "WHAT"],
        )


@budget_ctl.callback()
def ctl_budget(
    ctx: typer.Context, run_dir: RunDir = None, state_dir: StateDir = None, as_json: JsonOut = False
) -> None:
    """Limits, usage (per agent and for the hive) and open alerts."""
    if ctx.invoked_subcommand is not None:
        return
    got = _call(run_dir, oc.GetBudget(), oc.Budget)
    _emit(got, as_json, lambda: _show_budget(got))


def _value(text: str) -> float | None:
    if text.lower() in ("none", "unlimited", "-"):
        return None
    try:
        return float(text.replace(",", "").removeprefix("$"))
    except ValueError:
        _die(f"{text!r} is not a number (or `none` for no limit)")


@budget_ctl.command("set")
def ctl_budget_set(
    key: Annotated[
        str,
        typer.Argument(help="tokens_per_day, tokens_total, cost_per_day_usd or cost_total_usd."),
    ],
    value: Annotated[str, typer.Argument(help="The limit, or `none` for no limit.")],
    agent: AgentOption = None,
    each_agent: EachOption = False,
    run_dir: RunDir = None,
    state_dir: StateDir = None,
    as_json: JsonOut = False,
) -> None:
    """Set a limit (kept across restarts, over hive.toml's); takes effect at once."""
    req = _request(oc.SetBudget, **_scope(agent, each_agent), limits={key: _value(value)})
    got = _call(run_dir, req, oc.Budget)
    who = agent or ("each agent" if each_agent else "the hive")
    _emit(got, as_json, lambda: _echo(f"{who}: {key} = {_limit_text(key, _value(value))}"))


@budget_ctl.command("reset")
def ctl_budget_reset(
    keys: Annotated[list[str], typer.Argument(help="The keys to hand back to hive.toml.")],
    agent: AgentOption = None,
    each_agent: EachOption = False,
    run_dir: RunDir = None,
    state_dir: StateDir = None,
    as_json: JsonOut = False,
) -> None:
    """Drop limits set with `budget set`: hive.toml's apply again."""
    req = _request(oc.SetBudget, **_scope(agent, each_agent), reset=keys)
    got = _call(run_dir, req, oc.Budget)
    _emit(got, as_json, lambda: _echo(f"reset {', '.join(keys)}: hive.toml's limits apply"))


@budget_ctl.command("warn")
def ctl_budget_warn(
    at: Annotated[float, typer.Argument(help="The fraction of a limit to warn at, e.g. 0.8.")],
    run_dir: RunDir = None,
    state_dir: StateDir = None,
    as_json: JsonOut = False,
) -> None:
    """Warn the operator at this fraction of every limit."""
    req = _request(oc.SetBudget, scope="hive", warn_fraction=at)
    got = _call(run_dir, req, oc.Budget)
    _emit(got, as_json, lambda: _echo(f"warning at {got.warn_fraction:.0%} of a limit"))


@budget_ctl.command("dismiss")
def ctl_budget_dismiss(
    alert_id: int, run_dir: RunDir = None, state_dir: StateDir = None, as_json: JsonOut = False
) -> None:
    """Take a budget warning out of the inbox."""
    _call(run_dir, _request(oc.DismissBudgetAlert, id=alert_id), m.Ok)
    _emit({"dismissed": alert_id}, as_json, lambda: _echo(f"alert #{alert_id} dismissed"))


def show_usage(run_dir: Any, as_json: bool) -> None:
    """`hive ctl stats` without a name: every agent's usage against its limits."""
    got = _call(run_dir, oc.GetBudget(), oc.Budget)
    _emit(got.usage, as_json, lambda: usage_table(got.usage))


# ------------------------------------------------------------------ the inbox


@ctl.command("inbox")
def ctl_inbox(
    limit: int = 200, run_dir: RunDir = None, state_dir: StateDir = None, as_json: JsonOut = False
) -> None:
    """Everything waiting on you, newest first, each with the command that acts on it."""
    got = _call(run_dir, _request(oc.GetInbox, limit=limit), oc.Inbox)

    def human() -> None:
        if not got.items:
            _echo("nothing waits on you")
            return
        for item in got.items:
            _echo(f"{_ago(item.at):>8}  {item.kind:<12} {item.title}")
            if item.detail:
                _echo(f"{'':>8}  {'':<12} {item.detail}")
            _echo(f"{'':>8}  {'':<12} → {item.command}")
        if got.total > len(got.items):
            _echo(f"… and {got.total - len(got.items)} more (--limit)")

    _emit(got, as_json, human)
