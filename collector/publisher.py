"""The publisher process: worker channels -> dedup -> rate limit -> bounded buffer -> Redis.

Data path (one asyncio loop, one process)::

    worker connections (Unix socket, one per worker; each a *producer* with its own batch seq)
      -> per event: events with a natural monotonic id go on as they are (Redis checks them);
         others are deduplicated on their natural key here (window, bounded key count)
      -> a batch becomes *parts* (one EVALSHA of collector/redis_scripts.APPLY_BATCH each): the
         ungated events per 1000, and each event of a rate-limited class on its own
      -> per stream class token bucket (over the rate: wait in order, never dropped)
      -> bounded buffer (full: the publisher stops reading from the workers - backpressure; the
         workers keep their unacknowledged batches, and drop, counted, only past their own bound)
      -> ONE writer task: pre-packed parts pipelined in one write, replies read back
      -> ``{"t":"ack","seq":N}`` to the worker once every part of its batches up to N is in Redis

Delivery is at-least-once from the worker and idempotent in Redis, i.e. effectively exactly once:
each part checks and advances its producer's watermark ``pub:wm:{node_id}:{producer}`` in the
same script that XADDs it, so a part sent again (replies lost, publisher SIGKILLed and restarted,
worker re-sending unacknowledged batches) is skipped whole; events with a natural monotonic id
(trade id, book sequence) are only written above their stream's high-watermark, so two HA nodes
on one Redis put each in the stream once.

Commands are packed with ``hiredis.pack_command`` when an event arrives and written on a raw
connection (:mod:`collector.redis_writer`): redis-py's asyncio client encodes in pure Python and
tops out near 40k XADD/s, pre-packed RESP near 200k/s (research/limits.md 2b). One writer keeps
arrival order per stream. When Redis is unreachable the batch stays at the head of the buffer and is
resent after a backoff (harmless: applying is idempotent); new events accumulate (bounded) and are
delivered in order when it returns.

Listing detection (:mod:`collector.listings`) turns ``instruments`` messages into listing events,
each written with its state change in one MULTI/EXEC through the same ordered writer; the
event's XADD is skipped (redis_scripts.LISTING_EVENT) when Redis already holds that state, which
makes the transaction safe to resend and lets two HA nodes announce a listing once. A heartbeat
hash ``node:heartbeat:{node_id}`` (Node A format plus worker states) is written on a second
connection, so a backlog of events never delays it.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import os
import socket
import stat as stat_mod
import time
from bisect import bisect_left
from collections import deque
from typing import Any

import hiredis
import orjson

from collector.listings import (
    InstrumentsError, ListingTracker, ListingUpdate, decode_state, listing_params, load_commands,
    pairs_key, parse_instruments_msg, state_commands, state_field,
)
from collector import redis_scripts as scripts
from collector.logs import setup_logging
from collector.redis_writer import RedisConnection, RedisUnavailable, is_transient_error
from collector.spool import Spool, SpoolError, pack_part, unpack_part
from shared import __version__, ipc
from shared.backoff import Backoff
from shared.child import StatusLink, run_child
from shared.dedup import Deduper
from shared.logutil import LogLimiter
from shared.events import (
    EV_DELISTING, EV_LISTING, EV_PRE_LISTING, EV_STATUS_CHANGE, fields_to_dict, now_ms,
)
from shared.ratelimit import TokenBucket
from shared.symbols import NAME_RE
from shared.settings import Settings
from shared.states import EXIT_CONFIG, EXIT_CRASH, EXIT_OK

log = logging.getLogger("collector.publisher")

#: publish latency histogram upper bounds, seconds (frame receipt -> XADD acknowledged)
LATENCY_BOUNDS: tuple[float, ...] = (
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60,
)
#: a connection must say hello within this long
HELLO_TIMEOUT = 10.0
#: events ingested from one connection before yielding to the loop (lets the writer run); also
#: the size of an ungated part (its index = event position // PART_EVENTS, the same on a re-send)
YIELD_EVERY = 1000
PART_EVENTS = YIELD_EVERY
#: events per frame at most (a gated event's part index is its position: < redis_scripts.PART_SLOTS)
MAX_FRAME_EVENTS = scripts.PART_SLOTS - 1
#: an ack is skipped (a later cumulative one replaces it) while a worker does not read its socket
_ACK_BACKLOG_MAX = 1 << 20
#: producer ids as workers send them in hello ([A-Za-z0-9_.:-], bounded)
_PRODUCER_MAX = 128
_MAX_STREAM_KEY = 512
#: trade streams one resume question may name
_RESUME_MAX_STREAMS = 10_000
#: the trade tapes a resume question may name (Binance spot aggregates are a tape of their own) and
#: the entry types of theirs that are trades (not ``trade_gap`` markers)
_RESUME_STREAM_PREFIXES = ("md:trade:", "md:agg_trade:")
_RESUME_ENTRY_TYPES = (b"trade", b"agg_trade")
LISTING_CLASS = "listing"
#: spool replay: bytes read per spool read (records already in memory beyond the buffer bound)
SPOOL_READ_BYTES = 1024 * 1024
#: spool replay: poll interval while replayed records are still on their way to Redis
SPOOL_POLL = 0.01


async def _wait_event(event: asyncio.Event, timeout: float) -> bool:
    """True when ``event`` is set within ``timeout``. (asyncio.timeout, not wait_for: on 3.11
    wait_for can swallow a cancellation that races with completion, and a task would never stop.)"""
    try:
        async with asyncio.timeout(timeout):
            await event.wait()
        return True
    except TimeoutError:
        return False


class StreamStats:
    """Counters of one ``exchange|class``."""

    __slots__ = ("exchange", "cls", "key", "in_", "pushed", "deduped", "dropped", "rate_limited")

    def __init__(self, exchange: str, cls: str) -> None:
        self.exchange = exchange
        self.cls = cls
        self.key = f"{exchange}|{cls}"  # as spooled parts name their events' counters
        self.in_ = 0
        self.pushed = 0
        self.deduped = 0
        self.dropped = 0
        self.rate_limited = 0

    def as_dict(self) -> dict[str, int]:
        return {"in": self.in_, "pushed": self.pushed, "deduped": self.deduped,
                "dropped": self.dropped, "rate_limited": self.rate_limited}


class LatencyHistogram:
    """Prometheus-style histogram: counts per upper bound, plus sum and count."""

    def __init__(self, bounds: tuple[float, ...] = LATENCY_BOUNDS) -> None:
        self.bounds = list(bounds)
        self.counts = [0] * (len(bounds) + 1)  # last slot: above the largest bound
        self.sum = 0.0
        self.count = 0

    def observe(self, seconds: float) -> None:
        self.counts[bisect_left(self.bounds, seconds)] += 1
        self.sum += seconds
        self.count += 1

    def snapshot(self) -> dict[str, Any]:
        cum = 0
        buckets = []
        for le, c in zip(self.bounds, self.counts):
            cum += c
            buckets.append([le, cum])
        return {"buckets": buckets, "sum": round(self.sum, 6), "count": self.count}


class _Gate:
    """A stream class's token bucket and the events waiting for tokens, in arrival order."""

    __slots__ = ("cls", "bucket", "pending", "task")

    def __init__(self, cls: str, rate: float) -> None:
        self.cls = cls
        self.bucket = TokenBucket(rate)
        self.pending: deque[tuple] = deque()
        self.task: asyncio.Task | None = None


class _Conn:
    """One worker connection."""

    __slots__ = ("exchange", "pid", "stats", "writer", "producer")

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.exchange: str | None = None
        self.pid: int | None = None
        self.stats: dict[str, StreamStats] = {}
        self.writer = writer
        self.producer: _Producer | None = None


class _Batch:
    """One worker batch (``events`` frame) until every part of it is in Redis."""

    __slots__ = ("seq", "remaining", "nbytes")

    def __init__(self, seq: int) -> None:
        self.seq = seq
        self.remaining = 1  # a guard held while the frame is being ingested
        self.nbytes = 0     # packed size of its parts (what the worker's unacked window holds, roughly)


