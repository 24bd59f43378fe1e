"""Market data end to end: the real collector's exchange workers (Binance spot + USDⓈ-M, OKX spot +
swap, Bybit spot + linear, Deribit) against the simulator, every data type subscribed, and every
type landing in its own Redis stream with correct fields.

"Correct" is checked against what the exchange side means, not against our own parser's output:
the canonical and native symbol and market of each stream, decimals as plain decimal strings,
millisecond times near now, book sides sorted with bid < ask, book deltas chaining by their own
``prev_seq`` with no gap, trade ids increasing, klines on their interval grid, Binance
liquidations flagged as sampled, funding times in the future, and so on.
"""

from __future__ import annotations

import json
import re
import time
from decimal import Decimal
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from collector.simulator.client import SimulatorClient, start_simulator_process, stop_simulator_process
from tests.conftest import RedisServer, wait_until
from tests.integration.harness import CollectorProcess

pytestmark = pytest.mark.integration

DECIMAL_RE = re.compile(r"-?[0-9]+(\.[0-9]+)?([eE]-?[0-9]+)?\Z")
INTERVAL_MS = {"1m": 60_000}

#: polled types: one sample per exchange period, so a short run sees one or two
POLLED = ("open_interest", "long_short_top_position", "long_short_top_account", "long_short_global_account")

#: (exchange, market, canonical symbol, native symbol) -> stream types expected
EXPECTED: dict[tuple[str, str, str, str], tuple[str, ...]] = {
    ("binance", "spot", "BTC-USDT", "BTCUSDT"): ("trade", "agg_trade", "book", "book_delta", "bbo", "ticker",
                                                 "kline_1m"),
    ("binance", "perp", "BTC-USDT", "BTCUSDT"): (
        "trade", "book", "book_delta", "bbo", "ticker", "kline_1m", "funding", "open_interest", "liquidation",
        "long_short_top_position", "long_short_top_account", "long_short_global_account"),
    ("okx", "spot", "BTC-USDT", "BTC-USDT"): ("trade", "book", "book_delta", "bbo", "ticker", "kline_1m"),
    ("okx", "perp", "BTC-USDT", "BTC-USDT-SWAP"): (
        "trade", "book", "book_delta", "bbo", "ticker", "kline_1m", "funding", "open_interest", "liquidation",
        "long_short_global_account"),
    ("bybit", "spot", "BTC-USDT", "BTCUSDT"): ("trade", "book", "book_delta", "ticker", "kline_1m"),
    ("bybit", "perp", "BTC-USDT", "BTCUSDT"): (
        "trade", "book", "book_delta", "ticker", "kline_1m", "funding", "open_interest", "liquidation",
        "long_short_global_account"),
    ("deribit", "perp", "BTC-USD", "BTC-PERPETUAL"): ("trade", "book", "book_delta", "ticker"),
    ("deribit", "index", "BTC-USD", "btc_usd"): ("volatility_index",),
}


@pytest.fixture(scope="module")
def sim_ports() -> Iterator[dict[str, str]]:
    proc, _first, ports = start_simulator_process(
        exchanges="all,deribit",
        extra_args=["--futures-symbols", "BTCUSDT,ETHUSDT", "--md-rate", "8", "--seed", "11"])
    try:
        yield ports
    finally:
        stop_simulator_process(proc)


def md_env(ports: dict[str, str]) -> dict[str, str]:
    env = {"COLLECTOR_PUBLISHER__HEARTBEAT_INTERVAL": "1"}
    symbols = {"binance": ["BTC-USDT"], "okx": ["BTC-USDT"], "bybit": ["BTC-USDT"], "deribit": ["BTC-USD"]}
    for name, syms in symbols.items():
        p = f"COLLECTOR_EXCHANGES__{name.upper()}__"
        env.update({
            p + "ENABLED": "true",
            p + "LISTINGS": "false",
            p + "MARKET_DATA": "true",
            p + "SYMBOLS": json.dumps(syms),
            p + "REST_URL": ports[name],
            p + "WS_URL": ports[name].replace("http://", "ws://"),
            p + "KLINE_INTERVALS": '["1m"]',
            p + "BOOK_MODE": "both",
            p + "BOOK_TOP_N": "5",
            p + "BOOK_PUBLISH_INTERVAL": "0.2",
            p + "REST_POLL_INTERVAL": "1",
        })
    return env


def entries(r: Any, stream: str) -> list[dict[str, str]]:
    return [dict(f) for _id, f in r.xrange(stream)]


