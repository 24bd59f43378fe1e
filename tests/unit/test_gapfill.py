"""Trade gap fill (workers/gapfill.py): the REST trade-history parsers of each exchange on the docs
examples in tests/fixtures/ws/*/rest_*trades*.json (SOURCES.md, "REST trade history"), and the
gap logic (anchors on reconnect, id / time bounds, paging, markers, the bounded queue) against a
small in-test trade history served through a stand-in of the worker's RestClient."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from shared.events import Trade, fields_to_dict
from shared.settings import ExchangeSettings
from tests.conftest import FIXTURES
from workers import gapfill
from workers.exchanges import binance_md as bm
from workers.exchanges import bybit_md as bb
from workers.exchanges import deribit as dr
from workers.exchanges import okx_md as ok
from workers.gapfill import Gap, TradeGapFiller, TradeMark
from workers.transport.rest import RestHttpError

RX_NS, RX_MS = 123, 1_790_000_000_000
WS = FIXTURES / "ws"


def bodies(path: str) -> list[Any]:
    return json.loads((WS / path).read_text())


def d(ev: list) -> dict[str, str]:
    return fields_to_dict(ev[3])


# ---------------------------------------------------------------- parsers on the docs examples

def test_binance_spot_historical_trades() -> None:
    body = bodies("binance_spot/rest_historical_trades.json")[0]
    res = bm.parse_rest_trades(body, "ETHBTC", {"ETHBTC": ("ETH-BTC", "spot")}, RX_NS, RX_MS, agg=False)
    assert res.parse_errors == 0 and len(res.events) == 1
    ev = res.events[0]
    assert ev[0] == "md:trade:binance:spot:ETH-BTC" and ev[1] == "t:binance:spot:ETHBTC:28457" and ev[2] == "trade"
    assert d(ev) == {"type": "trade", "exchange": "binance", "market": "spot", "symbol": "ETH-BTC",
                     "native_symbol": "ETHBTC", "trade_id": "28457", "price": "4.00000100", "qty": "12.00000000",
                     "side": "sell", "ts_exchange": "1499865549590", "ts_receive": str(RX_MS), "source": "rest"}


def test_binance_agg_trades_spot_and_usdm() -> None:
    for path, market in (("binance_spot/rest_agg_trades.json", "spot"), ("binance_usdm/rest_agg_trades.json", "perp")):
        res = bm.parse_rest_trades(bodies(path)[0], "ETHBTC", {"ETHBTC": ("ETH-BTC", market)}, RX_NS, RX_MS, agg=True)
        (ev,) = res.events
        f = d(ev)
        assert (f["trade_id"], f["price"], f["qty"], f["side"], f["ts_exchange"], f["market"], f["source"]) == (
            "26129", "0.01633102", "4.70443515", "sell", "1498793709153", market, "rest")
        # spot aggregates are the agg_trade tape (the @aggTrade stream's); USD-M ones the perp trade tape
        tape, prefix = ("agg_trade", "at") if market == "spot" else ("trade", "t")
        assert (ev[0], ev[1], ev[2], f["type"], ev[5]) == (
            f"md:{tape}:binance:{market}:ETH-BTC", f"{prefix}:binance:{market}:ETHBTC:26129", tape, tape, "26129")


def test_binance_rest_trades_errors() -> None:
    sym = {"BTCUSDT": ("BTC-USDT", "spot")}
    assert bm.parse_rest_trades({"code": -1121, "msg": "Invalid symbol."}, "BTCUSDT", sym, 0, 0, agg=True).error \
        == "binance error -1121: Invalid symbol."
    assert bm.parse_rest_trades("[garbage", "BTCUSDT", sym, 0, 0, agg=True).parse_errors == 1
    assert bm.parse_rest_trades([], "XRPUSDT", sym, 0, 0, agg=True).rejected == 1
    bad = [{"a": 1, "p": "1.0", "q": "-1", "T": 1, "m": True}, {"a": "2", "p": "1", "q": "1", "T": 1, "m": True},
           {"a": 3, "p": "1", "q": "1", "T": 1, "m": False}]
    res = bm.parse_rest_trades(bad, "BTCUSDT", sym, 0, 0, agg=True)
    assert res.parse_errors == 2 and [d(e)["trade_id"] for e in res.events] == ["3"]


def test_binance_history_requests() -> None:
    assert bm.trades_history_request("BTCUSDT", "spot", 5, 10, agg=False) == (
        "https://api.binance.com/api/v3/historicalTrades?symbol=BTCUSDT&fromId=5&limit=10", 25)
    assert bm.trades_history_request("BTCUSDT", "spot", 5, agg=True).weight == 4
    assert bm.trades_history_request("BTCUSDT", "perp", 7, agg=True) == (
        "https://fapi.binance.com/fapi/v1/aggTrades?symbol=BTCUSDT&fromId=7&limit=1000", 20)
    for bad in (lambda: bm.trades_history_request("BTC USDT", "spot", 1, agg=True),
                lambda: bm.trades_history_request("BTCUSDT", "spot", 1, 1001, agg=True),
                lambda: bm.trades_history_request("BTCUSDT", "spot", -1, agg=True)):
        with pytest.raises(ValueError):
            bad()
    assert bm.trade_stream_native("btcusdt@trade") == ("BTCUSDT", False)
    assert bm.trade_stream_native("btcusdt@aggTrade") == ("BTCUSDT", True)
    assert bm.trade_stream_native("btcusdt@depth@100ms") is None


def test_okx_history_trades() -> None:
    body = bodies("okx/rest_history_trades.json")[0]
    res = ok.parse_rest_trades(body, "BTC-USDT", {"BTC-USDT": ("BTC-USDT", "spot")}, RX_NS, RX_MS)
    assert [(d(e)["trade_id"], d(e)["price"], d(e)["qty"], d(e)["side"], d(e)["ts_exchange"], d(e)["source"])
            for e in res.events] == [("242720720", "29963.2", "0.00001", "sell", "1654161646974", "rest"),
                                     ("242720719", "29964.1", "0.00001", "sell", "1654161641568", "rest")]
    assert res.events[0][1] == "t:okx:spot:BTC-USDT:242720720"
    assert ok.parse_rest_trades({"code": "51001", "msg": "Instrument ID doesn't exist.", "data": []}, "BTC-USDT",
                                {"BTC-USDT": ("BTC-USDT", "spot")}, 0, 0).error.startswith("okx error 51001")
    assert ok.history_trades_url("BTC-USDT-SWAP", after=42) == (
        "https://www.okx.com/api/v5/market/history-trades?instId=BTC-USDT-SWAP&type=1&limit=100&after=42")
    with pytest.raises(ValueError):
        ok.history_trades_url("BTC USDT")
    # the live tape is trades-all (one fill per row, like history-trades); trades still maps harmlessly
    assert ok.trade_stream_native("trades-all:BTC-USDT") == "BTC-USDT"
    assert ok.trade_stream_native("trades:BTC-USDT") == "BTC-USDT" and ok.trade_stream_native("books:BTC-USDT") is None
    assert ok.trade_stream_native("candle1m:BTC-USDT") is None and ok.trade_stream_native("trades-all:") is None


def test_bybit_recent_trade() -> None:
    body = bodies("bybit/rest_recent_trade.json")[0]
    res = bb.parse_rest_trades(body, "BTCUSDT", {"BTCUSDT": ("BTC-USDT", "spot")}, RX_NS, RX_MS)
    (ev,) = res.events
    assert ev[1] == "t:bybit:spot:BTCUSDT:2100000000007764263"
    f = d(ev)
    assert (f["price"], f["qty"], f["side"], f["ts_exchange"], f["source"]) == (
        "16618.49", "0.00012", "buy", "1672052955758", "rest")
    assert bb.parse_rest_trades({"retCode": 10001, "retMsg": "params error"}, "BTCUSDT",
                                {"BTCUSDT": ("BTC-USDT", "spot")}, 0, 0).error == "bybit error 10001: params error"
    assert bb.recent_trade_url("spot", "BTCUSDT") == (
        "https://api.bybit.com/v5/market/recent-trade?category=spot&symbol=BTCUSDT&limit=60")
    assert bb.recent_trade_url("linear", "BTCUSDT").endswith("limit=1000")
    with pytest.raises(ValueError):
        bb.recent_trade_url("spot", "BTCUSDT", 61)


def test_deribit_trades_by_time() -> None:
    body = bodies("deribit/rest_last_trades_by_instrument_and_time.json")[0]
    res, more = dr.parse_rest_trades(body, {"BTC-PERPETUAL": ("BTC-USD", "perp")}, RX_NS, RX_MS)
    assert more is False
    assert [(d(e)["trade_id"], d(e)["price"], d(e)["qty"], d(e)["side"], d(e)["source"]) for e in res.events] == [
        ("403691824", "92294.5", "10.0", "sell", "rest"), ("403691825", "92288.5", "750.0", "sell", "rest")]
    assert res.events[0][1] == "t:deribit:perp:BTC-PERPETUAL:403691824"
    # the raw text keeps the number tokens exactly as sent
    raw = (WS / "deribit/rest_last_trades_by_instrument_and_time.json").read_text().strip()[1:-1]
    res2, _ = dr.parse_rest_trades(raw, {"BTC-PERPETUAL": ("BTC-USD", "perp")}, RX_NS, RX_MS)
    assert [e[3] for e in res2.events] == [e[3] for e in res.events]
    err, _ = dr.parse_rest_trades({"jsonrpc": "2.0", "error": {"code": 10009, "message": "not_enough_funds"}}, {}, 0, 0)
    assert err.error.startswith("deribit error 10009")
    assert dr.trades_by_time_url("BTC-PERPETUAL", 1, 2, 10) == (
        "https://www.deribit.com/api/v2/public/get_last_trades_by_instrument_and_time?instrument_name=BTC-PERPETUAL"
        "&start_timestamp=1&end_timestamp=2&count=10&sorting=asc")
    assert dr.trade_stream_native("trades.BTC-PERPETUAL.100ms") == "BTC-PERPETUAL"


def test_live_trade_has_no_source_field() -> None:
    t = Trade("okx", "spot", "BTC-USDT", "BTC-USDT", "1", "1", "1", "buy", 1, 2)
    assert "source" not in d(t.to_wire(0))
    assert d(Trade("okx", "spot", "BTC-USDT", "BTC-USDT", "1", "1", "1", "buy", 1, 2, source="rest").to_wire(0))[
        "source"] == "rest"


# ---------------------------------------------------------------- gap logic against a served history

class History:
    """A bounded trade history of one symbol, served like each exchange's endpoint."""

    def __init__(self, exchange: str, native: str, first: int, last: int, ts0: int = 1_000_000) -> None:
        self.exchange, self.native = exchange, native
        self.trades = [(i, ts0 + i * 10) for i in range(first, last + 1)]   # (id, ts)
        self.fail = False

    def serve(self, url: str) -> Any:
        q = {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}
        if self.fail:
            raise RestHttpError(503, url)
        if self.exchange == "binance":
            frm, limit = int(q["fromId"]), int(q["limit"])
            rows = [t for t in self.trades if t[0] >= frm][:limit]
            if "aggTrades" in url:
                return [{"a": i, "p": "1.5", "q": "2", "f": i, "l": i, "T": ts, "m": i % 2 == 0} for i, ts in rows]
            return [{"id": i, "price": "1.5", "qty": "2", "quoteQty": "3", "time": ts, "isBuyerMaker": True,
                     "isBestMatch": True} for i, ts in rows]
        if self.exchange == "okx":
            after, limit = int(q.get("after", 10 ** 18)), int(q["limit"])
            rows = [t for t in reversed(self.trades) if t[0] < after][:limit]
            return {"code": "0", "msg": "", "data": [
                {"instId": self.native, "side": "buy", "sz": "1", "px": "2", "tradeId": str(i), "ts": str(ts)}
                for i, ts in rows]}
        if self.exchange == "bybit":
            rows = list(reversed(self.trades))[:int(q["limit"])]
            return {"retCode": 0, "retMsg": "OK", "result": {"category": q["category"], "list": [
                {"execId": f"x{i}", "symbol": self.native, "price": "2", "size": "1", "side": "Sell", "time": str(ts),
                 "isBlockTrade": False} for i, ts in rows]}}
        start, end, count = int(q["start_timestamp"]), int(q["end_timestamp"]), int(q["count"])
        rows = [t for t in self.trades if start <= t[1] <= end]
        return {"jsonrpc": "2.0", "result": {"has_more": len(rows) > count, "trades": [
            {"trade_id": str(i), "timestamp": ts, "price": 2.5, "amount": 10, "direction": "buy",
             "instrument_name": self.native, "trade_seq": i} for i, ts in rows[:count]]}}


