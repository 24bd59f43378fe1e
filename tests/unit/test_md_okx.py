"""OKX market-data parsers (workers/exchanges/okx_md.py) on the recorded frames of
fixtures/ws/okx (SOURCES.md section 3), plus hostile input, REST bodies and builders."""

from __future__ import annotations

import json
import zlib
from decimal import Decimal

import orjson
import pytest

from shared.events import fields_to_dict
from tests.conftest import FIXTURES
from workers.exchanges import okx_md
from workers.exchanges.okx_md import parse_message


WS = FIXTURES / "ws" / "okx"  # the repo's copy of ../shared/fixtures/ws
RX_NS = 123_456_789
RX_MS = 1_790_000_000_000

SYMBOLS = okx_md.symbol_map([
    "BTC-USD-220527", "UNI-USD-SWAP", "BTC-USDT-SWAP", "BTC-USD", "BTC-USDT", "WNCG-USDT-SWAP",
    "SOS-USDT-SWAP", "FIL-USDT-220325", "XRP-USD-230929", "BCH-USDT-SWAP",
])


def elements(name: str) -> list:
    return json.loads((WS / name).read_text())


def frames(name: str) -> list[str]:
    """Each element as the text frame it was on the wire (``ping``/``pong`` are bare text)."""
    return [x if isinstance(x, str) else json.dumps(x, separators=(",", ":")) for x in elements(name)]


def parse(raw: str | bytes, symbols=SYMBOLS):
    return parse_message(raw, symbols, RX_NS, RX_MS)


def events(raw: str | bytes) -> list[dict[str, str]]:
    r = parse(raw)
    assert r.parse_errors == 0 and r.rejected == 0 and r.error is None, r
    return [fields_to_dict(w[3]) for w in r.events]


def frame(obj: object) -> str:
    return orjson.dumps(obj).decode()


# ---- symbols ----

def test_symbol_map_and_market() -> None:
    assert SYMBOLS["BTC-USDT"] == ("BTC-USDT", "spot")
    assert SYMBOLS["BTC-USDT-SWAP"] == ("BTC-USDT", "perp")
    assert SYMBOLS["BTC-USD-220527"] == ("BTC-USD", "future")
    assert okx_md.market_of("BTC-USD-250328-90000-C") == "option"
    for bad in ("BTC", "BTC-USDT-PERP", "BTC-USD-2503", "", None, 5):
        assert okx_md.market_of(bad) is None
    assert okx_md.symbol_map(["BTC-USDT", "B*C-USDT", "BTC", "ÉTH-USDT"]) == {"BTC-USDT": ("BTC-USDT", "spot")}


# ---- trades ----

TRADES = [
    ("future", "BTC-USD", "BTC-USD-220527", "7849", "30218.8", "1", "buy", "1652459199958"),
    ("perp", "UNI-USD", "UNI-USD-SWAP", "12883020", "5.123", "100", "sell", "1652459215150"),
    ("perp", "BTC-USDT", "BTC-USDT-SWAP", "219066264", "43568.8", "7", "buy", "1646312440645"),
    # docs-shaped aggregated trade (count 3): still one taker order
    ("spot", "BTC-USD", "BTC-USD", "130639474", "42219.9", "0.12060306", "buy", "1630048897897"),
]


@pytest.mark.parametrize("i", range(4))
def test_trades(i: int) -> None:
    raw = frames("trades.json")[i]
    r = parse(raw)
    assert r.data and len(r.events) == 1
    stream, dedup, cls, fields, rx_ns, mono = r.events[0]
    f = fields_to_dict(fields)
    market, symbol, native, tid, px, sz, side, ts = TRADES[i]
    assert mono == tid  # OKX trade ids grow per instrument: the cross-node dedup id
    assert (f["market"], f["symbol"], f["native_symbol"], f["trade_id"], f["price"], f["qty"], f["side"],
            f["ts_exchange"]) == (market, symbol, native, tid, px, sz, side, ts)
    assert f["exchange"] == "okx" and f["ts_receive"] == str(RX_MS) and rx_ns == RX_NS and cls == "trade"
    assert stream == f"md:trade:okx:{market}:{symbol}"
    assert dedup == f"t:okx:{market}:{native}:{tid}"


def test_trades_all_channel_is_parsed_like_trades() -> None:
    msg = elements("trades.json")[2]
    msg["arg"]["channel"] = "trades-all"
    [f] = events(frame(msg))
    assert (f["trade_id"], f["price"], f["side"]) == ("219066264", "43568.8", "buy")


