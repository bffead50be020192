"""The host socket's wire (`protocol.host_v1`): lines, the request decoder, responses, times.

Whatever bytes arrive, in whatever chunks, the splitter hands back the same lines and never
holds more than its cap; whatever a line holds, the decoder returns a request or raises
`LineError` with a code — never anything else; a valid request with keys the daemon does not
know decodes as if they were absent; every response is exactly one line.
"""

from __future__ import annotations

import datetime
import json
import re
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocol import host_v1 as h
from protocol import messages as m
from tests.protocol.strategies import values_of

examples = settings(
    max_examples=300,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
CODES = set(m.ErrorCode.__args__)  # type: ignore[attr-defined]
LINE_CODES = {"bad_frame", "invalid", "unknown_op"}


# ------------------------------------------------------------------ the splitter


@st.composite
def stream_and_chunks(draw: st.DrawFn) -> tuple[int, list[bytes], bytes, list[bytes]]:
    """A cap, the lines of a stream (some over the cap), an unfinished last line, and the
    stream cut at random."""
    limit = draw(st.integers(1, 40))
    lines = draw(st.lists(st.binary(max_size=90).map(lambda b: b.replace(b"\n", b"")), max_size=8))
    tail = draw(st.binary(max_size=60).map(lambda b: b.replace(b"\n", b"")))
    data = b"".join(line + b"\n" for line in lines) + tail
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=12)))
    chunks = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]
    return limit, lines, tail, chunks


@examples
@given(stream_and_chunks())
def test_any_chunking_yields_the_same_lines_and_never_holds_more_than_the_cap(case):
    limit, lines, tail, chunks = case
    splitter = h.LineSplitter(limit)
    out: list[bytes | h.TooLong] = []
    for chunk in chunks:
        out += splitter.feed(chunk)
        assert splitter.pending <= limit
    expected = [line if len(line) <= limit else "too long" for line in lines]
    if len(tail) > limit:
        expected.append("too long")  # refused as it overflows, before its newline comes
    else:
        assert splitter.pending == len(tail)
    assert [x if isinstance(x, bytes) else "too long" for x in out] == expected


def test_a_line_over_the_cap_is_reported_once_as_it_overflows():
    splitter = h.LineSplitter(8)
    assert splitter.feed(b"12345678") == []
    (too_long,) = splitter.feed(b"9")
    assert isinstance(too_long, h.TooLong) and too_long.limit == 8
    assert splitter.pending == 0
    assert splitter.feed(b"x" * 1000) == []  # dropped while it arrives
    assert splitter.pending == 0
    assert splitter.feed(b"tail\nok\n") == [b"ok"]


# ------------------------------------------------------------------ the decoder


def decoded_or_refused(line: bytes) -> h.HostRequest | h.LineError:
    try:
        return h.decode_line(line)
    except h.LineError as exc:
        assert exc.code in LINE_CODES, exc.code
        assert exc.message and len(exc.message) < 2000
        return exc


def json_values() -> st.SearchStrategy[Any]:
    scalars = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**70), 2**70),
        st.floats(allow_nan=False, allow_infinity=False),
        st.text(max_size=20),
    )
    return st.recursive(
        scalars,
        lambda inner: st.one_of(
            st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=12), inner, max_size=4)
        ),
        max_leaves=16,
    )


@examples
@given(st.binary(max_size=300))
def test_any_bytes_decode_to_a_request_or_a_line_error(line):
    decoded_or_refused(line)


@examples
@given(json_values())
def test_any_json_decodes_to_a_request_or_a_line_error(value):
    decoded_or_refused(json.dumps(value).encode())


REQUEST_FIELDS = sorted({f for t in h.HOST_REQUESTS for f in t.__struct_fields__} | {"scope"})


@st.composite
def requests_and_lines(draw: st.DrawFn) -> tuple[h.HostRequest, dict[str, Any]]:
    cls = draw(st.sampled_from(h.HOST_REQUESTS))
    req = draw(values_of(cls))
    return req, msgspec.to_builtins(req)


@examples
@given(requests_and_lines(), st.dictionaries(st.text(max_size=12), json_values(), max_size=4))
def test_unknown_keys_are_ignored(case, extra):
    req, raw = case
    own = set(type(req).__struct_fields__) | {"cmd"}
    extra = {k: v for k, v in extra.items() if k not in own}
    assert h.decode_line(json.dumps({**extra, **raw}).encode()) == req
    assert h.decode_line(json.dumps({**raw, **extra}).encode()) == req


@examples
@given(requests_and_lines(), st.data())
def test_a_mangled_request_is_refused_with_a_code_or_still_valid(case, data):
    _, raw = case
    fields = [k for k in raw if k != "cmd"]
    how = data.draw(st.sampled_from(["mistype", "drop", "recmd"]))
    if how == "mistype" and fields:
        raw[data.draw(st.sampled_from(fields))] = data.draw(json_values())
    elif how == "drop" and fields:
        del raw[data.draw(st.sampled_from(fields))]
    else:
        raw["cmd"] = data.draw(st.one_of(st.sampled_from(sorted(h.CMDS)), st.text(max_size=20)))
    result = decoded_or_refused(json.dumps(raw).encode())
    if isinstance(result, h.LineError) and result.code == "unknown_op":
        assert raw["cmd"] not in h.CMDS


