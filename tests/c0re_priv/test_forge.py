"""The forge as agents and the operator use it: real git, through the real `git-remote-hive`,
over each caller's own socket, against a real daemon with real sqlite.

Here git runs on the host (as root) with `HIVE_AGENT_SOCKET` pointing at an agent's socket,
which is all the identity the forge knows; `test_forge_sandbox.py` runs the same git inside
bubblewrap sandboxes as the agents' own uids.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import msgspec
import pytest
import trio

from c0re_priv.forge import GitSession
from c0re_priv.hive import Hive
from protocol import messages as m
from protocol.client import HiveClient, HiveError
from protocol.framing import FrameDecoder
from protocol.messages import forge as f
from protocol.wire import encode, encode_call, reply_decoder, welcome_decoder
from tests.conftest import make_config

VENV_BIN = str(Path(sys.executable).parent)


@pytest.fixture
def config():  # type: ignore[no-untyped-def]
    return make_config(agents={"boss": {"role": "manager"}, "alice": {}, "bob": {}})


@dataclass
class Git:
    """git as one caller of the forge: an agent (its socket) or the operator (admin.sock)."""

    hive: Hive
    who: str
    home: Path

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("GIT_", "HIVE_"))}
        env.update(
            PATH=f"{VENV_BIN}:{os.environ.get('PATH', '/usr/bin:/bin')}",
            HOME=str(self.home),
            GIT_CONFIG_NOSYSTEM="1",
            GIT_CONFIG_GLOBAL=os.devnull,
            GIT_AUTHOR_NAME=self.who,
            GIT_AUTHOR_EMAIL=f"{self.who}@hyperhive",
            GIT_COMMITTER_NAME=self.who,
            GIT_COMMITTER_EMAIL=f"{self.who}@hyperhive",
        )
        if self.who == "operator":
            env["HIVE_RUN_DIR"] = str(self.hive.paths.run_dir)
        else:
            env["HIVE_AGENT_SOCKET"] = str(self.hive.paths.agent_sock(self.who))
        return env

    async def run(self, *args: str, cwd: Path | None = None, check: bool = True) -> tuple[int, str]:
        done = await trio.run_process(
            ["git", *args],
            cwd=str(cwd or self.home),
            env=self.env(),
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
        out = (done.stdout + done.stderr).decode(errors="replace")
        if check:
            assert done.returncode == 0, f"git {' '.join(args)} as {self.who}: {out}"
        return done.returncode, out

    async def clone(self, repo: str, into: str | None = None) -> Path:
        target = self.home / (into or repo.replace("/", "--"))
        await self.run("clone", "--quiet", f"hive://{repo}", str(target))
        return target

    async def commit(self, work: Path, files: dict[str, str], message: str) -> str:
        for name, text in files.items():
            path = work / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        await self.run("add", "--all", cwd=work)
        await self.run("commit", "--quiet", "-m", message, cwd=work)
        return (await self.run("rev-parse", "HEAD", cwd=work))[1].strip()

    async def new_repo(self, repo: str, files: dict[str, str]) -> Path:
        """A fresh local repository with one commit on main, pushed to `hive://repo`."""
        work = self.home / repo.replace("/", "--")
        work.mkdir(parents=True)
        await self.run("init", "--quiet", "--initial-branch=main", cwd=work)
        await self.run("remote", "add", "origin", f"hive://{repo}", cwd=work)
        await self.commit(work, files, "first")
        await self.run("push", "--quiet", "--set-upstream", "origin", "main", cwd=work)
        return work


@pytest.fixture
def gits(hive: Hive, tmp_path: Path) -> dict[str, Git]:
    out = {}
    for who in ("operator", "boss", "alice", "bob"):
        home = tmp_path / who
        home.mkdir()
        out[who] = Git(hive, who, home)
    return out


@asynccontextmanager
async def agent(hive: Hive, name: str) -> AsyncIterator[HiveClient]:
    async with HiveClient.connect(str(hive.paths.agent_sock(name)), client=f"test-{name}") as c:
        yield c


async def events(admin: HiveClient, kinds: list[str], since: int) -> list[m.AnyEvent]:
    """Every event of `kinds` published after `since`, from the daemon's replay buffer."""
    got: list[m.AnyEvent] = []
    async with admin.stream(m.Subscribe(kinds=kinds, since_seq=since)) as frames:
        first = await frames.__anext__()
        assert isinstance(first, m.Subscribed)
        with trio.move_on_after(0.5):
            async for frame in frames:
                assert isinstance(frame, m.EventFrame)
                got.append(frame.event)
    return got


# ------------------------------------------------------------------ repositories


async def test_the_docs_repo_is_seeded_and_every_agent_reads_it(hive, gits):
    async with agent(hive, "bob") as bob:
        repos = (await bob.expect(f.ListRepos(), f.Repos)).repos
    docs = next(r for r in repos if r.repo == f.DOCS_REPO)
    assert docs.url == "hive://org-shared/docs" and not docs.private and not docs.writable
    clone = await gits["bob"].clone(f.DOCS_REPO)
    assert "Only the manager and the operator can push" in (clone / "README.md").read_text()
    log = (await gits["bob"].run("log", "--format=%an %s", cwd=clone))[1]
    assert log.strip() == "hyperhive Seed org-shared/docs"


