"""`RateLimitedLog`: a condition that recurs (a refused connection, a full disk) is logged
once, then at most once a minute with how many times it happened meanwhile.

A flood of the same event must never become a flood of log lines (or of tracebacks): the
log is how the operator finds out what happened, and a disk filling with log lines is one
more problem. Nothing here decides what is worth logging; callers do.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

LOG_EVERY = 60.0


@dataclass
class RateLimitedLog:
    """Log each `key` at most once per `every` seconds, counting what was held back."""

    logger: logging.Logger
    every: float = LOG_EVERY
    _last: dict[str, float] = field(default_factory=dict)
    _held: dict[str, int] = field(default_factory=dict)

    def note(self, key: str, message: str, *args: object, level: int = logging.WARNING) -> None:
        now = time.monotonic()
        last = self._last.get(key)
        if last is not None and now - last < self.every:
            self._held[key] = self._held.get(key, 0) + 1
            return
        held = self._held.pop(key, 0)
        self._last[key] = now
        if held:
            message += f" (and {held} more like it since the last report)"
        self.logger.log(level, message, *args)
