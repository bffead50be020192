"""The emergency stop with 50 agents mid-turn: how long until every turn has stopped.

A daemon subprocess runs 50 scripted agents (and a manager) in real bwrap sandboxes. Each
agent is given a message whose turn lasts minutes (a rule with `delay`), and once all 50 are
mid-turn the operator calls `EmergencyStop`. Measured, per round:

- until the reply: `EmergencyStop` returns once every harness confirmed its turn cancelled
  (or, past `estop_grace_seconds`, had its container stopped: reported, never expected);
- until the last turn ended: `EstopRow.park_seconds`, the daemon's own clock from the stop
  to the last harness's confirmation;
- the same from the outside: the latest `harness:idle` event after the stop, by its `at`.

Each round then checks that nothing was lost (50 messages `queued`, no failure counted, no
lease left) and thaws, which sets all 50 turns going again for the next round.

Baseline, in the same run: `CancelTurn` of one agent's running turn, from the call to that
harness's `harness:idle` event — the same control path (daemon → harness → runtime), for one
turn instead of fifty.

    .venv/bin/python bench/estop.py            # 50 agents, 3 rounds
    .venv/bin/python bench/estop.py --quick    # 6 agents, 1 round
"""

from __future__ import annotations

import os
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from daemon_process import running_daemon
from report import Report, parse_args

from protocol import messages as m
from protocol.client import HiveError, SyncClient

RULES = """
[[rule]]
match = '^slow'
tool = "set_status"
args = { text = "finished: {body}" }
delay = 600

[[rule]]
tool = "set_status"
args = { text = "saw: {body}" }
"""
TARGET = 2.0
"""What the issue asks: with 50 agents, all turns stop within 2 s."""


def config(root: Path, agents: int) -> str:
    rules = root / "rules.toml"
    rules.write_text(RULES)
    rules.chmod(0o644)
    lines = [
        "[hive]",
        "stop_grace_seconds = 2",
        "estop_grace_seconds = 10",
        "question_stale_seconds = 0",
        "agent_max_connections = 16",
        "",
        "[agents.manager]",
        'role = "manager"',
        f'rules = "{rules}"',
        "",
    ]
    for name in names(agents):
        lines += [f"[agents.{name}]", f'rules = "{rules}"', ""]
    return "\n".join(lines)


def names(agents: int) -> list[str]:
    return [f"w{n:02d}" for n in range(1, agents + 1)]


