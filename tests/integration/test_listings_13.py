"""Issue 3's acceptance path: one collector with all 13 listing workers against the simulator
serving all 13 exchanges (one port each). Each exchange is driven through
pre_trading -> trading -> halted -> delisted and `events:raw` must hold exactly the expected events,
once each, with Node A's fields."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from collector.simulator.client import SimulatorClient, start_simulator_process, stop_simulator_process
from shared.exchanges import LISTING_SOURCES, format_score_weight, format_tier, resolve_score_weight, resolve_tier
from tests.conftest import wait_until
from tests.integration.harness import CollectorProcess, stream_entries

pytestmark = pytest.mark.integration

#: the market each exchange is driven on (Bybit spot never lists pre-launch pairs: use linear)
MARKET = {name: "spot" for name in LISTING_SOURCES}
MARKET["bybit"] = "perp"

STEPS = [("pre_trading", "pre_listing"), ("trading", "listing"), ("halted", "status_change"),
         ("delisted", "delisting")]


def test_every_exchange_lifecycle_once_each(short_tmp: Path, redis_server) -> None:
    sim_proc, _first, ports = start_simulator_process(exchanges="all")
    env = {
        "COLLECTOR_PUBLISHER__HEARTBEAT_INTERVAL": "1",
        "COLLECTOR_EXCHANGES__BINANCE__TRADES": "false",
        "COLLECTOR_SUPERVISOR__READY_TIMEOUT": "60",
    }
    for name in LISTING_SOURCES:
        up = name.upper()
        env[f"COLLECTOR_EXCHANGES__{up}__ENABLED"] = "true"
        env[f"COLLECTOR_EXCHANGES__{up}__REST_URL"] = ports[name]
        env[f"COLLECTOR_EXCHANGES__{up}__WS_URL"] = ports[name].replace("http://", "ws://")
        env[f"COLLECTOR_EXCHANGES__{up}__POLL_INTERVAL"] = "0.5"
        env[f"COLLECTOR_EXCHANGES__{up}__DELIST_CONFIRM_POLLS"] = "2"
        env[f"COLLECTOR_EXCHANGES__{up}__BREAKER_THRESHOLD"] = "50"
    c = CollectorProcess(short_tmp / "run", redis_server.url, None, **env)
    r = redis_server.client()
    sims = {name: SimulatorClient(url) for name, url in ports.items()}
    try:
        c.start(timeout=90)
        wait_until(lambda: all(r.exists(f"known:pairs:{n}") for n in LISTING_SOURCES), timeout=60,
                   what="every exchange seeded")
        assert r.xlen("events:raw") == 0, stream_entries(r, "events:raw")
        natives: dict[str, str] = {}
        for status, event in STEPS:
            for name in LISTING_SOURCES:
                sim = sims[name]
                if status == "pre_trading":
                    natives[name] = sim.add_listing("ZQX", "USDT", status="pre_trading", market=MARKET[name])["symbol"]
                else:
                    sim.set_listing_status(natives[name], status, market=MARKET[name])

            def have_step() -> bool:
                got = {(f["exchange"], f["event"]) for f in stream_entries(r, "events:raw")}
                return all((n, event) in got for n in LISTING_SOURCES)

            try:
                wait_until(have_step, timeout=20, what=f"{event} on every exchange")
            except AssertionError:
                got = {(f["exchange"], f["event"]) for f in stream_entries(r, "events:raw")}
                missing = sorted(n for n in LISTING_SOURCES if (n, event) not in got)
                raise AssertionError(f"no {event} from {missing}; events: {sorted(got)}") from None
        time.sleep(1.5)  # a few more polls: nothing may repeat
        entries = stream_entries(r, "events:raw")
        for name in LISTING_SOURCES:
            mine = [f for f in entries if f["exchange"] == name]
            assert [f["event"] for f in mine] == [e for _, e in STEPS], (name, mine)
            for f in mine:
                # OKX's push channel usually sees a change before the next poll does
                sources = {f"rest_{name}", f"ws_{name}"} if name == "okx" else {f"rest_{name}"}
                assert f["source"] in sources and f["source_type"] == "exchange", f
                assert f["symbol"] == "ZQX" and f["pair"] == "ZQX-USDT" and f["base"] == "ZQX"
                assert f["native_symbol"] == natives[name] and f["market"] == MARKET[name]
                assert f["node_id"] == "TEST_NODE" and f["url"].startswith("https://")
                assert f["tier"] == format_tier(resolve_tier(name))
                assert f["score_weight"] == format_score_weight(resolve_score_weight(name))
                assert int(f["detected_at"]) > 0 and f["raw_text"]
        assert c.stop() == 0
    finally:
        c.kill_tree()
        stop_simulator_process(sim_proc)


def test_restart_outage_and_429_storm_affect_nothing_else(short_tmp: Path, redis_server) -> None:
    sim_proc, _first, ports = start_simulator_process(exchanges="all")
    env = {"COLLECTOR_EXCHANGES__BINANCE__TRADES": "false", "COLLECTOR_SUPERVISOR__READY_TIMEOUT": "60"}
    for name in LISTING_SOURCES:
        up = name.upper()
        env[f"COLLECTOR_EXCHANGES__{up}__ENABLED"] = "true"
        env[f"COLLECTOR_EXCHANGES__{up}__REST_URL"] = ports[name]
        env[f"COLLECTOR_EXCHANGES__{up}__LISTING_PUSH"] = "false"  # the storm is about polling
        env[f"COLLECTOR_EXCHANGES__{up}__POLL_INTERVAL"] = "0.5"
        env[f"COLLECTOR_EXCHANGES__{up}__DELIST_CONFIRM_POLLS"] = "2"
        env[f"COLLECTOR_EXCHANGES__{up}__BREAKER_THRESHOLD"] = "3"
        env[f"COLLECTOR_EXCHANGES__{up}__BREAKER_RECOVERY"] = "300"
    r = redis_server.client()
    sims = {name: SimulatorClient(url) for name, url in ports.items()}
    others = [n for n in LISTING_SOURCES if n != "okx"]

    def events(name: str) -> list[str]:
        return [f["event"] for f in stream_entries(r, "events:raw") if f["exchange"] == name]

    c = CollectorProcess(short_tmp / "run", redis_server.url, None, **env)
    try:
        c.start(timeout=90)
        wait_until(lambda: all(r.exists(f"known:pairs:{n}") for n in LISTING_SOURCES), timeout=60, what="seeded")
        # 1. a pre-listing, then a restart in the middle of the sequence
        natives = {n: sims[n].add_listing("RSQ", "USDT", status="pre_trading", market=MARKET[n])["symbol"]
                   for n in LISTING_SOURCES}
        wait_until(lambda: all(events(n) == ["pre_listing"] for n in LISTING_SOURCES), timeout=20, what="pre_listing")
        assert c.stop() == 0
        for n in LISTING_SOURCES:  # opened while the collector is down
            sims[n].set_listing_status(natives[n], "trading", market=MARKET[n])
        c = CollectorProcess(short_tmp / "run", redis_server.url, None, **env)
        c.start(timeout=90)
        wait_until(lambda: all(events(n) == ["pre_listing", "listing"] for n in LISTING_SOURCES), timeout=20,
                   what="listing after the restart, once, and nothing repeated")

        # 2. an empty list on one exchange is an outage, not a wave of delistings
        sims["kraken"].rest_fault("empty", duration_s=4)
        # 3. a 429 storm on OKX: its breaker opens, the other twelve keep detecting
        sims["okx"].rest_fault("429", duration_s=60, retry_after=1)
        wait_until(lambda: c.child("okx").get("circuit") == "OPEN", timeout=30, what="okx breaker OPEN")
        for n in others:
            sims[n].add_listing("STM", "USDT", status="trading", market=MARKET[n])
        wait_until(lambda: all(events(n)[-1:] == ["listing"] and len(events(n)) == 3 for n in others), timeout=20,
                   what="the other twelve still detect listings")
        time.sleep(4.5)  # past the empty-list window, with polls of every exchange in between
        assert events("kraken") == ["pre_listing", "listing", "listing"]  # no delisting from the empty lists
        assert events("okx") == ["pre_listing", "listing"]
        health = c.http_json("/health")
        assert any("okx" in reason for reason in health["reasons"]), health
        assert c.child("kraken")["circuit"] == "CLOSED"
        assert c.stop() == 0
    finally:
        c.kill_tree()
        stop_simulator_process(sim_proc)
