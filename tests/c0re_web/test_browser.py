"""The dashboard in a real browser, against a real `hive web` and a real daemon.

One module-wide setup: a daemon subprocess, `hive web` started the way root starts it (it
drops to `hive-web`), and one Chromium. Agents act through their own sockets, as a harness
would; the page must show what they do without being reloaded.
"""

from __future__ import annotations

import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from playwright.sync_api import Browser, BrowserContext, Page, expect, sync_playwright

from c0re_web.privileges import WEB_USER, ensure_user
from protocol import messages as m
from protocol.client import SyncClient
from tests.conftest import DaemonProcess

CHROMIUM = "/usr/bin/chromium"
LINK = re.compile(r"(http://\S+)/login\?token=\S+")
pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs Debian's chromium")


@dataclass
class WebHive:
    daemon: DaemonProcess
    web: subprocess.Popen[str]
    lines: queue.Queue[str]
    base: str
    unused: str | None
    """The link printed at start, until a test logs in with it."""

    def new_link(self) -> str:
        """A one-time login link: the one printed at start, then fresh ones (SIGUSR1)."""
        if self.unused is not None:
            link, self.unused = self.unused, None
            return link
        self.web.send_signal(signal.SIGUSR1)
        return self.next_link()

    def next_link(self, timeout: float = 20) -> str:
        while True:
            line = self.lines.get(timeout=timeout)
            if found := LINK.search(line):
                return found.group(0)

    def agent(self, name: str) -> SyncClient:
        return SyncClient.connect(str(self.daemon.paths.agent_sock(name)), timeout=10)

    def admin(self) -> SyncClient:
        return SyncClient.connect(str(self.daemon.paths.admin_sock), timeout=10)


@contextmanager
def web_hive(
    hive_toml: str,
    files: Mapping[str, str] | None = None,
    web_args: tuple[str, ...] = (),
    web_wrapper: tuple[str, ...] = (),
) -> Iterator[WebHive]:
    """A daemon subprocess configured by `hive_toml` (`web_group` is added, `@ROOT@` is its
    scratch directory, where `files` are written first), and `hive web` (with `web_args`,
    under `web_wrapper` such as `prlimit …`) started the way root starts it."""
    root = Path(tempfile.mkdtemp(prefix="hw", dir="/tmp"))
    os.chmod(root, 0o755)  # the web user must reach run/web.sock
    web_group = ""
    if os.geteuid() == 0:
        ensure_user(WEB_USER)
        web_group = WEB_USER
    config = root / "hive.toml"
    config.write_text(
        hive_toml.replace("[hive]\n", f'[hive]\nweb_group = "{web_group}"\n', 1).replace(
            "@ROOT@", str(root)
        )
    )
    for name, text in (files or {}).items():
        (root / name).write_text(text)
        (root / name).chmod(0o644)
    daemon = DaemonProcess(root, config)
    daemon.start()
    web_log = open(root / "web.log", "w")  # noqa: SIM115 - owned by the child
    web = subprocess.Popen(
        [
            *web_wrapper,
            sys.executable,
            "-m",
            "c0re_web",
            "web",
            "--run-dir",
            str(root / "run"),
            "--bind",
            "127.0.0.1:0",
            *web_args,
        ],
        stdout=subprocess.PIPE,
        stderr=web_log,
        text=True,
    )
    lines: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        assert web.stdout is not None
        for line in web.stdout:
            lines.put(line)

    threading.Thread(target=pump, daemon=True).start()
    try:
        hive = WebHive(daemon, web, lines, "", None)
        hive.unused = hive.next_link()
        found = LINK.search(hive.unused)
        assert found is not None
        hive.base = found.group(1)
        yield hive
    except queue.Empty:
        raise RuntimeError(f"hive web printed no link: {(root / 'web.log').read_text()}") from None
    finally:
        web.terminate()
        try:
            web.wait(15)
        except subprocess.TimeoutExpired:
            web.kill()
        web_log.close()
        problems = [
            line
            for line in (root / "web.log").read_text().splitlines()
            if "Traceback" in line or " ERROR " in line
        ]
        if daemon.proc is not None and daemon.proc.poll() is None:
            daemon.proc.send_signal(signal.SIGTERM)  # its sandboxes end with it
            try:
                daemon.proc.wait(30)
            except subprocess.TimeoutExpired:
                daemon.proc.kill()
                daemon.proc.wait(10)
        shutil.rmtree(root, ignore_errors=True)
    assert problems == [], "the web process logged errors"