def test_trades_all_docs_frame() -> None:
    # one fill per push (no ``count``), ``source`` 0 = a normal order: the same row REST
    # history-trades returns, so live and gap-filled trades share ids and dedup keys
    [raw] = frames("trades_all.json")
    r = parse(raw)
    assert r.data and r.topic == "trades-all:BTC-USDT" and r.parse_errors == 0 and r.rejected == 0
    [(stream, dedup, cls, fields, rx_ns, mono)] = r.events
    f = fields_to_dict(fields)
    assert (stream, dedup, cls, mono, rx_ns) == ("md:trade:okx:spot:BTC-USDT", "t:okx:spot:BTC-USDT:130639474",
                                                 "trade", "130639474", RX_NS)
    assert (f["exchange"], f["market"], f["symbol"], f["native_symbol"], f["trade_id"], f["price"], f["qty"],
            f["side"], f["ts_exchange"], f["ts_receive"]) == (
        "okx", "spot", "BTC-USDT", "BTC-USDT", "130639474", "42219.9", "0.12060306", "buy", "1630048897897",
        str(RX_MS))
    assert f.get("source", "") == ""   # a live trade (``rest`` marks gap-filled ones)
    # the same fill from REST history-trades: identical dedup key, so the publisher keeps one
    rest = okx_md.parse_rest_trades({"code": "0", "msg": "", "data": [elements("trades_all.json")[0]["data"][0]]},
                                    "BTC-USDT", SYMBOLS, RX_NS, RX_MS)
    assert [w[1] for w in rest.events] == [dedup] and fields_to_dict(rest.events[0][3])["source"] == "rest"
    # several fills in one push (allowed by the envelope) are each a trade
    two = elements("trades_all.json")[0]
    two["data"].append({**two["data"][0], "tradeId": "130639475", "side": "sell"})
    assert [e["trade_id"] for e in events(frame(two))] == ["130639474", "130639475"]


def test_trade_subscription_is_trades_all_on_the_business_feed() -> None:
    from shared.settings import ExchangeSettings

    cfg = ExchangeSettings(market_data=True, symbols=["BTC-USDT"], markets=["spot", "perp"],
                           channels=["trade", "book", "ticker", "kline"], kline_intervals=["1m"])
    (public, pub_streams), (business, biz_streams) = okx_md.market_data_feeds(cfg)
    assert (public.business, business.business) == (False, True)
    assert not [s for s in pub_streams if s.partition(":")[0] in ("trades", "trades-all")]
    assert biz_streams == ["trades-all:BTC-USDT", "candle1m:BTC-USDT", "trades-all:BTC-USDT-SWAP",
                           "candle1m:BTC-USDT-SWAP"]
    assert business.ws_url(biz_streams) == "wss://ws.okx.com:8443/ws/v5/business"
    assert public.ws_url(pub_streams) == "wss://ws.okx.com:8443/ws/v5/public"
    [sub] = [orjson.loads(m) for m in business.subscribe_messages(biz_streams[:1])]
    assert sub == {"op": "subscribe", "args": [{"channel": "trades-all", "instId": "BTC-USDT"}]}
    unsub, resub = (orjson.loads(m) for m in business.resubscribe_messages(["trades-all:BTC-USDT-SWAP"]))
    assert unsub == {"op": "unsubscribe", "args": [{"channel": "trades-all", "instId": "BTC-USDT-SWAP"}]}
    assert resub["op"] == "subscribe" and resub["args"] == unsub["args"]
    # the business connection keeps alive like the public one (cut after 30 s idle: text ping)
    assert business.keepalive == public.keepalive and business.keepalive.text_ping == "ping"
    assert business.keepalive.interval < 30
    assert (business.max_send_rate, business.connect_rate, business.resubscribe_rate) == (
        public.max_send_rate, public.connect_rate, public.resubscribe_rate)
    # trades are event-driven: no per-topic freshness watch; the frame's topic names the stream
    assert not business.watch_topic("trades-all:BTC-USDT") and business.watch_topic("candle1m:BTC-USDT")
    assert business.book_stream("spot", "BTC-USDT") is None
    [raw] = frames("trades_all.json")
    assert business.parse_ws_message(raw, RX_NS, RX_MS).topic == biz_streams[0]
    assert okx_md.trade_stream_native(biz_streams[2]) == "BTC-USDT-SWAP"


# ---- books ----

def _okx_checksum(bids: dict[str, str], asks: dict[str, str]) -> int:
    """Independent naive implementation of SOURCES.md section 3."""
    b = sorted(bids.items(), key=lambda kv: Decimal(kv[0]), reverse=True)[:25]
    a = sorted(asks.items(), key=lambda kv: Decimal(kv[0]))[:25]
    parts: list[str] = []
    for i in range(max(len(b), len(a))):
        if i < len(b):
            parts += b[i]
        if i < len(a):
            parts += a[i]
    crc = zlib.crc32(":".join(parts).encode())
    return crc - (1 << 32) if crc >= 1 << 31 else crc


