"""Listing-detection adapters B (Gate.io, Bitget, HTX, MEXC, BingX, Phemex, WhiteBIT): pure parsing
of the recorded instrument lists (tests/fixtures/rest, see SOURCES.md), status maps, error
envelopes, hostile names, and the requests each adapter makes."""

from __future__ import annotations

import copy
from typing import Any, Callable

import orjson
import pytest

from tests.conftest import FIXTURES
from workers.exchanges.base import ExchangeAdapter, InstrumentsFormatError
from workers.exchanges.bingx import BingxSpot
from workers.exchanges.bitget import BitgetSpot
from workers.exchanges.gate import GateSpot
from workers.exchanges.htx import HtxSpot
from workers.exchanges.mexc import MexcSpot
from workers.exchanges.phemex import PhemexAdapter
from workers.exchanges.whitebit import WhitebitAdapter

REST = FIXTURES / "rest"


def load(name: str) -> Any:
    return orjson.loads((REST / f"{name}.json").read_bytes())


def row(symbol: str, base: str, quote: str, market: str, status: str, raw: str, url: str) -> dict[str, str]:
    return {"symbol": symbol, "base": base, "quote": quote, "market": market, "status": status,
            "raw_status": raw, "url": url}


# ---- every row of every recorded body, exactly ----

GATE = "https://www.gate.com/trade/"
BITGET = "https://www.bitget.com/spot/"
HTX = "https://www.htx.com/trade/"
MEXC = "https://www.mexc.com/exchange/"
BINGX = "https://bingx.com/en/spot/"
PHEMEX_SPOT = "https://phemex.com/spot/trade/"
PHEMEX_PERP = "https://phemex.com/futures/trade/"
WB_SPOT = "https://whitebit.com/trade/"
WB_PERP = "https://whitebit.com/futures/"

