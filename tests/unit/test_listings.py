"""ListingTracker's pure logic: lifecycle diff rules, seeding, delisting confirmation, the
truncation guard, outage handling, pending snapshots, tier/weight, Redis commands."""

from __future__ import annotations

import asyncio

import pytest

from collector.listings import (
    InstrumentsError, ListingParams, ListingTracker, count_misses, decode_info, decode_state,
    default_params, diff_instruments, encode_info, listing_params, parse_instruments_msg, seed_changes,
    state_commands,
)
from shared.events import fields_to_dict, listing_event
from shared.exchanges import EXCHANGES, LISTING_SOURCES
from shared.settings import EXCHANGE_NAMES, ConfigError, load_settings


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
    """What load_state would read: the status hash, the untraded set and the info hash (no Redis needed)."""

    def __init__(self) -> None:
        self.fields: dict[str, dict[str, str]] = {}
        self.untraded: dict[str, set[str]] = {}
        self.infos: dict[str, dict[str, str]] = {}
        self.loads = 0
        self.down = False

    async def load(self, exchange: str) -> tuple[dict[str, str], set[str], dict[str, str]]:
        if self.down:
            raise ConnectionError("redis down")
        self.loads += 1
        return (dict(self.fields.get(exchange, {})), set(self.untraded.get(exchange, set())),
                dict(self.infos.get(exchange, {})))

    def apply(self, updates) -> None:
        for u in updates:
            self.fields.setdefault(u.exchange, {}).update(u.set_status)
            self.untraded.setdefault(u.exchange, set()).update(u.untraded_add)
            self.untraded[u.exchange].difference_update(u.untraded_remove)
            self.infos.setdefault(u.exchange, {}).update(u.set_info)


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


def test_a_queued_push_survives_a_newer_full_snapshot() -> None:
    # a push queued behind a Redis outage is not thrown away for the next poll: the push may be
    # newer than what the exchange's REST cache served, and it is applied in arrival order
    fake, tr = FakeRedis(), ListingTracker("NODE_A")
    run(tr, fake, snap(("BTCUSDT", "trading")))
    fake.down = True
    tr.invalidate("binance")  # force a reload, which fails while down
    tr.submit(parse_instruments_msg(snap(("XUSDT", "trading"), full=False)))
    tr.submit(parse_instruments_msg(snap(("BTCUSDT", "trading"), ("YUSDT", "trading"))))
    tr.submit(parse_instruments_msg(snap(("BTCUSDT", "trading"), ("YUSDT", "trading"), ("ZUSDT", "trading"))))
    assert tr.pending_count() == 2  # the push, and only the newest full snapshot
    fake.down = False
    ups, _ = asyncio.run(tr.process(fake.load))
    fake.apply(ups)
    assert events(ups) == [("XUSDT", "listing", ""), ("YUSDT", "listing", ""), ("ZUSDT", "listing", "")]


def at(m: dict, ms: int) -> dict:
    return {**m, "detected_at": ms}


def test_a_pushed_change_outranks_a_lagging_poll_within_the_grace() -> None:
    t0 = 1_764_590_430_000
    fake = FakeRedis()
    tr = ListingTracker("NODE_A", params={"binance": ListingParams(delist_confirm_polls=2, push_grace_ms=30_000)})
    run(tr, fake, at(snap(("BTCUSDT", "trading"), ("NEWUSDT", "pre_trading")), t0))
    # the push sees NEW open, and a brand-new LATE listing the REST list does not show yet
    ups = run(tr, fake, at(snap(("NEWUSDT", "trading"), ("LATEUSDT", "trading"), full=False), t0 + 1000))
    assert events(ups) == [("NEWUSDT", "listing", "pre_trading"), ("LATEUSDT", "listing", "")]
    # polls from a lagging REST cache: NEW still pre-trading, LATE missing -- for 20 s
    for i in range(1, 5):
        assert events(run(tr, fake, at(snap(("BTCUSDT", "trading"), ("NEWUSDT", "pre_trading")),
                                        t0 + 1000 + i * 5000))) == []
    assert tr.push_overrides == 4
    assert fake.fields["binance"]["spot:NEWUSDT"] == "trading"
    assert fake.fields["binance"]["spot:LATEUSDT"] == "trading"
    # once the REST list catches up nothing happens either
    assert events(run(tr, fake, at(snap(("BTCUSDT", "trading"), ("NEWUSDT", "trading"), ("LATEUSDT", "trading")),
                                    t0 + 26_000))) == []
    # listed by REST now: vanishing from it again is a real delisting, grace or not
    run(tr, fake, at(snap(("BTCUSDT", "trading"), ("NEWUSDT", "trading")), t0 + 27_000))
    ups = run(tr, fake, at(snap(("BTCUSDT", "trading"), ("NEWUSDT", "trading")), t0 + 28_000))
    assert [(n, e) for n, e, _ in events(ups)] == [("LATEUSDT", "delisting")]


