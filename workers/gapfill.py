"""No holes in the trade tape: REST gap fill after a WebSocket reconnect (issue 5 point 3).

:class:`TradeGapFiller` runs beside :class:`workers.marketdata.MarketData` of one exchange worker:

- it sees every live WebSocket trade (:meth:`observe`, on the hot path: two list lookups and a
  compare) and keeps the LAST trade of each trade stream: one entry per subscribed symbol;
- when a shard's connection is lost (not a rotation with overlap: the transport's
  ``on_shard_reset``), each trade stream of that shard with a last trade is *anchored*
  (:meth:`on_reset`); the first live trade after that is the upper bound of the gap;
- a gap (last seen, first new), both exclusive, goes into a bounded queue of pending fills, one
  list per symbol (identical gaps dropped, at most ``GAPS_PER_SYMBOL``); ``FILL_WORKERS`` tasks
  fetch the missed trades from the exchange's public REST history through the worker's
  :class:`~workers.transport.rest.RestClient` (weight budget, 429/418 handling, breaker), paced
  by a token bucket per exchange, at most ``gap_fill_max_pages`` pages per gap;
- the fetched trades go through the exchange's normalizer (same event shape, stream and dedup
  key as the WebSocket trades, plus ``source: rest``), so the publisher's dedup drops any overlap
  with what the WebSocket delivered;
- what REST cannot cover (history too short, too many pages, endpoint error, Bybit's recent-only
  endpoint) becomes a ``trade_gap`` marker (:class:`shared.marketdata.TradeGap`) in the symbol's
  trade stream, with the bounds of what is missing, and is counted.

Trade ids are compared per exchange: Binance trade / aggregate ids run without holes (a gap is
``first - last > 1``; spot has both tapes, ``trade`` from historicalTrades and ``agg_trade`` from
aggTrades, each its own stream, high-watermark and fills); OKX tradeIds are numeric strings that
grow by one per fill and instrument
(the live tape is ``trades-all``, one fill per row like REST history-trades, so a gap is also
``first - last > 1``; fetched backwards from the first new one until a page reaches the last seen
one); Bybit (ids not
ordered, recent trades only) and Deribit (our events carry the trade id, not ``trade_seq``) are
bounded by trade time, the boundary trades recognised by their ids.

In order, exactly once (the *hold*): while a symbol's gap is being filled its live trades are
held back (:class:`_Hold`; bounded by ``gap_hold_max_trades`` per symbol and ``gap_hold_seconds``),
the fill goes out first, then the held trades, so a symbol's tape is in id order and every trade of
a monotonic-id exchange (Binance, OKX) carries its id as ``mono_id``: the publisher writes it only
above the stream's high-watermark in Redis, which makes re-sends, overlaps and an HA peer's copy of
the same trade exact duplicates that are skipped. Past a bound (or when the fill fails) a
``trade_gap`` marker with the exact bounds of what is not filled goes first, then the held trades.
Other symbols are never held. Fills of one symbol run one at a time, in gap order.

Resume after a worker restart (:meth:`TradeGapFiller.expect_resume` / :meth:`~TradeGapFiller.resume`):
a new worker process knows no last trade, so at start its trade streams are held until the
publisher says where Redis stands (``resume`` frame, workers/channel.py): the stream's
high-watermark (Binance, OKX) or its last stored trade (id and time: Bybit, Deribit). That becomes
the anchor, so the first live trade fills what the previous process lost (unacknowledged batches,
the time it was down) from REST. No answer within ``gap_hold_seconds`` (publisher or Redis down):
the held trades go out; a later answer still fills the hole, *late*: after newer trades, without
``mono_id`` (the high-watermark would reject it), deduplicated by the publisher's key window only.
"""

from __future__ import annotations

import asyncio
import logging
from abc import ABC, abstractmethod
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable

from shared.events import WireEvent, md_stream_key, now_ms
from shared.logutil import LogLimiter
from shared.marketdata import TradeGap
from shared.ratelimit import TokenBucket
from shared.settings import ExchangeSettings
from workers.exchanges import binance_md, bybit_md, deribit, okx_md
from workers.exchanges.base import ParseResult, WsFeed
from workers.transport.rest import RestClient, RestError

log = logging.getLogger(__name__)

Sink = Callable[[list[WireEvent]], None]

#: gaps queued per symbol (a second reconnect before the first fill ran); beyond it they merge
GAPS_PER_SYMBOL = 4
#: symbols tracked at most (one per subscribed trade stream; a guard, never reached in practice)
TRACKED_MAX = 100_000
#: fills running at once per exchange
FILL_WORKERS = 2
#: REST history pages per second and burst, per exchange (well inside each one's IP limit; the
#: weight budget of the RestClient applies on top): OKX history-trades 20 / 2 s, Bybit 600 / 5 s,
#: Deribit ~20 / s credits, Binance by weight (25 or 20 per page)
PAGE_RATE = {"binance": (5.0, 5.0), "okx": (5.0, 5.0), "bybit": (10.0, 10.0), "deribit": (5.0, 5.0)}

