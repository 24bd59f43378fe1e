"""The publisher process: worker channels -> dedup -> rate limit -> bounded buffer -> Redis.

Data path (one asyncio loop, one process)::

    worker connections (Unix socket, one per worker)
      -> per event: dedup on its natural key (window, bounded key count)
      -> per stream class token bucket (over the rate: wait in order, never dropped)
      -> bounded buffer (full: new events dropped, counted per "exchange|class")
      -> ONE writer task: up to pipeline_max pre-packed XADDs in one write, replies read back

Commands are packed with ``hiredis.pack_command`` when an event arrives and written on a raw
connection (:mod:`collector.redis_writer`): redis-py's asyncio client encodes in pure Python and
tops out near 40k XADD/s, pre-packed RESP near 200k/s (research/limits.md 2b). One writer keeps
arrival order per stream. When Redis is unreachable the batch stays at the head of the buffer and is
resent after a backoff; new events accumulate (bounded) and are delivered in order when it returns.

Listing detection (:mod:`collector.listings`) turns ``instruments`` messages into listing events,
each written with its state change in one MULTI/EXEC through the same ordered writer. A heartbeat
hash ``node:heartbeat:{node_id}`` (Node A format plus worker states) is written on a second
connection, so a backlog of events never delays it.
"""

from __future__ import annotations

import asyncio
import itertools
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
    parse_instruments_msg, state_commands,
)
from collector.logs import setup_logging
from collector.redis_writer import RedisConnection, RedisUnavailable, is_transient_error
from shared import __version__, ipc
from shared.backoff import Backoff
from shared.child import StatusLink, run_child
from shared.dedup import Deduper
from shared.logutil import LogLimiter
from shared.events import EV_DELISTING, EV_LISTING, EV_PRE_LISTING, EV_STATUS_CHANGE, now_ms
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
#: events ingested from one connection before yielding to the loop (lets the writer run)
YIELD_EVERY = 1000
_MAX_STREAM_KEY = 512
LISTING_CLASS = "listing"


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

    __slots__ = ("exchange", "cls", "in_", "pushed", "deduped", "dropped", "rate_limited")

    def __init__(self, exchange: str, cls: str) -> None:
        self.exchange = exchange
        self.cls = cls
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

    __slots__ = ("exchange", "pid", "stats", "writer")

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.exchange: str | None = None
        self.pid: int | None = None
        self.stats: dict[str, StreamStats] = {}
        self.writer = writer


# Buffer items are tuples (fast to build on the hot path):
#   (packed_commands: bytes, n_replies: int, stats: StreamStats, rx_ns: int, exec_index)
# exec_index None: a plain XADD; -1: a MULTI/EXEC with state only; >= 0: a MULTI/EXEC whose EXEC
# result holds the event's XADD reply at that index. MULTI/EXEC items carry a sixth element: the
# listing event's name (listing, delisting, ...) or None, for the per-event-type counters.
_PACKED, _NREPLIES, _STATS, _RX, _XI, _EV = range(6)


_MULTI = hiredis.pack_command(("MULTI",))
_EXEC = hiredis.pack_command(("EXEC",))
#: stands for "retry this item" in unwrapped replies (a transaction that did not run)
_RETRY_REPLY = hiredis.ReplyError("TRYAGAIN transaction not executed")


def _item_events(item: tuple) -> int:
    return 0 if item[_XI] == -1 else 1