@pytest.fixture(scope="module")
def hive_web() -> Iterator[WebHive]:
    with web_hive(
        '[hive]\nautostart = false\nbackend = "process"\nmax_restarts = 1000\n\n'
        '[agents.boss]\nrole = "manager"\n\n'
        '[agents.alice]\n\n[agents.bob]\n\n[agents.carol]\n\n[agents.dave]\nruntime = "claude"\n'
    ) as hive:
        yield hive


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as p:
        b = p.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
            ],
        )
        yield b
        b.close()


@pytest.fixture(scope="module")
def operator(hive_web: WebHive, browser: Browser) -> Iterator[BrowserContext]:
    """A browser context logged in through a one-time link."""
    context = browser.new_context()
    page = context.new_page()
    page.goto(hive_web.new_link())
    expect(page.locator("#agents")).to_contain_text("alice")
    page.close()
    yield context
    context.close()


@pytest.fixture
def page(operator: BrowserContext) -> Iterator[Page]:
    errors: list[str] = []
    p = operator.new_page()
    p.on("pageerror", lambda exc: errors.append(str(exc)))
    p.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    yield p
    p.close()
    assert errors == []


def open_live(page: Page, url: str) -> None:
    page.goto(url)
    expect(page.locator("#live-status")).to_have_text("live")
    page.evaluate("window.__loadedOnce = true")


def not_reloaded(page: Page) -> bool:
    return bool(page.evaluate("window.__loadedOnce === true"))


# ------------------------------------------------------------------ privilege separation


def test_the_web_process_does_not_run_as_root(hive_web):
    status = Path(f"/proc/{hive_web.web.pid}/status").read_text()
    uids = re.search(r"^Uid:\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)$", status, re.M)
    gids = re.search(r"^Gid:\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)$", status, re.M)
    groups = re.search(r"^Groups:(.*)$", status, re.M)
    assert uids is not None and gids is not None and groups is not None
    assert "0" not in uids.groups() and "0" not in gids.groups()
    assert "0" not in groups.group(1).split()


# ------------------------------------------------------------------ login


def test_the_login_link_sets_a_strict_http_only_session_and_works_once(hive_web, browser):
    link = hive_web.new_link()
    context = browser.new_context()
    try:
        p = context.new_page()
        p.goto(link)
        assert p.url == f"{hive_web.base}/"
        (cookie,) = context.cookies()
        assert (cookie["httpOnly"], cookie["sameSite"]) == (True, "Strict")
        p.goto(link)  # the same link again: already used; the session still stands
        assert p.url == f"{hive_web.base}/login?" + link.split("?", 1)[1]
        fresh = browser.new_context()
        response = fresh.new_page().goto(link)
        assert response is not None and response.status == 401
        fresh.close()
    finally:
        context.close()


def test_an_ended_or_forged_session_goes_back_to_login(hive_web, browser):
    context = browser.new_context()
    try:
        p = context.new_page()
        p.goto(hive_web.new_link())
        expect(p.locator("#live-status")).to_have_text("live")
        (cookie,) = context.cookies()
        p.get_by_role("button", name="Log out").click()
        expect(p).to_have_url(f"{hive_web.base}/login")
        response = p.goto(f"{hive_web.base}/")
        assert response is not None and response.status == 401
        expect(p.locator("#login")).to_contain_text("session has ended")
        context.add_cookies(
            [{"name": cookie["name"], "value": "forged.value.sig", "url": hive_web.base}]
        )
        assert p.goto(f"{hive_web.base}/agent/alice/").status == 401  # type: ignore[union-attr]
    finally:
        context.close()


