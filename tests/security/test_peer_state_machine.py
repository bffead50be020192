"""A state machine of peers against one real daemon: connections, partial frames and verbs,
mixed on every socket role, with the caps small enough to be hit all the time.

Hypothesis drives a crowd of peers on `admin.sock`, `web.sock`, an agent's and the manager's
socket: it connects (past the per-socket cap the daemon must refuse with `rate_limited`),
says Hello, makes calls of the role's verbs, pipelines bursts, starts frames and finishes
them later (several unfinished at once, within the peer's byte budget), sends framed junk,
announces oversize frames, opens streams, and hangs up. After every step the operator's
own connection must still answer `ping` within a second, every call must be answered with
its id and never `internal`, and the model's count of open connections per socket must be
what the daemon allows. A short run is part of the suite; `HIVE_SLOW=1` runs it for at least
100,000 frames and prints its figures (docs/security.md keeps them).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from protocol import messages as m
from protocol.framing import HEADER, FrameDecoder, encode_frame
from protocol.wire import encode, encode_call
from tests.conftest import DaemonProcess
from tests.security.conftest import daemon_in

MAX_FRAME = 65536
PEER_BUDGET = 4 * MAX_FRAME
CAPS = {"admin": 6, "web": 4, "agent": 5, "manager": 5}
ROLES = tuple(CAPS)
TIMEOUT = 10.0
SLOW = bool(os.environ.get("HIVE_SLOW"))
SLOW_FRAMES = 100_000
HELLO = encode(m.Hello(protocol=m.PROTOCOL_VERSION, client="state-machine"))
said_by_daemon = msgspec.msgpack.Decoder(m.Welcome | m.AnyReply)

TOML = f"""[hive]
autostart = false
max_frame_bytes = {MAX_FRAME}
admin_max_connections = {CAPS["admin"] + 1}
web_max_connections = {CAPS["web"]}
agent_max_connections = {CAPS["agent"]}
peer_buffer_bytes = {PEER_BUDGET}
total_buffer_bytes = {3 * PEER_BUDGET}
recv_max_wait_seconds = 0.2
frame_timeout_seconds = 120
idle_timeout_seconds = 600

[agents.boss]
role = "manager"

[agents.alice]