class FakeRest:
    """The RestClient surface the filler uses: get_json(url, weight=) -> .body (or RestError)."""

    class _Resp:
        def __init__(self, body: Any) -> None:
            self.body = body

    def __init__(self, history: History) -> None:
        self.history = history
        self.calls: list[tuple[str, int]] = []

    async def get_json(self, url: str, *, weight: int = 1) -> Any:
        self.calls.append((url, weight))
        return self._Resp(self.history.serve(url))


FEEDS = {
    "binance": lambda: bm.BinanceMdFeed("spot", {"BTCUSDT": ("BTC-USDT", "spot")}),
    "okx": lambda: ok.OkxMdFeed({"BTC-USDT": ("BTC-USDT", "spot")}, business=True),   # trades-all
    "bybit": lambda: bb.BybitMdFeed("linear", {"BTCUSDT": ("BTC-USDT", "perp")}),
    "deribit": lambda: dr.DeribitMdFeed({"BTC-PERPETUAL": ("BTC-USD", "perp")}),
}
STREAM = {"binance": "btcusdt@trade", "okx": "trades-all:BTC-USDT", "bybit": "publicTrade.BTCUSDT",
          "deribit": "trades.BTC-PERPETUAL.100ms"}
NATIVE = {"binance": "BTCUSDT", "okx": "BTC-USDT", "bybit": "BTCUSDT", "deribit": "BTC-PERPETUAL"}
MARKET = {"binance": ("spot", "BTC-USDT"), "okx": ("spot", "BTC-USDT"), "bybit": ("perp", "BTC-USDT"),
          "deribit": ("perp", "BTC-USD")}