def test_two_hives_on_one_host_keep_their_own_sessions_in_one_browser(hive_web, browser):
    """A browser keeps cookies per host name, not per port: both dashboards are on 127.0.0.1,
    and logging in to the second must not log the operator out of the first."""
    with web_hive('[hive]\nautostart = false\nbackend = "process"\n\n[agents.erin]\n') as other:
        assert other.base != hive_web.base
        context = browser.new_context()
        try:
            first = context.new_page()
            first.goto(hive_web.new_link())
            expect(first.locator("#live-status")).to_have_text("live")
            second = context.new_page()
            second.goto(other.new_link())
            expect(second.locator("#live-status")).to_have_text("live")
            assert len({c["name"] for c in context.cookies()}) == 2
            for p, hive, agent in ((first, hive_web, "alice"), (second, other, "erin")):
                response = p.goto(f"{hive.base}/agent/{agent}/")
                assert response is not None and response.status == 200, agent
                response = p.goto(f"{hive.base}/")
                assert response is not None and response.status == 200, agent
                expect(p.locator("#live-status")).to_have_text("live")
            with hive_web.agent("bob") as bob:
                bob.expect(m.Send(to="operator", body="the first hive, still live"), m.Sent)
            expect(first.locator("#flow")).to_contain_text("the first hive, still live")
            expect(second.locator("#flow")).not_to_contain_text("the first hive")
            # logging out of one leaves the other
            second.get_by_role("button", name="Log out").click()
            expect(second).to_have_url(f"{other.base}/login")
            response = first.goto(f"{hive_web.base}/")
            assert response is not None and response.status == 200
        finally:
            context.close()


def test_a_post_from_another_origin_is_refused(hive_web, operator):
    (cookie,) = operator.cookies()
    session = f"{cookie['name']}={cookie['value']}"

    def post(headers: dict[str, str]) -> int:
        req = urllib.request.Request(
            f"{hive_web.base}/api/send",
            data=b"to=bob&body=from+elsewhere",
            headers={
                "Cookie": session,
                "Content-Type": "application/x-www-form-urlencoded",
                **headers,
            },
            method="POST",
        )
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                return int(r.status)
        except urllib.error.HTTPError as exc:
            return exc.code

    assert post({"Origin": "http://evil.example"}) == 403
    assert post({}) == 403
    assert post({"Origin": hive_web.base}) == 200


# ------------------------------------------------------------------ live dashboard


def test_an_agent_message_and_the_operator_reply_appear_without_a_reload(hive_web, page):
    open_live(page, f"{hive_web.base}/")
    with hive_web.agent("alice") as alice:
        (mid,) = alice.expect(
            m.Send(to="operator", body="build is green <b>ok</b>"), m.Sent
        ).message_ids
    msg = page.locator(f"#msg-{mid}")
    expect(msg).to_contain_text("build is green <b>ok</b>")  # shown as text, not markup
    msg.get_by_role("button", name="reply").click()
    page.locator("#composer textarea").fill("thanks, ship it")
    page.locator("#composer").get_by_role("button", name="Send").click()
    expect(page.locator("#toasts")).to_contain_text("sent to alice")
    reply = page.locator(f"#conv-{mid} .msg.depth-1")
    expect(reply).to_contain_text("thanks, ship it")
    assert not_reloaded(page)
    with hive_web.agent("alice") as alice:
        got = alice.expect(m.Recv(max=10), m.Deliveries).items
        assert [(d.message.body, d.message.in_reply_to) for d in got] == [("thanks, ship it", mid)]
        alice.expect(m.Ack(lease=got[0].lease), m.Ok)
    expect(reply.locator(".chip.state-acked")).to_have_text("delivered")


