"""The `claude` runtime driven turn by turn against the REAL Claude Code CLI (the version
scripts/bootstrap.sh pins) talking to the TEST STAND-IN Messages API on loopback
(tests/stand_ins/messages_api.py), with a real daemon behind the MCP tools.

So a reply in these tests went runtime → `claude -p` → model stand-in → the CLI's tool call
→ `python -m ag3nt mcp` → daemon → the other agent's inbox, and every failure below is the
CLI's own reaction to an HTTP answer the stand-in gave. The only case the real CLI cannot be
made to produce — a crash with a stack trace — runs the stand-in CLI `tests/stand_ins/claude`.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import anyio
import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ag3nt.harness import wake_prompt
from ag3nt.mcp_server import AGENT_TOOLS
from ag3nt.runtimes.base import AgentContext, LoginRequired, RateLimited, Turn, TurnFailed
from ag3nt.runtimes.claude import (
    Cause,
    ClaudeRuntime,
    RunRecord,
    claude_login_available,
    diagnose,
    rate_limit_retry_after,
    reset_time_from_text,
)
from protocol import messages as m
from protocol.client import SyncClient
from tests.claude_code import claude_bin
from tests.conftest import DaemonProcess
from tests.stand_ins.messages_api import (
    API_KEY,
    Failure,
    MessagesAPI,
    Recorded,
    Reply,
    ToolCall,
    Usage,
    result_text,
)

STANDIN_CLI = Path(__file__).resolve().parents[1] / "stand_ins" / "claude"
MODEL = "claude-sonnet-4-5"
AG3NT = [sys.executable, "-m", "ag3nt"]
CREDENTIALS = ("ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN", "CLAUDE_CODE_OAUTH_TOKEN")
OAUTH_TOKEN = "sk-ant-oat01-standin-good"
T = TypeVar("T")


def run(fn: Callable[[], Awaitable[T]], backend: str = "asyncio") -> T:
    return anyio.run(fn, backend=backend)


@pytest.fixture
def api(monkeypatch: pytest.MonkeyPatch) -> Iterator[MessagesAPI]:
    """The stand-in API, and an environment in which the real CLI talks to it and nothing else."""
    with MessagesAPI(api_keys=[API_KEY, OAUTH_TOKEN]) as api:
        monkeypatch.setenv("HIVE_CLAUDE_BIN", str(claude_bin()))
        for key in (*CREDENTIALS, "CLAUDE_CONFIG_DIR", "ENABLE_TOOL_SEARCH"):
            monkeypatch.delenv(key, raising=False)
        for key, value in api.env().items():
            monkeypatch.setenv(key, value)
        yield api


def oauth(monkeypatch: pytest.MonkeyPatch, token: str = OAUTH_TOKEN) -> None:
    """Log in the way `hive ctl login` does: a subscription token, no API key."""
    monkeypatch.delenv("ANTHROPIC_API_KEY")
    monkeypatch.setenv("CLAUDE_CODE_OAUTH_TOKEN", token)


def context(daemon: DaemonProcess | None, name: str, root: Path, **env: str) -> AgentContext:
    state = root / name
    state.mkdir(parents=True, exist_ok=True)
    return AgentContext(
        name=name,
        role="agent",
        model=MODEL,
        socket=daemon.paths.agent_sock(name) if daemon else root / "no.sock",
        state_dir=state,
        ag3nt_command=AG3NT,
        extra_env={"HOME": str(state), **env},  # as in its sandbox: HOME is the state dir
    )


def message(daemon: DaemonProcess, sender: str, to: str, body: str) -> m.MessageRow:
    with SyncClient.connect(str(daemon.paths.agent_sock(sender))) as c:
        (mid,) = c.expect(m.Send(to=to, body=body), m.Sent).message_ids
    return next(r for r in messages(daemon) if r.id == mid)


def messages(daemon: DaemonProcess) -> list[m.MessageRow]:
    with SyncClient.connect(str(daemon.paths.admin_sock)) as c:
        return c.expect(m.ListMessages(limit=200), m.Messages).messages


def wake(row: m.MessageRow) -> Turn:
    return Turn(prompt=wake_prompt(row, 0), message=row)


def offline_turn(body: str = "hello") -> Turn:
    row = m.MessageRow(
        id=1, from_="bob", to="alice", body=body, in_reply_to=None, thread=1, kind="message",
        state="leased", attempts=1, broadcast=False, hint=None, question_id=None,
        created_at=0.0, acked_at=None,
    )  # fmt: skip
    return wake(row)


def session_file(state_dir: Path) -> dict[str, Any]:
    return dict(json.loads((state_dir / ".hive" / "claude-session.json").read_text()))


def wakes(req: Recorded) -> list[str]:
    """The hyperhive wake prompts in a model call's conversation, oldest first."""
    return [t.split("\n", 1)[1] for t in req.texts() if t.startswith("New message #")]