def test_books_chain_levels_exact_and_checksums_match() -> None:
    raws = frames("books.json")
    bids: dict[str, str] = {}
    asks: dict[str, str] = {}
    expected = [(True, 1652459225393, 1054815633), (False, 1652459225464, -914047754),
                (False, 1652459225569, 1488647618), (False, 1652459225683, -1316308284)]
    for raw, (snapshot, ts, checksum) in zip(raws[:4], expected):
        r = parse(raw)
        assert r.data and r.events == [] and r.parse_errors == 0
        [book] = r.books
        assert (book.exchange, book.market, book.symbol, book.native_symbol) == \
            ("okx", "future", "BTC-USD", "BTC-USD-220527")
        assert (book.snapshot, book.ts_exchange, book.checksum, book.ts_receive) == (snapshot, ts, checksum, RX_MS)
        # 2022 capture: no seqId / prevSeqId yet
        assert book.seq == 0 and book.prev_seq == (-1 if snapshot else None)
        if snapshot:
            bids.clear()
            asks.clear()
        for side, levels in ((bids, book.bids), (asks, book.asks)):
            for px, sz in levels:
                if Decimal(sz) == 0:
                    side.pop(px, None)
                else:
                    side[px] = sz
        # strings kept exactly as sent: the recorded checksum holds after every message
        assert _okx_checksum(bids, asks) == checksum
    first = parse(raws[0]).books[0]
    assert (len(first.bids), len(first.asks)) == (72, 64)
    assert first.asks[0] == ("30238.8", "2") and first.asks[13] == ("30316", "81")
    update = parse(raws[1]).books[0]
    assert update.asks == [("30249.4", "0"), ("30261", "4"), ("30310.3", "19")]
    assert update.bids == [("30182.6", "452")]


def test_books_current_snapshot_with_seq_ids() -> None:
    [book] = parse(frames("books.json")[4]).books
    assert (book.snapshot, book.seq, book.prev_seq, book.checksum) == (True, 123456, -1, -855196043)
    assert (book.market, book.symbol, book.ts_exchange) == ("spot", "BTC-USDT", 1597026383085)
    assert book.bids[0] == ("8476.97", "256") and book.asks[-1] == ("8506.96", "100")
    assert len(book.bids) == len(book.asks) == 8


def test_books_update_seq_keepalive_and_reset_values_pass_through() -> None:
    base = {"arg": {"channel": "books", "instId": "BTC-USDT"}, "action": "update"}
    upd = {**base, "data": [{"asks": [["8476.98", "0", "0", "0"]], "bids": [], "ts": "1597026383086",
                             "checksum": 0, "prevSeqId": 123456, "seqId": 123457}]}
    [book] = parse(frame(upd)).books
    assert (book.snapshot, book.seq, book.prev_seq, book.checksum) == (False, 123457, 123456, 0)
    assert book.asks == [("8476.98", "0")] and book.bids == []
    keepalive = {**base, "data": [{"asks": [], "bids": [], "ts": "1", "checksum": 0, "prevSeqId": 7, "seqId": 7}]}
    [book] = parse(frame(keepalive)).books
    assert (book.seq, book.prev_seq, book.bids, book.asks) == (7, 7, [], [])
    reset = {**base, "data": [{"asks": [], "bids": [], "ts": "1", "checksum": 0, "prevSeqId": 15, "seqId": 3}]}
    [book] = parse(frame(reset)).books
    assert (book.seq, book.prev_seq) == (3, 15)  # the book engine treats seqId < prevSeqId as a reset


@pytest.mark.parametrize("i,market,symbol,ts,bid0,ask0", [
    (0, "spot", "BTC-USDT", 1652671418459, ("30221.7", "0.30608367"), ("30221.8", "0.00439")),
    (1, "perp", "BTC-USDT", 1653997254735, ("31806.5", "54"), ("31806.6", "159")),
])
def test_books5_is_a_snapshot_every_push(i, market, symbol, ts, bid0, ask0) -> None:
    [book] = parse(frames("books5.json")[i]).books
    assert (book.snapshot, book.seq, book.prev_seq, book.checksum) == (True, 0, -1, 0)
    assert (book.market, book.symbol, book.ts_exchange) == (market, symbol, ts)
    assert len(book.bids) == len(book.asks) == 5
    assert (book.bids[0], book.asks[0]) == (bid0, ask0)