RECORDED: list[tuple[type[ExchangeAdapter], str, str, dict[str, dict[str, str]]]] = [
    (GateSpot, "gate", "spot", {
        "BTC_USDT": row("BTC-USDT", "BTC", "USDT", "spot", "trading", "tradable", GATE + "BTC_USDT"),
        "ETH_USDT": row("ETH-USDT", "ETH", "USDT", "spot", "trading", "tradable", GATE + "ETH_USDT"),
        # untradable with no start time and no delisting time: a halt
        "POOLX_USDT": row("POOLX-USDT", "POOLX", "USDT", "spot", "halted", "untradable", GATE + "POOLX_USDT"),
        # sell-only (winding down): not full trading
        "MAG7XON_USDT": row("MAG7XON-USDT", "MAG7XON", "USDT", "spot", "halted", "sellable", GATE + "MAG7XON_USDT"),
    }),
    (BitgetSpot, "bitget", "spot", {
        "BTCUSDT": row("BTC-USDT", "BTC", "USDT", "spot", "trading", "online", BITGET + "BTCUSDT"),
        "ETHUSDT": row("ETH-USDT", "ETH", "USDT", "spot", "trading", "online", BITGET + "ETHUSDT"),
        "ADAUSDT": row("ADA-USDT", "ADA", "USDT", "spot", "trading", "online", BITGET + "ADAUSDT"),
        "WLFIUSDT": row("WLFI-USDT", "WLFI", "USDT", "spot", "pre_trading", "gray", BITGET + "WLFIUSDT"),
        "LUNAUSDT": row("LUNA-USDT", "LUNA", "USDT", "spot", "halted", "halt", BITGET + "LUNAUSDT"),
    }),
    (HtxSpot, "htx_v2", "spot", {
        "ethusdt": row("ETH-USDT", "ETH", "USDT", "spot", "trading", "online", HTX + "eth_usdt"),
        "btcusdt": row("BTC-USDT", "BTC", "USDT", "spot", "trading", "online", HTX + "btc_usdt"),
        "wlfiusdt": row("WLFI-USDT", "WLFI", "USDT", "spot", "pre_trading", "pre-online", HTX + "wlfi_usdt"),
    }),
    # the deprecated v1 body still parses (rows of the v1 shape)
    (HtxSpot, "htx", "spot", {
        "btcusdt": row("BTC-USDT", "BTC", "USDT", "spot", "trading", "online", HTX + "btc_usdt"),
        "ethusdt": row("ETH-USDT", "ETH", "USDT", "spot", "trading", "online", HTX + "eth_usdt"),
        "stketh": row("STK-ETH", "STK", "ETH", "spot", "delisted", "offline", HTX + "stk_eth"),
    }),
    (MexcSpot, "mexc", "spot", {
        "BTCUSDT": row("BTC-USDT", "BTC", "USDT", "spot", "trading", "1", MEXC + "BTC_USDT"),
        "METALUSDT": row("METAL-USDT", "METAL", "USDT", "spot", "trading", "1", MEXC + "METAL_USDT"),
        "LTCUSDT": row("LTC-USDT", "LTC", "USDT", "spot", "halted", "2", MEXC + "LTC_USDT"),
    }),
    (BingxSpot, "bingx", "spot", {
        "BTC-USDT": row("BTC-USDT", "BTC", "USDT", "spot", "trading", "1", BINGX + "BTCUSDT"),
        "SOL-USDT": row("SOL-USDT", "SOL", "USDT", "spot", "trading", "1", BINGX + "SOLUSDT"),
        "GEAR-USDT": row("GEAR-USDT", "GEAR", "USDT", "spot", "trading", "1", BINGX + "GEARUSDT"),
        "WLFI-USDT": row("WLFI-USDT", "WLFI", "USDT", "spot", "pre_trading", "5", BINGX + "WLFIUSDT"),
        "LUNA-USDT": row("LUNA-USDT", "LUNA", "USDT", "spot", "halted", "25", BINGX + "LUNAUSDT"),
    }),
    (PhemexAdapter, "phemex", "spot", {
        "sBTCUSDT": row("BTC-USDT", "BTC", "USDT", "spot", "trading", "Listed", PHEMEX_SPOT + "BTCUSDT"),
        "sETHUSDT": row("ETH-USDT", "ETH", "USDT", "spot", "trading", "Listed", PHEMEX_SPOT + "ETHUSDT"),
        "sLUNAUSDT": row("LUNA-USDT", "LUNA", "USDT", "spot", "delisted", "Delisted", PHEMEX_SPOT + "LUNAUSDT"),
    }),
    (PhemexAdapter, "phemex", "perp", {
        # inverse: no baseCurrency, underlying "USD" == quote -> base is the settle currency
        "BTCUSD": row("BTC-USD", "BTC", "USD", "perp", "trading", "Listed", PHEMEX_PERP + "BTCUSD"),
        # USDT-settled, from perpProductsV2
        "BTCUSDT": row("BTC-USDT", "BTC", "USDT", "perp", "trading", "Listed", PHEMEX_PERP + "BTCUSDT"),
    }),
    (WhitebitAdapter, "whitebit", "spot", {
        "BTC_USDT": row("BTC-USDT", "BTC", "USDT", "spot", "trading", "true", WB_SPOT + "BTC-USDT"),
        "ETH_USDT": row("ETH-USDT", "ETH", "USDT", "spot", "trading", "true", WB_SPOT + "ETH-USDT"),
        "SON_USD": row("SON-USD", "SON", "USD", "spot", "halted", "false", WB_SPOT + "SON-USD"),
    }),
    (WhitebitAdapter, "whitebit", "perp", {
        "BTC_PERP": row("BTC-USDT", "BTC", "USDT", "perp", "trading", "true", WB_PERP + "BTC_USDT"),
        "PEPE_PERP": row("PEPE-USDT", "PEPE", "USDT", "perp", "trading", "true", WB_PERP + "PEPE_USDT"),
    }),
]


@pytest.mark.parametrize("cls,fixture,market,expected", RECORDED,
                         ids=[f"{f}-{m}" for _, f, m, _ in RECORDED])
def test_recorded_bodies(cls: type[ExchangeAdapter], fixture: str, market: str,
                         expected: dict[str, dict[str, str]]) -> None:
    got = cls().parse_instruments(market, load(fixture))
    assert got.rejected == 0
    assert [i.native_symbol for i in got] == list(expected)  # body order kept, nothing extra
    assert {i.native_symbol: i.to_wire() for i in got} == expected


# ---- requests and limits ----

