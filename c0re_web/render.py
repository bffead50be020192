"""Protocol rows into HTML: the Jinja environment, the helpers templates use, conversations.

Pages and live updates render the same macros (`templates/parts.html`), so a row drawn at a
cold load and the same row redrawn after an event are the same markup. Everything an agent
or the operator wrote goes through autoescape; nothing here marks such text safe.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from jinja2 import DictLoader, Environment, StrictUndefined, select_autoescape
from markupsafe import Markup
from starlette.requests import Request
from starlette.responses import HTMLResponse
from starlette.templating import Jinja2Templates

from protocol import messages as m

TEMPLATES = Path(__file__).resolve().parent / "templates"
FLOW_MESSAGES = 200
"""Recent messages the dashboard's flow is drawn from."""
FLOW_CONVERSATIONS = 40
INBOX_MESSAGES = 100
MAX_DEPTH = 6
"""Replies nest visually up to this depth; deeper ones line up at it."""


@dataclass
class Line:
    msg: m.MessageRow
    depth: int


@dataclass
class Conversation:
    """One thread of the flow: its messages in order, each indented by its reply depth."""

    thread: int
    lines: list[Line] = field(default_factory=list)
    participants: list[str] = field(default_factory=list)
    complete: bool = True
    """False when the thread's first messages are older than the window drawn."""
    copies: list[m.MessageRow] = field(default_factory=list)
    """For an unanswered broadcast: the copy of every recipient (drawn as one line)."""

    @property
    def last_id(self) -> int:
        return max([self.lines[-1].msg.id, *(c.id for c in self.copies)])


def conversations(messages: Iterable[m.MessageRow], limit: int) -> list[Conversation]:
    """Group messages by thread (newest activity first), nesting replies by `in_reply_to`."""
    by_thread: dict[int, list[m.MessageRow]] = {}
    for msg in messages:
        by_thread.setdefault(msg.thread, []).append(msg)
    convs = []
    for thread, rows in by_thread.items():
        rows.sort(key=lambda r: r.id)
        conv = Conversation(thread=thread, complete=rows[0].id == thread)
        depth: dict[int, int] = {}
        for row in rows:
            parent = row.in_reply_to
            if parent is not None and parent in depth:
                level = depth[parent] + 1
            elif parent is not None:
                level = 1  # its parent is outside the window
            else:
                level = 0
            depth[row.id] = level
            conv.lines.append(Line(row, min(level, MAX_DEPTH)))
            for who in (row.from_, row.to):
                if who not in conv.participants:
                    conv.participants.append(who)
        convs.append(conv)
    convs.sort(key=lambda c: c.last_id, reverse=True)
    return _fold_broadcasts(convs)[:limit]


def _fold_broadcasts(convs: list[Conversation]) -> list[Conversation]:
    """One conversation per broadcast rather than one per recipient, until someone replies."""
    folded: list[Conversation] = []
    by_send: dict[tuple[str, str, float], Conversation] = {}
    for conv in convs:
        first = conv.lines[0].msg
        if len(conv.lines) != 1 or not first.broadcast:
            folded.append(conv)
            continue
        key = (first.from_, first.body, first.created_at)
        if key in by_send:
            by_send[key].copies.append(first)
            continue
        conv.copies = [first]
        by_send[key] = conv
        folded.append(conv)
    for conv in by_send.values():
        conv.copies.sort(key=lambda r: r.to)
    return folded


def ago(ts: float | None) -> str:
    if ts is None:
        return "never"
    seconds = int(time.time() - ts)
    if seconds < 0:
        return "just now"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit} ago"
    return f"{seconds}s ago"


