"""The forge's MCP tools: repositories and merge requests, for every agent (and the manager).

Git itself needs no tool: `git clone/fetch/push hive://<owner>/<repo>` works in the
container (`git-remote-hive`). These tools cover what git cannot say: which repositories
there are, creating one or making it private, and merge requests — open, list, show (with
the diff), comment, approve, merge, close. Each is one verb on the agent's socket, with the
verb's field names as arguments, checked before anything is sent; repository and branch
names are checked with the forge's own rules so a bad one is refused in words.
"""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Any

from mcp.server.mcpserver.exceptions import ToolError

from protocol.messages import forge as f
from protocol.validate import InvalidRequest, build

if TYPE_CHECKING:
    from .mcp_server import Tools


DIFF_SHOWN = 20_000
"""Characters of a diff a tool returns; the rest is a `git fetch` away."""

FORGE_TOOLS: tuple[str, ...] = (
    "forge_list_repos",
    "forge_create_repo",
    "forge_update_repo",
    "forge_show_repo",
    "mr_open",
    "mr_list",
    "mr_show",
    "mr_comment",
    "mr_approve",
    "mr_merge",
    "mr_close",
)
FORGE_INSTRUCTIONS = """

Your git repositories live on the hive's forge: `git clone hive://<owner>/<repo>`. Pushing to
`hive://<you>/<name>` creates it; other agents' repositories are yours to read, not to push
to; `hive://org-shared/docs` holds the hive's shared docs (read only). To change someone
else's repository, push a branch to one of yours and open a merge request (`mr_open`);
merge requests you opened or review are among your open threads."""


def _when(ts: float | None) -> str:
    if ts is None:
        return "never"
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


def format_repo(r: f.RepoRow) -> str:
    access = "you can push" if r.writable else "read only"
    text = f"{r.repo} ({'private' if r.private else 'public'}, {access}) {r.url}"
    if r.open_merge_requests:
        text += f", {r.open_merge_requests} open merge request(s)"
    if r.description:
        text += f": {r.description}"
    return text


def format_mr(mr: f.MergeRequestRow) -> str:
    source = (
        mr.source_branch if mr.source_repo == mr.repo else f"{mr.source_repo} {mr.source_branch}"
    )
    text = (
        f"!{mr.id} [{mr.state}] {mr.title} — {source} → {mr.repo} {mr.target_branch}, by"
        f" {mr.author}; reviewers: {', '.join(mr.reviewers) or '-'}; approved by:"
        f" {', '.join(mr.approvals) or '-'}"
    )
    if mr.state != "open" and mr.resolved_by:
        text += f"; {mr.state} by {mr.resolved_by}"
    return text


def format_info(info: f.MergeRequestInfo, with_diff: bool = True) -> str:
    mr = info.mr
    lines = [
        format_mr(mr),
        f"head {mr.head_sha[:12]} (fetch it: git fetch hive://{mr.repo} refs/mr/{mr.id}/head)",
    ]
    if mr.state == "open":
        status = {
            "fast_forward": "merges as a fast-forward",
            "clean": "merges cleanly (a merge commit)",
            "conflict": f"CONFLICTS in {', '.join(info.conflicts)}",
            "up_to_date": "already in the target",
            "no_source": "its head is gone",
            "needs_merge": "needs a merge commit, which the hive's git is too old to write",
        }.get(info.merge_status, info.merge_status)
        lines.append(status)
    if mr.description:
        lines += ["", mr.description]
    if info.notes:
        lines.append("")
        for n in info.notes:
            body = f": {n.body}" if n.body else ""
            lines.append(f"[{_when(n.created_at)}] {n.author} {n.kind}{body}")
    if info.commits:
        lines.append("")
        lines += [f"{c.sha[:10]} {c.author}: {c.subject}" for c in info.commits]
    if with_diff and info.diff:
        diff = info.diff
        cut = len(diff) > DIFF_SHOWN or info.diff_truncated
        lines += ["", diff[:DIFF_SHOWN].rstrip("\n")]
        if cut:
            lines.append(
                f"(diff cut short; git fetch hive://{mr.repo} refs/mr/{mr.id}/head to see it all)"
            )
    return "\n".join(lines)


def _check_repo(value: str | None) -> None:
    if value is not None and (problem := f.repo_problem(value)) is not None:
        raise ToolError(f"invalid: repo: {problem}")


def _check_branch(field: str, value: str | None) -> None:
    if value is not None and (problem := f.branch_problem(value)) is not None:
        raise ToolError(f"invalid: {field}: {problem}")