# marker reasons
TOO_OLD = "too_old"          # the history no longer holds the oldest missed trades
MAX_PAGES = "max_pages"      # more missed trades than gap_fill_max_pages pages
ERROR = "error"              # the endpoint failed (after the client's retries)
NOT_COVERED = "not_covered"  # recent-trades-only endpoint (Bybit): the page did not reach back
TIMEOUT = "timeout"          # the fill did not finish within gap_hold_seconds
HOLD_FULL = "hold_full"      # gap_hold_max_trades live trades arrived before the fill finished
STOPPED = "stopped"          # the worker stopped before the fill finished


class GapAbandoned(Exception):
    """The gap's hold ended (bound reached, worker stopping): its fill stops publishing."""


@dataclass(slots=True, frozen=True)
class TradeMark:
    """One trade as the gap logic sees it: id text, numeric id where ordered (else None), time."""

    trade_id: str
    num: int | None
    ts: int


@dataclass(slots=True, frozen=True)
class TradeSymbol:
    """One subscribed trade stream."""

    market: str
    symbol: str          # canonical
    native: str
    stream_key: str      # md:{data_type}:{exchange}:{market}:{symbol}
    agg: bool = False    # Binance: the stream is @aggTrade (aggregate ids)
    #: the tape's stream type: trade, or agg_trade (Binance spot aggregates, beside its trade tape)
    data_type: str = "trade"


@dataclass(slots=True)
class Gap:
    sym: TradeSymbol
    after: TradeMark     # the last trade we have before the hole
    before: TradeMark    # the first trade we have after it
    #: filled after newer trades were published (no hold): its trades go out without mono_id
    late: bool = False
    #: the hold ended before the fill did: nothing more is published for it
    abandoned: bool = False
    #: the newest trade the fill published so far (a marker for the rest starts there)
    published: TradeMark | None = None


def trade_mark(ev: WireEvent) -> TradeMark:
    """The id and time of a trade wire event (fields in Trade.fields order; looked up otherwise)."""
    f = ev[3]
    if len(f) > 19 and f[10] == "trade_id" and f[18] == "ts_exchange":
        tid, ts = f[11], f[19]
    else:
        d = dict(zip(f[0::2], f[1::2]))
        tid, ts = d.get("trade_id", ""), d.get("ts_exchange", "0")
    num = int(tid) if tid.isdigit() and len(tid) <= 20 else None
    return TradeMark(tid, num, int(ts) if ts.isdigit() else 0)


class _Ctx:
    """What a fill strategy may do: fetch a page, publish trades, publish a marker."""

    def __init__(self, filler: "TradeGapFiller", gap: Gap) -> None:
        self.filler = filler
        self.gap = gap
        self.pages = 0

    @property
    def max_pages(self) -> int:
        return self.filler.cfg.gap_fill_max_pages

    async def get(self, url: str, weight: int) -> Any:
        """The parsed body; raises RestError (counted by the caller)."""
        f = self.filler
        if self.gap.abandoned:
            raise GapAbandoned()
        while not f.bucket.try_take():
            await asyncio.sleep(max(0.01, f.bucket.delay_for()))
        self.pages += 1
        f.requests += 1
        resp = await f.rest.get_json(url, weight=weight)
        if self.gap.abandoned:
            raise GapAbandoned()
        return resp.body

    def publish(self, events: list[WireEvent]) -> None:
        gap = self.gap
        if not events or gap.abandoned:
            return
        f = self.filler
        if gap.late:
            # newer trades of the stream are out already: the high-watermark would reject these
            events = [e[:5] for e in events]
            f.late_trades += len(events)
        elif f.strategy.ordered:
            m = trade_mark(events[-1])
            if gap.published is None or f.strategy.is_newer(m, gap.published):
                gap.published = m
        f.trades_filled += len(events)
        f.sink(events)

    def check(self, res: ParseResult) -> bool:
        """False (and counted) when a page is an error or unusable."""
        f = self.filler
        f.parse_errors += res.parse_errors + res.rejected
        if res.error:
            f.last_error = res.error
            return False
        return bool(res.events) or not res.parse_errors

    def marker(self, reason: str, after: TradeMark, before: TradeMark) -> None:
        if self.gap.abandoned:
            return
        self.filler.publish_marker(self.gap.sym, reason, after, before)


# ---------------------------------------------------------------- per exchange