def test_after_the_grace_the_poll_is_the_truth_again() -> None:
    t0 = 1_764_590_430_000
    fake = FakeRedis()
    tr = ListingTracker("NODE_A", params={"binance": ListingParams(delist_confirm_polls=2, push_grace_ms=30_000)})
    run(tr, fake, at(snap(("BTCUSDT", "trading"), ("ETHUSDT", "trading")), t0))
    run(tr, fake, at(snap(("GHOSTUSDT", "trading"), full=False), t0 + 1000))  # a wrong (or withdrawn) push
    late = t0 + 1000 + 30_000
    assert events(run(tr, fake, at(snap(("BTCUSDT", "trading"), ("ETHUSDT", "trading")), late))) == []
    ups = run(tr, fake, at(snap(("BTCUSDT", "trading"), ("ETHUSDT", "trading")), late + 5000))
    assert [(n, e) for n, e, _ in events(ups)] == [("GHOSTUSDT", "delisting")]


def test_a_push_repeating_known_statuses_protects_nothing() -> None:
    # OKX re-sends its whole list on every subscription: that must not shield a real delisting
    t0 = 1_764_590_430_000
    fake = FakeRedis()
    tr = ListingTracker("NODE_A", params={"binance": ListingParams(delist_confirm_polls=2, push_grace_ms=30_000)})
    rows = (("BTCUSDT", "trading"), ("ETHUSDT", "trading"), ("OLDUSDT", "halted"))
    run(tr, fake, at(snap(*rows), t0))
    assert events(run(tr, fake, at(snap(*rows, full=False), t0 + 1000))) == []
    run(tr, fake, at(snap(*rows[:2]), t0 + 2000))
    ups = run(tr, fake, at(snap(*rows[:2]), t0 + 7000))
    assert [(n, e) for n, e, _ in events(ups)] == [("OLDUSDT", "delisting")]


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
        ("HSET", "known:info:binance", "spot:PREUSDT", '["PRE-USDT","PRE","USDT","https://x/PRE_USDT"]'),
    ]
    fields, members, infos = decode_state([b"spot:A", b"trading", b"perp:B", b"halted"], [b"perp:B"],
                                          [b"spot:A", b'["A-USDT","A","USDT","u"]'])
    assert fields == {"spot:A": "trading", "perp:B": "halted"} and members == {"perp:B"}
    assert infos == {"spot:A": '["A-USDT","A","USDT","u"]'}
    with pytest.raises(ConnectionError):
        decode_state([], [], ConnectionError("x"))


def test_state_written_by_one_tracker_is_what_a_restarted_one_reads() -> None:
    """The state commands (applied to a Redis: fakeredis, as a pure-logic stand-in) and
    decode_state agree, so a restarted publisher neither re-announces nor forgets."""
    import asyncio

    import fakeredis

    from collector.listings import ListingTracker, decode_state, load_commands, parse_instruments_msg, state_commands

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
        replies = [r.execute_command(*cmd) for cmd in load_commands(exchange)]
        # fakeredis answers HGETALL with a dict; hiredis (what decode_state reads) with a flat list
        return decode_state(*[[x for kv in rep.items() for x in kv] if isinstance(rep, dict) else list(rep)
                              for rep in replies])

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
        c = ListingTracker("N", params={"binance": ListingParams(delist_confirm_polls=2)})
        assert await run(c, snapshot(BTCUSDT="trading", NEWUSDT="trading")) == []
        assert await run(c, snapshot(BTCUSDT="trading", NEWUSDT="halted")) == ["status_change"]
        # NEWUSDT disappears: its names survive in Redis for the delisting by absence
        d = ListingTracker("N", params={"binance": ListingParams(delist_confirm_polls=2)})
        assert await run(d, snapshot(BTCUSDT="trading")) == []
        assert await run(d, snapshot(BTCUSDT="trading")) == ["delisting"]
        assert r.hget("known:pairs:binance", "spot:NEWUSDT") == b"delisted"
        e = ListingTracker("N")
        assert await run(e, snapshot(BTCUSDT="trading")) == []  # delisted stays delisted: not counted again
        assert await run(e, snapshot(BTCUSDT="trading", NEWUSDT="trading")) == ["listing"]  # relisted

    asyncio.run(main())


