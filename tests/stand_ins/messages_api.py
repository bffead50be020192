"""TEST STAND-IN for the Anthropic Messages API, so the real Claude Code CLI can run offline.

The real CLI talks to whatever `ANTHROPIC_BASE_URL` names. This module serves that URL on
127.0.0.1 (port 0, a thread per connection) and plays the model: each `POST /v1/messages`
gets the next scripted answer (`api.script(...)`), or, when nothing is scripted, the answer of
the fallback responder (`api.fallback`, by default `hyperhive_agent`: a wake prompt is
answered with a `send` back to its sender, a tool result with a short text, a request to
summarise the conversation with a summary). Every request is recorded (`api.requests`) with
its path, headers and JSON body, so a test can assert which model was asked, which tools were
offered and which messages were sent.

Answers are streamed in the Messages API's server-sent-event format (`message_start`,
`content_block_start` / `content_block_delta` (`text_delta`, `input_json_delta`) /
`content_block_stop`, `message_delta` with `stop_reason` and `usage`, `message_stop`, and
`ping`), or as one JSON message when the request did not ask for a stream;
`/v1/messages/count_tokens` answers `{"input_tokens": …}`. Failures are scripted the same
way: `Failure.rate_limited(retry_after)` (429 with `retry-after` and `anthropic-ratelimit-*`
headers), `Failure.unauthorized()` (401 `authentication_error`), `Failure.too_long()` (400
"prompt is too long"), `Failure.overloaded()` (529 `overloaded_error`), and
`Reply(cut_after=N)`, a stream that stops after N events without an end.

This is a stand-in, not a model: it knows the wire format, not what a model would say. Run
it by hand with `python -m tests.stand_ins.messages_api` (prints its base URL).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import re
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

API_KEY = "sk-ant-standin-0000"
"""The key the stand-in accepts unless a test says otherwise (`MessagesAPI(api_keys=…)`)."""
WAKE = re.compile(
    r"New (?P<kind>\w+) #(?P<id>\d+) from (?P<sender>[^\s:,]+)[^\n]*:\n(?P<body>.*)", re.S
)
SUMMARY_ASK = re.compile(r"<summary>", re.IGNORECASE)


# --------------------------------------------------------------------------- answers


@dataclass
class Usage:
    input_tokens: int = 1200
    output_tokens: int = 40
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0

    def as_dict(self) -> dict[str, int]:
        return {
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "cache_creation_input_tokens": self.cache_creation_input_tokens,
            "cache_read_input_tokens": self.cache_read_input_tokens,
        }


_ids = itertools.count(1)


@dataclass
class ToolCall:
    """One `tool_use` block: the model calls `name` with `input`."""

    name: str
    input: dict[str, Any] = field(default_factory=dict)
    id: str = field(default_factory=lambda: f"toolu_standin_{next(_ids):06d}")


@dataclass
class Reply:
    """A model answer: optional text, then tool calls (several make one parallel batch).

    `stop_reason` defaults to `tool_use` when there are tool calls, else `end_turn`.
    `cut_after` ends the stream after that many events, without `message_stop` (a broken
    connection). `stall` keeps the stream open that many seconds after `message_start`,
    sending a `ping` every half second (a slow model; a test cancels the turn meanwhile).
    """

    text: str = ""
    tool_calls: Sequence[ToolCall] = ()
    usage: Usage = field(default_factory=Usage)
    stop_reason: str | None = None
    cut_after: int | None = None
    stall: float = 0.0
    model: str | None = None


@dataclass
class Failure:
    """An HTTP error answer in the API's error shape: `{"type": "error", "error": {…}}`."""

    status: int
    type: str
    message: str
    headers: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def rate_limited(
        cls, retry_after: float = 1, reset_at: float | None = None, *, subscription: bool = False
    ) -> Failure:
        """429. `subscription` adds the `anthropic-ratelimit-unified-*` headers a Claude
        subscription (OAuth login) gets: the CLI then reports a `rate_limit_event` with
        `resetsAt` and says "You've hit your 5-hour limit · resets …"."""
        reset = reset_at if reset_at is not None else time.time() + retry_after
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(reset))
        unified = {
            "anthropic-ratelimit-unified-status": "rejected",
            "anthropic-ratelimit-unified-reset": str(int(reset)),
            "anthropic-ratelimit-unified-representative-claim": "five_hour",
        }
        return cls(
            429,
            "rate_limit_error",
            "This request would exceed your organization's rate limit. Please try again later.",
            {
                "retry-after": str(int(retry_after)),
                "anthropic-ratelimit-requests-limit": "50",
                "anthropic-ratelimit-requests-remaining": "0",
                "anthropic-ratelimit-requests-reset": stamp,
                "anthropic-ratelimit-input-tokens-limit": "30000",
                "anthropic-ratelimit-input-tokens-remaining": "0",
                "anthropic-ratelimit-input-tokens-reset": stamp,
                "anthropic-ratelimit-tokens-limit": "30000",
                "anthropic-ratelimit-tokens-remaining": "0",
                "anthropic-ratelimit-tokens-reset": stamp,
                **(unified if subscription else {}),
            },
        )

    @classmethod
    def unauthorized(cls) -> Failure:
        return cls(401, "authentication_error", "invalid x-api-key")

    @classmethod
    def too_long(cls, tokens: int = 210_000, limit: int = 200_000) -> Failure:
        return cls(
            400, "invalid_request_error", f"prompt is too long: {tokens} tokens > {limit} maximum"
        )

    @classmethod
    def overloaded(cls) -> Failure:
        return cls(529, "overloaded_error", "Overloaded")

    def body(self) -> bytes:
        error = {"type": self.type, "message": self.message}
        return json.dumps({"type": "error", "error": error}).encode()