class _Strategy(ABC):
    """How one exchange's history is paged. ``contiguous``: ids without holes (a gap is known
    exactly); ``ordered``: numeric ids that grow; neither: bounded by time."""

    contiguous = False
    ordered = False

    @abstractmethod
    def stream_symbol(self, feed: WsFeed, stream: str) -> tuple[str, str, str, bool] | None:
        """(market, canonical, native, agg) of a trade stream of ``feed``, else None."""

    def data_type(self, market: str, agg: bool) -> str:
        """The stream type the trades of such a stream are published to."""
        return "trade"

    def needs_fill(self, after: TradeMark, first: TradeMark) -> bool:
        if self.ordered:
            return after.num is not None and first.num is not None and first.num > after.num + 1
        return first.trade_id != after.trade_id

    def is_newer(self, mark: TradeMark, than: TradeMark) -> bool:
        if self.ordered and mark.num is not None and than.num is not None:
            return mark.num > than.num
        return mark.ts >= than.ts and mark.trade_id != than.trade_id

    @abstractmethod
    async def fill(self, ctx: _Ctx) -> bool:
        """Fetch and publish the gap; markers for what cannot be had. True = filled completely."""


def _symbols_entry(feed: WsFeed, native: str) -> tuple[str, str] | None:
    symbols = getattr(feed, "symbols", None) or {}
    return symbols.get(native)


class _BinanceStrategy(_Strategy):
    contiguous = True
    ordered = True

    def stream_symbol(self, feed: WsFeed, stream: str) -> tuple[str, str, str, bool] | None:
        parsed = binance_md.trade_stream_native(stream)
        entry = _symbols_entry(feed, parsed[0]) if parsed else None
        return (entry[1], entry[0], parsed[0], parsed[1]) if entry and parsed else None

    def data_type(self, market: str, agg: bool) -> str:
        return binance_md.trade_stream_type(market, agg)

    async def fill(self, ctx: _Ctx) -> bool:
        gap = ctx.gap
        sym, after, before = gap.sym, gap.after, gap.before
        assert after.num is not None and before.num is not None
        symbols = {sym.native: (sym.symbol, sym.market)}
        have = after                      # the last trade we have (published or seen)
        end = before.num - 1              # the last missing id
        while have.num is not None and have.num < end:
            if ctx.pages >= ctx.max_pages:
                ctx.marker(MAX_PAGES, have, before)
                return False
            nxt = have.num + 1
            call = binance_md.trades_history_request(sym.native, sym.market, nxt,
                                                     min(binance_md.TRADES_PAGE_LIMIT, end - nxt + 1), agg=sym.agg)
            try:
                body = await ctx.get(call.url, call.weight)
            except RestError as exc:
                ctx.filler.note_error(str(exc))
                ctx.marker(ERROR, have, before)
                return False
            res = binance_md.parse_rest_trades(body, sym.native, symbols, time.monotonic_ns(), now_ms(), agg=sym.agg)
            if not ctx.check(res):
                ctx.marker(ERROR, have, before)
                return False
            page = [(trade_mark(e), e) for e in res.events]
            page = [(m, e) for m, e in page if m.num is not None and nxt <= m.num <= end]
            if not page:
                # nothing at or after fromId inside the gap: the history starts after it
                ctx.marker(TOO_OLD, have, before)
                return False
            out: list[WireEvent] = []
            for m, e in page:
                assert m.num is not None and have.num is not None
                if m.num <= have.num:
                    continue
                if m.num > have.num + 1:
                    # a hole inside the history (pruned): mark it, keep what follows
                    self._flush(ctx, out)
                    ctx.marker(TOO_OLD, have, m)
                out.append(e)
                have = m
            self._flush(ctx, out)
        return True

    @staticmethod
    def _flush(ctx: _Ctx, out: list[WireEvent]) -> None:
        ctx.publish(list(out))
        out.clear()


class _OkxStrategy(_Strategy):
    # trades-all: one fill per row, ids contiguous per instrument. (The public ``trades`` channel
    # would carry the LAST id of each aggregated taker order: a hole after every multi-fill order.)
    contiguous = True
    ordered = True

    def stream_symbol(self, feed: WsFeed, stream: str) -> tuple[str, str, str, bool] | None:
        native = okx_md.trade_stream_native(stream)
        entry = _symbols_entry(feed, native) if native else None
        return (entry[1], entry[0], native, False) if entry and native else None

    async def fill(self, ctx: _Ctx) -> bool:
        gap = ctx.gap
        sym, after, before = gap.sym, gap.after, gap.before
        assert after.num is not None and before.num is not None
        symbols = {sym.native: (sym.symbol, sym.market)}
        collected: list[tuple[TradeMark, WireEvent]] = []   # newest first
        cursor = before.num
        reason: str | None = None
        while True:
            if ctx.pages >= ctx.max_pages:
                reason = MAX_PAGES
                break
            try:
                body = await ctx.get(okx_md.history_trades_url(sym.native, after=cursor), 1)
            except RestError as exc:
                ctx.filler.note_error(str(exc))
                reason = ERROR
                break
            res = okx_md.parse_rest_trades(body, sym.native, symbols, time.monotonic_ns(), now_ms())
            if not ctx.check(res):
                reason = ERROR
                break
            page = [(trade_mark(e), e) for e in res.events]
            page = [(m, e) for m, e in page if m.num is not None and m.num < cursor]
            if not page:
                reason = TOO_OLD    # history exhausted before reaching the last trade we have
                break
            collected.extend((m, e) for m, e in page if m.num is not None and m.num > after.num)
            if any(m.num is not None and m.num <= after.num for m, _ in page):
                break               # reached back to the last trade we have: complete
            cursor = min(m.num for m, _ in page if m.num is not None)
        if reason is not None:
            ctx.marker(reason, after, collected[-1][0] if collected else before)
        collected.sort(key=lambda me: me[0].num or 0)
        ctx.publish([e for _, e in collected])
        return reason is None


