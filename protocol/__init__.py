"""The only bridge between hyperhive's processes: wire shapes, framing and clients.

Imports msgspec and anyio only; never imports the daemon (`c0re_priv`).
"""

from .client import ConnectionLost, HiveClient, HiveError, SyncClient
from .framing import DEFAULT_MAX_FRAME, FrameDecoder, FrameError, FrameTooLarge, encode_frame
from .messages import PROTOCOL_VERSION

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