def test_books5_current_shape_with_seq_id() -> None:
    msg = {"arg": {"channel": "books5", "instId": "BCH-USDT-SWAP"}, "data": [{
        "asks": [["111.06", "55154", "0", "2"]], "bids": [["111.05", "57745", "0", "2"]],
        "instId": "BCH-USDT-SWAP", "ts": "1670324386802", "seqId": 363996337}]}
    [book] = parse(frame(msg)).books
    assert (book.snapshot, book.seq, book.prev_seq, book.symbol) == (True, 363996337, -1, "BCH-USDT")


# ---- bbo ----

def test_bbo_tbt() -> None:
    f0, = events(frames("bbo_tbt.json")[0])
    assert (f0["market"], f0["symbol"], f0["bid_price"], f0["bid_qty"], f0["ask_price"], f0["ask_qty"],
            f0["update_id"], f0["ts_exchange"]) == \
        ("spot", "BTC-USDT", "31774.6", "0.3392211", "31774.7", "0.14368878", "0", "1654032991947")
    r = parse(frames("bbo_tbt.json")[1])
    assert r.events[0][0] == "md:bbo:okx:perp:BTC-USDT"
    assert r.events[0][1] == "q:okx:perp:BTC-USDT-SWAP:1656642503092"  # no seqId in 2022: exchange time
    f1 = fields_to_dict(r.events[0][3])
    assert (f1["bid_price"], f1["bid_qty"], f1["ask_price"], f1["ask_qty"]) == ("20386.7", "50", "20386.8", "7")
    # current frames carry seqId -> the update id
    msg = {"arg": {"channel": "bbo-tbt", "instId": "BCH-USDT-SWAP"}, "data": [{
        "asks": [["111.06", "55154", "0", "2"]], "bids": [], "ts": "1670324386802", "seqId": 363996337}]}
    r = parse(frame(msg))
    f = fields_to_dict(r.events[0][3])
    assert (f["update_id"], f["bid_price"], f["bid_qty"], f["ask_price"]) == ("363996337", "", "", "111.06")
    assert r.events[0][1] == "q:okx:perp:BCH-USDT-SWAP:u363996337"


# ---- tickers ----

@pytest.mark.parametrize("i,expected", [
    (0, dict(market="future", symbol="BTC-USD", last="30218.8", open="29571.4", high="31003.3", low="27930.8",
             volume="779573", quote_volume="", bid_price="30210.4", bid_qty="4", ask_price="30220.1",
             ask_qty="3", ts_exchange="1652459223003")),
    (1, dict(market="perp", symbol="UNI-USD", last="5.123", open="4.799", high="5.458", low="4.537",
             volume="289425", quote_volume="", bid_price="5.134", bid_qty="96", ask_price="5.142",
             ask_qty="25", ts_exchange="1652459223143")),
    (2, dict(market="perp", symbol="BTC-USDT", last="29963", open="31589.3", high="31907.2", low="29302",
             volume="10854053", quote_volume="", bid_price="29959.9", bid_qty="431", ask_price="29960",
             ask_qty="12", ts_exchange="1654166233877")),
])
def test_tickers(i: int, expected: dict) -> None:
    [f] = events(frames("tickers.json")[i])
    assert {k: f[k] for k in expected} == expected
    # fields OKX's ticker does not carry stay empty
    assert (f["change_pct"], f["mark_price"], f["funding_rate"], f["next_funding_time"], f["seq"]) == \
        ("", "", "", "0", "0")


def test_spot_ticker_quote_volume_is_vol_ccy() -> None:
    msg = elements("tickers.json")[2]
    msg["arg"]["instId"] = msg["data"][0]["instId"] = "BTC-USDT"
    [f] = events(frame(msg))
    assert (f["market"], f["volume"], f["quote_volume"]) == ("spot", "10854053", "108540.53")


# ---- funding / open interest / mark price ----

def test_funding_rate_every_field_optional() -> None:
    raws = frames("funding_rate.json")
    r0 = parse(raws[0])
    f0 = fields_to_dict(r0.events[0][3])
    assert (f0["market"], f0["symbol"], f0["funding_rate"], f0["next_funding_time"], f0["ts_exchange"]) == \
        ("perp", "BTC-USDT", "0.0001534702159002", "1646323200000", "0")
    assert r0.events[0][1] is None  # no exchange time: no dedup key built on 0
    [f1] = events(raws[1])
    assert (f1["symbol"], f1["funding_rate"], f1["next_funding_time"]) == \
        ("WNCG-USDT", "0.00048105", "1640131200000")
    [f2] = events(raws[2])  # 2021: fundingRate absent
    assert (f2["symbol"], f2["funding_rate"], f2["next_funding_time"]) == ("SOS-USDT", "", "1640851200000")
    r3 = parse(raws[3])
    f3 = fields_to_dict(r3.events[0][3])
    assert (f3["funding_rate"], f3["next_funding_time"], f3["ts_exchange"]) == \
        ("0.0001", "1744590349506", "1744590349506")
    assert r3.events[0][0] == "md:funding:okx:perp:BTC-USDT"
    assert r3.events[0][1] == "f:okx:perp:BTC-USDT-SWAP:1744590349506:1744590349506"


