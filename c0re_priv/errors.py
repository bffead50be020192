"""`Fail`: the one exception a handler raises to answer with a typed protocol `Error`."""

from __future__ import annotations

from protocol.messages import ErrorCode


class Fail(Exception):
    """Refuse a request with `code` and a message meant for the caller."""

    def __init__(self, code: ErrorCode, message: str, retry_after_seconds: float | None = None):
        super().__init__(f"{code}: {message}")
        self.code: ErrorCode = code
        self.message = message
        self.retry_after_seconds = retry_after_seconds
