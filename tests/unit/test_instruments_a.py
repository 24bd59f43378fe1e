"""Listing-detection adapters, group A: Binance USDⓈ-M, Coinbase, Kraken, OKX, Bybit, KuCoin.

Pure parsers on the recorded bodies in tests/fixtures/rest/ (see SOURCES.md there), every row
checked field by field, the odd rows included; error envelopes; hostile names; Bybit paging
(through the real runtime poll against a local HTTP server); the exchange ban statuses of the
REST transport (Binance 418, Bybit 403).
"""

from __future__ import annotations

import asyncio
import copy
import json
import time
from typing import Any, Callable
from urllib.parse import parse_qs, urlsplit

import pytest
from aiohttp import web

from shared.settings import ExchangeSettings, Settings
from tests.conftest import FIXTURES
from tests.unit.test_transport_rest import RestServer, ok, run, status
from workers.exchanges.base import ExchangeAdapter, InstrumentsFormatError
from workers.exchanges.binance import Binance, BinanceSpot
from workers.exchanges.bybit import Bybit
from workers.exchanges.coinbase import Coinbase
from workers.exchanges.kraken import Kraken
from workers.exchanges.kucoin import Kucoin
from workers.exchanges.okx import Okx
from workers.runtime import Worker
from workers.transport.rest import RestBanned, RestClient, RestHttpError

REST = FIXTURES / "rest"
#: between the call-auction start and tradingStartTime of kucoin.json's WLFI-USDT
KUCOIN_NOW = 1_740_473_000_000
WLFI_START = 1_740_474_000_000


def body(name: str) -> Any:
    return json.loads((REST / f"{name}.json").read_text())


def kucoin(now: int = KUCOIN_NOW) -> Kucoin:
    a = Kucoin()
    a.clock = lambda: now  # type: ignore[method-assign]
    return a


def rows(got) -> list[tuple[str, ...]]:
    return [(i.native_symbol, i.symbol, i.base, i.quote, i.market, i.status, i.raw_status, i.url) for i in got]


# ---- every recorded row, every field ------------------------------------------------------------

FIXTURE_CASES: list[tuple[str, Callable[[], ExchangeAdapter], str, str, list[tuple[str, ...]]]] = [
    ("binance_futures", Binance, "perp", "binance_futures", [
        ("BTCUSDT", "BTC-USDT", "BTC", "USDT", "perp", "trading", "TRADING",
         "https://www.binance.com/en/futures/BTCUSDT"),
        ("TONUSDT", "TON-USDT", "TON", "USDT", "perp", "halted", "SETTLING",
         "https://www.binance.com/en/futures/TONUSDT"),
        # not listed yet: contractType "" and a future onboardDate; still a perpetual by its name
        ("MBLUSDT", "MBL-USDT", "MBL", "USDT", "perp", "pre_trading", "PENDING_TRADING",
         "https://www.binance.com/en/futures/MBLUSDT"),
    ]),
    ("coinbase", Coinbase, "spot", "coinbase", [
        ("BTC-USD", "BTC-USD", "BTC", "USD", "spot", "trading", "online",
         "https://www.coinbase.com/advanced-trade/spot/BTC-USD"),
        ("ETH-USDT", "ETH-USDT", "ETH", "USDT", "spot", "trading", "online",
         "https://www.coinbase.com/advanced-trade/spot/ETH-USDT"),
        ("XTZ-GBP", "XTZ-GBP", "XTZ", "GBP", "spot", "trading", "online",
         "https://www.coinbase.com/advanced-trade/spot/XTZ-GBP"),
        ("ARPA-USDT", "ARPA-USDT", "ARPA", "USDT", "spot", "delisted", "delisted:trading_disabled",
         "https://www.coinbase.com/advanced-trade/spot/ARPA-USDT"),
    ]),
    ("kraken", Kraken, "spot", "kraken", [
        # legacy asset codes (XXBT/ZUSD) and Kraken's XBT become BTC/USD
        ("XXBTZUSD", "BTC-USD", "BTC", "USD", "spot", "trading", "online", "https://pro.kraken.com/app/trade/btc-usd"),
        ("XETHXXBT", "ETH-BTC", "ETH", "BTC", "spot", "trading", "online", "https://pro.kraken.com/app/trade/eth-btc"),
        ("0GEUR", "0G-EUR", "0G", "EUR", "spot", "trading", "online", "https://pro.kraken.com/app/trade/0g-eur"),
        ("NOCKUSD", "NOCK-USD", "NOCK", "USD", "spot", "pre_trading", "post_only",
         "https://pro.kraken.com/app/trade/nock-usd"),
    ]),
    ("okx_spot", Okx, "spot", "okx", [
        ("BTC-USDT", "BTC-USDT", "BTC", "USDT", "spot", "trading", "live", "https://www.okx.com/trade-spot/btc-usdt"),
        ("ETH-USDT", "ETH-USDT", "ETH", "USDT", "spot", "trading", "live", "https://www.okx.com/trade-spot/eth-usdt"),
        # pre-open: baseCcy/quoteCcy are "" -> the pair comes from instId
        ("WLFI-USDT", "WLFI-USDT", "WLFI", "USDT", "spot", "pre_trading", "preopen",
         "https://www.okx.com/trade-spot/wlfi-usdt"),
    ]),
    ("okx_swap", Okx, "perp", "okx_swap", [
        ("BTC-USDT-SWAP", "BTC-USDT", "BTC", "USDT", "perp", "trading", "live",
         "https://www.okx.com/trade-swap/btc-usdt-swap"),
        # inverse: ctValCcy USD / settleCcy BTC would read USD-BTC; instFamily/uly say BTC-USD
        ("BTC-USD-SWAP", "BTC-USD", "BTC", "USD", "perp", "trading", "live",
         "https://www.okx.com/trade-swap/btc-usd-swap"),
        ("JP225-USDT-SWAP", "JP225-USDT", "JP225", "USDT", "perp", "pre_trading", "preopen",
         "https://www.okx.com/trade-swap/jp225-usdt-swap"),
    ]),
    ("bybit_spot", Bybit, "spot", "bybit", [
        ("BTCUSDT", "BTC-USDT", "BTC", "USDT", "spot", "trading", "Trading", "https://www.bybit.com/trade/spot/BTC/USDT"),
        ("ETHUSDT", "ETH-USDT", "ETH", "USDT", "spot", "trading", "Trading", "https://www.bybit.com/trade/spot/ETH/USDT"),
        ("MNTUSDT", "MNT-USDT", "MNT", "USDT", "spot", "trading", "Trading", "https://www.bybit.com/trade/spot/MNT/USDT"),
    ]),
    ("bybit_linear", Bybit, "perp", "bybit_linear", [
        ("BTCUSDT", "BTC-USDT", "BTC", "USDT", "perp", "trading", "Trading", "https://www.bybit.com/trade/usdt/BTCUSDT"),
        ("ETHUSDT", "ETH-USDT", "ETH", "USDT", "perp", "trading", "Trading", "https://www.bybit.com/trade/usdt/ETHUSDT"),
        ("BIOUSDT", "BIO-USDT", "BIO", "USDT", "perp", "pre_trading", "PreLaunch",
         "https://www.bybit.com/trade/usdt/BIOUSDT"),
    ]),
    ("kucoin", kucoin, "spot", "kucoin", [
        ("BTC-USDT", "BTC-USDT", "BTC", "USDT", "spot", "trading", "enableTrading=true",
         "https://www.kucoin.com/trade/BTC-USDT"),
        ("ETH-USDT", "ETH-USDT", "ETH", "USDT", "spot", "trading", "enableTrading=true",
         "https://www.kucoin.com/trade/ETH-USDT"),
        ("EOS-ETH", "EOS-ETH", "EOS", "ETH", "spot", "halted", "enableTrading=false",
         "https://www.kucoin.com/trade/EOS-ETH"),
        # call auction running, tradingStartTime still ahead
        ("WLFI-USDT", "WLFI-USDT", "WLFI", "USDT", "spot", "pre_trading", "enableTrading=true,callauction",
         "https://www.kucoin.com/trade/WLFI-USDT"),
    ]),
]