REQUESTS = [
    (GateSpot, [("spot", "https://api.gateio.ws/api/v4/spot/currency_pairs", 1)], 200, 10.0, {}),
    (BitgetSpot, [("spot", "https://api.bitget.com/api/v2/spot/public/symbols", 1)], 20, 1.0, {}),
    (HtxSpot, [("spot", "https://api.huobi.pro/v2/settings/common/symbols", 1)], 10, 1.0, {}),
    (MexcSpot, [("spot", "https://api.mexc.com/api/v3/exchangeInfo", 10)], 500, 10.0, {418: 120.0, 403: 600.0}),
    (BingxSpot, [("spot", "https://open-api.bingx.com/openApi/spot/v1/common/symbols", 1)], 1000, 60.0, {}),
    (PhemexAdapter, [("spot", "https://api.phemex.com/public/products", 1),
                     ("perp", "https://api.phemex.com/public/products", 1)], 5000, 300.0, {403: 300.0}),
    (WhitebitAdapter, [("spot", "https://whitebit.com/api/v4/public/markets", 1),
                       ("perp", "https://whitebit.com/api/v4/public/markets", 1)], 2000, 10.0, {}),
]


@pytest.mark.parametrize("cls,requests,limit,window,bans", REQUESTS, ids=[c[0].name for c in REQUESTS])
def test_instruments_requests_and_limits(cls: type[ExchangeAdapter], requests, limit: int, window: float,
                                         bans: dict[int, float]) -> None:
    adapter = cls()
    assert [(r.market, r.url, r.weight) for r in adapter.instruments_requests()] == requests
    assert (cls.rest_weight_limit, cls.rest_weight_window) == (limit, window)
    assert cls.rest_ban_statuses == bans
    assert cls.supports_trades is False
    # a recorded body's first request has no next page
    assert adapter.next_instruments_page(adapter.instruments_requests()[0], {}) is None


@pytest.mark.parametrize("cls,symbol,native", [
    (GateSpot, "BTC-USDT", "BTC_USDT"), (BitgetSpot, "BTC-USDT", "BTCUSDT"), (HtxSpot, "BTC-USDT", "btcusdt"),
    (MexcSpot, "BTC-USDT", "BTCUSDT"), (BingxSpot, "BTC-USDT", "BTC-USDT"), (PhemexAdapter, "BTC-USDT", "sBTCUSDT"),
    (WhitebitAdapter, "BTC-USDT", "BTC_USDT"),
], ids=lambda v: v.name if isinstance(v, type) else None)
def test_configured_symbols_do_not_break_construction(cls: type[ExchangeAdapter], symbol: str, native: str) -> None:
    # a user may list symbols for a listings-only exchange: building the adapter must still work
    adapter = cls([symbol])
    assert adapter.symbols == [symbol] and adapter.native_symbol(symbol) == native


# ---- status maps (constructed rows on each exchange's documented shape) ----

def gate_row(native: str = "NEW_USDT", base: Any = "NEW", quote: Any = "USDT", status: Any = "tradable",
             **extra: Any) -> dict:
    return {"id": native, "base": base, "quote": quote, "trade_status": status, "buy_start": 0, "sell_start": 0,
            **extra}


@pytest.mark.parametrize("status,extra,normalized", [
    ("tradable", {}, "trading"),
    ("untradable", {"buy_start": 1788926400}, "pre_trading"),
    ("untradable", {"sell_start": 1788926400}, "pre_trading"),
    ("untradable", {"sell_start": "1788926400"}, "pre_trading"),
    ("untradable", {"buy_start": 1788926400, "delisting_time": 1790000000}, "delisted"),
    ("untradable", {"delisting_time": 1790000000}, "delisted"),
    ("untradable", {}, "halted"),
    ("untradable", {"buy_start": True}, "halted"),       # a bool is not a time
    ("untradable", {"buy_start": -5}, "halted"),
    ("buyable", {}, "halted"),
    ("sellable", {}, "halted"),
    ("something_new", {}, "halted"),
    ("Paused-2", {}, "halted"),         # unexpected but safe text: kept, not trading
])
def test_gate_status_map(status: str, extra: dict, normalized: str) -> None:
    [info] = GateSpot().parse_instruments("spot", [gate_row(status=status, **extra)])
    assert (info.status, info.raw_status) == (normalized, status)