async def test_a_push_creates_the_repo_and_every_agent_clones_it(hive, admin, gits):
    since = hive.bus.seq
    work = await gits["alice"].new_repo("alice/notes", {"a.md": "alpha\n"})
    seen = await events(admin, ["repo_created", "pushed"], since)
    assert [type(e).__name__ for e in seen] == ["RepoCreated", "Pushed"]
    created, pushed = seen
    assert isinstance(created, f.RepoCreated) and created.repo.created_by == "alice"
    assert isinstance(pushed, f.Pushed) and pushed.by == "alice"
    assert [u.ref for u in pushed.updates] == ["refs/heads/main"]
    clone = await gits["bob"].clone("alice/notes")
    assert (clone / "a.md").read_text() == "alpha\n"
    await gits["alice"].commit(work, {"b.md": "beta\n"}, "second")
    await gits["alice"].run("push", "--quiet", cwd=work)
    await gits["bob"].run("pull", "--quiet", cwd=clone)
    assert (clone / "b.md").read_text() == "beta\n"
    async with agent(hive, "alice") as alice:
        mine = next(r for r in (await alice.expect(f.ListRepos(owner="alice"), f.Repos)).repos)
    assert mine.repo == "alice/notes" and mine.writable and mine.pushed_at is not None


async def test_a_push_to_another_agents_repo_or_to_the_docs_is_refused(hive, gits):
    await gits["alice"].new_repo("alice/notes", {"a.md": "alpha\n"})
    clone = await gits["bob"].clone("alice/notes")
    await gits["bob"].commit(clone, {"a.md": "bob was here\n"}, "vandalism")
    code, out = await gits["bob"].run("push", cwd=clone, check=False)
    assert code != 0
    assert "forbidden: alice/notes belongs to alice" in out
    docs = await gits["bob"].clone(f.DOCS_REPO)
    await gits["bob"].commit(docs, {"README.md": "mine now\n"}, "take over")
    code, out = await gits["bob"].run("push", cwd=docs, check=False)
    assert code != 0 and "read-only for agents" in out
    # nothing moved: alice's main and the docs are as they were
    again = await gits["operator"].clone("alice/notes", into="check")
    assert (again / "a.md").read_text() == "alpha\n"
    assert (
        "Only the manager"
        in (await gits["operator"].clone(f.DOCS_REPO, "d")).joinpath("README.md").read_text()
    )
    # bob cannot create in alice's namespace either, by push or by verb
    code, out = await gits["bob"].run(
        "push", "hive://alice/bobs-thing", "HEAD:refs/heads/main", cwd=clone, check=False
    )
    assert code != 0 and "not_found: no repository alice/bobs-thing" in out
    async with agent(hive, "bob") as bob:
        with pytest.raises(HiveError) as refused:
            await bob.expect(f.CreateRepo(repo="alice/x"), f.RepoInfo)
    assert refused.value.code == "forbidden" and "your own namespace" in refused.value.message


async def test_the_manager_and_the_operator_write_the_docs(gits):
    docs = await gits["boss"].clone(f.DOCS_REPO)
    await gits["boss"].commit(docs, {"runbook.md": "how we deploy\n"}, "runbook")
    await gits["boss"].run("push", "--quiet", cwd=docs)
    mine = await gits["operator"].clone(f.DOCS_REPO, into="op-docs")
    assert (mine / "runbook.md").read_text() == "how we deploy\n"
    await gits["operator"].commit(mine, {"prompts.md": "be brief\n"}, "prompts")
    await gits["operator"].run("push", "--quiet", cwd=mine)
    await gits["boss"].run("pull", "--quiet", cwd=docs)
    assert (docs / "prompts.md").exists()


async def test_private_repos_are_invisible_to_other_agents(hive, admin, gits):
    async with agent(hive, "alice") as alice:
        row = (await alice.expect(f.CreateRepo(repo="alice/diary", private=True), f.RepoInfo)).repo
    assert row.private and row.writable
    await gits["alice"].run("clone", "--quiet", "hive://alice/diary", "diary")
    async with agent(hive, "bob") as bob:
        names = [r.repo for r in (await bob.expect(f.ListRepos(), f.Repos)).repos]
        assert "alice/diary" not in names
        with pytest.raises(HiveError) as hidden:
            await bob.expect(f.GetRepo(repo="alice/diary"), f.RepoView)
        assert hidden.value.code == "not_found"
    code, out = await gits["bob"].run("clone", "hive://alice/diary", check=False)
    assert code != 0 and "not_found: no repository alice/diary" in out
    await gits["boss"].clone("alice/diary")  # the manager reads everything
    await admin.expect(f.UpdateRepo(repo="alice/diary", private=False), f.RepoInfo)
    await gits["bob"].clone("alice/diary")


async def test_an_agent_cannot_make_anothers_repo_public(hive):
    async with agent(hive, "alice") as alice:
        await alice.expect(f.CreateRepo(repo="alice/diary", private=True), f.RepoInfo)
    async with agent(hive, "boss") as boss:
        with pytest.raises(HiveError) as refused:
            await boss.expect(f.UpdateRepo(repo="alice/diary", private=False), f.RepoInfo)
    assert refused.value.code == "forbidden"


async def test_repos_per_owner_are_capped(short_tmp):
    config = make_config(agents={"alice": {}})
    config.forge.max_repos_per_owner = 2
    from functools import partial

    from c0re_priv.daemon import run_hive
    from tests.conftest import paths_in

    async with trio.open_nursery() as nursery:
        hive = await nursery.start(
            partial(run_hive, config, paths_in(short_tmp, config), handle_signals=False)
        )
        async with agent(hive, "alice") as alice:
            for name in ("one", "two"):
                await alice.expect(f.CreateRepo(repo=f"alice/{name}"), f.RepoInfo)
            with pytest.raises(HiveError) as capped:
                await alice.expect(f.CreateRepo(repo="alice/three"), f.RepoInfo)
        assert capped.value.code == "forbidden" and "max_repos_per_owner" in capped.value.message
        nursery.cancel_scope.cancel()


# ------------------------------------------------------------------ reading through the daemon