# ---- lifecycle: explicit status transitions ----

def test_diff_delisting_and_relisting_rules() -> None:
    known = {"AUSDT": "trading", "BUSDT": "pre_trading", "CUSDT": "delisted", "DUSDT": "delisted",
             "EUSDT": "delisted", "FUSDT": "halted", "GUSDT": "delisted"}
    untraded = {"BUSDT"}
    inst = {
        "AUSDT": info("AUSDT", "delisted"),     # trading -> delisted: delisting
        "BUSDT": info("BUSDT", "delisted"),     # delisted before it ever traded: delisting, untraded cleared
        "CUSDT": info("CUSDT", "trading"),      # back, trading: a relisting -> listing
        "DUSDT": info("DUSDT", "pre_trading"),  # back, not trading -> pre_listing, untraded again
        "EUSDT": info("EUSDT", "halted"),       # back, halted -> pre_listing too
        "FUSDT": info("FUSDT", "pre_trading"),  # halted -> pre_trading: some other change
        "GUSDT": info("GUSDT", "delisted"),     # still delisted: nothing
    }
    ch = {c.native_symbol: c for c in diff_instruments(known, untraded, inst)}
    assert set(ch) == {"AUSDT", "BUSDT", "CUSDT", "DUSDT", "EUSDT", "FUSDT"}
    got = {n: (c.event, c.previous_status, c.untraded) for n, c in ch.items()}
    assert got == {
        "AUSDT": ("delisting", "trading", None),
        "BUSDT": ("delisting", "pre_trading", False),
        "CUSDT": ("listing", "delisted", None),
        "DUSDT": ("pre_listing", "delisted", True),
        "EUSDT": ("pre_listing", "delisted", True),
        "FUSDT": ("status_change", "halted", None),
    }
    assert ch["CUSDT"].raw_text == "C/USDT trading again after a delisting (spot)"
    assert ch["AUSDT"].raw_text is None  # the default "delisted" text


def test_full_lifecycle_through_the_tracker_with_fields() -> None:
    fake, tr = FakeRedis(), ListingTracker("NODE_A")
    base = [(f"B{i}USDT", "trading") for i in range(20)]
    assert events(run(tr, fake, snap(*base, exchange="okx"))) == []
    steps = [("pre_trading", ("NEWUSDT", "pre_listing", "")),
             ("trading", ("NEWUSDT", "listing", "pre_trading")),
             ("halted", ("NEWUSDT", "status_change", "trading")),
             ("trading", ("NEWUSDT", "status_change", "halted")),
             ("delisted", ("NEWUSDT", "delisting", "trading"))]
    for status, expected in steps:
        ups = run(tr, fake, snap(*base, ("NEWUSDT", status), exchange="okx"))
        assert events(ups) == [expected]
        assert fake.fields["okx"]["spot:NEWUSDT"] == status
    ev = fields_to_dict(ups[0].event[3])
    assert ev == {
        "source": "rest_binance", "source_type": "exchange", "exchange": "okx", "symbol": "NEW",
        "event": "delisting", "raw_text": "NEW/USDT delisted (spot)", "url": "https://x/NEW_USDT",
        "detected_at": "1764590430000", "node_id": "NODE_A", "market": "spot", "pair": "NEW-USDT",
        "native_symbol": "NEWUSDT", "base": "NEW", "quote": "USDT", "status": "delisted",
        "raw_status": "DELISTED", "previous_status": "trading", "tier": "2", "score_weight": "1.4",
    }
    assert ups[0].event[1] == "l:okx:spot:NEWUSDT:delisting:delisted"  # dedup key
    # a delisted symbol that stays listed as delisted, or then vanishes, produces nothing more
    for _ in range(5):
        assert events(run(tr, fake, snap(*base, ("NEWUSDT", "delisted"), exchange="okx"))) == []
        assert events(run(tr, fake, snap(*base, exchange="okx"))) == []