@pytest.mark.parametrize("raw,normalized", [
    ("online", "trading"), ("gray", "pre_trading"), ("halt", "halted"), ("offline", "delisted"),
    ("maintain", "halted"),
])
def test_bitget_status_map(raw: str, normalized: str) -> None:
    body = {"code": "00000", "msg": "success", "data": [
        {"symbol": "NEWUSDT", "baseCoin": "NEW", "quoteCoin": "USDT", "status": raw}]}
    [info] = BitgetSpot().parse_instruments("spot", body)
    assert (info.status, info.raw_status) == (normalized, raw)


@pytest.mark.parametrize("raw,normalized", [
    ("online", "trading"), ("pre-online", "pre_trading"), ("not-online", "pre_trading"), ("suspend", "halted"),
    ("fuse", "halted"), ("transfer-board", "halted"), ("offline", "delisted"), ("unknown", "halted"),
    ("brand-new", "halted"),
])
def test_htx_status_map(raw: str, normalized: str) -> None:
    body = {"status": "ok", "full": 1, "data": [{"sc": "newusdt", "bc": "new", "qc": "usdt", "state": raw}]}
    [info] = HtxSpot().parse_instruments("spot", body)
    assert (info.native_symbol, info.symbol, info.status, info.raw_status) == ("newusdt", "NEW-USDT", normalized, raw)


@pytest.mark.parametrize("raw,normalized,raw_out", [
    ("1", "trading", "1"), ("2", "halted", "2"), ("3", "delisted", "3"), ("ENABLED", "trading", "ENABLED"),
    ("4", "halted", "4"), (1, "trading", "1"), (3, "delisted", "3"),
])
def test_mexc_status_map(raw: Any, normalized: str, raw_out: str) -> None:
    body = {"symbols": [{"symbol": "NEWUSDT", "baseAsset": "NEW", "quoteAsset": "USDT", "status": raw,
                         "isSpotTradingAllowed": False}]}
    [info] = MexcSpot().parse_instruments("spot", body)
    # isSpotTradingAllowed is about API trading, not the listing state
    assert (info.status, info.raw_status) == (normalized, raw_out)


@pytest.mark.parametrize("raw,normalized", [
    (0, "delisted"), (1, "trading"), (5, "pre_trading"), (25, "halted"), (7, "halted"),
])
def test_bingx_status_map(raw: int, normalized: str) -> None:
    body = {"code": 0, "msg": "", "data": {"symbols": [{"symbol": "NEW-USDT", "status": raw}]}}
    [info] = BingxSpot().parse_instruments("spot", body)
    assert (info.status, info.raw_status) == (normalized, str(raw))


@pytest.mark.parametrize("raw,normalized", [
    ("Listed", "trading"), ("Delisted", "delisted"), ("PreListed", "halted"), ("Suspended", "halted"),
])
def test_phemex_status_map(raw: str, normalized: str) -> None:
    body = {"code": 0, "msg": "", "data": {"products": [
        {"symbol": "sNEWUSDT", "type": "Spot", "baseCurrency": "NEW", "quoteCurrency": "USDT", "status": raw}],
        "perpProductsV2": []}}
    [info] = PhemexAdapter().parse_instruments("spot", body)
    assert (info.status, info.raw_status) == (normalized, raw)


@pytest.mark.parametrize("enabled,delisted_at,normalized,raw", [
    (True, None, "trading", "true"),
    (False, None, "halted", "false"),
    (False, 1790000000, "delisted", "false"),
    (True, 1790000000, "trading", "true"),   # a delisting date ahead: still trading until then
])
def test_whitebit_status_map(enabled: bool, delisted_at: Any, normalized: str, raw: str) -> None:
    body = [{"name": "NEW_USDT", "stock": "NEW", "money": "USDT", "type": "spot", "tradesEnabled": enabled,
             "delistedAt": delisted_at}]
    [info] = WhitebitAdapter().parse_instruments("spot", body)
    assert (info.status, info.raw_status) == (normalized, raw)


# ---- shapes particular to one exchange ----

def test_htx_incremental_body_refused() -> None:
    body = load("htx_v2")
    body["full"] = 0  # a "changed since ts" answer: only some rows; never a full snapshot
    with pytest.raises(InstrumentsFormatError, match="incremental"):
        HtxSpot().parse_instruments("spot", body)


