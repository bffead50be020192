"""The only bridge between hyperhive's processes: wire shapes, framing and clients.

Imports msgspec and anyio only; never imports the daemon (`c0re_priv`). The names below are
loaded when first used, so a process that needs only the wire shapes (`git-remote-hive`,
started for every `git fetch`) does not pay for anyio.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .client import ConnectionLost, HiveClient, HiveError, SyncClient
    from .framing import DEFAULT_MAX_FRAME, FrameDecoder, FrameError, FrameTooLarge, encode_frame
    from .messages import PROTOCOL_VERSION

_WHERE = {
    "ConnectionLost": ".client",
    "HiveClient": ".client",
    "HiveError": ".client",
    "SyncClient": ".client",
    "DEFAULT_MAX_FRAME": ".framing",
    "FrameDecoder": ".framing",
    "FrameError": ".framing",
    "FrameTooLarge": ".framing",
    "encode_frame": ".framing",
    "PROTOCOL_VERSION": ".messages",
}

__all__ = [
    "DEFAULT_MAX_FRAME",
    "PROTOCOL_VERSION",
    "ConnectionLost",
    "FrameDecoder",
    "FrameError",
    "FrameTooLarge",
    "HiveClient",
    "HiveError",
    "SyncClient",
    "encode_frame",
]


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
