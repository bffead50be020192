"""`hive ctl forge …`: the operator's view of the forge, over the admin socket.

Repositories (list, create, make private, delete, browse) and merge requests (list, show
with the diff, open, comment, approve, merge, close), as the operator. Names are checked
here first (`repo_problem`, `branch_problem`) so a typo is said in words, not as a regex;
everything an agent wrote (titles, comments, file contents, diffs) is printed through
`echo`, which shows control characters instead of obeying them. The operator's own clones
use git and `git-remote-hive` directly (`git clone hive://org-shared/docs`; docs/forge.md).
"""

from __future__ import annotations

from typing import Annotated

import typer

from protocol import messages as m
from protocol.messages import forge as f

from .common import JsonOut, RunDir, ago, app, call, die, echo, emit, request, table

forge_app = typer.Typer(
    help="The hive's git forge: repositories and merge requests (docs/forge.md).",
    no_args_is_help=True,
)
app.add_typer(forge_app, name="forge")

MrId = Annotated[int, typer.Argument(help="The merge request's number (`!N`).")]
Repo = Annotated[str, typer.Argument(help="<owner>/<name>, e.g. org-shared/docs.")]


def _repo(repo: str) -> str:
    problem = f.repo_problem(repo)
    if problem is not None:
        die(problem)
    return repo


def _branch(name: str) -> str:
    problem = f.branch_problem(name)
    if problem is not None:
        die(f"{name!r}: {problem}")
    return name


# ------------------------------------------------------------------ repositories


@forge_app.command("repos")
def forge_repos(
    owner: Annotated[str | None, typer.Option(help="Only this owner's.")] = None,
    run_dir: RunDir = None,
    as_json: JsonOut = False,
) -> None:
    """Every repository, by owner and name."""
    rows = call(run_dir, request(f.ListRepos, owner=owner), f.Repos).repos
    emit(
        rows,
        as_json,
        lambda: table(
            [
                [
                    r.repo,
                    "private" if r.private else "public",
                    str(r.open_merge_requests),
                    ago(r.pushed_at),
                    r.description[:60],
                ]
                for r in rows
            ],
            ["REPO", "VISIBILITY", "OPEN MRS", "PUSHED", "DESCRIPTION"],
        ),
    )


@forge_app.command("create")
def forge_create(
    repo: Repo,
    private: Annotated[
        bool, typer.Option(help="Readable only by its owner, the manager and you.")
    ] = False,
    description: str = "",
    run_dir: RunDir = None,
    as_json: JsonOut = False,
) -> None:
    """Create an empty repository (in an agent's namespace, or in org-shared)."""
    req = request(f.CreateRepo, repo=_repo(repo), private=private, description=description)
    row = call(run_dir, req, f.RepoInfo).repo
    emit(row, as_json, lambda: echo(f"created {row.repo}: git clone {row.url}"))


@forge_app.command("update")
def forge_update(
    repo: Repo,
    private: Annotated[
        bool | None, typer.Option("--private/--public", help="Who may read it.")
    ] = None,
    description: Annotated[str | None, typer.Option(help="A new description.")] = None,
    run_dir: RunDir = None,
    as_json: JsonOut = False,
) -> None:
    """Make a repository private or public, or change its description."""
    req = request(f.UpdateRepo, repo=_repo(repo), private=private, description=description)
    row = call(run_dir, req, f.RepoInfo).repo
    emit(
        row,
        as_json,
        lambda: echo(f"{row.repo}: {'private' if row.private else 'public'}: {row.description}"),
    )


@forge_app.command("delete")
def forge_delete(
    repo: Repo,
    yes: Annotated[bool, typer.Option("--yes", help="Really delete it, for good.")] = False,
    run_dir: RunDir = None,
    as_json: JsonOut = False,
) -> None:
    """Delete a repository for good; its open merge requests are closed."""
    if not yes:
        die(f"deleting {repo} cannot be undone: say --yes")
    call(run_dir, request(f.DeleteRepo, repo=_repo(repo)), m.Ok)
    emit({"deleted": repo}, as_json, lambda: echo(f"deleted {repo}"))