async def test_the_tree_and_files_are_read_without_following_symlinks(hive, admin, gits):
    work = await gits["alice"].new_repo("alice/notes", {"docs/guide.md": "# guide\n"})
    os.symlink("/etc/shadow", work / "shadow")
    (work / "big.bin").write_bytes(b"x" * (f.MAX_BLOB_BYTES + 100))
    await gits["alice"].commit(work, {}, "a link and a big file")
    await gits["alice"].run("push", "--quiet", cwd=work)
    view = await admin.expect(f.GetRepo(repo="alice/notes"), f.RepoView)
    assert [b.name for b in view.branches] == ["main"] and view.ref == "main"
    assert [c.subject for c in view.commits] == ["a link and a big file", "first"]
    root = await admin.expect(f.ListTree(repo="alice/notes", rev="main"), f.RepoTree)
    assert [(e.name, e.kind) for e in root.entries] == [
        ("docs", "dir"),
        ("big.bin", "file"),
        ("shadow", "symlink"),
    ]
    link = await admin.expect(f.ReadBlob(repo="alice/notes", rev="main", path="shadow"), f.RepoBlob)
    assert link.data == b"/etc/shadow"  # the link's target, never the file it names
    big = await admin.expect(f.ReadBlob(repo="alice/notes", rev="main", path="big.bin"), f.RepoBlob)
    assert (
        big.truncated and len(big.data) == f.MAX_BLOB_BYTES and big.size == f.MAX_BLOB_BYTES + 100
    )
    sub = await admin.expect(f.ListTree(repo="alice/notes", rev="main", path="docs"), f.RepoTree)
    assert [e.name for e in sub.entries] == ["guide.md"]
    for bad in (
        f.ListTree(repo="alice/notes", rev="main", path="../../etc"),
        f.ReadBlob(repo="alice/notes", rev="main", path="/etc/passwd"),
        f.ReadBlob(repo="alice/notes", rev="--output=/tmp/x", path="a"),
    ):
        with pytest.raises(HiveError) as refused:
            await admin.call(bad)
        assert refused.value.code == "invalid", bad
    with pytest.raises(HiveError) as missing:
        await admin.expect(f.ReadBlob(repo="alice/notes", rev="main", path="docs"), f.RepoBlob)
    assert missing.value.code == "not_found"


# ------------------------------------------------------------------ merge requests


async def fork_with_feature(gits: dict[str, Git]) -> tuple[Path, Path]:
    """alice/notes with main; bob/notes, a fork, with a branch `feat` adding bob.md."""
    alice_work = await gits["alice"].new_repo("alice/notes", {"shared.md": "one\ntwo\nthree\n"})
    bob_work = await gits["bob"].clone("alice/notes", into="bob-notes")
    await gits["bob"].run("remote", "add", "mine", "hive://bob/notes", cwd=bob_work)
    await gits["bob"].run("checkout", "--quiet", "-b", "feat", cwd=bob_work)
    await gits["bob"].commit(bob_work, {"bob.md": "from bob\n"}, "bob's part")
    await gits["bob"].run("push", "--quiet", "mine", "main", "feat", cwd=bob_work)
    return alice_work, bob_work


async def test_a_merge_request_from_open_to_merged(hive, admin, gits):
    alice_work, bob_work = await fork_with_feature(gits)
    since = hive.bus.seq
    async with agent(hive, "bob") as bob, agent(hive, "alice") as alice:
        info = await bob.expect(
            f.OpenMergeRequest(
                repo="alice/notes",
                source_repo="bob/notes",
                source_branch="feat",
                title="Add bob.md",
            ),
            f.MergeRequestInfo,
        )
        mr = info.mr
        assert mr.reviewers == ["alice"] and mr.author == "bob" and mr.state == "open"
        assert info.merge_status == "fast_forward" and "+from bob" in info.diff
        assert [c.subject for c in info.commits] == ["bob's part"]
        # an open thread for its author and for its reviewer
        bob_threads = (await bob.expect(m.GetOpenThreads(), m.OpenThreads)).threads
        alice_threads = (await alice.expect(m.GetOpenThreads(), m.OpenThreads)).threads
        assert [(t.role, t.counterparty) for t in bob_threads] == [("author", "alice")]
        assert [(t.role, t.counterparty) for t in alice_threads] == [("reviewer", "bob")]
        assert all(isinstance(t, f.MergeRequestThread) for t in bob_threads + alice_threads)
        # bob may not merge into alice's repo, nor approve his own request
        with pytest.raises(HiveError) as refused:
            await bob.expect(f.MergeMergeRequest(id=mr.id), f.MergeRequestInfo)
        assert refused.value.code == "forbidden"
        with pytest.raises(HiveError) as own:
            await bob.expect(f.ApproveMergeRequest(id=mr.id), f.MergeRequestInfo)
        assert own.value.code == "forbidden"
        await alice.expect(
            f.CommentMergeRequest(id=mr.id, body="add a newline?"), f.MergeRequestInfo
        )
        approved = await alice.expect(
            f.ApproveMergeRequest(id=mr.id, note="ok"), f.MergeRequestInfo
        )
        assert approved.mr.approvals == ["alice"]
        # a new push to the source moves the head and drops the old approval
        await gits["bob"].commit(bob_work, {"bob.md": "from bob\n\n"}, "newline")
        await gits["bob"].run("push", "--quiet", "mine", "feat", cwd=bob_work)
        moved = await alice.expect(f.GetMergeRequest(id=mr.id), f.MergeRequestInfo)
        assert moved.mr.head_sha != mr.head_sha and moved.mr.approvals == []
        assert [n.kind for n in moved.notes] == ["comment", "approval", "updated"]
        await alice.expect(f.ApproveMergeRequest(id=mr.id), f.MergeRequestInfo)
        merged = await alice.expect(f.MergeMergeRequest(id=mr.id), f.MergeRequestInfo)
        assert merged.mr.state == "merged" and merged.mr.resolved_by == "alice"
        assert merged.mr.merged_sha == moved.mr.head_sha  # a fast-forward
        assert (await bob.expect(m.GetOpenThreads(), m.OpenThreads)).threads == []
        assert (await alice.expect(m.GetOpenThreads(), m.OpenThreads)).threads == []
        with pytest.raises(HiveError) as again:
            await alice.expect(f.MergeMergeRequest(id=mr.id), f.MergeRequestInfo)
        assert again.value.code == "conflict"
    await gits["alice"].run("pull", "--quiet", cwd=alice_work)
    assert (alice_work / "bob.md").read_text() == "from bob\n\n"
    kinds = [type(e).__name__ for e in await events(admin, list(f_kinds()), since)]
    assert kinds[0] == "MergeRequestOpened" and kinds[-2:] == ["MergeRequestMerged", "Pushed"]
    assert kinds.count("MergeRequestUpdated") == 4  # comment, approval, updated, approval