def test_bitget_v1_legacy_rows_are_not_v2_rows() -> None:
    # the offline v1 body has the same envelope but other row keys (symbol BTCUSDT_SPBL, no baseCoin)
    got = BitgetSpot().parse_instruments("spot", load("bitget_v1_legacy"))
    assert list(got) == [] and got.rejected == len(load("bitget_v1_legacy")["data"])


def test_phemex_markets_are_separate_and_complete() -> None:
    body = load("phemex")
    adapter = PhemexAdapter()
    spot = {i.native_symbol for i in adapter.parse_instruments("spot", body)}
    perp = {i.native_symbol for i in adapter.parse_instruments("perp", body)}
    assert spot == {"sBTCUSDT", "sETHUSDT", "sLUNAUSDT"} and perp == {"BTCUSD", "BTCUSDT"}
    # a new V2 perpetual appears only in the perp snapshot
    body2 = copy.deepcopy(body)
    new = dict(body2["data"]["perpProductsV2"][0], symbol="WLFIUSDT", baseCurrency="WLFI",
               contractUnderlyingAssets="WLFI", status="Listed")
    body2["data"]["perpProductsV2"].append(new)
    assert {i.native_symbol for i in adapter.parse_instruments("perp", body2)} == {"BTCUSD", "BTCUSDT", "WLFIUSDT"}
    assert {i.native_symbol for i in adapter.parse_instruments("spot", body2)} == spot


@pytest.mark.parametrize("drop", ["products", "perpProductsV2"])
def test_phemex_perp_needs_both_lists(drop: str) -> None:
    body = load("phemex")
    del body["data"][drop]
    # half the perpetuals missing must never pass for the full list (it would look like delistings)
    with pytest.raises(InstrumentsFormatError):
        PhemexAdapter().parse_instruments("perp", body)


def test_phemex_perp_base_rules() -> None:
    body = {"code": 0, "msg": "", "data": {"products": [
        # USD-settled inverse: underlying is the base
        {"symbol": "uBTCUSD", "type": "Perpetual", "contractUnderlyingAssets": "BTC", "settleCurrency": "USD",
         "quoteCurrency": "USD", "status": "Listed"},
    ], "perpProductsV2": [
        {"symbol": "u1000PEPEUSDT", "type": "PerpetualV2", "baseCurrency": "1000PEPE", "settleCurrency": "USDT",
         "quoteCurrency": "USDT", "status": "Listed"},
    ]}}
    got = PhemexAdapter().parse_instruments("perp", body)
    assert [(i.native_symbol, i.symbol, i.url) for i in got] == [
        ("uBTCUSD", "BTC-USD", PHEMEX_PERP + "uBTCUSD"),
        ("u1000PEPEUSDT", "1000PEPE-USDT", PHEMEX_PERP + "u1000PEPEUSDT"),
    ]


def test_whitebit_perp_money_code() -> None:
    body = [{"name": "ETH_PERP", "stock": "ETH", "money": "PERP", "type": "futures", "tradesEnabled": True},
            {"name": "GLD_PERP", "stock": "GLD", "money": "USDT", "type": "tradfiFutures", "tradesEnabled": False}]
    got = WhitebitAdapter().parse_instruments("perp", body)
    assert [(i.native_symbol, i.symbol, i.status) for i in got] == [
        ("ETH_PERP", "ETH-USDT", "trading"), ("GLD_PERP", "GLD-USDT", "halted")]
    assert list(WhitebitAdapter().parse_instruments("spot", body)) == []


@pytest.mark.parametrize("cls", [PhemexAdapter, WhitebitAdapter], ids=lambda c: c.name)
def test_unknown_market_refused(cls: type[ExchangeAdapter]) -> None:
    body = load(cls.name)
    with pytest.raises(InstrumentsFormatError):
        cls().parse_instruments("option", body)


# ---- hostile and inconsistent rows: left out and counted ----

# per exchange: build one row from (native, base, quote, status), and wrap rows into a body
RowFactory = Callable[[Any, Any, Any, Any], Any]
Shape = tuple[type[ExchangeAdapter], str, Callable[[str, str], str], RowFactory, Callable[[list], Any], Any]

