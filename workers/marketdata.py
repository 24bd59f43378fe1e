"""Market-data collection of one exchange worker (issue 4): feeds, books, REST polls.

:class:`MarketData` runs what the adapter declares for the settings
(:meth:`ExchangeAdapter.market_data_feeds` / :meth:`~ExchangeAdapter.market_data_polls`):

- one :class:`~workers.transport.ws.WsManager` per feed (shards, reconnects, rotation,
  per-subscription freshness); their wire events go to the channel sink, counted per type;
- every feed's :class:`~shared.marketdata.BookMsg` goes to ONE :class:`~workers.book.BookManager`
  per exchange (knobs from the settings); its output is published: ``book_delta`` events and
  ``book_gap`` markers as they happen, ``book`` tops of the changed books every
  ``book_publish_interval``;
- the book engine's requests are served: REST depth snapshots through the worker's
  :class:`~workers.transport.rest.RestClient` (weight budget, bans, breaker; released by the
  manager's token bucket sized from the exchange's budget), resubscribes through
  :meth:`WsManager.resubscribe` of the feed carrying that book (one stream, paced);
- a shard whose connection was lost (not rotated) marks only ITS books stale (a ``book_gap``
  marker, reason ``stale``) and resets them; the other shards' books are untouched;
- REST polls (open interest, long/short ratios) each on its interval, spread out, one at a time;
- trade gap fill (``trade_gap_fill``, :mod:`workers.gapfill`): every live trade is shown to the
  filler; a lost connection anchors its trade streams; the missed trades are fetched from REST and
  published like live ones (``source: rest``), or a ``trade_gap`` marker says what is missing. The
  filler may hold a live trade back (its symbol's fill is running): it is published after the fill;
- resume after a worker restart: before the feeds start, the trade streams' resume points are
  asked from the publisher (the channel's ``request_resume``); the filler holds their first live
  trades until the answer and fills from where Redis stands (workers/gapfill.py).

Everything here runs on the worker's event loop; nothing blocks.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import time
from typing import Any, Awaitable, Callable

from shared.events import TRADE_STREAM_TYPES, WireEvent, now_ms
from shared.logutil import LogLimiter
from shared.marketdata import BookGap, BookMsg
from shared.ratelimit import TokenBucket
from shared.settings import ExchangeSettings
from workers.book import STALE, BookConfig, BookManager, BookRequest
from workers.exchanges.base import ExchangeAdapter, RestPoll, WsFeed
from workers.gapfill import STRATEGIES, TradeGapFiller, resume_points
from workers.transport.rest import RestClient, RestError
from workers.transport.ws import WsManager

log = logging.getLogger(__name__)

Sink = Callable[[list[WireEvent]], None]
#: ask the publisher where Redis stands for these trade streams; the answer frame goes to the callback
ResumeRequest = Callable[[list[str], Callable[[dict[str, Any]], None]], None]

#: at most this many REST snapshots in flight per exchange (the token bucket paces releases)
SNAPSHOT_CONCURRENCY = 2
#: the first round of polls is spread at most this far apart, seconds
POLL_SPACING = 0.25
#: unsynced books listed in the beat (the count is always there)
UNSYNCED_LISTED = 10


def book_config(cfg: ExchangeSettings, adapter: ExchangeAdapter) -> BookConfig:
    """The book engine's knobs from the settings and the exchange's REST budget."""
    weight, rate, burst = adapter.book_rest_budget(cfg)
    return BookConfig(
        max_depth=cfg.book_depth,
        top_depth=cfg.book_top_n,
        top_interval=cfg.book_publish_interval,
        publish_tops=cfg.book_mode in ("top", "both"),
        publish_deltas=cfg.book_mode in ("delta", "both"),
        okx_rest_snapshot=not cfg.book_ws_snapshot,
        snapshot_weight=weight,
        snapshot_rate=rate,
        snapshot_burst=max(burst, weight),
        # a released snapshot may wait for the next REST weight window before it is answered
        resync_timeout=max(cfg.subscribe_timeout, 60.0),
    )


class MarketData:
    """Feeds, the book engine and REST polls of one exchange worker."""

    def __init__(
        self,
        exchange: str,
        cfg: ExchangeSettings,
        adapter: ExchangeAdapter,
        sink: Sink,
        rest: RestClient,
        *,
        backpressure: Callable[[], Awaitable[None]] | None = None,
        tick: float = 0.05,
        resume: ResumeRequest | None = None,
    ) -> None:
        self.exchange = exchange
        self.cfg = cfg
        self.adapter = adapter
        self.put = sink
        self.rest = rest
        self.backpressure = backpressure
        self.tick = tick
        #: asks the publisher where Redis stands for the trade streams (the worker's channel)
        self.resume = resume
        self.books = BookManager(book_config(cfg, adapter))
        self.managers: list[WsManager] = []
        #: (market, native) -> (manager, stream) of the feed carrying that book
        self._book_stream: dict[tuple[str, str], tuple[WsManager, str]] = {}
        #: (manager id, stream) -> (market, native, canonical) of the book it carries
        self._stream_book: dict[tuple[int, str], tuple[str, str, str]] = {}
        self.polls: list[RestPoll] = []
        self._tasks: list[asyncio.Task] = []
        self._fetches: set[asyncio.Task] = set()
        self._fetch_slots = asyncio.Semaphore(SNAPSHOT_CONCURRENCY)
        #: resubscribe requests the feed could not take yet (rate-limited), by book key
        self._resub_pending: dict[tuple[str, str], BookRequest] = {}
        self._tlog = LogLimiter()
        #: REST gap fill of the trade streams after reconnects (None = off or not supported)
        self.gaps: TradeGapFiller | None = (
            TradeGapFiller(exchange, cfg, rest, self._sink_filled, release=sink)
            if cfg.trade_gap_fill and exchange in STRATEGIES else None)
        # counters (cumulative)
        self.counts: dict[str, int] = {}          # wire events per type
        self.snapshots_ok = 0
        self.snapshot_errors = 0
        self.book_resubscribes = 0
        self.stale_resets = 0                     # books reset because their connection dropped
        self.polls_ok = 0
        self.poll_errors = 0
        self.poll_parse_errors = 0
        self.poll_rejected = 0
        self.last_error: str | None = None

    # ---- lifecycle ----
    async def start(self) -> None:
        cfg, adapter = self.cfg, self.adapter
        feeds = adapter.market_data_feeds(cfg)
        rates = [f.connect_rate for f, _ in feeds if f.connect_rate > 0]
        limiter = TokenBucket(min(rates), max(1.0, min(rates))) if rates else None
        if self.gaps is not None:
            # before any trade arrives: a new process resumes its trade streams where Redis stands
            keys = [k for feed, streams in feeds for k in self.gaps.register(feed, streams)]
            if keys and self.resume is not None:
                self.gaps.expect_resume(keys)
                self.resume(keys, self._on_resume)
        for feed, streams in feeds:
            mgr = WsManager(feed, cfg, self._sink, backpressure=self.backpressure, books_sink=self._on_books,
                            connect_limiter=limiter)
            mgr.on_shard_reset = self._reset_hook(mgr)
            self._index_books(mgr, feed, streams)
            self.managers.append(mgr)
            await mgr.start(streams)
        self.polls = adapter.market_data_polls(cfg)
        if self.gaps is not None:
            self.gaps.start()
        self._tasks.append(asyncio.create_task(self._book_loop(), name=f"{self.exchange}-books"))
        if self.polls:
            self._tasks.append(asyncio.create_task(self._poll_loop(), name=f"{self.exchange}-md-polls"))
        log.info("%s market data: %d feed(s), %d stream(s), %d book(s), %d REST poll(s)", self.exchange,
                 len(feeds), sum(len(s) for _, s in feeds), len(self._book_stream), len(self.polls))

    async def stop(self) -> None:
        """Stop producing: timers, polls and fetches first, then every connection."""
        for t in [*self._tasks, *self._fetches]:
            t.cancel()
        await asyncio.gather(*self._tasks, *self._fetches, return_exceptions=True)
        if self.gaps is not None:
            await self.gaps.stop()
        for mgr in self.managers:
            try:
                await asyncio.wait_for(mgr.stop(), 5.0)
            except (asyncio.TimeoutError, Exception):  # noqa: BLE001 - stopping must go on
                log.warning("%s: market-data WebSocket stop did not finish cleanly", self.exchange)

    def _index_books(self, mgr: WsManager, feed: WsFeed, streams: list[str]) -> None:
        symbols = getattr(feed, "symbols", None) or {}
        configured = set(streams)
        for native, (canonical, market) in symbols.items():
            stream = feed.book_stream(market, native)
            if stream is not None and stream in configured:
                self._book_stream[(market, native)] = (mgr, stream)
                self._stream_book[(id(mgr), stream)] = (market, native, canonical)

    def _on_resume(self, answer: dict[str, Any]) -> None:
        if self.gaps is not None:
            self.gaps.resume(resume_points(answer))

    # ---- hot path ----
    def _sink(self, events: list[WireEvent]) -> None:
        counts = self.counts
        gaps = self.gaps
        out: list[WireEvent] | None = None   # built only when a trade is held back
        for i, ev in enumerate(events):
            cls = ev[2]
            counts[cls] = counts.get(cls, 0) + 1
            if cls in TRADE_STREAM_TYPES and gaps is not None and gaps.observe(ev):
                if out is None:
                    out = events[:i]
                continue
            if out is not None:
                out.append(ev)
        if out is None:
            self.put(events)
        elif out:
            self.put(out)

    def _sink_filled(self, events: list[WireEvent]) -> None:
        """Trades from the REST history and gap markers: counted, never shown to the gap tracker
        (they are older than the live trades that bound their gap)."""
        counts = self.counts
        for ev in events:
            cls = ev[2]
            counts[cls] = counts.get(cls, 0) + 1
        self.put(events)

    def _on_books(self, books: list[BookMsg], rx_ns: int) -> None:
        now = time.monotonic()
        on_message = self.books.on_message
        for msg in books:
            events = on_message(msg, now, rx_ns)
            if events:
                self._sink(events)

    # ---- a lost connection: its books only ----
    def _reset_hook(self, mgr: WsManager) -> Callable[[list[str]], None]:
        def hook(streams: list[str]) -> None:
            self._reset_books(mgr, streams)
            if self.gaps is not None:
                self.gaps.on_reset(mgr.feed, streams)
        return hook

    def _reset_books(self, mgr: WsManager, streams: list[str]) -> None:
        """The connection carrying ``streams`` dropped: each synced book among them gets a ``stale``
        marker and starts over (its next messages resync it). Books of other shards are untouched,
        unlike :meth:`BookManager.on_disconnect`, which would resync every book of the exchange."""
        cfg = self.books.cfg
        rx_ns, ts = time.monotonic_ns(), now_ms()
        events: list[WireEvent] = []
        for stream in streams:
            book = self._stream_book.get((id(mgr), stream))
            if book is None:
                continue
            market, native, canonical = book
            keeper = self.books.book(self.exchange, market, native)
            if keeper is None:
                continue
            if keeper.synced:
                self.stale_resets += 1
                for on, stream_type in ((cfg.publish_tops, "book"), (cfg.publish_deltas, "book_delta")):
                    if on:
                        events.append(BookGap(self.exchange, market, canonical, native, 0, ts, reason=STALE,
                                              last_seq=keeper.last_seq, got_seq=0,
                                              stream_type=stream_type).to_wire(rx_ns))
            keeper.reset()
        if events:
            self._sink(events)

    # ---- book timer: tops, snapshots, resubscribes ----
    async def _book_loop(self) -> None:
        while True:
            try:
                self._book_tick(time.monotonic())
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - a bug here must not stop the books
                log.exception("%s: book timer failed", self.exchange)
            await asyncio.sleep(self.tick)

    def _book_tick(self, now: float) -> None:
        books = self.books
        tops = books.due_tops(now)
        if tops:
            self._sink(tops)
        for req in books.snapshot_requests(now):
            task = asyncio.create_task(self._fetch_snapshot(req), name=f"{self.exchange}-snapshot")
            self._fetches.add(task)
            task.add_done_callback(self._fetches.discard)
        for req in books.resubscribe_requests(now):
            self._resub_pending[(req.market, req.native_symbol)] = req
        for key in list(self._resub_pending):
            target = self._book_stream.get(key)
            if target is None:
                del self._resub_pending[key]
                self._tlog.warning(log, "resub-none", "%s: no feed carries the book %s %s",
                                   self.exchange, *key)
                continue
            mgr, stream = target
            if mgr.resubscribe(stream):
                del self._resub_pending[key]
                self.book_resubscribes += 1

    async def _fetch_snapshot(self, req: BookRequest) -> None:
        poll = self.adapter.book_snapshot_request(req.market, req.native_symbol, self.cfg)
        if poll is None:
            self.snapshot_errors += 1
            self._tlog.warning(log, "snap-none", "%s: no REST snapshot for %s %s", self.exchange,
                               req.market, req.native_symbol)
            return
        async with self._fetch_slots:
            try:
                resp = await self.rest.get_json(poll.url, weight=poll.weight)
            except RestError as exc:
                self._snapshot_failed(req, f"{self.exchange} book snapshot {poll.label}: {exc}")
                return
        res = poll.parse(resp.body, time.monotonic_ns(), resp.received_at_ms)
        if not res.books:
            self._snapshot_failed(req, res.error or f"{self.exchange} book snapshot {poll.label}: unusable body")
            return
        self.snapshots_ok += 1
        now = time.monotonic()
        for msg in res.books:
            events = self.books.on_message(msg, now)
            if events:
                self._sink(events)

    def _snapshot_failed(self, req: BookRequest, why: str) -> None:
        self.snapshot_errors += 1
        self.last_error = why
        self._tlog.warning(log, "snap-fail", "%s", why)
        self.books.snapshot_failed(req, time.monotonic())

    # ---- REST polls ----
    async def _poll_loop(self) -> None:
        start = time.monotonic()
        n = len(self.polls)
        # first round soon and spread out; then each poll on its own interval
        heap = [(start + min(p.interval * i / n, POLL_SPACING * i), i) for i, p in enumerate(self.polls)]
        heapq.heapify(heap)
        while heap:
            due, i = heap[0]
            wait = due - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
                continue
            heapq.heapreplace(heap, (max(due + self.polls[i].interval, time.monotonic()), i))
            try:
                await self._poll(self.polls[i])
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - one bad poll must not end polling
                log.exception("%s: market-data poll failed unexpectedly", self.exchange)

    async def _poll(self, poll: RestPoll) -> None:
        try:
            resp = await self.rest.get_json(poll.url, weight=poll.weight)
        except RestError as exc:
            self.poll_errors += 1
            self.last_error = f"{self.exchange} {poll.label}: {exc}"
            self._tlog.warning(log, "poll", "%s", self.last_error)
            return
        res = poll.parse(resp.body, time.monotonic_ns(), resp.received_at_ms)
        self.poll_parse_errors += res.parse_errors
        self.poll_rejected += res.rejected
        if res.error:
            self.poll_errors += 1
            self.last_error = res.error
            self._tlog.warning(log, "poll-err", "%s %s: %s", self.exchange, poll.label, res.error)
        else:
            self.polls_ok += 1
        if res.events:
            self._sink(res.events)

    # ---- stats ----
    def connection_state(self) -> str:
        states = [m.connection_state() for m in self.managers]
        if not states or all(s == "connected" for s in states):
            return "connected"
        return "down" if any(s == "down" for s in states) else "connecting"

    def stats(self) -> dict[str, Any]:
        """Totals for the beat (bounded: no per-symbol map, a few unsynced books by name)."""
        ws = [m.stats() for m in self.managers]
        b = self.books.stats()
        unsynced = [label for label, st in b["symbols"].items() if not st["synced"]]
        return {
            "events": dict(self.counts),
            "feeds": len(self.managers),
            "ws_connections": sum(s["ws_connections"] for s in ws),
            "subscription_failures": sum(s["subscription_failures"] for s in ws),
            "resubscribes": sum(s["resubscribes"] for s in ws),
            "topic_reconnects": sum(s["topic_reconnects"] for s in ws),
            "books": b["books"],
            "books_synced": b["synced"],
            "book_gaps": b["gaps"],
            "book_checksum_failures": b["checksum_failures"],
            "book_resets": b["resets"],
            "book_resyncs": self.snapshots_ok + self.book_resubscribes,
            "book_snapshots": self.snapshots_ok,
            "book_snapshot_errors": self.snapshot_errors,
            "book_resubscribes": self.book_resubscribes,
            "book_stale_resets": self.stale_resets,
            "book_buffer_overflow": b["buffer_overflow"],
            "book_snapshot_pending": b["snapshot_pending"],
            "book_resubscribe_pending": b["resubscribe_pending"] + len(self._resub_pending),
            "unsynced": unsynced[:UNSYNCED_LISTED],
            "polls": len(self.polls),
            "polls_ok": self.polls_ok,
            "poll_errors": self.poll_errors,
            "poll_parse_errors": self.poll_parse_errors,
            "poll_rejected": self.poll_rejected,
            **(self.gaps.stats() if self.gaps is not None else {}),
        }
