"""An in-order, gap-free trade tape across reconnects, worker SIGKILLs and an HA pair (issue 5
points 3, 4 and 6), end to end: real `collector run` process trees, a real redis-server, the
simulator over real sockets (Binance spot ``@trade`` and ``@aggTrade`` (the ``agg_trade`` tape) +
USDⓈ-M ``@aggTrade``, OKX), trades flowing.

What reached Redis is checked against the simulator's own REST trade history (the exchange side):
per stream the ids, read in stream order, run strictly increasing and without a hole or a duplicate
from the first stored trade to the last one the simulator made, and the stream's high-watermark
(``pub:hwm:{stream}``, only written by events that carry their id as ``mono_id``) is that last id.
"""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any, Iterator

import pytest

from collector.simulator.client import SimulatorClient, start_simulator_process, stop_simulator_process
from tests.conftest import RedisServer, wait_until
from tests.integration.harness import CollectorProcess, ranges_to_ids, stream_entries

pytestmark = pytest.mark.integration

SPOT = "md:trade:binance:spot:BTC-USDT"
SPOT_AGG = "md:agg_trade:binance:spot:BTC-USDT"
PERP = "md:trade:binance:perp:BTC-USDT"
OKX = "md:trade:okx:spot:BTC-USDT"
RATE = 20   # trades/s per stream (the simulator's market-data topics go up to 20)


@pytest.fixture
def sim() -> Iterator[dict[str, str]]:
    proc, _first, ports = start_simulator_process(
        exchanges="binance,okx", extra_args=["--futures-symbols", "BTCUSDT", "--md-rate", "5", "--seed", "7"])
    try:
        for name in ("binance", "okx"):
            SimulatorClient(ports[name]).md_configure(trade_history=50_000)
        yield ports
    finally:
        stop_simulator_process(proc)


def node_env(ports: dict[str, str], exchanges: tuple[str, ...], ws: dict[str, str] | None = None,
             **extra: str) -> dict[str, str]:
    out = {
        "COLLECTOR_PUBLISHER__HEARTBEAT_INTERVAL": "1",
        "COLLECTOR_SUPERVISOR__BACKOFF_INITIAL": "0.5",
        "COLLECTOR_SUPERVISOR__SAMPLE_INTERVAL": "0.5",
        "COLLECTOR_SUPERVISOR__STOP_TIMEOUT": "5",
        "COLLECTOR_SUPERVISOR__SHUTDOWN_TIMEOUT": "15",
    }
    markets = {"binance": ["spot", "perp"], "okx": ["spot"]}
    channels = {"binance": ["trade", "agg_trade"], "okx": ["trade"]}
    for name in exchanges:
        p = f"COLLECTOR_EXCHANGES__{name.upper()}__"
        out.update({
            p + "ENABLED": "true", p + "LISTINGS": "false", p + "MARKET_DATA": "true",
            p + "SYMBOLS": '["BTC-USDT"]', p + "MARKETS": json.dumps(markets[name]),
            p + "CHANNELS": json.dumps(channels[name]),
            p + "REST_URL": ports[name],
            p + "WS_URL": (ws or {}).get(name, ports[name].replace("http://", "ws://")),
            p + "RECONNECT_INITIAL": "1", p + "RECONNECT_MAX": "2",
        })
    out.update(extra)
    return out


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return json.loads(resp.read())


def history_last(ports: dict[str, str], stream: str) -> int:
    """The newest trade id the simulator made on ``stream`` (its REST trade history)."""
    if stream == SPOT:
        rows = get_json(f"{ports['binance']}/api/v3/historicalTrades?symbol=BTCUSDT&limit=5")
        return max(int(r["id"]) for r in rows)
    if stream in (PERP, SPOT_AGG):
        path = "/fapi/v1/aggTrades" if stream == PERP else "/api/v3/aggTrades"
        rows = get_json(f"{ports['binance']}{path}?symbol=BTCUSDT&limit=5")
        return max(int(r["a"]) for r in rows)
    rows = get_json(f"{ports['okx']}/api/v5/market/history-trades?instId=BTC-USDT&type=1&limit=5")["data"]
    return max(int(r["tradeId"]) for r in rows)