def test_funding_rate_current_docs_shape() -> None:
    msg = {"arg": {"channel": "funding-rate", "instId": "BTC-USDT-SWAP"}, "data": [{
        "formulaType": "noRate", "fundingRate": "0.0001875391284828", "fundingTime": "1700726400000",
        "impactValue": "", "instId": "BTC-USDT-SWAP", "instType": "SWAP", "interestRate": "",
        "method": "current_period", "maxFundingRate": "0.00375", "minFundingRate": "-0.00375",
        "nextFundingRate": "", "nextFundingTime": "1700755200000", "premium": "0.0001233824646391",
        "settFundingRate": "0.0001699799259033", "settState": "settled", "ts": "1700724675402"}]}
    [f] = events(frame(msg))
    assert (f["funding_rate"], f["next_funding_time"], f["ts_exchange"]) == \
        ("0.0001875391284828", "1700726400000", "1700724675402")


def test_open_interest() -> None:
    raws = frames("open_interest.json")
    r = parse(raws[0])
    assert r.events[0][0] == "md:open_interest:okx:perp:WNCG-USDT"
    assert r.events[0][1] == "oi:okx:perp:WNCG-USDT-SWAP:1640131258756"
    f = fields_to_dict(r.events[0][3])
    assert (f["open_interest"], f["open_interest_ccy"], f["open_interest_value"], f["ts_exchange"]) == \
        ("644195", "644195", "", "1640131258756")
    [f] = events(raws[1])
    assert (f["market"], f["symbol"], f["open_interest"], f["open_interest_ccy"]) == \
        ("future", "FIL-USDT", "236870", "23687")
    current = {"arg": {"channel": "open-interest", "instId": "BTC-USDT-SWAP"}, "data": [{
        "instId": "BTC-USDT-SWAP", "instType": "SWAP", "oi": "2216113.01000000309",
        "oiCcy": "22161.1301000000309", "oiUsd": "1939251795.54769270396321", "ts": "1743041250440"}]}
    [f] = events(frame(current))
    assert (f["open_interest"], f["open_interest_ccy"], f["open_interest_value"]) == \
        ("2216113.01000000309", "22161.1301000000309", "1939251795.54769270396321")


def test_mark_price_is_data_without_events() -> None:
    for raw in frames("mark_price.json"):
        r = parse(raw)
        assert r.data and r.events == [] and r.books == [] and r.parse_errors == 0 and r.rejected == 0


# ---- liquidations ----

def test_liquidation_orders() -> None:
    r = parse(frames("liquidation_orders.json")[0])
    assert r.data and r.rejected == 0 and len(r.events) == 1
    stream, dedup, _, fields, _ = r.events[0]
    f = fields_to_dict(fields)
    assert stream == "md:liquidation:okx:future:XRP-USD"
    assert (f["native_symbol"], f["side"], f["position_side"], f["price"], f["qty"], f["sampled"],
            f["ts_exchange"]) == ("XRP-USD-230929", "buy", "short", "0.55205", "39", "1", "1680173247614")
    assert dedup == "lq:okx:future:XRP-USD-230929:1680173247614:buy:0.55205:39"


def test_liquidation_orders_net_mode_unknown_instruments_and_bad_details() -> None:
    msg = {"arg": {"channel": "liquidation-orders", "instType": "SWAP"}, "data": [
        {"details": [{"bkLoss": "0", "bkPx": "0.007831", "ccy": "", "posSide": "net", "side": "sell", "sz": "13",
                      "ts": "1692266434010"},
                     {"bkPx": "0.0079", "posSide": "net", "side": "buy", "sz": "2", "ts": "1692266434011"},
                     {"bkPx": "1e5", "posSide": "long", "side": "sell", "sz": "2", "ts": "1"}],
         "instFamily": "BCH-USDT", "instId": "BCH-USDT-SWAP", "instType": "SWAP", "uly": "BCH-USDT"},
        {"details": [{"bkPx": "1", "posSide": "long", "side": "sell", "sz": "1", "ts": "1"}],
         "instId": "IOST-USDT-SWAP"},
        {"details": [], "instId": "*"},
        "garbage",
    ]}
    r = parse(frame(msg))
    got = [fields_to_dict(w[3]) for w in r.events]
    assert [(f["side"], f["position_side"], f["price"], f["qty"]) for f in got] == \
        [("sell", "long", "0.007831", "13"), ("buy", "short", "0.0079", "2")]
    assert r.rejected == 2 and r.parse_errors == 2 and r.data


