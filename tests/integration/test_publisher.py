"""The publisher as a real process against a real redis-server.

The test plays the parent (reads ready/beat on its end of the status socketpair, sends
``children``) and the workers (connects to the publisher socket, sends hello + frames).
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import os
import signal
import socket
import stat
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from collector.publisher import publisher_main
from collector.redis_writer import RedisConnection, RedisEndpoint, RedisUnavailable
from shared import ipc
from shared.events import LISTING_STREAM, Trade, listing_event
from shared.settings import Settings, load_settings
from tests.conftest import RedisServer, wait_until

pytestmark = pytest.mark.integration

STREAM = "md:trade:binance:spot:BTC-USDT"


def _publisher_process(settings: Settings, sock: socket.socket) -> None:
    sys.exit(publisher_main(settings, sock))


def make_settings(tmp: Path, redis_url: str, *, shutdown_timeout: float = 10.0, **publisher: Any) -> Settings:
    overrides: dict[str, Any] = {"heartbeat_interval": 30.0, "retry_initial": 0.05, "retry_max": 0.5}
    overrides.update(publisher)
    return load_settings(
        run_dir=tmp / "run", log_dir=tmp / "logs",
        redis={"url": redis_url, "connect_timeout": 1.0, "socket_timeout": 2.0},
        publisher=overrides,
        supervisor={"shutdown_timeout": shutdown_timeout},
    )


class PublisherProc:
    """The publisher child plus the parent's end of its status link."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        parent_end, child_end = socket.socketpair()
        ctx = multiprocessing.get_context("spawn")
        self.proc = ctx.Process(target=_publisher_process, args=(settings, child_end), daemon=True)
        self.proc.start()
        child_end.close()
        self.link = parent_end
        self.ready = threading.Event()
        self.beats: list[dict] = []
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            while True:
                msg = ipc.recv_msg(self.link)
                if msg is None:
                    return
                if msg.get("t") == "ready":
                    self.ready.set()
                elif msg.get("t") == "beat":
                    self.beats.append(msg["stats"])
        except (OSError, ipc.FrameError):
            return

    def wait_ready(self, timeout: float = 20.0) -> "PublisherProc":
        assert self.ready.wait(timeout), "publisher sent no ready"
        return self

    def stats(self, pred=lambda s: True, timeout: float = 10.0, what: str = "beat") -> dict:
        """The first beat (from now on) whose stats satisfy ``pred``."""
        start = len(self.beats)

        def check():
            for s in self.beats[start:]:
                if pred(s):
                    return s
            return None

        return wait_until(check, timeout=timeout, what=what)

    def send(self, msg: dict) -> None:
        ipc.send_msg(self.link, msg)

    def sigterm(self) -> None:
        os.kill(self.proc.pid, signal.SIGTERM)

    def join(self, timeout: float = 30.0) -> int | None:
        self.proc.join(timeout)
        return self.proc.exitcode

    def kill(self) -> None:
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join(5)
        self.link.close()


class Worker:
    """Plays a worker: one connection to the publisher socket."""

    def __init__(self, settings: Settings, exchange: str = "binance") -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(str(settings.publisher_socket))
        self.exchange = exchange
        self.seq = 0
        ipc.send_msg(self.sock, {"t": "hello", "exchange": exchange, "pid": os.getpid()})

    def events(self, events: list) -> None:
        self.seq += 1
        ipc.send_msg(self.sock, {"t": "events", "exchange": self.exchange, "seq": self.seq, "events": events})

    def instruments(self, instruments: dict, *, full: bool = True, market: str = "spot") -> None:
        ipc.send_msg(self.sock, {
            "t": "instruments", "exchange": self.exchange, "market": market, "full": full,
            "source": f"rest_{self.exchange}", "detected_at": 1764590430000, "instruments": instruments,
        })

    def close(self) -> None:
        self.sock.close()


def trade(i: int, symbol: str = "BTC-USDT", native: str = "BTCUSDT", ex: str = "binance") -> list:
    return Trade(ex, "spot", symbol, native, str(i), f"{100 + i}.5", "0.01", "buy" if i % 2 else "sell",
                 1700000000000 + i, 1700000000100 + i).to_wire(time.monotonic_ns())


