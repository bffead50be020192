"""The daemon's sockets and connections: the socket a peer arrives on decides who it is.

`admin.sock` speaks the admin role, `web.sock` the web role, and `agents/<name>.sock` the
agent (or manager) role *as that agent*: identity comes from the socket, never from the
payload. Each connection says `Hello`, then sends `Call` frames that are decoded with the
role's union and handled concurrently. Bad input of any kind gets a typed `Error`; framing
damage also closes that connection. Nothing a peer sends can stop the daemon serving
everyone else.

A *peer* is everything behind one door: one agent (its socket), the web process, or the
operator's `hive ctl`s. Each peer is bounded, by `hive.toml` settings: how many connections
it may hold, how many calls it may have running, and how many bytes of unfinished frames
the daemon keeps for it (and for all peers but the operator together). A frame that has
begun must be complete within `frame_timeout_seconds`; a connection with no call running
and nothing sent for `idle_timeout_seconds` is closed (a `wait_for_work` or `subscribe`
stream is a call running, so a harness or a dashboard is never idle); a peer that does not
read a reply within `write_timeout_seconds` is dropped. File descriptors are held back for
the operator: agents and the web process are refused connections `fd_reserve` short of the
process's limit, so `admin.sock` answers whatever they do. Refusals and accept failures are
logged once a minute with a count, never once per connection. A door with a wire of its own
(`host.sock`'s JSON lines, `host_sock.HostDoor`, opened by the daemon through `open_door`)
is served by the same accept loop, as a peer of its own under the same bounds.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import resource
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import msgspec
import trio

from protocol.framing import FrameDecoder, FrameError, FrameTooLarge
from protocol.messages import (
    ALL_OPS,
    PROTOCOL_VERSION,
    ROLE_REQUESTS,
    AgentStateChanged,
    Error,
    Reply,
    Role,
    Welcome,
    call_type,
    op_of,
)
from protocol.wire import encode, hello_decoder, major

from .broker import LeaseHolder
from .config import HiveSettings
from .errors import Fail, storage_full
from .handlers import INLINE, STREAMING, UNARY, Caller
from .hive import Hive
from .log_once import RateLimitedLog
from .store import StoreClosed

log = logging.getLogger(__name__)

MAX_INFLIGHT = 64
"""Calls running at once on one connection (the peer's own cap, `peer_max_calls`, is shared)."""
HELLO_TIMEOUT = 10.0
RECV_CHUNK = 65536
SMALL_CHUNK = 4096
SUN_PATH_MAX = 107
LISTEN_BACKLOG = 128
ADMIN_FD_RESERVE = 16
"""The operator's last fds: admin connections are refused only this close to the limit."""
ACCEPT_CAPACITY_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})
"""accept(2) failing for want of resources: the listener waits and retries, never dies."""
ACCEPT_RETRY = (0.05, 0.1, 0.2, 0.5, 1.0)
_CALL_DECODERS: dict[Role, msgspec.msgpack.Decoder[Any]] = {
    role: msgspec.msgpack.Decoder(call_type(role)) for role in ROLE_REQUESTS
}
_ROLE_OPS: dict[Role, frozenset[str]] = {
    role: frozenset(op_of(t) for t in types) for role, types in ROLE_REQUESTS.items()
}


class DaemonAlreadyRunning(Exception):
    pass


DECODE_ERRORS = (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError)
"""What a body that is framed but not a valid call raises while decoding (a str that is not
UTF-8 surfaces as `UnicodeDecodeError`)."""
PEER_GONE = (trio.BrokenResourceError, trio.ClosedResourceError)
"""A peer that reset or closed its end: the same as end of input, not a daemon error."""


