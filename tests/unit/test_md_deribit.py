"""Deribit market-data parser (workers/exchanges/deribit.py) on every recorded payload of
fixtures/ws/deribit (SOURCES.md section 4). Frames are fed as the exact wire text: number tokens
must come out unchanged (a float round trip would turn 0.00001742 into 1.742e-05)."""

from __future__ import annotations

import json

import pytest

from shared.events import fields_to_dict
from tests.conftest import FIXTURES
from workers.exchanges import deribit as dr
from workers.exchanges.base import ParseResult

RX_NS = 987_654_321
RX_MS = 1_790_000_000_000


DIR = FIXTURES / "ws" / "deribit"  # the repo's copy of ../shared/fixtures/ws


def frames(name: str) -> list[str]:
    """Each element of a fixture file as the exact text it was on the wire (one per line)."""
    lines = (DIR / name).read_text().strip().splitlines()
    assert lines[0] == "[" and lines[-1] == "]"
    return [line.rstrip().rstrip(",") for line in lines[1:-1]]


SYMBOLS = dr.symbol_map(["BTC-PERPETUAL", "BTC-24SEP21-8000-P", "ETH-30JUL21-2800-C", "BTC-26MAR21-62000-C",
                         "btc_usd", "eth_usd"])


def parse(raw: str | bytes, symbols=SYMBOLS) -> ParseResult:
    return dr.parse_message(raw, symbols, RX_NS, RX_MS)


def evs(r: ParseResult) -> list[dict[str, str]]:
    return [fields_to_dict(e[3]) for e in r.events]


def clean(r: ParseResult) -> ParseResult:
    assert r.data and not r.parse_errors and not r.rejected and r.error is None, r
    return r


def pick(ev: dict[str, str], *keys: str) -> tuple[str, ...]:
    return tuple(ev[k] for k in keys)


def test_symbol_map_of_the_fixtures() -> None:
    assert SYMBOLS == {
        "BTC-PERPETUAL": ("BTC-USD", "perp"), "BTC-24SEP21-8000-P": ("BTC-USD", "option"),
        "ETH-30JUL21-2800-C": ("ETH-USD", "option"), "BTC-26MAR21-62000-C": ("BTC-USD", "option"),
        "btc_usd": ("BTC-USD", "index"), "eth_usd": ("ETH-USD", "index")}


# ------------------------------------------------------------------ notifications

def test_trades() -> None:
    f = frames("trades.json")
    keys = ("type", "exchange", "market", "symbol", "native_symbol", "trade_id", "price", "qty", "side",
            "ts_exchange", "ts_receive")
    r = clean(parse(f[0]))
    assert [pick(e, *keys) for e in evs(r)] == [
        ("trade", "deribit", "perp", "BTC-USD", "BTC-PERPETUAL", "137487241", "56168.0", "5580.0", "buy",
         "1616321478553", str(RX_MS)),
        ("trade", "deribit", "perp", "BTC-USD", "BTC-PERPETUAL", "137487242", "56168.0", "60.0", "buy",
         "1616321478553", str(RX_MS)),
    ]
    assert r.events[0][0] == "md:trade:deribit:perp:BTC-USD"
    assert r.events[0][1] == "t:deribit:perp:BTC-PERPETUAL:137487241" and r.events[0][4] == RX_NS
    # 2025 frame with contracts / combo_trade_id (ignored), taker sold
    assert [pick(e, "trade_id", "price", "qty", "side", "ts_exchange") for e in evs(clean(parse(f[1])))] == [
        ("403691824", "92294.5", "10.0", "sell", "1765531356452"),
        ("403691825", "92288.5", "750.0", "sell", "1765531356452")]
    # kind/currency channel: each trade names its instrument
    [e] = evs(clean(parse(f[2])))
    assert pick(e, "market", "symbol", "native_symbol", "trade_id", "price", "qty", "side") == (
        "option", "BTC-USD", "BTC-26MAR21-62000-C", "137488100", "0.007", "0.1", "buy")