@pytest.mark.parametrize("factory,market,fixture,expected",
                         [c[1:] for c in FIXTURE_CASES], ids=[c[0] for c in FIXTURE_CASES])
def test_recorded_bodies_every_row(factory, market: str, fixture: str, expected) -> None:
    got = factory().parse_instruments(market, body(fixture))
    assert rows(got) == expected
    assert got.rejected == 0
    # what the runtime sends on: exactly the fields the publisher checks
    assert got[0].to_wire() == dict(zip(("symbol", "base", "quote", "market", "status", "raw_status", "url"),
                                        expected[0][1:]))


# ---- requests and declared limits ---------------------------------------------------------------

REQUEST_CASES = [
    (Binance, [("spot", "https://api.binance.com/api/v3/exchangeInfo", 20),
               ("perp", "https://fapi.binance.com/fapi/v1/exchangeInfo", 1)]),
    (Coinbase, [("spot", "https://api.exchange.coinbase.com/products", 1)]),
    (Kraken, [("spot", "https://api.kraken.com/0/public/AssetPairs", 1)]),
    (Okx, [("spot", "https://www.okx.com/api/v5/public/instruments?instType=SPOT", 1),
           ("perp", "https://www.okx.com/api/v5/public/instruments?instType=SWAP", 1)]),
    (Bybit, [("spot", "https://api.bybit.com/v5/market/instruments-info?category=spot", 1),
             ("perp", "https://api.bybit.com/v5/market/instruments-info?category=linear&limit=1000", 1),
             ("perp", "https://api.bybit.com/v5/market/instruments-info?category=linear&limit=1000&status=PreLaunch", 1),
             ("perp", "https://api.bybit.com/v5/market/instruments-info?category=linear&limit=1000&status=Delivering", 1)]),
    (Kucoin, [("spot", "https://api.kucoin.com/api/v2/symbols", 4)]),
]


@pytest.mark.parametrize("cls,expected", REQUEST_CASES, ids=lambda x: getattr(x, "__name__", ""))
def test_instruments_requests_are_the_documented_urls(cls, expected) -> None:
    assert [(r.market, r.url, r.weight) for r in cls().instruments_requests()] == expected