Answer = Reply | Failure
Responder = Callable[["Recorded"], Answer]


# --------------------------------------------------------------------------- requests


@dataclass
class Recorded:
    """One request as the stand-in received it, with readers for what tests ask about."""

    method: str
    path: str
    headers: dict[str, str]
    body: dict[str, Any]
    at: float
    answered: str = ""
    """What the stand-in did: `reply`, `failure 429`, `cut`, `count_tokens`, …"""

    @property
    def kind(self) -> str:
        """`messages` or `count_tokens` (the path without its query)."""
        return "count_tokens" if "/count_tokens" in self.path else "messages"

    @property
    def model(self) -> str:
        return str(self.body.get("model", ""))

    @property
    def streaming(self) -> bool:
        return bool(self.body.get("stream"))

    @property
    def tool_names(self) -> list[str]:
        """Tools whose schema the model got (deferred ones, `defer_loading`, left out)."""
        return [
            t["name"]
            for t in self.body.get("tools") or []
            if isinstance(t, dict) and "name" in t and not t.get("defer_loading")
        ]

    @property
    def messages(self) -> list[dict[str, Any]]:
        return [m for m in self.body.get("messages") or [] if isinstance(m, dict)]

    @property
    def system_text(self) -> str:
        system = self.body.get("system")
        if isinstance(system, str):
            return system
        if isinstance(system, list):
            return "\n".join(str(b.get("text", "")) for b in system if isinstance(b, dict))
        return ""

    def texts(self, role: str = "user") -> list[str]:
        """Every text block of every message with `role`, in order."""
        out: list[str] = []
        for message in self.messages:
            if message.get("role") != role:
                continue
            content = message.get("content")
            if isinstance(content, str):
                out.append(content)
            elif isinstance(content, list):
                out += [
                    str(b.get("text", ""))
                    for b in content
                    if isinstance(b, dict) and b.get("type") == "text"
                ]
        return out

    def last_user_blocks(self) -> list[dict[str, Any]]:
        for message in reversed(self.messages):
            if message.get("role") == "user":
                content = message.get("content")
                if isinstance(content, str):
                    return [{"type": "text", "text": content}]
                return [b for b in content or [] if isinstance(b, dict)]
        return []

    def tool_results(self) -> list[dict[str, Any]]:
        """The `tool_result` blocks of the last user message (answers to the last tool calls)."""
        return [b for b in self.last_user_blocks() if b.get("type") == "tool_result"]

    def wake(self) -> re.Match[str] | None:
        """The newest hyperhive wake prompt in the conversation, if any."""
        for text in reversed(self.texts()):
            found = WAKE.search(text)
            if found:
                return found
        return None

    @property
    def asks_for_summary(self) -> bool:
        """A compaction: the last text of the last user message asks for a `<summary>` (the
        CLI's `/compact` and its automatic compaction both end the conversation so)."""
        texts = [str(b.get("text", "")) for b in self.last_user_blocks() if b.get("type") == "text"]
        return bool(texts) and bool(SUMMARY_ASK.search(texts[-1][-3000:]))