def test_book_snapshot_and_changes() -> None:
    books = []
    for raw in frames("book.json"):
        r = clean(parse(raw))
        assert not r.events
        [b] = r.books
        assert b.exchange == "deribit" and b.ts_receive == RX_MS
        books.append(b)
    assert [(b.native_symbol, b.symbol, b.market, b.snapshot, b.seq, b.prev_seq, b.ts_exchange) for b in books] == [
        ("BTC-24SEP21-8000-P", "BTC-USD", "option", True, 33195894164, None, 1626993722319),
        ("BTC-24SEP21-8000-P", "BTC-USD", "option", False, 33195894355, 33195894164, 1626993724318),
        ("BTC-24SEP21-8000-P", "BTC-USD", "option", False, 33195894358, 33195894355, 1626993724337),
        ("BTC-24SEP21-8000-P", "BTC-USD", "option", False, 33195894526, 33195894358, 1626993726344),
        ("BTC-PERPETUAL", "BTC-USD", "perp", False, 31479598217, 31479598064, 1622627435737),
    ]
    for prev, nxt in zip(books[:3], books[1:4]):
        assert nxt.prev_seq == prev.seq  # the documented chain holds on the capture
    assert books[0].bids == [("0.0005", "153.1")]
    assert len(books[0].asks) == 14 and books[0].asks[0] == ("0.0015", "94.7") and books[0].asks[-1] == ("0.25", "9.0")
    assert books[1].asks == [("0.001", "2.6")] and books[1].bids == []
    assert books[2].asks == [("0.001", "0")]  # delete -> qty "0"
    assert books[4].bids == [("36779.0", "0"), ("36809.5", "254870.0")]
    assert books[4].asks == [("37462.5", "0"), ("37394.0", "42670.0")]


def test_grouped_book_is_a_snapshot_each_push() -> None:
    f = frames("book_grouped.json")
    [b0] = clean(parse(f[0])).books
    assert (b0.native_symbol, b0.snapshot, b0.seq, b0.prev_seq, b0.ts_exchange) == (
        "BTC-PERPETUAL", True, 45176552517, None, 1653983481909)
    assert b0.bids == [("31523.5", "128780.0"), ("31523.0", "190.0"), ("31521.5", "14500.0")]
    assert b0.asks == [("31524.0", "30.0"), ("31525.0", "30.0"), ("31525.5", "6010.0")]
    [b1] = clean(parse(f[1])).books
    assert (b1.snapshot, b1.seq, b1.ts_exchange, len(b1.bids), len(b1.asks)) == (True, 136725664747, 1769246173071, 10, 10)
    assert b1.bids[0] == ("89532.5", "254900.0") and b1.asks[-1] == ("89545.5", "29500.0")


def test_ticker() -> None:
    f = frames("ticker.json")
    keys = ("type", "market", "symbol", "native_symbol", "last", "open", "high", "low", "volume", "quote_volume",
            "change_pct", "bid_price", "bid_qty", "ask_price", "ask_qty", "mark_price", "index_price",
            "funding_rate", "next_funding_time", "open_interest", "ts_exchange")
    got = [pick(e, *keys) for raw in f for e in evs(clean(parse(raw)))]
    assert got == [
        # funding_8h kept as the exact token (0.00001742, not 1.742e-05)
        ("ticker", "perp", "BTC-USD", "BTC-PERPETUAL", "92283.5", "", "93612.0", "89277.5", "11897.27640428",
         "1092371540.0", "2.3275", "92283.5", "117660.0", "92284.0", "186520.0", "92281.78", "92263.55",
         "0.00001742", "0", "1132329370.0", "1765541474086"),
        # open_interest is an integer token here: decimal text of it
        ("ticker", "perp", "BTC-USD", "BTC-PERPETUAL", "29931.0", "", "31903.5", "29265.5", "17945.19644566",
         "545442610.0", "-5.4014", "29930.5", "149910.0", "29931.0", "62850.0", "29932.79", "29930.44",
         "0.00000255", "0", "559791310", "1654161785818"),
        # option: no funding, no volume_usd
        ("ticker", "option", "ETH-USD", "ETH-30JUL21-2800-C", "0.002", "", "0.0025", "0.0015", "869.0", "",
         "0.0", "0.0015", "4714.0", "0.0025", "873.0", "0.001972", "2006.72", "", "0", "12685.0",
         "1626993723632"),
    ]
    r = parse(f[0])
    assert r.events[0][0] == "md:ticker:deribit:perp:BTC-USD"
    assert r.events[0][1] == "tk:deribit:perp:BTC-PERPETUAL:1765541474086:0"