def trade_ids(client, stream: str = STREAM) -> list[int]:
    return [int(f["trade_id"]) for _, f in client.xrange(stream)]


def inst(native: str, status: str = "trading", market: str = "spot") -> dict[str, str]:
    base, quote = native[:-4], native[-4:]
    return {"symbol": f"{base}-{quote}", "base": base, "quote": quote, "market": market, "status": status,
            "raw_status": {"trading": "TRADING", "pre_trading": "PRE_TRADING", "halted": "HALT"}[status],
            "url": f"https://www.binance.com/en/trade/{base}_{quote}"}


@pytest.fixture
def procs():
    started: list[PublisherProc] = []
    workers: list[Worker] = []

    class _Factory:
        def publisher(self, settings: Settings) -> PublisherProc:
            p = PublisherProc(settings)
            started.append(p)
            return p.wait_ready()

        def worker(self, settings: Settings, exchange: str = "binance") -> Worker:
            w = Worker(settings, exchange)
            workers.append(w)
            return w

    yield _Factory()
    for w in workers:
        w.close()
    for p in started:
        p.kill()


# ---------------------------------------------------------------------------- data path

def test_events_land_in_order_with_exact_fields_dedup_and_maxlen(redis_server, short_tmp, procs) -> None:
    settings = make_settings(short_tmp, redis_server.url, maxlen={"default": 100_000, "trade": 200},
                             dedup_window=1.0)
    pub = procs.publisher(settings)
    st = os.stat(settings.publisher_socket)
    assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600
    w = procs.worker(settings)
    r = redis_server.client()
    # 150 trades over two symbols in frames of 50, then the first frame again (duplicates)
    evs = [trade(i) if i % 3 else trade(i, "ETH-USDT", "ETHUSDT") for i in range(150)]
    for k in range(0, 150, 50):
        w.events(evs[k:k + 50])
    w.events(evs[:50])
    eth = "md:trade:binance:spot:ETH-USDT"
    wait_until(lambda: r.xlen(STREAM) + r.xlen(eth) >= 150, what="150 trades in Redis")
    s = pub.stats(lambda s: s["streams"].get("binance|trade", {}).get("in") == 200)
    assert s["streams"]["binance|trade"] == {"in": 200, "pushed": 150, "deduped": 50, "dropped": 0,
                                             "rate_limited": 0}
    assert s["redis"] == "up" and s["workers_connected"] == ["binance"] and s["buffered"] == 0
    assert s["latency"]["count"] == 150 and s["latency"]["buckets"][-1] == [60, 150]
    assert trade_ids(r) == [i for i in range(150) if i % 3]
    assert trade_ids(r, eth) == [i for i in range(150) if i % 3 == 0]
    entry = r.xrange(STREAM, count=1)[0][1]
    assert entry == {"type": "trade", "exchange": "binance", "market": "spot", "symbol": "BTC-USDT",
                     "native_symbol": "BTCUSDT", "trade_id": "1", "price": "101.5", "qty": "0.01",
                     "side": "buy", "ts_exchange": "1700000000001", "ts_receive": "1700000000101"}
    # an event without a monotonic id is deduplicated by its key within the window only: after
    # the window the same key is new again. One with a monotonic id (Binance trade id) stays a
    # duplicate: it is not above its stream's high-watermark in Redis
    time.sleep(1.1)
    w.events([trade(1)[:5], trade(2)])
    wait_until(lambda: r.xlen(STREAM) == 101, what="re-sent trade without mono id after window")
    pub.stats(lambda s: s["streams"]["binance|trade"]["deduped"] == 51, what="trade 2 a duplicate")
    # MAXLEN ~ 200 trims the stream (approximately: whole nodes of 100 entries); one big frame
    w.events([trade(1000 + i) for i in range(3000)])
    wait_until(lambda: trade_ids(r)[-1:] == [3999], what="last trade of the burst")
    assert 200 <= r.xlen(STREAM) <= 400
    assert trade_ids(r) == sorted(trade_ids(r))


