"""The operator's controls in a real browser: the emergency stop behind its confirmation with
an agent mid-turn, budget gauges and a pause raised from the inbox, limits set from the
budget panel, and a stale question climbing to the operator, who answers it from the inbox.

A daemon subprocess with real bwrap sandboxes and scripted agents, `hive web` as root starts
it (it drops to `hive-web`), one Chromium; nothing is reloaded, everything arrives live.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, BrowserContext, Page, expect

from protocol import messages as m
from tests.c0re_web import test_browser
from tests.c0re_web.test_browser import CHROMIUM, WebHive, open_live, web_hive

browser = test_browser.browser
page = test_browser.page

pytestmark = [
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs Debian's chromium"),
    pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap not installed"),
]

RULES = """
[[rule]]
match = '^slow'
tool = "set_status"
args = { text = "finished: {body}" }
delay = 60

[[rule]]
match = '^work'
tool = "set_status"
args = { text = "did: {body}" }
usage = { input_tokens = 3000, output_tokens = 1000, cost_usd = 0.45 }

[[rule]]
from = "operator"
match = '^ask (?P<target>[a-z]+) (?P<text>.*)'
tool = "ask"
args = { target = "{target}", question = "{text}", options = ["yes", "no"] }

[[rule]]
tool = "set_status"
args = { text = "saw: {body}" }
"""

HIVE_TOML = """[hive]
stop_grace_seconds = 2
estop_grace_seconds = 5
question_stale_seconds = 3

[budget.each_agent]
cost_per_day_usd = 1.0

[agents.boss]
role = "manager"
rules = "@ROOT@/rules.toml"

[agents.ann]
rules = "@ROOT@/rules.toml"

[agents.ben]
rules = "@ROOT@/rules.toml"

[agents.cal]
rules = "@ROOT@/rules.toml"

