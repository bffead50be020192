"""The daemon's sockets and connections: the socket a peer arrives on decides who it is.

`admin.sock` speaks the admin role, `web.sock` the web role, and `agents/<name>.sock` the
agent (or manager) role *as that agent*: identity comes from the socket, never from the
payload. Each connection says `Hello`, then sends `Call` frames that are decoded with the
role's union and handled concurrently (bounded per connection). Bad input of any kind gets
a typed `Error`; framing damage also closes that connection. Nothing a peer sends can stop
the daemon serving everyone else.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import socket
from pathlib import Path
from typing import Any

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
from .errors import Fail
from .handlers import STREAMING, UNARY, Caller
from .hive import Hive

log = logging.getLogger(__name__)

MAX_INFLIGHT = 64
HELLO_TIMEOUT = 10.0
RECV_CHUNK = 65536
SUN_PATH_MAX = 107
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


class Connection:
    """One accepted peer: handshake, then concurrent calls until it hangs up."""

    def __init__(self, hive: Hive, stream: trio.SocketStream, role: Role, agent: str | None):
        self.hive = hive
        self.stream = stream
        self.role = role
        self.agent = agent
        self.label = f"{role}:{agent}" if agent else role
        self.max_frame = hive.settings.max_frame_bytes
        self.holder = LeaseHolder(agent) if agent is not None else None
        self.streams: dict[int, trio.CancelScope] = {}
        self._send_lock = trio.Lock()
        self._inflight = trio.Semaphore(MAX_INFLIGHT)

    async def send(self, reply: Reply | Welcome) -> None:
        try:
            frame = encode(reply, self.max_frame)
        except FrameTooLarge as exc:
            reply_id = getattr(reply, "id", 0)
            frame = encode(Error(id=reply_id, code="too_large", message=f"reply {exc}"))
        async with self._send_lock:
            await self.stream.send_all(frame)

    async def serve(self) -> None:
        decoder = FrameDecoder(self.max_frame)
        leftover = await self._handshake(decoder)
        if leftover is None:
            return
        async with trio.open_nursery() as calls:
            try:
                for body in leftover:
                    await self._start_call(calls, body)
                while True:
                    data = await self.stream.receive_some(RECV_CHUNK)
                    if not data:
                        break
                    for body in decoder.feed(data):
                        await self._start_call(calls, body)
            except PEER_GONE:
                pass  # a reset is how some peers hang up
            except FrameError as exc:
                log.warning("%s: closing connection: %s", self.label, exc)
                with contextlib.suppress(*PEER_GONE):
                    await self.send(Error(id=0, code=exc.code, message=str(exc)))  # type: ignore[arg-type]
            finally:
                calls.cancel_scope.cancel()

    async def _handshake(self, decoder: FrameDecoder) -> list[bytes] | None:
        """Read `Hello`, answer `Welcome` or a typed refusal; return frames read past it."""
        bodies: list[bytes] = []
        with trio.move_on_after(HELLO_TIMEOUT):
            while not bodies:
                try:
                    data = await self.stream.receive_some(RECV_CHUNK)
                    if not data:
                        return None
                    bodies = decoder.feed(data)
                except PEER_GONE:
                    return None
                except FrameError as exc:
                    with contextlib.suppress(*PEER_GONE):
                        await self.send(Error(id=0, code=exc.code, message=str(exc)))  # type: ignore[arg-type]
                    return None
        if not bodies:
            log.warning("%s: no Hello within %.0fs", self.label, HELLO_TIMEOUT)
            return None
        try:
            hello = hello_decoder.decode(bodies[0])
        except (*DECODE_ERRORS, RecursionError) as exc:
            log.warning("%s: bad Hello: %s", self.label, exc)
            await self.send(Error(id=0, code="invalid", message=f"expected Hello: {exc}"))
            return None
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
            return None
        await self.send(
            Welcome(
                protocol=PROTOCOL_VERSION,
                role=self.role,
                agent=self.agent,
                server_rev=self.hive.rev,
            )
        )
        return bodies[1:]

    async def _start_call(self, calls: trio.Nursery, body: bytes) -> None:
        await self._inflight.acquire()  # backpressure: stop reading while too many are running
        calls.start_soon(self._call, body)

    async def _call(self, body: bytes) -> None:
        try:
            try:
                call = _CALL_DECODERS[self.role].decode(body)
            except (*DECODE_ERRORS, RecursionError) as exc:
                err = classify_bad_call(self.role, body, exc)
                log.warning("%s: %s: %s", self.label, err.code, err.message)
                await self.send(err)
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
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                raise
            except Exception:
                log.exception("%s: internal error handling %s", self.label, type(req).__name__)
                await self.send(
                    Error(id=call.id, code="internal", message="internal error; see daemon log")
                )
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the peer went away while we answered; the read loop will notice
        finally:
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
        async def emit(reply: Reply) -> None:
            reply.id = call_id
            await self.send(reply)

        return emit


class SocketHub:
    """Opens, serves and closes the daemon's listening sockets inside a nursery it is given."""

    def __init__(self, hive: Hive, nursery: trio.Nursery) -> None:
        self.hive = hive
        self._nursery = nursery
        self._scopes: dict[str, trio.CancelScope] = {}

    async def open_fixed(self) -> None:
        paths = self.hive.paths
        await self._listen(
            "admin", paths.admin_sock, 0o660, "admin", None, self.hive.settings.admin_group
        )
        await self._listen("web", paths.web_sock, 0o660, "web", None, self.hive.settings.web_group)
        if self.hive.settings.host_sock:
            from .host_sock import HostSock  # it imports this module

            # the original's JSON-line door, with admin.sock's permissions (docs/host-sock.md)
            sock = await bind_unix(paths.host_sock, 0o660, self.hive.settings.admin_group)
            await self._nursery.start(HostSock(self.hive).serve, sock, paths.host_sock)

    async def open_agent(self, name: str) -> None:
        if f"agent:{name}" in self._scopes:
            return
        await self._listen(f"agent:{name}", self.hive.paths.agent_sock(name), 0o660, None, name, "")

    def close_agent(self, name: str) -> None:
        scope = self._scopes.pop(f"agent:{name}", None)
        if scope is not None:
            scope.cancel()

    async def _listen(
        self, key: str, path: Path, mode: int, role: Role | None, agent: str | None, group: str
    ) -> None:
        sock = await bind_unix(path, mode, group)
        await self._nursery.start(self._serve, key, sock, path, role, agent)

    async def _serve(
        self,
        key: str,
        sock: trio.socket.SocketType,
        path: Path,
        role: Role | None,
        agent: str | None,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Serve one listening socket and its connections; unlinks the socket when cancelled."""
        listener = trio.SocketListener(sock)

        async def handle(stream: trio.SocketStream) -> None:
            await self._handle(stream, role, agent)

        try:
            with trio.CancelScope() as scope:
                self._scopes[key] = scope
                async with trio.open_nursery() as connections:
                    task_status.started()
                    await trio.serve_listeners(handle, [listener], handler_nursery=connections)
        finally:
            if self._scopes.get(key) is scope:
                del self._scopes[key]
            with trio.CancelScope(shield=True):
                await listener.aclose()
            unlink_socket(path)

    async def _handle(
        self, stream: trio.SocketStream, role: Role | None, agent: str | None
    ) -> None:
        record = None
        if agent is not None:
            record = self.hive.registry.agents.get(agent)
            if record is None:  # removed while this connection was being accepted
                await stream.aclose()
                return
            role = record.role
            record.connections += 1
            if record.connections == 1:
                self.hive.bus.publish(AgentStateChanged(name=agent, state="connected", reason=""))
        assert role is not None
        conn = Connection(self.hive, stream, role, agent)
        stopping = False
        try:
            await conn.serve()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
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
                with trio.move_on_after(5) as cleanup:
                    cleanup.shield = True
                    await self.hive.broker.drop_holder(conn.holder, failed)
            if record is not None:
                record.connections -= 1
                if record.connections == 0:
                    self.hive.bus.publish(
                        AgentStateChanged(name=agent or "", state="disconnected", reason="")
                    )
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
        sock.listen(128)
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
