"""A burst of reminders due at one instant: all delivered once, how fast, and what it costs `Send`.

(a) 10,000 reminders (2,000 with `--quick`) are set with `Remind{at: T}` over the sockets of
16 owner agents, all for the same instant T; the time to deliver them is from T to the last
`delivered_at` the daemon recorded. Afterwards every owner leases its inbox and the script
checks that each reminder reached its owner exactly once (none lost, none twice), through
the protocol and in the database; it exits 1 if not. (b) `Send` latency (alice → bob, one
call at a time) with no burst, measured in the seconds before T, against the same latency
while the burst is being delivered. (c) The same burst with `reminder_batch` as large as the
burst and no time limit per chunk (`reminder_chunk_ms = 0`), i.e. delivered in one
transaction, on a second daemon: what chunking buys `Send`.

Run: `.venv/bin/python bench/reminders.py [--quick] [--json]`. It measures; it never judges
(apart from the delivered-exactly-once check).
"""

from __future__ import annotations

import argparse
import shutil
import sqlite3
import sys
import tempfile
import time
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path

import trio
from daemon_process import Daemon, running_daemon
from measure import cpu_seconds, summary_ms
from report import Report, parse_args

from c0re_priv.config import HiveSettings
from protocol import messages as m
from protocol.client import HiveClient

OWNERS = [f"owner-{i:02d}" for i in range(16)]
AGENTS = [*OWNERS, "alice", "bob"]
BODY = "re-run the soak test on the staging cluster and compare the p99 with yesterday's"
DEFAULT_BATCH = HiveSettings().reminder_batch
POLL_SECONDS = 0.005

CREATE_SECTION = "setting reminders (Remind over 16 agent sockets at once)"
BURST_SECTION = "delivering a burst due at one instant (daemon subprocess)"
SEND_SECTION = "Send latency, alice → bob, one call at a time, same run"
CREATE = "Remind, 16 agents concurrently"
CHUNKED = "burst delivered in chunks (reminder_batch, reminder_chunk_ms)"
ONE_TX = "burst delivered, one transaction"
SEND_IDLE = "Send, no burst"
SEND_CHUNKED = "Send, during the chunked burst"
SEND_ONE_TX = "Send, during the one-transaction burst"


@dataclass(frozen=True)
class Plan:
    reminders: int
    idle_seconds: float
    """How long `Send` is timed with no burst, just before the burst is due."""

    @classmethod
    def for_args(cls, quick: bool) -> Plan:
        return cls(2_000, 0.6) if quick else cls(10_000, 3.0)


@dataclass
class Burst:
    created: int
    create_seconds: float
    deliver_seconds: float
    """From the due instant to the last `delivered_at`, both the daemon's clock."""
    first_lag: float
    """From the due instant to the first `delivered_at`."""
    daemon_cpu: float
    idle: list[float] = field(default_factory=list)
    during: list[float] = field(default_factory=list)
    lost: int = 0
    twice: int = 0


def config(batch: int, chunk_ms: float | None = None) -> str:
    """The daemon's settings; `chunk_ms` `None` keeps the default time limit per chunk."""
    agents = "".join(f"[agents.{name}]\n" for name in AGENTS)
    chunk = "" if chunk_ms is None else f"reminder_chunk_ms = {chunk_ms}\n"
    return (
        "[hive]\nautostart = false\nreminder_burst = 1000000\nreminder_max_pending = 1000000\n"
        f"reminder_refill_per_minute = 1000000\nreminder_batch = {batch}\n{chunk}\n{agents}"
    )


