"""The simulator's instrument lists of all 13 exchanges, exercised as one real process over real sockets.

One process serves every exchange on its own port (``start_simulator_process(exchanges="all")``);
every test resets every exchange first. Bodies are compared with the recorded fixtures in
``tests/fixtures/rest`` (same envelope, same per-row keys); the expected raw representation of each
normalized status is written out here, independently of the simulator's own table.
"""

from __future__ import annotations

import copy
import json
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from collector.simulator.client import SimulatorClient, SimulatorError, start_simulator_process, stop_simulator_process

pytestmark = pytest.mark.integration

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "rest"
ALL = ("binance", "coinbase", "kraken", "okx", "bybit", "kucoin", "gate", "bitget", "htx", "mexc", "bingx",
       "phemex", "whitebit")
PRE, TRD, HLT, DEL = "pre_trading", "trading", "halted", "delisted"


def fixture(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text())


def http_get(url: str, timeout: float = 5.0) -> tuple[int, dict[str, str], bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def get_json(url: str) -> Any:
    status, _, body = http_get(url)
    assert status == 200, (url, status, body[:300])
    return json.loads(body)


@pytest.fixture(scope="module")
def sim_all() -> Iterator[tuple[Any, str, dict[str, str]]]:
    proc, first_url, ports = start_simulator_process(exchanges="all")
    try:
        yield proc, first_url, ports
    finally:
        stop_simulator_process(proc)


@pytest.fixture
def sims(sim_all: tuple[Any, str, dict[str, str]]) -> dict[str, SimulatorClient]:
    clients = {name: SimulatorClient(url) for name, url in sim_all[2].items()}
    for client in clients.values():
        client.reset()
    return clients


# ------------------------------------------------------------------------------------------ endpoints
# exchange, path, fixture file, where the rows are (paths into the body), how to get the rows
def _at(body: Any, path: tuple[Any, ...]) -> Any:
    for key in path:
        body = body[key]
    return body


ENDPOINTS: list[tuple[str, str, str, list[tuple[Any, ...]]]] = [
    ("binance", "/api/v3/exchangeInfo", "binance.json", [("symbols",)]),
    ("binance", "/fapi/v1/exchangeInfo", "binance_futures.json", [("symbols",)]),
    ("coinbase", "/products", "coinbase.json", [()]),
    ("kraken", "/0/public/AssetPairs", "kraken.json", [("result",)]),
    ("okx", "/api/v5/public/instruments?instType=SPOT", "okx.json", [("data",)]),
    ("okx", "/api/v5/public/instruments?instType=SWAP", "okx_swap.json", [("data",)]),
    ("bybit", "/v5/market/instruments-info?category=spot", "bybit.json", [("result", "list")]),
    ("bybit", "/v5/market/instruments-info?category=linear", "bybit_linear.json", [("result", "list")]),
    ("bybit", "/v5/market/instruments-info?category=linear&status=PreLaunch", "bybit_linear.json",
     [("result", "list")]),
    ("kucoin", "/api/v2/symbols", "kucoin.json", [("data",)]),
    ("gate", "/api/v4/spot/currency_pairs", "gate.json", [()]),
    ("bitget", "/api/v2/spot/public/symbols", "bitget.json", [("data",)]),
    ("htx", "/v2/settings/common/symbols", "htx_v2.json", [("data",)]),
    ("htx", "/v1/common/symbols", "htx.json", [("data",)]),
    ("mexc", "/api/v3/exchangeInfo", "mexc.json", [("symbols",)]),
    ("bingx", "/openApi/spot/v1/common/symbols", "bingx.json", [("data", "symbols")]),
    ("phemex", "/public/products", "phemex.json", [("data", "products"), ("data", "perpProductsV2")]),
    ("whitebit", "/api/v4/public/markets", "whitebit.json", [()]),
]


def rows_of(body: Any, paths: list[tuple[Any, ...]]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for path in paths:
        container = _at(body, path)
        out += list(container.values()) if isinstance(container, dict) else list(container)
    return out


def skeleton(obj: Any) -> Any:
    """Keys in order and value types, all the way down (lists: the skeleton of their first item)."""
    if isinstance(obj, dict):
        return [(k, skeleton(v)) for k, v in obj.items()]
    if isinstance(obj, list):
        return ["list", skeleton(obj[0])] if obj else ["list"]
    return type(obj).__name__


def envelope(body: Any, paths: list[tuple[Any, ...]]) -> Any:
    """The body's skeleton with its row containers emptied."""
    body = copy.deepcopy(body)
    for path in paths:
        if not path:
            return skeleton([])
        parent = _at(body, path[:-1])
        parent[path[-1]] = type(parent[path[-1]])()
    return skeleton(body)


# markets that can be scripted per exchange, and the native name each gives BASE/QUOTE
MARKETS = {"binance": ("spot", "perp"), "coinbase": ("spot",), "kraken": ("spot",), "okx": ("spot", "perp"),
           "bybit": ("spot", "perp"), "kucoin": ("spot",), "gate": ("spot",), "bitget": ("spot",),
           "htx": ("spot",), "mexc": ("spot",), "bingx": ("spot",), "phemex": ("spot", "perp"),
           "whitebit": ("spot", "perp")}


def test_ports_map_one_port_per_exchange(sim_all: tuple[Any, str, dict[str, str]]) -> None:
    _, first_url, ports = sim_all
    assert list(ports) == list(ALL) and first_url == ports["binance"]
    assert len({urllib.parse.urlsplit(u).port for u in ports.values()}) == 13
    for name, url in ports.items():
        answer = get_json(url + "/_sim/ports")
        assert answer == {"exchange": name, "ports": ports}


def test_bodies_have_the_recorded_shape(sims: dict[str, SimulatorClient]) -> None:
    # constructed rows too: one trading and one pre-trading symbol in every scriptable market
    for name, markets in MARKETS.items():
        for market in markets:
            sims[name].add_listing("SHAPE", "USDT", TRD, market)
            sims[name].add_listing("SHAPEP", "USDT", PRE, market)
    for name, path, fixture_name, paths in ENDPOINTS:
        recorded = fixture(fixture_name)
        body = get_json(sims[name].base_url + path)
        assert envelope(body, paths) == envelope(recorded, paths), (name, path)
        served = rows_of(body, paths)
        recorded_rows = rows_of(recorded, paths)
        assert served, (name, path)
        keys = [set(r) for r in recorded_rows]
        union, common = set().union(*keys), set.intersection(*keys)
        for row in served:
            assert common <= set(row) <= union, (name, path, sorted(set(row) ^ union))


def test_recorded_rows_are_served_verbatim(sims: dict[str, SimulatorClient]) -> None:
    def ident(row: dict[str, Any]) -> Any:
        for key in ("instId", "sc", "id", "name", "symbol"):
            if key in row:
                return row[key]
        return row.get("wsname")

    for name, path, fixture_name, paths in ENDPOINTS:
        if name == "binance":  # built from --symbols; test_simulator.py covers it
            continue
        recorded = rows_of(fixture(fixture_name), paths)
        urls = [sims[name].base_url + path]
        if name == "bybit" and "category=linear" in path:  # Trading and PreLaunch come separately
            urls = [sims[name].base_url + path.split("&")[0] + q for q in ("", "&status=PreLaunch")]
        served = {ident(r): r for url in urls for r in rows_of(get_json(url), paths)}
        for row in recorded:
            assert served.get(ident(row)) == row, (name, path, ident(row))
    kraken = get_json(sims["kraken"].base_url + "/0/public/AssetPairs")
    assert kraken["result"] == fixture("kraken.json")["result"]  # keyed by pair name, as recorded


# ------------------------------------------------------------------------------------------ lifecycle
def _now_ms() -> float:
    return time.time() * 1000


# (exchange, market) -> list path, native name of LIFE/USDT, raw representation of a row,
# and the representation expected per normalized status (None: not in the list)
Raw = Callable[[dict[str, Any]], Any]
LIFECYCLE: dict[tuple[str, str], tuple[str, list[tuple[Any, ...]], str, Raw, dict[str, Any]]] = {
    ("binance", "spot"): ("/api/v3/exchangeInfo", [("symbols",)], "LIFEUSDT", lambda r: r["status"],
                          {PRE: "BREAK", TRD: "TRADING", HLT: "HALT", DEL: None}),
    ("binance", "perp"): ("/fapi/v1/exchangeInfo", [("symbols",)], "LIFEUSDT",
                          lambda r: (r["status"], r["contractType"]),
                          {PRE: ("PENDING_TRADING", ""), TRD: ("TRADING", "PERPETUAL"),
                           HLT: ("BREAK", "PERPETUAL"), DEL: ("CLOSE", "PERPETUAL")}),
    ("coinbase", "spot"): ("/products", [()], "LIFE-USDT",
                           lambda r: (r["status"], r["trading_disabled"], r["auction_mode"]),
                           {PRE: ("online", True, True), TRD: ("online", False, False),
                            HLT: ("offline", True, False), DEL: ("delisted", True, False)}),
    ("kraken", "spot"): ("/0/public/AssetPairs", [("result",)], "LIFEUSDT", lambda r: r["status"],
                         {PRE: "post_only", TRD: "online", HLT: "cancel_only", DEL: None}),
    ("okx", "spot"): ("/api/v5/public/instruments?instType=SPOT", [("data",)], "LIFE-USDT",
                      lambda r: (r["state"], r["lotSz"] == "", r["instIdCode"] is None),
                      {PRE: ("preopen", True, True), TRD: ("live", False, False),
                       HLT: ("suspend", False, False), DEL: None}),
    ("okx", "perp"): ("/api/v5/public/instruments?instType=SWAP", [("data",)], "LIFE-USDT-SWAP",
                      lambda r: (r["state"], r["ctVal"] == "", r["uly"]),
                      {PRE: ("preopen", True, ""), TRD: ("live", False, "LIFE-USDT"),
                       HLT: ("suspend", False, "LIFE-USDT"), DEL: None}),
    # Bybit spot lists Trading only; linear lists PreLaunch only when asked (see the pagination test)
    ("bybit", "spot"): ("/v5/market/instruments-info?category=spot", [("result", "list")], "LIFEUSDT",
                        lambda r: r["status"], {PRE: None, TRD: "Trading", HLT: None, DEL: None}),
    ("bybit", "perp"): ("/v5/market/instruments-info?category=linear", [("result", "list")], "LIFEUSDT",
                        lambda r: (r["status"], r["isPreListing"]),
                        {PRE: None, TRD: ("Trading", False), HLT: None, DEL: None}),
    ("kucoin", "spot"): ("/api/v2/symbols", [("data",)], "LIFE-USDT",
                         lambda r: (r["enableTrading"], r["callauctionIsEnabled"],
                                    (r["tradingStartTime"] or 0) > _now_ms()),
                         {PRE: (False, True, True), TRD: (True, False, False), HLT: (False, False, False),
                          DEL: None}),
    ("gate", "spot"): ("/api/v4/spot/currency_pairs", [()], "LIFE_USDT",
                       lambda r: (r["trade_status"], r["buy_start"] > _now_ms() / 1000),
                       {PRE: ("untradable", True), TRD: ("tradable", False), HLT: ("untradable", False),
                        DEL: None}),
    ("bitget", "spot"): ("/api/v2/spot/public/symbols", [("data",)], "LIFEUSDT", lambda r: r["status"],
                         {PRE: "gray", TRD: "online", HLT: "halt", DEL: None}),
    ("htx", "spot"): ("/v2/settings/common/symbols", [("data",)], "lifeusdt", lambda r: (r["state"], r["te"]),
                      {PRE: ("pre-online", False), TRD: ("online", True), HLT: ("suspend", False),
                       DEL: ("offline", False)}),
    ("mexc", "spot"): ("/api/v3/exchangeInfo", [("symbols",)], "LIFEUSDT",
                       lambda r: (r["status"], r["tradeSideType"], r["isSpotTradingAllowed"]),
                       {PRE: ("2", "4", False), TRD: ("1", "1", True), HLT: ("2", "4", False),
                        DEL: ("3", "4", False)}),
    ("bingx", "spot"): ("/openApi/spot/v1/common/symbols", [("data", "symbols")], "LIFE-USDT",
                        lambda r: (r["status"], r["apiStateBuy"]),
                        {PRE: (5, False), TRD: (1, True), HLT: (25, False), DEL: (0, False)}),
    ("phemex", "spot"): ("/public/products", [("data", "products")], "sLIFEUSDT",
                         lambda r: (r["status"], r["type"]),
                         {PRE: ("Suspended", "Spot"), TRD: ("Listed", "Spot"), HLT: ("Suspended", "Spot"),
                          DEL: ("Delisted", "Spot")}),
    ("phemex", "perp"): ("/public/products", [("data", "perpProductsV2")], "LIFEUSDT",
                         lambda r: (r["status"], r["type"]),
                         {PRE: ("Suspended", "PerpetualV2"), TRD: ("Listed", "PerpetualV2"),
                          HLT: ("Suspended", "PerpetualV2"), DEL: ("Delisted", "PerpetualV2")}),
    ("whitebit", "spot"): ("/api/v4/public/markets", [()], "LIFE_USDT",
                           lambda r: (r["tradesEnabled"], r["type"]),
                           {PRE: (False, "spot"), TRD: (True, "spot"), HLT: (False, "spot"), DEL: None}),
    ("whitebit", "perp"): ("/api/v4/public/markets", [()], "LIFE_PERP",
                           lambda r: (r["tradesEnabled"], r["type"]),
                           {PRE: (False, "futures"), TRD: (True, "futures"), HLT: (False, "futures"),
                            DEL: None}),
}


def _find(body: Any, paths: list[tuple[Any, ...]], native: str) -> list[dict[str, Any]]:
    found = []
    for path in paths:
        container = _at(body, path)
        if isinstance(container, dict):  # Kraken: keyed by pair
            found += [v for k, v in container.items() if k == native]
        else:
            found += [r for r in container
                      if native in (r.get("symbol"), r.get("instId"), r.get("id"), r.get("name"), r.get("sc"))]
    return found


@pytest.mark.parametrize("exchange,market", list(LIFECYCLE), ids=[f"{e}-{m}" for e, m in LIFECYCLE])
def test_lifecycle_in_each_exchange_raw_representation(sims: dict[str, SimulatorClient], exchange: str,
                                                       market: str) -> None:
    path, paths, native, raw, expected = LIFECYCLE[(exchange, market)]
    sim = sims[exchange]
    url = sim.base_url + path
    assert _find(get_json(url), paths, native) == []
    last_visible = 0
    for step, status in enumerate((PRE, TRD, HLT, DEL)):
        before = _now_ms()
        if step == 0:
            answer = sim.add_listing("LIFE", "USDT", PRE, market)
            assert (answer["symbol"], answer["base"], answer["quote"]) == (native, "LIFE", "USDT")
        else:
            answer = sim.set_listing_status("LIFE-USDT", status, market)
            assert answer["previous_status"] == (PRE, TRD, HLT)[step - 1]
        assert answer["status"] == status and answer["market"] == market
        assert before - 5 <= answer["visible_at_ms"] <= _now_ms() + 5 and answer["visible_at_ms"] >= last_visible
        last_visible = answer["visible_at_ms"]
        rows = _find(get_json(url), paths, native)
        if expected[status] is None:
            assert rows == [], (exchange, market, status)
            assert answer["served_by_default"] is False
        else:
            assert len(rows) == 1, (exchange, market, status, rows)
            assert raw(rows[0]) == expected[status], (exchange, market, status)
            assert answer["served_by_default"] is True
    if expected[DEL] is None:
        with pytest.raises(SimulatorError) as exc:
            sim.set_listing_status("LIFE-USDT", TRD, market)
        assert exc.value.status == 404  # removed, not hidden


def test_htx_old_endpoint_and_incremental_ts(sims: dict[str, SimulatorClient]) -> None:
    htx = sims["htx"]
    v1 = htx.base_url + "/v1/common/symbols"
    since = int(_now_ms()) - 1
    htx.add_listing("LIFE", "USDT", PRE)
    row = _find(get_json(v1), [("data",)], "lifeusdt")[0]
    assert (row["state"], row["api-trading"], row["base-currency"]) == ("pre-online", "disabled", "life")
    htx.set_listing_status("lifeusdt", TRD)
    row = _find(get_json(v1), [("data",)], "lifeusdt")[0]
    assert (row["state"], row["api-trading"]) == ("online", "enabled")
    # ts: only rows changed since then (full: 0); none changed since now
    delta = get_json(htx.base_url + f"/v2/settings/common/symbols?ts={since}")
    assert delta["full"] == 0 and [r["sc"] for r in delta["data"]] == ["lifeusdt"]
    later = get_json(htx.base_url + f"/v2/settings/common/symbols?ts={int(_now_ms()) + 1000}")
    assert later["data"] == [] and later["status"] == "ok"


def test_bybit_linear_pages_and_prelaunch_only_when_asked(sims: dict[str, SimulatorClient]) -> None:
    bybit = sims["bybit"]
    bybit.add_listing_filler(1200, market="perp")
    bybit.add_listing("PREL", "USDT", PRE, market="perp")
    base = bybit.base_url + "/v5/market/instruments-info?category=linear"

    def walk(extra: str, encode: bool) -> list[list[str]]:
        pages, cursor = [], None
        while True:
            url = base + extra
            if cursor:
                url += "&cursor=" + (urllib.parse.quote(cursor, safe="") if encode else cursor)
            body = get_json(url)
            assert body["retCode"] == 0 and body["result"]["category"] == "linear"
            pages.append([r["symbol"] for r in body["result"]["list"]])
            cursor = body["result"]["nextPageCursor"]
            if not cursor:
                return pages
            assert len(pages) < 10

    pages = walk("&limit=500", encode=False)
    assert [len(p) for p in pages] == [500, 500, 202]  # BTCUSDT, ETHUSDT + 1200 fillers
    symbols = [s for p in pages for s in p]
    assert len(set(symbols)) == len(symbols) == 1202
    assert "PREL" + "USDT" not in symbols and "BIOUSDT" not in symbols
    assert walk("&limit=500", encode=True) == pages  # the cursor survives URL encoding
    assert [len(p) for p in walk("", encode=False)] == [500, 500, 202]  # default limit 500
    assert [len(p) for p in walk("&limit=1000", encode=False)] == [1000, 202]

    pre = get_json(base + "&status=PreLaunch")["result"]
    assert [r["symbol"] for r in pre["list"]] == ["BIOUSDT", "PRELUSDT"] and pre["nextPageCursor"] == ""
    assert all(r["isPreListing"] is True and r["preListingInfo"]["phases"] for r in pre["list"])
    assert get_json(base + "&limit=1001")["retCode"] == 10001
    assert get_json(base + "&cursor=garbage")["retCode"] == 10001
    assert get_json(bybit.base_url + "/v5/market/instruments-info")["retCode"] == 10001

    bybit.set_listing_status("PREL-USDT", TRD, market="perp")
    assert [r["symbol"] for r in get_json(base + "&status=PreLaunch")["result"]["list"]] == ["BIOUSDT"]
    opened = [r for r in get_json(base + "&symbol=PRELUSDT")["result"]["list"]]
    assert [(r["status"], r["isPreListing"], r["preListingInfo"]) for r in opened] == [("Trading", False, None)]

    # spot has Trading only: a pre-launch spot symbol is never listed, not even when asked
    bybit.add_listing("SPRE", "USDT", PRE, market="spot")
    spot = bybit.base_url + "/v5/market/instruments-info?category=spot"
    assert get_json(spot + "&status=PreLaunch")["result"]["list"] == []
    assert "SPREUSDT" not in [r["symbol"] for r in get_json(spot)["result"]["list"]]
    assert "nextPageCursor" not in get_json(spot)["result"]


# ------------------------------------------------------------------------------------------ faults
LIST_PATH = {name: path for name, path, _, _ in reversed(ENDPOINTS)}  # first endpoint of each exchange


def test_faults_hit_only_their_own_exchange(sims: dict[str, SimulatorClient]) -> None:
    def url(name: str) -> str:
        return sims[name].base_url + LIST_PATH[name]

    def others_ok(*faulted: str) -> None:
        for name in ALL:
            if name not in faulted:
                assert http_get(url(name))[0] == 200, name

    sims["okx"].rest_fault("429", count=2, retry_after=7)
    for _ in range(2):
        status, headers, body = http_get(url("okx"))
        assert status == 429 and headers["Retry-After"] == "7" and json.loads(body)["code"] == "50011"
        others_ok("okx")
    assert http_get(url("okx"))[0] == 200

    # Binance and MEXC share /api/v3/exchangeInfo; a Binance ban is Binance's alone
    sims["binance"].rest_fault("418", retry_after=120)
    status, headers, _ = http_get(url("binance"))
    assert status == 418 and headers["Retry-After"] == "120"
    assert http_get(url("mexc"))[0] == 200

    sims["bybit"].rest_fault("403", duration_s=30)
    status, headers, body = http_get(url("bybit"))
    assert status == 403 and "Retry-After" not in headers and b"access too frequent" in body
    others_ok("bybit")
    sims["bybit"].clear_rest_faults()
    assert http_get(url("bybit"))[0] == 200

    sims["kucoin"].rest_fault("5xx", status=503, count=1)
    status, _, body = http_get(url("kucoin"))
    assert status == 503 and json.loads(body)["code"] == "500000"
    sims["kraken"].rest_fault("5xx", status=502, count=1)
    assert http_get(url("kraken"))[0] == 502

    sims["htx"].rest_fault("garbage", count=1)
    status, _, body = http_get(url("htx"))
    assert status == 200
    with pytest.raises(ValueError):
        json.loads(body)

    sims["whitebit"].rest_fault("empty", count=1)
    assert get_json(url("whitebit")) == []
    assert len(get_json(url("whitebit"))) == 5

    sims["gate"].rest_fault("truncate", fraction=0.5, count=1)
    assert [r["id"] for r in get_json(url("gate"))] == ["BTC_USDT", "ETH_USDT"]  # the tail is cut
    assert len(get_json(url("gate"))) == 4
    sims["binance"].clear_rest_faults()
    sims["binance"].rest_fault("truncate", path="/api/v3/exchangeInfo", fraction=0.5, count=1)
    assert [s["symbol"] for s in get_json(url("binance"))["symbols"]] == ["BTCUSDT"]
    sims["binance"].rest_fault("403", count=1)
    assert http_get(url("binance"))[0] == 403

    # a hanging exchange holds nobody else up
    sims["bingx"].rest_fault("timeout", hang_s=2.0, count=1)
    with pytest.raises((TimeoutError, urllib.error.URLError)):
        urllib.request.urlopen(url("bingx"), timeout=0.3).read()
    sims["bingx"].rest_fault("timeout", hang_s=2.0, count=1)
    late: list[int] = []
    hanging = threading.Thread(target=lambda: late.append(http_get(url("bingx"), timeout=10)[0]))
    hanging.start()
    try:
        time.sleep(0.2)
        others_ok("bingx")
        assert hanging.is_alive()  # still hanging while the other twelve answered
    finally:
        hanging.join(10)
    assert late == [200]  # then answered normally

    faulted = {name: sims[name].stats()["rest"]["faulted"] for name in ALL}
    assert faulted["okx"] == {"/api/v5/public/instruments": 2}
    assert faulted["bingx"] == {"/openApi/spot/v1/common/symbols": 2}
    for name in ("coinbase", "bitget", "mexc", "phemex"):
        assert faulted[name] == {}, name
    assert http_get(sims["okx"].base_url + "/api/v5/nope/" + "x" * 500)[0] == 404
    calls = sims["okx"].stats()["rest"]["calls"]
    assert set(calls) == {"/api/v5/public/instruments", "other"} and calls["other"] == 1  # bounded keys
    assert calls["/api/v5/public/instruments"] >= 3
    assert sims["mexc"].stats()["rest"]["calls"]["/api/v3/exchangeInfo"] >= 5


def test_fault_control_rejects_bad_input(sims: dict[str, SimulatorClient]) -> None:
    for kwargs in ({"kind": "teapot"}, {"kind": "truncate", "fraction": 1.5}, {"kind": "5xx", "status": 404},
                   {"kind": "429", "path": "relative"}):
        with pytest.raises(SimulatorError) as exc:
            sims["gate"].rest_fault(**kwargs)
        assert exc.value.status == 400
    answer = sims["gate"].rest_fault("empty", duration_s=60)
    assert answer["visible_at_ms"] > 0 and sims["gate"].stats()["faults"][0]["kind"] == "empty"
    assert sims["gate"].clear_rest_faults()["cleared"] == 1


# ------------------------------------------------------------------------------------------ scripting
def test_listing_control_errors_and_raw_override(sims: dict[str, SimulatorClient]) -> None:
    okx = sims["okx"]
    cases = [
        (lambda: okx.add_listing("X", "USDT", "open"), 400),            # not a normalized status
        (lambda: okx.add_listing("X", "USDT", DEL), 400),               # OKX drops delisted symbols
        (lambda: sims["coinbase"].add_listing("X", "USDT", market="perp"), 400),
        (lambda: okx.set_listing_status("NOPE-USDT", TRD), 404),
        (lambda: okx.remove_listing("NOPE-USDT"), 404),
        (lambda: okx.add_listing("BTC", "USDT"), 409),                  # recorded row
        (lambda: okx.add_listing_filler(0), 400),
    ]
    for call, status in cases:
        with pytest.raises(SimulatorError) as exc:
            call()
        assert exc.value.status == status

    gate = sims["gate"]
    answer = gate.add_listing("ODD", "USDT", raw_status="sellable")
    assert (answer["symbol"], answer["raw_status"], answer["status"]) == ("ODD_USDT", "sellable", None)
    row = _find(get_json(gate.base_url + "/api/v4/spot/currency_pairs"), [()], "ODD_USDT")[0]
    assert row["trade_status"] == "sellable"
    hostile = "A" * 300
    sims["mexc"].add_listing("H", "USDT", symbol=hostile)
    assert hostile in [r["symbol"] for r in get_json(sims["mexc"].base_url + "/api/v3/exchangeInfo")["symbols"]]

    listed = {r["symbol"]: r for r in okx.listings("spot")}
    assert listed["WLFI-USDT"]["status"] == PRE and listed["WLFI-USDT"]["raw_status"] == "preopen"
    assert okx.status_map()["map"]["spot"] == {PRE: "preopen", TRD: "live", HLT: "suspend", DEL: "(removed)"}
    removed = okx.remove_listing("ETH-USDT")
    assert removed["listed"] is False and removed["visible_at_ms"] > 0
    assert "ETH-USDT" not in [r["instId"] for r in
                              get_json(okx.base_url + "/api/v5/public/instruments?instType=SPOT")["data"]]
    assert okx.reset()["listed"] == {"spot": 3, "perp": 3}


def test_thousands_of_symbols_rendered_once_per_change(sims: dict[str, SimulatorClient]) -> None:
    for name, market, path, count in (("okx", "spot", "/api/v5/public/instruments?instType=SPOT", 3000),
                                      ("kraken", "spot", "/0/public/AssetPairs", 3000),
                                      ("phemex", "perp", "/public/products", 3000)):
        sim = sims[name]
        assert sim.add_listing_filler(count, market=market)["added"] == count
        first = http_get(sim.base_url + path)[2]
        second = http_get(sim.base_url + path)[2]
        renders = sim.stats()["cache"]["renders"]
        sim.add_listing("LATE", "USDT", TRD, market)
        third = json.loads(http_get(sim.base_url + path)[2])
        cache = sim.stats()["cache"]
        assert cache["renders"] > renders and cache["hits"] >= 1
        if name == "okx":
            assert len(json.loads(first)["data"]) == len(json.loads(second)["data"]) == 3003
            assert [r["instId"] for r in third["data"]][-1] == "LATE-USDT"
        elif name == "kraken":
            assert len(json.loads(second)["result"]) == 3004 and "LATEUSDT" in third["result"]
        else:
            before = json.loads(second)["data"]
            assert len(before["perpProductsV2"]) == 3001
            assert third["data"]["perpProductsV2"][-1]["symbol"] == "LATEUSDT"
            # the checksum clients use to notice a changed product set changes with it
            assert third["data"]["md5Checksum"] != before["md5Checksum"]