# ---- candles (business) ----

def test_candles() -> None:
    # docs push example (candle1D = UTC+8 day bars): still open
    msg = {"arg": {"channel": "candle1D", "instId": "BTC-USDT"}, "data": [[
        "1629993600000", "42500", "48199.9", "41006.1", "41006.1", "3587.41204591", "166741046.22583129",
        "166741046.22583129", "0"]]}
    r = parse(frame(msg))
    [wire] = r.events
    f = fields_to_dict(wire[3])
    assert wire[0] == "md:kline_1d_utc8:okx:spot:BTC-USDT" and wire[1] is None  # open: no natural id
    assert (f["interval"], f["open_time"], f["close_time"], f["open"], f["high"], f["low"], f["close"],
            f["volume"], f["quote_volume"], f["closed"], f["ts_exchange"]) == \
        ("1d_utc8", "1629993600000", str(1629993600000 + 86_400_000 - 1), "42500", "48199.9", "41006.1",
         "41006.1", "3587.41204591", "166741046.22583129", "0", "0")
    closed = {"arg": {"channel": "candle1m", "instId": "BTC-USDT-SWAP"}, "data": [[
        "1700000040000", "1", "2", "0.5", "1.5", "10", "0.1", "15", "1"]]}
    [wire] = parse(frame(closed)).events
    f = fields_to_dict(wire[3])
    assert wire[0] == "md:kline_1m:okx:perp:BTC-USDT"
    assert wire[1] == "k:okx:perp:BTC-USDT-SWAP:1m:1700000040000:c"
    assert (f["closed"], f["close_time"], f["quote_volume"]) == ("1", "1700000099999", "15")


def test_candle_month_close_time_and_bars() -> None:
    # 2024-02-01T00:00Z: a UTC month bar ends at 2024-03-01T00:00Z - 1 ms
    msg = {"arg": {"channel": "candle1Mutc", "instId": "BTC-USDT"}, "data": [[
        "1706745600000", "1", "1", "1", "1", "1", "1", "1", "1"]]}
    [f] = events(frame(msg))
    assert (f["interval"], f["close_time"]) == ("1M", str(1709251200000 - 1))
    assert okx_md.candle_channel("1m") == "candle1m"
    assert okx_md.candle_channel("1h") == "candle1H"
    assert okx_md.candle_channel("1d") == "candle1Dutc"
    assert okx_md.candle_channel("1d_utc8") == "candle1D"
    assert okx_md.candle_channel("1M") == "candle1Mutc"
    with pytest.raises(ValueError):
        okx_md.candle_channel("7m")
    bad = {"arg": {"channel": "candle7m", "instId": "BTC-USDT"}, "data": [["1", "1", "1", "1", "1", "1"]]}
    assert parse(frame(bad)).parse_errors == 1


# ---- control frames ----

def test_ping_pong() -> None:
    ping, pong = elements("ping_pong.json")
    assert okx_md.PING == ping
    for raw in (pong, pong.encode()):
        r = parse(raw)
        assert not r.data and r.error is None and r.parse_errors == 0 and r.events == []


def test_subscribe_builder_acks_and_errors() -> None:
    sub, ack1, ack2, err = frames("subscribe.json")
    args = orjson.loads(sub)["args"]
    [msg] = okx_md.subscribe_messages(args)
    assert orjson.loads(msg) == orjson.loads(sub)
    assert okx_md.channel_args("tickers", ["BTC-USD-220527", "UNI-USD-SWAP", "BTC-USDT"]) == args
    for raw in (ack1, ack2):
        r = parse(raw)
        assert not r.data and r.error is None and r.parse_errors == 0 and not r.rotate
    r = parse(err)
    assert r.error == "okx error 60012: Invalid request" and not r.data
    notice = frame({"event": "notice", "code": "64008", "msg": "The connection will soon be closed for a service "
                    "upgrade. Please reconnect.", "connId": "a4d3ae55"})
    assert parse(notice).rotate
    other = parse(frame({"event": "notice", "code": "99999", "msg": "x"}))
    assert not other.rotate and other.error is None
    assert parse(frame({"event": "channel-conn-count", "channel": "books", "connCount": "2"})).error is None
    assert "64003" in parse(frame({"event": "error", "code": "64003", "msg": "VIP only"})).error