def classify_bad_call(role: Role, body: bytes, exc: Exception) -> Error:
    """Name what is wrong with a call that did not decode, echoing its id when readable."""
    try:
        raw = msgspec.msgpack.decode(body)
    except (*DECODE_ERRORS, RecursionError):
        return Error(id=0, code="bad_frame", message="frame body is not valid MessagePack")
    call_id = 0
    if isinstance(raw, dict):
        rid = raw.get("id")
        if isinstance(rid, int) and not isinstance(rid, bool) and 0 <= rid <= 2**53:
            call_id = rid
        req = raw.get("req")
        op = req.get("op") if isinstance(req, dict) else None
        if isinstance(op, str):
            if op not in ALL_OPS:
                return Error(id=call_id, code="unknown_op", message=f"unknown op {op!r}")
            if op not in _ROLE_OPS[role]:
                return Error(
                    id=call_id,
                    code="forbidden",
                    message=f"op {op!r} is not available on the {role} socket",
                )
    return Error(id=call_id, code="invalid", message=str(exc))


class PeerGone(Exception):
    """The daemon closes a connection on its own account (timeout, a peer that stopped
    reading); `code` and the message go to the peer as a last `Error` when possible."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class ByteBudget:
    """Bytes of unfinished frames a group of connections may keep buffered in the daemon.

    `used` counts bytes really buffered; `reserved` counts big reads in progress. A
    connection reads a big chunk only when its budget has room for it (neither used nor
    reserved), reserving it before the read starts so that others see it; otherwise it
    reads `SMALL_CHUNK`s, counted once they are in, so `used` passes `limit` by at most one
    small chunk per connection. A connection holding a partial frame stops reading while
    `used` is over the limit of its budget (or of the one it is part of), until others
    finish or the frame deadline drops it. A reservation never stalls anyone. Every budget
    shares one wake-up event.
    """

    def __init__(self, limit: int, parent: ByteBudget | None, changed: Changed) -> None:
        self.limit = limit
        self.parent = parent
        self.used = 0
        self.reserved = 0
        self._changed = changed

    def _chain(self) -> list[ByteBudget]:
        chain: list[ByteBudget] = []
        budget: ByteBudget | None = self
        while budget is not None:
            chain.append(budget)
            budget = budget.parent
        return chain

    def adjust(self, delta: int) -> None:
        for budget in self._chain():
            budget.used += delta
        if delta < 0:
            self._changed.fire()

    def reserve(self, delta: int) -> None:
        for budget in self._chain():
            budget.reserved += delta

    def room(self) -> int:
        """Bytes this budget (and every one above it) can still take or reserve."""
        return min(b.limit - b.used - b.reserved for b in self._chain())

    def over(self) -> bool:
        return any(b.used > b.limit for b in self._chain())

    async def wait_until_under(self) -> None:
        while self.over():
            await self._changed.wait()


class Changed:
    """A broadcast wake-up: every waiter wakes on `fire`, then waits for the next one."""

    def __init__(self) -> None:
        self._event = trio.Event()

    def fire(self) -> None:
        self._event.set()
        self._event = trio.Event()

    async def wait(self) -> None:
        await self._event.wait()


@dataclass
class Peer:
    """Everything behind one door: an agent's socket, `web.sock` or `admin.sock`."""

    label: str
    max_connections: int
    budget: ByteBudget
    calls: trio.Semaphore
    connections: int = 0
    admin: bool = False


class Door(Protocol):
    """A socket that speaks another wire than the protocol's frames (`host.sock`'s JSON
    lines), served by the same accept loop under the same peer bounds."""

    def refusal(self, message: str) -> bytes:
        """What a connection refused in the accept loop is told, in its wire."""
        ...

    async def handle(self, stream: trio.SocketStream, peer: Peer) -> None:
        """Serve one accepted connection (the hub closes it and counts it out after)."""
        ...


