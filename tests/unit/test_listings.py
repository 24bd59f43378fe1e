"""ListingTracker's pure logic: diff rules, seeding, outage handling, pending snapshots, commands."""

from __future__ import annotations

import asyncio

import pytest

from collector.listings import (
    InstrumentsError, ListingTracker, decode_state, diff_instruments, parse_instruments_msg,
    seed_changes, state_commands,
)
from shared.events import fields_to_dict


def info(native: str, status: str = "trading", market: str = "spot") -> dict[str, str]:
    base, quote = native[:-4], native[-4:]
    return {"symbol": f"{base}-{quote}", "base": base, "quote": quote, "market": market,
            "status": status, "raw_status": status.upper(), "url": f"https://x/{base}_{quote}"}


def msg(instruments: dict, *, full: bool = True, exchange: str = "binance", market: str = "spot") -> dict:
    return {"t": "instruments", "exchange": exchange, "market": market, "full": full,
            "source": "rest_binance", "detected_at": 1764590430000, "instruments": instruments}


def snap(*natives_status: tuple[str, str], **kw) -> dict:
    return msg({n: info(n, s) for n, s in natives_status}, **kw)


class FakeRedis:
    """What load_state would read: the hash and the untraded set (no Redis needed)."""

    def __init__(self) -> None:
        self.fields: dict[str, dict[str, str]] = {}
        self.untraded: dict[str, set[str]] = {}
        self.loads = 0
        self.down = False

    async def load(self, exchange: str) -> tuple[dict[str, str], set[str]]:
        if self.down:
            raise ConnectionError("redis down")
        self.loads += 1
        return dict(self.fields.get(exchange, {})), set(self.untraded.get(exchange, set()))

    def apply(self, updates) -> None:
        for u in updates:
            self.fields.setdefault(u.exchange, {}).update(u.set_status)
            self.untraded.setdefault(u.exchange, set()).update(u.untraded_add)
            self.untraded[u.exchange].difference_update(u.untraded_remove)


def run(tracker: ListingTracker, fake: FakeRedis, m: dict):
    tracker.submit(parse_instruments_msg(m))
    updates, err = asyncio.run(tracker.process(fake.load))
    assert err is None
    fake.apply(updates)
    return updates


def events(updates) -> list[tuple[str, str, str]]:
    out = []
    for u in updates:
        if u.event is not None:
            f = fields_to_dict(u.event[3])
            out.append((f["native_symbol"], f["event"], f["previous_status"]))
    return out


# ---- pure diff ----

def test_diff_rules() -> None:
    known = {"AAAUSDT": "trading", "BBBUSDT": "pre_trading", "CCCUSDT": "halted", "DDDUSDT": "halted",
             "EEEUSDT": "trading", "GONEUSDT": "trading"}
    untraded = {"BBBUSDT", "DDDUSDT"}
    inst = {
        "AAAUSDT": info("AAAUSDT", "trading"),      # unchanged
        "BBBUSDT": info("BBBUSDT", "trading"),      # pre_trading -> trading, never traded: listing
        "CCCUSDT": info("CCCUSDT", "trading"),      # halted -> trading, traded before: status_change
        "DDDUSDT": info("DDDUSDT", "trading"),      # halted but never traded -> listing
        "EEEUSDT": info("EEEUSDT", "halted"),       # trading -> halted: status_change
        "NEWUSDT": info("NEWUSDT", "trading"),      # new, trading: listing
        "PREUSDT": info("PREUSDT", "pre_trading"),  # new, not trading: pre_listing
        "DEADUSDT": info("DEADUSDT", "delisted"),   # new but delisted: recorded silently
    }                                               # GONEUSDT missing: nothing
    changes = {c.native_symbol: c for c in diff_instruments(known, untraded, inst)}
    assert set(changes) == {"BBBUSDT", "CCCUSDT", "DDDUSDT", "EEEUSDT", "NEWUSDT", "PREUSDT", "DEADUSDT"}
    assert (changes["BBBUSDT"].event, changes["BBBUSDT"].previous_status, changes["BBBUSDT"].untraded) == \
        ("listing", "pre_trading", False)
    assert (changes["CCCUSDT"].event, changes["CCCUSDT"].untraded) == ("status_change", None)
    assert (changes["DDDUSDT"].event, changes["DDDUSDT"].untraded) == ("listing", False)
    assert (changes["EEEUSDT"].event, changes["EEEUSDT"].previous_status) == ("status_change", "trading")
    assert (changes["NEWUSDT"].event, changes["NEWUSDT"].untraded) == ("listing", None)
    assert (changes["PREUSDT"].event, changes["PREUSDT"].untraded) == ("pre_listing", True)
    assert (changes["DEADUSDT"].event, changes["DEADUSDT"].untraded) == (None, None)