def turn_calls(api: MessagesAPI) -> list[Recorded]:
    """Model calls that were not compactions."""
    return [r for r in api.messages_requests() if not r.asks_for_summary]


def stat_of(pid: int) -> list[str] | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return None


def alive(pid: int) -> bool:
    stat = stat_of(pid)
    return stat is not None and stat[0] != "Z"


def descendants(pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (stat := stat_of(int(entry.name))) is not None:
            children.setdefault(int(stat[1]), []).append(int(entry.name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def all_dead(pids: set[int], within: float = 10.0) -> bool:
    deadline = time.monotonic() + within
    while any(alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not any(alive(p) for p in pids)


# --------------------------------------------------------------------------- turns that work


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_a_turn_with_several_mcp_tool_calls_replies_and_records_the_usage(
    backend: str, daemon_process: DaemonProcess, api: MessagesAPI, tmp_path: Path
) -> None:
    ctx = context(daemon_process, "alice", tmp_path)
    row = message(daemon_process, "bob", "alice", "ping 1\nsecond line")
    usages = [
        Usage(input_tokens=900, output_tokens=30, cache_creation_input_tokens=2000),
        Usage(input_tokens=40, output_tokens=25, cache_read_input_tokens=2900),
        Usage(input_tokens=30, output_tokens=12, cache_read_input_tokens=3000),
    ]
    api.script(
        Reply(
            text="Checking who I am first.",
            tool_calls=[
                ToolCall("mcp__hyperhive__whoami"),
                ToolCall("mcp__hyperhive__set_status", {"text": "answering bob"}),
            ],
            usage=usages[0],
        ),
        Reply(
            tool_calls=[
                ToolCall(
                    "mcp__hyperhive__send", {"to": "bob", "body": "pong 1", "in_reply_to": row.id}
                )
            ],
            usage=usages[1],
        ),
        Reply(text="Answered bob.", usage=usages[2]),
    )
    runtime = ClaudeRuntime(ctx)

    stats = run(lambda: runtime.turn(wake(row)), backend)

    reply = [r for r in messages(daemon_process) if r.from_ == "alice" and r.to == "bob"]
    assert [(r.body, r.in_reply_to) for r in reply] == [("pong 1", row.id)]
    assert stats.ok and stats.result == "Answered bob."
    assert stats.tool_calls == ["whoami", "set_status", "send"]
    assert stats.input_tokens == sum(
        u.input_tokens + u.cache_creation_input_tokens + u.cache_read_input_tokens for u in usages
    )
    assert stats.output_tokens == sum(u.output_tokens for u in usages)
    assert stats.cost_usd > 0 and stats.duration_ms > 0

    first, second, third = api.messages_requests()
    assert [r.model for r in (first, second, third)] == [MODEL] * 3
    offered = {f"mcp__hyperhive__{t}" for t in AGENT_TOOLS}
    assert offered <= set(first.tool_names)  # schemas on the first call: no tool search
    assert "You are alice, an agent in a hyperhive" in first.system_text
    assert wakes(first) == ["ping 1\nsecond line"]
    results = [result_text(b) for b in second.tool_results()]
    assert results[0].startswith("name: alice\nrole: agent")
    assert results[1].startswith("status set")  # the CLI may append a system reminder
    assert result_text(third.tool_results()[0]).startswith("sent #")
    assert session_file(ctx.state_dir)["session_id"] == runtime.session_id is not None
    server = json.loads(runtime.mcp_config.read_text())["mcpServers"]["hyperhive"]
    assert [server["command"], *server["args"]] == [*AG3NT, "mcp", "--socket", str(ctx.socket)]


def test_beside_serve_each_run_reaches_the_loaded_mcp_server_through_the_relay(
    daemon_process: DaemonProcess, api: MessagesAPI, tmp_path: Path
) -> None:
    """The harness runs `serve` beside the turns: each run's config starts `ag3nt.mcp_relay`,
    and the tools answer from the server `serve` keeps loaded. The per-run server this test
    gives the relay to fall back to exits at once, so a reply proves the relay reached it."""
    ctx = context(daemon_process, "alice", tmp_path)
    ctx.ag3nt_command = [sys.executable, "-c", "raise SystemExit(3)"]
    runtime = ClaudeRuntime(ctx)

    async def scenario() -> tuple[list[list[str]], Path]:
        configs = []
        async with anyio.create_task_group() as tg:
            listener = await tg.start(runtime.serve)
            assert listener is not None and runtime.mcp_listener == listener
            for n in (1, 2):
                await runtime.turn(wake(message(daemon_process, "bob", "alice", f"relay {n}")))
                server = json.loads(runtime.mcp_config.read_text())["mcpServers"]["hyperhive"]
                configs.append([server["command"], *server["args"]])
            tg.cancel_scope.cancel()
        return configs, listener

    configs, listener = run(scenario)

    fallback = [*ctx.ag3nt_command, "mcp", "--socket", str(ctx.socket)]
    relay = [sys.executable, "-m", "ag3nt.mcp_relay", str(listener), *fallback]
    assert configs == [relay, relay]
    replies = [r.body for r in messages(daemon_process) if r.from_ == "alice"]
    assert sorted(replies) == ["ack: relay 1", "ack: relay 2"]
    assert runtime.mcp_listener is None and not listener.parent.exists()


def test_tool_search_is_off_so_the_first_call_carries_the_hyperhive_tools(
    daemon_process: DaemonProcess, api: MessagesAPI, tmp_path: Path
) -> None:
    """Measured on the pinned CLI: left to itself (ENABLE_TOOL_SEARCH unset) it defers MCP tools
    behind ToolSearch, so the model's first call names them but carries no schema for any; the
    runtime sets ENABLE_TOOL_SEARCH=false unless the agent's env sets it."""
    api.script(Reply(text="I see no hyperhive tool."))
    cli_default = ClaudeRuntime(context(daemon_process, "alice", tmp_path, ENABLE_TOOL_SEARCH=""))
    run(lambda: cli_default.turn(wake(message(daemon_process, "bob", "alice", "one"))))
    ours = ClaudeRuntime(context(daemon_process, "bob", tmp_path))
    run(lambda: ours.turn(wake(message(daemon_process, "alice", "bob", "two"))))

    deferred, loaded = api.messages_requests()[0], api.messages_requests()[1]
    assert not [t for t in deferred.tool_names if t.startswith("mcp__hyperhive__")]
    assert "ToolSearch" in deferred.tool_names
    assert "mcp__hyperhive__send" in json.dumps(deferred.body["messages"])  # a name, no schema
    assert {f"mcp__hyperhive__{t}" for t in AGENT_TOOLS} <= set(loaded.tool_names)


def test_the_session_is_resumed_across_turns_and_restarts_until_forgotten(
    daemon_process: DaemonProcess, api: MessagesAPI, tmp_path: Path
) -> None:
    ctx = context(daemon_process, "alice", tmp_path)

    async def scenario() -> list[str]:
        outcomes = []
        first = ClaudeRuntime(ctx)
        await first.turn(wake(message(daemon_process, "bob", "alice", "one")))
        await first.turn(wake(message(daemon_process, "bob", "alice", "two")))
        outcomes.append(first.session_id or "")
        await first.aclose()
        restarted = ClaudeRuntime(ctx)  # a new harness process reads the session back
        outcomes.append(restarted.set_model("claude-haiku-4-5"))
        await restarted.turn(wake(message(daemon_process, "bob", "alice", "three")))
        outcomes.append(await restarted.compact())
        outcomes.append(await restarted.new_session())
        await restarted.turn(wake(message(daemon_process, "bob", "alice", "four")))
        outcomes.append(restarted.session_id or "")
        return outcomes

    first_id, set_model, compacted, forgot, last_id = run(scenario)

    calls = turn_calls(api)
    # each turn is a call (send) and its follow-up (the tool's result): take the first of each
    starts = [calls[i] for i in range(0, len(calls), 2)]
    assert [wakes(c)[-1] for c in starts] == ["one", "two", "three", "four"]
    assert wakes(starts[1]) == ["one", "two"]  # resumed within one runtime
    assert wakes(starts[2]) == ["one", "two", "three"]  # resumed after the "restart"
    assert wakes(starts[3]) == ["four"]  # the forgotten session is not resumed
    assert [c.model for c in starts] == [MODEL, MODEL, "claude-haiku-4-5", "claude-haiku-4-5"]
    assert [r.model for r in api.messages_requests() if r.asks_for_summary] == ["claude-haiku-4-5"]
    assert "claude-haiku-4-5" in set_model
    assert compacted.startswith(f"claude: compacted session {first_id[:8]}")
    assert forgot == f"claude: forgot session {first_id[:8]}; the next turn starts a fresh one"
    assert last_id not in ("", first_id) and session_file(ctx.state_dir)["session_id"] == last_id
    bodies = [r.body for r in messages(daemon_process) if r.from_ == "alice"]
    assert sorted(bodies) == ["ack: four", "ack: one", "ack: three", "ack: two"]


def test_a_prompt_too_big_for_argv_goes_through_stdin(
    daemon_process: DaemonProcess, api: MessagesAPI, tmp_path: Path
) -> None:
    ctx = context(daemon_process, "alice", tmp_path)
    row = message(daemon_process, "bob", "alice", "big one")
    big = msgspec.structs.replace(row, body="big one\n" + "x" * 100_000)  # past the argv limit

    stats = run(lambda: ClaudeRuntime(ctx).turn(wake(big)))

    assert stats.tool_calls == ["send"]
    assert wakes(api.messages_requests()[0]) == [big.body]
    assert any(r.body == "ack: big one" for r in messages(daemon_process))


def test_a_session_the_cli_no_longer_knows_is_replaced_by_a_fresh_one(
    daemon_process: DaemonProcess, api: MessagesAPI, tmp_path: Path
) -> None:
    ctx = context(daemon_process, "alice", tmp_path)
    gone = str(uuid.uuid4())
    (ctx.state_dir / ".hive").mkdir(parents=True)
    (ctx.state_dir / ".hive" / "claude-session.json").write_text(json.dumps({"session_id": gone}))
    row = message(daemon_process, "bob", "alice", "still there?")

    stats = run(lambda: ClaudeRuntime(ctx).turn(wake(row)))

    assert stats.result.startswith(f"[session {gone[:8]} was gone; started a fresh one]")
    assert session_file(ctx.state_dir)["session_id"] not in (None, gone)
    assert any(r.body == "ack: still there?" for r in messages(daemon_process))


def test_an_unreadable_session_file_means_a_fresh_session(tmp_path: Path) -> None:
    ctx = context(None, "alice", tmp_path)
    (ctx.state_dir / ".hive").mkdir(parents=True)
    (ctx.state_dir / ".hive" / "claude-session.json").write_text("{half a file")
    assert ClaudeRuntime(ctx).session_id is None


def test_a_stream_cut_off_midway_is_retried_by_the_cli(
    daemon_process: DaemonProcess, api: MessagesAPI, tmp_path: Path
) -> None:
    ctx = context(daemon_process, "alice", tmp_path)
    row = message(daemon_process, "bob", "alice", "over a bad line")
    half = Reply(tool_calls=[ToolCall("mcp__hyperhive__send", {"to": "bob", "body": "lost"})])
    half.cut_after = 4  # message_start, ping, the tool_use start and half its arguments
    api.script(half)

    stats = run(lambda: ClaudeRuntime(ctx).turn(wake(row)))

    assert [r.answered for r in api.messages_requests()[:2]] == ["cut", "reply"]
    assert stats.tool_calls == ["send"]
    bodies = [r.body for r in messages(daemon_process) if r.from_ == "alice"]
    assert bodies == ["ack: over a bad line"]  # the cut call never ran


# --------------------------------------------------------------------------- compaction


def test_prompt_too_long_once_is_compacted_by_the_cli_itself(
    daemon_process: DaemonProcess, api: MessagesAPI, tmp_path: Path
) -> None:
    ctx = context(daemon_process, "alice", tmp_path)
    runtime = ClaudeRuntime(ctx)
    run(lambda: runtime.turn(wake(message(daemon_process, "bob", "alice", "warm up"))))
    api.script(Failure.too_long())
    row = message(daemon_process, "bob", "alice", "the long one")

    stats = run(lambda: runtime.turn(wake(row)))

    answered = [(r.answered, r.asks_for_summary) for r in api.messages_requests()[2:]]
    assert answered[:2] == [("failure 400", False), ("reply", True)]
    assert stats.result.startswith("[the CLI compacted the session itself]")
    assert any(r.body == "ack: the long one" for r in messages(daemon_process))


def test_when_the_clis_own_compaction_fails_the_runtime_compacts_and_retries(
    daemon_process: DaemonProcess, api: MessagesAPI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ctx = context(daemon_process, "alice", tmp_path)
    runtime = ClaudeRuntime(ctx)
    run(lambda: runtime.turn(wake(message(daemon_process, "bob", "alice", "warm up"))))
    sid = runtime.session_id
    # the API refuses every call as too long until the runtime runs its own `/compact`
    refusing = [True]
    api.fallback = lambda req, default=api.fallback: (
        Failure.too_long() if refusing[0] else default(req)
    )
    compact = ClaudeRuntime._compact

    async def runtime_compacts(self: ClaudeRuntime, totals: Any) -> None:
        refusing[0] = False
        await compact(self, totals)

    monkeypatch.setattr(ClaudeRuntime, "_compact", runtime_compacts)
    row = message(daemon_process, "bob", "alice", "the long one")

    stats = run(lambda: runtime.turn(wake(row)))

    assert stats.result.startswith("[prompt was too long: compacted the session and retried]")
    assert runtime.session_id == sid
    assert any(r.body == "ack: the long one" for r in messages(daemon_process))


def test_a_prompt_that_stays_too_long_fails_the_turn(
    daemon_process: DaemonProcess, api: MessagesAPI, tmp_path: Path
) -> None:
    ctx = context(daemon_process, "alice", tmp_path)
    runtime = ClaudeRuntime(ctx)
    api.fallback = lambda req: Failure.too_long()
    with pytest.raises(TurnFailed, match="too long even for a fresh session"):
        run(lambda: runtime.turn(offline_turn()))

    api.fallback = lambda req: Reply(text="fine")
    run(lambda: runtime.turn(offline_turn()))  # now there is a session to compact
    api.fallback = lambda req: Failure.too_long()
    with pytest.raises(TurnFailed, match="too long even after compacting"):
        run(lambda: runtime.turn(offline_turn()))


def test_the_context_watermark_compacts_before_the_turn(
    daemon_process: DaemonProcess, api: MessagesAPI, tmp_path: Path
) -> None:
    ctx = context(daemon_process, "alice", tmp_path)
    runtime = ClaudeRuntime(ctx, watermark=50_000)
    big = Usage(input_tokens=20, output_tokens=40, cache_read_input_tokens=60_000)
    api.script(
        Reply(
            tool_calls=[ToolCall("mcp__hyperhive__send", {"to": "bob", "body": "one"})], usage=big
        ),
        Reply(text="done", usage=big),
    )

    async def three_turns() -> list[str]:
        results = []
        for body in ("one", "two", "three"):
            row = message(daemon_process, "bob", "alice", body)
            results.append((await runtime.turn(wake(row))).result)
        return results

    results = run(three_turns)

    kinds = ["compact" if r.asks_for_summary else wakes(r)[-1] for r in api.messages_requests()]
    assert kinds == ["one", "one", "compact", "two", "two", "three", "three"]
    assert re.match(r"\[compacted first \(context 600\d\d ≥ 50000 tokens\)\] ", results[1])
    assert not results[2].startswith("[")
    assert session_file(ctx.state_dir)["context_tokens"] < 50_000


# --------------------------------------------------------------------------- failures


def test_an_api_rate_limit_raises_rate_limited_with_the_configured_wait(
    api: MessagesAPI, tmp_path: Path
) -> None:
    api.script(Failure.rate_limited(retry_after=300))  # too long for the CLI to wait itself
    runtime = ClaudeRuntime(context(None, "alice", tmp_path), rate_limit_wait=7)
    started = time.monotonic()
    with pytest.raises(RateLimited, match="429") as caught:
        run(lambda: runtime.turn(offline_turn()))
    assert caught.value.retry_after == 7 and time.monotonic() - started < 30


def test_a_subscription_limit_waits_until_its_reset(
    api: MessagesAPI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    oauth(monkeypatch)
    reset = time.time() + 90
    api.script(Failure.rate_limited(retry_after=90, reset_at=reset, subscription=True))
    runtime = ClaudeRuntime(context(None, "alice", tmp_path), rate_limit_wait=7)
    started = time.time()
    with pytest.raises(RateLimited, match="hit your 5-hour limit") as caught:
        run(lambda: runtime.turn(offline_turn()))
    ended = time.time()
    # until the reset (whole seconds in the event), plus the 5 s margin
    assert int(reset) - ended + 5 <= caught.value.retry_after <= int(reset) - started + 5


def test_a_refused_api_key_is_given_up_early_as_login_required(
    api: MessagesAPI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The CLI would retry a 401 ten times over minutes; the runtime stops it at the second."""
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-expired")
    started = time.monotonic()
    with pytest.raises(LoginRequired, match="refused the login 2 times"):
        run(lambda: ClaudeRuntime(context(None, "alice", tmp_path)).turn(offline_turn()))
    assert time.monotonic() - started < 20
    assert {r.answered for r in api.requests} == {"failure 401"} and len(api.requests) == 2


@pytest.mark.parametrize("token", ["sk-ant-oat01-expired", ""])
def test_an_expired_or_missing_login_raises_login_required(
    token: str, api: MessagesAPI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    oauth(monkeypatch, token)
    if not token:
        monkeypatch.delenv("CLAUDE_CODE_OAUTH_TOKEN")
    with pytest.raises(LoginRequired, match=r"Please run /login|refused the login 2 times"):
        run(lambda: ClaudeRuntime(context(None, "alice", tmp_path)).turn(offline_turn()))


def test_an_overloaded_api_fails_the_turn_as_an_ordinary_failure(
    api: MessagesAPI, tmp_path: Path
) -> None:
    api.fallback = lambda req: Failure.overloaded()
    ctx = context(None, "alice", tmp_path, CLAUDE_CODE_MAX_RETRIES="1")
    with pytest.raises(TurnFailed, match="529") as caught:
        run(lambda: ClaudeRuntime(ctx).turn(offline_turn()))
    assert not isinstance(caught.value, LoginRequired | RateLimited)
    assert len(api.messages_requests()) == 2  # the CLI's own retry, then it gave up


def test_a_crash_raises_turn_failed_with_the_stderr_tail(tmp_path: Path) -> None:
    # the stand-in CLI: the real one cannot be made to crash on purpose
    runtime = ClaudeRuntime(context(None, "alice", tmp_path), binary=str(STANDIN_CLI))
    with pytest.raises(TurnFailed) as caught:
        run(lambda: runtime.turn(offline_turn()))
    assert not isinstance(caught.value, LoginRequired | RateLimited)
    assert "exited with status 3" in str(caught.value)
    assert "TypeError: stand-in crash" in str(caught.value)


def test_a_missing_cli_raises_turn_failed(tmp_path: Path) -> None:
    runtime = ClaudeRuntime(context(None, "alice", tmp_path), binary=str(tmp_path / "no-claude"))
    with pytest.raises(TurnFailed, match="could not start the Claude Code CLI"):
        run(lambda: runtime.turn(offline_turn()))


# --------------------------------------------------------------------------- ending a turn


def stalled(api: MessagesAPI) -> None:
    api.script(Reply(text="thinking very slowly", stall=120))


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_cancelling_a_turn_kills_the_cli_and_its_mcp_server_promptly(
    backend: str, daemon_process: DaemonProcess, api: MessagesAPI, tmp_path: Path
) -> None:
    stalled(api)
    runtime = ClaudeRuntime(context(daemon_process, "alice", tmp_path))
    tree: set[int] = set()

    async def cancel_mid_turn() -> float:
        with anyio.CancelScope() as scope:
            async with anyio.create_task_group() as tg:
                tg.start_soon(runtime.turn, offline_turn())
                await anyio.to_thread.run_sync(api.wait_for, 1)
                assert runtime._proc is not None
                tree.update({runtime._proc.pid, *descendants(runtime._proc.pid)})
                started = time.monotonic()
                scope.cancel()
        return time.monotonic() - started

    took = run(cancel_mid_turn, backend)

    assert len(tree) >= 2, "the CLI and the MCP server it started"
    assert took < 5
    assert all_dead(tree), [p for p in tree if alive(p)]


def test_aclose_kills_a_running_cli(api: MessagesAPI, tmp_path: Path) -> None:
    stalled(api)
    runtime = ClaudeRuntime(context(None, "alice", tmp_path))

    async def close_mid_turn() -> tuple[BaseException | None, int]:
        failure: BaseException | None = None

        async def turn() -> None:
            nonlocal failure
            try:
                await runtime.turn(offline_turn())
            except TurnFailed as exc:
                failure = exc

        async with anyio.create_task_group() as tg:
            tg.start_soon(turn)
            await anyio.to_thread.run_sync(api.wait_for, 1)
            assert runtime._proc is not None
            pid = runtime._proc.pid
            with anyio.fail_after(5):
                await runtime.aclose()
        return failure, pid

    failure, pid = run(close_mid_turn)

    # SIGTERM: the CLI exits 143 (128 + 15) from its handler
    assert isinstance(failure, TurnFailed) and "exited with status 143" in str(failure)
    assert not alive(pid)


def test_the_cli_dies_with_a_harness_that_is_killed(
    daemon_process: DaemonProcess, api: MessagesAPI, tmp_path: Path
) -> None:
    """SIGKILL leaves the harness no chance to end its CLI: the death signal armed before the
    CLI started does (the fork happened on the event loop's thread, which lives as long as the
    harness, so the signal is not tied to a worker thread that retires)."""
    stalled(api)
    script = textwrap.dedent(
        f"""
        import anyio, sys
        from pathlib import Path
        from ag3nt.runtimes.base import AgentContext
        from ag3nt.runtimes.claude import ClaudeRuntime
        from tests.ag3nt.test_claude_runtime import offline_turn
        state = Path({str(tmp_path / "alice")!r})
        state.mkdir(parents=True, exist_ok=True)
        ctx = AgentContext(name="alice", role="agent", model="", socket=Path({str(daemon_process.paths.agent_sock("alice"))!r}),
                           state_dir=state, ag3nt_command={AG3NT!r}, extra_env={{"HOME": str(state)}})
        anyio.run(ClaudeRuntime(ctx).turn, offline_turn(), backend="asyncio")
        """
    )
    harness = subprocess.Popen(
        [sys.executable, "-c", script], cwd=Path(__file__).resolve().parents[2]
    )
    try:
        api.wait_for(1, timeout=60)
        # let the worker threads of the loop retire: a signal tied to one would fire now
        time.sleep(12)
        tree = descendants(harness.pid)
        assert tree and all(alive(p) for p in tree), "the CLI must live as long as its turn"
        harness.send_signal(signal.SIGKILL)
        harness.wait(10)
        assert all_dead(tree), [
            (p, Path(f"/proc/{p}/cmdline").read_bytes()[:300]) for p in tree if alive(p)
        ]
    finally:
        if harness.poll() is None:
            harness.kill()
            harness.wait(10)


# --------------------------------------------------------------------------- reading the stream


def record(*events: dict[str, Any], exit_code: int = 1, stderr: str = "") -> RunRecord:
    rec = RunRecord()
    for event in events:
        rec.feed(json.dumps(event))
    rec.exit_code, rec.stderr_tail = exit_code, stderr
    return rec


def failed_result(text: str) -> dict[str, Any]:
    return {
        "type": "result",
        "subtype": "success",
        "is_error": True,
        "result": text,
        "session_id": "s",
    }


@pytest.mark.parametrize(
    ("text", "cause"),
    [
        (
            "OAuth token has expired. Please obtain a new token or refresh your existing token.",
            Cause.LOGIN,
        ),
        ("Not logged in · Please run /login", Cause.LOGIN),
        ('API Error: 401 {"type":"error","error":{"type":"authentication_error"}}', Cause.LOGIN),
        ("5-hour limit reached ∙ resets 3pm", Cause.RATE_LIMIT),
        ('API Error: 429 {"type":"error","error":{"type":"rate_limit_error"}}', Cause.RATE_LIMIT),
        (
            'API Error: 400 {"error":{"message":"prompt is too long: 210000 tokens > 200000 maximum"}}',
            Cause.TOO_LONG,
        ),
        ("No conversation found with session ID: 1234", Cause.NO_SESSION),
        ("API Error: 529 Overloaded", Cause.OTHER),
    ],
)
def test_failures_are_told_apart_by_what_the_cli_answered(text: str, cause: Cause) -> None:
    assert diagnose(record(failed_result(text))) is cause


def test_a_crash_at_line_429_is_not_a_rate_limit() -> None:
    assert diagnose(record(stderr="    at main (cli.js:429:17)\nTypeError: boom")) is Cause.OTHER


def test_structured_errors_win_over_text() -> None:
    limited = {
        "type": "rate_limit_event",
        "rate_limit_info": {"status": "rejected", "resetsAt": 2_000_000_100},
    }
    rec = record(limited, failed_result("You've hit your limit"))
    assert diagnose(rec) is Cause.RATE_LIMIT
    assert rate_limit_retry_after(rec, default=60, now=2_000_000_000) == 105
    denied = {"type": "assistant", "error": "authentication_failed", "message": {"content": []}}
    assert diagnose(record(denied, failed_result("API Error"))) is Cause.LOGIN
    warning = {"type": "rate_limit_event", "rate_limit_info": {"status": "allowed_warning"}}
    ok = {"type": "result", "subtype": "success", "is_error": False, "result": "done"}
    assert diagnose(record(warning, ok, exit_code=0)) is None


def test_reset_times_are_read_from_the_answer() -> None:
    now = 1_750_000_000.0  # 2025-06-15 15:06:40 UTC
    assert reset_time_from_text("Claude AI usage limit reached|1750003600", now) == 1_750_003_600
    assert reset_time_from_text("You've hit your limit · resets 4pm (UTC)", now) == 1_750_003_200
    assert reset_time_from_text("resets 3pm (UTC)", now) == 1_750_000_000 - 400 + 86_400
    assert reset_time_from_text("resets 5", now) is None


def test_usage_counts_cache_tokens_and_the_last_call_sizes_the_context() -> None:
    call = {
        "input_tokens": 5,
        "cache_creation_input_tokens": 100,
        "cache_read_input_tokens": 2000,
        "output_tokens": 30,
    }
    sub = {
        "type": "assistant",
        "parent_tool_use_id": "toolu_1",
        "message": {"usage": {"input_tokens": 99_999}},
    }
    rec = record(
        {"type": "assistant", "parent_tool_use_id": None, "message": {"usage": call, "content": [
            {"type": "tool_use", "id": "t1", "name": "mcp__hyperhive__send", "input": {}},
            {"type": "tool_use", "id": "t2", "name": "Bash", "input": {}},
        ]}},
        sub,
        {"type": "result", "subtype": "success", "is_error": False, "result": "ok", "session_id": "s2",
         "total_cost_usd": 0.25, "duration_ms": 1234,
         "usage": {"input_tokens": 10, "cache_read_input_tokens": 4000, "output_tokens": 60}},
        exit_code=0,
    )  # fmt: skip
    assert (rec.input_tokens, rec.output_tokens, rec.cost_usd, rec.duration_ms) == (
        4010,
        60,
        0.25,
        1234,
    )
    assert rec.context_tokens == 2135
    assert rec.tool_calls == ["mcp__hyperhive__send", "Bash"]
    assert rec.session_id == "s2"


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.text(max_size=200),
            st.recursive(
                st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
                lambda children: (
                    st.lists(children, max_size=4)
                    | st.dictionaries(
                        st.sampled_from(
                            [
                                "type",
                                "subtype",
                                "message",
                                "content",
                                "usage",
                                "result",
                                "error",
                                "rate_limit_info",
                                "status",
                                "resetsAt",
                                "session_id",
                                "errors",
                                "api_error_status",
                                "terminal_reason",
                                "attempt",
                                "error_status",
                                "input_tokens",
                                "output_tokens",
                                "total_cost_usd",
                                "name",
                                "id",
                            ]
                        )
                        | st.text(max_size=10),
                        children,
                        max_size=6,
                    )
                ),
                max_leaves=20,
            ).map(json.dumps),
        ),
        max_size=12,
    ),
    st.one_of(st.none(), st.integers(-20, 300)),
)
def test_any_output_is_read_without_raising(lines: list[str], exit_code: int | None) -> None:
    rec = RunRecord()
    for line in lines:
        rec.feed(line)
    rec.exit_code = exit_code
    cause = diagnose(rec)
    assert cause is None or isinstance(cause, Cause)
    assert isinstance(rec.summary(), str) and isinstance(rec.evidence(), str)
    assert rate_limit_retry_after(rec, default=60, now=1_750_000_000) > 0
    assert rec.input_tokens >= 0 and rec.output_tokens >= 0 and rec.cost_usd >= 0


def test_repeated_login_retries_are_a_login_failure_and_stop_the_cli() -> None:
    stopped: list[bool] = []
    rec = RunRecord(on_hopeless=lambda: stopped.append(True))
    retry = {"type": "system", "subtype": "api_retry", "attempt": 1, "error_status": 401,
             "error": "authentication_failed", "retry_delay_ms": 500}  # fmt: skip
    rec.feed(json.dumps(retry))
    assert stopped == []
    rec.feed(json.dumps({**retry, "attempt": 2}))
    rec.feed(json.dumps({**retry, "attempt": 3}))
    assert stopped == [True]
    rec.exit_code = -15
    assert diagnose(rec) is Cause.LOGIN
    assert "refused the login 2 times" in rec.summary()


# --------------------------------------------------------------------------- login detection


def test_claude_login_available_needs_the_cli_and_a_credential(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    (home / ".claude").mkdir(parents=True)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    base = {"HOME": str(home), "PATH": str(bin_dir)}

    assert not claude_login_available(base)  # no CLI at all
    (bin_dir / "claude").symlink_to(claude_bin())
    assert not claude_login_available(base)  # a CLI, never logged in
    assert claude_login_available({**base, "ANTHROPIC_API_KEY": "sk-test"})
    assert claude_login_available({**base, "CLAUDE_CODE_OAUTH_TOKEN": "tok"})

    creds = home / ".claude" / ".credentials.json"
    creds.write_text("{not json")
    assert not claude_login_available(base)
    creds.write_text(json.dumps({"claudeAiOauth": {"accessToken": "a", "expiresAt": 1000}}))
    assert not claude_login_available(base)  # expired and nothing to refresh it with
    creds.write_text(
        json.dumps({"claudeAiOauth": {"accessToken": "a", "refreshToken": "r", "expiresAt": 1000}})
    )
    assert claude_login_available(base)

    monkeypatch.setenv("HOME", str(home))  # the default reads the real environment
    monkeypatch.setenv("PATH", str(bin_dir))
    for key in ("HIVE_CLAUDE_BIN", "CLAUDE_CONFIG_DIR", *CREDENTIALS):
        monkeypatch.delenv(key, raising=False)
    assert claude_login_available()
    creds.unlink()
    assert not claude_login_available()