class _BybitStrategy(_Strategy):
    def stream_symbol(self, feed: WsFeed, stream: str) -> tuple[str, str, str, bool] | None:
        native = bybit_md.trade_stream_native(stream)
        entry = _symbols_entry(feed, native) if native else None
        return (entry[1], entry[0], native, False) if entry and native else None

    async def fill(self, ctx: _Ctx) -> bool:
        gap = ctx.gap
        sym, after, before = gap.sym, gap.after, gap.before
        category = bybit_md.CATEGORY_OF_MARKET.get(sym.market, "linear")
        try:
            body = await ctx.get(bybit_md.recent_trade_url(category, sym.native), 1)
        except RestError as exc:
            ctx.filler.note_error(str(exc))
            ctx.marker(ERROR, after, before)
            return False
        res = bybit_md.parse_rest_trades(body, sym.native, {sym.native: (sym.symbol, sym.market)},
                                         time.monotonic_ns(), now_ms())
        if not ctx.check(res):
            ctx.marker(ERROR, after, before)
            return False
        page = [(trade_mark(e), e) for e in res.events]
        # covered back to the last trade we have: it is in the page, or something older is
        covered = any(m.trade_id == after.trade_id or m.ts < after.ts for m, _ in page)
        inside = sorted(((m, e) for m, e in page if after.ts <= m.ts <= before.ts), key=lambda me: me[0].ts)
        if not covered:
            ctx.marker(NOT_COVERED, after, inside[0][0] if inside else before)
        # not the boundary trades: the one before the hole is stored, the one after it is live
        bounds = (after.trade_id, before.trade_id)
        ctx.publish([e for m, e in inside if m.trade_id not in bounds])
        return covered


class _DeribitStrategy(_Strategy):
    def stream_symbol(self, feed: WsFeed, stream: str) -> tuple[str, str, str, bool] | None:
        native = deribit.trade_stream_native(stream)
        entry = _symbols_entry(feed, native) if native else None
        return (entry[1], entry[0], native, False) if entry and native else None

    async def fill(self, ctx: _Ctx) -> bool:
        gap = ctx.gap
        sym, after, before = gap.sym, gap.after, gap.before
        symbols = {sym.native: (sym.symbol, sym.market)}
        start = after.ts
        first_page = True
        while True:
            if ctx.pages >= ctx.max_pages:
                ctx.marker(MAX_PAGES, TradeMark("", None, start), before)
                return False
            try:
                body = await ctx.get(deribit.trades_by_time_url(sym.native, start, max(start, before.ts)), 1)
            except RestError as exc:
                ctx.filler.note_error(str(exc))
                ctx.marker(ERROR, TradeMark("", None, start) if not first_page else after, before)
                return False
            res, more = deribit.parse_rest_trades(body, symbols, time.monotonic_ns(), now_ms())
            if not ctx.check(res):
                ctx.marker(ERROR, TradeMark("", None, start) if not first_page else after, before)
                return False
            page = [(trade_mark(e), e) for e in res.events]
            complete = True
            if first_page and not any(m.trade_id == after.trade_id for m, _ in page):
                # the history no longer holds the last trade we have: what precedes the page is lost
                ctx.marker(TOO_OLD, after, page[0][0] if page else before)
                complete = False
            first_page = False
            # not the boundary trades: the one before the hole is stored, the one after it is live
            ctx.publish([e for m, e in page if m.trade_id not in (after.trade_id, before.trade_id)])
            if not more or not page:
                return complete
            last_ts = page[-1][0].ts
            if last_ts <= start:
                # a page of trades all at one millisecond: time paging cannot advance
                ctx.marker(MAX_PAGES, page[-1][0], before)
                return False
            start = last_ts


STRATEGIES: dict[str, type[_Strategy]] = {
    "binance": _BinanceStrategy, "okx": _OkxStrategy, "bybit": _BybitStrategy, "deribit": _DeribitStrategy,
}


# ---------------------------------------------------------------- the filler


@dataclass(slots=True)
class _Segment:
    """Live trades held behind one gap (``gap`` None: behind the resume answer at worker start)."""

    gap: Gap | None
    events: list[WireEvent]
    done: bool = False       # its gap is filled (or marked): the events may go out


