"""Every verb the daemon answers, one table per feature, read by the transport.

Each feature module ends with `VERBS`, rows of (verb, roles, handler) — the shape of
OpenSSH's monitor table — so one file shows a feature's whole surface. Which verbs a socket
may use is decided before any handler runs, by the role's union in `protocol.messages`;
handlers therefore never check "may this role do this?", only the per-object rules of their
verb (e.g. only a question's target may answer it). `server.Connection` looks a decoded
request up in `UNARY` or `STREAMING` and sets the reply's `id`.
"""

from __future__ import annotations

from . import (
    approvals,
    dashboard,
    events,
    federation,
    forge,
    lifecycle,
    messaging,
    operator_controls,
    questions,
    reminders,
    session,
)
from .base import Caller, Emit, StreamHandler, UnaryHandler, Verb

TABLE: tuple[Verb, ...] = (
    *session.VERBS,
    *events.VERBS,
    *messaging.VERBS,
    *questions.VERBS,
    *reminders.VERBS,
    *lifecycle.VERBS,
    *approvals.VERBS,
    *dashboard.VERBS,
    *federation.VERBS,
    *forge.VERBS,
    *operator_controls.VERBS,
)
UNARY: dict[type, UnaryHandler] = {v.request: v.handler for v in TABLE if not v.streaming}
STREAMING: dict[type, StreamHandler] = {v.request: v.handler for v in TABLE if v.streaming}
INLINE: frozenset[type] = frozenset(v.request for v in TABLE if v.inline and not v.streaming)

__all__ = ["INLINE", "STREAMING", "TABLE", "UNARY", "Caller", "Emit", "Verb"]
