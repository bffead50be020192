"""One daemon connection per MCP session: many tool calls, one connection; a daemon restart
between calls costs nothing but a reconnect, and nothing is sent twice."""

from __future__ import annotations

import threading

import anyio

from protocol import messages as m
from protocol.client import SyncClient
from tests.ag3nt.test_mcp_server import admin_messages, mcp_agent, run
from tests.conftest import DaemonProcess


class Connections:
    """Alice's connection events, as the daemon publishes them (first one in, last one out)."""

    def __init__(self, daemon: DaemonProcess) -> None:
        self.events: list[str] = []
        self._client = SyncClient.connect(str(daemon.paths.admin_sock), timeout=60)
        self._sync = self._client.__enter__()
        self._frames = self._sync.frames(m.Subscribe(kinds=["agent_state_changed"]))
        assert isinstance(next(self._frames), m.Subscribed)
        self._thread = threading.Thread(target=self._follow, daemon=True)
        self._thread.start()

    def _follow(self) -> None:
        try:
            for frame in self._frames:
                event = frame.event if isinstance(frame, m.EventFrame) else None
                if isinstance(event, m.AgentStateChanged) and event.name == "alice":
                    self.events.append(event.state)
        except Exception:  # the daemon stopped
            return


def test_many_tool_calls_use_one_connection(daemon_process: DaemonProcess) -> None:
    seen = Connections(daemon_process)

    async def main() -> None:
        async with mcp_agent(daemon_process, "alice") as alice:
            await alice.ok("whoami")
            for i in range(5):
                await alice.ok("send", to="bob", body=f"note {i}")
            await alice.ok("recv_batch", max=5)
            await alice.ok("set_status", text="busy")
            await anyio.sleep(0.5)
            assert seen.events == ["connected"]  # one connection for all eight calls
        with anyio.fail_after(10):
            while seen.events != ["connected", "disconnected"]:
                await anyio.sleep(0.05)

    run(main)


def test_a_call_after_a_restart_goes_out_once_on_a_new_connection(
    daemon_process: DaemonProcess,
) -> None:
    async def main() -> None:
        async with mcp_agent(daemon_process, "alice") as alice:
            await alice.ok("send", to="bob", body="before")
            await anyio.to_thread.run_sync(daemon_process.stop)
            await anyio.to_thread.run_sync(daemon_process.start)
            # the session's connection died with the old daemon; this call finds it gone,
            # connects again and is sent once
            await alice.ok("send", to="bob", body="after")
            await alice.ok("send", to="bob", body="and again")

    run(main)
    bodies = [r.body for r in admin_messages(daemon_process)]
    assert sorted(bodies) == ["after", "and again", "before"]
