"""`subscribe_agent_status` while real agents (bwrap sandboxes, scripted runtime) start, work,
stop, pause and restart under a daemon running as its own process: every push is one line
holding one changed row, compared field by field. And under a real `hive up`, the links
host.sock gives open each agent's dashboard page."""

from __future__ import annotations

import http.cookiejar
import json
import shutil
import socket
import sys
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from protocol import messages as m
from protocol.client import HiveClient
from tests.c0re_priv.host_lines import ROW_FIELDS, TIME, HostLines, compare, ok, row
from tests.conftest import DaemonProcess

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from hive_up import LINK, HiveUp, remove, soak_dir  # bench/ is not a package

pytestmark = pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap not installed")

WEB = "https://hive.example.org/"
RULES = """
[[rule]]
from = "operator"
match = '^status (?P<text>.*)'
tool = "set_status"
args = { text = "{text}" }

[[rule]]
from = "operator"
match = '^remind (?P<text>.*)'
tool = "remind"
args = { body = "{text}", in_seconds = 3600 }
"""


@pytest.fixture
def daemon(short_tmp: Path) -> Iterator[DaemonProcess]:
    rules = short_tmp / "rules.toml"
    rules.write_text(RULES)
    rules.chmod(0o644)
    short_tmp.chmod(0o755)  # the sandboxed agent reads its rules from here
    config_file = short_tmp / "hive.toml"
    config_file.write_text(
        f'[hive]\nautostart = false\nweb_url = "{WEB}"\n\n'
        '[agents.boss]\nrole = "manager"\n\n'
        f'[agents.alice]\nrules = "{rules}"\n\n[agents.bob]\n'
    )
    d = DaemonProcess(short_tmp, config_file)
    d.start()
    try:
        yield d
    finally:
        if d.proc is not None and d.proc.poll() is None:
            d.stop()


def live(name: str, **fields: Any) -> dict[str, Any]:
    return row(name, url=f"{WEB}agent/{name}/", **fields)


class Feed:
    """One subscribed connection, and the last row it was sent for each agent."""

    def __init__(self, sub: HostLines) -> None:
        self.sub = sub
        self.seen: dict[str, dict[str, Any]] = {}

    async def until(
        self, done: Callable[[dict[str, dict[str, Any]]], bool], timeout: float = 60.0
    ) -> list[dict[str, Any]]:
        """Read pushes until `done(seen)`; each must be one well-formed row that changed."""
        pushed: list[dict[str, Any]] = []
        while not done(self.seen):
            push = await self.sub.response(timeout)
            assert list(push) == ["version", "ok", "error", "agent_statuses"], push
            assert (push["version"], push["ok"], push["error"]) == (1, True, None), push
            (one,) = push["agent_statuses"]
            assert tuple(one) == ROW_FIELDS, one
            assert one != self.seen.get(one["name"]), "a push must carry a change"
            self.seen[one["name"]] = one
            pushed.append(one)
        return pushed


async def poll_until(
    ctl: HostLines, done: Callable[[dict[str, dict[str, Any]]], bool], timeout: float = 60.0
) -> dict[str, dict[str, Any]]:
    """Ask `agent_status` until `done(rows by name)`, as a polling client does."""
    with trio.fail_after(timeout):
        while True:
            status = await ctl.ask({"cmd": "agent_status"})
            by_name = {r["name"]: r for r in status["agent_statuses"]}
            if done(by_name):
                return by_name
            await trio.sleep(0.1)


def get(seen: dict[str, dict[str, Any]], name: str, key: str) -> Any:
    return seen.get(name, {}).get(key)


