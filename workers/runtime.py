"""An exchange worker process: adapter + transports -> channel to the publisher.

Entry: :func:`worker_main` (spawned by the supervisor). Inside, :class:`Worker` wires
- the adapter (``workers.exchanges.get_adapter``),
- a :class:`~workers.channel.PublisherChannel` to the publisher's Unix socket,
- an instruments poller on a :class:`~workers.transport.rest.RestClient` (listing detection),
  and one :class:`~workers.transport.ws.WsManager` per instrument push channel,
- a :class:`~workers.marketdata.MarketData` (market-data feeds, one book engine, REST snapshots
  and polls, trade gap fill) with ``market_data: true``, or, trades only, for the spot trade
  stream alone (``channels: [trade]``, ``markets: [spot]``),
and reports stats in every beat. On ``link.stop_requested``: WebSocket and poller stop first
(no new data accepted), then the channel writes out everything it holds, then exit 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import socket
import time
from pathlib import Path
from typing import Any

from collector.logs import setup_logging
from shared.child import StatusLink, run_child
from shared.settings import ExchangeSettings, Settings
from shared.states import EXIT_CONFIG, EXIT_OK, EXIT_PARENT_GONE
from workers.channel import PublisherChannel
from workers.exchanges import UnknownExchangeError, get_adapter
from shared.events import InstrumentInfo
from workers.exchanges.base import (
    MARKET_DATA_MODULES, ExchangeAdapter, InstrumentList, InstrumentsFormatError, InstrumentsRequest, NotSupported,
)
from workers.marketdata import MarketData
from workers.transport.rest import CircuitOpenError, RestClient, RestError
from workers.transport.ws import WsManager

log = logging.getLogger(__name__)

#: pages of one instruments request at most (a cursor loop bound)
MAX_INSTRUMENT_PAGES = 50


def worker_main(exchange: str, settings: Settings, status_sock: socket.socket) -> int:
    """Process entry of one exchange worker; returns the exit code."""
    setup_logging(settings, exchange)
    worker = Worker(exchange, settings)
    return run_child(exchange, worker.run, status_sock)


class Worker:
    """Everything one exchange worker runs, and its stats."""

    def __init__(self, exchange: str, settings: Settings) -> None:
        self.exchange = exchange
        self.settings = settings
        self.cfg: ExchangeSettings | None = getattr(settings.exchanges, exchange, None)
        self.adapter: ExchangeAdapter | None = None
        self.channel: PublisherChannel | None = None
        #: listing push channels (instrument updates between polls)
        self.push: list[WsManager] = []
        self.pushed_updates = 0
        self.rest: RestClient | None = None
        #: market-data feeds, books and polls (``market_data: true``)
        self.md: MarketData | None = None
        self.wants_md = False
        #: the settings the market-data path runs with (the trades-only config mapped onto it)
        self.md_cfg: ExchangeSettings | None = None
        self._poll_task: asyncio.Task | None = None
        self._hook_tasks: list[asyncio.Task] = []
        self.polls = 0
        self.poll_parse_errors = 0
        self.poll_rejected = 0
        self.last_poll_ok_at: int | None = None
        self.last_error: str | None = None
        self._seen_errors: dict[str, str | None] = {}
        self._poll_failing = False

    # ---- configuration ----
    def configure(self) -> str | None:
        """Build the adapter; return one clear line when the configuration cannot work."""
        if self.cfg is None or not isinstance(self.cfg, ExchangeSettings):
            return f"config error: exchanges.{self.exchange[:40]}: unknown exchange"
        try:
            self.adapter = get_adapter(self.exchange, self.cfg.symbols)
        except UnknownExchangeError as exc:
            return f"config error: exchanges.{self.exchange}: {exc}"
        except ValueError as exc:
            return f"config error: exchanges.{self.exchange}.symbols: {exc}"
        cfg, adapter = self.cfg, self.adapter
        wants_md = False
        if cfg.trades and cfg.symbols and not cfg.market_data and adapter.supports_trades:
            # trades only: the spot trade stream runs on the market-data path (the only trade
            # path), so it gets the REST gap fill after a reconnect and the resume after a restart
            cfg = self.md_cfg = cfg.model_copy(update={"market_data": True, "channels": ["trade"],
                                                       "markets": ["spot"]})
        if cfg.market_data:
            if not adapter.supports_market_data:
                return (f"config error: exchanges.{self.exchange}.market_data: no market data for "
                        f"{self.exchange} yet (available: {', '.join(sorted(MARKET_DATA_MODULES))})")
            try:
                problem = adapter.market_data_problem(cfg)
                if problem is None and cfg.symbols:
                    wants_md = bool(adapter.market_data_feeds(cfg) or adapter.market_data_polls(cfg))
            except (ValueError, NotSupported) as exc:
                problem = f"symbols: {exc}"
            if problem is not None:
                return f"config error: exchanges.{self.exchange}.{problem}"
        self.wants_md = wants_md
        if not self.listings_on and not wants_md:
            return (f"config error: exchanges.{self.exchange}: nothing to collect "
                    f"(set symbols with trades=true or market_data=true, or listings=true)")
        return None

    @property
    def listings_on(self) -> bool:
        """Listing detection runs (market-data-only adapters have none: ``listings`` is ignored)."""
        return bool(self.cfg is not None and self.cfg.listings and self.adapter is not None
                    and self.adapter.supports_listings)

    # ---- the process body ----
    async def run(self, link: StatusLink) -> int:
        problem = self.configure()
        if problem is not None:
            log.error("%s", problem)
            return EXIT_CONFIG
        assert self.cfg is not None and self.adapter is not None
        cfg, adapter = self.cfg, self.adapter

        self.channel = PublisherChannel(self.exchange, self.settings.publisher_socket, self.settings.channel)
        self.channel.start()
        await link.start(self.stats)

        if cfg.listings and not adapter.supports_listings:
            log.info("%s has no listings source: listings ignored", self.exchange)
        if self.listings_on or self.wants_md:
            # one client per exchange: listing polls, book snapshots and market-data polls share
            # the IP's weight budget and its bans
            self.rest = RestClient(
                self.exchange, cfg,
                weight_limit=adapter.rest_weight_limit,
                weight_header=adapter.rest_used_weight_header,
                weight_window=adapter.rest_weight_window,
                ban_statuses=adapter.rest_ban_statuses,
            )
        if self.wants_md:
            assert self.rest is not None
            self.md = MarketData(self.exchange, self.md_cfg or cfg, adapter, self.channel.put_many, self.rest,
                                 backpressure=self.channel.backpressure, resume=self.channel.request_resume)
            await self.md.start()
        if self.listings_on:
            self._poll_task = asyncio.create_task(self._poll_loop(), name=f"{self.exchange}-poll")
            if cfg.listing_push:
                await self._start_push(adapter)
        self._start_test_hooks()
        link.ready()
        log.info("%s worker running (trades: %d symbols, market data: %s, listings: %s)", self.exchange,
                 len(cfg.symbols) if cfg.trades else 0, cfg.market_data, self.listings_on)

        await link.stop_requested.wait()
        stop_started = time.monotonic()
        granted = link.stop_budget if link.stop_budget is not None else self.settings.supervisor.stop_timeout
        grace = max(0.5, granted * 0.8)
        log.info("%s worker stopping", self.exchange)
        await self._stop_sources()
        await self.channel.close(stop_started + grace)
        log.info("%s worker stopped: %d events delivered, %d dropped", self.exchange,
                 self.channel.events_out, self.channel.drops)
        return EXIT_PARENT_GONE if link.parent_gone else EXIT_OK

    async def _start_push(self, adapter: ExchangeAdapter) -> None:
        polled = {req.market for req in adapter.instruments_requests()}
        assert self.cfg is not None and self.channel is not None
        for feed, streams in adapter.listing_feeds():
            def sink(infos: list[InstrumentInfo], rx_ms: int, polled: set[str] = polled) -> None:
                self._on_pushed_instruments(infos, rx_ms, polled)
            mgr = WsManager(feed, self.cfg, self.channel.put_many, instruments_sink=sink)
            await mgr.start(streams)
            self.push.append(mgr)

    def _on_pushed_instruments(self, infos: list[InstrumentInfo], rx_ms: int, polled: set[str]) -> None:
        """A push frame's instruments -> one partial ``instruments`` frame per market. Markets the
        poll does not cover are left out: without a polled baseline they could never be seeded."""
        assert self.channel is not None
        by_market: dict[str, dict[str, dict[str, str]]] = {}
        for info in infos:
            if info.market in polled:
                by_market.setdefault(info.market, {})[info.native_symbol] = info.to_wire()
        for market, rows in by_market.items():
            self.pushed_updates += 1
            self.channel.send_instruments(market, False, f"ws_{self.exchange}", rx_ms, rows)

    async def _stop_sources(self) -> None:
        """Stop everything that produces events (no new data is accepted after this)."""
        for t in self._hook_tasks:
            t.cancel()
        if self._poll_task is not None:
            self._poll_task.cancel()
        await asyncio.gather(*self._hook_tasks, *([self._poll_task] if self._poll_task else []),
                             return_exceptions=True)
        if self.md is not None:
            await self.md.stop()
        for mgr in self.push:
            try:
                await asyncio.wait_for(mgr.stop(), 5.0)
            except (asyncio.TimeoutError, Exception):  # noqa: BLE001 - stopping must go on
                log.warning("%s: WebSocket stop did not finish cleanly", self.exchange)
        if self.rest is not None:
            await self.rest.close()

    # ---- listing detection: instruments poller ----
    async def _poll_loop(self) -> None:
        assert self.cfg is not None and self.adapter is not None
        by_market: dict[str, list[InstrumentsRequest]] = {}
        for req in self.adapter.instruments_requests():
            by_market.setdefault(req.market, []).append(req)
        while True:
            started = time.monotonic()
            # one poll round fetches each URL once, even when several markets read the same body
            # (Phemex, WhiteBIT list spot and perp in one response)
            round_cache: dict[str, tuple[Any, int]] = {}
            for market, requests in by_market.items():
                try:
                    await self.poll_market(market, requests, round_cache)
                except asyncio.CancelledError:
                    raise
                except Exception:  # noqa: BLE001 - one bad poll must not end polling
                    log.exception("%s: instruments poll failed unexpectedly", self.exchange)
                    self.last_error = f"{self.exchange} instruments poll: internal error"
            # jitter only shortens the wait: polls spread out, yet no gap exceeds poll_interval, so
            # a listing is seen within one interval (plus the request) at worst
            interval = self.cfg.poll_interval * (1.0 - random.uniform(0.0, self.cfg.poll_jitter))
            await asyncio.sleep(max(0.0, started + interval - time.monotonic()))

    async def poll_market(self, market: str, requests: list[InstrumentsRequest],
                          round_cache: dict[str, tuple[Any, int]] | None = None) -> bool:
        """Every request (and page) of one market -> one full ``instruments`` frame.

        True when a frame was sent. Any failed request, page or unparsable body means no frame
        for this poll: a partial list must never pass for the full one (it would look like
        delistings downstream)."""
        assert self.adapter is not None and self.channel is not None
        merged: dict[str, dict[str, str]] = {}
        rejected = 0
        received_at = 0
        for first in requests:
            req: InstrumentsRequest | None = first
            pages = 0
            while req is not None:
                pages += 1
                if pages > MAX_INSTRUMENT_PAGES:
                    self._poll_failed(f"{self.exchange} instruments: more than {MAX_INSTRUMENT_PAGES} pages")
                    return False
                fetched = await self._fetch_instruments(req, round_cache)
                if fetched is None:
                    return False
                parsed, body, at = fetched
                rejected += parsed.rejected
                received_at = max(received_at, at)
                for info in parsed:
                    merged[info.native_symbol] = info.to_wire()
                req = self.adapter.next_instruments_page(req, body)
        self.poll_rejected += rejected
        if not merged:
            # an empty list is far likelier a broken response than every symbol delisted
            self._poll_failed(f"{self.exchange} instruments ({market}): empty list ({rejected} rejected)")
            return False
        if self._poll_failing:
            log.info("%s instruments poll recovered", self.exchange)
            self._poll_failing = False
        self.polls += 1
        self.last_poll_ok_at = received_at
        self.channel.send_instruments(market, True, f"rest_{self.exchange}", received_at, merged)
        return True

    async def _fetch_instruments(self, req: InstrumentsRequest,
                                 round_cache: dict[str, tuple[Any, int]] | None = None,
                                 ) -> tuple[InstrumentList, Any, int] | None:
        assert self.rest is not None and self.adapter is not None
        cached = round_cache.get(req.url) if round_cache is not None else None
        if cached is not None:
            body, received_at = cached
        else:
            try:
                resp = await self.rest.get_json(req.url, weight=req.weight)
            except CircuitOpenError:
                return None  # the breaker logged its transition; nothing to add every poll
            except RestError as exc:
                self._poll_failed(f"{self.exchange} instruments: {exc}")
                return None
            body, received_at = resp.body, resp.received_at_ms
            if round_cache is not None:
                round_cache[req.url] = (body, received_at)
        try:
            parsed = self.adapter.parse_instruments(req.market, body)
        except InstrumentsFormatError as exc:
            self.poll_parse_errors += 1
            self._poll_failed(f"{self.exchange} instruments response rejected: {exc}")
            return None
        return parsed, body, received_at

    def _poll_failed(self, why: str) -> None:
        self.last_error = why
        if not self._poll_failing:
            log.warning("%s", why)
        self._poll_failing = True

    # ---- stats (beat payload) ----
    def stats(self) -> dict[str, Any]:
        ch = self.channel.stats() if self.channel is not None else {}
        push = [m.stats() for m in self.push]
        # the data connections: the market-data feeds (trades included)
        data_ws = [m.stats() for m in self.md.managers] if self.md is not None else []
        rest = self.rest.stats() if self.rest is not None else {}
        self._note_errors()
        circuit = rest.get("circuit", "CLOSED")
        if data_ws:
            states = [s["connection"] for s in data_ws]
            connection = ("connected" if all(st == "connected" for st in states)
                          else "down" if "down" in states else "connecting")
            last_message_at = _latest(data_ws, "last_message_at")
        else:
            connection = "down" if circuit == "OPEN" else "connected"
            last_message_at = self.last_poll_ok_at
        md = self.md.stats() if self.md is not None else None
        out = {
            "exchange": self.exchange,
            "events_out": ch.get("events_out", 0),
            "drops": ch.get("drops", 0),
            "parse_errors": (_total(data_ws, "parse_errors") + self.poll_parse_errors + _total(push, "parse_errors")
                             + (md["poll_parse_errors"] if md else 0)),
            "rejected": (_total(data_ws, "rejected") + self.poll_rejected + _total(push, "rejected")
                         + (md["poll_rejected"] if md else 0)),
            "ws_connections": _total(data_ws, "ws_connections") + _total(push, "ws_connections"),
            "ws_reconnects": _total(data_ws, "ws_reconnects") + _total(push, "ws_reconnects"),
            "push_connections": _total(push, "ws_connections"),
            "push_updates": self.pushed_updates,
            "ws_stale": _total(data_ws, "ws_stale"),
            "rest_calls": rest.get("rest_calls", 0),
            "rest_errors": rest.get("rest_errors", 0),
            "last_message_at": last_message_at,
            "last_event_at": _latest(data_ws, "last_event_at"),
            "connection": connection,
            "stale": any(bool(s.get("stale", False)) for s in data_ws),
            "circuit": circuit,
            "channel": ch.get("channel", "disconnected"),
            "queued_batches": ch.get("queued_batches", 0),
            "last_error": self.last_error,
        }
        if md is not None:
            # flat counters for dashboards, the rest under "md"
            out["subscription_failures"] = md["subscription_failures"]
            out["book_gaps"] = md["book_gaps"]
            out["book_resyncs"] = md["book_resyncs"]
            out["books"] = md["books"]
            out["md"] = md
        return out

    def _note_errors(self) -> None:
        """last_error = the most recent new error of any component (checked once per beat)."""
        comps = [("rest", self.rest), ("channel", self.channel), ("md", self.md),
                 *((f"push{i}", m) for i, m in enumerate(self.push)),
                 *((f"md{i}", m) for i, m in enumerate(self.md.managers if self.md is not None else []))]
        for name, comp in comps:
            err = getattr(comp, "last_error", None) if comp is not None else None
            if err is not None and err != self._seen_errors.get(name):
                self.last_error = err
            self._seen_errors[name] = err

    # ---- test hooks (settings.testing; never set in production) ----
    def _start_test_hooks(self) -> None:
        t = self.settings.testing
        if t.leak_exchange == self.exchange and t.leak_mb_per_s > 0:
            log.warning("TEST HOOK: leaking %.1f MB/s of memory", t.leak_mb_per_s)
            self._hook_tasks.append(asyncio.create_task(_leak_memory(t.leak_mb_per_s)))
        if t.fd_leak_exchange == self.exchange and t.fd_leak_per_s > 0:
            log.warning("TEST HOOK: leaking %.1f file descriptors/s", t.fd_leak_per_s)
            self._hook_tasks.append(asyncio.create_task(_leak_fds(t.fd_leak_per_s)))
        if t.hang_exchange == self.exchange:
            # the marker makes "once" hold across processes: the replacement must run normally
            marker = self.settings.run_dir / f"testing-hang-{self.exchange}.done"
            if not (t.hang_once and marker.exists()):
                log.warning("TEST HOOK: blocking the event loop in %.1fs", t.hang_after_s)
                self._hook_tasks.append(asyncio.create_task(_hang_after(t.hang_after_s, marker)))


def _total(stats: list[dict[str, Any]], key: str) -> int:
    return sum(int(s.get(key, 0)) for s in stats)


def _latest(stats: list[dict[str, Any]], key: str) -> int | None:
    values = [s[key] for s in stats if s.get(key) is not None]
    return max(values) if values else None


async def _leak_memory(mb_per_s: float) -> None:
    held: list[bytearray] = []
    step = 0.1
    chunk = max(1, int(mb_per_s * 1024 * 1024 * step))
    while True:
        # filled with non-zero bytes so every page is touched (counts in RSS)
        held.append(bytearray(b"\x01") * chunk)
        await asyncio.sleep(step)


async def _hang_after(delay_s: float, marker: Path) -> None:
    await asyncio.sleep(delay_s)
    with contextlib.suppress(OSError):
        marker.touch()
    log.warning("TEST HOOK: blocking the event loop now")
    _block_event_loop_forever()


def _block_event_loop_forever() -> None:
    """TEST HOOK: a blocking call on the event loop (the process lives, the loop stops: no beats)."""
    while True:
        time.sleep(3600)  # a signal's Python handler runs and the sleep goes on (PEP 475)


async def _leak_fds(per_s: float) -> None:
    held: list[Any] = []
    interval = 1.0 / per_s
    warned = False
    while True:
        try:
            held.append(open(os.devnull, "rb"))  # noqa: SIM115 - kept open on purpose
        except OSError as exc:
            if not warned:
                log.warning("TEST HOOK: fd leak stopped growing: %s", exc)
                warned = True
        await asyncio.sleep(interval)