def test_malformed_events_counted_and_garbage_frame_closes_only_its_connection(redis_server, short_tmp, procs) -> None:
    settings = make_settings(short_tmp, redis_server.url)
    pub = procs.publisher(settings)
    good = procs.worker(settings, "binance")
    bad = procs.worker(settings, "okx")
    r = redis_server.client()
    good.events([trade(i) for i in range(10)])
    # malformed wire events inside a valid frame: dropped and counted, the rest of the frame lands
    good.events([["x"], trade(10), [STREAM, None, "trade", ["odd"], 1], [STREAM, None, "trade", [{"a": 1}, "v"], 1],
                 [STREAM, ["unhashable"], "trade", ["a", "b"], 1], trade(11)])
    wait_until(lambda: r.xlen(STREAM) == 12, what="12 good trades")
    # garbage on the other connection: a valid length header followed by non-JSON
    body = b"\x00not json at all"
    bad.sock.sendall(len(body).to_bytes(4, "big") + body)
    bad.sock.settimeout(5)
    assert bad.sock.recv(10) == b""  # the publisher closed that connection
    good.events([trade(i) for i in range(12, 40)])
    wait_until(lambda: r.xlen(STREAM) == 40, what="trades after the garbage frame")
    assert trade_ids(r) == list(range(40))
    s = pub.stats(lambda s: s["frame_errors"] == 1)
    assert s["errors"] == 4 and s["workers_connected"] == ["binance"]
    # an unknown frame type and a connection that skips hello are garbage too
    third = procs.worker(settings, "bybit")
    ipc.send_msg(third.sock, {"t": "nonsense"})
    no_hello = socket.socket(socket.AF_UNIX)
    no_hello.connect(str(settings.publisher_socket))
    ipc.send_msg(no_hello, {"t": "events", "events": []})
    no_hello.settimeout(5)
    assert no_hello.recv(10) == b""
    no_hello.close()
    pub.stats(lambda s: s["frame_errors"] == 3)


def test_rate_limit_delays_listing_events_but_loses_none(redis_server, short_tmp, procs) -> None:
    settings = make_settings(short_tmp, redis_server.url, rate_limits={"listing": 20.0})
    pub = procs.publisher(settings)
    w = procs.worker(settings)
    r = redis_server.client()
    listings = [listing_event(exchange="binance", native_symbol=f"T{i}USDT",
                              info=inst(f"T{i}USDT"), event="listing", source="ws_binance",
                              detected_at=1764590430000 + i, node_id="NODE_A") for i in range(60)]
    w.events(listings + [trade(0)])  # a trade behind them is not held up by the listing limit
    wait_until(lambda: r.xlen(STREAM) == 1, timeout=2, what="trade past the listing backlog")
    wait_until(lambda: r.xlen(LISTING_STREAM) == 60, timeout=15, what="all 60 listing events")
    entries = r.xrange(LISTING_STREAM)
    assert [f["native_symbol"] for _, f in entries] == [f"T{i}USDT" for i in range(60)]
    # burst of 20, then 20/s: the last 40 take ~2 s (stream IDs are Redis's ms clock)
    first_ms, last_ms = (int(entries[i][0].split("-")[0]) for i in (0, -1))
    assert last_ms - first_ms >= 1500
    s = pub.stats(lambda s: s["streams"].get("binance|listing", {}).get("pushed") == 60)
    assert s["streams"]["binance|listing"]["rate_limited"] >= 39
    assert s["streams"]["binance|listing"]["dropped"] == 0


# ---------------------------------------------------------------------------- Redis outages

def test_redis_down_then_back_delivers_everything_in_order_once(redis_server, short_tmp, procs) -> None:
    settings = make_settings(short_tmp, redis_server.url)
    pub = procs.publisher(settings)
    w = procs.worker(settings)
    r = redis_server.client()
    w.events([trade(i) for i in range(100)])
    wait_until(lambda: r.xlen(STREAM) == 100, what="first 100")
    redis_server.stop()
    down_at = time.monotonic()
    n = 100
    while time.monotonic() - down_at < 5.0:  # ~5 s of events while Redis is down
        w.events([trade(i) for i in range(n, n + 50)])
        n += 50
        time.sleep(0.1)
    s = pub.stats(lambda s: s["redis"] == "down" and s["buffered"] == n - 100, what="buffering while down")
    assert s["redis_down_since"] is not None and s["redis_errors"] > 0
    redis_server.start()
    wait_until(lambda: r.xlen(STREAM) == n, timeout=20, what=f"{n} trades after Redis returned")
    time.sleep(0.3)
    assert trade_ids(r) == list(range(n))  # in order, none lost, none twice
    s = pub.stats(lambda s: s["redis"] == "up" and s["buffered"] == 0)
    assert s["streams"]["binance|trade"]["pushed"] == n and s["streams"]["binance|trade"]["dropped"] == 0


