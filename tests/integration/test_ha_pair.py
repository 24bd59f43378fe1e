"""HA pair (issue 5 point 4): two collector nodes with different node ids on one Redis, both
collecting the same exchange from the same simulator, put each trade and each listing into the
streams once; when one node's whole process tree is SIGKILLed the other carries on with no gap.
Real redis-server, real simulator over sockets, two real `collector run` process trees."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from collector.simulator.client import SimulatorClient, start_simulator_process, stop_simulator_process
from tests.conftest import wait_until
from tests.integration.harness import CollectorProcess, assert_exactly_once_in_order, settle_tape, stream_entries
from tests.integration.test_collector_e2e import BTC, FAST

pytestmark = pytest.mark.integration


@pytest.fixture
def pair(short_tmp: Path, redis_server):
    proc, url = start_simulator_process()
    sim = SimulatorClient(url)
    nodes = [CollectorProcess(short_tmp / name, redis_server.url, url, **FAST, COLLECTOR_NODE_ID=name)
             for name in ("NODE_A", "NODE_B")]
    try:
        yield sim, nodes
    finally:
        for n in nodes:
            n.kill_tree()
        stop_simulator_process(proc)


def _connected(node: CollectorProcess) -> bool:
    return node.child("binance").get("connection") == "connected"


def test_two_nodes_write_each_trade_and_listing_once_and_survive_a_kill(pair, redis_server) -> None:
    sim, (a, b) = pair
    r = redis_server.client()
    a.start()
    b.start()
    wait_until(lambda: _connected(a) and _connected(b) and sim.stats()["connections"]["open"] >= 2,
               timeout=20, what="both nodes subscribed")
    sim.set_trade_rate(800, "BTCUSDT")
    wait_until(lambda: r.xlen(BTC) > 1500, timeout=20, what="trades flowing from the pair")
    # both nodes detect the same new listing; one event reaches events:raw
    wait_until(lambda: r.hlen("known:pairs:binance") > 0, timeout=20, what="listing state seeded")
    sim.add_listing("HAX", "USDT")
    wait_until(lambda: r.hget("known:pairs:binance", "spot:HAXUSDT") == "trading", timeout=20,
               what="the listing recorded")
    time.sleep(2.0)  # both nodes poll at 0.5 s: the slower one has seen it too by now
    listing = [f for f in stream_entries(r, "events:raw") if f.get("native_symbol") == "HAXUSDT"]
    assert [f["event"] for f in listing] == ["listing"]

    # kill -9 node A's whole tree (parent, publisher, worker) mid-stream; B carries on
    a.kill_tree()
    n = r.xlen(BTC)
    wait_until(lambda: r.xlen(BTC) > n + 1500, timeout=20, what="node B carries on alone")
    want, got = settle_tape(r, sim, "BTCUSDT", BTC, timeout=20)
    assert_exactly_once_in_order(want, got)
    # both nodes wrote part of it (the pair really shared the stream), or B took over from A
    nodes = {f.get("node_id") for f in listing}
    assert nodes <= {"NODE_A", "NODE_B"}
    assert b.stop() == 0


def _bybit_node(short_tmp: Path, name: str, redis_url: str, sim_url: str) -> CollectorProcess:
    p = "COLLECTOR_EXCHANGES__BYBIT__"
    return CollectorProcess(short_tmp / name, redis_url, None, **FAST, COLLECTOR_NODE_ID=name, **{
        "COLLECTOR_EXCHANGES__BINANCE__ENABLED": "false",
        "COLLECTOR_PUBLISHER__CROSS_NODE_DEDUP": "true",
        p + "ENABLED": "true", p + "LISTINGS": "false", p + "MARKET_DATA": "true",
        p + "SYMBOLS": '["BTC-USDT"]', p + "CHANNELS": '["trade"]', p + "MARKETS": '["spot"]',
        p + "REST_URL": sim_url, p + "WS_URL": sim_url.replace("http://", "ws://"),
    })


def test_trades_without_a_monotonic_id_are_written_once_by_a_pair_with_cross_node_dedup(
        short_tmp: Path, redis_server) -> None:
    # Bybit trade ids carry no order the publisher can use as a high-watermark: with
    # cross_node_dedup the pair deduplicates them by key in Redis
    proc, _first, ports = start_simulator_process(exchanges=["bybit"], extra_args=["--md-rate", "0"])
    sim = SimulatorClient(ports["bybit"])
    r = redis_server.client()
    stream = "md:trade:bybit:spot:BTC-USDT"
    a = _bybit_node(short_tmp, "NODE_A", redis_server.url, ports["bybit"])
    b = _bybit_node(short_tmp, "NODE_B", redis_server.url, ports["bybit"])
    try:
        a.start()
        b.start()
        sim.md_set_rate(20, channel="publicTrade", symbol="BTCUSDT")
        wait_until(lambda: sim.md_stats()["subscriptions"] >= 2 and r.xlen(stream) > 40, timeout=20,
                   what="both nodes subscribed and trades flowing")
        a.kill_tree()                      # node B carries on alone
        n = r.xlen(stream)
        wait_until(lambda: r.xlen(stream) > n + 40, timeout=20, what="node B carries on")
        sim.md_set_rate(0, channel="publicTrade", symbol="BTCUSDT")
        time.sleep(1.0)
        ids = [int(f["trade_id"]) for f in stream_entries(r, stream) if f["type"] == "trade"]
        assert len(ids) == len(set(ids)), f"{len(ids) - len(set(ids))} written twice"
        tape = sim.md_trades()["spot:BTCUSDT"]
        base = 2_290_000_000_000_000_000           # the simulator's Bybit spot execId offset
        assert max(ids) == base + tape["last_id"]
        assert sorted(ids) == list(range(min(ids), max(ids) + 1)), "a hole in the tape"
        assert b.stop() == 0
    finally:
        a.kill_tree()
        b.kill_tree()
        stop_simulator_process(proc)