async def create(daemon: Daemon, count: int, at: float) -> float:
    """`count` reminders for `at`, spread over the owners; return the seconds it took."""
    start = time.perf_counter()

    async def owner(name: str, share: int) -> None:
        sock = str(daemon.paths.agent_sock(name))
        async with HiveClient.connect(sock, client="bench-reminders") as client:
            for n in range(share):
                await client.expect(m.Remind(body=f"{BODY} ({name} #{n})", at=at), m.Reminded)

    async with trio.open_nursery() as nursery:
        for i, name in enumerate(OWNERS):
            nursery.start_soon(owner, name, count // len(OWNERS) + (i < count % len(OWNERS)))
    return time.perf_counter() - start


def due_left(conn: sqlite3.Connection, due: float) -> int:
    """How many of the burst are still pending. The watcher asks every few milliseconds on the
    cores the daemon runs on, so it is an index-only count on one open connection: counting
    the delivered ones (a scan of the table, plus a new connection each time) took ~1.5 ms a
    poll, a quarter of a core taken from the daemon it measures."""
    return int(
        conn.execute(
            "SELECT count(*) FROM reminders WHERE state = 'pending' AND next_attempt_at <= ?",
            (due,),
        ).fetchone()[0]
    )


def delivered_so_far(db: Path) -> tuple[int, float | None, float | None]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        count, first, last = conn.execute(
            "SELECT count(*), min(delivered_at), max(delivered_at) FROM reminders"
            " WHERE state = 'delivered'"
        ).fetchone()
        return count, first, last
    finally:
        conn.close()


async def send_latencies(alice: HiveClient, until: trio.Event | float) -> list[float]:
    """Time `Send` back to back until the event is set or the wall clock reaches `until`."""
    samples: list[float] = []
    while True:  # at least one call, however short the window
        start = time.perf_counter()
        await alice.expect(m.Send(to="bob", body="ping"), m.Sent)
        samples.append(time.perf_counter() - start)
        if until.is_set() if isinstance(until, trio.Event) else time.time() >= until:
            return samples


async def drain_inboxes(daemon: Daemon) -> list[int]:
    """Lease every owner's inbox; the reminder ids received, duplicates included."""
    got: list[int] = []
    for name in OWNERS:
        async with HiveClient.connect(str(daemon.paths.agent_sock(name))) as client:
            while True:
                leased = await client.expect(m.Recv(max=100), m.Deliveries)
                for d in leased.items:
                    if d.message.to != name:
                        raise AssertionError(f"{name} was handed a message for {d.message.to}")
                    if d.message.reminder_id is not None:
                        got.append(d.message.reminder_id)
                if not leased.items:
                    break
    return got


async def burst(daemon: Daemon, plan: Plan, measure_idle: bool) -> Burst:
    db = daemon.paths.db
    probe = max(50, plan.reminders // 20)
    # a probe sets the pace: T must come after every reminder is set and the idle window.
    # A first probe warms the daemon up (it may still be seeding its agents' configs when
    # its sockets answer): timed cold, the rate came out ~30 times too low and T minutes away.
    far = time.time() + 86_400
    await create(daemon, probe, far)
    rate = probe / await create(daemon, probe, far)
    # setting them slows as the table grows, and this machine may be shared: a wide margin
    due = time.time() + 2.5 * plan.reminders / rate + plan.idle_seconds + 1.0
    create_seconds = await create(daemon, plan.reminders, due)
    if time.time() > due - plan.idle_seconds:
        raise RuntimeError("setting the reminders took longer than planned; rerun")
    result = Burst(plan.reminders, create_seconds, 0.0, 0.0, 0.0)
    async with HiveClient.connect(str(daemon.paths.agent_sock("alice"))) as alice:
        await alice.expect(m.Send(to="bob", body="warm-up"), m.Sent)
        if measure_idle:
            await trio.sleep(max(0.0, due - plan.idle_seconds - time.time()))
            result.idle = await send_latencies(alice, due - 0.05)
        await trio.sleep(max(0.0, due - time.time()))
        cpu0 = cpu_seconds(daemon.pid)
        done = trio.Event()
        first: float | None = None
        finished = 0.0

        async def watch() -> None:
            # delivered_at is each tick's start: the last commit is observed, not read back.
            # Each poll runs in a worker thread: on this loop it held up the probe's replies
            # (the probe's own loop), which counted in the `Send` times measured during the
            # burst and not in those measured before it.
            nonlocal first, finished
            with closing(
                sqlite3.connect(f"file:{db}?mode=ro", uri=True, check_same_thread=False)
            ) as conn:
                while True:
                    if not await trio.to_thread.run_sync(due_left, conn, due):
                        break
                    await trio.sleep(POLL_SECONDS)
            finished = time.time()
            _, first, _ = delivered_so_far(db)
            done.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch)
            result.during = await send_latencies(alice, done)
        result.daemon_cpu = cpu_seconds(daemon.pid) - cpu0
    assert first is not None
    result.first_lag, result.deliver_seconds = first - due, finished - due
    received = await drain_inboxes(daemon)
    wanted = set(range(2 * probe + 1, 2 * probe + plan.reminders + 1))
    result.lost = len(wanted - set(received))
    result.twice = len(received) - len(set(received))
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        per_reminder = dict(
            conn.execute(
                "SELECT reminder_id, count(*) FROM messages WHERE reminder_id IS NOT NULL"
                " GROUP BY reminder_id"
            ).fetchall()
        )
    result.lost += len(wanted - set(per_reminder))
    result.twice += sum(1 for n in per_reminder.values() if n > 1)
    return result


def report_burst(report: Report, label: str, b: Burst, how: str) -> None:
    exact = (
        f"all {b.created:,} delivered once"
        if not (b.lost or b.twice)
        else f"LOST {b.lost}, TWICE {b.twice}"
    )
    report.add(
        BURST_SECTION,
        label,
        b.deliver_seconds,
        "s",
        f"{how}: {b.created / b.deliver_seconds:,.0f} reminders/s; first after"
        f" {b.first_lag * 1000:.0f} ms; daemon CPU {b.daemon_cpu:.2f} s; {exact}",
        reminders=b.created,
        batch=how,
        reminders_per_second=b.created / b.deliver_seconds,
        first_lag_seconds=b.first_lag,
        daemon_cpu_seconds=b.daemon_cpu,
        lost=b.lost,
        delivered_twice=b.twice,
    )


def report_sends(report: Report, label: str, samples: list[float]) -> None:
    stats = summary_ms(samples)
    report.add(
        SEND_SECTION,
        label,
        stats["p50_ms"],
        "ms p50",
        f"p99 {stats['p99_ms']:.3g} ms, max {stats['max_ms']:.3g} ms, {stats['samples']} calls",
        **stats,
    )


def add_batch_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--batch",
        type=int,
        default=DEFAULT_BATCH,
        help=f"reminder_batch of the chunked run (default: the daemon's, {DEFAULT_BATCH})",
    )
    parser.add_argument(
        "--chunk-ms",
        type=float,
        default=None,
        help="reminder_chunk_ms of the chunked run (default: the daemon's,"
        f" {HiveSettings().reminder_chunk_ms:g})",
    )


