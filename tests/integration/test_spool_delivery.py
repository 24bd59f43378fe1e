"""The disk spool wired into the publisher (issue 5 point 2).

Real redis-server, real processes. With the real collector (parent, publisher, Binance worker) on
the simulator, every case counts the trades the simulator delivered against the entries in Redis:

- Redis down for longer than the in-memory buffer lasts: the publisher spills to the spool, and
  when Redis returns replays it in order before new events; every trade is in Redis once, in order,
  and the spool is empty afterwards;
- the publisher SIGKILLed while spilling, Redis back later: the restarted publisher resumes the
  spool; spool replay + the worker's re-send + the producer watermark give 0 lost, 0 duplicated;
- the spool full (1 MiB bound): the trades missing from Redis are exactly the counted drops.

With the publisher alone (the test plays parent and worker): a spool that cannot be opened means
backpressure as before (and the error is in the stats); a SIGTERM with Redis down spools the
buffer, and the next start replays it before any new event.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.conftest import wait_until
from tests.integration.harness import assert_exactly_once_in_order, delivered_ids, settle_tape, trade_ids
from tests.integration.test_collector_e2e import BTC, collector, sim, wait_connected  # noqa: F401
from tests.integration.test_publisher import STREAM, make_settings, procs, trade  # noqa: F401
from tests.integration.test_publisher import trade_ids as pub_trade_ids

pytestmark = pytest.mark.integration

#: a small in-memory buffer so a few seconds of Redis downtime outlast it
SPOOL_ENV = {"PUBLISHER__BUFFER_MAX_EVENTS": "2000", "PUBLISHER__RETRY_MAX": "0.5"}


def _spool(c) -> dict:
    """The publisher's spool stats ({} until the current publisher's first beat)."""
    st = c.status()["publisher"].get("spool")
    return st if isinstance(st, dict) else {}


def _replayed(c) -> dict | None:
    """The spool stats once it is replayed and empty (else None)."""
    st = _spool(c)
    return st if st and not st["spilling"] and st["records"] == 0 else None


def test_redis_down_beyond_the_buffer_spills_and_replays_in_order_once(collector, sim, redis_server) -> None:  # noqa: F811
    r = redis_server.client()
    c = collector(**SPOOL_ENV).start()
    wait_connected(c, sim)
    assert _spool(c)["spilling"] is False and _spool(c)["records"] == 0
    sim.set_trade_rate(1000, "BTCUSDT")
    wait_until(lambda: r.xlen(BTC) > 500, timeout=20, what="trades flowing")
    redis_server.stop()
    wait_until(lambda: _spool(c)["spilling"] and _spool(c)["records"] > 0, timeout=15, what="spilling")
    time.sleep(8)  # ~10 s down at ~1000 trades/s: 5x what the buffer holds
    st = _spool(c)
    assert st["spilling"] and st["records"] > 0 and st["bytes"] > 0 and st["events_dropped"] == 0
    health = c.http_json("/health")
    assert any(x.startswith("spool: spilling to disk") for x in health["reasons"]), health
    redis_server.start()
    want, got = settle_tape(r, sim, "BTCUSDT", BTC)
    assert len(want) > 10_000
    assert_exactly_once_in_order(want, got)
    # replayed, acknowledged, and the spool files gone
    st = wait_until(lambda: _replayed(c), timeout=10, what="spool replayed")
    assert st["replayed_parts"] > 0 and st["replayed_parts"] == st["spilled_parts"]
    assert st["events_dropped"] == 0 and st["dropped_events"] == 0
    spool_dir = c.run_dir / "TEST_NODE.spool"
    wait_until(lambda: not list(spool_dir.glob("*.seg")), timeout=5, what="segments deleted")
    pub = c.child("publisher")
    assert pub["restarts"] == 0 and pub["streams"]["binance|trade"]["dropped"] == 0
    assert c.child("binance")["drops"] == 0
    code, body = c.http("/metrics")
    assert code == 200 and b"collector_spool_records 0.0" in body and b"collector_spool_spilling 0.0" in body
    assert c.stop() == 0


def test_publisher_sigkill_while_spilling_loses_and_doubles_nothing(collector, sim, redis_server) -> None:  # noqa: F811
    r = redis_server.client()
    c = collector(**SPOOL_ENV).start()
    wait_connected(c, sim)
    sim.set_trade_rate(1000, "BTCUSDT")
    wait_until(lambda: r.xlen(BTC) > 500, timeout=20, what="trades flowing")
    redis_server.stop()
    wait_until(lambda: _spool(c)["spilling"] and _spool(c)["records"] > 1000, timeout=15, what="spilling")
    old = c.kill_child("publisher")  # records in the spool, parts on their way to it, acks in flight
    wait_until(lambda: (p := c.child("publisher"))["state"] == "RUNNING" and p["pid"] != old, timeout=30,
               what="publisher restarted by the parent")
    # the new publisher resumed the spool and keeps spilling (Redis is still down)
    wait_until(lambda: _spool(c).get("spilling") and _spool(c)["records"] > 0, timeout=10, what="spool resumed")
    time.sleep(2)
    redis_server.start()
    want, got = settle_tape(r, sim, "BTCUSDT", BTC)
    assert_exactly_once_in_order(want, got)
    wait_until(lambda: _replayed(c), timeout=10, what="spool replayed")
    assert c.child("binance")["restarts"] == 0 and c.child("binance")["drops"] == 0
    assert c.stop() == 0


def test_spool_full_loses_exactly_the_counted_drops(collector, sim, redis_server) -> None:  # noqa: F811
    r = redis_server.client()
    c = collector(**SPOOL_ENV, PUBLISHER__SPOOL_MAX_BYTES=str(1024 ** 2)).start()  # the smallest bound
    wait_connected(c, sim)
    sim.set_trade_rate(1000, "BTCUSDT")
    wait_until(lambda: r.xlen(BTC) > 500, timeout=20, what="trades flowing")
    redis_server.stop()
    wait_until(lambda: _spool(c)["events_dropped"] > 0, timeout=30, what="spool full, events dropped")
    time.sleep(1)
    st = _spool(c)
    assert st["bytes"] <= st["max_bytes"] == 1024 ** 2 and st["dropped_full"] > 0
    health = c.http_json("/health")
    assert any(x.startswith("spool: ") and "events dropped" in x for x in health["reasons"]), health
    redis_server.start()
    want, got = _check_exactly_once_or_drops(r, sim, c)
    pub = c.child("publisher")
    dropped = pub["streams"]["binance|trade"]["dropped"]
    assert dropped > 0 and dropped == _spool(c)["events_dropped"]
    assert len(got) == len(set(got)), f"{len(got) - len(set(got))} duplicated"
    assert not set(got) - set(want)
    assert len(set(want) - set(got)) == dropped  # lost == counted drops, nothing else
    assert got == sorted(got)  # in order
    assert pub["state"] == "RUNNING" and pub["restarts"] == 0
    assert c.child("binance")["drops"] == 0
    code, body = c.http("/metrics")
    assert code == 200 and f"collector_spool_dropped_events_total {float(dropped)}".encode() in body
    assert c.stop() == 0


def _check_exactly_once_or_drops(r, simulator, c) -> tuple[list[int], list[int]]:
    """Like settle_tape, but the target is the delivered trades minus the counted drops."""
    simulator.set_trade_rate(0, "BTCUSDT")
    time.sleep(0.5)
    want = delivered_ids(simulator, "BTCUSDT")

    def settled() -> bool:
        dropped = c.child("publisher")["streams"]["binance|trade"]["dropped"]
        s = _spool(c)
        return r.xlen(BTC) + dropped >= len(want) and not s["spilling"] and s["records"] == 0

    wait_until(settled, timeout=30, what="every delivered trade in Redis or counted as dropped")
    time.sleep(0.5)
    return want, trade_ids(r, BTC)


# ---------------------------------------------------------------------------- publisher alone

def test_spool_unavailable_means_backpressure_and_the_error_in_stats(redis_server, short_tmp: Path, procs) -> None:  # noqa: F811
    blocker = short_tmp / "not-a-dir"
    blocker.write_text("x")
    settings = make_settings(short_tmp, redis_server.url, buffer_max_events=100, spool_dir=blocker / "spool")
    pub = procs.publisher(settings)
    s = pub.stats(lambda s: s.get("spool") is not None)
    assert "cannot create or write" in s["spool"]["error"] and set(s["spool"]) == {"error"}
    w = procs.worker(settings)
    r = redis_server.client()
    redis_server.stop()
    pub.stats(lambda s: s["redis"] == "down", what="redis down")
    for k in range(0, 300, 50):
        w.events([trade(i) for i in range(k, k + 50)])
    pub.stats(lambda s: s["buffered"] == 100)
    time.sleep(0.5)  # the rest waits in the socket: backpressure, as without a spool
    s = pub.stats()
    assert s["streams"]["binance|trade"]["in"] == 100 and s["streams"]["binance|trade"]["dropped"] == 0
    redis_server.start()
    wait_until(lambda: r.xlen(STREAM) == 300, timeout=15, what="all 300")
    time.sleep(0.3)
    assert pub_trade_ids(r) == list(range(300))


def test_sigterm_with_redis_down_spools_the_buffer_and_the_next_start_replays_it_first(
        redis_server, short_tmp: Path, procs) -> None:  # noqa: F811
    settings = make_settings(short_tmp, redis_server.url, shutdown_timeout=2.0)
    pub = procs.publisher(settings)
    w = procs.worker(settings)
    r = redis_server.client()
    redis_server.stop()
    pub.stats(lambda s: s["redis"] == "down", what="redis down")
    w.events([trade(i) for i in range(37)])
    s = pub.stats(lambda s: s["buffered"] == 37)
    assert s["spool"]["spilling"] is False and s["spool"]["records"] == 0  # in memory, not spilled
    w.close()
    pub.sigterm()
    assert pub.join(20) == 0  # nothing lost: spooled
    assert list(settings.spool_directory.glob("*.seg"))
    redis_server.start()
    pub2 = procs.publisher(settings)
    w2 = procs.worker(settings)
    w2.events([trade(i) for i in range(37, 100)])  # new events: behind the spooled ones
    wait_until(lambda: r.xlen(STREAM) == 100, timeout=15, what="100 trades")
    time.sleep(0.3)
    assert pub_trade_ids(r) == list(range(100))  # the spooled 37 first, none lost to the watermark
    s = pub2.stats(lambda s: not s["spool"]["spilling"] and s["spool"]["records"] == 0, what="spool replayed")
    assert s["spool"]["replayed_parts"] >= 1 and s["streams"]["binance|trade"]["pushed"] == 100
