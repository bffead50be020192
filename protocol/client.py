"""Clients of the daemon: an async one on anyio (trio or asyncio) and a blocking one for the CLI.

`HiveClient` multiplexes many calls over one connection, each reply routed to the call that
sent its `id`; streaming calls (`Subscribe`, `WaitForWork`) receive every frame with their id
until they are closed, which sends `Cancel` to the daemon. A stream whose consumer falls too
far behind is closed with an `unavailable` error rather than stalling the other calls of the
connection. The client never retries on its own: a lost connection fails every pending call
with `ConnectionLost`.

Who reads the socket (leader/follower): a call made while nobody reads becomes the reader
itself and reads until its own reply is in, routing any other frame it meets on the way, so
a lone call costs what a plain send-then-receive costs. Calls made meanwhile wait for their
reply to be routed to them. When the reading call is done and others still wait (or a stream
is open), the connection's reader task takes over, until nothing is left in flight.
"""

from __future__ import annotations

import itertools
import math
import os
import socket
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager, suppress
from pathlib import Path
from typing import TypeVar

import anyio
import anyio.lowlevel
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from .framing import DEFAULT_MAX_FRAME, FrameDecoder, FrameError
from .messages import PROTOCOL_VERSION, Cancel, Error, Hello, Reply, Request, Welcome
from .wire import encode, encode_call, reply_decoder, welcome_decoder

R = TypeVar("R", bound=Reply)
STREAM_BUFFER = 4096
ROOT_RUN_DIR = "/run/hyperhive"


def default_run_dir() -> Path:
    """Where a daemon's sockets are when nobody says: `HIVE_RUN_DIR`, else `/run/hyperhive`
    for root, else `$XDG_RUNTIME_DIR/hyperhive` (or `/tmp/hyperhive-<uid>`). The daemon binds
    there and every client looks there, so the rule is written once, here."""
    if run_dir := os.environ.get("HIVE_RUN_DIR"):
        return Path(run_dir)
    if os.geteuid() == 0:
        return Path(ROOT_RUN_DIR)
    runtime_dir = os.environ.get("XDG_RUNTIME_DIR")
    return Path(runtime_dir) / "hyperhive" if runtime_dir else Path(f"/tmp/hyperhive-{os.getuid()}")


class HiveError(Exception):
    """The daemon answered with a typed `Error`; `code` says which kind."""

    def __init__(self, code: str, message: str, retry_after_seconds: float | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.retry_after_seconds = retry_after_seconds

    @classmethod
    def from_reply(cls, err: Error) -> HiveError:
        return cls(err.code, err.message, err.retry_after_seconds)


class ConnectionLost(HiveError):
    """The connection is gone. `sent` is `False` when the call it failed never left this
    process (the connection was already closed, or the write failed), so the daemon cannot
    have acted on it; `True` when that is unknown."""

    def __init__(
        self, message: str = "connection to the daemon was lost", sent: bool = True
    ) -> None:
        super().__init__("unavailable", message)
        self.sent = sent


def _check(reply: Reply) -> Reply:
    if isinstance(reply, Error):
        raise HiveError.from_reply(reply)
    return reply


class _Answer:
    """Where the reply of one unary call lands: cheaper than a channel for a single frame
    (and no event at all when the call reads its reply itself)."""

    __slots__ = ("event", "reply")

    def __init__(self) -> None:
        self.event: anyio.Event | None = None
        self.reply: Reply | HiveError | None = None

    def put(self, reply: Reply | HiveError) -> None:
        if self.reply is None:
            self.reply = reply
            if self.event is not None:
                self.event.set()

    async def wait(self) -> None:
        if self.reply is None:
            self.event = anyio.Event()
            await self.event.wait()


_READER = object()
"""`HiveClient._owner` while the connection's reader task reads the socket."""


CONNECT_RETRY = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5)
CONNECT_PATIENCE = 10.0
"""How long a connect waits for room in a daemon's full listen backlog (a flood)."""