def test_ticker_funding_fallback_and_nulls() -> None:
    raw = ('{"jsonrpc":"2.0","method":"subscription","params":{"channel":"ticker.BTC-PERPETUAL.100ms","data":'
           '{"timestamp":1,"instrument_name":"BTC-PERPETUAL","last_price":null,"stats":{"high":null,"low":null,'
           '"volume":null,"price_change":null},"best_bid_price":0.0,"best_bid_amount":0.0,"current_funding":1e-05}}}')
    [e] = evs(clean(parse(raw)))
    assert pick(e, "last", "high", "volume", "change_pct", "bid_price", "funding_rate", "open_interest") == (
        "", "", "", "", "0.0", "1e-05", "")


def test_volatility_index() -> None:
    [raw] = frames("volatility_index.json")
    r = clean(parse(raw))
    [e] = evs(r)
    assert pick(e, "type", "exchange", "market", "symbol", "native_symbol", "value", "ts_exchange") == (
        "volatility_index", "deribit", "index", "BTC-USD", "btc_usd", "129.36", "1619777946007")
    assert r.events[0][0] == "md:volatility_index:deribit:index:BTC-USD"
    assert parse(raw, {}).rejected == 1


# ------------------------------------------------------------------ control frames

def test_heartbeat() -> None:
    set_req, set_resp, test_req, test_answer, beat = frames("heartbeat.json")
    r = parse(test_req)
    assert r.replies == ['{"jsonrpc":"2.0","id":9099,"method":"public/test","params":{}}']
    assert json.loads(r.replies[0])["method"] == "public/test" and not r.data and not r.parse_errors
    for raw in (set_resp, beat):
        r = parse(raw)
        assert (r.replies, r.data, r.parse_errors, r.error, r.events) == ([], False, 0, None, [])
    for raw in (set_req, test_answer):  # client->server frames never come back: garbage if they did
        assert parse(raw).parse_errors == 1
    # our set_heartbeat request has the documented shape
    assert json.loads(dr.set_heartbeat_message(msg_id=9098)) == json.loads(set_req)
    assert json.loads(dr.public_test_message(9099)) == json.loads(test_answer)
    assert parse('{"jsonrpc":"2.0","method":"heartbeat","params":{"type":"other"}}').parse_errors == 1


def test_subscribe_responses_ignored() -> None:
    req, resp, resp_docs = frames("subscribe.json")
    for raw in (resp, resp_docs):
        r = parse(raw)
        assert (r.data, r.parse_errors, r.error, r.events, r.replies) == (False, 0, None, [], [])
    assert parse(req).parse_errors == 1
    assert json.loads(dr.subscribe_message(json.loads(req)["params"]["channels"], msg_id=0)) == json.loads(req)


def test_error() -> None:
    [raw] = frames("error.json")
    r = parse(raw)
    assert r.error == "deribit error 10028: too_many_requests" and not r.data and not r.parse_errors
    r = parse('{"jsonrpc":"2.0","id":3,"error":{"code":-32602,"message":"Invalid params",'
              '"data":{"reason":"x","param":"channels"}}}')
    assert r.error.startswith("deribit error -32602: Invalid params (") and "channels" in r.error
    assert parse('{"jsonrpc":"2.0","id":3,"error":"boom"}').error == "deribit error ?: 'boom'"


# ------------------------------------------------------------------ hostile / garbage input

def _sub(channel: str, data: str) -> str:
    return f'{{"jsonrpc":"2.0","method":"subscription","params":{{"channel":"{channel}","data":{data}}}}}'


HOSTILE = ["*", "BTC PERPETUAL", "BTC-PERPETUAL\n", "{x}", "X" * 10_000, "BTC-PERPETUÅL", "", "ETH-PERPETUAL"]


@pytest.mark.parametrize("name", HOSTILE)
def test_unknown_or_hostile_instruments_rejected(name: str) -> None:
    n = json.dumps(name)
    cases = [
        _sub("trades.X.100ms", f'[{{"trade_id":"1","price":1.0,"amount":1.0,"direction":"buy","timestamp":1,'
                               f'"instrument_name":{n}}}]'),
        _sub("book.X.100ms", f'{{"type":"snapshot","timestamp":1,"change_id":1,"instrument_name":{n},'
                             f'"bids":[],"asks":[]}}'),
        _sub("ticker.X.100ms", f'{{"timestamp":1,"instrument_name":{n}}}'),
        _sub("deribit_volatility_index.x", f'{{"timestamp":1,"volatility":1.0,"index_name":{n}}}'),
    ]
    for raw in cases:
        r = parse(raw)
        assert (r.rejected, r.events, r.books, r.parse_errors) == (1, [], [], 0), raw[:100]