def start_trading(ports: dict[str, str], exchanges: tuple[str, ...]) -> None:
    b = SimulatorClient(ports["binance"])
    b.set_trade_rate(0)
    b.set_trade_rate(RATE, "BTCUSDT")                 # the spot @trade tape
    b.md_set_rate(RATE, "aggTrade")                   # USD-M trades and the spot aggregates
    if "okx" in exchanges:
        SimulatorClient(ports["okx"]).md_set_rate(RATE)   # its only topic here: the trade tape


def stop_trading(ports: dict[str, str], exchanges: tuple[str, ...]) -> None:
    b = SimulatorClient(ports["binance"])
    b.set_trade_rate(0)
    b.md_set_rate(0, "aggTrade")
    if "okx" in exchanges:
        SimulatorClient(ports["okx"]).md_set_rate(0)


def trade_ids_in_order(r: Any, stream: str) -> list[int]:
    es = stream_entries(r, stream)
    tape = "agg_trade" if stream == SPOT_AGG else "trade"
    assert all(e["type"] == tape for e in es), f"{stream}: a trade_gap marker: {[e for e in es if e['type'] != tape]}"
    return [int(e["trade_id"]) for e in es]


def settle(r: Any, ports: dict[str, str], streams: tuple[str, ...]) -> dict[str, int]:
    """Trading stopped: wait until each stream holds the simulator's last trade."""
    time.sleep(0.5)
    last = {s: history_last(ports, s) for s in streams}

    def done() -> bool:
        return all(r.get(f"pub:hwm:{s}") == str(last[s]) for s in streams)
    wait_until(done, timeout=25, interval=0.3, what=f"every stream at the simulator's last trade {last}")
    time.sleep(0.5)  # nothing more may come
    return last


def assert_tape(r: Any, stream: str, last: int) -> list[int]:
    """Strictly increasing in stream order, no hole, no duplicate, up to the simulator's last trade."""
    ids = trade_ids_in_order(r, stream)
    assert ids, stream
    assert len(ids) == len(set(ids)), f"{stream}: {len(ids) - len(set(ids))} duplicated"
    bad = [(a, b) for a, b in zip(ids, ids[1:]) if b != a + 1]
    assert not bad, f"{stream}: out of order or holes at {bad[:5]}"
    assert ids[-1] == last, f"{stream}: ends at {ids[-1]}, the simulator made up to {last}"
    return ids


def rest_filled(r: Any, stream: str) -> int:
    return sum(1 for e in stream_entries(r, stream) if e.get("source") == "rest")


def test_reconnect_keeps_one_ordered_tape(tmp_path: Path, short_tmp: Path, sim: dict[str, str]) -> None:
    exchanges = ("binance", "okx")
    streams = (SPOT, SPOT_AGG, PERP, OKX)
    srv = RedisServer(tmp_path / "redis").start()
    r = srv.client()
    c = CollectorProcess(short_tmp / "run", srv.url, **node_env(sim, exchanges))
    try:
        c.start(timeout=60)
        start_trading(sim, exchanges)
        wait_until(lambda: all(r.xlen(s) >= 40 for s in streams), timeout=30, interval=0.3, what="trades flowing")
        before = {s: r.xlen(s) for s in streams}
        SimulatorClient(sim["binance"]).drop_connections()
        for name in exchanges:
            SimulatorClient(sim[name]).md_drop_connections()
        # the reconnect takes >= 1 s: ~20+ trades per stream are missed, then filled from REST
        wait_until(lambda: all(rest_filled(r, s) >= 5 and r.xlen(s) >= before[s] + 60 for s in streams),
                   timeout=30, interval=0.3, what="the gaps filled and live trades flowing again")
        stop_trading(sim, exchanges)
        last = settle(r, sim, streams)
        for s in streams:
            assert_tape(r, s, last[s])
        assert c.child("binance")["state"] == "RUNNING" and c.child("okx")["state"] == "RUNNING"
    finally:
        c.kill_tree()
        srv.kill()