def raise_fd_limit() -> int:
    """Raise this process's soft RLIMIT_NOFILE to its hard limit; return the soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
    if soft == resource.RLIM_INFINITY:
        soft = 1 << 20
    return soft


def open_fds() -> int:
    """How many file descriptors this process has open (Linux: /proc/self/fd)."""
    try:
        return len(os.listdir("/proc/self/fd")) - 1  # the listing's own fd
    except OSError:
        return 0


async def take(semaphore: trio.Semaphore) -> None:
    """Acquire `semaphore`; a free one is taken with no trip through the scheduler."""
    try:
        semaphore.acquire_nowait()
    except trio.WouldBlock:
        await semaphore.acquire()


def _fd(stream: trio.SocketStream) -> int:
    fd = stream.socket.fileno()
    if fd < 0:
        raise trio.ClosedResourceError("the connection is closed")
    return fd


def write_now(stream: trio.SocketStream, data: bytes) -> int:
    """Write what the socket's buffer takes of `data` now, without waiting; how much."""
    try:
        return os.write(_fd(stream), data)
    except BlockingIOError:
        return 0
    except OSError as exc:  # EPIPE, ECONNRESET: the peer has gone
        raise trio.BrokenResourceError(f"the peer hung up: {exc.strerror}") from exc


async def read_or_wait(stream: trio.SocketStream, size: int, deadline: float) -> bytes | None:
    """Up to `size` bytes from `stream` (`b""` at end of input), waiting for them until
    `deadline`; `None` once it passes.

    Bytes already there are read at once; only a wait builds a cancel scope. Either way the
    caller passes one checkpoint (the wait, or one after the read), so a peer that keeps its
    socket full cannot starve others.
    """
    fd = _fd(stream)
    waited = False
    while True:
        try:
            data = os.read(fd, size)
        except BlockingIOError:
            pass
        except OSError as exc:  # ECONNRESET
            raise trio.BrokenResourceError(f"the peer hung up: {exc.strerror}") from exc
        else:
            if not waited:
                await trio.lowlevel.checkpoint()
            return data
        with trio.move_on_at(deadline):
            await trio.lowlevel.wait_readable(fd)
            waited = True
            continue
        return None


