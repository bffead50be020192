"""The hyperhive MCP server kept loaded in the harness, one session per connection.

Claude Code starts the MCP servers of its config for every run, and the claude runtime runs
the CLI once per turn. Started as `python -m ag3nt mcp`, the server spent ~1.8 s of CPU on
every turn importing the `mcp` SDK and building its tool schemas, and the CLI waited for it
before its first model call. So the runtimes serve the same server (`build_server`, the same
tools and errors) from the harness, where it is built once, on a Unix socket in a directory
only this uid can enter (`mkdtemp`, 0700; inside a sandbox `/tmp` is the sandbox's own). The
command in the CLI's config is `ag3nt.mcp_relay`, which copies its stdio to that socket; the
scripted runtime starts the same relay once for its life. Each connection is one MCP
session, framed as on stdio (one JSON-RPC message per line); all sessions share one daemon
connection (`DaemonLink`), since they are all this agent. A session that fails is logged
and closed, and at most `MAX_SESSIONS` are open at once; the listener goes on.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import cast

import anyio
import anyio.abc
from anyio.streams.buffered import BufferedByteReceiveStream
from mcp.server.mcpserver import MCPServer
from mcp.server.stdio import stdio_server

from protocol.framing import DEFAULT_MAX_FRAME

from .mcp_server import DaemonLink, build_server

log = logging.getLogger("ag3nt.mcp_listener")
MAX_LINE = 8 * DEFAULT_MAX_FRAME
"""The longest JSON-RPC line a session accepts: room for a frame's worth of escaped text."""
SUN_PATH_MAX = 107
"""The longest path a Unix socket can be bound to on Linux (108 bytes with the NUL)."""
MAX_SESSIONS = 16
"""Sessions served at once. The CLI runs one at a time per agent; connections past this are
closed at once, so whatever floods the socket cannot take the harness's file descriptors."""
ACCEPT_RETRY_SECONDS = 0.5


class _Lines:
    """The two file ends the stdio transport reads and writes, over one socket connection."""

    def __init__(self, stream: anyio.abc.ByteStream) -> None:
        self._stream = stream
        self._buffered = BufferedByteReceiveStream(stream)

    def __aiter__(self) -> _Lines:
        return self

    async def __anext__(self) -> str:
        try:
            line = await self._buffered.receive_until(b"\n", MAX_LINE)
        except anyio.DelimiterNotFound:
            log.warning("an MCP session sent a line over %d bytes; closing it", MAX_LINE)
            raise StopAsyncIteration from None
        except (anyio.IncompleteRead, anyio.EndOfStream, anyio.BrokenResourceError):
            raise StopAsyncIteration from None
        return line.decode("utf-8", "replace")

    async def write(self, text: str) -> None:
        try:
            await self._stream.send(text.encode())
        except anyio.BrokenResourceError:
            # the transport's writer ends quietly on this one: the client has gone
            raise anyio.ClosedResourceError from None

    async def flush(self) -> None:
        return None


async def serve_session(server: MCPServer, stream: anyio.abc.ByteStream) -> None:
    """One MCP session on `stream`, until the client closes it. Never raises (but cancelled)."""
    lines = _Lines(stream)
    file = cast(anyio.AsyncFile[str], lines)  # the transport uses __aiter__, write and flush
    try:
        async with stream, stdio_server(file, file) as (read, write):
            # the SDK's own in-memory transport reaches the low-level server the same way
            lowlevel = server._lowlevel_server
            await lowlevel.run(read, write, lowlevel.create_initialization_options())
    except Exception:
        log.warning("an MCP session failed", exc_info=True)


@asynccontextmanager
async def listening(agent_socket: str, role: str) -> AsyncIterator[Path]:
    """Serve the tools of `role` on a new socket; yield its path until the block ends.

    Raises OSError when no socket can be made (no writable temporary directory, a path too
    long to bind); the caller then keeps starting the server per run."""
    directory = Path(tempfile.mkdtemp(prefix="hive-mcp-"))
    try:
        path = directory / "mcp.sock"
        if len(str(path).encode()) > SUN_PATH_MAX:
            raise OSError(f"{path}: too long for a Unix socket (set TMPDIR to a short path)")
        listener = await anyio.create_unix_listener(path, mode=0o600)
        async with listener, anyio.create_task_group() as tg:
            link = DaemonLink(agent_socket)
            await tg.start(link.run)
            tg.start_soon(_accept, listener, build_server(link, role))
            yield path
            tg.cancel_scope.cancel()
    finally:
        shutil.rmtree(directory, ignore_errors=True)


async def _accept(listener: anyio.abc.SocketListener, server: MCPServer) -> None:
    """Serve each connection as a session, at most `MAX_SESSIONS` at once; an accept that
    fails (out of file descriptors) is retried, never the end of the listener."""
    active = 0

    async def session(stream: anyio.abc.SocketStream) -> None:
        nonlocal active
        try:
            await serve_session(server, stream)
        finally:
            active -= 1

    async with anyio.create_task_group() as tg:
        while True:
            try:
                stream = await listener.accept()
            except OSError as exc:
                log.warning("cannot accept an MCP session (%s); trying again", exc)
                await anyio.sleep(ACCEPT_RETRY_SECONDS)
                continue
            if active >= MAX_SESSIONS:
                log.warning("%d MCP sessions are open; closing a new one", active)
                await stream.aclose()
                continue
            active += 1
            tg.start_soon(session, stream)