@pytest.mark.parametrize("raw", [
    "", "nope", "[", "null", "[1]", "{}", '"x"', b"\xff\x00\xfe", "[" * 5000 + "]" * 5000,
    '{"jsonrpc":"2.0","method":"subscription"}',
    '{"jsonrpc":"2.0","method":"subscription","params":{"channel":5,"data":{}}}',
    _sub("trades.BTC-PERPETUAL.100ms", "{}"),
    _sub("book.BTC-PERPETUAL.100ms", "[]"),
    _sub("ticker.BTC-PERPETUAL.100ms", "7"),
    _sub("deribit_volatility_index.btc_usd", "null"),
])
def test_garbage_counted_never_raises(raw: str | bytes) -> None:
    r = parse(raw)
    assert r.parse_errors >= 1 and not r.events and not r.books and not r.replies


def test_non_text_input() -> None:
    assert parse(None).parse_errors == 1  # type: ignore[arg-type]


T = '"trade_id":"1","timestamp":1,"instrument_name":"BTC-PERPETUAL"'
B = '"timestamp":1,"instrument_name":"BTC-PERPETUAL"'


@pytest.mark.parametrize("raw", [
    _sub("trades.BTC-PERPETUAL.100ms", f'[{{{T},"price":NaN,"amount":1.0,"direction":"buy"}}]'),
    _sub("trades.BTC-PERPETUAL.100ms", f'[{{{T},"price":1.0,"amount":-1.0,"direction":"buy"}}]'),
    _sub("trades.BTC-PERPETUAL.100ms", f'[{{{T},"price":1.0,"amount":true,"direction":"buy"}}]'),
    _sub("trades.BTC-PERPETUAL.100ms", f'[{{{T},"price":"abc","amount":1.0,"direction":"buy"}}]'),
    _sub("trades.BTC-PERPETUAL.100ms", f'[{{{T},"price":1.0,"amount":1.0,"direction":"up"}}]'),
    _sub("trades.BTC-PERPETUAL.100ms",
         '[{"trade_id":"a b","timestamp":1,"instrument_name":"BTC-PERPETUAL","price":1.0,"amount":1.0,"direction":"buy"}]'),
    _sub("trades.BTC-PERPETUAL.100ms", '[{"trade_id":"1","timestamp":1.5,"instrument_name":"BTC-PERPETUAL",'
                                       '"price":1.0,"amount":1.0,"direction":"buy"}]'),
    _sub("book.BTC-PERPETUAL.100ms", f'{{{B},"type":"change","change_id":2,"bids":[],"asks":[]}}'),  # no prev
    _sub("book.BTC-PERPETUAL.100ms", f'{{{B},"type":"snapshot","change_id":2,"bids":[["move",1.0,1.0]],"asks":[]}}'),
    _sub("book.BTC-PERPETUAL.100ms", f'{{{B},"type":"snapshot","change_id":2,"bids":[["new",1.0]],"asks":[]}}'),
    _sub("book.BTC-PERPETUAL.100ms", f'{{{B},"type":"snapshot","change_id":2,"bids":[[1.0]],"asks":[]}}'),
    _sub("book.BTC-PERPETUAL.100ms", f'{{{B},"type":"snapshot","change_id":"2","bids":[],"asks":[]}}'),
    _sub("book.BTC-PERPETUAL.100ms", f'{{{B},"type":"weird","change_id":2,"bids":[],"asks":[]}}'),
    _sub("book.BTC-PERPETUAL.100ms", f'{{{B},"type":"change","change_id":2,"prev_change_id":1.5,"bids":[],"asks":[]}}'),
    _sub("ticker.BTC-PERPETUAL.100ms", f'{{{B},"mark_price":"x"}}'),
    _sub("ticker.BTC-PERPETUAL.100ms", f'{{{B},"stats":[]}}'),
    _sub("ticker.BTC-PERPETUAL.100ms", f'{{{B},"funding_8h":Infinity}}'),
    _sub("deribit_volatility_index.btc_usd", '{"timestamp":1,"volatility":-3.0,"index_name":"btc_usd"}'),
])
def test_malformed_items(raw: str) -> None:
    r = parse(raw)
    assert r.parse_errors == 1 and not r.events and not r.books, raw