def test_declared_limits_and_capabilities() -> None:
    declared = {
        cls.name: (cls.rest_weight_limit, cls.rest_weight_window, cls.rest_used_weight_header,
                   dict(cls.rest_ban_statuses), cls.supports_trades)
        for cls in (Binance, Coinbase, Kraken, Okx, Bybit, Kucoin)
    }
    assert declared == {
        "binance": (6000, 60.0, "X-MBX-USED-WEIGHT-1M", {418: 120.0}, True),
        "coinbase": (10, 1.0, None, {}, False),
        "kraken": (10, 10.0, None, {}, False),
        "okx": (20, 2.0, None, {}, False),
        "bybit": (600, 5.0, None, {403: 600.0}, False),
        "kucoin": (2000, 30.0, None, {}, False),
    }
    # the spot-only class keeps its single request (test_binance.py relies on it)
    assert [r.market for r in BinanceSpot().instruments_requests()] == ["spot"]
    assert ExchangeAdapter.rest_ban_statuses == {}


# ---- error envelopes and wrong shapes -----------------------------------------------------------

ERROR_CASES = [
    (Binance, "perp", {"code": -1003, "msg": "Too many requests; current limit is 2400"}),
    (Binance, "perp", {"symbols": {}}),
    (Binance, "perp", {"futuresType": "COIN_MARGINED", "symbols": []}),  # a dapi body routed here
    (Coinbase, "spot", {"message": "Too many requests"}),
    (Coinbase, "spot", None),
    (Kraken, "spot", {"error": ["EAPI:Rate limit exceeded"]}),
    (Kraken, "spot", {"error": ["EService:Unavailable"], "result": {}}),
    (Kraken, "spot", {"error": [], "result": []}),  # result must be keyed by pair
    (Kraken, "spot", [1, 2]),
    (Okx, "spot", {"code": "50011", "msg": "Too Many Requests", "data": []}),
    (Okx, "perp", {"code": 0, "msg": "", "data": []}),  # code is a string; 0 is not "0"
    (Okx, "spot", {"code": "0", "msg": "", "data": {}}),
    (Bybit, "spot", {"retCode": 10006, "retMsg": "Too many visits!", "result": {}, "retExtInfo": {}, "time": 1}),
    (Bybit, "perp", {"retCode": 10001, "retMsg": "params error", "result": {}}),
    (Bybit, "perp", {"retCode": 0, "retMsg": "OK", "result": {"category": "linear"}}),
    (Bybit, "perp", {"retCode": 0, "retMsg": "OK", "result": {"category": "spot", "list": []}}),  # wrong category
    (Bybit, "spot", {"retCode": "0", "retMsg": "OK", "result": {"category": "spot", "list": []}}),
    (Bybit, "perp", {"retCode": 0, "result": {"category": "linear", "list": [], "nextPageCursor": 7}}),
    (Bybit, "perp", {"retCode": 0, "result": {"category": "linear", "list": [], "nextPageCursor": "x" * 600}}),
    (Bybit, "perp", {"retCode": 0, "result": {"category": "linear", "list": [], "nextPageCursor": "a\nb"}}),
    (Kucoin, "spot", {"code": "429000", "msg": "Too many requests"}),
    (Kucoin, "spot", {"code": 200000, "data": []}),
    (Kucoin, "spot", {"code": "200000", "data": None}),
    (Kucoin, "spot", "garbage"),
]


@pytest.mark.parametrize("cls,market,bad", ERROR_CASES)
def test_error_envelopes_raise_format_error(cls, market: str, bad: Any) -> None:
    with pytest.raises(InstrumentsFormatError):
        cls().parse_instruments(market, bad)


def test_format_error_text_is_one_bounded_line() -> None:
    with pytest.raises(InstrumentsFormatError) as info:
        Okx().parse_instruments("spot", {"code": "50011", "msg": "Too Many Requests\n" + "x" * 5000, "data": []})
    assert str(info.value).startswith("okx error 50011: Too Many Requests") and len(str(info.value)) < 300


# ---- hostile names ------------------------------------------------------------------------------

HOSTILE_NAMES = ["*", "BTC USDT", "BTC\nUSDT", "{BTC}", "A" * 10_000, "ＢＴＣ-USDT", "", None, 123, ["BTC"]]


def _mutate(row: dict, path: str, value: Any) -> dict:
    row = copy.deepcopy(row)
    row[path] = value
    return row


def _wrap_list(envelope: Any, rows_: list, setter: Callable[[Any, list], None]) -> Any:
    envelope = copy.deepcopy(envelope)
    setter(envelope, rows_)
    return envelope


# (adapter, market, fixture, function: body -> its rows list, function: (body, rows) -> None, name key)
LIST_ACCESS = {
    "binance_futures": (Binance, "perp", lambda b: b["symbols"], lambda b, r: b.__setitem__("symbols", r), "symbol"),
    "coinbase": (Coinbase, "spot", lambda b: b, None, "id"),
    "okx": (Okx, "spot", lambda b: b["data"], lambda b, r: b.__setitem__("data", r), "instId"),
    "okx_swap": (Okx, "perp", lambda b: b["data"], lambda b, r: b.__setitem__("data", r), "instId"),
    "bybit": (Bybit, "spot", lambda b: b["result"]["list"], lambda b, r: b["result"].__setitem__("list", r), "symbol"),
    "bybit_linear": (Bybit, "perp", lambda b: b["result"]["list"],
                     lambda b, r: b["result"].__setitem__("list", r), "symbol"),
    "kucoin": (kucoin, "spot", lambda b: b["data"], lambda b, r: b.__setitem__("data", r), "symbol"),
}


