"""Bybit v5 market-data parsers (workers/exchanges/bybit_md.py) on the recorded frames of
fixtures/ws/bybit (SOURCES.md section 5), plus the ticker merge, hostile input and builders."""

from __future__ import annotations

import json

import orjson
import pytest

from shared.events import fields_to_dict
from tests.conftest import FIXTURES
from workers.exchanges import bybit_md
from workers.exchanges.bybit_md import BybitParser, BybitTickerMerger, parse_message


WS = FIXTURES / "ws" / "bybit"  # the repo's copy of ../shared/fixtures/ws
RX_NS = 987_654_321
RX_MS = 1_790_000_000_000

SPOT = {"BTCUSDT": ("BTC-USDT", "spot"), "BTCUSDC": ("BTC-USDC", "spot")}
LINEAR = {
    "BTCUSDT": ("BTC-USDT", "perp"), "BTCPERP": ("BTC-USDC", "perp"), "LTCUSDT": ("LTC-USDT", "perp"),
    "BTCUSD": ("BTC-USD", "perp"), "ROSEUSDT": ("ROSE-USDT", "perp"), "PIPPINUSDT": ("PIPPIN-USDT", "perp"),
    "MARSCOINUSDT": ("MARSCOIN-USDT", "perp"), "GALAUSDT": ("GALA-USDT", "perp"), "XRPUSD": ("XRP-USD", "perp"),
}


def elements(name: str) -> list:
    return json.loads((WS / name).read_text())


def frames(name: str) -> list[str]:
    return [json.dumps(x, separators=(",", ":")) for x in elements(name)]


def frame(obj: object) -> str:
    return orjson.dumps(obj).decode()


def parse(raw: str | bytes, symbols=LINEAR, tickers=None):
    return parse_message(raw, symbols, RX_NS, RX_MS, tickers)


def events(raw: str | bytes, symbols=LINEAR) -> list[dict[str, str]]:
    r = parse(raw, symbols)
    assert r.parse_errors == 0 and r.rejected == 0 and r.error is None, r
    return [fields_to_dict(w[3]) for w in r.events]


# ---- trades ----

def test_public_trade_linear_and_inverse() -> None:
    raws = frames("publicTrade_linear.json")
    r = parse(raws[0])
    [(stream, dedup, cls, fields, rx_ns)] = r.events
    f = fields_to_dict(fields)
    assert stream == "md:trade:bybit:perp:LTC-USDT" and cls == "trade" and rx_ns == RX_NS
    assert dedup == "t:bybit:perp:LTCUSDT:4c7b6bdc-b4a3-5716-9c7b-bbe01dc7072f"
    assert (f["trade_id"], f["price"], f["qty"], f["side"], f["ts_exchange"], f["ts_receive"]) == \
        ("4c7b6bdc-b4a3-5716-9c7b-bbe01dc7072f", "94.53", "0.4", "buy", "1680688979983", str(RX_MS))
    got = events(raws[1])  # inverse: 3 fills in one message
    assert [(f["symbol"], f["trade_id"], f["qty"], f["price"], f["side"]) for f in got] == [
        ("BTC-USD", "0cbf2330-952d-5d03-a462-4bf826c867af", "5823", "28560.50", "buy"),
        ("BTC-USD", "912e56de-9ed6-5f4f-9421-f0ff5a42d84a", "3", "28560.50", "buy"),
        ("BTC-USD", "cb558b74-cf72-5157-b53b-93944db336ad", "5593", "28560.50", "buy"),
    ]
    [f] = events(raws[2])  # current docs shape with seq
    assert (f["symbol"], f["trade_id"], f["price"], f["qty"], f["ts_exchange"]) == \
        ("BTC-USDT", "20f43950-d8dd-5b31-9112-a178eb6023af", "16578.50", "0.001", "1672304486865")


def test_public_trade_spot() -> None:
    raws = frames("publicTrade_spot.json")
    got = events(raws[0], SPOT)
    assert [f["trade_id"] for f in got] == [f"229000000005070378{i}" for i in (9,)] + \
        [f"22900000000507037{i}" for i in (90, 91, 92)]
    assert [f["qty"] for f in got] == ["0.041732", "0.008513", "0.042384", "0.055371"]
    assert {(f["market"], f["symbol"], f["price"], f["side"], f["ts_exchange"]) for f in got} == \
        {("spot", "BTC-USDT", "28165.38", "sell", "1680652847524")}
    [f] = events(raws[1], SPOT)
    assert (f["symbol"], f["trade_id"], f["price"], f["qty"], f["side"]) == \
        ("BTC-USDC", "2240000000041223438", "28528.98", "0.00433", "buy")


