"""Merge requests: open, discuss, approve, merge or close a branch's way into another.

A merge request names a target (`repo`, `target_branch`) and a source (`source_repo`,
`source_branch`; a fork or the same repository). Its head — the source's commit as last
seen — is kept in the target repository as `refs/mr/<id>/head`, so the request's commits
survive whatever happens to the source, and every push to the source branch moves it
(dropping approvals of the old head). Merging happens in the daemon, without a working
tree: a fast-forward, or `git merge-tree --write-tree` and a merge commit by whoever
merged; a conflict is refused with the files that conflict, and the target branch moves
with a compare-and-swap under the repository's lock. A push that lands an open request's
head in its target branch marks the request merged. Every change publishes an event;
open requests are open threads for their author and reviewers (`open_threads`).

Who may do what: reading follows the target repository's readers; approving is for its
reviewers, the target's writers and the operator, never the author; merging is for the
target's writers; closing for the author and the target's writers.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable

import trio

from protocol.messages import forge as f

from .errors import Fail
from .events import EventBus
from .forge import MERGE_TREE_GIT, OPERATOR, Forge, Who, may_read, may_write, split
from .forge_git import BareRepo
from .meta_repo import GitError
from .registry import Registry
from .store import Store

log = logging.getLogger(__name__)
MR_COMMITS = 100
MAX_OPEN_PER_AUTHOR = 50
"""Open merge requests one author may have at once: an agent stuck in a loop cannot bury the
reviewers, or the operator's inbox, in requests."""


def head_ref(mr_id: int) -> str:
    return f"refs/mr/{mr_id}/head"


