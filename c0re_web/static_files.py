"""The dashboard's static files (its CSS, script and vendored htmx), served from memory.

They are read once, when the app is built, before the web process drops to its own user:
the checkout may then be out of that user's reach (a checkout under a 0700 home), and a
page must not lose its script because of where the operator cloned the project.
"""

from __future__ import annotations

import hashlib
import mimetypes
from dataclasses import dataclass
from pathlib import Path

from starlette.requests import Request
from starlette.responses import Response

STATIC = Path(__file__).resolve().parent / "static"


@dataclass(frozen=True)
class StaticFile:
    body: bytes
    media_type: str
    etag: str


def load(root: Path = STATIC) -> dict[str, StaticFile]:
    files = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        body = path.read_bytes()
        media_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        if media_type.startswith("text/") or media_type.endswith("javascript"):
            media_type += "; charset=utf-8"
        etag = '"' + hashlib.sha256(body).hexdigest()[:20] + '"'
        files[path.relative_to(root).as_posix()] = StaticFile(body, media_type, etag)
    return files


class StaticFiles:
    """Its `serve` is the endpoint of `/static/{path:path}`: only the files loaded at start, never the disk."""

    def __init__(self, root: Path = STATIC) -> None:
        self.files = load(root)

    async def serve(self, request: Request) -> Response:
        found = self.files.get(request.path_params["path"])
        if found is None:
            return Response("not found", status_code=404, media_type="text/plain")
        headers = {"etag": found.etag, "cache-control": "no-cache"}
        if request.headers.get("if-none-match") == found.etag:
            return Response(status_code=304, headers=headers)
        return Response(found.body, media_type=found.media_type, headers=headers)