def test_full_buffer_stops_reading_and_loses_nothing(redis_server, short_tmp, procs) -> None:
    """A full buffer is backpressure, not loss: the publisher stops reading from the worker (whose
    unacknowledged batches stay with it) and takes the rest once Redis drains the buffer.
    (Without the disk spool: with it, a full buffer while Redis is down spills instead, see
    tests/integration/test_spool_delivery.py.)"""
    settings = make_settings(short_tmp, redis_server.url, buffer_max_events=100, spool_enabled=False)
    pub = procs.publisher(settings)
    w = procs.worker(settings)
    r = redis_server.client()
    redis_server.stop()
    pub.stats(lambda s: s["redis"] == "down", what="redis down")
    for k in range(0, 300, 50):
        w.events([trade(i) for i in range(k, k + 50)])
    s = pub.stats(lambda s: s["buffered"] == 100)
    time.sleep(0.5)  # the rest waits in the socket, not in the publisher
    s = pub.stats()
    assert s["streams"]["binance|trade"]["in"] == 100 and s["buffered"] == 100
    assert s["streams"]["binance|trade"]["dropped"] == 0 and s["buffer_limit"] == 100
    redis_server.start()
    wait_until(lambda: r.xlen(STREAM) == 300, timeout=15, what="all 300")
    time.sleep(0.3)
    assert trade_ids(r) == list(range(300))
    s = pub.stats(lambda s: s["streams"]["binance|trade"]["in"] == 300)
    assert s["streams"]["binance|trade"]["pushed"] == 300 and s["streams"]["binance|trade"]["dropped"] == 0


def test_command_error_drops_only_that_event(redis_server, short_tmp, procs) -> None:
    settings = make_settings(short_tmp, redis_server.url)
    pub = procs.publisher(settings)
    w = procs.worker(settings)
    r = redis_server.client()
    r.set("md:trade:binance:spot:BAD-USDT", "not a stream")  # XADD to it -> WRONGTYPE
    w.events([trade(0), trade(1, "BAD-USDT", "BADUSDT"), trade(2)])
    wait_until(lambda: r.xlen(STREAM) == 2, what="the two good trades")
    s = pub.stats(lambda s: s["errors"] == 1)
    assert s["streams"]["binance|trade"]["pushed"] == 2 and s["redis"] == "up"


# ---------------------------------------------------------------------------- listings