def is_decimal(s: str, positive: bool = True) -> bool:
    return bool(DECIMAL_RE.match(s)) and (not positive or Decimal(s) > 0)


def check_common(e: dict[str, str], exchange: str, market: str, symbol: str, native: str, t0: int,
                 max_age_ms: int) -> None:
    assert (e["exchange"], e["market"], e["symbol"], e["native_symbol"]) == (exchange, market, symbol, native), e
    now = int(time.time() * 1000)
    assert t0 - 5_000 <= int(e["ts_receive"]) <= now, e
    ts = int(e["ts_exchange"])
    assert ts == 0 or t0 - max_age_ms <= ts <= now + 5_000, e


def levels(text: str) -> list[tuple[Decimal, Decimal]]:
    lv = json.loads(text)
    assert all(is_decimal(p) and is_decimal(q, positive=False) for p, q in lv), lv
    return [(Decimal(p), Decimal(q)) for p, q in lv]


def check_book(es: list[dict[str, str]]) -> None:
    tops = [e for e in es if e["type"] == "book"]
    assert tops, "no book top"
    for e in tops:
        bids, asks = levels(e["bids"]), levels(e["asks"])
        assert bids and asks and len(bids) <= 5 and len(asks) <= 5, e
        assert [p for p, _ in bids] == sorted((p for p, _ in bids), reverse=True)
        assert [p for p, _ in asks] == sorted(p for p, _ in asks)
        assert all(q > 0 for _, q in bids + asks)
        assert bids[0][0] < asks[0][0], e
    seqs = [int(e["seq"]) for e in tops]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)


def check_book_delta(es: list[dict[str, str]]) -> None:
    deltas = [e for e in es if e["type"] == "book_delta"]
    assert deltas and deltas[0]["snapshot"] == "1", deltas[:1]
    assert not [e for e in es if e["type"] == "book_gap"], "no gap was injected"
    for prev, cur in zip(deltas, deltas[1:]):
        levels(cur["bids"]), levels(cur["asks"])
        if cur["snapshot"] == "1":
            continue
        # each update continues the one before it by the exchange's own sequence rule; the first
        # after a snapshot may straddle it (Binance: U <= lastUpdateId + 1 <= u, pu before it)
        seq, prev_seq, last = int(cur["seq"]), int(cur["prev_seq"]), int(prev["seq"])
        assert seq > last, (prev, cur)
        if prev["snapshot"] == "1":
            assert prev_seq <= last, (prev, cur)
        else:
            assert prev_seq in (last, 0), (prev, cur)


def check_trade(es: list[dict[str, str]], tape: str = "trade") -> None:
    for e in es:
        assert e["type"] == tape and e["side"] in ("buy", "sell"), e
        assert is_decimal(e["price"]) and is_decimal(e["qty"]), e
        assert int(e["ts_exchange"]) > 0
    ids = [e["trade_id"] for e in es]
    assert len(set(ids)) == len(ids), "duplicate trade ids"
    if all(i.isdigit() for i in ids):
        assert [int(i) for i in ids] == sorted(int(i) for i in ids)


def check_agg_trade(es: list[dict[str, str]]) -> None:
    """Binance spot ``@aggTrade``: a trade tape of its own whose aggregate ids run without a hole."""
    check_trade(es, "agg_trade")
    ids = [int(e["trade_id"]) for e in es]
    assert all(b == a + 1 for a, b in zip(ids, ids[1:])), f"aggregate ids not contiguous: {ids[:20]}"


def check_bbo(es: list[dict[str, str]]) -> None:
    for e in es:
        assert is_decimal(e["bid_price"]) and is_decimal(e["ask_price"]), e
        assert is_decimal(e["bid_qty"]) and is_decimal(e["ask_qty"]), e
        assert Decimal(e["bid_price"]) < Decimal(e["ask_price"]), e


def check_ticker(es: list[dict[str, str]]) -> None:
    for e in es:
        assert is_decimal(e["last"]), e
        for f in ("high", "low", "volume", "mark_price", "funding_rate", "open_interest"):
            assert e[f] == "" or is_decimal(e[f], positive=False), (f, e)
        if e["high"] and e["low"]:
            assert Decimal(e["low"]) <= Decimal(e["high"])


def check_kline(es: list[dict[str, str]]) -> None:
    for e in es:
        assert e["interval"] == "1m"
        ot, ct = int(e["open_time"]), int(e["close_time"])
        assert ot % 60_000 == 0 and ct in (ot + 59_999, ot + 60_000, 0), e
        o, h, lo, c = (Decimal(e[k]) for k in ("open", "high", "low", "close"))
        assert lo <= min(o, c) <= max(o, c) <= h, e
        assert e["closed"] in ("0", "1") and is_decimal(e["volume"], positive=False)