def test_trade_flags_do_not_matter_and_mixed_symbols_count_separately() -> None:
    msg = elements("publicTrade_linear.json")[1]
    msg["data"][0]["BT"] = True
    msg["data"][1]["RPI"] = True
    msg["data"][1]["s"] = "ETHUSD"      # not configured
    msg["data"][2]["p"] = 28560.5       # a float: malformed
    r = parse(frame(msg))
    assert len(r.events) == 1 and r.rejected == 1 and r.parse_errors == 1 and r.data


# ---- order books ----

def test_orderbook_linear() -> None:
    raws = frames("orderbook_linear.json")
    [snap] = parse(raws[0]).books
    assert (snap.exchange, snap.market, snap.symbol, snap.native_symbol) == ("bybit", "perp", "BTC-USDC", "BTCPERP")
    assert (snap.snapshot, snap.seq, snap.bids, snap.asks, snap.ts_exchange, snap.ts_receive) == \
        (True, 20683568, [("28555.20", "0.597")], [("28555.30", "0.225")], 1680673821591, RX_MS)
    assert (snap.prev_seq, snap.first_seq, snap.checksum) == (None, None, None)
    [delta] = parse(raws[1]).books
    assert (delta.snapshot, delta.seq, delta.bids, delta.asks) == \
        (False, 20683569, [("28555.20", "0.677")], [("28555.30", "0.029")])
    assert delta.seq == snap.seq + 1
    [docs] = parse(raws[2]).books
    assert (docs.symbol, docs.snapshot, docs.seq, docs.ts_exchange) == ("BTC-USDT", False, 177400507, 1687940967466)
    assert docs.bids[-1] == ("30240.00", "0") and docs.asks[0] == ("30248.70", "0") and len(docs.asks) == 7
    [level1] = parse(raws[3]).books
    assert (level1.snapshot, level1.seq, level1.bids, level1.asks) == \
        (True, 7003305, [("28552.00", "0.047")], [("28552.10", "25.433")])


def test_orderbook_spot() -> None:
    raws = frames("orderbook_spot.json")
    [snap] = parse(raws[0], SPOT).books
    assert (snap.market, snap.snapshot, snap.seq, snap.bids, snap.asks) == \
        ("spot", True, 59438060, [("28162.57", "0.07562")], [("28162.58", "0.506829")])
    [delta] = parse(raws[1], SPOT).books
    assert (delta.snapshot, delta.seq, delta.bids, delta.asks) == \
        (False, 59438061, [("28161.04", "0.177474"), ("28145.71", "0")], [("28184.33", "0")])
    [legacy] = parse(raws[2], SPOT).books  # 2023 level-1 delta, passed on as sent
    assert (legacy.snapshot, legacy.seq, legacy.bids, legacy.asks) == \
        (False, 20404755, [("28165.07", "0.166754")], [])


def test_orderbook_u1_is_a_reset_snapshot() -> None:
    msg = elements("orderbook_linear.json")[1]
    msg["data"]["u"] = 1
    [book] = parse(frame(msg)).books
    assert book.snapshot and book.seq == 1


# ---- tickers ----

def test_ticker_linear_snapshot() -> None:
    p = BybitParser(LINEAR)
    r = p.parse(frames("tickers_linear.json")[0], RX_NS, RX_MS)
    [(stream, dedup, _, fields, _)] = r.events
    f = fields_to_dict(fields)
    assert stream == "md:ticker:bybit:perp:BTC-USDT"
    assert dedup == "tk:bybit:perp:BTCUSDT:1680673821770:50193544280"
    assert {k: f[k] for k in ("last", "open", "high", "low", "volume", "quote_volume", "change_pct", "bid_price",
                              "bid_qty", "ask_price", "ask_qty", "mark_price", "index_price", "funding_rate",
                              "next_funding_time", "open_interest", "seq", "ts_exchange")} == {
        "last": "28550.70", "open": "27899.70", "high": "28797.10", "low": "27842.80", "volume": "151185.5160",
        "quote_volume": "4273027716.4294", "change_pct": "2.3333", "bid_price": "28550.70", "bid_qty": "2.049",
        "ask_price": "28550.80", "ask_qty": "15.328", "mark_price": "28552.81", "index_price": "28562.25",
        "funding_rate": "0.0001", "next_funding_time": "1680681600000", "open_interest": "52774.528",
        "seq": "50193544280", "ts_exchange": "1680673821770"}
    r = p.parse(frames("tickers_linear.json")[2], RX_NS, RX_MS)  # docs 2025 shape, extra fields
    f = fields_to_dict(r.events[0][3])
    assert (f["last"], f["change_pct"], f["funding_rate"], f["next_funding_time"], f["index_price"], f["seq"]) == \
        ("66666.60", "-15.8315", "-0.005", "1760342400000", "115418.19", "9532239429")