class _Producer:
    """A worker incarnation as the watermark knows it: its batches in flight and what is acked.

    Kept while it is connected or has parts in the buffer (bounded by both)."""

    __slots__ = ("pid", "wm_key", "conn", "pending", "pending_bytes", "acked", "max_seq", "ack_due")

    def __init__(self, pid: str, wm_key: str) -> None:
        self.pid = pid
        self.wm_key = wm_key
        self.conn: _Conn | None = None
        self.pending: deque[_Batch] = deque()
        self.pending_bytes = 0  # sum of nbytes of the pending batches
        self.acked = -1        # highest seq with every batch up to it in Redis (this incarnation)
        self.max_seq = -1      # highest seq taken from the socket (a lower one is a re-send)
        self.ack_due = False


class _Part:
    """Buffer item: one EVALSHA of APPLY_BATCH (a worker batch's events of one lane), or one
    replayed from the disk spool (``batch``/``producer`` None, ``ordinal`` its replay position)."""

    __slots__ = ("packed", "n_events", "stats", "rx", "batch", "producer", "gate", "unsure", "ordinal")

    n_replies = 1

    def __init__(self, packed: bytes, stats: list[StreamStats], rx: list[int], batch: _Batch | None,
                 producer: _Producer | None, gate: str | None) -> None:
        self.packed = packed
        self.n_events = len(stats)
        self.stats = stats
        self.rx = rx
        self.batch = batch
        self.producer = producer
        self.gate = gate
        self.unsure = False  # sent in a round whose replies were lost (maybe applied by us)
        self.ordinal: int | None = None


class _Txn:
    """Buffer item: a listing MULTI/EXEC. ``xi`` None: state only; else the index of the listing
    event's EVAL in the EXEC result. ``ev`` = the event name (listing, delisting ...) or None."""

    __slots__ = ("packed", "n_replies", "stat", "rx", "xi", "ev", "n_events")

    gate = LISTING_CLASS

    def __init__(self, packed: bytes, n_replies: int, stat: StreamStats, rx: int, xi: int | None,
                 ev: str | None) -> None:
        self.packed = packed
        self.n_replies = n_replies
        self.stat = stat
        self.rx = rx
        self.xi = xi
        self.ev = ev
        self.n_events = 0 if xi is None else 1


_Item = _Part | _Txn


