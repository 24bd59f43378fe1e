"""The whole collector as a user runs it: real redis-server, real simulator over sockets,
`collector run` with its publisher and worker processes. Assertions are on what reached Redis."""

from __future__ import annotations

import asyncio
import json
import signal
import threading
import time
from pathlib import Path

import orjson
import pytest

from collector.simulator.client import SimulatorClient, start_simulator_process, stop_simulator_process
from tests.conftest import wait_until
from tests.integration.harness import CollectorProcess, delivered_ids, stream_entries, trade_ids

pytestmark = pytest.mark.integration

BTC = "md:trade:binance:spot:BTC-USDT"
ETH = "md:trade:binance:spot:ETH-USDT"

FAST = {
    "COLLECTOR_EXCHANGES__BINANCE__POLL_INTERVAL": "0.5",
    "COLLECTOR_PUBLISHER__HEARTBEAT_INTERVAL": "1",
    "COLLECTOR_SUPERVISOR__BACKOFF_INITIAL": "0.5",
    "COLLECTOR_SUPERVISOR__SAMPLE_INTERVAL": "0.5",
    "COLLECTOR_SUPERVISOR__STOP_TIMEOUT": "5",
    "COLLECTOR_SUPERVISOR__SHUTDOWN_TIMEOUT": "15",
    "COLLECTOR_LOG_LEVEL": "DEBUG",
}


@pytest.fixture
def sim():
    proc, url = start_simulator_process()
    client = SimulatorClient(url)
    try:
        yield client
    finally:
        stop_simulator_process(proc)


@pytest.fixture
def collector(short_tmp: Path, redis_server, sim):
    made: list[CollectorProcess] = []

    def make(**env: str) -> CollectorProcess:
        full = {**FAST, **{k if k.startswith("COLLECTOR_") else f"COLLECTOR_{k}": v for k, v in env.items()}}
        c = CollectorProcess(short_tmp / "run", redis_server.url, sim.base_url, **full)
        made.append(c)
        return c

    try:
        yield make
    finally:
        for c in made:
            c.kill_tree()


def wait_connected(c: CollectorProcess, sim: SimulatorClient, timeout: float = 15.0) -> None:
    wait_until(lambda: c.child("binance").get("connection") == "connected"
               and sim.stats()["connections"]["open"] >= 1, timeout=timeout, what="binance WS connected")


def wait_all_delivered(client, sim: SimulatorClient, symbol: str, stream: str, timeout: float = 20.0) -> list[int]:
    def done():
        want = delivered_ids(sim, symbol)
        return want and client.xlen(stream) >= len(want) and want
    return wait_until(done, timeout=timeout, what=f"all delivered {symbol} trades in {stream}")


class FrameTap:
    """Our own WebSocket subscriber to the simulator: the frames the collector should have seen."""

    def __init__(self, ws_url: str) -> None:
        self.frames: list[dict] = []
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._t = threading.Thread(target=lambda: asyncio.run(self._run(ws_url)), daemon=True)
        self._t.start()
        assert self._ready.wait(10)

    async def _run(self, url: str) -> None:
        import aiohttp

        async with aiohttp.ClientSession() as s:
            async with s.ws_connect(url) as ws:
                self._ready.set()
                while not self._stop.is_set():
                    try:
                        msg = await ws.receive(timeout=0.2)
                    except asyncio.TimeoutError:
                        continue
                    if msg.type == aiohttp.WSMsgType.TEXT:
                        self.frames.append(orjson.loads(msg.data))
                    elif msg.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
                        return

    def close(self) -> None:
        self._stop.set()
        self._t.join(5)