class Events:
    """Every event, in a thread, with the time it was received here."""

    def __init__(self, admin_sock: Path) -> None:
        self.items: list[tuple[float, m.AnyEvent]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._sock = admin_sock
        threading.Thread(target=self._follow, daemon=True).start()

    def _follow(self) -> None:
        try:
            with SyncClient.connect(str(self._sock), timeout=None) as c:
                for frame in c.frames(m.Subscribe(kinds=["agent_state_changed"])):
                    if isinstance(frame, m.EventFrame):
                        with self._lock:
                            self.items.append((time.time(), frame.event))
                    if self._stop.is_set():
                        return
        except (HiveError, OSError):
            return

    def idle_after(self, since: float, who: set[str]) -> dict[str, float]:
        """The first `harness:idle` of each of `who` stamped after `since` (daemon clock)."""
        out: dict[str, float] = {}
        with self._lock:
            for _, ev in self.items:
                if (
                    isinstance(ev, m.AgentStateChanged)
                    and ev.state == "harness:idle"
                    and ev.name in who
                    and ev.at >= since
                    and ev.name not in out
                ):
                    out[ev.name] = ev.at
        return out

    def close(self) -> None:
        self._stop.set()


def call(sock: Path, req: m.Request, reply: type[Any]) -> Any:
    with SyncClient.connect(str(sock), timeout=120) as c:
        return c.expect(req, reply)


def wait(check: Any, what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.2)


def rows(sock: Path) -> dict[str, m.AgentRow]:
    return {a.name: a for a in call(sock, m.ListAgents(), m.Agents).agents}


def all_mid_turn(sock: Path, who: list[str]) -> bool:
    r = rows(sock)
    return all(r[n].harness_state == "turn" and r[n].leased == 1 for n in who)


def main() -> int:
    args = parse_args(
        "The emergency stop with N agents mid-turn.",
        extend=lambda p: (
            p.add_argument("--agents", type=int, default=50),
            p.add_argument("--rounds", type=int, default=3),
        ),
    )
    agents = 6 if args.quick else args.agents
    rounds = 1 if args.quick else args.rounds
    report = Report("bench/estop.py", args.quick)
    root = Path(tempfile.mkdtemp(prefix="es", dir="/tmp"))
    root.chmod(0o755)  # the agents' uids read the rules file
    who = names(agents)
    try:
        with running_daemon(root, config(root, agents), [*who, "manager"]) as daemon:
            admin = daemon.paths.admin_sock
            started = time.monotonic()
            wait(
                lambda: all(r.harness_state == "idle" for r in rows(admin).values()),
                "every harness to come up",
                60 + 6 * agents,
            )
            report.notes.append(
                f"{agents} agents and a manager in bwrap sandboxes came up in"
                f" {time.monotonic() - started:.0f}s"
            )
            events = Events(admin)
            time.sleep(0.5)

            # baseline: one operator cancel of one running turn, through the same path
            cancels = []
            for n in range(rounds):
                one = who[0]
                call(admin, m.OperatorSend(to=one, body=f"slow baseline {n}"), m.Sent)
                wait(lambda one=one: all_mid_turn(admin, [one]), "the baseline turn", 60)
                t0 = time.time()
                call(admin, m.CancelTurn(name=one), m.Ok)
                wait(lambda t0=t0, one=one: events.idle_after(t0, {one}), "the cancel", 30)
                cancels.append(events.idle_after(t0, {one})[one] - t0)

            for n, name in enumerate(who):
                call(admin, m.OperatorSend(to=name, body=f"slow job {n}"), m.Sent)
            replies, parks, outside, thaws, stopped = [], [], [], [], []
            for _ in range(rounds):
                wait(lambda: all_mid_turn(admin, who), f"all {agents} turns", 120)
                t0 = time.time()
                row = call(admin, m.EmergencyStop(reason="bench"), m.EstopInfo).estop
                replies.append(time.time() - t0)
                parks.append(row.park_seconds or 0.0)
                stopped.append(len(row.stopped))
                wait(lambda t0=t0: len(events.idle_after(t0, set(who))) == agents, "idle", 30)
                outside.append(max(events.idle_after(t0, set(who)).values()) - t0)
                r = rows(admin)
                assert sorted(row.cancelled) == who, row.cancelled
                assert all(r[w].leased == 0 and r[w].queued == 1 for w in who), "a lease stayed"
                msgs = call(admin, m.ListMessages(limit=1000), m.Messages).messages
                slow = [x for x in msgs if x.body.startswith("slow job")]
                assert {(x.state, x.failures) for x in slow} == {("queued", 0)}, "lost or failed"
                t1 = time.time()
                call(admin, m.Thaw(), m.EstopInfo)
                wait(lambda: all_mid_turn(admin, who), f"all {agents} turns again", 120)
                thaws.append(time.time() - t1)
            events.close()
    finally:
        import shutil

        shutil.rmtree(root, ignore_errors=True)

    section = f"stopping turns ({agents} agents mid-turn, {rounds} rounds, median)"
    base = statistics.median(cancels)
    report.add(
        section,
        "CancelTurn, 1 agent",
        base,
        "s",
        "baseline: one operator cancel, call → harness:idle",
        rounds=cancels,
    )
    report.add(
        section,
        "EmergencyStop, until the reply",
        statistics.median(replies),
        "s",
        f"max {max(replies):.3f}s; containers stopped for want of a park: {max(stopped)}",
        rounds=replies,
    )
    report.add(
        section,
        "EmergencyStop, until the last turn ended",
        statistics.median(parks),
        "s",
        f"max {max(parks):.3f}s (the daemon's park_seconds); target {TARGET:g}s",
        rounds=parks,
    )
    report.add(
        section,
        "EmergencyStop, last harness:idle event",
        statistics.median(outside),
        "s",
        f"max {max(outside):.3f}s, from the events' own timestamps",
        rounds=outside,
    )
    report.add(
        section,
        "Thaw, until every turn runs again",
        statistics.median(thaws),
        "s",
        "leases granted and turns started again",
        rounds=thaws,
    )
    report.ratio(
        f"estop of {agents} / cancel of 1",
        "EmergencyStop, until the last turn ended",
        "CancelTurn, 1 agent",
    )
    if max(parks) > TARGET:
        report.notes.append(
            f"the slowest round took {max(parks):.2f}s, over the {TARGET:g}s target"
        )
    report.notes.append(f"machine: {os.cpu_count()} cpus")
    report.emit(args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
