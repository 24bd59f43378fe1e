"""Exponential backoff with full jitter, used for process restarts, reconnects and retries."""

from __future__ import annotations

import random


class Backoff:
    """``initial`` doubling to ``maximum``; each delay is drawn from [delay/2, delay] (jitter)."""

    def __init__(self, initial: float = 1.0, maximum: float = 60.0, factor: float = 2.0,
                 rng: random.Random | None = None) -> None:
        self.initial = initial
        self.maximum = maximum
        self.factor = factor
        self.attempts = 0
        self._rng = rng or random.Random()

    def base_delay(self) -> float:
        """The un-jittered delay for the next attempt."""
        # the exponent is capped: factor ** attempts overflows a float after ~1000 attempts (an
        # outage of an hour or two at a few seconds each), long after the delay hit the maximum
        return min(self.maximum, self.initial * (self.factor ** min(self.attempts, 64)))

    def next_delay(self) -> float:
        base = self.base_delay()
        self.attempts += 1
        return self._rng.uniform(base / 2, base)

    def reset(self) -> None:
        self.attempts = 0