def test_listing_detection_seed_announce_restart(redis_server, short_tmp, procs) -> None:
    settings = make_settings(short_tmp, redis_server.url)
    pub = procs.publisher(settings)
    w = procs.worker(settings)
    r = redis_server.client()
    base = {n: inst(n) for n in ("BTCUSDT", "ETHUSDT")}
    w.instruments({})  # an empty snapshot is an outage: never seeds
    w.instruments(base)  # the first real snapshot seeds silently
    wait_until(lambda: r.hlen("known:pairs:binance") == 2, what="seeded state")
    assert r.hgetall("known:pairs:binance") == {"spot:BTCUSDT": "trading", "spot:ETHUSDT": "trading"}
    assert r.xlen(LISTING_STREAM) == 0
    # a new symbol -> exactly one listing event (sent twice: still one)
    snap = {**base, "NEWUSDT": inst("NEWUSDT")}
    w.instruments(snap)
    w.instruments(snap)
    wait_until(lambda: r.xlen(LISTING_STREAM) == 1, what="listing event")
    ev = r.xrange(LISTING_STREAM)[0][1]
    assert {k: ev[k] for k in ("source", "source_type", "exchange", "symbol", "event", "raw_text", "url",
                               "detected_at", "node_id")} == {
        "source": "rest_binance", "source_type": "exchange", "exchange": "binance", "symbol": "NEW",
        "event": "listing", "raw_text": "New trading pair NEW/USDT available (spot)",
        "url": "https://www.binance.com/en/trade/NEW_USDT", "detected_at": "1764590430000", "node_id": "NODE_A",
    }
    assert ev["pair"] == "NEW-USDT" and ev["native_symbol"] == "NEWUSDT" and ev["market"] == "spot"
    # pre_listing, then listing when it opens
    snap["PREUSDT"] = inst("PREUSDT", "pre_trading")
    w.instruments(snap)
    wait_until(lambda: r.xlen(LISTING_STREAM) == 2, what="pre_listing event")
    snap["PREUSDT"] = inst("PREUSDT", "trading")
    w.instruments(snap)
    wait_until(lambda: r.xlen(LISTING_STREAM) == 3, what="listing after pre_listing")
    got = [(f["native_symbol"], f["event"], f["previous_status"]) for _, f in r.xrange(LISTING_STREAM)]
    assert got == [("NEWUSDT", "listing", ""), ("PREUSDT", "pre_listing", ""), ("PREUSDT", "listing", "pre_trading")]
    assert r.hget("known:pairs:binance", "spot:PREUSDT") == "trading"
    # halt, resume, halt again within the dedup window: the repeated event is a duplicate (dropped)
    # but the state still follows
    for status in ("halted", "trading", "halted"):  # one at a time (queued full snapshots coalesce)
        snap["PREUSDT"] = inst("PREUSDT", status)
        w.instruments(snap)
        wait_until(lambda: r.hget("known:pairs:binance", "spot:PREUSDT") == status, what=f"state {status}")
    time.sleep(0.3)
    got = [(f["event"], f["status"]) for _, f in r.xrange(LISTING_STREAM)][3:]
    assert got == [("status_change", "halted"), ("status_change", "trading")]
    # an empty snapshot after seeding removes nothing
    w.instruments({})
    s = pub.stats(lambda s: s["listings_emitted"] == 5)
    assert s["streams"]["binance|listing"]["pushed"] == 5 and s["streams"]["binance|listing"]["deduped"] == 1
    assert r.hlen("known:pairs:binance") == 4
    assert r.xlen(LISTING_STREAM) == 5
    # restart the publisher: the same snapshot announces nothing again
    w.close()
    pub.sigterm()
    assert pub.join(20) == 0
    pub2 = procs.publisher(settings)
    w2 = procs.worker(settings)
    w2.instruments(snap)
    w2.instruments({**snap, "LATEUSDT": inst("LATEUSDT")})
    wait_until(lambda: r.xlen(LISTING_STREAM) == 6, what="listing after restart")
    time.sleep(0.3)
    assert [f["native_symbol"] for _, f in r.xrange(LISTING_STREAM)][-1] == "LATEUSDT"
    assert r.xlen(LISTING_STREAM) == 6
    pub2.stats(lambda s: s["listings_emitted"] == 1)


def test_snapshot_while_redis_down_is_processed_when_back(redis_server, short_tmp, procs) -> None:
    settings = make_settings(short_tmp, redis_server.url)
    pub = procs.publisher(settings)
    w = procs.worker(settings)
    r = redis_server.client()
    w.instruments({"BTCUSDT": inst("BTCUSDT")})
    wait_until(lambda: r.hlen("known:pairs:binance") == 1, what="seeded")
    redis_server.stop()
    pub.stats(lambda s: s["redis"] == "down", what="redis down")
    for extra in ("AUSDT", "BUSDT"):  # only the latest full snapshot is kept while down
        w.instruments({"BTCUSDT": inst("BTCUSDT"), extra: inst(extra)})
    time.sleep(0.5)
    redis_server.start()
    wait_until(lambda: r.xlen(LISTING_STREAM) == 1, timeout=15, what="listing after Redis returned")
    time.sleep(0.5)
    assert [f["native_symbol"] for _, f in r.xrange(LISTING_STREAM)] == ["BUSDT"]
    assert r.hgetall("known:pairs:binance") == {"spot:BTCUSDT": "trading", "spot:BUSDT": "trading"}


# ---------------------------------------------------------------------------- heartbeat, stop

