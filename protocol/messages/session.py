"""Every socket's housekeeping: liveness, cancelling a stream, who the daemon and the caller are."""

from __future__ import annotations

from typing import Annotated

from msgspec import Meta

from .base import AgentRole, Reply, Request


class Ping(Request, tag="ping"):
    """Liveness check; answered by `Pong`."""


class Cancel(Request, tag="cancel"):
    """End a streaming request of this connection (`Subscribe`, `WaitForWork`)."""

    call: Annotated[int, Meta(ge=0)]


class ServerInfo(Request, tag="server_info"):
    """Daemon revision, protocol, uptime and directories; answered by `Info`."""


class Whoami(Request, tag="whoami"):
    """Who the calling agent is, from its socket; answered by `Identity`."""


class Pong(Reply, tag="pong"):
    server_time: float


class Info(Reply, tag="info"):
    rev: str
    protocol: str
    uptime_seconds: float
    state_dir: str
    run_dir: str
    agents: int


class Identity(Reply, tag="identity"):
    name: str
    role: AgentRole
    model: str
    port: int | None
    hyperhive_rev: str
    started_at: float
