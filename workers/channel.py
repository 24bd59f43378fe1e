"""The worker's own channel to the publisher: batched frames over a Unix socket.

One connection per worker (never a shared multiprocessing.Queue: its single write lock can be
left held by a SIGKILLed writer and wedge every other worker; supervision.md §4 pitfall 4).

Hot path: :meth:`PublisherChannel.put` is synchronous and O(1): it appends to the current batch.
A batch closes at ``batch_size`` events or ``flush_interval`` after its first event. Closed
batches wait in a bounded deque (``max_queued_batches``) for the sender task, which writes
``events`` frames (shared.ipc) and awaits drain. When the deque is full a closed batch waits at
most ``put_timeout`` for room (asynchronously: the event loop never blocks on the channel) and
is then dropped, every event in it counted in ``drops``. Batch ``seq`` numbers are assigned when
a batch closes, so the publisher sees a gap where batches were dropped.

Acknowledged delivery: an ``events`` frame written to the socket is kept (encoded, in
``_unacked``) until the publisher's cumulative ``{"t":"ack","seq":N}`` says every batch up to N is
in Redis. After a reconnect (the publisher restarted or was SIGKILLed) every unacknowledged batch
is written again, in order, before any new one; the publisher's idempotent apply (a watermark per
producer, collector/redis_scripts.py) makes the re-send harmless. The producer id in ``hello``
(exchange + this process's start id) tells the publisher which watermark a batch belongs to; a
new worker process is a new producer. The unacknowledged window is bounded
(``max_unacked_batches`` / ``max_unacked_bytes``): at the bound the sender stops writing, the
queue fills, and then backpressure and counted drops apply as above.

Resume points (:meth:`PublisherChannel.request_resume`): a new worker process asks, once per
process, where Redis stands for its trade streams: ``{"t":"resume?","streams":[...]}`` right after
``hello``; the publisher answers ``{"t":"resume","hwm":{...},"last":{...}}`` (or ``"error"`` while
Redis is unreachable: asked again every ``RESUME_RETRY`` s while connected, and on every reconnect
until answered). The answer goes to the requester's callback; the asking never blocks anything.

The publisher may be absent or restart: the sender reconnects with backoff (0.05 s .. 2 s) and
batches accumulate meanwhile (bounded as above). :meth:`close` flushes the partial batch, writes
everything queued and waits (until its deadline) for the acks, so a graceful stop loses nothing
while a publisher is up, even one that restarts meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import deque
from pathlib import Path
from typing import Any, Callable, Iterable

from shared import ipc
from shared.backoff import Backoff
from shared.logutil import LogLimiter
from shared.events import WireEvent
from shared.settings import ChannelSettings

log = logging.getLogger(__name__)

#: frames written per drain() (bounds the socket buffer growth between drains)
_FRAMES_PER_DRAIN = 64
#: seconds between resume questions while the publisher answers "error" (Redis unreachable)
RESUME_RETRY = 1.0
#: trade streams in one resume question at most (more are not asked: they start without a resume point)
RESUME_MAX_STREAMS = 10_000


class PublisherChannel:
    def __init__(
        self,
        exchange: str,
        socket_path: str | Path,
        cfg: ChannelSettings,
        *,
        reconnect_initial: float = 0.05,
        reconnect_max: float = 2.0,
        overflow_max: int = 64,
    ) -> None:
        self.exchange = exchange
        self.socket_path = str(socket_path)
        self.batch_size = cfg.batch_size
        self.flush_interval = cfg.flush_interval
        self.max_queued = cfg.max_queued_batches
        self.put_timeout = cfg.put_timeout
        self.max_unacked = cfg.max_unacked_batches
        self.max_unacked_bytes = cfg.max_unacked_bytes
        self.overflow_max = overflow_max
        #: this worker process's producer id (the publisher's watermark key); unique per start
        self.producer = f"{exchange}.{os.getpid()}-{os.urandom(4).hex()}"
        self._backoff = Backoff(reconnect_initial, reconnect_max)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._batch: list[WireEvent] = []
        self._flush_handle: asyncio.TimerHandle | None = None
        self._expiry_handle: asyncio.TimerHandle | None = None
        # admitted frames, oldest first; each item: (frame dict, events in it)
        self._queue: deque[tuple[dict, int]] = deque()
        # closed batches waiting (until their deadline) for room in _queue
        self._overflow: deque[tuple[float, dict, int]] = deque()
        # written but not acknowledged, oldest first: (seq, encoded frame, events in it)
        self._unacked: deque[tuple[int, bytes, int]] = deque()
        self._unacked_bytes = 0
        self._resend = False  # a new connection: write every unacked frame first
        self._wakeup = asyncio.Event()
        # set whenever the queue is at or below half of max_queued (producers wait on it, bounded)
        self._room = asyncio.Event()
        self._room.set()
        self._sender_idle = False
        self._sender_task: asyncio.Task | None = None
        self._reader_task: asyncio.Task | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._seq = 0
        #: resume question (streams, callback) until answered; see request_resume
        self._resume: tuple[list[str], Callable[[dict[str, Any]], None]] | None = None
        self._resume_retry: asyncio.TimerHandle | None = None
        self.resume_asked = 0
        self._closing = False
        self._closed = False
        self._drop_log = LogLimiter()
        # counters (cumulative)
        self.events_in = 0
        self.events_out = 0
        self.batches_out = 0
        self.drops = 0
        self.dropped_batches = 0
        self.instruments_dropped = 0
        self.connects = 0
        self.events_acked = 0
        self.batches_resent = 0
        #: events written but not acknowledged when close() gave up (maybe in Redis, maybe not)
        self.unconfirmed = 0
        self.last_error: str | None = None

    # ---- lifecycle ----
    def start(self) -> None:
        """Start the sender (it connects in the background; puts are accepted at once)."""
        self._loop = asyncio.get_running_loop()
        self._sender_task = asyncio.create_task(self._sender(), name=f"{self.exchange}-channel")

    @property
    def connected(self) -> bool:
        return self._writer is not None and not self._writer.is_closing()

    def queued_batches(self) -> int:
        return len(self._queue) + len(self._overflow)

    def pending_events(self) -> int:
        """Events accepted but not yet written (current batch + queued + waiting for room)."""
        return len(self._batch) + sum(n for _, n in self._queue) + sum(n for _, _, n in self._overflow)

    def stats(self) -> dict[str, Any]:
        return {
            "events_in": self.events_in,
            "events_out": self.events_out,
            "drops": self.drops,
            "channel": "connected" if self.connected else "disconnected",
            "queued_batches": self.queued_batches(),
            "unacked_batches": len(self._unacked),
            "events_acked": self.events_acked,
            "batches_resent": self.batches_resent,
        }

    def unacked_events(self) -> int:
        return sum(n for _, _, n in self._unacked)

    # ---- hot path ----
    def put(self, event: WireEvent) -> None:
        """Accept one wire event (never blocks; see the module docstring for drops)."""
        if self._closed:
            self._drop(1, batches=0)
            return
        self.events_in += 1
        batch = self._batch
        batch.append(event)
        if len(batch) >= self.batch_size:
            self._close_batch()
        elif self._flush_handle is None:
            self._arm_flush()
            if self._sender_idle:
                # adaptive batching: an idle sender takes the partial batch at once (low latency
                # at low rates); while it is busy writing, events accumulate into full batches
                self._wakeup.set()

    def put_many(self, events: Iterable[WireEvent]) -> None:
        """``put`` for each event (the WebSocket transport's sink)."""
        for ev in events:
            self.put(ev)

    async def backpressure(self) -> None:
        """A yield point for producers: returns at once while the queue is at most half full,
        else waits (at most put_timeout) for the sender to make room. Awaited by the WebSocket
        reader, this lets TCP push back on the exchange instead of dropping batches."""
        if len(self._queue) * 2 <= self.max_queued and not self._overflow:
            await asyncio.sleep(0)
            return
        self._room.clear()
        try:
            await asyncio.wait_for(self._room.wait(), self.put_timeout)
        except asyncio.TimeoutError:
            pass

    def send_instruments(self, market: str, full: bool, source: str, detected_at: int,
                         instruments: dict[str, dict]) -> None:
        """Queue an ``instruments`` frame, ordered after every event put before it."""
        if self._closed:
            self.instruments_dropped += 1
            return
        self._close_batch()
        frame = {"t": "instruments", "exchange": self.exchange, "market": market, "full": full,
                 "source": source, "detected_at": detected_at, "instruments": instruments}
        self._enqueue(frame, 0)

    def request_resume(self, streams: list[str], on_answer: Callable[[dict[str, Any]], None]) -> None:
        """Ask the publisher (now, or as soon as connected) where Redis stands for ``streams``;
        ``on_answer`` gets the ``resume`` frame once. Asked again until answered."""
        self._resume = (list(streams)[:RESUME_MAX_STREAMS], on_answer)
        self._ask_resume()

    def _ask_resume(self) -> None:
        self._resume_retry = None
        writer = self._writer
        if self._resume is None or writer is None or writer.is_closing():
            return  # _connect asks
        ipc.write_frame(writer, {"t": "resume?", "streams": self._resume[0]})
        self.resume_asked += 1

    def _on_resume(self, msg: dict[str, Any]) -> None:
        if self._resume is None:
            return
        if "error" in msg:
            # Redis unreachable at the publisher: ask again soon (bounded: one timer)
            if self._resume_retry is None and self._loop is not None:
                self._resume_retry = self._loop.call_later(RESUME_RETRY, self._ask_resume)
            return
        _, on_answer = self._resume
        self._resume = None
        try:
            on_answer(msg)
        except Exception:  # noqa: BLE001 - a bad answer must not stop reading the acks
            log.exception("%s channel: resume answer not applied", self.exchange)

    # ---- batching ----
    def _arm_flush(self) -> None:
        loop = self._loop or asyncio.get_running_loop()
        self._flush_handle = loop.call_later(self.flush_interval, self._on_flush_timer)

    def _on_flush_timer(self) -> None:
        self._flush_handle = None
        self._close_batch()

    def _close_batch(self) -> None:
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        batch = self._batch
        if not batch:
            return
        self._batch = []
        self._seq += 1
        self._enqueue({"t": "events", "exchange": self.exchange, "seq": self._seq, "events": batch}, len(batch))

    def _enqueue(self, frame: dict, n_events: int) -> None:
        if not self._overflow and len(self._queue) < self.max_queued:
            self._queue.append((frame, n_events))
            self._wakeup.set()
        elif self.put_timeout > 0 and len(self._overflow) < self.overflow_max:
            # full: wait (without blocking the loop) at most put_timeout for room
            self._overflow.append((time.monotonic() + self.put_timeout, frame, n_events))
            if self._expiry_handle is None:
                self._arm_expiry()
        else:
            self._drop_frame(frame, n_events)

    def _arm_expiry(self) -> None:
        if not self._overflow:
            return
        loop = self._loop or asyncio.get_running_loop()
        delay = max(0.0, self._overflow[0][0] - time.monotonic())
        self._expiry_handle = loop.call_later(delay, self._on_expiry)

    def _on_expiry(self) -> None:
        self._expiry_handle = None
        self._admit_overflow()
        now = time.monotonic()
        while self._overflow and self._overflow[0][0] <= now:
            _, frame, n = self._overflow.popleft()
            self._drop_frame(frame, n)
        self._arm_expiry()

    def _admit_overflow(self) -> None:
        moved = False
        while self._overflow and len(self._queue) < self.max_queued:
            _, frame, n = self._overflow.popleft()
            self._queue.append((frame, n))
            moved = True
        if moved:
            self._wakeup.set()

    def _drop_frame(self, frame: dict, n_events: int) -> None:
        if frame.get("t") == "instruments":
            self.instruments_dropped += 1
        self._drop(n_events, batches=1)

    def _drop(self, n_events: int, batches: int) -> None:
        self.drops += n_events
        self.dropped_batches += batches
        if self._drop_log.ok("drop"):
            log.warning("%s channel full or closed: dropped %d events so far (publisher %s)",
                        self.exchange, self.drops, "connected" if self.connected else "not connected")

    # ---- sender ----
    async def _connect(self) -> None:
        reader, writer = await asyncio.open_unix_connection(self.socket_path)
        ipc.write_frame(writer, {"t": "hello", "exchange": self.exchange, "pid": os.getpid(),
                                 "producer": self.producer})
        self._writer = writer
        self.connects += 1
        self._ask_resume()
        self._resend = bool(self._unacked)
        self._reader_task = asyncio.create_task(self._watch(reader, writer), name=f"{self.exchange}-channel-rx")
        log.info("%s channel connected to publisher", self.exchange)

    async def _watch(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Read the publisher's acks (and notice it going away)."""
        try:
            while True:
                msg = await ipc.read_frame(reader)
                if msg is None:
                    break
                if type(msg) is dict and msg.get("t") == "ack" and type(msg.get("seq")) is int:
                    self._on_ack(msg["seq"])
                elif type(msg) is dict and msg.get("t") == "resume":
                    self._on_resume(msg)
        except (ipc.FrameError, ConnectionError, OSError):
            pass
        if self._writer is writer:
            self._disconnected("publisher closed the channel")

    def _on_ack(self, seq: int) -> None:
        """Everything up to ``seq`` is in Redis: forget it."""
        unacked = self._unacked
        freed = False
        while unacked and unacked[0][0] <= seq:
            _, data, n = unacked.popleft()
            self._unacked_bytes -= len(data)
            self.events_acked += n
            freed = True
        if freed:
            self._wakeup.set()

    def _window_full(self) -> bool:
        return len(self._unacked) >= self.max_unacked or self._unacked_bytes >= self.max_unacked_bytes

    def _disconnected(self, why: str) -> None:
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.close()
            self.last_error = f"publisher channel: {why}"
            log.warning("%s channel: %s; reconnecting", self.exchange, why)
        self._wakeup.set()

    async def _sender(self) -> None:
        while True:
            writer = self._writer
            if writer is None or writer.is_closing():
                if writer is not None:
                    self._disconnected("connection closing")
                if self._closing and not self._queue and not self._unacked:
                    return
                try:
                    await self._connect()
                except OSError as exc:
                    delay = self._backoff.next_delay()
                    self.last_error = f"publisher channel: cannot connect ({exc.__class__.__name__})"
                    if self._backoff.attempts in (1, 10) or self._backoff.attempts % 100 == 0:
                        log.warning("%s channel: cannot connect to %s (%s); retrying in %.2fs",
                                    self.exchange, self.socket_path, exc.__class__.__name__, delay)
                    await asyncio.sleep(delay)
                continue
            if self._resend:
                # a new connection: everything not acknowledged goes first, in order
                self._resend = False
                try:
                    for k, (_, data, _) in enumerate(list(self._unacked)):
                        writer.write(data)
                        self.batches_resent += 1
                        if k % _FRAMES_PER_DRAIN == _FRAMES_PER_DRAIN - 1:
                            await writer.drain()
                    await writer.drain()
                except (ConnectionError, OSError) as exc:
                    if self._writer is writer:
                        self._disconnected(f"write failed ({exc.__class__.__name__})")
                continue
            if not self._queue and self._batch and not self._closed:
                self._close_batch()  # the sender is free: ship the partial batch now
            if not self._queue or self._window_full():
                if self._closing and not self._queue and not self._unacked:
                    try:
                        await writer.drain()
                    except (ConnectionError, OSError):
                        pass
                    return
                self._wakeup.clear()
                self._sender_idle = True
                try:
                    await self._wakeup.wait()
                finally:
                    self._sender_idle = False
                continue
            try:
                n = 0
                while self._queue and n < _FRAMES_PER_DRAIN and not writer.is_closing() and not self._window_full():
                    frame, n_events = self._queue.popleft()
                    data = ipc.encode(frame)
                    writer.write(data)
                    n += 1
                    self.events_out += n_events
                    if frame["t"] == "events":  # kept until acked (instruments: a later snapshot replaces it)
                        self._unacked.append((frame["seq"], data, n_events))
                        self._unacked_bytes += len(data)
                    if n_events:
                        self.batches_out += 1
                self._admit_overflow()
                if len(self._queue) * 2 <= self.max_queued:
                    self._room.set()
                await writer.drain()
                self._backoff.reset()
            except (ConnectionError, OSError) as exc:
                if self._writer is writer:
                    self._disconnected(f"write failed ({exc.__class__.__name__})")

    async def close(self, deadline: float) -> None:
        """Graceful stop: flush the partial batch, write everything queued, drain, half-close.

        ``deadline`` is an absolute ``time.monotonic()`` value; whatever could not be written by
        then is counted in ``drops``.
        """
        if self._closed:
            return
        self._close_batch()
        self._closed = True  # later puts are drops
        self._closing = True
        if self._expiry_handle is not None:
            self._expiry_handle.cancel()
            self._expiry_handle = None
        if self._resume_retry is not None:
            self._resume_retry.cancel()
            self._resume_retry = None
        self._resume = None
        # accepted data is written out now, whatever the soft bound says
        while self._overflow:
            _, frame, n = self._overflow.popleft()
            self._queue.append((frame, n))
        self._wakeup.set()
        task = self._sender_task
        if task is not None and not task.done():
            try:
                await asyncio.wait_for(asyncio.shield(task), max(0.0, deadline - time.monotonic()))
            except asyncio.TimeoutError:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
            except Exception as exc:  # noqa: BLE001 - the sender died; count what is left below
                self.last_error = f"publisher channel sender failed: {exc!r}"[:200]
        if self._unacked:
            self.unconfirmed += self.unacked_events()
            log.warning("%s channel: %d events written but not acknowledged by the stop deadline "
                        "(in Redis or not: the publisher did not confirm)", self.exchange, self.unconfirmed)
        left = sum(n for _, n in self._queue)
        if self._queue:
            log.error("%s channel: %d events (%d frames) not delivered by the stop deadline",
                      self.exchange, left, len(self._queue))
            self.drops += left
            self.dropped_batches += len(self._queue)
            self._queue.clear()
        writer, self._writer = self._writer, None
        if self._reader_task is not None:
            self._reader_task.cancel()
            await asyncio.gather(self._reader_task, return_exceptions=True)
        if writer is not None:
            try:
                if writer.can_write_eof() and not writer.is_closing():
                    writer.write_eof()
                writer.close()
                await asyncio.wait_for(writer.wait_closed(), max(0.05, deadline - time.monotonic()))
            except (asyncio.TimeoutError, ConnectionError, OSError):
                pass