SHAPES: list[Shape] = [
    (GateSpot, "spot", lambda b, q: f"{b}_{q}",
     lambda n, b, q, s: {"id": n, "base": b, "quote": q, "trade_status": s}, lambda rows: rows, "tradable"),
    (BitgetSpot, "spot", lambda b, q: b + q,
     lambda n, b, q, s: {"symbol": n, "baseCoin": b, "quoteCoin": q, "status": s},
     lambda rows: {"code": "00000", "msg": "success", "data": rows}, "online"),
    (HtxSpot, "spot", lambda b, q: (b + q).lower(),
     lambda n, b, q, s: {"sc": n, "bc": b, "qc": q, "state": s},
     lambda rows: {"status": "ok", "full": 1, "data": rows}, "online"),
    (MexcSpot, "spot", lambda b, q: b + q,
     lambda n, b, q, s: {"symbol": n, "baseAsset": b, "quoteAsset": q, "status": s},
     lambda rows: {"symbols": rows}, "1"),
    (BingxSpot, "spot", lambda b, q: f"{b}-{q}",
     lambda n, b, q, s: {"symbol": n, "status": s},
     lambda rows: {"code": 0, "msg": "", "data": {"symbols": rows}}, 1),
    (PhemexAdapter, "spot", lambda b, q: f"s{b}{q}",
     lambda n, b, q, s: {"symbol": n, "type": "Spot", "baseCurrency": b, "quoteCurrency": q, "status": s},
     lambda rows: {"code": 0, "msg": "", "data": {"products": rows, "perpProductsV2": []}}, "Listed"),
    (PhemexAdapter, "perp", lambda b, q: b + q,
     lambda n, b, q, s: {"symbol": n, "type": "PerpetualV2", "baseCurrency": b, "quoteCurrency": q, "status": s},
     lambda rows: {"code": 0, "msg": "", "data": {"products": [], "perpProductsV2": rows}}, "Listed"),
    (WhitebitAdapter, "spot", lambda b, q: f"{b}_{q}",
     lambda n, b, q, s: {"name": n, "stock": b, "money": q, "type": "spot", "tradesEnabled": s},
     lambda rows: rows, True),
    (WhitebitAdapter, "perp", lambda b, q: f"{b}_PERP",
     lambda n, b, q, s: {"name": n, "stock": b, "money": q, "type": "futures", "tradesEnabled": s},
     lambda rows: rows, True),
]

LONG = "X" * 10_000
# (base, quote) pairs that must be refused wherever they appear; the native name follows them
HOSTILE_PARTS = [("*", "USDT"), ("A B", "USDT"), ("AB\n", "USDT"), ("{AB}", "USDT"), (LONG, "USDT"),
                 ("ÄBC", "USDT"), ("AB", "US\u00a0DT"), ("", "USDT")]


def _hostile_rows(shape: Shape) -> list[tuple[str, Any]]:
    cls, market, name, make, _, good_status = shape
    rows: list[tuple[str, Any]] = [(f"parts {b[:8]!r}/{q!r}", make(name(b, q), b, q, good_status))
                                   for b, q in HOSTILE_PARTS]
    if cls is not BingxSpot:  # BingX sends no base/quote fields: the name is the only source
        rows.append(("name/parts disagree", make(name("ABC", "USDT"), "XYZ", "USDT", good_status)))
    rows += [
        ("name not a string", make(5, "ABC", "USDT", good_status)),
        ("name with a newline", make(name("ABC", "USDT") + "\n", "ABC", "USDT", good_status)),
        ("status missing", make(name("ABC", "USDT"), "ABC", "USDT", None)),
        ("status a list", make(name("ABC", "USDT"), "ABC", "USDT", ["x"])),
        ("not an object", "not an object"),
    ]
    if cls is BingxSpot:
        rows += [("status a bool", make("ABC-USDT", None, None, True)),
                 ("status a string", make("ABC-USDT", None, None, "1")),
                 ("three parts", make("ABC-USDT-X", None, None, 1))]
    elif cls is WhitebitAdapter:
        rows += [("tradesEnabled a string", make(name("ABC", "USDT"), "ABC", "USDT", "true"))]
    else:
        rows += [("status with a newline", make(name("ABC", "USDT"), "ABC", "USDT", f"{good_status}\n")),
                 ("status 10 kB", make(name("ABC", "USDT"), "ABC", "USDT", "a" * 10_000))]
    return rows


HOSTILE_CASES = [(shape, label, bad) for shape in SHAPES for label, bad in _hostile_rows(shape)]


