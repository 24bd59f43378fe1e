"""The listing lifecycle end to end: the real publisher process, a real redis-server, a test
playing the worker. pre_listing -> listing -> (publisher restart) -> status_change -> delisting by
status and by absence -> relisting, with empty and truncated lists in between: every expected event
exactly once in ``events:raw``, with its fields; nothing else.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from shared.events import LISTING_STREAM
from shared.settings import Settings, load_settings
from tests.conftest import wait_until
from tests.integration.test_publisher import procs  # noqa: F401 - the publisher/worker process fixture

pytestmark = pytest.mark.integration

#: OKX's own state strings (the delisted one is constructed: OKX drops delisted instruments)
RAW = {"pre_trading": "preopen", "trading": "live", "halted": "suspend", "delisted": "delisted"}


def lifecycle_settings(tmp: Path, redis_url: str) -> Settings:
    return load_settings(
        run_dir=tmp / "run", log_dir=tmp / "logs",
        redis={"url": redis_url, "connect_timeout": 1.0, "socket_timeout": 2.0},
        publisher={"heartbeat_interval": 30.0, "retry_initial": 0.05, "retry_max": 0.5},
        exchanges={"okx": {"delist_confirm_polls": 3, "delist_max_fraction": 0.1},
                   "kraken": {"tier": 2, "score_weight": 0.75}},
    )


def inst(native: str, status: str = "trading") -> dict[str, str]:
    base, quote = native[:-4], native[-4:]
    return {"symbol": f"{base}-{quote}", "base": base, "quote": quote, "market": "spot", "status": status,
            "raw_status": RAW[status], "url": f"https://www.okx.com/trade-spot/{base.lower()}-{quote.lower()}"}


def entries(r) -> list[dict[str, str]]:
    return [f for _, f in r.xrange(LISTING_STREAM)]


def test_lifecycle_each_event_once_across_restart_outage_and_truncation(redis_server, short_tmp, procs) -> None:
    settings = lifecycle_settings(short_tmp, redis_server.url)
    pub = procs.publisher(settings)
    w = procs.worker(settings, "okx")
    r = redis_server.client()

    def poll(snapshot: dict[str, Any], expect_total: int, what: str) -> None:
        """One full list; wait until events:raw holds ``expect_total`` entries (each step produces
        at least one event, so no two lists are coalesced in the publisher's inbox)."""
        w.instruments(snapshot)
        wait_until(lambda: r.xlen(LISTING_STREAM) >= expect_total, what=what)

    base = {f"B{i:02d}USDT": inst(f"B{i:02d}USDT") for i in range(20)}
    w.instruments({})  # an empty first list seeds nothing
    w.instruments(base)
    wait_until(lambda: r.hlen("known:pairs:okx") == 20, what="seeded state")
    assert r.xlen(LISTING_STREAM) == 0

    # a configured tier/weight (kraken) next to Node A's defaults (okx)
    k = procs.worker(settings, "kraken")
    k.instruments({"XBTUSDT": inst("XBTUSDT")})
    wait_until(lambda: r.hlen("known:pairs:kraken") == 1, what="kraken seeded")
    k.instruments({"XBTUSDT": inst("XBTUSDT"), "KNEWUSDT": inst("KNEWUSDT")})
    wait_until(lambda: r.xlen(LISTING_STREAM) == 1, what="kraken listing")
    kev = entries(r)[0]
    assert (kev["exchange"], kev["event"], kev["tier"], kev["score_weight"]) == ("kraken", "listing", "2", "0.75")

    snap = dict(base)
    snap["NEWUSDT"] = inst("NEWUSDT", "pre_trading")
    poll(snap, 2, "pre_listing")
    snap["NEWUSDT"] = inst("NEWUSDT", "trading")
    poll(snap, 3, "listing")

    # the publisher restarts; while it is down NEWUSDT is halted
    w.close()
    pub.sigterm()
    assert pub.join(20) == 0
    pub = procs.publisher(settings)
    w = procs.worker(settings, "okx")
    w.instruments(snap)  # the list as it was before the restart: nothing is announced again
    snap["NEWUSDT"] = inst("NEWUSDT", "halted")
    poll(snap, 4, "status_change after the restart")  # the change made while down is not lost

    snap["NEWUSDT"] = inst("NEWUSDT", "delisted")
    poll(snap, 5, "delisting by status")

    # B00 disappears: a delisting only on the third consecutive list without it. Each list also
    # carries a new symbol, so every step is visible (and none is coalesced with the next).
    del snap["B00USDT"]
    for n, total in ((1, 6), (2, 7)):
        snap[f"FILL{n}USDT"] = inst(f"FILL{n}USDT")
        poll(snap, total, f"filler {n}")
    assert r.hget("known:pairs:okx", "spot:B00USDT") == "trading"
    snap["FILL3USDT"] = inst("FILL3USDT")
    poll(snap, 9, "delisting by absence")

    # an outage: empty lists, then lists truncated to half (each with a new symbol in it)
    for _ in range(3):
        w.instruments({})
    truncated = {n: v for n, v in snap.items() if n not in {f"B{i:02d}USDT" for i in range(1, 12)}}
    for n, total in ((1, 10), (2, 11), (3, 12)):
        truncated[f"TRUNC{n}USDT"] = inst(f"TRUNC{n}USDT")
        snap[f"TRUNC{n}USDT"] = inst(f"TRUNC{n}USDT")
        poll(truncated, total, f"truncated list {n}")
    # had the truncated lists counted, B01 (missing from all three) would go with its next miss
    check = {n: v for n, v in snap.items() if n != "B01USDT"}
    check["CHECKUSDT"] = inst("CHECKUSDT")
    snap["CHECKUSDT"] = check["CHECKUSDT"]
    poll(check, 13, "a believable list after the outage")

    # B00 comes back: a relisting
    snap["B00USDT"] = inst("B00USDT")
    poll(snap, 14, "relisting")

    s = pub.stats(lambda s: s["listings_emitted"] == 11, what="stats after the sequence")
    assert s["listings_by_event"] == {"pre_listing": 0, "listing": 8, "status_change": 1, "delisting": 2}
    assert s["listing_snapshots_truncated"] == 3 and s["listing_snapshots_empty"] == 3
    assert r.xlen(LISTING_STREAM) == 14

    got = [(f["exchange"], f["native_symbol"], f["event"], f["status"], f["previous_status"]) for f in entries(r)]
    assert got == [
        ("kraken", "KNEWUSDT", "listing", "trading", ""),
        ("okx", "NEWUSDT", "pre_listing", "pre_trading", ""),
        ("okx", "NEWUSDT", "listing", "trading", "pre_trading"),
        ("okx", "NEWUSDT", "status_change", "halted", "trading"),
        ("okx", "NEWUSDT", "delisting", "delisted", "halted"),
        ("okx", "FILL1USDT", "listing", "trading", ""),
        ("okx", "FILL2USDT", "listing", "trading", ""),
        ("okx", "FILL3USDT", "listing", "trading", ""),
        ("okx", "B00USDT", "delisting", "delisted", "trading"),
        ("okx", "TRUNC1USDT", "listing", "trading", ""),
        ("okx", "TRUNC2USDT", "listing", "trading", ""),
        ("okx", "TRUNC3USDT", "listing", "trading", ""),
        ("okx", "CHECKUSDT", "listing", "trading", ""),
        ("okx", "B00USDT", "listing", "trading", "delisted"),
    ]
    ev = entries(r)
    assert ev[1] == {
        "source": "rest_okx", "source_type": "exchange", "exchange": "okx", "symbol": "NEW", "event": "pre_listing",
        "raw_text": "New pair NEW/USDT listed, not yet trading: preopen (spot)",
        "url": "https://www.okx.com/trade-spot/new-usdt", "detected_at": "1764590430000", "node_id": "NODE_A",
        "market": "spot", "pair": "NEW-USDT", "native_symbol": "NEWUSDT", "base": "NEW", "quote": "USDT",
        "status": "pre_trading", "raw_status": "preopen", "previous_status": "", "tier": "2", "score_weight": "1.4",
    }
    assert ev[8] == {
        "source": "rest_okx", "source_type": "exchange", "exchange": "okx", "symbol": "B00", "event": "delisting",
        "raw_text": "B00/USDT delisted: missing from 3 consecutive instrument lists (spot)",
        "url": "https://www.okx.com/trade-spot/b00-usdt", "detected_at": "1764590430000", "node_id": "NODE_A",
        "market": "spot", "pair": "B00-USDT", "native_symbol": "B00USDT", "base": "B00", "quote": "USDT",
        "status": "delisted", "raw_status": "", "previous_status": "trading", "tier": "2", "score_weight": "1.4",
    }
    assert ev[13]["raw_text"] == "B00/USDT trading again after a delisting (spot)"
    assert (ev[4]["raw_status"], ev[4]["raw_text"]) == ("delisted", "NEW/USDT delisted (spot)")

    state = r.hgetall("known:pairs:okx")
    assert state["spot:NEWUSDT"] == "delisted" and state["spot:B00USDT"] == "trading"
    assert all(state[f"spot:B{i:02d}USDT"] == "trading" for i in range(1, 20))
    assert r.smembers("known:untraded:okx") == set()
    assert r.hget("known:info:okx", "spot:B00USDT") == \
        '["B00-USDT","B00","USDT","https://www.okx.com/trade-spot/b00-usdt"]'
    # bad lists are logged once per run, not per poll: the first empty list (first process), then
    # the outage's three empty and three truncated lists (second process) once each
    log_text = settings.log_file("publisher").read_text()
    assert log_text.count("treated as truncated") == 1 and log_text.count("empty instruments snapshot ignored") == 2
