"""Token buckets: how often each agent may do something, with a burst allowance.

A bucket holds up to `burst` tokens and gains `per_second` of them continuously; each
request takes one, and a request that finds less than one token is refused with the seconds
until one is there. Buckets live in memory only (a restart gives every agent a full bucket)
and take the time from the caller, so tests can drive them with a mock clock. A clock that
steps backwards refills nothing rather than draining the bucket.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Rate:
    burst: int
    per_second: float


@dataclass
class TokenBucket:
    rate: Rate
    tokens: float
    updated: float

    def take(self, now: float) -> float | None:
        """Take one token at `now`; `None` when taken, else the seconds until one is there."""
        elapsed = max(0.0, now - self.updated)
        self.tokens = min(float(self.rate.burst), self.tokens + elapsed * self.rate.per_second)
        self.updated = max(self.updated, now)
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return None
        return (1.0 - self.tokens) / self.rate.per_second


class RateLimiter:
    """One bucket per key (an agent's name); `rate_of(key)` says its burst and refill rate."""

    def __init__(self, rate_of: Callable[[str], Rate]) -> None:
        self._rate_of = rate_of
        self._buckets: dict[str, TokenBucket] = {}

    def take(self, key: str, now: float) -> float | None:
        """Take one of `key`'s tokens; `None` when taken, else the seconds to wait."""
        rate = self._rate_of(key)
        bucket = self._buckets.get(key)
        if bucket is None or bucket.rate != rate:
            bucket = self._buckets[key] = TokenBucket(rate, float(rate.burst), now)
        return bucket.take(now)
