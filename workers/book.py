"""Order-book engine (issue 4): local books per symbol, each exchange's sequence rule, resync.

Pure logic: no I/O, no asyncio, no clock reads. Time comes in as ``now`` (monotonic seconds) and
everything the caller must do is returned as data (wire events to publish, REST snapshots to
fetch, channels to resubscribe). Parsers hand :class:`~shared.marketdata.BookMsg` objects in.

- :class:`LocalBook`: bids/asks keyed by numeric price (Decimal, exact), quantities absolute,
  a zero quantity removes the level, ``max_depth`` levels per side (worst dropped), OKX CRC32.
- One :class:`BookKeeper` subclass per exchange sequence rule (SOURCES.md sections 1-5). A keeper
  says what to do on a gap through :attr:`BookKeeper.recovery`: a REST snapshot (Binance, OKX
  without WS snapshot; diffs are buffered meanwhile) or a resubscribe (OKX, Deribit, Bybit: the
  exchange sends a fresh snapshot; messages are dropped meanwhile).
- :class:`BookManager`: the keepers of one worker connection group, ``book`` tops at a cadence,
  ``book_delta`` / ``book_gap`` events, a de-duplicated, rate-limited request queue, counters.
  A gap on one symbol resyncs that symbol only (one bad market must not take the others down).
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import zlib
from bisect import bisect_left, insort
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any, ClassVar, Iterable, Mapping

from shared.events import WireEvent
from shared.marketdata import BookDelta, BookGap, BookMsg, BookTop, Level
from shared.ratelimit import TokenBucket
from shared.symbols import is_canonical_symbol

__all__ = [
    "LocalBook", "BookKeeper", "BinanceSpotKeeper", "BinanceFuturesKeeper", "OkxKeeper",
    "OkxRestKeeper", "DeribitKeeper", "BybitKeeper", "Gap", "Outcome", "BookRequest", "BookConfig",
    "BookManager", "SNAPSHOT", "RESUBSCRIBE", "DEFAULT_RULES",
]

#: recovery actions the caller performs
SNAPSHOT = "snapshot"        # fetch a REST depth snapshot, feed it back as a BookMsg(snapshot=True)
RESUBSCRIBE = "resubscribe"  # unsubscribe + subscribe the book channel (the exchange resends a snapshot)

#: BookGap reasons
GAP, CHECKSUM, RESET, STALE = "gap", "checksum", "reset", "stale"

# what a rule's continuity check says about a diff on a synced book
_OK, _SKIP = "ok", "skip"


def _qty_kind(qty: Any) -> int:
    """0 = unusable, 1 = zero ("0", "0.0", "0.00000000": remove the level), 2 = positive.
    Plain digit strings take the fast path; other spellings ("1e-05") go through Decimal."""
    if type(qty) is not str or not 0 < len(qty) <= 64:
        return 0
    if qty.isascii() and qty.replace(".", "", 1).isdigit():
        rest = qty.strip("0")
        return 1 if rest == "" or rest == "." else 2
    try:
        d = Decimal(qty)
    except (InvalidOperation, ValueError):
        return 0
    if not d.is_finite() or d < 0:
        return 0
    return 1 if d == 0 else 2


class _Side:
    """One side: sort key -> (price, qty) as received, plus the keys sorted best first.

    The sort key is the Decimal price (asks) or its negation (bids), so both sides keep their
    best level at index 0 and the cap cuts the tail. Decimal equality is numeric: "30261" and
    "30261.0" are the same level (the latest spelling is kept)."""

    __slots__ = ("neg", "levels", "keys")

    def __init__(self, neg: bool) -> None:
        self.neg = neg
        self.levels: dict[Decimal, Level] = {}
        self.keys: list[Decimal] = []

    def clear(self) -> None:
        self.levels.clear()
        self.keys.clear()

    def key(self, price: Any) -> Decimal | None:
        if type(price) is not str or not 0 < len(price) <= 64:
            return None
        try:
            d = Decimal(price)
        except (InvalidOperation, ValueError):
            return None
        if not d.is_finite() or d <= 0:
            return None
        return d.copy_negate() if self.neg else d   # exact (unary minus rounds to context)

    def apply(self, levels: Iterable[Any], sort: bool = True) -> int:
        """Absolute quantities; returns how many entries were unusable (skipped).
        ``sort=False`` leaves ``keys`` stale (the caller re-sorts once)."""
        bad = 0
        book, keys = self.levels, self.keys
        for lv in levels:
            try:
                price, qty = lv[0], lv[1]
            except (TypeError, IndexError, KeyError):
                bad += 1
                continue
            k = self.key(price)
            kind = _qty_kind(qty)
            if k is None or kind == 0:
                bad += 1
            elif kind == 1:
                if book.pop(k, None) is not None and sort:
                    del keys[bisect_left(keys, k)]
            else:
                if sort and k not in book:
                    insort(keys, k)
                book[k] = (price, qty)
        return bad

    def load(self, levels: Iterable[Any]) -> int:
        """Replace the side (one sort instead of an insert per level)."""
        self.clear()
        bad = self.apply(levels, sort=False)
        self.keys = sorted(self.levels)
        return bad

    def trim(self, depth: int) -> int:
        """Drop the levels beyond ``depth`` (the worst prices); returns how many."""
        extra = len(self.keys) - depth
        if extra <= 0:
            return 0
        book = self.levels
        for k in self.keys[depth:]:
            del book[k]
        del self.keys[depth:]
        return extra

    def top(self, n: int) -> list[Level]:
        book = self.levels
        return [book[k] for k in self.keys[:n]]


class LocalBook:
    """A local order book: absolute quantities, exact prices, at most ``max_depth`` per side."""

    __slots__ = ("max_depth", "_bids", "_asks", "trimmed")

    def __init__(self, max_depth: int = 1000) -> None:
        self.max_depth = max(1, int(max_depth))
        self._bids = _Side(neg=True)
        self._asks = _Side(neg=False)
        #: levels dropped by the depth cap so far
        self.trimmed = 0

    def __len__(self) -> int:
        return len(self._bids.keys) + len(self._asks.keys)

    @property
    def depth(self) -> tuple[int, int]:
        """(bid levels, ask levels) held."""
        return len(self._bids.keys), len(self._asks.keys)

    def clear(self) -> None:
        self._bids.clear()
        self._asks.clear()

    def load(self, bids: Iterable[Any], asks: Iterable[Any]) -> int:
        """Replace the book with a snapshot; returns the number of unusable entries."""
        bad = self._bids.load(bids) + self._asks.load(asks)
        self._trim()
        return bad

    def apply(self, bids: Iterable[Any], asks: Iterable[Any]) -> int:
        """Apply a diff (absolute quantities; zero removes); returns the number of unusable entries."""
        bad = self._bids.apply(bids) + self._asks.apply(asks)
        self._trim()
        return bad

    def _trim(self) -> None:
        self.trimmed += self._bids.trim(self.max_depth) + self._asks.trim(self.max_depth)

    def top(self, n: int) -> tuple[list[Level], list[Level]]:
        """(bids best first, asks best first), ``n`` levels each at most, strings as received."""
        return self._bids.top(n), self._asks.top(n)

    def okx_checksum(self) -> int:
        """OKX (and Bitget) CRC32 of the top 25 levels, ``bid:size:ask:size:...`` interleaved while
        both sides have levels, then the longer side alone; signed 32-bit (SOURCES.md section 3)."""
        bids, asks = self.top(25)
        parts: list[str] = []
        for i in range(max(len(bids), len(asks))):
            if i < len(bids):
                parts.extend(bids[i])
            if i < len(asks):
                parts.extend(asks[i])
        crc = zlib.crc32(":".join(parts).encode())
        return crc - (1 << 32) if crc >= (1 << 31) else crc


# ---------------------------------------------------------------------------------------------
# sequence rules


@dataclass(slots=True)
class Gap:
    """The book lost continuity: last good sequence, the sequence of the message that broke it."""

    reason: str
    last_seq: int
    got_seq: int
    announce: bool = True    # False: nothing was published from this book since its last sync
    msg: BookMsg | None = None


@dataclass(slots=True)
class Outcome:
    """What one message did to a keeper. ``events`` is ordered: ``(msg, prev_seq)`` for each
    applied message (snapshots included) and :class:`Gap` for each loss of continuity."""

    events: list[Any] = field(default_factory=list)
    need: str | None = None      # SNAPSHOT | RESUBSCRIBE: the caller must act
    dropped: int = 0             # stale / duplicate / keep-alive / unsynced messages not applied
    overflow: int = 0            # buffered diffs dropped because the buffer was full
    stale_snapshot: int = 0      # snapshot older than the buffered diffs (another one is needed)
    ignored_snapshot: int = 0    # snapshot nobody asked for on a synced book (late REST answer)
    bad_levels: int = 0


class BookKeeper(ABC):
    """Common part of a sequence rule: state, buffer, loss handling.

    A subclass says how a diff continues the book (:meth:`_check`) and, for REST-snapshot
    rules, how buffered diffs line up with a snapshot (:meth:`_covered`, :meth:`_aligns`,
    :meth:`_too_old`). ``seq``/``prev_seq``/``first_seq`` are as documented on BookMsg."""

    #: what the caller does to resync: SNAPSHOT (REST) or RESUBSCRIBE
    recovery: ClassVar[str] = RESUBSCRIBE
    #: True: diffs arriving while unsynced are kept for the coming REST snapshot
    buffers: ClassVar[bool] = False

    def __init__(self, max_depth: int = 1000, max_buffer: int = 1000, verify_checksum: bool = True) -> None:
        self.book = LocalBook(max_depth)
        self.max_buffer = max(1, int(max_buffer))
        self.verify_checksum = verify_checksum
        self.synced = False
        self.last_seq = 0
        self.requested = False       # a recovery was asked for and no snapshot came since
        self._aligning = False       # REST snapshot loaded, first diff must straddle it
        self._overflowed = False     # the buffer overflowed since the last request
        self._buffer: deque[BookMsg] = deque()

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    def reset(self) -> None:
        """Forget everything (connection lost): the next messages start a new sync."""
        self.book.clear()
        self._buffer.clear()
        self.synced = self.requested = self._aligning = self._overflowed = False

    def feed(self, msg: BookMsg) -> Outcome:
        """Apply one message under the rule; never raises on odd sequence values."""
        out = Outcome()
        if msg.snapshot:
            self._on_snapshot(msg, out)
        elif self.synced:
            self._on_diff(msg, out)
        else:
            self._on_unsynced(msg, out)
        return out

    # ---- states ----
    def _on_snapshot(self, msg: BookMsg, out: Outcome) -> None:
        if self.buffers and self.synced:
            out.ignored_snapshot += 1   # REST rules: only a snapshot we asked for is used
            return
        if self.buffers and self._buffer and self._too_old(self._buffer[0], msg.seq):
            out.stale_snapshot += 1
            self._ask(out)
            return
        was_synced = self.synced
        if was_synced and msg.seq < self.last_seq:
            # the exchange restarted its sequence (Bybit u=1, OKX maintenance): consumers must know
            out.events.append(Gap(RESET, self.last_seq, msg.seq, True, msg))
        prev = self.last_seq if was_synced else 0
        out.bad_levels += self.book.load(msg.bids, msg.asks)
        self.last_seq = msg.seq
        self.synced = True
        self.requested = self._overflowed = False
        self._aligning = self.buffers
        reason = self._verify(msg)
        if reason is not None:
            self.last_seq = prev
            self._lose(msg, out, reason, announce=was_synced)
            return
        out.events.append((msg, prev))
        if self._buffer:
            pending, self._buffer = self._buffer, deque()
            for m in pending:
                if self.synced:
                    self._on_diff(m, out)
                else:
                    self._on_unsynced(m, out)

    def _on_unsynced(self, msg: BookMsg, out: Outcome) -> None:
        if self.buffers:
            self._buffer.append(msg)
            if len(self._buffer) > self.max_buffer:
                self._buffer.popleft()
                out.overflow += 1
                if not self._overflowed:
                    # the snapshot in flight is probably older than the buffer now: ask afresh
                    self._overflowed = True
                    self.requested = False
        else:
            out.dropped += 1
        if not self.requested:
            self._ask(out)

    def _on_diff(self, msg: BookMsg, out: Outcome) -> None:
        if self._aligning:
            if self._covered(msg):
                out.dropped += 1
                return
            if not self._aligns(msg):
                self._lose(msg, out, GAP)
                return
            self._aligning = False
        else:
            verdict = self._check(msg)
            if verdict == _SKIP:
                out.dropped += 1
                return
            if verdict != _OK:
                self._lose(msg, out, verdict)
                return
        prev = self.last_seq
        out.bad_levels += self.book.apply(msg.bids, msg.asks)
        self.last_seq = msg.seq
        reason = self._verify(msg)
        if reason is not None:   # the book is wrong: not published, resync
            self.last_seq = prev
            self._lose(msg, out, reason)
            return
        out.events.append((msg, prev))

    def _ask(self, out: Outcome) -> None:
        self.requested = True
        out.need = self.recovery

    def _lose(self, msg: BookMsg, out: Outcome, reason: str, announce: bool = True) -> None:
        out.events.append(Gap(reason, self.last_seq, msg.seq, announce, msg))
        self.book.clear()
        self._buffer.clear()
        self.synced = self._aligning = self._overflowed = False
        if self.buffers and reason == GAP:
            self._buffer.append(msg)   # it starts the chain the next snapshot must reach
        self._ask(out)

    # ---- the rule (subclasses) ----
    @abstractmethod
    def _check(self, msg: BookMsg) -> str:
        """_OK (apply), _SKIP (drop silently) or a gap reason, for a diff on a synced book."""
        ...

    def _verify(self, msg: BookMsg) -> str | None:
        """A gap reason when the book after ``msg`` is provably wrong (checksum), else None."""
        return None

    def _covered(self, msg: BookMsg) -> bool:
        """Already contained in the REST snapshot (``last_seq`` = its sequence): drop."""
        return msg.seq <= self.last_seq

    def _aligns(self, msg: BookMsg) -> bool:
        """The first diff after the REST snapshot continues it."""
        return True

    def _too_old(self, first: BookMsg, snap_seq: int) -> bool:
        """The REST snapshot predates the oldest buffered diff: a hole in between."""
        return False


class BinanceSpotKeeper(BookKeeper):
    """Binance spot: ``u <= lastUpdateId`` dropped; first applied ``U <= lastUpdateId+1 <= u``;
    then ``U == previous u + 1`` (``u <= local`` = duplicate, ignored; ``U > local+1`` = gap)."""

    recovery = SNAPSHOT
    buffers = True

    @staticmethod
    def _first(msg: BookMsg) -> int:
        return msg.first_seq if msg.first_seq is not None else msg.seq

    def _check(self, msg: BookMsg) -> str:
        if msg.seq <= self.last_seq:
            return _SKIP
        return _OK if self._first(msg) <= self.last_seq + 1 else GAP

    def _aligns(self, msg: BookMsg) -> bool:
        return self._first(msg) <= self.last_seq + 1 <= msg.seq

    def _too_old(self, first: BookMsg, snap_seq: int) -> bool:
        return snap_seq < self._first(first) - 1


class BinanceFuturesKeeper(BinanceSpotKeeper):
    """Binance USDⓈ-M: ``u < lastUpdateId`` dropped; first applied ``U <= lastUpdateId <= u``;
    then ``pu == previous u`` (``U`` is not previous ``u``+1 on futures)."""

    def _check(self, msg: BookMsg) -> str:
        if msg.seq <= self.last_seq:
            return _SKIP
        if msg.prev_seq is None:   # no pu: fall back to the spot rule
            return BinanceSpotKeeper._check(self, msg)
        return _OK if msg.prev_seq == self.last_seq else GAP

    def _covered(self, msg: BookMsg) -> bool:
        return msg.seq < self.last_seq

    def _aligns(self, msg: BookMsg) -> bool:
        return self._first(msg) <= self.last_seq <= msg.seq

    def _too_old(self, first: BookMsg, snap_seq: int) -> bool:
        return snap_seq < self._first(first)


class OkxKeeper(BookKeeper):
    """OKX ``books``: snapshot (``prevSeqId`` -1), then ``prevSeqId == last seqId``; ``seqId ==
    prevSeqId`` = keep-alive; ``seqId < prevSeqId`` = exchange reset; checksum checked only when
    non-zero (always 0 in production since 2026-06-23). Frames without ``seqId`` (pre-2022
    captures, ``prev_seq`` None) have only the checksum as gap detector."""

    def __init__(self, max_depth: int = 1000, max_buffer: int = 1000, verify_checksum: bool = True) -> None:
        # the checksum covers 25 levels: a shallower cap would fail it
        super().__init__(max(max_depth, 25) if verify_checksum else max_depth, max_buffer, verify_checksum)

    def _check(self, msg: BookMsg) -> str:
        prev = msg.prev_seq
        if prev is None:
            return _OK
        if msg.seq < prev:
            return RESET
        if prev != self.last_seq:
            return GAP
        if msg.seq == prev:
            return _SKIP   # keep-alive
        return _OK

    def _verify(self, msg: BookMsg) -> str | None:
        if self.verify_checksum and msg.checksum and self.book.okx_checksum() != msg.checksum:
            return CHECKSUM
        return None


class OkxRestKeeper(OkxKeeper):
    """OKX once the WS snapshot is withdrawn: REST ``/api/v5/market/books`` snapshot (``seqId``);
    buffered updates with ``seqId <= snapSeq`` dropped, first applied ``prevSeqId <= snapSeq < seqId``."""

    recovery = SNAPSHOT
    buffers = True

    def _aligns(self, msg: BookMsg) -> bool:
        return msg.prev_seq is None or msg.prev_seq <= self.last_seq < msg.seq

    def _too_old(self, first: BookMsg, snap_seq: int) -> bool:
        return first.prev_seq is not None and snap_seq < first.prev_seq


class DeribitKeeper(BookKeeper):
    """Deribit ``book.*``: snapshot with ``change_id``, then ``prev_change_id == last change_id``."""

    def _check(self, msg: BookMsg) -> str:
        if msg.prev_seq is None:
            return _OK
        return _OK if msg.prev_seq == self.last_seq else GAP


class BybitKeeper(BookKeeper):
    """Bybit v5 ``orderbook.*``: a snapshot resets the book at any time (``u=1`` too); a delta's
    ``u`` must be previous ``u`` + 1."""

    def _check(self, msg: BookMsg) -> str:
        return _OK if msg.seq == self.last_seq + 1 else GAP


#: (exchange, market or None for any market) -> rule
DEFAULT_RULES: dict[tuple[str, str | None], type[BookKeeper]] = {
    ("binance", "spot"): BinanceSpotKeeper,
    ("binance", None): BinanceFuturesKeeper,
    ("okx", None): OkxKeeper,
    ("deribit", None): DeribitKeeper,
    ("bybit", None): BybitKeeper,
}


# ---------------------------------------------------------------------------------------------
# the manager


@dataclass(frozen=True, slots=True)
class BookRequest:
    """Something the caller must do for one book: fetch a REST snapshot or resubscribe."""

    kind: str            # SNAPSHOT | RESUBSCRIBE
    exchange: str
    market: str
    symbol: str
    native_symbol: str
    weight: int = 1      # REST weight (snapshots)


@dataclass(slots=True)
class BookConfig:
    """Knobs of a :class:`BookManager` (settings map onto these)."""

    max_depth: int = 1000            # levels kept per side
    top_depth: int = 20              # levels per side in published ``book`` events
    top_interval: float = 1.0        # seconds between ``book`` publishes (changed books only)
    publish_tops: bool = True
    publish_deltas: bool = False
    max_buffer: int = 2000           # diffs kept per symbol while waiting for a REST snapshot
    verify_checksum: bool = True     # OKX: checked only when the frame carries a non-zero one
    okx_rest_snapshot: bool = False  # OKX without WS snapshot: REST snapshot + buffered updates
    snapshot_weight: int = 1         # REST weight of one depth snapshot
    snapshot_rate: float = 1.0       # weight units per second released (<= 0: unlimited)
    snapshot_burst: float | None = None
    resubscribe_rate: float = 5.0    # resubscribes per second (<= 0: unlimited)
    resubscribe_burst: float | None = None
    max_pending: int = 1000          # bound of each request queue
    resync_timeout: float = 30.0     # a released request not answered by then is asked again
    max_books: int = 10000


class _Slot:
    """One symbol's keeper, identity and counters."""

    __slots__ = ("keeper", "exchange", "market", "symbol", "native", "ts_exchange", "ts_receive",
                 "gaps", "checksum", "resets", "messages", "label")

    def __init__(self, keeper: BookKeeper, msg: BookMsg) -> None:
        self.keeper = keeper
        self.exchange, self.market, self.symbol, self.native = (
            msg.exchange, msg.market, msg.symbol, msg.native_symbol)
        self.label = f"{msg.exchange}:{msg.market}:{msg.symbol}"
        self.ts_exchange = self.ts_receive = 0
        self.gaps = self.checksum = self.resets = self.messages = 0