def test_trades_reach_redis_normalized_and_deduplicated(collector, sim, redis_server) -> None:
    r = redis_server.client()
    c = collector().start()
    wait_connected(c, sim)
    tap = FrameTap(sim.ws_url + "/stream?streams=btcusdt@trade/ethusdt@trade")
    sim.set_duplicate(True)  # every trade frame sent twice: the collector must store each once
    sim.burst("BTCUSDT", 300)
    sim.burst("ETHUSDT", 200)
    want_btc = wait_all_delivered(r, sim, "BTCUSDT", BTC)
    want_eth = wait_all_delivered(r, sim, "ETHUSDT", ETH)
    time.sleep(0.5)  # a duplicate arriving late would show up now
    tap.close()
    assert trade_ids(r, BTC) == want_btc and len(want_btc) == 300
    assert trade_ids(r, ETH) == want_eth and len(want_eth) == 200

    # every stored entry equals the exchange's frame, normalized
    frames = {(f["data"]["s"], f["data"]["t"]): f["data"] for f in tap.frames}
    entries = stream_entries(r, BTC) + stream_entries(r, ETH)
    checked = 0
    for e in entries:
        f = frames.get((e["native_symbol"], int(e["trade_id"])))
        if f is None:
            continue
        checked += 1
        assert e["type"] == "trade" and e["exchange"] == "binance" and e["market"] == "spot"
        assert e["symbol"] == {"BTCUSDT": "BTC-USDT", "ETHUSDT": "ETH-USDT"}[e["native_symbol"]]
        assert e["price"] == f["p"] and e["qty"] == f["q"]
        assert e["side"] == ("sell" if f["m"] else "buy")
        assert int(e["ts_exchange"]) == f["T"]
        assert int(e["ts_receive"]) >= f["E"] - 5
    assert checked >= 450, f"only {checked} entries matched tapped frames"

    st = c.child("binance")
    assert st["state"] == "RUNNING"
    pub = c.status()["children"]["publisher"]
    assert pub["state"] == "RUNNING"

    def heartbeat_after_the_trades() -> dict | None:
        # written every second: the first one may predate the trades
        h = r.hgetall("node:heartbeat:TEST_NODE")
        return h if h and json.loads(h["stats"])["events_pushed"] >= 500 else None

    hb = wait_until(heartbeat_after_the_trades, timeout=10, what="a heartbeat counting the trades")
    assert hb["status"] == "running" and hb["node_id"] == "TEST_NODE"
    stats = json.loads(hb["stats"])
    for k in ("events_collected", "events_pushed", "errors", "last_event_at", "exchanges_active",
              "ws_connections", "ws_reconnects", "rest_calls", "rest_errors"):
        assert k in stats, k
    assert stats["events_pushed"] >= 500
    assert 0 < r.ttl("node:heartbeat:TEST_NODE") <= 120
    assert c.stop() == 0


def test_listing_once_within_poll_interval_and_not_after_restart(collector, sim, redis_server) -> None:
    r = redis_server.client()
    c = collector().start()
    wait_until(lambda: r.exists("known:pairs:binance"), what="first exchangeInfo snapshot seeded")
    time.sleep(1.2)  # a few more polls: the seed must stay silent
    assert r.xlen("events:raw") == 0

    visible = sim.add_symbol("NEWUSDT", "NEW", "USDT")["visible_at_ms"]
    wait_until(lambda: r.xlen("events:raw") >= 1, timeout=5, what="listing event")
    (entry_id, ev), = r.xrange("events:raw")
    assert int(entry_id.split("-")[0]) - visible <= 500 + 1000, "not within poll interval + 1 s"
    assert ev["event"] == "listing" and ev["exchange"] == "binance" and ev["symbol"] == "NEW"
    assert ev["source"] == "rest_binance" and ev["source_type"] == "exchange"
    assert ev["pair"] == "NEW-USDT" and ev["native_symbol"] == "NEWUSDT" and ev["market"] == "spot"
    assert ev["url"] == "https://www.binance.com/en/trade/NEW_USDT" and ev["node_id"] == "TEST_NODE"
    assert "NEW/USDT" in ev["raw_text"] and int(ev["detected_at"]) >= visible

    assert c.stop() == 0
    sim.add_symbol("LATEUSDT", "LATE", "USDT")  # listed while the collector is down
    c2 = collector().start()
    wait_until(lambda: r.xlen("events:raw") >= 2, timeout=10, what="listing made while down")
    time.sleep(2.0)  # several polls after the restart
    events = [(f["native_symbol"], f["event"]) for f in stream_entries(r, "events:raw")]
    assert events == [("NEWUSDT", "listing"), ("LATEUSDT", "listing")]
    assert c2.stop() == 0


def test_kill9_worker_is_restarted_and_trades_resume(collector, sim, redis_server) -> None:
    r = redis_server.client()
    c = collector().start()
    wait_connected(c, sim)
    sim.set_trade_rate(50, "BTCUSDT")
    wait_until(lambda: r.xlen(BTC) > 10, what="trades flowing")
    old = c.kill_child("binance", signal.SIGKILL)
    st = wait_until(lambda: (s := c.child("binance"))["state"] == "RUNNING" and s["pid"] != old and s,
                    timeout=20, what="binance restarted")
    assert st["restarts"] == 1 and "SIGKILL" in (st.get("last_exit") or "")
    n = r.xlen(BTC)
    wait_until(lambda: r.xlen(BTC) > n + 20, timeout=15, what="trades resumed after restart")
    res = c.ctl("status", "--json")
    assert json.loads(res.stdout)["children"]["binance"]["restarts"] == 1
    sim.set_trade_rate(0, "BTCUSDT")
    assert c.stop() == 0