[agents.dee]
rules = "@ROOT@/rules.toml"
"""


@pytest.fixture(scope="module")
def hive_web() -> Iterator[WebHive]:
    with web_hive(HIVE_TOML, {"rules.toml": RULES}) as hive:
        deadline = time.monotonic() + 90
        while not all(r.harness_state == "idle" for r in rows(hive).values()):
            assert time.monotonic() < deadline, "the harnesses did not come up"
            time.sleep(0.2)
        yield hive


@pytest.fixture(scope="module")
def operator(hive_web: WebHive, browser: Browser) -> Iterator[BrowserContext]:
    """A browser context logged in through a one-time link."""
    context = browser.new_context()
    p = context.new_page()
    p.goto(hive_web.new_link())
    expect(p.locator("#agents")).to_contain_text("ann")
    p.close()
    yield context
    context.close()


def call(hive: WebHive, req: m.Request, reply: type[Any]) -> Any:
    with hive.admin() as admin:
        return admin.expect(req, reply)


def rows(hive: WebHive) -> dict[str, m.AgentRow]:
    return {a.name: a for a in call(hive, m.ListAgents(), m.Agents).agents}


def send(hive: WebHive, to: str, body: str) -> int:
    (mid,) = call(hive, m.OperatorSend(to=to, body=body), m.Sent).message_ids
    return int(mid)


def state_of(hive: WebHive, mid: int) -> m.MessageRow:
    got = call(hive, m.ListMessages(limit=500), m.Messages).messages
    return next(r for r in got if r.id == mid)


def accept(p: Page) -> list[str]:
    """Accept the next dialog; the list gets its message."""
    asked: list[str] = []

    def on_dialog(dialog) -> None:  # type: ignore[no-untyped-def]
        asked.append(dialog.message)
        dialog.accept()

    p.once("dialog", on_dialog)
    return asked


def test_the_emergency_stop_asks_first_then_parks_a_turn_and_thaws(hive_web, page):
    open_live(page, f"{hive_web.base}/")
    slow = send(hive_web, "ann", "slow: a long job")
    row = page.locator("#agent-ann")
    expect(row.locator(".chip", has_text="turn")).to_be_visible(timeout=30_000)

    button = page.get_by_role("button", name="Emergency stop")
    page.once("dialog", lambda dialog: dialog.dismiss())
    button.click()
    page.wait_for_timeout(500)
    assert not rows(hive_web)["ann"].held  # dismissed: nothing happened

    page.locator("#estop-panel input[name=reason]").fill("drill from the browser")
    asked = accept(page)
    button.click()
    banner = page.locator("#estop-panel .estop-banner")
    expect(banner).to_contain_text("EMERGENCY STOP")
    expect(banner).to_contain_text("drill from the browser")
    expect(banner).to_contain_text("turns cancelled: ann")
    assert len(asked) == 1 and "every agent but the managers" in asked[0]
    expect(row.locator(".status")).to_have_text("parked: emergency stop")
    expect(page.locator("#agent-boss .status")).to_have_text("running")
    first = page.locator("#needs-you .inbox-item").first
    expect(first).to_have_attribute("data-kind", "estop")
    assert (state_of(hive_web, slow).state, state_of(hive_web, slow).failures) == ("queued", 0)
    assert rows(hive_web)["ann"].held == "emergency stop"

    banner.get_by_role("button", name="Thaw").click()
    expect(page.locator("#estop-panel .estop-form")).to_be_visible()
    expect(page.locator("#toasts")).to_contain_text("thawed")
    expect(row.locator(".status")).to_have_text("running")
    expect(page.locator("#needs-you [data-kind=estop]")).to_have_count(0)
    call(hive_web, m.CancelTurn(name="ann"), m.Ok)  # the job came back; this test is done with it


def test_a_budget_gauge_fills_and_the_pause_is_lifted_from_the_inbox(hive_web, page):
    open_live(page, f"{hive_web.base}/")
    row = page.locator("#agent-ben")
    for n in (1, 2):
        send(hive_web, "ben", f"work {n}")
    expect(row.locator(".chip.usage")).to_contain_text("$0.90 today · 90%", timeout=30_000)
    assert float(row.locator("meter.gauge").get_attribute("value") or 0) == pytest.approx(0.9)
    expect(page.locator("#needs-you [data-kind=budget]")).to_contain_text("ben has used 90%")

    send(hive_web, "ben", "work 3")
    expect(row.locator(".status")).to_have_text("paused by budget", timeout=30_000)
    expect(page.locator("#toasts")).to_contain_text("ben paused")
    waiting = send(hive_web, "ben", "work 4")
    held = page.locator("#needs-you [data-kind=held_agent]")
    expect(held).to_contain_text("ben is paused by its budget")
    limit = page.locator("#needs-you [data-kind=budget]", has_text="ben reached its limit")
    expect(page.locator("#usage-ben")).to_contain_text("$1.35")
    limit.locator("input[name=value]").fill("5")
    limit.get_by_role("button", name="Raise limit").click()
    expect(row.locator(".status")).to_have_text("running", timeout=30_000)
    expect(held).to_have_count(0)
    expect(page.locator("#usage-ben")).to_contain_text("/ $5.00")
    deadline = time.monotonic() + 30
    while state_of(hive_web, waiting).state != "acked":
        assert time.monotonic() < deadline, "ben's held message was not handled"
        time.sleep(0.2)


def test_a_limit_is_set_from_the_budget_panel(hive_web, page):
    open_live(page, f"{hive_web.base}/")
    form = page.locator("#budget .set-limit")
    form.locator("select[name=who]").select_option("hive")
    form.locator("select[name=key]").select_option("tokens_total")
    form.locator("input[name=value]").fill("1000000")
    form.get_by_role("button", name="Set limit").click()
    expect(page.locator("#toasts")).to_contain_text("the hive: tokens_total = 1e+06")
    expect(page.locator("#usage-_hive")).to_contain_text("/ 1,000,000")
    got = call(hive_web, m.GetBudget(), m.Budget)
    assert ("hive", "tokens_total", 1_000_000, "operator") in {
        (r.scope, r.key, r.value, r.source) for r in got.limits
    }


def test_a_stale_question_climbs_to_the_operator_who_answers_it_from_the_inbox(hive_web, page):
    open_live(page, f"{hive_web.base}/")
    send(hive_web, "cal", "ask dee shall we ship on friday?")
    open_q = page.locator("#open-questions .open-question", has_text="shall we ship")
    expect(open_q).to_contain_text("cal → dee", timeout=30_000)
    expect(open_q.locator(".age")).to_have_text("0s")
    expect(open_q).to_contain_text("raised to dee", timeout=15_000)
    expect(open_q).to_contain_text("raised to dee → boss → operator", timeout=30_000)
    item = page.locator("#needs-you [data-kind=question]", has_text="shall we ship")
    expect(item).to_contain_text("cal asked dee, who has not answered")
    card = page.locator("#questions .question", has_text="shall we ship")
    expect(card).to_contain_text("escalated to you")
    age = int((open_q.locator(".age").text_content() or "0s").rstrip("s") or 0)
    assert age >= 9  # three steps of 3 s
    item.get_by_role("button", name="yes").click()
    expect(item).to_have_count(0)
    expect(open_q).to_have_count(0)
    questions = call(hive_web, m.ListQuestions(target=None, include_closed=True), m.Questions)
    (q,) = [x for x in questions.questions if "shall we ship" in x.question]
    assert (q.state, q.answer, q.escalation) == ("answered", "yes", ["dee", "boss", "operator"])