class ForgeTools:
    """The forge's tools, calling the daemon through the agent's `Tools`."""

    def __init__(self, tools: Tools) -> None:
        self.tools = tools

    async def _call(self, verb: type[Any], reply: type[Any], **fields: Any) -> Any:
        return await self.tools.call(verb, reply, **fields)

    # ------------------------------------------------------------------ repositories

    async def forge_list_repos(self, owner: str | None = None) -> str:
        """The repositories you can read (optionally one owner's): who may push, their clone URL."""
        repos = (await self._call(f.ListRepos, f.Repos, owner=owner)).repos
        return "\n".join(format_repo(r) for r in repos) or "(no repositories)"

    async def forge_create_repo(
        self, repo: str, private: bool = False, description: str = ""
    ) -> str:
        """Create an empty repository `repo` ("<you>/<name>"); `private` hides it from the other
        agents. (A first `git push` to hive://<you>/<name> creates a public one too.)"""
        _check_repo(repo)
        got = await self._call(
            f.CreateRepo, f.RepoInfo, repo=repo, private=private, description=description
        )
        return f"created {format_repo(got.repo)}"

    async def forge_update_repo(
        self, repo: str, private: bool | None = None, description: str | None = None
    ) -> str:
        """Make one of your repositories private or public, or change its description."""
        _check_repo(repo)
        got = await self._call(
            f.UpdateRepo, f.RepoInfo, repo=repo, private=private, description=description
        )
        return format_repo(got.repo)

    async def forge_show_repo(self, repo: str, ref: str | None = None, commits: int = 20) -> str:
        """A repository's branches and its last `commits` commits on `ref` (default: its
        default branch)."""
        _check_repo(repo)
        view = await self._call(f.GetRepo, f.RepoView, repo=repo, ref=ref, commits=commits)
        lines = [format_repo(view.repo)]
        if not view.branches:
            return lines[0] + "\n(empty: nothing pushed yet)"
        lines.append("branches: " + ", ".join(f"{b.name} ({b.sha[:10]})" for b in view.branches))
        if view.tags:
            lines.append("tags: " + ", ".join(t.name for t in view.tags))
        lines.append(f"commits on {view.ref}:")
        lines += [
            f"{c.sha[:10]} {c.author} {_when(c.committed_at)}: {c.subject}" for c in view.commits
        ]
        return "\n".join(lines)

    # ------------------------------------------------------------------ merge requests

    async def mr_open(
        self,
        repo: str,
        source_branch: str,
        title: str,
        target_branch: str = "main",
        source_repo: str | None = None,
        description: str = "",
        reviewers: list[str] | None = None,
    ) -> str:
        """Ask to merge `source_branch` (of `source_repo`, default `repo`) into `repo`'s
        `target_branch`. `reviewers` are agents asked to review (the target's owner always is),
        or "operator" to ask the operator, in whose inbox it then waits."""
        _check_repo(repo)
        _check_repo(source_repo)
        _check_branch("source_branch", source_branch)
        _check_branch("target_branch", target_branch)
        got = await self._call(
            f.OpenMergeRequest,
            f.MergeRequestInfo,
            repo=repo,
            source_branch=source_branch,
            title=title,
            target_branch=target_branch,
            source_repo=source_repo,
            description=description,
            reviewers=reviewers or [],
        )
        return "opened " + format_info(got, with_diff=False)

    async def mr_list(
        self,
        repo: str | None = None,
        state: str = "open",
        involving: str | None = None,
        limit: int = 100,
    ) -> str:
        """Merge requests you can read, newest first (at most `limit`): of one `repo`, in one
        `state` (open, merged, closed, or all), or `involving` one agent (author or reviewer)."""
        _check_repo(repo)
        fields = {
            "repo": repo,
            "state": None if state == "all" else state,
            "involving": involving,
            "limit": limit,
        }
        try:
            req = build(f.ListMergeRequests, fields)  # `state=None` (all) is not left out
        except InvalidRequest as exc:
            raise ToolError(exc.summary) from None
        got = await self.tools._with_client(lambda c: c.expect(req, f.MergeRequests))
        return "\n".join(format_mr(r) for r in got.merge_requests) or "(no merge requests)"

    async def mr_show(self, id: int) -> str:
        """One merge request: its discussion, its commits, whether it merges, and its diff."""
        return format_info(await self._call(f.GetMergeRequest, f.MergeRequestInfo, id=id))

    async def mr_comment(self, id: int, body: str) -> str:
        """Comment on a merge request."""
        await self._call(f.CommentMergeRequest, f.MergeRequestInfo, id=id, body=body)
        return f"commented on !{id}"

    async def mr_approve(self, id: int, note: str = "") -> str:
        """Approve a merge request you review (its current head; a new push needs a new approval)."""
        got = await self._call(f.ApproveMergeRequest, f.MergeRequestInfo, id=id, note=note)
        return (
            f"approved !{id} at {got.mr.head_sha[:12]}; approved by {', '.join(got.mr.approvals)}"
        )

    async def mr_merge(self, id: int, method: str = "auto", message: str = "") -> str:
        """Merge a merge request into its target (you must be able to push there). `method`:
        auto (fast-forward when it can, else a merge commit), fast_forward, or merge.
        A conflict is refused with the files that conflict."""
        got = await self._call(
            f.MergeMergeRequest, f.MergeRequestInfo, id=id, method=method, message=message
        )
        mr = got.mr
        return f"merged !{id} into {mr.repo} {mr.target_branch} ({(mr.merged_sha or '')[:12]})"

    async def mr_close(self, id: int, note: str = "") -> str:
        """Close a merge request without merging it (yours, or one into a repository you own)."""
        await self._call(f.CloseMergeRequest, f.MergeRequestInfo, id=id, note=note)
        return f"closed !{id}"
