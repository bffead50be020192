"""The `claude` runtime, driven turn by turn against the TEST STAND-IN for the Claude Code CLI
(`tests/stand_ins/claude`: the real CLI cannot reach its API here) and a real daemon.

The stand-in speaks the CLI's flags and stream-json, and really calls the hyperhive MCP tools
through the `--mcp-config` the runtime wrote, so a reply in these tests went
runtime → CLI → `hive agent mcp` → daemon → the other agent's inbox. What the stand-in cannot
prove is that the real CLI still answers the way it is imitated here; docs/runtimes.md says
which of its answers were taken from where.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import anyio
import msgspec
import pytest

from ag3nt.harness import wake_prompt
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
from tests.conftest import DaemonProcess

STANDIN = Path(__file__).resolve().parents[1] / "stand_ins" / "claude"
MODEL = "claude-sonnet-4-5"
T = TypeVar("T")


AG3NT = [sys.executable, "-m", "ag3nt"]


def run(fn: Callable[[], Awaitable[T]], backend: str = "asyncio") -> T:
    return anyio.run(fn, backend=backend)


@dataclass
class StandIn:
    log: Path
    monkeypatch: pytest.MonkeyPatch

    def scenario(self, name: str) -> None:
        self.monkeypatch.setenv("HIVE_STANDIN_SCENARIO", name)

    def calls(self) -> list[list[str]]:
        if not self.log.exists():
            return []
        return [json.loads(line)["argv"] for line in self.log.read_text().splitlines()]

    def prompts(self) -> list[str]:
        return [prompt_of(argv) for argv in self.calls()]


def prompt_of(argv: list[str]) -> str:
    return argv[2] if len(argv) > 2 and not argv[2].startswith("--") else "<stdin>"


def flag(argv: list[str], name: str) -> str | None:
    return argv[argv.index(name) + 1] if name in argv else None


@pytest.fixture
def standin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> StandIn:
    monkeypatch.setenv("HIVE_CLAUDE_BIN", str(STANDIN))
    monkeypatch.setenv("HIVE_STANDIN_LOG", str(tmp_path / "argv.jsonl"))
    monkeypatch.delenv("HIVE_STANDIN_SCENARIO", raising=False)
    # the stand-in is `#!/usr/bin/env python3` and needs the `mcp` package: use this venv's python
    monkeypatch.setenv(
        "PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    )
    return StandIn(tmp_path / "argv.jsonl", monkeypatch)


def context(daemon: DaemonProcess | None, name: str, state_root: Path) -> AgentContext:
    return AgentContext(
        name=name,
        role="agent",
        model=MODEL,
        socket=daemon.paths.agent_sock(name) if daemon else state_root / "no.sock",
        state_dir=state_root / name,
        ag3nt_command=AG3NT,
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


# --------------------------------------------------------------------------- turns that work


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_a_turn_sends_the_reply_through_mcp_and_records_its_stats(
    backend: str, daemon_process: DaemonProcess, standin: StandIn, tmp_path: Path
) -> None:
    ctx = context(daemon_process, "alice", tmp_path)
    row = message(daemon_process, "bob", "alice", "hello alice\nsecond line")
    runtime = ClaudeRuntime(ctx)

    stats = run(lambda: runtime.turn(wake(row)), backend)

    reply = [r for r in messages(daemon_process) if r.from_ == "alice" and r.to == "bob"]
    assert [(r.body, r.in_reply_to) for r in reply] == [("ack: hello alice", row.id)]
    assert stats.ok and stats.result == "Acknowledged bob."
    assert stats.tool_calls == ["send"]
    assert stats.input_tokens > 3000 and stats.output_tokens > 0
    assert stats.cost_usd > 0 and stats.duration_ms > 0

    (argv,) = standin.calls()
    assert argv[:3] == [str(STANDIN), "-p", wake_prompt(row, 0)]
    assert flag(argv, "--output-format") == "stream-json" and "--verbose" in argv
    assert flag(argv, "--model") == MODEL
    assert flag(argv, "--allowedTools") == "mcp__hyperhive"
    assert "--resume" not in argv
    assert "You are alice, an agent in a hyperhive" in (flag(argv, "--append-system-prompt") or "")
    config = json.loads(Path(flag(argv, "--mcp-config") or "").read_text())
    assert flag(argv, "--mcp-config") == str(ctx.state_dir / ".hive" / "mcp.json")
    server = config["mcpServers"]["hyperhive"]
    assert [server["command"], *server["args"]] == [
        *ctx.ag3nt_command,
        "mcp",
        "--socket",
        str(ctx.socket),
    ]


def test_the_session_is_resumed_across_turns_and_restarts_until_forgotten(
    daemon_process: DaemonProcess, standin: StandIn, tmp_path: Path
) -> None:
    ctx = context(daemon_process, "alice", tmp_path)

    async def scenario() -> list[str]:
        outcomes = []
        first = ClaudeRuntime(ctx)
        await first.turn(wake(message(daemon_process, "bob", "alice", "one")))
        await first.turn(wake(message(daemon_process, "bob", "alice", "two")))
        await first.aclose()
        restarted = ClaudeRuntime(ctx)  # a new harness process reads the session back
        outcomes.append(restarted.set_model("claude-opus-4-1"))
        await restarted.turn(wake(message(daemon_process, "bob", "alice", "three")))
        outcomes.append(await restarted.compact())
        outcomes.append(await restarted.new_session())
        await restarted.turn(wake(message(daemon_process, "bob", "alice", "four")))
        return outcomes

    set_model, compacted, forgot = run(scenario)

    calls = standin.calls()
    session = json.loads((ctx.state_dir / ".standin-claude" / "sessions.json").read_text())
    first_id = next(iter(session))
    assert [flag(a, "--resume") for a in calls] == [None, first_id, first_id, first_id, None]
    assert [prompt_of(a) for a in calls][3] == "/compact"
    assert [flag(a, "--model") for a in calls] == [
        MODEL,
        MODEL,
        "claude-opus-4-1",
        "claude-opus-4-1",
        "claude-opus-4-1",
    ]
    assert "claude-opus-4-1" in set_model
    assert compacted.startswith(f"claude: compacted session {first_id[:8]}")
    assert forgot == f"claude: forgot session {first_id[:8]}; the next turn starts a fresh one"
    assert session_file(ctx.state_dir)["session_id"] not in (None, first_id)
    bodies = [r.body for r in messages(daemon_process) if r.from_ == "alice"]
    assert sorted(bodies) == ["ack: four", "ack: one", "ack: three", "ack: two"]


def test_a_prompt_too_big_for_argv_goes_through_stdin(
    daemon_process: DaemonProcess, standin: StandIn, tmp_path: Path
) -> None:
    ctx = context(daemon_process, "alice", tmp_path)
    row = message(daemon_process, "bob", "alice", "big one")
    big = msgspec.structs.replace(
        row, body="big one\n" + "x" * 100_000
    )  # the daemon would spill it

    stats = run(lambda: ClaudeRuntime(ctx).turn(wake(big)))

    assert stats.tool_calls == ["send"]
    assert [prompt_of(a) for a in standin.calls()] == ["<stdin>"]
    assert any(r.body == "ack: big one" for r in messages(daemon_process))


def test_a_session_the_cli_no_longer_knows_is_replaced_by_a_fresh_one(
    daemon_process: DaemonProcess, standin: StandIn, tmp_path: Path
) -> None:
    ctx = context(daemon_process, "alice", tmp_path)
    (ctx.state_dir / ".hive").mkdir(parents=True)
    (ctx.state_dir / ".hive" / "claude-session.json").write_text('{"session_id": "gone-0000"}')
    row = message(daemon_process, "bob", "alice", "still there?")

    stats = run(lambda: ClaudeRuntime(ctx).turn(wake(row)))

    assert [flag(a, "--resume") for a in standin.calls()] == ["gone-0000", None]
    assert stats.result.startswith("[session gone-000 was gone; started a fresh one]")
    assert session_file(ctx.state_dir)["session_id"] not in (None, "gone-0000")
    assert any(r.body == "ack: still there?" for r in messages(daemon_process))


def test_an_unreadable_session_file_means_a_fresh_session(tmp_path: Path) -> None:
    ctx = context(None, "alice", tmp_path)
    (ctx.state_dir / ".hive").mkdir(parents=True)
    (ctx.state_dir / ".hive" / "claude-session.json").write_text("{half a file")
    assert ClaudeRuntime(ctx).session_id is None


# --------------------------------------------------------------------------- compaction


def test_prompt_too_long_compacts_once_and_retries_the_turn(
    daemon_process: DaemonProcess, standin: StandIn, tmp_path: Path
) -> None:
    ctx = context(daemon_process, "alice", tmp_path)
    runtime = ClaudeRuntime(ctx)
    run(lambda: runtime.turn(wake(message(daemon_process, "bob", "alice", "warm up"))))
    sid = runtime.session_id
    standin.scenario("too_long_once")
    row = message(daemon_process, "bob", "alice", "the long one")

    stats = run(lambda: runtime.turn(wake(row)))

    calls = standin.calls()[1:]
    assert [prompt_of(a) for a in calls] == [wake_prompt(row, 0), "/compact", wake_prompt(row, 0)]
    assert [flag(a, "--resume") for a in calls] == [sid, sid, sid]
    assert stats.result.startswith("[prompt was too long: compacted the session and retried]")
    assert stats.tool_calls == ["send"]
    assert any(r.body == "ack: the long one" for r in messages(daemon_process))


def test_a_prompt_that_stays_too_long_fails_the_turn(standin: StandIn, tmp_path: Path) -> None:
    runtime = ClaudeRuntime(context(None, "alice", tmp_path))
    standin.scenario("too_long_always")
    with pytest.raises(TurnFailed, match="too long even for a fresh session"):
        run(lambda: runtime.turn(offline_turn()))

    runtime.session_id = "00000000-feed-beef-0000-000000000000"  # an existing session
    sessions = tmp_path / "alice" / ".standin-claude" / "sessions.json"
    sessions.write_text(json.dumps({runtime.session_id: {"context": 9000, "turns": 9}}))
    with pytest.raises(TurnFailed, match="too long even after compacting"):
        run(lambda: runtime.turn(offline_turn()))
    assert [prompt_of(a) for a in standin.calls()][1:] == [
        offline_turn().prompt,
        "/compact",
        offline_turn().prompt,
    ]


def test_the_context_watermark_compacts_before_the_turn(
    daemon_process: DaemonProcess, standin: StandIn, tmp_path: Path
) -> None:
    ctx = context(daemon_process, "alice", tmp_path)
    runtime = ClaudeRuntime(ctx, watermark=3200)  # the stand-in starts sessions at 3000 tokens

    async def three_turns() -> list[str]:
        results = []
        for body in ("one", "two", "three"):
            results.append(
                (await runtime.turn(wake(message(daemon_process, "bob", "alice", body)))).result
            )
        return results

    results = run(three_turns)

    prompts = [p.split("\n")[-1] for p in standin.prompts()]
    assert prompts == ["one", "/compact", "two", "three"]
    assert results[1].startswith("[compacted first (context ")
    assert not results[2].startswith("[")
    assert session_file(ctx.state_dir)["context_tokens"] < 3200


# --------------------------------------------------------------------------- failures


@pytest.mark.parametrize(
    ("scenario", "low", "high"),
    [("rate_limit", 90, 96), ("rate_limit_text", 90, 96), ("rate_limit_429", 7, 7)],
)
def test_a_rate_limit_answer_raises_rate_limited_with_the_reset_time(
    scenario: str, low: float, high: float, standin: StandIn, tmp_path: Path
) -> None:
    standin.scenario(scenario)
    standin.monkeypatch.setenv("HIVE_STANDIN_RESET_IN", "90")
    runtime = ClaudeRuntime(context(None, "alice", tmp_path), rate_limit_wait=7)

    with pytest.raises(RateLimited) as caught:
        run(lambda: runtime.turn(offline_turn()))

    assert low - 1 <= caught.value.retry_after <= high


def test_a_logged_out_cli_raises_login_required(standin: StandIn, tmp_path: Path) -> None:
    standin.scenario("logged_out")
    with pytest.raises(LoginRequired, match="Please run /login"):
        run(lambda: ClaudeRuntime(context(None, "alice", tmp_path)).turn(offline_turn()))


def test_a_crash_raises_turn_failed_with_the_stderr_tail(standin: StandIn, tmp_path: Path) -> None:
    standin.scenario("crash")
    with pytest.raises(TurnFailed) as caught:
        run(lambda: ClaudeRuntime(context(None, "alice", tmp_path)).turn(offline_turn()))
    assert not isinstance(caught.value, LoginRequired | RateLimited)
    assert "exited with status 3" in str(caught.value)
    assert "TypeError: stand-in crash" in str(caught.value)


def test_a_missing_cli_raises_turn_failed(standin: StandIn, tmp_path: Path) -> None:
    runtime = ClaudeRuntime(context(None, "alice", tmp_path), binary=str(tmp_path / "no-claude"))
    with pytest.raises(TurnFailed, match="could not start the Claude Code CLI"):
        run(lambda: runtime.turn(offline_turn()))


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def wait_for_pids(state_dir: Path) -> dict[str, int]:
    pids = state_dir / ".standin-claude" / "pids.json"
    deadline = time.monotonic() + 20
    while not pids.exists():
        assert time.monotonic() < deadline, "the stand-in never started"
        time.sleep(0.05)
    return dict(json.loads(pids.read_text()))


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_cancelling_a_turn_kills_the_cli_and_its_children_promptly(
    backend: str, standin: StandIn, tmp_path: Path
) -> None:
    standin.scenario("hang")
    ctx = context(None, "alice", tmp_path)
    runtime = ClaudeRuntime(ctx)

    async def cancel_mid_turn() -> float:
        with anyio.CancelScope() as scope:
            async with anyio.create_task_group() as tg:
                tg.start_soon(runtime.turn, offline_turn())
                while not (ctx.state_dir / ".standin-claude" / "pids.json").exists():
                    await anyio.sleep(0.05)
                started = time.monotonic()
                scope.cancel()
        return time.monotonic() - started

    took = run(cancel_mid_turn, backend)

    pids = wait_for_pids(ctx.state_dir)
    assert took < 5
    deadline = time.monotonic() + 5
    while any(alive(p) for p in pids.values()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(alive(p) for p in pids.values()), pids


def test_aclose_kills_a_running_cli(standin: StandIn, tmp_path: Path) -> None:
    standin.scenario("hang")
    ctx = context(None, "alice", tmp_path)
    runtime = ClaudeRuntime(ctx)

    async def close_mid_turn() -> BaseException | None:
        failure: BaseException | None = None

        async def turn() -> None:
            nonlocal failure
            try:
                await runtime.turn(offline_turn())
            except TurnFailed as exc:
                failure = exc

        async with anyio.create_task_group() as tg:
            tg.start_soon(turn)
            while not (ctx.state_dir / ".standin-claude" / "pids.json").exists():
                await anyio.sleep(0.05)
            with anyio.fail_after(5):
                await runtime.aclose()
        return failure

    failure = run(close_mid_turn)

    assert isinstance(failure, TurnFailed) and "status -15" in str(failure)
    assert not alive(wait_for_pids(ctx.state_dir)["cli"])


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
    (bin_dir / "claude").symlink_to(STANDIN)
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
    for key in (
        "HIVE_CLAUDE_BIN",
        "CLAUDE_CONFIG_DIR",
        "ANTHROPIC_API_KEY",
        "ANTHROPIC_AUTH_TOKEN",
        "CLAUDE_CODE_OAUTH_TOKEN",
    ):
        monkeypatch.delenv(key, raising=False)
    assert claude_login_available()
    creds.unlink()
    assert not claude_login_available()
