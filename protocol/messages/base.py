"""The ground every verb stands on: the protocol version, the name and size types, the handshake, and the bases of requests, replies and events."""

from __future__ import annotations

from typing import Annotated, Literal

from msgspec import Meta, Struct

PROTOCOL_VERSION = "1.0"
"""major.minor; a peer with another major is refused with `Error{code="version"}`."""


AGENT_NAME_PATTERN = r"^[a-z][a-z0-9-]{0,30}\Z"


AgentName = Annotated[str, Meta(pattern=AGENT_NAME_PATTERN, max_length=31)]
"""An agent's name: lowercase letter, then up to 30 of `[a-z0-9-]`. Never a path."""


Recipient = Annotated[str, Meta(min_length=1, max_length=63)]
"""An agent name, `"operator"`, `"*"` (every other agent), or `name@hive` in another hive
(see docs/federation.md)."""


RecipientName = Annotated[
    str,
    Meta(pattern=r"^(\*|[a-z][a-z0-9-]{0,30})(@(\*|[a-z][a-z0-9-]{0,30}))?\Z", max_length=63),
]
"""An entry of `allowed_recipients`: an agent name, `"operator"`, `"*"`, or one of another
hive's: `name@hive`, `*@hive` (all of that hive), `*@*` (see docs/federation.md)."""


Runtime = Literal["scripted", "claude"]
"""The runtimes a harness knows (`ag3nt/runtimes`); nothing else is ever passed to one."""


MODEL_PATTERN = r"^([A-Za-z0-9][A-Za-z0-9._:@/+\[\]-]*)?\Z"


ModelName = Annotated[str, Meta(pattern=MODEL_PATTERN, max_length=128)]
"""A model name as a runtime takes it (`claude-sonnet-4-5`, `opus[1m]`); empty: the
runtime's default. No spaces, no control characters, never starting with `-`."""


Role = Literal["agent", "manager", "web", "admin"]


AgentRole = Literal["agent", "manager"]


MessageState = Literal["queued", "leased", "acked", "dead", "dropped", "forwarded"]
"""`forwarded`: a message to another hive that JetStream has stored (`acked` once its
recipient there acked it)."""


MessageKind = Literal["message", "question", "answer", "system", "reminder"]


ContainerState = Literal["stopped", "starting", "running", "stopping", "crashed", "failed"]


ControlAction = Literal["cancel", "compact", "set_model", "new_session", "park"]
"""`park`: the emergency stop cancels the turns of the leases it names (never sent by the
operator directly; see `EmergencyStop`)."""


QuestionState = Literal["open", "answered", "cancelled", "expired"]


ReminderState = Literal["pending", "delivered", "failed", "cancelled"]


ErrorCode = Literal[
    "bad_frame",
    "unknown_op",
    "invalid",
    "not_found",
    "forbidden",
    "too_large",
    "version",
    "rate_limited",
    "conflict",
    "unavailable",
    "storage_full",
    "internal",
]


RowId = Annotated[int, Meta(ge=1, le=2**63 - 1)]
"""A row id: what a sqlite INTEGER PRIMARY KEY can hold (larger is `invalid`, not `internal`)."""


MessageId = RowId


ReminderId = RowId


QuestionId = RowId


Count = Annotated[int, Meta(ge=0, le=2**40)]
"""A reported count (tokens, milliseconds): bounded so sums over many turns stay in 64 bits."""


Body = Annotated[str, Meta(max_length=262_144)]
"""Message text; the frame limit bounds it, the daemon's body cap moves the excess to a file."""


class Hello(Struct, tag="hello", tag_field="op", kw_only=True, forbid_unknown_fields=True):
    """The client's first frame on every connection."""

    protocol: Annotated[str, Meta(max_length=16)]
    client: Annotated[str, Meta(max_length=64)] = ""


class Welcome(Struct, tag="welcome", tag_field="type", kw_only=True):
    """The daemon's answer to `Hello`: who the socket says you are."""

    protocol: str
    role: Role
    agent: str | None
    server_rev: str


class Request(Struct, tag_field="op", kw_only=True, forbid_unknown_fields=True):
    """Base of every verb; the concrete class's `tag` is its `op` on the wire."""


class Reply(Struct, tag_field="type", kw_only=True):
    """Base of every answer; `id` echoes the `Call` it answers. Handlers leave it 0: the
    daemon's transport sets it from the call, so no handler can answer the wrong call."""

    id: int = 0


class Error(Reply, tag="error"):
    code: ErrorCode
    message: str
    retry_after_seconds: float | None = None


class Ok(Reply, tag="ok"):
    pass


class Event(Struct, tag_field="kind", kw_only=True):
    seq: int = 0
    at: float = 0.0