def test_new_symbol_already_delisted_is_state_only() -> None:
    fake, tr = FakeRedis(), ListingTracker("NODE_A")
    run(tr, fake, snap(("BTCUSDT", "trading")))
    ups = run(tr, fake, snap(("BTCUSDT", "trading"), ("DEADUSDT", "delisted")))
    assert events(ups) == [] and fake.fields["binance"]["spot:DEADUSDT"] == "delisted"


def test_relisting_after_delisting_by_status_and_pre_trading_return() -> None:
    fake, tr = FakeRedis(), ListingTracker("NODE_A")
    run(tr, fake, snap(("BTCUSDT", "trading"), ("XUSDT", "trading"), ("YUSDT", "trading")))
    run(tr, fake, snap(("BTCUSDT", "trading"), ("XUSDT", "delisted"), ("YUSDT", "delisted")))
    ups = run(tr, fake, snap(("BTCUSDT", "trading"), ("XUSDT", "trading"), ("YUSDT", "pre_trading")))
    assert events(ups) == [("XUSDT", "listing", "delisted"), ("YUSDT", "pre_listing", "delisted")]
    assert fields_to_dict(ups[0].event[3])["raw_text"] == "X/USDT trading again after a delisting (spot)"
    # Y came back pre-trading: its opening is a listing again, not a status change
    ups = run(tr, fake, snap(("BTCUSDT", "trading"), ("XUSDT", "trading"), ("YUSDT", "trading")))
    assert events(ups) == [("YUSDT", "listing", "pre_trading")]


# ---- delisting by absence: confirmation counting ----

def test_count_misses_confirmation_and_reset() -> None:
    known = {f"S{i}": "trading" for i in range(50)}
    present = {n: 1 for n in known if n not in ("S1", "S2")}
    misses: dict[str, int] = {}
    kw = dict(confirm_polls=3, max_fraction=0.1)
    assert count_misses(known, present, misses, **kw).confirmed == [] and misses == {"S1": 1, "S2": 1}
    assert count_misses(known, present, misses, **kw).confirmed == [] and misses == {"S1": 2, "S2": 2}
    # S2 reappears: its count is reset; S1 reaches 3 and is confirmed (its count dropped)
    mc = count_misses(known, {**present, "S2": 1}, misses, **kw)
    assert (mc.confirmed, mc.truncated, mc.missing, mc.active) == (["S1"], False, 1, 50)
    assert misses == {}
    # delisted symbols are neither counted nor part of the base of the fraction
    known2 = {**{f"D{i}": "delisted" for i in range(100)}, **known}
    mc = count_misses(known2, present, {}, **kw)
    assert (mc.missing, mc.active, mc.truncated) == (2, 50, False)


def test_truncation_guard_with_realistic_sizes() -> None:
    known = {f"S{i:04d}USDT": "trading" for i in range(1000)}
    kw = dict(confirm_polls=1, max_fraction=0.1)

    def present_without(n: int) -> dict:
        return {s: 1 for s in list(known)[n:]}

    misses: dict[str, int] = {}
    mc = count_misses(known, present_without(150), misses, **kw)  # 15 % missing: a truncated page
    assert mc.truncated and mc.confirmed == [] and misses == {} and mc.missing == 150
    mc = count_misses(known, present_without(101), {}, **kw)  # just over 10 %
    assert mc.truncated and mc.confirmed == []
    mc = count_misses(known, present_without(100), {}, **kw)  # exactly 10 %: believed
    assert not mc.truncated and len(mc.confirmed) == 100
    # a small market can still lose one symbol (1 of 5 is 20 %), but not two
    small = {f"T{i}": "trading" for i in range(5)}
    assert count_misses(small, {n: 1 for n in list(small)[1:]}, {}, **kw).confirmed == ["T0"]
    assert count_misses(small, {n: 1 for n in list(small)[2:]}, {}, **kw).truncated
    # counts already running are frozen (neither advanced nor reset) by a truncated list
    misses = {"S0000USDT": 2}
    count_misses(known, present_without(150), misses, confirm_polls=3, max_fraction=0.1)
    assert misses == {"S0000USDT": 2}