def test_leaking_worker_is_recycled_not_counted_as_crash(collector, sim, redis_server) -> None:
    c = collector(
        TESTING__LEAK_EXCHANGE="binance", TESTING__LEAK_MB_PER_S="60",
        SUPERVISOR__MAX_RSS_MB="250", SUPERVISOR__OVER_LIMIT_SAMPLES="2",
    ).start()
    st = wait_until(lambda: (s := c.child("binance"))["recycles"] >= 1 and s, timeout=30, what="a recycle")
    assert st["restarts"] == 0
    wait_until(lambda: c.child("binance")["state"] in ("RUNNING", "STARTING", "RECYCLING"), timeout=10)
    code, body = c.http("/metrics")
    assert code == 200
    line = [ln for ln in body.decode().splitlines() if ln.startswith('collector_child_recycles_total{name="binance"}')]
    assert line and float(line[0].split()[-1]) >= 1
    assert c.stop() == 0


def test_redis_down_20s_then_back_delivers_everything_in_order(collector, sim, redis_server) -> None:
    r = redis_server.client()
    c = collector().start()
    wait_connected(c, sim)
    sim.set_trade_rate(40, "BTCUSDT")
    wait_until(lambda: r.xlen(BTC) > 10, what="trades flowing")
    redis_server.stop()
    time.sleep(20)
    health = c.http_json("/health", timeout=1.0)  # answers while Redis is down
    assert health["status"] in ("degraded", "unhealthy") and any("redis" in x.lower() for x in health["reasons"])
    redis_server.start()
    time.sleep(2)
    sim.set_trade_rate(0, "BTCUSDT")
    r = redis_server.client()
    want = wait_all_delivered(r, sim, "BTCUSDT", BTC, timeout=30)
    assert len(want) > 800
    assert trade_ids(r, BTC) == want  # all of them, in order, once
    assert c.stop() == 0


def test_sigterm_exits_0_and_loses_nothing_accepted(collector, sim, redis_server) -> None:
    r = redis_server.client()
    c = collector().start()
    wait_connected(c, sim)
    sim.set_trade_rate(300, "BTCUSDT")
    sim.set_trade_rate(300, "ETHUSDT")
    wait_until(lambda: r.xlen(BTC) > 50, what="trades flowing")
    redis_server.freeze()  # the publisher now holds everything in its buffer
    time.sleep(2)
    before = {s: sim.stats()["symbols"][s]["last_delivered_id"] for s in ("BTCUSDT", "ETHUSDT")}
    time.sleep(0.3)
    c.proc.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    redis_server.thaw()
    assert c.proc.wait(40) == 0
    sim.set_trade_rate(0)
    for sym, stream in (("BTCUSDT", BTC), ("ETHUSDT", ETH)):
        ids = trade_ids(r, stream)
        assert ids == list(range(1, len(ids) + 1)), f"{sym}: gap or duplicate in the stored tape"
        assert ids[-1] >= before[sym], f"{sym}: trades delivered before SIGTERM were lost"


def test_collectorctl_status_restart_stop_start_logs(collector, sim, redis_server) -> None:
    c = collector().start()
    res = c.ctl("status")
    assert res.returncode == 0, res.stdout + res.stderr
    for word in ("NAME", "STATE", "publisher", "binance", "RUNNING"):
        assert word in res.stdout
    data = json.loads(c.ctl("status", "--json").stdout)
    assert set(data["children"]) == {"publisher", "binance"}

    old = c.child("binance")["pid"]
    res = c.ctl("restart", "binance")
    assert res.returncode == 0, res.stdout + res.stderr
    wait_until(lambda: (s := c.child("binance"))["state"] == "RUNNING" and s["pid"] != old, timeout=20)
    assert c.child("binance")["restarts"] == 0  # an operator restart is not a crash

    res = c.ctl("stop", "binance")
    assert res.returncode == 0
    wait_until(lambda: c.child("binance")["state"] == "STOPPED", timeout=15)
    assert c.ctl("status").returncode == 3
    assert c.ctl("start", "binance").returncode == 0
    wait_until(lambda: c.ctl("status").returncode == 0, timeout=20, what="all running again")

    logs = c.ctl("logs", "binance", "-n", "5")
    assert logs.returncode == 0 and 0 < len(logs.stdout.strip().splitlines()) <= 5
    assert c.ctl("restart", "nosuch").returncode != 0

    code, body = c.http("/metrics")
    text = body.decode()
    assert code == 200 and "collector_events_pushed_total" in text and "collector_child_rss_bytes" in text
    assert c.stop() == 0
    assert c.ctl("status").returncode == 4


