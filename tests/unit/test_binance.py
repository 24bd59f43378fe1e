"""Binance spot adapter: pure parsing of recorded payloads (tests/fixtures, see SOURCES.md)."""

from __future__ import annotations

import json

import orjson
import pytest

from shared.events import fields_to_dict
from tests.conftest import FIXTURES
from workers.exchanges import IMPLEMENTED, UnknownExchangeError, get_adapter
from workers.exchanges.base import InstrumentsFormatError
from workers.exchanges.binance import BinanceSpot

WS = FIXTURES / "ws" / "binance_spot"
REST = FIXTURES / "rest" / "binance.json"
RX_NS = 123_456_789
RX_MS = 1_790_000_000_000


def frames(name: str) -> list[str]:
    """Each element of a fixture file as the text frame it was on the wire."""
    return [json.dumps(x, separators=(",", ":")) for x in json.loads((WS / name).read_text())]


@pytest.fixture
def adapter() -> BinanceSpot:
    return BinanceSpot(["BTC-USDT", "BNB-BTC", "ETH-USDT"])


def test_registry() -> None:
    assert "binance" in IMPLEMENTED
    a = get_adapter("binance", ["BTC-USDT"])
    assert isinstance(a, BinanceSpot)
    assert a.canonical_by_native == {"BTCUSDT": "BTC-USDT"}
    assert sorted({r.market for r in a.instruments_requests()}) == ["perp", "spot"]
    assert not get_adapter("deribit").supports_listings  # market data only
    with pytest.raises(UnknownExchangeError, match="unknown exchange"):
        get_adapter("nosuchexchange")


def test_streams_and_url(adapter: BinanceSpot) -> None:
    assert adapter.trade_streams() == ["btcusdt@trade", "bnbbtc@trade", "ethusdt@trade"]
    assert adapter.ws_url(["btcusdt@trade", "ethusdt@trade"]) == \
        "wss://stream.binance.com:9443/stream?streams=btcusdt@trade/ethusdt@trade"
    assert adapter.subscribe_messages(["btcusdt@trade"]) == []
    assert adapter.keepalive.server_pings and not adapter.keepalive.client_ping
    assert adapter.rest_used_weight_header == "X-MBX-USED-WEIGHT-1M"
    assert adapter.rest_weight_limit == 6000
    [req] = adapter.instruments_requests()
    assert (req.market, req.url, req.weight) == ("spot", "https://api.binance.com/api/v3/exchangeInfo", 20)


# trade.json: [0] bare form, [1] and [2] wrapped combined-stream form
TRADE_EXPECTED = [
    {"symbol": "BNB-BTC", "native_symbol": "BNBBTC", "trade_id": "12345", "price": "0.001", "qty": "100",
     "side": "sell", "ts_exchange": "1672515782136"},
    {"symbol": "BTC-USDT", "native_symbol": "BTCUSDT", "trade_id": "6720857582", "price": "83034.29000000",
     "qty": "0.00062000", "side": "sell", "ts_exchange": "1790649901913"},
    {"symbol": "BNB-BTC", "native_symbol": "BNBBTC", "trade_id": "40756030", "price": "0.00426990",
     "qty": "33.82000000", "side": "buy", "ts_exchange": "1554076800940"},
]


@pytest.mark.parametrize("index", range(len(TRADE_EXPECTED)))
def test_trade_frames(adapter: BinanceSpot, index: int) -> None:
    raw = frames("trade.json")[index]
    res = adapter.parse_ws_message(raw, RX_NS, RX_MS)
    assert res.data and not res.rotate and res.parse_errors == 0 and res.rejected == 0
    [ev] = res.events
    stream, dedup, cls, fields, rx_ns, mono = ev
    exp = TRADE_EXPECTED[index]
    assert mono == exp["trade_id"]  # the cross-node dedup id (Binance trade ids grow per symbol)
    assert stream == f"md:trade:binance:spot:{exp['symbol']}"
    assert dedup == f"t:binance:spot:{exp['native_symbol']}:{exp['trade_id']}"
    assert cls == "trade"
    assert rx_ns == RX_NS
    f = fields_to_dict(fields)
    assert f == {"type": "trade", "exchange": "binance", "market": "spot", "ts_receive": str(RX_MS), **exp}
    # every value is a string (what lands in Redis)
    assert all(isinstance(v, str) for v in fields)