def test_worker_sigkill_resumes_from_redis(tmp_path: Path, short_tmp: Path, sim: dict[str, str]) -> None:
    exchanges = ("binance",)
    streams = (SPOT, SPOT_AGG, PERP)
    srv = RedisServer(tmp_path / "redis").start()
    r = srv.client()
    c = CollectorProcess(short_tmp / "run", srv.url, **node_env(sim, exchanges))
    binance = SimulatorClient(sim["binance"])
    try:
        c.start(timeout=60)
        start_trading(sim, exchanges)
        wait_until(lambda: all(r.xlen(s) >= 60 for s in streams), timeout=30, interval=0.3, what="trades flowing")
        for round_ in range(2):
            old = c.kill_child("binance")     # kill -9 mid-stream: unacked batches and live trades lost
            wait_until(lambda: c.child("binance")["pid"] not in (None, old) and c.child("binance")["state"] == "RUNNING",
                       timeout=20, interval=0.2, what="the parent restarted the worker")
            n = {s: r.xlen(s) for s in streams}
            wait_until(lambda: all(r.xlen(s) >= n[s] + 60 for s in streams), timeout=20, interval=0.3,
                       what="the new worker publishing")
        stop_trading(sim, exchanges)
        last = settle(r, sim, streams)
        for s in streams:
            ids = assert_tape(r, s, last[s])
            # what the simulator delivered while no worker was up was not delivered at all: the
            # restarted worker took it from the REST history, from where Redis stood
            assert rest_filled(r, s) > 0, f"{s}: nothing was filled from REST after the restarts"
            if s == SPOT:
                delivered = set(ranges_to_ids(binance.stats()["symbols"]["BTCUSDT"]["delivered_ranges"]))
                assert {i for i in delivered if i >= ids[0]} <= set(ids)
    finally:
        c.kill_tree()
        srv.kill()


class TcpProxy:
    """A plain TCP relay in front of the simulator, so one node's connections can be cut alone."""

    def __init__(self, target_port: int) -> None:
        self.target = target_port
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.socks: list[socket.socket] = []
        self.lock = threading.Lock()
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.closed:
            try:
                client, _ = self.server.accept()
                upstream = socket.create_connection(("127.0.0.1", self.target))
            except OSError:
                continue
            with self.lock:
                self.socks += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def cut(self) -> int:
        """Cut every relayed connection (no close frame); new ones are relayed again."""
        with self.lock:
            socks, self.socks = self.socks, []
        for s in socks:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()
        return len(socks) // 2

    def close(self) -> None:
        self.closed = True
        self.server.close()
        self.cut()


def test_ha_pair_one_copy_across_a_drop_and_a_worker_kill(tmp_path: Path, short_tmp: Path,
                                                          sim: dict[str, str]) -> None:
    exchanges = ("binance",)
    streams = (SPOT, SPOT_AGG, PERP)
    srv = RedisServer(tmp_path / "redis").start()
    r = srv.client()
    port = int(sim["binance"].rsplit(":", 1)[1])
    proxy = TcpProxy(port)
    a = CollectorProcess(short_tmp / "a", srv.url, COLLECTOR_NODE_ID="NODE_A",
                         **node_env(sim, exchanges, ws={"binance": f"ws://127.0.0.1:{proxy.port}"}))
    b = CollectorProcess(short_tmp / "b", srv.url, COLLECTOR_NODE_ID="NODE_B", **node_env(sim, exchanges))
    try:
        a.start(timeout=60)
        b.start(timeout=60)
        start_trading(sim, exchanges)
        wait_until(lambda: all(r.xlen(s) >= 60 for s in streams), timeout=30, interval=0.3, what="trades flowing")
        assert proxy.cut() >= 1                       # node A alone loses its connections ...
        old = b.kill_child("binance")                 # ... and node B's worker dies meanwhile
        wait_until(lambda: b.child("binance")["pid"] not in (None, old) and b.child("binance")["state"] == "RUNNING",
                   timeout=20, interval=0.2, what="node B's worker restarted")
        n = {s: r.xlen(s) for s in streams}
        wait_until(lambda: all(r.xlen(s) >= n[s] + 80 for s in streams), timeout=20, interval=0.3,
                   what="both nodes publishing again")
        stop_trading(sim, exchanges)
        last = settle(r, sim, streams)
        for s in streams:
            assert_tape(r, s, last[s])
        assert a.child("binance")["state"] == "RUNNING"
    finally:
        for node in (a, b):
            node.kill_tree()
        proxy.close()
        srv.kill()