async def test_merge_requests_waiting_on_the_operator_are_in_its_inbox(hive, admin, gits):
    """A request that asks the operator to review it is in the operator's inbox until the
    operator approves its head (a push puts it back); one that only the operator may merge
    (its target's owner was destroyed) is there until it is merged; the operator's own
    requests, and those an agent may merge, never are."""

    async def waiting() -> dict[int, m.InboxItem]:
        items = (await admin.expect(m.GetInbox(), m.Inbox)).items
        return {i.ref or 0: i for i in items if i.kind == "merge_request"}

    _, bob_work = await fork_with_feature(gits)
    await gits["bob"].run("checkout", "--quiet", "-b", "feat2", "main", cwd=bob_work)
    await gits["bob"].commit(bob_work, {"two.md": "two\n"}, "two")
    await gits["bob"].run("push", "--quiet", "mine", "feat2", cwd=bob_work)
    bob_docs = await gits["bob"].clone(f.DOCS_REPO, into="bob-docs")
    await gits["bob"].run("remote", "add", "mine", "hive://bob/docs", cwd=bob_docs)
    await gits["bob"].run("checkout", "--quiet", "-b", "tip", cwd=bob_docs)
    await gits["bob"].commit(bob_docs, {"tip.md": "a tip\n"}, "a tip")
    await gits["bob"].run("push", "--quiet", "mine", "tip", cwd=bob_docs)
    assert await waiting() == {}

    def mr(source_branch: str, title: str, reviewers: tuple[str, ...] = ()) -> f.OpenMergeRequest:
        return f.OpenMergeRequest(
            repo="alice/notes",
            source_repo="bob/notes",
            source_branch=source_branch,
            title=title,
            reviewers=list(reviewers),
        )

    async with agent(hive, "bob") as bob:
        with pytest.raises(HiveError) as unknown:
            await bob.expect(mr("feat", "x", ("nobody",)), f.MergeRequestInfo)
        assert unknown.value.code == "not_found"
        asked = await bob.expect(
            mr("feat", "Add bob.md \x1b[2J please", ("operator",)), f.MergeRequestInfo
        )
        assert asked.mr.reviewers == ["alice", "operator"]
        later = await bob.expect(mr("feat2", "Two"), f.MergeRequestInfo)
        # into the org's docs: the manager (boss) may merge it, so it is not the operator's
        docs = await bob.expect(
            f.OpenMergeRequest(
                repo=f.DOCS_REPO, source_repo="bob/docs", source_branch="tip", title="Tip"
            ),
            f.MergeRequestInfo,
        )
    own = await admin.expect(mr("feat2", "Mine"), f.MergeRequestInfo)

    got = await waiting()
    assert list(got) == [asked.mr.id]
    review = got[asked.mr.id]
    assert review.actions == ["review"] and review.agent == "bob"
    assert "asks you to review" in review.title  # shown, never obeyed: see the terminal below
    assert "bob/notes feat → main" in review.detail and "nobody yet" in review.detail
    assert review.command.startswith(f"hive ctl forge mr {asked.mr.id};")

    # the operator approves it: alice, the target's owner, merges it now
    await admin.expect(f.ApproveMergeRequest(id=asked.mr.id), f.MergeRequestInfo)
    assert await waiting() == {}
    # a push moves the head and drops the approval: asked again
    await gits["bob"].run("checkout", "--quiet", "feat", cwd=bob_work)
    await gits["bob"].commit(bob_work, {"bob.md": "from bob, again\n"}, "again")
    await gits["bob"].run("push", "--quiet", "mine", "feat", cwd=bob_work)
    assert list(await waiting()) == [asked.mr.id]

    # alice is destroyed: nobody but the operator may merge into alice/notes now, approved or
    # not, except the request the operator opened itself
    await admin.expect(m.Destroy(name="alice"), m.Ok)
    got = await waiting()
    assert sorted(got) == sorted([asked.mr.id, later.mr.id])
    assert own.mr.id not in got and docs.mr.id not in got
    assert "only you can merge" in got[later.mr.id].title
    await admin.expect(f.ApproveMergeRequest(id=asked.mr.id), f.MergeRequestInfo)
    got = await waiting()
    assert "only you can merge" in got[asked.mr.id].title
    assert "approved by operator" in got[asked.mr.id].detail

    # from the terminal, the same line and its command
    done = await trio.run_process(
        [sys.executable, "-m", "c0re_priv", "ctl", "inbox", "--run-dir", str(hive.paths.run_dir)],
        capture_stdout=True,
    )
    text = done.stdout.decode()
    assert f"merge_request !{later.mr.id} by bob into alice/notes (only you can merge)" in text
    assert "\x1b" not in text and "Add bob.md \\x1b[2J please" in text
    assert f"hive ctl forge mr {later.mr.id}; hive ctl forge approve {later.mr.id}" in text

    await admin.expect(f.MergeMergeRequest(id=later.mr.id), f.MergeRequestInfo)
    await admin.expect(f.CloseMergeRequest(id=asked.mr.id), f.MergeRequestInfo)
    assert await waiting() == {}