def test_answering_a_question_from_its_card(hive_web, page):
    open_live(page, f"{hive_web.base}/")
    with hive_web.agent("bob") as bob:
        asked = bob.expect(
            m.Ask(target="operator", question="Deploy now?", options=["yes", "no"]), m.Asked
        )
        card = page.locator(f"#question-{asked.question_id}")
        expect(card).to_contain_text("Deploy now?")
        expect(page.locator("#agent-bob .open-threads")).to_have_text("1 open")
        card.get_by_role("button", name="yes").click()
        expect(card).to_have_count(0)
        expect(page.locator("#toasts")).to_contain_text(f"answered #{asked.question_id}: yes")
        expect(page.locator("#agent-bob .open-threads")).to_have_text("0 open")
        answers = bob.expect(m.Recv(max=10), m.Deliveries).items
    answer = [d.message for d in answers if d.message.kind == "answer"]
    assert [(a.question_id, a.body.endswith("yes")) for a in answer] == [(asked.question_id, True)]
    assert not_reloaded(page)


def mark_fields(page: Page) -> None:
    """Tag every form field on the page, to tell a redrawn one (untagged) from the same one."""
    page.evaluate(
        "() => document.querySelectorAll('input, textarea').forEach(e => e.dataset.old = '1')"
    )


def test_a_live_redraw_keeps_what_the_operator_is_typing(hive_web, page):
    """A live update redraws whole cards and sections: an approval note half typed, an answer
    being written with a box ticked, a token being pasted on an agent's page all survive it,
    with the focus and the cursor. (Before, the note vanished: CI once denied a request
    without the note the test had typed, because the approvals were redrawn in between.)"""
    open_live(page, f"{hive_web.base}/")
    with hive_web.agent("boss") as boss:
        first = boss.expect(
            m.RequestSpawn(name="gina", role_description="tests"), m.ApprovalInfo
        ).approval
    note = page.locator(f"#approval-{first.id} input[name=note]")
    note.click()
    page.keyboard.type("half a no")
    with hive_web.agent("bob") as bob:
        asked = bob.expect(
            m.Ask(target="operator", question="Which?", options=["red", "blue"], multi=True),
            m.Asked,
        )
    card = page.locator(f"#question-{asked.question_id}")
    card.get_by_label("blue").check()
    card.locator("input[name=answer]").fill("and green")
    diff = page.locator(f"#approval-{first.id} details.diff")
    diff.locator("summary").click()
    expect(diff.locator(".diff-body")).not_to_contain_text("loading")
    note.click()
    note.press("End")
    mark_fields(page)
    with hive_web.agent("boss") as boss:  # both sections are redrawn
        second = boss.expect(
            m.RequestSpawn(name="hank", role_description="docs"), m.ApprovalInfo
        ).approval
    with hive_web.agent("carol") as carol:
        carol.expect(m.Ask(target="operator", question="Ship?"), m.Asked)
    expect(page.locator(f"#approval-{second.id}")).to_be_visible()
    expect(page.locator("#questions")).to_contain_text("Ship?")
    expect(note).not_to_have_attribute("data-old", "1")  # a new element
    expect(note).to_have_value("half a no")
    expect(card.get_by_label("blue")).to_be_checked()
    expect(card.get_by_label("red")).not_to_be_checked()
    expect(card.locator("input[name=answer]")).to_have_value("and green")
    expect(diff).to_have_attribute("open", "")  # the diff the operator opened stays open
    expect(diff.locator(".diff-body")).not_to_contain_text("loading")
    page.keyboard.type("te")  # still focused, the cursor at the end
    expect(note).to_have_value("half a note")
    page.locator(f"#approval-{first.id}").get_by_role("button", name="Deny").click()
    expect(page.locator(f"#approval-{first.id} .note")).to_have_text("note: half a note")
    # a limit being set while turns redraw the spending table (and its form) under it
    form = page.locator("#budget form.set-limit")
    form.locator("select[name=who]").select_option("each_agent")
    form.locator("select[name=key]").select_option("tokens_total")
    form.locator("input[name=value]").fill("5000")
    mark_fields(page)
    with hive_web.agent("alice") as alice:
        alice.expect(m.ReportTurn(turn=m.TurnStats(ok=True, input_tokens=777)), m.Ok)
    expect(page.locator("#usage-alice")).to_contain_text("777")
    expect(form.locator("input[name=value]")).not_to_have_attribute("data-old", "1")
    expect(form.locator("select[name=who]")).to_have_value("each_agent")
    expect(form.locator("select[name=key]")).to_have_value("tokens_total")
    expect(form.locator("input[name=value]")).to_have_value("5000")
    # an agent's head, redrawn while a token is being pasted
    open_live(page, f"{hive_web.base}/agent/dave/")
    token = page.locator("#agent-head-dave input[name=token]")
    token.fill("sk-ant-oat01-half")
    mark_fields(page)
    with hive_web.agent("dave") as dave:
        dave.expect(m.SetStatus(text="thinking it over"), m.Ok)
    expect(page.locator("#agent-head-dave")).to_contain_text("thinking it over")
    expect(token).not_to_have_attribute("data-old", "1")
    expect(token).to_have_value("sk-ant-oat01-half")
    with hive_web.admin() as admin:
        admin.expect(m.Deny(id=second.id, note="not now"), m.ApprovalInfo)


