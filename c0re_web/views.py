"""The dashboard's routes: pages, fragments for htmx, and the operator's actions.

A route is a function from request to response. Pages load one `Snapshot` (plus the panels
of an agent page) and name the event seq they match, so the browser follows with events
only. Actions post with htmx and answer 200 with the fragment they changed and a toast;
a refusal from the daemon answers its HTTP status with an error toast and `HX-Reswap:
none`, so the page keeps what it shows. Every request has passed `auth.Guard` before it
gets here; nothing here checks a session or an origin again.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import anyio
from starlette.datastructures import FormData
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import (
    HTMLResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)

from protocol import messages as m
from protocol.client import HiveError
from protocol.validate import InvalidRequest, build

from .auth import Auth
from .daemon import DaemonLink
from .forge_pages import draw_dashboard_panel
from .live import HEARTBEAT, Hub
from .render import FLOW_CONVERSATIONS, FLOW_MESSAGES, INBOX_MESSAGES, Renderer, conversations

R = TypeVar("R", bound=m.Reply)
T = TypeVar("T")
JOURNAL_LINES = 200
HTTP_STATUS = {
    "invalid": 422,
    "not_found": 404,
    "forbidden": 403,
    "too_large": 413,
    "rate_limited": 429,
    "conflict": 409,
    "unavailable": 503,
}
PAGE_PATTERN = re.compile(
    r"^(dashboard|forge|agent:[a-z][a-z0-9-]{0,30}|mr:[1-9][0-9]{0,18}"
    r"|repo:[a-z][a-z0-9-]{0,30}/[a-z0-9][a-z0-9._-]{0,62})\Z"
)


@dataclass(frozen=True)
class Web:
    """What the routes share for the life of the process (built by the app's lifespan)."""

    auth: Auth
    render: Renderer
    hub: Hub
    daemon: DaemonLink


def web(request: Request) -> Web:
    w = request.state.web
    assert isinstance(w, Web)
    return w


async def call(request: Request, req: m.Request, reply_type: type[R]) -> R:
    return await web(request).daemon.call(req, reply_type)


async def panel(request: Request, req: m.Request, reply_type: type[R]) -> R | str:
    """A call whose refusal is shown in its panel (a missing file, an unreadable dir)."""
    try:
        return await call(request, req, reply_type)
    except HiveError as exc:
        if exc.code == "unavailable" and not web(request).daemon.connected:
            raise
        return exc.message


def convert(data: dict[str, Any], typ: type[T]) -> T:
    """Build a protocol request from form or path input; the Struct's constraints validate it."""
    try:
        return build(typ, data, from_text=True)
    except InvalidRequest as exc:
        raise HiveError("invalid", str(exc)) from None


def agent_name(request: Request) -> str:
    name = str(request.path_params["name"])
    if not re.match(m.AGENT_NAME_PATTERN, name):
        raise HTTPException(404, f"no agent named {name!r}")
    return name


def is_htmx(request: Request) -> bool:
    return request.headers.get("hx-request") == "true"


def fragment(
    request: Request, html: str, toast: str | None = None, tone: str = "ok"
) -> HTMLResponse:
    body = html + (web(request).render.toast(toast, tone) if toast else "")
    return HTMLResponse(body)


async def hive_error(request: Request, exc: Exception) -> Response:
    """A daemon refusal: an error toast for htmx, an error page for a browser page."""
    assert isinstance(exc, HiveError)
    status_code = HTTP_STATUS.get(exc.code, 502)
    w = web(request)
    if is_htmx(request) or request.method != "GET":
        return HTMLResponse(
            w.render.toast(exc.message, "bad"),
            status_code=status_code,
            headers={"HX-Reswap": "none"},
        )
    return w.render.page(
        request,
        "error.html",
        {"message": exc.message, "code": exc.code, "daemon_up": w.daemon.connected},
        status_code=status_code,
    )


# ------------------------------------------------------------------ session


async def login(request: Request) -> Response:
    w = web(request)
    token = request.query_params.get("token")
    if token:
        cookie = w.auth.redeem(token)
        if cookie is None:
            message = (
                "This login link was already used or is not valid. Each link works once; "
                "send SIGUSR1 to the web process (or restart it) to print a new one."
            )
            return HTMLResponse(w.render.login_page(message), status_code=401)
        return RedirectResponse("/", 303, headers={"set-cookie": w.auth.cookie_header(cookie)})
    if w.auth.session_of(request.cookies) is not None:
        return RedirectResponse("/", 303)
    return HTMLResponse(
        w.render.login_page("Open the login link that `hive web` printed when it started.")
    )


async def logout(request: Request) -> Response:
    auth = web(request).auth
    auth.logout(request.session["sid"])
    return Response(
        status_code=200,
        headers={"set-cookie": auth.clear_cookie_header(), "HX-Redirect": "/login"},
    )


async def ping(request: Request) -> Response:
    return PlainTextResponse("ok" if web(request).daemon.connected else "daemon unreachable")


# ------------------------------------------------------------------ pages


async def dashboard(request: Request) -> Response:
    state = await call(request, m.Snapshot(messages=FLOW_MESSAGES), m.HiveState)
    try:
        forge = await draw_dashboard_panel(web(request).daemon.call, web(request).render)
    except HiveError as exc:  # the forge is off (or git missing): the rest of the page is not
        if exc.code != "unavailable" or not web(request).daemon.connected:
            raise
        forge = web(request).render.forge_part("forge_off", exc.message)
    return web(request).render.page(
        request,
        "dashboard.html",
        {
            "state": state,
            "convs": conversations(state.messages, FLOW_CONVERSATIONS),
            "page": "dashboard",
            "forge": forge,
        },
    )


async def agent_page(request: Request) -> Response:
    name = agent_name(request)
    web(request).hub.expect(name)  # drawn from now on, so its stream can resume from the snapshot
    state = await call(request, m.Snapshot(agent=name, messages=INBOX_MESSAGES), m.HiveState)
    row = next(a for a in state.agents if a.name == name)
    context = {
        "state": state,
        "row": row,
        "page": f"agent:{name}",
        "listing": await panel(request, m.ListAgentStateDir(agent=name), m.AgentDir),
        "journal": await panel(request, m.ReadJournal(agent=name, lines=JOURNAL_LINES), m.Journal),
        "config": await panel(request, m.ReadAgentConfig(agent=name), m.AgentConfigText),
        "stats": await panel(request, m.GetAgentStats(name=name), m.Stats),
    }
    return web(request).render.page(request, "agent.html", context)


async def files(request: Request) -> Response:
    name = agent_name(request)
    req = convert(
        {"agent": name, "rel_path": request.query_params.get("path", "")}, m.ListAgentStateDir
    )
    listing = await panel(request, req, m.AgentDir)
    return HTMLResponse(web(request).render.part("dir_listing", name, listing, req.rel_path))


async def file_view(request: Request) -> Response:
    name = agent_name(request)
    path = request.query_params.get("path", "")
    req = convert({"agent": name, "rel_path": path}, m.ReadAgentStateFile)
    got = await panel(request, req, m.AgentFile)
    return HTMLResponse(web(request).render.part("file_view", name, got, path))


async def journal(request: Request) -> Response:
    name = agent_name(request)
    lines = request.query_params.get("lines", str(JOURNAL_LINES))
    req = convert({"agent": name, "lines": lines}, m.ReadJournal)
    got = await panel(request, req, m.Journal)
    return HTMLResponse(web(request).render.part("journal", name, got))


# ------------------------------------------------------------------ live


async def events(request: Request) -> Response:
    """The page's SSE stream: what changed since the snapshot (or `Last-Event-ID`), then live."""
    page = request.query_params.get("page", "")
    if not PAGE_PATTERN.match(page):
        raise HTTPException(
            400, "page must be `dashboard`, `forge`, `agent:<name>`, `repo:<repo>` or `mr:<id>`"
        )
    since_text = request.headers.get("last-event-id") or request.query_params.get("since")
    try:
        since = int(since_text) if since_text else None
    except ValueError:
        raise HTTPException(400, "since must be an event seq") from None
    hub = web(request).hub
    listener = hub.listen(page, since)

    async def stream() -> AsyncIterator[str]:
        try:
            yield "retry: 2000\n\n"
            while True:
                frame: str | None = ": keep-alive\n\n"
                with anyio.move_on_after(HEARTBEAT):
                    frame = await listener.take()
                if frame is None:
                    return
                yield frame
        finally:
            hub.forget(listener)

    return StreamingResponse(
        stream(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )


# ------------------------------------------------------------------ actions


async def send(request: Request) -> Response:
    form = await request.form()
    reply_to = str(form.get("in_reply_to") or "").strip()
    req = convert(
        {
            "to": str(form.get("to", "")).strip(),
            "body": str(form.get("body", "")),
            "in_reply_to": int(reply_to) if reply_to.isdigit() else None,
        },
        m.OperatorSend,
    )
    if not req.body.strip():
        raise HiveError("invalid", "write something first")
    sent = await call(request, req, m.Sent)
    ids = ", ".join(f"#{i}" for i in sent.message_ids)
    note = f"sent to {req.to} ({ids})" + (
        f"; full text in {sent.body_file}" if sent.body_file else ""
    )
    return fragment(request, web(request).render.part("composer", req.to), note)


def answer_text(form: FormData) -> str:
    choices = [str(v) for v in form.getlist("choice")]
    if choices:
        return ", ".join(choices)
    return str(form.get("answer", "")).strip()


async def answer(request: Request) -> Response:
    form = await request.form()
    text = answer_text(form)
    if not text:
        raise HiveError("invalid", "give an answer first")
    qid = request.path_params["qid"]
    req = convert({"question_id": qid, "answer": text}, m.AnswerQuestion)
    await call(request, req, m.Ok)
    return fragment(request, "", f"answered #{qid}: {text}")


async def retry_reminder(request: Request) -> Response:
    rid = request.path_params["rid"]
    got = await call(request, convert({"id": rid}, m.RetryReminder), m.ReminderInfo)
    return fragment(request, "", f"reminder #{rid} of {got.reminder.owner} is pending again")


async def retry_message(request: Request) -> Response:
    mid = request.path_params["mid"]
    got = await call(request, convert({"id": mid}, m.RetryMessage), m.Messages)
    return fragment(request, "", f"message #{mid} to {got.messages[0].to} is queued again")


async def drop_message(request: Request) -> Response:
    mid = request.path_params["mid"]
    await call(request, convert({"id": mid}, m.DropMessage), m.Ok)
    return fragment(request, "", f"message #{mid} dropped")


async def rebuild_all(request: Request) -> Response:
    await call(request, m.RebuildAll(), m.Agents)
    return fragment(request, "", "rebuilt every agent (the manager first)")


LIFECYCLE: dict[str, Callable[[str], dict[str, Any]]] = {
    "start": lambda name: {"op": m.Start, "name": name},
    "stop": lambda name: {"op": m.Stop, "name": name},
    "restart": lambda name: {"op": m.Restart, "name": name},
    "rebuild": lambda name: {"op": m.Rebuild, "name": name},
    "pause": lambda name: {"op": m.SetPaused, "name": name, "paused": True},
    "unpause": lambda name: {"op": m.SetPaused, "name": name, "paused": False},
}
CONTROLS: dict[str, type[m.Request]] = {
    "cancel": m.CancelTurn,
    "compact": m.Compact,
    "new-session": m.NewSession,
}
PAST = {
    "start": "started",
    "stop": "stopped",
    "restart": "restarted",
    "rebuild": "rebuilt",
    "pause": "paused",
    "unpause": "unpaused",
}


async def agent_login(request: Request) -> Response:
    """Give (`/login/token`) or forget (`/login/clear`) a claude agent's login token.

    The token goes straight to the daemon (`SetAgentLogin`), which keeps it root-only; this
    process never stores it and no page ever shows it back.
    """
    name = agent_name(request)
    step = str(request.path_params["step"])
    if step == "token":
        form = await request.form()
        token: str | None = str(form.get("token", "")).strip()
    elif step == "clear":
        token = None
    else:
        raise HTTPException(404, f"no login step {step!r}")
    got = await call(request, convert({"name": name, "token": token}, m.SetAgentLogin), m.AgentInfo)
    threads = await call(request, m.GetAgentOpenThreads(agent=name), m.OpenThreads)
    html = web(request).render.part("agent_head", got.agent, threads.total)
    note = (
        f"{name} has a login token now and restarts with it"
        if token
        else f"{name}'s login token is forgotten"
    )
    return fragment(request, html, note)


async def agent_action(request: Request) -> Response:
    """Lifecycle buttons and harness controls of one agent, from its row or its page."""
    name = agent_name(request)
    action = str(request.path_params["action"])
    target = request.headers.get("hx-target", "")
    if action in LIFECYCLE:
        spec = LIFECYCLE[action](name)
        typ = spec.pop("op")
        got = await call(request, convert(spec, typ), m.AgentInfo)
        threads = await call(request, m.GetAgentOpenThreads(agent=name), m.OpenThreads)
        macro = "agent_head" if target == f"agent-head-{name}" else "agent_row"
        html = web(request).render.part(macro, got.agent, threads.total)
        return fragment(request, html, f"{name} {PAST[action]}")
    if action == "destroy":
        await call(request, convert({"name": name}, m.Destroy), m.Ok)
        note = f"{name} was destroyed; its state dir is kept as a tombstone"
        if target == f"agent-head-{name}":
            return Response(status_code=200, headers={"HX-Redirect": "/"})
        return fragment(request, "", note, "warn")
    if action in CONTROLS:
        await call(request, convert({"name": name}, CONTROLS[action]), m.Ok)
        return fragment(request, "", f"{action} sent to {name}; its harness reports back")
    if action == "model":
        form = await request.form()
        model = str(form.get("model", "")).strip()
        await call(request, convert({"name": name, "model": model}, m.SetModel), m.Ok)
        return fragment(request, "", f"{name} switches to {model} from its next turn")
    raise HTTPException(404, f"no action {action!r}")


# ------------------------------------------------------------------ the operator's gate


async def approval_diff(request: Request) -> Response:
    req = convert({"id": request.path_params["aid"]}, m.GetApproval)
    got = await panel(request, req, m.ApprovalInfo)
    return HTMLResponse(web(request).render.part("diff", got))


async def decide(request: Request) -> Response:
    """Approve or deny one approval; answers its card, resolved, once it is carried out."""
    decision = str(request.path_params["decision"])
    verbs: dict[str, type[m.Request]] = {"approve": m.Approve, "deny": m.Deny}
    if decision not in verbs:
        raise HTTPException(404, f"no decision {decision!r}")
    form = await request.form()
    note = str(form.get("note", "")).strip() or None
    req = convert({"id": request.path_params["aid"], "note": note}, verbs[decision])
    row = (await call(request, req, m.ApprovalInfo)).approval
    text = f"approval #{row.id} {row.status}" + (f": {row.outcome}" if row.outcome else "")
    tone = {"approved": "ok", "denied": "warn"}.get(row.status, "bad")
    return fragment(request, web(request).render.part("approval_card", row), text, tone)


async def purge_tombstone(request: Request) -> Response:
    name = agent_name(request)
    await call(request, convert({"name": name}, m.PurgeTombstone), m.Ok)
    return fragment(request, "", f"{name}'s tombstone was purged", "warn")


async def update_meta_inputs(request: Request) -> Response:
    form = await request.form()
    names = [str(v) for v in form.getlist("name")] or None
    got = await call(request, convert({"names": names}, m.UpdateMetaInputs), m.MetaInputs)
    html = web(request).render.part("meta_inputs", got.inputs, "", True)
    return fragment(request, html, got.note)


# ------------------------------------------------------------------ the operator's controls


async def estop(request: Request) -> Response:
    """The emergency stop; answers (its panel) once every cancelled turn has ended."""
    form = await request.form()
    req = convert({"reason": str(form.get("reason", "")).strip()}, m.EmergencyStop)
    row = (await call(request, req, m.EstopInfo)).estop
    note = (
        f"EMERGENCY STOP: {len(row.parked)} agents parked, "
        f"{len(row.cancelled)} running turns cancelled"
        + (f"; containers stopped: {', '.join(row.stopped)}" if row.stopped else "")
    )
    return fragment(request, web(request).render.part("estop_panel", row), note, "bad")


async def thaw(request: Request) -> Response:
    row = (await call(request, m.Thaw(), m.EstopInfo)).estop
    note = f"thawed: {', '.join(row.resumed) or 'no agent'} may work again"
    return fragment(request, web(request).render.part("estop_panel", row), note)


def budget_request(form: FormData) -> m.SetBudget:
    """`who` is `hive`, `each_agent` or `agent:<name>`; an empty `value` is no limit."""
    who = str(form.get("who", "hive"))
    scope, _, agent = who.partition(":")
    text = str(form.get("value", "")).strip().replace(",", "").removeprefix("$")
    value: float | None = None
    if text and text.lower() not in ("none", "-"):
        try:
            value = float(text)
        except ValueError:
            raise HiveError("invalid", f"{text!r} is not a number") from None
    return convert(
        {"scope": scope, "agent": agent or None, "limits": {str(form.get("key", "")): value}},
        m.SetBudget,
    )


async def set_budget(request: Request) -> Response:
    req = budget_request(await request.form())
    await call(request, req, m.Budget)
    ((key, value),) = req.limits.items()
    who = req.agent or ("each agent" if req.scope == "each_agent" else "the hive")
    shown = "no limit" if value is None else f"{value:g}"
    return fragment(request, "", f"{who}: {key} = {shown}")


async def dismiss_budget_alert(request: Request) -> Response:
    aid = request.path_params["aid"]
    await call(request, convert({"id": aid}, m.DismissBudgetAlert), m.Ok)
    return fragment(request, "", f"budget alert #{aid} dismissed")