def age(seconds: float) -> str:
    seconds = int(seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def waiting(since: float) -> str:
    """How long something has waited, to now: `5m`, `2h`."""
    return age(max(0.0, time.time() - since))


def money(value: float | None) -> str:
    return "" if value is None else f"${value:,.2f}"


def count(value: float | None) -> str:
    return "" if value is None else f"{int(value):,}"


def percent(value: float | None) -> str:
    return "" if value is None else f"{value:.0%}"


def stamp(ts: float | None) -> str:
    if ts is None:
        return ""
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")


def status(a: m.AgentRow) -> tuple[str, str]:
    """(label, tone) of an agent's row: what the operator should notice first."""
    if a.failed:
        return "failed", "bad"
    if a.held.startswith("emergency stop"):
        return "parked: emergency stop", "bad"
    if a.held:
        return "paused by budget", "bad"
    if a.paused:
        return "paused", "muted"
    if a.needs_login:
        return "needs login", "warn"
    if a.needs_update:
        return "needs update", "warn"
    if a.container == "running":
        return ("running", "ok") if a.running else ("running, harness not connected", "warn")
    if a.container == "crashed":
        return "crashed", "bad"
    if a.container in ("starting", "stopping"):
        return a.container, "warn"
    if a.running:
        return "connected", "ok"
    return "stopped", "muted"


def size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB"):
        if value < 1024 or unit == "MiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"


def text_of(data: bytes) -> str | None:
    """The file as text, or `None` when it does not look like text."""
    if b"\0" in data[:8192]:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def parent_of(rel_path: str) -> str:
    return rel_path.rsplit("/", 1)[0] if "/" in rel_path else ""


def join_path(rel_path: str, name: str) -> str:
    return f"{rel_path}/{name}" if rel_path else name


class Renderer:
    """The templates of the dashboard, and a way to call one macro of `parts.html`."""

    def __init__(self) -> None:
        self.env = Environment(
            # read once, here: after the drop to the dashboard's user the checkout may be
            # out of reach (a checkout under /root), so nothing is read from disk later
            loader=DictLoader({p.name: p.read_text() for p in sorted(TEMPLATES.glob("*.html"))}),
            auto_reload=False,
            autoescape=select_autoescape(["html"]),
            undefined=StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.env.globals.update(
            ago=ago,
            age=age,
            waiting=waiting,
            money=money,
            count=count,
            percent=percent,
            stamp=stamp,
            status=status,
            size=size,
            text_of=text_of,
            parent_of=parent_of,
            join_path=join_path,
        )
        self.templates = Jinja2Templates(env=self.env)

    def page(
        self,
        request: Request,
        name: str,
        context: dict[str, Any],
        status_code: int = 200,
        headers: dict[str, str] | None = None,
    ) -> HTMLResponse:
        return self.templates.TemplateResponse(
            request, name, context, status_code=status_code, headers=headers
        )

    def part(self, macro: str, *args: Any, **kwargs: Any) -> str:
        """One macro of `parts.html`, rendered to a string."""
        fn = getattr(self.env.get_template("parts.html").module, macro)
        return str(fn(*args, **kwargs))

    def login_page(self, message: str) -> bytes:
        html = self.env.get_template("login.html").render(message=message)
        return html.encode()

    def oob(self, swap: str, html: str) -> str:
        """Wrap `html` so htmx puts it at `swap` (e.g. `innerHTML:#flow`) wherever it arrives."""
        return str(Markup('<div hx-swap-oob="{}">').format(swap) + Markup(html) + Markup("</div>"))

    def toast(self, text: str, tone: str = "ok") -> str:
        return self.part("toast", text, tone)

    def op(self, op: str, html: str = "", **attrs: object) -> str:
        """One live patch for `static/app.js`: `<template data-op=… data-…>html</template>`.

        `replace` (`id`): put `html` in place of the element with that id, if the page has it;
        `upsert` (`into`, `at` first|last, `keep`, `move`): replace each element of `html`
        by id where it is, or insert it (`move`: take it to `at` either way), then keep at
        most `keep` children; `line` (`conv`, `head`, `keep`): a message line into its
        conversation, which goes to the top of the flow; `inner` (`target`): the
        element's content; `append` (`into`); `remove` (`id`).
        """
        out = Markup('<template data-op="{}"').format(op)
        for key, value in attrs.items():
            if value not in ("", None):
                out += Markup(' data-{}="{}"').format(key, value)
        return str(out + Markup(">") + Markup(html) + Markup("</template>"))