class Publisher:
    def __init__(self, settings: Settings, link: StatusLink) -> None:
        ps = settings.publisher
        self.settings = settings
        self.link = link
        self.dedup = Deduper(ps.dedup_window, ps.dedup_max_keys)
        self.buffer: deque[_Item] = deque()
        self.buffer_limit = ps.buffer_max_events
        self.pipeline_max = ps.pipeline_max
        #: events in the buffer and the gates (what the limit bounds)
        self.buffered_events = 0
        self.gates: dict[str, _Gate] = {cls: _Gate(cls, r) for cls, r in ps.rate_limits.items() if r and r > 0}
        self.maxlen: dict[str, str] = {cls: str(n) for cls, n in ps.maxlen.items()}
        self.maxlen_default = str(ps.maxlen.get("default", 100_000))
        self.streams: dict[str, StreamStats] = {}
        self.latency = LatencyHistogram()
        self.tracker = ListingTracker(settings.node_id, params=listing_params(settings))
        #: listing events written to Redis, by event type
        self.listings_by_event: dict[str, int] = dict.fromkeys(
            (EV_PRE_LISTING, EV_LISTING, EV_STATUS_CHANGE, EV_DELISTING), 0)
        self.children: dict[str, Any] = {}
        # RedisEndpoint parsing raises ValueError on a bad URL (a config error)
        # the apply script is loaded on every (re)connection, so EVALSHA finds it after a restart
        self.data_conn = RedisConnection(settings.redis, name="data", init_commands=scripts.LOAD_COMMANDS)
        self.ctl_conn = RedisConnection(settings.redis, name="control")
        self.redis_up = False
        self.redis_down_since: int | None = now_ms()  # unknown until the first connect
        self.redis_errors = 0
        #: why Redis was last unreachable (TLS, AUTH, refused ...); shown in status while down
        self.redis_last_error: str | None = None
        self.errors = 0
        self.frame_errors = 0
        self.invalid_events = 0
        self.listings_emitted = 0
        self.last_push_at: int | None = None
        self.heartbeats = 0
        self.started_wall = time.time()
        self._conns: set[_Conn] = set()
        self._conn_tasks: set[asyncio.Task] = set()
        self._inflight = 0
        self.incarnation = os.urandom(6).hex()
        self._anon = 0
        self.producers: dict[str, _Producer] = {}
        self._ack_due: set[_Producer] = set()
        self._wm_ttl = str(ps.producer_ttl)
        self._hwm_ttl = str(ps.hwm_ttl)
        self._key_ttl = str(max(1, int(ps.dedup_window)))
        #: HA pairs: events without a monotonic id are deduplicated by key in Redis as well
        self.cross_node_dedup = ps.cross_node_dedup
        #: rounds whose replies were lost (connection cut): written again, skipped where applied
        self.rounds_resent = 0
        #: parts the watermark said were applied already (a re-send); not written twice
        self.parts_already_applied = 0
        #: re-sent batches this publisher had taken already (dropped on arrival, acked when done)
        self.batches_resent_ignored = 0
        #: events skipped in Redis as duplicates (stream high-watermark, keyed, listing state)
        self.redis_duplicates = 0
        self.acks_sent = 0
        self._reload_scripts = False
        self._room = asyncio.Event()
        self._room.set()
        self._work = asyncio.Event()
        self._redis_up_evt = asyncio.Event()
        self._listing_wake = asyncio.Event()
        self._hb_wake = asyncio.Event()
        self._server: asyncio.AbstractServer | None = None
        self._logl = LogLimiter()
        # ---- disk spool (see "Disk spool" in the README and _start_spill) ----
        self.spool: Spool | None = None
        #: why the spool could not be opened (then a long outage means backpressure, as without it)
        self.spool_error: str | None = None
        #: worker parts go to the spool instead of memory (from the first spill until it is replayed)
        self.spilling = False
        #: events lost because the spool refused their part (full) or lost it (write error)
        self.spool_dropped_events = 0
        self.spool_last_drop_at: int | None = None  # wall ms
        #: replayed records that could not be decoded (counted, skipped)
        self.spool_bad_records = 0
        self.spilled_parts = 0
        self.replayed_parts = 0
        #: replayed parts spooled longer ago than producer_ttl: replayed all the same (never
        #: applied, as a rule), but their producer watermark may have expired, so one applied just
        #: before a crash could be written twice (see "Disk spool" in the README)
        self.replayed_past_ttl = 0
        self._producer_ttl_ms = ps.producer_ttl * 1000
        #: spilled parts waiting to be durable, in spool order: (spool seq, part)
        self._spooled: deque[tuple[int, _Part]] = deque()
        self._spooled_evt = asyncio.Event()
        self._spill_evt = asyncio.Event()
        self._replay_next = 0          # ordinal of the next record read from the spool
        self._replay_acked = 0         # records acknowledged to the spool (a prefix of the ordinals)
        self._replay_done: list[int] = []  # settled ordinals beyond that prefix (min-heap)
        self._spool_reading = False    # a spool read runs in a thread (close waits for it)
        # spill before a worker's unacknowledged window fills (it would stop sending, and past
        # its queue drop): half its batch and byte bounds (the workers read the same settings)
        ch = settings.channel
        self._spill_batches = max(1, ch.max_unacked_batches // 2)
        self._spill_bytes = max(1, ch.max_unacked_bytes // 2)

    # ------------------------------------------------------------------ stats
    def _stat(self, exchange: str, cls: str) -> StreamStats:
        key = f"{exchange}|{cls}"
        st = self.streams.get(key)
        if st is None:
            st = self.streams[key] = StreamStats(exchange, cls)
        return st

    def _stat_of(self, key: str) -> StreamStats:
        exchange, _, cls = key.partition("|")
        return self._stat(exchange, cls or "unknown")

    def buffered(self) -> int:
        return self.buffered_events

    def stats(self) -> dict[str, Any]:
        """The beat payload for the parent (stats contract in the team brief)."""
        return {
            "streams": {k: s.as_dict() for k, s in self.streams.items()},
            "redis": "up" if self.redis_up else "down",
            "redis_down_since": self.redis_down_since,
            "redis_errors": self.redis_errors,
            "buffered": self.buffered(),
            "buffer_limit": self.buffer_limit,
            "latency": self.latency.snapshot(),
            "last_push_at": self.last_push_at,
            "listings_emitted": self.listings_emitted,
            "listings_by_event": dict(self.listings_by_event),
            "listing_snapshots_truncated": self.tracker.truncated_snapshots,
            "listing_snapshots_empty": self.tracker.ignored_empty,
            "workers_connected": sorted({c.exchange for c in self._conns if c.exchange}),
            "frame_errors": self.frame_errors,
            "errors": self.errors,
            "last_error": None if self.redis_up else self.redis_last_error,
            # idempotent delivery (see the module docstring)
            "delivery": {
                "rounds_resent": self.rounds_resent, "parts_already_applied": self.parts_already_applied,
                "batches_resent_ignored": self.batches_resent_ignored,
                "redis_duplicates": self.redis_duplicates, "acks_sent": self.acks_sent,
                "producers": len(self.producers),
            },
            "spool": self.spool_stats(),
            # cumulative counters the parent carries across publisher restarts (metrics)
            "spool_dropped_events": self.spool_dropped_events,
            "spool_corrupt_records": (self.spool.corrupt_records + self.spool_bad_records) if self.spool else 0,
            "spool_write_errors": self.spool.write_errors if self.spool else 0,
        }

    def spool_stats(self) -> dict[str, Any] | None:
        """The spool's state for status, heartbeat and metrics; None when it is disabled."""
        if self.spool is None:
            return {"error": self.spool_error} if self.spool_error else None
        st: dict[str, Any] = dict(self.spool.stats())
        st.update({
            "spilling": self.spilling,
            "events_dropped": self.spool_dropped_events,
            "last_drop_at": self.spool_last_drop_at,
            "bad_records": self.spool_bad_records,
            "spilled_parts": self.spilled_parts,
            "replayed_parts": self.replayed_parts,
            "replayed_past_ttl": self.replayed_past_ttl,
            "dir": str(self.spool.directory),
        })
        return st

    def _on_parent_message(self, msg: dict) -> None:
        if msg.get("t") == "children" and isinstance(msg.get("children"), dict):
            self.children = msg["children"]

    # ------------------------------------------------------------------ main
    async def run(self) -> int:
        try:
            self._server = await self._listen()
        except OSError as exc:
            log.error("cannot listen on %s: %s", self.settings.publisher_socket, exc)
            return EXIT_CRASH
        await self._open_spool()
        await self.link.start(self.stats, self._on_parent_message)
        tasks = {
            "writer": asyncio.create_task(self._writer_loop(), name="writer"),
            "listings": asyncio.create_task(self._listing_loop(), name="listings"),
            "heartbeat": asyncio.create_task(self._heartbeat_loop(), name="heartbeat"),
        }
        if self.spool is not None:
            tasks["spool_settle"] = asyncio.create_task(self._settle_loop(), name="spool-settle")
            tasks["spool_replay"] = asyncio.create_task(self._replay_loop(), name="spool-replay")
        self.link.ready()
        log.info("publisher ready on %s (redis %s)", self.settings.publisher_socket,
                 self.data_conn.endpoint.describe())
        stop = asyncio.create_task(self.link.stop_requested.wait())
        # a crashed internal task is a crashed publisher (the parent restarts it)
        done, _ = await asyncio.wait([stop, *tasks.values()], return_when=asyncio.FIRST_COMPLETED)
        if stop not in done:
            stop.cancel()
            for name, t in tasks.items():
                if t in done and not t.cancelled() and t.exception() is not None:
                    log.error("internal task %s failed", name, exc_info=t.exception())
            self.link.request_stop()
        return await self._shutdown(tasks)

    async def _open_spool(self) -> None:
        """Open (or resume) the disk spool; without it a long Redis outage means backpressure."""
        ps = self.settings.publisher
        if not ps.spool_enabled:
            return
        spool = Spool(self.settings.spool_directory, max_bytes=ps.spool_max_bytes,
                      segment_bytes=min(ps.spool_segment_bytes, ps.spool_max_bytes),
                      fsync=ps.spool_fsync, fsync_interval_ms=ps.spool_fsync_interval_ms)
        try:
            await asyncio.to_thread(spool.open)
        except SpoolError as exc:
            self.spool_error = str(exc)[:300]
            log.error("disk spool unavailable, a long Redis outage will hold the workers back "
                      "instead: %s", exc)
            return
        self.spool = spool
        if spool.pending() > 0:
            # records from before a restart go to Redis before any new event: new parts join
            # them in the spool until it is replayed
            self.spilling = True
            self._spill_evt.set()
            log.info("disk spool holds %d records from before; replaying them before new events",
                     spool.pending())

    async def _listen(self) -> asyncio.AbstractServer:
        path = self.settings.publisher_socket
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            pass
        else:
            if not stat_mod.S_ISSOCK(st.st_mode):
                raise OSError(f"{path} exists and is not a socket")
            os.unlink(path)  # stale socket from a previous run (the parent's lock makes us the only one)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old_umask = os.umask(0o177)  # created 0600: no window where others may connect
        try:
            sock.bind(str(path))
        finally:
            os.umask(old_umask)
        os.chmod(path, 0o600)
        sock.listen(64)
        sock.setblocking(False)
        return await asyncio.start_unix_server(
            self._serve_conn, sock=sock, limit=ipc.MAX_FRAME + ipc.HEADER.size,
        )

    # ------------------------------------------------------------------ ingress
    async def _serve_conn(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._conn_tasks.add(task)
        conn = _Conn(writer)
        self._conns.add(conn)
        try:
            async with asyncio.timeout(HELLO_TIMEOUT):
                hello = await ipc.read_frame(reader)
            if hello is None:
                return
            if not isinstance(hello, dict) or hello.get("t") != "hello":
                raise ipc.FrameError("the first frame must be a hello")
            exchange = hello.get("exchange")
            if not isinstance(exchange, str) or not NAME_RE.match(exchange):
                raise ipc.FrameError("hello: bad exchange name")
            conn.exchange = exchange
            pid = hello.get("pid")
            conn.pid = pid if type(pid) is int else None
            prod = conn.producer = self._attach_producer(conn, hello.get("producer"))
            log.info("worker %s connected (pid %s, producer %s)", exchange, conn.pid, prod.pid)
            since_yield = 0
            while True:
                msg = await ipc.read_frame(reader)
                if msg is None:
                    break
                kind = msg.get("t") if type(msg) is dict else None
                if kind == "events":
                    events = msg.get("events")
                    seq = msg.get("seq")
                    if type(events) is not list:
                        raise ipc.FrameError("events: 'events' must be a list")
                    if type(seq) is not int or not 0 <= seq <= scripts.MAX_SEQ:
                        raise ipc.FrameError("events: 'seq' must be an integer >= 0")
                    if len(events) > MAX_FRAME_EVENTS:
                        raise ipc.FrameError(f"events: more than {MAX_FRAME_EVENTS} events in one frame")
                    if seq <= prod.max_seq:
                        # a re-send of a batch taken already (the worker reconnected before our
                        # ack reached it): it is in the buffer or in Redis; ack it when it is
                        self.batches_resent_ignored += 1
                        if seq <= prod.acked:
                            self._ack_due.add(prod)
                            self._send_acks()
                        continue
                    if self.buffered_events >= self.buffer_limit or not self.redis_up:
                        await self._wait_room(prod)
                    prod.max_seq = seq
                    batch = _Batch(seq)
                    prod.pending.append(batch)
                    for k in range(0, len(events), PART_EVENTS):
                        self._ingest(conn, prod, batch, events, k)
                        since_yield += PART_EVENTS
                        if since_yield >= YIELD_EVERY:  # a huge frame must not hold the loop
                            since_yield = 0
                            await asyncio.sleep(0)
                    self._part_done(batch, prod)  # the ingest guard
                    self._work.set()
                    if self._ack_due:
                        self._send_acks()
                elif kind == "instruments":
                    try:
                        parsed = parse_instruments_msg(msg)
                    except InstrumentsError as exc:
                        raise ipc.FrameError(str(exc)) from None
                    if parsed.invalid:
                        self.errors += parsed.invalid
                        if self._logl.ok(f"inst-invalid-{exchange}"):
                            log.warning("%s: %d malformed instruments skipped", exchange, parsed.invalid)
                    self.tracker.submit(parsed)
                    self._listing_wake.set()
                elif kind == "hello":
                    continue
                elif kind == "resume?":
                    await self._answer_resume(writer, msg)
                else:
                    raise ipc.FrameError(f"unknown frame type {str(kind)[:40]!r}")
        except asyncio.TimeoutError:
            self.frame_errors += 1
            log.warning("connection closed: no hello within %.0fs", HELLO_TIMEOUT)
        except ipc.FrameError as exc:
            self.frame_errors += 1
            log.warning("closing connection of worker %s: %s (frame_errors=%d)",
                        conn.exchange or "?", str(exc)[:200], self.frame_errors)
        except (ConnectionError, OSError) as exc:
            log.info("connection of worker %s lost: %s", conn.exchange or "?", exc.__class__.__name__)
        finally:
            self._conns.discard(conn)
            self._conn_tasks.discard(task)
            prod = conn.producer
            if prod is not None and prod.conn is conn:
                prod.conn = None
                self._forget_idle_producer(prod)
            writer.close()
            if conn.exchange:
                log.info("worker %s disconnected", conn.exchange)

    async def _answer_resume(self, writer: asyncio.StreamWriter, msg: dict) -> None:
        """``resume?`` from a (re)started worker (workers/gapfill.py resumes its trade streams from
        here): each stream's high-watermark and newest stored trade, or ``error`` while Redis is
        unreachable (the worker asks again)."""
        streams = msg.get("streams")
        if (type(streams) is not list or len(streams) > _RESUME_MAX_STREAMS
                or not all(type(s) is str and s.startswith(_RESUME_STREAM_PREFIXES)
                           and len(s) <= _MAX_STREAM_KEY for s in streams)):
            raise ipc.FrameError("resume?: 'streams' must be a list of trade stream keys")
        answer: dict[str, Any] = {"t": "resume", "error": "redis unavailable"}
        if self.redis_up and streams:
            cmds = [c for s in streams for c in (("GET", scripts.HWM_PREFIX + s), ("XREVRANGE", s, "+", "-", "COUNT", "4"))]
            try:
                replies = await self.ctl_conn.execute_packed(b"".join([hiredis.pack_command(c) for c in cmds]),
                                                             len(cmds))
            except RedisUnavailable as exc:
                answer["error"] = str(exc)[:200]
            else:
                hwm: dict[str, str] = {}
                last: dict[str, list[Any]] = {}
                for s, h, entries in zip(streams, replies[0::2], replies[1::2]):
                    if type(h) is bytes:
                        hwm[s] = h.decode()
                    for entry in entries if type(entries) is list else ():
                        f = dict(zip(entry[1][0::2], entry[1][1::2])) if type(entry) is list and len(entry) == 2 \
                            and type(entry[1]) is list else {}
                        if f.get(b"type") in _RESUME_ENTRY_TYPES and f.get(b"ts_exchange", b"").isdigit():
                            last[s] = [f.get(b"trade_id", b"").decode(errors="replace"), int(f[b"ts_exchange"])]
                            break
                answer = {"t": "resume", "hwm": hwm, "last": last}
        elif self.redis_up:
            answer = {"t": "resume", "hwm": {}, "last": {}}
        ipc.write_frame(writer, answer)

    # ---- producers and acks ----
    def _attach_producer(self, conn: _Conn, given: Any) -> _Producer:
        """The producer record of this connection. Workers send a producer id unique per worker
        process (exchange + start id); without one the connection is its own producer."""
        if given is None:
            self._anon += 1
            pid = f"{conn.exchange}.anon-{self.incarnation}-{self._anon}"
        elif (type(given) is not str or not 0 < len(given) <= _PRODUCER_MAX
              or not given.replace("-", "").replace("_", "").replace(".", "").replace(":", "").isalnum()
              or not given.isascii()):
            raise ipc.FrameError("hello: bad producer id")
        else:
            pid = given
        prod = self.producers.get(pid)
        if prod is None:
            prod = self.producers[pid] = _Producer(pid, f"{scripts.WATERMARK_PREFIX}{self.settings.node_id}:{pid}")
        prod.conn = conn  # a reconnect takes over (the old connection, if any, is dying)
        if prod.acked >= 0:
            self._ack_due.add(prod)  # tell the reconnected worker what is done at once
            self._send_acks()
        return prod

    def _forget_idle_producer(self, prod: _Producer) -> None:
        if prod.conn is None and not prod.pending and self.producers.get(prod.pid) is prod:
            del self.producers[prod.pid]
            self._ack_due.discard(prod)

    def _part_done(self, batch: _Batch, prod: _Producer) -> None:
        """One part of ``batch`` is settled (in Redis, a duplicate, or failed for good)."""
        batch.remaining -= 1
        if batch.remaining:
            return
        pending = prod.pending
        advanced = False
        while pending and pending[0].remaining == 0:
            done = pending.popleft()
            prod.acked = done.seq
            prod.pending_bytes -= done.nbytes
            advanced = True
        if advanced:
            self._ack_due.add(prod)
            if not pending and prod.conn is None:
                self._forget_idle_producer(prod)

    def _send_acks(self) -> None:
        """Cumulative acks to the workers whose acked seq advanced. An ack to a worker that does
        not read its socket is skipped (bounded): the next one covers it."""
        for prod in self._ack_due:
            conn = prod.conn
            if conn is None:
                continue
            w = conn.writer
            if w.is_closing() or w.transport.get_write_buffer_size() > _ACK_BACKLOG_MAX:
                continue
            ipc.write_frame(w, {"t": "ack", "seq": prod.acked})
            self.acks_sent += 1
        self._ack_due.clear()

    async def _wait_room(self, prod: _Producer | None = None) -> None:
        """Before a batch is taken while Redis is down or the buffer is full.

        With a spool, Redis down and memory running out (buffer full, or this worker's
        unacknowledged batches at half its window, after which it would stop sending and then
        drop): start spilling (:meth:`_start_spill`). Otherwise, while the buffer is full, stop
        reading from this worker until the writer makes room; the worker keeps its
        unacknowledged batches (bounded, counted drops past its own bound)."""
        while True:
            if not self.spilling and not self.redis_up:
                self._maybe_spill(prod)
            if self.spilling or self.buffered_events < self.buffer_limit:
                return
            self._room.clear()
            await self._room.wait()

    # ---- disk spool ----
    def _maybe_spill(self, prod: _Producer | None = None) -> bool:
        """Start spilling if Redis is down and memory is running out (see _wait_room). Not while
        a round is in flight: its parts stay at the buffer head, so the spool could not hold
        everything in order (needed: a part applied after a later one of its producer and
        lane is skipped by the watermark)."""
        if self.spool is None or self.spilling or self.redis_up or self._inflight:
            return False
        full = self.buffered_events >= self.buffer_limit
        if not full:
            prods = (prod,) if prod is not None else self.producers.values()
            full = any(len(p.pending) >= self._spill_batches or p.pending_bytes >= self._spill_bytes
                       for p in prods)
        if full:
            self._start_spill()
        return full

    def _start_spill(self) -> None:
        """Move every worker part held in memory to the spool, oldest first (the buffer, then
        the rate limiters' queues: per lane, the buffer holds the older parts), and send every
        later one there too until the spool is replayed. So while spilling no worker part lives
        only in memory: after a crash the spool holds, in order, every part a worker was told is
        done, and the re-sent rest lands behind it. Listing transactions stay in memory."""
        assert self.spool is not None and not self._inflight
        self.spilling = True
        self._spill_evt.set()
        moved = 0
        keep: list[_Item] = []
        for item in self.buffer:
            if type(item) is _Part and item.ordinal is None:
                moved += item.n_events
                self._spill_part(item)
            else:
                keep.append(item)
        self.buffer.clear()  # in place: the writer holds a reference
        self.buffer.extend(keep)
        for gate in self.gates.values():
            waiting = [it for it in gate.pending if type(it) is not _Part]
            for item in gate.pending:
                if type(item) is _Part:
                    moved += item.n_events
                    self._spill_part(item)
            gate.pending.clear()
            gate.pending.extend(waiting)
        self.buffered_events -= moved
        log.warning("Redis down for %.1fs and the in-memory backlog is at its bound: spilling to the "
                    "disk spool %s (%d buffered events moved)",
                    (now_ms() - self.redis_down_since) / 1000 if self.redis_down_since else 0.0,
                    self.spool.directory, moved)
        self._room.set()

    def _spill_part(self, part: _Part) -> None:
        """Append a worker part to the spool; its batch is settled once the record is durable
        (or at once, its events counted as dropped, when the spool refuses it)."""
        spool = self.spool
        assert spool is not None
        # the ingest wall time, from the part's first receive time (same monotonic clock)
        age_ms = max(0, (time.monotonic_ns() - part.rx[0]) // 1_000_000) if part.rx else 0
        try:
            payload = pack_part(part.packed, [st.key for st in part.stats], now_ms() - age_ms)
        except ValueError:
            seq = None
        else:
            seq = spool.append(payload)
        part.packed = b""  # the spool holds the bytes now
        part.rx = []
        self.spilled_parts += 1
        if seq is None:
            self._spool_drop(part)
            if part.batch is not None and part.producer is not None:
                self._part_done(part.batch, part.producer)
        else:
            self._spooled.append((seq, part))
            self._spooled_evt.set()

    def _spool_drop(self, part: _Part) -> None:
        """A part the spool refused (full, write-error backoff, too large) or lost (write error):
        its events are dropped, counted per stream and in spool_dropped_events."""
        for st in part.stats:
            st.dropped += 1
        self.spool_dropped_events += part.n_events
        self.spool_last_drop_at = now_ms()
        if self._logl.ok("spool-drop"):
            spool = self.spool
            log.error("disk spool full or failing (%s): events dropped (%d so far)",
                      spool.last_error if spool is not None and spool.last_error else "size bound reached",
                      self.spool_dropped_events)

    async def _settle_loop(self) -> None:
        """Spilled parts, in spool order: once durable, settle their batches and ack the workers."""
        spool = self.spool
        assert spool is not None
        q = self._spooled
        while True:
            if not q:
                self._spooled_evt.clear()
                await self._spooled_evt.wait()
                continue
            seq, part = q[0]
            ok = await spool.wait_durable(seq)
            q.popleft()
            if not ok:
                self._spool_drop(part)
            if part.batch is not None and part.producer is not None:
                self._part_done(part.batch, part.producer)
            if self._ack_due and (not q or q[0][0] > spool.durable_seq):
                self._send_acks()

    async def _replay_loop(self) -> None:
        """While spilling and Redis is up: feed spool records to the buffer tail, in order,
        keeping the buffer at most about half full (new events keep going to the spool); when
        every record is read and settled in Redis, stop spilling."""
        spool = self.spool
        assert spool is not None
        half = max(1, self.buffer_limit // 2)
        while True:
            if not self.spilling:
                self._spill_evt.clear()
                await self._spill_evt.wait()
                continue
            if not self.redis_up:
                await self._redis_up_evt.wait()
                continue
            room = half - self.buffered_events
            if room <= 0:
                await asyncio.sleep(SPOOL_POLL)
                continue
            self._spool_reading = True
            try:
                # at least one record; about ``room`` events (records hold up to PART_EVENTS)
                records = await asyncio.to_thread(self._read_spool, max(1, min(256, room // 50)))
            except OSError as exc:
                self._spool_reading = False
                if self._logl.ok("spool-read"):
                    log.error("disk spool read failed (will retry): %s", exc)
                await asyncio.sleep(1.0)
                continue
            if records:
                self._enqueue_replayed(records)
            elif spool.pending() == 0:
                # every record is in Redis and none was added since (appends happen on this
                # loop, only while spilling): new parts go to memory again
                self.spilling = False
                log.info("disk spool replayed (%d parts so far); back to the in-memory buffer",
                         self.replayed_parts)
                self._room.set()
            else:
                await asyncio.sleep(SPOOL_POLL)  # replayed records still on their way to Redis

    def _read_spool(self, max_records: int) -> list[bytes]:
        """In a thread: one spool read (shutdown waits for the flag before closing the spool)."""
        try:
            assert self.spool is not None
            return self.spool.read(max_records, SPOOL_READ_BYTES)
        finally:
            self._spool_reading = False

    def _enqueue_replayed(self, records: list[bytes]) -> None:
        now_ns = time.monotonic_ns()
        wall = now_ms()
        for rec in records:
            ordinal = self._replay_next
            self._replay_next += 1
            try:
                packed, keys, wall_ms = unpack_part(rec)
            except ValueError as exc:
                self.spool_bad_records += 1
                self.errors += 1
                if self._logl.ok("spool-bad"):
                    log.error("disk spool: undecodable record skipped (%s); %d so far", exc, self.spool_bad_records)
                self._replay_settled(ordinal)
                continue
            stats = [self.streams.get(k) or self._stat_of(k) for k in keys]
            # the latency histogram includes the time spent in the spool
            age_ms = max(0, wall - wall_ms)
            rx = now_ns - age_ms * 1_000_000
            if age_ms > self._producer_ttl_ms:
                self.replayed_past_ttl += 1
                if self._logl.ok("spool-ttl"):
                    log.warning("replaying spool records older than producer_ttl (%ds): exactly-once "
                                "is not guaranteed for them (%d so far)", self._producer_ttl_ms // 1000,
                                self.replayed_past_ttl)
            part = _Part(packed, stats, [rx] * len(stats), None, None, None)
            part.ordinal = ordinal
            self.buffer.append(part)
            self.buffered_events += part.n_events
            self.replayed_parts += 1
        self._work.set()

    def _replay_settled(self, ordinal: int) -> None:
        """A replayed record is settled (in Redis, applied before, or failed for good): move the
        spool's acknowledged cursor over the contiguous prefix of settled records."""
        done = self._replay_done
        heapq.heappush(done, ordinal)
        n = 0
        while done and done[0] == self._replay_acked:
            heapq.heappop(done)
            self._replay_acked += 1
            n += 1
        if n and self.spool is not None:
            self.spool.ack(n)

    def _ingest(self, conn: _Conn, prod: _Producer, batch: _Batch, events: list, start: int) -> None:
        """The hot path: validate, dedup, build the parts of ``events[start:start+PART_EVENTS]``.

        Ungated events form one part (index = start // PART_EVENTS); each event of a rate-limited
        class forms its own part (index = its position) in that class's lane, so parts of a lane
        reach Redis in order and the same frame always splits the same way (a re-send after a
        publisher restart meets the same watermark positions)."""
        stats_by_cls = conn.stats
        exchange = conn.exchange or "?"
        now = time.monotonic()
        seen = self.dedup.seen
        gates = self.gates
        maxlen = self.maxlen
        maxlen_default = self.maxlen_default
        norm_mono = scripts.normalize_mono_id
        hwm_prefix = scripts.HWM_PREFIX
        cross_node = self.cross_node_dedup
        keys: list[str] = []
        args: list[Any] = []
        pstats: list[StreamStats] = []
        prx: list[int] = []
        bad = 0
        seq = batch.seq
        for j in range(start, min(start + PART_EVENTS, len(events))):
            ev = events[j]
            try:
                if len(ev) == 5:
                    stream, dkey, cls, fields, rx_ns = ev
                    mono = None
                else:
                    stream, dkey, cls, fields, rx_ns, mono = ev
                stat = stats_by_cls.get(cls)
                if stat is None:
                    if type(cls) is not str or not NAME_RE.match(cls):
                        bad += 1
                        continue
                    stat = stats_by_cls[cls] = self._stat(exchange, cls)
                stat.in_ += 1
                if (type(stream) is not str or len(stream) > _MAX_STREAM_KEY or type(fields) is not list
                        or not fields or len(fields) & 1):
                    bad += 1
                    continue
                if mono is not None:
                    mono = norm_mono(mono)
                    if mono is None:
                        bad += 1
                        continue
                    ekeys = (stream, hwm_prefix + stream)
                    mode = "m"
                elif dkey is not None and seen(dkey, now):
                    stat.deduped += 1
                    continue
                elif dkey is not None and (cls == LISTING_CLASS or cross_node):
                    # listing events from workers (and, for an HA pair, every event without a
                    # monotonic id): deduplicated across nodes by key in Redis too
                    ekeys = (stream, scripts.KEYED_PREFIX + str(dkey))
                    mode = "k"
                else:
                    ekeys = (stream,)
                    mode = "-"
                eargs = (mode, mono or "", maxlen.get(cls, maxlen_default), len(fields))
                if type(rx_ns) is not int:
                    rx_ns = time.monotonic_ns()
            except (TypeError, ValueError):  # wrong shape, unhashable key, ...
                bad += 1
                continue
            gate = gates.get(cls)
            if gate is None:
                keys.extend(ekeys)
                args.extend(eargs)
                args.extend(fields)
                pstats.append(stat)
                prx.append(rx_ns)
            else:
                part = self._make_part(prod, batch, cls, seq, j + 1, list(ekeys), [*eargs, *fields], [stat], [rx_ns])
                if part is None:
                    bad += 1
                elif self.spilling:  # replayed without the rate limit (order within the lane kept)
                    self._spill_part(part)
                else:
                    self._admit_gated(gates[cls], part)
        if pstats:
            part = self._make_part(prod, batch, "", seq, start // PART_EVENTS, keys, args, pstats, prx)
            if part is None:
                # a non-string field somewhere: find the bad events and build the part without them
                keys, args, pstats, prx, nbad = self._valid_only(keys, args, pstats, prx)
                bad += nbad
                part = self._make_part(prod, batch, "", seq, start // PART_EVENTS, keys, args, pstats, prx) \
                    if pstats else None
            if part is None:
                pass
            elif self.spilling:
                self._spill_part(part)
            else:
                self.buffer.append(part)
                self.buffered_events += part.n_events
        if bad:
            self.errors += bad
            self.invalid_events += bad
            if self._logl.ok(f"invalid-{exchange}"):
                log.warning("%s: %d malformed wire events dropped (total %d)", exchange, bad, self.invalid_events)

    def _make_part(self, prod: _Producer, batch: _Batch, lane: str, seq: int, index: int, keys: list[str],
                   args: list[Any], stats: list[StreamStats], rx: list[int]) -> _Part | None:
        """Pack one part (None when a field is not a string or number: the caller sorts it out)."""
        try:
            packed = scripts.pack_apply(prod.wm_key, lane, scripts.part_position(seq, index), self._wm_ttl,
                                        self._hwm_ttl, self._key_ttl, keys, args)
        except (TypeError, ValueError):
            return None
        batch.remaining += 1
        batch.nbytes += len(packed)
        prod.pending_bytes += len(packed)
        return _Part(packed, stats, rx, batch, prod, lane or None)

    @staticmethod
    def _valid_only(keys: list[str], args: list[Any], stats: list[StreamStats], rx: list[int],
                    ) -> tuple[list[str], list[Any], list[StreamStats], list[int], int]:
        """The events of a part whose fields pack, and how many did not (the slow path)."""
        out_k: list[str] = []
        out_a: list[Any] = []
        out_s: list[StreamStats] = []
        out_r: list[int] = []
        bad = 0
        a = k = 0
        for st, r in zip(stats, rx):
            mode, nf = args[a], args[a + 3]
            nk = 1 if mode == "-" else 2
            ev_args = args[a:a + 4 + nf]
            ev_keys = keys[k:k + nk]
            a += 4 + nf
            k += nk
            try:
                hiredis.pack_command(tuple(ev_args[4:]))
            except (TypeError, ValueError):
                bad += 1
                continue
            out_k.extend(ev_keys)
            out_a.extend(ev_args)
            out_s.append(st)
            out_r.append(r)
        return out_k, out_a, out_s, out_r, bad

    # ------------------------------------------------------------------ rate limiting
    def _admit(self, item: _Item, cls: str) -> None:
        """A listing transaction: through its class's gate when there is one."""
        self.buffered_events += item.n_events
        gate = self.gates.get(cls)
        if gate is None:
            self.buffer.append(item)
            self._work.set()
        else:
            self._admit_gated(gate, item, counted=True)

    def _admit_gated(self, gate: _Gate, item: _Item, counted: bool = False) -> None:
        if not counted:
            self.buffered_events += item.n_events
        cost = item.n_events
        if not gate.pending and (cost == 0 or gate.bucket.try_take()):
            self.buffer.append(item)
            self._work.set()
            return
        gate.pending.append(item)
        if cost:
            stats = item.stats if isinstance(item, _Part) else [item.stat]
            stats[0].rate_limited += 1
        if gate.task is None or gate.task.done():
            gate.task = asyncio.create_task(self._gate_loop(gate), name=f"gate-{gate.cls}")

    async def _gate_loop(self, gate: _Gate) -> None:
        """Release waiting items in order as tokens become available."""
        while gate.pending:
            item = gate.pending[0]
            if item.n_events and not gate.bucket.try_take():
                await asyncio.sleep(max(gate.bucket.delay_for(), 0.001))
                continue
            gate.pending.popleft()
            self.buffer.append(item)
            self._work.set()

    def _release_gates(self) -> None:
        """Shutdown: move every waiting item to the buffer (order kept); the deadline beats the rate."""
        for gate in self.gates.values():
            if gate.task is not None:
                gate.task.cancel()
            if gate.pending:
                log.info("shutdown: releasing %d rate-limited %s events", len(gate.pending), gate.cls)
            while gate.pending:
                self.buffer.append(gate.pending.popleft())
        self._work.set()

    # ------------------------------------------------------------------ writer
    def _mark_down(self, exc: BaseException) -> None:
        self.redis_errors += 1
        self.redis_last_error = str(exc)[:500]  # RedisUnavailable text: scrubbed of the password
        if self.redis_up or self.redis_errors == 1:
            log.warning("Redis unavailable: %s; buffering up to %d events", exc, self.buffer_limit)
        if self.redis_up:
            self.redis_down_since = now_ms()
        self.redis_up = False
        self._redis_up_evt.clear()
        if self.spool is not None and not self.spilling:
            # a worker may have stopped sending (its window full): do not wait for its next batch
            self._maybe_spill()
            self._room.set()  # readers waiting for room re-check (they may spill now)

    def _mark_up(self) -> None:
        if self.redis_up:
            return
        since = self.redis_down_since
        down_for = f" after {(now_ms() - since) / 1000:.1f}s" if since is not None and self.redis_errors else ""
        log.info("Redis reachable (%s)%s; %d events buffered", self.data_conn.endpoint.describe(),
                 down_for, self.buffered())
        self.redis_up = True
        self.redis_down_since = None
        self._redis_up_evt.set()
        self._listing_wake.set()
        self._hb_wake.set()

    async def _writer_loop(self) -> None:
        ps = self.settings.publisher
        backoff = Backoff(ps.retry_initial, ps.retry_max)
        buffer = self.buffer
        ping = hiredis.pack_command(("PING",))
        load = b"".join(hiredis.pack_command(c) for c in scripts.LOAD_COMMANDS)
        while True:
            if not buffer:
                self._work.clear()
                if not self.redis_up or not self.data_conn.connected:
                    # keep the up/down state true while idle (health, listing loads)
                    try:
                        await self.data_conn.execute_packed(ping, 1)
                    except RedisUnavailable as exc:
                        self._mark_down(exc)
                        await self._sleep_or_work(backoff.next_delay())
                        continue
                    backoff.reset()
                    self._mark_up()
                if not await _wait_event(self._work, 1.0):
                    self.dedup.expire(time.monotonic(), 20_000)  # release memory while idle
                    if self.data_conn.connected:
                        try:
                            await self.data_conn.execute_packed(ping, 1)
                        except RedisUnavailable as exc:
                            self._mark_down(exc)
                continue
            if self._reload_scripts:  # NOSCRIPT: someone ran SCRIPT FLUSH while we were connected
                try:
                    await self.data_conn.execute_packed(load, len(scripts.LOAD_COMMANDS))
                except RedisUnavailable as exc:
                    self._mark_down(exc)
                    await asyncio.sleep(backoff.next_delay())
                    continue
                self._reload_scripts = False
            # a round: whole items, up to pipeline_max events (at least one item)
            batch: list[_Item] = []
            n_events = n_replies = 0
            for item in buffer:
                if batch and n_events + item.n_events > self.pipeline_max:
                    break
                batch.append(item)
                n_events += item.n_events
                n_replies += item.n_replies
            n = len(batch)
            data = b"".join([it.packed for it in batch])
            self._inflight = n
            try:
                replies = await self.data_conn.execute_packed(data, n_replies)
            except RedisUnavailable as exc:
                # applied or not, the items stay at the head and are sent again: every part
                # checks its watermark and every listing event its state, so nothing doubles
                self._inflight = 0  # before _mark_down: the spill may move them to the spool now
                self.rounds_resent += 1
                for it in batch:
                    if type(it) is _Part:
                        it.unsure = True
                self._mark_down(exc)
                await asyncio.sleep(backoff.next_delay())
                continue
            finally:
                self._inflight = 0
            backoff.reset()
            self._mark_up()
            retry = self._handle_replies(batch, replies)
            for _ in range(n):
                buffer.popleft()
            if retry:
                # the server said "not now" (LOADING, OOM, READONLY, NOSCRIPT...): keep those at the head
                buffer.extendleft(reversed(retry))
            self.buffered_events -= n_events - sum(it.n_events for it in retry)
            if self.buffered_events < self.buffer_limit:
                self._room.set()
            if self._ack_due:
                self._send_acks()
            if retry:
                self.redis_errors += 1
                await asyncio.sleep(backoff.next_delay())

    async def _sleep_or_work(self, delay: float) -> None:
        """Sleep ``delay`` but wake early when items reach the buffer (they are retried at once).
        Not for batches that went to the spool: the retry would come at once, every batch."""
        deadline = time.monotonic() + delay
        while not self.buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self._work.clear()
            await _wait_event(self._work, left)

    def _handle_replies(self, batch: list[_Item], replies: list[Any]) -> list[_Item]:
        """Account for one round's replies; return the items to retry (transient server errors)."""
        now_ns = time.monotonic_ns()
        hist = self.latency
        bounds, counts = hist.bounds, hist.counts
        lat_sum = 0.0
        acked = 0
        dups = 0
        retry: list[_Item] = []
        pos = 0
        for item in batch:
            if type(item) is _Part:
                r = replies[pos]
                pos += 1
                if type(r) is list and r:
                    if r[0] == 0:  # applied before (a re-send): nothing written now
                        self.parts_already_applied += 1
                        if item.unsure:  # by this publisher, in the round whose replies were lost
                            for st in item.stats:
                                st.pushed += 1
                    else:
                        for k, st in enumerate(item.stats):
                            x = r[k + 1] if k + 1 < len(r) else None
                            if type(x) is bytes:
                                st.pushed += 1
                                lat = (now_ns - item.rx[k]) * 1e-9
                                if lat < 0.0:  # an rx_ns from the future (a bad sender): not negative
                                    lat = 0.0
                                counts[bisect_left(bounds, lat)] += 1
                                lat_sum += lat
                                acked += 1
                            elif x == 0:
                                st.deduped += 1
                                dups += 1
                            else:
                                self._command_error(st, x)
                elif isinstance(r, hiredis.ReplyError) and (is_transient_error(r) or str(r).startswith("NOSCRIPT")):
                    if str(r).startswith("NOSCRIPT"):
                        self._reload_scripts = True
                    retry.append(item)
                    continue
                else:  # the script failed for good: its events are lost, counted
                    for st in item.stats:
                        self._command_error(st, r)
                if item.batch is not None and item.producer is not None:
                    self._part_done(item.batch, item.producer)
                elif item.ordinal is not None:
                    self._replay_settled(item.ordinal)
            else:
                n = item.n_replies
                rs = replies[pos:pos + n]
                pos += n
                outcome = self._txn_outcome(item, rs)
                if outcome == "retry":
                    retry.append(item)
                elif outcome == "pushed":
                    item.stat.pushed += 1
                    self.listings_emitted += 1
                    ev = item.ev
                    if ev is not None:
                        self.listings_by_event[ev] = self.listings_by_event.get(ev, 0) + 1
                    lat = (now_ns - item.rx) * 1e-9
                    counts[bisect_left(bounds, lat)] += 1
                    lat_sum += lat
                    acked += 1
                elif outcome == "duplicate":
                    item.stat.deduped += 1
                    dups += 1
        if acked:
            hist.sum += lat_sum
            hist.count += acked
            self.last_push_at = now_ms()
        self.redis_duplicates += dups
        return retry

    def _command_error(self, stat: StreamStats, reply: Any) -> None:
        self.errors += 1
        if self._logl.ok(f"cmd-{stat.exchange}-{stat.cls}"):
            log.error("Redis rejected a %s|%s event (dropped): %s", stat.exchange, stat.cls, reply)

    def _txn_outcome(self, item: _Txn, rs: list[Any]) -> str:
        """'pushed' (event written), 'duplicate' (Redis held the state already), 'state' (state
        only), 'retry' or 'failed'."""
        stat = item.stat
        exec_reply = rs[-1] if rs else None
        if not isinstance(exec_reply, list):
            if any(is_transient_error(r) for r in rs):
                return "retry"
            self.errors += 1
            log.error("listing state transaction for %s failed: %s; state will be reloaded from Redis",
                      stat.exchange, exec_reply)
            self.tracker.invalidate(stat.exchange)
            return "failed"
        xi = item.xi
        outcome = "state"
        for i, r in enumerate(exec_reply):
            if isinstance(r, Exception):
                self.errors += 1
                log.error("listing transaction for %s: command %d failed: %s", stat.exchange, i, r)
                if i != xi:
                    self.tracker.invalidate(stat.exchange)
            elif i == xi:
                outcome = "pushed" if type(r) is bytes else "duplicate"
        return outcome

    # ------------------------------------------------------------------ listings
    async def _load_state(self, exchange: str) -> tuple[dict[str, str], set[str], dict[str, str]]:
        cmds = load_commands(exchange)
        data = b"".join([hiredis.pack_command(c) for c in cmds])
        return decode_state(*await self.ctl_conn.execute_packed(data, len(cmds)))

    async def _listing_loop(self) -> None:
        ps = self.settings.publisher
        backoff = Backoff(ps.retry_initial, ps.retry_max)
        while True:
            await self._listing_wake.wait()
            self._listing_wake.clear()
            while self.tracker.has_pending():
                if not self.redis_up:
                    await self._redis_up_evt.wait()
                updates, err = await self.tracker.process(self._load_state)
                for upd in updates:
                    self._enqueue_update(upd)
                if err is None:
                    backoff.reset()
                else:
                    if self._logl.ok("listing-load"):
                        log.warning("cannot load listing state from Redis (will retry): %s", err)
                    await asyncio.sleep(backoff.next_delay())

    def _enqueue_update(self, upd: ListingUpdate) -> None:
        """One MULTI/EXEC: the event (unless a duplicate) and its state change, in the listing FIFO."""
        stat = self._stat(upd.exchange, LISTING_CLASS)
        cmds: list[tuple] = [("MULTI",)]
        xi: int | None = None
        cls = LISTING_CLASS
        ev_name: str | None = None
        if upd.event is not None:
            stream, dkey, cls, fields, _ = upd.event
            if cls != LISTING_CLASS:
                stat = self._stat(upd.exchange, cls)
            stat.in_ += 1
            if dkey is not None and self.dedup.seen(dkey, time.monotonic()):
                stat.deduped += 1
            else:
                # XADDed only when Redis does not hold this status already (another node, or this
                # one before a restart, wrote the same transition): safe to resend, one per HA pair
                f = fields_to_dict(fields)
                cmds.append(scripts.pack_listing_event(
                    stream, pairs_key(upd.exchange), state_field(f.get("market", upd.market), f.get("native_symbol", "")),
                    f.get("status", ""), self.maxlen.get(cls, self.maxlen_default), fields))
                xi = 0
                ev_name = upd.event_name
        cmds.extend(state_commands(upd))
        if len(cmds) == 1:
            return
        cmds.append(("EXEC",))
        packed = b"".join([hiredis.pack_command(c) for c in cmds])
        # not subject to the buffer bound: the in-memory state already counts it as written
        self._admit(_Txn(packed, len(cmds), stat, time.monotonic_ns(), xi, ev_name), cls)

    # ------------------------------------------------------------------ heartbeat
    def heartbeat_stats(self) -> dict[str, Any]:
        workers: dict[str, Any] = {}
        active: dict[str, bool] = {}
        drops: dict[str, int] = {}
        sums = {"ws_connections": 0, "ws_reconnects": 0, "rest_calls": 0, "rest_errors": 0}
        for name, child in self.children.items():
            if name == "publisher" or not isinstance(child, dict):
                continue
            state = child.get("state")
            st = child.get("stats") if isinstance(child.get("stats"), dict) else {}
            workers[name] = state
            active[name] = (state == "RUNNING" and not st.get("stale")
                            and st.get("circuit", "CLOSED") == "CLOSED")
            for k in sums:
                v = st.get(k)
                if type(v) is int:
                    sums[k] += v
            d = st.get("drops")
            if type(d) is int and d:
                drops[name] = drops.get(name, 0) + d
        for name in self.settings.exchanges.enabled():
            active.setdefault(name, False)
        events_in = events_pushed = 0
        for s in self.streams.values():
            events_in += s.in_
            events_pushed += s.pushed
            if s.dropped:
                drops[s.exchange] = drops.get(s.exchange, 0) + s.dropped
        return {
            "events_collected": events_in,
            "events_pushed": events_pushed,
            "errors": self.errors + self.frame_errors + self.redis_errors,
            "last_event_at": self.last_push_at,
            "exchanges_active": active,
            **sums,
            "workers": workers,
            "drops": drops,
            "buffered": self.buffered(),
            "buffer_limit": self.buffer_limit,
            "listings_emitted": self.listings_emitted,
            "spool": self.spool_stats(),
        }

    async def write_heartbeat(self, status: str) -> bool:
        s = self.settings
        key = f"node:heartbeat:{s.node_id}"
        hset = (
            "HSET", key,
            "status", status,
            "node_id", s.node_id,
            "version", __version__,
            "uptime_seconds", str(int(time.time() - self.started_wall)),
            "timestamp", str(now_ms()),
            "stats", orjson.dumps(self.heartbeat_stats()).decode(),
        )
        data = hiredis.pack_command(hset) + hiredis.pack_command(("EXPIRE", key, str(s.publisher.heartbeat_ttl)))
        try:
            replies = await self.ctl_conn.execute_packed(data, 2)
        except RedisUnavailable as exc:
            if self._logl.ok("hb"):
                log.warning("heartbeat not written: %s", exc)
            return False
        bad = [r for r in replies if isinstance(r, Exception)]
        if bad:
            self.errors += 1
            log.error("heartbeat rejected by Redis: %s", bad[0])
            return False
        self.heartbeats += 1
        return True

    async def _heartbeat_loop(self) -> None:
        interval = self.settings.publisher.heartbeat_interval
        backoff = Backoff(0.5, max(0.5, min(interval, 10.0)))
        while True:
            self._hb_wake.clear()
            if await self.write_heartbeat("running"):
                backoff.reset()
                delay = interval
            else:
                delay = backoff.next_delay()
            await _wait_event(self._hb_wake, delay)

    # ------------------------------------------------------------------ shutdown
    def _stop_budget(self) -> float:
        """Seconds for the whole graceful stop, ending ~1 s before the parent would SIGKILL us
        (so what could not be flushed is still logged and the final heartbeat written)."""
        sup = self.settings.supervisor
        granted = self.link.stop_budget
        if granted is None:  # a bare SIGTERM: assume the shorter of the parent's two deadlines
            granted = min(sup.stop_timeout, 0.4 * sup.shutdown_timeout)
        return max(0.5, granted - 1.0)

    async def _spool_at_shutdown(self) -> int:
        """After the flush deadline: append the worker parts still in memory (Redis down or
        slow) to the spool, in order, then close it (written and fsynced). The next start replays
        them before any new event; a worker that outlives us sends them again too, and those
        copies are skipped by the watermark. Returns the events spooled.

        Not spilling, the spool is empty, so order is kept; spilling, memory holds no worker
        part that is not in the spool already (replayed ones, re-read at the next start)."""
        spool = self.spool
        if spool is None:
            return 0
        while self._spool_reading:  # a replay read still running in its thread
            await asyncio.sleep(0.005)
        spooled = 0
        keep: list[_Item] = []
        for item in self.buffer:
            if type(item) is _Part and item.ordinal is None:
                self._spill_part(item)
                if self._spooled and self._spooled[-1][1] is item:
                    spooled += item.n_events
                    self.buffered_events -= item.n_events
                else:
                    keep.append(item)  # refused: lost, counted (and reported below)
            else:
                keep.append(item)
        self.buffer.clear()
        self.buffer.extend(keep)
        try:
            await asyncio.to_thread(spool.close)
        except OSError as exc:  # close never raises by design; belt and braces
            log.error("disk spool close failed: %s", exc)
        return spooled

    async def _shutdown(self, tasks: dict[str, asyncio.Task]) -> int:
        t0 = time.monotonic()
        total = self._stop_budget()
        # In a full shutdown the workers have already exited, so their connections are at EOF at
        # once; on a restart or recycle of the publisher alone they stay connected, so only read
        # what is already on its way, briefly, rather than waiting for EOFs that will not come.
        read_deadline = t0 + min(2.0, total / 3)
        deadline = t0 + total
        log.info("stopping: no new connections; draining %d worker connection(s) for up to %.1fs",
                 len(self._conn_tasks), read_deadline - t0)
        if self._server is not None:
            self._server.close()
        try:
            os.unlink(self.settings.publisher_socket)
        except OSError:
            pass
        if self._conn_tasks:
            _, still_open = await asyncio.wait(set(self._conn_tasks), timeout=max(0.0, read_deadline - time.monotonic()))
            if still_open:
                log.warning("%d worker connection(s) still open at the read deadline; closing them", len(still_open))
                for t in still_open:
                    t.cancel()
                await asyncio.gather(*still_open, return_exceptions=True)
        # snapshots received last still become state + events if Redis is up
        tasks["listings"].cancel()
        await asyncio.gather(tasks["listings"], return_exceptions=True)
        if self.tracker.has_pending() and self.redis_up:
            try:
                async with asyncio.timeout(max(0.1, deadline - time.monotonic())):
                    updates, _ = await self.tracker.process(self._load_state)
                for upd in updates:
                    self._enqueue_update(upd)
            except (asyncio.TimeoutError, RedisUnavailable):
                pass
        replay = tasks.get("spool_replay")
        if replay is not None:
            # what is still in the spool stays there for the next start; only the buffer is flushed
            replay.cancel()
            await asyncio.gather(replay, return_exceptions=True)
        self._release_gates()
        writer = tasks["writer"]
        log.info("flushing %d buffered events to Redis (deadline %.1fs)", self.buffered(),
                 max(0.0, deadline - time.monotonic()))
        while (self.buffer or self._inflight) and time.monotonic() < deadline and not writer.done():
            await asyncio.sleep(0.005)
        for t in tasks.values():
            t.cancel()
        await asyncio.gather(*tasks.values(), return_exceptions=True)
        self._release_gates()
        spooled = await self._spool_at_shutdown()
        # replayed parts are still in the spool (re-read at the next start: the cursor)
        lost = sum(it.n_events for it in self.buffer if type(it) is not _Part or it.ordinal is None)
        rc = EXIT_OK
        if lost:
            # not acknowledged: workers still connected to the next publisher send them again;
            # for a worker that stopped too they are lost
            log.error("shutdown: %d events could not be written to Redis (never acknowledged)", lost)
            rc = EXIT_CRASH
        elif spooled or (self.spool is not None and self.spool.pending()):
            log.info("shutdown: %d events spooled now; the disk spool holds %d records for the next "
                     "start", spooled, self.spool.pending() if self.spool is not None else 0)
        else:
            log.info("shutdown: every accepted event is in Redis")
        remaining = deadline - time.monotonic()
        try:
            async with asyncio.timeout(max(0.5, min(remaining, 5.0))):
                await self.write_heartbeat("stopped")
        except asyncio.TimeoutError:
            log.warning("final heartbeat not written (timeout)")
        await self.data_conn.close()
        await self.ctl_conn.close()
        log.info("publisher stopped (exit %d)", rc)
        return rc


def publisher_main(settings: Settings, status_sock: socket.socket) -> int:
    """Entry of the publisher process (spawned by the supervisor); returns the exit code."""
    setup_logging(settings, "publisher")

    async def main(link: StatusLink) -> int:
        try:
            publisher = Publisher(settings, link)
        except ValueError as exc:
            log.error("configuration error: %s", exc)
            return EXIT_CONFIG
        return await publisher.run()

    try:
        return run_child("publisher", main, status_sock)
    except Exception:  # noqa: BLE001 - logged, and the parent sees a crash exit code
        log.exception("publisher crashed")
        return EXIT_CRASH