_Key = tuple[str, str, str]

_COUNTERS = (
    "messages", "applied", "dropped", "bad_messages", "bad_levels", "gaps", "checksum_failures", "resets",
    "buffer_overflow", "stale_snapshots", "ignored_snapshots", "unsupported", "rejected",
    "books_full", "tops_published", "deltas_published", "markers_published",
    "snapshot_queued", "snapshot_deduped", "snapshot_released", "snapshot_queue_full",
    "snapshot_retries", "snapshot_failed",
    "resubscribe_queued", "resubscribe_deduped", "resubscribe_released", "resubscribe_queue_full",
    "resubscribe_retries",
)


class BookManager:
    """Local books of one worker connection group.

    - :meth:`on_message` -> wire events (``book_delta`` when configured, ``book_gap`` markers);
    - :meth:`due_tops` -> ``book`` top-N events of the books changed since the last publish;
    - :meth:`snapshot_requests` / :meth:`resubscribe_requests` -> what to fetch / resubscribe now
      (de-duplicated, bounded, paced by token buckets; an answer that never comes is asked again
      after ``resync_timeout``); :meth:`snapshot_failed` puts a failed fetch back;
    - :meth:`on_disconnect` when the connection carrying the books dropped.
    """

    def __init__(self, config: BookConfig | None = None,
                 rules: Mapping[tuple[str, str | None], type[BookKeeper]] | None = None) -> None:
        self.cfg = cfg = config or BookConfig()
        self.rules = dict(DEFAULT_RULES)
        if cfg.okx_rest_snapshot:
            self.rules[("okx", None)] = OkxRestKeeper
        if rules:
            self.rules.update(rules)
        self._now = 0.0
        self._slots: dict[_Key, _Slot] = {}
        self._dirty: dict[_Key, None] = {}      # insertion-ordered set
        self._queues: dict[str, OrderedDict[_Key, BookRequest]] = {SNAPSHOT: OrderedDict(), RESUBSCRIBE: OrderedDict()}
        self._awaiting: dict[_Key, tuple[str, float]] = {}   # released (or dropped) requests: kind, when
        weight = max(1, int(cfg.snapshot_weight))
        burst = max(cfg.snapshot_burst if cfg.snapshot_burst is not None else max(cfg.snapshot_rate, 1.0), weight)
        self._buckets = {
            SNAPSHOT: TokenBucket(cfg.snapshot_rate, burst, clock=self._clock),
            RESUBSCRIBE: TokenBucket(cfg.resubscribe_rate, cfg.resubscribe_burst, clock=self._clock),
        }
        self._next_tops = 0.0
        self.counters: dict[str, int] = dict.fromkeys(_COUNTERS, 0)

    def _clock(self) -> float:
        return self._now

    def _tick(self, now: float) -> None:
        if now > self._now:
            self._now = now

    # ---- messages ----
    def on_message(self, msg: BookMsg, now: float, rx_ns: int | None = None) -> list[WireEvent]:
        """Apply one parsed book message; returns the wire events to publish now."""
        self._tick(now)
        c = self.counters
        c["messages"] += 1
        if not _msg_ok(msg):
            c["bad_messages"] += 1
            return []
        key = (msg.exchange, msg.market, msg.native_symbol)
        slot = self._slots.get(key)
        if slot is None:
            slot = self._new_slot(key, msg)
            if slot is None:
                return []
        keeper = slot.keeper
        was_synced = keeper.synced
        out = keeper.feed(msg)
        slot.messages += 1
        c["dropped"] += out.dropped
        c["bad_levels"] += out.bad_levels
        c["buffer_overflow"] += out.overflow
        c["stale_snapshots"] += out.stale_snapshot
        c["ignored_snapshots"] += out.ignored_snapshot
        rx = int(now * 1_000_000_000) if rx_ns is None else rx_ns
        events: list[WireEvent] = []
        for item in out.events:
            if isinstance(item, Gap):
                self._on_gap(slot, item, rx, events)
            else:
                self._on_applied(key, slot, item[0], item[1], rx, events)
        if keeper.synced and not was_synced:
            self._satisfied(key)
        if out.need is not None:
            self._awaiting.pop(key, None)
            self._enqueue(slot, key, out.need)
        return events

    def _new_slot(self, key: _Key, msg: BookMsg) -> _Slot | None:
        c = self.counters
        if not (is_canonical_symbol(msg.symbol) and isinstance(msg.exchange, str)
                and isinstance(msg.market, str) and isinstance(msg.native_symbol, str)):
            c["rejected"] += 1
            return None
        rule = self.rules.get((msg.exchange, msg.market)) or self.rules.get((msg.exchange, None))
        if rule is None:
            c["unsupported"] += 1
            return None
        if len(self._slots) >= self.cfg.max_books:
            c["books_full"] += 1
            return None
        cfg = self.cfg
        slot = _Slot(rule(cfg.max_depth, cfg.max_buffer, cfg.verify_checksum), msg)
        self._slots[key] = slot
        return slot

    def _on_applied(self, key: _Key, slot: _Slot, msg: BookMsg, prev: int, rx: int,
                    events: list[WireEvent]) -> None:
        self.counters["applied"] += 1
        slot.ts_exchange, slot.ts_receive = msg.ts_exchange, msg.ts_receive
        self._dirty[key] = None
        if not self.cfg.publish_deltas:
            return
        if msg.snapshot:
            bids, asks = slot.keeper.book.top(self.cfg.max_depth)   # what the local book holds
        else:
            bids = [(lv[0], lv[1]) for lv in msg.bids if _level_ok(lv)]
            asks = [(lv[0], lv[1]) for lv in msg.asks if _level_ok(lv)]
        prev_seq = msg.prev_seq if msg.prev_seq is not None and msg.prev_seq >= 0 else prev
        events.append(BookDelta(slot.exchange, slot.market, slot.symbol, slot.native, msg.ts_exchange,
                                msg.ts_receive, seq=msg.seq, prev_seq=prev_seq, snapshot=msg.snapshot,
                                bids=bids, asks=asks).to_wire(rx))
        self.counters["deltas_published"] += 1

    def _on_gap(self, slot: _Slot, gap: Gap, rx: int, events: list[WireEvent]) -> None:
        c = self.counters
        if gap.reason == CHECKSUM:
            slot.checksum += 1
            c["checksum_failures"] += 1
        elif gap.reason == RESET:
            slot.resets += 1
            c["resets"] += 1
        else:
            slot.gaps += 1
            c["gaps"] += 1
        if gap.announce:
            m = gap.msg
            ts_ex, ts_rx = (m.ts_exchange, m.ts_receive) if m is not None else (0, 0)
            self._markers(slot, gap.reason, gap.last_seq, gap.got_seq, ts_ex, ts_rx, rx, events)

    def _markers(self, slot: _Slot, reason: str, last: int, got: int, ts_ex: int, ts_rx: int, rx: int,
                 events: list[WireEvent]) -> None:
        """One BookGap per published stream of this book (book and/or book_delta)."""
        for on, stream in ((self.cfg.publish_tops, "book"), (self.cfg.publish_deltas, "book_delta")):
            if on:
                events.append(BookGap(slot.exchange, slot.market, slot.symbol, slot.native, ts_ex, ts_rx,
                                      reason=reason, last_seq=last, got_seq=got, stream_type=stream).to_wire(rx))
                self.counters["markers_published"] += 1

    # ---- tops ----
    def due_tops(self, now: float, rx_ns: int | None = None) -> list[WireEvent]:
        """``book`` events (top ``top_depth``) of the synced books changed since the last publish,
        at most once per ``top_interval``."""
        self._tick(now)
        cfg = self.cfg
        if not cfg.publish_tops or now < self._next_tops:
            return []
        self._next_tops = now + cfg.top_interval
        rx = int(now * 1_000_000_000) if rx_ns is None else rx_ns
        events: list[WireEvent] = []
        n = cfg.top_depth
        for key in self._dirty:
            slot = self._slots.get(key)
            if slot is None or not slot.keeper.synced:
                continue
            bids, asks = slot.keeper.book.top(n)
            events.append(BookTop(slot.exchange, slot.market, slot.symbol, slot.native, slot.ts_exchange,
                                  slot.ts_receive, seq=slot.keeper.last_seq, depth=n, bids=bids,
                                  asks=asks).to_wire(rx))
        self._dirty.clear()
        self.counters["tops_published"] += len(events)
        return events

    # ---- requests ----
    def _enqueue(self, slot: _Slot, key: _Key, kind: str) -> None:
        c = self.counters
        q = self._queues[kind]
        if key in q:
            c[f"{kind}_deduped"] += 1
            return
        if len(q) >= self.cfg.max_pending:
            c[f"{kind}_queue_full"] += 1
            self._awaiting[key] = (kind, self._now)   # asked again after resync_timeout
            return
        weight = max(1, int(self.cfg.snapshot_weight)) if kind == SNAPSHOT else 1
        q[key] = BookRequest(kind, slot.exchange, slot.market, slot.symbol, slot.native, weight)
        c[f"{kind}_queued"] += 1

    def _satisfied(self, key: _Key) -> None:
        self._awaiting.pop(key, None)
        for q in self._queues.values():
            q.pop(key, None)

    def _retry_overdue(self, now: float) -> None:
        timeout = self.cfg.resync_timeout
        for key, (kind, since) in list(self._awaiting.items()):
            if now - since < timeout:
                continue
            del self._awaiting[key]
            slot = self._slots.get(key)
            if slot is None or slot.keeper.synced:
                continue
            self.counters[f"{kind}_retries"] += 1
            self._enqueue(slot, key, kind)

    def _release(self, kind: str, now: float) -> list[BookRequest]:
        self._tick(now)
        self._retry_overdue(now)
        q, bucket = self._queues[kind], self._buckets[kind]
        out: list[BookRequest] = []
        while q:
            key, req = next(iter(q.items()))
            if not bucket.try_take(req.weight):
                break
            del q[key]
            self._awaiting[key] = (kind, now)
            out.append(req)
        self.counters[f"{kind}_released"] += len(out)
        return out

    def snapshot_requests(self, now: float) -> list[BookRequest]:
        """REST snapshots to fetch now, within the weight budget (oldest request first). Feed the
        answer back through :meth:`on_message` as ``BookMsg(snapshot=True, seq=lastUpdateId)``."""
        return self._release(SNAPSHOT, now)

    def resubscribe_requests(self, now: float | None = None) -> list[BookRequest]:
        """Book channels to resubscribe now (paced: subscribe ops count toward exchange limits)."""
        return self._release(RESUBSCRIBE, self._now if now is None else now)

    def snapshot_failed(self, req: BookRequest, now: float) -> None:
        """The fetch of ``req`` failed: queue it again (released when the budget allows)."""
        self._tick(now)
        key = (req.exchange, req.market, req.native_symbol)
        self._awaiting.pop(key, None)
        slot = self._slots.get(key)
        self.counters["snapshot_failed"] += 1
        if slot is not None and not slot.keeper.synced:
            self._enqueue(slot, key, req.kind)

    def pending(self, kind: str = SNAPSHOT) -> list[BookRequest]:
        """Requests queued and not released yet (oldest first)."""
        return list(self._queues[kind].values())

    # ---- lifecycle ----
    def on_disconnect(self, now: float, reason: str = STALE, rx_ns: int | None = None) -> list[WireEvent]:
        """The connection carrying these books dropped: every synced book gets a marker and
        starts over (the reconnect resubscribes; REST rules fetch anew on the first diff)."""
        self._tick(now)
        rx = int(now * 1_000_000_000) if rx_ns is None else rx_ns
        events: list[WireEvent] = []
        for slot in self._slots.values():
            k = slot.keeper
            if k.synced:
                slot.gaps += 1
                self.counters["gaps"] += 1
                self._markers(slot, reason, k.last_seq, 0, 0, 0, rx, events)
            k.reset()
        for q in self._queues.values():
            q.clear()
        self._awaiting.clear()
        self._dirty.clear()
        return events

    def forget(self, exchange: str, market: str, native_symbol: str) -> None:
        """Drop a symbol's book (unsubscribed)."""
        key = (exchange, market, native_symbol)
        self._slots.pop(key, None)
        self._dirty.pop(key, None)
        self._satisfied(key)

    # ---- introspection ----
    def book(self, exchange: str, market: str, native_symbol: str) -> BookKeeper | None:
        slot = self._slots.get((exchange, market, native_symbol))
        return slot.keeper if slot is not None else None

    def stats(self) -> dict[str, Any]:
        """Totals plus per-symbol state and counters (``exchange:market:symbol``)."""
        out: dict[str, Any] = dict(self.counters)
        out["books"] = len(self._slots)
        out["synced"] = sum(1 for s in self._slots.values() if s.keeper.synced)
        out["snapshot_pending"] = len(self._queues[SNAPSHOT])
        out["resubscribe_pending"] = len(self._queues[RESUBSCRIBE])
        out["awaiting"] = len(self._awaiting)
        out["trimmed_levels"] = sum(s.keeper.book.trimmed for s in self._slots.values())
        out["symbols"] = {
            s.label: {"synced": s.keeper.synced, "seq": s.keeper.last_seq, "gaps": s.gaps,
                      "checksum_failures": s.checksum, "resets": s.resets, "messages": s.messages,
                      "bids": s.keeper.book.depth[0], "asks": s.keeper.book.depth[1],
                      "buffered": s.keeper.buffered}
            for s in self._slots.values()
        }
        return out


def _opt_int(v: Any) -> bool:
    return v is None or type(v) is int


def _msg_ok(msg: Any) -> bool:
    """The shape the rules rely on (a parser bug must cost one message, not the worker)."""
    return (isinstance(msg, BookMsg) and type(msg.seq) is int and type(msg.snapshot) is bool
            and _opt_int(msg.prev_seq) and _opt_int(msg.first_seq) and _opt_int(msg.checksum)
            and isinstance(msg.bids, (list, tuple)) and isinstance(msg.asks, (list, tuple))
            and type(msg.ts_exchange) is int and type(msg.ts_receive) is int)


def _level_ok(lv: Any) -> bool:
    try:
        return type(lv[0]) is str and type(lv[1]) is str
    except (TypeError, IndexError, KeyError):
        return False
