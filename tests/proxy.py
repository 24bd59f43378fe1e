"""A TCP proxy for fault tests (127.0.0.1:port -> a target port), run in its own thread.

``mode``:
- ``pass``: bytes flow both ways;
- ``swallow_replies`` / ``swallow_requests``: bytes in that direction are dropped, and every
  connection is cut ``cut_after`` seconds after the first swallowed bytes (a round whose replies
  never come back, or whose commands never arrive);
- ``delay``: every chunk in both directions waits ``delay_s`` before it is forwarded, in order
  (a slow Redis: a congested link, a busy server).

Used by tests/integration/test_write_rounds.py and the fault-injection suite (bench/faults.py).
"""

from __future__ import annotations

import asyncio
import threading

from tests.conftest import free_port

MODES = ("pass", "swallow_replies", "swallow_requests", "delay")
#: chunks queued per direction in delay mode before the reader waits (bounded memory)
DELAY_QUEUE_MAX = 1024


class CutProxy:
    """127.0.0.1:``port`` -> 127.0.0.1:``target_port`` with switchable faults (see module doc)."""

    def __init__(self, target_port: int, cut_after: float = 0.3, delay_s: float = 0.0) -> None:
        self.port = free_port()
        self.target_port = target_port
        self.cut_after = cut_after
        self.delay_s = delay_s
        self.mode = "pass"
        self.swallowed = 0
        self.delayed_chunks = 0
        self.loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._server: asyncio.AbstractServer | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        if not self._ready.wait(5):
            raise RuntimeError("proxy did not start")

    def set_mode(self, mode: str, delay_s: float | None = None) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}")
        if delay_s is not None:
            self.delay_s = delay_s
        self.mode = mode

    def close(self) -> None:
        """Stop listening and cut every connection (the thread ends)."""
        if self.loop.is_closed():
            return
        self.loop.call_soon_threadsafe(self._stop)
        self._thread.join(5)

    def _stop(self) -> None:
        for task in asyncio.all_tasks(self.loop):
            task.cancel()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_until_complete(self._serve())
        except asyncio.CancelledError:
            pass
        finally:
            self.loop.close()

    async def _serve(self) -> None:
        server = await asyncio.start_server(self._client, "127.0.0.1", self.port)
        self._server = server
        self._ready.set()
        async with server:
            await server.serve_forever()

    async def _client(self, cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        try:
            sr, sw = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            cw.close()
            return
        cut = asyncio.Event()

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter, swallow_in: str) -> None:
            # delay mode: a reader stamps each chunk, a writer forwards it once it is old enough,
            # so the link adds latency without reordering or limiting throughput
            queue: asyncio.Queue[tuple[float, bytes] | None] = asyncio.Queue(DELAY_QUEUE_MAX)

            async def forward() -> None:
                while (item := await queue.get()) is not None:
                    due, data = item
                    wait = due - self.loop.time()
                    if wait > 0:
                        await asyncio.sleep(wait)
                    dst.write(data)
                    await dst.drain()

            writer = asyncio.ensure_future(forward())
            try:
                while not cut.is_set():
                    data = await src.read(65536)
                    if not data:
                        break
                    if self.mode == swallow_in:
                        self.swallowed += len(data)
                        self.loop.call_later(self.cut_after, cut.set)
                        continue
                    due = self.loop.time() + (self.delay_s if self.mode == "delay" else 0.0)
                    if self.mode == "delay":
                        self.delayed_chunks += 1
                    await queue.put((due, data))
                await queue.put(None)
                await writer
            finally:
                writer.cancel()

        tasks = [asyncio.ensure_future(pump(cr, sw, "swallow_requests")),
                 asyncio.ensure_future(pump(sr, cw, "swallow_replies")),
                 asyncio.ensure_future(cut.wait())]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in tasks:
                t.cancel()
            for w in (cw, sw):
                w.transport.abort()
