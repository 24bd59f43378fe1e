"""A write round whose replies never come back (the connection dies after Redis got the commands,
or before) is resolved exactly: applied rounds are not written again, lost ones are. Real
publisher process, real redis-server, and a TCP proxy in between that can swallow replies or
requests and then cut the connection."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from tests.conftest import free_port, wait_until
from tests.integration.test_publisher import STREAM, make_settings, procs, trade, trade_ids  # noqa: F401

pytestmark = pytest.mark.integration


class CutProxy:
    """127.0.0.1:port -> Redis. ``mode``: pass | swallow_replies | swallow_requests. In a swallow
    mode every connection is cut ``cut_after`` seconds after the first swallowed bytes."""

    def __init__(self, target_port: int, cut_after: float = 0.3) -> None:
        self.port = free_port()
        self.target_port = target_port
        self.cut_after = cut_after
        self.mode = "pass"
        self.swallowed = 0
        self.loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        self._ready.wait(5)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self._serve())

    async def _serve(self) -> None:
        server = await asyncio.start_server(self._client, "127.0.0.1", self.port)
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
            while not cut.is_set():
                data = await src.read(65536)
                if not data:
                    break
                if self.mode == swallow_in:
                    self.swallowed += len(data)
                    self.loop.call_later(self.cut_after, cut.set)
                    continue
                dst.write(data)
                await dst.drain()

        tasks = [asyncio.ensure_future(pump(cr, sw, "swallow_requests")),
                 asyncio.ensure_future(pump(sr, cw, "swallow_replies")),
                 asyncio.ensure_future(cut.wait())]
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for t in tasks:
            t.cancel()
        for w in (cw, sw):
            w.transport.abort()


@pytest.mark.parametrize("mode,outcome", [("swallow_replies", "applied"), ("swallow_requests", "resent")])
def test_a_round_with_lost_replies_is_written_exactly_once(redis_server, short_tmp, procs, mode, outcome) -> None:  # noqa: F811
    proxy = CutProxy(redis_server.port)
    settings = make_settings(short_tmp, f"redis://127.0.0.1:{proxy.port}/0")
    pub = procs.publisher(settings)
    w = procs.worker(settings)
    r = redis_server.client()
    w.events([trade(i) for i in range(100)])
    wait_until(lambda: r.xlen(STREAM) == 100, what="first 100")
    proxy.mode = mode
    w.events([trade(i) for i in range(100, 150)])
    wait_until(lambda: proxy.swallowed > 0, what="a round in flight through the cut")
    time.sleep(0.5)  # the connection is cut; the publisher finds out and retries
    proxy.mode = "pass"
    wait_until(lambda: r.xlen(STREAM) >= 150, timeout=20, what="150 trades")
    s = pub.stats(lambda s: s["redis"] == "up" and s["buffered"] == 0 and s["rounds_resolved"][outcome] >= 1,
                  what=f"the lost round resolved as {outcome}")
    time.sleep(0.5)
    assert trade_ids(r) == list(range(150))  # in order, none lost, none twice
    assert s["streams"]["binance|trade"]["pushed"] == 150
