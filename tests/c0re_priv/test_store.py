"""The store's writer: group commit, and the background lane bulk work (reminder bursts) uses
so it never holds up interactive writes for more than the one job already running."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable
from functools import partial
from pathlib import Path

import pytest
import trio
import trio.testing

from c0re_priv import store as store_module
from c0re_priv.store import Store


def table(conn: sqlite3.Connection) -> None:
    conn.execute("CREATE TABLE IF NOT EXISTS t (lane TEXT, txn INTEGER)")


async def test_waiting_writes_share_one_commit_and_background_jobs_go_alone(
    short_tmp: Path,
) -> None:
    store = Store.open(short_tmp / "s.sqlite")
    gate = threading.Event()
    order: list[str] = []

    def blocker(conn: sqlite3.Connection) -> None:
        table(conn)
        gate.wait(10)  # holds the writer while the other jobs queue up behind it
        order.append("blocker")

    def job(lane: str):  # type: ignore[no-untyped-def]
        def fn(conn: sqlite3.Connection) -> None:
            order.append(lane)

        return fn

    async with trio.open_nursery() as nursery:
        await nursery.start(store.run_writer)
        nursery.start_soon(store.write, blocker)
        await trio.testing.wait_all_tasks_blocked()
        for i in range(2):
            nursery.start_soon(lambda i=i: store.write(job(f"bg{i}"), background=True))
        await trio.testing.wait_all_tasks_blocked()
        for i in range(3):
            nursery.start_soon(store.write, job(f"fg{i}"))
        await trio.testing.wait_all_tasks_blocked()
        batches_before = store.batches
        gate.set()
        with trio.fail_after(10):
            while store.committed_jobs < 6:
                await trio.sleep(0.01)
        # the interactive writes, queued last, commit first and together; the background
        # jobs follow, one transaction each
        assert order[0] == "blocker"
        assert sorted(order[1:4]) == ["fg0", "fg1", "fg2"] and sorted(order[4:]) == ["bg0", "bg1"]
        assert store.batches - batches_before == 1 + 1 + 2
        nursery.cancel_scope.cancel()
    store.close()


async def test_background_work_still_progresses_under_steady_traffic(short_tmp: Path) -> None:
    store = Store.open(short_tmp / "s.sqlite")
    async with trio.open_nursery() as nursery:
        await nursery.start(store.run_writer)
        await store.write(table)
        stop = trio.Event()

        async def traffic() -> None:
            while not stop.is_set():
                await store.write(lambda c: c.execute("INSERT INTO t VALUES ('fg', 0)"))

        for _ in range(8):
            nursery.start_soon(traffic)
        with trio.fail_after(10):
            for _ in range(20):
                await store.write(
                    lambda c: c.execute("INSERT INTO t VALUES ('bg', 0)"), background=True
                )
        stop.set()
        nursery.cancel_scope.cancel()
    count = (
        sqlite3.connect(short_tmp / "s.sqlite")
        .execute("SELECT count(*) FROM t WHERE lane = 'bg'")
        .fetchone()[0]
    )
    assert count == 20
    store.close()


async def test_a_running_background_job_sees_a_write_queue_up_behind_it(short_tmp: Path) -> None:
    """`writes_waiting()` is what lets a background job end early: asked from the writer's
    thread, it turns true once an interactive write is queued, and false once it committed.
    A cancelled or refused write leaves nothing counted."""
    store = Store.open(short_tmp / "s.sqlite")
    started = threading.Event()
    seen: list[bool] = []

    def background(conn: sqlite3.Connection) -> None:
        table(conn)
        seen.append(store.writes_waiting())
        started.set()
        for _ in range(2000):  # up to 10 s: until the interactive write below is queued
            if store.writes_waiting():
                seen.append(True)
                return
            threading.Event().wait(0.005)

    async with trio.open_nursery() as nursery:
        await nursery.start(store.run_writer)
        nursery.start_soon(lambda: store.write(background, background=True))
        await trio.to_thread.run_sync(started.wait, 10)
        with trio.fail_after(10):
            await store.write(lambda c: c.execute("INSERT INTO t VALUES ('fg', 0)"))
        assert seen == [False, True]
        assert not store.writes_waiting()
        with trio.CancelScope() as scope:
            scope.cancel()
            await store.write(lambda c: None)  # cancelled before it was queued
        assert not store.writes_waiting()
        nursery.cancel_scope.cancel()
    store.close()


async def test_the_checkpointer_copies_the_wal_back_off_the_writers_path(short_tmp: Path) -> None:
    """Committed pages reach the database file soon after the commit, copied by the
    checkpointer (a connection of its own), although the writer's own checkpoint would wait
    for 10,000 pages: no commit pays for the copy."""
    path = short_tmp / "s.sqlite"
    store = Store.open(path)
    async with trio.open_nursery() as nursery:
        await nursery.start(store.run_writer)
        await store.write(lambda c: c.execute("CREATE TABLE b (x BLOB)"))
        await trio.sleep(0.1)
        before = (path.stat().st_size, store.checkpoints)

        def rows(conn: sqlite3.Connection) -> None:
            conn.executemany("INSERT INTO b VALUES (randomblob(4000))", [()] * 200)

        await store.write(rows)
        assert path.stat().st_size == before[0]  # in the WAL only, so far
        with trio.fail_after(10):
            while store.checkpoints == before[1]:
                await trio.sleep(0.05)
        assert path.stat().st_size > 200 * 4000
        nursery.cancel_scope.cancel()
    store.close()


async def test_writes_queued_behind_a_background_job_commit_in_its_transaction(
    short_tmp: Path,
) -> None:
    """Writes that queue while a background job runs ride in its transaction, once it gives
    way: one commit for the job and all of them, and each gets its own result or error."""
    store = Store.open(short_tmp / "s.sqlite")
    started = threading.Event()

    def background(conn: sqlite3.Connection) -> str:
        conn.execute("INSERT INTO t VALUES ('bg', 0)")
        started.set()
        for _ in range(2000):  # gives way once all three writes below are queued
            if store._interactive == 3:
                return "bg"
            threading.Event().wait(0.005)
        raise AssertionError("the writes never queued")

    def fg(n: int) -> Callable[[sqlite3.Connection], int]:
        def fn(conn: sqlite3.Connection) -> int:
            if n == 1:
                raise ValueError("this one fails alone")
            conn.execute("INSERT INTO t VALUES ('fg', ?)", (n,))
            return n

        return fn

    results: dict[str, object] = {}

    async def write(
        name: str, fn: Callable[[sqlite3.Connection], object], background: bool = False
    ) -> None:
        try:
            results[name] = await store.write(fn, background=background)
        except ValueError as exc:
            results[name] = str(exc)

    async with trio.open_nursery() as nursery:
        await nursery.start(store.run_writer)
        await store.write(table)
        batches, jobs = store.batches, store.committed_jobs
        with trio.fail_after(10):
            async with trio.open_nursery() as writes:
                writes.start_soon(write, "bg", background, True)
                await trio.to_thread.run_sync(started.wait, 10)
                for n in range(3):
                    writes.start_soon(write, f"fg{n}", fg(n))
        nursery.cancel_scope.cancel()
    assert results == {"bg": "bg", "fg0": 0, "fg1": "this one fails alone", "fg2": 2}
    assert (store.batches - batches, store.committed_jobs - jobs) == (1, 4)
    rows = sqlite3.connect(short_tmp / "s.sqlite").execute("SELECT lane, txn FROM t").fetchall()
    assert sorted(rows) == [("bg", 0), ("fg", 0), ("fg", 2)]
    store.close()


async def test_a_batch_of_writes_that_need_no_fsync_commits_without_one(short_tmp: Path) -> None:
    """`durable=False` writes alone commit with `synchronous=NORMAL` (no fsync of their own);
    one durable write in the batch, or a later batch, gets the fsync back."""
    store = Store.open(short_tmp / "s.sqlite")
    gate = threading.Event()

    def level(conn: sqlite3.Connection) -> int:
        return int(conn.execute("PRAGMA synchronous").fetchone()[0])

    def blocker(conn: sqlite3.Connection) -> int:
        gate.wait(10)  # the writes below queue up behind it, into one batch
        return level(conn)

    async with trio.open_nursery() as nursery:
        await nursery.start(store.run_writer)
        assert await store.write(level, durable=False) == 1  # NORMAL
        assert await store.write(level) == 2  # FULL again
        got: dict[str, int] = {}

        async def write(name: str, fn: Callable[[sqlite3.Connection], int], durable: bool) -> None:
            got[name] = await store.write(fn, durable=durable)

        async with trio.open_nursery() as writes:
            writes.start_soon(write, "blocker", blocker, False)
            await trio.sleep(0.1)
            writes.start_soon(write, "relaxed", level, False)
            writes.start_soon(write, "durable", level, True)
            await trio.sleep(0.1)
            gate.set()
        assert got == {"blocker": 1, "relaxed": 2, "durable": 2}
        nursery.cancel_scope.cancel()
    store.close()


async def test_a_background_job_that_need_not_be_durable_syncs_only_for_a_durable_rider(
    short_tmp: Path,
) -> None:
    """A `durable=False` background job commits with `synchronous=NORMAL`: alone, or with
    riders that need no fsync either, it makes none; a durable write that rides in it gets the
    WAL fsynced by the writer's thread before it is told "done"."""
    store = Store.open(short_tmp / "s.sqlite")

    def level(conn: sqlite3.Connection) -> int:
        return int(conn.execute("PRAGMA synchronous").fetchone()[0])

    started = threading.Event()

    def waits_for(riders: int) -> Callable[[sqlite3.Connection], int]:
        def background(conn: sqlite3.Connection) -> int:
            started.set()  # inside its transaction: a write queued now rides in it
            for _ in range(2000):  # gives way once the riders are queued
                if store._interactive == riders:
                    return level(conn)
                threading.Event().wait(0.005)
            raise AssertionError("the riders never queued")

        return background

    got: dict[str, int] = {}

    async def write(name: str, fn: Callable[[sqlite3.Connection], int], **how: bool) -> None:
        got[name] = await store.write(fn, **how)

    async with trio.open_nursery() as nursery:
        await nursery.start(store.run_writer)
        assert await store.write(waits_for(0), background=True, durable=False) == 1
        assert store.wal_syncs == 0
        with trio.fail_after(10):
            for durable in (False, True):
                started.clear()
                async with trio.open_nursery() as writes:
                    writes.start_soon(
                        partial(write, "bg", waits_for(1), background=True, durable=False)
                    )
                    await trio.to_thread.run_sync(started.wait, 10)
                    writes.start_soon(partial(write, "rider", level, durable=durable))
                assert got == {"bg": 1, "rider": 1}  # one transaction, at NORMAL
                assert store.wal_syncs == int(durable)
        assert await store.write(level) == 2  # FULL again
        nursery.cancel_scope.cancel()
    store.close()


