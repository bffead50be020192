"""The MCP server kept loaded in the harness (`ag3nt.mcp_listener`) and the relay a claude run
starts to reach it (`ag3nt.mcp_relay`): the official `mcp` client over stdio to the relay, as
Claude Code speaks to it, with the listener in this process and a real daemon subprocess."""

from __future__ import annotations

import json
import stat
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mcp import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client

from ag3nt.forge_tools import FORGE_TOOLS
from ag3nt.mcp_listener import listening
from ag3nt.mcp_server import AGENT_TOOLS, MANAGER_TOOLS
from protocol import messages as m
from protocol.client import SyncClient
from tests.conftest import DaemonProcess

RELAY = [sys.executable, "-m", "ag3nt.mcp_relay"]


def server_argv(daemon: DaemonProcess, name: str) -> list[str]:
    return [sys.executable, "-m", "ag3nt", "mcp", "--socket", str(daemon.paths.agent_sock(name))]


def relay_params(listener: Path, daemon: DaemonProcess, name: str) -> StdioServerParameters:
    argv = [*RELAY, str(listener), *server_argv(daemon, name)]
    return StdioServerParameters(command=argv[0], args=argv[1:])


async def text(session: ClientSession, tool: str, **args: Any) -> str:
    result = await session.call_tool(tool, args)
    out = "\n".join(getattr(b, "text", "") for b in result.content)
    assert not result.is_error, f"{tool}{args} failed: {out}"
    return out


@asynccontextmanager
async def relayed(listener: Path, daemon: DaemonProcess, name: str) -> AsyncIterator[ClientSession]:
    params = relay_params(listener, daemon, name)
    async with stdio_client(params) as (read, write), ClientSession(read, write) as session:
        await session.initialize()
        yield session


def run(fn: Callable[[], Awaitable[None]]) -> None:
    anyio.run(fn, backend="asyncio")  # the harness's backend


def states(daemon: DaemonProcess) -> dict[str, str]:
    with SyncClient.connect(str(daemon.paths.admin_sock)) as c:
        return {r.body: r.state for r in c.expect(m.ListMessages(limit=200), m.Messages).messages}


def test_runs_talk_through_the_relay_one_session_after_another(
    daemon_process: DaemonProcess,
) -> None:
    """As claude turns do: each run is a fresh relay and session on the same listener."""

    async def main() -> None:
        alice_sock = str(daemon_process.paths.agent_sock("alice"))
        bob_sock = str(daemon_process.paths.agent_sock("bob"))
        async with (
            listening(alice_sock, "agent") as alice,
            listening(bob_sock, "agent") as bob,
        ):
            for turn in range(3):
                async with relayed(alice, daemon_process, "alice") as session:
                    listed = await session.list_tools()
                    assert sorted(t.name for t in listed.tools) == sorted(AGENT_TOOLS + FORGE_TOOLS)
                    assert (await text(session, "whoami")).startswith("name: alice\nrole: agent")
                    sent = await text(session, "send", to="bob", body=f"turn {turn}")
                    assert sent.startswith("sent #")
                async with relayed(bob, daemon_process, "bob") as session:
                    got = await text(session, "recv", wait_seconds=5)
                    assert f"turn {turn}" in got and "from alice" in got

    run(main)
    assert {k: v for k, v in states(daemon_process).items() if k.startswith("turn")} == {
        f"turn {n}": "acked" for n in range(3)
    }


def test_a_managers_listener_serves_the_manager_tools(daemon_process: DaemonProcess) -> None:
    async def main() -> None:
        async with (
            listening(str(daemon_process.paths.agent_sock("boss")), "manager") as boss,
            relayed(boss, daemon_process, "boss") as session,
        ):
            listed = await session.list_tools()
            assert sorted(t.name for t in listed.tools) == sorted(
                AGENT_TOOLS + FORGE_TOOLS + MANAGER_TOOLS
            )

    run(main)


def test_the_socket_is_private_and_gone_when_the_listener_stops(
    daemon_process: DaemonProcess,
) -> None:
    async def main() -> Path:
        async with listening(str(daemon_process.paths.agent_sock("alice")), "agent") as path:
            assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
            assert stat.S_IMODE(path.stat().st_mode) == 0o600
            assert stat.S_ISSOCK(path.stat().st_mode)
            return path

    path = anyio.run(main, backend="asyncio")
    assert not path.parent.exists()


def test_without_a_listener_the_relay_runs_the_server_itself(
    daemon_process: DaemonProcess, tmp_path: Path
) -> None:
    """The harness's listener is gone (or never came up): the run still has its tools."""
    gone = tmp_path / "no-such.sock"

    async def main() -> None:
        params = relay_params(gone, daemon_process, "alice")
        errlog = (tmp_path / "stderr").open("w")
        async with (
            stdio_client(params, errlog=errlog) as (read, write),
            ClientSession(read, write) as session,
        ):
            await session.initialize()
            assert (await text(session, "whoami")).startswith("name: alice")
            assert "sent #" in await text(session, "send", to="bob", body="via the fallback")

    run(main)
    assert "starting the MCP server itself" in (tmp_path / "stderr").read_text()
    assert states(daemon_process)["via the fallback"] == "queued"