def result_text(block: Mapping[str, Any]) -> str:
    """The text of a `tool_result` block (its content is a string or a list of blocks)."""
    content = block.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(b.get("text", "")) for b in content if isinstance(b, dict))
    return ""


# --------------------------------------------------------------------------- the default model


def hyperhive_agent(req: Recorded) -> Answer:
    """What the stand-in answers when nothing is scripted: a polite hyperhive agent.

    A compaction request gets a summary; a wake prompt (`New message #7 from bob: …`) gets
    `mcp__hyperhive__send(to=bob, body="ack: <first line>", in_reply_to=7)`; the tool's
    result gets a closing text; anything else gets "Nothing to do.".
    """
    if req.asks_for_summary:
        return Reply(
            text="<analysis>The conversation so far.</analysis>\n"
            "<summary>Earlier turns: messages were answered with acks.</summary>"
        )
    results = req.tool_results()
    if results:
        errors = [result_text(r) for r in results if r.get("is_error")]
        if errors:
            return Reply(text=f"The tool failed: {errors[0][:200]}")
        wake = req.wake()
        return Reply(text=f"Acknowledged {wake['sender']}." if wake else "Done.")
    wake = req.wake()
    if wake is None:
        return Reply(text="Nothing to do.")
    first = wake["body"].split("\n", 1)[0]
    args: dict[str, Any] = {"to": wake["sender"], "body": f"ack: {first}"}
    if wake["kind"] == "message":
        args["in_reply_to"] = int(wake["id"])
    return Reply(tool_calls=[ToolCall("mcp__hyperhive__send", args)])


# --------------------------------------------------------------------------- the server


class MessagesAPI:
    """The stand-in server. Use as a context manager, or `start()` / `stop()`.

    `script(*answers)` queues answers (a `Reply`, a `Failure`, or a callable taking the
    `Recorded` request) for the next `/v1/messages` requests, in order; when the queue is empty
    `fallback` answers. `requests` holds every request received, `messages_requests()` only the
    model calls. Requests with a key not in `api_keys` get 401 (the CLI's expired login);
    `api_keys=None` accepts any.
    """

    def __init__(
        self, *, api_keys: Sequence[str] | None = (API_KEY,), fallback: Responder = hyperhive_agent
    ) -> None:
        self.api_keys = None if api_keys is None else set(api_keys)
        self.fallback = fallback
        self.requests: list[Recorded] = []
        self._queue: deque[Answer | Responder] = deque()
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()

    # ---------------------------------------------------------------- lifecycle

    def start(self) -> MessagesAPI:
        api = self

        class Handler(_Handler):
            owner = api

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="messages-api", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(10)

    def __enter__(self) -> MessagesAPI:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        assert self._server is not None, "start() the stand-in first"
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def env(self, api_key: str = API_KEY) -> dict[str, str]:
        """What a CLI needs to talk to this stand-in and to nothing else."""
        return {"ANTHROPIC_BASE_URL": self.base_url, "ANTHROPIC_API_KEY": api_key, **OFFLINE_ENV}

    # ---------------------------------------------------------------- scripting and reading

    def script(self, *answers: Answer | Responder) -> None:
        with self._lock:
            self._queue.extend(answers)

    @property
    def pending(self) -> int:
        """Scripted answers not yet used."""
        with self._lock:
            return len(self._queue)

    def messages_requests(self) -> list[Recorded]:
        with self._lock:
            return [r for r in self.requests if r.kind == "messages"]

    def wait_for(self, count: int, timeout: float = 30.0) -> list[Recorded]:
        """Block until `count` model calls arrived (for tests acting mid-turn)."""
        deadline = time.monotonic() + timeout
        with self._arrived:
            while sum(r.kind == "messages" for r in self.requests) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"{count} model calls never arrived")
                self._arrived.wait(left)
            return [r for r in self.requests if r.kind == "messages"]

    def _record(self, req: Recorded, *, consume: bool) -> Answer | None:
        with self._arrived:
            self.requests.append(req)
            self._arrived.notify_all()
            if req.kind != "messages" or not consume:
                return None
            queued = self._queue.popleft() if self._queue else self.fallback
        return queued(req) if callable(queued) else queued