def test_health_degrades_when_the_exchange_stalls_and_recovers(collector, sim, redis_server) -> None:
    c = collector(EXCHANGES__BINANCE__STALE_TIMEOUT="1.5", HEALTH__STALE_AFTER="1.5").start()
    wait_connected(c, sim)
    sim.set_trade_rate(20, "BTCUSDT")
    wait_until(lambda: c.http("/health")[0] == 200 and c.http_json("/health")["status"] == "healthy",
               timeout=15, what="healthy")
    sim.stall()
    h = wait_until(lambda: (h := c.http_json("/health"))["status"] == "degraded" and h, timeout=10,
                   what="degraded while stalled")
    assert c.http("/health")[0] == 200
    assert any("binance" in reason for reason in h["reasons"]), h
    # a wedged worker (SIGSTOP) must not stop the parent from answering within 1 s
    pid = c.kill_child("binance", signal.SIGSTOP)
    try:
        code, _ = c.http("/health", timeout=1.0)
        assert code in (200, 503)
    finally:
        import os

        os.kill(pid, signal.SIGCONT)
    sim.unstall()
    wait_until(lambda: c.http_json("/health")["status"] == "healthy", timeout=20, what="healthy again")
    sim.set_trade_rate(0, "BTCUSDT")
    assert c.stop() == 0


def test_malformed_frames_are_counted_and_nothing_else_is_lost(collector, sim, redis_server) -> None:
    r = redis_server.client()
    c = collector().start()
    wait_connected(c, sim)
    sim.set_trade_rate(100, "BTCUSDT")
    wait_until(lambda: r.xlen(BTC) > 20, what="trades flowing")
    sim.send_malformed(kinds=["garbage", "truncated", "binary"], count=5)
    time.sleep(1)
    sim.set_trade_rate(0, "BTCUSDT")
    want = wait_all_delivered(r, sim, "BTCUSDT", BTC)
    assert trade_ids(r, BTC) == want
    st = wait_until(lambda: (s := c.child("binance")).get("parse_errors", 0) >= 15 and s, timeout=5,
                    what="parse errors counted")
    assert st["state"] == "RUNNING" and st["restarts"] == 0
    assert c.stop() == 0


def test_restart_of_the_publisher_alone_keeps_trades_flowing(collector, sim, redis_server) -> None:
    r = redis_server.client()
    c = collector().start()
    wait_connected(c, sim)
    sim.set_trade_rate(50, "BTCUSDT")
    wait_until(lambda: r.xlen(BTC) > 10, what="trades flowing")
    old = c.child("publisher")["pid"]
    res = c.ctl("restart", "publisher")
    assert res.returncode == 0, res.stdout + res.stderr
    wait_until(lambda: (p := c.child("publisher"))["state"] == "RUNNING" and p["pid"] != old, timeout=20,
               what="new publisher RUNNING")
    n = r.xlen(BTC)
    wait_until(lambda: r.xlen(BTC) > n + 30, timeout=15, what="worker reconnected; trades flowing again")
    ids = trade_ids(r, BTC)
    assert len(ids) == len(set(ids)), "duplicates after a publisher restart"
    assert c.child("publisher")["restarts"] == 0 and c.child("binance")["restarts"] == 0
    sim.set_trade_rate(0, "BTCUSDT")
    assert c.stop() == 0


def test_children_exit_when_the_parent_is_killed(collector, sim, redis_server) -> None:
    import psutil

    c = collector().start()
    pids = [c.child("publisher")["pid"], c.child("binance")["pid"]]
    c.proc.send_signal(signal.SIGKILL)  # the parent only: no graceful shutdown
    c.proc.wait(10)

    def all_gone() -> bool:
        for pid in pids:
            try:
                if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                    return False
            except psutil.NoSuchProcess:
                pass
        return True

    wait_until(all_gone, timeout=10, what="publisher and worker exit after their parent died")
    # and a new collector can take the node id's lock and run
    c2 = collector().start()
    assert c2.stop() == 0
