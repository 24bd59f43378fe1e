"""Windowed deduplication with incremental expiry.

The publisher sees each event's natural key (e.g. ``t:binance:spot:BTCUSDT:123``) and drops a key
seen again within ``window_s``. Expiry is incremental: keys sit in a FIFO of insertion order with
their expiry time, and every call pops only the few entries that are due (plus the oldest when the
key count exceeds ``max_keys``). Nothing is ever dropped and rebuilt in one piece: a toy publisher
that rotated a 500k-key set generation stalled for 110-130 ms at each rotation, and even a single
multi-million-key set stalled 37-91 ms on resize (research/limits.md section 6). To keep resize
costs small too, the key->expiry map is split into shards, so a dict resize touches 1/N of the keys.
"""

from __future__ import annotations

from collections import deque

#: FIFO entries expired per ``seen`` call at most (each call adds one, so this keeps up)
_EXPIRE_PER_CALL = 32


class Deduper:
    """``seen(key, now)`` is True when ``key`` was recorded less than ``window_s`` ago.

    Otherwise the key is recorded (expiring at ``now + window_s``) and False is returned. At most
    ``max_keys`` keys are held; beyond that the oldest are forgotten early (a late duplicate of a
    forgotten key passes). ``now`` must not go backwards (use ``time.monotonic()``). O(1) amortized.
    """

    __slots__ = ("window_s", "max_keys", "_shards", "_mask", "_keys", "_expiries", "evicted")

    def __init__(self, window_s: float, max_keys: int) -> None:
        if window_s <= 0:
            raise ValueError("window_s must be > 0")
        if max_keys < 1:
            raise ValueError("max_keys must be >= 1")
        self.window_s = float(window_s)
        self.max_keys = int(max_keys)
        # ~16k keys per shard at the limit: a shard resize then costs well under a millisecond
        n_shards = 1
        while n_shards < 1024 and n_shards * 16384 < self.max_keys:
            n_shards *= 2
        self._mask = n_shards - 1
        self._shards: list[dict[str, float]] = [{} for _ in range(n_shards)]
        # insertion order; parallel deques avoid one tuple object per key. A key re-recorded after
        # its window may have a stale older entry here; entries are bounded by max_keys anyway.
        self._keys: deque[str] = deque()
        self._expiries: deque[float] = deque()
        #: keys forgotten before their window ended because of ``max_keys``
        self.evicted = 0

    def __len__(self) -> int:
        """Keys held (including due keys not swept yet)."""
        return sum(len(s) for s in self._shards)

    def seen(self, key: str, now: float) -> bool:
        expiries = self._expiries
        if expiries and expiries[0] <= now:
            self.expire(now, _EXPIRE_PER_CALL)
        shard = self._shards[hash(key) & self._mask]
        expiry = shard.get(key)
        if expiry is not None and expiry > now:
            return True
        # new, or due but not yet swept (then its old FIFO entry is stale and skipped when popped)
        expiry = now + self.window_s
        shard[key] = expiry
        self._keys.append(key)
        expiries.append(expiry)
        if len(expiries) > self.max_keys:
            self._pop_oldest(evicting=True)
        return False

    def expire(self, now: float, budget: int = 1 << 62) -> int:
        """Forget up to ``budget`` keys whose window ended; returns how many FIFO entries it popped.

        ``seen`` calls this with a small budget, so the work per call is bounded even when millions
        of keys fall due together (e.g. after a burst and a long lull); call it while idle to
        release memory sooner.
        """
        expiries = self._expiries
        n = 0
        while n < budget and expiries and expiries[0] <= now:
            self._pop_oldest(evicting=False)
            n += 1
        return n

    def _pop_oldest(self, *, evicting: bool) -> None:
        expiry = self._expiries.popleft()
        key = self._keys.popleft()
        shard = self._shards[hash(key) & self._mask]
        if shard.get(key) == expiry:  # else a later entry re-recorded this key: keep it
            del shard[key]
            if evicting:
                self.evicted += 1

    def clear(self) -> None:
        for s in self._shards:
            s.clear()
        self._keys.clear()
        self._expiries.clear()