def test_seed_marks_pre_trading_untraded() -> None:
    ch = {c.native_symbol: c for c in seed_changes({"AUSDT": info("AUSDT", "trading"),
                                                    "BUSDT": info("BUSDT", "pre_trading"),
                                                    "CUSDT": info("CUSDT", "halted")})}
    assert all(c.event is None for c in ch.values())
    assert ch["BUSDT"].untraded is True
    assert ch["AUSDT"].untraded is None and ch["CUSDT"].untraded is None


# ---- message validation ----

def test_parse_skips_bad_instruments_and_rejects_bad_envelope() -> None:
    m = snap(("BTCUSDT", "trading"))
    m["instruments"]["bad symbol*"] = info("XXXUSDT")
    m["instruments"]["ETHUSDT"] = dict(info("ETHUSDT"), status="weird")
    m["instruments"]["SOLUSDT"] = dict(info("SOLUSDT"), url=["not", "a", "string"])
    m["instruments"]["ADAUSDT"] = info("ADAUSDT", market="perp")  # wrong market for this message
    parsed = parse_instruments_msg(m)
    assert list(parsed.instruments) == ["BTCUSDT"]
    assert parsed.invalid == 4
    for bad in ({"exchange": "Bin ance"}, {"market": None}, {"full": "yes"}, {"detected_at": 1.5},
                {"instruments": []}, {"source": ""}):
        with pytest.raises(InstrumentsError):
            parse_instruments_msg({**m, **bad})


# ---- tracker ----

def test_first_snapshot_seeds_silently_then_new_symbol_is_announced_once() -> None:
    fake, tr = FakeRedis(), ListingTracker("NODE_A")
    ups = run(tr, fake, snap(("BTCUSDT", "trading"), ("ETHUSDT", "trading")))
    assert events(ups) == []
    assert fake.fields["binance"] == {"spot:BTCUSDT": "trading", "spot:ETHUSDT": "trading"}
    ups = run(tr, fake, snap(("BTCUSDT", "trading"), ("ETHUSDT", "trading"), ("NEWUSDT", "trading")))
    assert events(ups) == [("NEWUSDT", "listing", "")]
    ev = fields_to_dict(ups[0].event[3])
    assert ev["source"] == "rest_binance" and ev["node_id"] == "NODE_A" and ev["symbol"] == "NEW"
    assert ev["detected_at"] == "1764590430000" and ev["exchange"] == "binance"
    assert ups[0].set_status == {"spot:NEWUSDT": "trading"}
    # the same snapshot again: nothing
    assert run(tr, fake, snap(("BTCUSDT", "trading"), ("ETHUSDT", "trading"), ("NEWUSDT", "trading"))) == []
    assert fake.loads == 1  # state loaded once per exchange


def test_pre_listing_then_listing_then_halt_and_resume() -> None:
    fake, tr = FakeRedis(), ListingTracker("NODE_A")
    run(tr, fake, snap(("BTCUSDT", "trading")))
    assert events(run(tr, fake, snap(("BTCUSDT", "trading"), ("PREUSDT", "pre_trading")))) == \
        [("PREUSDT", "pre_listing", "")]
    assert fake.untraded["binance"] == {"spot:PREUSDT"}
    assert events(run(tr, fake, snap(("BTCUSDT", "trading"), ("PREUSDT", "trading")))) == \
        [("PREUSDT", "listing", "pre_trading")]
    assert fake.untraded["binance"] == set()
    assert events(run(tr, fake, snap(("BTCUSDT", "trading"), ("PREUSDT", "halted")))) == \
        [("PREUSDT", "status_change", "trading")]
    assert events(run(tr, fake, snap(("BTCUSDT", "trading"), ("PREUSDT", "trading")))) == \
        [("PREUSDT", "status_change", "halted")]


