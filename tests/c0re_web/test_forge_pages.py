"""The forge on the dashboard, in a real browser against a real `hive web` and a real daemon.

Agents push with real git through `git-remote-hive` on their own sockets and open merge
requests through them; the operator browses repositories, reads files and diffs, comments
and merges from the page, and the pages follow what agents do without a reload.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import BrowserContext, Page, expect

from protocol.messages import forge as f
from tests.c0re_web import test_browser as dashboard
from tests.c0re_web.test_browser import CHROMIUM, WebHive, open_live

# the dashboard tests' fixtures, set up afresh for this module
hive_web = dashboard.hive_web
browser = dashboard.browser
operator = dashboard.operator
page = dashboard.page

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs Debian's chromium")


class Git:
    def __init__(self, hive: WebHive, who: str, home: Path) -> None:
        self.hive = hive
        self.who = who
        self.home = home
        home.mkdir(parents=True, exist_ok=True)

    def __call__(self, *args: str, cwd: Path | None = None) -> str:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("GIT_", "HIVE_"))}
        env.update(
            PATH=f"{Path(sys.executable).parent}:{env.get('PATH', '/usr/bin:/bin')}",
            HIVE_AGENT_SOCKET=str(self.hive.daemon.paths.agent_sock(self.who)),
            GIT_CONFIG_NOSYSTEM="1",
            GIT_CONFIG_GLOBAL=os.devnull,
            GIT_AUTHOR_NAME=self.who,
            GIT_AUTHOR_EMAIL=f"{self.who}@hyperhive",
            GIT_COMMITTER_NAME=self.who,
            GIT_COMMITTER_EMAIL=f"{self.who}@hyperhive",
        )
        done = subprocess.run(
            ["git", *args], cwd=cwd or self.home, env=env, capture_output=True, text=True
        )
        assert done.returncode == 0, (args, done.stdout + done.stderr)
        return done.stdout

    def commit(self, work: Path, files: dict[str, str], message: str) -> None:
        for name, text in files.items():
            (work / name).write_text(text)
        self("add", "--all", cwd=work)
        self("commit", "--quiet", "-m", message, cwd=work)


@pytest.fixture(scope="module")
def repos(
    hive_web: WebHive, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, object]]:
    """alice/site with a file, a symlink and some markup; bob/site, a fork with branch `fix`."""
    root = tmp_path_factory.mktemp("forge-web")
    alice, bob = Git(hive_web, "alice", root / "alice"), Git(hive_web, "bob", root / "bob")
    work = root / "alice" / "site"
    work.mkdir()
    alice("init", "--quiet", "--initial-branch=main", cwd=work)
    (work / "index.md").write_text("# Site\n\n<script>alert('x')</script>\n")
    os.symlink("/etc/shadow", work / "secret")
    alice.commit(work, {"notes.md": "one\ntwo\n"}, "first page")
    alice("push", "--quiet", "hive://alice/site", "main", cwd=work)
    fork = root / "bob" / "site"
    bob("clone", "--quiet", "hive://alice/site", str(fork))
    bob("checkout", "--quiet", "-b", "fix", cwd=fork)
    bob.commit(fork, {"notes.md": "one\ntwo, fixed\n"}, "fix two")
    bob("push", "--quiet", "hive://bob/site", "fix", cwd=fork)
    yield {"alice": alice, "bob": bob, "work": work, "fork": fork}


def test_repositories_files_and_symlinks_are_shown_read_through_the_daemon(
    hive_web, repos, page: Page
):
    open_live(page, f"{hive_web.base}/forge/")
    expect(page.locator("#forge-index")).to_contain_text("alice/site")
    expect(page.locator("#forge-index")).to_contain_text("org-shared/docs")
    page.get_by_role("link", name="alice/site").first.click()
    expect(page.locator("#repo-summary")).to_contain_text("git clone hive://alice/site")
    expect(page.locator("#repo-summary .commits")).to_contain_text("first page")
    tree = page.locator("#tree")
    expect(tree).to_contain_text("secret")
    expect(tree).to_contain_text("(symlink, not followed)")
    tree.get_by_role("link", name="index.md").click()
    expect(page.locator("#blob pre")).to_have_text("# Site\n\n<script>alert('x')</script>\n")
    tree.get_by_role("link", name="secret").click()
    expect(page.locator("#blob pre")).to_have_text("/etc/shadow")  # the link, never the file


def test_a_repository_an_agent_creates_appears_without_a_reload(hive_web, repos, page: Page):
    open_live(page, f"{hive_web.base}/forge/")
    with hive_web.agent("carol") as carol:
        carol.expect(f.CreateRepo(repo="carol/plans", description="carol's plans"), f.RepoInfo)
    expect(page.locator("#forge-index")).to_contain_text("carol/plans")
    assert page.evaluate("window.__loadedOnce === true")


def test_a_merge_request_reviewed_and_merged_from_its_page(hive_web, repos, page: Page):
    open_live(page, f"{hive_web.base}/")
    with hive_web.agent("bob") as bob:
        opened = bob.expect(
            f.OpenMergeRequest(
                repo="alice/site", source_repo="bob/site", source_branch="fix", title="Fix two"
            ),
            f.MergeRequestInfo,
        )
    mr_id = opened.mr.id
    expect(page.locator("#forge-summary")).to_contain_text(f"!{mr_id} Fix two")  # live
    page.goto(f"{hive_web.base}/agent/alice/")
    expect(page.locator("#threads-alice")).to_contain_text(f"!{mr_id}")
    expect(page.locator("#threads-alice")).to_contain_text("review for bob")

    open_live(page, f"{hive_web.base}/forge/mr/{mr_id}")
    panel = page.locator("#mr-panel")
    expect(panel).to_contain_text("merges as a fast-forward")
    expect(panel.locator("pre.diff .add")).to_have_text("+two, fixed")
    expect(panel.locator("pre.diff .del")).to_have_text("-two")
    panel.locator("form.comment textarea").fill("looks <b>right</b>")
    panel.get_by_role("button", name="Comment").click()
    expect(page.locator("#mr-panel .note.kind-comment")).to_contain_text("looks <b>right</b>")
    expect(page.locator("#toasts")).to_contain_text(f"commented on !{mr_id}")

    # bob pushes again: the page follows (new head, an `updated` note), no reload
    bob_git, fork = repos["bob"], repos["fork"]
    assert isinstance(bob_git, Git) and isinstance(fork, Path)
    bob_git.commit(fork, {"three.md": "three\n"}, "add three")
    bob_git("push", "--quiet", "hive://bob/site", "fix", cwd=fork)
    expect(page.locator("#mr-panel .note.kind-updated")).to_have_count(1)
    expect(page.locator("#mr-panel")).to_contain_text("add three")
    assert page.evaluate("window.__loadedOnce === true")

    page.once("dialog", lambda dialog: dialog.accept())
    page.locator("#mr-panel").get_by_role("button", name="Merge").click()
    expect(page.locator("#mr-panel h1 .chip").first).to_have_text("merged")
    with hive_web.admin() as admin:
        info = admin.expect(f.GetMergeRequest(id=mr_id), f.MergeRequestInfo)
        assert info.mr.state == "merged" and info.mr.resolved_by == "operator"
        blob = admin.expect(f.ReadBlob(repo="alice/site", rev="main", path="three.md"), f.RepoBlob)
        assert blob.data == b"three\n"


@pytest.fixture
def refusing_page(operator: BrowserContext) -> Iterator[tuple[Page, list[str]]]:
    """A page whose one expected failure is a refused POST (the browser logs it as an error)."""
    errors: list[str] = []
    p = operator.new_page()
    p.on("pageerror", lambda exc: errors.append(str(exc)))
    p.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    yield p, errors
    p.close()


def test_a_conflicting_merge_is_refused_on_the_page_and_the_request_stays_open(
    hive_web, repos, refusing_page: tuple[Page, list[str]]
):
    page, errors = refusing_page
    alice_git, bob_git = repos["alice"], repos["bob"]
    work, fork = repos["work"], repos["fork"]
    assert isinstance(alice_git, Git) and isinstance(bob_git, Git)
    assert isinstance(work, Path) and isinstance(fork, Path)
    alice_git("pull", "--quiet", "hive://alice/site", "main", cwd=work)
    alice_git.commit(work, {"notes.md": "one\nTWO by alice\n"}, "alice's two")
    alice_git("push", "--quiet", "hive://alice/site", "main", cwd=work)
    bob_git("checkout", "--quiet", "-b", "clash", cwd=fork)
    bob_git.commit(fork, {"notes.md": "one\nTWO by bob\n"}, "bob's two")
    bob_git("push", "--quiet", "hive://bob/site", "clash", cwd=fork)
    with hive_web.agent("bob") as bob:
        mr_id = bob.expect(
            f.OpenMergeRequest(
                repo="alice/site", source_repo="bob/site", source_branch="clash", title="Clash"
            ),
            f.MergeRequestInfo,
        ).mr.id
    open_live(page, f"{hive_web.base}/forge/mr/{mr_id}")
    expect(page.locator("#mr-panel")).to_contain_text("conflicts: notes.md")
    page.once("dialog", lambda dialog: dialog.accept())
    page.locator("#mr-panel").get_by_role("button", name="Merge").click()
    expect(page.locator("#toasts .toast.bad")).to_contain_text("conflicts with main in notes.md")
    expect(page.locator("#mr-panel h1 .chip").first).to_have_text("open")
    # the refused POST (409), as the browser and htmx report it, and nothing else
    assert errors and all("409" in e or "htmx:responseError" in e for e in errors), errors


def test_a_request_for_the_operators_review_is_in_the_inbox_until_approved(
    hive_web, repos, page: Page
):
    bob_git, fork = repos["bob"], repos["fork"]
    assert isinstance(bob_git, Git) and isinstance(fork, Path)
    bob_git("checkout", "--quiet", "-b", "ask", "main", cwd=fork)
    bob_git.commit(fork, {"ask.md": "please look\n"}, "a question in a file")
    bob_git("push", "--quiet", "hive://bob/site", "ask", cwd=fork)
    open_live(page, f"{hive_web.base}/")
    with hive_web.agent("bob") as bob:
        mr_id = bob.expect(
            f.OpenMergeRequest(
                repo="alice/site",
                source_repo="bob/site",
                source_branch="ask",
                title="Please review",
                reviewers=["operator"],
            ),
            f.MergeRequestInfo,
        ).mr.id
    item = page.locator(f"#needs-you #needs-merge_request-{mr_id}")  # live, no reload
    expect(item).to_contain_text(f"!{mr_id} by bob into alice/site (asks you to review)")
    expect(item).to_contain_text(f"hive ctl forge mr {mr_id}")
    item.get_by_role("link", name=f"Review !{mr_id}").click()
    expect(page).to_have_url(f"{hive_web.base}/forge/mr/{mr_id}")
    expect(page.locator("#mr-panel")).to_contain_text("Please review")
    page.locator("#mr-panel").get_by_role("button", name="Approve").click()
    approved = page.locator("#mr-panel dl.facts dt:text-is('approved by') + dd")
    expect(approved).to_have_text("operator")
    open_live(page, f"{hive_web.base}/")
    expect(page.locator("#needs-you")).to_be_visible()
    expect(page.locator(f"#needs-merge_request-{mr_id}")).to_have_count(0)