class Wire:
    """A connected Unix socket, read and written directly (it is non-blocking), waiting
    through anyio only when it must: anyio's socket streams pass through the event loop
    before every read and every write, which is most of what a small call costs.

    Only one task reads (the client's reader) and writes are serialised by the client."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.waits = 0
        """How many times `receive` had to wait: a reader that did not passes a checkpoint."""

    @classmethod
    async def connect(cls, path: str) -> Wire:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            waited = 0.0
            for attempt in itertools.count():
                try:
                    sock.connect(path)
                    break
                except BlockingIOError:  # the daemon's listen backlog is full: try again
                    if waited >= CONNECT_PATIENCE:
                        raise
                    pause = CONNECT_RETRY[min(attempt, len(CONNECT_RETRY) - 1)]
                    await anyio.sleep(pause)
                    waited += pause
        except BaseException:
            sock.close()
            raise
        return cls(sock)

    def receive_now(self, size: int = 65536) -> bytes | None:
        """Up to `size` bytes already there, `b""` at end of input, `None` when there are
        none yet; a reset raises `OSError`."""
        try:
            return self.sock.recv(size)
        except BlockingIOError:
            return None

    async def receive(self, size: int = 65536) -> bytes:
        """Up to `size` bytes, waiting for some; `b""` at end of input. A reset, or the
        socket closed meanwhile, raises `OSError`. Bytes already there are returned without
        a checkpoint, so that a cancellation never loses any: a caller that loops passes one
        of its own between reads (`anyio.lowlevel.checkpoint`)."""
        while True:
            data = self.receive_now(size)
            if data is not None:
                return data
            self.waits += 1
            try:
                await anyio.wait_readable(self.sock)  # a spurious wake-up waits again
            except anyio.ClosedResourceError as exc:
                raise OSError("the connection was closed") from exc

    def send_now(self, data: bytes | memoryview) -> int:
        """Write what the socket's buffer takes of `data` now; how much. A peer that has
        gone raises `OSError`."""
        try:
            return self.sock.send(data)
        except BlockingIOError:
            return 0

    async def send(self, data: bytes | memoryview, *, begun: bool = False) -> None:
        """Write all of `data` (one or more whole frames), waiting for room as needed.
        Cut short once part of a frame is out (`begun`: some of it already was), it ends
        the connection: the peer could only read garbage after half a frame."""
        view = memoryview(data)
        try:
            while view:
                sent = self.send_now(view)
                begun = begun or sent > 0
                view = view[sent:]
                if view:
                    await anyio.wait_writable(self.sock)
        except BaseException:
            if begun and view:
                self.hang_up()
            raise

    def hang_up(self) -> None:
        """End the connection both ways (the reader sees end of input); close comes later."""
        with suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        anyio.notify_closing(self.sock)  # a task waiting on it is woken, not left hanging
        self.sock.close()


class HiveClient:
    """One connection to a daemon socket. Create with `HiveClient.connect(path)`."""

    def __init__(self, stream: Wire, welcome: Welcome, decoder: FrameDecoder) -> None:
        self._stream = stream
        self.welcome = welcome
        self._decoder = decoder
        """The connection's frames so far (the handshake's decoder, carried on)."""
        self._max_frame = decoder.max_frame
        self._ids = itertools.count(1)
        self._pending: dict[int, MemoryObjectSendStream[Reply | HiveError] | _Answer] = {}
        # uncontended (one call at a time), taking the lock costs no trip through the loop
        self._send_lock = anyio.Lock(fast_acquire=True)
        self._closed: HiveError | None = None
        self._ended = anyio.Event()
        self._owner: object = None
        """Who reads the socket now: `None`, the reader task (`_READER`), or the `_Answer`
        of the call reading for its own reply."""
        self._wake_reader = anyio.Event()

    @property
    def closed(self) -> HiveError | None:
        """Why the connection ended, or `None` while it is up. A connection with nothing in
        flight is not watched: that the daemon went away meanwhile is found by the next call
        (which fails with `ConnectionLost(sent=False)`, so it can be sent again elsewhere)."""
        return self._closed

    async def wait_closed(self) -> HiveError:
        """Wait until the connection is found to have ended (see `closed`); why it ended."""
        await self._ended.wait()
        assert self._closed is not None
        return self._closed

    @classmethod
    @asynccontextmanager
    async def connect(
        cls, path: str, client: str = "hive", max_frame: int = DEFAULT_MAX_FRAME
    ) -> AsyncIterator[HiveClient]:
        """Connect, say `Hello`, and serve replies until the block exits."""
        try:
            stream = await Wire.connect(path)
        except OSError as exc:
            raise ConnectionLost(f"cannot connect to {path}: {exc.strerror or exc}") from exc
        try:
            decoder = FrameDecoder(max_frame)
            with suppress(OSError):
                # a refused connection may be closed before our Hello is in, its answer
                # (`rate_limited`: too many connections) already waiting to be read
                await stream.send(encode(Hello(protocol=PROTOCOL_VERSION, client=client)))
            first, leftover = await _read_one(stream, decoder)
            answer = welcome_decoder.decode(first)
            if isinstance(answer, Error):
                raise HiveError.from_reply(answer)
            self = cls(stream, answer, decoder)
            raised: BaseException | None = None
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._read_loop, leftover)
                try:
                    yield self
                except BaseException as exc:
                    # re-raised below, outside the task group, so callers see the error
                    # itself rather than an ExceptionGroup wrapping it
                    raised = exc
                finally:
                    tg.cancel_scope.cancel()
            if raised is not None:
                raise raised
        finally:
            stream.close()

    async def _read_loop(self, leftover: list[bytes]) -> None:
        """The reader task: reads while it holds the socket (`_hand_over`), else sleeps."""
        try:
            for body in leftover:
                self._route(body)
            while self._closed is None:
                if self._owner is not _READER:
                    self._wake_reader = anyio.Event()
                    await self._wake_reader.wait()
                    continue
                waits = self._stream.waits
                if not await self._read_some():
                    return
                if not self._pending:
                    self._owner = None  # nothing in flight: the next call reads for itself
                if self._stream.waits == waits:  # a socket never empty starves no one
                    await anyio.lowlevel.checkpoint()
        finally:
            self._end(ConnectionLost())

    async def _read_some(self) -> bool:
        """Read what the socket has (waiting for some) and route every whole frame; `False`
        once the connection has ended."""
        try:
            data = await self._stream.receive(65536)
        except OSError:
            data = b""
        if not data:
            self._end(ConnectionLost())
            return False
        try:
            bodies = self._decoder.feed(data)
        except FrameError as exc:
            self._end(ConnectionLost(f"damaged frame from the daemon: {exc}"))
            return False
        for body in bodies:
            self._route(body)
        return True

    def _hand_over(self) -> None:
        """Nobody reads now: if anything is still in flight, the reader task takes over."""
        if self._owner is None and self._pending and self._closed is None:
            self._owner = _READER
            self._wake_reader.set()

    def _end(self, reason: HiveError) -> None:
        """The connection is over: fail everything in flight with `reason` (once)."""
        if self._closed is not None:
            return
        self._closed = reason
        self._ended.set()
        self._wake_reader.set()
        for chan in self._pending.values():
            if isinstance(chan, _Answer):
                chan.put(reason)
                continue
            with suppress(anyio.WouldBlock, anyio.BrokenResourceError, anyio.ClosedResourceError):
                chan.send_nowait(reason)
            chan.close()
        self._pending.clear()

    def _route(self, body: bytes) -> None:
        reply: Reply = reply_decoder.decode(body)
        chan = self._pending.get(reply.id)
        if chan is None:
            return  # a late frame for a call that already finished
        if isinstance(chan, _Answer):
            chan.put(reply)
            return
        try:
            chan.send_nowait(reply)
        except anyio.WouldBlock:
            del self._pending[reply.id]
            chan.close()
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            del self._pending[reply.id]

    def _open(self, buffer: float) -> tuple[int, MemoryObjectReceiveStream[Reply | HiveError]]:
        if self._closed is not None:
            raise ConnectionLost(self._closed.message, sent=False)
        call_id = next(self._ids)
        send, recv = anyio.create_memory_object_stream[Reply | HiveError](buffer)
        self._pending[call_id] = send
        return call_id, recv

    async def _send(self, call_id: int, req: Request) -> None:
        """Write one call's frame whole, in order with the others. A frame the socket takes
        at once (most) needs no lock and no trip through the loop; the rest of one it did
        not take is written under the lock, so frames are never interleaved."""
        frame = encode_call(call_id, req, self._max_frame)
        try:
            sent = 0 if self._send_lock.locked() else self._stream.send_now(frame)
            if sent < len(frame):
                async with self._send_lock:
                    await self._stream.send(memoryview(frame)[sent:], begun=sent > 0)
        except OSError as exc:  # a frame not wholly sent: the daemon cannot have acted on it
            lost = ConnectionLost(f"connection to the daemon was lost: {exc}", sent=False)
            if len(self._pending) <= 1:
                self._end(lost)  # nothing else in flight: nothing left to read either
            else:
                self._hand_over()  # the replies already sent to the others are read first
            raise lost from exc

    async def call(self, req: Request) -> Reply:
        """Send one request and return its reply; a typed `Error` raises `HiveError`."""
        if self._closed is not None:
            raise ConnectionLost(self._closed.message, sent=False)
        call_id = next(self._ids)
        answer = self._pending[call_id] = _Answer()
        try:
            await self._send(call_id, req)
            if self._owner is None:  # nobody reads: read for ourselves, and for the others
                self._owner = answer
                waits = self._stream.waits
                while answer.reply is None and await self._read_some():
                    pass
                if self._stream.waits == waits:
                    await anyio.lowlevel.checkpoint()
            else:
                await answer.wait()
        finally:
            self._pending.pop(call_id, None)
            if self._owner is answer:
                self._owner = None
                self._hand_over()
        reply = answer.reply
        if isinstance(reply, HiveError):
            raise reply
        assert reply is not None
        return _check(reply)

    async def expect(self, req: Request, reply_type: type[R]) -> R:
        """`call`, checking the reply's type."""
        reply = await self.call(req)
        if not isinstance(reply, reply_type):
            raise HiveError(
                "internal", f"expected {reply_type.__name__}, got {type(reply).__name__}"
            )
        return reply

    @asynccontextmanager
    async def stream(self, req: Request) -> AsyncIterator[ReplyStream]:
        """Send a streaming request; iterate its frames; leaving the block cancels it."""
        call_id, recv = self._open(STREAM_BUFFER)
        try:
            await self._send(call_id, req)
            self._hand_over()  # the reader task serves the stream for as long as it is open
            yield ReplyStream(self, recv)
        finally:
            with recv:
                if self._pending.pop(call_id, None) is not None and self._closed is None:
                    with (
                        anyio.CancelScope(shield=True),
                        anyio.move_on_after(5),
                        suppress(ConnectionLost),
                    ):
                        await self._send(next(self._ids), Cancel(call=call_id))


