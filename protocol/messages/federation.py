"""The link to other hives as the operator sees it: the link's state and the remote agents."""

from __future__ import annotations

from typing import Literal

from msgspec import Struct

from .base import AgentRole, Event, Reply, Request


class RemoteAgentRow(Struct, kw_only=True):
    """An agent of another hive, as that hive last published it (read only)."""

    address: str
    """`name@hive`: what to send to."""
    hive: str
    name: str
    role: AgentRole
    model: str
    runtime: str
    running: bool
    container: str
    status_text: str
    status_set_at: float | None
    queued: int
    heard_at: float
    """When this hive last received that hive's status (its clock, not theirs)."""


class RemoteHiveRow(Struct, kw_only=True):
    hive: str
    agents: int
    status_at: float
    """When that hive published its last status (its own clock)."""
    heard_at: float
    """When this hive received it."""


class FederationRow(Struct, kw_only=True):
    """The federation link of this hive, as `hive ctl federation` and the dashboard show it."""

    enabled: bool
    hive: str = ""
    url: str = ""
    link: Literal["disabled", "connecting", "connected", "disconnected"] = "disabled"
    detail: str = ""
    """The last connection error, or what the link is doing."""
    outbox_pending: int = 0
    """Envelopes committed here and not yet stored by JetStream."""
    outbox_oldest_at: float | None = None
    outbox_last_error: str | None = None
    published: int = 0
    """Envelopes published since this daemon started."""
    received: int = 0
    """Envelopes committed from other hives since this daemon started."""
    duplicates: int = 0
    """Envelopes received again and dropped by id since this daemon started."""
    rejected: int = 0
    """Envelopes terminated as unreadable or forged since this daemon started."""
    hives: list[RemoteHiveRow] = []


class FederationStatus(Request, tag="federation_status"):
    """The federation link, the outbox and the known hives; answered by `Federation`."""


class Federation(Reply, tag="federation"):
    federation: FederationRow


class FederationChanged(Event, tag="federation_changed"):
    """The federation link changed state (connected, disconnected, …)."""

    link: str
    detail: str


class RemoteAgentsChanged(Event, tag="remote_agents_changed"):
    """Another hive published its roster."""

    hive: str
    agents: list[RemoteAgentRow]