@forge_app.command("show")
def forge_show(
    repo: Repo,
    ref: Annotated[str | None, typer.Option(help="Branch, tag or commit (default branch).")] = None,
    commits: Annotated[int, typer.Option("-n", help="How many commits.")] = 20,
    run_dir: RunDir = None,
    as_json: JsonOut = False,
) -> None:
    """A repository: its branches, its tags and its recent commits."""
    req = request(f.GetRepo, repo=_repo(repo), ref=ref, commits=commits)
    view = call(run_dir, req, f.RepoView)

    def human() -> None:
        r = view.repo
        echo(f"{r.repo} ({'private' if r.private else 'public'}) — {r.url}")
        if r.description:
            echo(r.description)
        echo(f"created by {r.created_by} {ago(r.created_at)}, pushed {ago(r.pushed_at)}")
        if not view.branches:
            echo("(empty: nothing pushed yet)")
            return
        echo("")
        table(
            [[b.name, b.sha[:10], ago(b.committed_at), b.subject[:60]] for b in view.branches],
            ["BRANCH", "COMMIT", "WHEN", "SUBJECT"],
        )
        if view.tags:
            echo("")
            table([[t.name, t.sha[:10]] for t in view.tags], ["TAG", "COMMIT"])
        echo(f"\ncommits on {view.ref}:")
        table(
            [[c.sha[:10], c.author, ago(c.committed_at), c.subject[:70]] for c in view.commits],
            ["COMMIT", "AUTHOR", "WHEN", "SUBJECT"],
        )

    emit(view, as_json, human)


@forge_app.command("ls")
def forge_ls(
    repo: Repo,
    rev: Annotated[str, typer.Argument(help="Branch, tag or commit.")] = "main",
    path: Annotated[str, typer.Argument(help="A directory of it.")] = "",
    run_dir: RunDir = None,
    as_json: JsonOut = False,
) -> None:
    """One directory of a commit."""
    req = request(f.ListTree, repo=_repo(repo), rev=rev, path=path.strip("/"))
    tree = call(run_dir, req, f.RepoTree)
    emit(
        tree,
        as_json,
        lambda: table(
            [[e.kind, "" if e.size is None else str(e.size), e.name] for e in tree.entries],
            ["KIND", "SIZE", "NAME"],
        ),
    )


@forge_app.command("cat")
def forge_cat(
    repo: Repo,
    rev: Annotated[str, typer.Argument(help="Branch, tag or commit.")],
    path: Annotated[str, typer.Argument(help="A file of it.")],
    run_dir: RunDir = None,
    as_json: JsonOut = False,
) -> None:
    """One file of a commit (its first 512 KiB), shown as text."""
    req = request(f.ReadBlob, repo=_repo(repo), rev=rev, path=path.strip("/"))
    blob = call(run_dir, req, f.RepoBlob)

    def human() -> None:
        echo(blob.data.decode(errors="replace").rstrip("\n"))
        if blob.truncated:
            echo(f"… (the first {len(blob.data)} of {blob.size} bytes)", err=True)

    emit(blob, as_json, human)


# ------------------------------------------------------------------ merge requests


def _show_mr(info: f.MergeRequestInfo, diff: bool) -> None:
    mr = info.mr
    echo(f"!{mr.id} {mr.title} [{mr.state}]")
    source = (
        mr.source_branch if mr.source_repo == mr.repo else f"{mr.source_repo} {mr.source_branch}"
    )
    echo(f"{mr.repo}: {source} → {mr.target_branch}, by {mr.author} {ago(mr.created_at)}")
    echo(
        f"head {mr.head_sha[:12]}; reviewers: {', '.join(mr.reviewers) or '-'};"
        f" approved by: {', '.join(mr.approvals) or '-'}"
    )
    if mr.state == "open":
        status = info.merge_status.replace("_", " ")
        if info.conflicts:
            status += ": " + ", ".join(info.conflicts)
        echo(f"merge: {status}")
    elif mr.resolved_by:
        merged = f" as {mr.merged_sha[:12]}" if mr.merged_sha else ""
        echo(f"{mr.state} by {mr.resolved_by} {ago(mr.resolved_at)}{merged}")
    if mr.description:
        echo("")
        echo(mr.description)
    if info.notes:
        echo("")
        for n in info.notes:
            text = f" {n.body}" if n.body else ""
            echo(f"  {ago(n.created_at)} {n.author} {n.kind}:{text}")
    if info.commits:
        echo("")
        for c in info.commits:
            echo(f"  {c.sha[:10]} {c.author}: {c.subject}")
    if diff and info.diff:
        echo("")
        echo(info.diff.rstrip("\n"))
        if info.diff_truncated:
            echo("… (the diff is longer than this)", err=True)