def _with_rows(fixture: str, new_rows: list) -> Any:
    _, _, _, setter, _ = LIST_ACCESS[fixture]
    if setter is None:
        return new_rows
    return _wrap_list(body(fixture), new_rows, setter)


@pytest.mark.parametrize("fixture", list(LIST_ACCESS))
@pytest.mark.parametrize("name", HOSTILE_NAMES, ids=lambda n: repr(n)[:12])
def test_hostile_native_names_rejected_and_counted(fixture: str, name: Any) -> None:
    factory, market, get_rows, _, key = LIST_ACCESS[fixture]
    good = get_rows(body(fixture))[0]
    bad = _mutate(good, key, name)
    got = factory().parse_instruments(market, _with_rows(fixture, [bad, good, "not a row", None]))
    assert [i.native_symbol for i in got] == [good[key]]
    assert got.rejected == 3


def test_kraken_hostile_keys_and_rows_rejected_and_counted() -> None:
    b = body("kraken")
    good = b["result"]["XXBTZUSD"]
    b["result"] = {
        "XXBTZUSD": good,
        "BAD KEY": good,
        "A" * 10_000: good,
        "ＸＢＴ": good,
        "NOSTATUS": {k: v for k, v in good.items() if k != "status"},
        "BADWS": _mutate(good, "wsname", "XBT/USD/EUR"),
        "UNIWS": _mutate(good, "wsname", "ß/USD"),  # str.upper() would make it "SS"
        "STARWS": _mutate(good, "wsname", "*/USD"),
        "BADSTATUS": _mutate(good, "status", "online; DROP"),
        "NOTAROW": [1],
    }
    got = Kraken().parse_instruments("spot", b)
    assert [i.native_symbol for i in got] == ["XXBTZUSD"] and got.rejected == 9


@pytest.mark.parametrize("field,value", [
    ("baseAsset", "B TC"), ("quoteAsset", "*"), ("baseAsset", None), ("status", "TRADING\n"),
    ("status", 1), ("baseAsset", "ETH"),  # name and parts disagree
    ("contractType", ["PERPETUAL"]),
])
def test_binance_futures_bad_parts_rejected(field: str, value: Any) -> None:
    b = body("binance_futures")
    b["symbols"][0][field] = value
    got = Binance().parse_instruments("perp", b)
    assert [i.native_symbol for i in got] == ["TONUSDT", "MBLUSDT"] and got.rejected == 1


@pytest.mark.parametrize("fixture,field,value", [
    ("okx", "baseCcy", "ETH"),            # filled and different from instId
    ("okx", "instType", "SWAP"),          # a swap row in the spot list
    ("okx", "state", "live!"),
    ("okx", "instId", "BTC-USDT-EXTRA"),
    ("okx_swap", "instFamily", "ETH-USDT"),
    ("okx_swap", "uly", 5),
    ("okx_swap", "instId", "BTC-USDT"),   # not a swap name
    ("bybit", "baseCoin", "ETH"),
    ("bybit", "quoteCoin", "US DT"),
    ("bybit_linear", "status", {"x": 1}),
    ("kucoin", "quoteCurrency", "BTC"),
    ("kucoin", "enableTrading", "true"),
    ("kucoin", "tradingStartTime", "1740474000000"),
    ("kucoin", "tradingStartTime", 10**20),
    ("kucoin", "callauctionIsEnabled", 1),
])
def test_rows_whose_parts_cannot_be_trusted_are_rejected(fixture: str, field: str, value: Any) -> None:
    factory, market, get_rows, _, key = LIST_ACCESS[fixture]
    original = get_rows(body(fixture))
    bad = _mutate(original[0], field, value)
    got = factory().parse_instruments(market, _with_rows(fixture, [bad, *original[1:]]))
    assert [i.native_symbol for i in got] == [r[key] for r in original[1:]]
    assert got.rejected == 1


# ---- per-exchange status maps and special rows --------------------------------------------------

@pytest.mark.parametrize("raw,status", [
    ("PENDING_TRADING", "pre_trading"), ("TRADING", "trading"), ("PRE_SETTLE", "halted"), ("SETTLING", "halted"),
    ("PRE_DELIVERING", "halted"), ("DELIVERING", "halted"), ("BREAK", "halted"), ("DELIVERED", "delisted"),
    ("CLOSE", "delisted"), ("SOMETHING_NEW", "halted"),
])
def test_binance_futures_status_map(raw: str, status: str) -> None:
    b = body("binance_futures")
    b["symbols"] = [dict(b["symbols"][0], status=raw)]
    [info] = Binance().parse_instruments("perp", b)
    assert (info.status, info.raw_status) == (status, raw)