def _raw_session(path: Path, payload: bytes, *, read_reply: bool) -> bytes:
    """Connect, send `payload`, half-close; what the listener answered before it closed
    (or reset the connection)."""
    import socket

    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(20)
        s.connect(str(path))
        out = b""
        try:
            s.sendall(payload)
            s.shutdown(socket.SHUT_WR)
            while read_reply and (chunk := s.recv(65536)):
                out += chunk
        except (ConnectionResetError, BrokenPipeError):  # the listener closed on us
            pass
        return out


INIT: dict[str, Any] = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-06-18",
        "capabilities": {},
        "clientInfo": {"name": "t", "version": "0"},
    },
}


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    garbage=st.lists(
        st.one_of(
            st.binary(max_size=300),
            st.text(max_size=200).map(str.encode),
            st.builds(
                lambda d: json.dumps(d).encode(),
                st.dictionaries(st.sampled_from(["jsonrpc", "id", "method", "params"]), st.none()),
            ),
        ),
        max_size=5,
    )
)
def test_garbage_on_the_socket_ends_only_its_own_session(
    daemon_process: DaemonProcess, garbage: list[bytes]
) -> None:
    async def main() -> None:
        async with listening(str(daemon_process.paths.agent_sock("alice")), "agent") as path:
            payload = b"".join(g.replace(b"\n", b" ") + b"\n" for g in garbage)
            await anyio.to_thread.run_sync(lambda: _raw_session(path, payload, read_reply=True))
            # a client that hangs up mid-line, and one too long to be a message
            await anyio.to_thread.run_sync(
                lambda: _raw_session(path, b'{"jsonrpc"', read_reply=False)
            )
            reply = await anyio.to_thread.run_sync(
                lambda: _raw_session(path, json.dumps(INIT).encode() + b"\n", read_reply=True)
            )
            assert json.loads(reply.splitlines()[0])["id"] == 1
            async with relayed(path, daemon_process, "alice") as session:
                assert (await text(session, "whoami")).startswith("name: alice")

    run(main)


def test_a_line_over_the_limit_closes_that_session(
    daemon_process: DaemonProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The limit bounds what a session buffers: a line still without its end past it."""
    import ag3nt.mcp_listener as listener_module

    monkeypatch.setattr(listener_module, "MAX_LINE", 4096)

    async def main() -> None:
        async with listening(str(daemon_process.paths.agent_sock("alice")), "agent") as path:
            huge = json.dumps({**INIT, "params": {**INIT["params"], "x": "a" * 200_000}})
            t0 = time.monotonic()
            reply = await anyio.to_thread.run_sync(
                lambda: _raw_session(path, huge.encode() + b"\n", read_reply=True)
            )
            assert reply == b"" and time.monotonic() - t0 < 10
            async with relayed(path, daemon_process, "alice") as session:
                assert (await text(session, "whoami")).startswith("name: alice")

    run(main)


def test_the_relay_alone_passes_bytes_both_ways_and_exits_on_the_servers_close(
    tmp_path: Path,
) -> None:
    """No MCP here: a plain server that answers what it read once the relay passed on the end
    of its stdin (a half-close), then closes; the relay exits 0 on that close."""
    import socket
    import threading

    path = tmp_path / "echo.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(1)

    def echo_once() -> None:
        conn, _ = server.accept()
        with conn:
            data = b""
            while chunk := conn.recv(4096):  # until the relay's half-close
                data += chunk
            conn.sendall(data.upper())

    t = threading.Thread(target=echo_once, daemon=True)
    t.start()
    out = subprocess.run(
        [*RELAY, str(path), "false"], input=b"hello relay\n", capture_output=True, timeout=20
    )
    server.close()
    assert (out.returncode, out.stdout) == (0, b"HELLO RELAY\n"), out.stderr


def test_connections_past_the_session_limit_are_closed_and_the_listener_goes_on(
    daemon_process: DaemonProcess,
) -> None:
    """Whatever floods the socket (only the agent's own uid can) gets closed connections,
    not the harness's file descriptors; once the flood ends, runs are served again."""
    import socket

    from ag3nt.mcp_listener import MAX_SESSIONS

    def flood(path: Path) -> tuple[list[socket.socket], list[bytes]]:
        held = []
        for _ in range(MAX_SESSIONS):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(str(path))
            held.append(s)
        time.sleep(0.5)  # the listener has taken them all as sessions
        refused = []
        for _ in range(3):
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.settimeout(10)
                s.connect(str(path))
                refused.append(s.recv(100))  # b"": closed at once
        return held, refused

    async def main() -> None:
        async with listening(str(daemon_process.paths.agent_sock("alice")), "agent") as path:
            held, refused = await anyio.to_thread.run_sync(flood, path)
            assert refused == [b"", b"", b""]
            for s in held:
                s.close()
            with anyio.fail_after(30):
                while True:  # the held sessions end as the listener reads their EOF
                    try:
                        async with relayed(path, daemon_process, "alice") as session:
                            assert (await text(session, "whoami")).startswith("name: alice")
                            return
                    except Exception:
                        await anyio.sleep(0.2)

    run(main)
