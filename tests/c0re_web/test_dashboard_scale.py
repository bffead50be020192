"""The dashboard with a swarm: 120 agents in a real Chromium, against a real `hive web` and daemon.

Rows stay one line each, the messages and the questions are on the first screen without
scrolling past the agents, the filter and the grouping work, and a message patches the
counts of its recipient's row in place instead of redrawing it. Screenshots of each state
are written next to the test's temp dir (kept when `HIVE_SCREENSHOTS` names a directory).
"""

from __future__ import annotations

import os
import queue
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect, sync_playwright

from c0re_web.privileges import WEB_USER, ensure_user
from protocol import messages as m
from protocol.client import SyncClient
from tests.c0re_web.test_browser import CHROMIUM, LINK
from tests.conftest import DaemonProcess

AGENTS = 120
VIEWPORT = {"width": 1400, "height": 900}
pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs Debian's chromium")


class Swarm:
    def __init__(self, daemon: DaemonProcess, link: str, shots: Path) -> None:
        self.daemon = daemon
        self.link = link
        self.shots = shots

    def agent(self, name: str) -> SyncClient:
        return SyncClient.connect(str(self.daemon.paths.agent_sock(name)), timeout=10)

    def admin_answer(self, question_id: int, answer: str) -> None:
        with SyncClient.connect(str(self.daemon.paths.admin_sock), timeout=10) as admin:
            admin.expect(m.AnswerQuestion(question_id=question_id, answer=answer), m.Ok)


@pytest.fixture(scope="module")
def swarm() -> Iterator[Swarm]:
    root = Path(tempfile.mkdtemp(prefix="hs", dir="/tmp"))
    os.chmod(root, 0o755)
    web_group = ""
    if os.geteuid() == 0:
        ensure_user(WEB_USER)
        web_group = WEB_USER
    config = root / "hive.toml"
    agents = "".join(f"[agents.w{i:03d}]\n\n" for i in range(AGENTS - 1))
    config.write_text(
        f'[hive]\nautostart = false\nbackend = "process"\nweb_group = "{web_group}"\n\n'
        f'[agents.boss]\nrole = "manager"\nmodel = "claude-sonnet-4-5"\n\n{agents}'
    )
    daemon = DaemonProcess(root, config)
    daemon.start()
    web_log = open(root / "web.log", "w")  # noqa: SIM115 - owned by the child
    web = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "c0re_web",
            "web",
            "--run-dir",
            str(root / "run"),
            "--bind",
            "127.0.0.1:0",
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
    shots = Path(os.environ.get("HIVE_SCREENSHOTS") or root / "shots")
    shots.mkdir(parents=True, exist_ok=True)
    try:
        while not (found := LINK.search(lines.get(timeout=30))):
            pass
        yield Swarm(daemon, found.group(0), shots)
    finally:
        web.terminate()
        try:
            web.wait(15)
        except subprocess.TimeoutExpired:
            web.kill()
        web_log.close()
        log = (root / "web.log").read_text()
        if daemon.proc is not None:
            daemon.proc.kill()
            daemon.proc.wait(10)
        shutil.rmtree(root, ignore_errors=True)
    assert "Traceback" not in log and " ERROR " not in log, log


@pytest.fixture(scope="module")
def page(swarm: Swarm) -> Iterator[Page]:
    errors: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            args=["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run"],
        )
        context = browser.new_context(viewport=VIEWPORT)  # type: ignore[arg-type]
        pg = context.new_page()
        pg.on("pageerror", lambda exc: errors.append(str(exc)))
        pg.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
        pg.goto(swarm.link)
        expect(pg.locator("#live-status")).to_have_text("live")
        yield pg
        browser.close()
    assert errors == []


def test_every_row_is_one_line_and_messages_and_questions_are_on_the_first_screen(swarm, page):
    rows = page.locator("#agents .agent-row")
    expect(rows).to_have_count(AGENTS)
    # the busiest row: the manager's chip, a long model name, a day's spend and reminders
    with swarm.agent("boss") as boss:
        boss.expect(m.ReportTurn(turn=m.TurnStats(ok=True, cost_usd=12.34)), m.Ok)
        boss.expect(m.Remind(body="later", in_seconds=3600), m.Reminded)
        boss.expect(m.Send(to="w007", body="the queue is long"), m.Sent)
    expect(page.locator("#counts-boss")).to_contain_text("$12.34 today")
    expect(page.locator("#counts-boss")).to_contain_text("reminders 1/0/0")
    heights = page.evaluate(
        "() => [...document.querySelectorAll('#agents .agent-row')]"
        ".map(r => r.getBoundingClientRect().height)"
    )
    assert max(heights) < 36, f"a row wraps: {max(heights)} px"
    # nothing a row shows is cut off at this width (only a long status text may be)
    cut = page.evaluate(
        "() => [...document.querySelectorAll('#agents .agent-row > div:not(.status-text)')]"
        ".filter(d => { const r = document.createRange(); r.selectNodeContents(d);"
        " return r.getBoundingClientRect().right > d.getBoundingClientRect().right + 0.5; })"
        ".map(d => `${d.parentElement.id} .${d.className}: ${d.textContent.trim()}`)"
    )
    assert cut == [], cut
    for panel in ("#messages", "#questions-panel"):
        box = page.locator(panel).bounding_box()
        assert box is not None and box["y"] < VIEWPORT["height"] - 150, (panel, box)
    assert "Agents 120" in page.locator("#jump").inner_text()
    page.screenshot(path=str(swarm.shots / "dashboard-120-agents.png"))