class Rig:
    """The filler as MarketData drives it: ``out`` is the published tape in order (live trades the
    filler does not hold, fills, markers, released held trades)."""

    def __init__(self, exchange: str, history: History, **cfg: Any) -> None:
        self.exchange = exchange
        self.out: list[list] = []
        self.rest = FakeRest(history)
        self.filler = TradeGapFiller(exchange, ExchangeSettings(**cfg), self.rest, self.out.extend)  # type: ignore[arg-type]
        self.filler.bucket = gapfill.TokenBucket(1e6, 1e6)   # no pacing in unit tests
        self.feed = FEEDS[exchange]()
        self.key = "md:trade:{}:{}:{}".format(exchange, *MARKET[exchange])

    def live(self, i: int, ts: int | None = None, native: str | None = None) -> bool:
        """One live trade; True = held back."""
        tid = f"x{i}" if self.exchange == "bybit" else str(i)
        market, symbol = MARKET[self.exchange]
        native = native or NATIVE[self.exchange]
        if native != NATIVE[self.exchange]:
            symbol = {"ETHUSDT": "ETH-USDT"}[native]
        t = Trade(self.exchange, market, symbol, native, tid, "1", "1", "buy",
                  1_000_000 + i * 10 if ts is None else ts, 0)
        ev = t.to_wire(0)
        held = self.filler.observe(ev)
        if not held:
            self.out.append(ev)
        return held

    def drop(self) -> None:
        self.filler.on_reset(self.feed, [STREAM[self.exchange], "not-a-trade-stream"])

    def run_pending(self) -> None:
        asyncio.run(self.filler.drain())

    def trades(self) -> list[str]:
        """The filled trades (from REST)."""
        return [d(e)["trade_id"] for e in self.out if e[2] == "trade" and d(e).get("source") == "rest"]

    def tape(self) -> list[str]:
        """Everything published, in order: trade ids, ``gap:<reason>`` for markers."""
        return [d(e)["trade_id"] if e[2] == "trade" else f"gap:{d(e)['reason']}" for e in self.out]

    def markers(self) -> list[dict[str, str]]:
        return [d(e) for e in self.out if e[2] == "trade_gap"]


