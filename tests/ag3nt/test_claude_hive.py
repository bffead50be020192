"""A `claude` agent as it really runs: a daemon subprocess starts its harness (`python -m ag3nt
serve`) in a bwrap sandbox under the agent's own uid, the harness runs the REAL Claude Code
CLI (pinned by scripts/bootstrap.sh, found through `claude_bin`), and the CLI talks to the TEST
STAND-IN Messages API on loopback (`claude_base_url`). The operator acts through `hive ctl`.

What each test drives end to end: a turn with several MCP tool calls, usage and cost in
`hive ctl stats`, a model switch, `--resume` across a harness restart and cancelling a turn
mid-call; a rate limit the harness waits out and retries; an expired login that sets
`needs_login` and recovers after `hive ctl login`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from protocol import messages as m
from protocol.client import SyncClient
from tests.claude_code import claude_bin
from tests.conftest import DaemonProcess
from tests.stand_ins.messages_api import (
    API_KEY,
    OFFLINE_ENV,
    Failure,
    MessagesAPI,
    Recorded,
    Reply,
    ToolCall,
    Usage,
)

pytestmark = pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap not installed")

MODEL = "claude-sonnet-4-5"
FRESH = "sk-ant-oat01-standin-fresh"
EXPIRED = "sk-ant-oat01-standin-expired"


def hive_toml(api: MessagesAPI, credential: dict[str, str]) -> str:
    env = {**OFFLINE_ENV, **credential}
    lines = [
        "[hive]",
        "autostart = true",
        "stop_grace_seconds = 5",
        "claude_pass_env = []",  # nothing of the test machine's own login leaks in
        f'claude_base_url = "{api.base_url}"',
        f'claude_bin = "{claude_bin()}"',
        "",
        "[hive.claude_env]",
        *(f'{k} = "{v}"' for k, v in env.items()),
        "",
        "[agents.alice]",
        'runtime = "claude"',
        f'model = "{MODEL}"',
        "",
    ]
    return "\n".join(lines)


@pytest.fixture
def api() -> Iterator[MessagesAPI]:
    with MessagesAPI(api_keys=[API_KEY, FRESH]) as api:
        yield api


def start_hive(root: Path, api: MessagesAPI, credential: dict[str, str]) -> DaemonProcess:
    config = root / "hive.toml"
    config.write_text(hive_toml(api, credential))
    daemon = DaemonProcess(root, config)
    daemon.start()
    return daemon


@pytest.fixture
def hive_with_key(short_tmp: Path, api: MessagesAPI) -> Iterator[DaemonProcess]:
    daemon = start_hive(short_tmp, api, {"ANTHROPIC_API_KEY": API_KEY})
    try:
        yield daemon
    finally:
        stop(daemon)


def stop(daemon: DaemonProcess) -> None:
    if daemon.proc is not None and daemon.proc.poll() is None:
        daemon.stop(timeout=30)


def ctl(daemon: DaemonProcess, *args: str, stdin: str | None = None) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "c0re_priv", "ctl", *args, "--run-dir", str(daemon.paths.run_dir)],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, (args, out.stdout, out.stderr)
    return out.stdout


def status(daemon: DaemonProcess) -> m.AgentRow:
    return msgspec.json.decode(ctl(daemon, "status", "alice", "--json"), type=m.AgentRow)


def stats(daemon: DaemonProcess) -> m.StatsRow:
    return msgspec.json.decode(ctl(daemon, "stats", "alice", "--json"), type=m.StatsRow)


def messages(daemon: DaemonProcess) -> list[m.MessageRow]:
    with SyncClient.connect(str(daemon.paths.admin_sock)) as c:
        return c.expect(m.ListMessages(limit=200), m.Messages).messages


def wait_until(
    check: Callable[[], Any], what: str, daemon: DaemonProcess, timeout: float = 90
) -> Any:
    deadline = time.monotonic() + timeout
    while not (got := check()):
        if time.monotonic() > deadline:
            log = daemon.paths.agents_root / "alice" / "harness.log"
            tail = log.read_text()[-3000:] if log.exists() else "(no harness log)"
            raise AssertionError(f"timed out waiting for {what}; harness log:\n{tail}")
        time.sleep(0.2)
    return got


def send(daemon: DaemonProcess, body: str) -> int:
    ctl(daemon, "send", "alice", body)
    return max(r.id for r in messages(daemon) if r.body == body)


def acked(daemon: DaemonProcess, mid: int) -> bool:
    return any(r.id == mid and r.state == "acked" for r in messages(daemon))


def reply_body(daemon: DaemonProcess, mid: int) -> str | None:
    """The body of alice's answer to message `mid`, if she answered."""
    found = [r.body for r in messages(daemon) if r.from_ == "alice" and r.in_reply_to == mid]
    return found[0] if found else None


