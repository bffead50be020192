"""The `claude` runtime: each turn is one run of the Claude Code CLI in print mode.

It owns four things: the CLI process of the running turn (started in its own process group,
so a cancelled turn takes the CLI and everything it started down with it), the agent's Claude
session (its id kept in `<state_dir>/.hive/claude-session.json` and resumed on every turn, so
it survives harness restarts), the MCP server it keeps loaded for the runs while `serve` runs
(`ag3nt.mcp_listener`), and the MCP config that points the CLI at it through `ag3nt.mcp_relay`,
or at `python -m ag3nt mcp` on this agent's socket when there is none
(`<state_dir>/.hive/mcp.json`). It reads the CLI's stream-json output line
by line into `TurnStats`, and turns the failures the harness treats differently into
`LoginRequired` and `RateLimited`; a prompt that outgrew the context is compacted once and
retried. It never talks to the daemon itself: whatever the agent says goes through the MCP
tools. Written against anyio, so it runs under asyncio (as `python -m ag3nt serve` does) and trio.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import shutil
import signal
import sys
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import Enum
from pathlib import Path
from subprocess import DEVNULL, PIPE
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import anyio
import anyio.abc
from anyio.abc import TaskStatus

from protocol.messages import TurnStats

from ..mcp_relay import command as relay_command
from .base import AgentContext, LoginRequired, RateLimited, Turn, TurnFailed

log = logging.getLogger("ag3nt.runtimes.claude")

SERVER_NAME = "hyperhive"
TOOL_PREFIX = f"mcp__{SERVER_NAME}__"
DEFAULT_WATERMARK = 150_000
"""Context size (input tokens incl. cache) after which the session is compacted before a turn."""
DEFAULT_RATE_LIMIT_WAIT = 120.0
"""Seconds to wait on a rate limit whose answer carries no reset time."""
MAX_RATE_LIMIT_WAIT = 6 * 3600.0
RESET_MARGIN = 5.0
TERMINATE_GRACE = 2.0
"""Seconds between SIGTERM and SIGKILL for the CLI's process group."""
EXIT_DRAIN = 5.0
"""Seconds to wait for the CLI's output pipes to close after it exited."""
ARGV_PROMPT_LIMIT = 64 * 1024
"""Longer prompts go through stdin: Linux caps one argv string at 128 KiB."""
MAX_LINE_BYTES = 32 * 1024 * 1024
STDERR_TAIL_CHARS = 1500
RESULT_LIMIT = 4000
LOGIN_RETRY_LIMIT = 2
"""`api_retry` events for an authentication failure after which the run is given up: with an
API key the CLI retries a 401 ten times with backoff (minutes); one retry is enough for it to
refresh an OAuth token."""
CLI_ENV_DEFAULTS = {
    # the hyperhive tools are the agent's only voice: offered with their schemas on the first
    # request, not deferred behind ToolSearch (docs/runtimes.md, "Tool search")
    "ENABLE_TOOL_SEARCH": "false",
    # the host is read-only inside a sandbox: the CLI cannot update itself there
    "DISABLE_AUTOUPDATER": "1",
}
"""Set for every CLI run unless the agent's environment sets them itself."""
DIE_WITH_PARENT = (
    "import ctypes, os, signal, sys\n"
    "ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG\n"
    "if os.getppid() != int(sys.argv[1]):\n"
    "    os._exit(70)  # the harness died before the death signal was armed\n"
    "os.execvp(sys.argv[2], sys.argv[2:])\n"
)
"""Runs before the CLI, in its process: arm SIGKILL for when the harness dies, then exec it."""

LOGIN_TEXT = re.compile(
    r"invalid api key|run /login|not logged in|oauth token (?:has )?(?:expired|been revoked|revoked)"
    r"|authentication_error|authentication[ _]failed|invalid bearer token|invalid x-api-key",
    re.IGNORECASE,
)
RATE_LIMIT_TEXT = re.compile(
    r"rate[ _-]?limit|usage limit|hit your (?:usage )?limit|too many requests"
    r"|\b(?:5-hour|five[ -]hour|weekly|daily|session|opus|sonnet) limit\b"
    r"|(?:api error|status|error|code|http)\W{0,3}429\b",
    re.IGNORECASE,
)
TOO_LONG_TEXT = re.compile(
    r"prompt is too long|context (?:length|window) exceeded|exceeds? (?:the )?(?:maximum )?context"
    r"|input length and .?max_tokens.? exceed",
    re.IGNORECASE,
)
NO_SESSION_TEXT = re.compile(r"no conversation found", re.IGNORECASE)
RESET_EPOCH = re.compile(r"limit reached\|(\d{9,11})\b", re.IGNORECASE)
RESET_CLOCK = re.compile(
    r"resets?\s+(?:at\s+)?(\d{1,2})(?::(\d{2}))?\s*(am|pm)?(?:\s*\(([A-Za-z_+\-/0-9]+)\))?",
    re.IGNORECASE,
)