def test_binance_gap_filled_by_id() -> None:
    rig = Rig("binance", History("binance", "BTCUSDT", 1, 500))
    for i in range(100, 106):
        rig.live(i)
    rig.drop()
    rig.live(120)
    assert rig.filler.pending_count() == 1
    rig.run_pending()
    assert rig.trades() == [str(i) for i in range(106, 120)] and rig.markers() == []
    # the live trade after the hole was held until the fill was out: one ordered tape, mono ids
    assert rig.tape() == [str(i) for i in range(100, 121)]
    assert all(len(e) == 6 and e[5] == d(e)["trade_id"] for e in rig.out)
    assert rig.filler.holds == {} and rig.filler.stats()["gap_held_trades"] == 1
    assert rig.rest.calls == [("https://api.binance.com/api/v3/historicalTrades?symbol=BTCUSDT&fromId=106&limit=14", 25)]
    assert all(d(e)["source"] == "rest" and e[0] == "md:trade:binance:spot:BTC-USDT" for e in rig.out[6:-1])
    st = rig.filler.stats()
    assert (st["trade_gaps"], st["trade_gaps_filled"], st["trades_filled"], st["trade_gap_markers"]) == (1, 1, 14, 0)


def test_no_fill_without_a_hole() -> None:
    rig = Rig("binance", History("binance", "BTCUSDT", 1, 500))
    rig.filler.register(rig.feed, [STREAM["binance"]])
    rig.live(100)
    rig.drop()
    rig.live(100)            # a duplicate of the last one does not close the anchor
    rig.live(101)            # contiguous: nothing missed
    assert rig.filler.pending_count() == 0 and rig.filler.anchors == {}
    rig2 = Rig("binance", History("binance", "BTCUSDT", 1, 500))
    rig2.drop()              # nothing seen before the drop: no anchor
    rig2.live(10)
    assert rig2.filler.pending_count() == 0
    # Bybit ids carry no order: a live "jump" means nothing there
    rig3 = Rig("bybit", History("bybit", "BTCUSDT", 1, 500))
    rig3.filler.register(rig3.feed, [STREAM["bybit"]])
    rig3.live(10)
    rig3.live(50)
    assert rig3.filler.pending_count() == 0


@pytest.mark.parametrize("exchange", ["binance", "okx"])
def test_a_hole_in_a_live_tape_without_holes_is_filled_without_a_reconnect(exchange: str) -> None:
    # a subscription that went silent and came back (no reconnect: the transport saw nothing), or
    # a frame lost upstream: the ids jump, and that alone is a gap on Binance and OKX trades-all
    rig = Rig(exchange, History(exchange, NATIVE[exchange], 1, 500))
    rig.filler.register(rig.feed, [STREAM[exchange]])
    rig.live(100)
    assert rig.live(150) is True         # held behind the fill
    rig.run_pending()
    assert rig.trades() == [str(i) for i in range(101, 150)] and rig.markers() == []
    assert rig.tape() == [str(i) for i in range(100, 151)]
    st = rig.filler.stats()
    assert (st["trade_live_gaps"], st["trade_gaps_filled"]) == (1, 1)
    # an unregistered stream (not one this worker subscribed) is left alone
    rig2 = Rig(exchange, History(exchange, NATIVE[exchange], 1, 500))
    rig2.live(100)
    rig2.live(150)
    assert rig2.filler.pending_count() == 0


def test_binance_history_too_old_and_pages() -> None:
    rig = Rig("binance", History("binance", "BTCUSDT", 112, 500))
    rig.live(105)
    rig.drop()
    rig.drop()               # a second drop before any trade keeps the first anchor
    rig.live(120)
    rig.run_pending()
    assert rig.trades() == [str(i) for i in range(112, 120)]
    (m,) = rig.markers()
    assert (m["reason"], m["from_id"], m["to_id"], m["from_ts"], m["to_ts"]) == (
        "too_old", "105", "112", str(1_000_000 + 1050), str(1_000_000 + 1120))
    assert rig.out[1][0] == "md:trade:binance:spot:BTC-USDT" and rig.out[1][1].startswith("tg:binance:spot:BTCUSDT:")
    assert rig.tape() == ["105", "gap:too_old"] + [str(i) for i in range(112, 121)]

    rig = Rig("binance", History("binance", "BTCUSDT", 1, 5000), gap_fill_max_pages=2)
    rig.live(100)
    rig.drop()
    rig.live(2600)
    rig.run_pending()
    assert rig.trades() == [str(i) for i in range(101, 2101)]
    (m,) = rig.markers()
    assert (m["reason"], m["from_id"], m["to_id"]) == ("max_pages", "2100", "2600")
    assert len(rig.rest.calls) == 2