async def test_an_author_has_a_bounded_number_of_open_requests(hive, admin, gits, monkeypatch):
    """An agent stuck opening requests is refused past the cap (the operator is not), and may
    open again once one is closed."""
    from c0re_priv import merge_requests

    monkeypatch.setattr(merge_requests, "MAX_OPEN_PER_AUTHOR", 2)
    await fork_with_feature(gits)
    ask = f.OpenMergeRequest(
        repo="alice/notes",
        source_repo="bob/notes",
        source_branch="feat",
        title="again",
        reviewers=["operator"],
    )
    async with agent(hive, "bob") as bob:
        first = await bob.expect(ask, f.MergeRequestInfo)
        await bob.expect(ask, f.MergeRequestInfo)
        with pytest.raises(HiveError) as capped:
            await bob.expect(ask, f.MergeRequestInfo)
        assert capped.value.code == "conflict" and "at most 2" in capped.value.message
        await bob.expect(f.CloseMergeRequest(id=first.mr.id), f.MergeRequestInfo)
        await bob.expect(ask, f.MergeRequestInfo)
    for _ in range(3):
        await admin.expect(
            f.OpenMergeRequest(
                repo="alice/notes", source_repo="bob/notes", source_branch="feat", title="mine"
            ),
            f.MergeRequestInfo,
        )
    inbox = await admin.expect(m.GetInbox(), m.Inbox)
    assert len([i for i in inbox.items if i.kind == "merge_request"]) == 2


def f_kinds() -> set[str]:
    return {
        "merge_request_opened",
        "merge_request_updated",
        "merge_request_merged",
        "merge_request_closed",
        "pushed",
    }


async def test_a_conflict_is_refused_with_its_files_and_merges_once_resolved(hive, gits):
    alice_work, bob_work = await fork_with_feature(gits)
    await gits["bob"].commit(bob_work, {"shared.md": "one\nTWO (bob)\nthree\n"}, "bob edits")
    await gits["bob"].run("push", "--quiet", "mine", "feat", cwd=bob_work)
    await gits["alice"].commit(
        alice_work, {"shared.md": "one\nTWO (alice)\nthree\n"}, "alice edits"
    )
    await gits["alice"].run("push", "--quiet", cwd=alice_work)
    async with agent(hive, "bob") as bob, agent(hive, "alice") as alice:
        opened = await bob.expect(
            f.OpenMergeRequest(
                repo="alice/notes", source_repo="bob/notes", source_branch="feat", title="edits"
            ),
            f.MergeRequestInfo,
        )
        assert opened.merge_status == "conflict" and opened.conflicts == ["shared.md"]
        mr_id = opened.mr.id
        with pytest.raises(HiveError) as conflict:
            await alice.expect(f.MergeMergeRequest(id=mr_id), f.MergeRequestInfo)
        assert conflict.value.code == "conflict"
        assert "conflicts with main in shared.md" in conflict.value.message
        with pytest.raises(HiveError) as no_ff:
            await alice.expect(
                f.MergeMergeRequest(id=mr_id, method="fast_forward"), f.MergeRequestInfo
            )
        assert no_ff.value.code == "conflict" and "cannot be fast-forwarded" in no_ff.value.message
        still = await alice.expect(f.GetMergeRequest(id=mr_id), f.MergeRequestInfo)
        assert still.mr.state == "open"
        # bob merges main into his branch, resolves, pushes; now it merges with a commit
        await gits["bob"].run(
            "pull", "--quiet", "--no-rebase", "origin", "main", cwd=bob_work, check=False
        )
        (bob_work / "shared.md").write_text("one\nTWO (both)\nthree\n")
        await gits["bob"].run("commit", "--quiet", "-am", "resolve", cwd=bob_work)
        await gits["bob"].run("push", "--quiet", "mine", "feat", cwd=bob_work)
        await gits["alice"].commit(alice_work, {"other.md": "x\n"}, "unrelated")
        await gits["alice"].run("push", "--quiet", cwd=alice_work)
        merged = await alice.expect(
            f.MergeMergeRequest(id=mr_id, message="Take bob's edits"), f.MergeRequestInfo
        )
    assert merged.mr.state == "merged"
    await gits["alice"].run("pull", "--quiet", cwd=alice_work)
    head = (await gits["alice"].run("log", "-1", "--format=%P|%cn|%s", cwd=alice_work))[1]
    parents, committer, subject = head.strip().split("|")
    assert len(parents.split()) == 2 and committer == "alice" and subject == "Take bob's edits"
    assert (alice_work / "shared.md").read_text() == "one\nTWO (both)\nthree\n"


async def test_with_a_git_too_old_for_merge_tree_only_fast_forwards_merge(hive, gits):
    """git before 2.38 cannot merge without a working tree (Ubuntu 22.04 has 2.34)."""
    alice_work, _ = await fork_with_feature(gits)
    await gits["alice"].commit(alice_work, {"alice.md": "alice\n"}, "diverge")
    await gits["alice"].run("push", "--quiet", cwd=alice_work)
    hive.forge.git_version = (2, 34, 1)
    async with agent(hive, "bob") as bob, agent(hive, "alice") as alice:
        opened = await bob.expect(
            f.OpenMergeRequest(
                repo="alice/notes", source_repo="bob/notes", source_branch="feat", title="feat"
            ),
            f.MergeRequestInfo,
        )
        assert opened.merge_status == "needs_merge"
        with pytest.raises(HiveError) as old:
            await alice.expect(f.MergeMergeRequest(id=opened.mr.id), f.MergeRequestInfo)
        assert old.value.code == "unavailable" and "git 2.38 or newer" in old.value.message
        assert (
            await alice.expect(f.GetMergeRequest(id=opened.mr.id), f.MergeRequestInfo)
        ).mr.state == "open"


