"""`hive web`: bind, give up root, and serve the dashboard with uvicorn until SIGTERM/SIGINT.

The order is the point. The listening socket is bound first, so a busy port is one clear
error. Then every module and template the server will need is loaded, because after the drop
the interpreter's own files may be unreadable (a Python installed under `/root`). Then root
is given up for good, and only then does anything talk to a browser or to the daemon. The
one-time login link goes to stdout as one line (so `hive up` can relay it); SIGUSR1 prints
a fresh one.
"""

from __future__ import annotations

import importlib
import ipaddress
import logging
import mimetypes
import os
import pwd
import re
import socket
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import uvicorn

from .app import WebSettings, create_app
from .auth import Auth, session_cookie_name
from .peer_limits import (
    PER_CLIENT_CONNECTIONS,
    REQUEST_SECONDS,
    PeerLimits,
    can_tell_local_clients_apart,
    guarded_protocol,
)
from .privileges import WEB_USER, drop_to, ensure_user, socket_access_problem, unreadable_code
from .render import Renderer

log = logging.getLogger(__name__)
PRELOAD = (
    "anyio._backends._asyncio",
    "concurrent.futures.thread",
    "email.utils",
    "encodings.idna",
    "http.cookies",
    "python_multipart",
    "starlette.formparsers",
    "uvicorn.lifespan.on",
    "uvicorn.loops.asyncio",
    "uvicorn.protocols.http.h11_impl",
)
LISTEN_BACKLOG = 128
HOST_WITH_PORT = re.compile(r"(\[[^\]]+\]|[^:\[\]]+):\d+")


class StartupError(Exception):
    pass


@dataclass(frozen=True)
class WebOptions:
    web_sock: Path
    bind: str = "127.0.0.1:8765"
    user: str = WEB_USER
    """Who to run as when started as root."""
    allow_hosts: tuple[str, ...] = ()
    """More `Host` values to answer to (a name the operator's browser uses, a reverse proxy)."""
    session_seconds: float = 12 * 3600
    max_connections_per_client: int = PER_CLIENT_CONNECTIONS
    """Connections one client (a local uid, else an address) may hold open at once."""
    request_seconds: float = REQUEST_SECONDS
    """How long a client has to send a whole request before its connection is closed."""
    log_level: str = "info"


def parse_bind(bind: str) -> tuple[str, int]:
    """`HOST:PORT` or `[V6]:PORT` → (host, port)."""
    if bind.startswith("["):
        host, sep, port = bind[1:].partition("]:")
    else:
        host, sep, port = bind.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise StartupError(f"--bind wants HOST:PORT (e.g. 127.0.0.1:8765), not {bind!r}")
    return host, int(port)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _netloc(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def hosts_for(host: str, port: int, extra: tuple[str, ...]) -> frozenset[str]:
    """Every `Host` header value a browser may legitimately send to this server."""
    names = {host}
    if is_loopback(host) or host in ("0.0.0.0", "::"):
        names |= {"localhost", "127.0.0.1"} if ":" not in host else {"localhost", "::1"}
    names -= {"0.0.0.0", "::"}
    hosts = {_netloc(n, port) for n in names}
    hosts |= {e if HOST_WITH_PORT.fullmatch(e) else _netloc(e.strip("[]"), port) for e in extra}
    return frozenset(hosts)


def bind_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    address = "127.0.0.1" if host == "localhost" else host
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((address, port))
        sock.listen(LISTEN_BACKLOG)
    except OSError as exc:
        sock.close()
        raise StartupError(
            f"cannot listen on {_netloc(host, port)}: {exc.strerror or exc}"
        ) from exc
    return sock


def preload(renderer: Renderer) -> None:
    """Load what serving will import or read lazily, while every file is still readable."""
    for name in PRELOAD:
        importlib.import_module(name)
    mimetypes.init()
    for template in renderer.env.list_templates():
        renderer.env.get_template(template)


def check_reachable(web_sock: Path) -> None:
    """After the drop: refuse to start if `web.sock` is there but out of this user's reach."""
    try:
        web_sock.stat()
    except FileNotFoundError:
        log.warning("%s does not exist yet; will connect once the daemon is up", web_sock)
        return
    except PermissionError:
        raise StartupError(
            f"{web_sock} is inside a directory this user cannot enter; "
            "the run dir and its parents must be searchable (o+x)"
        ) from None
    if not os.access(web_sock, os.W_OK):
        raise StartupError(f"{web_sock} is not writable by this user; check web_group")


def serve(opts: WebOptions, out: TextIO = sys.stdout) -> None:
    """Run the dashboard until SIGTERM/SIGINT; raises `StartupError` if it cannot start."""
    host, port = parse_bind(opts.bind)
    sock = bind_socket(host, port)
    port = sock.getsockname()[1]
    user = None
    if os.geteuid() == 0:
        user = ensure_user(opts.user)
        if (problem := socket_access_problem(opts.web_sock, user)) is not None:
            raise StartupError(problem)
    shown = "127.0.0.1" if host in ("0.0.0.0", "localhost") else "::1" if host == "::" else host
    base = f"http://{_netloc(shown, port)}"
    auth = Auth(opts.session_seconds, cookie_name=session_cookie_name(port, str(opts.web_sock)))
    pid = os.getpid()

    def announce() -> None:
        link = f"{base}/login?token={auth.new_login_token()}"
        print(f"login link (works once; `kill -USR1 {pid}` prints another): {link}", file=out)
        out.flush()

    renderer = Renderer()
    settings = WebSettings(
        web_sock=str(opts.web_sock),
        hosts=hosts_for(host, port, opts.allow_hosts),
        session_seconds=opts.session_seconds,
        on_sigusr1=announce,
    )
    limits = PeerLimits(opts.max_connections_per_client, opts.request_seconds)
    config = uvicorn.Config(
        create_app(settings, auth, renderer),
        http=guarded_protocol(limits),
        backlog=LISTEN_BACKLOG,  # what asyncio accepts per wake-up; as `bind_socket` listens
        ws="none",
        loop="asyncio",
        lifespan="on",
        log_config=None,
        log_level=opts.log_level,
        access_log=False,
        server_header=False,
        proxy_headers=False,
        timeout_graceful_shutdown=3,
    )
    config.load()
    preload(renderer)
    if user is not None:
        drop_to(user)
        check_reachable(opts.web_sock)
        if missing := unreadable_code():
            log.warning(
                "%s cannot read %s: the modules the dashboard needs were loaded before the"
                " switch, but one imported later would fail; to be safe, run hyperhive from a"
                " Python and checkout that %s can read (e.g. not under /root), or give it o+rx",
                user.pw_name,
                ", ".join(missing),
                user.pw_name,
            )
    if not can_tell_local_clients_apart():
        log.warning(
            "this kernel does not say which uid holds a local connection (sock_diag): every"
            " local client, agents included, shares one allowance of %d connections",
            limits.per_client,
        )
    if not is_loopback(host):
        log.warning(
            "listening on %s: the dashboard speaks plain HTTP; prefer a loopback bind", host
        )
    running_as = pwd.getpwuid(os.getuid()).pw_name
    log.info("dashboard on %s as %s, daemon at %s", base, running_as, opts.web_sock)
    announce()
    uvicorn.Server(config).run(sockets=[sock])