def test_tracker_delists_by_absence_after_n_polls_with_stored_names() -> None:
    fake = FakeRedis()
    tr = ListingTracker("NODE_A", params={"binance": ListingParams("1", "1.5", 3, 0.1)})
    base = [(f"B{i}USDT", "trading") for i in range(30)]
    run(tr, fake, snap(*base, ("GONEUSDT", "trading"), ("PREUSDT", "pre_trading")))
    for _ in range(2):  # two misses: nothing yet
        assert run(tr, fake, snap(*base)) == []
    assert fake.fields["binance"]["spot:GONEUSDT"] == "trading"
    ups = run(tr, fake, snap(*base))  # the third consecutive miss confirms both
    assert events(ups) == [("GONEUSDT", "delisting", "trading"), ("PREUSDT", "delisting", "pre_trading")]
    ev = fields_to_dict(ups[0].event[3])
    assert (ev["symbol"], ev["pair"], ev["base"], ev["quote"], ev["url"]) == \
        ("GONE", "GONE-USDT", "GONE", "USDT", "https://x/GONE_USDT")
    assert (ev["status"], ev["raw_status"], ev["tier"], ev["score_weight"]) == ("delisted", "", "1", "1.5")
    assert ev["raw_text"] == "GONE/USDT delisted: missing from 3 consecutive instrument lists (spot)"
    assert fake.fields["binance"]["spot:GONEUSDT"] == "delisted"
    assert "spot:PREUSDT" not in fake.untraded["binance"]
    assert ups[1].untraded_remove == ["spot:PREUSDT"]
    for _ in range(4):  # already delisted: never announced again
        assert events(run(tr, fake, snap(*base))) == []
    # it comes back trading: a relisting
    assert events(run(tr, fake, snap(*base, ("GONEUSDT", "trading")))) == [("GONEUSDT", "listing", "delisted")]


def test_reappearing_resets_the_count() -> None:
    fake = FakeRedis()
    tr = ListingTracker("NODE_A", params={"binance": ListingParams(delist_confirm_polls=3)})
    base = [(f"B{i}USDT", "trading") for i in range(30)]
    run(tr, fake, snap(*base, ("FLAKYUSDT", "trading")))
    for _ in range(4):  # missing twice, back once, ... never three in a row
        assert run(tr, fake, snap(*base)) == []
        assert run(tr, fake, snap(*base)) == []
        assert run(tr, fake, snap(*base, ("FLAKYUSDT", "trading"))) == []
    assert fake.fields["binance"]["spot:FLAKYUSDT"] == "trading"


def test_partial_updates_never_count_misses_but_reset_them() -> None:
    fake = FakeRedis()
    tr = ListingTracker("NODE_A", params={"binance": ListingParams(delist_confirm_polls=2)})
    others = [(f"B{i}USDT", "trading") for i in range(30)]
    run(tr, fake, snap(*others, ("CUSDT", "trading")))
    # push updates carrying every symbol but C (so a miss would pass the truncation guard), and
    # small ones carrying a single symbol: neither says anything about the symbols not in it
    for _ in range(5):
        assert run(tr, fake, snap(*others, full=False)) == []
        assert run(tr, fake, snap(others[0], full=False)) == []
    assert set(fake.fields["binance"].values()) == {"trading"}
    # one full miss, then C shows up in a push update: the count restarts
    assert run(tr, fake, snap(*others)) == []
    assert run(tr, fake, snap(("CUSDT", "trading"), full=False)) == []
    assert run(tr, fake, snap(*others)) == []
    assert events(run(tr, fake, snap(*others))) == [("CUSDT", "delisting", "trading")]
    # an explicit delisted status in a push update is a delisting at once
    assert events(run(tr, fake, snap(("B1USDT", "delisted"), full=False))) == [("B1USDT", "delisting", "trading")]


