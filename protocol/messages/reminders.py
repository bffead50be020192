"""Reminders an agent sets for itself, and the operator's view of them."""

from __future__ import annotations

from typing import Annotated

from msgspec import Meta, Struct

from .base import AgentName, Body, Event, ReminderId, ReminderState, Reply, Request


class ReminderRow(Struct, kw_only=True):
    id: int
    owner: str
    body: str
    """The text to deliver (an excerpt and a file path when the body was over the cap)."""
    due_at: float
    state: ReminderState
    created_at: float
    next_attempt_at: float | None
    """When the scheduler tries next (later than `due_at` after a failed attempt)."""
    attempt_count: int
    """Delivery attempts so far, the successful one included (`RetryReminder` resets it)."""
    last_error: str | None
    delivered_at: float | None
    message_id: int | None
    """The `reminder` message it became, once delivered."""


class Remind(Request, tag="remind"):
    """Set a reminder for yourself, `at` a unix time or `in_seconds` from now (give exactly one).

    When due it comes back to you as a `reminder` message (with `reminder_id`), leased and
    acked like any message; a time in the past is due at once. A body over the cap is moved
    to a file, as for `send`. Limited per agent (`rate_limited` says when to try again) and
    capped in how many may be pending at once.
    """

    body: Body
    at: Annotated[float, Meta(ge=0, le=4_102_444_800)] | None = None
    in_seconds: Annotated[float, Meta(ge=0, le=315_360_000)] | None = None


class ListMyReminders(Request, tag="list_my_reminders"):
    """Your own pending and failed reminders, soonest first; answered by `Reminders`."""


class CancelReminder(Request, tag="cancel_reminder"):
    """Cancel one of your own pending (or failed) reminders."""

    id: ReminderId


class ListReminders(Request, tag="list_reminders"):
    """Reminders, newest first, optionally only one agent's or only those in one state."""

    agent: AgentName | None = None
    state: ReminderState | None = None
    limit: Annotated[int, Meta(ge=1, le=1000)] = 100


class RetryReminder(Request, tag="retry_reminder"):
    """Queue a `failed` reminder again: it is due at once, with a fresh set of attempts."""

    id: ReminderId


class Reminded(Reply, tag="reminded"):
    reminder: ReminderRow
    body_file: str | None
    """Where an oversize body was written in full, if it was."""


class Reminders(Reply, tag="reminders"):
    reminders: list[ReminderRow]


class ReminderInfo(Reply, tag="reminder"):
    reminder: ReminderRow


class ReminderScheduled(Event, tag="reminder_scheduled"):
    """A reminder was set, or a failed one was queued again."""

    reminder: ReminderRow


class ReminderDelivered(Event, tag="reminder_delivered"):
    reminder_id: int
    owner: str
    message_id: int


class ReminderFailed(Event, tag="reminder_failed"):
    """A delivery attempt failed; `retry_at` is `None` when the reminder is now `failed`."""

    reminder_id: int
    owner: str
    error: str
    attempt_count: int
    retry_at: float | None


class ReminderCancelled(Event, tag="reminder_cancelled"):
    reminder_id: int
    owner: str