def test_binance_endpoint_error_gives_marker() -> None:
    hist = History("binance", "BTCUSDT", 1, 500)
    hist.fail = True
    rig = Rig("binance", hist)
    rig.live(10)
    rig.drop()
    rig.live(20)
    rig.run_pending()
    assert rig.trades() == [] and [(m["reason"], m["from_id"], m["to_id"]) for m in rig.markers()] == [
        ("error", "10", "20")]
    assert rig.filler.stats()["gap_fill_errors"] == 1


def test_okx_pages_backwards_until_the_last_seen_id() -> None:
    rig = Rig("okx", History("okx", "BTC-USDT", 1, 1000))
    rig.live(500)
    rig.drop()
    rig.live(751)
    rig.run_pending()
    assert rig.trades() == [str(i) for i in range(501, 751)] and rig.markers() == []
    assert [parse_qs(urlsplit(u).query).get("after") for u, _ in rig.rest.calls] == [["751"], ["651"], ["551"]]

    rig = Rig("okx", History("okx", "BTC-USDT", 600, 1000))
    rig.live(500)
    rig.drop()
    rig.live(751)
    rig.run_pending()
    assert rig.trades() == [str(i) for i in range(600, 751)]
    (m,) = rig.markers()
    assert (m["reason"], m["from_id"], m["to_id"]) == ("too_old", "500", "600")


def test_okx_trades_all_ids_are_contiguous_so_a_quiet_reconnect_fetches_nothing() -> None:
    # trades-all carries every fill: the first fill after the reconnect being last + 1 means nothing
    # was missed (with aggregated ``trades`` rows the ids skip and every reconnect looked like a gap)
    rig = Rig("okx", History("okx", "BTC-USDT", 1, 1000))
    rig.live(500)
    rig.drop()
    rig.live(501)
    assert rig.filler.pending_count() == 0 and rig.filler.anchors == {} and rig.rest.calls == []
    # one fill missed: exactly that one comes from REST
    rig.drop()
    rig.live(503)
    rig.run_pending()
    assert rig.trades() == ["502"] and rig.markers() == []
    assert gapfill.STRATEGIES["okx"].contiguous and gapfill.STRATEGIES["okx"].ordered


def test_bybit_recent_only_fills_what_it_covers() -> None:
    rig = Rig("bybit", History("bybit", "BTCUSDT", 1, 900))      # the page (1000) reaches back
    rig.live(100)
    rig.drop()
    rig.live(200)
    rig.run_pending()
    # not the boundary trades: the one before the hole is stored, the one after it is held
    assert rig.trades() == [f"x{i}" for i in range(101, 200)] and rig.markers() == []
    assert rig.tape() == [f"x{i}" for i in range(100, 201)]
    assert "category=linear" in rig.rest.calls[0][0]

    rig = Rig("bybit", History("bybit", "BTCUSDT", 1, 1500))     # only 501..1500 served
    rig.live(100)
    rig.drop()
    rig.live(700)
    rig.run_pending()
    assert rig.trades() == [f"x{i}" for i in range(501, 700)]
    (m,) = rig.markers()
    assert (m["reason"], m["from_id"], m["to_id"], m["from_ts"], m["to_ts"]) == (
        "not_covered", "x100", "x501", str(1_000_000 + 1000), str(1_000_000 + 5010))


def test_deribit_pages_by_time(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dr, "TRADES_PAGE_COUNT", 40)
    monkeypatch.setattr(dr.trades_by_time_url, "__defaults__", (40,))
    rig = Rig("deribit", History("deribit", "BTC-PERPETUAL", 1, 500))
    rig.live(10)
    rig.drop()
    rig.live(100)
    rig.run_pending()
    got = rig.trades()
    assert sorted(set(map(int, got))) == list(range(11, 100)) and rig.markers() == []
    # time pages overlap at their boundary millisecond (the publisher's key window drops those)
    assert list(dict.fromkeys(rig.tape())) == [str(i) for i in range(10, 101)]
    assert len(rig.rest.calls) == 3

    rig = Rig("deribit", History("deribit", "BTC-PERPETUAL", 50, 500))
    rig.live(10)
    rig.drop()
    rig.live(60)
    rig.run_pending()
    assert rig.trades() == [str(i) for i in range(50, 60)]
    (m,) = rig.markers()
    assert (m["reason"], m["from_id"], m["to_id"]) == ("too_old", "10", "50")


def test_queue_is_bounded_and_deduplicated() -> None:
    rig = Rig("binance", History("binance", "BTCUSDT", 1, 500))
    f = rig.filler
    sym = gapfill.TradeSymbol("spot", "BTC-USDT", "BTCUSDT", "md:trade:binance:spot:BTC-USDT")
    for _ in range(3):
        f.enqueue(Gap(sym, TradeMark("1", 1, 1), TradeMark("5", 5, 5)))
    assert f.pending_count() == 1
    for i in range(10):
        f.enqueue(Gap(sym, TradeMark(str(10 * i), 10 * i, 1), TradeMark(str(10 * i + 5), 10 * i + 5, 5)))
    assert f.pending_count() == gapfill.GAPS_PER_SYMBOL and f.merged == 7
    assert f.pending[sym.stream_key][-1].before.num == 95


