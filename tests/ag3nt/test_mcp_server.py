"""The MCP tools as an agent's runtime uses them: `hive agent mcp` spoken to by the official
`mcp` client over stdio, against a real daemon subprocess."""

from __future__ import annotations

import sys
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest
from mcp import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client

from ag3nt.mcp_server import AGENT_TOOLS, MANAGER_TOOLS
from protocol import messages as m
from protocol.client import SyncClient
from tests.conftest import DaemonProcess


class Agent:
    """One `hive agent mcp` process on one agent's socket, driven by the official client."""

    def __init__(self, session: ClientSession) -> None:
        self.session = session

    async def ok(self, tool: str, **args: Any) -> str:
        result = await self.session.call_tool(tool, args)
        text = "\n".join(getattr(b, "text", "") for b in result.content)
        assert not result.is_error, f"{tool}{args} failed: {text}"
        return text

    async def error(self, tool: str, **args: Any) -> str:
        result = await self.session.call_tool(tool, args)
        text = "\n".join(getattr(b, "text", "") for b in result.content)
        assert result.is_error, f"{tool}{args} should have failed, got: {text}"
        return text


@asynccontextmanager
async def mcp_agent(daemon: DaemonProcess, name: str) -> AsyncIterator[Agent]:
    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "ag3nt", "mcp", "--socket", str(daemon.paths.agent_sock(name))],
    )
    async with stdio_client(params) as (read, write), ClientSession(read, write) as session:
        await session.initialize()
        yield Agent(session)


def run(fn: Callable[[], Awaitable[None]]) -> None:
    # asyncio: the backend `hive agent mcp` and the runtimes use with the official client
    anyio.run(fn, backend="asyncio")


def admin_messages(daemon: DaemonProcess) -> list[m.MessageRow]:
    with SyncClient.connect(str(daemon.paths.admin_sock)) as c:
        return c.expect(m.ListMessages(limit=200), m.Messages).messages


def test_an_agent_sees_exactly_the_agent_tools(daemon_process: DaemonProcess) -> None:
    async def main() -> None:
        async with mcp_agent(daemon_process, "alice") as alice:
            listed = await alice.session.list_tools()
            assert sorted(t.name for t in listed.tools) == sorted(AGENT_TOOLS)
            send = next(t for t in listed.tools if t.name == "send")
            assert set(send.input_schema["properties"]) == {"to", "body", "in_reply_to"}
            assert "operator" in (send.description or "")
        async with mcp_agent(daemon_process, "boss") as boss:
            listed = await boss.session.list_tools()
            assert sorted(t.name for t in listed.tools) == sorted(AGENT_TOOLS + MANAGER_TOOLS)

    run(main)


def test_send_then_recv_delivers_once_and_acks(daemon_process: DaemonProcess) -> None:
    async def main() -> None:
        async with (
            mcp_agent(daemon_process, "alice") as alice,
            mcp_agent(daemon_process, "bob") as bob,
        ):
            assert (await bob.ok("recv")) == "(empty)"
            sent = await alice.ok("send", to="bob", body="hello bob")
            assert sent.startswith("sent #") and sent.endswith("to bob")
            got = await bob.ok("recv", wait_seconds=5)
            assert "from alice" in got and "hello bob" in got
            assert (await bob.ok("recv")) == "(empty)"
            msg_id = int(got.split()[0].lstrip("#"))
            await bob.ok("send", to="alice", body="hi back", in_reply_to=msg_id)
            reply = await alice.ok("recv", wait_seconds=5)
            assert f"in reply to #{msg_id}" in reply

    run(main)
    states = {r.body: r.state for r in admin_messages(daemon_process)}
    assert states["hello bob"] == "acked" and states["hi back"] == "acked"


