"""Deduper: window semantics, bounded size, incremental (never all-at-once) expiry."""

from __future__ import annotations

import random

import pytest

from shared.dedup import Deduper


def test_duplicate_within_window_is_seen() -> None:
    d = Deduper(window_s=10, max_keys=1000)
    assert d.seen("a", 0.0) is False
    assert d.seen("a", 5.0) is True
    assert d.seen("b", 5.0) is False
    assert d.seen("a", 9.999) is True


def test_key_passes_again_after_window() -> None:
    d = Deduper(window_s=10, max_keys=1000)
    assert d.seen("a", 0.0) is False
    assert d.seen("a", 10.0) is False  # window is [t, t+window)
    assert d.seen("a", 15.0) is True   # re-recorded at 10.0
    assert d.seen("a", 20.0) is False


def test_duplicate_does_not_extend_window() -> None:
    d = Deduper(window_s=10, max_keys=1000)
    d.seen("a", 0.0)
    assert d.seen("a", 9.0) is True
    assert d.seen("a", 10.5) is False  # expiry counts from the first sighting


def test_max_keys_evicts_oldest_first() -> None:
    d = Deduper(window_s=1000, max_keys=3)
    for k in "abc":
        assert d.seen(k, 0.0) is False
    assert d.seen("d", 1.0) is False  # evicts "a"
    assert len(d) == 3
    assert d.evicted == 1
    assert d.seen("b", 2.0) is True
    assert d.seen("a", 2.0) is False  # "a" was forgotten early; recording it evicts "b"
    assert d.seen("c", 3.0) is True
    assert d.seen("b", 3.0) is False


def test_size_stays_bounded_under_churn() -> None:
    d = Deduper(window_s=1e9, max_keys=5000)
    for i in range(50_000):
        d.seen(f"k{i}", float(i))
    assert len(d) == 5000
    # the newest 5000 are remembered, older ones are not
    assert d.seen("k49999", 1e6) is True
    assert d.seen("k44999", 1e6) is False


def test_expiry_is_incremental_per_call() -> None:
    """Many keys falling due together are released a few per call, not all in one call."""
    d = Deduper(window_s=1.0, max_keys=1_000_000)
    for i in range(100_000):
        d.seen(f"k{i}", 0.0)
    assert len(d) == 100_000
    d.seen("new", 5.0)  # every old key is due now
    assert 100_000 - 64 < len(d) < 100_001  # only a bounded number swept by that call
    # but due keys are not duplicates even before they are swept
    assert d.seen("k99999", 5.0) is False
    assert d.expire(5.0) > 0  # an explicit sweep releases the rest
    assert len(d) == 2  # "new" and the re-recorded "k99999"


def test_rerecorded_key_survives_stale_entry_pop() -> None:
    """A key re-recorded after its window keeps its new expiry when its old FIFO entry is popped."""
    d = Deduper(window_s=10, max_keys=100)
    d.seen("a", 0.0)
    d.seen("filler", 0.0)
    assert d.seen("a", 11.0) is False  # due (old entry may still be queued) -> recorded again
    d.expire(12.0)                     # pops the stale entry of "a" and "filler"
    assert d.seen("a", 12.0) is True   # the new record (expiry 21) is intact
    assert d.seen("filler", 12.0) is False


def test_matches_reference_model() -> None:
    """Randomized comparison with a naive dict model (no max_keys pressure)."""
    rng = random.Random(7)
    d = Deduper(window_s=3.0, max_keys=10_000)
    ref: dict[str, float] = {}
    now = 0.0
    for _ in range(20_000):
        now += rng.random() * 0.01
        key = f"k{rng.randrange(500)}"
        expected = key in ref and ref[key] > now
        if not expected:
            ref[key] = now + 3.0
        assert d.seen(key, now) is expected


@pytest.mark.parametrize("window,maxk", [(0, 10), (-1, 10), (1, 0)])
def test_rejects_bad_parameters(window: float, maxk: int) -> None:
    with pytest.raises(ValueError):
        Deduper(window, maxk)