def test_workers_drain_the_queue() -> None:
    async def go() -> Rig:
        rig = Rig("binance", History("binance", "BTCUSDT", 1, 500))
        rig.filler.start()
        rig.live(1)
        rig.drop()
        rig.live(9)
        for _ in range(200):
            if rig.filler.gaps_filled:
                break
            await asyncio.sleep(0.01)
        await rig.filler.stop()
        return rig
    rig = asyncio.run(go())
    assert rig.trades() == [str(i) for i in range(2, 9)] and rig.filler.pending_count() == 0


# ---------------------------------------------------------------- the hold: fills before the live trades

def mono(rig: Rig) -> list[str]:
    """The mono_id of every published trade (None where it has none)."""
    return [e[5] if len(e) > 5 else None for e in rig.out if e[2] == "trade"]


def test_okx_fill_goes_out_before_the_held_live_trades_with_mono_ids() -> None:
    rig = Rig("okx", History("okx", "BTC-USDT", 1, 1000))
    for i in (498, 499, 500):
        rig.live(i)
    rig.drop()
    assert [rig.live(i) for i in (751, 752, 753)] == [True, True, True]
    assert rig.tape() == ["498", "499", "500"]
    rig.run_pending()
    assert rig.tape() == [str(i) for i in range(498, 754)]
    assert mono(rig) == rig.tape()
    assert rig.filler.holds == {} and not rig.live(754)


def test_other_symbols_are_never_held() -> None:
    rig = Rig("binance", History("binance", "BTCUSDT", 1, 500))
    rig.live(100)
    rig.live(7, native="ETHUSDT")
    rig.drop()                        # only the BTCUSDT stream was on the dropped connection
    assert rig.live(120) and not rig.live(8, native="ETHUSDT") and not rig.live(30, native="ETHUSDT")
    rig.run_pending()
    btc = [d(e)["trade_id"] for e in rig.out if e[0] == rig.key]
    assert btc == [str(i) for i in range(100, 121)]


def test_hold_full_releases_the_held_trades_and_the_fill_goes_on_late() -> None:
    rig = Rig("binance", History("binance", "BTCUSDT", 1, 500), gap_hold_max_trades=3)
    rig.live(100)
    rig.drop()
    assert [rig.live(i) for i in (120, 121, 122, 123)] == [True, True, True, False]
    assert rig.tape() == ["100", "120", "121", "122", "123"] and rig.markers() == []
    rig.run_pending()                 # the fill still runs: late, without mono_id, nothing lost
    assert rig.tape() == ["100", "120", "121", "122", "123"] + [str(i) for i in range(101, 120)]
    assert mono(rig) == ["100", "120", "121", "122", "123"] + [None] * 19
    st = rig.filler.stats()
    assert (st["gap_holds_full"], st["trade_late_gaps"], st["trade_late_trades"], st["trade_gap_markers"]) == \
        (1, 1, 19, 0)


def test_no_hold_when_disabled() -> None:
    rig = Rig("binance", History("binance", "BTCUSDT", 1, 500), gap_hold_max_trades=0)
    rig.live(100)
    rig.drop()
    assert not rig.live(120)
    rig.run_pending()
    assert rig.tape() == ["100", "120"] + [str(i) for i in range(101, 120)]
    assert mono(rig) == ["100", "120"] + [None] * 19   # late: the high-watermark would skip them


def test_endpoint_error_marker_goes_before_the_held_trades() -> None:
    hist = History("binance", "BTCUSDT", 1, 500)
    hist.fail = True
    rig = Rig("binance", hist)
    rig.live(10)
    rig.drop()
    rig.live(20)
    rig.live(21)
    rig.run_pending()
    assert rig.tape() == ["10", "gap:error", "20", "21"]


def test_second_reconnect_while_held_keeps_the_order() -> None:
    rig = Rig("binance", History("binance", "BTCUSDT", 1, 500))
    rig.live(100)
    rig.drop()
    rig.live(110)
    rig.live(111)
    rig.drop()                        # again, before the first fill ran
    rig.live(130)
    assert len(rig.filler.holds[rig.key].segments) == 2
    rig.run_pending()
    assert rig.tape() == [str(i) for i in range(100, 131)]
    assert mono(rig) == rig.tape()


class SlowRest(FakeRest):
    """The second and later pages take ``delay`` seconds."""

    def __init__(self, history: History, delay: float) -> None:
        super().__init__(history)
        self.delay = delay

    async def get_json(self, url: str, *, weight: int = 1) -> Any:
        if self.calls:
            await asyncio.sleep(self.delay)
        return await super().get_json(url, weight=weight)


def test_hold_timeout_releases_the_live_trades_and_the_fill_finishes_late() -> None:
    async def go() -> Rig:
        rig = Rig("binance", History("binance", "BTCUSDT", 1, 5000), gap_hold_seconds=0.3)
        rig.rest = rig.filler.rest = SlowRest(rig.rest.history, 0.6)
        rig.filler.start()
        rig.live(100)
        rig.drop()
        rig.live(1600)                # 1499 missed: two pages; the second one outlasts the hold
        rig.live(1601)
        for _ in range(300):
            if not rig.filler.holds and rig.filler.pending_count() == 0 and not rig.filler.active:
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.8)
        await rig.filler.stop()
        return rig
    rig = asyncio.run(go())
    # the first page in order (mono ids), then the live trades at the timeout, then the rest, late
    assert rig.tape() == ["100"] + [str(i) for i in range(101, 1101)] + ["1600", "1601"] + \
        [str(i) for i in range(1101, 1600)]
    assert rig.markers() == []
    late = mono(rig)[-499:]
    assert late == [None] * 499 and mono(rig)[:1003] == rig.tape()[:1003]
    st = rig.filler.stats()
    assert (st["gap_hold_timeouts"], st["trade_late_gaps"], st["trade_late_trades"]) == (1, 1, 499)


