"""A `host.sock` client for tests: raw JSON lines over a real Unix socket, and field-by-field
comparison of the response lines against what the original hyperhive's clients read."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

import trio

ROW_FIELDS = (
    "name",
    "running",
    "failed",
    "needs_update",
    "needs_login",
    "paused",
    "parent",
    "deployed_sha",
    "active_model",
    "status_text",
    "status_set_at",
    "url",
    "pending_reminders",
)
APPROVAL_FIELDS = (
    "id",
    "agent",
    "kind",
    "commit_ref",
    "fetched_sha",
    "requested_at",
    "status",
    "description",
    "resolved_at",
    "note",
)


class Match:
    """A field whose exact value the test cannot know (a sha, a time), checked by shape."""

    def __init__(self, what: str, pattern: str) -> None:
        self.what = what
        self.pattern = re.compile(pattern)

    def matches(self, value: object) -> bool:
        return isinstance(value, str) and self.pattern.fullmatch(value) is not None

    def __repr__(self) -> str:
        return f"<{self.what}>"


SHA12 = Match("12 hex digits", r"[0-9a-f]{12}")
SHA40 = Match("a full sha", r"[0-9a-f]{40}")
TIME = Match("RFC 3339 UTC", r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{3}|\.\d{6})?Z")


def compare(got: Any, expected: Any, where: str = "$") -> None:
    """Field by field: the same keys, and each value equal (or matching its `Match`)."""
    if isinstance(expected, Match):
        assert expected.matches(got), f"{where}: {got!r} is not {expected!r}"
    elif isinstance(expected, dict):
        assert isinstance(got, dict), f"{where}: {got!r} is not an object"
        assert list(got) == list(expected), f"{where}: keys {list(got)} != {list(expected)}"
        for key, value in expected.items():
            compare(got[key], value, f"{where}.{key}")
    elif isinstance(expected, list):
        assert isinstance(got, list) and len(got) == len(expected), f"{where}: {got!r}"
        for i, (g, e) in enumerate(zip(got, expected, strict=True)):
            compare(g, e, f"{where}[{i}]")
    else:
        assert type(got) is type(expected) and got == expected, f"{where}: {got!r} != {expected!r}"


def ok(**payload: Any) -> dict[str, Any]:
    return {"version": 1, "ok": True, "error": None, **payload}


def refused(code: str, error: str | Match) -> dict[str, Any]:
    return {"version": 1, "ok": False, "error": error, "code": code}


def containing(*words: str) -> Match:
    return Match(
        f"text containing {words}", "(?s)" + "".join(f"(?=.*{re.escape(w)})" for w in words) + ".*"
    )


def row(name: str, **fields: Any) -> dict[str, Any]:
    """An agent's row as a freshly registered, stopped agent reads, with `fields` changed."""
    base: dict[str, Any] = {
        "name": name,
        "running": False,
        "failed": False,
        "needs_update": False,
        "needs_login": False,
        "paused": False,
        "parent": None,
        "deployed_sha": SHA12,
        "active_model": None,
        "status_text": None,
        "status_set_at": None,
        "url": None,
        "pending_reminders": 0,
    }
    unknown = set(fields) - set(base)
    assert not unknown, unknown
    return {**base, **fields}


@dataclass
class HostLines:
    """One connection to host.sock: write lines, read response lines."""

    stream: trio.SocketStream
    buffer: bytes = b""

    @classmethod
    async def connect(cls, path: str) -> HostLines:
        return cls(await trio.open_unix_socket(path))

    async def write(self, data: bytes | dict[str, Any]) -> None:
        if isinstance(data, dict):
            data = json.dumps(data).encode() + b"\n"
        await self.stream.send_all(data)

    async def line(self, timeout: float = 30.0) -> bytes:
        with trio.fail_after(timeout):
            while b"\n" not in self.buffer:
                data = await self.stream.receive_some(65536)
                if not data:
                    raise EOFError(f"host.sock closed; unread: {self.buffer!r}")
                self.buffer += data
        line, self.buffer = self.buffer.split(b"\n", 1)
        return line

    async def response(self, timeout: float = 30.0) -> dict[str, Any]:
        value = json.loads(await self.line(timeout))
        assert isinstance(value, dict)
        return value

    async def ask(self, data: bytes | dict[str, Any], timeout: float = 30.0) -> dict[str, Any]:
        await self.write(data)
        return await self.response(timeout)

    async def aclose(self) -> None:
        await self.stream.aclose()
