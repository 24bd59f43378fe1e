"""Market-data runtime (workers/marketdata.py + WsManager per-subscription control) against
in-test aiohttp WebSocket/REST servers speaking each exchange's wire format from the fixtures."""

from __future__ import annotations

import asyncio
import copy
import json
from typing import Any, Awaitable, Callable

import orjson
import pytest
from aiohttp import WSMsgType, web

from shared.events import fields_to_dict
from shared.settings import DEFAULT_MAXLEN, ConfigError, ExchangeSettings, Settings, load_settings
from tests.conftest import FIXTURES, run_async, serve_app, until
from workers.exchanges import get_adapter
from workers.exchanges.base import ExchangeAdapter
from workers.marketdata import MarketData, book_config
from workers.runtime import Worker
from workers.transport.rest import RestClient

WS = FIXTURES / "ws"


def load(name: str) -> list:
    return json.loads((WS / name).read_text())


def dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"))


run = run_async


Script = Callable[["ExchangeServer", web.WebSocketResponse, int], Awaitable[None]]
Rest = Callable[[web.Request], tuple[int, Any]]


class ExchangeServer:
    """One local stand-in for every host of an exchange (the URL overrides point here): a
    WebSocket on any path (``script(server, ws, n)`` for the n-th connection, then it stays open
    reading) and REST on any other GET (``rest(request) -> (status, body)``)."""

    def __init__(self, script: Script, rest: Rest | None = None) -> None:
        self.script = script
        self.rest = rest
        self.conns: list[web.WebSocketResponse] = []
        self.ws_paths: list[str] = []
        self.received: list[tuple[int, str]] = []
        self.rest_calls: list[str] = []
        self.go = asyncio.Event()
        self._runner: Any = None
        self.port = 0

    async def start(self) -> "ExchangeServer":
        app = web.Application()
        app.router.add_route("GET", "/{tail:.*}", self._handle)
        self._runner, self.port = await serve_app(app)
        return self

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def stop(self) -> None:
        for ws in self.conns:
            if not ws.closed:
                await ws.close()
        await self._runner.cleanup()

    def sent(self, n: int | None = None) -> list[Any]:
        """What the client sent (JSON decoded where it is JSON), on connection n or all."""
        out = []
        for i, text in self.received:
            if n is None or i == n:
                try:
                    out.append(json.loads(text))
                except ValueError:
                    out.append(text)
        return out

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        if request.headers.get("Upgrade", "").lower() == "websocket":
            return await self._ws(request)
        self.rest_calls.append(str(request.rel_url))
        assert self.rest is not None, f"unexpected REST call {request.rel_url}"
        status, body = self.rest(request)
        return web.Response(status=status, body=orjson.dumps(body), content_type="application/json")

    async def _ws(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        n = len(self.conns)
        self.conns.append(ws)
        self.ws_paths.append(str(request.rel_url))
        reader = asyncio.create_task(self._read(ws, n))
        try:
            await self.script(self, ws, n)
            await reader
        finally:
            reader.cancel()
        return ws

    async def _read(self, ws: web.WebSocketResponse, n: int) -> None:
        async for msg in ws:
            if msg.type == WSMsgType.TEXT:
                self.received.append((n, msg.data))


class Runner:
    """A MarketData of one exchange wired to an ExchangeServer; events land in ``events``."""

    def __init__(self, exchange: str, script: Script, rest: Rest | None = None, **cfg_kw: Any) -> None:
        self.exchange = exchange
        self.server = ExchangeServer(script, rest)
        self.cfg_kw = cfg_kw
        self.events: list[list] = []
        self.md: MarketData | None = None
        self.rest: RestClient | None = None

    async def __aenter__(self) -> "Runner":
        await self.server.start()
        kw = dict(ws_url=self.server.base, rest_url=self.server.base, market_data=True,
                  reconnect_initial=0.05, reconnect_max=0.2, book_publish_interval=0.05)
        kw.update(self.cfg_kw)
        cfg = ExchangeSettings(**kw)
        adapter: ExchangeAdapter = get_adapter(self.exchange, cfg.symbols)
        assert adapter.market_data_problem(cfg) is None
        self.rest = RestClient(self.exchange, cfg, weight_limit=adapter.rest_weight_limit,
                               weight_header=adapter.rest_used_weight_header,
                               weight_window=adapter.rest_weight_window, ban_statuses=adapter.rest_ban_statuses,
                               retry_initial=0.05)
        self.md = MarketData(self.exchange, cfg, adapter, self.events.extend, self.rest)
        await self.md.start()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        assert self.md is not None and self.rest is not None
        await self.md.stop()
        await self.rest.close()
        await self.server.stop()

    def of(self, cls: str, symbol: str | None = None) -> list[dict[str, str]]:
        return [fields_to_dict(ev[3]) | {"_stream": ev[0]} for ev in self.events
                if ev[2] == cls and (symbol is None or fields_to_dict(ev[3])["symbol"] == symbol)]

    def rest_for(self, needle: str) -> list[str]:
        return [c for c in self.server.rest_calls if needle in c]


def levels(text: str) -> list[tuple[str, str]]:
    return [tuple(lv) for lv in json.loads(text)]


# ---------------------------------------------------------------------------------------------
# Binance spot: depth chain + REST snapshot -> book tops; a gap; a lost connection

NKN = load("binance_spot/sync_sequence_nknusdt.json")   # diff, REST snapshot, diff, diff
BTC_DIFF = load("binance_spot/depthUpdate.json")[3]      # BTCUSDT U=11294093710 u=11294093726
#: a snapshot for the BTC diff above (ids and levels shaped after it; no recorded BTC pair exists)
BTC_SNAPSHOT = {"lastUpdateId": 11294093709,
                "bids": [["35743.98000000", "0.30000000"], ["35743.50000000", "1.20000000"]],
                "asks": [["35743.97000000", "0.05000000"], ["35744.10000000", "0.70000000"]]}


def nkn_gap_diff() -> dict:
    """The last NKN diff moved past a hole: U 499869760 after u 499869757."""
    frame = copy.deepcopy(NKN[3])
    frame["data"].update(U=499869760, u=499869761)
    return frame


def test_binance_spot_depth_chain_and_rest_snapshot_reach_the_sink_as_book_tops() -> None:
    async def script(srv, ws, n):
        for frame in (NKN[0], NKN[2], NKN[3]):
            await ws.send_str(dumps(frame))

    def rest(request):
        assert request.path == "/api/v3/depth"
        return 200, NKN[1]

    async def main():
        async with Runner("binance", script, rest, symbols=["NKN-USDT"], channels=["book"], markets=["spot"]) as r:
            await until(lambda: any(t["seq"] == "499869757" for t in r.of("book")), what="a synced book top")
            assert r.server.ws_paths == ["/stream?streams=nknusdt@depth@100ms"]
            # one snapshot, limit = book_depth, its weight by the limit (501-1000 -> 50)
            assert r.server.rest_calls == ["/api/v3/depth?symbol=NKNUSDT&limit=1000"]
            assert r.rest.used_weight == 50
            top = [t for t in r.of("book") if t["seq"] == "499869757"][-1]
            assert top["_stream"] == "md:book:binance:spot:NKN-USDT" and top["depth"] == "20"
            bids, asks = levels(top["bids"]), levels(top["asks"])
            assert len(bids) == len(asks) == 20
            # snapshot best bids, 0.352 updated by the last diff, 0.3517 added by the second
            assert bids[:5] == [("0.35210000", "672.00000000"), ("0.35200000", "1290.00000000"),
                                ("0.35190000", "3260.00000000"), ("0.35180000", "3052.00000000"),
                                ("0.35170000", "4265.00000000")]
            assert asks[:3] == [("0.35250000", "3959.00000000"), ("0.35260000", "3199.00000000"),
                                ("0.35270000", "4201.00000000")]
            assert top["ts_exchange"] == "1633998512668" and top["native_symbol"] == "NKNUSDT"
            st = r.md.stats()
            assert (st["books"], st["books_synced"], st["book_gaps"], st["book_snapshots"]) == (1, 1, 0, 1)
            assert st["events"]["book"] >= 1 and "book_gap" not in st["events"]

    run(main())


def test_binance_gap_gives_one_marker_and_one_refetch_for_that_symbol_only() -> None:
    nkn_calls = []

    async def script(srv, ws, n):
        for frame in (NKN[0], BTC_DIFF, NKN[2], NKN[3]):
            await ws.send_str(dumps(frame))
        await srv.go.wait()
        await ws.send_str(dumps(nkn_gap_diff()))

    def rest(request):
        sym = request.query["symbol"]
        if sym == "BTCUSDT":
            return 200, BTC_SNAPSHOT
        nkn_calls.append(1)
        if len(nkn_calls) == 1:
            return 200, NKN[1]
        later = dict(NKN[1], lastUpdateId=499869760)   # the resync's snapshot covers the hole
        return 200, later

    async def main():
        async with Runner("binance", script, rest, symbols=["NKN-USDT", "BTC-USDT"], channels=["book"],
                          markets=["spot"], book_mode="both") as r:
            books = r.md.books
            await until(lambda: books.stats()["synced"] == 2, what="both books synced")
            btc_seq = books.book("binance", "spot", "BTCUSDT").last_seq
            assert btc_seq == 11294093726
            r.server.go.set()
            await until(lambda: books.book("binance", "spot", "NKNUSDT").last_seq == 499869761,
                        what="NKN resynced after the gap")
            await asyncio.sleep(0.2)   # nothing more may come
            gaps = r.of("book_gap")
            # one marker per published stream of that book (book_mode both: book and book_delta)
            assert sorted(g["_stream"] for g in gaps) == ["md:book:binance:spot:NKN-USDT",
                                                         "md:book_delta:binance:spot:NKN-USDT"]
            for g in gaps:
                assert (g["symbol"], g["reason"], g["last_seq"], g["got_seq"]) == \
                    ("NKN-USDT", "gap", "499869757", "499869761")
            assert len(r.rest_for("symbol=NKNUSDT")) == 2 and len(r.rest_for("symbol=BTCUSDT")) == 1
            assert books.book("binance", "spot", "BTCUSDT").last_seq == btc_seq
            st = r.md.stats()
            assert (st["book_gaps"], st["book_snapshots"], st["books_synced"]) == (1, 3, 2)
            # the deltas: the resync's snapshot replaced the book, then the diff that broke it applied
            nkn_deltas = r.of("book_delta", "NKN-USDT")
            assert [(d["seq"], d["snapshot"]) for d in nkn_deltas][-2:] == [("499869760", "1"), ("499869761", "0")]

    run(main())


def test_lost_connection_marks_only_its_own_books_stale_and_resyncs_them() -> None:
    async def script(srv, ws, n):
        nkn = "nknusdt" in srv.ws_paths[n]
        for frame in ((NKN[0], NKN[2], NKN[3]) if nkn else (BTC_DIFF,)):
            await ws.send_str(dumps(frame))
        if nkn and n < 2:
            await srv.go.wait()
            await ws.close()

    def rest(request):
        return 200, (BTC_SNAPSHOT if request.query["symbol"] == "BTCUSDT" else NKN[1])

    async def main():
        # one stream per connection: each book on its own shard
        async with Runner("binance", script, rest, symbols=["NKN-USDT", "BTC-USDT"], channels=["book"],
                          markets=["spot"], max_streams_per_connection=1) as r:
            books = r.md.books
            await until(lambda: books.stats()["synced"] == 2, what="both books synced")
            assert len(r.server.ws_paths) == 2
            r.server.go.set()
            await until(lambda: len(r.server.ws_paths) == 3, what="the NKN shard reconnected")
            await until(lambda: len(r.rest_for("symbol=NKNUSDT")) == 2 and
                        books.book("binance", "spot", "NKNUSDT").synced, what="NKN resynced")
            stale = r.of("book_gap")
            assert [(g["symbol"], g["reason"], g["last_seq"], g["_stream"]) for g in stale] == [
                ("NKN-USDT", "stale", "499869757", "md:book:binance:spot:NKN-USDT")]
            assert len(r.rest_for("symbol=BTCUSDT")) == 1 and books.book("binance", "spot", "BTCUSDT").synced
            assert r.md.stats()["book_stale_resets"] == 1

    run(main())


# ---------------------------------------------------------------------------------------------
# per-subscription freshness

TICKER_ETH = load("binance_spot/ticker_24hr.json")[0]   # ethusdt@ticker


def test_silent_topic_alone_is_resubscribed_then_its_shard_reconnected() -> None:
    async def script(srv, ws, n):
        while not ws.closed:
            await ws.send_str(dumps(TICKER_ETH))
            await asyncio.sleep(0.03)

    async def main():
        async with Runner("binance", script, symbols=["ETH-USDT", "BTC-USDT"], channels=["ticker"],
                          markets=["spot"], subscribe_timeout=0.3, stream_stale_timeout=0.3) as r:
            await until(lambda: len(r.server.sent(0)) >= 2, what="a resubscribe")
            unsub, sub = r.server.sent(0)[:2]
            assert (unsub["method"], unsub["params"]) == ("UNSUBSCRIBE", ["btcusdt@ticker"])
            assert (sub["method"], sub["params"]) == ("SUBSCRIBE", ["btcusdt@ticker"])
            assert len(r.server.ws_paths) == 1
            mgr = r.md.managers[0]
            assert mgr.topic_state("ethusdt@ticker") == {"strikes": 0, "has_data": True}
            # the third failure in a row reconnects that shard (here the only one)
            await until(lambda: len(r.server.ws_paths) == 2, what="the shard reconnected", timeout=5)
            sent = [m["params"] for m in r.server.sent(0)]
            # resubscribes (paced at 4 messages/s: the last may not be out before the reconnect),
            # never of the ETH stream
            assert len(sent) >= 3 and set(map(tuple, sent)) == {("btcusdt@ticker",)}
            st = r.md.stats()
            assert st["subscription_failures"] == 3 and st["topic_reconnects"] == 1
            assert st["events"]["ticker"] >= 10
            tk = r.of("ticker", "ETH-USDT")[0]
            assert (tk["last"], tk["bid_price"], tk["change_pct"]) == ("1792.84000000", "1792.83000000", "1.600")
            # after that: backed off, no reconnect churn for one bad symbol
            await asyncio.sleep(1.0)
            assert len(r.server.ws_paths) == 2

    run(main())


# ---------------------------------------------------------------------------------------------
# Deribit: JSON-RPC subscribe, heartbeat, test_request answered

def test_deribit_subscribes_sets_heartbeat_and_answers_test_request() -> None:
    hb = load("deribit/heartbeat.json")
    ticker = load("deribit/ticker.json")[1]   # ticker.BTC-PERPETUAL.100ms with funding_8h

    async def script(srv, ws, n):
        await until(lambda: len(srv.sent(n)) >= 2, what="heartbeat + subscribe")
        await ws.send_str(dumps(hb[2]))          # test_request
        await ws.send_str(dumps(ticker))

    async def main():
        # book + volatility_index together: the DVOL index shares the symbol map but has no book
        async with Runner("deribit", script, symbols=["BTC-USD"],
                          channels=["ticker", "trade", "book", "volatility_index"]) as r:
            await until(lambda: len(r.server.sent(0)) >= 3 and r.of("ticker"), what="the answer and the ticker")
            set_hb, subscribe, answer = r.server.sent(0)[:3]
            assert r.server.ws_paths == ["/ws/api/v2"]
            assert (set_hb["method"], set_hb["params"]) == ("public/set_heartbeat", {"interval": 30})
            assert subscribe["method"] == "public/subscribe"
            assert sorted(subscribe["params"]["channels"]) == [
                "book.BTC-PERPETUAL.100ms", "deribit_volatility_index.btc_usd", "ticker.BTC-PERPETUAL.100ms",
                "trades.BTC-PERPETUAL.100ms"]
            assert answer == hb[3]   # {"jsonrpc":"2.0","id":9099,"method":"public/test","params":{}}
            tk = r.of("ticker")[0]
            assert tk["_stream"] == "md:ticker:deribit:perp:BTC-USD"
            assert (tk["mark_price"], tk["funding_rate"], tk["open_interest"], tk["bid_qty"]) == \
                ("29932.79", "2.55e-06", "559791310", "149910.0")

    run(main())


# ---------------------------------------------------------------------------------------------
# Bybit: ticker deltas merged; an orderbook gap resubscribes that topic only

def test_bybit_linear_ticker_delta_is_merged_into_the_snapshot() -> None:
    snap = load("bybit/tickers_linear.json")[0]              # BTCUSDT snapshot
    delta = copy.deepcopy(load("bybit/tickers_linear.json")[1])   # recorded on BTCUSD: moved to BTCUSDT
    delta["topic"], delta["data"]["symbol"] = "tickers.BTCUSDT", "BTCUSDT"

    async def script(srv, ws, n):
        await ws.send_str(dumps(snap))
        await ws.send_str(dumps(delta))

    async def main():
        async with Runner("bybit", script, symbols=["BTC-USDT"], channels=["ticker"], markets=["perp"]) as r:
            await until(lambda: len(r.of("ticker")) == 2, what="two tickers")
            assert r.server.ws_paths == ["/v5/public/linear"]
            assert r.server.sent(0)[0] == {"op": "subscribe", "args": ["tickers.BTCUSDT"]}
            first, merged = r.of("ticker")
            assert (first["last"], first["bid_price"], first["open_interest"]) == ("28550.70", "28550.70", "52774.528")
            # unchanged fields from the snapshot, changed ones from the delta
            assert (merged["last"], merged["mark_price"], merged["next_funding_time"]) == \
                ("28550.70", "28552.81", "1680681600000")
            assert (merged["bid_price"], merged["bid_qty"], merged["ask_price"], merged["open_interest"]) == \
                ("28560.00", "340549", "28560.50", "449736674")
            assert (merged["change_pct"], merged["seq"], merged["ts_exchange"]) == ("2.3362", "20856433603", "1680673822776")

    run(main())


def test_bybit_book_gap_resubscribes_that_topic_only() -> None:
    frames = load("bybit/orderbook_linear.json")   # [0] snapshot, [1] delta of BTCPERP (USDC perp)
    gap = copy.deepcopy(frames[1])
    gap["data"]["u"] = 20683575

    async def script(srv, ws, n):
        await ws.send_str(dumps(frames[0]))
        await ws.send_str(dumps(frames[1]))
        await srv.go.wait()
        await ws.send_str(dumps(gap))
        await until(lambda: len(srv.sent(n)) >= 3, what="the resubscribe")
        await ws.send_str(dumps(frames[0]))   # a new subscription starts with a snapshot

    async def main():
        async with Runner("bybit", script, symbols=["BTC-USDC", "ETH-USDC"], channels=["book", "trade"],
                          markets=["perp"], book_depth=50, book_mode="both") as r:
            books = r.md.books
            await until(lambda: books.stats()["synced"] == 1, what="the BTC book synced")
            await until(lambda: r.of("book", "BTC-USDC"), what="a top")
            tops = r.of("book", "BTC-USDC")
            assert (levels(tops[-1]["bids"]), levels(tops[-1]["asks"])) == \
                ([("28555.20", "0.677")], [("28555.30", "0.029")])
            r.server.go.set()
            await until(lambda: len(r.server.sent(0)) >= 3, what="the resubscribe")
            subscribe, unsub, sub = r.server.sent(0)[:3]
            assert subscribe["args"] == ["orderbook.50.BTCPERP", "publicTrade.BTCPERP", "orderbook.50.ETHPERP",
                                         "publicTrade.ETHPERP"]
            assert unsub == {"op": "unsubscribe", "args": ["orderbook.50.BTCPERP"]}
            assert sub == {"op": "subscribe", "args": ["orderbook.50.BTCPERP"]}
            await until(lambda: books.stats()["synced"] == 1 and r.md.stats()["book_resubscribes"] == 1,
                        what="resynced by the new snapshot")
            [g] = r.of("book_gap", "BTC-USDC")[:1]
            assert (g["reason"], g["last_seq"], g["got_seq"]) == ("gap", "20683569", "20683575")
            assert len(r.server.ws_paths) == 1   # no reconnect for one book

    run(main())


# ---------------------------------------------------------------------------------------------
# OKX: WS book snapshot + updates, text keep-alive, a sequence break resubscribes that book only

def test_okx_books_keepalive_and_resubscribe_on_a_sequence_break(monkeypatch: pytest.MonkeyPatch) -> None:
    from workers.exchanges import okx_md
    from workers.exchanges.base import KeepAlive

    monkeypatch.setattr(okx_md.OkxMdFeed, "keepalive", KeepAlive(server_pings=False, client_ping=True,
                                                                  interval=0.2, text_ping="ping"))
    snap = copy.deepcopy(load("okx/books.json")[4])   # BTC-USDT, prevSeqId -1, seqId 123456
    snap["data"][0]["checksum"] = 0                   # production sends 0 since 2026-06-23
    update = {"arg": snap["arg"], "action": "update", "data": [{
        "asks": [["8476.98", "0", "0", "0"]], "bids": [["8476.97", "300", "0", "13"]],
        "ts": "1597026383185", "checksum": 0, "prevSeqId": 123456, "seqId": 123457}]}
    broken = copy.deepcopy(update)
    broken["data"][0].update(prevSeqId=123460, seqId=123461)

    async def script(srv, ws, n):
        await until(lambda: srv.sent(n), what="the subscribe")
        await ws.send_str(dumps(snap))
        await ws.send_str(dumps(update))
        await srv.go.wait()
        await ws.send_str(dumps(broken))
        await until(lambda: {"op": "subscribe", "args": [{"channel": "books", "instId": "BTC-USDT"}]} in srv.sent(n),
                    what="the resubscribe")
        await ws.send_str(dumps(snap))

    async def main():
        async with Runner("okx", script, symbols=["BTC-USDT"], channels=["book", "ticker"], markets=["spot"]) as r:
            await until(lambda: any(t["seq"] == "123457" for t in r.of("book")), what="a synced top")
            top = [t for t in r.of("book") if t["seq"] == "123457"][-1]
            assert levels(top["bids"])[:2] == [("8476.97", "300"), ("8475.55", "101")]
            assert levels(top["asks"])[:2] == [("8477", "7"), ("8477.34", "85")]
            assert r.server.ws_paths == ["/ws/v5/public"]
            assert r.server.sent(0)[0] == {"op": "subscribe", "args": [{"channel": "books", "instId": "BTC-USDT"},
                                                                       {"channel": "tickers", "instId": "BTC-USDT"}]}
            await until(lambda: "ping" in r.server.sent(0), what="a text ping")
            r.server.go.set()
            await until(lambda: r.md.stats()["book_resubscribes"] == 1 and r.md.books.stats()["synced"] == 1,
                        what="resubscribed and resynced")
            control = [m for m in r.server.sent(0) if m != "ping"]
            assert control[1:] == [{"op": "unsubscribe", "args": [{"channel": "books", "instId": "BTC-USDT"}]},
                                   {"op": "subscribe", "args": [{"channel": "books", "instId": "BTC-USDT"}]}]
            [gap] = r.of("book_gap")
            assert (gap["reason"], gap["last_seq"], gap["got_seq"]) == ("gap", "123457", "123461")

    run(main())


# ---------------------------------------------------------------------------------------------
# REST polls

def test_binance_usdm_open_interest_and_long_short_polls() -> None:
    bodies = {
        "/fapi/v1/openInterest": load("binance_usdm/rest_open_interest.json")[0],
        "/futures/data/topLongShortPositionRatio": load("binance_usdm/rest_top_long_short_position_ratio.json")[0][-1:],
        "/futures/data/topLongShortAccountRatio": load("binance_usdm/rest_top_long_short_position_ratio.json")[1],
        "/futures/data/globalLongShortAccountRatio": load("binance_usdm/rest_global_long_short_account_ratio.json")[0][-1:],
    }

    async def script(srv, ws, n):
        pass

    def rest(request):
        return 200, bodies[request.path]

    async def main():
        async with Runner("binance", script, rest, symbols=["BTC-USDT"], channels=["open_interest", "long_short"],
                          markets=["perp"], rest_poll_interval=1, long_short_period="5m") as r:
            assert r.md.managers == []   # nothing on the WebSocket
            await until(lambda: len(r.events) == 4, what="one event per poll")
            [oi] = r.of("open_interest")
            assert (oi["_stream"], oi["open_interest"], oi["ts_exchange"]) == \
                ("md:open_interest:binance:perp:BTC-USDT", "84617.188", "1654336844754")
            ls = {ev[0]: fields_to_dict(ev[3]) for ev in r.events if ev[2] == "long_short"}
            assert sorted(ls) == ["md:long_short_global_account:binance:perp:BTC-USDT",
                                  "md:long_short_top_account:binance:perp:BTC-USDT",
                                  "md:long_short_top_position:binance:perp:BTC-USDT"]
            top = ls["md:long_short_top_position:binance:perp:BTC-USDT"]
            assert (top["ratio"], top["long_pct"], top["period"], top["ts_exchange"]) == \
                ("1.4337", "0.3583", "5m", "1583139900000")
            assert "/futures/data/globalLongShortAccountRatio?symbol=BTCUSDT&period=5m&limit=1" in r.server.rest_calls
            await until(lambda: len(r.server.rest_calls) >= 8, what="a second round", timeout=4)
            assert r.md.stats()["polls_ok"] >= 8 and r.md.stats()["poll_errors"] == 0

    run(main())


# ---------------------------------------------------------------------------------------------
# declarations (pure)

def md_cfg(**kw: Any) -> ExchangeSettings:
    return ExchangeSettings(**{"market_data": True, "symbols": ["BTC-USDT"], **kw})


def test_binance_feeds_route_usdm_streams_and_size_snapshots() -> None:
    a = get_adapter("binance", ["BTC-USDT"])
    feeds = a.market_data_feeds(md_cfg(kline_intervals=["1m"]))
    assert [(f.label, f.max_send_rate) for f, _ in feeds] == [("md spot", 5.0), ("md perp public", 10.0),
                                                              ("md perp market", 10.0)]
    (spot, s1), (public, s2), (market, s3) = feeds
    # spot: both trade tapes, @trade (trade) and @aggTrade (agg_trade)
    assert s1 == ["btcusdt@trade", "btcusdt@aggTrade", "btcusdt@depth@100ms", "btcusdt@bookTicker", "btcusdt@ticker",
                  "btcusdt@kline_1m"]
    assert public.ws_url(s2) == "wss://fstream.binance.com/public/stream?streams=btcusdt@depth@100ms/btcusdt@bookTicker"
    assert s3 == ["btcusdt@aggTrade", "btcusdt@ticker", "btcusdt@kline_1m", "btcusdt@markPrice@1s",
                  "btcusdt@forceOrder"]
    assert market.ws_url(s3).startswith("wss://fstream.binance.com/market/stream?streams=")
    # only the public route carries books; the watched streams are the clocked ones
    assert public.book_stream("perp", "BTCUSDT") == "btcusdt@depth@100ms" and market.book_stream("perp", "BTCUSDT") is None
    assert [s for s in s3 if market.watch_topic(s)] == ["btcusdt@ticker", "btcusdt@kline_1m", "btcusdt@markPrice@1s"]
    assert a.book_snapshot_request("perp", "BTCUSDT", md_cfg()).weight == 20          # limit 1000
    assert a.book_snapshot_request("spot", "BTCUSDT", md_cfg(book_depth=100)).weight == 5
    assert book_config(md_cfg(book_mode="delta"), a).publish_deltas and not book_config(md_cfg(book_mode="delta"), a).publish_tops
    # a resubscribe is UNSUBSCRIBE + SUBSCRIBE of that stream
    unsub, sub = (json.loads(m) for m in spot.resubscribe_messages(["btcusdt@depth@100ms"]))
    assert (unsub["method"], sub["method"], sub["params"]) == ("UNSUBSCRIBE", "SUBSCRIBE", ["btcusdt@depth@100ms"])


def test_okx_and_bybit_declarations() -> None:
    okx = get_adapter("okx")
    feeds = okx.market_data_feeds(md_cfg(channels=["book", "kline", "liquidation"], kline_intervals=["1m", "1d"]))
    (public, s1), (business, s2) = feeds
    assert s1 == ["books:BTC-USDT", "books:BTC-USDT-SWAP", "liquidation-orders:SWAP"]
    assert s2 == ["candle1m:BTC-USDT", "candle1Dutc:BTC-USDT", "candle1m:BTC-USDT-SWAP", "candle1Dutc:BTC-USDT-SWAP"]
    assert business.ws_url(s2) == "wss://ws.okx.com:8443/ws/v5/business"
    assert json.loads(public.subscribe_messages(s1)[0])["args"][-1] == {"channel": "liquidation-orders", "instType": "SWAP"}
    assert public.keepalive.text_ping == "ping" and public.book_stream("perp", "BTC-USDT-SWAP") == "books:BTC-USDT-SWAP"
    assert okx.market_data_problem(md_cfg(channels=["volatility_index"])).startswith("channels: volatility_index")
    assert okx.market_data_problem(md_cfg(kline_intervals=["8h"])) == "kline_intervals: 8h not available on okx"
    assert okx.market_data_problem(md_cfg(long_short_period="15m")) == "long_short_period: okx has 5m, 1h, 1d only"
    # the rest snapshot path (OKX without WS snapshot)
    snap = okx.book_snapshot_request("perp", "BTC-USDT-SWAP", md_cfg(book_ws_snapshot=False))
    assert snap.url == "https://www.okx.com/api/v5/market/books?instId=BTC-USDT-SWAP&sz=400"
    assert book_config(md_cfg(book_ws_snapshot=False), okx).okx_rest_snapshot

    bybit = get_adapter("bybit")
    syms = [f"C{i}-USDT" for i in range(6)]
    (spot, topics), _ = bybit.market_data_feeds(md_cfg(symbols=syms, channels=["trade", "book"]))
    msgs = [json.loads(m) for m in spot.subscribe_messages(topics)]
    assert [len(m["args"]) for m in msgs] == [10, 2]   # spot: at most 10 args per request
    assert bybit.market_data_problem(md_cfg(channels=["bbo"])).startswith("channels: bbo not available")


# ---------------------------------------------------------------------------------------------
# worker configuration

def _configure(name: str, **ex: Any) -> str | None:
    settings = Settings(exchanges={name: {"enabled": True, **ex}})
    return Worker(name, settings).configure()


def test_worker_configuration_of_market_data() -> None:
    assert _configure("binance", symbols=["BTC-USDT"], market_data=True) is None
    # deribit: market data only; listings (default true) ignored, trades come from the md feed
    assert _configure("deribit", symbols=["BTC-USD"], market_data=True) is None
    assert _configure("deribit", symbols=["BTC-USD"], market_data=True, listings=False) is None
    assert _configure("deribit", symbols=["BTC-USD"]).startswith("config error: exchanges.deribit: nothing to collect")
    assert _configure("coinbase", symbols=["BTC-USD"], market_data=True).startswith(
        "config error: exchanges.coinbase.market_data: no market data for coinbase")
    assert _configure("bybit", symbols=["BTC-USDT"], market_data=True, channels=["volatility_index"]).startswith(
        "config error: exchanges.bybit.channels: volatility_index not available on bybit")
    assert _configure("binance", symbols=["BTC-USDT"], market_data=True, kline_intervals=["1s"]) == \
        "config error: exchanges.binance.kline_intervals: 1s klines exist on binance spot only"
    assert _configure("deribit", symbols=["BTC-USDT"], market_data=True, markets=["spot"]) is None
    assert "none is a deribit instrument" in _configure("deribit", symbols=["BTC-USD"], market_data=True,
                                                        markets=["spot"], channels=["book"])
    worker = Worker("deribit", Settings(exchanges={"deribit": {"enabled": True, "symbols": ["BTC-USD"],
                                                               "market_data": True}}))
    assert worker.configure() is None and not worker.listings_on


def test_trades_only_config_runs_on_the_market_data_path() -> None:
    # the default Binance worker (trades, no market_data) gets the md path's gap fill and resume
    worker = Worker("binance", Settings(exchanges={"binance": {"enabled": True, "symbols": ["BTC-USDT"],
                                                               "listings": False}}))
    assert worker.configure() is None and worker.wants_md
    assert worker.md_cfg is not None
    assert (worker.md_cfg.channels, worker.md_cfg.markets, worker.md_cfg.market_data) == (["trade"], ["spot"], True)
    assert worker.cfg is not None and worker.cfg.market_data is False   # the user's settings untouched
    feeds = worker.adapter.market_data_feeds(worker.md_cfg)
    assert [(feed.market, streams) for feed, streams in feeds] == [("spot", ["btcusdt@trade"])]
    assert worker.adapter.market_data_polls(worker.md_cfg) == []
    # trades off: nothing of the kind
    worker = Worker("binance", Settings(exchanges={"binance": {"enabled": True, "symbols": ["BTC-USDT"],
                                                               "trades": False}}))
    assert worker.configure() is None and not worker.wants_md and worker.md_cfg is None


@pytest.mark.parametrize("override, field", [
    ({"channels": ["book", "orderbook"]}, "channels"),
    ({"markets": ["swap"]}, "markets"),
    ({"kline_intervals": ["2m"]}, "kline_intervals"),
    ({"book_depth": 0}, "book_depth"),
    ({"book_top_n": 50, "book_depth": 20}, "book_top_n"),
    ({"book_publish_interval": 0}, "book_publish_interval"),
    ({"book_mode": "full"}, "book_mode"),
    ({"rest_poll_interval": 0.1}, "rest_poll_interval"),
    ({"long_short_period": "7m"}, "long_short_period"),
    ({"subscribe_timeout": 0}, "subscribe_timeout"),
    ({"stream_stale_timeout": -1}, "stream_stale_timeout"),
    ({"market_data": "maybe"}, "market_data"),
])
def test_bad_market_data_settings_are_one_line_errors(override: dict, field: str) -> None:
    with pytest.raises(ConfigError) as exc:
        load_settings(None, exchanges={"okx": override})
    text = str(exc.value)
    assert "\n" not in text and text.startswith(f"config error: exchanges.okx.{field}:"), text


def test_market_data_defaults_and_maxlen() -> None:
    s = load_settings(None, publisher={"maxlen": {"trade": 500}})
    ex = s.exchanges.okx
    assert (ex.market_data, ex.channels, ex.markets, ex.kline_intervals, ex.book_depth, ex.book_top_n,
            ex.book_publish_interval, ex.book_mode, ex.rest_poll_interval, ex.long_short_period,
            ex.subscribe_timeout, ex.stream_stale_timeout) == \
        (False, None, None, ["1m", "5m", "1h"], 1000, 20, 1.0, "top", 60.0, "5m", 30.0, 60.0)
    maxlen = s.publisher.maxlen
    # a configured class replaces its default only
    assert (maxlen["trade"], maxlen["book"], maxlen["book_delta"], maxlen["kline"], maxlen["default"]) == \
        (500, 10_000, 100_000, 10_000, 100_000)
    assert ExchangeSettings(channels=["trade", "book"], trades=False).md_channels(("trade", "book", "bbo")) == ["book"]
    # agg_trade is a trade tape too; by default (channels: null) both tapes where supported
    assert ExchangeSettings(trades=False).md_channels(("trade", "agg_trade", "book")) == ["book"]
    assert ExchangeSettings().md_channels(("trade", "agg_trade", "book")) == ["trade", "agg_trade", "book"]
    assert (maxlen["agg_trade"], DEFAULT_MAXLEN["agg_trade"]) == (100_000, 100_000)
