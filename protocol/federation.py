"""The wire between hives: addresses (`agent@hive`) and the envelopes published to NATS JetStream.

These Structs are the format two daemons exchange through JetStream, never through a
hyperhive socket. An envelope's body is one of a tagged union (`kind`); its `id` is the
origin's unique id (`<hive>.<epoch>.<outbox row>`), the key the receiver deduplicates on.
Decoding is strict about types and lenient about unknown fields, so a newer minor version
of a peer still interoperates; a different major `v` is refused. Nothing here does I/O.
See docs/federation.md.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal, TypeAlias

import msgspec
from msgspec import Meta, Struct

from .messages import AGENT_NAME_PATTERN, Body, RowId

FEDERATION_VERSION = 1
"""Major version of the envelope format; an envelope with another `v` is rejected."""

HIVE_NAME_PATTERN = r"^[a-z][a-z0-9-]{0,30}\Z"
HiveName = Annotated[str, Meta(pattern=HIVE_NAME_PATTERN, max_length=31)]
"""A hive's name: like an agent's, and a valid NATS subject token (no dots, no wildcards)."""
Party = Annotated[str, Meta(pattern=r"^(?:[a-z][a-z0-9-]{0,30}|operator|system)\Z")]
"""Who sent or receives an envelope, as named in its own hive: an agent, `operator`, `system`."""
EnvelopeId = Annotated[str, Meta(min_length=5, max_length=96)]
Text = Annotated[str, Meta(max_length=4000)]

_AGENT = re.compile(AGENT_NAME_PATTERN)
_HIVE = re.compile(HIVE_NAME_PATTERN)


class AddressError(ValueError):
    """A `name@hive` that is not one: the message says what is wrong."""


def split_address(address: str) -> tuple[str, str | None]:
    """`"bob@beta"` → `("bob", "beta")`; `"bob"` → `("bob", None)`.

    The name may be an agent name or `operator`; the hive must be a hive name. Anything
    else (two `@`, an empty part, `*@hive`) is an `AddressError`.
    """
    if "@" not in address:
        return address, None
    name, _, hive = address.partition("@")
    if "@" in hive:
        raise AddressError(f"{address!r}: an address has one '@'")
    if not _HIVE.match(hive):
        raise AddressError(f"{address!r}: {hive!r} is not a hive name")
    if name != "operator" and not _AGENT.match(name):
        raise AddressError(f"{address!r}: {name!r} is not an agent name or 'operator'")
    return name, hive


def is_remote(address: str) -> bool:
    return "@" in address


# --------------------------------------------------------------------------- envelope bodies


class FedBody(Struct, tag_field="kind", kw_only=True):
    """Base of every envelope body."""


class FedMessage(FedBody, tag="message", kw_only=True):
    """A message from `sender` (in the origin hive) to `to` (in the receiving hive)."""

    message_id: RowId
    """The message's id in the origin hive: receipts and bounces name it."""
    sender: Party
    to: Party
    body: Body
    reply_to: RowId | None = None
    """The receiver's own id of the message this replies to (it came from the receiver)."""
    created_at: float


class FedQuestion(FedBody, tag="question", kw_only=True):
    """A question asked by `sender` of `to`; the answer comes back as `FedAnswer`."""

    message_id: RowId
    question_id: RowId
    """The question's id in the asking hive."""
    sender: Party
    to: Party
    question: Body
    options: list[Annotated[str, Meta(max_length=200)]] | None = None
    multi: bool = False
    expires_at: float | None = None
    created_at: float


class FedAnswer(FedBody, tag="answer", kw_only=True):
    """The answer to `question_id` (the asking hive's id), or `[expired]`."""

    message_id: RowId
    question_id: RowId
    sender: Party
    to: Party
    answer: Body
    state: Literal["answered", "expired"] = "answered"
    created_at: float


class FedCancel(FedBody, tag="cancel", kw_only=True):
    """The asker withdrew `question_id` (the asking hive's id)."""

    question_id: RowId
    sender: Party


class FedReceipt(FedBody, tag="receipt", kw_only=True):
    """`message_id` (the receiving hive's own id) was acked by its recipient."""

    message_id: RowId
    by: Party
    acked_at: float


class FedBounce(FedBody, tag="bounce", kw_only=True):
    """`message_id` (the receiving hive's own id) could not be delivered: `reason`."""

    message_id: RowId
    to: Party
    reason: Text


AnyFedBody: TypeAlias = FedMessage | FedQuestion | FedAnswer | FedCancel | FedReceipt | FedBounce
FED_KINDS: tuple[str, ...] = ("message", "question", "answer", "cancel", "receipt", "bounce")


class Envelope(Struct, kw_only=True):
    """One envelope on `<ns>.msg.<to_hive>.<origin>`."""

    v: int = FEDERATION_VERSION
    id: EnvelopeId
    origin: HiveName
    to_hive: HiveName
    sent_at: float
    body: AnyFedBody


# --------------------------------------------------------------------------- status


class RemoteAgent(Struct, kw_only=True):
    """One agent of another hive, as that hive last published it."""

    name: Annotated[str, Meta(pattern=AGENT_NAME_PATTERN, max_length=31)]
    role: Literal["agent", "manager"]
    model: Annotated[str, Meta(max_length=128)] = ""
    runtime: Annotated[str, Meta(max_length=32)] = ""
    running: bool = False
    container: Annotated[str, Meta(max_length=32)] = ""
    status_text: Annotated[str, Meta(max_length=500)] = ""
    status_set_at: float | None = None
    queued: Annotated[int, Meta(ge=0)] = 0


class HiveStatus(Struct, kw_only=True):
    """A hive's roster, on `<ns>.status.<hive>` (the stream keeps the last one per hive)."""

    v: int = FEDERATION_VERSION
    hive: HiveName
    epoch: Annotated[str, Meta(max_length=32)]
    at: float
    """The publishing hive's clock: an older status than one already applied is ignored."""
    agents: list[RemoteAgent] = msgspec.field(default_factory=list)


_envelope_decoder = msgspec.msgpack.Decoder(Envelope)
_status_decoder = msgspec.msgpack.Decoder(HiveStatus)
_encoder = msgspec.msgpack.Encoder()


class EnvelopeError(ValueError):
    """An envelope or status that cannot be accepted; the message says why."""


def encode(value: Envelope | HiveStatus | FedBody) -> bytes:
    return _encoder.encode(value)


def decode_envelope(data: bytes) -> Envelope:
    try:
        env = _envelope_decoder.decode(data)
    except msgspec.DecodeError as exc:  # ValidationError is a DecodeError
        raise EnvelopeError(f"undecodable envelope: {exc}") from None
    if env.v != FEDERATION_VERSION:
        raise EnvelopeError(f"envelope version {env.v}, this hive speaks {FEDERATION_VERSION}")
    return env


def decode_status(data: bytes) -> HiveStatus:
    try:
        status = _status_decoder.decode(data)
    except msgspec.DecodeError as exc:
        raise EnvelopeError(f"undecodable status: {exc}") from None
    if status.v != FEDERATION_VERSION:
        raise EnvelopeError(f"status version {status.v}, this hive speaks {FEDERATION_VERSION}")
    return status


_body_decoder = msgspec.msgpack.Decoder(AnyFedBody)


def decode_body(data: bytes) -> AnyFedBody:
    """An outbox row's stored body (written by this hive)."""
    return _body_decoder.decode(data)
