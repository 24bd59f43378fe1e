"""The simulator's Bybit klines and long/short account ratio, over real sockets, read by the
project's own parsers (``workers/exchanges/bybit_md.py``): klines on spot and linear with their
intervals, open interest and funding from the linear tickers, and the account-ratio REST route."""

from __future__ import annotations

import json
from typing import Iterator

import aiohttp
import pytest

from collector.simulator.client import start_simulator_process, stop_simulator_process
from tests.integration.test_simulator_md import Feed, get, run, wait_for, ws_url
from workers.book import BookConfig, BookManager
from workers.exchanges import bybit_md

pytestmark = pytest.mark.integration

SPOT = {"BTCUSDT": ("BTC-USDT", "spot"), "ETHUSDT": ("ETH-USDT", "spot")}
LINEAR = {"BTCUSDT": ("BTC-USDT", "perp"), "ETHUSDT": ("ETH-USDT", "perp")}
MINUTE = 60_000


@pytest.fixture(scope="module")
def base() -> Iterator[str]:
    proc, first, _ports = start_simulator_process(exchanges=["bybit"], extra_args=["--md-rate", "10", "--seed", "3"])
    try:
        yield first
    finally:
        stop_simulator_process(proc)


def test_bybit_klines_open_interest_and_funding(base: str) -> None:
    books = BookManager(BookConfig())
    spot_topics = ["kline.1.BTCUSDT", "kline.D.ETHUSDT"]
    linear_topics = ["kline.1.BTCUSDT", "kline.60.ETHUSDT", "tickers.BTCUSDT"]

    async def scenario() -> None:
        async with aiohttp.ClientSession() as session:
            spot_parser = bybit_md.BybitParser(SPOT)
            lin_parser = bybit_md.BybitParser(LINEAR, bybit_md.TICKER_TYPES)
            async with Feed(session, ws_url({"b": base}, "b", "/v5/public/spot"), spot_parser.parse, books,
                            (json.dumps({"op": "subscribe", "args": spot_topics}),)) as spot, \
                    Feed(session, ws_url({"b": base}, "b", "/v5/public/linear"), lin_parser.parse, books,
                         (json.dumps({"op": "subscribe", "args": linear_topics}),)) as lin:
                await wait_for(lambda: {("1m", "BTC-USDT"), ("1d", "ETH-USDT")} <= {
                    (k["interval"], k["symbol"]) for k in spot.of("kline")}, what="spot klines")
                await wait_for(lambda: {("1m", "BTC-USDT"), ("1h", "ETH-USDT")} <= {
                    (k["interval"], k["symbol"]) for k in lin.of("kline")}, what="linear klines")
                await wait_for(lambda: lin.of("open_interest") and lin.of("funding"), what="oi and funding")
                for feed in (spot, lin):
                    feed.assert_clean()
                lengths = {"1m": MINUTE, "1h": 60 * MINUTE, "1d": 1440 * MINUTE}
                for k in spot.of("kline") + lin.of("kline"):
                    open_time, close_time = int(k["open_time"]), int(k["close_time"])
                    assert open_time % lengths[k["interval"]] == 0
                    assert close_time == open_time + lengths[k["interval"]] - 1
                    assert float(k["low"]) <= float(k["close"]) <= float(k["high"])
                    assert k["closed"] in ("0", "1") and k["quote_volume"] and k["trades"] == "0"
                assert {k["market"] for k in spot.of("kline")} == {"spot"}
                assert {k["market"] for k in lin.of("kline")} == {"perp"}
                for oi in lin.of("open_interest"):
                    assert float(oi["open_interest"]) > 0 and float(oi["open_interest_value"]) > 0
                for f in lin.of("funding"):
                    assert f["funding_rate"] and int(f["next_funding_time"]) % (8 * 60 * MINUTE) == 0
                assert lin.of("ticker")
                # an interval Bybit does not have is refused like any unknown topic
                await spot.send(json.dumps({"op": "subscribe", "args": ["kline.2.BTCUSDT"]}))
                await wait_for(lambda: len(spot.errors) == 1, what="refusal")
                assert "kline.2.BTCUSDT" in spot.errors[0]

    run(scenario())


def test_bybit_account_ratio_route(base: str) -> None:
    url = f"{base}/v5/market/account-ratio?category=linear&symbol=BTCUSDT&period=5min&limit=3"
    status, body = get(url)
    r = bybit_md.parse_rest_account_ratio(body, LINEAR, "5m", 0, 0)
    assert status == 200 and r.parse_errors == 0 and r.rejected == 0 and r.error is None
    got = [dict(zip(w[3][::2], w[3][1::2])) for w in r.events]
    times = [int(f["ts_exchange"]) for f in got]
    assert len(got) == 3 and times == sorted(times) and {b - a for a, b in zip(times, times[1:])} == {300_000}
    for f in got:
        assert f["kind"] == "global_account" and f["period"] == "5m"
        long_pct, short_pct = float(f["long_pct"]), float(f["short_pct"])
        assert abs(long_pct + short_pct - 1) < 1e-9 and 0.3 <= long_pct <= 0.7
        assert f["ratio"] == bybit_md.long_short_ratio(f["long_pct"], f["short_pct"])
    # the same period start gives the same sample on the next request (deterministic statistics)
    first = {row["timestamp"]: row for row in json.loads(body)["result"]["list"]}
    again = {row["timestamp"]: row for row in json.loads(get(url)[1])["result"]["list"]}
    common = first.keys() & again.keys()
    assert len(common) >= 2 and all(first[t] == again[t] for t in common)
    # the collector's own poll URL, re-based onto the simulator, is served
    [poll] = bybit_md.market_data_polls(_cfg())
    status, body = get(base + poll.url.removeprefix(bybit_md.REST_BASE))
    assert status == 200 and len(poll.parse(body, 0, 0).events) == 1
    for query, what in (("category=spot&symbol=BTCUSDT&period=5min", "category"),
                        ("category=linear&symbol=NOPEUSDT&period=5min", "symbol"),
                        ("category=linear&symbol=BTCUSDT&period=2h", "period"),
                        ("category=linear&symbol=BTCUSDT&period=5min&limit=501", "limit")):
        status, body = get(f"{base}/v5/market/account-ratio?{query}")
        r = bybit_md.parse_rest_account_ratio(body, LINEAR, "5m", 0, 0)
        assert status == 200 and r.error is not None and what in r.error and r.events == []


def _cfg():
    from shared.settings import ExchangeSettings
    return ExchangeSettings(market_data=True, symbols=["BTC-USDT"], markets=["perp"], channels=["long_short"])