[agents.bob]
"""
# admin allows one more than the machine may open: the operator's probe connection


def socket_of(daemon: DaemonProcess, role: str) -> Path:
    paths = daemon.paths
    return {
        "admin": paths.admin_sock,
        "web": paths.web_sock,
        "agent": paths.agent_sock("alice"),
        "manager": paths.agent_sock("boss"),
    }[role]


def verbs(role: str) -> st.SearchStrategy[m.Request]:
    """Cheap, side-effect-light verbs of `role` (the fuzz test covers every verb's input)."""
    text = st.text(max_size=40)
    common = [st.just(m.Ping())]
    if role in ("admin", "web"):
        mine = [
            st.just(m.ListAgents()),
            st.just(m.ListApprovals(limit=5)),
            st.builds(m.ListMessages, limit=st.integers(1, 20)),
            st.builds(m.Snapshot, messages=st.integers(0, 10)),
            st.builds(m.ListQuestions),
            st.just(m.GetAgentOpenThreads(agent="alice", limit=5)),
        ]
    else:
        mine = [
            st.just(m.Whoami()),
            st.builds(m.SetStatus, text=text),
            st.builds(m.Send, to=st.sampled_from(["operator", "bob", "nobody"]), body=text),
            st.just(m.ListMyAsks()),
            st.just(m.ListMyReminders()),
            st.just(m.GetOpenThreads(limit=5)),
            st.just(m.Recv(max=1, wait_seconds=0)),
        ]
        if role == "manager":
            mine.append(st.just(m.ReadAgentConfig(agent="alice")))
    return st.one_of(*common, *mine)


@dataclass
class Peer:
    role: str
    sock: socket.socket
    decoder: FrameDecoder = field(default_factory=lambda: FrameDecoder(MAX_FRAME * 4))
    ready: list[bytes] = field(default_factory=list)
    partial: bytes = b""
    """What is still to send of a frame begun."""
    partial_size: int = 0
    partial_id: int = 0
    streaming: bool = False
    ids: int = 10**12  # far from any id a junk body could carry
    early: dict[int, Any] = field(default_factory=dict)
    """Replies read while waiting for another call's (calls run concurrently)."""

    def next_id(self) -> int:
        self.ids += 1
        return self.ids

    def read(self) -> Any | None:
        while not self.ready:
            try:
                data = self.sock.recv(65536)
            except ConnectionResetError:
                data = b""
            if not data:
                return None
            self.ready += self.decoder.feed(data)
        said = said_by_daemon.decode(self.ready.pop(0))
        assert not (isinstance(said, m.Error) and said.code == "internal"), said
        return said

    def answer(self, call_id: int) -> Any:
        """The reply to `call_id` (kept aside: other calls' replies, for their turn)."""
        if call_id in self.early:
            return self.early.pop(call_id)
        while True:
            said = self.read()
            assert said is not None, f"the daemon hung up instead of answering call {call_id}"
            said_id = getattr(said, "id", None)
            if said_id == call_id:
                return said
            if isinstance(said_id, int) and said_id >= 10**12:
                self.early[said_id] = said


class Figures:
    def __init__(self) -> None:
        self.frames = 0
        self.counts: Counter[str] = Counter()
        self.slowest_ping_ms = 0.0

    def report(self, daemon: DaemonProcess) -> dict[str, Any]:
        assert daemon.proc is not None
        status = Path(f"/proc/{daemon.proc.pid}/status").read_text()
        rss = next(
            int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:")
        )
        return {
            "frames": self.frames,
            **dict(self.counts),
            "slowest_admin_ping_ms": round(self.slowest_ping_ms, 1),
            "daemon_rss_mib": round(rss / 1024, 1),
            "daemon_fds": len(os.listdir(f"/proc/{daemon.proc.pid}/fd")),
        }


class Peers(RuleBasedStateMachine):
    daemon: DaemonProcess
    operator: Peer
    figures: Figures

    def __init__(self) -> None:
        super().__init__()
        self.peers: list[Peer] = []

    # ------------------------------------------------------------------ helpers

    def open_count(self, role: str) -> int:
        return sum(1 for p in self.peers if p.role == role)

    def budget_used(self, role: str) -> int:
        return sum(p.partial_size for p in self.peers if p.role == role and p.partial)

    def send(self, peer: Peer, data: bytes, frames: int = 1) -> None:
        peer.sock.sendall(data)
        self.figures.frames += frames

    def hang_up(self, peer: Peer) -> None:
        """Close, and wait for the daemon to close its end: then it has counted us out."""
        self.peers.remove(peer)
        try:
            peer.sock.shutdown(socket.SHUT_WR)
            while peer.read() is not None:
                pass
        except OSError:
            pass
        peer.sock.close()

    # ------------------------------------------------------------------ rules

    @initialize()
    def start(self) -> None:
        self.figures.counts["examples"] += 1

    @rule(role=st.sampled_from(ROLES))
    def connect(self, role: str) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(TIMEOUT)
        sock.connect(str(socket_of(self.daemon, role)))
        peer = Peer(role, sock)
        self.figures.counts["connections"] += 1
        with contextlib.suppress(OSError):  # refused before our Hello was in: read the answer
            self.send(peer, HELLO)
        first = peer.read()
        full = self.open_count(role) >= CAPS[role]
        if full:
            assert isinstance(first, m.Error) and first.code == "rate_limited", first
            assert "too many connections" in first.message
            assert peer.read() is None  # and closed
            sock.close()
            self.figures.counts["refused"] += 1
            return
        assert isinstance(first, m.Welcome), first
        self.peers.append(peer)

    @precondition(lambda self: any(not p.partial for p in self.peers))
    @rule(data=st.data())
    def call(self, data: st.DataObject) -> None:
        peer = data.draw(st.sampled_from([p for p in self.peers if not p.partial]), "peer")
        req = data.draw(verbs(peer.role), "verb")
        call_id = peer.next_id()
        self.send(peer, encode_call(call_id, req, MAX_FRAME))
        reply = peer.answer(call_id)
        self.figures.counts["calls"] += 1
        assert isinstance(reply, m.Reply)

    @precondition(lambda self: any(not p.partial for p in self.peers))
    @rule(data=st.data(), count=st.integers(2, 50))
    def burst(self, data: st.DataObject, count: int) -> None:
        """Many calls in one write; every one answered."""
        peer = data.draw(st.sampled_from([p for p in self.peers if not p.partial]), "peer")
        ids = [peer.next_id() for _ in range(count)]
        self.send(peer, b"".join(encode_call(i, m.Ping()) for i in ids), frames=count)
        answered = {peer.answer(i).id for i in ids}
        assert answered == set(ids)
        self.figures.counts["calls"] += count

    @precondition(lambda self: any(not p.partial for p in self.peers))
    @rule(data=st.data(), size=st.integers(8, MAX_FRAME), sent=st.floats(0.0, 0.99))
    def begin_frame(self, data: st.DataObject, size: int, sent: float) -> None:
        """Send part of a frame of `size` bytes (a padded call; the pad is refused when
        the frame is finished), staying within the peer's byte budget."""
        candidates = [
            p
            for p in self.peers
            if not p.partial and self.budget_used(p.role) + size + 4 + 8192 <= PEER_BUDGET
        ]
        if not candidates:
            return
        peer = data.draw(st.sampled_from(candidates), "peer")
        call_id = peer.next_id()
        body = msgspec.msgpack.encode({"id": call_id, "req": {"op": "ping"}, "pad": ""})
        body = msgspec.msgpack.encode(
            {"id": call_id, "req": {"op": "ping"}, "pad": "x" * max(0, size - len(body) - 4)}
        )
        frame = HEADER.pack(len(body)) + body
        cut = max(1, int(len(frame) * sent))
        peer.sock.sendall(frame[:cut])
        peer.partial, peer.partial_size, peer.partial_id = frame[cut:], len(frame), call_id
        self.figures.counts["frames_begun"] += 1

    @precondition(lambda self: any(p.partial for p in self.peers))
    @rule(data=st.data())
    def finish_frame(self, data: st.DataObject) -> None:
        peer = data.draw(st.sampled_from([p for p in self.peers if p.partial]), "peer")
        self.send(peer, peer.partial)
        peer.partial = b""
        said = peer.answer(peer.partial_id)
        assert isinstance(said, m.Error) and said.code == "invalid", said  # the pad, named
        self.figures.counts["frames_finished"] += 1

    @precondition(lambda self: any(not p.partial for p in self.peers))
    @rule(data=st.data(), junk=st.binary(max_size=64))
    def junk(self, data: st.DataObject, junk: bytes) -> None:
        """A framed body that is not a call: a typed error, and the connection goes on."""
        peer = data.draw(st.sampled_from([p for p in self.peers if not p.partial]), "peer")
        call_id = peer.next_id()
        self.send(peer, encode_frame(junk) + encode_call(call_id, m.Ping()), frames=2)
        reply = peer.answer(call_id)
        assert isinstance(reply, m.Pong), reply
        self.figures.counts["junk"] += 1

    @precondition(lambda self: any(not p.partial for p in self.peers))
    @rule(data=st.data())
    def oversize(self, data: st.DataObject) -> None:
        """A length over the limit: `too_large`, and the connection is closed."""
        peer = data.draw(st.sampled_from([p for p in self.peers if not p.partial]), "peer")
        self.send(peer, HEADER.pack(MAX_FRAME + 1))
        while True:
            said = peer.read()
            assert said is not None, "closed without saying why"
            if isinstance(said, m.Error) and said.id == 0:
                break
        assert said.code == "too_large", said
        assert peer.read() is None
        self.peers.remove(peer)
        peer.sock.close()
        self.figures.counts["oversize"] += 1

    @precondition(lambda self: any(not p.partial and not p.streaming for p in self.peers))
    @rule(data=st.data())
    def stream(self, data: st.DataObject) -> None:
        peer = data.draw(
            st.sampled_from([p for p in self.peers if not p.partial and not p.streaming]), "peer"
        )
        req: m.Request = (
            m.Subscribe(kinds=["note"]) if peer.role in ("admin", "web") else m.WaitForControl()
        )
        self.send(peer, encode_call(peer.next_id(), req))
        peer.streaming = True
        self.figures.counts["streams"] += 1

    @precondition(lambda self: self.peers)
    @rule(data=st.data())
    def hang_up_one(self, data: st.DataObject) -> None:
        self.hang_up(data.draw(st.sampled_from(self.peers), "peer"))

    # ------------------------------------------------------------------ invariants

    @invariant()
    def operator_is_answered(self) -> None:
        start = time.monotonic()
        call_id = self.operator.next_id()
        self.operator.sock.sendall(encode_call(call_id, m.Ping()))
        assert isinstance(self.operator.answer(call_id), m.Pong)
        took = (time.monotonic() - start) * 1000
        self.figures.slowest_ping_ms = max(self.figures.slowest_ping_ms, took)
        assert took < 1000, f"the operator waited {took:.0f} ms"

    @invariant()
    def daemon_is_alive(self) -> None:
        assert self.daemon.proc is not None and self.daemon.proc.poll() is None

    def teardown(self) -> None:
        for peer in list(self.peers):
            self.hang_up(peer)


@pytest.fixture
def crowd(open_tmp: Path, daemons: list[DaemonProcess]) -> tuple[DaemonProcess, Peer]:
    daemon = daemon_in(open_tmp, TOML)
    daemons.append(daemon)
    daemon.start()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(TIMEOUT)
    sock.connect(str(daemon.paths.admin_sock))
    operator = Peer("admin", sock)
    sock.sendall(HELLO)
    assert isinstance(operator.read(), m.Welcome)
    return daemon, operator


def run(crowd: tuple[DaemonProcess, Peer], examples: int, steps: int) -> Figures:
    daemon, operator = crowd
    Peers.daemon, Peers.operator, Peers.figures = daemon, operator, Figures()
    fds_before = len(os.listdir(f"/proc/{daemon.proc.pid}/fd")) if daemon.proc else 0
    run_state_machine_as_test(
        Peers,
        settings=settings(
            max_examples=examples,
            stateful_step_count=steps,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            database=None,
        ),
    )
    figures = Peers.figures
    log = daemon.log()
    assert "Traceback" not in log and "internal error" not in log
    report = figures.report(daemon)
    print(json.dumps(report, indent=1))
    assert report["daemon_fds"] <= fds_before + 2, "connections leaked fds"
    return figures


def test_a_crowd_of_peers_on_every_socket(crowd):
    run(crowd, examples=15, steps=40)


@pytest.mark.slow
def test_a_crowd_of_peers_for_100k_frames(crowd):
    examples = 0
    total = Figures()
    start = time.monotonic()
    while total.frames < SLOW_FRAMES:
        figures = run(crowd, examples=100, steps=100)
        examples += 100
        total.frames += figures.frames
        total.counts.update(figures.counts)
        total.slowest_ping_ms = max(total.slowest_ping_ms, figures.slowest_ping_ms)
    report = {**total.report(crowd[0]), "seconds": round(time.monotonic() - start)}
    print("STATE MACHINE FIGURES", json.dumps(report))
    assert total.frames >= SLOW_FRAMES
    assert total.counts["refused"] > 0 and total.counts["frames_finished"] > 0
