"""The forge's MCP tools as an agent's runtime calls them: `hive agent mcp` over stdio with the
official client, against a real daemon subprocess; the commits come from real git through
`git-remote-hive` on each agent's socket."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from ag3nt.forge_tools import FORGE_TOOLS
from protocol.messages import forge as f
from tests.ag3nt.test_mcp_server import mcp_agent, run
from tests.conftest import DaemonProcess

VERBS = {
    "forge_list_repos": f.ListRepos,
    "forge_create_repo": f.CreateRepo,
    "forge_update_repo": f.UpdateRepo,
    "forge_show_repo": f.GetRepo,
    "mr_open": f.OpenMergeRequest,
    "mr_list": f.ListMergeRequests,
    "mr_show": f.GetMergeRequest,
    "mr_comment": f.CommentMergeRequest,
    "mr_approve": f.ApproveMergeRequest,
    "mr_merge": f.MergeMergeRequest,
    "mr_close": f.CloseMergeRequest,
}


def git(daemon: DaemonProcess, who: str, cwd: Path, *args: str) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GIT_", "HIVE_"))}
    env.update(
        PATH=f"{Path(sys.executable).parent}:{env.get('PATH', '/usr/bin:/bin')}",
        HIVE_AGENT_SOCKET=str(daemon.paths.agent_sock(who)),
        GIT_CONFIG_NOSYSTEM="1",
        GIT_CONFIG_GLOBAL=os.devnull,
        GIT_AUTHOR_NAME=who,
        GIT_AUTHOR_EMAIL=f"{who}@hyperhive",
        GIT_COMMITTER_NAME=who,
        GIT_COMMITTER_EMAIL=f"{who}@hyperhive",
    )
    done = subprocess.run(["git", *args], cwd=cwd, env=env, capture_output=True, text=True)
    assert done.returncode == 0, (args, done.stdout + done.stderr)
    return done.stdout


def test_every_forge_tool_takes_its_verbs_fields(daemon_process: DaemonProcess) -> None:
    assert set(VERBS) == set(FORGE_TOOLS)

    async def main() -> None:
        async with mcp_agent(daemon_process, "alice") as alice:
            listed = {t.name: t for t in (await alice.session.list_tools()).tools}
            for tool, verb in VERBS.items():
                props = set(listed[tool].input_schema["properties"])
                assert props == set(verb.__struct_fields__), tool

    run(main)


def test_an_agent_reviews_and_merges_another_agents_request_through_its_tools(
    daemon_process: DaemonProcess, tmp_path: Path
) -> None:
    alice_dir, bob_dir = tmp_path / "alice", tmp_path / "bob"
    alice_dir.mkdir()
    bob_dir.mkdir()

    async def create() -> None:
        async with mcp_agent(daemon_process, "alice") as alice:
            made = await alice.ok("forge_create_repo", repo="alice/notes", description="notes")
            assert made.startswith("created alice/notes (public, you can push) hive://alice/notes")
            bad = await alice.error("forge_create_repo", repo="alice/notes.git")
            assert bad == "invalid: repo: drop the `.git` suffix: repositories are named without it"
            theirs = await alice.error("forge_create_repo", repo="bob/notes")
            assert theirs.startswith("forbidden: you create repositories in your own namespace")
            listed = await alice.ok("forge_list_repos")
            assert "org-shared/docs (public, read only)" in listed and "alice/notes" in listed

    run(create)
    work = alice_dir / "notes"
    git(daemon_process, "alice", alice_dir, "clone", "--quiet", "hive://alice/notes", "notes")
    (work / "a.md").write_text("alpha\n")
    git(daemon_process, "alice", work, "add", "a.md")
    git(daemon_process, "alice", work, "commit", "--quiet", "-m", "first")
    git(daemon_process, "alice", work, "push", "--quiet", "origin", "HEAD:main")
    fork = bob_dir / "notes"
    git(daemon_process, "bob", bob_dir, "clone", "--quiet", "hive://alice/notes", "notes")
    git(daemon_process, "bob", fork, "checkout", "--quiet", "-b", "typo")
    (fork / "a.md").write_text("alpha, fixed\n")
    git(daemon_process, "bob", fork, "commit", "--quiet", "-am", "fix the typo")
    git(daemon_process, "bob", fork, "push", "--quiet", "hive://bob/notes", "typo")

    async def review() -> None:
        async with (
            mcp_agent(daemon_process, "bob") as bob,
            mcp_agent(daemon_process, "alice") as alice,
        ):
            opened = await bob.ok(
                "mr_open",
                repo="alice/notes",
                source_repo="bob/notes",
                source_branch="typo",
                title="Fix the typo",
            )
            assert opened.startswith(
                "opened !1 [open] Fix the typo — bob/notes typo → alice/notes main"
            )
            assert "merges as a fast-forward" in opened
            threads = await alice.ok("get_open_threads")
            assert "merge request !1 on alice/notes, bob asks your review" in threads
            assert "merge request !1 on alice/notes, yours" in await bob.ok("get_open_threads")
            shown = await alice.ok("mr_show", id=1)
            assert "-alpha\n+alpha, fixed" in shown and "fix the typo" in shown
            assert (await bob.error("mr_merge", id=1)).startswith(
                "forbidden: alice/notes belongs to alice"
            )
            await alice.ok("mr_comment", id=1, body="thanks!")
            assert "approved by alice" in await alice.ok("mr_approve", id=1)
            assert (await alice.ok("mr_merge", id=1)).startswith("merged !1 into alice/notes main")
            assert await bob.ok("get_open_threads") == "(nothing open)"
            assert "!1 [merged] Fix the typo" in await bob.ok("mr_list", state="all")
            assert await bob.ok("mr_list") == "(no merge requests)"
            shown = await bob.ok("forge_show_repo", repo="alice/notes")
            assert "fix the typo" in shown and "branches: main" in shown

    run(review)
