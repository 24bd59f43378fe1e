"""WebSocket connection manager, written once for every exchange feed (adapter or extra channel).

The feed's streams are sharded over connections (at most ``min(adapter limit,
max_streams_per_connection)`` each). Each shard keeps one live connection:

- aiohttp ``ws_connect`` with a ``max_msg_size`` limit and autoping (server pings are answered
  with pongs echoing the payload); client pings only when the adapter's keep-alive says so;
- a receive loop hands each frame to the adapter's pure parser and the wire events to ``sink``;
  binary / garbage / oversized frames and frames the parser chokes on are counted
  (``parse_errors``) and skipped; an oversized or invalid frame makes aiohttp close the
  connection, which is then simply reconnected;
- reconnect with :class:`shared.backoff.Backoff` (``reconnect_initial`` .. ``reconnect_max``,
  jitter), reset once a connection has delivered data for ``stable_after`` seconds;
- stale watchdog: no message at all for ``stale_timeout`` -> close and reconnect (``ws_stale``);
  a *quiet* feed (listing pushes: silent for hours) is watched by protocol ping/pong instead
  (aiohttp heartbeat: a pong missing for half the interval closes the connection);
- instruments a listing push frame carries go to ``instruments_sink`` (partial updates);
- rotation before ``max_connection_age`` and on a server shutdown notice, *with overlap*: the new
  connection is opened and must deliver its first data (bounded wait) before the old one is
  closed. Duplicates during the overlap are expected; the publisher dedups on trade id;
- outgoing messages (subscribes, client pings, application pongs) are paced per connection with
  a :class:`shared.ratelimit.TokenBucket` of ``ws_send_rate`` (Binance counts them all: 5/s);
- per-subscription freshness (market-data feeds): parsers name the subscription a frame belongs
  to (``ParseResult.topic``); a watched topic (the feed's :meth:`WsFeed.watch_topic`) that brings
  no data within ``subscribe_timeout`` of its (re)subscribe, or is silent for
  ``stream_stale_timeout``, is a *subscription failure*: it alone is resubscribed (unsubscribe +
  subscribe on its connection, paced by the feed's resubscribe rate); the 3rd failure in a row
  reconnects that shard only, later ones back off per topic (a bad symbol never churns
  connections). Topics are the configured streams only (bounded);
- :meth:`WsManager.resubscribe` does the same for one stream on request (book resync);
- order-book messages go to ``books_sink`` from the shard's *current* connection only (during a
  rotation overlap the two connections would interleave duplicate diffs); when a shard's
  connection is lost (not rotated) ``on_shard_reset(streams)`` says which streams lost continuity;
- new connections wait for the optional shared ``connect_limiter`` (per-IP connect limits).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from typing import Any, Awaitable, Callable, Sequence

import aiohttp
from aiohttp import WSCloseCode, WSMsgType

from shared.backoff import Backoff
from shared.events import WireEvent
from shared.logutil import LogLimiter
from shared.ratelimit import TokenBucket
from shared.settings import ExchangeSettings
from shared.events import InstrumentInfo
from shared.marketdata import BookMsg
from workers.exchanges.base import ParseResult, WsFeed

from .urls import override_base

log = logging.getLogger(__name__)

Sink = Callable[[list[WireEvent]], None]
#: receives the instruments a listing push frame carried, with the frame's receive time (epoch ms)
InstrumentsSink = Callable[[list[InstrumentInfo], int], None]
#: receives the order-book messages of a frame with its receive time (monotonic ns)
BooksSink = Callable[[list[BookMsg], int], None]
#: told which streams of a shard lost continuity (the shard's connection dropped)
ShardResetHook = Callable[[list[str]], None]

#: subscription failures in a row that reconnect the shard (later ones back off per topic)
TOPIC_STRIKES_RECONNECT = 3
#: the per-topic backoff after that is capped at this, seconds
TOPIC_BACKOFF_MAX = 3600.0

#: close codes aiohttp uses when a frame itself was bad (counted as parse errors)
_BAD_FRAME_CODES = {WSCloseCode.MESSAGE_TOO_BIG, WSCloseCode.INVALID_TEXT, WSCloseCode.PROTOCOL_ERROR,
                    WSCloseCode.UNSUPPORTED_DATA}
_OUTBOX_MAX = 256


class _Conn:
    """One open WebSocket and its tasks."""

    __slots__ = ("ws", "shard", "opened_at", "last_msg", "got_data", "closed", "wake",
                 "rotate_requested", "rotate_not_before", "age_limit", "outbox", "bucket",
                 "tasks", "seq")

    def __init__(self, ws: aiohttp.ClientWebSocketResponse, shard: "_Shard", age_limit: float,
                 send_rate: float, seq: int) -> None:
        now = time.monotonic()
        self.ws = ws
        self.shard = shard
        self.seq = seq
        self.opened_at = now
        self.last_msg = now
        self.got_data = asyncio.Event()
        self.closed = asyncio.Event()
        self.wake = asyncio.Event()
        self.rotate_requested = False
        self.rotate_not_before = 0.0
        self.age_limit = age_limit
        self.outbox: asyncio.Queue[str | bytes | None] = asyncio.Queue(_OUTBOX_MAX)
        # burst 1: messages go out evenly spaced, never a clump that trips a per-second limit
        self.bucket = TokenBucket(send_rate, burst=1.0)
        self.tasks: list[asyncio.Task] = []

    def enqueue(self, msg: str | bytes) -> bool:
        try:
            self.outbox.put_nowait(msg)
            return True
        except asyncio.QueueFull:
            return False


class _Topic:
    """Freshness of one watched subscription (monotonic seconds)."""

    __slots__ = ("since", "last", "strikes", "retry_at")

    def __init__(self, now: float) -> None:
        self.since = now      # (re)subscribed at
        self.last = 0.0       # last data (0 = none yet)
        self.strikes = 0      # failures in a row (data resets it)
        self.retry_at = 0.0   # no check before this (backoff after repeated failures)


class _Shard:
    """A set of streams that share one connection (two during a rotation)."""

    def __init__(self, mgr: "WsManager", index: int, streams: list[str]) -> None:
        self.mgr = mgr
        self.index = index
        self.streams = streams
        self.url = override_base(mgr.feed.ws_url(streams), mgr.cfg.ws_url)
        self.backoff = Backoff(mgr.cfg.reconnect_initial, mgr.cfg.reconnect_max)
        self.current: _Conn | None = None
        self.state = "connecting"
        #: last message on any of this shard's connections (survives reconnects: "stale" flag)
        self.last_msg = time.monotonic()
        self.task: asyncio.Task | None = None
        now = time.monotonic()
        #: watched topics (a subset of ``streams``)
        self.topics: dict[str, _Topic] = {t: _Topic(now) for t in streams if mgr.feed.watch_topic(t)}
        feed = mgr.feed
        self.resub_bucket = TokenBucket(feed.resubscribe_rate, max(1.0, feed.resubscribe_burst))
        #: a resubscribe that needs a new connection (the feed cannot resubscribe live)
        self.reconnect_requested = False

    @property
    def label(self) -> str:
        feed = self.mgr.feed
        return f"{feed.name} ws#{self.index}" if feed.label == "trades" else f"{feed.name} {feed.label} ws#{self.index}"


async def _yield_to_loop() -> None:
    await asyncio.sleep(0)


class WsManager:
    """All WebSocket connections of one exchange worker."""

    def __init__(
        self,
        feed: WsFeed,
        cfg: ExchangeSettings,
        sink: Sink,
        *,
        instruments_sink: InstrumentsSink | None = None,
        stable_after: float = 60.0,
        max_msg_size: int = 4 * 1024 * 1024,
        overlap_timeout: float = 10.0,
        connect_timeout: float = 10.0,
        close_timeout: float = 2.0,
        backpressure: Callable[[], Awaitable[None]] | None = None,
        yield_every: int = 64,
        books_sink: BooksSink | None = None,
        on_shard_reset: ShardResetHook | None = None,
        connect_limiter: TokenBucket | None = None,
    ) -> None:
        self.feed = feed
        self.instruments_sink = instruments_sink
        self.books_sink = books_sink
        self.on_shard_reset = on_shard_reset
        self.connect_limiter = connect_limiter
        # awaited every `yield_every` messages: lets other tasks run while frames arrive back to
        # back (aiohttp returns buffered frames without yielding), and lets a full channel slow
        # the reading down (TCP backpressure) before anything is dropped
        self.backpressure = backpressure or _yield_to_loop
        self.yield_every = max(1, yield_every)
        self.cfg = cfg
        self.sink = sink
        self.stable_after = stable_after
        self.max_msg_size = max_msg_size
        self.overlap_timeout = overlap_timeout
        self.connect_timeout = connect_timeout
        self.close_timeout = close_timeout
        self.per_connection = max(1, min(feed.max_streams_per_connection, cfg.max_streams_per_connection))
        self.send_rate = min(cfg.ws_send_rate, feed.max_send_rate) if feed.max_send_rate > 0 \
            else cfg.ws_send_rate
        self.shards: list[_Shard] = []
        self._shard_of: dict[str, _Shard] = {}
        self._conns: set[_Conn] = set()
        self._session: aiohttp.ClientSession | None = None
        self._stopping = False
        self._conn_seq = 0
        self._tlog = LogLimiter()
        # counters (cumulative)
        self.messages = 0
        self.events = 0
        self.parse_errors = 0
        self.rejected = 0
        self.reconnects = 0
        self.stale_reconnects = 0
        self.rotations = 0
        self.connect_failures = 0
        self.sent = 0
        self.subscription_failures = 0   # watched topics without data in time
        self.resubscribes = 0            # single-stream resubscribes sent (watchdog + requests)
        self.topic_reconnects = 0        # shards reconnected for repeated subscription failures
        self.last_message_at: int | None = None   # epoch ms of the last data frame
        self.last_event_at: int | None = None     # epoch ms of the last frame that produced events
        self.last_error: str | None = None

    # ---- lifecycle ----
    async def start(self, streams: Sequence[str]) -> None:
        streams = list(dict.fromkeys(streams))
        n = self.per_connection
        self.shards = [_Shard(self, i, streams[j:j + n]) for i, j in enumerate(range(0, len(streams), n))]
        self._shard_of = {st: sh for sh in self.shards for st in sh.streams}
        self._session = aiohttp.ClientSession()
        for shard in self.shards:
            shard.task = asyncio.create_task(self._run_shard(shard), name=shard.label)
        log.info("%s: %d streams over %d connection(s)", self.feed.name, len(streams), len(self.shards))

    async def stop(self) -> None:
        """Stop reading (no new data accepted), close every connection."""
        self._stopping = True
        tasks = [s.task for s in self.shards if s.task is not None]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.gather(*(self._close_conn(c) for c in list(self._conns)), return_exceptions=True)
        if self._session is not None:
            await self._session.close()

    # ---- state for stats ----
    def open_connections(self) -> int:
        return sum(1 for c in self._conns if not c.closed.is_set())

    def connection_state(self) -> str:
        if not self.shards:
            return "connected"
        states = [("connected" if s.current is not None and not s.current.closed.is_set() else s.state)
                  for s in self.shards]
        if all(st == "connected" for st in states):
            return "connected"
        if any(st == "down" for st in states):
            return "down"
        return "connecting"

    def is_stale(self) -> bool:
        if self.feed.quiet:
            return False
        now = time.monotonic()
        return any(now - s.last_msg > self.cfg.stale_timeout for s in self.shards)

    def stats(self) -> dict[str, Any]:
        return {
            "ws_connections": self.open_connections(),
            "ws_reconnects": self.reconnects,
            "ws_stale": self.stale_reconnects,
            "ws_rotations": self.rotations,
            "ws_connect_failures": self.connect_failures,
            "ws_messages": self.messages,
            "subscription_failures": self.subscription_failures,
            "resubscribes": self.resubscribes,
            "topic_reconnects": self.topic_reconnects,
            "parse_errors": self.parse_errors,
            "rejected": self.rejected,
            "last_message_at": self.last_message_at,
            "last_event_at": self.last_event_at,
            "connection": self.connection_state(),
            "stale": self.is_stale(),
        }

    # ---- one shard: connect, watch, reconnect, rotate ----
    async def _run_shard(self, shard: _Shard) -> None:
        while not self._stopping:
            try:
                await self._shard_cycle(shard)
                return
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - a bug here must not end this shard's collection
                log.exception("%s: connection manager failed; restarting it", shard.label)
                self.last_error = f"{shard.label} internal error"
                if shard.current is not None:
                    await self._close_conn(shard.current)
                    shard.current = None
                await asyncio.sleep(shard.backoff.next_delay())

    async def _shard_cycle(self, shard: _Shard) -> None:
        first = True
        while not self._stopping:
            if not first:
                delay = shard.backoff.next_delay()
                log.info("%s: reconnecting in %.2fs", shard.label, delay)
                await asyncio.sleep(delay)
            first = False
            try:
                conn = await self._open(shard)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - any failure to connect means: back off, retry
                self.connect_failures += 1
                shard.state = "down"
                self.last_error = f"{shard.label} connect failed: {_describe(exc)}"
                self._tlog.warning(log, f"connect{shard.index}", "%s", self.last_error)
                continue
            shard.current = conn
            shard.state = "connected"
            reason = await self._supervise(shard)
            if self._stopping:
                return
            self.reconnects += 1
            if reason == "stale":
                self.stale_reconnects += 1
            elif reason == "topics":
                self.topic_reconnects += 1
            if shard.current is not None:
                await self._close_conn(shard.current)
            shard.current = None
            shard.state = "connecting"
            self._shard_reset(shard)

    def _shard_reset(self, shard: _Shard) -> None:
        """The shard's connection was lost without overlap: its streams lost continuity."""
        if self.on_shard_reset is None:
            return
        try:
            self.on_shard_reset(list(shard.streams))
        except Exception:  # noqa: BLE001 - a hook bug must not end the shard
            log.exception("%s: shard reset hook failed", shard.label)

    async def _supervise(self, shard: _Shard) -> str:
        """Watch the shard's current connection; return why it must be replaced (no overlap)."""
        # a quiet feed may legitimately say nothing for hours: its liveness is aiohttp's
        # protocol ping/pong heartbeat (a missing pong closes the connection), not data
        stale_timeout = float("inf") if self.feed.quiet else self.cfg.stale_timeout
        tick = max(0.01, min(1.0, self.cfg.stale_timeout / 4))
        if shard.topics:
            tick = max(0.01, min(tick, self.cfg.subscribe_timeout / 4, self.cfg.stream_stale_timeout / 4))
        backoff_reset = False
        while True:
            conn = shard.current
            assert conn is not None
            # wake up when a rotation becomes due (or allowed), not a tick later
            now = time.monotonic()
            due_at = conn.opened_at + conn.age_limit
            wake_in = conn.rotate_not_before - now if (conn.rotate_requested or now >= due_at) else due_at - now
            timeout = min(tick, max(0.01, wake_in))
            try:
                await asyncio.wait_for(conn.wake.wait(), timeout)
            except asyncio.TimeoutError:
                pass
            conn.wake.clear()
            if self._stopping:
                return "stopping"
            now = time.monotonic()
            if conn.closed.is_set():
                code = conn.ws.close_code
                self.last_error = f"{shard.label} connection closed (code {code})"
                log.warning("%s", self.last_error)
                return "closed"
            if not backoff_reset and conn.got_data.is_set() and now - conn.opened_at >= self.stable_after:
                shard.backoff.reset()
                backoff_reset = True
            if now - conn.last_msg >= stale_timeout:
                self.last_error = f"{shard.label} stale: no message for {now - conn.last_msg:.1f}s"
                log.warning("%s; reconnecting", self.last_error)
                return "stale"
            if shard.reconnect_requested:
                shard.reconnect_requested = False
                log.info("%s: reconnecting to resubscribe", shard.label)
                return "resubscribe"
            if shard.topics and self._check_topics(shard, conn, now):
                return "topics"
            due = conn.rotate_requested or now - conn.opened_at >= conn.age_limit
            if due and now >= conn.rotate_not_before:
                why = "server shutdown notice" if conn.rotate_requested else "connection age"
                new = await self._rotate(shard, conn, why)
                if new is not None:
                    shard.current = new
                    backoff_reset = False
                elif conn.closed.is_set():
                    return "closed"
                else:
                    conn.rotate_not_before = time.monotonic() + shard.backoff.next_delay()

    async def _rotate(self, shard: _Shard, old: _Conn, why: str) -> _Conn | None:
        """Open a replacement, wait for its first data (bounded), then close ``old``."""
        self.rotations += 1
        log.info("%s: rotating connection (%s)", shard.label, why)
        try:
            new = await self._open(shard)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001
            self.connect_failures += 1
            self.last_error = f"{shard.label} rotation connect failed: {_describe(exc)}"
            log.warning("%s", self.last_error)
            return None
        first_data = asyncio.ensure_future(new.got_data.wait())
        gone = asyncio.ensure_future(new.closed.wait())
        try:
            await asyncio.wait({first_data, gone}, timeout=self.overlap_timeout,
                               return_when=asyncio.FIRST_COMPLETED)
        finally:
            first_data.cancel()
            gone.cancel()
        if new.closed.is_set():
            await self._close_conn(new)
            log.warning("%s: replacement connection closed during overlap; keeping the old one", shard.label)
            return None
        if not new.got_data.is_set():
            log.info("%s: no data on the replacement within %.1fs; switching anyway",
                     shard.label, self.overlap_timeout)
        # the new connection is the book source from now on (no frame lost while the old closes)
        shard.current = new
        await self._close_conn(old)
        if time.monotonic() - old.opened_at < self.stable_after:
            # rotations in quick succession (e.g. a shutdown notice on every new connection):
            # space them out with the reconnect backoff instead of churning connections
            new.rotate_not_before = time.monotonic() + shard.backoff.next_delay()
        return new

    # ---- one connection ----
    async def _open(self, shard: _Shard) -> _Conn:
        assert self._session is not None
        limiter = self.connect_limiter
        if limiter is not None:
            while not limiter.try_take():
                await asyncio.sleep(max(0.01, limiter.delay_for()))
        ws = await asyncio.wait_for(
            self._session.ws_connect(
                shard.url, autoping=True, heartbeat=self.feed.keepalive.interval if self.feed.quiet else None,
                max_msg_size=self.max_msg_size,
                timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=self.close_timeout),
            ),
            self.connect_timeout,
        )
        self._conn_seq += 1
        age = self.cfg.max_connection_age
        if self.feed.max_connection_lifetime:
            age = min(age, self.feed.max_connection_lifetime * 0.98)
        # spread rotations of several shards so they do not all reconnect at once
        age *= random.uniform(0.95, 1.0)
        conn = _Conn(ws, shard, age, self.send_rate, self._conn_seq)
        self._conns.add(conn)
        for msg in self.feed.subscribe_messages(shard.streams):
            conn.enqueue(msg)
        opened = time.monotonic()
        for topic in shard.topics.values():
            topic.since = opened
        conn.tasks.append(asyncio.create_task(self._reader(conn), name=f"{shard.label}-read"))
        conn.tasks.append(asyncio.create_task(self._writer(conn), name=f"{shard.label}-write"))
        if self.feed.keepalive.client_ping and not self.feed.quiet:
            conn.tasks.append(asyncio.create_task(self._pinger(conn), name=f"{shard.label}-ping"))
        log.info("%s: connected (%d streams)", shard.label, len(shard.streams))
        return conn

    async def _close_conn(self, conn: _Conn) -> None:
        for t in conn.tasks:
            t.cancel()
        await asyncio.gather(*conn.tasks, return_exceptions=True)
        try:
            await asyncio.wait_for(conn.ws.close(), self.close_timeout + 0.5)
        except (asyncio.TimeoutError, Exception):  # noqa: BLE001 - closing a broken socket may fail
            pass
        conn.closed.set()
        self._conns.discard(conn)

    async def _reader(self, conn: _Conn) -> None:
        ws = conn.ws
        shard = conn.shard
        parse = self.feed.parse_ws_message
        sink = self.sink
        TEXT, BINARY, ERROR = WSMsgType.TEXT, WSMsgType.BINARY, WSMsgType.ERROR
        backpressure, yield_every, since_yield = self.backpressure, self.yield_every, 0
        try:
            while True:
                since_yield += 1
                if since_yield >= yield_every:
                    since_yield = 0
                    await backpressure()
                msg = await ws.receive()
                mtype = msg.type
                if mtype is TEXT or mtype is BINARY:
                    rx_ns = time.monotonic_ns()
                    rx_ms = time.time_ns() // 1_000_000
                    conn.last_msg = shard.last_msg = rx_ns / 1e9
                    self.messages += 1
                    try:
                        res = parse(msg.data, rx_ns, rx_ms)
                    except Exception as exc:  # noqa: BLE001 - a parser bug costs one frame
                        self.parse_errors += 1
                        self._tlog.warning(log, "parser", "%s: parser raised %s; frame skipped",
                                           shard.label, _describe(exc))
                        continue
                    if res.events:
                        sink(res.events)
                        self.events += len(res.events)
                        self.last_event_at = rx_ms
                    if res.data:
                        self.last_message_at = rx_ms
                        if not conn.got_data.is_set():
                            conn.got_data.set()
                        if res.topic is not None and shard.topics:
                            topic = shard.topics.get(res.topic)
                            if topic is not None:
                                topic.last = conn.last_msg
                                topic.strikes = 0
                                topic.retry_at = 0.0
                    if res.books and self.books_sink is not None and conn is shard.current:
                        self.books_sink(res.books, rx_ns)
                    if res.instruments and self.instruments_sink is not None:
                        self.instruments_sink(res.instruments, rx_ms)
                    if res.parse_errors or res.rejected or res.error or res.rotate or res.replies:
                        self._handle_flags(conn, res)
                elif mtype is ERROR:
                    exc = msg.data
                    code = getattr(exc, "code", None)
                    if code in _BAD_FRAME_CODES:
                        self.parse_errors += 1
                        self._tlog.warning(log, "badframe", "%s: bad frame (%s); reconnecting",
                                           shard.label, _describe(exc))
                    else:
                        self.last_error = f"{shard.label} error: {_describe(exc)}"
                    break
                else:  # CLOSE / CLOSING / CLOSED
                    break
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - any reader failure ends this connection only
            self.last_error = f"{shard.label} reader failed: {_describe(exc)}"
            log.warning("%s", self.last_error)
        finally:
            conn.closed.set()
            conn.wake.set()

    def _handle_flags(self, conn: _Conn, res: ParseResult) -> None:
        shard = conn.shard
        if res.parse_errors:
            self.parse_errors += res.parse_errors
            self._tlog.warning(log, "garbage", "%s: malformed frame counted (%d so far)", shard.label, self.parse_errors)
        if res.rejected:
            self.rejected += res.rejected
            self._tlog.warning(log, "rejected", "%s: rejected item with unknown/hostile symbol (%d so far)",
                               shard.label, self.rejected)
        if res.error:
            self.last_error = res.error
            self._tlog.warning(log, "exch-error", "%s: exchange error: %s", shard.label, res.error)
        if res.rotate and not conn.rotate_requested:
            conn.rotate_requested = True
            conn.wake.set()
        for reply in res.replies:
            if not conn.enqueue(reply):
                self._tlog.warning(log, "outbox", "%s: outbox full; reply dropped", shard.label)

    # ---- per-subscription control ----
    def _check_topics(self, shard: _Shard, conn: _Conn, now: float) -> bool:
        """Count and handle silent watched topics; True = reconnect this shard."""
        sub_timeout = self.cfg.subscribe_timeout
        stale = self.cfg.stream_stale_timeout
        bucket = shard.resub_bucket
        for name, t in shard.topics.items():
            if now < t.retry_at:
                continue
            if t.last < t.since:   # nothing since the (re)subscribe
                if now - t.since < sub_timeout:
                    continue
                why = f"no data within {sub_timeout:g}s of subscribing"
            elif now - t.last < stale:
                continue
            else:
                why = f"silent for {now - t.last:.0f}s"
            if not bucket.try_take():
                return False   # resubscribe budget spent: the rest waits for the next tick
            t.strikes += 1
            self.subscription_failures += 1
            self.last_error = f"{shard.label} subscription {name[:80]} failed: {why}"
            self._tlog.warning(log, f"topic{shard.index}", "%s (failure %d in a row)", self.last_error, t.strikes)
            if t.strikes == TOPIC_STRIKES_RECONNECT:
                log.warning("%s: %d subscription failures in a row on %s; reconnecting this connection",
                            shard.label, t.strikes, name[:80])
                return True
            if t.strikes > TOPIC_STRIKES_RECONNECT:
                # reconnecting did not help: a bad or delisted symbol; keep trying it alone, rarely
                t.retry_at = now + min(TOPIC_BACKOFF_MAX, sub_timeout * 2 ** (t.strikes - TOPIC_STRIKES_RECONNECT))
            if not self._send_resubscribe(shard, conn, [name]):
                shard.reconnect_requested = False
                return True
        return False

    def _send_resubscribe(self, shard: _Shard, conn: _Conn, streams: list[str]) -> bool:
        """Unsubscribe + subscribe ``streams`` on ``conn``; False when the feed cannot do it live."""
        msgs = self.feed.resubscribe_messages(streams)
        if msgs is None:
            return False
        for msg in msgs:
            if not conn.enqueue(msg):
                self._tlog.warning(log, "outbox", "%s: outbox full; resubscribe dropped", shard.label)
                return True
        self.resubscribes += 1
        now = time.monotonic()
        for st in streams:
            topic = shard.topics.get(st)
            if topic is not None:
                topic.since = now
        return True

    def resubscribe(self, stream: str) -> bool:
        """Resubscribe ONE stream (e.g. a book whose sequence broke): unsubscribe + subscribe on
        the connection carrying it, or, where the exchange cannot do that live, reconnect only
        that stream's shard. When the shard's resubscribe budget is spent (many books broke at
        once, e.g. an exchange-side reset) that shard is reconnected instead: one new subscription
        resends every snapshot, where single resubscribes would take the budget's hour. False
        when it cannot be done now (unknown stream, not connected): ask again later."""
        shard = self._shard_of.get(stream)
        if shard is None or self._stopping:
            return False
        conn = shard.current
        if conn is None or conn.closed.is_set():
            return False
        if shard.reconnect_requested:
            return True   # already on its way: the new connection subscribes everything
        if shard.resub_bucket.try_take() and self._send_resubscribe(shard, conn, [stream]):
            return True
        shard.reconnect_requested = True
        conn.wake.set()
        return True

    def topic_state(self, stream: str) -> dict[str, Any] | None:
        """Freshness of one watched stream (for stats and tests), None if not watched."""
        shard = self._shard_of.get(stream)
        t = shard.topics.get(stream) if shard is not None else None
        if t is None:
            return None
        return {"strikes": t.strikes, "has_data": t.last >= t.since and t.last > 0}

    async def _writer(self, conn: _Conn) -> None:
        """Send queued messages, paced by the connection's token bucket."""
        bucket = conn.bucket
        while True:
            msg = await conn.outbox.get()
            while not bucket.try_take():
                await asyncio.sleep(bucket.delay_for())
            try:
                if isinstance(msg, bytes):
                    await conn.ws.send_bytes(msg)
                else:
                    await conn.ws.send_str(msg)
                self.sent += 1
            except Exception as exc:  # noqa: BLE001 - the reader notices the dead socket
                self._tlog.warning(log, "send", "%s: send failed: %s", conn.shard.label, _describe(exc))
                return

    async def _pinger(self, conn: _Conn) -> None:
        ka = self.feed.keepalive
        while True:
            await asyncio.sleep(ka.interval)
            if ka.text_ping is not None:
                conn.enqueue(ka.text_ping)
            else:
                while not conn.bucket.try_take():
                    await asyncio.sleep(conn.bucket.delay_for())
                try:
                    await conn.ws.ping(ka.frame_payload)
                except Exception:  # noqa: BLE001 - the reader notices the dead socket
                    return


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{exc.__class__.__name__}: {text[:200]}" if text else exc.__class__.__name__