def test_binance_futures_contract_status_field_of_older_bodies() -> None:
    b = body("binance_futures")
    row = {k: v for k, v in b["symbols"][0].items() if k != "status"}
    b["symbols"] = [dict(row, contractStatus="PENDING_TRADING")]
    [info] = Binance().parse_instruments("perp", b)
    assert (info.status, info.raw_status) == ("pre_trading", "PENDING_TRADING")


def test_binance_futures_dated_contracts_belong_to_future_market() -> None:
    b = body("binance_futures")
    btc = b["symbols"][0]
    b["symbols"].append(dict(btc, symbol="BTCUSDT_260925", contractType="CURRENT_QUARTER"))
    # a dated contract not listed yet: contractType "" but the name says it is dated
    b["symbols"].append(dict(btc, symbol="BTCUSDT_261225", contractType="", status="PENDING_TRADING"))
    b["symbols"].append(dict(btc, symbol="XAUUSDT", baseAsset="XAU", contractType="TRADIFI_PERPETUAL"))
    perp = Binance().parse_instruments("perp", b)
    assert [i.native_symbol for i in perp] == ["BTCUSDT", "TONUSDT", "MBLUSDT", "XAUUSDT"]
    assert perp.rejected == 0  # the dated ones are another market, not bad rows
    future = Binance().parse_instruments("future", b)
    assert rows(future) == [
        ("BTCUSDT_260925", "BTC-USDT", "BTC", "USDT", "future", "trading", "TRADING",
         "https://www.binance.com/en/futures/BTCUSDT_260925"),
        ("BTCUSDT_261225", "BTC-USDT", "BTC", "USDT", "future", "pre_trading", "PENDING_TRADING",
         "https://www.binance.com/en/futures/BTCUSDT_261225"),
    ]


def test_binance_spot_parsing_unchanged_by_futures() -> None:
    got = Binance().parse_instruments("spot", body("binance"))
    assert [(i.native_symbol, i.market, i.url) for i in got][0] == \
        ("BTCUSDT", "spot", "https://www.binance.com/en/trade/BTC_USDT")
    # a futures body sent to the spot parser is read as spot rows, never as perps
    assert all(i.market == "spot" for i in Binance().parse_instruments("spot", body("binance_futures")))


@pytest.mark.parametrize("status_,flags,expected", [
    ("online", {}, ("trading", "online")),
    ("online", {"limit_only": True}, ("trading", "online:limit_only")),
    ("online", {"post_only": True}, ("pre_trading", "online:post_only")),
    ("online", {"auction_mode": True}, ("pre_trading", "online:auction_mode")),
    ("online", {"cancel_only": True}, ("halted", "online:cancel_only")),
    ("online", {"trading_disabled": True}, ("halted", "online:trading_disabled")),
    ("online", {"trading_disabled": True, "auction_mode": True}, ("halted", "online:trading_disabled")),
    ("offline", {}, ("halted", "offline")),
    ("internal", {}, ("halted", "internal")),
    ("delisted", {"trading_disabled": True}, ("delisted", "delisted:trading_disabled")),
    ("brand_new", {}, ("halted", "brand_new")),
])
def test_coinbase_status_and_flags(status_: str, flags: dict, expected: tuple[str, str]) -> None:
    row = dict(body("coinbase")[0], status=status_, **flags)
    [info] = Coinbase().parse_instruments("spot", [row])
    assert (info.status, info.raw_status) == expected


def test_coinbase_pair_from_id_not_base_currency() -> None:
    # ccxt splits id for rows like BTCAUCTION-USD whose base_currency says BTC: "BTC listed" would be false
    row = dict(body("coinbase")[0], id="BTCAUCTION-USD", base_currency="BTC")
    bad_flag = dict(body("coinbase")[1], post_only="yes")
    three_parts = dict(body("coinbase")[1], id="A-B-C")
    got = Coinbase().parse_instruments("spot", [row, bad_flag, three_parts])
    assert [(i.native_symbol, i.symbol, i.base) for i in got] == [("BTCAUCTION-USD", "BTCAUCTION-USD", "BTCAUCTION")]
    assert got.rejected == 2


@pytest.mark.parametrize("raw,status", [
    ("online", "trading"), ("limit_only", "trading"), ("post_only", "pre_trading"),
    ("work_in_progress", "pre_trading"), ("cancel_only", "halted"), ("reduce_only", "halted"),
    ("maintenance", "halted"), ("delisted", "delisted"), ("brand_new", "halted"),
])
def test_kraken_status_map(raw: str, status: str) -> None:
    b = {"error": [], "result": {"XXBTZUSD": dict(body("kraken")["result"]["XXBTZUSD"], status=raw)}}
    [info] = Kraken().parse_instruments("spot", b)
    assert (info.status, info.raw_status) == (status, raw)