def test_heartbeat_hash_fields_ttl_and_worker_states(redis_server, short_tmp, procs) -> None:
    settings = make_settings(short_tmp, redis_server.url, heartbeat_interval=0.3, heartbeat_ttl=7)
    pub = procs.publisher(settings)
    r = redis_server.client()
    wait_until(lambda: r.exists("node:heartbeat:NODE_A"), what="heartbeat at start")
    pub.send({"t": "children", "children": {
        "publisher": {"state": "RUNNING", "pid": 1, "stats": {}},
        "binance": {"state": "RUNNING", "pid": 2, "stats": {
            "exchange": "binance", "ws_connections": 2, "ws_reconnects": 3, "rest_calls": 40, "rest_errors": 1,
            "drops": 5, "stale": False, "circuit": "CLOSED"}},
        "okx": {"state": "BACKOFF", "pid": None, "stats": {"ws_connections": 0, "circuit": "CLOSED"}},
        "bybit": {"state": "RUNNING", "pid": 3, "stats": {"stale": True, "circuit": "CLOSED", "ws_reconnects": 1}},
    }})
    w = procs.worker(settings)
    w.events([trade(i) for i in range(5)])

    def beat_with_workers():
        h = r.hgetall("node:heartbeat:NODE_A")
        return h if h and json.loads(h["stats"]).get("workers") and \
            json.loads(h["stats"])["events_pushed"] == 5 else None

    h = wait_until(beat_with_workers, what="heartbeat with worker states")
    assert set(h) == {"status", "node_id", "version", "uptime_seconds", "timestamp", "stats"}
    assert h["status"] == "running" and h["node_id"] == "NODE_A" and h["version"] == "0.1.0"
    assert int(h["uptime_seconds"]) >= 0 and abs(int(h["timestamp"]) - time.time() * 1000) < 60_000
    assert 0 < r.ttl("node:heartbeat:NODE_A") <= 7
    st = json.loads(h["stats"])
    assert st["events_collected"] == 5 and st["events_pushed"] == 5 and st["errors"] == 0
    assert st["last_event_at"] is not None
    assert st["exchanges_active"] == {"binance": True, "okx": False, "bybit": False}
    assert st["workers"] == {"binance": "RUNNING", "okx": "BACKOFF", "bybit": "RUNNING"}
    assert (st["ws_connections"], st["ws_reconnects"], st["rest_calls"], st["rest_errors"]) == (2, 4, 40, 1)
    assert st["drops"] == {"binance": 5}


def test_sigterm_flushes_buffer_and_exits_0(redis_server, short_tmp, procs) -> None:
    settings = make_settings(short_tmp, redis_server.url)
    pub = procs.publisher(settings)
    w = procs.worker(settings)
    r = redis_server.client()
    redis_server.stop()  # so events are still buffered when SIGTERM arrives
    pub.stats(lambda s: s["redis"] == "down", what="redis down")
    w.events([trade(i) for i in range(500)])
    pub.stats(lambda s: s["buffered"] == 500)
    pub.sigterm()
    time.sleep(0.3)
    w.events([trade(i) for i in range(500, 600)])  # the worker's last batch, sent before it closes
    time.sleep(0.2)
    w.close()
    assert not settings.publisher_socket.exists()  # no new connections once stopping
    redis_server.start()
    assert pub.join(20) == 0
    assert trade_ids(r) == list(range(600))
    assert r.hget("node:heartbeat:NODE_A", "status") == "stopped"


def test_sigterm_with_redis_down_reports_lost_events_and_exits_1(redis_server, short_tmp, procs) -> None:
    # without the disk spool (with it they are spooled: test_spool_delivery.py)
    settings = make_settings(short_tmp, redis_server.url, shutdown_timeout=2.0, spool_enabled=False)
    pub = procs.publisher(settings)
    w = procs.worker(settings)
    redis_server.stop()
    pub.stats(lambda s: s["redis"] == "down", what="redis down")
    w.events([trade(i) for i in range(37)])
    pub.stats(lambda s: s["buffered"] == 37)
    w.close()
    pub.sigterm()
    assert pub.join(20) == 1
    text = settings.log_file("publisher").read_text()
    assert "37 events could not be written to Redis (never acknowledged)" in text


# ---------------------------------------------------------------------------- secrets