def test_ticker_delta_is_merged_into_the_last_snapshot() -> None:
    p = BybitParser(LINEAR)
    delta = frames("tickers_linear.json")[1]  # BTCUSD (inverse): only changed fields
    r = p.parse(delta, RX_NS, RX_MS)
    assert r.data and r.events == [] and r.parse_errors == 0  # nothing complete to publish yet
    snap = elements("tickers_linear.json")[0]
    snap["topic"], snap["data"]["symbol"] = "tickers.BTCUSD", "BTCUSD"
    p.parse(frame(snap), RX_NS, RX_MS)
    r = p.parse(delta, RX_NS, RX_MS)
    [(stream, dedup, _, fields, _)] = r.events
    f = fields_to_dict(fields)
    assert stream == "md:ticker:bybit:perp:BTC-USD" and dedup == "tk:bybit:perp:BTCUSD:1680673822776:20856433603"
    # changed fields from the delta ...
    assert (f["change_pct"], f["open_interest"], f["funding_rate"], f["bid_price"], f["bid_qty"], f["ask_price"],
            f["ask_qty"], f["seq"], f["ts_exchange"]) == \
        ("2.3362", "449736674", "0.0001", "28560.00", "340549", "28560.50", "70817", "20856433603", "1680673822776")
    # ... the rest from the snapshot
    assert (f["last"], f["mark_price"], f["next_funding_time"], f["volume"]) == \
        ("28550.70", "28552.81", "1680681600000", "151185.5160")
    # a later delta keeps merging; another symbol's state is untouched
    later = {"topic": "tickers.BTCUSD", "type": "delta", "cs": 20856433604, "ts": 1680673822876,
             "data": {"symbol": "BTCUSD", "lastPrice": "28561.00"}}
    f = fields_to_dict(p.parse(frame(later), RX_NS, RX_MS).events[0][3])
    assert (f["last"], f["bid_price"], f["open_interest"]) == ("28561.00", "28560.00", "449736674")
    assert len(p.tickers) == 1


def test_ticker_new_snapshot_replaces_the_state() -> None:
    p = BybitParser(LINEAR)
    raws = frames("tickers_linear.json")
    p.parse(raws[0], RX_NS, RX_MS)
    snap = {"topic": "tickers.BTCUSDT", "type": "snapshot", "cs": 1, "ts": 2,
            "data": {"symbol": "BTCUSDT", "lastPrice": "1.5"}}
    f = fields_to_dict(p.parse(frame(snap), RX_NS, RX_MS).events[0][3])
    assert (f["last"], f["mark_price"], f["funding_rate"]) == ("1.5", "", "")


def test_ticker_without_merger_skips_deltas() -> None:
    raws = frames("tickers_linear.json")
    assert len(parse(raws[0]).events) == 1
    r = parse(raws[1])
    assert r.data and r.events == []


def test_ticker_merger_is_bounded() -> None:
    merger = BybitTickerMerger(2)
    for native in ("A", "B", "C"):
        merger.merge(native, True, {"lastPrice": "1"})
    assert len(merger) == 2
    assert merger.merge("A", False, {"lastPrice": "2"}) is None  # the oldest was dropped
    assert merger.merge("C", False, {"lastPrice": "3"}) == {"lastPrice": "3"}
    # unknown symbols never reach the cache; unpublished fields are not kept
    p = BybitParser({"BTCUSDT": ("BTC-USDT", "perp")})
    msg = elements("tickers_linear.json")[0]
    msg["data"]["symbol"] = "ETHUSDT"
    assert p.parse(frame(msg), RX_NS, RX_MS).rejected == 1 and len(p.tickers) == 0
    p.parse(frames("tickers_linear.json")[2], RX_NS, RX_MS)
    assert "tickDirection" not in p.tickers._last["BTCUSDT"] and "preOpenPrice" not in p.tickers._last["BTCUSDT"]
    merger.clear()
    assert len(merger) == 0


def test_ticker_spot_snapshot() -> None:
    [f] = events(frames("tickers_spot.json")[0], SPOT)
    assert {k: f[k] for k in ("market", "symbol", "last", "open", "high", "low", "volume", "quote_volume",
                              "change_pct", "bid_price", "mark_price", "next_funding_time", "seq",
                              "ts_exchange")} == {
        "market": "spot", "symbol": "BTC-USDT", "last": "21109.77", "open": "20704.93", "high": "21426.99",
        "low": "20575", "volume": "6780.866843", "quote_volume": "141946527.22907118", "change_pct": "1.96",
        "bid_price": "", "mark_price": "", "next_funding_time": "0", "seq": "2588407389",
        "ts_exchange": "1673853746003"}