class _Hold:
    """A symbol's held live trades in arrival order, one segment per gap still to be filled."""

    __slots__ = ("segments", "count", "timer")

    def __init__(self) -> None:
        self.segments: deque[_Segment] = deque()
        self.count = 0
        self.timer: asyncio.TimerHandle | None = None


def resume_points(answer: dict[str, Any]) -> dict[str, TradeMark]:
    """The publisher's ``resume`` answer -> stream key -> the last trade Redis holds.

    ``hwm``: {stream: id} of the streams with a monotonic-id high-watermark (Binance, OKX);
    ``last``: {stream: [trade id, trade time ms]} of each stream's newest stored trade (Bybit,
    Deribit, and the time of the others). Malformed entries are skipped."""
    out: dict[str, TradeMark] = {}
    hwm = answer.get("hwm") if isinstance(answer.get("hwm"), dict) else {}
    last = answer.get("last") if isinstance(answer.get("last"), dict) else {}
    for key in set(hwm) | set(last):
        if type(key) is not str:
            continue
        tid, ts = "", 0
        entry = last.get(key)
        if (isinstance(entry, list) and len(entry) == 2 and type(entry[0]) is str and type(entry[1]) is int
                and len(entry[0]) <= 100):
            tid, ts = entry
        h = hwm.get(key)
        if type(h) is str and h.isdigit() and len(h) <= 20:
            if tid != h:
                ts = 0   # the newest entry is not the high-watermark trade: its time is unknown
            tid = h
        if tid:
            out[key] = TradeMark(tid, int(tid) if tid.isdigit() and len(tid) <= 20 else None, ts)
    return out