def test_pause_and_unpause_change_the_row_in_place(hive_web, page):
    open_live(page, f"{hive_web.base}/")
    row = page.locator("#agent-bob")
    expect(row.locator(".status")).to_have_text("stopped")
    row.get_by_role("button", name="Pause").click()
    expect(row.locator(".status")).to_have_text("paused")
    expect(page.locator("#toasts")).to_contain_text("bob paused")
    with hive_web.admin() as admin:
        assert admin.expect(m.AgentStatus(name="bob"), m.AgentInfo).agent.paused
    row.get_by_role("button", name="Unpause").click()
    expect(row.locator(".status")).to_have_text("stopped")
    expect(row.get_by_role("button", name="Start")).to_be_visible()
    assert not_reloaded(page)


def test_destroy_asks_once_before_it_fires(hive_web, page):
    open_live(page, f"{hive_web.base}/")
    row = page.locator("#agent-carol")
    page.once("dialog", lambda dialog: dialog.dismiss())
    row.get_by_role("button", name="Destroy").click()
    page.wait_for_timeout(300)
    expect(row).to_be_visible()
    with hive_web.admin() as admin:
        assert "carol" in [a.name for a in admin.expect(m.ListAgents(), m.Agents).agents]
    asked: list[str] = []

    def accept(dialog) -> None:  # type: ignore[no-untyped-def]
        asked.append(dialog.message)
        dialog.accept()

    page.once("dialog", accept)
    row.get_by_role("button", name="Destroy").click()
    expect(row).to_have_count(0)
    assert len(asked) == 1 and "tombstone" in asked[0]
    with hive_web.admin() as admin:
        assert "carol" not in [a.name for a in admin.expect(m.ListAgents(), m.Agents).agents]


# ------------------------------------------------------------------ the per-agent page