def test_stop_releases_held_trades_behind_a_marker() -> None:
    async def go() -> Rig:
        rig = Rig("binance", History("binance", "BTCUSDT", 1, 500))
        rig.live(100)
        rig.drop()
        rig.live(120)                 # held; no workers started
        await rig.filler.stop()
        return rig
    rig = asyncio.run(go())
    assert rig.tape() == ["100", "gap:stopped", "120"]


# ---------------------------------------------------------------- Binance spot: the agg_trade tape

AGG_KEY = "md:agg_trade:binance:spot:BTC-USDT"


def agg_live(rig: Rig, i: int) -> bool:
    """One live spot aggregate (``@aggTrade``, aggregate id ``i``); True = held back."""
    ev = Trade("binance", "spot", "BTC-USDT", "BTCUSDT", str(i), "1", "1", "buy", 1_000_000 + i * 10, 0,
               stream_type="agg_trade").to_wire(0)
    held = rig.filler.observe(ev)
    if not held:
        rig.out.append(ev)
    return held


def ids_of(rig: Rig, key: str) -> list[str]:
    return [d(e)["trade_id"] if d(e)["type"] != "trade_gap" else f"gap:{d(e)['reason']}" for e in rig.out
            if e[0] == key]


def test_binance_spot_agg_trade_tape_is_filled_from_agg_trades_beside_the_trade_tape() -> None:
    rig = Rig("binance", History("binance", "BTCUSDT", 1, 500))
    both = ["btcusdt@trade", "btcusdt@aggTrade"]
    assert rig.filler.register(rig.feed, both) == [rig.key, AGG_KEY]
    for i in range(100, 103):
        agg_live(rig, i)
        rig.live(i + 200)
    rig.filler.on_reset(rig.feed, both)
    assert agg_live(rig, 110)          # 103..109 missed: held behind its fill
    assert not rig.live(303)           # the trade tape missed nothing: never held
    rig.run_pending()
    # one request, to the aggregates' endpoint (weight 4), from the first missing aggregate id
    assert rig.rest.calls == [("https://api.binance.com/api/v3/aggTrades?symbol=BTCUSDT&fromId=103&limit=7", 4)]
    assert ids_of(rig, AGG_KEY) == [str(i) for i in range(100, 111)]
    assert ids_of(rig, rig.key) == ["300", "301", "302", "303"]
    agg = [e for e in rig.out if e[0] == AGG_KEY]
    # its own type, class and dedup keys; every one with its aggregate id as mono_id (one ordered tape)
    assert all(e[2] == "agg_trade" and d(e)["type"] == "agg_trade" and e[5] == d(e)["trade_id"] for e in agg)
    assert [e[1] for e in agg if d(e).get("source") == "rest"] == [
        f"at:binance:spot:BTCUSDT:{i}" for i in range(103, 110)]
    assert rig.filler.stats()["trade_gap_markers"] == 0


def test_binance_spot_agg_trade_marker_goes_into_the_agg_trade_stream() -> None:
    rig = Rig("binance", History("binance", "BTCUSDT", 105, 500))
    rig.filler.register(rig.feed, ["btcusdt@aggTrade"])
    agg_live(rig, 100)
    rig.filler.on_reset(rig.feed, ["btcusdt@aggTrade"])
    agg_live(rig, 110)
    rig.run_pending()
    assert ids_of(rig, AGG_KEY) == ["100", "gap:too_old"] + [str(i) for i in range(105, 111)]
    (m,) = [e for e in rig.out if e[2] == "trade_gap"]
    assert m[0] == AGG_KEY and m[1].startswith("tg-agg_trade:binance:spot:BTCUSDT:")
    assert (d(m)["from_id"], d(m)["to_id"]) == ("100", "105")
    assert not [e for e in rig.out if e[0] == rig.key]


def test_binance_spot_agg_trade_resumes_from_its_own_high_watermark() -> None:
    rig = Rig("binance", History("binance", "BTCUSDT", 1, 500))
    keys = rig.filler.register(rig.feed, ["btcusdt@trade", "btcusdt@aggTrade"])
    rig.filler.expect_resume(keys)
    assert agg_live(rig, 50) and rig.live(70)      # both tapes held until the answer
    rig.filler.resume(gapfill.resume_points({"hwm": {AGG_KEY: "45", rig.key: "69"},
                                             "last": {AGG_KEY: ["45", 1_000_450]}}))
    rig.run_pending()
    assert ids_of(rig, AGG_KEY) == [str(i) for i in range(46, 51)]
    assert ids_of(rig, rig.key) == ["70"]
    assert [u for u, _ in rig.rest.calls] == [
        "https://api.binance.com/api/v3/aggTrades?symbol=BTCUSDT&fromId=46&limit=4"]


# ---------------------------------------------------------------- resume after a worker restart

def resumed(exchange: str, history: History, **cfg: Any) -> Rig:
    rig = Rig(exchange, history, **cfg)
    keys = rig.filler.register(rig.feed, [STREAM[exchange], "not-a-trade-stream"])
    assert keys == [rig.key]
    rig.filler.expect_resume(keys)
    return rig


