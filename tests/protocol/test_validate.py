"""`protocol.validate.build`: the one way a surface (MCP tool, `hive ctl`, dashboard form)
turns loose input into a request, by the verb's own Struct and nothing else."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol import messages as m
from protocol.validate import InvalidRequest, build

from .strategies import values_of

VERBS = sorted({t for ts in m.ROLE_REQUESTS.values() for t in ts}, key=lambda t: t.__name__)


@settings(max_examples=10, deadline=None)
@given(data=st.data())
def test_every_valid_request_builds_back_equal(data: st.DataObject):
    """What a verb's Struct accepts, `build` accepts, field for field."""
    verb = data.draw(st.sampled_from(VERBS))
    req = data.draw(values_of(verb))
    fields = msgspec.to_builtins(req)
    fields.pop("op")
    assert build(verb, fields) == req


@settings(max_examples=200, deadline=None)
@given(
    verb=st.sampled_from(VERBS),
    fields=st.dictionaries(
        st.text(max_size=12),
        st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=40),
        max_size=4,
    ),
)
def test_any_input_is_a_request_or_a_typed_refusal(verb: type[m.Request], fields: dict[str, Any]):
    """Whatever the input, the answer is the verb or `InvalidRequest` — never another error —
    and a refusal is exactly what decoding the same fields on the wire would refuse."""
    try:
        got = build(verb, fields)
    except InvalidRequest as exc:
        assert exc.verb is verb
        assert exc.summary.startswith("invalid: ")
        with pytest.raises(msgspec.ValidationError) as wire:
            msgspec.convert(fields, verb)
        assert str(wire.value) == str(exc)
    else:
        assert isinstance(got, verb)


def test_a_refusal_names_the_field_and_the_reason():
    with pytest.raises(InvalidRequest) as exc:
        build(m.Recv, {"max": "ten"})
    assert str(exc.value) == "Expected `int`, got `str` - at `$.max`"
    assert exc.value.summary == "invalid: max: expected `int`, got `str`"
    with pytest.raises(InvalidRequest) as exc:
        build(m.AddAgent, {"name": "BAD NAME"})
    assert exc.value.summary.startswith("invalid: name: expected `str` matching regex")


def test_form_input_may_spell_numbers_as_text():
    assert build(m.ReadJournal, {"agent": "alice", "lines": "50"}, from_text=True).lines == 50
    with pytest.raises(InvalidRequest):
        build(m.ReadJournal, {"agent": "alice", "lines": "50"})
    with pytest.raises(InvalidRequest):
        build(m.ReadJournal, {"agent": "alice", "lines": "0"}, from_text=True)  # ge=1
