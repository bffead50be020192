"""The wire between hives: addresses and envelopes decode to typed values or a typed error.

An envelope comes from another machine: whatever its bytes, decoding either returns a valid
`Envelope`/`HiveStatus` or raises `EnvelopeError`, never anything else; every valid value
round-trips unchanged.
"""

from __future__ import annotations

import contextlib

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol.federation import (
    AddressError,
    Envelope,
    EnvelopeError,
    FedMessage,
    HiveStatus,
    decode_envelope,
    decode_status,
    encode,
    split_address,
)
from tests.protocol.strategies import any_msgpack, values_of


@given(values_of(Envelope))
def test_every_valid_envelope_round_trips(env: Envelope) -> None:
    env = msgspec.structs.replace(env, v=1)
    assert decode_envelope(encode(env)) == env


@given(values_of(HiveStatus))
def test_every_valid_status_round_trips(status: HiveStatus) -> None:
    status = msgspec.structs.replace(status, v=1)
    assert decode_status(encode(status)) == status


@given(st.binary(max_size=512))
def test_arbitrary_bytes_are_an_envelope_error_or_an_envelope(data: bytes) -> None:
    for decode in (decode_envelope, decode_status):
        with contextlib.suppress(EnvelopeError):
            decode(data)


@given(any_msgpack())
def test_arbitrary_msgpack_is_an_envelope_error_or_an_envelope(value: object) -> None:
    data = msgspec.msgpack.encode(value)
    for decode in (decode_envelope, decode_status):
        with contextlib.suppress(EnvelopeError):
            decode(data)


def test_another_major_version_is_refused_with_its_number() -> None:
    env = Envelope(
        v=2,
        id="beta.abc.1",
        origin="beta",
        to_hive="alpha",
        sent_at=1.0,
        body=FedMessage(message_id=1, sender="bob", to="alice", body="hi", created_at=1.0),
    )
    with pytest.raises(EnvelopeError, match="version 2"):
        decode_envelope(encode(env))


def test_a_newer_minor_peer_with_extra_fields_is_still_understood() -> None:
    raw = {
        "id": "beta.abc.1",
        "origin": "beta",
        "to_hive": "alpha",
        "sent_at": 1.0,
        "priority": "high",
        "body": {
            "kind": "message",
            "message_id": 1,
            "sender": "bob",
            "to": "alice",
            "body": "hi",
            "created_at": 1.0,
            "mood": "cheerful",
        },
    }
    env = decode_envelope(msgspec.msgpack.encode(raw))
    assert isinstance(env.body, FedMessage) and env.body.body == "hi"


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("bob", ("bob", None)),
        ("bob@beta", ("bob", "beta")),
        ("operator@beta", ("operator", "beta")),
        ("a-1@b-2", ("a-1", "b-2")),
    ],
)
def test_addresses_split_into_name_and_hive(address: str, expected: tuple[str, str | None]):
    assert split_address(address) == expected


@pytest.mark.parametrize(
    "address", ["@beta", "bob@", "bob@Beta", "a@b@c", "*@beta", "bob@be.ta", "bob@*", "Bob@beta"]
)
def test_what_is_not_an_address_is_an_address_error(address: str) -> None:
    with pytest.raises(AddressError):
        split_address(address)


@given(st.text(max_size=70))
def test_split_address_raises_only_address_error(text: str) -> None:
    try:
        name, hive = split_address(text)
    except AddressError:
        return
    assert (hive is None and name == text) or f"{name}@{hive}" == text
