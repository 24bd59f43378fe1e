"""Listing push channel parsers: Binance USDⓈ-M ``!contractInfo`` and OKX ``instruments``.

Frames: the docs' contractInfo example (developers.binance.com "Contract Info Stream", the
IOTAUSDT one) and OKX push frames built the way the channel sends them (``arg`` + ``data`` rows of
the REST shape) from the recorded REST rows in tests/fixtures/rest/okx*.json."""

from __future__ import annotations

import json

import orjson

from shared.events import DELISTED, HALTED, PRE_TRADING, TRADING
from tests.conftest import FIXTURES
from workers.exchanges.binance import Binance, BinanceContractInfoFeed, split_futures_pair
from workers.exchanges.okx import Okx, OkxInstrumentsFeed

DOCS_CONTRACT_INFO = (
    '{"e":"contractInfo","E":1669356423908,"s":"IOTAUSDT","ps":"IOTAUSDT","ct":"PERPETUAL",'
    '"dt":4133404800000,"ot":1569398400000,"cs":"TRADING","bks":[{"bs":1,"bnf":0,"bnc":5000,"mmr":0.01,'
    '"cf":0,"mi":21,"ma":50},{"bs":2,"bnf":5000,"bnc":25000,"mmr":0.025,"cf":75,"mi":11,"ma":20}]}'
)


def contract(**kw) -> str:
    d = json.loads(DOCS_CONTRACT_INFO)
    d.pop("bks")
    d.update(kw)
    return json.dumps(d)


def test_contract_info_docs_example() -> None:
    r = BinanceContractInfoFeed().parse_ws_message(DOCS_CONTRACT_INFO, 0, 0)
    assert r.data and not r.parse_errors and not r.rejected and not r.events
    (info,) = r.instruments
    assert (info.native_symbol, info.symbol, info.base, info.quote, info.market) == \
        ("IOTAUSDT", "IOTA-USDT", "IOTA", "USDT", "perp")
    assert (info.status, info.raw_status) == (TRADING, "TRADING")
    assert info.url == "https://www.binance.com/en/futures/IOTAUSDT"


def test_contract_info_lifecycle_statuses_and_markets() -> None:
    feed = BinanceContractInfoFeed()
    pending = feed.parse_ws_message(contract(s="NEWUSDT", ps="NEWUSDT", ct="", cs="PENDING_TRADING"), 0, 0)
    assert [(i.market, i.status) for i in pending.instruments] == [("perp", PRE_TRADING)]
    wrapped = orjson.dumps({"stream": "!contractInfo", "data": json.loads(contract(cs="SETTLING"))}).decode()
    assert [i.status for i in feed.parse_ws_message(wrapped, 0, 0).instruments] == [HALTED]
    assert [i.status for i in feed.parse_ws_message(contract(cs="CLOSE"), 0, 0).instruments] == [DELISTED]
    dated = feed.parse_ws_message(contract(s="BTCUSDT_260925", ps="BTCUSDT", ct="CURRENT_QUARTER"), 0, 0)
    assert [(i.native_symbol, i.market, i.symbol) for i in dated.instruments] == \
        [("BTCUSDT_260925", "future", "BTC-USDT")]
    # a June-2026 mixed stream: st=2 is COIN-M, not ours (not an error either)
    coinm = feed.parse_ws_message(contract(s="BTCUSD_PERP", ps="BTCUSD", st=2), 0, 0)
    assert not coinm.instruments and not coinm.rejected and not coinm.parse_errors


def test_contract_info_bad_and_hostile_input_is_counted() -> None:
    feed = BinanceContractInfoFeed()
    assert feed.parse_ws_message("not json", 0, 0).parse_errors == 1
    assert feed.parse_ws_message(b"\x00\x01", 0, 0).parse_errors == 1
    assert feed.parse_ws_message("[1,2]", 0, 0).parse_errors == 1
    for hostile in ("BTC USDT", "*", "{x}USDT", "A" * 10_000 + "USDT", "ÄUSDT", "BTCUSDT\n"):
        r = feed.parse_ws_message(contract(s=hostile, ps=hostile), 0, 0)
        assert r.rejected == 1 and not r.instruments, hostile
    # the name and the pair disagree; an unknown quote; a status that is not a status word
    assert feed.parse_ws_message(contract(s="ETHUSDT", ps="BTCUSDT"), 0, 0).rejected == 1
    assert feed.parse_ws_message(contract(s="BTCXYZ", ps="BTCXYZ"), 0, 0).rejected == 1
    assert feed.parse_ws_message(contract(cs="trading now!"), 0, 0).rejected == 1
    assert feed.parse_ws_message('{"result":null,"id":1}', 0, 0).instruments == []
    assert feed.parse_ws_message('{"code":-1,"msg":"boom"}', 0, 0).error == "binance error -1: boom"
    assert feed.parse_ws_message('{"e":"serverShutdown","E":1}', 0, 0).rotate