@pytest.mark.parametrize("field,value", [("lastPrice", 1.5), ("bid1Price", "abc"), ("nextFundingTime", "soon"),
                                         ("price24hPcnt", "1e-2")])
def test_ticker_malformed_field(field: str, value: object) -> None:
    msg = elements("tickers_linear.json")[0]
    msg["data"][field] = value
    r = parse(frame(msg))
    assert r.parse_errors == 1 and r.events == []


# ---- liquidations ----

@pytest.mark.parametrize("i,native,symbol,side,position,price,qty,ts", [
    # S = Sell: a SHORT position was liquidated, closed by a BUY order
    (0, "ROSEUSDT", "ROSE-USDT", "buy", "short", "0.04499", "20000", "1739502302929"),
    (1, "PIPPINUSDT", "PIPPIN-USDT", "buy", "short", "0.02456", "2846", "1740480207110"),
    (2, "MARSCOINUSDT", "MARSCOIN-USDT", "buy", "short", "0.12734", "2380", "1789670278053"),
])
def test_all_liquidation(i, native, symbol, side, position, price, qty, ts) -> None:
    r = parse(frames("allLiquidation.json")[i])
    [(stream, dedup, _, fields, _)] = r.events
    f = fields_to_dict(fields)
    assert stream == f"md:liquidation:bybit:perp:{symbol}"
    assert dedup == f"lq:bybit:perp:{native}:{ts}:{side}:{price}:{qty}"
    assert (f["native_symbol"], f["side"], f["position_side"], f["price"], f["qty"], f["ts_exchange"],
            f["sampled"]) == (native, side, position, price, qty, ts, "0")


def test_all_liquidation_buy_means_long_liquidated() -> None:
    msg = elements("allLiquidation.json")[0]
    msg["data"].append({**msg["data"][0], "S": "Buy", "T": 1739502302930})
    msg["data"].append({**msg["data"][0], "s": "DOGEUSDT"})
    msg["data"].append({**msg["data"][0], "S": "Long"})
    r = parse(frame(msg))
    got = [fields_to_dict(w[3]) for w in r.events]
    assert [(f["side"], f["position_side"]) for f in got] == [("buy", "short"), ("sell", "long")]
    assert r.rejected == 1 and r.parse_errors == 1


def test_legacy_liquidation_topic() -> None:
    raws = frames("liquidation_legacy.json")
    [f] = events(raws[0])
    assert (f["symbol"], f["side"], f["position_side"], f["price"], f["qty"], f["ts_exchange"]) == \
        ("GALA-USDT", "sell", "long", "0.03803", "1637", "1673251091822")
    [f] = events(raws[1])
    assert (f["symbol"], f["side"], f["position_side"], f["price"], f["qty"], f["ts_exchange"]) == \
        ("XRP-USD", "buy", "short", "0.5149", "6949", "1680673944093")


# ---- control frames and builders ----

def test_ping_pong_variants_are_ignored() -> None:
    ping, *pongs = frames("ping_pong.json")
    assert orjson.loads(bybit_md.PING) == {"op": "ping"} and bybit_md.PING_INTERVAL == 20.0
    assert orjson.loads(ping)["op"] == "ping"
    for raw in [ping, *pongs]:
        r = parse(raw)
        assert not r.data and r.error is None and r.parse_errors == 0 and r.events == []


def test_subscribe_acks_and_failures() -> None:
    request, spot_ack, linear_ack, failure = frames("subscribe.json")
    for raw in (request, spot_ack, linear_ack):
        r = parse(raw)
        assert not r.data and r.error is None and r.parse_errors == 0
    r = parse(failure)
    assert r.error == "bybit error (subscribe): Invalid topic: invalid.topic.BTCUSDT" and not r.data
    ok = {"success": True, "conn_id": "x", "data": {"failTopics": [], "successTopics": ["tickers.BTC-1JAN25-1-C"]},
          "type": "COMMAND_RESP"}
    assert parse(frame(ok)).error is None
    failed = {**ok, "data": {"failTopics": ["tickers.NOPE"], "successTopics": []}}
    assert "tickers.NOPE" in parse(frame(failed)).error