async def test_the_wal_file_is_cut_back_once_a_burst_is_over(
    short_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A WAL that could not start over (a reader held its snapshot through a burst of commits)
    grows past the limit; once it is all copied back, the next write starts it over and cuts
    the file back to the limit."""
    monkeypatch.setattr(store_module, "WAL_LIMIT_BYTES", 256 * 1024)
    store = Store.open(short_tmp / "s.sqlite")
    wal = short_tmp / "s.sqlite-wal"
    reader = sqlite3.connect(short_tmp / "s.sqlite", isolation_level=None)

    def insert(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT INTO big VALUES (randomblob(4000))")

    async with trio.open_nursery() as nursery:
        await nursery.start(store.run_writer)
        await store.write(lambda conn: conn.execute("CREATE TABLE big (b BLOB)"))
        reader.execute("BEGIN")
        reader.execute("SELECT count(*) FROM big").fetchall()  # the snapshot pins the WAL
        for _ in range(300):
            await store.write(insert)
        assert wal.stat().st_size > 1024 * 1024
        reader.execute("COMMIT")
        # copy it all back, as the store's checkpointer does half a second after writes (and
        # may be doing right now: then this one is busy, and the next finds it all copied)
        with trio.fail_after(10):
            while True:
                busy, frames, copied = reader.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                if not busy and frames == copied:
                    break
                await trio.sleep(0.05)
        await store.write(insert)
        assert wal.stat().st_size <= 256 * 1024
        nursery.cancel_scope.cancel()
    reader.close()
    store.close()
