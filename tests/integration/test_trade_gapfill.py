"""No holes in the trade tape (issue 5 point 3), end to end: the real collector (Binance spot +
USDⓈ-M, OKX, Bybit linear, Deribit; trades only) against the simulator, a real redis-server.

Trades flow; then every market-data connection is cut (``/_sim/ws/drop`` on Binance, the md drop
control on the venues) while the simulator keeps trading; the collector reconnects after its
backoff and fills the missed trades from the simulator's REST trade history. What reached Redis is
checked against the exchange side: Binance / OKX / Deribit trade ids run without a hole and
without a duplicate (OKX: the live tape is ``trades-all`` on /ws/v5/business, one fill per frame
like REST history-trades, so its ids are contiguous too); Bybit (ids not ordered) holds every trade the simulator's history has since
the first one we stored, once. On OKX the simulator's history is cut to 5 trades before the drop,
so the gap cannot be filled completely: a ``trade_gap`` marker with the exact bounds of what is
missing takes its place, and everything outside those bounds is there.
"""

from __future__ import annotations

import asyncio
import json
import urllib.request
from pathlib import Path
from typing import Any, Iterator

import aiohttp
import pytest

from collector.simulator.client import SimulatorClient, start_simulator_process, stop_simulator_process
from tests.conftest import RedisServer, wait_until
from tests.integration.harness import CollectorProcess
from workers.exchanges import okx_md

pytestmark = pytest.mark.integration

STREAMS = {
    "binance_spot": "md:trade:binance:spot:BTC-USDT",
    "binance_perp": "md:trade:binance:perp:BTC-USDT",
    "okx": "md:trade:okx:spot:BTC-USDT",
    "bybit": "md:trade:bybit:perp:BTC-USDT",
    "deribit": "md:trade:deribit:perp:BTC-USD",
}
CONTIGUOUS = ("binance_spot", "binance_perp", "deribit")


@pytest.fixture(scope="module")
def sim_ports() -> Iterator[dict[str, str]]:
    proc, _first, ports = start_simulator_process(
        exchanges="all,deribit", extra_args=["--futures-symbols", "BTCUSDT", "--md-rate", "10", "--seed", "5"])
    try:
        yield ports
    finally:
        stop_simulator_process(proc)


def env(ports: dict[str, str]) -> dict[str, str]:
    out = {"COLLECTOR_PUBLISHER__HEARTBEAT_INTERVAL": "1"}
    setup = {"binance": (["BTC-USDT"], ["spot", "perp"]), "okx": (["BTC-USDT"], ["spot"]),
             "bybit": (["BTC-USDT"], ["perp"]), "deribit": (["BTC-USD"], ["perp"])}
    for name, (symbols, markets) in setup.items():
        p = f"COLLECTOR_EXCHANGES__{name.upper()}__"
        out.update({
            p + "ENABLED": "true", p + "LISTINGS": "false", p + "MARKET_DATA": "true",
            p + "SYMBOLS": json.dumps(symbols), p + "MARKETS": json.dumps(markets), p + "CHANNELS": '["trade"]',
            p + "REST_URL": ports[name], p + "WS_URL": ports[name].replace("http://", "ws://"),
            # a reconnect takes ~2 s: ~20 trades per symbol are missed at 10 trades/s
            p + "RECONNECT_INITIAL": "2", p + "RECONNECT_MAX": "3",
        })
    return out


def entries(r: Any, key: str) -> list[dict[str, str]]:
    return [dict(f) for _id, f in r.xrange(key)]


def trades(es: list[dict[str, str]]) -> list[dict[str, str]]:
    return [e for e in es if e["type"] == "trade"]


def contiguous(ids: list[int]) -> bool:
    return bool(ids) and sorted(ids) == list(range(min(ids), max(ids) + 1))


