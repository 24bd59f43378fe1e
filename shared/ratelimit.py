"""Token buckets: the publisher's per-stream-class limits, WebSocket send pacing, REST budgets."""

from __future__ import annotations

import time
from typing import Callable


class TokenBucket:
    """``rate`` tokens per second, holding at most ``burst``. ``rate <= 0`` means unlimited."""

    __slots__ = ("rate", "burst", "tokens", "_last", "_clock")

    def __init__(self, rate: float, burst: float | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.burst = burst if burst is not None else max(rate, 1.0)
        self.tokens = self.burst
        self._clock = clock
        self._last = clock()

    @property
    def unlimited(self) -> bool:
        return self.rate <= 0

    def _refill(self) -> None:
        now = self._clock()
        if now > self._last:
            self.tokens = min(self.burst, self.tokens + (now - self._last) * self.rate)
        self._last = now

    def try_take(self, n: float = 1.0) -> bool:
        if self.unlimited:
            return True
        self._refill()
        if self.tokens >= n:
            self.tokens -= n
            return True
        return False

    def available(self) -> int:
        """Whole tokens available now (a large number when unlimited)."""
        if self.unlimited:
            return 1 << 30
        self._refill()
        return int(self.tokens)

    def delay_for(self, n: float = 1.0) -> float:
        """Seconds until ``n`` tokens are available (0 if now)."""
        if self.unlimited:
            return 0.0
        self._refill()
        if self.tokens >= n:
            return 0.0
        return (n - self.tokens) / self.rate

    def take(self, n: float) -> None:
        """Consume ``n`` tokens, possibly going negative (a debt paid back by waiting)."""
        if self.unlimited:
            return
        self._refill()
        self.tokens -= n