def test_empty_snapshot_is_an_outage() -> None:
    fake, tr = FakeRedis(), ListingTracker("NODE_A")
    assert run(tr, fake, snap()) == []           # never seeds
    assert fake.fields == {}
    run(tr, fake, snap(("BTCUSDT", "trading")))  # the real first snapshot seeds
    assert run(tr, fake, snap()) == []           # never removes
    assert fake.fields["binance"] == {"spot:BTCUSDT": "trading"}
    assert tr.ignored_empty == 2
    assert events(run(tr, fake, snap(("BTCUSDT", "trading"), ("NEWUSDT", "trading")))) == [("NEWUSDT", "listing", "")]


def test_missing_symbol_is_kept_and_not_announced() -> None:
    fake, tr = FakeRedis(), ListingTracker("NODE_A")
    run(tr, fake, snap(("BTCUSDT", "trading"), ("ETHUSDT", "trading")))
    assert run(tr, fake, snap(("BTCUSDT", "trading"))) == []
    assert "spot:ETHUSDT" in fake.fields["binance"]
    assert run(tr, fake, snap(("BTCUSDT", "trading"), ("ETHUSDT", "trading"))) == []  # back: not new


def test_restart_with_state_in_redis_does_not_reannounce() -> None:
    fake = FakeRedis()
    run(ListingTracker("NODE_A"), fake, snap(("BTCUSDT", "trading")))
    run(ListingTracker("NODE_A"), fake, snap(("BTCUSDT", "trading"), ("NEWUSDT", "trading")))
    fresh = ListingTracker("NODE_A")  # a restarted publisher
    assert run(fresh, fake, snap(("BTCUSDT", "trading"), ("NEWUSDT", "trading"))) == []


def test_markets_seed_independently_and_partials_need_a_seed() -> None:
    fake, tr = FakeRedis(), ListingTracker("NODE_A")
    run(tr, fake, snap(("BTCUSDT", "trading")))
    # a partial update for a never-seeded market is ignored (it must not become a partial baseline)
    perp = {"BTCUSDT": info("BTCUSDT", market="perp")}
    assert run(tr, fake, msg(perp, full=False, market="perp")) == []
    assert tr.ignored_unseeded == 1
    assert events(run(tr, fake, msg(perp, market="perp"))) == []  # the perp market's first full snapshot seeds
    new = {"NEWUSDT": info("NEWUSDT", market="perp")}
    assert events(run(tr, fake, msg(new, full=False, market="perp"))) == [("NEWUSDT", "listing", "")]


def test_while_redis_down_only_latest_full_snapshot_is_kept() -> None:
    fake, tr = FakeRedis(), ListingTracker("NODE_A", max_partials=2)
    fake.down = True
    tr.submit(parse_instruments_msg(snap(("BTCUSDT", "trading"))))
    ups, err = asyncio.run(tr.process(fake.load))
    assert ups == [] and err is not None and tr.has_pending()
    tr.submit(parse_instruments_msg(snap(("BTCUSDT", "trading"), ("ETHUSDT", "trading"))))
    for n in ("AUSDT", "BUSDT", "CUSDT"):  # partial updates after it: bounded to the latest 2
        tr.submit(parse_instruments_msg(snap((n, "trading"), full=False)))
    assert tr.pending_count() == 3 and tr.partials_dropped == 1
    fake.down = False
    ups, err = asyncio.run(tr.process(fake.load))
    assert err is None and not tr.has_pending()
    fake.apply(ups)
    # the latest full snapshot seeded; the kept partials are new symbols after it
    assert events(ups) == [("BUSDT", "listing", ""), ("CUSDT", "listing", "")]
    assert set(fake.fields["binance"]) == {"spot:BTCUSDT", "spot:ETHUSDT", "spot:BUSDT", "spot:CUSDT"}


def test_a_newer_full_snapshot_supersedes_queued_partials() -> None:
    fake, tr = FakeRedis(), ListingTracker("NODE_A")
    run(tr, fake, snap(("BTCUSDT", "trading")))
    fake.down = True
    tr.invalidate("binance")  # force a reload, which fails while down
    tr.submit(parse_instruments_msg(snap(("XUSDT", "trading"), full=False)))
    tr.submit(parse_instruments_msg(snap(("BTCUSDT", "trading"), ("YUSDT", "trading"))))
    assert tr.pending_count() == 1
    fake.down = False
    ups, _ = asyncio.run(tr.process(fake.load))
    assert events(ups) == [("YUSDT", "listing", "")]