class ReplyStream:
    """The frames of one streaming call. Not a generator: a cancelled wait loses nothing."""

    def __init__(self, client: HiveClient, recv: MemoryObjectReceiveStream[Reply | HiveError]):
        self._client = client
        self._recv = recv

    def __aiter__(self) -> ReplyStream:
        return self

    def ready(self, limit: int) -> list[Reply]:
        """Up to `limit` frames that have already arrived, without waiting for more."""
        frames: list[Reply] = []
        while len(frames) < limit:
            try:
                item = self._recv.receive_nowait()
            except (anyio.WouldBlock, anyio.EndOfStream, anyio.ClosedResourceError):
                break  # the next `__anext__` says why a closed stream ended
            if isinstance(item, HiveError):
                raise item
            frames.append(_check(item))
        return frames

    async def __anext__(self) -> Reply:
        try:
            item = await self._recv.receive()
        except (anyio.EndOfStream, anyio.ClosedResourceError):
            if self._client._closed is not None:
                raise self._client._closed from None
            raise HiveError(
                "unavailable", "stream closed: the consumer fell too far behind"
            ) from None
        if isinstance(item, HiveError):
            raise item
        return _check(item)


async def _read_one(stream: Wire, decoder: FrameDecoder) -> tuple[bytes, list[bytes]]:
    while True:
        try:
            data = await stream.receive(65536)
        except OSError:  # a reset, or closed
            data = b""
        if not data:
            raise ConnectionLost("the daemon closed the connection during the handshake")
        bodies = decoder.feed(data)
        if bodies:
            return bodies[0], bodies[1:]