def test_truncated_and_empty_snapshots_never_delist(caplog) -> None:
    fake = FakeRedis()
    tr = ListingTracker("NODE_A", params={"binance": ListingParams(delist_confirm_polls=3)})
    base = [(f"B{i:03d}USDT", "trading") for i in range(200)]
    run(tr, fake, snap(*base))
    caplog.set_level("INFO", logger="collector.listings")
    for k in range(6):  # an outage: empty lists and lists truncated to half, with one new symbol each
        assert run(tr, fake, snap()) == []
        ups = run(tr, fake, snap(*base[:100], (f"NEW{k}USDT", "trading")))
        assert events(ups) == [(f"NEW{k}USDT", "listing", "")]  # what a truncated list carries still counts
    assert tr.truncated_snapshots == 6 and tr.ignored_empty == 6
    assert set(fake.fields["binance"].values()) == {"trading"}
    # logged once per run of bad lists, not once per poll
    assert sum("treated as truncated" in r.getMessage() for r in caplog.records) == 1
    assert sum("empty instruments snapshot ignored" in r.getMessage() for r in caplog.records) == 1
    # the truncated lists advanced no count: one believable miss of B199 is just its first
    everyone = base + [(f"NEW{k}USDT", "trading") for k in range(6)]
    assert run(tr, fake, snap(*everyone[:199], *everyone[200:])) == []
    assert sum("complete instruments list again" in r.getMessage() for r in caplog.records) == 1
    assert run(tr, fake, snap(*everyone[:199], *everyone[200:])) == []
    assert events(run(tr, fake, snap(*everyone[:199], *everyone[200:]))) == [("B199USDT", "delisting", "trading")]


def test_restart_restarts_miss_counts_from_zero() -> None:
    """Miss counts are memory-only: a restart can delay a delisting, never invent or lose one."""
    fake = FakeRedis()
    params = {"binance": ListingParams(delist_confirm_polls=3)}
    base = [(f"B{i}USDT", "trading") for i in range(30)]
    run(ListingTracker("NODE_A", params=params), fake, snap(*base, ("GONEUSDT", "trading")))
    a = ListingTracker("NODE_A", params=params)
    run(a, fake, snap(*base))
    run(a, fake, snap(*base))
    b = ListingTracker("NODE_A", params=params)  # restarted with two misses counted
    assert run(b, fake, snap(*base)) == [] and run(b, fake, snap(*base)) == []
    assert events(run(b, fake, snap(*base))) == [("GONEUSDT", "delisting", "trading")]


def test_state_from_before_names_were_kept_is_backfilled() -> None:
    fake = FakeRedis()
    fake.fields["binance"] = {"spot:AUSDT": "trading", "spot:BUSDT": "trading", "spot:OLDUSDT": "trading"}
    tr = ListingTracker("NODE_A", params={"binance": ListingParams(delist_confirm_polls=1)})
    ups = run(tr, fake, snap(("AUSDT", "trading"), ("BUSDT", "trading"), ("OLDUSDT", "trading")))
    assert events(ups) == [] and len(ups) == 1 and ups[0].set_status == {}
    assert set(ups[0].set_info) == {"spot:AUSDT", "spot:BUSDT", "spot:OLDUSDT"}
    assert run(tr, fake, snap(("AUSDT", "trading"), ("BUSDT", "trading"), ("OLDUSDT", "trading"))) == []
    # a symbol never seen by this version disappears: named as well as can be, not dropped
    fake.fields["binance"]["spot:ZZZUSDT"] = "halted"
    tr2 = ListingTracker("NODE_A", params={"binance": ListingParams(delist_confirm_polls=1)})
    ups = run(tr2, fake, snap(("AUSDT", "trading"), ("BUSDT", "trading"), ("OLDUSDT", "trading")))
    ev = fields_to_dict(ups[0].event[3])
    assert (ev["native_symbol"], ev["event"], ev["symbol"], ev["pair"]) == ("ZZZUSDT", "delisting", "ZZZUSDT", "ZZZUSDT")