def test_the_filter_narrows_the_rows_and_says_how_many(swarm, page):
    box = page.locator("#agent-filter")
    box.fill("w11")
    expect(page.locator("#agents .agent-row:visible")).to_have_count(9)  # w110…w118
    expect(page.locator("#agent-shown")).to_have_text(f"9 of {AGENTS} shown")
    page.screenshot(path=str(swarm.shots / "dashboard-filtered.png"))
    box.fill("manager")
    expect(page.locator("#agents .agent-row:visible")).to_have_count(1)
    box.fill("")
    expect(page.locator("#agents .agent-row:visible")).to_have_count(AGENTS)


def test_grouping_by_role_puts_each_group_under_its_heading(swarm, page):
    page.locator("#agent-group").select_option("role")
    heads = page.locator("#agents .group-head")
    expect(heads).to_have_text(["role: agent (119)", "role: manager (1)"])
    # the agent heading, 119 rows, the manager heading, then boss
    first_manager = page.locator("#agents > *").nth(AGENTS + 1).get_attribute("id")
    assert first_manager == "agent-boss"
    page.screenshot(path=str(swarm.shots / "dashboard-by-role.png"))
    page.reload()  # the choice is remembered
    expect(page.locator("#agents .group-head")).to_have_count(2)
    page.locator("#agent-group").select_option("")
    expect(page.locator("#agents .group-head")).to_have_count(0)
    expect(page.locator("#live-status")).to_have_text("live")


def test_a_message_patches_its_line_and_the_recipients_counts_in_place(swarm, page):
    page.evaluate("document.getElementById('agent-w042').dataset.marked = 'kept'")
    with swarm.agent("w007") as w007:
        (mid,) = w007.expect(m.Send(to="w042", body="patch me in"), m.Sent).message_ids
    expect(page.locator(f"#flow #msg-{mid}")).to_contain_text("patch me in")
    expect(page.locator("#counts-w042 .queued")).to_have_text("1 queued")
    # the row element is the same one: only its counts were replaced
    assert page.evaluate("document.getElementById('agent-w042').dataset.marked") == "kept"
    first = page.locator("#flow > .conv").first
    expect(first).to_have_attribute("id", f"conv-{mid}")
    with swarm.agent("w042") as w042:
        (reply,) = w042.expect(
            m.Send(to="w007", body="patched", in_reply_to=mid), m.Sent
        ).message_ids
        got = w042.expect(m.Recv(max=10), m.Deliveries).items
        w042.expect(m.Ack(lease=got[0].lease), m.Ok)
    expect(page.locator(f"#conv-{mid} #msg-{reply}")).to_contain_text("patched")
    expect(page.locator(f"#mstate-{mid}")).to_have_text("delivered")
    expect(page.locator("#counts-w042 .queued")).to_have_text("0 queued")
    page.screenshot(path=str(swarm.shots / "dashboard-live.png"))


def _shown(page: Page, names: list[str]) -> dict[str, str]:
    """What the page says of the messages in its flow (each one's state chip) and of the
    agents' counts: the things the live stream patches in place."""
    got: dict[str, str] = page.evaluate(
        """names => {
            const out = {};
            for (const chip of document.querySelectorAll('#flow [id^="mstate-"]'))
                out[chip.id] = chip.textContent.trim();
            for (const n of names)
                out['counts-' + n] = document.getElementById('counts-' + n).textContent.trim();
            const ids = sel => [...document.querySelectorAll(sel)].map(e => e.id).sort().join(' ');
            out.questions = ids('#questions .question');
            out.open_questions = ids('#open-questions .open-question');
            out.needs_you = ids('#needs-you .inbox-item');
            return out;
        }""",
        names,
    )
    return got


def _chips(page: Page, within: str) -> dict[str, str]:
    got: dict[str, str] = page.evaluate(
        """within => Object.fromEntries([...document.querySelectorAll(
            within + ' [id^="mstate-"]')].map(c => [c.id, c.textContent.trim()]))""",
        within,
    )
    return got


