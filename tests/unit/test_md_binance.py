"""Binance spot + USD-M market-data parsers (workers/exchanges/binance_md.py) on every recorded
payload of tests/fixtures/ws/binance_spot and binance_usdm (see SOURCES.md sections 1-2)."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.events import fields_to_dict
from tests.conftest import FIXTURES
from workers.exchanges import binance_md as bm
from workers.exchanges.base import ParseResult

RX_NS = 123_456_789
RX_MS = 1_790_000_000_000


SPOT_DIR = FIXTURES / "ws" / "binance_spot"  # the repo's copy of ../shared/fixtures/ws
USDM_DIR = FIXTURES / "ws" / "binance_usdm"


def frames(d: Path, name: str) -> list[str]:
    """Each element of a fixture file as the exact text it was on the wire (one per line)."""
    lines = (d / name).read_text().strip().splitlines()
    assert lines[0] == "[" and lines[-1] == "]"
    return [line.rstrip().rstrip(",") for line in lines[1:-1]]


SPOT = {n: (c, "spot") for n, c in {
    "BTCUSDT": "BTC-USDT", "NKNUSDT": "NKN-USDT", "LRCBTC": "LRC-BTC", "ETHUSDT": "ETH-USDT",
    "BNBBTC": "BNB-BTC", "DOGEBNB": "DOGE-BNB", "ETHBTC": "ETH-BTC"}.items()}
PERP = {n: (c, "perp") for n, c in {
    "BTCUSDT": "BTC-USDT", "ETHUSDT": "ETH-USDT", "SUSHIUSDT": "SUSHI-USDT", "CTKUSDT": "CTK-USDT",
    "AKROUSDT": "AKRO-USDT", "ILVUSDT": "ILV-USDT"}.items()}


def spot(raw: str, **kw) -> ParseResult:
    return bm.parse_message(raw, SPOT, RX_NS, RX_MS, **kw)


def perp(raw: str, **kw) -> ParseResult:
    return bm.parse_message(raw, PERP, RX_NS, RX_MS, **kw)


def evs(r: ParseResult) -> list[dict[str, str]]:
    return [fields_to_dict(e[3]) for e in r.events]


def one(r: ParseResult) -> dict[str, str]:
    assert r.data and not r.parse_errors and not r.rejected and r.error is None, r
    [ev] = evs(r)
    assert ev["exchange"] == "binance" and ev["ts_receive"] == str(RX_MS)
    assert r.events[0][4] == RX_NS
    return ev


def book(r: ParseResult):
    assert r.data and not r.parse_errors and not r.rejected and not r.events, r
    [b] = r.books
    assert b.exchange == "binance" and b.ts_receive == RX_MS
    return b


def pick(ev: dict[str, str], *keys: str) -> tuple[str, ...]:
    return tuple(ev[k] for k in keys)


# ------------------------------------------------------------------ spot WebSocket

def test_spot_trade() -> None:
    f = frames(SPOT_DIR, "trade.json")
    got = [one(spot(x)) for x in f]
    keys = ("type", "market", "symbol", "native_symbol", "trade_id", "price", "qty", "side", "ts_exchange")
    assert [pick(e, *keys) for e in got] == [
        ("trade", "spot", "BNB-BTC", "BNBBTC", "12345", "0.001", "100", "sell", "1672515782136"),  # bare, m=true
        ("trade", "spot", "BTC-USDT", "BTCUSDT", "6720857582", "83034.29000000", "0.00062000", "sell", "1790649901913"),
        # legacy 2019 shape with b/a order ids; T (trade time) wins over E
        ("trade", "spot", "BNB-BTC", "BNBBTC", "40756030", "0.00426990", "33.82000000", "buy", "1554076800940"),
    ]
    r = spot(f[1])
    assert r.events[0][0] == "md:trade:binance:spot:BTC-USDT"
    assert r.events[0][1] == "t:binance:spot:BTCUSDT:6720857582"


def test_spot_agg_trade_is_its_own_tape_keyed_by_the_agg_id() -> None:
    f = frames(SPOT_DIR, "aggTrade.json")
    got = [one(spot(x)) for x in f]
    assert [pick(e, "type", "symbol", "trade_id", "price", "qty", "side", "ts_exchange") for e in got] == [
        ("agg_trade", "NKN-USDT", "15683430", "0.35280000", "58.00000000", "buy", "1633998523963"),
        ("agg_trade", "LRC-BTC", "9213679", "0.00000638", "177.00000000", "buy", "1633998534486"),
        ("agg_trade", "BTC-USDT", "640283266", "58942.01000000", "0.00035600", "buy", "1616176861893"),
    ]
    # stream, dedup key (its own prefix: aggregate ids are not trade ids), stream class and mono_id
    # (the aggregate id, contiguous per symbol: the stream's high-watermark applies)
    ev = spot(f[2]).events[0]
    assert ev[0] == "md:agg_trade:binance:spot:BTC-USDT"
    assert ev[1] == "at:binance:spot:BTCUSDT:640283266"
    assert (ev[2], ev[5]) == ("agg_trade", "640283266")
    # the same id on the @trade tape is another event, in another stream, with another key
    t = spot('{"e":"trade","E":1,"s":"BTCUSDT","t":640283266,"p":"1","q":"1","T":1,"m":true}').events[0]
    assert (t[0], t[1], t[2]) == ("md:trade:binance:spot:BTC-USDT", "t:binance:spot:BTCUSDT:640283266", "trade")


def test_spot_book_ticker_without_event_type() -> None:
    f = frames(SPOT_DIR, "bookTicker.json")
    got = [one(spot(x)) for x in f]
    assert [pick(e, "type", "symbol", "bid_price", "bid_qty", "ask_price", "ask_qty", "update_id", "ts_exchange")
            for e in got] == [
        ("bbo", "NKN-USDT", "0.35210000", "672.00000000", "0.35260000", "3199.00000000", "499869768", "0"),
        ("bbo", "NKN-USDT", "0.35210000", "672.00000000", "0.35250000", "1123.00000000", "499869769", "0"),
        ("bbo", "BTC-USDT", "29010.90000000", "13.94302000", "29010.91000000", "3.99953000", "19575390521", "0"),
    ]
    r = spot(f[0])
    assert r.events[0][0] == "md:bbo:binance:spot:NKN-USDT"
    assert r.events[0][1] == "q:binance:spot:NKNUSDT:u499869768"
    # bare (raw /ws/<s>@bookTicker) form: same payload without the wrapper
    bare = f[0][f[0].index('"data":') + 7:-1]
    assert one(spot(bare))["update_id"] == "499869768"


def test_spot_combined_stream() -> None:
    f = frames(SPOT_DIR, "combined_stream.json")
    b = book(spot(f[0]))
    assert (b.native_symbol, b.snapshot, b.seq, b.first_seq, b.prev_seq) == ("NKNUSDT", False, 499869752, 499869750, None)
    assert b.asks == [] and b.bids[0] == ("0.35130000", "6195.00000000")
    assert one(spot(f[1]))["type"] == "bbo"
    assert pick(one(spot(f[2])), "type", "trade_id") == ("agg_trade", "15683430")
    assert pick(one(spot(f[3])), "type", "interval", "close") == ("kline", "1m", "0.35280000")


def test_spot_depth_update_chain() -> None:
    books = [book(spot(x)) for x in frames(SPOT_DIR, "depthUpdate.json")]
    assert [(b.symbol, b.market, b.snapshot, b.first_seq, b.seq, b.prev_seq, b.ts_exchange) for b in books] == [
        ("NKN-USDT", "spot", False, 499869750, 499869752, None, 1633998512068),
        ("NKN-USDT", "spot", False, 499869753, 499869754, None, 1633998512568),
        ("NKN-USDT", "spot", False, 499869755, 499869757, None, 1633998512668),
        ("BTC-USDT", "spot", False, 11294093710, 11294093726, None, 1622363903670),
    ]
    for prev, nxt in zip(books[:2], books[1:3]):
        assert nxt.first_seq == prev.seq + 1  # spot continuity: U = previous u + 1
    assert books[1].bids == [("0.35170000", "4265.00000000")] and books[1].asks == [("0.35290000", "10968.00000000")]
    # zero quantities (level removed) are kept exactly as sent
    assert books[3].bids == [("35743.98000000", "0.00000000"), ("35743.87000000", "0.00001500")]
    assert books[3].asks == [("35743.88000000", "0.24000000"), ("35743.97000000", "0.00000000")]


def test_spot_partial_depth_symbol_from_stream_name() -> None:
    f = frames(SPOT_DIR, "depth_partial.json")
    b0 = book(spot(f[0]))
    assert (b0.symbol, b0.native_symbol, b0.snapshot, b0.seq, b0.ts_exchange) == (
        "BTC-USDT", "BTCUSDT", True, 11655824136, 0)
    assert len(b0.bids) == len(b0.asks) == 20
    assert b0.bids[0] == ("35496.06000000", "0.29859300") and b0.asks[-1] == ("35502.92000000", "0.30707600")
    b1 = book(spot(f[1]))
    assert (b1.symbol, b1.seq, b1.bids, b1.asks) == (
        "ETH-USDT", 17044571457, [("1782.00000000", "6.48300000"), ("1781.95000000", "0.03000000")],
        [("1782.01000000", "15.46080000"), ("1782.02000000", "0.00780000")])
    # raw /ws form: no symbol anywhere -> cannot be attributed unless the connection names its stream
    r = spot(f[2])
    assert r.parse_errors == 1 and not r.books
    b2 = book(spot(f[2], stream="bnbbtc@depth5@100ms"))
    assert (b2.symbol, b2.seq, b2.bids, b2.asks) == ("BNB-BTC", 160, [("0.0024", "10")], [("0.0026", "100")])
    # a stream name naming an unconfigured or hostile symbol is rejected
    assert spot(f[2], stream="xrpusdt@depth5").rejected == 1
    assert spot(f[2], stream="btcüsdt@depth5").rejected == 1
    assert spot(f[2], stream="*@depth5").rejected == 1


def test_spot_kline() -> None:
    got = [one(spot(x)) for x in frames(SPOT_DIR, "kline.json")]
    keys = ("symbol", "interval", "open_time", "close_time", "open", "high", "low", "close", "volume",
            "quote_volume", "trades", "closed", "ts_exchange")
    assert [pick(e, *keys) for e in got] == [
        ("NKN-USDT", "1m", "1633998480000", "1633998539999", "0.35270000", "0.35280000", "0.35220000",
         "0.35280000", "25877.00000000", "9116.04600000", "30", "0", "1633998523963"),
        ("LRC-BTC", "1m", "1633998480000", "1633998539999", "0.00000638", "0.00000638", "0.00000638",
         "0.00000638", "177.00000000", "0.00112926", "1", "0", "1633998534486"),
        ("BTC-USDT", "1m", "1653818760000", "1653818819999", "29038.46000000", "29038.47000000",
         "29038.46000000", "29038.47000000", "0.20926000", "6076.58918320", "31", "0", "1653818762502"),
    ]
    r = spot(frames(SPOT_DIR, "kline.json")[2])
    assert r.events[0][0] == "md:kline_1m:binance:spot:BTC-USDT"
    assert r.events[0][1] == "k:binance:spot:BTCUSDT:1m:1653818760000:1653818762502"
    closed = frames(SPOT_DIR, "kline.json")[2].replace('"x":false', '"x":true')
    r = spot(closed)
    assert one(r)["closed"] == "1" and r.events[0][1] == "k:binance:spot:BTCUSDT:1m:1653818760000:c"


def test_spot_ticker() -> None:
    got = [one(spot(x)) for x in frames(SPOT_DIR, "ticker_24hr.json")]
    keys = ("type", "symbol", "last", "open", "high", "low", "volume", "quote_volume", "change_pct",
            "bid_price", "bid_qty", "ask_price", "ask_qty", "ts_exchange", "mark_price", "funding_rate")
    assert [pick(e, *keys) for e in got] == [
        ("ticker", "ETH-USDT", "1792.84000000", "1764.61000000", "1808.98000000", "1748.94000000",
         "471703.53110000", "840180761.51358100", "1.600", "1792.83000000", "1.62740000", "1792.84000000",
         "20.29140000", "1653812650349", "", ""),
        ("ticker", "DOGE-BNB", "0.00014360", "0.00014069", "0.00014550", "0.00013851", "20014582.00000000",
         "2839.62578157", "2.068", "0.00014365", "7080.00000000", "0.00014498", "275033.00000000",
         "1569805259092", "", ""),
        # bare form, negative change
        ("ticker", "BTC-USDT", "68004.12000000", "69442.01000000", "69506.94000000", "66158.00000000",
         "25691.57255000", "1742778450.16795780", "-2.071", "68004.11000000", "0.25511000", "68004.12000000",
         "1.46494000", "1772574569035", "", ""),
    ]


def test_spot_ticker_arr_retired_but_parsed() -> None:
    [raw] = frames(SPOT_DIR, "ticker_arr.json")
    e = one(spot(raw))
    assert pick(e, "symbol", "last", "change_pct", "ts_exchange") == ("ETH-BTC", "0.06150300", "0.515", "1653812100450")
    # an all-market array: every unconfigured symbol is counted, nothing of it published
    r = bm.parse_message(raw, {}, RX_NS, RX_MS)
    assert (r.rejected, r.events, r.parse_errors, r.data) == (1, [], 0, True)


def test_spot_rest_depth_snapshot() -> None:
    f = frames(SPOT_DIR, "rest_depth_snapshot.json")
    b = book(bm.parse_depth_snapshot(f[0], "BTCUSDT", SPOT, RX_MS))
    assert (b.symbol, b.market, b.snapshot, b.seq, b.ts_exchange, len(b.bids), len(b.asks)) == (
        "BTC-USDT", "spot", True, 14527958487, 0, 10, 10)
    assert b.bids[0] == ("60650.00000000", "0.00213000") and b.asks[0] == ("60650.01000000", "0.61982000")
    b = book(bm.parse_depth_snapshot(f[1], "BTCUSDT", SPOT, RX_MS))
    assert (b.seq, b.bids[-1], b.asks[-1]) == (33933317943, ("23109.22000000", "0.00050000"), ("23224.58000000", "0.04353000"))
    b = book(bm.parse_depth_snapshot(f[2], "BNBBTC", SPOT, RX_MS))
    assert (b.seq, b.bids, b.asks) == (1027024, [("4.00000000", "431.00000000")], [("4.00000200", "12.00000000")])
    # already-parsed bodies (what the REST client hands over) work the same
    import orjson
    assert bm.parse_depth_snapshot(orjson.loads(f[2]), "BNBBTC", SPOT, RX_MS).books[0].seq == 1027024
    assert bm.parse_depth_snapshot(f[0], "XRPUSDT", SPOT, RX_MS).rejected == 1
    assert bm.parse_depth_snapshot("{", "BTCUSDT", SPOT, RX_MS).parse_errors == 1
    err = bm.parse_depth_snapshot('{"code":-1121,"msg":"Invalid symbol."}', "BTCUSDT", SPOT, RX_MS)
    assert err.error == "binance error -1121: Invalid symbol." and not err.books


def test_spot_sync_sequence_nknusdt() -> None:
    """The documented alignment holds on the real capture: frame u <= lastUpdateId is dropped,
    the next starts at lastUpdateId + 1, then U = previous u + 1."""
    f = frames(SPOT_DIR, "sync_sequence_nknusdt.json")
    w0, w2, w3 = book(spot(f[0])), book(spot(f[2])), book(spot(f[3]))
    snap = book(bm.parse_depth_snapshot(f[1], "NKNUSDT", SPOT, RX_MS))
    assert (snap.seq, len(snap.bids), len(snap.asks)) == (499869752, 609, 1000)
    assert snap.bids[0] == ("0.35210000", "672.00000000")
    assert w0.seq <= snap.seq
    assert w2.first_seq == snap.seq + 1 and (w2.first_seq, w2.seq) == (499869753, 499869754)
    assert w3.first_seq == w2.seq + 1 and w3.seq == 499869757
    # the REST body on a WS connection is not attributable
    assert spot(f[1]).parse_errors == 1


def test_spot_server_shutdown_and_control_frames() -> None:
    for raw in frames(SPOT_DIR, "server_shutdown.json"):
        r = spot(raw)
        assert r.rotate and not r.events and not r.parse_errors
    req, ack, list_req, list_reply = frames(SPOT_DIR, "subscribe.json")
    for raw in (ack, list_reply):
        r = spot(raw)
        assert (r.data, r.events, r.parse_errors, r.error) == (False, [], 0, None)
    for raw in (req, list_req):  # our own requests never come back: garbage if they did
        assert spot(raw).parse_errors == 1
    r = spot('{"code":2,"msg":"Invalid request: unknown variant `SUBSCRIB`","id":1}')
    assert r.error == "binance error 2: Invalid request: unknown variant `SUBSCRIB`" and not r.data


# ------------------------------------------------------------------ USD-M WebSocket

def test_usdm_agg_trade_2026_fields() -> None:
    got = [one(perp(x)) for x in frames(USDM_DIR, "aggTrade.json")]
    assert [pick(e, "market", "symbol", "trade_id", "price", "qty", "side", "ts_exchange") for e in got] == [
        ("perp", "BTC-USDT", "3478018549", "83434.40", "0.016", "sell", "1791391081874"),  # nq + st
        ("perp", "BTC-USDT", "3422444173", "77490.00", "0.003", "buy", "1787492322555"),   # bare
        ("perp", "BTC-USDT", "3141966230", "68005.00", "2.695", "sell", "1771263510041"),
        ("perp", "CTK-USDT", "16599292", "1.01100", "10", "buy", "1626992741421"),
    ]
    # USD-M aggregates are the perp trade tape (type, stream, class, key: trade)
    ev = perp(frames(USDM_DIR, "aggTrade.json")[0]).events[0]
    assert ev[:3] == ["md:trade:binance:perp:BTC-USDT", "t:binance:perp:BTCUSDT:3478018549", "trade"]
    assert got[0]["type"] == "trade"


def test_usdm_trade_skips_non_market() -> None:
    f = frames(USDM_DIR, "trade.json")
    assert pick(one(perp(f[0])), "trade_id", "price", "qty", "side", "ts_exchange") == (
        "7947325360", "63113.20", "0.001", "buy", "1785685177439")
    assert pick(one(perp(f[1])), "trade_id", "side") == ("7297376207", "sell")
    r = perp(f[2])  # X = INSURANCE_FUND: skipped, neither an error nor a rejection
    assert (r.data, r.events, r.parse_errors, r.rejected) == (True, [], 0, 0)


def test_usdm_book_ticker() -> None:
    got = [one(perp(x)) for x in frames(USDM_DIR, "bookTicker.json")]
    assert [pick(e, "symbol", "bid_price", "bid_qty", "ask_price", "ask_qty", "update_id", "ts_exchange")
            for e in got] == [
        ("BTC-USDT", "68005.00", "2.394", "68005.10", "0.857", "9924360161244", "1771263510337"),
        ("SUSHI-USDT", "7.6110", "2", "7.6120", "297", "600859600576", "1626992741012"),
        ("SUSHI-USDT", "7.6110", "6", "7.6120", "297", "600859603936", "1626992741163"),
    ]


def test_usdm_depth_update_pu_chain() -> None:
    books = [book(perp(x)) for x in frames(USDM_DIR, "depthUpdate.json")]
    assert [(b.symbol, b.market, b.snapshot, b.first_seq, b.seq, b.prev_seq, b.ts_exchange) for b in books] == [
        ("SUSHI-USDT", "perp", False, 600859599090, 600859600917, 600859598061, 1626992741024),
        ("SUSHI-USDT", "perp", False, 600859601193, 600859602861, 600859600917, 1626992741123),
        ("SUSHI-USDT", "perp", False, 600859603343, 600859604824, 600859602861, 1626992741208),
        ("BTC-USDT", "perp", False, 475776377463, 475776380184, 475776377452, 1622371244687),
    ]
    for prev, nxt in zip(books[:2], books[1:3]):
        assert nxt.prev_seq == prev.seq and nxt.first_seq != prev.seq + 1  # pu, not U, chains
    assert books[0].bids == [("7.5040", "813"), ("7.6090", "0"), ("7.6110", "2")]
    assert books[0].asks == [("7.6150", "1563"), ("7.6220", "3284")]
    # a futures diff without pu cannot be chained
    no_pu = frames(USDM_DIR, "depthUpdate.json")[0].replace('"pu":600859598061,', "")
    assert perp(no_pu).parse_errors == 1


def test_usdm_partial_depth_is_a_snapshot() -> None:
    f = frames(USDM_DIR, "depth_partial.json")
    b = book(perp(f[0]))
    assert (b.symbol, b.snapshot, b.first_seq, b.seq, b.prev_seq, b.ts_exchange) == (
        "BTC-USDT", True, 9924360134447, 9924360146998, 9924360134267, 1771263510139)
    assert b.bids == [("68005.00", "2.214"), ("68004.90", "0.042")]
    b = book(perp(f[1]))
    assert (b.symbol, b.snapshot, b.seq, len(b.bids), b.asks[0]) == ("ETH-USDT", True, 1437010882721, 3, ("2886.72", "77.215"))
    # COIN-M sample: symbol not on a USD-M map -> rejected; with it, pu=-1 first frame
    assert perp(f[2]).rejected == 1
    coin = bm.parse_message(f[2], {"RUNEUSD_PERP": ("RUNE-USD", "perp")}, RX_NS, RX_MS)
    b = book(coin)
    assert (b.symbol, b.snapshot, b.seq, b.prev_seq, b.bids, b.asks) == (
        "RUNE-USD", True, 395028983849, -1, [], [("8.4400", "2")])


def test_usdm_mark_price_funding() -> None:
    f = frames(USDM_DIR, "markPriceUpdate.json")
    got = [one(perp(x)) for x in f[:3]]
    keys = ("type", "symbol", "funding_rate", "next_funding_time", "mark_price", "index_price", "ts_exchange")
    assert [pick(e, *keys) for e in got] == [
        ("funding", "BTC-USDT", "0.00010000", "1787500800000", "77488.24528925", "77485.96456522", "1787492323000"),
        ("funding", "BTC-USDT", "-0.00004435", "1771286400000", "68005.80802899", "68035.14043478", "1771263510000"),
        ("funding", "BTC-USDT", "0.00058455", "1617321600000", "58940.14924532", "58857.26693664", "1617308820003"),
    ]
    r = perp(f[3])  # !markPrice@arr: data is an array
    assert (r.parse_errors, r.rejected, r.data) == (0, 0, True)
    assert [pick(e, *keys) for e in evs(r)] == [
        ("funding", "BTC-USDT", "0.00058959", "1617321600000", "59022.53514719", "58936.68384000", "1617309024002"),
        ("funding", "ETH-USDT", "0.00059142", "1617321600000", "1981.15704420", "1978.08197502", "1617309024002"),
    ]
    r = bm.parse_message(f[3], {"ETHUSDT": ("ETH-USDT", "perp")}, RX_NS, RX_MS)
    assert r.rejected == 1 and [e["symbol"] for e in evs(r)] == ["ETH-USDT"]
    assert perp(f[0]).events[0][1] == "f:binance:perp:BTCUSDT:1787500800000:1787492323000"


def test_usdm_force_order_liquidation() -> None:
    got = [one(perp(x)) for x in frames(USDM_DIR, "forceOrder.json")]
    keys = ("type", "symbol", "side", "position_side", "price", "qty", "sampled", "ts_exchange")
    assert [pick(e, *keys) for e in got] == [
        ("liquidation", "ILV-USDT", "sell", "long", "3.80300", "116.5", "1", "1791391082119"),  # ps/st inside o
        ("liquidation", "BTC-USDT", "buy", "short", "4793.91", "0.014", "1", "1584059031421"),
        ("liquidation", "BTC-USDT", "sell", "long", "9910", "0.014", "1", "1568014460893"),
        ("liquidation", "BTC-USDT", "sell", "long", "38886.54", "0.288", "1", "1650898329196"),
    ]


def test_usdm_kline_month_interval() -> None:
    f = frames(USDM_DIR, "kline.json")
    got = [one(perp(x)) for x in f]
    assert [pick(e, "symbol", "interval", "open", "close", "volume", "trades", "closed") for e in got] == [
        ("CTK-USDT", "1m", "1.01000", "1.01100", "3917", "48", "0"),
        ("AKRO-USDT", "1m", "0.01731", "0.01731", "156058", "21", "0"),
        ("BTC-USDT", "1M", "37614.40", "29075.50", "13431981.671", "129025447", "0"),
    ]
    assert perp(f[2]).events[0][0] == "md:kline_1M:binance:perp:BTC-USDT"  # month != minute


def test_usdm_ticker_has_no_bid_ask() -> None:
    got = [one(perp(x)) for x in frames(USDM_DIR, "ticker_24hr.json")]
    keys = ("market", "symbol", "last", "open", "high", "low", "volume", "quote_volume", "change_pct",
            "bid_price", "ask_price", "ts_exchange")
    assert [pick(e, *keys) for e in got] == [
        ("perp", "BTC-USDT", "77490.00", "77134.50", "77771.60", "75588.00", "115619.606", "8875431314.20",
         "0.461", "", "", "1787492324172"),
        ("perp", "ETH-USDT", "1782.02", "1757.33", "1809.33", "1750.45", "1678290.411", "2990736920.72",
         "1.405", "", "", "1653815205866"),
    ]


# ------------------------------------------------------------------ USD-M REST

def test_usdm_rest_depth() -> None:
    f = frames(USDM_DIR, "rest_depth.json")
    b = book(bm.parse_depth_snapshot(f[0], "BTCUSDT", PERP, RX_MS))
    assert (b.market, b.snapshot, b.seq, b.ts_exchange, b.bids[0], b.asks[-1]) == (
        "perp", True, 1570255790655, 1654232606695, ("30430.80", "0.482"), ("30431.30", "0.361"))
    b = book(bm.parse_depth_snapshot(f[1], "BTCUSDT", PERP, RX_MS))
    assert (b.seq, b.ts_exchange, b.bids) == (1027024, 1589436922959, [("4.00000000", "431.00000000")])


def test_usdm_sync_sequence_sushiusdt() -> None:
    """Futures alignment: drop u < lastUpdateId; first applied has U <= lastUpdateId <= u; then pu chains."""
    f = frames(USDM_DIR, "sync_sequence_sushiusdt.json")
    w0, w2, w3 = book(perp(f[0])), book(perp(f[2])), book(perp(f[3]))
    snap = book(bm.parse_depth_snapshot(f[1], "SUSHIUSDT", PERP, RX_MS))
    assert (snap.seq, snap.ts_exchange, snap.bids[0]) == (600859605926, 1626992741261, ("7.6110", "6"))
    assert w0.seq < snap.seq
    assert w2.first_seq <= snap.seq <= w2.seq and w2.seq == 600859607423
    assert w3.prev_seq == w2.seq and w3.seq == 600859609417


def test_usdm_rest_open_interest() -> None:
    got = [one(bm.parse_open_interest(x, PERP, RX_NS, RX_MS)) for x in frames(USDM_DIR, "rest_open_interest.json")]
    assert [pick(e, "type", "symbol", "open_interest", "open_interest_value", "ts_exchange") for e in got] == [
        ("open_interest", "BTC-USDT", "84617.188", "", "1654336844754"),
        ("open_interest", "BTC-USDT", "10659.509", "", "1589437530011"),  # other key order
    ]
    r = bm.parse_open_interest('{"symbol":"XRPUSDT","openInterest":"1","time":1}', PERP, RX_NS, RX_MS)
    assert r.rejected == 1 and not r.events
    assert bm.parse_open_interest('{"symbol":"BTCUSDT","openInterest":1.5,"time":1}', PERP, RX_NS, RX_MS).parse_errors == 1


@pytest.mark.parametrize("name,kind,expected", [
    ("rest_top_long_short_position_ratio.json", "top_position", [
        [("1.4342", "0.5891", "0.4108", "1583139600000"), ("1.4337", "0.3583", "0.6417", "1583139900000")],
        [("1.10", "0.52", "0.48", "1730000000000")]]),  # integer timestamp
    ("rest_global_long_short_account_ratio.json", "global_account", [
        [("0.1960", "0.6622", "0.3378", "1583139600000"), ("1.9559", "0.6617", "0.3382", "1583139900000")],
        [("1.8105", "0.6442", "0.3558", "1727171700000")]]),
])
def test_usdm_rest_long_short(name: str, kind: str, expected: list) -> None:
    for raw, want in zip(frames(USDM_DIR, name), expected, strict=True):
        r = bm.parse_long_short_ratio(raw, kind, "5m", PERP, RX_NS, RX_MS)
        assert (r.parse_errors, r.rejected, r.data) == (0, 0, True)
        got = evs(r)
        assert [pick(e, "ratio", "long_pct", "short_pct", "ts_exchange") for e in got] == want
        assert all(e["kind"] == kind and e["period"] == "5m" and e["symbol"] == "BTC-USDT" for e in got)
        assert r.events[0][0] == f"md:long_short_{kind}:binance:perp:BTC-USDT"
        assert r.events[0][1] == f"ls:{kind}:binance:perp:BTCUSDT:5m:{want[0][3]}"


def test_long_short_bad_rows_counted() -> None:
    body = ('[{"symbol":"BTCUSDT","longShortRatio":"1.1","longAccount":"0.5","shortAccount":"0.5","timestamp":"x"},'
            '{"symbol":"XRPUSDT","longShortRatio":"1","longAccount":"0.5","shortAccount":"0.5","timestamp":1},'
            '7, {"symbol":["BTCUSDT"]},'
            '{"symbol":"BTCUSDT","longShortRatio":"1","longPosition":"0.5","shortPosition":"0.5","timestamp":2}]')
    r = bm.parse_long_short_ratio(body, "top_position", "1h", PERP, RX_NS, RX_MS)
    assert (r.parse_errors, r.rejected) == (3, 1)
    assert [pick(e, "ratio", "long_pct", "ts_exchange") for e in evs(r)] == [("1", "0.5", "2")]
    assert bm.parse_long_short_ratio('{"a":1}', "top_position", "1h", PERP, RX_NS, RX_MS).parse_errors == 1
    with pytest.raises(ValueError):
        bm.parse_long_short_ratio("[]", "nope", "1h", PERP, RX_NS, RX_MS)
    with pytest.raises(ValueError):
        bm.parse_long_short_ratio("[]", "top_position", "7m", PERP, RX_NS, RX_MS)


# ------------------------------------------------------------------ hostile / garbage input

HOSTILE_SYMBOLS = ["*", "BTC USDT", "BTC\nUSDT", "{BTCUSDT}", "X" * 10_000, "BTCUSDŦ", "", "btcusdt"]


@pytest.mark.parametrize("sym", HOSTILE_SYMBOLS)
def test_hostile_or_unknown_symbols_rejected(sym: str) -> None:
    import orjson
    s = orjson.dumps(sym).decode()
    payloads = [
        f'{{"e":"trade","E":1,"s":{s},"t":1,"p":"1","q":"1","T":1,"m":true}}',
        f'{{"e":"aggTrade","E":1,"s":{s},"a":1,"p":"1","q":"1","T":1,"m":true}}',
        f'{{"e":"depthUpdate","E":1,"s":{s},"U":1,"u":2,"b":[],"a":[]}}',
        f'{{"u":1,"s":{s},"b":"1","B":"1","a":"1","A":"1"}}',
        f'{{"e":"24hrTicker","E":1,"s":{s},"c":"1","o":"1","h":"1","l":"1","v":"1","q":"1","P":"0"}}',
        f'{{"e":"markPriceUpdate","E":1,"s":{s},"p":"1","i":"1","r":"0","T":1}}',
        f'{{"e":"forceOrder","E":1,"o":{{"s":{s},"S":"SELL","p":"1","q":"1","T":1}}}}',
        f'{{"e":"kline","E":1,"s":{s},"k":{{"t":1,"T":2,"i":"1m","o":"1","h":"1","l":"1","c":"1","v":"1","q":"1","n":1,"x":false}}}}',
    ]
    for p in payloads:
        for raw in (p, f'{{"stream":"x@y","data":{p}}}'):
            r = spot(raw)
            assert (r.rejected, r.events, r.books, r.parse_errors) == (1, [], [], 0), raw[:120]


@pytest.mark.parametrize("raw", [
    "", "not json", "[", "null", "42", '"str"', "[1,2]", "{}", b"\xff\xfe\x00garbage", '{"stream":1,"data":{}}',
    '{"stream":"btcusdt@trade","data":5}', '{"stream":"' + "x" * 500 + '","data":{}}',
    '{"e":5}', '{"e":null,"x":1}', "[" * 5000 + "]" * 5000,
])
def test_garbage_is_counted_never_raises(raw: str | bytes) -> None:
    r = spot(raw)
    assert r.parse_errors >= 1 and not r.events and not r.books


def test_non_text_input() -> None:
    assert spot(None).parse_errors == 1  # type: ignore[arg-type]
    assert spot(12).parse_errors == 1  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", [
    # float price (never accepted: Binance sends strings), missing fields, wrong types
    '{"e":"trade","s":"BTCUSDT","t":1,"p":1.5,"q":"1","T":1,"m":true}',
    '{"e":"trade","s":"BTCUSDT","t":"1","p":"1","q":"1","T":1,"m":true}',
    '{"e":"trade","s":"BTCUSDT","t":1,"p":"1","q":"1","T":1,"m":"yes"}',
    '{"e":"trade","s":"BTCUSDT","t":1,"p":"1e5","q":"1","T":1,"m":true}',
    '{"e":"trade","s":"BTCUSDT","t":1,"p":"-1","q":"1","T":1,"m":true}',
    '{"e":"trade","s":"BTCUSDT","t":1,"p":"١","q":"1","T":1,"m":true}',
    '{"e":"trade","s":7,"t":1,"p":"1","q":"1","T":1,"m":true}',
    '{"e":"aggTrade","s":"BTCUSDT","t":1,"p":"1","q":"1","T":1,"m":true}',
    '{"e":"depthUpdate","s":"BTCUSDT","U":1,"u":2,"b":[["1"]],"a":[]}',
    '{"e":"depthUpdate","s":"BTCUSDT","U":1,"u":2,"b":[[1,2]],"a":[]}',
    '{"e":"depthUpdate","s":"BTCUSDT","U":1,"u":2,"b":{},"a":[]}',
    '{"e":"depthUpdate","s":"BTCUSDT","U":1,"u":"2","b":[],"a":[]}',
    '{"e":"depthUpdate","s":"BTCUSDT","U":1,"u":2,"pu":"x","b":[],"a":[]}',
    '{"u":1,"s":"BTCUSDT","b":"1","B":"1","a":1,"A":"1"}',
    '{"e":"kline","E":1,"s":"BTCUSDT","k":{"t":1,"T":2,"i":"7q","o":"1","h":"1","l":"1","c":"1","v":"1","q":"1","n":1,"x":false}}',
    '{"e":"kline","E":1,"s":"BTCUSDT","k":[]}',
    '{"e":"24hrTicker","E":1,"s":"BTCUSDT","c":"1","o":"1","h":"1","l":"1","v":"1","q":"1","P":"0","b":5}',
    '{"e":"markPriceUpdate","E":1,"s":"BTCUSDT","p":"1","i":"1","r":"abc","T":1}',
    '{"e":"forceOrder","E":1,"o":{"s":"BTCUSDT","S":"HOLD","p":"1","q":"1","T":1}}',
    '{"e":"forceOrder","E":1,"o":"x"}',
    '{"lastUpdateId":"1","bids":[],"asks":[]}',
])
def test_malformed_payloads(bad: str) -> None:
    r = bm.parse_message(bad, SPOT, RX_NS, RX_MS, stream="btcusdt@depth5")
    assert (r.parse_errors, r.data, r.events, r.books) == (1, True, [], []), bad


def test_array_mixes_good_bad_unknown() -> None:
    good = '{"e":"markPriceUpdate","E":1,"s":"BTCUSDT","p":"1","i":"1","r":"-0.1","T":2}'
    raw = f'{{"stream":"!markPrice@arr","data":[{good},{good.replace("BTCUSDT", "XRPUSDT")},"x",{{"e":"markPriceUpdate"}}]}}'
    r = perp(raw)
    assert (len(r.events), r.rejected, r.parse_errors) == (1, 1, 2)
    assert perp(f"[{good}]").events  # bare /ws/!markPrice@arr


def test_unknown_event_types_are_data_not_errors() -> None:
    r = perp('{"e":"contractInfo","E":1,"s":"BTCUSDT"}')
    assert (r.data, r.events, r.parse_errors) == (True, [], 0)


def test_shared_results_not_mutated() -> None:
    """The parser hands out shared constant results; merging arrays must never touch them."""
    rej = spot('{"e":"trade","s":"XRPUSDT","t":1,"p":"1","q":"1","T":1,"m":true}')
    perp('{"stream":"!markPrice@arr","data":[{"e":"markPriceUpdate","s":"XRPUSDT"},{"e":"markPriceUpdate","s":"XRPUSDT"}]}')
    assert rej.rejected == 1 and rej.events == []


# ------------------------------------------------------------------ builders

def test_spot_agg_trade_subscription() -> None:
    from shared.settings import ExchangeSettings
    from workers.exchanges import get_adapter

    def cfg(**kw) -> ExchangeSettings:
        return ExchangeSettings(**{"market_data": True, "symbols": ["BTC-USDT", "ETH-USDT"], **kw})

    def streams(c: ExchangeSettings) -> dict[str, list[str]]:
        return {f.label: s for f, s in bm.market_data_feeds(c)}

    # asked for alone: the spot @aggTrade stream of each symbol, nothing on USD-M
    assert streams(cfg(channels=["agg_trade"])) == {"md spot": ["btcusdt@aggTrade", "ethusdt@aggTrade"]}
    # every channel (the default): both spot tapes; USD-M keeps its one aggTrade stream (the trade tape)
    every = streams(cfg(kline_intervals=["1m"]))
    assert [s for s in every["md spot"] if "rade" in s] == ["btcusdt@trade", "btcusdt@aggTrade", "ethusdt@trade",
                                                         "ethusdt@aggTrade"]
    assert [s for s in every["md perp market"] if "rade" in s] == ["btcusdt@aggTrade", "ethusdt@aggTrade"]
    # a trade tape needs trades: true
    assert "btcusdt@aggTrade" not in streams(cfg(trades=False))["md spot"]
    # not on USD-M, nor on any other exchange: a one-line configuration error
    assert bm.market_data_problem(cfg(channels=["agg_trade"], markets=["perp"])) == (
        "channels: agg_trade not available on binance perp (available: bbo, book, funding, kline, liquidation, "
        "long_short, open_interest, ticker, trade; agg_trade is spot only: USDⓈ-M trades are aggregates already "
        "(trade))")
    assert bm.market_data_problem(cfg(channels=["agg_trade"])) is None
    for name in ("okx", "bybit", "deribit"):
        problem = get_adapter(name).market_data_problem(cfg(channels=["agg_trade", "trade"]))
        assert problem is not None and problem.startswith(f"channels: agg_trade not available on {name}"), problem


def test_stream_names() -> None:
    assert [bm.stream_name("BTCUSDT", c) for c in
            ("trade", "aggTrade", "depth", "bookTicker", "ticker", "markPrice", "forceOrder")] == [
        "btcusdt@trade", "btcusdt@aggTrade", "btcusdt@depth@100ms", "btcusdt@bookTicker", "btcusdt@ticker",
        "btcusdt@markPrice@1s", "btcusdt@forceOrder"]
    assert bm.stream_name("BTCUSDT", "kline") == "btcusdt@kline_1m"
    assert bm.stream_name("ETHUSDT", "kline", interval="1h") == "ethusdt@kline_1h"
    assert bm.stream_name("ETHUSDT", "depth_partial", levels=5) == "ethusdt@depth5@100ms"
    for args, kw in [(("BTCUSDT", "nope"), {}), (("BTCUSDT", "kline"), {"interval": "7m"}),
                     (("BTCUSDT", "depth_partial"), {"levels": 50}), (("BTC USDT", "trade"), {}),
                     (("btc@trade", "trade"), {})]:
        with pytest.raises(ValueError):
            bm.stream_name(*args, **kw)


def test_usdm_routes_and_urls() -> None:
    public = ["btcusdt@depth@100ms", "btcusdt@bookTicker", "btcusdt@depth20@100ms", "!bookTicker",
              "btcusdt@rpiDepth@500ms"]
    market = ["btcusdt@aggTrade", "btcusdt@markPrice@1s", "btcusdt@kline_1m", "btcusdt@ticker",
              "btcusdt@forceOrder", "!forceOrder@arr", "!markPrice@arr", "btcusdt@trade"]
    assert {bm.usdm_route(s) for s in public} == {"public"}
    assert {bm.usdm_route(s) for s in market} == {"market"}
    assert bm.usdm_ws_url(["btcusdt@depth@100ms", "ethusdt@bookTicker"]) == \
        "wss://fstream.binance.com/public/stream?streams=btcusdt@depth@100ms/ethusdt@bookTicker"
    assert bm.usdm_ws_url(["btcusdt@aggTrade"]) == "wss://fstream.binance.com/market/stream?streams=btcusdt@aggTrade"
    with pytest.raises(ValueError):
        bm.usdm_ws_url(["btcusdt@aggTrade", "btcusdt@bookTicker"])
    with pytest.raises(ValueError):
        bm.usdm_ws_url([])
    assert bm.usdm_ws_urls(["btcusdt@aggTrade", "btcusdt@bookTicker", "btcusdt@forceOrder"]) == {
        "market": "wss://fstream.binance.com/market/stream?streams=btcusdt@aggTrade/btcusdt@forceOrder",
        "public": "wss://fstream.binance.com/public/stream?streams=btcusdt@bookTicker"}
    assert bm.spot_ws_url(["btcusdt@trade", "btcusdt@depth@100ms"]) == \
        "wss://stream.binance.com:9443/stream?streams=btcusdt@trade/btcusdt@depth@100ms"


def test_rest_requests_and_weights() -> None:
    assert [bm.spot_depth_weight(n) for n in (1, 100, 101, 500, 501, 1000, 1001, 5000)] == [5, 5, 25, 25, 50, 50, 250, 250]
    assert [bm.usdm_depth_weight(n) for n in (5, 10, 20, 50, 100, 500, 1000)] == [2, 2, 2, 2, 5, 10, 20]
    for bad in (0, 5001, True):
        with pytest.raises(ValueError):
            bm.spot_depth_weight(bad)
    for bad in (1, 30, 5000):
        with pytest.raises(ValueError):
            bm.usdm_depth_weight(bad)
    assert bm.depth_request("BTCUSDT", "spot") == ("https://api.binance.com/api/v3/depth?symbol=BTCUSDT&limit=1000", 50)
    assert bm.depth_request("BTCUSDT", "spot", 5000).weight == 250
    assert bm.depth_request("BTCUSDT", "perp") == ("https://fapi.binance.com/fapi/v1/depth?symbol=BTCUSDT&limit=1000", 20)
    assert bm.depth_request("BTCUSDT", "perp", 100).weight == 5
    assert bm.open_interest_request("BTCUSDT") == ("https://fapi.binance.com/fapi/v1/openInterest?symbol=BTCUSDT", 1)
    assert bm.long_short_request("BTCUSDT", "top_position", "5m", 30).url == \
        "https://fapi.binance.com/futures/data/topLongShortPositionRatio?symbol=BTCUSDT&period=5m&limit=30"
    assert bm.long_short_request("BTCUSDT", "global_account", "1h").url == \
        "https://fapi.binance.com/futures/data/globalLongShortAccountRatio?symbol=BTCUSDT&period=1h&limit=1"
    for call in (lambda: bm.depth_request("BTC&x=1", "spot"), lambda: bm.depth_request("BTCUSDT", "option"),
                 lambda: bm.long_short_request("BTCUSDT", "top_position", "2m"),
                 lambda: bm.long_short_request("BTCUSDT", "x", "5m"), lambda: bm.open_interest_request("a/b")):
        with pytest.raises(ValueError):
            call()