def test_info_encoding_round_trip_and_damage() -> None:
    i = info("ABCUSDT")
    assert decode_info("ABCUSDT", "spot", encode_info(i)) == {
        "symbol": "ABC-USDT", "base": "ABC", "quote": "USDT", "market": "spot", "status": "delisted",
        "raw_status": "", "url": "https://x/ABC_USDT"}
    for bad in (None, "", "{not json", '["only", "three", "items"]', '[1, 2, 3, 4]'):
        assert decode_info("ABCUSDT", "perp", bad)["base"] == "ABCUSDT"


# ---- tier and score weight ----

def test_exchange_table_matches_node_a() -> None:
    assert set(EXCHANGES) == set(EXCHANGE_NAMES)
    assert len(LISTING_SOURCES) == 13 and "deribit" not in LISTING_SOURCES
    table = {n: (f.tier, f.score_weight) for n, f in EXCHANGES.items()}
    assert table == {
        "binance": (1, 1.5), "coinbase": (1, 1.4), "kraken": (1, 1.15), "okx": (2, 1.4), "bybit": (2, 1.2),
        "kucoin": (2, 1.05), "gate": (3, 1.1), "bitget": (3, 1.0), "htx": (3, 0.85), "mexc": (3, 0.9),
        "bingx": (3, 1.0), "phemex": (3, 1.0), "whitebit": (3, 1.0), "deribit": (None, None)}
    assert EXCHANGES["gate"].display_name == "Gate.io" and EXCHANGES["whitebit"].display_name == "WhiteBIT"


def test_tier_and_weight_defaults_and_settings() -> None:
    assert default_params("kraken") == ListingParams("1", "1.15", 3, 0.1)
    assert default_params("htx") == ListingParams("3", "0.85", 3, 0.1)
    assert default_params("deribit").tier == "" and default_params("nosuch").score_weight == ""
    settings = load_settings(exchanges={"kraken": {"tier": 2, "score_weight": 0.75, "delist_confirm_polls": 5,
                                                   "delist_max_fraction": 0.25}})
    p = listing_params(settings)
    assert p["kraken"] == ListingParams("2", "0.75", 5, 0.25)
    assert p["bitget"] == ListingParams("3", "1.0", 3, 0.1)  # not configured: Node A's
    assert set(p) == set(EXCHANGE_NAMES)
    for bad in ({"tier": 0}, {"score_weight": 0}, {"delist_confirm_polls": 0}, {"delist_max_fraction": 0},
                {"delist_max_fraction": 1.5}):
        with pytest.raises(ConfigError):
            load_settings(exchanges={"kraken": bad})
    # the tracker puts them on its events: configured for kraken, defaults for an unconfigured exchange
    fake, tr = FakeRedis(), ListingTracker("NODE_A", params=p)
    for ex, want in (("kraken", ("2", "0.75")), ("mexc", ("3", "0.9")), ("elsewhere", ("", ""))):
        run(tr, fake, snap(("BTCUSDT", "trading"), exchange=ex))
        ups = run(tr, fake, snap(("BTCUSDT", "trading"), ("NEWUSDT", "trading"), exchange=ex))
        ev = fields_to_dict(ups[0].event[3])
        assert (ev["tier"], ev["score_weight"]) == want, ex


def test_listing_event_tier_fields_default_from_the_table() -> None:
    i = info("NEWUSDT")
    d = fields_to_dict(listing_event(exchange="bybit", native_symbol="NEWUSDT", info=i, event="listing",
                                     source="rest_bybit", detected_at=1, node_id="N")[3])
    assert (d["tier"], d["score_weight"]) == ("2", "1.2")
    d = fields_to_dict(listing_event(exchange="bybit", native_symbol="NEWUSDT", info=i, event="listing",
                                     source="rest_bybit", detected_at=1, node_id="N", tier=1, score_weight=2.0)[3])
    assert (d["tier"], d["score_weight"]) == ("1", "2.0")
    d = fields_to_dict(listing_event(exchange="deribit", native_symbol="NEWUSDT", info=i, event="listing",
                                     source="rest_deribit", detected_at=1, node_id="N")[3])
    assert (d["tier"], d["score_weight"]) == ("", "")