async def test_a_request_whose_fork_is_gone_still_merges_from_its_kept_head(hive, admin, gits):
    await fork_with_feature(gits)
    async with agent(hive, "bob") as bob:
        opened = await bob.expect(
            f.OpenMergeRequest(
                repo="alice/notes", source_repo="bob/notes", source_branch="feat", title="feat"
            ),
            f.MergeRequestInfo,
        )
    await admin.expect(f.DeleteRepo(repo="bob/notes"), m.Ok)
    async with agent(hive, "alice") as alice:
        merged = await alice.expect(f.MergeMergeRequest(id=opened.mr.id), f.MergeRequestInfo)
    assert merged.mr.state == "merged" and merged.mr.merged_sha == opened.mr.head_sha


async def test_a_forge_dir_the_daemon_cannot_trust_leaves_the_rest_of_the_hive_running(
    short_tmp, tmp_path
):
    from functools import partial

    from c0re_priv.daemon import run_hive
    from tests.conftest import paths_in

    config = make_config(agents={"alice": {}})
    paths = paths_in(short_tmp, config)
    (paths.state_dir / "forge").mkdir(parents=True)
    os.chmod(paths.state_dir, 0o700)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (paths.state_dir / "forge" / "repos").symlink_to(elsewhere)
    async with trio.open_nursery() as nursery:
        hive = await nursery.start(partial(run_hive, config, paths, handle_signals=False))
        async with agent(hive, "alice") as alice:
            with pytest.raises(HiveError) as off:
                await alice.expect(f.ListRepos(), f.Repos)
            assert off.value.code == "unavailable" and "not the daemon's own" in off.value.message
            await alice.expect(m.Send(to="operator", body="still here"), m.Sent)
        assert list(elsewhere.iterdir()) == []
        nursery.cancel_scope.cancel()


async def test_pushing_the_head_into_the_target_marks_the_request_merged(hive, gits):
    work = await gits["alice"].new_repo("alice/notes", {"a.md": "a\n"})
    await gits["alice"].run("checkout", "--quiet", "-b", "topic", cwd=work)
    await gits["alice"].commit(work, {"b.md": "b\n"}, "topic work")
    await gits["alice"].run("push", "--quiet", "origin", "topic", cwd=work)
    async with agent(hive, "alice") as alice:
        mr = (
            await alice.expect(
                f.OpenMergeRequest(
                    repo="alice/notes", source_branch="topic", title="topic", reviewers=["bob"]
                ),
                f.MergeRequestInfo,
            )
        ).mr
        await gits["alice"].run("push", "--quiet", "origin", "topic:main", cwd=work)
        after = (await alice.expect(f.GetMergeRequest(id=mr.id), f.MergeRequestInfo)).mr
    assert after.state == "merged" and after.resolved_by == "alice"


async def test_closing_and_deleting(hive, admin, gits):
    await fork_with_feature(gits)
    async with agent(hive, "bob") as bob:
        first = (
            await bob.expect(
                f.OpenMergeRequest(
                    repo="alice/notes", source_repo="bob/notes", source_branch="feat", title="one"
                ),
                f.MergeRequestInfo,
            )
        ).mr
        second = (
            await bob.expect(
                f.OpenMergeRequest(
                    repo="alice/notes", source_repo="bob/notes", source_branch="feat", title="two"
                ),
                f.MergeRequestInfo,
            )
        ).mr
        closed = await bob.expect(f.CloseMergeRequest(id=first.id, note="dup"), f.MergeRequestInfo)
        assert closed.mr.state == "closed" and closed.merge_status == "resolved"
    async with agent(hive, "boss") as boss:  # neither author nor writer of alice/notes
        with pytest.raises(HiveError) as refused:
            await boss.expect(f.CloseMergeRequest(id=second.id), f.MergeRequestInfo)
        assert refused.value.code == "forbidden"
    await admin.expect(f.DeleteRepo(repo="alice/notes"), m.Ok)
    with pytest.raises(HiveError):
        await admin.expect(f.GetRepo(repo="alice/notes"), f.RepoView)
    rows = (await admin.expect(f.ListMergeRequests(state=None), f.MergeRequests)).merge_requests
    assert rows == []  # their repository is gone, and with it what could be read of them
    assert not (hive.forge.repos_dir / "alice" / "notes.git").exists()


# ------------------------------------------------------------------ hostile names and paths


HOSTILE_URLS = [
    "hive://alice/../bob/notes",
    "hive:///etc/passwd",
    "hive://alice/notes.git",
    "hive://-alice/notes",
    "hive://alice/.notes",
    "hive://alice/notes/extra",
    "hive://Alice/notes",
    "hive://alice/no\ttab",
]
"""One daemon for all of them (a daemon per case made this file minutes long)."""


async def test_hostile_urls_never_reach_the_daemon(gits):
    for url in HOSTILE_URLS:
        code, out = await gits["alice"].run("ls-remote", url, check=False)
        assert code != 0 and "a forge URL is hive://<owner>/<repo>" in out, (url, out)


HOSTILE_REPOS = [
    "alice/../bob",
    "alice/x.git",
    "alice/x.lock",
    "alice/.x",
    "alice/x.",
    "../x/y",
    "alice/-x",
    "/etc/x",
    "alice/a\x00b",
    "alice/é",
]