def main(argv: list[str] | None = None) -> None:
    args = parse_args(__doc__.split("\n", 1)[0], argv, add_batch_option)
    plan = Plan.for_args(args.quick)
    report = Report("bench/reminders.py", args.quick)
    scratch = Path(tempfile.mkdtemp(prefix="hvr", dir="/tmp"))
    try:
        chunk_config = config(args.batch, args.chunk_ms)
        with running_daemon(scratch / "chunked", chunk_config, AGENTS) as daemon:
            chunked = trio.run(burst, daemon, plan, True)
        with running_daemon(scratch / "one", config(plan.reminders, 0), AGENTS) as daemon:
            one_tx = trio.run(burst, daemon, plan, False)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    report.add(
        CREATE_SECTION,
        CREATE,
        chunked.created / chunked.create_seconds,
        "reminders/s",
        f"{chunked.created:,} reminders in {chunked.create_seconds:.2f} s",
    )
    chunk_ms = HiveSettings().reminder_chunk_ms if args.chunk_ms is None else args.chunk_ms
    chunks = f"chunks of at most {args.batch} and {chunk_ms:g} ms"
    report_burst(report, CHUNKED, chunked, chunks)
    report_burst(report, ONE_TX, one_tx, f"reminder_batch = {plan.reminders}, no time limit")
    report_sends(report, SEND_IDLE, chunked.idle)
    report_sends(report, SEND_CHUNKED, chunked.during)
    report_sends(report, SEND_ONE_TX, one_tx.during)
    report.ratio("Send p50 during the burst / no burst", SEND_CHUNKED, SEND_IDLE)
    report.ratio("Send p99 during the burst / no burst", SEND_CHUNKED, SEND_IDLE, key="p99_ms")
    report.ratio("Send p99, one-transaction burst / no burst", SEND_ONE_TX, SEND_IDLE, key="p99_ms")
    report.ratio("delivery time, chunked / one transaction", CHUNKED, ONE_TX)
    report.note(
        "a burst's Send samples are the calls made between the due instant and the last"
        " delivery; a one-transaction burst leaves room for only a few"
    )
    report.emit(args.json)
    if chunked.lost or chunked.twice or one_tx.lost or one_tx.twice:
        print("reminders were lost or delivered twice", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