def test_trades_batch_mixes_good_bad_unknown() -> None:
    good = '{"trade_id":"9","price":2.5,"amount":3,"direction":"sell","timestamp":5,"instrument_name":"BTC-PERPETUAL"}'
    raw = _sub("trades.BTC-PERPETUAL.100ms", f'[{good},{good.replace("BTC-PERPETUAL", "SOL-PERPETUAL")},1]')
    r = parse(raw)
    assert (r.rejected, r.parse_errors) == (1, 1)
    assert [pick(e, "trade_id", "price", "qty", "side") for e in evs(r)] == [("9", "2.5", "3", "sell")]


def test_unknown_channel_is_data_not_error() -> None:
    r = parse(_sub("quote.BTC-PERPETUAL", '{"timestamp":1}'))
    assert (r.data, r.parse_errors, r.events) == (True, 0, [])


def test_exact_tokens_kept() -> None:
    raw = _sub("book.BTC-PERPETUAL.100ms", f'{{{B},"type":"snapshot","change_id":12345678901234567890,'
                                           '"bids":[["new",0.10000000000000000555,1E+2]],"asks":[]}')
    [b] = clean(parse(raw)).books
    assert b.seq == 12345678901234567890 and b.bids == [("0.10000000000000000555", "1E+2")]


# ------------------------------------------------------------------ builders

def test_instrument_market_and_canonical() -> None:
    cases = {
        "BTC-PERPETUAL": ("perp", "BTC-USD"),
        "ETH-PERPETUAL": ("perp", "ETH-USD"),
        "SOL_USDC-PERPETUAL": ("perp", "SOL-USDC"),
        "BTC-27JUN25": ("future", "BTC-USD"),
        "BTC-24SEP21-8000-P": ("option", "BTC-USD"),
        "ETH-30JUL21-2800-C": ("option", "ETH-USD"),
        "XRP_USDC-30MAY25-2d5-C": ("option", "XRP-USDC"),
        "BTC_USDC": ("spot", "BTC-USDC"),
    }
    for name, (market, sym) in cases.items():
        assert (dr.instrument_market(name), dr.canonical_symbol(name)) == (market, sym), name
        assert dr.symbol_entry(name) == (sym, market)
    for bad in ("BTC-FS-27JUN25_PERP", "btc-perpetual", "BTC-PERPETUAL ", "*", "", "X" * 100, None, 5):
        assert dr.instrument_market(bad) is None and dr.canonical_symbol(bad) is None  # type: ignore[arg-type]
    assert dr.symbol_entry("eth_usd") == ("ETH-USD", "index")
    assert dr.symbol_map(["BTC-PERPETUAL", "bad name", "btc_usd"]) == {
        "BTC-PERPETUAL": ("BTC-USD", "perp"), "btc_usd": ("BTC-USD", "index")}


def test_channels_and_messages() -> None:
    assert dr.trades_channel("BTC-PERPETUAL") == "trades.BTC-PERPETUAL.100ms"
    assert dr.book_channel("ETH-PERPETUAL") == "book.ETH-PERPETUAL.100ms"
    assert dr.ticker_channel("SOL_USDC-PERPETUAL", "agg2") == "ticker.SOL_USDC-PERPETUAL.agg2"
    assert dr.volatility_channel("btc_usd") == "deribit_volatility_index.btc_usd"
    for call in (lambda: dr.trades_channel("BTC PERP"), lambda: dr.book_channel("BTC-PERPETUAL", "1s"),
                 lambda: dr.volatility_channel("BTC"), lambda: dr.set_heartbeat_message(5)):
        with pytest.raises(ValueError):
            call()
    msg = json.loads(dr.subscribe_message(["trades.BTC-PERPETUAL.100ms", "book.BTC-PERPETUAL.100ms"], msg_id=7))
    assert msg == {"jsonrpc": "2.0", "id": 7, "method": "public/subscribe",
                   "params": {"channels": ["trades.BTC-PERPETUAL.100ms", "book.BTC-PERPETUAL.100ms"]}}
    assert json.loads(dr.set_heartbeat_message())["params"] == {"interval": 30}