class Publisher:
    def __init__(self, settings: Settings, link: StatusLink) -> None:
        ps = settings.publisher
        self.settings = settings
        self.link = link
        self.dedup = Deduper(ps.dedup_window, ps.dedup_max_keys)
        self.buffer: deque[tuple] = deque()
        self.buffer_limit = ps.buffer_max_events
        self.pipeline_max = ps.pipeline_max
        self.gated = 0  # items waiting in gates (part of `buffered`)
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
        self.data_conn = RedisConnection(settings.redis, name="data")
        self.ctl_conn = RedisConnection(settings.redis, name="control")
        self.redis_up = False
        self.redis_down_since: int | None = now_ms()  # unknown until the first connect
        self.redis_errors = 0
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
        # write units (see _writer_loop): each round's units are atomic (MULTI/EXEC) and record
        # "{incarnation}:{unit}" in the marker key, so a round whose replies were lost can be
        # resolved exactly (applied or not) instead of resent blindly (duplicates)
        self.marker_key = f"pub:written:{settings.node_id}"
        self.incarnation = os.urandom(6).hex()
        self._next_unit = 0
        #: the units of a round whose outcome is unknown (connection lost before the replies)
        self._unresolved: list[tuple[int, int]] | None = None
        self.rounds_resolved_applied = 0
        self.rounds_resolved_resent = 0
        self._work = asyncio.Event()
        self._redis_up_evt = asyncio.Event()
        self._listing_wake = asyncio.Event()
        self._hb_wake = asyncio.Event()
        self._server: asyncio.AbstractServer | None = None
        self._logl = LogLimiter()

    # ------------------------------------------------------------------ stats
    def _stat(self, exchange: str, cls: str) -> StreamStats:
        key = f"{exchange}|{cls}"
        st = self.streams.get(key)
        if st is None:
            st = self.streams[key] = StreamStats(exchange, cls)
        return st

    def buffered(self) -> int:
        return len(self.buffer) + self.gated

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
            # rounds whose replies were lost, resolved through the marker key
            "rounds_resolved": {"applied": self.rounds_resolved_applied, "resent": self.rounds_resolved_resent},
        }

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
        await self.link.start(self.stats, self._on_parent_message)
        tasks = {
            "writer": asyncio.create_task(self._writer_loop(), name="writer"),
            "listings": asyncio.create_task(self._listing_loop(), name="listings"),
            "heartbeat": asyncio.create_task(self._heartbeat_loop(), name="heartbeat"),
        }
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
            log.info("worker %s connected (pid %s)", exchange, conn.pid)
            since_yield = 0
            while True:
                msg = await ipc.read_frame(reader)
                if msg is None:
                    break
                kind = msg.get("t") if type(msg) is dict else None
                if kind == "events":
                    events = msg.get("events")
                    if type(events) is not list:
                        raise ipc.FrameError("events: 'events' must be a list")
                    if len(events) <= YIELD_EVERY:
                        self._ingest(conn, events)
                        since_yield += len(events)
                    else:  # a huge frame must not hold the loop (beats, the writer) for seconds
                        for k in range(0, len(events), YIELD_EVERY):
                            self._ingest(conn, events[k:k + YIELD_EVERY])
                            await asyncio.sleep(0)
                    if since_yield >= YIELD_EVERY:
                        since_yield = 0
                        await asyncio.sleep(0)
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
            writer.close()
            if conn.exchange:
                log.info("worker %s disconnected", conn.exchange)

    def _ingest(self, conn: _Conn, events: list) -> None:
        """The hot path: validate, dedup, pack and queue every wire event of one frame."""
        stats_by_cls = conn.stats
        exchange = conn.exchange or "?"
        now = time.monotonic()
        seen = self.dedup.seen
        buffer = self.buffer
        limit = self.buffer_limit
        gates = self.gates
        maxlen = self.maxlen
        maxlen_default = self.maxlen_default
        pack = hiredis.pack_command
        bad = 0
        for ev in events:
            try:
                stream, dkey, cls, fields, rx_ns = ev
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
                if dkey is not None and seen(dkey, now):
                    stat.deduped += 1
                    continue
                if len(buffer) + self.gated >= limit:
                    stat.dropped += 1
                    continue
                packed = pack(("XADD", stream, "MAXLEN", "~", maxlen.get(cls, maxlen_default), "*", *fields))
                if type(rx_ns) is not int:
                    rx_ns = time.monotonic_ns()
            except (TypeError, ValueError):  # wrong shape, unhashable key, non-string field
                bad += 1
                continue
            item = (packed, 1, stat, rx_ns, None)
            gate = gates.get(cls)
            if gate is None:
                buffer.append(item)
            else:
                self._admit_gated(gate, item)
        if bad:
            self.errors += bad
            self.invalid_events += bad
            if self._logl.ok(f"invalid-{exchange}"):
                log.warning("%s: %d malformed wire events dropped (total %d)", exchange, bad, self.invalid_events)
        self._work.set()

    # ------------------------------------------------------------------ rate limiting
    def _admit(self, item: tuple, cls: str) -> None:
        gate = self.gates.get(cls)
        if gate is None:
            self.buffer.append(item)
            self._work.set()
        else:
            self._admit_gated(gate, item)

    def _admit_gated(self, gate: _Gate, item: tuple) -> None:
        cost = _item_events(item)
        if not gate.pending and (cost == 0 or gate.bucket.try_take()):
            self.buffer.append(item)
            self._work.set()
            return
        gate.pending.append(item)
        self.gated += 1
        if cost:
            item[_STATS].rate_limited += 1
        if gate.task is None or gate.task.done():
            gate.task = asyncio.create_task(self._gate_loop(gate), name=f"gate-{gate.cls}")

    async def _gate_loop(self, gate: _Gate) -> None:
        """Release waiting items in order as tokens become available."""
        while gate.pending:
            item = gate.pending[0]
            if _item_events(item) and not gate.bucket.try_take():
                await asyncio.sleep(max(gate.bucket.delay_for(), 0.001))
                continue
            gate.pending.popleft()
            self.gated -= 1
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
                self.gated -= 1
        self._work.set()

    # ------------------------------------------------------------------ writer
    def _mark_down(self, exc: BaseException) -> None:
        self.redis_errors += 1
        if self.redis_up or self.redis_errors == 1:
            log.warning("Redis unavailable: %s; buffering up to %d events", exc, self.buffer_limit)
        if self.redis_up:
            self.redis_down_since = now_ms()
        self.redis_up = False
        self._redis_up_evt.clear()

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
            if self._unresolved is not None:
                try:
                    await self._resolve_unknown_round()
                except RedisUnavailable as exc:
                    self._mark_down(exc)
                    await asyncio.sleep(backoff.next_delay())
                    continue
                if not buffer:
                    continue
            n = min(self.pipeline_max, len(buffer))
            batch = list(itertools.islice(buffer, n))
            data, n_replies, units = self._pack_round(batch)
            self._inflight = n
            try:
                replies = await self.data_conn.execute_packed(data, n_replies)
            except RedisUnavailable as exc:
                # applied or not? the marker tells, once Redis answers again
                self._unresolved = units
                self._mark_down(exc)
                await asyncio.sleep(backoff.next_delay())
                continue
            finally:
                self._inflight = 0
            backoff.reset()
            self._mark_up()
            retry = self._handle_replies(batch, self._unwrap_replies(batch, units, replies))
            for _ in range(n):
                buffer.popleft()
            if retry:
                # the server said "not now" (LOADING, OOM, READONLY...): keep those at the head
                buffer.extendleft(reversed(retry))
                self.redis_errors += 1
                await asyncio.sleep(backoff.next_delay())

    # ---- atomic write units ----
    def _marker(self, unit: int) -> bytes:
        return hiredis.pack_command(("SET", self.marker_key, f"{self.incarnation}:{unit}"))

    def _pack_round(self, batch: list[tuple]) -> tuple[bytes, int, list[tuple[int, int]]]:
        """One round's bytes: runs of plain XADDs wrapped in MULTI ... SET marker ... EXEC, and each
        listing transaction with the marker SET put before its EXEC. Returns (data, replies,
        units) with units = [(unit id, items in it)] in order."""
        parts: list[bytes] = []
        units: list[tuple[int, int]] = []
        n_replies = 0
        i, n = 0, len(batch)
        while i < n:
            self._next_unit += 1
            uid = self._next_unit
            if batch[i][_XI] is None:
                j = i
                while j < n and batch[j][_XI] is None:
                    j += 1
                parts.append(_MULTI)
                parts.extend([it[_PACKED] for it in batch[i:j]])
                parts.append(self._marker(uid))
                parts.append(_EXEC)
                n_replies += (j - i) + 3
                units.append((uid, j - i))
                i = j
            else:
                packed = batch[i][_PACKED]
                parts.append(packed[:-len(_EXEC)])  # listing transactions end with EXEC
                parts.append(self._marker(uid))
                parts.append(_EXEC)
                n_replies += batch[i][_NREPLIES] + 1
                units.append((uid, 1))
                i += 1
        return b"".join(parts), n_replies, units

    def _unwrap_replies(self, batch: list[tuple], units: list[tuple[int, int]], replies: list[Any]) -> list[Any]:
        """The round's replies in the shape ``_handle_replies`` reads (one reply per plain XADD,
        the listing transactions' own replies), from the wrapped units' replies."""
        out: list[Any] = []
        pos = 0
        i = 0
        for _uid, count in units:
            if batch[i][_XI] is None:
                rs = replies[pos:pos + count + 3]  # MULTI, QUEUED x count, QUEUED (marker), EXEC
                pos += count + 3
                exec_reply = rs[-1]
                if isinstance(exec_reply, list) and len(exec_reply) == count + 1:
                    out.extend(exec_reply[:count])
                elif isinstance(rs[0], hiredis.ReplyError):
                    # MULTI itself refused (e.g. an ACL without it): the commands ran one by one
                    out.extend(rs[1:1 + count])
                else:
                    # the transaction did not run (EXECABORT, LOADING ...): an item whose own
                    # queueing failed for good is dropped, every other one is written again
                    for k in range(count):
                        queued = rs[1 + k]
                        bad = isinstance(queued, hiredis.ReplyError) and not is_transient_error(queued)
                        out.append(queued if bad else _RETRY_REPLY)
                i += count
            else:
                k = batch[i][_NREPLIES]
                rs = replies[pos:pos + k + 1]
                pos += k + 1
                # drop the marker's QUEUED and its SET result, so the transaction reads as built
                exec_reply = rs[-1]
                if isinstance(exec_reply, list) and exec_reply:
                    exec_reply = exec_reply[:-1]
                out.extend(rs[:k - 1])
                out.append(exec_reply)
                i += 1
        return out

    async def _resolve_unknown_round(self) -> None:
        """After a round whose replies were lost: read the marker; drop the items of the units it
        says were applied (they are in Redis), keep the rest at the head to be written again."""
        units = self._unresolved
        assert units is not None
        reply = (await self.data_conn.execute_packed(hiredis.pack_command(("GET", self.marker_key)), 1))[0]
        applied_upto = 0
        if isinstance(reply, bytes):
            inc, _, unit = reply.decode("ascii", "replace").partition(":")
            if inc == self.incarnation and unit.isdigit():
                applied_upto = int(unit)
        applied = 0
        for uid, count in units:
            if uid > applied_upto:
                break
            for _ in range(count):
                item = self.buffer.popleft()
                if item[_XI] is None:
                    item[_STATS].pushed += 1
                elif item[_XI] >= 0:
                    item[_STATS].pushed += 1
                    self.listings_emitted += 1
                    ev = item[_EV]
                    if ev is not None:
                        self.listings_by_event[ev] = self.listings_by_event.get(ev, 0) + 1
                applied += count
        if applied:
            self.rounds_resolved_applied += 1
            log.info("a write round interrupted by a lost connection had been applied (%d events); "
                     "not written again", applied)
        else:
            self.rounds_resolved_resent += 1
        self._unresolved = None
        self._mark_up()

    async def _sleep_or_work(self, delay: float) -> None:
        """Sleep ``delay`` but wake early when events arrive (they are retried at once)."""
        await _wait_event(self._work, delay)

    def _handle_replies(self, batch: list[tuple], replies: list[Any]) -> list[tuple]:
        """Account for one batch's replies; return the items to retry (transient server errors)."""
        now_ns = time.monotonic_ns()
        hist = self.latency
        bounds, counts = hist.bounds, hist.counts
        lat_sum = 0.0
        acked = 0
        retry: list[tuple] = []
        pos = 0
        for item in batch:
            stat = item[_STATS]
            if item[_XI] is None:
                r = replies[pos]
                pos += 1
                if type(r) is bytes:
                    stat.pushed += 1
                    lat = (now_ns - item[_RX]) * 1e-9
                    if lat < 0.0:  # an rx_ns from the future (a bad sender): not a negative latency
                        lat = 0.0
                    counts[bisect_left(bounds, lat)] += 1
                    lat_sum += lat
                    acked += 1
                elif is_transient_error(r):
                    retry.append(item)
                else:
                    self._command_error(stat, r)
            else:
                n = item[_NREPLIES]
                rs = replies[pos:pos + n]
                pos += n
                outcome = self._txn_outcome(item, rs)
                if outcome == "retry":
                    retry.append(item)
                elif outcome == "pushed":
                    stat.pushed += 1
                    self.listings_emitted += 1
                    ev = item[_EV]
                    if ev is not None:
                        self.listings_by_event[ev] = self.listings_by_event.get(ev, 0) + 1
                    lat = (now_ns - item[_RX]) * 1e-9
                    counts[bisect_left(bounds, lat)] += 1
                    lat_sum += lat
                    acked += 1
        if acked:
            hist.sum += lat_sum
            hist.count += acked
            self.last_push_at = now_ms()
        return retry

    def _command_error(self, stat: StreamStats, reply: Any) -> None:
        self.errors += 1
        if self._logl.ok(f"cmd-{stat.exchange}-{stat.cls}"):
            log.error("Redis rejected a %s|%s event (dropped): %s", stat.exchange, stat.cls, reply)

    def _txn_outcome(self, item: tuple, rs: list[Any]) -> str:
        """'pushed' (event written), 'state' (state only / event deduped), 'retry' or 'failed'."""
        stat = item[_STATS]
        exec_reply = rs[-1] if rs else None
        if not isinstance(exec_reply, list):
            if any(is_transient_error(r) for r in rs):
                return "retry"
            self.errors += 1
            log.error("listing state transaction for %s failed: %s; state will be reloaded from Redis",
                      stat.exchange, exec_reply)
            self.tracker.invalidate(stat.exchange)
            return "failed"
        xi = item[_XI]
        outcome = "state"
        for i, r in enumerate(exec_reply):
            if isinstance(r, Exception):
                self.errors += 1
                log.error("listing transaction for %s: command %d failed: %s", stat.exchange, i, r)
                if i != xi:
                    self.tracker.invalidate(stat.exchange)
            elif i == xi:
                outcome = "pushed"
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
        xi = -1
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
                cmds.append(("XADD", stream, "MAXLEN", "~", self.maxlen.get(cls, self.maxlen_default), "*", *fields))
                xi = 0
                ev_name = upd.event_name
        cmds.extend(state_commands(upd))
        if len(cmds) == 1:
            return
        cmds.append(("EXEC",))
        packed = b"".join([hiredis.pack_command(c) for c in cmds])
        # not subject to the buffer bound: the in-memory state already counts it as written
        self._admit((packed, len(cmds), stat, time.monotonic_ns(), xi, ev_name), cls)

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
        lost = sum(_item_events(it) for it in self.buffer)
        rc = EXIT_OK
        if lost:
            log.error("shutdown: %d events could not be written to Redis and are lost", lost)
            rc = EXIT_CRASH
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