@forge_app.command("mrs")
def forge_mrs(
    repo: Annotated[str | None, typer.Option(help="Only this repository's.")] = None,
    state: Annotated[str, typer.Option(help="open, merged, closed or all.")] = "open",
    involving: Annotated[
        str | None, typer.Option(help="Authored or reviewed by this agent.")
    ] = None,
    limit: int = 100,
    run_dir: RunDir = None,
    as_json: JsonOut = False,
) -> None:
    """Merge requests, newest first."""
    req = request(
        f.ListMergeRequests,
        repo=_repo(repo) if repo is not None else None,
        state=None if state == "all" else state,
        involving=involving,
        limit=limit,
    )
    rows = call(run_dir, req, f.MergeRequests).merge_requests
    emit(
        rows,
        as_json,
        lambda: table(
            [
                [
                    f"!{r.id}",
                    r.repo,
                    f"{r.source_branch} → {r.target_branch}",
                    r.author,
                    r.state,
                    ", ".join(r.approvals) or "-",
                    r.title[:50],
                ]
                for r in rows
            ],
            ["MR", "REPO", "BRANCHES", "AUTHOR", "STATE", "APPROVED BY", "TITLE"],
        ),
    )


@forge_app.command("mr")
def forge_mr(
    mr_id: MrId,
    diff: Annotated[bool, typer.Option("--diff/--no-diff", help="Show the diff.")] = True,
    run_dir: RunDir = None,
    as_json: JsonOut = False,
) -> None:
    """One merge request: its discussion, its commits, its diff, and whether it merges."""
    info = call(run_dir, request(f.GetMergeRequest, id=mr_id), f.MergeRequestInfo)
    emit(info, as_json, lambda: _show_mr(info, diff))


@forge_app.command("open")
def forge_open(
    repo: Repo,
    source_branch: Annotated[str, typer.Argument(help="The branch to merge.")],
    title: Annotated[str, typer.Option(help="What it does, in one line.")],
    target: Annotated[str, typer.Option(help="The branch to merge into.")] = "main",
    source_repo: Annotated[str | None, typer.Option(help="A fork holding the branch.")] = None,
    description: str = "",
    reviewer: Annotated[list[str] | None, typer.Option(help="An agent to review (repeat).")] = None,
    run_dir: RunDir = None,
    as_json: JsonOut = False,
) -> None:
    """Open a merge request of SOURCE_BRANCH into REPO's target branch."""
    req = request(
        f.OpenMergeRequest,
        repo=_repo(repo),
        source_branch=_branch(source_branch),
        target_branch=_branch(target),
        source_repo=_repo(source_repo) if source_repo is not None else None,
        title=title,
        description=description,
        reviewers=reviewer or [],
    )
    info = call(run_dir, req, f.MergeRequestInfo)
    emit(info, as_json, lambda: _show_mr(info, diff=False))


@forge_app.command("comment")
def forge_comment(
    mr_id: MrId,
    body: Annotated[str, typer.Argument(help="The comment.")],
    run_dir: RunDir = None,
    as_json: JsonOut = False,
) -> None:
    """Comment on a merge request."""
    info = call(run_dir, request(f.CommentMergeRequest, id=mr_id, body=body), f.MergeRequestInfo)
    emit(info, as_json, lambda: echo(f"commented on !{mr_id}"))


@forge_app.command("approve")
def forge_approve(
    mr_id: MrId,
    note: Annotated[str, typer.Option(help="Added to the discussion.")] = "",
    run_dir: RunDir = None,
    as_json: JsonOut = False,
) -> None:
    """Approve a merge request's current head."""
    info = call(run_dir, request(f.ApproveMergeRequest, id=mr_id, note=note), f.MergeRequestInfo)
    emit(
        info,
        as_json,
        lambda: echo(
            f"approved !{mr_id} at {info.mr.head_sha[:12]}"
            f" (approved by {', '.join(info.mr.approvals)})"
        ),
    )


@forge_app.command("merge")
def forge_merge(
    mr_id: MrId,
    method: Annotated[str, typer.Option(help="auto, fast_forward or merge.")] = "auto",
    message: Annotated[str, typer.Option(help="The merge commit's message.")] = "",
    run_dir: RunDir = None,
    as_json: JsonOut = False,
) -> None:
    """Merge a merge request into its target branch (refused on a conflict, exit 1)."""
    req = request(f.MergeMergeRequest, id=mr_id, method=method, message=message)
    info = call(run_dir, req, f.MergeRequestInfo)
    mr = info.mr
    emit(
        info,
        as_json,
        lambda: echo(
            f"merged !{mr_id} into {mr.repo} {mr.target_branch} ({(mr.merged_sha or '')[:12]})"
        ),
    )


@forge_app.command("close")
def forge_close(
    mr_id: MrId,
    note: Annotated[str, typer.Option(help="Why; added to the discussion.")] = "",
    run_dir: RunDir = None,
    as_json: JsonOut = False,
) -> None:
    """Close a merge request without merging it."""
    info = call(run_dir, request(f.CloseMergeRequest, id=mr_id, note=note), f.MergeRequestInfo)
    emit(info, as_json, lambda: echo(f"closed !{mr_id}"))
