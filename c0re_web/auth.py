"""Who may use the dashboard: a one-time login link, a signed session cookie, same-origin writes.

`Guard` is plain ASGI middleware around the whole app, so a route cannot forget it. In order
it refuses: a `Host` that is not this server (DNS rebinding), a state-changing request whose
`Origin` (or, lacking one, `Referer`) is not this server (403), and any request without a
live session (401: the login page for a browser page, `HX-Redirect` for htmx, text for the
rest). The only open door is `GET /login`, which trades the one-time token printed at start
for a session. It also stamps every response with the security headers (CSP without inline
script, no framing, no caching of live pages).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from itsdangerous import BadSignature, URLSafeTimedSerializer
from starlette.datastructures import Headers, MutableHeaders
from starlette.requests import cookie_parser
from starlette.types import ASGIApp, Message, Receive, Scope, Send

SESSION_COOKIE = "hive_session"
"""The cookie's name when nothing names the server (`session_cookie_name` gives the real one)."""
MAX_SESSIONS = 256
PUBLIC_PATHS = frozenset({"/login"})
SAFE_METHODS = frozenset({"GET", "HEAD"})
SECURITY_HEADERS = {
    "content-security-policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:;"
        " connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
    ),
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "same-origin",
}


def session_cookie_name(port: int, web_sock: str) -> str:
    """The session cookie's name for the dashboard on `port` that serves the hive at `web_sock`.

    A browser keeps one cookie jar per host name, not per port (RFC 6265, section 8.5): two
    hives on one machine, both at `127.0.0.1`, would share one `hive_session` cookie, and
    logging in to one would log the operator out of the other. So the name carries the port
    and the hive's socket path, which no two dashboards running on one host share, and stays
    the same when the web process restarts.
    """
    digest = hashlib.blake2b(f"{port}\0{web_sock}".encode(), digest_size=4).hexdigest()
    return f"{SESSION_COOKIE}_{port}_{digest}"


@dataclass
class Auth:
    """The login token and the live sessions of one web process (both die with it)."""

    session_seconds: float
    clock: Callable[[], float] = time.time
    cookie_name: str = SESSION_COOKIE
    _secret: bytes = field(default_factory=lambda: secrets.token_bytes(32))
    _token: str | None = None
    _sessions: dict[str, float] = field(default_factory=dict)

    @property
    def _signer(self) -> URLSafeTimedSerializer:
        return URLSafeTimedSerializer(self._secret, salt="hive-web-session")

    def new_login_token(self) -> str:
        """A fresh single-use token; any earlier one stops working."""
        self._token = secrets.token_urlsafe(32)
        return self._token

    def redeem(self, token: str) -> str | None:
        """Trade the login token for a signed session cookie value (once), else `None`."""
        if self._token is None or not hmac.compare_digest(token.encode(), self._token.encode()):
            return None
        self._token = None
        now = self.clock()
        self._sessions = {
            sid: born for sid, born in self._sessions.items() if now - born < self.session_seconds
        }
        if len(self._sessions) >= MAX_SESSIONS:
            oldest = min(self._sessions, key=self._sessions.__getitem__)
            del self._sessions[oldest]
        sid = secrets.token_urlsafe(24)
        self._sessions[sid] = now
        return self._signer.dumps(sid)

    def session(self, cookie: str | None) -> str | None:
        """The session id a cookie value proves, if it is signed by us, live and unexpired."""
        if not cookie:
            return None
        try:
            sid = self._signer.loads(cookie)
        except BadSignature:
            return None
        if not isinstance(sid, str):
            return None
        born = self._sessions.get(sid)
        if born is None:
            return None
        if self.clock() - born >= self.session_seconds:
            del self._sessions[sid]
            return None
        return sid

    def logout(self, sid: str) -> None:
        self._sessions.pop(sid, None)

    def cookie_header(self, value: str) -> str:
        return (
            f"{self.cookie_name}={value}; Path=/; HttpOnly; SameSite=Strict;"
            f" Max-Age={int(self.session_seconds)}"
        )

    def clear_cookie_header(self) -> str:
        return f"{self.cookie_name}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"

    def session_of(self, cookies: dict[str, str]) -> str | None:
        """The session id this request's cookies prove, if any (see `session`)."""
        return self.session(cookies.get(self.cookie_name))


def same_origin(headers: Headers, origins: frozenset[str]) -> bool:
    """Whether a state-changing request comes from one of our own pages."""
    origin = headers.get("origin")
    if origin is not None:
        return origin in origins
    referer = headers.get("referer")
    if referer is None:
        return False
    parts = urlsplit(referer)
    return f"{parts.scheme}://{parts.netloc}" in origins


class Guard:
    """ASGI middleware: Host check, same-origin check on writes, session check, headers."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        auth: Auth,
        hosts: frozenset[str],
        login_page: Callable[[str], bytes],
    ) -> None:
        self.app = app
        self.auth = auth
        self.hosts = hosts
        self.origins = frozenset(f"http://{h}" for h in hosts)
        self.login_page = login_page

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self.app(scope, receive, send)
            return
        if scope["type"] != "http":
            return  # no websockets here: dropping the scope refuses it
        headers = Headers(scope=scope)
        send = _with_security_headers(send)
        if headers.get("host", "") not in self.hosts:
            await _plain(send, 400, "unknown Host: use the address printed by `hive web`")
            return
        method = scope["method"]
        if method not in SAFE_METHODS and not same_origin(headers, self.origins):
            await _plain(send, 403, "cross-origin request refused")
            return
        if scope["path"] in PUBLIC_PATHS and method in SAFE_METHODS:
            await self.app(scope, receive, send)
            return
        cookies = cookie_parser(headers.get("cookie", ""))
        sid = self.auth.session_of(cookies)
        if sid is None:
            await self._refuse(scope, headers, send)
            return
        scope["session"] = {"sid": sid}
        await self.app(scope, receive, send)

    async def _refuse(self, scope: Scope, headers: Headers, send: Send) -> None:
        if headers.get("hx-request") == "true":
            await _plain(send, 401, "login required", {"hx-redirect": "/login"})
        elif scope["method"] == "GET" and "text/html" in headers.get("accept", ""):
            body = self.login_page("Your session has ended, or you have not logged in yet.")
            await _send(send, 401, body, "text/html; charset=utf-8", {})
        else:
            await _plain(send, 401, "login required")


def _with_security_headers(send: Send) -> Send:
    async def wrapped(message: Message) -> None:
        if message["type"] == "http.response.start":
            message.setdefault("headers", [])
            headers = MutableHeaders(scope=message)
            for key, value in SECURITY_HEADERS.items():
                headers.setdefault(key, value)
            headers.setdefault("cache-control", "no-store")
        await send(message)

    return wrapped


async def _plain(send: Send, status: int, text: str, extra: dict[str, str] | None = None) -> None:
    await _send(send, status, text.encode(), "text/plain; charset=utf-8", extra or {})


async def _send(send: Send, status: int, body: bytes, ctype: str, extra: dict[str, str]) -> None:
    headers = [(b"content-type", ctype.encode()), (b"content-length", str(len(body)).encode())]
    headers += [(k.encode(), v.encode()) for k, v in extra.items()]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