class MergeRequests:
    def __init__(
        self,
        forge: Forge,
        store: Store,
        bus: EventBus,
        registry: Registry,
        now: Callable[[], float],
    ) -> None:
        self.forge = forge
        self.store = store
        self.bus = bus
        self.registry = registry
        self.now = now
        forge.on_push.append(self.pushed)

    # ---------------------------------------------------------------- rows

    @staticmethod
    def _row(conn: sqlite3.Connection, r: sqlite3.Row) -> f.MergeRequestRow:
        reviewers = [
            x[0]
            for x in conn.execute(
                "SELECT agent FROM merge_request_reviewers WHERE mr_id = ? ORDER BY agent",
                (r["id"],),
            )
        ]
        approvals = [
            x[0]
            for x in conn.execute(
                "SELECT DISTINCT author FROM merge_request_notes"
                " WHERE mr_id = ? AND kind = 'approval' AND sha = ? ORDER BY author",
                (r["id"], r["head_sha"]),
            )
        ]
        comments = conn.execute(
            "SELECT count(*) FROM merge_request_notes WHERE mr_id = ? AND kind = 'comment'",
            (r["id"],),
        ).fetchone()[0]
        return f.MergeRequestRow(
            id=r["id"],
            repo=r["repo"],
            source_repo=r["source_repo"],
            source_branch=r["source_branch"],
            target_branch=r["target_branch"],
            title=r["title"],
            description=r["description"],
            author=r["author"],
            reviewers=reviewers,
            state=r["state"],
            head_sha=r["head_sha"],
            approvals=approvals,
            comments=int(comments),
            created_at=r["created_at"],
            updated_at=r["updated_at"],
            merged_sha=r["merged_sha"],
            resolved_by=r["resolved_by"],
            resolved_at=r["resolved_at"],
        )

    async def _fetch(self, mr_id: int) -> f.MergeRequestRow | None:
        def read(conn: sqlite3.Connection) -> f.MergeRequestRow | None:
            r = conn.execute("SELECT * FROM merge_requests WHERE id = ?", (mr_id,)).fetchone()
            return self._row(conn, r) if r is not None else None

        return await self.store.read(read)

    async def readable(self, who: Who, mr_id: int) -> f.MergeRequestRow:
        """The request if `who` may read its target repository; `not_found` otherwise."""
        self.forge.require()
        mr = await self._fetch(mr_id)
        if mr is None:
            raise Fail("not_found", f"no merge request !{mr_id}")
        try:
            await self.forge.readable(who, mr.repo)
        except Fail as exc:
            if exc.code == "not_found":  # a private target: the request is not there for you
                raise Fail("not_found", f"no merge request !{mr_id}") from None
            raise
        return mr

    async def _note(
        self, mr_id: int, author: str, kind: str, body: str, sha: str | None, **sets: object
    ) -> f.MergeRequestRow:
        """Add a note to the discussion (and change columns, `sets`) in one write; the row."""
        now = self.now()
        columns = {"updated_at": now, **sets}

        def write(conn: sqlite3.Connection) -> f.MergeRequestRow:
            assignments = ", ".join(f"{k} = ?" for k in columns)
            conn.execute(
                f"UPDATE merge_requests SET {assignments} WHERE id = ?",
                (*columns.values(), mr_id),
            )
            conn.execute(
                "INSERT INTO merge_request_notes (mr_id, author, kind, body, sha, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (mr_id, author, kind, body, sha, now),
            )
            r = conn.execute("SELECT * FROM merge_requests WHERE id = ?", (mr_id,)).fetchone()
            return self._row(conn, r)

        return await self.store.write(write)

    # ---------------------------------------------------------------- reads

    async def list_requests(
        self,
        who: Who,
        repo: str | None,
        state: f.MergeRequestState | None,
        involving: str | None,
        limit: int,
    ) -> list[f.MergeRequestRow]:
        self.forge.require()

        def read(conn: sqlite3.Connection) -> list[f.MergeRequestRow]:
            where, args = [], []
            if repo is not None:
                where.append("m.repo = ?")
                args.append(repo)
            if state is not None:
                where.append("m.state = ?")
                args.append(state)
            if involving is not None:
                where.append(
                    "(m.author = ? OR m.id IN"
                    " (SELECT mr_id FROM merge_request_reviewers WHERE agent = ?))"
                )
                args += [involving, involving]
            sql = (
                "SELECT m.*, r.owner AS target_owner, r.private AS target_private"
                " FROM merge_requests m JOIN forge_repos r ON r.owner || '/' || r.name = m.repo"
            )
            if where:
                sql += " WHERE " + " AND ".join(where)
            rows = []
            for r in conn.execute(sql + " ORDER BY m.id DESC", args):
                if may_read(who, r["target_owner"], bool(r["target_private"])):
                    rows.append(self._row(conn, r))
                    if len(rows) >= limit:
                        break
            return rows

        return await self.store.read(read)

    def _agent_writers(self) -> Callable[[str], bool]:
        """Whether a registered agent may merge into a repository (its owner is an agent, or
        it is the org's and the hive has a manager), as of now: a plain function, safe to
        call from the store's reader thread."""
        agents = frozenset(self.registry.agents)
        manager = any(a.role == "manager" for a in self.registry.agents.values())

        def agent_may_merge(repo: str) -> bool:
            owner, _ = split(repo)
            return manager if owner == f.ORG else owner in agents

        return agent_may_merge

    async def waiting_on_operator(self) -> list[f.MergeRequestRow]:
        """Open requests that wait on the operator, newest change first: those that name the
        operator as a reviewer and lack its approval of their head, and those nobody but the
        operator may merge (unless the operator opened them). Empty without a forge."""
        if not self.forge.available:
            return []
        agent_may_merge = self._agent_writers()

        def read(conn: sqlite3.Connection) -> list[f.MergeRequestRow]:
            asked = conn.execute(
                "SELECT m.* FROM merge_requests m JOIN merge_request_reviewers r"
                " ON r.mr_id = m.id AND r.agent = ? WHERE m.state = 'open'",
                (OPERATOR,),
            ).fetchall()
            others = conn.execute(
                "SELECT * FROM merge_requests WHERE state = 'open' AND author != ?",
                (OPERATOR,),
            ).fetchall()
            # only the operator merges these: they wait on it, approved or not
            only_operator = {r["id"]: r for r in others if not agent_may_merge(r["repo"])}
            rows = [self._row(conn, r) for r in asked if r["id"] not in only_operator]
            return [mr for mr in rows if OPERATOR not in mr.approvals] + [
                self._row(conn, r) for r in only_operator.values()
            ]

        found = await self.store.read(read)
        return sorted(found, key=lambda mr: mr.updated_at, reverse=True)

    async def info(self, who: Who, mr_id: int) -> f.MergeRequestInfo:
        """The request with its discussion, its commits, its diff and whether it merges."""
        mr = await self.readable(who, mr_id)

        def notes(conn: sqlite3.Connection) -> list[f.MergeRequestNote]:
            return [
                f.MergeRequestNote(
                    id=r["id"],
                    author=r["author"],
                    kind=r["kind"],
                    body=r["body"],
                    sha=r["sha"],
                    created_at=r["created_at"],
                )
                for r in conn.execute(
                    "SELECT * FROM merge_request_notes WHERE mr_id = ? ORDER BY id", (mr_id,)
                )
            ]

        discussion = await self.store.read(notes)
        git = self.forge.repo_git(mr.repo)
        head = await git.resolve_ref(head_ref(mr.id))
        base = await git.resolve(mr.target_branch)
        commits: list[f.CommitRow] = []
        diff, truncated = "", False
        if head is not None:
            commits = await git.log(head, MR_COMMITS, exclude=base)
            merge_base = await git.merge_base(base, head) if base is not None else None
            diff, truncated = await git.diff(
                merge_base or await git.empty_tree(), head, f.MAX_DIFF_BYTES
            )
        status, conflicts = await self._merge_status(git, mr, base, head)
        return f.MergeRequestInfo(
            mr=mr,
            notes=discussion,
            commits=commits,
            diff=diff,
            diff_truncated=truncated,
            merge_status=status,
            conflicts=conflicts,
        )

    async def _merge_status(
        self, git: BareRepo, mr: f.MergeRequestRow, base: str | None, head: str | None
    ) -> tuple[f.MergeStatus, list[str]]:
        if mr.state != "open":
            return "resolved", []
        if head is None:
            return "no_source", []
        if base is None or await git.is_ancestor(base, head):
            return ("up_to_date" if base == head else "fast_forward"), []
        if await git.is_ancestor(head, base):
            return "up_to_date", []
        if self.forge.git_version < MERGE_TREE_GIT:
            return "needs_merge", []
        merged = await git.merge_tree(base, head)
        return ("clean", []) if merged.tree is not None else ("conflict", merged.conflicts)

    # ---------------------------------------------------------------- open

    async def open_request(self, who: Who, req: f.OpenMergeRequest) -> f.MergeRequestInfo:
        target = await self.forge.readable(who, req.repo)
        source_repo = req.source_repo or req.repo
        await self.forge.readable(who, source_repo)
        if source_repo == req.repo and req.source_branch == req.target_branch:
            raise Fail("invalid", "the source and the target are the same branch")
        source_git = self.forge.repo_git(source_repo)
        head = await source_git.resolve_ref(f"refs/heads/{req.source_branch}")
        if head is None:
            raise Fail("not_found", f"{source_repo} has no branch {req.source_branch!r}")
        target_git = self.forge.repo_git(req.repo)
        if await target_git.resolve_ref(
            f"refs/heads/{req.target_branch}"
        ) is None and await target_git.refs("refs/heads/"):
            raise Fail("not_found", f"{req.repo} has no branch {req.target_branch!r}")
        reviewers = sorted(set(req.reviewers) - {who.name})
        unknown = [r for r in reviewers if r != OPERATOR and r not in self.registry.agents]
        if unknown:
            raise Fail("not_found", f"no agent {', '.join(unknown)} to review")
        if target.owner in self.registry.agents and target.owner != who.name:
            reviewers = sorted({*reviewers, target.owner})
        now = self.now()

        def insert(conn: sqlite3.Connection) -> int:
            (open_now,) = conn.execute(
                "SELECT count(*) FROM merge_requests WHERE author = ? AND state = 'open'",
                (who.name,),
            ).fetchone()
            if open_now >= MAX_OPEN_PER_AUTHOR and who.role != "operator":
                raise Fail(
                    "conflict",
                    f"you have {open_now} open merge requests (at most {MAX_OPEN_PER_AUTHOR}):"
                    " merge or close some first",
                )
            cur = conn.execute(
                "INSERT INTO merge_requests (repo, source_repo, source_branch, target_branch,"
                " title, description, author, state, head_sha, created_at, updated_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, 'open', ?, ?, ?)",
                (
                    req.repo,
                    source_repo,
                    req.source_branch,
                    req.target_branch,
                    req.title,
                    req.description,
                    who.name,
                    head,
                    now,
                    now,
                ),
            )
            mr_id = int(cur.lastrowid or 0)
            conn.executemany(
                "INSERT INTO merge_request_reviewers (mr_id, agent) VALUES (?, ?)",
                [(mr_id, r) for r in reviewers],
            )
            return mr_id

        # under the target's lock: a merge (which takes it too) never sees the new row
        # before its head is kept as refs/mr/<id>/head
        async with self.forge.locked(req.repo):
            mr_id = await self.store.write(insert)
            try:
                await self._keep_head(
                    target_git, source_repo, req.repo, req.source_branch, mr_id, head
                )
            except BaseException:
                with trio.CancelScope(shield=True):
                    await self.store.write(
                        lambda c: c.execute("DELETE FROM merge_requests WHERE id = ?", (mr_id,))
                    )
                raise
        mr = await self._fetch(mr_id)
        assert mr is not None
        self.bus.publish(f.MergeRequestOpened(mr=mr))
        log.info("forge: %s opened !%d on %s", who.name, mr_id, req.repo)
        return await self.info(who, mr_id)

    async def _keep_head(
        self,
        target_git: BareRepo,
        source_repo: str,
        target_repo: str,
        source_branch: str,
        mr_id: int,
        head: str,
    ) -> str:
        """Make `refs/mr/<id>/head` in the target point at `head` (fetched from a fork)."""
        if source_repo == target_repo:
            await target_git.git("update-ref", "--end-of-options", head_ref(mr_id), head)
            return head
        got = await target_git.fetch_ref(
            self.forge.checked_path(source_repo), f"refs/heads/{source_branch}", head_ref(mr_id)
        )
        if got is None:
            raise Fail("not_found", f"{source_repo} has no branch {source_branch!r} any more")
        return got

    # ---------------------------------------------------------------- follow pushes

    async def pushed(self, repo: str, by: str, updates: list[f.RefUpdate]) -> None:
        """A push (or a merge) moved refs of `repo`: move the heads of the open requests
        from its branches, and mark merged those whose head is now in their target."""
        moved = {u.ref.removeprefix("refs/heads/"): u.new for u in updates}

        def affected(conn: sqlite3.Connection) -> list[sqlite3.Row]:
            return list(
                conn.execute(
                    "SELECT * FROM merge_requests WHERE state = 'open'"
                    " AND (source_repo = ? OR repo = ?) ORDER BY id",
                    (repo, repo),
                )
            )

        for r in await self.store.read(affected):
            try:
                if r["source_repo"] == repo and r["source_branch"] in moved:
                    await self._follow_source(r["id"], by)
                if r["repo"] == repo and r["target_branch"] in moved:
                    await self._merged_by_push(r["id"], by)
            except (Fail, GitError) as exc:
                log.warning("forge: !%d after a push to %s: %s", r["id"], repo, exc)

    async def _follow_source(self, mr_id: int, by: str) -> f.MergeRequestRow | None:
        """Move the request's head to its source branch's commit; the row when it moved."""
        mr = await self._fetch(mr_id)
        if mr is None or mr.state != "open":
            return None
        source_git = self.forge.repo_git(mr.source_repo)
        new = await source_git.resolve_ref(f"refs/heads/{mr.source_branch}")
        if new is None or new == mr.head_sha:
            return None
        target_git = self.forge.repo_git(mr.repo)
        new = await self._keep_head(
            target_git, mr.source_repo, mr.repo, mr.source_branch, mr.id, new
        )
        row = await self._note(mr.id, by, "updated", "", new, head_sha=new)
        self.bus.publish(f.MergeRequestUpdated(mr=row, change="updated", by=by))
        return row

    async def _merged_by_push(self, mr_id: int, by: str) -> None:
        mr = await self._fetch(mr_id)
        if mr is None or mr.state != "open":
            return
        git = self.forge.repo_git(mr.repo)
        target = await git.resolve_ref(f"refs/heads/{mr.target_branch}")
        head = await git.resolve_ref(head_ref(mr.id))
        if target is None or head is None or not await git.is_ancestor(head, target):
            return
        row = await self._note(
            mr.id,
            by,
            "merged",
            f"pushed to {mr.target_branch}",
            target,
            state="merged",
            merged_sha=target,
            resolved_by=by,
            resolved_at=self.now(),
        )
        self.bus.publish(f.MergeRequestMerged(mr=row))

    # ---------------------------------------------------------------- discuss

    async def comment(self, who: Who, mr_id: int, body: str) -> f.MergeRequestInfo:
        await self.readable(who, mr_id)
        row = await self._note(mr_id, who.name, "comment", body, None)
        self.bus.publish(f.MergeRequestUpdated(mr=row, change="comment", by=who.name))
        return await self.info(who, mr_id)

    async def approve(self, who: Who, mr_id: int, note: str) -> f.MergeRequestInfo:
        mr = await self.readable(who, mr_id)
        if mr.state != "open":
            raise Fail("conflict", f"!{mr_id} is {mr.state}")
        if who.name == mr.author:
            raise Fail("forbidden", "you cannot approve your own merge request")
        owner, _ = split(mr.repo)
        if not (who.role == "operator" or who.name in mr.reviewers or may_write(who, owner)):
            raise Fail(
                "forbidden",
                f"only the reviewers of !{mr_id} ({', '.join(mr.reviewers) or 'none'}) and"
                f" those who may write {mr.repo} approve it",
            )
        if who.name not in mr.approvals:
            row = await self._note(mr_id, who.name, "approval", note, mr.head_sha)
            self.bus.publish(f.MergeRequestUpdated(mr=row, change="approval", by=who.name))
        return await self.info(who, mr_id)

    async def close(self, who: Who, mr_id: int, note: str) -> f.MergeRequestInfo:
        mr = await self.readable(who, mr_id)
        if mr.state != "open":
            raise Fail("conflict", f"!{mr_id} is already {mr.state}")
        owner, _ = split(mr.repo)
        if who.name != mr.author and not may_write(who, owner):
            raise Fail(
                "forbidden", f"only {mr.author} and those who may write {mr.repo} close !{mr_id}"
            )
        await self._resolve_closed(mr_id, who.name, note)
        return await self.info(who, mr_id)

    async def _resolve_closed(self, mr_id: int, by: str, note: str) -> None:
        row = await self._note(
            mr_id, by, "closed", note, None, state="closed", resolved_by=by, resolved_at=self.now()
        )
        self.bus.publish(f.MergeRequestClosed(mr=row))

    async def repo_deleted(self, mr_ids: list[int]) -> None:
        for mr_id in mr_ids:
            await self._resolve_closed(mr_id, OPERATOR, "the target repository was deleted")

    # ---------------------------------------------------------------- merge

    async def merge(
        self, who: Who, mr_id: int, method: f.MergeMethod, message: str
    ) -> f.MergeRequestInfo:
        mr = await self.readable(who, mr_id)
        if mr.state != "open":
            raise Fail("conflict", f"!{mr_id} is already {mr.state}")
        await self.forge.writable(who, mr.repo)
        try:
            await self._follow_source(mr_id, who.name)  # merge what the source has now
        except Fail as exc:
            if exc.code != "not_found":
                raise
            # the source repository is gone: its commits are kept here, as refs/mr/<id>/head
        async with self.forge.locked(mr.repo):
            git = self.forge.repo_git(mr.repo)
            ref = f"refs/heads/{mr.target_branch}"
            base = await git.resolve_ref(ref)
            head = await git.resolve_ref(head_ref(mr_id))
            if head is None:
                raise Fail("not_found", f"!{mr_id} has lost its head commit")
            note = ""
            if base is not None and await git.is_ancestor(head, base):
                new, note = base, f"{mr.target_branch} already contains it"
            elif method != "merge" and (base is None or await git.is_ancestor(base, head)):
                new, note = head, "fast-forward"
            elif method == "fast_forward":
                behind = len(await git.log(base or head, MR_COMMITS, exclude=head))
                raise Fail(
                    "conflict",
                    f"!{mr_id} cannot be fast-forwarded: {mr.target_branch} has"
                    f" {behind}{'+' if behind >= MR_COMMITS else ''} commit(s) that"
                    f" {mr.source_branch} lacks; merge with method=merge, or rebase"
                    f" {mr.source_branch} on {mr.target_branch} and push it",
                )
            else:
                assert base is not None
                if self.forge.git_version < MERGE_TREE_GIT:
                    raise Fail(
                        "unavailable",
                        f"the host's git ({'.'.join(map(str, self.forge.git_version))}) cannot"
                        " write a merge commit without a working tree (git 2.38 or newer can):"
                        f" merge {mr.target_branch} into {mr.source_branch}, push, and merge"
                        " again (a fast-forward)",
                    )
                merged = await git.merge_tree(base, head)
                if merged.tree is None:
                    files = ", ".join(merged.conflicts[:20])
                    more = len(merged.conflicts) - 20
                    raise Fail(
                        "conflict",
                        f"!{mr_id} conflicts with {mr.target_branch} in"
                        f" {files}{f' and {more} more' if more > 0 else ''}: merge"
                        f" {mr.target_branch} into {mr.source_branch}, resolve, push, and"
                        " merge again",
                    )
                text = message or f"Merge !{mr_id}: {mr.title}"
                text += f"\n\n{mr.source_repo} {mr.source_branch} into {mr.target_branch}\n"
                new = await git.commit_tree(merged.tree, [base, head], text, who.identity)
                note = "merge commit"
            if new != base:
                try:
                    await git.update_ref(ref, new, base)
                except GitError as exc:
                    raise Fail(
                        "conflict", f"{mr.target_branch} moved while merging; try again ({exc})"
                    ) from None
            row = await self._note(
                mr_id,
                who.name,
                "merged",
                note,
                new,
                state="merged",
                merged_sha=new,
                resolved_by=who.name,
                resolved_at=self.now(),
            )
            self.bus.publish(f.MergeRequestMerged(mr=row))
            if new != base:
                await self.forge.record_update(mr.repo, who.name, ref, base, new)
        log.info("forge: %s merged !%d into %s %s", who.name, mr_id, mr.repo, mr.target_branch)
        return await self.info(who, mr_id)
