"""The bases every wire shape derives from, and the constrained types several features share.

`messages` (the hive's verbs) and each feature module (`forge`) build on these, and
`messages` gathers every feature's Structs into the role unions; keeping the bases here is
what lets a feature module define its own verbs without importing `messages` back.
"""

from __future__ import annotations

from typing import Annotated

from msgspec import Meta, Struct

AGENT_NAME_PATTERN = r"^[a-z][a-z0-9-]{0,30}\Z"
AgentName = Annotated[str, Meta(pattern=AGENT_NAME_PATTERN, max_length=31)]
"""An agent's name: lowercase letter, then up to 30 of `[a-z0-9-]`. Never a path."""

RowId = Annotated[int, Meta(ge=1, le=2**63 - 1)]
"""A row id: what a sqlite INTEGER PRIMARY KEY can hold (larger is `invalid`, not `internal`)."""

Body = Annotated[str, Meta(max_length=262_144)]
"""Message text; the frame limit bounds it, the daemon's body cap moves the excess to a file."""

CallId = Annotated[int, Meta(ge=0, le=2**53)]


class Request(Struct, tag_field="op", kw_only=True, forbid_unknown_fields=True):
    """Base of every verb; the concrete class's `tag` is its `op` on the wire."""


class Reply(Struct, tag_field="type", kw_only=True):
    """Base of every answer; `id` echoes the `Call` it answers."""

    id: int


class Event(Struct, tag_field="kind", kw_only=True):
    seq: int = 0
    at: float = 0.0