def test_kraken_without_wsname_uses_legacy_asset_codes() -> None:
    good = body("kraken")["result"]
    b = {"error": [], "result": {
        "XXBTZUSD": {k: v for k, v in good["XXBTZUSD"].items() if k != "wsname"},
        "XXDGZEUR": dict({k: v for k, v in good["0GEUR"].items() if k != "wsname"}, base="XXDG"),
        "0GEUR": {k: v for k, v in good["0GEUR"].items() if k != "wsname"},
        "XDGUSD": dict(good["0GEUR"], wsname="XDG/USD"),
    }}
    got = Kraken().parse_instruments("spot", b)
    assert [(i.native_symbol, i.symbol) for i in got] == [
        ("XXBTZUSD", "BTC-USD"), ("XXDGZEUR", "DOGE-EUR"), ("0GEUR", "0G-EUR"), ("XDGUSD", "DOGE-USD")]


@pytest.mark.parametrize("raw,status", [
    ("live", "trading"), ("preopen", "pre_trading"), ("post_only", "pre_trading"), ("suspend", "halted"),
    ("test", "halted"), ("rebase", "halted"), ("settling", "halted"), ("brand_new", "halted"),
])
def test_okx_status_map(raw: str, status: str) -> None:
    b = body("okx_swap")
    b["data"] = [dict(b["data"][0], state=raw)]
    [info] = Okx().parse_instruments("perp", b)
    assert (info.status, info.raw_status) == (status, raw)


@pytest.mark.parametrize("raw,status", [
    ("PreLaunch", "pre_trading"), ("Trading", "trading"), ("Settling", "halted"), ("Delivering", "halted"),
    ("Closed", "delisted"), ("BrandNew", "halted"),
])
def test_bybit_status_map(raw: str, status: str) -> None:
    b = body("bybit_linear")
    b["result"]["list"] = [dict(b["result"]["list"][0], status=raw)]
    [info] = Bybit().parse_instruments("perp", b)
    assert (info.status, info.raw_status) == (status, raw)


def test_bybit_linear_dated_futures_skipped_usdc_perps_kept() -> None:
    b = body("bybit_linear")
    btc = b["result"]["list"][0]
    b["result"]["list"] += [
        dict(btc, symbol="BTCUSDT-26DEC25", contractType="LinearFutures"),
        dict(btc, symbol="BTCPERP", quoteCoin="USDC", settleCoin="USDC"),
        dict(btc, symbol="NEWUSDT", baseCoin="NEW", contractType="SomethingNew"),
        dict(btc, symbol="ODDUSDT", baseCoin="ODD", contractType=["x"]),  # unhashable: read as perp, no crash
    ]
    got = Bybit().parse_instruments("perp", b)
    assert [(i.native_symbol, i.symbol, i.url) for i in got][3:] == [
        ("BTCPERP", "BTC-USDC", "https://www.bybit.com/trade/futures/usdc/BTCPERP"),
        ("NEWUSDT", "NEW-USDT", "https://www.bybit.com/trade/usdt/NEWUSDT"),
        ("ODDUSDT", "ODD-USDT", "https://www.bybit.com/trade/usdt/ODDUSDT"),
    ]
    assert got.rejected == 0


@pytest.mark.parametrize("enabled,start,auction,now,expected", [
    (True, None, False, KUCOIN_NOW, ("trading", "enableTrading=true")),
    (False, None, False, KUCOIN_NOW, ("halted", "enableTrading=false")),
    (True, WLFI_START, True, WLFI_START - 1, ("pre_trading", "enableTrading=true,callauction")),
    (True, WLFI_START, True, WLFI_START, ("trading", "enableTrading=true,callauction")),
    (False, WLFI_START, False, WLFI_START - 1, ("pre_trading", "enableTrading=false")),
    (False, WLFI_START, False, WLFI_START + 1, ("halted", "enableTrading=false")),
    (True, None, True, KUCOIN_NOW, ("trading", "enableTrading=true,callauction")),
])
def test_kucoin_status_from_flags_and_start_time(enabled, start, auction, now, expected) -> None:
    b = body("kucoin")
    b["data"] = [dict(b["data"][3], enableTrading=enabled, tradingStartTime=start, callauctionIsEnabled=auction)]
    [info] = kucoin(now).parse_instruments("spot", b)
    assert (info.status, info.raw_status) == expected


def test_kucoin_wlfi_opens_once_its_start_time_passes() -> None:
    before = {i.native_symbol: i.status for i in kucoin(WLFI_START - 60_000).parse_instruments("spot", body("kucoin"))}
    after = {i.native_symbol: i.status for i in kucoin(WLFI_START + 1).parse_instruments("spot", body("kucoin"))}
    assert before["WLFI-USDT"] == "pre_trading" and after["WLFI-USDT"] == "trading"
    assert Kucoin.clock() == pytest.approx(time.time() * 1000, abs=60_000)  # the real clock by default


def test_kucoin_renamed_symbol_keeps_native_takes_current_base() -> None:
    b = body("kucoin")
    b["data"] = [dict(b["data"][0], symbol="BCHSV-USDT", name="BSV-USDT", baseCurrency="BSV")]
    [info] = kucoin().parse_instruments("spot", b)
    assert (info.native_symbol, info.symbol, info.url) == ("BCHSV-USDT", "BSV-USDT",
                                                          "https://www.kucoin.com/trade/BCHSV-USDT")


# ---- Bybit pagination ---------------------------------------------------------------------------