async def test_hostile_repo_names_are_invalid_on_the_wire(hive):
    async with agent(hive, "alice") as alice:
        for repo in HOSTILE_REPOS:
            for req in (
                f.ForgeConnect(repo=repo, service="git-upload-pack"),
                f.CreateRepo(repo=repo),
                f.GetRepo(repo=repo),
            ):
                with pytest.raises(HiveError) as refused:
                    await alice.call(req)
                assert refused.value.code == "invalid", (repo, req)
    assert sorted(p.name for p in (hive.forge.repos_dir).iterdir()) == ["org-shared"]


HOSTILE_REFS = [
    "refs/heads/-evil",
    "refs/heads/a/-dash",
    "refs/heads/x@y",
    "refs/heads/HEAD",
    "refs/heads/caf\u00e9",
    "refs/mr/1/head",
    "refs/notes/commits",
    "refs/replace/abc",
    "refs/meta/config",
]


async def test_hostile_refs_are_refused_by_the_hook(gits):
    work = await gits["alice"].new_repo("alice/notes", {"a.md": "a\n"})
    for ref in HOSTILE_REFS:
        code, out = await gits["alice"].run("push", "origin", f"HEAD:{ref}", cwd=work, check=False)
        assert code != 0 and ("hive forge: refused" in out or "hidden ref" in out), (ref, out)
    refs = (await gits["alice"].run("ls-remote", "origin", cwd=work))[1]
    assert not [ref for ref in HOSTILE_REFS if ref in refs], refs


async def test_the_default_branch_cannot_be_deleted(gits):
    work = await gits["alice"].new_repo("alice/notes", {"a.md": "a\n"})
    code, out = await gits["alice"].run("push", "origin", ":main", cwd=work, check=False)
    assert code != 0 and "the default branch cannot be deleted" in out
    await gits["alice"].run("push", "--quiet", "origin", "HEAD:refs/heads/scratch", cwd=work)
    await gits["alice"].run("push", "--quiet", "origin", ":scratch", cwd=work)