OFFLINE_ENV = {
    # no update checks, telemetry, error reports, feedback surveys or other calls home
    "DISABLE_AUTOUPDATER": "1",
    "DISABLE_TELEMETRY": "1",
    "DISABLE_ERROR_REPORTING": "1",
    "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
    "CLAUDE_CODE_DISABLE_FEEDBACK_SURVEY": "1",
}


class _Handler(BaseHTTPRequestHandler):
    owner: MessagesAPI
    protocol_version = "HTTP/1.1"  # keep-alive, as the CLI's HTTP client expects

    def log_message(self, format: str, *args: Any) -> None:
        pass  # tests read `requests`, not stderr

    def do_GET(self) -> None:
        self._send_json(
            404, {"type": "error", "error": {"type": "not_found_error", "message": self.path}}
        )

    def do_HEAD(self) -> None:  # a reachability probe: headers only
        self.send_response(200)
        self.send_header("content-length", "0")
        self.end_headers()

    def do_POST(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw) if raw else {}
        except ValueError:
            body = {"_unparsed": raw[:2000].decode(errors="replace")}
        req = Recorded(
            method="POST",
            path=self.path,
            headers={k.lower(): v for k, v in self.headers.items()},
            body=body if isinstance(body, dict) else {"_unparsed": body},
            at=time.time(),
        )
        owner = self.owner
        key = req.headers.get("x-api-key") or req.headers.get("authorization", "").removeprefix(
            "Bearer "
        )
        authorized = owner.api_keys is None or key in owner.api_keys
        answer = owner._record(req, consume=authorized)
        if not authorized:
            req.answered = "failure 401"
            self._send(401, Failure.unauthorized().body(), "application/json")
            return
        if req.kind == "count_tokens":
            req.answered = "count_tokens"
            size = len(json.dumps(req.body.get("messages", ""))) // 4
            self._send_json(200, {"input_tokens": max(1, size)})
            return
        if "/v1/messages" not in self.path:
            req.answered = "not_found"
            self._send_json(
                404, {"type": "error", "error": {"type": "not_found_error", "message": self.path}}
            )
            return
        assert answer is not None
        if isinstance(answer, Failure):
            req.answered = f"failure {answer.status}"
            self._send(answer.status, answer.body(), "application/json", answer.headers)
            return
        if req.streaming:
            req.answered = "cut" if answer.cut_after is not None else "reply"
            self._stream(req, answer)
        else:
            req.answered = "reply"
            self._send_json(200, _message(req, answer, final=True))

    # ---------------------------------------------------------------- writing

    def _send_json(self, status: int, value: object) -> None:
        self._send(status, json.dumps(value).encode(), "application/json")

    def _send(
        self, status: int, body: bytes, content_type: str, headers: Mapping[str, str] = {}
    ) -> None:
        self.send_response(status)
        self.send_header("content-type", content_type)
        self.send_header("content-length", str(len(body)))
        self.send_header("request-id", f"req_standin_{next(_ids):06d}")
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def _stream(self, req: Recorded, reply: Reply) -> None:
        self.send_response(200)
        self.send_header("content-type", "text/event-stream; charset=utf-8")
        self.send_header("cache-control", "no-cache")
        self.send_header("transfer-encoding", "chunked")
        self.send_header("request-id", f"req_standin_{next(_ids):06d}")
        self.end_headers()
        sent = 0
        try:
            for name, data in _events(req, reply, self.owner._stopping):
                if reply.cut_after is not None and sent >= reply.cut_after:
                    # a connection lost mid-answer: no message_stop, no final chunk
                    self.wfile.flush()
                    self.connection.shutdown(socket.SHUT_RDWR)
                    self.close_connection = True
                    return
                frame = f"event: {name}\ndata: {json.dumps(data)}\n\n".encode()
                self.wfile.write(b"%x\r\n%s\r\n" % (len(frame), frame))
                self.wfile.flush()
                sent += 1
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # the CLI went away (a cancelled turn)


