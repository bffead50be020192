"""The daemon's one sqlite file: a group-committing writer task and a pool of readers.

`Store.write(fn)` queues `fn(conn)`; the writer task takes every queued job, runs them in
one transaction (each inside its own savepoint, so one failing job rolls back only itself),
commits once, and wakes each caller with its result once the commit is durable
(`synchronous=FULL` in WAL mode). `Store.read(fn)` runs on a separate connection from a
small pool. All sqlite work happens in worker threads, never on the trio thread: the writer
has a thread of its own for the life of `run_writer` (handing it a batch and being woken
costs a queue put and one wake-up, not a thread-pool job), readers use trio's pool. A batch
that has begun is never interrupted. On cancellation the writer commits what is already
queued before it returns: a caller that was told "done" always finds its write on disk.

A background job (bulk work the daemon does for itself, such as a chunk of due reminders)
goes in a transaction of its own, taking turns with the batches under steady traffic, and
gives way: `writes_waiting()`, asked from the writer's thread while it runs, says whether an
interactive write is waiting, and the job then returns early (after a bounded step). Writes
that were waiting when it began, or queued while it ran, ride in its transaction: the
writer's thread runs them after the job and commits all of them at once, one fsync, instead
of committing the job and handing back to trio for a batch of their own. A write arriving
while a background job runs so waits for one step of it, not for the job. A background job
that is not durable (a chunk of reminders: a power cut undoes it whole, and it is done again)
commits without an fsync, unless a durable write rode in it: the writer's thread then fsyncs
the WAL itself before anyone is told "done", as `synchronous=FULL` would have.
"""

from __future__ import annotations

import logging
import os
import queue
import sqlite3
import threading
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any, Generic, TypeVar

import trio
from trio.lowlevel import Abort, Task, TrioToken

from .errors import storage_full
from .log_once import RateLimitedLog
from .migrations import migrate

log = logging.getLogger(__name__)
T = TypeVar("T")
MAX_BATCH = 1024
FULL_RETRY_SECONDS = 5.0
READERS = 4
CHECKPOINT_SECONDS = 0.5
"""How long after a commit the checkpointer copies the WAL back into the database."""
BACKSTOP_PAGES = 10_000
"""WAL pages (~40 MB) past which the writer checkpoints itself: the checkpointer is behind."""
WAL_LIMIT_BYTES = 8 * 1024 * 1024
"""What the WAL file is cut back to once it starts over. A burst of commits with no pause
between them (a 900-reminder burst and the 900 turns it set off, in one run) grows it, since
it can only start over once a checkpoint finished before the next write; without a limit it
then stays at its largest size for the life of the database."""


def _connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute("PRAGMA busy_timeout=30000")
    return conn


class _Job(Generic[T]):
    __slots__ = ("background", "done", "durable", "error", "fn", "result", "waiter")

    def __init__(
        self, fn: Callable[[sqlite3.Connection], T], background: bool = False, durable: bool = True
    ) -> None:
        self.fn = fn
        self.background = background
        self.durable = durable
        self.done = False
        self.waiter: Task | None = None
        """The task parked on this job until it is committed."""
        self.result: T | None = None
        self.error: BaseException | None = None

    def finish(self) -> None:
        self.done = True
        if self.waiter is not None:
            trio.lowlevel.reschedule(self.waiter)


def _not_cancellable(_: Any) -> Abort:
    return Abort.FAILED


_Failure = list[BaseException]
_Batch = tuple[list[_Job[Any]], TrioToken, Task, _Failure]