def test_the_agent_page_shows_its_files_and_follows_its_inbox(hive_web, page):
    state = hive_web.daemon.paths.agents_root / "alice" / "state"
    (state / "notes").mkdir(exist_ok=True)
    (state / "notes" / "plan.md").write_text("step one\nstep two\n")
    os.chmod(state / "notes", 0o755)  # readable whatever the umask (CI runs with 077)
    os.chmod(state / "notes" / "plan.md", 0o644)
    (state / "secret").write_text("hidden")
    os.chmod(state / "secret", 0o600)
    open_live(page, f"{hive_web.base}/agent/alice/")
    files = page.locator("#files-alice")
    files.get_by_role("link", name="notes/").click()
    files.get_by_role("link", name="plan.md").click()
    expect(page.locator("#viewer-alice pre")).to_have_text("step one\nstep two\n")
    expect(files.locator(".unreadable")).to_have_count(0)  # we are inside notes/ now
    files.get_by_role("link", name="state").click()
    expect(files.locator(".entry.unreadable")).to_contain_text("secret")
    expect(page.locator("#journal-alice")).to_contain_text("harness.log")
    expect(page.locator(".config")).to_contain_text('name = "alice"')
    with hive_web.agent("bob") as bob:
        (mid,) = bob.expect(m.Send(to="alice", body="review my PR?"), m.Sent).message_ids
    item = page.locator(f"#inbox-alice #msg-{mid}")
    expect(item).to_contain_text("review my PR?")
    expect(item.locator(".chip.state-queued")).to_be_visible()
    assert not_reloaded(page)


# ------------------------------------------------------------------ resuming a stream


def read_sse(hive_web: WebHive, cookie: str, headers: dict[str, str]) -> tuple[str, str]:
    """Open the dashboard's stream and return the first message's (event, id)."""
    req = urllib.request.Request(
        f"{hive_web.base}/events?page=dashboard", headers={"Cookie": cookie, **headers}
    )
    with urllib.request.urlopen(req, timeout=10) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        event = seq = ""
        for raw in r:
            line = raw.decode().rstrip("\n")
            if line.startswith("event: "):
                event = line.removeprefix("event: ")
            elif line.startswith("id: "):
                seq = line.removeprefix("id: ")
            elif line == "" and event:
                return event, seq
    raise AssertionError("the stream ended")


def test_a_stream_resumes_from_last_event_id_or_asks_for_a_reload(hive_web, operator, page):
    (cookie,) = operator.cookies()
    session = f"{cookie['name']}={cookie['value']}"
    page.goto(f"{hive_web.base}/")
    seq = int(page.locator("#live").get_attribute("data-seq") or "0")
    page.close()
    with hive_web.agent("bob") as bob:
        bob.expect(m.Send(to="operator", body="while you were away"), m.Sent)
    event, resumed = read_sse(hive_web, session, {"Last-Event-ID": str(seq)})
    assert event == "update" and int(resumed) > seq
    assert read_sse(hive_web, session, {"Last-Event-ID": "1"}) == ("resync", "")


def test_a_claude_agent_is_given_a_login_token_from_its_page(hive_web, page):
    open_live(page, f"{hive_web.base}/agent/dave/")
    head = page.locator("#agent-head-dave")
    expect(head.locator(".login-form")).to_be_visible()
    head.locator("input[name=token]").fill("sk-ant-oat01-from-the-browser")
    head.get_by_role("button", name="Log in").click()
    expect(page.locator("#agent-head-dave")).to_contain_text("token given")
    with hive_web.admin() as admin:
        row = admin.expect(m.AgentStatus(name="dave"), m.AgentInfo).agent
    assert row.has_login_token
    assert "sk-ant-oat01-from-the-browser" not in page.content()
    page.once("dialog", lambda d: d.accept())
    page.locator("#agent-head-dave").get_by_role("button", name="Forget token").click()
    expect(page.locator("#agent-head-dave")).not_to_contain_text("token given")
    assert not_reloaded(page)
    # a scripted agent has no login form
    open_live(page, f"{hive_web.base}/agent/alice/")
    expect(page.locator("#agent-head-alice .login-form")).to_have_count(0)


# ------------------------------------------------------------------ the operator's gate