def test_recv_batch_drains_up_to_max_and_says_how_many_wait(daemon_process: DaemonProcess) -> None:
    async def main() -> None:
        async with (
            mcp_agent(daemon_process, "alice") as alice,
            mcp_agent(daemon_process, "bob") as bob,
        ):
            for i in range(3):
                await alice.ok("send", to="bob", body=f"note {i}")
            got = await bob.ok("recv_batch", max=2)
            assert "note 0" in got and "note 1" in got and "note 2" not in got
            assert "(+1 more queued; consider draining before acting)" in got
            assert "note 2" in await bob.ok("recv_batch", max=10)

    run(main)


def test_broadcast_reaches_every_other_agent_with_the_hint(daemon_process: DaemonProcess) -> None:
    async def main() -> None:
        async with (
            mcp_agent(daemon_process, "alice") as alice,
            mcp_agent(daemon_process, "bob") as bob,
        ):
            await alice.ok("send", to="*", body="standup in 5")
            got = await bob.ok("recv", wait_seconds=5)
            assert "standup in 5" in got and "broadcast" in got
            assert (await alice.ok("recv")) == "(empty)"

    run(main)


def test_bad_arguments_and_refusals_are_tool_errors_that_lose_nothing(
    daemon_process: DaemonProcess,
) -> None:
    async def main() -> None:
        async with (
            mcp_agent(daemon_process, "alice") as alice,
            mcp_agent(daemon_process, "bob") as bob,
        ):
            assert (await alice.error("recv_batch", max=1000)).startswith("invalid: max: ")
            assert await alice.error("send", to="nobody", body="lost?") == (
                "not_found: no agent named 'nobody'"
            )
            assert (await alice.error("remind", body="x")).startswith("invalid: ")
            assert (await alice.error("cancel_ask", id=999)).startswith("not_found: ")
            # nothing half-sent: bob's queue is still empty, alice can still talk
            assert (await bob.ok("recv")) == "(empty)"
            await alice.ok("send", to="bob", body="still here")
            assert "still here" in await bob.ok("recv", wait_seconds=5)

    run(main)


def test_a_bad_argument_is_named_as_the_docs_say_not_in_the_librarys_words(
    daemon_process: DaemonProcess,
) -> None:
    """Arguments the MCP library rejects before a tool runs (wrong type, missing) answer
    `invalid: <field>: …` like every other bad argument: no library name, no link."""

    async def main() -> None:
        async with mcp_agent(daemon_process, "alice") as alice:
            wrong_type = await alice.error("send", to="bob", body="x", in_reply_to="seven")
            missing = await alice.error("send", to="bob")
            both = await alice.error("recv_batch", max="many", wait_seconds=[1])
            too_many = await alice.error("recv_batch", max=1000)
            for text in (wrong_type, missing, both, too_many):
                assert text.startswith("invalid: "), text
                assert "http" not in text and "pydantic" not in text.lower(), text
                assert "Error executing tool" not in text, text
            assert wrong_type.startswith("invalid: in_reply_to: ") and "(got str)" in wrong_type
            assert "seven" not in wrong_type  # the rejected value is the caller's data
            assert missing == "invalid: body: required"
            assert "max: " in both and "wait_seconds: " in both
            assert too_many.startswith("invalid: max: expected `int` <= ")

    run(main)
    assert not [r for r in admin_messages(daemon_process) if r.from_ == "alice"]


def test_oversize_body_is_written_to_a_file_and_the_message_points_at_it(
    daemon_process: DaemonProcess,
) -> None:
    async def main() -> None:
        async with (
            mcp_agent(daemon_process, "alice") as alice,
            mcp_agent(daemon_process, "bob") as bob,
        ):
            sent = await alice.ok("send", to="bob", body="x" * 5000)
            assert "full body written to" in sent
            got = await bob.ok("recv", wait_seconds=5)
            assert "full body at" in got and "auto-msg" in got

    run(main)


