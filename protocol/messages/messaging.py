"""Messages between agents and the operator: sending, leasing, acking, and the dead-letter tools."""

from __future__ import annotations

from typing import Annotated

from msgspec import Meta, Struct, field

from .base import Body, Event, MessageId, MessageKind, MessageState, Recipient, Reply, Request


class MessageRow(Struct, kw_only=True):
    id: int
    from_: str = field(name="from")
    to: str
    body: str
    in_reply_to: int | None
    thread: int
    """Id of the root message of this conversation (itself when it is a root)."""
    kind: MessageKind
    state: MessageState
    attempts: int
    broadcast: bool
    hint: str | None
    question_id: int | None
    created_at: float
    acked_at: float | None
    reminder_id: int | None = None
    """Set on a `reminder` message: the reminder it delivers."""
    failures: int = 0
    """How many of its turns failed (a `Nack`, a lost connection, an expired lease); at
    `max_attempts` the message is `dead`."""
    not_before: float | None = None
    """A message whose turn failed is not offered again before this time (backoff)."""
    last_error: str | None = None
    """Why its last attempt failed (a `Nack` reason, a lost connection, an expired lease)."""


class Delivery(Struct, kw_only=True):
    """A message leased to its recipient; `Ack{lease}` marks it delivered."""

    lease: str
    message: MessageRow
    expires_at: float | None = None
    """When the lease runs out unless acked or renewed (`Renew`)."""


class Message(Request):
    """What a sender fills in: the same fields whether an agent or the operator sends. The
    sender is never a field; it is the socket (`Send` on an agent's, `OperatorSend` on the
    operator's)."""

    to: Recipient
    body: Body
    in_reply_to: MessageId | None = None


class Send(Message, tag="send"):
    """Send a message to an agent, to `"operator"`, or to `"*"` (every other agent)."""


class Recv(Request, tag="recv"):
    """Lease up to `max` queued messages, waiting up to `wait_seconds` for the first."""

    max: Annotated[int, Meta(ge=1, le=100)] = 1
    wait_seconds: Annotated[float, Meta(ge=0)] = 0.0


class Take(Request, tag="take"):
    """Take up to `max` queued messages as delivered, waiting up to `wait_seconds` for the
    first: a `Recv` and an `Ack` of each in one transaction, one write instead of two. For a
    reader that hands the text on at once (the MCP `recv` tools): nothing is leased, so a
    reader that fails afterwards does not get the message again. Like `Recv` and `Ack`, it
    returns once committed, before an fsync: only a power cut can undo it, and the messages
    are then delivered again."""

    max: Annotated[int, Meta(ge=1, le=100)] = 1
    wait_seconds: Annotated[float, Meta(ge=0)] = 0.0


class WaitForWork(Request, tag="wait_for_work"):
    """Streaming long-poll for the harness: one `Work` frame per leased message.

    The next message is leased only once the previous lease is acked or released.
    """


class Ack(Request, tag="ack"):
    """Mark a leased message delivered. Only the recipient's socket can ack it. Returns once
    committed, before an fsync: a power cut can undo it, and the message goes out again."""

    lease: Annotated[str, Meta(min_length=1, max_length=64)]


class Renew(Request, tag="renew"):
    """Keep a lease you hold while its turn runs: it expires `lease_seconds` from now again.

    Answered by `Renewed`; a lease that is no longer yours (acked, expired) is `not_found`.
    """

    lease: Annotated[str, Meta(min_length=1, max_length=64)]


class OperatorSend(Message, tag="operator_send"):
    """The operator sends a message to an agent or to `"*"` (`Send`'s fields, from the
    operator; its own op so that each socket's union names one meaning of it)."""


class ListMessages(Request, tag="list_messages"):
    """Recent messages, newest first, optionally only one agent's or one thread's."""

    agent: Recipient | None = None
    thread: MessageId | None = None
    limit: Annotated[int, Meta(ge=1, le=1000)] = 100
    before: MessageId | None = None
    state: MessageState | None = None
    """Only messages in this state (`dead`: those set aside after `max_attempts`)."""


class RetryMessage(Request, tag="retry_message"):
    """Queue a `dead` message again, with a fresh set of attempts."""

    id: MessageId


class DropMessage(Request, tag="drop_message"):
    """Give up on a `dead` message for good (it stays listed as `dropped`)."""

    id: MessageId


class Nack(Request, tag="nack"):
    """Harness only: give a leased message back at once (its turn failed); it is queued again."""

    lease: Annotated[str, Meta(min_length=1, max_length=64)]
    reason: Annotated[str, Meta(max_length=500)] = ""


class Sent(Reply, tag="sent"):
    message_ids: list[int]
    body_file: str | None
    """Where an oversize body was written in full, if it was."""


class Deliveries(Reply, tag="deliveries"):
    items: list[Delivery]
    more: int
    """Messages still queued for you after these (counted up to 10,000)."""


class Taken(Reply, tag="taken"):
    messages: list[MessageRow]
    """Each one already `acked`."""
    more: int
    """Messages still queued for you after these (counted up to 10,000)."""


class Work(Reply, tag="work"):
    delivery: Delivery
    more: int


class Renewed(Reply, tag="renewed"):
    expires_at: float


class Messages(Reply, tag="messages"):
    messages: list[MessageRow]


class MessageSent(Event, tag="message_sent"):
    message: MessageRow


class MessageLeased(Event, tag="message_leased"):
    message_id: int
    agent: str
    attempts: int


class MessageAcked(Event, tag="message_acked"):
    message_id: int
    agent: str


class MessageRequeued(Event, tag="message_requeued"):
    message_id: int
    agent: str
    attempts: int
    reason: str
    not_before: float | None = None
    """Not offered again before this time (the retry backoff); None: at once."""


class MessageDead(Event, tag="message_dead"):
    """A message failed `max_attempts` times and is set aside for the operator."""

    message_id: int
    agent: str
    attempts: int
    reason: str


class MessageDropped(Event, tag="message_dropped"):
    message_id: int
    agent: str


class MessageForwarded(Event, tag="message_forwarded"):
    """A message to another hive (`to` is `name@hive`) was stored by JetStream."""

    message_id: int
    to: str
