"""How the benchmarks time things: a rate over a fixed window after a warm-up, or percentiles.

Rates are counted, not estimated: workers bump a shared `Counter` for each completed
operation, and the rate is the count accrued between two snapshots taken after the warm-up.
Workers run until the window closes and are then cancelled, so a slow operation in flight at
the end is simply not counted.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import trio


class Counter:
    __slots__ = ("n",)

    def __init__(self) -> None:
        self.n = 0


@dataclass
class Window:
    """What happened between the two snapshots."""

    ops: int
    seconds: float
    grew: dict[str, float] = field(default_factory=dict)
    """How much each probe's reading grew over the window (batches, CPU seconds, …)."""

    @property
    def rate(self) -> float:
        return self.ops / self.seconds

    @property
    def micros_per_op(self) -> float:
        return self.seconds / self.ops * 1e6 if self.ops else float("nan")

    def per_op(self, probe: str) -> float:
        return self.grew[probe] / self.ops if self.ops else float("nan")


Probes = dict[str, Callable[[], float]]
"""Readings taken at both ends of a window, by name."""


def children(parent: int) -> dict[int, list[bytes]]:
    """The processes whose parent is `parent`, each with its argv, from /proc."""
    found: dict[int, list[bytes]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == parent:
            found[int(entry.name)] = argv
    return found


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) used so far by process `pid`, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def measure_rate(
    worker: Callable[[int, Counter], Awaitable[None]],
    *,
    workers: int,
    warmup: float,
    seconds: float,
    probes: Probes | None = None,
) -> Window:
    """Run `workers` copies of `worker(index, counter)`; count ops over `seconds` after `warmup`.

    The workers live in a nursery owned by this call and are cancelled when the window
    closes; an exception in any worker propagates.
    """
    counter = Counter()
    probes = probes or {}
    async with trio.open_nursery() as nursery:
        for index in range(workers):
            nursery.start_soon(worker, index, counter)
        await trio.sleep(warmup)
        ops0, read0, t0 = counter.n, _read(probes), time.perf_counter()
        await trio.sleep(seconds)
        ops1, read1, t1 = counter.n, _read(probes), time.perf_counter()
        nursery.cancel_scope.cancel()
    return Window(ops1 - ops0, t1 - t0, {name: read1[name] - read0[name] for name in probes})


def _read(probes: Probes) -> dict[str, float]:
    return {name: probe() for name, probe in probes.items()}


async def measure_rate_sequential(
    step: Callable[[], Awaitable[object]],
    *,
    warmup: float,
    seconds: float,
    probes: Probes | None = None,
) -> Window:
    """`measure_rate_blocking` for an awaited step, on any event loop (asyncio or trio)."""
    probes = probes or {}
    deadline = time.perf_counter() + warmup
    while time.perf_counter() < deadline:
        await step()
    ops, read0, t0 = 0, _read(probes), time.perf_counter()
    deadline = t0 + seconds
    while (now := time.perf_counter()) < deadline:
        await step()
        ops += 1
    read1 = _read(probes)
    return Window(ops, now - t0, {name: read1[name] - read0[name] for name in probes})


def measure_rate_blocking(
    step: Callable[[], object], *, warmup: float, seconds: float, probes: Probes | None = None
) -> Window:
    """Call `step()` back to back on this thread; count calls over `seconds` after `warmup`."""
    probes = probes or {}
    deadline = time.perf_counter() + warmup
    while time.perf_counter() < deadline:
        step()
    ops, read0, t0 = 0, _read(probes), time.perf_counter()
    deadline = t0 + seconds
    while (now := time.perf_counter()) < deadline:
        step()
        ops += 1
    read1 = _read(probes)
    return Window(ops, now - t0, {name: read1[name] - read0[name] for name in probes})


async def latencies(
    call: Callable[[], Awaitable[object]], calls: int, budget: float
) -> list[float]:
    """Seconds taken by each of up to `calls` back-to-back calls; stops after `budget` seconds.

    One untimed call goes first: first-touch costs (page cache, decoder caches) are not
    the figure.
    """
    await call()
    samples: list[float] = []
    budget_end = time.perf_counter() + budget
    while len(samples) < calls and (not samples or time.perf_counter() < budget_end):
        start = time.perf_counter()
        await call()
        samples.append(time.perf_counter() - start)
    return samples


def latencies_blocking(call: Callable[[], object], calls: int, budget: float) -> list[float]:
    """`latencies` for a blocking call, on this thread."""
    call()
    samples: list[float] = []
    budget_end = time.perf_counter() + budget
    while len(samples) < calls and (not samples or time.perf_counter() < budget_end):
        start = time.perf_counter()
        call()
        samples.append(time.perf_counter() - start)
    return samples


def percentile(samples: list[float], pct: float) -> float:
    """Nearest-rank percentile (`pct` in 0..100) of a non-empty sample."""
    ordered = sorted(samples)
    rank = max(1, round(pct / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def summary_ms(samples: list[float]) -> dict[str, float]:
    """p50, p99, mean and max of samples in seconds, as milliseconds."""
    return {
        "p50_ms": percentile(samples, 50) * 1000,
        "p99_ms": percentile(samples, 99) * 1000,
        "mean_ms": statistics.fmean(samples) * 1000,
        "max_ms": max(samples) * 1000,
        "samples": len(samples),
    }