def wakes(req: Recorded) -> list[str]:
    return [t.split("\n", 1)[1] for t in req.texts() if t.startswith("New message #")]


def cli_processes(binary: Path) -> list[int]:
    """Processes running the Claude Code binary (in any sandbox of this host)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if Path(os.readlink(entry / "exe")) == binary:
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def test_a_claude_agent_in_its_sandbox_works_switches_model_resumes_and_cancels(
    hive_with_key: DaemonProcess, api: MessagesAPI
) -> None:
    d = hive_with_key
    wait_until(lambda: status(d).harness_state == "idle", "the harness to come up", d)
    usages = [
        Usage(input_tokens=800, output_tokens=30, cache_creation_input_tokens=1500),
        Usage(input_tokens=50, output_tokens=20, cache_read_input_tokens=2300),
        Usage(input_tokens=40, output_tokens=10, cache_read_input_tokens=2400),
    ]

    # a turn with several MCP tool calls, through the sandbox's own socket
    def answer_ping(req: Recorded) -> Reply:
        mid = int(req.wake()["id"])  # type: ignore[index]
        pong = {"to": "operator", "body": "pong 1", "in_reply_to": mid}
        return Reply(tool_calls=[ToolCall("mcp__hyperhive__send", pong)], usage=usages[1])

    api.script(
        Reply(
            text="Let me look around first.",
            tool_calls=[
                ToolCall("mcp__hyperhive__whoami"),
                ToolCall("mcp__hyperhive__set_status", {"text": "answering the operator"}),
            ],
            usage=usages[0],
        ),
        answer_ping,
        Reply(text="Answered.", usage=usages[2]),
    )
    ping = send(d, "ping 1")
    wait_until(lambda: acked(d, ping), "ping 1 to be acked", d)
    assert reply_body(d, ping) == "pong 1"
    assert status(d).status_text == "answering the operator"
    first_turn = api.messages_requests()
    assert len(first_turn) == 3 and {r.model for r in first_turn} == {MODEL}
    assert "mcp__hyperhive__send" in first_turn[0].tool_names

    # token and cost figures from the CLI's `result` event, in `hive ctl stats`
    got = stats(d)
    assert (got.turns, got.failed_turns, got.tool_calls) == (1, 0, 3)
    assert got.input_tokens == sum(
        u.input_tokens + u.cache_creation_input_tokens + u.cache_read_input_tokens for u in usages
    )
    assert got.output_tokens == sum(u.output_tokens for u in usages)
    assert got.cost_usd > 0 and got.duration_ms > 0
    human = ctl(d, "stats", "alice")
    assert str(got.input_tokens) in human.replace(",", "")

    # a model switch takes effect on the next turn
    ctl(d, "set-model", "alice", "claude-haiku-4-5")
    wait_until(lambda: status(d).active_model == "claude-haiku-4-5", "the model switch", d)
    ping = send(d, "ping 2")
    wait_until(lambda: acked(d, ping), "ping 2 to be acked", d)
    second_turn = api.messages_requests()[3:]
    assert second_turn and {r.model for r in second_turn} == {"claude-haiku-4-5"}
    assert wakes(second_turn[0]) == ["ping 1", "ping 2"]  # resumed
    # by now the harness keeps the MCP server loaded: the run started the relay to it
    config = json.loads((d.paths.agent_state("alice") / ".hive" / "mcp.json").read_text())
    assert config["mcpServers"]["hyperhive"]["args"][:2] == ["-m", "ag3nt.mcp_relay"]

    # a new harness resumes the same session
    before = len(api.messages_requests())
    ctl(d, "restart", "alice")
    wait_until(lambda: status(d).harness_state == "idle", "the restarted harness", d)
    ping = send(d, "ping 3")
    wait_until(lambda: acked(d, ping), "ping 3 to be acked", d)
    assert wakes(api.messages_requests()[before]) == ["ping 1", "ping 2", "ping 3"]
    assert reply_body(d, ping) == "ack: ping 3"

    # cancel mid-turn: the CLI (and what it started) goes, the message is dropped
    before = len(api.messages_requests())
    api.script(Reply(text="this takes ages", stall=300))
    slow = send(d, "a slow one")
    api.wait_for(before + 1, timeout=60)
    binary = claude_bin()
    assert cli_processes(binary), "the CLI runs while its turn does"
    ctl(d, "cancel-turn", "alice")
    wait_until(lambda: acked(d, slow), "the cancelled message to be dropped", d, timeout=30)
    wait_until(lambda: not cli_processes(binary), "the CLI to be gone", d, timeout=15)
    assert reply_body(d, slow) is None
    wait_until(lambda: status(d).harness_state == "idle", "the harness to be idle again", d)


def test_a_rate_limit_is_waited_out_and_the_same_message_retried(
    short_tmp: Path, api: MessagesAPI
) -> None:
    d = start_hive(short_tmp, api, {"CLAUDE_CODE_OAUTH_TOKEN": FRESH})
    try:
        wait_until(lambda: status(d).harness_state == "idle", "the harness to come up", d)
        reset = time.time() + 6
        api.script(Failure.rate_limited(retry_after=6, reset_at=reset, subscription=True))
        ping = send(d, "ping while limited")
        wait_until(lambda: status(d).harness_state == "rate_limited", "rate_limited", d)
        assert not acked(d, ping)
        wait_until(lambda: acked(d, ping), "the retried message to be acked", d)
        assert reply_body(d, ping) == "ack: ping while limited"
        calls = api.messages_requests()
        assert calls[0].answered == "failure 429" and calls[1].at >= reset
        assert [wakes(c)[-1] for c in calls[:2]] == ["ping while limited"] * 2
        assert (stats(d).turns, stats(d).failed_turns) == (1, 0)
    finally:
        stop(d)


def test_an_expired_login_needs_login_until_the_operator_gives_one(
    short_tmp: Path, api: MessagesAPI
) -> None:
    d = start_hive(short_tmp, api, {"CLAUDE_CODE_OAUTH_TOKEN": EXPIRED})
    try:
        wait_until(lambda: status(d).harness_state == "idle", "the harness to come up", d)
        ping = send(d, "ping after expiry")
        wait_until(lambda: status(d).needs_login, "needs_login", d)
        assert status(d).harness_state == "needs_login" and not acked(d, ping)
        refused = {r.headers.get("authorization") for r in api.requests}
        assert refused == {f"Bearer {EXPIRED}"}

        ctl(d, "login", "alice", stdin=f"{FRESH}\n")

        wait_until(lambda: acked(d, ping), "the message after the login", d)
        assert reply_body(d, ping) == "ack: ping after expiry"
        assert not status(d).needs_login
        assert api.requests[-1].headers.get("authorization") == f"Bearer {FRESH}"
    finally:
        stop(d)


@pytest.mark.parametrize(
    ("line", "complaint"),
    [
        ('claude_base_url = "ftp://gateway"', "claude_base_url"),
        ('claude_base_url = "https://gate way"', "claude_base_url"),
        ('claude_bin = "claude"', "claude_bin"),  # must be absolute: PATH differs in a sandbox
        ('claude_env = { HIVE_AGENT_NAME = "x" }', "claude_env"),  # HIVE_* are the daemon's
    ],
)
def test_endpoint_settings_are_checked_when_the_config_is_read(
    line: str, complaint: str, tmp_path: Path
) -> None:
    from c0re_priv.config import ConfigError, load_config

    path = tmp_path / "hive.toml"
    path.write_text(f"[hive]\n{line}\n")
    with pytest.raises(ConfigError, match=complaint):
        load_config(path)
    path.write_text(
        '[hive]\nclaude_base_url = "http://127.0.0.1:4000/anthropic"\n'
        'claude_bin = "/opt/claude/bin/claude"\nclaude_env = { ANTHROPIC_CUSTOM_HEADERS = "x: y" }\n'
    )
    settings = load_config(path).hive
    assert settings.claude_base_url == "http://127.0.0.1:4000/anthropic"
    assert settings.claude_env == {"ANTHROPIC_CUSTOM_HEADERS": "x: y"}
