"""At-least-once delivery, checked by a hypothesis state machine against a real daemon process.

Rules: send, broadcast, lease, ack, lease expiry, connection drop, daemon restart. Invariants:
no message is lost, none reaches an agent it was not addressed to, none is acked twice, and
attempt counts never go down.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
import tempfile
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, precondition, rule

from protocol import messages as m
from protocol.client import HiveError, SyncClient
from tests.conftest import DaemonProcess

AGENTS = ["ann", "ben", "cat"]
LEASE_SECONDS = 0.4


class DeliveryMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.root = Path(tempfile.mkdtemp(prefix="hvsm", dir="/tmp"))
        config = self.root / "hive.toml"
        config.write_text(
            f"[hive]\nautostart = false\nlease_seconds = {LEASE_SECONDS}\n"
            + "".join(f"[agents.{name}]\n" for name in AGENTS)
        )
        self.daemon = DaemonProcess(self.root, config)
        self.daemon.start()
        self.stacks: dict[str, contextlib.ExitStack] = {}
        self.clients: dict[str, SyncClient] = {}
        self.addressed: dict[int, str] = {}  # message id -> recipient agent
        self.acked: set[int] = set()
        self.attempts: dict[int, int] = {}
        self.held: dict[str, list[tuple[str, int]]] = {name: [] for name in AGENTS}

    def client(self, name: str) -> SyncClient:
        if name not in self.clients:
            stack = contextlib.ExitStack()
            self.clients[name] = stack.enter_context(
                SyncClient.connect(str(self.daemon.paths.agent_sock(name)), timeout=10)
            )
            self.stacks[name] = stack
        return self.clients[name]

    def drop(self, name: str) -> None:
        stack = self.stacks.pop(name, None)
        self.clients.pop(name, None)
        if stack is not None:
            stack.close()
        self.held[name] = []

    # ---------------------------------------------------------------- rules

    @rule(sender=st.sampled_from(AGENTS), to=st.sampled_from([*AGENTS, "*", "operator"]))
    def send(self, sender: str, to: str) -> None:
        if to == sender:
            to = "*"
        sent = self.client(sender).expect(m.Send(to=to, body=f"{sender}->{to}"), m.Sent)
        targets = [a for a in AGENTS if a != sender] if to == "*" else [to]
        assert len(sent.message_ids) == len(targets)
        for mid, target in zip(sent.message_ids, targets, strict=True):
            if target != "operator":
                self.addressed[mid] = target
                self.attempts[mid] = 0

    @rule(name=st.sampled_from(AGENTS), limit=st.integers(1, 4))
    def lease(self, name: str, limit: int) -> None:
        got = self.client(name).expect(m.Recv(max=limit), m.Deliveries)
        for d in got.items:
            mid = d.message.id
            assert self.addressed.get(mid) == name, f"message {mid} leased to the wrong agent"
            assert mid not in self.acked, f"acked message {mid} delivered again"
            assert d.message.attempts > self.attempts[mid], "attempts did not rise"
            self.attempts[mid] = d.message.attempts
            self.held[name].append((d.lease, mid))

    @precondition(lambda self: any(self.held.values()))
    @rule(data=st.data())
    def ack(self, data: st.DataObject) -> None:
        name = data.draw(st.sampled_from([n for n in AGENTS if self.held[n]]))
        lease, mid = self.held[name].pop(data.draw(st.integers(0, len(self.held[name]) - 1)))
        try:
            self.client(name).expect(m.Ack(lease=lease), m.Ok)
        except HiveError as exc:
            assert exc.code == "not_found"  # the lease expired and the message went back
            return
        assert mid not in self.acked, f"message {mid} acked twice"
        self.acked.add(mid)

    @rule()
    def let_leases_expire(self) -> None:
        time.sleep(LEASE_SECONDS + 0.25)

    @rule(name=st.sampled_from(AGENTS))
    def drop_connection(self, name: str) -> None:
        self.drop(name)

    @rule()
    def restart_daemon(self) -> None:
        for name in AGENTS:
            self.drop(name)
        assert self.daemon.stop() == 0
        self.daemon.start()

    # ---------------------------------------------------------------- the end

    def teardown(self) -> None:
        try:
            self.drain_and_check()
        finally:
            for name in AGENTS:
                self.drop(name)
            if self.daemon.proc is not None and self.daemon.proc.poll() is None:
                self.daemon.proc.kill()
                self.daemon.proc.wait(10)
            shutil.rmtree(self.root, ignore_errors=True)

    def drain_and_check(self) -> None:
        for name in AGENTS:
            self.drop(name)  # held leases go back to the queue
        deadline = time.monotonic() + 10
        while len(self.acked) < len(self.addressed) and time.monotonic() < deadline:
            for name in AGENTS:
                self.lease(name, 50)
                while self.held[name]:
                    lease, mid = self.held[name].pop()
                    self.client(name).expect(m.Ack(lease=lease), m.Ok)
                    assert mid not in self.acked
                    self.acked.add(mid)
        assert self.acked == set(self.addressed), "a message was lost"
        with sqlite3.connect(self.daemon.paths.db) as db:
            states = dict(
                db.execute("SELECT id, state FROM messages WHERE recipient != 'operator'")
            )
        assert states == {mid: "acked" for mid in self.addressed}


DeliveryMachine.TestCase.settings = settings(
    max_examples=int(os.environ.get("HIVE_MODEL_EXAMPLES", "4")),  # 60 behind HIVE_SLOW
    stateful_step_count=20,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
# each example restarts daemons (a subprocess each): minutes on a loaded 2-core machine
test_delivery_model = pytest.mark.timeout(600)(DeliveryMachine.TestCase)


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_delivery_model_long() -> None:
    DeliveryMachine.TestCase.settings = settings(
        max_examples=60,
        stateful_step_count=40,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow],
    )
    DeliveryMachine.TestCase().runTest()
