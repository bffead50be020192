"""`Fail`: the one exception a handler raises to answer with a typed protocol `Error`; and
`storage_full`, which recognises a full disk under whatever exception carried it."""

from __future__ import annotations

import errno
import sqlite3

from protocol.messages import ErrorCode

STORAGE_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
SQLITE_FULL_CODES = frozenset({sqlite3.SQLITE_FULL, 4874})
"""SQLITE_FULL, and SQLITE_IOERR_SHMSIZE: the WAL index could not grow (tmpfs full)."""
STORAGE_FULL_MESSAGE = (
    "the disk holding the hive's state is full ({}); nothing was stored: "
    "free some space and try again"
)


class Fail(Exception):
    """Refuse a request with `code` and a message meant for the caller."""

    def __init__(self, code: ErrorCode, message: str, retry_after_seconds: float | None = None):
        super().__init__(f"{code}: {message}")
        self.code: ErrorCode = code
        self.message = message
        self.retry_after_seconds = retry_after_seconds


def storage_full(exc: BaseException) -> Fail | None:
    """A `storage_full` `Fail` when `exc` (or what caused it) is a full disk, else None.

    A full disk reaches the daemon as an `OSError` (ENOSPC, EDQUOT) from a file write, or as
    sqlite's SQLITE_FULL from the store; either way the caller hears that the disk is full,
    not "internal error".
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, Fail) and current.code == "storage_full":
            return current
        if isinstance(current, OSError) and current.errno in STORAGE_FULL_ERRNOS:
            return Fail("storage_full", STORAGE_FULL_MESSAGE.format(current.strerror))
        if (
            isinstance(current, sqlite3.Error)
            and getattr(current, "sqlite_errorcode", None) in SQLITE_FULL_CODES
        ):
            return Fail("storage_full", STORAGE_FULL_MESSAGE.format(f"sqlite: {current}"))
        current = current.__cause__ or current.__context__
    return None