def test_subscribe_builders() -> None:
    request = orjson.loads(frames("subscribe.json")[0])
    topics = [bybit_md.orderbook_topic("BTCUSDT", 1), bybit_md.trade_topic("BTCUSDT"),
              bybit_md.orderbook_topic("ETHUSDT", 1)]
    assert topics == request["args"]
    [msg] = bybit_md.subscribe_messages(topics, "spot", req_id_prefix="test")
    assert orjson.loads(msg) == {"op": "subscribe", "args": topics, "req_id": "test0"}
    many = [bybit_md.ticker_topic(f"C{i}USDT") for i in range(25)]
    spot = [orjson.loads(m) for m in bybit_md.subscribe_messages(many, "spot")]
    assert [len(m["args"]) for m in spot] == [10, 10, 5]
    assert [t for m in spot for t in m["args"]] == many
    assert len(bybit_md.subscribe_messages(many, "linear")) == 1
    assert bybit_md.liquidation_topic("BTCUSDT") == "allLiquidation.BTCUSDT"
    too_many = [bybit_md.orderbook_topic(f"COIN{i:06d}USDT", 200) for i in range(1000)]
    with pytest.raises(ValueError):
        bybit_md.subscribe_messages(too_many, "linear")
    groups = bybit_md.split_connections(too_many)
    assert len(groups) > 1 and [t for g in groups for t in g] == too_many
    assert all(bybit_md.args_chars(g) <= bybit_md.MAX_ARGS_CHARS for g in groups)
    with pytest.raises(ValueError):
        bybit_md.subscribe_messages(topics, "futures")


def test_urls() -> None:
    assert bybit_md.ws_url("spot") == "wss://stream.bybit.com/v5/public/spot"
    assert bybit_md.ws_url("linear") == "wss://stream.bybit.com/v5/public/linear"
    assert bybit_md.ws_url(bybit_md.CATEGORY_OF_MARKET["perp"]).endswith("/linear")
    with pytest.raises(ValueError):
        bybit_md.ws_url("margin")


# ---- hostile / garbage ----

@pytest.mark.parametrize("native", ["*", "BTCUSDT ", "x" * 10_000, "БТЦUSDT", "{a}", "ETHUSDT", ""])
def test_unknown_or_hostile_symbols_are_rejected(native: str) -> None:
    trade = elements("publicTrade_linear.json")[0]
    trade["data"][0]["s"] = native
    book = elements("orderbook_linear.json")[0]
    book["data"]["s"] = native
    ticker = elements("tickers_linear.json")[0]
    ticker["data"]["symbol"] = native
    liq = elements("allLiquidation.json")[0]
    liq["data"][0]["s"] = native
    for msg in (trade, book, ticker, liq):
        r = parse(frame(msg))
        assert r.rejected == 1 and r.events == [] and r.books == [] and r.data


@pytest.mark.parametrize("raw", ["", "pong", "not json", "[1]", "null", "{", b"\xff", '{"topic":5}',
                                 '{"ret_msg":"x"}', 7])
def test_garbage_frames(raw) -> None:
    r = parse(raw)
    assert r.parse_errors == 1 and r.events == [] and r.error is None and not r.data


def test_malformed_payloads_are_data_errors() -> None:
    book = elements("orderbook_linear.json")[0]
    for mutate in (lambda m: m["data"].__setitem__("b", [["1", "2", "3"]]),
                   lambda m: m["data"].__setitem__("a", [["x", "1"]]),
                   lambda m: m["data"].__setitem__("u", "20683568"),
                   lambda m: m.__setitem__("type", "partial"),
                   lambda m: m.__setitem__("ts", None),
                   lambda m: m["data"].__setitem__("s", 5),
                   lambda m: m.__setitem__("data", [])):
        msg = json.loads(json.dumps(book))
        mutate(msg)
        r = parse(frame(msg))
        assert r.parse_errors == 1 and r.books == [] and r.data, msg
    trade = elements("publicTrade_spot.json")[1]
    for field, value in (("i", "a b"), ("T", 1.5), ("T", -1), ("S", "buy"), ("v", "-"), ("p", None)):
        msg = json.loads(json.dumps(trade))
        msg["data"][0][field] = value
        assert parse(frame(msg), SPOT).parse_errors == 1
    r = parse(frame({"topic": "publicTrade.BTCUSDT", "data": {"not": "a list"}}))
    assert r.parse_errors == 1 and r.data


def test_other_topics_are_data_without_events() -> None:
    r = parse(frame({"topic": "insurance.USDT", "type": "snapshot", "ts": 1, "data": []}))
    assert r.data and r.events == [] and r.parse_errors == 0


# ---- klines ----

def test_kline_docs_example() -> None:
    r = parse(frames("kline.json")[0])
    [(stream, dedup, cls, fields, rx_ns)] = r.events
    f = fields_to_dict(fields)
    assert (stream, cls, rx_ns, r.topic) == ("md:kline_5m:bybit:perp:BTC-USDT", "kline", RX_NS, "kline.5.BTCUSDT")
    # open candle: the event time is part of the dedup key (every update is kept)
    assert dedup == "k:bybit:perp:BTCUSDT:5m:1672324800000:1672324988882"
    assert {k: f[k] for k in ("market", "symbol", "native_symbol", "interval", "open_time", "close_time", "open",
                              "high", "low", "close", "volume", "quote_volume", "trades", "closed", "ts_exchange",
                              "ts_receive")} == {
        "market": "perp", "symbol": "BTC-USDT", "native_symbol": "BTCUSDT", "interval": "5m",
        "open_time": "1672324800000", "close_time": "1672325099999", "open": "16649.5", "high": "16677",
        "low": "16608", "close": "16677", "volume": "2.081", "quote_volume": "34666.4005", "trades": "0",
        "closed": "0", "ts_exchange": "1672324988882", "ts_receive": str(RX_MS)}