def bybit_history(port_url: str) -> list[dict[str, Any]]:
    with urllib.request.urlopen(f"{port_url}/v5/market/recent-trade?category=linear&symbol=BTCUSDT&limit=1000",
                                timeout=5) as resp:
        return json.loads(resp.read())["result"]["list"]


def test_trades_missed_during_a_reconnect_are_filled_from_rest(
        tmp_path: Path, short_tmp: Path, sim_ports: dict[str, str]) -> None:
    sims = {name: SimulatorClient(url) for name, url in sim_ports.items() if name in
            ("binance", "okx", "bybit", "deribit")}
    for s in sims.values():
        s.md_reset()
    sims["binance"].set_trade_rate(0)
    sims["binance"].set_trade_rate(10, "BTCUSDT")     # the spot @trade tape
    srv = RedisServer(tmp_path / "redis").start()
    r = srv.client()
    c = CollectorProcess(short_tmp / "run", srv.url, **env(sim_ports))
    try:
        c.start(timeout=60)
        wait_until(lambda: all(r.xlen(k) >= 10 for k in STREAMS.values()), timeout=60, interval=0.3,
                   what="trades on every stream")
        before = {name: len(entries(r, k)) for name, k in STREAMS.items()}
        # the scripted unfillable case: OKX keeps only its 5 newest trades
        sims["okx"].md_configure(trade_history=5)
        sims["binance"].drop_connections()
        for name in ("okx", "bybit", "deribit"):
            sims[name].md_drop_connections()

        def settled() -> bool:
            es = {name: entries(r, k) for name, k in STREAMS.items()}
            if any(len(es[n]) < before[n] + 40 for n in es):
                return False
            ok = all(contiguous([int(e["trade_id"]) for e in trades(es[n])]) for n in CONTIGUOUS)
            return ok and any(e["type"] == "trade_gap" for e in es["okx"])

        wait_until(settled, timeout=60, interval=0.5, what="the gaps filled and the OKX marker")

        for name in CONTIGUOUS:
            ts = trades(entries(r, STREAMS[name]))
            ids = [int(e["trade_id"]) for e in ts]
            assert len(ids) == len(set(ids)), f"{name}: duplicate trades"
            assert contiguous(ids), f"{name}: a hole in the trade ids"
            assert any(e.get("source") == "rest" for e in ts), f"{name}: nothing was filled from REST"
            assert not [e for e in entries(r, STREAMS[name]) if e["type"] == "trade_gap"], name

        # OKX: the tape came from trades-all (one fill per frame), not the aggregated public trades
        sent = sims["okx"].md_stats()["frames_sent"]
        assert sent.get("trades-all", 0) > 0 and sent.get("trades", 0) == 0, sent
        # the marker bounds exactly what is missing; everything else is there, once
        es = entries(r, STREAMS["okx"])
        (marker,) = [e for e in es if e["type"] == "trade_gap"]
        assert marker["reason"] == "too_old" and marker["native_symbol"] == "BTC-USDT"
        lo, hi = int(marker["from_id"]), int(marker["to_id"])
        ids = [int(e["trade_id"]) for e in trades(es)]
        assert len(ids) == len(set(ids)) and hi - lo > 1
        assert sorted(ids) == [i for i in range(min(ids), max(ids) + 1) if not lo < i < hi]
        assert any(e.get("source") == "rest" for e in trades(es))

        # Bybit: every trade of the simulator's history since our first one is in Redis, once
        ts = trades(entries(r, STREAMS["bybit"]))
        got = [e["trade_id"] for e in ts]
        assert len(got) == len(set(got)), "bybit: duplicate trades"
        first_ts = min(int(e["ts_exchange"]) for e in ts)
        hist = bybit_history(sim_ports["bybit"])
        last_ts = max(int(e["ts_exchange"]) for e in ts)
        expected = {h["execId"] for h in hist if first_ts < int(h["time"]) < last_ts}
        assert expected and expected <= set(got), f"bybit: missing {sorted(expected - set(got))[:5]}"
        assert any(e.get("source") == "rest" for e in ts)
        assert c.status()["children"]["okx"]["state"] == "RUNNING"
    finally:
        c.stop()
        c.kill_tree()
        srv.kill()