def test_questions_round_trip_between_agents(daemon_process: DaemonProcess) -> None:
    async def main() -> None:
        async with (
            mcp_agent(daemon_process, "alice") as alice,
            mcp_agent(daemon_process, "bob") as bob,
        ):
            asked = await alice.ok("ask", target="bob", question="ship it?", options=["yes", "no"])
            qid = int(asked.split()[1].lstrip("#"))
            assert f"question #{qid}" in await alice.ok("list_my_asks")
            assert f"question #{qid}: you asked bob" in await alice.ok("get_open_threads")
            assert f"question #{qid}: alice asks you" in await bob.ok("get_open_threads")
            got = await bob.ok("recv", wait_seconds=5)
            assert f"question_id={qid}" in got and "ship it?" in got
            assert "not_found" in await alice.error("answer", question_id=qid, answer="self-answer")
            await bob.ok("answer", question_id=qid, answer="yes")
            answer = await alice.ok("recv", wait_seconds=5)
            assert "yes" in answer and "in reply to #" in answer
            assert (await alice.ok("list_my_asks")) == "(no open questions)"
            asked = await alice.ok("ask", target="operator", question="coffee?")
            qid2 = int(asked.split()[1].lstrip("#"))
            assert "not_found" in await bob.error("cancel_ask", id=qid2)
            await alice.ok("cancel_ask", id=qid2)
            assert (await alice.ok("get_open_threads")) == "(nothing open)"

    run(main)


def test_reminders_are_set_listed_cancelled_and_delivered_to_their_owner_only(
    daemon_process: DaemonProcess,
) -> None:
    async def main() -> None:
        async with (
            mcp_agent(daemon_process, "alice") as alice,
            mcp_agent(daemon_process, "bob") as bob,
        ):
            later = await alice.ok("remind", body="check the build", in_seconds=3600)
            rid = int(later.split()[1].lstrip("#"))
            assert "check the build" in await alice.ok("list_my_reminders")
            assert (await bob.ok("list_my_reminders")) == "(no reminders)"
            assert "not_found" in await bob.error("cancel_reminder", id=rid)
            await alice.ok("cancel_reminder", id=rid)
            assert (await alice.ok("list_my_reminders")) == "(no reminders)"
            await alice.ok("remind", body="now please", in_seconds=0)
            got = await alice.ok("recv", wait_seconds=10)
            assert "now please" in got and "reminder #" in got
            assert (await bob.ok("recv")) == "(empty)"

    run(main)


def test_whoami_status_and_logs(daemon_process: DaemonProcess) -> None:
    async def main() -> None:
        async with mcp_agent(daemon_process, "boss") as boss:
            me = await boss.ok("whoami")
            assert "name: boss" in me and "role: manager" in me
            await boss.ok("set_status", text="triaging the backlog")
            logs = await boss.ok("get_logs", lines=10)  # no harness ran: an empty log, named
            assert logs.startswith("(log ") and "boss" in logs
            assert "invalid" in await boss.error("set_status", text="x" * 501)

    run(main)
    with SyncClient.connect(str(daemon_process.paths.admin_sock)) as c:
        rows = {a.name: a for a in c.expect(m.ListAgents(), m.Agents).agents}
    assert rows["boss"].status_text == "triaging the backlog"


def test_the_tools_survive_a_daemon_restart(daemon_process: DaemonProcess) -> None:
    async def main() -> None:
        async with mcp_agent(daemon_process, "alice") as alice:
            await alice.ok("send", to="bob", body="before")
            await anyio.to_thread.run_sync(daemon_process.stop)
            assert "unavailable" in await alice.error("send", to="bob", body="while down")
            await anyio.to_thread.run_sync(daemon_process.start)
            await alice.ok("send", to="bob", body="after")

    run(main)
    bodies = [r.body for r in admin_messages(daemon_process)]
    assert "before" in bodies and "after" in bodies and "while down" not in bodies