# --------------------------------------------------------------------------- the stream


@dataclass
class RunRecord:
    """What one CLI run said: its stream-json events, folded as they arrive, and how it ended."""

    init_session_id: str | None = None
    result: dict[str, Any] | None = None
    tool_calls: list[str] = field(default_factory=list)
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    duration_ms: int = 0
    context_tokens: int = 0
    """Prompt size of the run's last main-thread model call (input incl. cache) plus its output."""
    assistant_errors: list[str] = field(default_factory=list)
    """The `error` field of assistant events (`rate_limit`, `authentication_failed`, …)."""
    error_texts: list[str] = field(default_factory=list)
    rate_limit_rejected: bool = False
    rate_limit_resets_at: float | None = None
    compacted: bool = False
    """The CLI compacted the session itself (`system/compact_boundary`)."""
    api_retries: list[dict[str, Any]] = field(default_factory=list)
    """The CLI's own retries of a failed API call (`system/api_retry`), at most the last 20."""
    login_retries: int = 0
    given_up: str = ""
    """Why the runtime stopped the CLI before it ended by itself (empty when it did not)."""
    on_hopeless: Callable[[], None] | None = None
    """Called once when the stream shows the run cannot succeed (see LOGIN_RETRY_LIMIT)."""
    texts: deque[str] = field(default_factory=lambda: deque(maxlen=5))
    stray: deque[str] = field(default_factory=lambda: deque(maxlen=5))
    """stdout lines that were not JSON (kept for the diagnosis)."""
    exit_code: int | None = None
    stderr_tail: str = ""
    resumed: str | None = None
    _tool_ids: set[str] = field(default_factory=set)

    def feed(self, line: str) -> None:
        line = line.strip()
        if not line:
            return
        try:
            event = json.loads(line)
        except ValueError:
            self.stray.append(line[:500])
            return
        if not isinstance(event, dict):
            self.stray.append(line[:500])
            return
        kind = event.get("type")
        if kind == "system":
            if event.get("subtype") == "init" and isinstance(event.get("session_id"), str):
                self.init_session_id = event["session_id"]
            elif event.get("subtype") == "compact_boundary":
                self.compacted = True
            elif event.get("subtype") == "api_retry":
                self._api_retry(event)
        elif kind == "assistant":
            self._assistant(event)
        elif kind == "result":
            self._result(event)
        elif kind == "rate_limit_event":
            info = event.get("rate_limit_info")
            if isinstance(info, dict) and info.get("status") == "rejected":
                self.rate_limit_rejected = True
                resets = info.get("resetsAt")
                if isinstance(resets, int | float) and not isinstance(resets, bool):
                    self.rate_limit_resets_at = float(resets)
        elif kind == "error":
            self.error_texts.append(
                _text_of(event.get("error") or event.get("message") or event)[:1000]
            )

    def _api_retry(self, event: dict[str, Any]) -> None:
        self.api_retries = [*self.api_retries[-19:], event]
        if event.get("error") == "authentication_failed" or event.get("error_status") == 401:
            self.login_retries += 1
            if self.login_retries == LOGIN_RETRY_LIMIT:
                self.given_up = (
                    f"the API refused the login {self.login_retries} times "
                    f"(HTTP {event.get('error_status')}, {event.get('error')})"
                )
                if self.on_hopeless is not None:
                    self.on_hopeless()

    def _assistant(self, event: dict[str, Any]) -> None:
        if isinstance(event.get("error"), str):
            self.assistant_errors.append(event["error"])
        message = event.get("message")
        if not isinstance(message, dict):
            return
        for block in message.get("content") or []:
            if not isinstance(block, dict):
                continue
            if block.get("type") == "tool_use" and isinstance(block.get("name"), str):
                block_id = str(block.get("id", len(self._tool_ids)))
                if block_id not in self._tool_ids:
                    self._tool_ids.add(block_id)
                    self.tool_calls.append(block["name"])
            elif block.get("type") == "text" and isinstance(block.get("text"), str):
                self.texts.append(block["text"][:1000])
        usage = message.get("usage")
        if isinstance(usage, dict) and event.get("parent_tool_use_id") is None:
            # subagents (parent_tool_use_id set) have their own context; the main thread's is ours
            size = _prompt_tokens(usage) + _int(usage.get("output_tokens"))
            if size:
                self.context_tokens = size

    def _result(self, event: dict[str, Any]) -> None:
        self.result = event
        usage = event.get("usage")
        if isinstance(usage, dict):
            self.input_tokens = _prompt_tokens(usage)
            self.output_tokens = _int(usage.get("output_tokens"))
            if not self.context_tokens:
                self.context_tokens = self.input_tokens
        cost = event.get("total_cost_usd")
        if isinstance(cost, int | float) and not isinstance(cost, bool) and cost >= 0:
            self.cost_usd = float(cost)
        self.duration_ms = _int(event.get("duration_ms"))
        errors = event.get("errors")
        if isinstance(errors, list):
            self.error_texts.extend(_text_of(e)[:1000] for e in errors)

    @property
    def session_id(self) -> str | None:
        """The id to resume next time: the result's (the documented one), else the init's."""
        if self.result is not None and isinstance(self.result.get("session_id"), str):
            return str(self.result["session_id"])
        return self.init_session_id

    @property
    def result_text(self) -> str:
        if self.result is None:
            return ""
        return _text_of(self.result.get("result", ""))

    @property
    def failed(self) -> bool:
        if self.exit_code not in (0, None) or self.result is None:
            return True
        return (
            bool(self.result.get("is_error")) or self.result.get("subtype", "success") != "success"
        )

    @property
    def api_error_status(self) -> int | None:
        status = None if self.result is None else self.result.get("api_error_status")
        return status if isinstance(status, int) and not isinstance(status, bool) else None

    @property
    def terminal_reason(self) -> str:
        reason = None if self.result is None else self.result.get("terminal_reason")
        return reason if isinstance(reason, str) else ""

    def evidence(self) -> str:
        """Everything a failure could be diagnosed from, newest last."""
        parts = [
            *self.error_texts,
            *self.texts,
            self.result_text,
            *self.stray,
            self.stderr_tail,
            self.given_up,
        ]
        return "\n".join(p for p in parts if p)

    def summary(self) -> str:
        """One short line saying what the CLI answered."""
        for text in (
            self.given_up,
            self.result_text,
            *reversed(self.error_texts),
            *reversed(self.texts),
            *reversed(self.stray),
        ):
            if text.strip():
                return " ".join(text.split())[:300]
        if self.result is not None:
            return f"result {self.result.get('subtype', '?')} without text"
        return "no result event"


