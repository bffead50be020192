"""The `scripted` runtime: deterministic rules instead of a model, for tests and the offline demo.

A rules file (TOML) says: on a message matching X, call MCP tool Y with arguments built from
the message. The tool is really called through the agent's own MCP server
with the official `mcp` client over stdio, so a scripted agent exercises exactly the path a
Claude agent does: the server loaded in the harness, reached through `ag3nt.mcp_relay`. One
session lasts the runtime's life (`serve`), as Claude Code keeps one per run, so a turn costs
tool calls, not an interpreter start. The first rule
that matches fires; a message no rule matches
ends the turn with no action (it is still acked: it was seen).

    [[rule]]
    match = '^@(?P<to>[a-z][a-z0-9-]*)\\s+(?P<text>.*)'   # re.search on the body (DOTALL)
    from = "operator"          # optional: only from this sender
    kind = "message"           # optional: message | question | answer | system
    tool = "send"
    args = { to = "{to}", body = "{text}" }
    delay = 0.5                # optional: seconds to "think" before acting
    usage = { input_tokens = 1200, output_tokens = 300, cost_usd = 0.25 }
                               # optional: what the turn reports it spent (budgets count it)

Templates may use `{from}`, `{body}`, `{id}`, `{kind}`, `{question_id}`, `{me}` and the
match's named groups.
"""

from __future__ import annotations

import logging
import re
import time
import tomllib
from collections.abc import Mapping
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import msgspec
from mcp import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client

from protocol.messages import MessageRow, TurnStats

from ..mcp_listener import listening
from ..mcp_relay import command as relay_command
from .base import AgentContext, Turn, TurnFailed

DEFAULT_RULES = """
[[rule]]
kind = "question"
tool = "answer"
args = { question_id = "{question_id}", answer = "{me} says yes" }

[[rule]]
from = "operator"
kind = "message"
match = '^@(?P<to>[a-z][a-z0-9-]*)\\s+(?P<text>.*)'
tool = "send"
args = { to = "{to}", body = "{text}" }

[[rule]]
from = "operator"
kind = "message"
tool = "send"
args = { to = "operator", body = "{me} got: {body}" }

[[rule]]
kind = "system"
tool = "set_status"
args = { text = "{body}" }

[[rule]]
kind = "message"
match = '^(?!re: )'
tool = "send"
args = { to = "{from}", body = "re: {body}", in_reply_to = "{id}" }
"""


@dataclass(frozen=True)
class Rule:
    tool: str
    args: Mapping[str, Any]
    pattern: re.Pattern[str] | None
    sender: str | None
    kind: str | None
    delay: float = 0.0
    usage: Mapping[str, float] | None = None
    """The tokens and cost a turn of this rule reports (`input_tokens`, `output_tokens`,
    `cost_usd`), as a model's turn would."""

    def matches(self, msg: MessageRow) -> dict[str, str] | None:
        if self.sender is not None and msg.from_ != self.sender:
            return None
        if self.kind is not None and msg.kind != self.kind:
            return None
        if self.pattern is None:
            return {}
        found = self.pattern.search(msg.body)
        if found is None:
            return None
        return {k: v for k, v in found.groupdict().items() if v is not None}


log = logging.getLogger("ag3nt.runtimes.scripted")
SESSION_START_SECONDS = 60.0


class RulesError(Exception):
    pass


def parse_rules(text: str, source: str = "rules") -> list[Rule]:
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise RulesError(f"{source}: {exc}") from exc
    rules = []
    for n, entry in enumerate(raw.get("rule", []), 1):
        unknown = set(entry) - {"match", "from", "kind", "tool", "args", "delay", "usage"}
        if unknown or "tool" not in entry:
            raise RulesError(
                f"{source}: rule {n} needs `tool` and allows only match/from/kind/args/delay/usage"
            )
        usage = entry.get("usage")
        if usage is not None:
            try:
                msgspec.convert(
                    {"ok": True, **usage}, TurnStats, strict=False
                )  # its own bounds, so a bad figure is refused here and not by the daemon
            except (msgspec.ValidationError, TypeError) as exc:
                raise RulesError(f"{source}: rule {n}: bad usage: {exc}") from exc
            if not isinstance(usage, dict) or set(usage) - {
                "input_tokens",
                "output_tokens",
                "cost_usd",
            }:
                raise RulesError(
                    f"{source}: rule {n}: usage takes input_tokens, output_tokens, cost_usd"
                )
        try:
            pattern = re.compile(entry["match"], re.DOTALL) if "match" in entry else None
        except re.error as exc:
            raise RulesError(f"{source}: rule {n}: bad pattern: {exc}") from exc
        rules.append(
            Rule(
                tool=str(entry["tool"]),
                args=dict(entry.get("args", {})),
                pattern=pattern,
                sender=entry.get("from"),
                kind=entry.get("kind"),
                delay=float(entry.get("delay", 0.0)),
                usage=usage,
            )
        )
    return rules