def _linear(rows_: list, cursor: str | None) -> dict:
    result: dict[str, Any] = {"category": "linear", "list": rows_}
    if cursor is not None:
        result["nextPageCursor"] = cursor
    return {"retCode": 0, "retMsg": "OK", "result": result, "retExtInfo": {}, "time": 1}


def test_bybit_next_page_carries_the_cursor_and_keeps_the_query() -> None:
    adapter = Bybit()
    _, linear, prelaunch, _delivering = adapter.instruments_requests()
    rec = body("bybit_linear")
    token = rec["result"]["nextPageCursor"]  # "first%3DBTCUSDT%26last%3DBIOUSDT", opaque
    nxt = adapter.next_instruments_page(prelaunch, rec)
    assert nxt is not None and (nxt.market, nxt.weight) == ("perp", 1)
    parts = urlsplit(nxt.url)
    assert (parts.scheme, parts.netloc, parts.path) == ("https", "api.bybit.com", "/v5/market/instruments-info")
    # the server decodes the query once and gets the token back exactly as it sent it
    assert parse_qs(parts.query) == {"category": ["linear"], "limit": ["1000"], "status": ["PreLaunch"],
                                     "cursor": [token]}
    # the page after that replaces the cursor rather than adding a second one
    nxt2 = adapter.next_instruments_page(nxt, _linear([], "page3"))
    assert nxt2 is not None and parse_qs(urlsplit(nxt2.url).query)["cursor"] == ["page3"]
    plain = adapter.next_instruments_page(linear, rec)
    assert plain is not None and parse_qs(urlsplit(plain.url).query) == {
        "category": ["linear"], "limit": ["1000"], "cursor": [token]}


@pytest.mark.parametrize("page", [_linear([], ""), _linear([], None), {"retCode": 0, "result": {"list": []}}])
def test_bybit_no_cursor_means_last_page(page: dict) -> None:
    adapter = Bybit()
    _, linear, *_ = adapter.instruments_requests()
    assert adapter.next_instruments_page(linear, page) is None


def test_bybit_spot_never_pages() -> None:
    adapter = Bybit()
    spot = adapter.instruments_requests()[0]
    assert adapter.next_instruments_page(spot, _linear([], "abc")) is None


def test_other_adapters_do_not_page() -> None:
    for adapter in (Binance(), Coinbase(), Kraken(), Okx(), kucoin()):
        for req in adapter.instruments_requests():
            assert adapter.next_instruments_page(req, {"result": {"nextPageCursor": "x"}}) is None


class _FakeChannel:
    def __init__(self) -> None:
        self.frames: list[tuple[str, bool, str, dict]] = []

    def send_instruments(self, market: str, full: bool, source: str, detected_at: int, instruments: dict) -> None:
        self.frames.append((market, full, source, instruments))


def _bybit_worker(tmp_path, server: RestServer) -> Worker:
    settings = Settings(run_dir=tmp_path, node_id="T",
                        exchanges={"bybit": {"enabled": True, "listings": True, "rest_url": server.base}})
    worker = Worker("bybit", settings)
    worker.adapter = Bybit()
    assert worker.cfg is not None
    worker.rest = RestClient("bybit", worker.cfg, weight_limit=Bybit.rest_weight_limit,
                             weight_window=Bybit.rest_weight_window, ban_statuses=Bybit.rest_ban_statuses,
                             retry_initial=0.01, retry_max=0.02)
    worker.channel = _FakeChannel()  # type: ignore[assignment]
    return worker


def test_bybit_pages_and_prelaunch_merge_into_one_perp_snapshot(tmp_path) -> None:
    rec = body("bybit_linear")
    btc, eth, bio = rec["result"]["list"]
    token = rec["result"]["nextPageCursor"]

    async def behavior(request: web.Request, n: int) -> web.Response:
        q = request.query
        assert q["category"] == "linear" and q["limit"] == "1000"
        if q.get("status") == "PreLaunch":
            return ok(json.dumps(_linear([bio], "")))
        if q.get("status") == "Delivering":  # halted contracts: none right now
            return ok(json.dumps(_linear([], "")))
        if "cursor" not in q:
            return ok(json.dumps(_linear([btc], token)))
        assert q["cursor"] == token  # the token came back exactly
        return ok(json.dumps(_linear([eth], "")))

    async def main() -> None:
        server = await RestServer(behavior).start()
        worker = _bybit_worker(tmp_path, server)
        try:
            requests = [r for r in worker.adapter.instruments_requests() if r.market == "perp"]
            assert await worker.poll_market("perp", requests) is True
        finally:
            await worker.rest.close()
            await server.stop()
        paths = [p for _, _, p in server.requests]
        assert len(paths) == 4 and sum("cursor=" in p for p in paths) == 1
        [(market, full, source, instruments)] = worker.channel.frames
        assert (market, full, source) == ("perp", True, "rest_bybit")
        assert {k: v["status"] for k, v in instruments.items()} == {
            "BTCUSDT": "trading", "ETHUSDT": "trading", "BIOUSDT": "pre_trading"}
        assert instruments["BIOUSDT"] == {"symbol": "BIO-USDT", "base": "BIO", "quote": "USDT", "market": "perp",
                                          "status": "pre_trading", "raw_status": "PreLaunch",
                                          "url": "https://www.bybit.com/trade/usdt/BIOUSDT"}

    run(main())


