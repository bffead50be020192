"""Round-trips through the protocol stack, and what group commit buys, against in-run baselines.

(a) `Ping` from `HiveClient` through `admin.sock` to a daemon subprocess and back: one call at
a time, then 32 at a time on one connection; and from the blocking `SyncClient`. (b) The
baseline: the same 4-byte length-prefixed framing with nothing behind it, a trio echo server
(another subprocess) returning each frame as it arrives to a trio client doing sequential
round-trips. Rounds of (a) and (b) alternate and each figure is the median round, so drift
on a busy machine hits both sides. (c) Acknowledged `Store.write` INSERTs with 1 and 32
concurrent writers in this process, next to plain sqlite committing one INSERT per
transaction with the same durability (WAL, synchronous=FULL).

Run: `.venv/bin/python bench/rpc.py [--quick] [--json]`. It measures; it never judges.
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import anyio
import trio
from daemon_process import running_daemon
from measure import (
    Counter,
    Probes,
    Window,
    cpu_seconds,
    measure_rate,
    measure_rate_blocking,
    measure_rate_sequential,
)
from report import Report, parse_args

from c0re_priv.store import Store
from protocol import messages as m
from protocol.client import HiveClient, SyncClient
from protocol.framing import FrameDecoder, encode_frame
from protocol.wire import encode_call

CONCURRENCY = 32
WRITERS = 32
RECV_CHUNK = 65536

RAW = "raw framed echo, trio client, sequential"
HIVE_SEQ = "Ping, HiveClient, sequential"
HIVE_CONC = f"Ping, HiveClient, {CONCURRENCY} concurrent on 1 conn"
HIVE_ASYNCIO = "Ping, HiveClient on asyncio, sequential"
SYNC_SEQ = "Ping, SyncClient (blocking), sequential"
SQLITE_1 = "sqlite, 1 INSERT per commit"
STORE_1 = "Store.write, 1 writer"
STORE_N = f"Store.write, {WRITERS} writers"

RPC_SECTION = "round-trips over a Unix socket (daemon and echo server are subprocesses)"
GC_SECTION = "acknowledged durable writes (WAL, synchronous=FULL, in this process)"


@dataclass(frozen=True)
class Plan:
    rounds: int
    warmup: float
    seconds: float
    write_seconds: float

    @classmethod
    def for_args(cls, quick: bool) -> Plan:
        if quick:
            return cls(rounds=1, warmup=0.1, seconds=0.4, write_seconds=0.5)
        return cls(rounds=3, warmup=0.3, seconds=1.5, write_seconds=3.0)


# ------------------------------------------------------------------ (b) the raw baseline


async def serve_echo(path: str) -> None:
    """Echo every length-prefixed frame back on the connection it came from, forever."""
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    await sock.bind(path)
    sock.listen(128)

    async def echo(stream: trio.SocketStream) -> None:
        decoder = FrameDecoder()
        async with stream:
            # a client cancelled mid-call resets the connection: that ends it, nothing more
            with contextlib.suppress(trio.BrokenResourceError):
                while data := await stream.receive_some(RECV_CHUNK):
                    for body in decoder.feed(data):
                        await stream.send_all(encode_frame(body))

    await trio.serve_listeners(echo, [trio.SocketListener(sock)])


@contextmanager
def running_echo_server(path: Path) -> Iterator[int]:
    """The echo server as a subprocess of this script, so it has a thread of its own; its pid."""
    proc = subprocess.Popen([sys.executable, __file__, "--echo-server", str(path)])
    try:
        deadline = time.monotonic() + 10
        while not _accepts(path):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the echo server did not come up")
            time.sleep(0.02)
        yield proc.pid
    finally:
        proc.terminate()
        proc.wait(10)


def _accepts(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(str(path))
        except OSError:
            return False
        return True


async def raw_round_trips(path: Path, plan: Plan, probes: Probes) -> Window:
    frame = encode_call(1, m.Ping())  # the very bytes a Ping call puts on the wire

    async def worker(index: int, counter: Counter) -> None:
        decoder = FrameDecoder()
        async with await trio.open_unix_socket(str(path)) as stream:
            while True:
                await stream.send_all(frame)
                while not decoder.feed(await _receive(stream)):
                    pass
                counter.n += 1

    return await measure_rate(
        worker, workers=1, warmup=plan.warmup, seconds=plan.seconds, probes=probes
    )


async def _receive(stream: trio.SocketStream) -> bytes:
    data = await stream.receive_some(RECV_CHUNK)
    if not data:
        raise ConnectionError("the echo server hung up")
    return data


# ------------------------------------------------------------------ (a) the full stack


async def hive_round_trips(
    admin_sock: Path, plan: Plan, concurrency: int, probes: Probes
) -> Window:
    async with HiveClient.connect(str(admin_sock), client="bench-rpc") as client:

        async def worker(index: int, counter: Counter) -> None:
            while True:
                await client.expect(m.Ping(), m.Pong)
                counter.n += 1

        return await measure_rate(
            worker, workers=concurrency, warmup=plan.warmup, seconds=plan.seconds, probes=probes
        )


def asyncio_round_trips(admin_sock: Path, plan: Plan, probes: Probes) -> Window:
    """`HiveClient` on asyncio, as the MCP server, the harness and the web process run it."""

    async def run() -> Window:
        async with HiveClient.connect(str(admin_sock), client="bench-rpc") as client:
            return await measure_rate_sequential(
                lambda: client.expect(m.Ping(), m.Pong),
                warmup=plan.warmup,
                seconds=plan.seconds,
                probes=probes,
            )

    return anyio.run(run, backend="asyncio")


def sync_round_trips(admin_sock: Path, plan: Plan, probes: Probes) -> Window:
    with SyncClient.connect(str(admin_sock), client="bench-rpc") as client:
        return measure_rate_blocking(
            lambda: client.expect(m.Ping(), m.Pong),
            warmup=plan.warmup,
            seconds=plan.seconds,
            probes=probes,
        )


def cpu_probes(server_pid: int) -> Probes:
    """CPU seconds of the serving process and of this one (the client), all threads."""
    return {"server_cpu": lambda: cpu_seconds(server_pid), "client_cpu": time.process_time}


def bench_round_trips(report: Report, scratch: Path, plan: Plan) -> None:
    echo_sock = scratch / "echo.sock"
    windows: dict[str, list[Window]] = {}
    with (
        running_daemon(scratch / "hive", "[hive]\nautostart = false\n") as daemon,
        running_echo_server(echo_sock) as echo_pid,
    ):
        admin = daemon.paths.admin_sock
        on_echo, on_daemon = cpu_probes(echo_pid), cpu_probes(daemon.pid)
        cases: dict[str, Callable[[], Window]] = {
            RAW: lambda: trio.run(raw_round_trips, echo_sock, plan, on_echo),
            HIVE_SEQ: lambda: trio.run(hive_round_trips, admin, plan, 1, on_daemon),
            HIVE_CONC: lambda: trio.run(hive_round_trips, admin, plan, CONCURRENCY, on_daemon),
            HIVE_ASYNCIO: lambda: asyncio_round_trips(admin, plan, on_daemon),
            SYNC_SEQ: lambda: sync_round_trips(admin, plan, on_daemon),
        }
        # rounds alternate between the cases so that drift on the machine hits them all
        for _ in range(plan.rounds):
            for label, run in cases.items():
                windows.setdefault(label, []).append(run())
    for label, runs in windows.items():
        median = sorted(runs, key=lambda w: w.rate)[len(runs) // 2]
        server_us = median.per_op("server_cpu") * 1e6
        client_us = median.per_op("client_cpu") * 1e6
        report.add(
            RPC_SECTION,
            label,
            median.rate,
            "calls/s",
            f"{median.micros_per_op:.0f} µs/call; CPU/call: server {server_us:.0f} µs,"
            f" client {client_us:.0f} µs",
            micros_per_call=median.micros_per_op,
            server_cpu_us_per_call=server_us,
            client_cpu_us_per_call=client_us,
            rounds=[w.rate for w in runs],
        )
    report.ratio("full stack / raw echo (sequential)", HIVE_SEQ, RAW)
    report.ratio("HiveClient on asyncio / raw echo (sequential)", HIVE_ASYNCIO, RAW)
    report.ratio("SyncClient full stack / raw echo (sequential)", SYNC_SEQ, RAW)
    report.ratio(f"{CONCURRENCY} concurrent / sequential (HiveClient)", HIVE_CONC, HIVE_SEQ)
    report.ratio(
        "daemon CPU per Ping / echo server CPU per frame",
        HIVE_SEQ,
        RAW,
        key="server_cpu_us_per_call",
    )


# ------------------------------------------------------------------ (c) group commit

SCRATCH_TABLE = (
    "CREATE TABLE IF NOT EXISTS bench_scratch ("
    " id INTEGER PRIMARY KEY, writer INTEGER NOT NULL, n INTEGER NOT NULL, at REAL NOT NULL)"
)
INSERT = "INSERT INTO bench_scratch (writer, n, at) VALUES (?, ?, ?)"


async def store_writes(db: Path, plan: Plan, writers: int) -> Window:
    store = Store.open(db)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(store.run_writer)
            await store.write(lambda conn: conn.execute(SCRATCH_TABLE))

            async def worker(index: int, counter: Counter) -> None:
                n = 0
                while True:
                    n += 1
                    await store.write(
                        lambda conn, n=n: conn.execute(INSERT, (index, n, time.time()))
                    )
                    counter.n += 1

            window = await measure_rate(
                worker,
                workers=writers,
                warmup=plan.warmup,
                seconds=plan.write_seconds,
                probes={"batches": lambda: store.batches, "cpu": time.process_time},
            )
            nursery.cancel_scope.cancel()
    finally:
        store.close()
    return window


def sqlite_writes(db: Path, plan: Plan) -> Window:
    conn = sqlite3.connect(db, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute(SCRATCH_TABLE)
        n = 0

        def step() -> None:
            nonlocal n
            n += 1
            conn.execute("BEGIN IMMEDIATE")
            conn.execute(INSERT, (0, n, time.time()))
            conn.execute("COMMIT")

        return measure_rate_blocking(
            step, warmup=plan.warmup, seconds=plan.write_seconds, probes={"cpu": time.process_time}
        )
    finally:
        conn.close()


def bench_group_commit(report: Report, scratch: Path, plan: Plan) -> None:
    raw = sqlite_writes(scratch / "raw.sqlite", plan)
    cpu_us = raw.per_op("cpu") * 1e6
    report.add(
        GC_SECTION,
        SQLITE_1,
        raw.rate,
        "writes/s",
        f"{raw.micros_per_op:.0f} µs/write; CPU {cpu_us:.0f} µs/write",
        cpu_us_per_write=cpu_us,
    )
    for label, writers in ((STORE_1, 1), (STORE_N, WRITERS)):
        window = trio.run(store_writes, scratch / f"store{writers}.sqlite", plan, writers)
        batches = int(window.grew["batches"])
        per_batch = window.ops / batches if batches else float("nan")
        cpu_us = window.per_op("cpu") * 1e6
        report.add(
            GC_SECTION,
            label,
            window.rate,
            "writes/s",
            f"{batches:,} batches, {per_batch:.1f} writes/batch; CPU {cpu_us:.0f} µs/write",
            batches=batches,
            cpu_us_per_write=cpu_us,
            writes=window.ops,
            writes_per_batch=per_batch,
        )
    report.ratio(f"Store {WRITERS} writers / 1 writer", STORE_N, STORE_1)
    report.ratio("Store 1 writer / sqlite", STORE_1, SQLITE_1)
    report.ratio(f"Store {WRITERS} writers / sqlite", STORE_N, SQLITE_1)


def main(argv: list[str] | None = None) -> None:
    def extend(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--echo-server", metavar="PATH", help=argparse.SUPPRESS)

    args = parse_args(__doc__.split("\n", 1)[0], argv, extend)
    if args.echo_server:
        trio.run(serve_echo, args.echo_server)
        return
    plan = Plan.for_args(args.quick)
    report = Report("bench/rpc.py", args.quick)
    scratch = Path(tempfile.mkdtemp(prefix="hvb", dir="/tmp"))
    try:
        bench_round_trips(report, scratch, plan)
        bench_group_commit(report, scratch, plan)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    report.emit(args.json)


if __name__ == "__main__":
    main()