@pytest.mark.parametrize("shape,label,bad", HOSTILE_CASES,
                         ids=[f"{s[0].name}-{s[1]}-{label}" for s, label, _ in HOSTILE_CASES])
def test_hostile_rows_rejected_and_counted(shape: Shape, label: str, bad: Any) -> None:
    cls, market, name, make, wrap, good_status = shape
    good = make(name("BTC", "USDT"), "BTC", "USDT", good_status)
    got = cls().parse_instruments(market, wrap([bad, good, bad]))
    assert [i.native_symbol for i in got] == [name("BTC", "USDT")]
    assert got[0].symbol == "BTC-USDT"
    assert got.rejected == 2


# ---- error envelopes and wrong shapes: nothing can be concluded ----

ERRORS: list[tuple[type[ExchangeAdapter], str, Any]] = [
    (GateSpot, "spot", {"label": "TOO_MANY_REQUESTS", "message": "Request Rate limit Exceeded"}),
    (GateSpot, "spot", None),
    (GateSpot, "spot", "[]"),
    (BitgetSpot, "spot", {"code": "40034", "msg": "Parameter does not exist", "requestTime": 1, "data": None}),
    (BitgetSpot, "spot", {"code": "429", "msg": "Too Many Requests"}),
    (BitgetSpot, "spot", {"code": 0, "msg": "success", "data": []}),      # code must be the string "00000"
    (BitgetSpot, "spot", {"code": "00000", "msg": "success", "data": {"symbols": []}}),
    (BitgetSpot, "spot", []),
    (HtxSpot, "spot", {"status": "error", "err-code": "invalid-parameter", "err-msg": "invalid symbol"}),
    (HtxSpot, "spot", {"status": "ok", "data": None}),
    (HtxSpot, "spot", {"code": 2002, "message": "invalid.field.value"}),
    (HtxSpot, "spot", []),
    (MexcSpot, "spot", {"code": 700003, "msg": "Timestamp for this request is outside of the recvWindow."}),
    (MexcSpot, "spot", {"symbols": "x"}),
    (MexcSpot, "spot", []),
    (BingxSpot, "spot", {"code": 100410, "msg": "rate limitation", "data": {}}),
    (BingxSpot, "spot", {"code": 0, "msg": "", "data": {"symbols": None}}),
    (BingxSpot, "spot", {"code": 0, "msg": "", "data": []}),
    (BingxSpot, "spot", {"code": False, "msg": "", "data": {"symbols": []}}),   # false is not 0
    (BingxSpot, "spot", {"code": "0", "msg": "", "data": {"symbols": []}}),
    (PhemexAdapter, "spot", {"code": 39999, "msg": "Too many requests", "data": None}),
    (PhemexAdapter, "perp", {"code": 0, "msg": "", "data": None}),
    (PhemexAdapter, "spot", {"code": 0, "msg": "", "data": {"currencies": []}}),
    (PhemexAdapter, "spot", []),
    (WhitebitAdapter, "spot", {"success": False, "message": "Too many requests.", "code": 0}),
    (WhitebitAdapter, "perp", {"code": 1, "message": "error"}),
    (WhitebitAdapter, "spot", None),
]


@pytest.mark.parametrize("cls,market,body", ERRORS, ids=[f"{c.name}-{i}" for i, (c, _, _) in enumerate(ERRORS)])
def test_error_envelopes_raise(cls: type[ExchangeAdapter], market: str, body: Any) -> None:
    with pytest.raises(InstrumentsFormatError):
        cls().parse_instruments(market, body)


@pytest.mark.parametrize("cls,market,fixture", [
    (GateSpot, "spot", "gate"), (BitgetSpot, "spot", "bitget"), (HtxSpot, "spot", "htx_v2"),
    (MexcSpot, "spot", "mexc"), (BingxSpot, "spot", "bingx"), (PhemexAdapter, "spot", "phemex"),
    (PhemexAdapter, "perp", "phemex"), (WhitebitAdapter, "spot", "whitebit"), (WhitebitAdapter, "perp", "whitebit"),
], ids=lambda v: v.name if isinstance(v, type) else v)
def test_parsing_does_not_mutate_the_body(cls: type[ExchangeAdapter], market: str, fixture: str) -> None:
    body = load(fixture)
    before = copy.deepcopy(body)
    cls().parse_instruments(market, body)
    assert body == before