def test_one_exchange_down_does_not_lose_another_exchanges_updates() -> None:
    fake, tr = FakeRedis(), ListingTracker("NODE_A")
    run(tr, fake, snap(("BTCUSDT", "trading")))
    tr.submit(parse_instruments_msg(snap(("BTCUSDT", "trading"), ("NEWUSDT", "trading"))))
    tr.submit(parse_instruments_msg(snap(("BTCUSDT", "trading"), exchange="okx")))

    async def load(exchange: str):
        if exchange == "okx":
            raise ConnectionError("down")
        return await fake.load(exchange)

    ups, err = asyncio.run(tr.process(load))
    assert isinstance(err, ConnectionError)
    assert events(ups) == [("NEWUSDT", "listing", "")]
    assert tr.pending_count() == 1  # okx's snapshot is kept for later


def test_state_commands_and_decode() -> None:
    fake, tr = FakeRedis(), ListingTracker("NODE_A")
    run(tr, fake, snap(("BTCUSDT", "trading")))
    ups = run(tr, fake, snap(("BTCUSDT", "trading"), ("PREUSDT", "pre_trading")))
    assert state_commands(ups[0]) == [
        ("HSET", "known:pairs:binance", "spot:PREUSDT", "pre_trading"),
        ("SADD", "known:untraded:binance", "spot:PREUSDT"),
    ]
    fields, members = decode_state([b"spot:A", b"trading", b"perp:B", b"halted"], [b"perp:B"])
    assert fields == {"spot:A": "trading", "perp:B": "halted"} and members == {"perp:B"}


def test_state_written_by_one_tracker_is_what_a_restarted_one_reads() -> None:
    """The state commands (applied to a Redis: fakeredis, as a pure-logic stand-in) and
    decode_state agree, so a restarted publisher neither re-announces nor forgets."""
    import asyncio

    import fakeredis

    from collector.listings import ListingTracker, decode_state, pairs_key, parse_instruments_msg, state_commands, untraded_key

    r = fakeredis.FakeRedis()

    def apply(updates) -> list[str]:
        events = []
        for upd in updates:
            for cmd in state_commands(upd):
                r.execute_command(*cmd)
            if upd.event is not None:
                events.append(dict(zip(upd.event[3][0::2], upd.event[3][1::2]))["event"])
        return events

    async def load_state(exchange: str):
        h = r.hgetall(pairs_key(exchange))
        flat = [x for kv in h.items() for x in kv]
        return decode_state(flat, list(r.smembers(untraded_key(exchange))))

    def snapshot(**statuses: str) -> dict:
        return parse_instruments_msg({
            "t": "instruments", "exchange": "binance", "market": "spot", "full": True,
            "source": "rest_binance", "detected_at": 1,
            "instruments": {n: {"symbol": f"{n[:-4]}-USDT", "base": n[:-4], "quote": "USDT", "market": "spot",
                                "status": s, "raw_status": s.upper(), "url": "u"} for n, s in statuses.items()},
        })

    async def run(tracker: ListingTracker, msg) -> list[str]:
        tracker.submit(msg)
        updates, err = await tracker.process(load_state)
        assert err is None
        return apply(updates)

    async def main() -> None:
        a = ListingTracker("N")
        assert await run(a, snapshot(BTCUSDT="trading")) == []  # seed, silent
        assert await run(a, snapshot(BTCUSDT="trading", NEWUSDT="pre_trading")) == ["pre_listing"]
        b = ListingTracker("N")  # the publisher restarted: state comes from Redis only
        assert await run(b, snapshot(BTCUSDT="trading", NEWUSDT="pre_trading")) == []
        # it remembers NEWUSDT never traded: opening it is a listing, not a status change
        assert await run(b, snapshot(BTCUSDT="trading", NEWUSDT="trading")) == ["listing"]
        c = ListingTracker("N")
        assert await run(c, snapshot(BTCUSDT="trading", NEWUSDT="trading")) == []
        assert await run(c, snapshot(BTCUSDT="trading", NEWUSDT="halted")) == ["status_change"]

    asyncio.run(main())
