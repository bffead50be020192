"""Cross-hive messages against local ones, in the same run: throughput and latency, as ratios.

Two daemons, `alpha` and `beta` (subprocesses), federated through one `nats-server -js` on
loopback (Debian's, started here on a free port with its own store dir; no auth: NATS's
permission checks are not what is measured). Each hive has the same agents.

(a) Throughput, messages per second fully acked by their recipient, with 8 sender/receiver
pairs. Local: in alpha, `s<i>` sends to `r<i>`, which leases and acks. Cross-hive: alpha's
`s<i>` sends to `r<i>@beta`, which leases and acks in beta. Each sender keeps at most
`WINDOW` messages unacked (it waits for its receiver to catch up), so the figure is what the
path sustains, not how fast an outbox fills. The cross-hive row also shows the CPU per
message of both daemons and of NATS.
(b) Latency of one message at a time, from the sender calling `Send` to the recipient's
`Recv` handing it over (p50/p99): `s0 → r0` in alpha, and `s0 → r0@beta`. The receiver is already
waiting in `Recv(wait_seconds=…)`, as a harness is.

Run: `.venv/bin/python bench/federation.py [--quick] [--json]`. It measures; it never judges.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import trio
from daemon_process import Daemon, running_daemon
from measure import Counter, Window, cpu_seconds, measure_rate, summary_ms
from report import Report, parse_args

from protocol import messages as m
from protocol.client import HiveClient

PAIRS = 8
WINDOW = 32
BODY = (
    "Rebased feature/streaming-acks onto main; two conflicts in broker.py resolved by keeping"
    " the lease bookkeeping from main. Tests pass locally. Can you re-run the soak test?"
)
THROUGHPUT = f"messages fully acked by the recipient ({PAIRS} sender → receiver pairs)"
LATENCY = "one message at a time: Send called → the waiting recipient's Recv returns it"
LOCAL_RATE = "local, alpha → alpha"
REMOTE_RATE = "cross-hive, alpha → beta over JetStream"
LOCAL_LAT = "local latency, s0 → r0"
REMOTE_LAT = "cross-hive latency, s0 → r0@beta"
NATS_SERVER = shutil.which("nats-server") or "/usr/bin/nats-server"


@dataclass(frozen=True)
class Plan:
    warmup: float
    seconds: float
    calls: int

    @classmethod
    def for_args(cls, quick: bool) -> Plan:
        if quick:
            return cls(warmup=0.5, seconds=1.5, calls=20)
        return cls(warmup=2.0, seconds=8.0, calls=300)


class Nats:
    """`nats-server -js` on a free loopback port; stopped (SIGTERM) when the block ends."""

    def __init__(self, root: Path) -> None:
        self.root = root
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def __enter__(self) -> Nats:
        log = open(self.root / "nats.log", "ab")
        self.proc = subprocess.Popen(
            [
                NATS_SERVER,
                "-js",
                "-sd",
                str(self.root / "js"),
                "-a",
                "127.0.0.1",
                "-p",
                str(self.port),
            ],
            stdout=log,
            stderr=log,
        )
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return self
            except OSError:
                if self.proc.poll() is not None:
                    break
                time.sleep(0.05)
        raise RuntimeError(f"nats-server did not start: {(self.root / 'nats.log').read_text()}")

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(20)


def hive_toml(hive: str, url: str) -> str:
    agents = "".join(f"[agents.s{i}]\n[agents.r{i}]\n" for i in range(PAIRS))
    return (
        "[hive]\nautostart = false\n\n"
        f"{agents}\n"
        f'[federation]\nhive = "{hive}"\nurl = "{url}"\nstatus_interval_seconds = 5\n'
    )


def agent_names() -> list[str]:
    return [f"{kind}{i}" for i in range(PAIRS) for kind in ("s", "r")]


async def wait_for_peer(alpha: Daemon) -> None:
    async with HiveClient.connect(str(alpha.paths.admin_sock)) as admin:
        with trio.fail_after(30):
            while True:
                got = await admin.expect(m.ListAgents(include_remote=True), m.Agents)
                if any(r.address == f"r{PAIRS - 1}@beta" for r in got.remote):
                    return
                await trio.sleep(0.1)


async def pairs_round(
    sender_hive: Daemon, receiver_hive: Daemon, suffix: str, plan: Plan
) -> Window:
    """`PAIRS` senders in `sender_hive` to receivers in `receiver_hive`; counts acks."""
    sent = [0] * PAIRS
    acked = [0] * PAIRS
    progressed = [trio.Event() for _ in range(PAIRS)]

    async def sender(i: int) -> None:
        async with HiveClient.connect(str(sender_hive.paths.agent_sock(f"s{i}"))) as client:
            while True:
                while sent[i] - acked[i] >= WINDOW:
                    progressed[i] = trio.Event()
                    await progressed[i].wait()
                await client.expect(m.Send(to=f"r{i}{suffix}", body=BODY), m.Sent)
                sent[i] += 1

    async def receiver(i: int, counter: Counter) -> None:
        async with HiveClient.connect(str(receiver_hive.paths.agent_sock(f"r{i}"))) as client:
            while True:
                got = await client.expect(m.Recv(max=16, wait_seconds=1.0), m.Deliveries)
                for item in got.items:
                    await client.expect(m.Ack(lease=item.lease), m.Ok)
                    counter.n += 1
                    acked[i] += 1
                progressed[i].set()

    async def worker(index: int, counter: Counter) -> None:
        if index < PAIRS:
            await sender(index)
        else:
            await receiver(index - PAIRS, counter)

    window = await measure_rate(
        worker,
        workers=2 * PAIRS,
        warmup=plan.warmup,
        seconds=plan.seconds,
        probes={
            "sender_cpu": lambda: cpu_seconds(sender_hive.pid),
            "receiver_cpu": lambda: cpu_seconds(receiver_hive.pid),
        },
    )
    await drain(receiver_hive)
    return window


async def drain(hive: Daemon) -> None:
    """Take what is still on its way, so the next row starts from empty inboxes.

    Leases held by a receiver cancelled at the end of a window come back after a retry
    backoff, so this waits until the hive counts nothing queued or leased for any receiver.
    """
    receivers = {f"r{i}" for i in range(PAIRS)}

    async def pending() -> int:
        async with HiveClient.connect(str(hive.paths.admin_sock)) as admin:
            rows = (await admin.expect(m.ListAgents(), m.Agents)).agents
        return sum(r.queued + r.leased for r in rows if r.name in receivers)

    with trio.fail_after(120):
        while await pending():
            async with trio.open_nursery() as nursery:
                for name in sorted(receivers):

                    async def take(name: str = name) -> None:
                        async with HiveClient.connect(str(hive.paths.agent_sock(name))) as c:
                            got = await c.expect(m.Recv(max=100, wait_seconds=0.5), m.Deliveries)
                            for item in got.items:
                                await c.expect(m.Ack(lease=item.lease), m.Ok)

                    nursery.start_soon(take)


async def latency_samples(
    sender_hive: Daemon, receiver_hive: Daemon, suffix: str, calls: int
) -> list[float]:
    samples: list[float] = []
    async with (
        HiveClient.connect(str(sender_hive.paths.agent_sock("s0"))) as s0,
        HiveClient.connect(str(receiver_hive.paths.agent_sock("r0"))) as r0,
    ):
        for n in range(calls + 1):
            arrived = trio.Event()
            took: list[float] = []

            async def receive(took: list[float] = took, arrived: trio.Event = arrived) -> None:
                got = await r0.expect(m.Recv(max=1, wait_seconds=10), m.Deliveries)
                took.append(time.perf_counter())
                for item in got.items:
                    await r0.expect(m.Ack(lease=item.lease), m.Ok)
                arrived.set()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(receive)
                await trio.sleep(0.005)  # the receiver is waiting before the send
                start = time.perf_counter()
                await s0.expect(m.Send(to=f"r0{suffix}", body=BODY), m.Sent)
                with trio.fail_after(20):
                    await arrived.wait()
            if n:  # the first is a warm-up
                samples.append(took[0] - start)
    return samples


def run(report: Report, scratch: Path, plan: Plan) -> None:
    with Nats(scratch) as nats:
        names = agent_names()
        with (
            running_daemon(scratch / "alpha", hive_toml("alpha", nats.url), names) as alpha,
            running_daemon(scratch / "beta", hive_toml("beta", nats.url), names) as beta,
        ):
            trio.run(wait_for_peer, alpha)
            for label, target, suffix in ((LOCAL_RATE, alpha, ""), (REMOTE_RATE, beta, "@beta")):
                nats_cpu0 = cpu_seconds(nats.proc.pid) if nats.proc else 0.0
                window = trio.run(pairs_round, alpha, target, suffix, plan)
                nats_us = (
                    (cpu_seconds(nats.proc.pid) - nats_cpu0) / window.ops * 1e6
                    if nats.proc and window.ops
                    else 0.0
                )
                sender_us = window.per_op("sender_cpu") * 1e6
                receiver_us = window.per_op("receiver_cpu") * 1e6
                cpu = f"CPU/message: alpha {sender_us:.0f} µs" + (
                    f", beta {receiver_us:.0f} µs, nats {nats_us:.0f} µs" if suffix else ""
                )
                report.add(
                    THROUGHPUT,
                    label,
                    window.rate,
                    "msgs/s",
                    cpu,
                    messages=window.ops,
                    alpha_cpu_us_per_message=sender_us,
                    beta_cpu_us_per_message=receiver_us if suffix else None,
                    nats_cpu_us_per_message=nats_us,
                )
            for label, target, suffix in ((LOCAL_LAT, alpha, ""), (REMOTE_LAT, beta, "@beta")):
                samples = trio.run(latency_samples, alpha, target, suffix, plan.calls)
                stats = summary_ms(samples)
                report.add(
                    LATENCY,
                    label,
                    stats["p50_ms"],
                    "ms p50",
                    f"p99 {stats['p99_ms']:.2f} ms, max {stats['max_ms']:.2f} ms, {len(samples)} samples",
                    **stats,
                )
    report.ratio("cross-hive / local throughput", REMOTE_RATE, LOCAL_RATE)
    report.ratio("cross-hive / local latency p50", REMOTE_LAT, LOCAL_LAT)
    report.ratio("cross-hive / local latency p99", REMOTE_LAT, LOCAL_LAT, key="p99_ms")
    report.note(
        "a cross-hive message is two sqlite commits in alpha (send, then published), a"
        " JetStream store with fsync, one commit in beta before its ack, and beta's own"
        " lease and ack; a local one is send, lease and ack in one hive"
    )


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    plan = Plan.for_args(args.quick)
    report = Report("bench/federation.py", args.quick)
    scratch = Path(tempfile.mkdtemp(prefix="hvfed", dir="/tmp"))
    try:
        run(report, scratch, plan)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    report.emit(args.json)


if __name__ == "__main__":
    main()