class SyncClient:
    """A blocking client for one-shot CLI calls; no streams, no concurrency."""

    def __init__(self, sock: socket.socket, welcome: Welcome, max_frame: int) -> None:
        self._sock = sock
        self.welcome = welcome
        self._decoder = FrameDecoder(max_frame)
        self._max_frame = max_frame
        self._ids = itertools.count(1)
        self._ready: list[bytes] = []

    @classmethod
    @contextmanager
    def connect(
        cls,
        path: str,
        client: str = "hive-cli",
        max_frame: int = DEFAULT_MAX_FRAME,
        timeout: float | None = 30.0,
    ) -> Iterator[SyncClient]:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            try:
                sock.connect(path)
            except OSError as exc:
                raise ConnectionLost(f"cannot connect to {path}: {exc.strerror or exc}") from exc
            self = cls(
                sock, Welcome(protocol="", role="admin", agent=None, server_rev=""), max_frame
            )
            with suppress(OSError):  # refused: the answer may be waiting (see `HiveClient`)
                sock.sendall(encode(Hello(protocol=PROTOCOL_VERSION, client=client)))
            answer = welcome_decoder.decode(self._next_body())
            if isinstance(answer, Error):
                raise HiveError.from_reply(answer)
            self.welcome = answer
            yield self
        finally:
            sock.close()

    def _next_body(self) -> bytes:
        while not self._ready:
            try:
                data = self._sock.recv(65536)
            except OSError as exc:
                raise ConnectionLost(f"connection lost: {exc}") from exc
            if not data:
                raise ConnectionLost()
            self._ready.extend(self._decoder.feed(data))
        return self._ready.pop(0)

    def call(self, req: Request) -> Reply:
        call_id = next(self._ids)
        try:
            self._sock.sendall(encode_call(call_id, req, self._max_frame))
        except OSError as exc:
            raise ConnectionLost(f"connection lost: {exc}") from exc
        while True:
            reply: Reply = reply_decoder.decode(self._next_body())
            if reply.id == call_id:
                return _check(reply)

    def expect(self, req: Request, reply_type: type[R]) -> R:
        reply = self.call(req)
        if not isinstance(reply, reply_type):
            raise HiveError(
                "internal", f"expected {reply_type.__name__}, got {type(reply).__name__}"
            )
        return reply

    def frames(self, req: Request, limit: float = math.inf) -> Iterator[Reply]:
        """Blocking iteration over a streaming request's frames (for `hive ctl events`)."""
        call_id = next(self._ids)
        self._sock.sendall(encode_call(call_id, req, self._max_frame))
        count = 0
        while count < limit:
            reply: Reply = reply_decoder.decode(self._next_body())
            if reply.id == call_id:
                count += 1
                yield _check(reply)


__all__ = ["ConnectionLost", "HiveClient", "HiveError", "SyncClient", "default_run_dir"]