def test_subscribe_messages_respect_64kb_args() -> None:
    args = okx_md.channel_args("books", [f"COIN{i:05d}-USDT-SWAP" for i in range(3000)])
    msgs = okx_md.subscribe_messages(args)
    assert len(msgs) > 1
    back = []
    for m in msgs:
        decoded = orjson.loads(m)
        assert decoded["op"] == "subscribe"
        assert len(orjson.dumps(decoded["args"])) <= okx_md.MAX_ARGS_BYTES
        back += decoded["args"]
    assert back == args
    assert orjson.loads(okx_md.subscribe_messages(args[:1], op="unsubscribe")[0])["op"] == "unsubscribe"
    assert okx_md.liquidation_args(["SWAP", "FUTURES"]) == [
        {"channel": "liquidation-orders", "instType": "SWAP"},
        {"channel": "liquidation-orders", "instType": "FUTURES"}]


def test_urls() -> None:
    assert okx_md.ws_url("books") == "wss://ws.okx.com:8443/ws/v5/public"
    assert okx_md.ws_url("liquidation-orders") == okx_md.PUBLIC_WS_URL
    for channel in ("candle1m", "candle1Dutc", "trades-all", "mark-price-candle1m", "index-candle1H"):
        assert okx_md.ws_url(channel) == "wss://ws.okx.com:8443/ws/v5/business"
    assert okx_md.books_url("BTC-USDT") == "https://www.okx.com/api/v5/market/books?instId=BTC-USDT&sz=400"
    assert okx_md.books_url("BTC-USDT", 5000).endswith("&sz=400")
    assert okx_md.long_short_account_ratio_url("BTC", "1H") == \
        "https://www.okx.com/api/v5/rubik/stat/contracts/long-short-account-ratio?ccy=BTC&period=1H"
    with pytest.raises(ValueError):
        okx_md.long_short_account_ratio_url("BTC", "4H")


# ---- REST ----

BOOKS_BODY = {"code": "0", "msg": "", "data": [{
    "asks": [["41006.8", "0.60038921", "0", "1"]], "bids": [["41006.3", "0.30178218", "0", "2"]],
    "ts": "1629966436396", "seqId": 3235851742}]}


def test_rest_books_snapshot() -> None:
    for body in (BOOKS_BODY, orjson.dumps(BOOKS_BODY), orjson.dumps(BOOKS_BODY).decode()):
        r = okx_md.parse_rest_books(body, "BTC-USDT", SYMBOLS, RX_MS)
        [book] = r.books
        assert (book.snapshot, book.seq, book.prev_seq, book.checksum) == (True, 3235851742, -1, 0)
        assert (book.bids, book.asks) == ([("41006.3", "0.30178218")], [("41006.8", "0.60038921")])
        assert (book.symbol, book.market, book.ts_exchange, book.ts_receive) == \
            ("BTC-USDT", "spot", 1629966436396, RX_MS)
    err = okx_md.parse_rest_books({"code": "50011", "msg": "Too Many Requests", "data": []}, "BTC-USDT",
                                  SYMBOLS, RX_MS)
    assert err.error == "okx error 50011: Too Many Requests" and err.books == []
    assert okx_md.parse_rest_books(BOOKS_BODY, "DOGE-USDT", SYMBOLS, RX_MS).rejected == 1
    no_seq = {"code": "0", "data": [{**BOOKS_BODY["data"][0], "seqId": "3235851742"}]}
    for bad in (b"<html>", {"code": "0", "data": []}, no_seq, [], None):
        r = okx_md.parse_rest_books(bad, "BTC-USDT", SYMBOLS, RX_MS)
        assert r.parse_errors == 1 and r.books == []


