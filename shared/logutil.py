"""Log lines that hostile or flapping input cannot turn into a flood."""

from __future__ import annotations

import logging
import time
from typing import Any


class LogLimiter:
    """At most one line per key per ``interval`` seconds; the lines held back are counted and the
    count is appended to the next line of that key. At most ``max_keys`` keys are remembered."""

    def __init__(self, interval: float = 10.0, max_keys: int = 1000) -> None:
        self.interval = interval
        self.max_keys = max_keys
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = {}

    def ok(self, key: str) -> bool:
        """True when a line for ``key`` may be logged now (else it is counted as held back)."""
        now = time.monotonic()
        if now - self._last.get(key, -1e18) >= self.interval:
            if len(self._last) >= self.max_keys and key not in self._last:
                self._last.clear()
                self._held.clear()
            self._last[key] = now
            return True
        self._held[key] = self._held.get(key, 0) + 1
        return False

    def warning(self, logger: logging.Logger, key: str, msg: str, *args: Any) -> None:
        if self.ok(key):
            held = self._held.pop(key, 0)
            logger.warning(msg + (f" (+{held} similar held back)" if held else ""), *args)
