"""Fuzzing `host.sock` of a real daemon process: nothing a client writes can hurt it.

Hypothesis writes random bytes, random JSON, and valid or mangled requests of every cmd that
starts no container, in random chunks, then `list`. Every line gets exactly one answer, in
order, each a well-formed response whose code is never `internal`; the closing `list` is
answered on the same connection; the process is alive and logged no traceback at the end.
"""

from __future__ import annotations

import json
import socket
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocol import host_v1 as h
from protocol import messages as m
from protocol.client import SyncClient
from tests.conftest import DaemonProcess
from tests.protocol.strategies import values_of
from tests.protocol.test_host_v1 import json_values

QUICK = settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
LONG = settings(
    max_examples=1500,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
HARMLESS = [t for t in h.HOST_REQUESTS if t not in (h.Start, h.Restart, h.SubscribeAgentStatus)]
LIST = b'{"cmd":"list"}\n'


def harmless(req: h.HostRequest) -> bool:
    return not (isinstance(req, h.SetPaused) and not req.paused)


@st.composite
def lines(draw: st.DrawFn) -> bytes:
    match draw(st.integers(0, 4)):
        case 0:
            return draw(st.binary(max_size=200))
        case 1:
            return json.dumps(draw(json_values())).encode()
        case 2 | 3:
            req = draw(st.sampled_from(HARMLESS).flatmap(values_of).filter(harmless))
            raw: dict[str, Any] = msgspec.to_builtins(req)
            if draw(st.booleans()):
                key = draw(st.sampled_from([*raw, "scope", "name", "id", "extra"]))
                raw[key] = draw(json_values())
                if key == "cmd" and raw[key] in ("start", "restart", "subscribe_agent_status"):
                    raw[key] = "list"
                if key == "paused":
                    raw[key] = True
            return json.dumps(raw).encode()
        case _:
            return b"x" * draw(st.integers(h.LINE_MAX - 2, h.LINE_MAX + 2))


def answers_expected(data: bytes) -> int:
    """How many answers the daemon owes for `data`: one per non-blank or too-long line."""
    out = h.LineSplitter(h.LINE_MAX).feed(data)
    return sum(1 for x in out if isinstance(x, h.TooLong) or x.strip())


def read_lines(sock: socket.socket, count: int) -> list[bytes]:
    buffer = b""
    while buffer.count(b"\n") < count:
        data = sock.recv(65536)
        assert data, f"closed with {count} answers owed; got {buffer!r}"
        buffer += data
    got = buffer.split(b"\n")
    assert got[count:] == [b""], "more answers than lines"
    return got[:count]


def throw(daemon: DaemonProcess, body: list[bytes], cuts: list[int]) -> None:
    data = b"\n".join(body) + b"\n" + LIST
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(20)
        sock.connect(str(daemon.paths.host_sock))
        for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True):
            sock.sendall(data[a:b])
        answers = read_lines(sock, answers_expected(data))
    for line in answers:
        response = json.loads(line)
        assert response["version"] == 1 and isinstance(response["ok"], bool), response
        assert response.get("code") != "internal", response
        assert response["ok"] or (response["error"] and response["code"]), response
    assert json.loads(answers[-1]) == {
        "version": 1,
        "ok": True,
        "error": None,
        "agents": ["alice", "bob", "boss"],
    }


def fuzz(daemon: DaemonProcess, how: settings) -> None:
    @how
    @given(st.lists(lines(), max_size=6), st.lists(st.integers(0, 300), max_size=5))
    def example(body: list[bytes], cuts: list[int]) -> None:
        throw(daemon, body, sorted(set(cuts)))

    example()
    with SyncClient.connect(str(daemon.paths.admin_sock)) as c:
        c.expect(m.Ping(), m.Pong)
    assert daemon.proc is not None and daemon.proc.poll() is None
    assert "Traceback" not in daemon.log()


def test_whatever_a_client_writes_every_line_is_answered(daemon_process):
    fuzz(daemon_process, QUICK)


@pytest.mark.slow
def test_whatever_a_client_writes_every_line_is_answered_long(daemon_process):
    fuzz(daemon_process, LONG)
