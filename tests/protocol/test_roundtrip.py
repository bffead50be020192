"""Every wire shape survives MessagePack unchanged, and each role decodes exactly its verbs.

The Structs under test are collected from `protocol.messages` itself and their values are
drawn from their own field types and `Meta` constraints (`tests/protocol/strategies.py`),
so a Struct added tomorrow is covered without touching this file.
"""

from __future__ import annotations

from typing import Any, get_args

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocol import messages as m
from protocol.wire import hello_decoder, reply_decoder, welcome_decoder
from tests.protocol.strategies import protocol_structs, values_of

STRUCTS = protocol_structs()
ABSTRACT_BASES = (m.Request, m.Reply, m.Event, m.Message)
"""Bases that only carry the tag field (or fields shared by verbs); never on the wire alone."""
ENCODE_ONLY = (m.Call,)
"""`Call` is what clients encode; the daemon decodes it as `call_type(role)` (tested below)."""

REQUESTS = [c for c in STRUCTS if issubclass(c, m.Request) and c not in ABSTRACT_BASES]
REPLIES = [c for c in STRUCTS if issubclass(c, m.Reply) and c not in ABSTRACT_BASES]
EVENTS = [c for c in STRUCTS if issubclass(c, m.Event) and c not in ABSTRACT_BASES]
ROUND_TRIPPED = [c for c in STRUCTS if c not in ABSTRACT_BASES + ENCODE_ONLY]
ROLES: tuple[m.Role, ...] = get_args(m.Role)

examples = settings(
    max_examples=20,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def names(classes: list[type[Any]]) -> list[str]:
    return [c.__name__ for c in classes]


# ----------------------------------------------------------------- nothing is forgotten


def test_the_collection_finds_every_kind_of_wire_shape():
    for expected in (m.Hello, m.Welcome, m.Call, m.Ping, m.Error, m.AgentAdded, m.AgentRow):
        assert expected in STRUCTS
    assert len(REQUESTS) >= 50 and len(REPLIES) >= 25 and len(EVENTS) >= 15


def test_every_request_is_a_verb_of_some_role():
    allowed = {t for types in m.ROLE_REQUESTS.values() for t in types}
    assert [c.__name__ for c in REQUESTS if c not in allowed] == []


def test_every_reply_is_in_any_reply():
    assert set(REPLIES) == set(get_args(m.AnyReply))


def test_every_event_is_in_any_event_and_has_a_kind():
    assert set(EVENTS) == set(get_args(m.AnyEvent))
    assert {c.__struct_config__.tag for c in EVENTS} == m.EVENT_KINDS


def test_op_names_are_unique_within_each_role():
    for role, types in m.ROLE_REQUESTS.items():
        ops = [m.op_of(t) for t in types]
        assert len(ops) == len(set(ops)), role


def test_every_op_of_every_role_is_a_known_op():
    assert {m.op_of(c) for c in REQUESTS} == m.ALL_OPS


# ----------------------------------------------------------------------- round trips


@pytest.mark.parametrize("cls", ROUND_TRIPPED, ids=names(ROUND_TRIPPED))
@examples
@given(data=st.data())
def test_every_struct_round_trips_through_msgpack(cls, data):
    value = data.draw(values_of(cls))
    decoded = msgspec.msgpack.decode(msgspec.msgpack.encode(value), type=cls)
    assert type(decoded) is cls
    assert decoded == value


@pytest.mark.parametrize("cls", REPLIES, ids=names(REPLIES))
@examples
@given(data=st.data())
def test_every_reply_decodes_through_the_clients_reply_union(cls, data):
    reply = data.draw(values_of(cls))
    assert reply_decoder.decode(msgspec.msgpack.encode(reply)) == reply


@pytest.mark.parametrize("cls", EVENTS, ids=names(EVENTS))
@examples
@given(data=st.data())
def test_every_event_decodes_inside_an_event_frame(cls, data):
    event = data.draw(values_of(cls))
    frame = m.EventFrame(id=data.draw(st.integers(0, 2**53)), event=event)
    decoded = reply_decoder.decode(msgspec.msgpack.encode(frame))
    assert isinstance(decoded, m.EventFrame)
    assert type(decoded.event) is cls
    assert decoded == frame


@examples
@given(hello=values_of(m.Hello))
def test_hello_decodes_through_the_daemons_hello_decoder(hello):
    assert hello_decoder.decode(msgspec.msgpack.encode(hello)) == hello


@examples
@given(answer=st.one_of(values_of(m.Welcome), values_of(m.Error)))
def test_welcome_or_a_refusal_decodes_through_the_clients_handshake_decoder(answer):
    assert welcome_decoder.decode(msgspec.msgpack.encode(answer)) == answer


# ---------------------------------------------------------------- the permission table


@pytest.mark.parametrize("cls", REQUESTS, ids=names(REQUESTS))
@examples
@given(data=st.data())
def test_a_request_decodes_on_exactly_the_roles_whose_union_holds_it(cls, data):
    req = data.draw(values_of(cls))
    call_id = data.draw(st.integers(0, 2**53))
    body = msgspec.msgpack.encode(m.Call(id=call_id, req=req))
    for role in ROLES:
        decoder = msgspec.msgpack.Decoder(m.call_type(role))
        if cls in m.ROLE_REQUESTS[role]:
            call = decoder.decode(body)
            assert (call.id, call.req) == (call_id, req), role
            assert type(call.req) is cls
        else:
            with pytest.raises(msgspec.ValidationError):
                decoder.decode(body)


def test_one_op_may_mean_different_verbs_on_different_roles():
    # `get_open_threads` is the agent's own list on an agent socket and needs `agent` elsewhere
    agent = msgspec.msgpack.Decoder(m.call_type("agent"))
    admin = msgspec.msgpack.Decoder(m.call_type("admin"))
    mine = msgspec.msgpack.encode(m.Call(id=1, req=m.GetOpenThreads()))
    theirs = msgspec.msgpack.encode(m.Call(id=2, req=m.GetAgentOpenThreads(agent="alice")))
    assert agent.decode(mine).req == m.GetOpenThreads()
    assert admin.decode(theirs).req == m.GetAgentOpenThreads(agent="alice")
    with pytest.raises(msgspec.ValidationError):
        agent.decode(theirs)
    with pytest.raises(msgspec.ValidationError):
        admin.decode(mine)


@pytest.mark.parametrize("call_id", [-1, 2**53 + 1])
def test_a_call_id_outside_0_to_2_53_is_refused_by_every_role(call_id):
    body = msgspec.msgpack.encode({"id": call_id, "req": {"op": "ping"}})
    for role in ROLES:
        with pytest.raises(msgspec.ValidationError):
            msgspec.msgpack.Decoder(m.call_type(role)).decode(body)


def test_unknown_fields_are_refused_in_the_envelope_and_in_the_request():
    decoder = msgspec.msgpack.Decoder(m.call_type("agent"))
    for raw in (
        {"id": 1, "req": {"op": "ping"}, "as": "boss"},
        {"id": 1, "req": {"op": "ping", "agent": "boss"}},
    ):
        with pytest.raises(msgspec.ValidationError):
            decoder.decode(msgspec.msgpack.encode(raw))