def _int(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def _prompt_tokens(usage: Mapping[str, Any]) -> int:
    return (
        _int(usage.get("input_tokens"))
        + _int(usage.get("cache_creation_input_tokens"))
        + _int(usage.get("cache_read_input_tokens"))
    )


def _text_of(value: object) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        for key in ("message", "text", "error"):
            if isinstance(value.get(key), str):
                return str(value[key])
    return json.dumps(value, default=str)


class Cause(Enum):
    """Why a run failed, as far as the harness needs to know."""

    LOGIN = "login"
    RATE_LIMIT = "rate_limit"
    TOO_LONG = "too_long"
    NO_SESSION = "no_session"
    OTHER = "other"


def diagnose(run: RunRecord) -> Cause | None:
    """None when the run succeeded; otherwise the most specific cause the output shows."""
    if not run.failed:
        return None
    # what the CLI says in structure first (error fields, statuses), its words after
    if run.login_retries >= LOGIN_RETRY_LIMIT or "authentication_failed" in run.assistant_errors:
        return Cause.LOGIN
    if run.api_error_status == 401:
        return Cause.LOGIN
    if run.rate_limit_rejected or "rate_limit" in run.assistant_errors:
        return Cause.RATE_LIMIT
    if run.api_error_status == 429:
        return Cause.RATE_LIMIT
    if run.terminal_reason == "prompt_too_long":
        return Cause.TOO_LONG
    text = run.evidence()
    if LOGIN_TEXT.search(text):
        return Cause.LOGIN
    if TOO_LONG_TEXT.search(text):
        return Cause.TOO_LONG
    if RATE_LIMIT_TEXT.search(text):
        return Cause.RATE_LIMIT
    if NO_SESSION_TEXT.search(text):
        return Cause.NO_SESSION
    return Cause.OTHER


def rate_limit_retry_after(run: RunRecord, default: float, now: float | None = None) -> float:
    """Seconds until the limit resets (from the stream or the answer's text), else `default`."""
    now = time.time() if now is None else now
    reset = run.rate_limit_resets_at
    if reset is None:
        reset = reset_time_from_text(run.evidence(), now)
    if reset is None:
        return default
    # a reset that passed while the CLI was exiting needs only the margin, not the default
    return min(max(reset - now, 0.0) + RESET_MARGIN, MAX_RATE_LIMIT_WAIT)


def reset_time_from_text(text: str, now: float) -> float | None:
    """Epoch seconds of the reset a limit message names: `…limit reached|1750000000`, or
    `… resets 3pm (Europe/Berlin)` / `resets 14:30` (the next such time of day)."""
    found = RESET_EPOCH.search(text)
    if found:
        return float(found.group(1))
    for clock in RESET_CLOCK.finditer(text):
        hour, minute, half, zone = clock.group(1), clock.group(2), clock.group(3), clock.group(4)
        if minute is None and half is None:
            continue  # "resets 5" is too vague to act on
        h, mins = int(hour), int(minute or 0)
        if half:
            if not 1 <= h <= 12:
                continue
            h = h % 12 + (12 if half.lower() == "pm" else 0)
        if h > 23 or mins > 59:
            continue
        tz: Any = None
        if zone:
            try:
                tz = ZoneInfo(zone)
            except (ZoneInfoNotFoundError, ValueError):
                tz = None
        current = (
            datetime.fromtimestamp(now, tz) if tz else datetime.fromtimestamp(now).astimezone()
        )
        target = current.replace(hour=h, minute=mins, second=0, microsecond=0)
        if target <= current:
            target += timedelta(days=1)
        return target.timestamp()
    return None


# --------------------------------------------------------------------------- login


def claude_login_available(env: Mapping[str, str] | None = None) -> bool:
    """Whether a logged-in Claude Code CLI is here: the binary (HIVE_CLAUDE_BIN or `claude` on
    PATH) and a credential (ANTHROPIC_API_KEY, ANTHROPIC_AUTH_TOKEN, CLAUDE_CODE_OAUTH_TOKEN, or
    an OAuth login in `~/.claude/.credentials.json`, honouring CLAUDE_CONFIG_DIR). It reads
    files only; whether the login still works shows on the first turn."""
    env = os.environ if env is None else env
    binary = env.get("HIVE_CLAUDE_BIN") or shutil.which("claude", path=env.get("PATH"))
    if not binary or not os.access(binary, os.X_OK):
        return False
    if any(
        env.get(key)
        for key in ("ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN", "CLAUDE_CODE_OAUTH_TOKEN")
    ):
        return True
    home = Path(env["HOME"]) if env.get("HOME") else Path.home()
    config_dir = (
        Path(env["CLAUDE_CONFIG_DIR"]) if env.get("CLAUDE_CONFIG_DIR") else home / ".claude"
    )
    creds = _read_json(config_dir / ".credentials.json")
    oauth = creds.get("claudeAiOauth") if isinstance(creds, dict) else None
    if not isinstance(oauth, dict) or not oauth.get("accessToken"):
        return False
    if oauth.get("refreshToken"):
        return True  # the CLI refreshes an expired access token itself
    expires = oauth.get("expiresAt")
    return not isinstance(expires, int | float) or expires / 1000 > time.time()


def _read_json(path: Path) -> object:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


# --------------------------------------------------------------------------- the runtime


@dataclass
class _Totals:
    """Sums over every CLI run of one turn (a compaction and a retry cost money too)."""

    tool_calls: list[str] = field(default_factory=list)
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    duration_ms: int = 0

    def add(self, run: RunRecord) -> None:
        self.tool_calls += [_short_tool(name) for name in run.tool_calls]
        self.input_tokens += run.input_tokens
        self.output_tokens += run.output_tokens
        self.cost_usd += run.cost_usd
        self.duration_ms += run.duration_ms


def _short_tool(name: str) -> str:
    """`mcp__hyperhive__send` → `send`, so stats read the same for every runtime."""
    return (name.removeprefix(TOOL_PREFIX) if name.startswith(TOOL_PREFIX) else name)[:128]


class ClaudeRuntime:
    """Drives the Claude Code CLI, one `claude -p` run per turn, in the agent's state dir.

    `watermark` (tokens, env HIVE_CLAUDE_WATERMARK) and `rate_limit_wait` (seconds, env
    HIVE_CLAUDE_RATE_LIMIT_WAIT) default from the environment so `hive.toml` can set them through
    an agent's env. `binary` defaults to HIVE_CLAUDE_BIN, then `claude` on PATH, looked up at
    each run. `extra_args` are appended to every CLI call (e.g. `--permission-mode acceptEdits`).
    """

    name = "claude"

    def __init__(
        self,
        ctx: AgentContext,
        *,
        watermark: int | None = None,
        rate_limit_wait: float | None = None,
        binary: str | None = None,
        extra_args: Sequence[str] = (),
        terminate_grace: float = TERMINATE_GRACE,
    ) -> None:
        self.ctx = ctx
        self.model = ctx.model
        env = self._env()
        self.watermark = int(
            watermark
            if watermark is not None
            else _env_number(env, "HIVE_CLAUDE_WATERMARK", DEFAULT_WATERMARK)
        )
        self.rate_limit_wait = (
            rate_limit_wait
            if rate_limit_wait is not None
            else _env_number(env, "HIVE_CLAUDE_RATE_LIMIT_WAIT", DEFAULT_RATE_LIMIT_WAIT)
        )
        self.binary = binary
        self.extra_args = list(extra_args)
        self.terminate_grace = terminate_grace
        self.hive_dir = ctx.state_dir / ".hive"
        self.session_file = self.hive_dir / "claude-session.json"
        self.mcp_config = self.hive_dir / "mcp.json"
        self.mcp_listener: Path | None = None
        """The socket of the MCP server `serve` keeps loaded, while it does."""
        self.session_id: str | None = None
        self.context_tokens = 0
        self.compact_floor = 0
        """Context measured on the first turn after a compaction; compacting again needs growth."""
        self._load_session()
        self._proc: anyio.abc.Process | None = None
        self._done: anyio.Event | None = None
        self._turn_running = False
        self._compact_requested = False
        self._epoch = 0
        self._after_compact = False

    # ---------------------------------------------------------------- Runtime protocol

    async def turn(self, turn: Turn) -> TurnStats:
        """One wake, one CLI run (plus a compaction and one retry when the context overflowed).

        Raises `LoginRequired`, `RateLimited`, or `TurnFailed` (with the stderr tail) when the
        turn did not complete. Cancelling it kills the CLI's process group (SIGTERM, then
        SIGKILL after `terminate_grace` seconds) before the cancellation propagates.
        """
        started = time.monotonic()
        totals = _Totals()
        notes: list[str] = []
        async with self._exclusive(turn=True):
            await self._compact_ahead(totals, notes)
            run = await self._run(turn.prompt, totals)
            cause = diagnose(run)
            if run.compacted:
                notes.append("the CLI compacted the session itself")
            if cause is Cause.NO_SESSION and run.resumed:
                notes.append(f"session {run.resumed[:8]} was gone; started a fresh one")
                self._forget()
                run = await self._run(turn.prompt, totals)
                cause = diagnose(run)
            if cause is Cause.TOO_LONG:
                if run.resumed is None:
                    raise TurnFailed(
                        f"prompt is too long even for a fresh session ({len(turn.prompt)} characters)"
                    )
                run, cause = await self._compact_and_retry(turn.prompt, totals, notes)
            self._raise_for(run, cause)
        text = run.result_text
        if notes:
            text = f"[{'; '.join(notes)}] {text}"
        return TurnStats(
            ok=True,
            result=text[:RESULT_LIMIT],
            tool_calls=totals.tool_calls,
            input_tokens=totals.input_tokens,
            output_tokens=totals.output_tokens,
            cost_usd=totals.cost_usd,
            duration_ms=totals.duration_ms or int((time.monotonic() - started) * 1000),
        )

    async def compact(self) -> str:
        if self.session_id is None:
            return "claude: no session yet, nothing to compact"
        if self._turn_running:
            self._compact_requested = True
            return "claude: a turn is running; the session will be compacted before the next turn"
        async with self._exclusive(turn=False):
            if self.session_id is None:
                return "claude: no session yet, nothing to compact"
            before, session = self.context_tokens, self.session_id
            totals = _Totals()
            await self._compact(totals)
        return f"claude: compacted session {session[:8]} (context was {before} tokens; cost ${totals.cost_usd:.4f})"

    async def new_session(self) -> str:
        old = self.session_id
        self._forget()
        tail = " (the running turn finishes in the old one)" if self._turn_running else ""
        if old is None:
            return f"claude: no session yet; the next turn starts a fresh one{tail}"
        return f"claude: forgot session {old[:8]}; the next turn starts a fresh one{tail}"

    def set_model(self, model: str) -> str:
        old, self.model = self.model, model
        return f"claude: model {model} from the next turn on (was {old or 'the CLI default'})"

    async def serve(
        self, *, task_status: TaskStatus[Path | None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Keep the MCP server loaded for the CLI's runs (`ag3nt.mcp_listener`) until cancelled.

        Each run's config then starts `ag3nt.mcp_relay` to it instead of the whole server.
        Started with `TaskGroup.start`, it reports the listener's socket once there is one.
        When no socket can be made, it logs why, reports None and returns: the runs then start
        the server themselves.
        """
        listening = await anyio.to_thread.run_sync(_load_listener)  # ~1.5 s of imports, once
        started = False
        try:
            async with listening(str(self.ctx.socket), self.ctx.role) as path:
                self.mcp_listener = path
                task_status.started(path)
                started = True
                try:
                    await anyio.sleep_forever()
                finally:
                    self.mcp_listener = None
        except OSError as exc:
            log.warning("cannot keep the MCP server loaded (%s); each run starts its own", exc)
            if not started:
                task_status.started(None)

    async def aclose(self) -> None:
        """Kill the running CLI, if any (its turn then fails or is being cancelled anyway)."""
        proc = self._proc
        if proc is not None and proc.returncode is None:
            with anyio.CancelScope(shield=True):
                await self._stop(proc)

    # ---------------------------------------------------------------- turns

    @asynccontextmanager
    async def _exclusive(self, *, turn: bool) -> AsyncIterator[None]:
        """One CLI run per agent at a time: two runs resuming one session would fork it."""
        while self._done is not None:
            await self._done.wait()
        done = self._done = anyio.Event()
        self._turn_running = turn
        try:
            yield
        finally:
            self._turn_running = False
            self._done = None
            done.set()

    async def _compact_ahead(self, totals: _Totals, notes: list[str]) -> None:
        if self.session_id is None:
            self._compact_requested = False
            return
        threshold = max(self.watermark, self.compact_floor * 5 // 4)
        if self._compact_requested:
            why = "operator asked"
        elif self.context_tokens >= threshold:
            why = f"context {self.context_tokens} ≥ {threshold} tokens"
        else:
            return
        try:
            await self._compact(totals)
        except (LoginRequired, RateLimited):
            raise
        except TurnFailed as exc:  # the turn may still fit; "too long" is handled after it
            log.warning("compaction ahead of the turn failed: %s", exc)
            notes.append(f"compaction ahead failed: {exc}")
            return
        notes.append(f"compacted first ({why})")

    async def _compact_and_retry(
        self, prompt: str, totals: _Totals, notes: list[str]
    ) -> tuple[RunRecord, Cause | None]:
        """Compact the resumed session once (or, when that fails, start afresh); retry once."""
        try:
            await self._compact(totals)
            notes.append("prompt was too long: compacted the session and retried")
        except (LoginRequired, RateLimited):
            raise
        except TurnFailed as exc:
            log.warning(
                "compaction after 'prompt is too long' failed (%s); starting a fresh session", exc
            )
            notes.append(
                f"prompt was too long and compaction failed ({exc}); retried in a fresh session"
            )
            self._forget()
        run = await self._run(prompt, totals)
        cause = diagnose(run)
        if cause is Cause.TOO_LONG:
            raise TurnFailed(
                f"prompt is too long even after compacting the session: {run.summary()}"
            )
        return run, cause

    async def _compact(self, totals: _Totals) -> None:
        """`claude -p /compact --resume <session>`; raises like a turn when it fails."""
        run = await self._run("/compact", totals, compacting=True)
        cause = diagnose(run)
        if cause is Cause.NO_SESSION:
            self._forget()
            return
        if cause is not None:
            if cause in (Cause.LOGIN, Cause.RATE_LIMIT):
                self._raise_for(run, cause)
            raise TurnFailed(f"compaction failed: {run.summary()}")
        self.context_tokens = 0
        self._compact_requested = False
        self._after_compact = True
        self._save_session()

    def _raise_for(self, run: RunRecord, cause: Cause | None) -> None:
        if cause is None:
            return
        summary = run.summary()
        if cause is Cause.LOGIN:
            raise LoginRequired(f"Claude Code is not logged in: {summary}")
        if cause is Cause.RATE_LIMIT:
            wait = rate_limit_retry_after(run, self.rate_limit_wait)
            raise RateLimited(f"rate limited (retry in {wait:.0f}s): {summary}", retry_after=wait)
        if cause is Cause.TOO_LONG:
            raise TurnFailed(f"prompt is too long: {summary}")
        how = f"exited with status {run.exit_code}" if run.exit_code else "failed"
        stderr = f"; stderr: {run.stderr_tail.strip()}" if run.stderr_tail.strip() else ""
        raise TurnFailed(f"claude {how}: {summary}{stderr}")

    async def _run(self, prompt: str, totals: _Totals, *, compacting: bool = False) -> RunRecord:
        resume, epoch = self.session_id, self._epoch
        argv, stdin_data = self._argv(prompt, resume)
        what = "/compact" if compacting else "turn"
        log.info("claude %s: %s", what, f"resuming {resume}" if resume else "fresh session")
        run = await self._exec(argv, stdin_data)
        run.resumed = resume
        totals.add(run)
        log.info(
            "claude %s ended: exit %s, %s, %d tool calls, %d tokens in, $%.4f",
            what,
            run.exit_code,
            cause.value if (cause := diagnose(run)) else "ok",
            len(run.tool_calls),
            run.input_tokens,
            run.cost_usd,
        )
        # a failed fresh run is not adopted: its session would start with the failed prompt
        adopt = run.result is not None and (resume is not None or not run.failed)
        if adopt and epoch == self._epoch and diagnose(run) is not Cause.NO_SESSION:
            self.session_id = run.session_id or self.session_id
            if not compacting and run.context_tokens:
                self.context_tokens = run.context_tokens
                if (self._after_compact or run.compacted) and not run.failed:
                    # measured after a compaction (ours, or the CLI's own mid-run)
                    self.compact_floor, self._after_compact = run.context_tokens, False
            self._save_session()
        return run

    def _argv(self, prompt: str, resume: str | None) -> tuple[list[str], bytes | None]:
        """The CLI call. The prompt follows `-p` directly: `--mcp-config` and `--allowedTools`
        take several values and would swallow a prompt placed after them."""
        argv = [self._binary(), "-p"]
        stdin_data: bytes | None = None
        if len(prompt.encode()) > ARGV_PROMPT_LIMIT or prompt.startswith("-"):
            stdin_data = prompt.encode()
        else:
            argv.append(prompt)
        argv += [
            "--output-format",
            "stream-json",
            "--verbose",
            "--mcp-config",
            str(self.mcp_config),
            "--append-system-prompt",
            self.system_prompt(),
            "--allowedTools",
            f"mcp__{SERVER_NAME}",
        ]
        if self.model:
            argv += ["--model", self.model]
        if resume:
            argv += ["--resume", resume]
        return [*argv, *self.extra_args], stdin_data

    def system_prompt(self) -> str:
        c = self.ctx
        who = "the manager of" if c.role == "manager" else "an agent in"
        lines = [
            f"You are {c.name}, {who} a hyperhive: a swarm of AI coding agents, each in its own "
            "container, working with one human operator.",
            "Every message you receive or send goes through the hyperhive MCP tools "
            f"({TOOL_PREFIX}*): `send` messages an agent, `operator`, or `*` (everyone); `recv` and "
            "`recv_batch` drain your inbox; `ask` and `answer` carry questions that need an answer; "
            "`set_status` says what you are doing; `whoami`, `get_open_threads`, `list_my_asks` and "
            "`cancel_ask` tell you where things stand. Text you write outside a tool call is seen "
            "by no one.",
            "Each turn starts with one new message (its kind, id, sender and body). When more are "
            "queued, drain them before acting. Name the message you answer with `in_reply_to`.",
            f"Your working directory {c.state_dir} is yours and persists across turns, restarts "
            "and rebuilds: keep your work and notes there.",
        ]
        if Path("/shared").is_dir():
            lines.append("/shared is shared with every agent in the hive.")
        if c.role == "manager":
            lines.append(
                "As the manager you coordinate the other agents: split work, answer their "
                "questions, and keep the operator informed."
            )
        return "\n".join(lines)

    # ---------------------------------------------------------------- the process

    async def _exec(self, argv: list[str], stdin_data: bytes | None) -> RunRecord:
        self._write_mcp_config()
        run = RunRecord()
        stderr = _Tail(STDERR_TAIL_CHARS)
        if not os.access(argv[0], os.X_OK):  # the shim would report it less clearly
            raise TurnFailed(f"could not start the Claude Code CLI ({argv[0]}): not executable")
        try:
            proc = await anyio.open_process(
                die_with_this_thread(argv),
                stdin=PIPE if stdin_data is not None else DEVNULL,
                stdout=PIPE,
                stderr=PIPE,
                cwd=self.ctx.state_dir,
                env=self._env(),
                start_new_session=True,  # its own process group: a cancel kills the whole tree
            )
        except OSError as exc:
            raise TurnFailed(f"could not start the Claude Code CLI ({argv[0]}): {exc}") from exc
        self._proc = proc
        run.on_hopeless = lambda: _signal_group(proc.pid, signal.SIGTERM)
        try:
            async with anyio.create_task_group() as tg:
                out_done, err_done = anyio.Event(), anyio.Event()
                assert proc.stdout is not None and proc.stderr is not None
                tg.start_soon(_read_lines, proc.stdout, run.feed, out_done)
                tg.start_soon(_read_lines, proc.stderr, stderr.add, err_done)
                if stdin_data is not None:
                    assert proc.stdin is not None
                    tg.start_soon(_write_all, proc.stdin, stdin_data)
                run.exit_code = await proc.wait()
                # a grandchild that inherited a pipe must not hold the turn open
                with anyio.move_on_after(EXIT_DRAIN):
                    await out_done.wait()
                    await err_done.wait()
                tg.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True):
                await self._stop(proc)
            self._proc = None
        run.stderr_tail = stderr.text()
        return run

    async def _stop(self, proc: anyio.abc.Process) -> None:
        """SIGTERM the process group, SIGKILL it after the grace period, reap the leader."""
        if proc.returncode is None:
            _signal_group(proc.pid, signal.SIGTERM)
            with anyio.move_on_after(self.terminate_grace):
                await proc.wait()
            if proc.returncode is None:
                _signal_group(proc.pid, signal.SIGKILL)
        await proc.aclose()

    # ---------------------------------------------------------------- files and env

    def _env(self) -> dict[str, str]:
        return {**CLI_ENV_DEFAULTS, **os.environ, **self.ctx.extra_env}

    def _binary(self) -> str:
        env = self._env()
        found = (
            self.binary
            or env.get("HIVE_CLAUDE_BIN")
            or shutil.which("claude", path=env.get("PATH"))
        )
        if not found:
            raise TurnFailed(
                "the Claude Code CLI was not found: install `claude` or set HIVE_CLAUDE_BIN"
            )
        return found

    def _write_mcp_config(self) -> None:
        c = self.ctx
        argv = [*c.ag3nt_command, "mcp", "--socket", str(c.socket)]
        if self.mcp_listener is not None:  # the relay runs `argv` itself if the socket is gone
            argv = relay_command(str(self.mcp_listener), argv)
        server = {
            "type": "stdio",
            "command": argv[0],
            "args": argv[1:],
            # the server inherits the CLI's environment; the file holds no secret of extra_env
            "env": {"HIVE_AGENT_SOCKET": str(c.socket)},
        }
        _write_json(self.mcp_config, {"mcpServers": {SERVER_NAME: server}})

    def _load_session(self) -> None:
        data = _read_json(self.session_file)
        if data is None:
            return
        if not isinstance(data, dict) or not isinstance(data.get("session_id"), str | None):
            log.warning("ignoring unreadable %s; starting a fresh session", self.session_file)
            return
        self.session_id = data.get("session_id")
        self.context_tokens = _int(data.get("context_tokens"))
        self.compact_floor = _int(data.get("compact_floor"))

    def _save_session(self) -> None:
        _write_json(
            self.session_file,
            {
                "session_id": self.session_id,
                "context_tokens": self.context_tokens,
                "compact_floor": self.compact_floor,
                "updated_at": time.time(),
            },
        )

    def _forget(self) -> None:
        self._epoch += 1  # a run still going must not write its session back
        self.session_id, self.context_tokens, self.compact_floor = None, 0, 0
        self._compact_requested = self._after_compact = False
        self._save_session()


def _write_json(path: Path, value: object) -> None:
    """Write atomically: a harness killed mid-write leaves the old file, not half a new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(value, indent=1) + "\n")
    tmp.replace(path)


def _load_listener() -> Callable[[str, str], AbstractAsyncContextManager[Path]]:
    from ..mcp_listener import listening  # the `mcp` SDK: imported only where it is served

    return listening


def die_with_this_thread(argv: list[str]) -> list[str]:
    """`argv`, run so that it is SIGKILLed when the harness dies, even by SIGKILL.

    A parent-death signal fires when the *thread* that forked the child ends, not the process.
    Under asyncio (how the harness runs) the child is forked by the event loop's thread, which
    lives as long as the harness, so the signal is armed. Under trio the fork happens in a
    worker thread that retires when idle and would kill the CLI mid-turn, so there (tests
    only) the CLI gets no death signal and is ended by the process-group kill alone.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return argv
    return [sys.executable, "-c", DIE_WITH_PARENT, str(os.getpid()), *argv]


def _signal_group(pgid: int, signum: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):  # already gone
        os.killpg(pgid, signum)


class _Tail:
    """The last `limit` characters of a stream of lines, in bounded memory."""

    def __init__(self, limit: int) -> None:
        self.limit, self.size, self.lines = limit, 0, deque[str]()

    def add(self, line: str) -> None:
        self.lines.append(line[-self.limit :] + "\n")
        self.size += len(self.lines[-1])
        while self.size - len(self.lines[0]) >= self.limit:
            self.size -= len(self.lines.popleft())

    def text(self) -> str:
        return "".join(self.lines)[-self.limit :]


def _env_number(env: Mapping[str, str], key: str, default: float) -> float:
    try:
        return float(env[key]) if env.get(key) else default
    except ValueError:
        log.warning("%s=%r is not a number; using %s", key, env[key], default)
        return default


async def _read_lines(
    stream: anyio.abc.ByteReceiveStream, on_line: Callable[[str], None], done: anyio.Event
) -> None:
    """Call `on_line` for every line until EOF; an over-long line is cut, not buffered forever."""
    buf = bytearray()
    try:
        async for chunk in stream:
            buf += chunk
            while (end := buf.find(b"\n")) >= 0:
                on_line(buf[:end].decode(errors="replace"))
                del buf[: end + 1]
            if len(buf) > MAX_LINE_BYTES:
                on_line(buf[:4096].decode(errors="replace") + " …(line cut)")
                buf.clear()
    except (anyio.ClosedResourceError, anyio.BrokenResourceError):
        pass
    if buf:
        on_line(buf.decode(errors="replace"))
    done.set()


async def _write_all(stream: anyio.abc.ByteSendStream, data: bytes) -> None:
    try:
        await stream.send(data)
        await stream.aclose()
    except (anyio.BrokenResourceError, anyio.ClosedResourceError):
        pass  # the CLI exited before reading its prompt; its exit says why
