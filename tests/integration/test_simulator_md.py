"""The simulator's market-data channels, as one real process over real sockets.

Every channel the collector subscribes to must deliver frames that the project's own parsers
(``workers/exchanges/{binance_md,okx_md,bybit_md,deribit}.py``) read without a parse error, with
plausible field values; book chains applied through ``workers.book.BookManager`` must stay
continuous (REST snapshots included) until a gap is injected, and then produce exactly one gap
marker for that symbol. Silence, disconnect, checksum and heartbeat controls are exercised too.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from collections import Counter
from typing import Any, Callable, Iterator

import aiohttp
import pytest

from collector.simulator.client import SimulatorClient, start_simulator_process, stop_simulator_process
from workers.book import BookConfig, BookManager
from workers.exchanges import binance_md, bybit_md, deribit, okx_md
from workers.exchanges.base import ParseResult

pytestmark = pytest.mark.integration

EXCHANGES = ("binance", "okx", "bybit", "deribit")


@pytest.fixture(scope="module")
def ports() -> Iterator[dict[str, str]]:
    proc, _first, ports = start_simulator_process(
        exchanges=list(EXCHANGES),
        extra_args=["--futures-symbols", "BTCUSDT,ETHUSDT", "--md-rate", "10", "--seed", "7"])
    try:
        yield ports
    finally:
        stop_simulator_process(proc)


@pytest.fixture
def sims(ports: dict[str, str]) -> dict[str, SimulatorClient]:
    clients = {name: SimulatorClient(url) for name, url in ports.items()}
    for c in clients.values():
        c.md_reset()
    clients["binance"].set_trade_rate(0)
    return clients


def ws_url(ports: dict[str, str], name: str, path: str) -> str:
    return ports[name].replace("http://", "ws://") + path


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def fields(wire: list) -> dict[str, str]:
    f = wire[3]
    return {"class": wire[2], **dict(zip(f[::2], f[1::2]))}


class Feed:
    """One WebSocket connection whose text frames are parsed on arrival; book messages go through
    the shared BookManager in arrival order; replies (Deribit heartbeats) are sent back."""

    def __init__(self, session: aiohttp.ClientSession, url: str, parse: Callable[[str, int, int], ParseResult],
                 books: BookManager, sends: tuple[str, ...] = (), answer: bool = True) -> None:
        self.session, self.url, self.parse, self.books, self.sends = session, url, parse, books, sends
        self.answer = answer
        self.frames: list[str] = []
        self.events: list[dict[str, str]] = []
        self.markers: list[dict[str, str]] = []
        self.parse_errors = self.rejected = 0
        self.errors: list[str] = []
        self.closed = False
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> "Feed":
        self.ws = await self.session.ws_connect(self.url, autoping=True)
        for text in self.sends:
            await self.ws.send_str(text)
        self._task = asyncio.create_task(self._read())
        return self

    async def __aexit__(self, *exc: Any) -> None:
        assert self.ws is not None and self._task is not None
        await self.ws.close()
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)

    async def send(self, text: str) -> None:
        assert self.ws is not None
        await self.ws.send_str(text)

    async def _read(self) -> None:
        assert self.ws is not None
        async for msg in self.ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                break
            self.frames.append(msg.data)
            r = self.parse(msg.data, time.monotonic_ns(), time.time_ns() // 1_000_000)
            self.parse_errors += r.parse_errors
            self.rejected += r.rejected
            if r.error:
                self.errors.append(r.error)
            self.events += [fields(w) for w in r.events]
            for b in r.books:
                for w in self.books.on_message(b, time.monotonic()):
                    (self.markers if w[2] == "book_gap" else self.events).append(fields(w))
            if self.answer:
                for reply in r.replies:
                    await self.ws.send_str(reply)
        self.closed = True

    def classes(self) -> Counter[str]:
        return Counter(e["class"] for e in self.events)

    def of(self, cls: str, symbol: str | None = None) -> list[dict[str, str]]:
        return [e for e in self.events if e["class"] == cls and (symbol is None or e["symbol"] == symbol)]

    def assert_clean(self) -> None:
        assert self.parse_errors == 0 and self.rejected == 0 and not self.errors, (
            self.parse_errors, self.rejected, self.errors, self.frames[-3:])


def run(coro: Any, timeout: float = 20.0) -> Any:
    async def guarded() -> Any:
        return await asyncio.wait_for(coro, timeout)
    return asyncio.run(guarded())


async def wait_for(pred: Callable[[], Any], timeout: float = 5.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = pred()
        if got:
            return got
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def gap_markers(feed: Feed, symbol: str) -> list[dict[str, str]]:
    return [m for m in feed.markers if m["symbol"] == symbol]


def synced(books: BookManager, exchange: str, market: str, native: str) -> bool:
    keeper = books.book(exchange, market, native)
    return keeper is not None and keeper.synced


# ------------------------------------------------------------------------------------------- Binance
SPOT = {"BTCUSDT": ("BTC-USDT", "spot"), "ETHUSDT": ("ETH-USDT", "spot")}
USDM = {"BTCUSDT": ("BTC-USDT", "perp"), "ETHUSDT": ("ETH-USDT", "perp")}


def test_binance_spot_channels_rest_snapshot_and_one_gap_marker(ports: dict[str, str],
                                                                sims: dict[str, SimulatorClient]) -> None:
    sim = sims["binance"]
    sim.set_trade_rate(10, "BTCUSDT")
    streams = [f"{s}@{c}" for s in ("btcusdt", "ethusdt")
               for c in ("aggTrade", "depth@100ms", "bookTicker", "kline_1m", "ticker")] + ["btcusdt@trade"]
    books = BookManager(BookConfig(snapshot_rate=0))   # the test fetches every snapshot asked for

    async def scenario() -> None:
        async with aiohttp.ClientSession() as session:
            parse = lambda raw, ns, ms: binance_md.parse_message(raw, SPOT, ns, ms)  # noqa: E731
            async with Feed(session, ws_url(ports, "binance", "/stream?streams=" + "/".join(streams)), parse,
                            books) as feed:
                # the book engine asks for a REST snapshot on the first diff; answer it like the worker
                await wait_for(lambda: books.pending(), what="snapshot requests")
                await wait_for(lambda: len(books.pending()) == 2, what="both books asking")
                for req in books.snapshot_requests(time.monotonic() + 100):
                    status, body = get(f"{ports['binance']}/api/v3/depth?symbol={req.native_symbol}&limit=1000")
                    assert status == 200
                    r = binance_md.parse_depth_snapshot(body, req.native_symbol, SPOT, 0)
                    assert r.parse_errors == 0 and len(r.books) == 1
                    assert len(r.books[0].bids) == 100 and r.books[0].bids[0][0] < r.books[0].asks[0][0]
                    for w in books.on_message(r.books[0], time.monotonic()):
                        assert w[2] != "book_gap"
                await wait_for(lambda: synced(books, "binance", "spot", "BTCUSDT")
                               and synced(books, "binance", "spot", "ETHUSDT"), what="books synced")
                await asyncio.sleep(1.0)
                feed.assert_clean()
                assert feed.markers == []
                classes = feed.classes()
                assert {"trade", "agg_trade", "bbo", "kline", "ticker"} <= set(classes), classes
                # @trade lands as trades, spot @aggTrade as the agg_trade tape (aggregate ids contiguous)
                trades = feed.of("trade", "BTC-USDT")
                assert all(t["side"] in ("buy", "sell") and float(t["price"]) > 0 for t in trades)
                aggs = [int(t["trade_id"]) for t in feed.of("agg_trade", "BTC-USDT")]
                assert aggs and aggs == list(range(aggs[0], aggs[0] + len(aggs))), aggs[:20]
                bbo = feed.of("bbo", "ETH-USDT")[-1]
                assert float(bbo["bid_price"]) < float(bbo["ask_price"]) and int(bbo["update_id"]) > 0
                kline = feed.of("kline", "BTC-USDT")[-1]
                assert kline["interval"] == "1m" and int(kline["close_time"]) - int(kline["open_time"]) == 59_999
                ticker = feed.of("ticker", "ETH-USDT")[-1]
                assert ticker["bid_price"] and float(ticker["low"]) <= float(ticker["last"]) <= float(ticker["high"])
                # the local book is what the simulator sent: seq compared with its stats
                stats = sim.md_stats()["books"]["spot:BTCUSDT"]
                keeper = books.book("binance", "spot", "BTCUSDT")
                assert keeper is not None and 0 < keeper.last_seq <= stats["seq"]
                assert stats["sent_seq"] >= keeper.last_seq
                depth_frames = sum(1 for f in feed.frames if '"depthUpdate"' in f)
                assert depth_frames >= 10
                # one lost update on BTC: exactly one marker, ETH untouched
                eth_before = books.book("binance", "spot", "ETHUSDT").last_seq
                sim.md_inject_gap("BTCUSDT", market="spot")
                await wait_for(lambda: gap_markers(feed, "BTC-USDT"), what="gap marker")
                await asyncio.sleep(0.6)
                markers = gap_markers(feed, "BTC-USDT")
                assert len(markers) == 1 and markers[0]["reason"] == "gap"
                assert int(markers[0]["last_seq"]) < int(markers[0]["got_seq"])
                assert gap_markers(feed, "ETH-USDT") == []
                assert books.book("binance", "spot", "ETHUSDT").last_seq > eth_before
                feed.assert_clean()

    run(scenario())
    stats = sim.md_stats()
    assert stats["books"]["spot:BTCUSDT"]["gaps_injected"] == 1
    assert stats["frames_sent"]["depth"] >= 20 and stats["counters"]["gap_updates_skipped"] == 1


def test_binance_usdm_routes_rest_and_gap(ports: dict[str, str], sims: dict[str, SimulatorClient]) -> None:
    sim, base = sims["binance"], ports["binance"]
    books = BookManager(BookConfig(snapshot_rate=0))
    public = ["btcusdt@depth@100ms", "btcusdt@bookTicker", "ethusdt@depth@100ms", "btcusdt@aggTrade"]
    market = ["btcusdt@aggTrade", "btcusdt@markPrice@1s", "btcusdt@forceOrder", "btcusdt@kline_5m",
              "btcusdt@depth@100ms"]

    async def scenario() -> None:
        async with aiohttp.ClientSession() as session:
            parse = lambda raw, ns, ms: binance_md.parse_message(raw, USDM, ns, ms)  # noqa: E731
            pub_url = ws_url(ports, "binance", "/public/stream?streams=" + "/".join(public))
            mkt_url = ws_url(ports, "binance", "/market/stream?streams=" + "/".join(market))
            async with Feed(session, pub_url, parse, books) as pub, Feed(session, mkt_url, parse, books) as mkt:
                await wait_for(lambda: len(books.pending()) == 2, what="both futures books asking")
                for req in books.snapshot_requests(time.monotonic() + 100):
                    status, body = get(f"{base}/fapi/v1/depth?symbol={req.native_symbol}&limit=1000")
                    assert status == 200
                    snap = json.loads(body)
                    assert list(snap) == ["lastUpdateId", "E", "T", "bids", "asks"]
                    r = binance_md.parse_depth_snapshot(body, req.native_symbol, USDM, 0)
                    assert r.parse_errors == 0
                    assert not [w for w in books.on_message(r.books[0], time.monotonic()) if w[2] == "book_gap"]
                await wait_for(lambda: synced(books, "binance", "perp", "BTCUSDT")
                               and synced(books, "binance", "perp", "ETHUSDT"), what="futures books synced")
                await asyncio.sleep(1.2)
                for feed in (pub, mkt):
                    feed.assert_clean()
                    assert feed.markers == []
                # a stream on the wrong route is acked and stays silent (aggTrade on /public, depth on /market)
                assert not any('"aggTrade"' in f for f in pub.frames)
                assert not any('"depthUpdate"' in f for f in mkt.frames)
                assert {"bbo"} <= set(pub.classes())
                assert {"trade", "funding", "liquidation", "kline"} <= set(mkt.classes()), mkt.classes()
                funding = mkt.of("funding")[-1]
                assert funding["market"] == "perp" and int(funding["next_funding_time"]) % (8 * 3_600_000) == 0
                liq = mkt.of("liquidation")[-1]
                assert liq["sampled"] == "1" and liq["position_side"] == ("long" if liq["side"] == "sell" else "short")
                assert mkt.of("kline")[-1]["interval"] == "5m"
                sim.md_inject_gap("ETHUSDT", market="usdm")
                await wait_for(lambda: gap_markers(pub, "ETH-USDT"), what="futures gap marker")
                await asyncio.sleep(0.5)
                assert len(gap_markers(pub, "ETH-USDT")) == 1 and gap_markers(pub, "BTC-USDT") == []

    run(scenario())
    # REST statistics endpoints, read by the project's parsers
    status, body = get(f"{base}/fapi/v1/openInterest?symbol=BTCUSDT")
    assert status == 200
    r = binance_md.parse_open_interest(body, USDM, 0, 0)
    assert r.parse_errors == 0 and float(fields(r.events[0])["open_interest"]) > 0
    for path, kind in (("topLongShortPositionRatio", "top_position"), ("globalLongShortAccountRatio", "global_account")):
        status, body = get(f"{base}/futures/data/{path}?symbol=BTCUSDT&period=5m&limit=3")
        assert status == 200
        r = binance_md.parse_long_short_ratio(body, kind, "5m", USDM, 0, 0)
        assert r.parse_errors == 0 and len(r.events) == 3
        rows = [fields(w) for w in r.events]
        assert [int(x["ts_exchange"]) for x in rows] == sorted(int(x["ts_exchange"]) for x in rows)
        for x in rows:
            assert abs(float(x["long_pct"]) + float(x["short_pct"]) - 1) < 1e-3
        assert get(f"{base}/futures/data/{path}?symbol=BTCUSDT&period=5m&limit=3")[1] == body   # stable samples
    assert json.loads(get(f"{base}/fapi/v1/depth?symbol=NOPEUSDT")[1])["code"] == -1121
    assert json.loads(get(f"{base}/fapi/v1/depth?symbol=BTCUSDT&limit=7")[1])["code"] == -1130
    assert json.loads(get(f"{base}/futures/data/topLongShortPositionRatio?symbol=BTCUSDT&period=7m")[1])["code"] == -1120


# ------------------------------------------------------------------------------------------- OKX
OKX = {"BTC-USDT": ("BTC-USDT", "spot"), "BTC-USDT-SWAP": ("BTC-USDT", "perp"),
       "ETH-USDT-SWAP": ("ETH-USDT", "perp")}


def test_okx_channels_checksum_and_gaps(ports: dict[str, str], sims: dict[str, SimulatorClient]) -> None:
    sim, base = sims["okx"], ports["okx"]
    sim.reset()
    sim.add_listing("ETH", "USDT", market="perp")   # market data follows the venue's instrument list
    sim.md_configure(okx_checksum=True)
    books = BookManager(BookConfig(verify_checksum=True))
    args = [{"channel": c, "instId": i} for i in ("BTC-USDT-SWAP", "ETH-USDT-SWAP")
            for c in ("trades", "books", "tickers", "funding-rate", "open-interest")]
    args += [{"channel": c, "instId": "BTC-USDT"} for c in ("trades", "books", "tickers")]
    args += [{"channel": "liquidation-orders", "instType": "SWAP"}, {"channel": "instruments", "instType": "SWAP"}]
    bad = [{"channel": "books", "instId": "NOPE-USDT"}, {"channel": "funding-rate", "instId": "BTC-USDT"},
           {"channel": "candle1m", "instId": "BTC-USDT"}, {"channel": "books", "instId": "x" * 5000}]

    async def scenario() -> None:
        async with aiohttp.ClientSession() as session:
            parse = lambda raw, ns, ms: okx_md.parse_message(raw, OKX, ns, ms)  # noqa: E731
            sub = json.dumps({"op": "subscribe", "args": args})
            async with Feed(session, ws_url(ports, "okx", "/ws/v5/public"), parse, books, (sub, "ping")) as pub, \
                    Feed(session, ws_url(ports, "okx", "/ws/v5/business"), parse, books,
                         (json.dumps({"op": "subscribe", "args": [{"channel": "candle1m", "instId": "BTC-USDT"}]}),
                          "ping")) as biz:
                await asyncio.sleep(1.2)
                for feed in (pub, biz):
                    feed.assert_clean()
                    assert "pong" in feed.frames
                assert pub.markers == []
                for native in OKX:
                    assert synced(books, "okx", OKX[native][1], native)
                # the instruments channel still answers on the same connection
                assert any('"channel":"instruments"' in f and '"data"' in f for f in pub.frames)
                snapshot = json.loads(next(f for f in pub.frames if '"action":"snapshot"' in f))
                assert snapshot["data"][0]["prevSeqId"] == -1 and snapshot["data"][0]["checksum"] != 0
                assert {"trade", "ticker", "funding", "open_interest", "liquidation"} <= set(pub.classes())
                oi = pub.of("open_interest", "ETH-USDT")[-1]
                assert oi["open_interest"] and oi["open_interest_ccy"] and oi["open_interest_value"]
                assert biz.of("kline")[-1]["interval"] == "1m" and biz.of("kline")[-1]["quote_volume"]
                # REST book at the stream's sequence
                keeper = books.book("okx", "perp", "BTC-USDT-SWAP")
                before = keeper.last_seq
                status, body = get(f"{base}/api/v5/market/books?instId=BTC-USDT-SWAP&sz=400")
                r = okx_md.parse_rest_books(body, "BTC-USDT-SWAP", OKX, 0)
                assert status == 200 and r.parse_errors == 0 and r.books[0].seq >= before
                assert r.books[0].seq <= sim.md_stats()["books"]["perp:BTC-USDT-SWAP"]["seq"]
                # error answers for what OKX would refuse, the connection keeps going
                await pub.send(json.dumps({"op": "subscribe", "args": bad}))
                await pub.send("{not json")
                await wait_for(lambda: len(pub.errors) == len(bad) + 1, what="error answers")
                assert all("60018" in e for e in pub.errors[:-1]) and "60012" in pub.errors[-1]
                pub.errors.clear()
                # a wrong checksum on BTC-USDT, a lost update on ETH-USDT-SWAP: one marker each
                sim.md_bad_checksum("BTC-USDT")
                sim.md_inject_gap("ETH-USDT-SWAP")
                await wait_for(lambda: gap_markers(pub, "BTC-USDT") and gap_markers(pub, "ETH-USDT"),
                               what="okx markers")
                await asyncio.sleep(0.5)
                btc = [m for m in pub.markers if m["native_symbol"] == "BTC-USDT"]
                eth = [m for m in pub.markers if m["native_symbol"] == "ETH-USDT-SWAP"]
                assert [m["reason"] for m in btc] == ["checksum"] and [m["reason"] for m in eth] == ["gap"]
                assert not [m for m in pub.markers if m["native_symbol"] == "BTC-USDT-SWAP"]
                pub.assert_clean()

    run(scenario())
    status, body = get(f"{base}/api/v5/rubik/stat/contracts/long-short-account-ratio?ccy=BTC&period=5m")
    r = okx_md.parse_rest_long_short_account_ratio(body, "BTC-USDT-SWAP", OKX, "5m", 0, 0)
    assert status == 200 and r.parse_errors == 0 and len(r.events) == 24
    assert json.loads(get(f"{base}/api/v5/market/books?instId=NOPE-USDT")[1])["code"] == "51001"
    assert sim.stats()["rest"]["calls"]["/api/v5/market/books"] >= 2   # the venue counts md REST too


# ------------------------------------------------------------------------------------------- Bybit
BYBIT_SPOT = {"BTCUSDT": ("BTC-USDT", "spot"), "ETHUSDT": ("ETH-USDT", "spot")}
BYBIT_LINEAR = {"BTCUSDT": ("BTC-USDT", "perp"), "ETHUSDT": ("ETH-USDT", "perp")}


def test_bybit_spot_linear_channels_and_gap(ports: dict[str, str], sims: dict[str, SimulatorClient]) -> None:
    sim = sims["bybit"]
    books = BookManager(BookConfig())
    spot_topics = [f"{t}.{s}" for s in BYBIT_SPOT for t in ("publicTrade", "orderbook.50", "tickers")]
    linear_topics = spot_topics + [f"allLiquidation.{s}" for s in BYBIT_LINEAR]

    async def scenario() -> None:
        async with aiohttp.ClientSession() as session:
            spot_parser, lin_parser = bybit_md.BybitParser(BYBIT_SPOT), bybit_md.BybitParser(BYBIT_LINEAR)
            spot_sub = [json.dumps({"op": "subscribe", "req_id": "a", "args": spot_topics[:3]}),
                        json.dumps({"op": "subscribe", "args": spot_topics[3:]}), '{"op":"ping"}']
            lin_sub = (json.dumps({"op": "subscribe", "args": linear_topics}), '{"op":"ping"}')
            async with Feed(session, ws_url(ports, "bybit", "/v5/public/spot"), spot_parser.parse, books,
                            tuple(spot_sub)) as spot, \
                    Feed(session, ws_url(ports, "bybit", "/v5/public/linear"), lin_parser.parse, books,
                         lin_sub) as lin:
                await asyncio.sleep(1.2)
                for feed in (spot, lin):
                    feed.assert_clean()
                    assert feed.markers == []
                assert json.loads(spot.frames[0]) == {**json.loads(spot.frames[0]), "success": True,
                                                      "ret_msg": "subscribe", "req_id": "a"}
                assert any('"ret_msg":"pong"' in f for f in spot.frames + lin.frames)
                assert any(json.loads(f).get("ret_msg") == "" for f in lin.frames[:2])
                for market, native in (("spot", "BTCUSDT"), ("perp", "ETHUSDT")):
                    assert synced(books, "bybit", market, native)
                assert {"trade", "ticker"} <= set(spot.classes())
                assert {"trade", "ticker", "liquidation"} <= set(lin.classes())
                # linear deltas carry only changed fields: the merged ticker is still complete
                assert any('"type":"delta"' in f and '"tickers.' in f for f in lin.frames)
                for t in lin.of("ticker"):
                    assert t["mark_price"] and t["funding_rate"] and t["open_interest"] and t["bid_price"]
                sim.md_inject_gap("BTCUSDT", market="linear")
                await wait_for(lambda: gap_markers(lin, "BTC-USDT"), what="bybit marker")
                await asyncio.sleep(0.5)
                assert len(lin.markers) == 1 and lin.markers[0]["native_symbol"] == "BTCUSDT"
                assert int(lin.markers[0]["got_seq"]) == int(lin.markers[0]["last_seq"]) + 2
                assert spot.markers == []
                # refused requests: unknown topic, spot > 10 args, allLiquidation on spot
                await spot.send(json.dumps({"op": "subscribe", "args": ["bogus.BTCUSDT"]}))
                await spot.send(json.dumps({"op": "subscribe", "args": [f"tickers.X{i}" for i in range(11)]}))
                await spot.send(json.dumps({"op": "subscribe", "args": ["allLiquidation.BTCUSDT"]}))
                await wait_for(lambda: len(spot.errors) == 3, what="bybit refusals")

    run(scenario())


# ------------------------------------------------------------------------------------------- Deribit
DERIBIT = deribit.symbol_map(["BTC-PERPETUAL", "ETH-PERPETUAL", "btc_usd"])


def rpc(method: str, params: dict[str, Any], rid: int = 1) -> str:
    return json.dumps({"jsonrpc": "2.0", "id": rid, "method": method, "params": params})


def test_deribit_channels_heartbeat_and_gap(ports: dict[str, str], sims: dict[str, SimulatorClient]) -> None:
    sim = sims["deribit"]
    sim.md_configure(heartbeat_interval=0.3)   # tests cannot wait for Deribit's 10 s minimum
    books = BookManager(BookConfig())
    channels = [f"{k}.{i}.100ms" for i in ("BTC-PERPETUAL", "ETH-PERPETUAL") for k in ("trades", "book", "ticker")]
    channels.append("deribit_volatility_index.btc_usd")

    async def scenario() -> None:
        async with aiohttp.ClientSession() as session:
            parse = lambda raw, ns, ms: deribit.parse_message(raw, DERIBIT, ns, ms)  # noqa: E731
            url = ws_url(ports, "deribit", "/ws/api/v2")
            sends = (rpc("public/set_heartbeat", {"interval": 10}, 2), rpc("public/subscribe", {"channels": channels}))
            async with Feed(session, url, parse, books, sends) as feed, \
                    Feed(session, url, parse, BookManager(), (rpc("public/set_heartbeat", {"interval": 10}),),
                         answer=False) as mute:
                await asyncio.sleep(1.3)
                feed.assert_clean()
                assert feed.markers == [] and not feed.closed
                result = json.loads(next(f for f in feed.frames if '"result":[' in f))["result"]
                assert sorted(result) == sorted(channels)
                assert sum('"test_request"' in f for f in feed.frames) >= 3   # answered each time: still open
                assert {"trade", "ticker", "volatility_index"} <= set(feed.classes())
                for native in ("BTC-PERPETUAL", "ETH-PERPETUAL"):
                    assert synced(books, "deribit", "perp", native)
                t = feed.of("ticker", "BTC-USD")[-1]
                assert t["funding_rate"] and float(t["bid_price"]) < float(t["ask_price"])
                assert float(feed.of("trade", "BTC-USD")[-1]["qty"]) % 10 == 0   # USD amounts, multiples of 10
                # the connection that does not answer its test_request is closed
                await wait_for(lambda: mute.closed, what="unanswered heartbeat close")
                sim.md_inject_gap("ETH-PERPETUAL")
                await wait_for(lambda: feed.markers, what="deribit marker")
                await asyncio.sleep(0.5)
                assert [m["native_symbol"] for m in feed.markers] == ["ETH-PERPETUAL"]
                # JSON-RPC errors: raw needs auth, unknown method, garbage
                await feed.send(rpc("public/subscribe", {"channels": ["book.BTC-PERPETUAL.raw"]}, 5))
                await feed.send(rpc("public/nope", {}, 6))
                await feed.send("][")
                await wait_for(lambda: len(feed.errors) == 3, what="rpc errors")
                assert "13778" in feed.errors[0] and "-32601" in feed.errors[1] and "-32700" in feed.errors[2]

    run(scenario())
    counters = sim.md_stats()["counters"]
    assert counters["closed_heartbeat"] == 1 and counters["test_requests_answered"] >= 3


# ------------------------------------------------------------------------------------------- controls
def test_silence_rates_and_disconnect(ports: dict[str, str], sims: dict[str, SimulatorClient]) -> None:
    bybit, binance = sims["bybit"], sims["binance"]
    bybit.md_silence("orderbook.50", "ETHUSDT", market="spot")
    binance.md_silence("bookTicker", "ETHUSDT")
    binance.md_set_rate(0, channel="aggTrade")
    books = BookManager()

    async def scenario() -> None:
        async with aiohttp.ClientSession() as session:
            sub = json.dumps({"op": "subscribe", "args": ["orderbook.50.ETHUSDT", "publicTrade.ETHUSDT"]})
            streams = "ethusdt@bookTicker/ethusdt@kline_1m/ethusdt@aggTrade/BTCUSDT@depth/x@@/\u00e9@trade"
            async with Feed(session, ws_url(ports, "bybit", "/v5/public/spot"),
                            bybit_md.BybitParser(BYBIT_SPOT).parse, books, (sub,)) as by, \
                    Feed(session, ws_url(ports, "binance", "/ws/" + streams),
                         lambda raw, ns, ms: binance_md.parse_message(raw, SPOT, ns, ms), books) as bn:
                await asyncio.sleep(1.0)
                by.assert_clean()
                bn.assert_clean()
                assert json.loads(by.frames[0])["success"] is True   # acked ...
                assert not any('"orderbook.50.' in f for f in by.frames)   # ... and silent
                assert by.of("trade")                                  # the other topic flows
                assert bn.of("kline") and not bn.of("bbo") and not bn.of("trade")
                st = bybit.md_stats()
                assert st["counters"]["silenced_updates"] >= 3 and st["frames_sent"].get("orderbook.50", 0) == 0
                # lifting the silence: the book arrives (snapshot on the next subscribe)
                bybit.md_silence("orderbook.50", "ETHUSDT", market="spot", enabled=False)
                await by.send(json.dumps({"op": "unsubscribe", "args": ["orderbook.50.ETHUSDT"]}))
                await by.send(json.dumps({"op": "subscribe", "args": ["orderbook.50.ETHUSDT"]}))
                await wait_for(lambda: synced(books, "bybit", "spot", "ETHUSDT"), what="book after silence")
                assert bybit.md_drop_connections()["dropped"] == 1
                assert binance.md_drop_connections()["dropped"] == 1
                await wait_for(lambda: by.closed and bn.closed, what="dropped connections")

    run(scenario())
    assert sims["bybit"].md_stats()["clients"] == 0
    assert sims["binance"].stats()["connections"]["open"] == 0