def render_args(args: Mapping[str, Any], values: Mapping[str, str]) -> dict[str, Any]:
    """Fill templates; an argument that is exactly one integer-valued field stays an int."""
    out: dict[str, Any] = {}
    for key, template in args.items():
        if not isinstance(template, str):
            out[key] = template
            continue
        filled = template.format_map(_Missing(values))
        whole = re.fullmatch(r"\{(\w+)\}", template)
        if whole and whole.group(1) in ("id", "question_id") and filled.isdigit():
            out[key] = int(filled)
        elif whole and filled == "":
            continue  # an absent optional field is left out, not sent empty
        else:
            out[key] = filled
    return out


class _Missing(dict[str, str]):
    def __missing__(self, key: str) -> str:
        return ""


class ScriptedRuntime:
    name = "scripted"

    def __init__(self, ctx: AgentContext) -> None:
        self._session: ClientSession | None = None
        self._ready = anyio.Event()
        self.ctx = ctx
        self.model = ctx.model or "scripted"
        path = ctx.rules_file
        if path is None and (ctx.state_dir / "rules.toml").is_file():
            path = ctx.state_dir / "rules.toml"
        self.rules = (
            parse_rules(path.read_text(), str(path)) if path else parse_rules(DEFAULT_RULES)
        )

    async def turn(self, turn: Turn) -> TurnStats:
        started = time.monotonic()
        msg = turn.message
        for rule in self.rules:
            groups = rule.matches(msg)
            if groups is None:
                continue
            values = {
                "from": msg.from_,
                "body": msg.body,
                "id": str(msg.id),
                "kind": msg.kind,
                "question_id": "" if msg.question_id is None else str(msg.question_id),
                "me": self.ctx.name,
                **groups,
            }
            if rule.delay:
                await anyio.sleep(rule.delay)
            result = await self.call_tool(rule.tool, render_args(rule.args, values))
            return TurnStats(
                ok=True,
                result=result[:4000],
                tool_calls=[rule.tool],
                duration_ms=int((time.monotonic() - started) * 1000),
                input_tokens=int((rule.usage or {}).get("input_tokens", 0)),
                output_tokens=int((rule.usage or {}).get("output_tokens", 0)),
                cost_usd=float((rule.usage or {}).get("cost_usd", 0.0)),
            )
        return TurnStats(
            ok=True, result="no rule matched", duration_ms=int((time.monotonic() - started) * 1000)
        )

    async def serve(self) -> None:
        """Keep one MCP session open for the turns, until cancelled (the harness runs this
        beside its work loop; if the server dies, this raises and the harness restarts).

        The server is the one a claude agent's runs reach: loaded in this harness
        (`ag3nt.mcp_listener`), spoken to through `ag3nt.mcp_relay` on stdio. When no socket
        can be made, the session starts `python -m ag3nt mcp` on its own instead."""
        async with AsyncExitStack() as stack:
            argv = [*self.ctx.ag3nt_command, "mcp", "--socket", str(self.ctx.socket)]
            try:
                where = listening(str(self.ctx.socket), self.ctx.role)
                argv = relay_command(str(await stack.enter_async_context(where)), argv)
            except OSError as exc:
                log.warning("cannot serve the MCP tools in the harness (%s); starting them", exc)
            server = StdioServerParameters(
                command=argv[0], args=argv[1:], env=dict(self.ctx.extra_env) or None
            )
            await self._keep_session(server)

    async def _keep_session(self, server: StdioServerParameters) -> None:
        async with (
            stdio_client(server) as (read, write),
            ClientSession(read, write) as session,
        ):
            await session.initialize()
            self._session = session
            self._ready.set()
            try:
                await anyio.sleep_forever()
            finally:
                self._session = None
                self._ready = anyio.Event()

    async def call_tool(self, tool: str, args: dict[str, Any]) -> str:
        """Call one hyperhive MCP tool through the agent's MCP server on its socket."""
        with anyio.fail_after(SESSION_START_SECONDS):
            await self._ready.wait()
        assert self._session is not None
        result = await self._session.call_tool(tool, args)
        text = "\n".join(getattr(block, "text", "") for block in result.content)
        if result.is_error:
            raise TurnFailed(f"tool {tool} failed: {text}")
        return text

    async def compact(self) -> str:
        return "scripted runtime: nothing to compact"

    async def new_session(self) -> str:
        return "scripted runtime: sessions are stateless"

    def set_model(self, model: str) -> str:
        self.model = model
        return f"scripted runtime: model label set to {model} (rules decide, not a model)"

    async def aclose(self) -> None:
        return None


def load_rules_file(path: Path) -> list[Rule]:
    return parse_rules(path.read_text(), str(path))
