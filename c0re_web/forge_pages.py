"""What the forge's pages show: drawn once for a cold load (`forge_views`) and again for every
batch of forge events (`live`), from the same macros of `forge_parts.html`.

Each function takes the way to ask the daemon (`DaemonLink.call` for a page,
`HiveClient.expect` for the event follower) and reads only through protocol verbs.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from protocol import messages as m
from protocol.messages import forge as f

from .render import Renderer

R = TypeVar("R", bound=m.Reply)
Call = Callable[[m.Request, type[R]], Awaitable[R]]
RECENT_COMMITS = 30
MRS_SHOWN = 100
DASHBOARD_MRS = 20


async def draw_index(ask: Call[Any], r: Renderer) -> str:
    repos = (await ask(f.ListRepos(), f.Repos)).repos
    mrs = (
        await ask(f.ListMergeRequests(state=None, limit=MRS_SHOWN), f.MergeRequests)
    ).merge_requests
    return r.forge_part("forge_index", repos, mrs)


async def draw_dashboard_panel(ask: Call[Any], r: Renderer) -> str:
    mrs = (await ask(f.ListMergeRequests(limit=DASHBOARD_MRS), f.MergeRequests)).merge_requests
    repos = (await ask(f.ListRepos(), f.Repos)).repos
    return r.forge_part("forge_summary", repos, mrs)


async def draw_repo(ask: Call[Any], r: Renderer, repo: str, ref: str | None = None) -> str:
    view = await ask(f.GetRepo(repo=repo, ref=ref, commits=RECENT_COMMITS), f.RepoView)
    mrs = (
        await ask(f.ListMergeRequests(repo=repo, state=None, limit=MRS_SHOWN), f.MergeRequests)
    ).merge_requests
    return r.forge_part("repo_summary", view, mrs)


async def draw_mr(ask: Call[Any], r: Renderer, mr_id: int) -> str:
    info = await ask(f.GetMergeRequest(id=mr_id), f.MergeRequestInfo)
    return r.forge_part("mr_panel", info)