def test_bybit_failed_page_means_no_snapshot(tmp_path) -> None:
    rec = body("bybit_linear")
    btc = rec["result"]["list"][0]

    async def behavior(request: web.Request, n: int) -> web.Response:
        if "cursor" in request.query:
            return ok(json.dumps({"retCode": 10006, "retMsg": "Too many visits!", "result": {}}))
        return ok(json.dumps(_linear([btc], "next")))

    async def main() -> None:
        server = await RestServer(behavior).start()
        worker = _bybit_worker(tmp_path, server)
        try:
            requests = [r for r in worker.adapter.instruments_requests() if r.market == "perp"]
            assert await worker.poll_market("perp", requests) is False
        finally:
            await worker.rest.close()
            await server.stop()
        assert worker.channel.frames == []  # half a list would look like delistings
        assert worker.poll_parse_errors == 1 and "10006" in (worker.last_error or "")

    run(main())


# ---- REST ban statuses (transport) --------------------------------------------------------------

URL = "https://api.bybit.com/v5/market/instruments-info?category=spot"


async def _client(server: RestServer, **kw: Any) -> RestClient:
    cfg = ExchangeSettings(rest_url=server.base, rest_timeout=2.0, rest_max_retries=3)
    return RestClient("x", cfg, retry_initial=0.01, retry_max=0.02, **kw)


def test_bybit_403_is_a_ban_for_ten_minutes_without_retry_after() -> None:
    async def behavior(request, n):
        return web.Response(status=403, text="access too frequent")

    async def main() -> None:
        server = await RestServer(behavior).start()
        client = await _client(server, ban_statuses=Bybit.rest_ban_statuses)
        try:
            with pytest.raises(RestBanned) as info:
                await client.get_json(URL)
            assert info.value.status == 403 and info.value.requested
            assert 599 <= info.value.until - time.monotonic() <= 600.5
            assert len(server.requests) == 1  # no retry
            with pytest.raises(RestBanned) as again:
                await client.get_json(URL)  # refused locally: nothing sent
            assert len(server.requests) == 1 and not again.value.requested
            assert "HTTP 403" in str(again.value) and again.value.status == 403
            assert client.bans == 1 and client.stats()["rest_bans"] == 1
        finally:
            await client.close()
            await server.stop()

    run(main())


def test_ban_status_honours_retry_after() -> None:
    async def behavior(request, n):
        return status(403, **{"Retry-After": "1"}) if n == 0 else ok()

    async def main() -> None:
        server = await RestServer(behavior).start()
        client = await _client(server, ban_statuses={403: 600.0})
        try:
            with pytest.raises(RestBanned):
                await client.get_json(URL)
            await asyncio.sleep(1.05)
            assert (await client.get_json(URL)).status == 200
            assert len(server.requests) == 2
        finally:
            await client.close()
            await server.stop()

    run(main())


@pytest.mark.parametrize("ban_statuses,code,banned", [
    (None, 418, True),          # the default keeps the original Binance rule
    (None, 403, False),
    ({418: 120.0}, 418, True),  # Binance's declaration
    ({418: 120.0}, 403, False),
    ({403: 600.0}, 418, False),  # Bybit's: a 418 there is an ordinary 4xx
    ({}, 418, False),
])
def test_which_statuses_ban(ban_statuses, code: int, banned: bool) -> None:
    async def behavior(request, n):
        return status(code)

    async def main() -> None:
        server = await RestServer(behavior).start()
        kw = {} if ban_statuses is None else {"ban_statuses": ban_statuses}
        client = await _client(server, **kw)
        try:
            with pytest.raises(RestBanned if banned else RestHttpError) as info:
                await client.get_json(URL)
            assert info.value.status == code
            assert len(server.requests) == 1
            assert client.bans == (1 if banned else 0)
            if banned:
                default = 120.0 if ban_statuses is None else ban_statuses[code]
                assert default - 1 <= info.value.until - time.monotonic() <= default + 0.5
        finally:
            await client.close()
            await server.stop()

    run(main())


def test_runtime_builds_the_rest_client_with_the_adapters_ban_statuses(tmp_path, monkeypatch) -> None:
    import workers.runtime as runtime

    built: list[dict] = []

    class Stop(Exception):
        pass

    def fake_client(exchange, cfg, **kw):
        built.append(kw)
        raise Stop

    class FakeLink:
        async def start(self, stats_fn, on_message=None):
            return None

    class FakeChannel:
        def __init__(self, *a, **kw):
            pass

        def start(self):
            return None

    monkeypatch.setattr(runtime, "RestClient", fake_client)
    monkeypatch.setattr(runtime, "PublisherChannel", FakeChannel)
    monkeypatch.setattr(runtime, "get_adapter", lambda name, symbols: Bybit(symbols))
    settings = Settings(run_dir=tmp_path, node_id="T", exchanges={"bybit": {"enabled": True, "listings": True}})
    with pytest.raises(Stop):
        asyncio.run(Worker("bybit", settings).run(FakeLink()))  # type: ignore[arg-type]
    assert built and built[0]["ban_statuses"] == {403: 600.0}
