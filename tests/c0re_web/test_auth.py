"""The dashboard's doors: nothing without a session, no writes from another origin, one-time links.

These run the app in-process (no daemon behind it): every refusal here happens in the guard,
before a route could ask the daemon anything.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from starlette.routing import Route
from starlette.testclient import TestClient

from c0re_web.app import WebSettings, create_app
from c0re_web.auth import SESSION_COOKIE, Auth, session_cookie_name
from c0re_web.serve import hosts_for, parse_bind

HOST = "testserver"
ORIGIN = f"http://{HOST}"
SAMPLE = {
    "name": "alice",
    "owner": "alice",
    "action": "stop",
    "qid": "1",
    "rid": "1",
    "mid": "1",
    "path": "app.css",
    "step": "token",
    "aid": "1",
    "decision": "approve",
}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def auth(clock: Clock) -> Auth:
    return Auth(session_seconds=60, clock=clock)


@pytest.fixture
def app(auth: Auth):  # type: ignore[no-untyped-def]
    return create_app(WebSettings(web_sock="/nonexistent/web.sock", hosts=frozenset({HOST})), auth)


@pytest.fixture
def client(app) -> Iterator[TestClient]:  # type: ignore[no-untyped-def]
    with TestClient(app, base_url=ORIGIN, follow_redirects=False) as c:
        yield c


def login(client: TestClient, auth: Auth) -> str:
    r = client.get(f"/login?token={auth.new_login_token()}")
    assert r.status_code == 303
    return r.cookies[SESSION_COOKIE]


def concrete(path: str) -> str:
    return re.sub(r"\{(\w+)(:\w+)?\}", lambda mt: SAMPLE[mt.group(1)], path)


def test_every_route_refuses_a_request_without_a_session(app):
    """Walks the route table, so a route added later cannot forget the guard."""
    client = TestClient(app, base_url=ORIGIN)  # no lifespan: the guard needs none
    walked = 0
    for route in app.routes:
        assert isinstance(route, Route)
        if route.path == "/login":
            continue
        requests = [(method, concrete(route.path)) for method in sorted(route.methods or ())]
        for method, path in requests:
            for accept in ("text/html", "*/*"):
                r = client.request(method, path, headers={"Origin": ORIGIN, "Accept": accept})
                assert r.status_code == 401, (method, path, r.status_code)
                assert SESSION_COOKIE not in r.cookies
        walked += 1
    assert walked == len(app.routes) - 1


def test_a_browser_page_without_a_session_gets_the_login_page_and_htmx_a_redirect(client):
    page = client.get("/", headers={"Accept": "text/html"})
    assert page.status_code == 401
    assert "one-time link" in page.text
    htmx = client.post("/api/send", headers={"Origin": ORIGIN, "HX-Request": "true"})
    assert (htmx.status_code, htmx.headers["hx-redirect"]) == (401, "/login")


def test_the_login_link_works_once_and_sets_a_strict_http_only_cookie(client, auth):
    token = auth.new_login_token()
    first = client.get(f"/login?token={token}")
    assert (first.status_code, first.headers["location"]) == (303, "/")
    cookie = first.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/" in cookie
    client.cookies.clear()
    again = client.get(f"/login?token={token}")
    assert again.status_code == 401
    assert "already used" in again.text
    assert SESSION_COOKIE not in again.cookies


def test_a_new_token_replaces_the_old_one(client, auth):
    old = auth.new_login_token()
    auth.new_login_token()
    assert client.get(f"/login?token={old}").status_code == 401


def test_an_expired_session_goes_back_to_login(client, auth, clock):
    login(client, auth)
    assert client.get("/api/ping").status_code == 200
    clock.now += 61
    r = client.get("/", headers={"Accept": "text/html"})
    assert r.status_code == 401
    assert "session has ended" in r.text


def test_a_forged_or_foreign_cookie_is_no_session(client, auth):
    cookie = login(client, auth)
    client.cookies.clear()
    client.cookies.set(SESSION_COOKIE, cookie[:-2] + "xx")
    assert client.get("/api/ping").status_code == 401
    other = Auth(session_seconds=60)  # another web process, another key
    client.cookies.set(SESSION_COOKIE, other.redeem(other.new_login_token()) or "")
    assert client.get("/api/ping").status_code == 401


def test_logout_ends_the_session(client, auth):
    login(client, auth)
    r = client.post("/logout", headers={"Origin": ORIGIN})
    assert (r.status_code, r.headers["hx-redirect"]) == (200, "/login")
    assert client.get("/api/ping").status_code == 401


@pytest.mark.parametrize(
    "headers",
    [
        {"Origin": "http://evil.example"},
        {"Origin": "null"},
        {"Origin": "http://testserver.evil.example"},
        {"Referer": "http://evil.example/page"},
        {},
    ],
    ids=["foreign-origin", "null-origin", "lookalike-origin", "foreign-referer", "neither"],
)
def test_a_post_from_another_origin_is_refused_even_with_a_session(client, auth, headers):
    login(client, auth)
    r = client.post("/api/send", data={"to": "alice", "body": "hi"}, headers=headers)
    assert r.status_code == 403


def test_a_same_origin_referer_is_enough_without_an_origin(client, auth):
    login(client, auth)
    r = client.post("/logout", headers={"Referer": f"{ORIGIN}/agent/alice/"})
    assert r.status_code == 200


def test_an_unknown_host_is_refused(auth):
    app = create_app(
        WebSettings(web_sock="/nonexistent", hosts=frozenset({"127.0.0.1:8765"})), auth
    )
    r = TestClient(app, base_url="http://rebound.example").get("/login")
    assert r.status_code == 400


def test_every_response_carries_the_security_headers(client):
    r = client.get("/login")
    assert r.status_code == 200
    csp = r.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert "unsafe-inline" not in csp
    assert r.headers["x-frame-options"] == "DENY"
    assert r.headers["cache-control"] == "no-store"


def test_without_the_daemon_a_page_says_so_and_retries(client, auth):
    login(client, auth)
    r = client.get("/", headers={"Accept": "text/html"})
    assert r.status_code == 503
    assert "not reachable" in r.text
    action = client.post("/api/send", data={"to": "alice", "body": "x"}, headers={"Origin": ORIGIN})
    assert (action.status_code, action.headers["hx-reswap"]) == (503, "none")


def test_bind_parsing_and_the_hosts_a_loopback_server_answers_to():
    assert parse_bind("127.0.0.1:8765") == ("127.0.0.1", 8765)
    assert parse_bind("[::1]:0") == ("::1", 0)
    assert hosts_for("127.0.0.1", 8765, ()) == {"127.0.0.1:8765", "localhost:8765"}
    assert hosts_for("127.0.0.1", 8765, ("hive.lan", "proxy:443")) >= {"hive.lan:8765", "proxy:443"}
    assert hosts_for("0.0.0.0", 80, ()) == {"127.0.0.1:80", "localhost:80"}


def test_each_dashboard_names_its_session_cookie_for_itself():
    """Cookies are per host, not per port: two hives at 127.0.0.1 need two cookie names. The
    name is a plain cookie token and stays the same when the web process restarts."""
    names = {
        session_cookie_name(port, sock)
        for port in (8765, 8766)
        for sock in ("/run/hyperhive/web.sock", "/tmp/hive2/run/web.sock")
    }
    assert len(names) == 4
    assert session_cookie_name(8765, "/run/hyperhive/web.sock") in names
    for name in names:
        assert re.fullmatch(r"hive_session_\d+_[0-9a-f]{8}", name), name
    named = Auth(session_seconds=60, cookie_name=session_cookie_name(8765, "/run/x/web.sock"))
    value = named.redeem(named.new_login_token())
    assert value is not None
    assert named.session_of({SESSION_COOKIE: value}) is None
    assert named.session_of({named.cookie_name: value}) is not None
    assert named.cookie_header(value).startswith(f"{named.cookie_name}={value};")