class Connection:
    """One accepted peer: handshake, then concurrent calls until it hangs up or is dropped."""

    def __init__(
        self,
        hive: Hive,
        stream: trio.SocketStream,
        role: Role,
        agent: str | None,
        peer: Peer,
    ):
        self.hive = hive
        self.stream = stream
        self.role = role
        self.agent = agent
        self.peer = peer
        self.label = f"{role}:{agent}" if agent else role
        settings: HiveSettings = hive.settings
        self.max_frame = settings.max_frame_bytes
        self.frame_timeout = settings.frame_timeout_seconds
        self.idle_timeout = settings.idle_timeout_seconds
        self.write_timeout = settings.write_timeout_seconds
        self.holder = LeaseHolder(agent) if agent is not None else None
        self.streams: dict[int, trio.CancelScope] = {}
        self.running = 0
        """Calls started and not finished (streams included): a connection with any is not idle."""
        self._buffered = 0
        """Bytes this connection has counted against its peer's budget."""
        self._send_lock = trio.Lock()
        self._inflight = trio.Semaphore(MAX_INFLIGHT)
        self._inline_run = 0
        """Calls answered inline since this connection last yielded for them."""
        self._scope = trio.CancelScope()
        self.dropped: PeerGone | None = None

    def _frame(self, reply: Reply | Welcome) -> bytes:
        try:
            return encode(reply, self.max_frame)
        except FrameTooLarge as exc:
            reply_id = getattr(reply, "id", 0)
            return encode(Error(id=reply_id, code="too_large", message=f"reply {exc}"))

    async def send(self, reply: Reply | Welcome) -> None:
        """Send one frame; a peer that does not take it within the write timeout is dropped."""
        await self._write(self._frame(reply))

    async def send_many(self, replies: list[Reply]) -> None:
        """Send several frames with one write (a stream's backlog: one wake-up, one syscall)."""
        await self._write(b"".join([self._frame(reply) for reply in replies]))

    async def _write(self, data: bytes) -> None:
        """Write whole frames, in order with every other write on this connection.

        Most replies fit in the socket's buffer at once: they are written there directly,
        with no trip through the scheduler (trio's `send_all` makes two). Only what does not
        fit waits for room, up to the write timeout; a peer that takes nothing for that long
        is dropped."""
        lock = self._send_lock
        try:
            lock.acquire_nowait()
        except trio.WouldBlock:
            await lock.acquire()
        try:
            sent = write_now(self.stream, data)
            if sent < len(data):
                with trio.move_on_after(self.write_timeout) as waited:
                    await self.stream.send_all(memoryview(data)[sent:])
                if waited.cancelled_caught:
                    why = f"no reply read for {self.write_timeout:g}s"
                    self._drop(PeerGone("unavailable", why))
                    raise trio.BrokenResourceError("the peer stopped reading")
        finally:
            lock.release()

    def _drop(self, why: PeerGone) -> None:
        if self.dropped is None:
            self.dropped = why
            log.warning("%s: closing connection: %s", self.label, why.message)
        self._scope.cancel()

    async def serve(self) -> None:
        decoder = FrameDecoder(self.max_frame)
        try:
            with self._scope:
                async with trio.open_nursery() as calls:
                    try:
                        await self._serve(calls, decoder)
                    except PEER_GONE:
                        pass  # a reset is how some peers hang up
                    except (FrameError, PeerGone) as exc:
                        # framing damage or a timeout: say why, then hang up
                        log.warning("%s: closing connection: %s", self.label, exc)
                        self.dropped = exc if isinstance(exc, PeerGone) else None
                        with contextlib.suppress(*PEER_GONE):
                            await self.send(Error(id=0, code=exc.code, message=str(exc)))  # type: ignore[arg-type]
                    finally:
                        calls.cancel_scope.cancel()
        finally:
            self.peer.budget.adjust(-self._buffered)
            self._buffered = 0

    async def _serve(self, calls: trio.Nursery, decoder: FrameDecoder) -> None:
        bodies = await self._read(decoder, handshake=True)
        if not bodies or not await self._welcome(bodies[0]):
            return
        for body in bodies[1:]:
            await self._start_call(calls, body)
        while True:
            bodies = await self._read(decoder)
            if not bodies:
                return
            for body in bodies:
                await self._start_call(calls, body)

    async def _read(self, decoder: FrameDecoder, *, handshake: bool = False) -> list[bytes]:
        """Receive until at least one whole frame is in; `[]` at end of input.

        Deadlines: the handshake must arrive within `HELLO_TIMEOUT`; a frame that has begun
        must end within `frame_timeout`; with nothing begun and no call running, the peer
        may stay silent for `idle_timeout`. Raises `PeerGone` when one passes.
        """
        now = trio.current_time()
        frame_deadline = now + (HELLO_TIMEOUT if handshake else self.frame_timeout)
        idle_deadline = now + (HELLO_TIMEOUT if handshake else self.idle_timeout)
        while True:
            partial = decoder.pending > 0
            # Between frames, and whenever the budget is tight, read in small bites: a read
            # waiting on a quiet connection cannot be resized once data arrives, so hundreds
            # of them waking at once may each overshoot the budget by only a bite.
            # A big read is reserved before it starts, so that the others see it.
            big = partial and self.peer.budget.room() >= RECV_CHUNK
            if big:
                self.peer.budget.reserve(RECV_CHUNK)
            try:
                data = await read_or_wait(
                    self.stream,
                    RECV_CHUNK if big else SMALL_CHUNK,
                    frame_deadline if partial else idle_deadline,
                )
            finally:
                if big:
                    self.peer.budget.reserve(-RECV_CHUNK)
            if data is None:
                if handshake:
                    raise PeerGone("invalid", f"no Hello within {HELLO_TIMEOUT:g}s")
                if partial:
                    raise PeerGone(
                        "bad_frame",
                        f"a frame was not completed within {self.frame_timeout:g}s "
                        f"({decoder.pending} bytes of it arrived)",
                    )
                if self.running:
                    idle_deadline = trio.current_time() + self.idle_timeout
                    continue  # a stream or a long call is running: busy, not idle
                raise PeerGone("unavailable", f"idle for {self.idle_timeout:g}s")
            if not data:
                return []
            if not partial:  # a new frame begins in this chunk
                frame_deadline = trio.current_time() + self.frame_timeout
            bodies = decoder.feed(data)
            del data  # buffered in the decoder now; this copy must not wait with us below
            self._account(decoder.pending)
            if bodies:
                return bodies
            if self.peer.budget.over():
                with trio.move_on_at(frame_deadline):
                    await self.peer.budget.wait_until_under()

    def _account(self, pending: int) -> None:
        delta = pending - self._buffered
        if delta:
            self.peer.budget.adjust(delta)
            self._buffered = pending

    async def _welcome(self, body: bytes) -> bool:
        """Answer `Hello` with `Welcome` or a typed refusal; says whether to go on."""
        try:
            hello = hello_decoder.decode(body)
        except (*DECODE_ERRORS, RecursionError) as exc:
            log.warning("%s: bad Hello: %s", self.label, exc)
            await self.send(Error(id=0, code="invalid", message=f"expected Hello: {exc}"))
            return False
        if major(hello.protocol) != major(PROTOCOL_VERSION):
            log.warning(
                "%s: protocol %s refused (client %r)", self.label, hello.protocol, hello.client
            )
            await self.send(
                Error(
                    id=0,
                    code="version",
                    message=f"protocol {hello.protocol} is not supported; this daemon speaks "
                    f"{PROTOCOL_VERSION}",
                )
            )
            return False
        await self.send(
            Welcome(
                protocol=PROTOCOL_VERSION,
                role=self.role,
                agent=self.agent,
                server_rev=self.hive.rev,
            )
        )
        return True

    async def _start_call(self, calls: trio.Nursery, body: bytes) -> None:
        """Decode a call now (so its raw bytes are not kept while it runs) and start it."""
        # backpressure: stop reading while too many calls run here or for this peer
        await take(self._inflight)
        try:
            await take(self.peer.calls)
        except BaseException:
            self._inflight.release()
            raise
        try:
            call: Any = _CALL_DECODERS[self.role].decode(body)
        except (*DECODE_ERRORS, RecursionError) as exc:
            call = classify_bad_call(self.role, body, exc)
        self.running += 1
        if isinstance(call, Error) or type(call.req) in INLINE:
            # answered from memory (a bad call's error too): a task would cost more than it,
            # and the answers go out in the order the calls came in
            await self._call(call)
            self._inline_run += 1
            if self._inline_run >= MAX_INFLIGHT:  # a read packed with them yields now and then
                self._inline_run = 0
                await trio.lowlevel.checkpoint()
        else:
            calls.start_soon(self._call, call)

    async def _call(self, call: Any) -> None:
        try:
            if isinstance(call, Error):
                log.warning("%s: %s: %s", self.label, call.code, call.message)
                await self.send(call)
                return
            if self.agent is not None:
                self.hive.registry.seen(self.agent)
            caller = Caller(self.hive, self.role, self.agent, self, call.id)
            req = call.req
            try:
                handler = UNARY.get(type(req))
                if handler is not None:
                    reply = await handler(caller, req)
                    reply.id = call.id
                    await self.send(reply)
                else:
                    await self._stream_call(caller, req)
            except Fail as exc:
                await self.send(
                    Error(
                        id=call.id,
                        code=exc.code,
                        message=exc.message,
                        retry_after_seconds=exc.retry_after_seconds,
                    )
                )
            except PEER_GONE:
                raise
            except Exception as exc:
                full = storage_full(exc)
                if full is not None:
                    self.hive.storage_log.note(
                        "storage_full",
                        "%s: %s refused: %s",
                        self.label,
                        type(req).__name__,
                        full.message,
                    )
                    await self.send(Error(id=call.id, code=full.code, message=full.message))
                    return
                log.exception("%s: internal error handling %s", self.label, type(req).__name__)
                await self.send(
                    Error(id=call.id, code="internal", message="internal error; see daemon log")
                )
        except PEER_GONE:
            pass  # the peer went away while we answered; the read loop will notice
        finally:
            self.running -= 1
            self.peer.calls.release()
            self._inflight.release()

    async def _stream_call(self, caller: Caller, req: Any) -> None:
        handler = STREAMING[type(req)]
        if caller.call_id in self.streams:
            raise Fail("conflict", f"call id {caller.call_id} is already streaming")
        with trio.CancelScope() as scope:
            self.streams[caller.call_id] = scope
            try:
                await handler(caller, req, self._emitter(caller.call_id))
            finally:
                del self.streams[caller.call_id]

    def _emitter(self, call_id: int) -> Any:
        async def emit(reply: Reply | list[Reply]) -> None:
            if isinstance(reply, list):
                for one in reply:
                    one.id = call_id
                await self.send_many(reply)
                return
            reply.id = call_id
            await self.send(reply)

        return emit