def test_resume_points_parse_the_publishers_answer() -> None:
    pts = gapfill.resume_points({"t": "resume", "hwm": {"a": "42", "b": "7", "bad": "x"},
                                 "last": {"a": ["42", 1000], "b": ["6", 900], "c": ["u-1", 5], "d": ["1", "x"]}})
    assert pts == {"a": TradeMark("42", 42, 1000), "b": TradeMark("7", 7, 0), "c": TradeMark("u-1", None, 5)}
    assert gapfill.resume_points({"t": "resume", "hwm": [1], "last": None}) == {}


def test_resume_fills_from_the_stored_high_watermark() -> None:
    rig = resumed("binance", History("binance", "BTCUSDT", 1, 500))
    assert rig.live(50) and rig.live(51)      # held until the answer
    rig.filler.resume(gapfill.resume_points({"hwm": {rig.key: "40"}, "last": {rig.key: ["40", 1000400]}}))
    rig.run_pending()
    assert rig.tape() == [str(i) for i in range(41, 52)] and mono(rig) == rig.tape()
    assert not rig.live(52) and rig.filler.stats()["trade_resume"] == "done"


def test_resume_without_a_hole_or_behind_the_stored_one_releases_at_once() -> None:
    rig = resumed("binance", History("binance", "BTCUSDT", 1, 500))
    rig.live(41)
    rig.live(42)
    rig.filler.resume({rig.key: TradeMark("40", 40, 0)})
    assert rig.tape() == ["41", "42"] and rig.filler.pending_count() == 0
    # an HA peer wrote ahead: what we hold is below the high-watermark (Redis skips it)
    rig = resumed("binance", History("binance", "BTCUSDT", 1, 500))
    rig.live(41)
    rig.filler.resume({rig.key: TradeMark("60", 60, 0)})
    assert rig.tape() == ["41"] and rig.filler.pending_count() == 0
    # nothing stored (new stream): nothing to fill
    rig = resumed("binance", History("binance", "BTCUSDT", 1, 500))
    rig.live(41)
    rig.filler.resume({})
    assert rig.tape() == ["41"] and rig.filler.pending_count() == 0


def test_resume_before_the_first_trade_anchors_it() -> None:
    rig = resumed("okx", History("okx", "BTC-USDT", 1, 500))
    rig.filler.resume({rig.key: TradeMark("40", 40, 0)})
    assert rig.live(45)
    rig.run_pending()
    assert rig.tape() == [str(i) for i in range(41, 46)]


def test_resume_by_time_on_bybit() -> None:
    rig = resumed("bybit", History("bybit", "BTCUSDT", 1, 900))
    rig.live(300)
    rig.filler.resume(gapfill.resume_points({"hwm": {}, "last": {rig.key: ["x250", 1_000_000 + 2500]}}))
    rig.run_pending()
    assert rig.tape() == [f"x{i}" for i in range(251, 301)]


def test_late_resume_answer_fills_without_mono_ids() -> None:
    async def go() -> Rig:
        rig = resumed("binance", History("binance", "BTCUSDT", 1, 500), gap_hold_seconds=0.05)
        rig.live(50)
        await asyncio.sleep(0.2)              # no answer in time: released
        assert rig.tape() == ["50"] and not rig.live(51)
        rig.filler.resume({rig.key: TradeMark("45", 45, 0)})
        await rig.filler.drain()
        return rig
    rig = asyncio.run(go())
    assert rig.tape() == ["50", "51", "46", "47", "48", "49"]
    assert mono(rig) == ["50", "51", None, None, None, None]
    st = rig.filler.stats()
    assert (st["trade_resume_timeouts"], st["trade_late_gaps"], st["trade_late_trades"]) == (1, 1, 4)


def test_channel_asks_for_resume_points_until_answered(tmp_path: Path) -> None:
    """The resume question over a real Unix socket: asked after hello, asked again while the
    publisher answers ``error`` (Redis down), answered once."""
    from shared import ipc
    from shared.settings import ChannelSettings
    from workers import channel as channel_mod
    from workers.channel import PublisherChannel

    questions: list[Any] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while (msg := await ipc.read_frame(reader)) is not None:
            if msg.get("t") == "resume?":
                questions.append(msg["streams"])
                ipc.write_frame(writer, {"t": "resume", "error": "redis unavailable"} if len(questions) < 3
                                else {"t": "resume", "hwm": {"s1": "41"}, "last": {}})

    async def go() -> list[dict]:
        answers: list[dict] = []
        path = tmp_path / "pub.sock"
        server = await asyncio.start_unix_server(handle, path=str(path))
        channel_mod.RESUME_RETRY = 0.05
        ch = PublisherChannel("binance", path, ChannelSettings())
        ch.request_resume(["s1", "s2"], answers.append)   # before the connection: asked on connect
        ch.start()
        for _ in range(200):
            if answers:
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.2)                            # answered: never asked again
        await ch.close(time.monotonic() + 1)
        server.close()
        return answers
    old = channel_mod.RESUME_RETRY
    try:
        answers = asyncio.run(go())
    finally:
        channel_mod.RESUME_RETRY = old
    assert questions == [["s1", "s2"]] * 3
    assert answers == [{"t": "resume", "hwm": {"s1": "41"}, "last": {}}]
