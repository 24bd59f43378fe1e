"""WebSocket transport against a real aiohttp WebSocket server on 127.0.0.1 (no mocks)."""

from __future__ import annotations

import asyncio
import time
from typing import Awaitable, Callable

import orjson
from aiohttp import WSMsgType, web

from shared.events import fields_to_dict
from shared.settings import ExchangeSettings
from tests.conftest import serve_app, until
from workers.exchanges.base import ParseResult
from workers.exchanges.binance import BinanceSpot
from workers.transport.ws import WsManager

Script = Callable[[web.WebSocketResponse, int], Awaitable[None]]


def trade_frame(tid: int, native: str = "BTCUSDT") -> str:
    data = {"e": "trade", "E": 1, "s": native, "t": tid, "p": "100.5", "q": "0.1", "T": 1700000000000 + tid,
            "m": tid % 2 == 0, "M": True}
    return orjson.dumps({"stream": native.lower() + "@trade", "data": data}).decode()


class WsServer:
    """A scriptable exchange stand-in: ``script(ws, n)`` runs for the n-th connection; after it
    returns the connection stays open (reading) until the client closes it."""

    def __init__(self, script: Script, *, autoping: bool = True) -> None:
        self.script = script
        self.autoping = autoping
        self.conns: list[web.WebSocketResponse] = []
        self.paths: list[str] = []
        self.opened_at: list[float] = []
        self.closed_at: dict[int, float] = {}
        self.received: list[tuple[int, float, WSMsgType, object]] = []
        self.port = 0
        self._runner: web.AppRunner | None = None

    async def start(self) -> "WsServer":
        app = web.Application()
        app.router.add_get("/stream", self._handler)
        app.router.add_get("/ws/{name}", self._handler)
        self._runner, self.port = await serve_app(app)
        return self

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def stop(self) -> None:
        for ws in self.conns:
            if not ws.closed:
                await ws.close()
        if self._runner is not None:
            await self._runner.cleanup()

    def open_count(self) -> int:
        return sum(1 for ws in self.conns if not ws.closed)

    async def _handler(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(autoping=self.autoping, max_msg_size=0)
        await ws.prepare(request)
        n = len(self.conns)
        self.conns.append(ws)
        self.paths.append(str(request.rel_url))
        self.opened_at.append(time.monotonic())
        reader = asyncio.create_task(self._read(ws, n))
        try:
            await self.script(ws, n)
            await reader
        finally:
            reader.cancel()
            self.closed_at.setdefault(n, time.monotonic())
        return ws

    async def _read(self, ws: web.WebSocketResponse, n: int) -> None:
        async for msg in ws:
            self.received.append((n, time.monotonic(), msg.type, msg.data))
        self.closed_at.setdefault(n, time.monotonic())


def cfg_for(server: WsServer, **kw) -> ExchangeSettings:
    base = dict(ws_url=server.base, reconnect_initial=0.05, reconnect_max=0.2, stale_timeout=10.0)
    base.update(kw)
    return ExchangeSettings(**base)


def run(coro: Awaitable[None], timeout: float = 20.0) -> None:
    asyncio.run(asyncio.wait_for(coro, timeout))


class Harness:
    def __init__(self, script: Script, symbols=("BTC-USDT",), adapter=None, server_autoping=True,
                 manager_kw=None, **cfg_kw) -> None:
        self.server = WsServer(script, autoping=server_autoping)
        self.symbols = list(symbols)
        self.adapter = adapter or BinanceSpot(self.symbols)
        self.cfg_kw = cfg_kw
        self.manager_kw = manager_kw or {}
        self.events: list[list] = []
        self.mgr: WsManager | None = None

    async def __aenter__(self) -> "Harness":
        await self.server.start()
        self.mgr = WsManager(self.adapter, cfg_for(self.server, **self.cfg_kw), self.events.extend,
                             **self.manager_kw)
        await self.mgr.start(self.adapter.trade_streams())
        return self

    async def __aexit__(self, *exc) -> None:
        assert self.mgr is not None
        await self.mgr.stop()
        await self.server.stop()

    def trade_ids(self) -> list[int]:
        return [int(fields_to_dict(ev[3])["trade_id"]) for ev in self.events]


# ---------------------------------------------------------------------------------------------

def test_receives_parses_and_applies_url_override() -> None:
    async def script(ws, n):
        for tid in (1, 2, 3):
            await ws.send_str(trade_frame(tid))

    async def main():
        async with Harness(script, symbols=("BTC-USDT", "ETH-USDT")) as h:
            await until(lambda: len(h.events) == 3, what="3 trades")
            # the override replaced scheme+host+port; path and query are Binance's
            assert h.server.paths == ["/stream?streams=btcusdt@trade/ethusdt@trade"]
            f = fields_to_dict(h.events[0][3])
            assert (f["symbol"], f["trade_id"], f["price"], f["qty"]) == ("BTC-USDT", "1", "100.5", "0.1")
            assert h.trade_ids() == [1, 2, 3]
            st = h.mgr.stats()
            assert st["ws_connections"] == 1 and st["connection"] == "connected"
            assert st["ws_reconnects"] == 0 and st["parse_errors"] == 0
            assert st["last_message_at"] is not None and st["last_event_at"] is not None
        assert h.mgr.stats()["ws_connections"] == 0

    run(main())


def test_streams_sharded_over_connections() -> None:
    async def script(ws, n):
        pass

    symbols = ("BTC-USDT", "ETH-USDT", "BNB-BTC", "SOL-USDT", "XRP-USDT")

    async def main():
        async with Harness(script, symbols=symbols, max_streams_per_connection=2) as h:
            await until(lambda: len(h.server.paths) == 3 and h.mgr.stats()["ws_connections"] == 3,
                        what="3 connections")
            assert sorted(h.server.paths) == sorted([
                "/stream?streams=btcusdt@trade/ethusdt@trade",
                "/stream?streams=bnbbtc@trade/solusdt@trade",
                "/stream?streams=xrpusdt@trade",
            ])

    run(main())


def test_reconnects_with_backoff_after_server_drop() -> None:
    async def script(ws, n):
        if n == 0:
            await ws.send_str(trade_frame(1))
            await asyncio.sleep(0.05)
            await ws.close()
        else:
            await ws.send_str(trade_frame(2))

    async def main():
        async with Harness(script, reconnect_initial=0.3, reconnect_max=1.0) as h:
            await until(lambda: h.trade_ids() == [1, 2], what="trade after reconnect")
            st = h.mgr.stats()
            assert st["ws_reconnects"] == 1 and st["ws_stale"] == 0 and st["ws_connections"] == 1
            # backoff: the new attempt came no sooner than the jittered minimum (initial / 2)
            assert h.server.opened_at[1] - h.server.closed_at[0] >= 0.15

    run(main())


def test_reconnects_when_server_absent_then_appears() -> None:
    """Connect failures are retried with backoff; state is 'down' meanwhile."""

    async def main():
        server = WsServer(lambda ws, n: ws.send_str(trade_frame(7)))
        await server.start()
        port = server.port
        await server.stop()  # nothing listens on the port now
        events: list = []
        cfg = ExchangeSettings(ws_url=f"http://127.0.0.1:{port}", reconnect_initial=0.05, reconnect_max=0.1)
        adapter = BinanceSpot(["BTC-USDT"])
        mgr = WsManager(adapter, cfg, events.extend)
        await mgr.start(adapter.trade_streams())
        try:
            await until(lambda: mgr.connect_failures >= 2, what="failed attempts")
            assert mgr.stats()["connection"] == "down"
            # the exchange comes back on the same port
            app = web.Application()

            async def handler(request):
                ws = web.WebSocketResponse()
                await ws.prepare(request)
                await ws.send_str(trade_frame(7))
                async for _ in ws:
                    pass
                return ws

            app.router.add_get("/stream", handler)
            runner = web.AppRunner(app, handle_signals=False)
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", port).start()
            try:
                await until(lambda: len(events) == 1, what="trade after the server appeared")
                assert mgr.stats()["connection"] == "connected"
            finally:
                await mgr.stop()
                await runner.cleanup()
        finally:
            await mgr.stop()

    run(main())


def test_stale_watchdog_reconnects_silent_connection() -> None:
    async def script(ws, n):
        if n == 0:
            await ws.send_str(trade_frame(1))  # then silence, connection left open
        else:
            await ws.send_str(trade_frame(2))

    async def main():
        async with Harness(script, stale_timeout=0.4) as h:
            await until(lambda: h.trade_ids() == [1, 2], what="trade on the new connection")
            st = h.mgr.stats()
            assert st["ws_stale"] == 1 and st["ws_reconnects"] == 1
            # the client closed the silent connection itself
            await until(lambda: 0 in h.server.closed_at, what="old connection closed")
            assert h.server.conns[0].closed
            assert st["stale"] is False  # fresh data arrived since

    run(main())


def test_stale_flag_while_exchange_silent() -> None:
    async def script(ws, n):
        pass  # connects, never says anything

    async def main():
        async with Harness(script, stale_timeout=0.2) as h:
            await until(lambda: h.mgr.stats()["ws_stale"] >= 2, what="repeated stale reconnects")
            assert h.mgr.is_stale() is True

    run(main())


class Firehose:
    """Trades with consecutive ids broadcast to every open connection, like an exchange."""

    def __init__(self) -> None:
        self.open: set[web.WebSocketResponse] = set()
        self.next_id = 1
        self.task: asyncio.Task | None = None

    async def script(self, ws, n):
        self.open.add(ws)

    async def run(self, interval: float = 0.004) -> None:
        while True:
            tid = self.next_id
            self.next_id += 1
            frame = trade_frame(tid)
            for ws in list(self.open):
                if ws.closed:
                    self.open.discard(ws)
                    continue
                try:
                    await ws.send_str(frame)
                except Exception:  # noqa: BLE001
                    self.open.discard(ws)
            await asyncio.sleep(interval)


def test_rotation_by_age_with_overlap_loses_nothing() -> None:
    hose = Firehose()

    async def main():
        async with Harness(hose.script, max_connection_age=0.5, manager_kw={"overlap_timeout": 2.0}) as h:
            task = asyncio.create_task(hose.run())
            try:
                # three completed rotations: connections 0..2 closed by the client, 3 open
                await until(lambda: len(h.server.closed_at) >= 3 and len(h.server.conns) >= 4,
                            timeout=10, what="3 rotations")
                await until(lambda: len(h.events) > 0 and h.trade_ids()[-1] > hose.next_id - 3, what="catch up")
            finally:
                task.cancel()
            ids = sorted(set(h.trade_ids()))
            first = ids[0]
            # every trade from the first one received onwards arrived at least once
            assert ids == list(range(first, ids[-1] + 1))
            st = h.mgr.stats()
            assert st["ws_reconnects"] == 0  # rotations are not reconnects
            assert len(h.server.conns) >= 4
            # overlap: each replacement opened before its predecessor was closed
            for i in range(1, 4):
                assert h.server.opened_at[i] < h.server.closed_at[i - 1]

    run(main())


def test_server_shutdown_rotates_with_overlap() -> None:
    hose = Firehose()

    async def script(ws, n):
        await hose.script(ws, n)
        if n == 0:
            await asyncio.sleep(0.2)
            await ws.send_str('{"stream":"!serverShutdown","data":{"e":"serverShutdown","E":1770123456789}}')

    async def main():
        async with Harness(script) as h:
            task = asyncio.create_task(hose.run())
            try:
                await until(lambda: 0 in h.server.closed_at and len(h.server.conns) == 2, what="rotation")
                await asyncio.sleep(0.1)
            finally:
                task.cancel()
            assert h.mgr.rotations == 1 and h.mgr.reconnects == 0
            assert h.server.opened_at[1] < h.server.closed_at[0]
            ids = sorted(set(h.trade_ids()))
            assert ids == list(range(ids[0], ids[-1] + 1))
            assert h.mgr.stats()["ws_connections"] == 1

    run(main())


def test_server_ping_answered_with_echoed_payload() -> None:
    async def script(ws, n):
        await ws.ping(b"ping-payload-42")
        await ws.send_str(trade_frame(1))

    async def main():
        async with Harness(script, server_autoping=False) as h:
            await until(lambda: any(t is WSMsgType.PONG for _, _, t, _ in h.server.received), what="pong")
            pongs = [d for _, _, t, d in h.server.received if t is WSMsgType.PONG]
            assert pongs == [b"ping-payload-42"]
            # Binance: no client pings (they count toward the 5 msgs/s limit)
            assert not any(t is WSMsgType.PING for _, _, t, _ in h.server.received)

    run(main())


class _BoomAdapter(BinanceSpot):
    def parse_ws_message(self, raw, rx_ns, rx_ms) -> ParseResult:
        if raw == "boom":
            raise RuntimeError("parser bug")
        return super().parse_ws_message(raw, rx_ns, rx_ms)


def test_garbage_binary_oversized_and_parser_crash_counted_then_data_flows() -> None:
    async def script(ws, n):
        if n == 0:
            await ws.send_str("this is not json")
            await ws.send_bytes(b"\x00\x01\x02binary")
            await ws.send_str("boom")
            await ws.send_str(trade_frame(1))
            await ws.send_str('{"stream":"btcusdt@trade","data":{"e":"trade","s":"B' + "X" * 3000 + '"}}')
        else:
            await ws.send_str(trade_frame(2))

    async def main():
        async with Harness(script, adapter=_BoomAdapter(["BTC-USDT"]),
                           manager_kw={"max_msg_size": 2048}) as h:
            await until(lambda: h.trade_ids() == [1, 2], what="good frames around the bad ones")
            st = h.mgr.stats()
            # garbage text, binary, parser crash, oversized (which also costs the connection)
            assert st["parse_errors"] == 4
            assert st["ws_reconnects"] == 1

    run(main())


class _SubscribingAdapter(BinanceSpot):
    max_send_rate = 100.0

    def subscribe_messages(self, streams):
        return [orjson.dumps({"method": "SUBSCRIBE", "params": [s], "id": i}).decode()
                for i, s in enumerate(streams)]


def test_outgoing_messages_are_paced() -> None:
    async def script(ws, n):
        pass

    symbols = ("BTC-USDT", "ETH-USDT", "BNB-BTC", "SOL-USDT", "XRP-USDT", "ADA-USDT")

    async def main():
        async with Harness(script, symbols=symbols, adapter=_SubscribingAdapter(list(symbols)),
                           ws_send_rate=10.0) as h:
            await until(lambda: len(h.server.received) == 6, what="6 subscribe messages")
            texts = [orjson.loads(d) for _, _, t, d in h.server.received if t is WSMsgType.TEXT]
            assert [m["id"] for m in texts] == list(range(6))
            times = [ts for _, ts, _, _ in h.server.received]
            # 10/s with burst 1: six messages take at least five intervals of 0.1 s
            assert times[-1] - times[0] >= 5 * 0.1 * 0.9
            assert h.mgr.sent == 6

    run(main())


def test_stop_stops_delivery() -> None:
    hose = Firehose()

    async def main():
        async with Harness(hose.script) as h:
            task = asyncio.create_task(hose.run())
            await until(lambda: len(h.events) > 5, what="some trades")
            await h.mgr.stop()
            n = len(h.events)
            await asyncio.sleep(0.1)
            task.cancel()
            assert len(h.events) == n
            assert h.mgr.stats()["ws_connections"] == 0

    run(main())


def test_shutdown_notice_on_every_connection_does_not_churn() -> None:
    async def script(ws, n):
        await ws.send_str(trade_frame(n + 1))
        await ws.send_str('{"e":"serverShutdown","E":1}')

    async def main():
        async with Harness(script, reconnect_initial=0.2, reconnect_max=0.4) as h:
            await asyncio.sleep(1.0)
            # unguarded, every connection would be replaced at once (dozens per second);
            # the backoff spaces rotations: 0.1-0.2 s, then 0.2-0.4 s each
            assert 2 <= len(h.server.conns) <= 8
            assert h.mgr.stats()["ws_connections"] == 1

    run(main())


# ---------------------------------------------------------------------------------------------
# per-stream control (market-data feeds)

def test_resubscribe_without_live_support_reconnects_only_that_shard() -> None:
    """BinanceSpot names its streams in the URL and has no live resubscribe: resubscribing one
    stream reconnects the shard carrying it, never the others; resets are reported per shard."""
    resets: list[list[str]] = []
    servers: list[WsServer] = []

    async def script(ws, n):
        # the server records the path before the script runs
        await ws.send_str(trade_frame(n + 1, "ETHUSDT" if "eth" in servers[0].paths[n] else "BTCUSDT"))

    async def main():
        h = Harness(script, symbols=("BTC-USDT", "ETH-USDT"), max_streams_per_connection=1,
                    manager_kw={"on_shard_reset": resets.append})
        servers.append(h.server)
        async with h:
            await until(lambda: len(h.events) == 2, what="a trade on each connection")
            assert h.mgr.resubscribe("nosuch@trade") is False
            assert h.mgr.resubscribe("ethusdt@trade") is True
            await until(lambda: len(h.server.paths) == 3 and h.mgr.stats()["ws_connections"] == 2,
                        what="the ETH shard reconnected")
            eth_first = h.server.paths.index("/stream?streams=ethusdt@trade")
            btc = h.server.paths.index("/stream?streams=btcusdt@trade")
            assert h.server.paths[2] == "/stream?streams=ethusdt@trade"
            assert eth_first in h.server.closed_at and btc not in h.server.closed_at
            assert resets == [["ethusdt@trade"]]
            st = h.mgr.stats()
            assert st["ws_reconnects"] == 1 and st["subscription_failures"] == 0

    run(main())


def test_books_come_from_the_current_connection_only() -> None:
    """During a rotation overlap both connections deliver the same book diffs; only the shard's
    current connection feeds the book engine (duplicates would break sequence rules)."""
    from shared.marketdata import BookMsg

    class BookFeed(BinanceSpot):
        def parse_ws_message(self, raw, rx_ns, rx_ms):
            res = super().parse_ws_message(raw, rx_ns, rx_ms)
            if res.events:
                tid = int(fields_to_dict(res.events[0][3])["trade_id"])
                res = ParseResult(data=True, books=[BookMsg("binance", "spot", "BTC-USDT", "BTCUSDT", False, tid,
                                                           [], [])], events=res.events)
            return res

    books: list[tuple[int, int]] = []

    async def script(ws, n):
        if n == 0:
            await ws.send_str(trade_frame(1))
            await ws.send_str('{"e":"serverShutdown","E":1}')
            for tid in range(2, 40):   # keeps talking during the overlap
                await asyncio.sleep(0.01)
                await ws.send_str(trade_frame(tid))
        else:
            for tid in range(100, 140):
                await ws.send_str(trade_frame(tid))
                await asyncio.sleep(0.01)

    def sink(msgs, rx_ns):
        books.extend((m.seq, rx_ns) for m in msgs)

    async def main():
        async with Harness(script, adapter=BookFeed(["BTC-USDT"]), manager_kw={"books_sink": sink},
                           reconnect_initial=0.05) as h:
            await until(lambda: 0 in h.server.closed_at and any(s >= 130 for s, _ in books), what="rotation")
            seqs = [s for s, _ in books]
            # the old connection's diffs until the switch, then only the new one's: no interleaving
            switch = next(i for i, s in enumerate(seqs) if s >= 100)
            assert all(s < 100 for s in seqs[:switch]) and all(s >= 100 for s in seqs[switch:])
            assert h.mgr.stats()["ws_rotations"] == 1

    run(main())


def test_resubscribe_budget_spent_reconnects_that_shard_once() -> None:
    """Live resubscribes are paced per connection (OKX: 480 ops/h); when many books break at
    once the shard is reconnected instead (one subscription resends everything)."""

    class LiveFeed(BinanceSpot):
        resubscribe_rate = 1 / 3600
        resubscribe_burst = 1.0

        def resubscribe_messages(self, streams):
            return [orjson.dumps({"method": m, "params": list(streams), "id": 1}).decode()
                    for m in ("UNSUBSCRIBE", "SUBSCRIBE")]

    async def script(ws, n):
        await ws.send_str(trade_frame(n + 1))

    async def main():
        async with Harness(script, symbols=("BTC-USDT", "ETH-USDT"), adapter=LiveFeed(["BTC-USDT", "ETH-USDT"])) as h:
            await until(lambda: len(h.events) == 1, what="a trade")
            assert h.mgr.resubscribe("btcusdt@trade") is True      # live: within the budget
            await until(lambda: len(h.server.received) == 2, what="unsubscribe + subscribe")
            assert [orjson.loads(m[3])["method"] for m in h.server.received] == ["UNSUBSCRIBE", "SUBSCRIBE"]
            assert h.mgr.resubscribe("ethusdt@trade") is True      # budget spent: reconnect
            assert h.mgr.resubscribe("btcusdt@trade") is True      # already on its way
            await until(lambda: len(h.server.conns) == 2 and h.mgr.stats()["ws_connections"] == 1,
                        what="one reconnect")
            await asyncio.sleep(0.3)
            assert len(h.server.conns) == 2 and h.mgr.stats()["resubscribes"] == 1

    run(main())
