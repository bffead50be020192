"""The dashboard as one Starlette app: the route table, the guard around it, and its lifespan.

`create_app` is all there is to it. The lifespan owns the only long-lived things — the
daemon link (one connection to `web.sock`) and the hub that fans its events out to browsers
— in one task group, and ends every browser stream before it cancels them. The web process
holds no state of the hive's own: each page asks the daemon, each change comes as an event.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import anyio
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import Route

from protocol.client import HiveError

from . import forge_views, views
from .auth import Auth, Guard
from .daemon import DaemonLink
from .live import Hub
from .peer_limits import QuietAcceptErrors
from .render import Renderer
from .static_files import StaticFiles

MAX_BODY = 2 * 1024 * 1024

ROUTES = [
    Route("/login", views.login, methods=["GET"]),
    Route("/logout", views.logout, methods=["POST"]),
    Route("/", views.dashboard, methods=["GET"]),
    Route("/events", views.events, methods=["GET"]),
    Route("/api/ping", views.ping, methods=["GET"]),
    Route("/api/send", views.send, methods=["POST"]),
    Route("/api/questions/{qid:int}/answer", views.answer, methods=["POST"]),
    Route("/api/reminders/{rid:int}/retry", views.retry_reminder, methods=["POST"]),
    Route("/api/messages/{mid:int}/retry", views.retry_message, methods=["POST"]),
    Route("/api/messages/{mid:int}/drop", views.drop_message, methods=["POST"]),
    Route("/api/rebuild-all", views.rebuild_all, methods=["POST"]),
    Route("/api/approvals/{aid:int}/diff", views.approval_diff, methods=["GET"]),
    Route("/api/approvals/{aid:int}/{decision}", views.decide, methods=["POST"]),
    Route("/api/tombstones/{name}/purge", views.purge_tombstone, methods=["POST"]),
    Route("/api/meta-inputs/update", views.update_meta_inputs, methods=["POST"]),
    Route("/api/estop", views.estop, methods=["POST"]),
    Route("/api/thaw", views.thaw, methods=["POST"]),
    Route("/api/budget", views.set_budget, methods=["POST"]),
    Route("/api/budget/alerts/{aid:int}/dismiss", views.dismiss_budget_alert, methods=["POST"]),
    Route("/agent/{name}/", views.agent_page, methods=["GET"]),
    Route("/agent/{name}/files", views.files, methods=["GET"]),
    Route("/agent/{name}/file", views.file_view, methods=["GET"]),
    Route("/agent/{name}/journal", views.journal, methods=["GET"]),
    Route("/agent/{name}/api/{action}", views.agent_action, methods=["POST"]),
    Route("/agent/{name}/login/{step}", views.agent_login, methods=["POST"]),
    Route("/forge/", forge_views.index, methods=["GET"]),
    Route("/forge/mr/{mid:int}", forge_views.mr_page, methods=["GET"]),
    Route("/forge/{owner}/{name}/", forge_views.repo_page, methods=["GET"]),
    Route("/forge/{owner}/{name}/tree", forge_views.tree, methods=["GET"]),
    Route("/forge/{owner}/{name}/blob", forge_views.blob, methods=["GET"]),
    Route("/api/forge/mr/{mid:int}/{action}", forge_views.mr_action, methods=["POST"]),
    Route("/static/{path:path}", StaticFiles().serve, methods=["GET", "HEAD"]),
]


@dataclass(frozen=True)
class WebSettings:
    web_sock: str
    """The daemon's `web.sock`."""
    hosts: frozenset[str]
    """`Host` values this server answers to (and, as `http://` origins, accepts writes from)."""
    session_seconds: float = 12 * 3600
    on_sigusr1: Callable[[], None] | None = None
    """Called on SIGUSR1 (`hive web` prints a fresh login link); needs the main thread."""


def create_app(
    settings: WebSettings, auth: Auth | None = None, renderer: Renderer | None = None
) -> Starlette:
    auth = auth or Auth(settings.session_seconds)
    renderer = renderer or Renderer()

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
        asyncio.get_running_loop().set_exception_handler(QuietAcceptErrors())
        hub = Hub(renderer)
        link = DaemonLink(settings.web_sock, hub)
        async with anyio.create_task_group() as tg:
            await tg.start(link.run)
            if settings.on_sigusr1 is not None:
                await tg.start(_on_signal, signal.SIGUSR1, settings.on_sigusr1)
            try:
                yield {"web": views.Web(auth=auth, render=renderer, hub=hub, daemon=link)}
            finally:
                hub.close()
                tg.cancel_scope.cancel()

    return Starlette(
        routes=ROUTES,
        lifespan=lifespan,
        middleware=[
            Middleware(Guard, auth=auth, hosts=settings.hosts, login_page=renderer.login_page)
        ],
        exception_handlers={HiveError: views.hive_error},
        max_body_size=MAX_BODY,
    )


async def _on_signal(
    signum: signal.Signals,
    callback: Callable[[], None],
    *,
    task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    with anyio.open_signal_receiver(signum) as signals:
        task_status.started()
        async for _ in signals:
            callback()
