"""The dashboard's static files come from memory: a checkout the web user cannot read
(one under a 0700 home) still serves its script and styles."""

from __future__ import annotations

from pathlib import Path

from starlette.applications import Starlette
from starlette.routing import Route
from starlette.testclient import TestClient

from c0re_web.render import Renderer
from c0re_web.static_files import StaticFiles


def test_files_are_served_after_the_disk_is_gone(tmp_path: Path) -> None:
    (tmp_path / "vendor").mkdir()
    (tmp_path / "app.js").write_text("console.log(1)")
    (tmp_path / "vendor" / "x.css").write_text("body{}")
    app = Starlette(routes=[Route("/static/{path:path}", StaticFiles(tmp_path).serve)])
    for path in (tmp_path / "app.js", tmp_path / "vendor" / "x.css"):
        path.unlink()
    client = TestClient(app)
    js = client.get("/static/app.js")
    assert (js.status_code, js.text) == (200, "console.log(1)")
    assert js.headers["content-type"].startswith("text/javascript")
    css = client.get("/static/vendor/x.css")
    assert css.status_code == 200 and css.headers["content-type"] == "text/css; charset=utf-8"
    again = client.get("/static/app.js", headers={"if-none-match": js.headers["etag"]})
    assert again.status_code == 304
    for missing in ("/static/nope.js", "/static/../app.py", "/static/vendor"):
        assert client.get(missing).status_code == 404


def test_templates_are_read_once_at_start() -> None:
    renderer = Renderer()
    assert renderer.env.auto_reload is False
    assert "parts.html" in renderer.env.list_templates()