async def test_subscribers_see_real_agents_start_work_stop_pause_and_restart(daemon):
    sock = str(daemon.paths.host_sock)
    sub = await HostLines.connect(sock)
    compare(await sub.ask({"cmd": "subscribe_agent_status"}), ok())
    feed = Feed(sub)
    ctl = await HostLines.connect(sock)
    async with HiveClient.connect(str(daemon.paths.admin_sock), client="test-operator") as op:
        # ---- start: alice comes up; nobody else changed, so nobody else is pushed
        compare(await ctl.ask({"cmd": "start", "scope": {"agent_names": ["alice"]}}), ok())
        pushed = await feed.until(
            lambda r: (
                get(r, "alice", "running") is True and get(r, "alice", "active_model") is not None
            )  # its harness has reported in
        )
        assert {p["name"] for p in pushed} == {"alice"}
        model = "scripted"
        compare(feed.seen["alice"], live("alice", running=True, active_model=model))

        # ---- work: the agent sets its status and a reminder through its own MCP tools
        await op.expect(m.OperatorSend(to="alice", body="status reviewing PR 12"), m.Sent)
        await feed.until(lambda r: get(r, "alice", "status_text") is not None)
        working = live(
            "alice",
            running=True,
            active_model=model,
            status_text="reviewing PR 12",
            status_set_at=TIME,
        )
        compare(feed.seen["alice"], working)
        working["status_set_at"] = feed.seen["alice"]["status_set_at"]
        sent = await op.expect(m.OperatorSend(to="alice", body="remind look at it again"), m.Sent)
        await feed.until(lambda r: get(r, "alice", "pending_reminders") == 1)
        working["pending_reminders"] = 1
        compare(feed.seen["alice"], working)
        # the turn's ack comes after its reminder: stopped before it, alice would get the
        # message again after her restart (at least once) and set a second reminder
        with trio.fail_after(30):
            while True:
                got = await op.expect(m.ListMessages(agent="alice", limit=10), m.Messages)
                if any(r.id in sent.message_ids and r.state == "acked" for r in got.messages):
                    break
                await trio.sleep(0.05)

        # ---- a second subscriber hears only what changes after it subscribed
        late_sub = await HostLines.connect(sock)
        compare(await late_sub.ask({"cmd": "subscribe_agent_status"}), ok())
        late = Feed(late_sub)

        # ---- stop: not running, so its status line is hidden; the reminder stays
        stop_alice = {"cmd": "stop", "scope": {"agent_names": ["alice"]}, "graceful": False}
        compare(await ctl.ask(stop_alice), ok())
        stopped = live("alice", active_model=model, pending_reminders=1)
        for f in (feed, late):
            await f.until(lambda r: get(r, "alice", "running") is False)
            compare(f.seen["alice"], stopped)
        assert list(late.seen) == ["alice"]

        # ---- pause and unpause (autostart is off, so unpausing does not start it)
        compare(await ctl.ask({"cmd": "set_paused", "name": "alice", "paused": True}), ok())
        await feed.until(lambda r: get(r, "alice", "paused") is True)
        compare(feed.seen["alice"], {**stopped, "paused": True})
        compare(await ctl.ask({"cmd": "set_paused", "name": "alice", "paused": False}), ok())
        await feed.until(lambda r: get(r, "alice", "paused") is False)
        compare(feed.seen["alice"], stopped)

        # ---- two agents at once; alice's status line shows again once she runs
        both = {"agent_names": ["alice", "bob"]}
        compare(await ctl.ask({"cmd": "start", "scope": both}), ok())
        await feed.until(
            lambda r: (
                get(r, "alice", "running") is True
                and get(r, "bob", "running") is True
                and get(r, "bob", "active_model") is not None
            )
        )
        compare(feed.seen["alice"], working)
        bob = live("bob", running=True, active_model=model)
        compare(feed.seen["bob"], bob)

        # ---- restart: the pushes in between may be coalesced; the roster says it is back
        compare(await ctl.ask({"cmd": "restart", "name": "bob"}), ok())
        by_name = await poll_until(ctl, lambda r: r["bob"]["running"] is True)
        compare(by_name["bob"], bob)
        compare(by_name["boss"], live("boss"))
        assert "boss" not in feed.seen  # never changed, never pushed

        # ---- a subscriber that hangs up is let go; the others keep being served
        await late_sub.aclose()
        compare(await ctl.ask({"cmd": "stop", "scope": both, "graceful": False}), ok())
        await feed.until(
            lambda r: get(r, "alice", "running") is False and get(r, "bob", "running") is False
        )
        status = await ctl.ask({"cmd": "agent_status"})
        for r in status["agent_statuses"]:
            if r["name"] in feed.seen:
                compare(r, feed.seen[r["name"]])  # what a poller sees is what was pushed last
        # a subscribed connection reads no further requests: this line is never answered
        await sub.write(b'{"cmd":"list"}\n')
        compare(await ctl.ask({"cmd": "set_paused", "name": "bob", "paused": True}), ok())
        await feed.until(lambda r: get(r, "bob", "paused") is True)
    await sub.aclose()
    await ctl.aclose()
    assert daemon.stop() == 0
    assert "Traceback" not in daemon.log()


def test_under_hive_up_the_links_open_each_agents_dashboard_page() -> None:
    """`hive up` serves the dashboard, so it tells host.sock where: the links work."""
    root = soak_dir("hostup")
    up = HiveUp(root, config_text="[hive]\nautostart = false\n\n[agents.alice]\n")
    try:
        up.start()
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(30)
            s.connect(str(up.run_dir / "host.sock"))
            s.sendall(b'{"cmd":"urls"}\n{"cmd":"agent_status"}\n')
            buffer = b""
            while buffer.count(b"\n") < 2:
                buffer += s.recv(65536)
        urls, status = (json.loads(line) for line in buffer.splitlines())
        home = up.dashboard() + "/"
        assert home.startswith("http://127.0.0.1:")
        compare(urls, ok(urls={"domain": "127.0.0.1", "home": home}))
        page = status["agent_statuses"][0]["url"]
        assert page == f"{home}agent/alice/"

        found = LINK.search(up.log())
        assert found is not None
        browser = urllib.request.build_opener(
            urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar())
        )
        with browser.open(found.group(0), timeout=10) as r:  # the one-time login link
            assert r.status == 200
        with browser.open(page, timeout=10) as r:
            assert r.status == 200 and "alice" in r.read().decode()
    finally:
        up.stop()
        remove(root)
