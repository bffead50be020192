"""The forge on the dashboard: repositories, their branches, commits and files, and merge
requests with their diff and the operator's review actions.

Every read is a verb to the daemon (`ListRepos`, `GetRepo`, `ListTree`, `ReadBlob`,
`GetMergeRequest`, …): this process opens no repository, and could not (the forge lives in
the daemon's private state dir). Pages name the event seq they match and follow the forge's
events like every other page (`live.py` redraws the panels below from `draw_*`); an action
answers the merge request's panel redrawn, and a toast.
"""

from __future__ import annotations

import re
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response

from protocol import messages as m
from protocol.client import HiveError
from protocol.messages import forge as f

from .forge_pages import Call, draw_index, draw_mr, draw_repo
from .views import call, convert, fragment, panel, web

ACTIONS: dict[str, type[m.Request]] = {
    "comment": f.CommentMergeRequest,
    "approve": f.ApproveMergeRequest,
    "merge": f.MergeMergeRequest,
    "close": f.CloseMergeRequest,
}
PAST = {"comment": "commented on", "approve": "approved", "merge": "merged", "close": "closed"}


def repo_of(request: Request) -> str:
    repo = f"{request.path_params['owner']}/{request.path_params['name']}"
    if f.repo_problem(repo) is not None:
        raise HTTPException(404, f"no repository {repo!r}")
    return repo


async def seq_and_rev(request: Request) -> m.HiveState:
    """The event seq a forge page matches, read before anything it shows (and the rev)."""
    return await call(request, m.Snapshot(messages=0), m.HiveState)


def asker(request: Request) -> Call[Any]:
    return web(request).daemon.call


# ------------------------------------------------------------------ pages


async def index(request: Request) -> Response:
    web(request).hub.expect_page("forge")  # drawn from now on: its stream resumes from here
    state = await seq_and_rev(request)
    w = web(request)
    body = await draw_index(asker(request), w.render)
    return w.render.page(request, "forge.html", {"state": state, "page": "forge", "body": body})


async def repo_page(request: Request) -> Response:
    repo = repo_of(request)
    ref = request.query_params.get("ref") or None
    if (
        ref is not None
        and not re.match(f.BRANCH_PATTERN, ref)
        and not re.match(r"^[0-9a-f]{4,64}\Z", ref)
    ):
        raise HiveError("invalid", f"{ref!r} is not a branch, tag or commit name")
    web(request).hub.expect_page(f"repo:{repo}")
    state = await seq_and_rev(request)
    w = web(request)
    summary = await draw_repo(asker(request), w.render, repo, ref)
    view = await call(request, f.GetRepo(repo=repo, ref=ref, commits=0), f.RepoView)
    tree: f.RepoTree | str = "The repository is empty: nothing has been pushed yet."
    if view.ref:
        tree = await panel(request, f.ListTree(repo=repo, rev=view.ref), f.RepoTree)
    context = {
        "state": state,
        "page": f"repo:{repo}",
        "repo": repo,
        "summary": summary,
        "ref": view.ref,
        "tree": tree,
    }
    return w.render.page(request, "forge_repo.html", context)


async def tree(request: Request) -> Response:
    repo = repo_of(request)
    rev = request.query_params.get("rev", "main")
    path = request.query_params.get("path", "").strip("/")
    req = convert({"repo": repo, "rev": rev, "path": path}, f.ListTree)
    got = await panel(request, req, f.RepoTree)
    return HTMLResponse(web(request).render.forge_part("tree_listing", repo, rev, path, got))


async def blob(request: Request) -> Response:
    repo = repo_of(request)
    rev = request.query_params.get("rev", "main")
    path = request.query_params.get("path", "").strip("/")
    req = convert({"repo": repo, "rev": rev, "path": path}, f.ReadBlob)
    got = await panel(request, req, f.RepoBlob)
    return HTMLResponse(web(request).render.forge_part("blob_view", path, got))


async def mr_page(request: Request) -> Response:
    mr_id = int(request.path_params["mid"])
    web(request).hub.expect_page(f"mr:{mr_id}")
    state = await seq_and_rev(request)
    w = web(request)
    body = await draw_mr(asker(request), w.render, mr_id)
    context = {"state": state, "page": f"mr:{mr_id}", "mr_id": mr_id, "body": body}
    return w.render.page(request, "forge_mr.html", context)


# ------------------------------------------------------------------ the operator's review


async def mr_action(request: Request) -> Response:
    """Comment on, approve, merge or close a merge request as the operator."""
    mr_id = int(request.path_params["mid"])
    action = str(request.path_params["action"])
    if action not in ACTIONS:
        raise HTTPException(404, f"no action {action!r}")
    form = await request.form()
    fields: dict[str, Any] = {"id": mr_id}
    if action == "comment":
        fields["body"] = str(form.get("body", ""))
        if not fields["body"].strip():
            raise HiveError("invalid", "write a comment first")
    elif action == "merge":
        fields["method"] = str(form.get("method", "auto"))
        fields["message"] = str(form.get("message", "")).strip()
    else:
        fields["note"] = str(form.get("note", "")).strip()
    info = await call(request, convert(fields, ACTIONS[action]), f.MergeRequestInfo)
    w = web(request)
    return fragment(request, w.render.forge_part("mr_panel", info), f"{PAST[action]} !{mr_id}")