@pytest.mark.parametrize("seed", [1, 2])
def test_a_page_left_open_through_random_traffic_shows_what_a_fresh_load_shows(swarm, page, seed):
    """Sends, replies, leases, acks and nacks in a random order and rhythm (so that they fall
    into the stream's batches in every combination), and turns as a harness takes them (lease,
    answer, ack, back to back), questions and reminders, with the page open throughout: once it settles, every state
    chip and every count it shows is what a fresh load shows."""
    rng = random.Random(seed)
    names = [f"w{60 + 10 * seed + i:03d}" for i in range(5)]
    base = page.url.split("/", 3)[:3]
    agent_url = "/".join([*base, "agent", names[0], ""])
    watched = page.context.new_page()  # names[0]'s own page, open throughout too
    watched.goto(agent_url)
    expect(watched.locator("#live-status")).to_have_text("live")
    inbox: dict[str, list[m.Delivery]] = {n: [] for n in names}
    asked: dict[int, tuple[str, str]] = {}  # open question id: (asker, target)
    asks = 0
    with ExitStack() as stack:
        clients = {n: stack.enter_context(swarm.agent(n)) for n in names}
        for step in range(110):
            who = rng.choice(names)
            c = clients[who]
            op = rng.random()
            if op < 0.35:
                to = rng.choice([n for n in names if n != who])
                c.expect(m.Send(to=to, body=f"s{seed} step {step}"), m.Sent)
            elif op < 0.47:  # questions: asked, answered, withdrawn
                mine = [q for q, (a, t) in asked.items() if who in (a, t)]
                if mine and rng.random() < 0.6:
                    q = rng.choice(mine)
                    _, t = asked.pop(q)
                    if t == who:
                        c.expect(m.Answer(question_id=q, answer=f"yes {step}"), m.Ok)
                    elif t == "operator" and rng.random() < 0.5:
                        swarm.admin_answer(q, f"ok {step}")
                    else:
                        c.expect(m.CancelAsk(id=q), m.Ok)
                else:
                    t = rng.choice([*[n for n in names if n != who], "operator"])
                    got = c.expect(m.Ask(target=t, question=f"q {step}?"), m.Asked)
                    asked[got.question_id] = (who, t)
                    asks += 1
            elif op < 0.55:  # a turn as a harness takes it: lease one, answer it, ack it
                for d in c.expect(m.Recv(max=1), m.Deliveries).items:
                    if d.message.from_ != "system":  # a reminder is not answered
                        c.expect(
                            m.Send(
                                to=d.message.from_, body=f"turn {step}", in_reply_to=d.message.id
                            ),
                            m.Sent,
                        )
                    c.expect(m.Ack(lease=d.lease), m.Ok)
            elif op < 0.65 and any(d.message.from_ != "system" for d in inbox[who]):
                d = rng.choice([d for d in inbox[who] if d.message.from_ != "system"])
                c.expect(
                    m.Send(to=d.message.from_, body=f"re {step}", in_reply_to=d.message.id),
                    m.Sent,
                )
            elif op < 0.7:  # a reminder, due while the traffic goes on or at once
                c.expect(
                    m.Remind(body=f"remember {step}", in_seconds=rng.choice([0, 0.3, 1])),
                    m.Reminded,
                )
            elif op < 0.82:
                inbox[who] += c.expect(m.Recv(max=rng.randint(1, 3)), m.Deliveries).items
            elif inbox[who]:
                d = inbox[who].pop(rng.randrange(len(inbox[who])))
                if rng.random() < 0.85:
                    c.expect(m.Ack(lease=d.lease), m.Ok)
                else:
                    c.expect(m.Nack(lease=d.lease, reason="not now"), m.Ok)
            time.sleep(rng.choice([0, 0, 0.002, 0.01, 0.03]))
    fresh = page.context.new_page()
    try:
        deadline = time.monotonic() + 15
        while True:
            time.sleep(1.0)  # let the last batches land
            live = _shown(page, names)
            fresh.goto(page.url)
            expect(fresh.locator("#live-status")).to_have_text("live")
            loaded = _shown(fresh, names)
            live_agent = _chips(watched, f"#inbox-list-{names[0]}")
            fresh.goto(agent_url)
            expect(fresh.locator("#live-status")).to_have_text("live")
            loaded_agent = _chips(fresh, f"#inbox-list-{names[0]}")
            if (live, live_agent) == (loaded, loaded_agent) or time.monotonic() > deadline:
                break
        assert live == loaded
        assert live_agent == loaded_agent and live_agent
        assert any(v == "delivered" for v in live.values())  # the traffic reached the flow
        assert asks >= 5  # the questions panels were exercised too
    finally:
        fresh.close()
        watched.close()