class SocketHub:
    """Opens, serves and closes the daemon's listening sockets inside a nursery it is given,
    and keeps each peer within its bounds (see the module docstring)."""

    def __init__(self, hive: Hive, nursery: trio.Nursery) -> None:
        self.hive = hive
        self._nursery = nursery
        self._scopes: dict[str, trio.CancelScope] = {}
        settings = hive.settings
        self.fd_limit = raise_fd_limit()
        self.fd_reserve = settings.fd_reserve
        self.connections = 0
        """Open connections on every socket (each holds one fd)."""
        self._other_fds = open_fds()
        self._other_fds_at = time.monotonic()
        self._changed = Changed()
        self.total_budget = ByteBudget(settings.total_buffer, None, self._changed)
        self.peers: dict[str, Peer] = {}
        self.log = RateLimitedLog(log)
        if self.fd_limit - self.fd_reserve < 64:
            log.warning(
                "only %d file descriptors (RLIMIT_NOFILE) and fd_reserve = %d: agents get few",
                self.fd_limit,
                self.fd_reserve,
            )

    def peer(self, key: str) -> Peer:
        """The bounds of the peer behind socket `key` (`admin`, `web`, `agent:<name>`)."""
        found = self.peers.get(key)
        if found is None:
            settings = self.hive.settings
            admin = key == "admin"
            operator = key in ("admin", "host")  # host.sock is the operator's tools too
            found = Peer(
                label=key,
                max_connections={
                    "admin": settings.admin_max_connections,
                    "host": settings.admin_max_connections,
                    "web": settings.web_max_connections,
                }.get(key, settings.agent_max_connections),
                # the operator's budget is its own: agents filling theirs cannot stall it
                budget=ByteBudget(
                    settings.peer_buffer, None if operator else self.total_budget, self._changed
                ),
                calls=trio.Semaphore(settings.peer_max_calls),
                admin=admin,
            )
            self.peers[key] = found
        return found

    async def open_fixed(self) -> None:
        paths = self.hive.paths
        await self._listen(
            "admin", paths.admin_sock, 0o660, "admin", None, self.hive.settings.admin_group
        )
        await self._listen("web", paths.web_sock, 0o660, "web", None, self.hive.settings.web_group)

    async def open_door(self, key: str, path: Path, group: str, door: Door) -> None:
        """Serve `door` (a wire of its own, e.g. `host.sock`) at `path`, mode 0660 for
        `group`, as the peer `key`, under the bounds of every socket."""
        await self._listen(key, path, 0o660, None, None, group, door)

    async def open_agent(self, name: str) -> None:
        if f"agent:{name}" in self._scopes:
            return
        await self._listen(f"agent:{name}", self.hive.paths.agent_sock(name), 0o660, None, name, "")

    def close_agent(self, name: str) -> None:
        scope = self._scopes.pop(f"agent:{name}", None)
        if scope is not None:
            scope.cancel()

    async def _listen(
        self,
        key: str,
        path: Path,
        mode: int,
        role: Role | None,
        agent: str | None,
        group: str,
        door: Door | None = None,
    ) -> None:
        sock = await bind_unix(path, mode, group)
        await self._nursery.start(self._serve, key, sock, path, role, agent, door)

    async def _serve(
        self,
        key: str,
        sock: trio.socket.SocketType,
        path: Path,
        role: Role | None,
        agent: str | None,
        door: Door | None = None,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Serve one listening socket and its connections; unlinks the socket when cancelled."""
        try:
            with trio.CancelScope() as scope:
                self._scopes[key] = scope
                async with trio.open_nursery() as connections:
                    task_status.started()
                    await self._accept_loop(key, sock, role, agent, connections, door)
        finally:
            if self._scopes.get(key) is scope:
                del self._scopes[key]
            sock.close()
            unlink_socket(path)
            if key != "admin" and key != "web":
                self.peers.pop(key, None)

    async def _accept_loop(
        self,
        key: str,
        sock: trio.socket.SocketType,
        role: Role | None,
        agent: str | None,
        connections: trio.Nursery,
        door: Door | None = None,
    ) -> None:
        """Accept for ever; a failure for want of fds or memory waits and retries, logged
        once a minute (trio's own `serve_listeners` logs a traceback every 0.1 s)."""
        failures = 0
        while True:
            try:
                conn, _ = await sock.accept()
            except OSError as exc:
                if exc.errno not in ACCEPT_CAPACITY_ERRNOS:
                    raise
                self.log.note(
                    f"accept:{exc.errno}",
                    "%s: accept failed: %s; retrying",
                    key,
                    os.strerror(exc.errno or 0),
                    level=logging.ERROR,
                )
                await trio.sleep(ACCEPT_RETRY[min(failures, len(ACCEPT_RETRY) - 1)])
                failures += 1
                continue
            failures = 0
            peer = self.peer(key)
            refusal = self._refusal(peer)
            if refusal is not None:
                self.log.note(f"refused:{key}", "%s: refused a connection: %s", key, refusal)
                refuse(
                    conn,
                    door.refusal(refusal)
                    if door is not None
                    else Error(id=0, code="rate_limited", message=refusal, retry_after_seconds=1.0),
                )
                continue
            peer.connections += 1
            self.connections += 1
            if door is not None:
                connections.start_soon(self._handle_door, door, trio.SocketStream(conn), peer)
            else:
                connections.start_soon(self._handle, trio.SocketStream(conn), role, agent, peer)

    def _refusal(self, peer: Peer) -> str | None:
        """Why a new connection for `peer` is refused now, or None to accept it."""
        if peer.connections >= peer.max_connections:
            return (
                f"too many connections to this socket ({peer.connections} open, "
                f"the limit is {peer.max_connections})"
            )
        reserve = ADMIN_FD_RESERVE if peer.admin else self.fd_reserve
        headroom = self.fd_limit - reserve
        if self.connections + self._other_fds >= headroom // 2:
            now = time.monotonic()
            if now - self._other_fds_at > 1.0:  # an estimate of the fds that are not peers'
                self._other_fds = max(0, open_fds() - self.connections)
                self._other_fds_at = now
            if self.connections + self._other_fds + 1 >= headroom:
                return "the daemon is at its file descriptor reserve; try again later"
        return None

    async def _handle(
        self, stream: trio.SocketStream, role: Role | None, agent: str | None, peer: Peer
    ) -> None:
        record = None
        try:
            if agent is not None:
                record = self.hive.registry.agents.get(agent)
                if record is None:  # removed while this connection was being accepted
                    return
                role = record.role
                record.connections += 1
                if record.connections == 1:
                    self.hive.bus.publish(
                        AgentStateChanged(name=agent, state="connected", reason="")
                    )
            assert role is not None
            conn = Connection(self.hive, stream, role, agent, peer)
            stopping = False
            try:
                await conn.serve()
            except PEER_GONE:
                pass
            except trio.Cancelled:
                stopping = True  # the daemon is shutting down
                raise
            except Exception:  # one broken connection must never take the daemon down
                log.exception("%s: connection failed", conn.label)
            finally:
                if conn.holder is not None and conn.holder.leases:
                    # a turn cut short by a shutdown or by the operator's stop is not the
                    # message's failure; a harness that died under it is
                    failed = not (stopping or self._agent_stopping(agent))
                    # the writer outlives the connections, so leases go back even at shutdown
                    # (a caller cancelling the whole daemon may stop the writer first: the
                    # next start requeues what is still leased)
                    with trio.move_on_after(5) as cleanup, contextlib.suppress(StoreClosed):
                        cleanup.shield = True
                        await self.hive.broker.drop_holder(conn.holder, failed)
                if record is not None:
                    record.connections -= 1
                    if record.connections == 0:
                        self.hive.bus.publish(
                            AgentStateChanged(name=agent or "", state="disconnected", reason="")
                        )
        finally:
            peer.connections -= 1
            self.connections -= 1
            with trio.CancelScope(shield=True):
                await stream.aclose()

    async def _handle_door(self, door: Door, stream: trio.SocketStream, peer: Peer) -> None:
        try:
            await door.handle(stream, peer)
        finally:
            peer.connections -= 1
            self.connections -= 1
            with trio.CancelScope(shield=True):
                await stream.aclose()

    def _agent_stopping(self, agent: str | None) -> bool:
        lifecycle = self.hive.lifecycle
        return (
            agent is not None
            and lifecycle is not None
            and agent in lifecycle.agents
            and lifecycle.agents[agent].stopping
        )


def refuse(conn: trio.socket.SocketType, error: Error | bytes) -> None:
    """Answer a connection that will not be served with `error` (a frame, or a door's own
    bytes), and close it, without waiting for anything: the accept loop must stay fast
    under a flood."""
    plain = socket.socket(fileno=conn.detach())
    try:
        plain.setblocking(False)
        with contextlib.suppress(OSError):
            plain.send(error if isinstance(error, bytes) else encode(error))
        with contextlib.suppress(OSError):
            # unread bytes (its Hello) would turn the close into a reset the peer sees
            # before our answer
            plain.recv(RECV_CHUNK)
        with contextlib.suppress(OSError):
            plain.shutdown(socket.SHUT_RDWR)
    finally:
        plain.close()


async def bind_unix(path: Path, mode: int, group: str) -> trio.socket.SocketType:
    """Bind a listening Unix socket at `path`, replacing a stale file but not a live daemon."""
    if len(os.fsencode(path)) > SUN_PATH_MAX:
        raise OSError(
            errno.ENAMETOOLONG, f"socket path longer than {SUN_PATH_MAX} bytes", str(path)
        )
    clear_stale_socket(path)
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        await sock.bind(str(path))
        os.chmod(path, mode)
        if group:
            import grp

            os.chown(path, -1, grp.getgrnam(group).gr_gid)
        sock.listen(LISTEN_BACKLOG)
    except BaseException:
        sock.close()
        raise
    return sock


def clear_stale_socket(path: Path) -> None:
    """Remove a socket file nobody answers on; refuse if a live daemon is behind it."""
    if not (path.exists() or path.is_symlink()):
        return
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
    except OSError:
        unlink_socket(path)
    else:
        raise DaemonAlreadyRunning(f"another daemon is serving {path}")
    finally:
        probe.close()


def unlink_socket(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