def test_okx_trades_all_is_every_fill_once_like_history_trades(sim_ports: dict[str, str]) -> None:
    """The exchange side of the OKX tape: with tickers, candles and liquidations moving the
    instruments too, ``trades-all`` (business) pushes every fill once, one per frame, ids contiguous
    per instrument; the public ``trades`` channel carries the same fills; REST history-trades holds
    the same ids. Checked on the frames and on what our parser makes of them."""
    sim = SimulatorClient(sim_ports["okx"])
    sim.md_reset()
    ws = sim_ports["okx"].replace("http://", "ws://")
    insts = ("BTC-USDT", "BTC-USDT-SWAP")
    symbols = okx_md.symbol_map(list(insts))
    raw_ids: dict[str, dict[str, list[int]]] = {"trades-all": {}, "trades": {}}
    parsed_ids: dict[str, list[int]] = {}

    async def scenario() -> None:
        async with aiohttp.ClientSession() as session:
            biz = await session.ws_connect(ws + "/ws/v5/business")
            pub = await session.ws_connect(ws + "/ws/v5/public")
            await biz.send_str(json.dumps({"op": "subscribe", "args": [
                {"channel": c, "instId": i} for i in insts for c in ("trades-all", "candle1m")]}))
            await pub.send_str(json.dumps({"op": "subscribe", "args": [
                {"channel": c, "instId": i} for i in insts for c in ("trades", "tickers")]
                + [{"channel": "liquidation-orders", "instType": "SWAP"}]}))

            async def read(conn: aiohttp.ClientWebSocketResponse) -> None:
                async for m in conn:
                    msg = json.loads(m.data)
                    channel = msg.get("arg", {}).get("channel") if isinstance(msg, dict) else None
                    if channel not in raw_ids or "data" not in msg:
                        continue
                    if channel == "trades-all":
                        assert len(msg["data"]) == 1, msg            # one fill per push
                        assert set(msg["data"][0]) == {"instId", "tradeId", "px", "sz", "side", "source", "ts"}
                        for ev in okx_md.parse_message(m.data, symbols, 0, 0).events:
                            f = dict(zip(ev[3][0::2], ev[3][1::2]))
                            parsed_ids.setdefault(f["native_symbol"], []).append(int(f["trade_id"]))
                    for row in msg["data"]:
                        raw_ids[channel].setdefault(row["instId"], []).append(int(row["tradeId"]))

            readers = [asyncio.create_task(read(c)) for c in (biz, pub)]
            try:
                for _ in range(200):
                    if all(len(parsed_ids.get(i, ())) >= 40 for i in insts):
                        break
                    await asyncio.sleep(0.1)
            finally:
                for t in readers:
                    t.cancel()
                await asyncio.gather(*readers, return_exceptions=True)

    asyncio.run(scenario())
    for inst in insts:
        ids = parsed_ids[inst]
        assert len(ids) >= 40 and ids == list(range(ids[0], ids[0] + len(ids))), (inst, ids[:10])
        assert raw_ids["trades-all"][inst] == ids
        n = min(len(ids), len(raw_ids["trades"][inst]))
        assert raw_ids["trades"][inst][:n] == ids[:n], inst    # the same tape, one fill per taker order here
        with urllib.request.urlopen(f"{sim_ports['okx']}/api/v5/market/history-trades?instId={inst}&type=1"
                                    f"&after={ids[-1] + 1}&limit=100", timeout=5) as resp:
            rest = [int(r["tradeId"]) for r in json.loads(resp.read())["data"]]
        assert sorted(rest) == ids[-len(rest):] and len(rest) == min(100, len(ids)), inst
