"""Listing push channels (issue 3 point 4): OKX ``instruments`` and Binance USDⓈ-M ``!contractInfo``
detect changes between polls, and the poll that follows repeats nothing (one event per change,
whichever path saw it first). Real collector processes, real Redis, the simulator's WebSockets."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from collector.simulator.client import SimulatorClient, start_simulator_process, stop_simulator_process
from tests.conftest import wait_until
from tests.integration.harness import CollectorProcess, stream_entries

pytestmark = pytest.mark.integration

POLL = 4.0  # long enough that a detection well under it can only have come from the push


def _env(ports: dict[str, str]) -> dict[str, str]:
    env = {"COLLECTOR_EXCHANGES__BINANCE__TRADES": "false", "COLLECTOR_SUPERVISOR__READY_TIMEOUT": "60"}
    for name in ("binance", "okx"):
        up = name.upper()
        env[f"COLLECTOR_EXCHANGES__{up}__ENABLED"] = "true"
        env[f"COLLECTOR_EXCHANGES__{up}__REST_URL"] = ports[name]
        env[f"COLLECTOR_EXCHANGES__{up}__WS_URL"] = ports[name].replace("http://", "ws://")
        env[f"COLLECTOR_EXCHANGES__{up}__POLL_INTERVAL"] = str(POLL)
        env[f"COLLECTOR_EXCHANGES__{up}__POLL_JITTER"] = "0"
        env[f"COLLECTOR_EXCHANGES__{up}__DELIST_CONFIRM_POLLS"] = "2"
        # a pushed change outranks a disagreeing poll for this long (default 30 s)
        env[f"COLLECTOR_EXCHANGES__{up}__LISTING_PUSH_GRACE"] = "6"
    return env


def test_push_detects_between_polls_and_the_poll_repeats_nothing(short_tmp: Path, redis_server) -> None:
    sim_proc, _first, ports = start_simulator_process(extra_args=["--futures-symbols", "BTCUSDT,ETHUSDT"],
                                                      exchanges=["binance", "okx"])
    r = redis_server.client()
    okx, binance = SimulatorClient(ports["okx"]), SimulatorClient(ports["binance"])
    c = CollectorProcess(short_tmp / "run", redis_server.url, None, **_env(ports))

    def mine(exchange: str) -> list[dict[str, str]]:
        return [f for f in stream_entries(r, "events:raw") if f["exchange"] == exchange]

    def step(sim: SimulatorClient, exchange: str, count: int, action, *args, **kw) -> dict[str, str]:
        """Do ``action`` on the simulator; wait for the ``count``-th event of ``exchange``; return it
        with the push latency (simulator change -> detected_at) checked against the poll interval."""
        answer = action(*args, **kw)
        wait_until(lambda: len(mine(exchange)) >= count, timeout=POLL * 3, what=f"{exchange} event #{count}")
        ev = mine(exchange)[count - 1]
        lag_ms = int(ev["detected_at"]) - int(answer["visible_at_ms"])
        return {**ev, "lag_ms": str(lag_ms)}

    try:
        c.start(timeout=90)
        wait_until(lambda: r.hexists("known:pairs:okx", "perp:BTC-USDT-SWAP")
                   and r.hexists("known:pairs:binance", "perp:BTCUSDT"), timeout=30, what="both seeded")
        wait_until(lambda: (c.child("okx").get("push_connections") or 0) >= 1
                   and (c.child("binance").get("push_connections") or 0) >= 1, timeout=20, what="push connected")
        time.sleep(0.5)  # past the poll that seeded, so the next poll is ~POLL away

        okx_steps = [("pre_trading", "pre_listing"), ("trading", "listing"), ("halted", "status_change")]
        ev = step(okx, "okx", 1, okx.add_listing, "PSH", "USDT", status="pre_trading", market="spot")
        got = [ev]
        for n, (status, _event) in enumerate(okx_steps[1:], start=2):
            got.append(step(okx, "okx", n, okx.set_listing_status, "PSH-USDT", status, market="spot"))
        assert [e["event"] for e in got] == [e for _, e in okx_steps]
        for e in got:
            assert e["source"] == "ws_okx", e
            assert int(e["lag_ms"]) < POLL * 1000 / 2, e  # the push, not a poll
            assert e["pair"] == "PSH-USDT" and e["native_symbol"] == "PSH-USDT" and e["market"] == "spot"

        bsteps = [("pre_trading", "pre_listing"), ("trading", "listing"), ("halted", "status_change"),
                  ("delisted", "delisting")]
        bgot = [step(binance, "binance", 1, binance.add_listing, "PSH", "USDT", status="pre_trading", market="perp")]
        for n, (status, _event) in enumerate(bsteps[1:], start=2):
            bgot.append(step(binance, "binance", n, binance.set_listing_status, "PSHUSDT", status, market="perp"))
        assert [e["event"] for e in bgot] == [e for _, e in bsteps]
        for e in bgot:
            assert e["source"] == "ws_binance", e
            assert int(e["lag_ms"]) < POLL * 1000 / 2, e
            assert e["native_symbol"] == "PSHUSDT" and e["market"] == "perp" and e["base"] == "PSH"
        assert [e["raw_status"] for e in bgot] == ["PENDING_TRADING", "TRADING", "BREAK", "CLOSE"]

        # the push connections drop: the worker reconnects, OKX re-sends its full list on the new
        # subscription, and nothing is announced again
        okx.drop_connections()
        binance.drop_connections()
        wait_until(lambda: okx.stats()["push"]["clients"] >= 1, timeout=20, what="okx push reconnected")
        time.sleep(POLL * 2 + 1)  # two more polls of each exchange as well
        assert len(mine("okx")) == 3 and len(mine("binance")) == 4, (mine("okx"), mine("binance"))
        assert r.hget("known:pairs:okx", "spot:PSH-USDT") == "halted"

        # OKX drops a delisted instrument from its lists without a push: the poll concludes it
        okx.set_listing_status("PSH-USDT", "delisted", market="spot")
        wait_until(lambda: len(mine("okx")) == 4, timeout=POLL * 4, what="okx delisting by the poll")
        assert mine("okx")[-1]["event"] == "delisting" and mine("okx")[-1]["source"] == "rest_okx"
        assert c.child("okx")["push_updates"] >= 4
        assert c.stop() == 0
    finally:
        c.kill_tree()
        stop_simulator_process(sim_proc)