def test_kline_live_linear_and_spot_frames() -> None:
    raws = frames("kline.json")
    [f] = events(raws[1])
    assert (f["interval"], f["open_time"], f["close_time"], f["open"], f["high"], f["low"], f["close"],
            f["volume"], f["quote_volume"], f["closed"]) == \
        ("1m", "1790409720000", "1790409779999", "84045", "84045", "84017.8", "84017.8", "7.316", "614833.7084", "0")
    [f] = events(raws[2], SPOT)   # spot: type before topic; key order never matters
    assert (f["market"], f["symbol"], f["interval"], f["open"], f["high"], f["quote_volume"], f["ts_exchange"]) == \
        ("spot", "BTC-USDT", "1m", "50803.82", "50803.84", "26099.95921086", "1714102192562")


def test_kline_confirm_closes_the_candle() -> None:
    [(stream, dedup, _, fields, _)] = parse(frames("kline.json")[3]).events
    f = fields_to_dict(fields)
    assert stream == "md:kline_1m:bybit:perp:BTC-USDT"
    assert dedup == "k:bybit:perp:BTCUSDT:1m:1672324800000:c"   # one closed candle per interval+open time
    assert (f["closed"], f["close"], f["close_time"]) == ("1", "16695", "1672324859999")


@pytest.mark.parametrize("interval,ours", sorted(bybit_md.KLINE_INTERVALS.items()))
def test_kline_interval_names(interval: str, ours: str) -> None:
    msg = elements("kline.json")[0]
    msg["topic"], msg["data"][0]["interval"] = f"kline.{interval}.BTCUSDT", interval
    [f] = events(frame(msg))
    assert f["interval"] == ours
    assert bybit_md.kline_topic("BTCUSDT", ours) == f"kline.{interval}.BTCUSDT"


def test_kline_malformed_and_hostile() -> None:
    base = elements("kline.json")[0]
    for mutate in (lambda m: m["data"][0].__setitem__("confirm", "true"),
                   lambda m: m["data"][0].__setitem__("start", 1.5),
                   lambda m: m["data"][0].__setitem__("close", "1e5"),
                   lambda m: m["data"][0].__setitem__("turnover", 5),
                   lambda m: m["data"][0].__setitem__("interval", "1"),   # disagrees with the topic
                   lambda m: m["data"].__setitem__(0, "x")):
        msg = json.loads(json.dumps(base))
        mutate(msg)
        r = parse(frame(msg))
        assert r.parse_errors == 1 and r.events == [] and r.data, msg
    for topic in ("kline.2.BTCUSDT", "kline.5", "kline"):
        r = parse(frame({**base, "topic": topic}))
        assert r.parse_errors == 1 and r.events == [] and r.data
    for mutate in (lambda m: m.__setitem__("data", {"a": 1}), lambda m: m.__setitem__("ts", "x")):
        msg = json.loads(json.dumps(base))
        mutate(msg)
        assert parse(frame(msg)).parse_errors == 1
    for native in ("ETHUSDT", "*", "x" * 10_000, "БТЦ", "BTCUSDT.x"):
        r = parse(frame({**base, "topic": f"kline.5.{native}"}))
        assert r.rejected == 1 and r.events == [] and r.data
    # a good candle next to a bad one: the good one is published, the bad one counted
    msg = json.loads(json.dumps(base))
    msg["data"].append({**msg["data"][0], "open": None})
    r = parse(frame(msg))
    assert len(r.events) == 1 and r.parse_errors == 1
    with pytest.raises(ValueError):
        bybit_md.kline_topic("BTCUSDT", "8h")


# ---- open interest and funding from the linear ticker ----