def test_password_works_and_never_appears_in_logs_or_errors(tmp_path, short_tmp, procs) -> None:
    password = "Sup3r-s3cret-pw"
    srv = RedisServer(tmp_path / "redis-pw", password=password).start()
    try:
        settings = make_settings(short_tmp, srv.url)
        pub = procs.publisher(settings)
        w = procs.worker(settings)
        w.events([trade(i) for i in range(3)])
        wait_until(lambda: srv.client().xlen(STREAM) == 3, what="trades through an authenticated connection")
        # a wrong password: the publisher reports Redis down, without the password anywhere
        wrong = "Wr0ng-pw-XYZZY"
        bad_settings = make_settings(short_tmp / "bad", f"redis://:{wrong}@127.0.0.1:{srv.port}/0")
        bad = procs.publisher(bad_settings)
        s = bad.stats(lambda s: s["redis"] == "down" and s["redis_errors"] > 0)

        async def direct() -> str:
            conn = RedisConnection(load_settings(redis={"url": f"redis://user:{wrong}@127.0.0.1:{srv.port}/0"}).redis)
            with pytest.raises(RedisUnavailable) as exc:
                await conn.execute("PING")
            return str(exc.value)

        msg = asyncio.run(direct())
        assert "AUTH failed" in msg and wrong not in msg and "***" in msg
        w.close()
        pub.sigterm()
        bad.sigterm()
        assert pub.join(20) == 0
        bad.join(20)
        for log_file in (settings.log_file("publisher"), bad_settings.log_file("publisher")):
            text = log_file.read_text()
            assert text  # something was logged
            assert password not in text and wrong not in text
        assert "Redis unavailable" in bad_settings.log_file("publisher").read_text()
        assert wrong not in json.dumps(s) and password not in json.dumps(pub.beats)
    finally:
        srv.kill()


# ---------------------------------------------------------------------------- RedisConnection

def test_redis_connection_unix_socket_select_and_error_replies(tmp_path, short_tmp) -> None:
    """unix:// URLs, SELECT from the URL, error replies returned (not raised), refused -> RedisUnavailable."""
    import shutil
    import subprocess

    sock_path = short_tmp / "r.sock"
    proc = subprocess.Popen([shutil.which("redis-server"), "--port", "0", "--unixsocket", str(sock_path),
                             "--save", "", "--appendonly", "no", "--dir", str(tmp_path)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(sock_path.exists, what="redis unix socket")

        async def scenario() -> None:
            conn = RedisConnection(load_settings(redis={"url": f"unix://{sock_path}?db=3"}).redis)
            import hiredis
            data = b"".join(hiredis.pack_command(c) for c in (
                ("SET", "k", "v"), ("XADD", "k", "*", "a", "b"), ("GET", "k"), ("CLIENT", "INFO")))
            ok, err, val, info = await conn.execute_packed(data, 4)
            assert ok == b"OK" and val == b"v"
            assert isinstance(err, Exception) and str(err).startswith("WRONGTYPE")
            assert b"db=3" in info
            await conn.close()
            dead = RedisConnection(load_settings(redis={"url": f"unix://{short_tmp}/nope.sock"}).redis)
            with pytest.raises(RedisUnavailable):
                await dead.execute("PING")

        asyncio.run(scenario())
    finally:
        proc.kill()
        proc.wait()


def test_redis_endpoint_parsing_tls_options() -> None:
    import ssl

    ep = RedisEndpoint(load_settings(redis={"url": "rediss://u:p%40ss@redis.example:6380/2"}).redis)
    assert (ep.host, ep.port, ep.db, ep.username, ep.password) == ("redis.example", 6380, 2, "u", "p@ss")
    assert ep.ssl_context is not None and ep.ssl_context.verify_mode == ssl.CERT_REQUIRED
    assert ep.ssl_context.check_hostname and "p@ss" not in ep.describe() and "p%40ss" not in ep.describe()
    ep = RedisEndpoint(load_settings(redis={"url": "rediss://h:6380/0?ssl_cert_reqs=none"}).redis)
    assert ep.ssl_context.verify_mode == ssl.CERT_NONE and not ep.ssl_context.check_hostname
    ep = RedisEndpoint(load_settings(redis={"url": "redis://h"}).redis)
    assert (ep.port, ep.db, ep.ssl_context) == (6379, 0, None)
    with pytest.raises(ValueError):
        RedisEndpoint(load_settings(redis={"url": "redis://h:6379/notadb"}).redis)