def _message(req: Recorded, reply: Reply, *, final: bool) -> dict[str, Any]:
    content: list[dict[str, Any]] = []
    if final:
        if reply.text:
            content.append({"type": "text", "text": reply.text})
        content += [
            {"type": "tool_use", "id": c.id, "name": c.name, "input": c.input}
            for c in reply.tool_calls
        ]
    usage = reply.usage.as_dict()
    if not final:
        usage["output_tokens"] = 1
    return {
        "id": f"msg_standin_{next(_ids):06d}",
        "type": "message",
        "role": "assistant",
        "model": reply.model or req.model,
        "content": content,
        "stop_reason": _stop_reason(reply) if final else None,
        "stop_sequence": None,
        "usage": usage,
    }


def _stop_reason(reply: Reply) -> str:
    return reply.stop_reason or ("tool_use" if reply.tool_calls else "end_turn")


def _events(
    req: Recorded, reply: Reply, stopping: threading.Event
) -> Iterator[tuple[str, dict[str, Any]]]:
    yield "message_start", {"type": "message_start", "message": _message(req, reply, final=False)}
    yield "ping", {"type": "ping"}
    deadline = time.monotonic() + reply.stall
    while time.monotonic() < deadline and not stopping.is_set():
        stopping.wait(min(0.5, max(0.0, deadline - time.monotonic())))
        yield "ping", {"type": "ping"}
    index = 0
    if reply.text:
        yield (
            "content_block_start",
            {
                "type": "content_block_start",
                "index": index,
                "content_block": {"type": "text", "text": ""},
            },
        )
        half = len(reply.text) // 2 or len(reply.text)
        for piece in (reply.text[:half], reply.text[half:]):
            if piece:
                yield (
                    "content_block_delta",
                    {
                        "type": "content_block_delta",
                        "index": index,
                        "delta": {"type": "text_delta", "text": piece},
                    },
                )
        yield "content_block_stop", {"type": "content_block_stop", "index": index}
        index += 1
    for call in reply.tool_calls:
        yield (
            "content_block_start",
            {
                "type": "content_block_start",
                "index": index,
                "content_block": {
                    "type": "tool_use",
                    "id": call.id,
                    "name": call.name,
                    "input": {},
                },
            },
        )
        encoded = json.dumps(call.input)
        cut = max(1, len(encoded) // 2)
        for piece in (encoded[:cut], encoded[cut:]):  # partial JSON, as the API sends it
            if piece:
                yield (
                    "content_block_delta",
                    {
                        "type": "content_block_delta",
                        "index": index,
                        "delta": {"type": "input_json_delta", "partial_json": piece},
                    },
                )
        yield "content_block_stop", {"type": "content_block_stop", "index": index}
        index += 1
    usage = reply.usage.as_dict()
    yield (
        "message_delta",
        {
            "type": "message_delta",
            "delta": {"stop_reason": _stop_reason(reply), "stop_sequence": None},
            "usage": {"output_tokens": usage["output_tokens"]},
        },
    )
    yield "message_stop", {"type": "message_stop"}


def main() -> None:
    with MessagesAPI(api_keys=None) as api:
        print(api.base_url, flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            threading.Event().wait()


if __name__ == "__main__":
    main()
