"""Length-prefixed MessagePack framing, with no I/O of its own.

A frame is a 4-byte big-endian body length followed by that many bytes of MessagePack.
`FrameDecoder` turns arbitrary chunks of a byte stream into complete bodies and refuses a
frame whose announced length exceeds the limit *before* any of its body is buffered, so a
peer cannot make either side allocate more than `max_frame` bytes per connection. Both the
trio daemon and the anyio client drive this same decoder; it must never block or read.
"""

from __future__ import annotations

import struct

DEFAULT_MAX_FRAME = 1024 * 1024
HEADER = struct.Struct(">I")


class FrameError(Exception):
    """The byte stream is damaged; the connection cannot be trusted past this point."""

    code = "bad_frame"


class FrameTooLarge(FrameError):
    """A length prefix announced a body larger than the configured maximum."""

    code = "too_large"

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"frame of {size} bytes exceeds the {limit}-byte limit")
        self.size = size
        self.limit = limit


def encode_frame(body: bytes, max_frame: int = DEFAULT_MAX_FRAME) -> bytes:
    """Prefix an encoded body with its length; refuses bodies over `max_frame`."""
    if len(body) > max_frame:
        raise FrameTooLarge(len(body), max_frame)
    return HEADER.pack(len(body)) + body


class FrameDecoder:
    """Incremental frame splitter: `feed` chunks in, get complete bodies out."""

    def __init__(self, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        self.max_frame = max_frame
        self._buf = bytearray()
        self._need: int | None = None

    def feed(self, data: bytes) -> list[bytes]:
        """Add received bytes; return every body now complete, in order.

        Raises `FrameTooLarge` as soon as a header announces an oversize body.
        """
        self._buf += data
        bodies: list[bytes] = []
        while True:
            if self._need is None:
                if len(self._buf) < HEADER.size:
                    return bodies
                (size,) = HEADER.unpack_from(self._buf)
                if size > self.max_frame:
                    raise FrameTooLarge(size, self.max_frame)
                del self._buf[: HEADER.size]
                self._need = size
            if len(self._buf) < self._need:
                return bodies
            bodies.append(bytes(self._buf[: self._need]))
            del self._buf[: self._need]
            self._need = None

    @property
    def pending(self) -> int:
        """Bytes of an incomplete frame (header or body) still buffered."""
        return len(self._buf) + (HEADER.size if self._need is not None else 0)
