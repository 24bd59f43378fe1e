"""Circuit breaker per exchange (node-a-listing-monitor.md §3.3, on a monotonic clock).

CLOSED: calls go through; ``threshold`` consecutive failed calls -> OPEN.
OPEN: calls are refused without touching the exchange; after ``recovery`` seconds -> HALF_OPEN.
HALF_OPEN: exactly one trial call goes through; success -> CLOSED, failure -> OPEN again.
"""

from __future__ import annotations

import logging
import time
from typing import Callable

from shared.states import CircuitState

log = logging.getLogger(__name__)


class CircuitBreaker:
    def __init__(self, name: str, threshold: int = 5, recovery: float = 300.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.name = name
        self.threshold = threshold
        self.recovery = recovery
        self._clock = clock
        self.state = CircuitState.CLOSED
        self.consecutive_failures = 0
        self.opened_at: float | None = None
        self.opens = 0
        self._trial_in_flight = False

    def allow(self) -> bool:
        """May a call go out now? (In HALF_OPEN, True once until the trial's outcome is recorded.)"""
        if self.state is CircuitState.CLOSED:
            return True
        if self.state is CircuitState.OPEN:
            assert self.opened_at is not None
            if self._clock() - self.opened_at < self.recovery:
                return False
            self._set(CircuitState.HALF_OPEN)
        if self._trial_in_flight:
            return False
        self._trial_in_flight = True
        return True

    def record_success(self) -> None:
        self._trial_in_flight = False
        self.consecutive_failures = 0
        if self.state is not CircuitState.CLOSED:
            self._set(CircuitState.CLOSED)

    def record_failure(self) -> None:
        self._trial_in_flight = False
        self.consecutive_failures += 1
        if self.state is CircuitState.HALF_OPEN or (
                self.state is CircuitState.CLOSED and self.consecutive_failures >= self.threshold):
            self.opened_at = self._clock()
            self.opens += 1
            self._set(CircuitState.OPEN)

    def cancel_trial(self) -> None:
        """The allowed call ended without a verdict (cancelled, refused locally)."""
        self._trial_in_flight = False

    def retry_in(self) -> float:
        """Seconds until an OPEN breaker half-opens (0 otherwise)."""
        if self.state is not CircuitState.OPEN or self.opened_at is None:
            return 0.0
        return max(0.0, self.recovery - (self._clock() - self.opened_at))

    def _set(self, state: CircuitState) -> None:
        if state is self.state:
            return
        level = logging.WARNING if state is CircuitState.OPEN else logging.INFO
        extra = f" for {self.recovery:g}s after {self.consecutive_failures} consecutive failures" \
            if state is CircuitState.OPEN else ""
        log.log(level, "%s circuit %s -> %s%s", self.name, self.state.value, state.value, extra)
        self.state = state