class TradeGapFiller:
    """Last trade per trade stream, reconnect anchors, held live trades, the queue of pending fills
    and its workers."""

    def __init__(self, exchange: str, cfg: ExchangeSettings, rest: RestClient, sink: Sink,
                 release: Sink | None = None) -> None:
        self.exchange = exchange
        self.cfg = cfg
        self.rest = rest
        #: fills and markers go out here
        self.sink = sink
        #: held live trades go out here (the caller counted them when they arrived)
        self.release = release or sink
        self.strategy = STRATEGIES[exchange]()
        rate, burst = PAGE_RATE.get(exchange, (2.0, 2.0))
        self.bucket = TokenBucket(rate, burst)
        self.tlog = LogLimiter()
        self.hold_max = cfg.gap_hold_max_trades
        self.hold_seconds = cfg.gap_hold_seconds
        #: stream key -> the last live trade
        self.last: dict[str, TradeMark] = {}
        #: stream key -> the first live trade of this process (a late resume answer fills up to it)
        self.first: dict[str, TradeMark] = {}
        #: (feed id, stream) -> the trade stream's symbol (None = not a trade stream)
        self._streams: dict[tuple[int, str], TradeSymbol | None] = {}
        #: stream key -> symbol of the registered trade streams
        self.symbols: dict[str, TradeSymbol] = {}
        #: stream key -> (symbol, last trade before the connection was lost)
        self.anchors: dict[str, tuple[TradeSymbol, TradeMark]] = {}
        #: stream key -> gaps waiting for a worker (FIFO over keys)
        self.pending: dict[str, list[Gap]] = {}
        #: stream key -> its held live trades (one per symbol at most)
        self.holds: dict[str, _Hold] = {}
        #: stream keys whose fill runs now (one fill per symbol at a time, in gap order)
        self.active: set[str] = set()
        #: streams whose resume point is awaited; held while ``_resume_hold``
        self._resume_keys: set[str] = set()
        self._resume_pending = False
        self._resume_hold = False
        self._resume_timer: asyncio.TimerHandle | None = None
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task] = []
        # counters (cumulative)
        self.gaps = 0             # holes found after reconnects
        self.live_gaps = 0        # holes found in a live tape without holes (no reconnect)
        self.gaps_filled = 0      # ... fully filled from REST
        self.trades_filled = 0    # trades published from REST (overlap included: dedup drops it)
        self.markers = 0          # trade_gap markers published
        self.markers_by_reason: dict[str, int] = {}
        self.requests = 0
        self.errors = 0
        self.parse_errors = 0
        self.merged = 0           # gaps merged because a symbol had GAPS_PER_SYMBOL queued
        self.untracked = 0        # trades of streams beyond TRACKED_MAX
        self.held_trades = 0      # live trades held back behind a fill or the resume answer
        self.holds_started = 0
        self.hold_timeouts = 0    # holds ended by gap_hold_seconds
        self.holds_full = 0       # ... by gap_hold_max_trades
        self.resumes = 0          # resume answers applied
        self.resume_timeouts = 0  # no resume answer within gap_hold_seconds
        self.late_gaps = 0        # holes filled after newer trades went out (late resume answer, a hold bound)
        self.late_trades = 0      # ... their trades (no mono_id)
        self.last_error: str | None = None

    # ---- lifecycle ----
    def start(self) -> None:
        for i in range(FILL_WORKERS):
            self._tasks.append(asyncio.create_task(self._worker(), name=f"{self.exchange}-gapfill{i}"))

    async def stop(self) -> None:
        """Stop the fills; held trades go out behind a ``stopped`` marker for what is unfilled."""
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        if self._resume_timer is not None:
            self._resume_timer.cancel()
            self._resume_timer = None
        self._resume_hold = False
        for key in list(self.holds):
            self._end_hold(key, STOPPED)

    # ---- hot path: every live trade ----
    def observe(self, ev: WireEvent) -> bool:
        """See a live trade; True = it is held back (the caller must not publish it: the filler
        releases it after the fill of the gap before it)."""
        key = ev[0]
        mark = trade_mark(ev)
        last = self.last.get(key)
        if last is None:
            if len(self.last) >= TRACKED_MAX:
                self.untracked += 1
                return False
            self.last[key] = mark
            self.first[key] = mark
        else:
            if (self.strategy.contiguous and mark.num is not None and last.num is not None
                    and mark.num > last.num + 1 and key not in self.anchors):
                sym = self.symbols.get(key)
                if sym is not None:
                    # a hole in a tape without holes, with no reconnect (a subscription that went
                    # silent and came back, a frame lost upstream): filled like one
                    self.anchors[key] = (sym, last)
                    self.live_gaps += 1
            if self.strategy.is_newer(mark, last):
                self.last[key] = mark
        hold = self.holds.get(key) if self.holds else None
        if self.anchors:
            anchor = self.anchors.get(key)
            if anchor is not None and self.strategy.is_newer(mark, anchor[1]):
                del self.anchors[key]
                sym, after = anchor
                if self.strategy.needs_fill(after, mark):
                    # without a hold the fill comes after newer trades: late (no mono_id)
                    gap = Gap(sym, after, mark, late=self.hold_max <= 0)
                    queued = self._enqueue(gap)
                    if self.hold_max > 0 and queued is gap:
                        if hold is None:
                            hold = self._start_hold(key)
                        hold.segments.append(_Segment(gap, []))
                    # else a duplicate, or merged into the newest queued gap: held behind its
                    # segment when there is a hold
        if hold is None:
            if not self._resume_hold or key not in self._resume_keys:
                return False
            hold = self._start_hold(key)
            hold.segments.append(_Segment(None, []))
        if hold.count >= self.hold_max:
            self._end_hold(key, HOLD_FULL)
            return False
        hold.segments[-1].events.append(ev)
        hold.count += 1
        self.held_trades += 1
        return True

    # ---- a lost connection ----
    def on_reset(self, feed: WsFeed, streams: list[str]) -> None:
        """The connection carrying ``streams`` of ``feed`` dropped: anchor their trade streams."""
        for stream in streams:
            sym = self._symbol(feed, stream)
            if sym is None:
                continue
            last = self.last.get(sym.stream_key)
            if last is not None and sym.stream_key not in self.anchors:
                # a second drop before any trade keeps the first anchor: the hole starts there
                self.anchors[sym.stream_key] = (sym, last)

    def _symbol(self, feed: WsFeed, stream: str) -> TradeSymbol | None:
        key = (id(feed), stream)
        try:
            return self._streams[key]
        except KeyError:
            pass
        parsed = self.strategy.stream_symbol(feed, stream)
        sym = None
        if parsed is not None:
            market, canonical, native, agg = parsed
            dtype = self.strategy.data_type(market, agg)
            sym = TradeSymbol(market, canonical, native, md_stream_key(dtype, self.exchange, market, canonical), agg,
                              dtype)
        if len(self._streams) < TRACKED_MAX:
            self._streams[key] = sym
        return sym

    # ---- resume after a worker (re)start ----
    def register(self, feed: WsFeed, streams: list[str]) -> list[str]:
        """The stream keys of the trade streams among ``streams`` of ``feed`` (remembered)."""
        keys: list[str] = []
        for stream in streams:
            sym = self._symbol(feed, stream)
            if sym is not None and (sym.stream_key in self.symbols or len(self.symbols) < TRACKED_MAX):
                self.symbols[sym.stream_key] = sym
                keys.append(sym.stream_key)
        return keys

    def expect_resume(self, keys: list[str]) -> None:
        """Hold the live trades of ``keys`` (registered) until :meth:`resume` says where Redis
        stands, at most ``gap_hold_seconds``; a later answer still fills the hole, late."""
        if self._resume_timer is not None:
            self._resume_timer.cancel()
            self._resume_timer = None
        self._resume_keys = {k for k in keys if k in self.symbols}
        self._resume_pending = bool(self._resume_keys)
        self._resume_hold = self._resume_pending and self.hold_max > 0
        if self._resume_hold:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # no loop (a synchronous unit test): no time bound
                return
            self._resume_timer = loop.call_later(self.hold_seconds, self._resume_timeout)

    @property
    def resume_pending(self) -> bool:
        return self._resume_pending

    def resume(self, points: dict[str, TradeMark]) -> None:
        """The last trade Redis holds per stream (:func:`resume_points`): a stream whose first live
        trade is past it gets a fill from there; one with no trade yet is anchored there."""
        if not self._resume_pending:
            return
        self._resume_pending = self._resume_hold = False
        if self._resume_timer is not None:
            self._resume_timer.cancel()
            self._resume_timer = None
        self.resumes += 1
        strategy = self.strategy
        for key in self._resume_keys:
            sym = self.symbols[key]
            point = points.get(key)
            hold = self.holds.get(key)
            head = hold.segments[0] if hold is not None and hold.segments[0].gap is None else None
            if head is not None:
                first = trade_mark(head.events[0]) if head.events else None
                if (point is not None and first is not None and strategy.is_newer(first, point)
                        and strategy.needs_fill(point, first)):
                    head.gap = Gap(sym, point, first)
                    self.gaps += 1
                    # first in line: gaps after later reconnects queue behind it
                    self.pending.setdefault(key, []).insert(0, head.gap)
                    self._wake.set()
                else:
                    head.done = True
                    self._flush(key)
            elif key not in self.last:
                if point is not None and key not in self.anchors:
                    self.anchors[key] = (sym, point)   # the first live trade is checked against it
            else:
                # the hold ended before the answer came: the trades after the hole are out already
                first = self.first.get(key)
                if (point is not None and first is not None and strategy.is_newer(first, point)
                        and strategy.needs_fill(point, first)):
                    self.late_gaps += 1
                    self._enqueue(Gap(sym, point, first, late=True))
        self._resume_keys = set()

    def _resume_timeout(self) -> None:
        """No answer in time (publisher or Redis down): the held trades go out."""
        self._resume_timer = None
        self._resume_hold = False
        self.resume_timeouts += 1
        self.tlog.warning(log, "resume-timeout", "%s: no resume point from the publisher within %.1fs: "
                          "live trades go out; a later answer fills the hole late", self.exchange,
                          self.hold_seconds)
        for key in list(self.holds):
            hold = self.holds[key]
            if hold.segments[0].gap is None:
                hold.segments[0].done = True
                self._flush(key)

    # ---- holds ----
    def _start_hold(self, key: str) -> _Hold:
        hold = self.holds[key] = _Hold()
        self.holds_started += 1
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop (a synchronous unit test): no time bound
            return hold
        hold.timer = loop.call_later(self.hold_seconds, self._end_hold, key, TIMEOUT)
        return hold

    def _flush(self, key: str) -> None:
        """Release the held trades whose gaps are done, in order; end the hold when none is left."""
        hold = self.holds.get(key)
        if hold is None:
            return
        segments = hold.segments
        while segments and segments[0].done:
            seg = segments.popleft()
            hold.count -= len(seg.events)
            if seg.events:
                self.release(seg.events)
        if not segments:
            del self.holds[key]
            if hold.timer is not None:
                hold.timer.cancel()

    def _end_hold(self, key: str, reason: str) -> None:
        """A bound reached: the held trades go out, in order, and each unfinished gap's fill goes on
        *late* (after them, without mono_id). A stop: a marker for what each unfinished gap has
        not filled (exact bounds), then the held trades behind it."""
        hold = self.holds.pop(key, None)
        if hold is None:
            return
        if hold.timer is not None:
            hold.timer.cancel()
        if reason == TIMEOUT:
            self.hold_timeouts += 1
        elif reason == HOLD_FULL:
            self.holds_full += 1
        for seg in hold.segments:
            gap = seg.gap
            if gap is not None and not seg.done:
                if reason == STOPPED:
                    gap.abandoned = True
                    self.publish_marker(gap.sym, reason, gap.published or gap.after, gap.before)
                elif not gap.late:
                    # the bounds protect memory and the live tape's latency, not the fill: it goes
                    # on, late (after the trades released now, without mono_id), and loses nothing
                    gap.late = True
                    self.late_gaps += 1
            if seg.events:
                self.release(seg.events)
        queued = self.pending.get(key)
        if queued is not None:
            queued[:] = [g for g in queued if not g.abandoned]
            if not queued:
                del self.pending[key]

    def held_count(self) -> int:
        return sum(h.count for h in self.holds.values())

    # ---- the queue ----
    def _enqueue(self, gap: Gap) -> Gap | None:
        """Queue ``gap``; returns the queued gap that covers it (itself, or the newest queued one
        widened over it when the symbol has GAPS_PER_SYMBOL queued), None for a duplicate."""
        self.gaps += 1
        key = gap.sym.stream_key
        queued = self.pending.setdefault(key, [])
        if any(g.after == gap.after and g.before == gap.before for g in queued):
            return None
        if len(queued) >= GAPS_PER_SYMBOL:
            # bounded: widen the newest queued gap instead (the overlap is deduplicated)
            self.merged += 1
            queued[-1].before = gap.before
            self._wake.set()
            return queued[-1]
        queued.append(gap)
        self._wake.set()
        return gap

    def enqueue(self, gap: Gap) -> None:
        """Queue a fill directly (tests, tools)."""
        self._enqueue(gap)

    def pending_count(self) -> int:
        return sum(len(v) for v in self.pending.values())

    def _next_key(self) -> str | None:
        """A symbol with gaps to fill whose fill is not running and not waiting for the resume."""
        for key in self.pending:
            if key in self.active:
                continue
            hold = self.holds.get(key)
            if hold is not None and hold.segments and hold.segments[0].gap is None:
                continue
            return key
        return None

    async def _worker(self) -> None:
        while True:
            key = self._next_key()
            if key is None:
                self._wake.clear()
                await self._wake.wait()
                continue
            gaps = self.pending.pop(key)
            self.active.add(key)
            try:
                for gap in gaps:
                    await self._run(gap)
            finally:
                self.active.discard(key)
                self._wake.set()   # another worker may take what queued for this key meanwhile

    async def drain(self) -> None:
        """Run every runnable fill now, in order (tests, tools; the workers do this)."""
        while (key := self._next_key()) is not None:
            for gap in self.pending.pop(key):
                await self._run(gap)

    async def _run(self, gap: Gap) -> None:
        try:
            if not gap.abandoned:
                await self.fill(gap)
        except GapAbandoned:
            pass
        except Exception:  # noqa: BLE001 - one bad fill must not stop the others
            log.exception("%s: trade gap fill of %s failed", self.exchange, gap.sym.native)
            self.errors += 1
            if not gap.abandoned:
                self.publish_marker(gap.sym, ERROR, gap.published or gap.after, gap.before)
        finally:
            self._gap_done(gap)

    def _gap_done(self, gap: Gap) -> None:
        """The fill of ``gap`` is over: the trades held behind it may go out."""
        if gap.abandoned:
            return
        key = gap.sym.stream_key
        hold = self.holds.get(key)
        if hold is None:
            return
        for seg in hold.segments:
            if seg.gap is gap:
                seg.done = True
                break
        self._flush(key)

    async def fill(self, gap: Gap) -> bool:
        """Fill one gap now (the workers call this); True = completely filled."""
        ok = await self.strategy.fill(_Ctx(self, gap))
        if ok and not gap.abandoned:
            self.gaps_filled += 1
        return ok

    def publish_marker(self, sym: TradeSymbol, reason: str, after: TradeMark, before: TradeMark) -> None:
        """A ``trade_gap`` marker: the trades after ``after`` and before ``before`` are missing."""
        self.markers += 1
        self.markers_by_reason[reason] = self.markers_by_reason.get(reason, 0) + 1
        self.tlog.warning(log, f"gap-{reason}", "%s %s %s: trades after %s (%d) and before %s (%d) not filled: %s",
                          self.exchange, sym.market, sym.native, after.trade_id, after.ts, before.trade_id,
                          before.ts, reason)
        ev = TradeGap(self.exchange, sym.market, sym.symbol, sym.native, before.ts, now_ms(), reason=reason,
                      from_id=after.trade_id, to_id=before.trade_id, from_ts=after.ts, to_ts=before.ts,
                      stream_type=sym.data_type)
        self.sink([ev.to_wire()])

    def note_error(self, text: str) -> None:
        self.errors += 1
        self.last_error = f"{self.exchange} trade gap fill: {text}"
        self.tlog.warning(log, "gapfill-err", "%s", self.last_error)

    def stats(self) -> dict[str, Any]:
        return {
            "trade_gaps": self.gaps,
            "trade_live_gaps": self.live_gaps,
            "trade_gaps_filled": self.gaps_filled,
            "trades_filled": self.trades_filled,
            "trade_gap_markers": self.markers,
            "trade_gap_markers_by_reason": dict(self.markers_by_reason),
            "gap_fill_requests": self.requests,
            "gap_fill_errors": self.errors,
            "gap_fill_parse_errors": self.parse_errors,
            "gap_fill_pending": self.pending_count(),
            "gap_fill_merged": self.merged,
            "gap_holds": len(self.holds),
            "gap_held_now": self.held_count(),
            "gap_held_trades": self.held_trades,
            "gap_hold_timeouts": self.hold_timeouts,
            "gap_holds_full": self.holds_full,
            "trade_resume": "pending" if self._resume_pending else ("done" if self.resumes else "none"),
            "trade_resume_timeouts": self.resume_timeouts,
            "trade_late_gaps": self.late_gaps,
            "trade_late_trades": self.late_trades,
        }
