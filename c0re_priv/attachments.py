"""Oversize bodies: written in full to the sender's state dir, replaced by a pointer.

One function serves every body that has a cap (messages, questions, answers, reminders), so
a broadcast writes one file however many recipients it has and no recipient can fail
because another's copy was too long: the cap is applied once, before fan-out.
"""

from __future__ import annotations

import itertools
import time
from pathlib import Path

import trio

from .errors import Fail, storage_full
from .safe_fs import UnsafePath, write_new_file

EXCERPT_CHARS = 160
_counter = itertools.count(1)


def excerpt(body: str, limit: int = EXCERPT_CHARS) -> str:
    flat = " ".join(body.split())
    return flat if len(flat) <= limit else flat[: limit - 1].rstrip() + "…"


async def spill_oversize(
    body: str,
    *,
    cap: int,
    agents_root: Path,
    owner: str,
    owner_ids: tuple[int, int] | None = None,
    now: float | None = None,
) -> tuple[str, str | None]:
    """Return `(body, None)` when it fits in `cap` UTF-8 bytes, else `(pointer, path)`.

    The full body goes to `<agents_root>/<owner>/state/auto-msg/<ts>-<n>.md`.
    """
    if len(body.encode()) <= cap:
        return body, None
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(now if now is not None else time.time()))
    name = f"{stamp}-{next(_counter)}.md"
    parts = [owner, "state", "auto-msg"]
    path = agents_root.joinpath(*parts, name)
    try:
        await trio.to_thread.run_sync(
            lambda: write_new_file(agents_root, parts, name, body.encode(), owner=owner_ids)
        )
    except UnsafePath as exc:
        raise Fail("invalid", f"cannot store the full body under {path.parent}: {exc}") from exc
    except OSError as exc:
        full = storage_full(exc)
        if full is not None:
            raise full from exc
        raise Fail("internal", f"cannot store the full body at {path}: {exc.strerror}") from exc
    pointer = f"{excerpt(body)} — full body at {path}"
    # The pointer itself must fit: an absurdly small cap still gets a usable message.
    return pointer, str(path)