@pytest.mark.parametrize("name", ["alice", "boss"])
def test_agent_mcp_fails_clearly_without_a_daemon(name: str, daemon_process: DaemonProcess) -> None:
    daemon_process.stop()

    async def main() -> None:
        async with mcp_agent(daemon_process, name) as agent:
            assert "unavailable" in await agent.error("whoami")

    run(main)


# ------------------------------------------------------------------ the manager's tools


def test_manager_tools_exist_on_the_manager_socket_only_with_the_verbs_field_names(
    daemon_process: DaemonProcess,
) -> None:
    verbs = {
        "read_agent_config": m.ReadAgentConfig,
        "propose_config": m.ProposeConfig,
        "request_apply_commit": m.RequestApplyCommit,
        "request_spawn": m.RequestSpawn,
        "request_init_config": m.RequestInitConfig,
        "request_update_meta_inputs": m.RequestUpdateMetaInputs,
        "cancel_approval": m.CancelApproval,
    }
    assert set(verbs) == set(MANAGER_TOOLS)

    async def main() -> None:
        async with mcp_agent(daemon_process, "boss") as boss:
            listed = {t.name: t for t in (await boss.session.list_tools()).tools}
            for tool, verb in verbs.items():
                assert set(listed[tool].input_schema["properties"]) == set(verb.__struct_fields__)
        async with mcp_agent(daemon_process, "alice") as alice:
            listed_names = {t.name for t in (await alice.session.list_tools()).tools}
            assert listed_names.isdisjoint(MANAGER_TOOLS)
            for tool in MANAGER_TOOLS:
                result = await alice.session.call_tool(tool, {"agent": "bob", "name": "x"})
                assert result.is_error

    run(main)
    with SyncClient.connect(str(daemon_process.paths.admin_sock)) as c:
        assert c.expect(m.ListApprovals(), m.Approvals).approvals == []


def test_the_manager_proposes_asks_and_hears_the_outcome_through_its_tools(
    daemon_process: DaemonProcess,
) -> None:
    async def main() -> None:
        async with mcp_agent(daemon_process, "boss") as boss:
            text = await boss.ok("read_agent_config", agent="bob")
            assert 'runtime = "scripted"' in text and "agents/bob/agent.toml" in text
            edited = text.replace('model = ""', 'model = "model-q"')
            proposed = await boss.ok("propose_config", agent="bob", agent_toml=edited)
            assert 'model: "" → "model-q"' in proposed and "proposals/bob" in proposed
            asked = await boss.ok("request_apply_commit", agent="bob", sha="proposals/bob")
            assert asked.startswith("approval #") and "is pending" in asked
            approval_id = int(asked.split()[1].lstrip("#"))
            with SyncClient.connect(str(daemon_process.paths.admin_sock), timeout=60) as c:
                done = c.expect(m.Approve(id=approval_id, note="ok"), m.ApprovalInfo)
            assert done.approval.status == "approved", done.approval.outcome
            outcome = await boss.ok("recv", wait_seconds=5)
            assert f"approval #{approval_id}" in outcome and "approved" in outcome
            spawn = await boss.ok("request_spawn", name="erin", role_description="tests")
            spawn_id = int(spawn.split()[1].lstrip("#"))
            assert (
                await boss.ok("cancel_approval", id=spawn_id) == f"approval #{spawn_id} cancelled"
            )
            assert "conflict" in await boss.error("cancel_approval", id=spawn_id)
            assert "invalid" in await boss.error("request_apply_commit", agent="bob", sha="-x")
            assert "nothing is pinned" in await boss.error("request_update_meta_inputs")

    run(main)
    with SyncClient.connect(str(daemon_process.paths.admin_sock)) as c:
        bob = c.expect(m.AgentStatus(name="bob"), m.AgentInfo).agent
    assert bob.model == "model-q"


# One daemon connection per MCP session: many tool calls, one connection; a daemon restart
# between calls costs nothing but a reconnect, and nothing is sent twice.


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