def test_ticker_snapshot_publishes_open_interest_and_funding() -> None:
    p = BybitParser(LINEAR, bybit_md.TICKER_TYPES)
    r = p.parse(frames("tickers_linear.json")[0], RX_NS, RX_MS)
    by_class = {w[2]: (w[0], w[1], fields_to_dict(w[3])) for w in r.events}
    assert sorted(by_class) == ["funding", "open_interest", "ticker"]
    stream, dedup, f = by_class["open_interest"]
    assert (stream, dedup) == ("md:open_interest:bybit:perp:BTC-USDT", "oi:bybit:perp:BTCUSDT:1680673821770")
    assert (f["open_interest"], f["open_interest_value"], f["open_interest_ccy"], f["ts_exchange"]) == \
        ("52774.528", "1506861070.82", "", "1680673821770")
    stream, dedup, f = by_class["funding"]
    assert (stream, dedup) == ("md:funding:bybit:perp:BTC-USDT", "f:bybit:perp:BTCUSDT:1680681600000:1680673821770")
    assert (f["funding_rate"], f["next_funding_time"], f["mark_price"], f["index_price"]) == \
        ("0.0001", "1680681600000", "28552.81", "28562.25")


def test_ticker_delta_publishes_only_what_changed() -> None:
    p = BybitParser(LINEAR, bybit_md.TICKER_TYPES)
    snap = elements("tickers_linear.json")[0]
    snap["topic"], snap["data"]["symbol"] = "tickers.BTCUSD", "BTCUSD"
    p.parse(frame(snap), RX_NS, RX_MS)
    r = p.parse(frames("tickers_linear.json")[1], RX_NS, RX_MS)   # openInterest and fundingRate changed
    got = {w[2]: fields_to_dict(w[3]) for w in r.events}
    assert sorted(got) == ["funding", "open_interest", "ticker"]
    # merged values: the new open interest with the snapshot's value in quote, funding time from before
    assert (got["open_interest"]["open_interest"], got["open_interest"]["open_interest_value"]) == \
        ("449736674", "1506861070.82")
    assert (got["funding"]["funding_rate"], got["funding"]["next_funding_time"]) == ("0.0001", "1680681600000")
    price_only = {"topic": "tickers.BTCUSD", "type": "delta", "cs": 5, "ts": 1680673822876,
                  "data": {"symbol": "BTCUSD", "lastPrice": "28561.00"}}
    assert [w[2] for w in p.parse(frame(price_only), RX_NS, RX_MS).events] == ["ticker"]
    # open interest wanted without the ticker: only the open-interest events
    q = BybitParser(LINEAR, frozenset({"open_interest"}))
    assert [w[2] for w in q.parse(frames("tickers_linear.json")[0], RX_NS, RX_MS).events] == ["open_interest"]
    # spot tickers carry neither
    s = BybitParser(SPOT, bybit_md.TICKER_TYPES)
    assert [w[2] for w in s.parse(frames("tickers_spot.json")[0], RX_NS, RX_MS).events] == ["ticker"]


# ---- long/short account ratio (REST) ----

def test_rest_account_ratio_docs_example() -> None:
    body = frames("rest_account_ratio.json")[0]
    r = bybit_md.parse_rest_account_ratio(body, LINEAR, "1h", RX_NS, RX_MS)
    assert r.parse_errors == 0 and r.rejected == 0 and r.error is None and r.data
    assert [(w[0], w[1], w[2]) for w in r.events] == [   # oldest first
        ("md:long_short_global_account:bybit:perp:BTC-USDT", "ls:global_account:bybit:perp:BTCUSDT:1h:1696258800000",
         "long_short"),
        ("md:long_short_global_account:bybit:perp:BTC-USDT", "ls:global_account:bybit:perp:BTCUSDT:1h:1696262400000",
         "long_short")]
    got = [fields_to_dict(w[3]) for w in r.events]
    assert [(f["kind"], f["period"], f["ratio"], f["long_pct"], f["short_pct"], f["ts_exchange"], f["ts_receive"])
            for f in got] == [
        ("global_account", "1h", "0.9712", "0.4927", "0.5073", "1696258800000", str(RX_MS)),
        ("global_account", "1h", "0.9608", "0.49", "0.51", "1696262400000", str(RX_MS))]
    # already-parsed bodies work too (v3 docs example: same rows)
    [w] = bybit_md.parse_rest_account_ratio(elements("rest_account_ratio.json")[1], LINEAR, "1d", RX_NS, RX_MS).events
    assert fields_to_dict(w[3])["ratio"] == "1.3680"


