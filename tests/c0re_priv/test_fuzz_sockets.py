"""Fuzzing every socket role of a real daemon process: nothing a peer sends can hurt it.

Hypothesis throws two kinds of input at the admin, web, agent (`alice`) and manager (`boss`)
sockets: (a) random bytes, with or without a valid `Hello` in front; (b) well-framed but
wrong frames: random MessagePack, and `Call`s with every op (and junk ops) carrying valid,
mistyped, missing or unknown fields. Whatever happens, every frame the daemon sends back is
a well-formed reply, none says `internal`, a connection whose framing was intact still
answers `Ping`, a new connection always gets `Pong`, and the process is alive at the end.

Calls are real, so the fuzzer keeps its side effects bounded: no verb that starts
containers, and no verb that names one of the agents whose sockets are under test.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocol import messages as m
from protocol.client import HiveError, SyncClient
from protocol.framing import FrameDecoder, encode_frame
from protocol.wire import encode
from tests.conftest import DaemonProcess
from tests.protocol.strategies import any_msgpack, protocol_structs, values_of

SOCKETS: dict[m.Role, Callable[[Any], Path]] = {
    "admin": lambda paths: paths.admin_sock,
    "web": lambda paths: paths.web_sock,
    "agent": lambda paths: paths.agent_sock("alice"),
    "manager": lambda paths: paths.agent_sock("boss"),
}
CONFIGURED_AGENTS = frozenset({"alice", "bob", "boss"})
STARTS_CONTAINERS = frozenset({"start", "restart", "rebuild", "rebuild_all"})
JUNK_OPS = ["", "PING", "hello", "welcome", "error", "pong", "op", "send ", "\x00", "ping\x00"]
PING_ID = 2**53
"""The last call of every well-framed example; fuzzed calls use smaller ids."""
TIMEOUT = 5.0
"""Longer than any reply takes; a daemon silent for this long fails the example."""

anything_the_daemon_says = msgspec.msgpack.Decoder(m.Welcome | m.AnyReply)
HELLO = encode(m.Hello(protocol=m.PROTOCOL_VERSION, client="fuzz"))
REQUESTS = [c for c in protocol_structs() if issubclass(c, m.Request) and c is not m.Request]
FIELD_NAMES = sorted({f for c in REQUESTS for f in c.__struct_fields__})


# ------------------------------------------------------------------------ strategies


def random_bytes() -> st.SearchStrategy[bytes]:
    """(a) bytes at random, sometimes after a valid `Hello` so they reach the call decoder."""
    junk = st.binary(max_size=256)
    return st.one_of(junk, junk.map(lambda b: HELLO + b))


def is_harmless(role: m.Role, req: m.Request) -> bool:
    """A call the fuzzer may really make: no containers, no touching the agents under test."""
    allowed = type(req) in m.ROLE_REQUESTS[role]
    if allowed and m.op_of(type(req)) in STARTS_CONTAINERS:
        return False
    return not CONFIGURED_AGENTS & {getattr(req, "name", None), getattr(req, "agent", None)}


def valid_requests(role: m.Role, own: bool) -> st.SearchStrategy[m.Request]:
    """Requests valid for their own type: of this role's verbs, or of any role's."""
    verbs = m.ROLE_REQUESTS[role] if own else REQUESTS
    return st.sampled_from(verbs).flatmap(values_of).filter(lambda req: is_harmless(role, req))


def mangled(req: dict[str, Any], draw: st.DrawFn) -> dict[str, Any]:
    """One field mistyped, dropped or invented, or the op swapped for another or for junk."""
    req = dict(req)
    how = draw(st.sampled_from(["mistype", "drop", "invent", "reop"]))
    fields = [k for k in req if k != "op"]
    if how == "mistype" and fields:
        req[draw(st.sampled_from(fields))] = draw(any_msgpack())
    elif how == "drop" and fields:
        del req[draw(st.sampled_from(fields))]
    elif how == "invent":
        req[draw(st.sampled_from([*FIELD_NAMES, "role", "as", "from"]))] = draw(any_msgpack())
    else:
        req["op"] = draw(st.sampled_from([*sorted(m.ALL_OPS), *JUNK_OPS]))
    return req


def one_in_ten(draw: st.DrawFn) -> int:
    """0 to 9, to weigh the choices below (hypothesis leans towards 0)."""
    return draw(st.integers(0, 9))


@st.composite
def wrong_calls(draw: st.DrawFn, role: m.Role) -> bytes:
    """A `Call`-shaped body: mostly a valid id, around a valid, mangled or random request.

    Half the requests are valid verbs of this role, so the calls reach the handlers too.
    """
    call_id: Any
    if one_in_ten(draw) < 8:
        call_id = draw(st.integers(0, PING_ID - 1))
    else:
        call_id = draw(st.one_of(st.sampled_from([-1, PING_ID + 1]), any_msgpack()))
    req: Any
    match one_in_ten(draw):
        case 0 | 1 | 2 | 3 | 4:
            req = draw(valid_requests(role, own=True))
        case 5:
            req = draw(valid_requests(role, own=False))
        case 6 | 7:
            req = mangled(msgspec.to_builtins(draw(valid_requests(role, own=True))), draw)
        case 8:
            fields = draw(st.dictionaries(st.sampled_from(FIELD_NAMES), any_msgpack(), max_size=4))
            req = {**fields, "op": draw(st.sampled_from([*sorted(m.ALL_OPS), *JUNK_OPS]))}
        case _:
            req = draw(any_msgpack())
    call: dict[str, Any] = {"id": call_id, "req": req}
    if one_in_ten(draw) == 9:
        call[draw(st.sampled_from(["agent", "role", "as", "x"]))] = draw(any_msgpack())
    return msgspec.msgpack.encode(call)


@st.composite
def wrong_frames(draw: st.DrawFn, role: m.Role) -> list[bytes]:
    """(b) well-framed bodies: mostly calls, some with a byte changed, else random bytes."""
    bodies = []
    for _ in range(draw(st.integers(1, 8))):
        weight = one_in_ten(draw)
        if weight < 5:
            bodies.append(draw(wrong_calls(role)))
        elif weight < 7:
            bodies.append(msgspec.msgpack.encode(draw(any_msgpack())))
        elif weight < 9:
            bodies.append(draw(wrong_calls(role).flatmap(with_a_byte_changed)))
        else:
            bodies.append(draw(st.binary(max_size=64)))
    return bodies


def with_a_byte_changed(body: bytes) -> st.SearchStrategy[bytes]:
    """`body` with one byte overwritten: MessagePack that is almost right."""
    return st.tuples(st.integers(0, len(body) - 1), st.integers(0, 255)).map(
        lambda change: body[: change[0]] + bytes([change[1]]) + body[change[0] + 1 :]
    )


# ---------------------------------------------------------------------------- peers


def connect(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(TIMEOUT)
    sock.connect(str(path))
    return sock


def read_frame(sock: socket.socket, decoder: FrameDecoder, ready: list[bytes]) -> bytes | None:
    """The next frame, or `None` once the daemon has hung up."""
    while not ready:
        try:
            data = sock.recv(65536)
        except ConnectionResetError:  # closed with some of our bytes unread
            data = b""
        if not data:
            return None
        ready += decoder.feed(data)
    return ready.pop(0)


def check(body: bytes) -> Any:
    """Whatever the daemon says is a well-formed frame, and never an internal error."""
    said = anything_the_daemon_says.decode(body)
    assert not (isinstance(said, m.Error) and said.code == "internal"), said
    return said


def throw_bytes(path: Path, data: bytes) -> None:
    """Send the bytes, say nothing more, and read until the daemon hangs up."""
    with connect(path) as sock:
        try:
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass  # it already hung up on us, which is allowed
        decoder, ready = FrameDecoder(), list[bytes]()
        while (body := read_frame(sock, decoder, ready)) is not None:
            check(body)


def throw_frames(path: Path, bodies: list[bytes]) -> None:
    """Say Hello, send the frames and a Ping: intact framing keeps the connection serving."""
    with connect(path) as sock:
        frames = b"".join(encode_frame(body) for body in bodies)
        sock.sendall(HELLO + frames + encode(m.Call(id=PING_ID, req=m.Ping())))
        decoder, ready = FrameDecoder(), list[bytes]()
        assert isinstance(check(read_frame(sock, decoder, ready) or b""), m.Welcome)
        while True:
            body = read_frame(sock, decoder, ready)
            assert body is not None, "the daemon hung up on well-framed input"
            said = check(body)
            if isinstance(said, m.Pong) and said.id == PING_ID:
                break
        # Hang up cleanly: EOF ends the calls still running (streams, long polls), and
        # reading to the end checks their last words too.
        sock.shutdown(socket.SHUT_WR)
        while (body := read_frame(sock, decoder, ready)) is not None:
            check(body)


def assert_alive(daemon: DaemonProcess, path: Path) -> None:
    assert daemon.proc is not None and daemon.proc.poll() is None, daemon.log()[-4000:]
    with SyncClient.connect(str(path), timeout=TIMEOUT) as fresh:
        fresh.expect(m.Ping(), m.Pong)


def assert_unharmed(daemon: DaemonProcess) -> None:
    for path_of in SOCKETS.values():
        assert_alive(daemon, path_of(daemon.paths))
    # warnings name each refused call; an ERROR is a connection or handler that failed
    errors = [line for line in daemon.log().splitlines() if " ERROR " in line]
    assert errors == [], daemon.log()[-4000:]


# ---------------------------------------------------------------------------- tests


@pytest.fixture
def daemon(daemon_process: DaemonProcess) -> DaemonProcess:
    """`daemon_process`, once every socket under test answers.

    `daemon_process` is started when `admin.sock` answers, but the daemon binds the agent
    sockets a moment after it starts serving `admin.sock`.
    """
    deadline = time.monotonic() + 10
    for path_of in SOCKETS.values():
        while True:
            try:
                assert_alive(daemon_process, path_of(daemon_process.paths))
                break
            except HiveError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.01)
    return daemon_process


def fuzz_bytes(daemon: DaemonProcess, role: m.Role, fuzz: settings) -> None:
    path = SOCKETS[role](daemon.paths)

    @fuzz
    @given(data=random_bytes())
    def example(data: bytes) -> None:
        throw_bytes(path, data)
        assert_alive(daemon, path)

    example()
    assert_unharmed(daemon)


def fuzz_frames(daemon: DaemonProcess, role: m.Role, fuzz: settings) -> None:
    path = SOCKETS[role](daemon.paths)

    @fuzz
    @given(bodies=wrong_frames(role))
    def example(bodies: list[bytes]) -> None:
        throw_frames(path, bodies)
        assert_alive(daemon, path)

    example()
    assert_unharmed(daemon)


QUICK = settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
LONG = settings(
    max_examples=int(os.environ.get("HIVE_FUZZ_EXAMPLES", "1500")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


@pytest.mark.parametrize("role", list(SOCKETS))
def test_random_bytes_never_hurt_the_daemon(daemon, role):
    fuzz_bytes(daemon, role, QUICK)


@pytest.mark.parametrize("role", list(SOCKETS))
def test_wrong_frames_never_hurt_the_daemon_or_the_connection(daemon, role):
    fuzz_frames(daemon, role, QUICK)


@pytest.mark.slow
@pytest.mark.parametrize("role", list(SOCKETS))
def test_random_bytes_never_hurt_the_daemon_long(daemon, role):
    fuzz_bytes(daemon, role, LONG)


@pytest.mark.slow
@pytest.mark.parametrize("role", list(SOCKETS))
def test_wrong_frames_never_hurt_the_daemon_or_the_connection_long(daemon, role):
    fuzz_frames(daemon, role, LONG)