def test_the_original_clients_lines_decode():
    """The lines trollshell's agents panel pins for each verb (its `wire.rs` tests)."""
    scope = h.Scope(agent_names=["trollshell-choom"])
    pinned = {
        b'{"cmd":"list"}': h.List(),
        b'{"cmd":"agent_status"}': h.AgentStatus(),
        b'{"cmd":"subscribe_agent_status"}': h.SubscribeAgentStatus(),
        b'{"cmd":"urls"}': h.Urls(),
        b'{"cmd":"set_paused","name":"trollshell-choom","paused":true}': h.SetPaused(
            name="trollshell-choom", paused=True
        ),
        b'{"cmd":"restart","name":"trollshell-choom"}': h.Restart(name="trollshell-choom"),
        b'{"cmd":"start","scope":{"agent_names":["trollshell-choom"]}}': h.Start(scope=scope),
        b'{"cmd":"stop","scope":{"agent_names":["trollshell-choom"]},"graceful":true}': h.Stop(
            scope=scope, graceful=True
        ),
        b'{"cmd":"pending"}': h.Pending(),
        b'{"cmd":"approve","id":42}': h.Approve(id=42),
        b'{"cmd":"deny","id":42}': h.Deny(id=42),
        b'{"cmd":"approve","id":9223372036854775807}': h.Approve(id=2**63 - 1),
    }
    for line, request in pinned.items():
        assert h.decode_line(line) == request, line
    assert set(map(type, pinned.values())) == set(h.HOST_REQUESTS)


@pytest.mark.parametrize(
    ("line", "code"),
    [
        (b"", "bad_frame"),
        (b"{", "bad_frame"),
        (b'"list"', "invalid"),
        (b"{}", "invalid"),
        (b'{"cmd":null}', "invalid"),
        (b'{"cmd":"LIST"}', "unknown_op"),
        (b'{"cmd":"deny","id":"42"}', "invalid"),
        (b'{"cmd":"deny","id":0}', "invalid"),
        (b'{"cmd":"deny","id":9223372036854775808}', "invalid"),
        (b'{"cmd":"stop","scope":{"agent_names":"alice"}}', "invalid"),
        (b'{"cmd":"start","scope":{"agent_names":["a"],"ci":"yes"}}', "invalid"),
        (b'{"cmd":"restart","name":"../etc"}', "invalid"),
        (b"[" * 10000, "bad_frame"),
        (b'{"cmd":"list"} {"cmd":"list"}', "bad_frame"),
    ],
)
def test_what_is_wrong_with_a_line_is_named(line, code):
    with pytest.raises(h.LineError) as err:
        h.decode_line(line)
    assert err.value.code == code


def test_a_scope_may_name_at_most_so_many_agents():
    names = [f"a{i}" for i in range(h.MAX_SCOPE_NAMES + 1)]
    with pytest.raises(h.LineError) as err:
        h.decode_line(json.dumps({"cmd": "start", "scope": {"agent_names": names}}).encode())
    assert err.value.code == "invalid"


# ------------------------------------------------------------------ responses


@examples
@given(values_of(h.HostResponse))
def test_every_response_is_exactly_one_json_line(response):
    line = h.encode_response(response)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    decoded = json.loads(line)
    assert list(decoded)[:3] == ["version", "ok", "error"]
    assert decoded["version"] == h.HOST_SOCK_VERSION
    assert msgspec.json.decode(line, type=h.HostResponse) == response


def test_a_failure_carries_its_code():
    line = h.encode_response(h.failure("not_found", "no agent named 'x'"))
    assert json.loads(line) == {
        "version": 1,
        "ok": False,
        "error": "no agent named 'x'",
        "code": "not_found",
    }
    assert set(m.ErrorCode.__args__) <= CODES  # type: ignore[attr-defined]


# ------------------------------------------------------------------ times

RFC3339_UTC = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{3}|\.\d{6})?Z")


@examples
@given(st.floats(min_value=0, max_value=2**34))
def test_times_are_rfc3339_utc_and_mean_the_same_instant(at):
    text = h.rfc3339(at)
    assert RFC3339_UTC.fullmatch(text), text
    back = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    assert back.tzinfo == datetime.UTC
    assert abs(back.timestamp() - at) <= 1e-6 * max(1.0, at / 1e9)


def test_times_show_fractions_only_when_there_are_any():
    assert h.rfc3339(0) == "1970-01-01T00:00:00Z"
    assert h.rfc3339(1.5) == "1970-01-01T00:00:01.500Z"
    assert h.rfc3339(1.000001) == "1970-01-01T00:00:01.000001Z"
    assert h.rfc3339(None) is None