def test_rest_long_short_account_ratio() -> None:
    [body] = elements("rest_long_short_account_ratio.json")
    r = okx_md.parse_rest_long_short_account_ratio(body, "BTC-USDT-SWAP", SYMBOLS, "1H", RX_NS, RX_MS)
    assert r.parse_errors == 0 and len(r.events) == 2
    got = [(w[0], w[1], fields_to_dict(w[3])) for w in r.events]
    # oldest first
    assert [(f["ts_exchange"], f["ratio"], f["kind"], f["period"]) for _, _, f in got] == [
        ("1701414000000", "1.26", "global_account", "1h"), ("1701417600000", "1.25", "global_account", "1h")]
    assert got[0][0] == "md:long_short_global_account:okx:perp:BTC-USDT"
    assert got[0][1] == "ls:global_account:okx:perp:BTC-USDT-SWAP:1h:1701414000000"
    assert (got[0][2]["long_pct"], got[0][2]["short_pct"]) == ("", "")
    bad_rows = {"code": "0", "msg": "", "data": [["1701417600000", "1.25"], ["x", "1"], ["1701410400000"], "z"]}
    r = okx_md.parse_rest_long_short_account_ratio(bad_rows, "BTC-USDT-SWAP", SYMBOLS, "5m", RX_NS, RX_MS)
    assert len(r.events) == 1 and r.parse_errors == 3
    r = okx_md.parse_rest_long_short_account_ratio({"code": "50011", "msg": "busy"}, "BTC-USDT-SWAP", SYMBOLS,
                                                   "5m", RX_NS, RX_MS)
    assert r.error == "okx error 50011: busy"
    assert okx_md.parse_rest_long_short_account_ratio(body, "ETH-USDT-SWAP", SYMBOLS, "5m", RX_NS,
                                                      RX_MS).rejected == 1


# ---- hostile / garbage ----

TRADE = {"arg": {"channel": "trades", "instId": "BTC-USDT"},
         "data": [{"instId": "BTC-USDT", "tradeId": "1", "px": "1.5", "sz": "2", "side": "buy", "ts": "1"}]}


@pytest.mark.parametrize("inst_id", ["*", "BTC-USDT\n", "x" * 10_000, "БТЦ-USDT", "{a}", "ETH-USDT", ""])
def test_unknown_or_hostile_symbols_are_rejected(inst_id: str) -> None:
    msg = json.loads(json.dumps(TRADE))
    msg["arg"]["instId"] = msg["data"][0]["instId"] = inst_id
    for channel in ("trades-all", "trades", "books", "tickers", "funding-rate", "candle1m"):
        msg["arg"]["channel"] = channel
        r = parse(frame(msg))
        assert r.rejected == 1 and r.events == [] and r.books == [] and r.data


@pytest.mark.parametrize("raw", [
    "", "pong!", "not json", "[1,2]", "null", "42", '"text"', "{", b"\xff\xfe", '{"arg":{}}',
    '{"arg":{"channel":"trades"},"data":{}}', '{"arg":{"channel":5},"data":[]}', '{"event":5}',
])
def test_garbage_frames(raw: str | bytes) -> None:
    r = parse(raw)
    assert r.parse_errors == 1 and r.events == [] and r.error is None and not r.data


def test_non_text_input_is_garbage() -> None:
    assert parse(12345).parse_errors == 1  # type: ignore[arg-type]


@pytest.mark.parametrize("field,value", [
    ("px", "1e5"), ("px", 1.5), ("px", ""), ("px", "٣"), ("sz", None), ("side", "BUY"), ("ts", 1.0),
    ("ts", "-1"), ("ts", True), ("tradeId", "a b"), ("tradeId", 7), ("tradeId", "x" * 100),
])
def test_malformed_trade_fields(field: str, value: object) -> None:
    msg = json.loads(json.dumps(TRADE))
    msg["data"][0][field] = value
    r = parse(frame(msg))
    assert r.parse_errors == 1 and r.events == [] and r.data


def test_malformed_book_levels_refuse_the_message() -> None:
    good = {"arg": {"channel": "books", "instId": "BTC-USDT"}, "action": "update",
            "data": [{"asks": [["1", "2", "0", "1"]], "bids": [], "ts": "1", "checksum": 0,
                      "prevSeqId": 1, "seqId": 2}]}
    assert len(parse(frame(good)).books) == 1
    for mutate in (
        lambda d: d["data"][0].__setitem__("asks", [["1", "2"], ["x", "1"]]),
        lambda d: d["data"][0].__setitem__("asks", [["1"]]),
        lambda d: d["data"][0].__setitem__("bids", "nope"),
        lambda d: d["data"][0].__setitem__("seqId", "2"),
        lambda d: d["data"][0].__setitem__("seqId", True),
        lambda d: d["data"][0].__setitem__("prevSeqId", 1.5),
        lambda d: d["data"][0].__setitem__("checksum", "0"),
        lambda d: d["data"][0].__setitem__("ts", "soon"),
        lambda d: d.__setitem__("action", "partial"),
        lambda d: d.__setitem__("data", ["x"]),
    ):
        msg = json.loads(json.dumps(good))
        mutate(msg)
        r = parse(frame(msg))
        assert r.parse_errors == 1 and r.books == [], msg


def test_unknown_channel_is_data_without_events() -> None:
    r = parse(frame({"arg": {"channel": "index-tickers", "instId": "BTC-USDT"}, "data": [{"idxPx": "1"}]}))
    assert r.data and r.events == [] and r.parse_errors == 0