def test_trade_of_unconfigured_symbol_is_rejected() -> None:
    a = BinanceSpot(["ETH-USDT"])
    res = a.parse_ws_message(frames("trade.json")[1], RX_NS, RX_MS)
    assert res.events == [] and res.rejected == 1


@pytest.mark.parametrize("index", range(4))
def test_combined_stream_non_trade_frames_ignored(adapter: BinanceSpot, index: int) -> None:
    res = adapter.parse_ws_message(frames("combined_stream.json")[index], RX_NS, RX_MS)
    assert res.events == []
    assert res.data is True  # market data (keeps the connection fresh), just not ours
    assert res.parse_errors == 0 and res.rejected == 0 and not res.rotate


@pytest.mark.parametrize("index", range(2))
def test_server_shutdown_sets_rotate(adapter: BinanceSpot, index: int) -> None:
    res = adapter.parse_ws_message(frames("server_shutdown.json")[index], RX_NS, RX_MS)
    assert res.rotate is True and res.events == [] and res.parse_errors == 0


@pytest.mark.parametrize("index", [1, 3])
def test_subscribe_replies_ignored(adapter: BinanceSpot, index: int) -> None:
    res = adapter.parse_ws_message(frames("subscribe.json")[index], RX_NS, RX_MS)
    assert res.events == [] and res.parse_errors == 0 and res.error is None and not res.data


def test_error_reply_recorded(adapter: BinanceSpot) -> None:
    res = adapter.parse_ws_message('{"code":2,"msg":"Invalid request: unknown variant","id":1}', RX_NS, RX_MS)
    assert res.error == "binance error 2: Invalid request: unknown variant"
    assert res.events == [] and res.parse_errors == 0


HOSTILE = ["*", "BTC USDT", " BTCUSDT", "BTC\nUSDT", "{BTCUSDT}", "B" * 10_000, "BTCÜSDT", "", "BTC*"]


@pytest.mark.parametrize("native", HOSTILE, ids=lambda s: repr(s[:12]))
def test_hostile_symbol_in_trade_rejected(adapter: BinanceSpot, native: str) -> None:
    frame = {"stream": "x@trade", "data": {"e": "trade", "E": 1, "s": native, "t": 1, "p": "1.0", "q": "1.0",
                                            "T": 1, "m": True, "M": True}}
    res = adapter.parse_ws_message(orjson.dumps(frame).decode(), RX_NS, RX_MS)
    assert res.events == []
    assert res.rejected == 1


GARBAGE = [
    "not json", "{", "[]", "[1,2]", "42", '"str"', "null", '{"foo":1}',
    '{"stream":"btcusdt@trade","data":[1]}',
    # malformed trades: wrong types, float price, missing fields
    '{"e":"trade","s":"BTCUSDT","t":"1","p":"1","q":"1","T":1,"m":true}',
    '{"e":"trade","s":"BTCUSDT","t":1,"p":1.5,"q":"1","T":1,"m":true}',
    '{"e":"trade","s":"BTCUSDT","t":1,"p":"1e5","q":"1","T":1,"m":true}',
    '{"e":"trade","s":"BTCUSDT","t":1,"p":"1","q":"1","m":true}',
    '{"e":"trade","s":"BTCUSDT","t":1,"p":"1","q":"1","T":1,"m":"yes"}',
    '{"e":"trade","s":["BTCUSDT"],"t":1,"p":"1","q":"1","T":1,"m":true}',
    '{"e":"trade","s":{"a":1},"t":1,"p":"1","q":"1","T":1,"m":true}',
]


@pytest.mark.parametrize("raw", GARBAGE)
def test_garbage_counted(adapter: BinanceSpot, raw: str) -> None:
    res = adapter.parse_ws_message(raw, RX_NS, RX_MS)
    assert res.events == []
    assert res.parse_errors == 1


def test_binary_frame_counted(adapter: BinanceSpot) -> None:
    res = adapter.parse_ws_message(b'{"e":"trade"}', RX_NS, RX_MS)
    assert res.parse_errors == 1 and res.events == []


# ---- exchangeInfo ----

