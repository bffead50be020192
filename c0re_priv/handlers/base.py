"""What every verb table is made of: the `Caller` a handler gets, and the `Verb` row.

A handler gets an already-typed request and a `Caller` whose role and agent come from the
socket; it returns a reply (unary) or emits frames (streaming), and leaves the reply's `id`
to the transport (`server.Connection`), which sets it from the call.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

import trio

from protocol import messages as m

from ..broker import LeaseHolder
from ..hive import Hive

Roles = frozenset[m.Role]
EVERYONE: Roles = frozenset({"agent", "manager", "web", "admin"})
AGENTS: Roles = frozenset({"agent", "manager"})
MANAGER: Roles = frozenset({"manager"})
OPERATOR: Roles = frozenset({"web", "admin"})
"""The operator's two doors: the dashboard's web.sock and `hive ctl`'s admin.sock."""
ADMIN: Roles = frozenset({"admin"})


class CallerConnection(Protocol):
    """What a handler may touch of the connection it answers on (`server.Connection`, which
    imports the handlers): its open streams and, on an agent's socket, its leases."""

    holder: LeaseHolder | None
    streams: dict[int, trio.CancelScope]


@dataclass
class Caller:
    hive: Hive
    role: m.Role
    agent: str | None
    conn: CallerConnection
    call_id: int

    @property
    def name(self) -> str:
        """The calling agent's name (agent and manager sockets only)."""
        assert self.agent is not None, "agent verb reached a non-agent socket"
        return self.agent


Emit = Callable[[m.Reply | list[m.Reply]], Awaitable[None]]
"""Send one frame of a streaming call, or several with one write."""
UnaryHandler = Callable[[Caller, Any], Awaitable[m.Reply]]
StreamHandler = Callable[[Caller, Any, Emit], Awaitable[None]]


@dataclass(frozen=True)
class Verb:
    """One row of a verb table: the request type, who may send it, and its handler.

    `roles` must equal the roles whose union in `protocol.messages` decodes the verb (a test
    holds the two equal): the socket's decoder stays the permission table, and this row says
    it again where the handler is."""

    request: type[m.Request]
    roles: Roles
    handler: Callable[..., Awaitable[Any]]
    streaming: bool = False
    inline: bool = False
    """Answered from memory, awaiting nothing but its reply's write: the connection runs
    it between two reads instead of starting a task for it (which costs more than the
    answer). Its calls are answered in order; it must never wait on the store or a peer."""