def check_funding(es: list[dict[str, str]]) -> None:
    for e in es:
        assert is_decimal(e["funding_rate"], positive=False), e
        assert int(e["next_funding_time"]) > int(e["ts_exchange"]) > 0, e


def check_open_interest(es: list[dict[str, str]]) -> None:
    for e in es:
        assert is_decimal(e["open_interest"]), e


def check_liquidation(es: list[dict[str, str]]) -> None:
    for e in es:
        assert e["side"] in ("buy", "sell") and e["position_side"] in ("long", "short"), e
        # a sell order closes a long position
        assert (e["side"] == "sell") == (e["position_side"] == "long"), e
        assert is_decimal(e["price"]) and is_decimal(e["qty"]), e
        # Binance forceOrder and OKX liquidation-orders push at most one per symbol per second;
        # Bybit allLiquidation pushes them all
        assert e["sampled"] == ("0" if e["exchange"] == "bybit" else "1"), e


def check_long_short(es: list[dict[str, str]]) -> None:
    for e in es:
        assert e["period"] == "5m" and is_decimal(e["ratio"]), e
        if e["long_pct"] and e["short_pct"]:
            assert abs(Decimal(e["long_pct"]) + Decimal(e["short_pct"]) - 1) < Decimal("0.001"), e


def check_volatility_index(es: list[dict[str, str]]) -> None:
    for e in es:
        assert is_decimal(e["value"]), e


CHECKS: dict[str, Callable[[list[dict[str, str]]], None]] = {
    "trade": check_trade, "agg_trade": check_agg_trade, "book": check_book, "book_delta": check_book_delta,
    "bbo": check_bbo,
    "ticker": check_ticker, "kline_1m": check_kline, "funding": check_funding,
    "open_interest": check_open_interest, "liquidation": check_liquidation,
    "long_short_top_position": check_long_short, "long_short_top_account": check_long_short,
    "long_short_global_account": check_long_short,
    "volatility_index": check_volatility_index,
}


def test_every_type_of_every_exchange_lands_in_its_stream(
        tmp_path: Path, short_tmp: Path, sim_ports: dict[str, str]) -> None:
    for name in ("binance", "okx", "bybit", "deribit"):
        SimulatorClient(sim_ports[name]).md_reset()
    # Binance spot `@trade` frames come from the simulator's trade tape (the listing simulator's)
    SimulatorClient(sim_ports["binance"]).set_trade_rate(20, "BTCUSDT")
    srv = RedisServer(tmp_path / "redis").start()
    r = srv.client()
    t0 = int(time.time() * 1000)
    c = CollectorProcess(short_tmp / "run", srv.url, **md_env(sim_ports))
    wanted = {(ex, mk, sym, native, t): f"md:{t}:{ex}:{mk}:{sym}"
              for (ex, mk, sym, native), types in EXPECTED.items() for t in types}
    enough = {key: 1 if t in POLLED else 3 for (_e, _m, _s, _n, t), key in wanted.items()}
    try:
        c.start(timeout=60)

        def all_there() -> bool:
            return all(r.xlen(key) >= n for key, n in enough.items())

        try:
            wait_until(all_there, timeout=60, interval=0.5, what="every md stream")
        except AssertionError:
            missing = sorted(k for k, n in enough.items() if r.xlen(k) < n)
            raise AssertionError(f"streams missing or short: {missing}; "
                                 f"present: {sorted(r.keys('md:*'))}") from None
        for (ex, mk, sym, native, t), key in sorted(wanted.items()):
            es = entries(r, key)
            for e in es:
                # a polled series comes with its recent history (OKX rubik: a row per period)
                check_common(e, ex, mk, sym, native, t0, 86_400_000 if t in POLLED else 120_000)
            if t in POLLED:  # ... whose newest row is the current or the previous period
                assert max(int(e["ts_exchange"]) for e in es) >= t0 - 900_000, (key, es[-1])
            CHECKS[t](es)
        # nothing else was written: every md stream is one we asked for
        extra = set(r.keys("md:*")) - set(wanted.values())
        assert not extra, extra
        st = c.status()
        for name in ("binance", "okx", "bybit", "deribit"):
            assert st["children"][name]["state"] == "RUNNING"
            assert st["children"][name]["restarts"] == 0
        SimulatorClient(sim_ports["binance"]).set_trade_rate(0)
    finally:
        c.stop()
        c.kill_tree()
        srv.kill()