async def test_malformed_objects_are_refused(gits, tmp_path):
    """A tree entry named `..` is what a checkout escape is made of; fsck refuses it."""
    work = await gits["alice"].new_repo("alice/notes", {"a.md": "a\n"})
    blob = await gits["alice"].run("hash-object", "-w", "--stdin", cwd=work, check=False)
    assert blob[0] == 0
    mktree = await trio.run_process(
        ["git", "mktree"],
        stdin=f"100644 blob {blob[1].strip()}\t..\n".encode(),
        cwd=str(work),
        env=gits["alice"].env(),
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    if mktree.returncode != 0:  # this git refuses to even write such a tree
        pytest.skip("git mktree refuses a '..' entry locally (nothing to push)")
    tree = mktree.stdout.decode().strip()
    commit = (await gits["alice"].run("commit-tree", tree, "-m", "evil", cwd=work))[1].strip()
    code, out = await gits["alice"].run(
        "push", "origin", f"{commit}:refs/heads/evil", cwd=work, check=False
    )
    assert code != 0 and "hasDotdot" in out, out


async def test_a_symlinked_repo_directory_is_refused(hive, gits, tmp_path):
    await gits["alice"].new_repo("alice/notes", {"a.md": "a\n"})
    real = hive.forge.repos_dir / "alice" / "notes.git"
    elsewhere = tmp_path / "elsewhere.git"
    shutil.move(real, elsewhere)
    real.symlink_to(elsewhere)
    code, out = await gits["bob"].run("clone", "hive://alice/notes", check=False)
    assert code != 0 and "not the daemon's own" in out


async def test_a_session_limit_and_a_pack_size_limit(short_tmp, tmp_path):
    from functools import partial

    from c0re_priv.daemon import run_hive
    from tests.conftest import paths_in

    config = make_config(agents={"alice": {}})
    config.forge.max_push_bytes = 4096
    config.forge.session_timeout_seconds = 1.0
    async with trio.open_nursery() as nursery:
        hive = await nursery.start(
            partial(run_hive, config, paths_in(short_tmp, config), handle_signals=False)
        )
        home = tmp_path / "alice"
        home.mkdir()
        git = Git(hive, "alice", home)
        work = await git.new_repo("alice/notes", {"a.md": "small\n"})
        (work / "big.bin").write_bytes(os.urandom(64 * 1024))
        await git.commit(work, {}, "too big")
        code, out = await git.run("push", cwd=work, check=False)
        assert code != 0 and "unpack" in out, out
        # a session that never says anything is ended at the timeout, not held for ever
        async with agent(hive, "alice") as alice:
            async with alice.stream(
                f.ForgeConnect(repo="alice/notes", service="git-receive-pack")
            ) as frames:
                frames_seen = []
                with trio.fail_after(10):
                    async for frame in frames:
                        frames_seen.append(frame)
                        if isinstance(frame, f.ForgeClosed):
                            break
            closed = frames_seen[-1]
            assert isinstance(closed, f.ForgeClosed) and "took longer than 1s" in closed.message
            # and the repository's lock was given back
            await alice.expect(
                f.UpdateRepo(repo="alice/notes", description="still here"), f.RepoInfo
            )
        nursery.cancel_scope.cancel()


async def test_a_caller_hanging_up_mid_clone_ends_its_git_without_a_daemon_error(
    hive, gits, caplog
):
    """The daemon is relaying a pack when its caller stops taking it: git is ended at once
    and that is no daemon error (the failed write once left the relay as an exception group,
    logged with a traceback as an internal error; found by the forge soak)."""
    caplog.set_level(logging.INFO)
    work = await gits["alice"].new_repo("alice/big", {"a.md": "a\n"})
    (work / "big.bin").write_bytes(os.urandom(8 << 20))
    head = await gits["alice"].commit(work, {}, "big")
    await gits["alice"].run("push", "--quiet", cwd=work)

    def pkt(line: str) -> bytes:
        return f"{len(line) + 4:04x}{line}".encode()

    def stop_reading_mid_pack() -> socket.socket:
        """bob asks for the pack like `git clone` would, reads some of it, and hangs up
        (`shutdown(SHUT_RDWR)`: the daemon's next write fails, or the one it is blocked in
        on a full socket buffer; `SHUT_RD` alone wakes no writer that is already blocked)."""
        sock = socket.socket(socket.AF_UNIX)
        sock.settimeout(20)
        sock.connect(str(hive.paths.agent_sock("bob")))
        decoder = FrameDecoder(64 << 20)
        frames: list[bytes] = []

        def next_frame() -> bytes:
            while not frames:
                data = sock.recv(1 << 16)
                assert data, "the daemon hung up first"
                frames.extend(decoder.feed(data))
            return frames.pop(0)

        sock.sendall(encode(m.Hello(protocol=m.PROTOCOL_VERSION, client="test-hang-up")))
        assert isinstance(welcome_decoder.decode(next_frame()), m.Welcome)
        sock.sendall(encode_call(1, f.ForgeConnect(repo="alice/big", service="git-upload-pack")))
        assert isinstance(reply_decoder.decode(next_frame()), f.ForgeOpened)
        wants = pkt(f"want {head}\n") + b"0000" + pkt("done\n")
        sock.sendall(encode_call(2, f.ForgeWrite(call=1, seq=0, data=wants, eof=True)))
        relayed = 0
        while relayed < 256 << 10:  # well into the pack, with megabytes still to come
            reply = reply_decoder.decode(next_frame())
            assert not isinstance(reply, f.ForgeClosed | m.Error), reply
            if isinstance(reply, f.ForgeData) and not reply.stderr:
                relayed += len(reply.data)
        sock.shutdown(socket.SHUT_RDWR)
        return sock

    with await trio.to_thread.run_sync(stop_reading_mid_pack):
        with trio.fail_after(15):  # the session ends (git killed), not at session_timeout
            while hive.forge._active:
                await trio.sleep(0.05)
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert errors == [], [r.getMessage() for r in errors]


# ------------------------------------------------------------------ the transport itself


async def test_writes_apply_in_seq_order_whatever_order_they_arrive_in():
    proc = await trio.lowlevel.open_process(["cat"], stdin=-1, stdout=-1)
    session = GitSession(proc)
    async with trio.open_nursery() as nursery:
        for seq in (3, 1, 2, 0):
            nursery.start_soon(session.write, seq, str(seq).encode(), seq == 3)
    assert proc.stdout is not None
    out = b""
    while chunk := await proc.stdout.receive_some(100):
        out += chunk
    await proc.wait()
    assert out == b"0123"
    with pytest.raises(Exception, match="already applied"):
        await session.write(1, b"again", False)
    session.close()
    with pytest.raises(Exception, match="has ended"):
        await session.write(4, b"", True)


async def test_a_write_for_no_session_is_not_found(hive):
    async with agent(hive, "alice") as alice:
        with pytest.raises(HiveError) as missing:
            await alice.expect(f.ForgeWrite(call=999, seq=0, data=b"x"), m.Ok)
    assert missing.value.code == "not_found"


async def test_the_web_socket_cannot_carry_git(hive):
    async with HiveClient.connect(str(hive.paths.web_sock)) as web:
        with pytest.raises(HiveError) as refused:
            await web.call(f.ForgeConnect(repo="org-shared/docs", service="git-receive-pack"))
    assert refused.value.code == "forbidden"


async def test_two_agents_push_and_clone_at_once(hive, gits):
    """Pushes to one repository queue behind its lock; clones run alongside."""
    work = await gits["alice"].new_repo("alice/notes", {"a.md": "a\n"})
    branches = []
    for i in range(4):
        await gits["alice"].run("checkout", "--quiet", "-b", f"b{i}", "main", cwd=work)
        await gits["alice"].commit(work, {f"f{i}.md": f"{i}\n"}, f"branch {i}")
        branches.append(f"b{i}")

    async def push(branch: str) -> None:
        await gits["alice"].run("push", "--quiet", "origin", branch, cwd=work)

    async def clone(i: int) -> None:
        await gits["bob"].clone("alice/notes", into=f"c{i}")

    async with trio.open_nursery() as nursery:
        for branch in branches:
            nursery.start_soon(push, branch)
        for i in range(3):
            nursery.start_soon(clone, i)
    refs = (await gits["bob"].run("ls-remote", "hive://alice/notes"))[1]
    for branch in branches:
        assert f"refs/heads/{branch}" in refs


def test_every_forge_verb_decodes_only_on_the_sockets_meant_for_it():
    agent_ops = {m.op_of(t) for t in m.AGENT_REQUESTS}
    web_ops = {m.op_of(t) for t in m.WEB_REQUESTS}
    admin_ops = {m.op_of(t) for t in m.ADMIN_REQUESTS}
    assert {"forge_connect", "forge_write", "mr_merge"} <= agent_ops
    assert "forge_delete_repo" not in agent_ops and "forge_delete_repo" in admin_ops
    assert not {"forge_connect", "forge_write", "forge_delete_repo"} & web_ops
    decoded = msgspec.msgpack.decode(
        msgspec.msgpack.encode({"id": 1, "req": {"op": "forge_delete_repo", "repo": "alice/x"}}),
        type=m.call_type("admin"),
    )
    assert isinstance(decoded.req, f.DeleteRepo)