def test_split_futures_pair() -> None:
    assert split_futures_pair("1000PEPEUSDT") == "1000PEPE-USDT"
    assert split_futures_pair("ETHBTC") == "ETH-BTC"
    assert split_futures_pair("BTCUSDC") == "BTC-USDC"
    assert split_futures_pair("USDT") is None and split_futures_pair(None) is None


def test_binance_and_okx_declare_their_push_feeds() -> None:
    (feed, streams), = Binance().listing_feeds()
    assert isinstance(feed, BinanceContractInfoFeed) and streams == ["!contractInfo"]
    assert feed.ws_url(streams) == "wss://fstream.binance.com/market/ws/!contractInfo"
    assert feed.quiet  # event-driven: liveness by ping/pong, not by data
    (ofeed, ostreams), = Okx().listing_feeds()
    assert ostreams == ["SPOT", "SWAP"] and ofeed.ws_url(ostreams) == "wss://ws.okx.com:8443/ws/v5/public"
    assert json.loads(ofeed.subscribe_messages(ostreams)[0]) == {
        "op": "subscribe", "args": [{"channel": "instruments", "instType": "SPOT"},
                                    {"channel": "instruments", "instType": "SWAP"}]}
    assert ofeed.keepalive.text_ping == "ping" and ofeed.keepalive.interval < 30


def okx_push(inst_type: str, rows: list) -> str:
    return json.dumps({"arg": {"channel": "instruments", "instType": inst_type}, "data": rows})


def test_okx_instruments_push_rows_of_the_rest_shape() -> None:
    spot = json.loads((FIXTURES / "rest" / "okx.json").read_text())["data"]
    swap = json.loads((FIXTURES / "rest" / "okx_swap.json").read_text())["data"]
    feed = OkxInstrumentsFeed()
    r = feed.parse_ws_message(okx_push("SPOT", spot), 0, 0)
    assert r.data and not r.rejected
    got = {i.native_symbol: (i.symbol, i.market, i.status, i.raw_status) for i in r.instruments}
    assert got["BTC-USDT"] == ("BTC-USDT", "spot", TRADING, "live")
    assert got["WLFI-USDT"] == ("WLFI-USDT", "spot", PRE_TRADING, "preopen")  # "" numbers of a preopen row
    r = feed.parse_ws_message(okx_push("SWAP", swap), 0, 0)
    assert {i.market for i in r.instruments} == {"perp"} and "BTC-USDT-SWAP" in {i.native_symbol for i in r.instruments}
    # rows of an instType we do not poll are passed over silently
    assert feed.parse_ws_message(okx_push("OPTION", [{"instId": "BTC-USD-260925-100000-C"}]), 0, 0).instruments == []


def test_okx_instruments_control_frames_and_bad_input() -> None:
    feed = OkxInstrumentsFeed()
    pong = feed.parse_ws_message("pong", 0, 0)
    assert not pong.data and not pong.parse_errors
    ack = '{"event":"subscribe","arg":{"channel":"instruments","instType":"SPOT"},"connId":"a4d3ae55"}'
    assert feed.parse_ws_message(ack, 0, 0).instruments == [] and not feed.parse_ws_message(ack, 0, 0).parse_errors
    err = feed.parse_ws_message('{"event":"error","code":"60018","msg":"Wrong URL","connId":"x"}', 0, 0)
    assert err.error == "okx error 60018: Wrong URL"
    assert feed.parse_ws_message('{"event":"notice","code":"64008","msg":"upgrade"}', 0, 0).rotate
    assert feed.parse_ws_message("{oops", 0, 0).parse_errors == 1
    assert feed.parse_ws_message('{"arg":{"channel":"instruments"},"data":{}}', 0, 0).parse_errors == 1
    hostile = [{"instType": "SPOT", "instId": n, "state": "live", "baseCcy": "", "quoteCcy": ""}
               for n in ("BTC USDT", "*-USDT", "A" * 5000 + "-USDT", "ÄÖ-USDT")]
    r = feed.parse_ws_message(okx_push("SPOT", hostile), 0, 0)
    assert r.rejected == 4 and r.instruments == []