class _WriterThread:
    """The thread the writer's batches run in: one for the life of `run_writer`."""

    def __init__(self, run_batch: Callable[[list[_Job[Any]]], None]) -> None:
        self._run_batch = run_batch
        self._batches: queue.SimpleQueue[_Batch | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._loop, name="store-writer", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while (item := self._batches.get()) is not None:
            jobs, token, task, failure = item
            try:
                self._run_batch(jobs)
            except BaseException as exc:  # handed to the waiting task, raised there
                failure.append(exc)
            token.run_sync_soon(trio.lowlevel.reschedule, task)

    async def run(self, jobs: list[_Job[Any]]) -> None:
        """Run the batch in the thread and wait for it; never cancelled midway."""
        failure: _Failure = []
        token, task = trio.lowlevel.current_trio_token(), trio.lowlevel.current_task()
        self._batches.put((jobs, token, task, failure))
        await trio.lowlevel.wait_task_rescheduled(_not_cancellable)
        if failure:
            raise failure[0]

    def stop(self) -> None:
        self._batches.put(None)
        self._thread.join(timeout=10)


def _checkpoint(conn: sqlite3.Connection) -> None:
    conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()


class CannotOpenStore(Exception):
    """The database cannot be opened; the message says why in one sentence."""


class StoreClosed(Exception):
    """A write was queued after the writer stopped."""


class Store:
    """One sqlite database in WAL mode; create with `Store.open`, run `run_writer` in a nursery."""

    def __init__(self, path: Path, writer: sqlite3.Connection, readers: list[sqlite3.Connection]):
        self.path = path
        self._writer = writer
        self._readers = readers
        self._reader_limit = trio.CapacityLimiter(len(readers))
        self._send, self._recv = trio.open_memory_channel[_Job[Any]](MAX_BATCH * 16)
        self._closed = False
        self._interactive = 0
        """Interactive writes queued and not yet committed; kept on the trio thread."""
        self._riders: deque[_Job[Any]] | None = None
        """While a background job runs: the interactive writes queued meanwhile, which its
        transaction takes once the job gives way (the trio thread appends, the writer's
        thread takes)."""
        self._thread: _WriterThread
        self._committed = trio.Event()
        self.checkpoints = 0
        self.wal_syncs = 0
        self.batches = 0
        self.committed_jobs = 0
        self.full_log = RateLimitedLog(log)

    @classmethod
    def open(cls, path: Path) -> Store:
        """Open (creating if needed) and migrate the database. Blocking; call before serving.

        Raises `CannotOpenStore` with one sentence (a full disk says so) when sqlite cannot.
        """
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            writer = _connect(path)
            mode = writer.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if mode != "wal":
                raise CannotOpenStore(f"sqlite refused WAL mode for {path} (got {mode})")
            writer.execute("PRAGMA synchronous=FULL")
            writer.execute(f"PRAGMA wal_autocheckpoint={BACKSTOP_PAGES}")
            writer.execute(f"PRAGMA journal_size_limit={WAL_LIMIT_BYTES}")
            migrate(writer)
            readers = [_connect(path) for _ in range(READERS)]
        except sqlite3.Error as exc:
            full = storage_full(exc)
            if full is not None:
                raise CannotOpenStore(f"cannot open {path}: {full.message}") from exc
            raise CannotOpenStore(f"cannot open {path}: {exc}") from exc
        return cls(path, writer, readers)

    def close(self) -> None:
        self._closed = True
        self._writer.close()
        for conn in self._readers:
            conn.close()

    async def write(
        self, fn: Callable[[sqlite3.Connection], T], background: bool = False, durable: bool = True
    ) -> T:
        """Run `fn` inside the next group commit; return its result once durable.

        A write that is not `durable` returns once committed (every reader sees it, a crash
        of the daemon keeps it) without waiting for an fsync of its own: a batch made only of
        such writes commits without one, and the next durable commit's fsync covers it (WAL
        frames reach the disk in order). Only a power cut or kernel crash before then can undo
        it, so it is for writes whose undoing is harmless: handing out or acking a message,
        which at-least-once delivery then hands out again. Anything that follows from it and
        matters (a reply sent) is a durable write, whose fsync makes this one durable too.

        A `background` write (bulk work such as a burst of due reminders) runs in a
        transaction of its own, taking turns with the batches of other writes; those queued
        while it runs wait for one step of it (it asks `writes_waiting()` between steps) and
        then ride in its transaction.

        An exception raised by `fn` rolls back `fn`'s own changes only and is re-raised here.
        Once queued, a write is waited for even if the caller is cancelled meanwhile (the
        cancellation arrives right after): it commits regardless, and a caller that never
        learned of its own write (a lease granted, an id assigned) would leave state nobody
        owns — a message leased by no one until the lease expired.
        """
        if self._closed:
            raise StoreClosed("the store writer has stopped")
        job: _Job[T] = _Job(fn, background, durable)
        if not background:
            self._interactive += 1
        if self._riders is not None and not background:
            self._riders.append(job)  # rides in the running background job's transaction
        else:
            try:
                await self._send.send(job)
            except BaseException:  # never queued
                if not background:
                    self._interactive -= 1
                raise
        if not job.done:  # bounded: the writer finishes every queued job
            job.waiter = trio.lowlevel.current_task()
            await trio.lowlevel.wait_task_rescheduled(_not_cancellable)
        if job.error is not None:
            raise job.error
        return job.result  # type: ignore[return-value]

    def writes_waiting(self) -> bool:
        """Whether an interactive write is queued and not yet committed. Safe to call from the
        writer's thread: a background job asks it between two steps, and ends early if so."""
        return self._interactive > 0

    async def write_when_space(
        self,
        fn: Callable[[sqlite3.Connection], T],
        what: str,
        background: bool = False,
        durable: bool = True,
    ) -> T:
        """`write` for the daemon's own services (lease reaper, reminder scheduler): a full
        disk is waited out, retrying every few seconds and saying so once a minute, instead
        of ending the service and with it the daemon."""
        while True:
            try:
                return await self.write(fn, background, durable)
            except Exception as exc:
                full = storage_full(exc)
                if full is None:
                    raise
                self.full_log.note(what, "%s waits for disk space: %s", what, full.message)
            await trio.sleep(FULL_RETRY_SECONDS)

    async def read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run `fn` on a reader connection (sees every committed write)."""
        async with self._reader_limit:
            conn = self._readers.pop()
            try:
                return await trio.to_thread.run_sync(fn, conn)
            finally:
                self._readers.append(conn)

    async def run_writer(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """The single writer, and the checkpointer beside it. Commits what is queued when
        cancelled, then returns."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._checkpointer)
            try:
                await self._write_loop(task_status)
            finally:
                nursery.cancel_scope.cancel()

    async def _write_loop(self, task_status: trio.TaskStatus[None]) -> None:
        self._thread = _WriterThread(self._run_batch)
        task_status.started()
        waiting: list[_Job[Any]] = []
        background: deque[_Job[Any]] = deque()
        background_turn = False  # under steady traffic, batches and background jobs take turns
        try:
            while True:
                if not waiting and not background:
                    self._sort(await self._recv.receive(), waiting, background)
                self._take_queued(waiting, background)
                if waiting and not (background and background_turn):
                    batch, waiting[:] = waiting[:MAX_BATCH], waiting[MAX_BATCH:]
                    background_turn = bool(background)  # it was passed over: it goes next
                    await self._commit(batch)
                else:
                    # writes waiting now, or queued while it runs, ride in its transaction
                    self._riders = riders = deque(waiting[:MAX_BATCH])
                    del waiting[:MAX_BATCH]
                    try:
                        await self._commit([background.popleft()])
                    finally:
                        self._riders = None
                    waiting[:0] = riders  # too late to ride: first in the next batch
                    background_turn = False
        finally:
            with trio.CancelScope(shield=True):
                self._closed = True
                try:
                    self._take_queued(waiting, background)
                    while waiting:
                        batch, waiting[:] = waiting[:MAX_BATCH], waiting[MAX_BATCH:]
                        await self._commit(batch)
                        self._take_queued(waiting, background)
                    while background:
                        await self._commit([background.popleft()])
                finally:
                    self._thread.stop()

    @staticmethod
    def _sort(job: _Job[Any], waiting: list[_Job[Any]], background: deque[_Job[Any]]) -> None:
        (background if job.background else waiting).append(job)

    def _take_queued(self, waiting: list[_Job[Any]], background: deque[_Job[Any]]) -> None:
        """Move every job already queued on the channel into its lane, without waiting."""
        while True:
            try:
                job = self._recv.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel):
                return
            self._sort(job, waiting, background)

    async def _commit(self, jobs: list[_Job[Any]]) -> None:
        # A batch taken from the queue always runs to its end: its wait cannot be cancelled
        # (the daemon stopping at that instant must not fail every job of the batch with
        # `Cancelled`). The writer's own cancellation arrives at its next wait, and it drains
        # the queue then.
        failure: BaseException | None = None
        try:
            await self._thread.run(jobs)
        except BaseException as exc:  # the COMMIT itself failed: every job failed
            failure = exc
            full = storage_full(exc)
            if full is not None:  # every write fails alike until space is freed: say it once
                self.full_log.note(
                    "full", "group commit of %d writes failed: %s", len(jobs), full.message
                )
            else:
                log.exception("group commit of %d writes failed", len(jobs))
        for job in jobs:
            if failure is not None and job.error is None:
                job.error = failure
            if not job.background:
                self._interactive -= 1
                job.finish()
        if jobs[0].background:
            if len(jobs) > 1:
                # the writes that rode along reply first: the background job's caller (the
                # reminder scheduler) publishes its events and queues its next chunk after
                await trio.lowlevel.cancel_shielded_checkpoint()
            jobs[0].finish()
        self.batches += 1
        self.committed_jobs += len(jobs)
        self._committed.set()

    async def _checkpointer(self) -> None:
        """Copy committed WAL frames back into the database, off the writer's path.

        sqlite's own checkpoint runs inside the commit that takes the WAL past 1,000 pages:
        that commit (an agent's `Send`, say) waits for the copy and an fsync of the database,
        5-30 ms on the development VM during a reminder burst. Here a connection of its own
        does a PASSIVE checkpoint in a worker thread half a second after writes, which never
        blocks the writer (it appends to the WAL meanwhile) and lets the WAL start over once
        all of it was copied. The writer checkpoints itself only past `BACKSTOP_PAGES`.
        """
        conn = await trio.to_thread.run_sync(_connect, self.path)
        try:
            while True:
                await self._committed.wait()
                self._committed = trio.Event()
                await trio.sleep(CHECKPOINT_SECONDS)
                try:
                    await trio.to_thread.run_sync(_checkpoint, conn)
                except sqlite3.Error as exc:  # a full disk, say: the writer says so itself
                    log.debug("checkpoint failed: %s", exc)
                self.checkpoints += 1
        finally:
            conn.close()

    def _run_batch(self, jobs: list[_Job[Any]]) -> None:
        """Run `jobs` in one transaction; a background job's batch then takes the writes that
        queued behind it (`_riders`, appended to `jobs`) and commits them with it."""
        conn = self._writer
        riders = self._riders if all(job.background for job in jobs) else None
        # sqlite sets `synchronous` per connection, never inside a transaction: a batch of
        # writes that are not durable commits without an fsync, and when a durable write
        # rode in it after all, the WAL is synced here before anyone is told "done"
        relaxed = not any(job.durable for job in jobs) and not riders
        taken = len(jobs)
        if relaxed:
            conn.execute("PRAGMA synchronous=NORMAL")
        try:
            conn.execute("BEGIN IMMEDIATE")
            for job in jobs:
                self._run_job(conn, job)
            while riders and len(jobs) <= MAX_BATCH:
                job = riders.popleft()
                jobs.append(job)
                self._run_job(conn, job)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        finally:
            if relaxed:
                conn.execute("PRAGMA synchronous=FULL")
        if relaxed and any(job.durable for job in jobs[taken:]):
            self._sync_wal()

    def _sync_wal(self) -> None:
        """fsync the WAL, as `synchronous=FULL` does after a commit: every frame written so
        far, the last commit's included, is then on disk."""
        fd = os.open(f"{self.path}-wal", os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        self.wal_syncs += 1

    @staticmethod
    def _run_job(conn: sqlite3.Connection, job: _Job[Any]) -> None:
        conn.execute("SAVEPOINT job")
        try:
            job.result = job.fn(conn)
        except Exception as exc:  # the job's own failure, handed back to its caller
            job.error = exc
            conn.execute("ROLLBACK TO job")
        conn.execute("RELEASE job")
