"""Soak: a 20-agent hive under scripted traffic for 30 minutes, watched for anything that grows.

`hive up` (daemon, dashboard, one bwrap sandbox per agent, the scripted runtime) runs in a
scratch directory while the operator sends a steady stream of messages that the agents relay
to each other and answer. Every `--sample` seconds it records the daemon's and the
dashboard's RSS and open fds, restarts, crash events and messages acked. At the end it
reports the figures over time, the throughput, and ratios of the last third of the run to the
first third; anything that grows (RSS by more than 10 %, fds by more than 8) or any restart
is printed as a WARNING and makes the exit status 1.

    .venv/bin/python bench/soak.py                  # 30 minutes, 20 agents
    .venv/bin/python bench/soak.py --minutes 5      # shorter
    .venv/bin/python bench/soak.py --quick          # ~1 minute smoke run, 4 agents
"""

from __future__ import annotations

import os
import random
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from hive_up import HiveUp, remove, soak_dir
from report import Report, parse_args

from protocol import messages as m

RSS_GROWTH = 0.10
FD_GROWTH = 8


@dataclass
class Sample:
    at: float
    daemon_rss_mib: float
    daemon_fds: int
    web_rss_mib: float
    web_fds: int
    restarts: int
    crashes: int
    acked: int
    backlog: int


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def config(agents: int) -> str:
    lines = ['[hive]\nstop_grace_seconds = 5\n\n[agents.manager]\nrole = "manager"\n']
    lines += [f"[agents.agent-{n:02d}]\n" for n in range(1, agents)]
    return "\n".join(lines)


def sample(up: HiveUp, started: float) -> Sample:
    assert up.proc is not None
    daemon = up.proc.pid
    web = up.web_pid()
    rows = up.agents()
    counts = {"acked": 0, "backlog": 0}
    for r in up.messages():
        counts["acked" if r.state == "acked" else "backlog"] += 1
    return Sample(
        at=time.monotonic() - started,
        daemon_rss_mib=rss_mib(daemon),
        daemon_fds=fds(daemon),
        web_rss_mib=rss_mib(web) if web else 0.0,
        web_fds=fds(web) if web else 0,
        restarts=sum(r.restarts for r in rows),
        crashes=len(up.crashes()),
        acked=counts["acked"],
        backlog=counts["backlog"],
    )


def third(samples: list[Sample], which: int) -> list[Sample]:
    size = max(1, len(samples) // 3)
    return samples[:size] if which == 0 else samples[-size:]


def main() -> int:
    args = parse_args(
        __doc__.splitlines()[0],
        extend=lambda p: (
            p.add_argument("--minutes", type=float, default=30.0, help="traffic time"),
            p.add_argument("--agents", type=int, default=20, help="agents, the manager included"),
            p.add_argument("--rate", type=float, default=2.0, help="operator messages per second"),
            p.add_argument("--sample", type=float, default=30.0, help="seconds between samples"),
        ),
    )
    minutes, agents, period = args.minutes, args.agents, args.sample
    if args.quick:
        minutes, agents, period = 0.75, 4, 5.0
    report = Report("soak", args.quick)
    root = soak_dir("bsoak")
    up = HiveUp(root, config(agents))
    warnings: list[str] = []
    samples: list[Sample] = []
    try:
        up.start(timeout=120)
        up.wait(up.all_serving, 300)
        names = sorted(r.name for r in up.agents() if r.role == "agent")
        rng = random.Random(7)
        started = time.monotonic()
        next_sample = started
        sent = 0
        while time.monotonic() - started < minutes * 60:
            now = time.monotonic()
            if now >= next_sample:
                samples.append(sample(up, started))
                next_sample += period
                if not args.json:
                    s = samples[-1]
                    print(
                        f"  {s.at:7.0f}s  daemon {s.daemon_rss_mib:6.1f} MiB {s.daemon_fds:4d} fds"
                        f"  web {s.web_rss_mib:6.1f} MiB {s.web_fds:4d} fds  restarts {s.restarts}"
                        f"  acked {s.acked}  backlog {s.backlog}",
                        file=sys.stderr,
                        flush=True,
                    )
            sender, receiver = rng.sample(names, 2)
            up.call(m.OperatorSend(to=sender, body=f"@{receiver} ping {sent}"), m.Sent)
            sent += 1
            time.sleep(max(0.0, started + sent / args.rate - time.monotonic()))
        traffic_seconds = time.monotonic() - started
        try:
            up.wait(lambda: all(r.state == "acked" for r in up.messages()), 600)
        except TimeoutError:
            warnings.append("the backlog did not drain within 10 minutes after the traffic")
        drained_at = time.monotonic() - started
        samples.append(sample(up, started))
    finally:
        up.stop()
        remove(root)

    last = samples[-1]
    first, end = third(samples, 0), third(samples, 2)
    section = f"{agents} agents, {minutes:g} min of traffic at {args.rate:g} msg/s"
    report.add(section, "operator messages sent", sent, "msgs")
    report.add(section, "messages acked (all kinds)", last.acked, "msgs")
    report.add(
        section,
        "throughput, acked per second until drained",
        last.acked / drained_at,
        "msg/s",
        f"drained {drained_at - traffic_seconds:.0f} s after the traffic stopped",
    )
    report.add(section, "restarts", last.restarts, "")
    report.add(section, "crash events", last.crashes, "")
    for label, pick, unit in (
        ("daemon RSS", lambda s: s.daemon_rss_mib, "MiB"),
        ("daemon open fds", lambda s: s.daemon_fds, "fds"),
        ("web RSS", lambda s: s.web_rss_mib, "MiB"),
        ("web open fds", lambda s: s.web_fds, "fds"),
    ):
        report.add(label, f"{label}, first third", statistics.mean(map(pick, first)), unit)
        report.add(label, f"{label}, last third", statistics.mean(map(pick, end)), unit)
        report.ratio(
            f"{label}, last / first third", f"{label}, last third", f"{label}, first third"
        )
    over_time = [
        (round(s.at), round(s.daemon_rss_mib, 1), s.daemon_fds, round(s.web_rss_mib, 1), s.web_fds)
        for s in samples
    ]
    report.note(f"samples (s, daemon MiB, daemon fds, web MiB, web fds): {over_time}")
    for label in ("daemon RSS", "web RSS"):
        ratio = report.value(f"{label}, last third") / (report.value(f"{label}, first third") or 1)
        if ratio > 1 + RSS_GROWTH:
            warnings.append(f"{label} grew by {100 * (ratio - 1):.0f} % over the run")
    for label in ("daemon open fds", "web open fds"):
        grown = (report.value(f"{label}, last third") or 0) - (
            report.value(f"{label}, first third") or 0
        )
        if grown > FD_GROWTH:
            warnings.append(f"{label} grew by {grown:.0f} over the run")
    if last.restarts or last.crashes:
        warnings.append(f"{last.restarts} restart(s) and {last.crashes} crash event(s)")
    for text in warnings:
        report.note(f"WARNING: {text}")
    report.emit(args.json)
    for text in warnings:
        print(f"\n*** WARNING: {text} ***", file=sys.stderr)
    return 1 if warnings else 0


if __name__ == "__main__":
    sys.exit(main())