def test_an_approval_appears_live_shows_its_diff_and_is_decided_in_place(hive_web, page):
    open_live(page, f"{hive_web.base}/")
    with hive_web.agent("boss") as boss:
        text = boss.expect(m.ReadAgentConfig(agent="bob"), m.AgentConfigText).text
        edited = text.replace('model = ""', 'model = "model-web"')
        proposed = boss.expect(m.ProposeConfig(agent="bob", agent_toml=edited), m.Proposed)
        change = boss.expect(
            m.RequestApplyCommit(agent="bob", sha=proposed.branch), m.ApprovalInfo
        ).approval
        spawn = boss.expect(
            m.RequestSpawn(name="frank", role_description="writes docs"), m.ApprovalInfo
        ).approval
    card = page.locator(f"#approval-{change.id}")
    expect(card).to_contain_text('model: "" → "model-web"')
    expect(card).to_contain_text(f"approval-{change.id}")
    expect(page.locator("#agent-boss .open-threads")).to_have_text("2 open")
    card.locator("summary").click()
    expect(card.locator("pre.diff")).to_contain_text('+model = "model-web"')
    card.locator("input[name=note]").fill("looks right")
    asked: list[str] = []

    def accept(dialog) -> None:  # type: ignore[no-untyped-def]
        asked.append(dialog.message)
        dialog.accept()

    page.once("dialog", accept)
    card.get_by_role("button", name="Approve").click()
    expect(card.locator(".chip.ok")).to_have_text("approved")
    expect(card).to_contain_text("note: looks right")
    expect(page.locator("#toasts")).to_contain_text(f"approval #{change.id} approved")
    expect(page.locator("#agent-bob div.model")).to_contain_text("model-web")
    expect(page.locator("#agent-bob div.model code")).to_have_text(proposed.sha[:10])
    assert len(asked) == 1 and "carries it out" in asked[0]
    other = page.locator(f"#approval-{spawn.id}")
    other.locator("input[name=note]").fill("not now")
    other.get_by_role("button", name="Deny").click()
    expect(other.locator(".chip.muted")).to_have_text("denied")
    expect(page.locator("#agent-boss .open-threads")).to_have_text("0 open")
    assert not_reloaded(page)
    with hive_web.admin() as admin:
        rows = {a.name: a for a in admin.expect(m.ListAgents(), m.Agents).agents}
        decided = admin.expect(m.ListApprovals(), m.Approvals).approvals
    assert rows["bob"].model == "model-web" and "frank" not in rows
    assert {a.id: (a.status, a.note) for a in decided if a.id in (change.id, spawn.id)} == {
        change.id: ("approved", "looks right"),
        spawn.id: ("denied", "not now"),
    }


def test_a_tombstone_appears_live_and_is_purged_after_one_confirm(hive_web, page):
    with hive_web.admin() as admin:
        admin.expect(m.AddAgent(name="erin"), m.AgentInfo)
    open_live(page, f"{hive_web.base}/")
    expect(page.locator("#meta-inputs")).to_contain_text("nothing is pinned")
    expect(page.locator("#meta-inputs button")).to_have_count(0)
    with hive_web.admin() as admin:
        admin.expect(m.Destroy(name="erin"), m.Ok)
    tomb = page.locator("#tombstone-erin")
    expect(tomb).to_contain_text("erin")
    page.once("dialog", lambda dialog: dialog.dismiss())
    tomb.get_by_role("button", name="Purge").click()
    page.wait_for_timeout(300)
    expect(tomb).to_be_visible()
    page.once("dialog", lambda dialog: dialog.accept())
    tomb.get_by_role("button", name="Purge").click()
    expect(tomb).to_have_count(0)
    expect(page.locator("#toasts")).to_contain_text("erin's tombstone was purged")
    assert not_reloaded(page)
    with hive_web.admin() as admin:
        names = [t.name for t in admin.expect(m.ListTombstones(), m.Tombstones).tombstones]
    assert "erin" not in names
    assert not (hive_web.daemon.paths.state_dir / "tombstones" / "erin").exists()
