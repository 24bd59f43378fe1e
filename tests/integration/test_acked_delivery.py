"""Acknowledged delivery and the idempotent apply (issue 5 point 1).

- the apply script itself, called directly against a real redis-server: a part sent twice is
  applied once; the stream high-watermark and keyed dedup hold across producers (two nodes);
- the real collector (parent, publisher, Binance worker) on the simulator: the publisher is
  SIGKILLed while it holds unacknowledged trades (Redis frozen), the parent restarts it, the worker
  sends its unacknowledged batches again, and every trade the simulator sent is in Redis once.
"""

from __future__ import annotations

import asyncio
import time

import hiredis
import pytest

from collector import redis_scripts as scripts
from collector.redis_writer import RedisConnection
from shared.settings import load_settings
from tests.conftest import wait_until
from tests.integration.harness import assert_exactly_once_in_order, settle_tape
from tests.integration.test_collector_e2e import BTC, collector, sim, wait_connected  # noqa: F401

pytestmark = pytest.mark.integration


def _apply(r, wm_key: str, seq: int, index: int, events: list[tuple], lane: str = "") -> list:
    """EVALSHA APPLY_BATCH for ``events`` = [(stream, mode, id, fields)]."""
    keys: list[str] = []
    args: list[str] = []
    for stream, mode, mono, fields in events:
        keys.append(stream)
        if mode == "m":
            keys.append(scripts.HWM_PREFIX + stream)
        elif mode == "k":
            keys.append(scripts.KEYED_PREFIX + mono)
        args += [mode, mono if mode == "m" else "", "1000", str(len(fields)), *fields]
    return r.evalsha(scripts.APPLY_BATCH_SHA, len(keys) + 1, wm_key, *keys,
                     lane, scripts.part_position(seq, index), "600", "700", "30", *args)


def test_apply_script_is_idempotent_per_part_and_dedups_across_producers(redis_server) -> None:
    r = redis_server.client()
    assert r.script_load(scripts.APPLY_BATCH) == scripts.APPLY_BATCH_SHA
    s = "md:trade:binance:spot:BTC-USDT"
    wm_a, wm_b = "pub:wm:NODE_A:binance.1-aa", "pub:wm:NODE_B:binance.2-bb"
    part = [(s, "m", str(i), ["trade_id", str(i)]) for i in (1, 2, 3)]
    res = _apply(r, wm_a, 1, 0, part)
    assert res[0] == 1 and all(isinstance(x, str) and "-" in x for x in res[1:])
    # the same part again (a re-send after a lost ack or a publisher restart): skipped whole
    assert _apply(r, wm_a, 1, 0, part) == [0]
    assert [f["trade_id"] for _, f in r.xrange(s)] == ["1", "2", "3"]
    assert r.hget(wm_a, "") == scripts.part_position(1, 0) and 0 < r.ttl(wm_a) <= 600
    assert r.get(scripts.HWM_PREFIX + s) == "3" and 0 < r.ttl(scripts.HWM_PREFIX + s) <= 700
    # another node's producer with the same trades plus newer ones: only the newer are written;
    # ids compare as numbers of any length ("10" > "9"), duplicates inside one part are skipped
    res = _apply(r, wm_b, 7, 0, [(s, "m", str(i), ["trade_id", str(i)]) for i in (2, 3, 9, 10, 10, 4)])
    assert res[0] == 1 and res[1:3] == [0, 0] and res[5:] == [0, 0] and all(isinstance(x, str) for x in res[3:5])
    assert [f["trade_id"] for _, f in r.xrange(s)] == ["1", "2", "3", "9", "10"]
    # an older part of a producer is skipped; a later index of the same seq is not
    assert _apply(r, wm_b, 6, 5, [(s, "-", "", ["trade_id", "x"])]) == [0]
    assert _apply(r, wm_b, 7, 1, [(s, "-", "", ["trade_id", "y"])])[0] == 1
    # lanes are independent (a rate-limited class goes behind later ungated parts)
    assert _apply(r, wm_b, 5, 3, [("events:raw", "k", "l:binance:spot:NEWUSDT:listing:trading", ["e", "1"])],
                  lane="listing")[0] == 1
    # keyed dedup: the same key from the other node is not written again
    assert _apply(r, wm_a, 2, 0, [("events:raw", "k", "l:binance:spot:NEWUSDT:listing:trading", ["e", "1"])],
                  lane="listing") == [1, 0]
    assert r.xlen("events:raw") == 1
    # one bad stream key fails only its event; the others and the watermark are written
    r.set("md:trade:binance:spot:BAD-USDT", "not a stream")
    res = _apply(r, wm_a, 3, 0, [(s, "m", "11", ["trade_id", "11"]),
                                 ("md:trade:binance:spot:BAD-USDT", "-", "", ["a", "b"]),
                                 (s, "m", "12", ["trade_id", "12"])])
    assert res[0] == 1 and isinstance(res[2], Exception) and "WRONGTYPE" in str(res[2])
    assert [f["trade_id"] for _, f in r.xrange(s)][-2:] == ["11", "12"]
    assert r.hget(wm_a, "") == scripts.part_position(3, 0)


def test_listing_event_script_skips_a_recorded_transition(redis_server) -> None:
    r = redis_server.client()
    pairs = "known:pairs:binance"
    cmd = scripts.pack_listing_event("events:raw", pairs, "spot:NEWUSDT", "trading", "1000", ["event", "listing"])
    packed_txn = b"".join(hiredis.pack_command(c) for c in (
        ("MULTI",), cmd, ("HSET", pairs, "spot:NEWUSDT", "trading"), ("EXEC",)))

    async def twice() -> list:
        conn = RedisConnection(load_settings(redis={"url": redis_server.url}).redis)
        try:
            # the second time (another node, or a resent transaction): the state change only
            return [(await conn.execute_packed(packed_txn, 4))[-1] for _ in range(2)]
        finally:
            await conn.close()

    first, second = asyncio.run(twice())
    assert isinstance(first[0], bytes) and second[0] == 0
    assert r.xlen("events:raw") == 1 and r.hget(pairs, "spot:NEWUSDT") == "trading"


def test_publisher_sigkill_with_unacked_trades_loses_and_doubles_nothing(collector, sim, redis_server) -> None:  # noqa: F811
    r = redis_server.client()
    c = collector().start()
    wait_connected(c, sim)
    sim.set_trade_rate(1500, "BTCUSDT")
    wait_until(lambda: r.xlen(BTC) > 1000, timeout=20, what="trades flowing")
    redis_server.freeze()  # the publisher keeps taking batches it cannot confirm
    time.sleep(0.7)
    old = c.kill_child("publisher")  # SIGKILL while it holds them (and a round may be in Redis's socket)
    time.sleep(0.3)
    redis_server.thaw()
    wait_until(lambda: (p := c.child("publisher"))["state"] == "RUNNING" and p["pid"] != old, timeout=30,
               what="publisher restarted by the parent")
    n = r.xlen(BTC)
    wait_until(lambda: r.xlen(BTC) > n + 1000, timeout=20, what="trades flowing after the restart")
    want, got = settle_tape(r, sim, "BTCUSDT", BTC, timeout=20)
    assert_exactly_once_in_order(want, got)
    st = c.child("binance")
    assert st["restarts"] == 0
    assert c.stop() == 0
