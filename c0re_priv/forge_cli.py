"""`hive ctl forge …`: the operator's view of the forge, over the admin socket.

Repositories (list, create, make private, delete, browse) and merge requests (list, show
with the diff, open, comment, approve, merge, close), as the operator. Names are checked
here first (`repo_problem`, `branch_problem`) so a typo is said in words, not as a regex;
everything an agent wrote (titles, comments, file contents, diffs) is printed through
`_echo`, which shows control characters instead of obeying them. The operator's own clones
use git and `git-remote-hive` directly (`git clone hive://org-shared/docs`; docs/forge.md).
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from protocol import forge as f

from .cli import JsonOut, RunDir, StateDir, _ago, _call, _die, _echo, _emit, _table, ctl

forge_app = typer.Typer(
    help="The hive's git forge: repositories and merge requests (docs/forge.md).",
    no_args_is_help=True,
)
ctl.add_typer(forge_app, name="forge")

MrId = Annotated[int, typer.Argument(help="The merge request's number (`!N`).")]
Repo = Annotated[str, typer.Argument(help="<owner>/<name>, e.g. org-shared/docs.")]


def _repo(repo: str) -> str:
    problem = f.repo_problem(repo)
    if problem is not None:
        _die(problem)
    return repo


def _branch(name: str) -> str:
    problem = f.branch_problem(name)
    if problem is not None:
        _die(f"{name!r}: {problem}")
    return name


def _request(verb: type[Any], **fields: Any) -> Any:
    import msgspec

    try:
        return msgspec.convert(fields, verb)
    except msgspec.ValidationError as exc:
        _die(f"invalid {verb.__name__}: {exc}")


# ------------------------------------------------------------------ repositories


@forge_app.command("repos")
def forge_repos(
    owner: Annotated[str | None, typer.Option(help="Only this owner's.")] = None,
    run_dir: RunDir = None,
    state_dir: StateDir = None,
    as_json: JsonOut = False,
) -> None:
    """Every repository, by owner and name."""
    rows = _call(run_dir, _request(f.ListRepos, owner=owner), f.Repos).repos
    _emit(
        rows,
        as_json,
        lambda: _table(
            [
                [
                    r.repo,
                    "private" if r.private else "public",
                    str(r.open_merge_requests),
                    _ago(r.pushed_at),
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
    state_dir: StateDir = None,
    as_json: JsonOut = False,
) -> None:
    """Create an empty repository (in an agent's namespace, or in org-shared)."""
    req = _request(f.CreateRepo, repo=_repo(repo), private=private, description=description)
    row = _call(run_dir, req, f.RepoInfo).repo
    _emit(row, as_json, lambda: _echo(f"created {row.repo}: git clone {row.url}"))


@forge_app.command("update")
def forge_update(
    repo: Repo,
    private: Annotated[
        bool | None, typer.Option("--private/--public", help="Who may read it.")
    ] = None,
    description: Annotated[str | None, typer.Option(help="A new description.")] = None,
    run_dir: RunDir = None,
    state_dir: StateDir = None,
    as_json: JsonOut = False,
) -> None:
    """Make a repository private or public, or change its description."""
    req = _request(f.UpdateRepo, repo=_repo(repo), private=private, description=description)
    row = _call(run_dir, req, f.RepoInfo).repo
    _emit(
        row,
        as_json,
        lambda: _echo(f"{row.repo}: {'private' if row.private else 'public'}: {row.description}"),
    )


@forge_app.command("delete")
def forge_delete(
    repo: Repo,
    yes: Annotated[bool, typer.Option("--yes", help="Really delete it, for good.")] = False,
    run_dir: RunDir = None,
    state_dir: StateDir = None,
    as_json: JsonOut = False,
) -> None:
    """Delete a repository for good; its open merge requests are closed."""
    if not yes:
        _die(f"deleting {repo} cannot be undone: say --yes")
    from protocol import messages as m

    _call(run_dir, _request(f.DeleteRepo, repo=_repo(repo)), m.Ok)
    _emit({"deleted": repo}, as_json, lambda: _echo(f"deleted {repo}"))


@forge_app.command("show")
def forge_show(
    repo: Repo,
    ref: Annotated[str | None, typer.Option(help="Branch, tag or commit (default branch).")] = None,
    commits: Annotated[int, typer.Option("-n", help="How many commits.")] = 20,
    run_dir: RunDir = None,
    state_dir: StateDir = None,
    as_json: JsonOut = False,
) -> None:
    """A repository: its branches, its tags and its recent commits."""
    req = _request(f.GetRepo, repo=_repo(repo), ref=ref, commits=commits)
    view = _call(run_dir, req, f.RepoView)

    def human() -> None:
        r = view.repo
        _echo(f"{r.repo} ({'private' if r.private else 'public'}) — {r.url}")
        if r.description:
            _echo(r.description)
        _echo(f"created by {r.created_by} {_ago(r.created_at)}, pushed {_ago(r.pushed_at)}")
        if not view.branches:
            _echo("(empty: nothing pushed yet)")
            return
        _echo("")
        _table(
            [[b.name, b.sha[:10], _ago(b.committed_at), b.subject[:60]] for b in view.branches],
            ["BRANCH", "COMMIT", "WHEN", "SUBJECT"],
        )
        if view.tags:
            _echo("")
            _table([[t.name, t.sha[:10]] for t in view.tags], ["TAG", "COMMIT"])
        _echo(f"\ncommits on {view.ref}:")
        _table(
            [[c.sha[:10], c.author, _ago(c.committed_at), c.subject[:70]] for c in view.commits],
            ["COMMIT", "AUTHOR", "WHEN", "SUBJECT"],
        )

    _emit(view, as_json, human)


@forge_app.command("ls")
def forge_ls(
    repo: Repo,
    rev: Annotated[str, typer.Argument(help="Branch, tag or commit.")] = "main",
    path: Annotated[str, typer.Argument(help="A directory of it.")] = "",
    run_dir: RunDir = None,
    state_dir: StateDir = None,
    as_json: JsonOut = False,
) -> None:
    """One directory of a commit."""
    req = _request(f.ListTree, repo=_repo(repo), rev=rev, path=path.strip("/"))
    tree = _call(run_dir, req, f.RepoTree)
    _emit(
        tree,
        as_json,
        lambda: _table(
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
    state_dir: StateDir = None,
    as_json: JsonOut = False,
) -> None:
    """One file of a commit (its first 512 KiB), shown as text."""
    req = _request(f.ReadBlob, repo=_repo(repo), rev=rev, path=path.strip("/"))
    blob = _call(run_dir, req, f.RepoBlob)

    def human() -> None:
        _echo(blob.data.decode(errors="replace").rstrip("\n"))
        if blob.truncated:
            _echo(f"… (the first {len(blob.data)} of {blob.size} bytes)", err=True)

    _emit(blob, as_json, human)


# ------------------------------------------------------------------ merge requests


def _show_mr(info: f.MergeRequestInfo, diff: bool) -> None:
    mr = info.mr
    _echo(f"!{mr.id} {mr.title} [{mr.state}]")
    source = (
        mr.source_branch if mr.source_repo == mr.repo else f"{mr.source_repo} {mr.source_branch}"
    )
    _echo(f"{mr.repo}: {source} → {mr.target_branch}, by {mr.author} {_ago(mr.created_at)}")
    _echo(
        f"head {mr.head_sha[:12]}; reviewers: {', '.join(mr.reviewers) or '-'};"
        f" approved by: {', '.join(mr.approvals) or '-'}"
    )
    if mr.state == "open":
        status = info.merge_status.replace("_", " ")
        if info.conflicts:
            status += ": " + ", ".join(info.conflicts)
        _echo(f"merge: {status}")
    elif mr.resolved_by:
        merged = f" as {mr.merged_sha[:12]}" if mr.merged_sha else ""
        _echo(f"{mr.state} by {mr.resolved_by} {_ago(mr.resolved_at)}{merged}")
    if mr.description:
        _echo("")
        _echo(mr.description)
    if info.notes:
        _echo("")
        for n in info.notes:
            text = f" {n.body}" if n.body else ""
            _echo(f"  {_ago(n.created_at)} {n.author} {n.kind}:{text}")
    if info.commits:
        _echo("")
        for c in info.commits:
            _echo(f"  {c.sha[:10]} {c.author}: {c.subject}")
    if diff and info.diff:
        _echo("")
        _echo(info.diff.rstrip("\n"))
        if info.diff_truncated:
            _echo("… (the diff is longer than this)", err=True)


@forge_app.command("mrs")
def forge_mrs(
    repo: Annotated[str | None, typer.Option(help="Only this repository's.")] = None,
    state: Annotated[str, typer.Option(help="open, merged, closed or all.")] = "open",
    involving: Annotated[
        str | None, typer.Option(help="Authored or reviewed by this agent.")
    ] = None,
    limit: int = 100,
    run_dir: RunDir = None,
    state_dir: StateDir = None,
    as_json: JsonOut = False,
) -> None:
    """Merge requests, newest first."""
    req = _request(
        f.ListMergeRequests,
        repo=_repo(repo) if repo is not None else None,
        state=None if state == "all" else state,
        involving=involving,
        limit=limit,
    )
    rows = _call(run_dir, req, f.MergeRequests).merge_requests
    _emit(
        rows,
        as_json,
        lambda: _table(
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
    state_dir: StateDir = None,
    as_json: JsonOut = False,
) -> None:
    """One merge request: its discussion, its commits, its diff, and whether it merges."""
    info = _call(run_dir, _request(f.GetMergeRequest, id=mr_id), f.MergeRequestInfo)
    _emit(info, as_json, lambda: _show_mr(info, diff))


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
    state_dir: StateDir = None,
    as_json: JsonOut = False,
) -> None:
    """Open a merge request of SOURCE_BRANCH into REPO's target branch."""
    req = _request(
        f.OpenMergeRequest,
        repo=_repo(repo),
        source_branch=_branch(source_branch),
        target_branch=_branch(target),
        source_repo=_repo(source_repo) if source_repo is not None else None,
        title=title,
        description=description,
        reviewers=reviewer or [],
    )
    info = _call(run_dir, req, f.MergeRequestInfo)
    _emit(info, as_json, lambda: _show_mr(info, diff=False))


@forge_app.command("comment")
def forge_comment(
    mr_id: MrId,
    body: Annotated[str, typer.Argument(help="The comment.")],
    run_dir: RunDir = None,
    state_dir: StateDir = None,
    as_json: JsonOut = False,
) -> None:
    """Comment on a merge request."""
    info = _call(run_dir, _request(f.CommentMergeRequest, id=mr_id, body=body), f.MergeRequestInfo)
    _emit(info, as_json, lambda: _echo(f"commented on !{mr_id}"))


@forge_app.command("approve")
def forge_approve(
    mr_id: MrId,
    note: Annotated[str, typer.Option(help="Added to the discussion.")] = "",
    run_dir: RunDir = None,
    state_dir: StateDir = None,
    as_json: JsonOut = False,
) -> None:
    """Approve a merge request's current head."""
    info = _call(run_dir, _request(f.ApproveMergeRequest, id=mr_id, note=note), f.MergeRequestInfo)
    _emit(
        info,
        as_json,
        lambda: _echo(
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
    state_dir: StateDir = None,
    as_json: JsonOut = False,
) -> None:
    """Merge a merge request into its target branch (refused on a conflict, exit 1)."""
    req = _request(f.MergeMergeRequest, id=mr_id, method=method, message=message)
    info = _call(run_dir, req, f.MergeRequestInfo)
    mr = info.mr
    _emit(
        info,
        as_json,
        lambda: _echo(
            f"merged !{mr_id} into {mr.repo} {mr.target_branch} ({(mr.merged_sha or '')[:12]})"
        ),
    )


@forge_app.command("close")
def forge_close(
    mr_id: MrId,
    note: Annotated[str, typer.Option(help="Why; added to the discussion.")] = "",
    run_dir: RunDir = None,
    state_dir: StateDir = None,
    as_json: JsonOut = False,
) -> None:
    """Close a merge request without merging it."""
    info = _call(run_dir, _request(f.CloseMergeRequest, id=mr_id, note=note), f.MergeRequestInfo)
    _emit(info, as_json, lambda: _echo(f"closed !{mr_id}"))