def test_rest_account_ratio_errors_and_hostile_rows() -> None:
    parse_ratio = bybit_md.parse_rest_account_ratio
    r = parse_ratio({"retCode": 10001, "retMsg": "params error: period invalid", "result": {}}, LINEAR, "5m", 0, 0)
    assert r.error == "bybit error 10001: params error: period invalid" and r.events == []
    for garbage in (b"", b"not json", "[1]", {"retCode": 0, "result": {"list": "x"}}, {"retCode": 0}):
        r = parse_ratio(garbage, LINEAR, "5m", 0, 0)
        assert r.parse_errors == 1 and r.events == [] and r.error is None
    body = elements("rest_account_ratio.json")[0]
    rows = body["result"]["list"]
    rows += [{**rows[0], "symbol": "x" * 5000}, {**rows[0], "symbol": "ETHUSDT"}, {**rows[0], "buyRatio": 0.5},
             {**rows[0], "timestamp": "soon"}, {**rows[0], "symbol": None}, "row", {**rows[0], "sellRatio": "0"}]
    r = parse_ratio(body, LINEAR, "5m", 0, 0)
    assert (len(r.events), r.rejected, r.parse_errors) == (3, 2, 4)
    assert fields_to_dict(r.events[0][3])["ratio"] == ""   # sellRatio 0: no ratio, shares kept
    with pytest.raises(ValueError):
        parse_ratio(body, LINEAR, "2h", 0, 0)
    assert bybit_md.account_ratio_url("BTCUSDT", "1d") == \
        "https://api.bybit.com/v5/market/account-ratio?category=linear&symbol=BTCUSDT&period=1d&limit=1"
    with pytest.raises(ValueError):
        bybit_md.account_ratio_url("BTCUSDT", "2h")


# ---- declarations ----

def _cfg(**kw):
    from shared.settings import ExchangeSettings
    return ExchangeSettings(**{"market_data": True, "symbols": ["BTC-USDT", "ETH-USDC"], **kw})


def test_feeds_subscribe_klines_and_one_tickers_topic_per_symbol() -> None:
    (spot, s1), (linear, s2) = bybit_md.market_data_feeds(_cfg(kline_intervals=["1m", "1h", "1d"]))
    assert s1 == ["publicTrade.BTCUSDT", "orderbook.1000.BTCUSDT", "kline.1.BTCUSDT", "kline.60.BTCUSDT",
                  "kline.D.BTCUSDT", "tickers.BTCUSDT",
                  "publicTrade.ETHUSDC", "orderbook.1000.ETHUSDC", "kline.1.ETHUSDC", "kline.60.ETHUSDC",
                  "kline.D.ETHUSDC", "tickers.ETHUSDC"]
    assert s2[:7] == ["publicTrade.BTCUSDT", "orderbook.1000.BTCUSDT", "kline.1.BTCUSDT", "kline.60.BTCUSDT",
                      "kline.D.BTCUSDT", "allLiquidation.BTCUSDT", "tickers.BTCUSDT"]
    assert s2.count("tickers.ETHPERP") == 1 and len(s2) == 14
    assert spot.parser.ticker_types == {"ticker"} and linear.parser.ticker_types == bybit_md.TICKER_TYPES
    assert not linear.watch_topic("kline.1.BTCUSDT") and linear.watch_topic("tickers.BTCUSDT")
    (only,) = bybit_md.market_data_feeds(_cfg(channels=["funding"]))
    assert only[1] == ["tickers.BTCUSDT", "tickers.ETHPERP"] and only[0].parser.ticker_types == {"funding"}


def test_long_short_polls_and_problems() -> None:
    polls = bybit_md.market_data_polls(_cfg(long_short_period="15m", rest_poll_interval=30))
    assert [(p.url, p.weight, p.interval, p.label) for p in polls] == [
        ("https://api.bybit.com/v5/market/account-ratio?category=linear&symbol=BTCUSDT&period=15min&limit=1", 1,
         30.0, "long_short_global_account BTCUSDT"),
        ("https://api.bybit.com/v5/market/account-ratio?category=linear&symbol=ETHPERP&period=15min&limit=1", 1,
         30.0, "long_short_global_account ETHPERP")]
    [w] = polls[0].parse(frames("rest_account_ratio.json")[1], 1, 2).events
    assert fields_to_dict(w[3])["period"] == "15m"
    # many symbols: the poll interval stretches so the polls stay under LONG_SHORT_MAX_RATE
    many = bybit_md.market_data_polls(_cfg(symbols=[f"C{i}-USDT" for i in range(300)]))
    assert len(many) == 300 and many[0].interval == 300 / bybit_md.LONG_SHORT_MAX_RATE
    assert bybit_md.market_data_polls(_cfg(channels=["trade"])) == []
    assert bybit_md.market_data_polls(_cfg(markets=["spot"])) == []
    assert bybit_md.market_data_problem(_cfg()) is None
    assert bybit_md.market_data_problem(_cfg(kline_intervals=["1m", "8h"])) == "kline_intervals: 8h not available on bybit"
    assert bybit_md.market_data_problem(_cfg(long_short_period="2h")) == \
        "long_short_period: bybit has 5m, 15m, 30m, 1h, 4h, 1d only"
    assert bybit_md.market_data_problem(_cfg(long_short_period="2h", markets=["spot"])) is None
    assert bybit_md.market_data_problem(_cfg(channels=["bbo"])).startswith("channels: bbo not available on bybit")