def test_instruments_from_recorded_exchange_info(adapter: BinanceSpot) -> None:
    body = orjson.loads(REST.read_bytes())
    got = adapter.parse_instruments("spot", body)
    assert got.rejected == 0
    by_native = {i.native_symbol: i.to_wire() for i in got}
    assert by_native == {
        "BTCUSDT": {"symbol": "BTC-USDT", "base": "BTC", "quote": "USDT", "market": "spot", "status": "trading",
                    "raw_status": "TRADING", "url": "https://www.binance.com/en/trade/BTC_USDT"},
        "ETHUSDT": {"symbol": "ETH-USDT", "base": "ETH", "quote": "USDT", "market": "spot", "status": "trading",
                    "raw_status": "TRADING", "url": "https://www.binance.com/en/trade/ETH_USDT"},
        "BCCBTC": {"symbol": "BCC-BTC", "base": "BCC", "quote": "BTC", "market": "spot", "status": "halted",
                   "raw_status": "BREAK", "url": "https://www.binance.com/en/trade/BCC_BTC"},
    }


@pytest.mark.parametrize("raw_status,status", [
    ("TRADING", "trading"), ("PRE_TRADING", "pre_trading"), ("AUCTION_MATCH", "pre_trading"),
    ("BREAK", "halted"), ("HALT", "halted"), ("END_OF_DAY", "halted"), ("POST_TRADING", "halted"),
    ("CANCEL_ONLY", "halted"), ("SOMETHING_NEW", "halted"),
])
def test_status_map(adapter: BinanceSpot, raw_status: str, status: str) -> None:
    body = {"symbols": [{"symbol": "NEWUSDT", "status": raw_status, "baseAsset": "NEW", "quoteAsset": "USDT"}]}
    [info] = adapter.parse_instruments("spot", body)
    assert (info.status, info.raw_status) == (status, raw_status)


@pytest.mark.parametrize("row", [
    {"symbol": "*", "status": "TRADING", "baseAsset": "*", "quoteAsset": "USDT"},
    {"symbol": "A BUSDT", "status": "TRADING", "baseAsset": "A B", "quoteAsset": "USDT"},
    {"symbol": "AB\nUSDT", "status": "TRADING", "baseAsset": "AB\n", "quoteAsset": "USDT"},
    {"symbol": "{AB}USDT", "status": "TRADING", "baseAsset": "{AB}", "quoteAsset": "USDT"},
    {"symbol": "X" * 10_000 + "USDT", "status": "TRADING", "baseAsset": "X" * 10_000, "quoteAsset": "USDT"},
    {"symbol": "ÄBCUSDT", "status": "TRADING", "baseAsset": "ÄBC", "quoteAsset": "USDT"},
    {"symbol": "ABCUSDT", "status": "TRADING", "baseAsset": "XYZ", "quoteAsset": "USDT"},  # name/parts disagree
    {"symbol": "ABCUSDT", "status": "TRADING\n", "baseAsset": "ABC", "quoteAsset": "USDT"},
    {"symbol": "ABCUSDT", "status": None, "baseAsset": "ABC", "quoteAsset": "USDT"},
    {"symbol": 5, "status": "TRADING", "baseAsset": "ABC", "quoteAsset": "USDT"},
    "not an object",
], ids=range(11))
def test_hostile_instruments_rejected_and_counted(adapter: BinanceSpot, row) -> None:
    good = {"symbol": "BTCUSDT", "status": "TRADING", "baseAsset": "BTC", "quoteAsset": "USDT"}
    got = adapter.parse_instruments("spot", {"symbols": [row, good]})
    assert [i.native_symbol for i in got] == ["BTCUSDT"]
    assert got.rejected == 1


@pytest.mark.parametrize("body", [None, [], {"symbols": "x"}, {"code": -1003, "msg": "Too many requests"}])
def test_instruments_wrong_shape_raises(adapter: BinanceSpot, body) -> None:
    with pytest.raises(InstrumentsFormatError):
        adapter.parse_instruments("spot", body)



@pytest.mark.parametrize("price,ok", [
    ("1", True), ("0.001", True), ("83034.29000000", True), ("1.", False), (".5", False), ("1.2.3", False),
    ("-1", False), ("1e5", False), ("", False), ("²", False), ("1 ", False), ("9" * 65, False), ("NaN", False),
])
def test_price_must_be_plain_decimal(adapter: BinanceSpot, price: str, ok: bool) -> None:
    frame = {"e": "trade", "E": 1, "s": "BTCUSDT", "t": 1, "p": price, "q": "1", "T": 1, "m": False}
    res = adapter.parse_ws_message(orjson.dumps(frame).decode(), RX_NS, RX_MS)
    assert (len(res.events), res.parse_errors) == ((1, 0) if ok else (0, 1))
