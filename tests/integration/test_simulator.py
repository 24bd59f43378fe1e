"""The exchange simulator, exercised as a real process over real sockets.

One simulator process serves the module (started with ``start_simulator_process``); every test
begins with ``POST /_sim/reset`` so ids restart at 1 and no fault leaks between tests.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Iterator

import aiohttp
import pytest

from collector.simulator.client import (
    SimulatorClient,
    SimulatorError,
    start_simulator_process,
    stop_simulator_process,
)

pytestmark = pytest.mark.integration

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
SPOT_INFO = json.loads((FIXTURES / "rest" / "binance.json").read_text())
USDM_INFO = json.loads((FIXTURES / "rest" / "binance_futures.json").read_text())
TRADE_FIXTURE = json.loads((FIXTURES / "ws" / "binance_spot" / "trade.json").read_text())
SHUTDOWN_FIXTURE = json.loads((FIXTURES / "ws" / "binance_spot" / "server_shutdown.json").read_text())
TRADE_KEYS = list(TRADE_FIXTURE[0])  # current documented payload: e E s t p q T m M


@pytest.fixture(scope="module")
def sim_proc() -> Iterator[tuple[Any, str]]:
    proc, base_url = start_simulator_process(extra_args=["--seed", "7"])
    try:
        yield proc, base_url
    finally:
        stop_simulator_process(proc)


@pytest.fixture
def sim(sim_proc: tuple[Any, str]) -> SimulatorClient:
    client = SimulatorClient(sim_proc[1])
    client.reset()
    return client


def http_get(url: str, timeout: float = 5.0) -> tuple[int, dict[str, str], bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


async def recv_text(ws: aiohttp.ClientWebSocketResponse, n: int, timeout: float = 5.0) -> list[str]:
    """Exactly ``n`` text frames (fails on anything else or a timeout)."""
    out: list[str] = []
    async with asyncio.timeout(timeout):
        while len(out) < n:
            msg = await ws.receive()
            assert msg.type == aiohttp.WSMsgType.TEXT, f"unexpected {msg.type} after {len(out)} frames"
            out.append(msg.data)
    return out


async def recv_quiet(ws: aiohttp.ClientWebSocketResponse, quiet: float = 0.4,
                     limit: float = 5.0) -> list[aiohttp.WSMessage]:
    """Every message until nothing arrives for ``quiet`` seconds."""
    out: list[aiohttp.WSMessage] = []
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        try:
            msg = await asyncio.wait_for(ws.receive(), quiet)
        except asyncio.TimeoutError:
            break
        out.append(msg)
        if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
            break
    return out


def trade_ids(frames: list[dict[str, Any]], symbol: str) -> list[int]:
    return [f["t"] for f in frames if f["s"] == symbol]


def to_ranges(ids: list[int]) -> list[list[int]]:
    ranges: list[list[int]] = []
    for i in sorted(set(ids)):
        if ranges and ranges[-1][1] + 1 == i:
            ranges[-1][1] = i
        else:
            ranges.append([i, i])
    return ranges


# ------------------------------------------------------------------------------------------ REST
def test_exchange_info_shape_and_weight_header(sim: SimulatorClient) -> None:
    status, headers, body = http_get(sim.base_url + "/api/v3/exchangeInfo")
    assert status == 200
    assert headers["X-MBX-USED-WEIGHT-1M"] == "20"
    info = json.loads(body)
    assert list(info) == list(SPOT_INFO)  # timezone, serverTime, rateLimits, exchangeFilters, symbols
    assert info["rateLimits"] == SPOT_INFO["rateLimits"]
    assert abs(info["serverTime"] - time.time() * 1000) < 5000
    by_symbol = {s["symbol"]: s for s in info["symbols"]}
    assert list(by_symbol) == ["BTCUSDT", "ETHUSDT", "BNBBTC"]
    # recorded symbols are served as recorded; constructed ones have the same field set
    recorded = {s["symbol"]: s for s in SPOT_INFO["symbols"]}
    assert by_symbol["BTCUSDT"] == recorded["BTCUSDT"]
    bnb = by_symbol["BNBBTC"]
    assert list(bnb) == list(recorded["BTCUSDT"])
    assert (bnb["status"], bnb["baseAsset"], bnb["quoteAsset"]) == ("TRADING", "BNB", "BTC")
    assert isinstance(bnb["permissionSets"], list) and isinstance(bnb["permissionSets"][0], list)

    # rolling-minute weight: +20 per exchangeInfo, depth by limit (100 -> 5, 500 -> 25)
    assert http_get(sim.base_url + "/api/v3/exchangeInfo")[1]["X-MBX-USED-WEIGHT-1M"] == "40"
    status, headers, body = http_get(sim.base_url + "/api/v3/depth?symbol=BTCUSDT&limit=100")
    assert status == 200 and headers["X-MBX-USED-WEIGHT-1M"] == "45"
    depth = json.loads(body)
    assert list(depth) == ["lastUpdateId", "bids", "asks"] and len(depth["bids"]) == 100
    assert float(depth["bids"][0][0]) < float(depth["asks"][0][0])
    assert http_get(sim.base_url + "/api/v3/depth?symbol=BTCUSDT&limit=500")[1]["X-MBX-USED-WEIGHT-1M"] == "70"

    status, _, body = http_get(sim.base_url + "/api/v3/depth?symbol=NOPEUSDT")
    assert status == 400 and json.loads(body) == {"code": -1121, "msg": "Invalid symbol."}
    status, _, body = http_get(sim.base_url + "/api/v3/exchangeInfo?symbol=NOPEUSDT")
    assert status == 400 and json.loads(body)["code"] == -1121
    status, _, body = http_get(sim.base_url + '/api/v3/exchangeInfo?symbols=["BNBBTC"]')
    assert status == 200 and [s["symbol"] for s in json.loads(body)["symbols"]] == ["BNBBTC"]

    calls = sim.stats()["rest"]["calls"]
    assert calls["/api/v3/exchangeInfo"] == 4 and calls["/api/v3/depth"] == 3


def test_futures_exchange_info_shape(sim: SimulatorClient) -> None:
    status, headers, body = http_get(sim.base_url + "/fapi/v1/exchangeInfo")
    info = json.loads(body)
    assert status == 200 and headers["X-MBX-USED-WEIGHT-1M"] == "1"
    assert list(info) == list(USDM_INFO) and info["symbols"] == []
    sim.add_symbol("NEWUSDT", "NEW", "USDT", status="PENDING_TRADING", market="usdm")
    sym = json.loads(http_get(sim.base_url + "/fapi/v1/exchangeInfo")[2])["symbols"][0]
    assert list(sym) == list(USDM_INFO["symbols"][0])
    assert (sym["symbol"], sym["status"], sym["contractType"]) == ("NEWUSDT", "PENDING_TRADING", "")
    sim.set_symbol_status("NEWUSDT", "TRADING", market="usdm")
    sym = json.loads(http_get(sim.base_url + "/fapi/v1/exchangeInfo")[2])["symbols"][0]
    assert (sym["status"], sym["contractType"]) == ("TRADING", "PERPETUAL")


def test_symbol_add_change_remove_visible_in_exchange_info(sim: SimulatorClient) -> None:
    def listed() -> dict[str, str]:
        info = json.loads(http_get(sim.base_url + "/api/v3/exchangeInfo")[2])
        return {s["symbol"]: s["status"] for s in info["symbols"]}

    before = time.time() * 1000
    added = sim.add_symbol("NEWUSDT", "NEW", "USDT", status="BREAK")
    after = time.time() * 1000
    assert before - 5 <= added["visible_at_ms"] <= after + 5
    assert listed()["NEWUSDT"] == "BREAK"

    changed = sim.set_symbol_status("NEWUSDT", "TRADING")
    assert changed["previous_status"] == "BREAK" and changed["visible_at_ms"] >= added["visible_at_ms"]
    assert listed()["NEWUSDT"] == "TRADING"

    with pytest.raises(SimulatorError) as exc:
        sim.add_symbol("NEWUSDT", "NEW", "USDT")
    assert exc.value.status == 409

    removed = sim.remove_symbol("NEWUSDT")
    assert removed["visible_at_ms"] >= changed["visible_at_ms"]
    assert "NEWUSDT" not in listed()
    with pytest.raises(SimulatorError) as exc:
        sim.remove_symbol("NEWUSDT")
    assert exc.value.status == 404


# ------------------------------------------------------------------------------------------ WS trades
def test_combined_stream_sequential_ids_and_stats(sim: SimulatorClient) -> None:
    async def run() -> list[dict[str, Any]]:
        async with aiohttp.ClientSession() as s, \
                s.ws_connect(sim.ws_url + "/stream?streams=btcusdt@trade/ethusdt@trade") as ws:
            assert sim.stats()["connections"]["open"] == 1
            b1 = sim.burst("BTCUSDT", 50)
            b2 = sim.burst("ETHUSDT", 30)
            assert (b1["first_id"], b1["last_id"], b1["delivered"]) == (1, 50, True)
            assert (b2["first_id"], b2["last_id"]) == (1, 30)
            frames = [json.loads(t) for t in await recv_text(ws, 80)]
            sim.set_trade_rate(200, "BTCUSDT")
            await asyncio.sleep(0.5)
            sim.set_trade_rate(0, "BTCUSDT")
            rest = await recv_quiet(ws)
            frames += [json.loads(m.data) for m in rest if m.type == aiohttp.WSMsgType.TEXT]
            return frames

    frames = asyncio.run(run())
    for f in frames:
        assert list(f) == ["stream", "data"]
        data = f["data"]
        assert list(data) == TRADE_KEYS
        assert f["stream"] == data["s"].lower() + "@trade"
        assert data["e"] == "trade" and data["M"] is True and isinstance(data["m"], bool)
        assert len(data["p"].split(".")[1]) == 8 and float(data["p"]) > 0 and float(data["q"]) > 0
        assert isinstance(data["E"], int) and isinstance(data["T"], int)
    data = [f["data"] for f in frames]
    btc, eth = trade_ids(data, "BTCUSDT"), trade_ids(data, "ETHUSDT")
    assert eth == list(range(1, 31))
    assert len(btc) > 60, "rate mode should have produced trades"
    assert btc == list(range(1, len(btc) + 1))  # sequential, no gaps, no repeats

    stats = sim.stats()["symbols"]
    assert stats["BTCUSDT"]["delivered"] == len(btc) == stats["BTCUSDT"]["generated"]
    assert stats["BTCUSDT"]["delivered_ranges"] == [[1, len(btc)]]
    assert (stats["BTCUSDT"]["first_delivered_id"], stats["BTCUSDT"]["last_delivered_id"]) == (1, len(btc))
    assert stats["ETHUSDT"]["delivered_ranges"] == [[1, 30]]
    assert stats["BNBBTC"]["delivered"] == 0


def test_undelivered_trades_leave_gaps_in_stats(sim: SimulatorClient) -> None:
    sim.burst("BTCUSDT", 5)  # nobody subscribed: generated, not delivered

    async def run() -> list[int]:
        async with aiohttp.ClientSession() as s, s.ws_connect(sim.ws_url + "/ws/btcusdt@trade") as ws:
            sim.burst("BTCUSDT", 3)
            return [json.loads(t)["t"] for t in await recv_text(ws, 3)]

    assert asyncio.run(run()) == [6, 7, 8]
    st = sim.stats()["symbols"]["BTCUSDT"]
    assert (st["generated"], st["delivered"], st["delivered_ranges"]) == (8, 3, [[6, 8]])


def test_raw_stream_and_subscribe_protocol(sim: SimulatorClient) -> None:
    async def run() -> None:
        async with aiohttp.ClientSession() as s, s.ws_connect(sim.ws_url + "/ws/btcusdt@trade") as ws:
            sim.burst("BTCUSDT", 2)
            bare = [json.loads(t) for t in await recv_text(ws, 2)]
            assert [list(b) for b in bare] == [TRADE_KEYS, TRADE_KEYS] and [b["t"] for b in bare] == [1, 2]

            await ws.send_str(json.dumps({"method": "SUBSCRIBE", "params": ["ethusdt@trade"], "id": 7}))
            assert json.loads((await recv_text(ws, 1))[0]) == {"result": None, "id": 7}
            await ws.send_str(json.dumps({"method": "LIST_SUBSCRIPTIONS", "id": 8}))
            assert json.loads((await recv_text(ws, 1))[0]) == {"result": ["btcusdt@trade", "ethusdt@trade"], "id": 8}
            sim.burst("ETHUSDT", 1)
            eth = json.loads((await recv_text(ws, 1))[0])
            assert eth["s"] == "ETHUSDT" and eth["t"] == 1 and "stream" not in eth  # raw: no wrapper

            await asyncio.sleep(1.0)  # stay under 5 incoming messages per second
            await ws.send_str(json.dumps({"method": "UNSUBSCRIBE", "params": ["ethusdt@trade"], "id": 9}))
            assert json.loads((await recv_text(ws, 1))[0]) == {"result": None, "id": 9}
            await ws.send_str("{not json")
            err = json.loads((await recv_text(ws, 1))[0])
            assert err["code"] == 3 and err["msg"].startswith("Invalid JSON")
            await ws.send_str(json.dumps({"method": "SUBSCRIBE", "params": ["x@trade"], "id": True}))
            assert json.loads((await recv_text(ws, 1))[0])["code"] == 2
            sim.burst("ETHUSDT", 1)
            sim.burst("BTCUSDT", 1)
            last = json.loads((await recv_text(ws, 1))[0])
            assert (last["s"], last["t"]) == ("BTCUSDT", 3)  # ETH no longer delivered
            assert await recv_quiet(ws, 0.2) == []

    asyncio.run(run())
    assert sim.stats()["symbols"]["ETHUSDT"]["generated"] == 2


def test_incoming_message_limit_closes_1008_and_stream_limit(sim: SimulatorClient) -> None:
    async def run() -> None:
        async with aiohttp.ClientSession() as s:
            async with s.ws_connect(sim.ws_url + "/stream") as ws:
                for i in range(6):
                    await ws.send_str(json.dumps({"method": "LIST_SUBSCRIPTIONS", "id": i}))
                msgs = await recv_quiet(ws, 1.0)
                assert msgs[-1].type == aiohttp.WSMsgType.CLOSE and msgs[-1].data == 1008
                assert len([m for m in msgs if m.type == aiohttp.WSMsgType.TEXT]) == 5

            async with s.ws_connect(sim.ws_url + "/stream") as ws:
                await ws.send_str(json.dumps({"method": "SUBSCRIBE", "id": 1,
                                              "params": [f"s{i}usdt@trade" for i in range(1025)]}))
                err = json.loads((await recv_text(ws, 1))[0])
                assert err["code"] == 2 and err["id"] == 1 and "1024" in err["msg"]
                await ws.send_str(json.dumps({"method": "LIST_SUBSCRIPTIONS", "id": 2}))
                assert json.loads((await recv_text(ws, 1))[0]) == {"result": [], "id": 2}

            streams = "/".join(f"s{i}usdt@trade" for i in range(1025))
            with pytest.raises(aiohttp.WSServerHandshakeError) as exc:
                await s.ws_connect(sim.ws_url + "/stream?streams=" + streams)
            assert exc.value.status == 400

    asyncio.run(run())
    assert sim.stats()["connections"]["closed_rate_limit"] == 1


def test_duplicate_mode_sends_every_trade_twice(sim: SimulatorClient) -> None:
    sim.set_duplicate(True)

    async def run() -> list[int]:
        async with aiohttp.ClientSession() as s, s.ws_connect(sim.ws_url + "/stream?streams=btcusdt@trade") as ws:
            sim.burst("BTCUSDT", 10)
            frames = await recv_text(ws, 20)
            assert await recv_quiet(ws, 0.2) == []
            return [json.loads(f)["data"]["t"] for f in frames]

    ids = asyncio.run(run())
    assert sorted(ids) == sorted(list(range(1, 11)) * 2)
    st = sim.stats()["symbols"]["BTCUSDT"]
    assert (st["delivered"], st["delivered_ranges"], st["frames_written"]) == (10, [[1, 10]], 20)


def test_firehose_delivers_every_id_in_order(sim: SimulatorClient) -> None:
    n = 20_000

    async def run() -> list[int]:
        async with aiohttp.ClientSession() as s, s.ws_connect(sim.ws_url + "/stream?streams=btcusdt@trade") as ws:
            sim.start_firehose(["BTCUSDT"], count=n, batch=500)
            return [json.loads(f)["data"]["t"] for f in await recv_text(ws, n, timeout=10)]

    assert asyncio.run(run()) == list(range(1, n + 1))
    st = sim.stats()
    assert st["firehose"]["emitted"] == n and not st["firehose"]["running"]
    assert st["symbols"]["BTCUSDT"]["delivered_ranges"] == [[1, n]]


# ------------------------------------------------------------------------------------------ WS faults
def test_drop_closes_every_connection_abruptly(sim: SimulatorClient) -> None:
    async def run() -> None:
        async with aiohttp.ClientSession() as s:
            a = await s.ws_connect(sim.ws_url + "/stream?streams=btcusdt@trade")
            b = await s.ws_connect(sim.ws_url + "/ws/ethusdt@trade")
            assert sim.stats()["connections"]["open"] == 2
            assert sim.drop_connections()["dropped"] == 2
            for ws in (a, b):
                async with asyncio.timeout(3):
                    msg = await ws.receive()
                # no close frame from the server: the client only sees the socket end
                assert msg.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR, aiohttp.WSMsgType.CLOSE)
                assert ws.closed
                if msg.type == aiohttp.WSMsgType.CLOSE:
                    assert msg.data == aiohttp.WSCloseCode.ABNORMAL_CLOSURE

    asyncio.run(run())
    st = sim.stats()["connections"]
    assert st["open"] == 0 and st["dropped"] == 2


def test_stall_stops_frames_without_closing_then_resumes(sim: SimulatorClient) -> None:
    async def run() -> None:
        async with aiohttp.ClientSession() as s, s.ws_connect(sim.ws_url + "/stream?streams=btcusdt@trade") as ws:
            sim.set_trade_rate(100, "BTCUSDT")
            await recv_text(ws, 5)
            sim.stall()
            await recv_quiet(ws, 0.2)  # frames already in flight
            assert await recv_quiet(ws, 1.0) == []  # silence ...
            assert not ws.closed  # ... on an open socket
            st = sim.stats()
            assert st["ws"]["stalled"] and st["connections"]["open"] == 1
            sim.unstall()
            resumed = [json.loads(t)["data"]["t"] for t in await recv_text(ws, 5, timeout=3)]
            sim.set_trade_rate(0)
            # the market kept trading during the stall: ids jumped, delivered ranges show the gap
            assert resumed == list(range(resumed[0], resumed[0] + 5))
            ranges = sim.stats()["symbols"]["BTCUSDT"]["delivered_ranges"]
            assert len(ranges) == 2 and ranges[1][0] == resumed[0] > ranges[0][1] + 1

    asyncio.run(run())


def test_timed_stall_ends_by_itself(sim: SimulatorClient) -> None:
    async def run() -> None:
        async with aiohttp.ClientSession() as s, s.ws_connect(sim.ws_url + "/ws/btcusdt@trade") as ws:
            sim.stall(0.5)
            sim.burst("BTCUSDT", 1)
            assert await recv_quiet(ws, 0.3) == []
            await asyncio.sleep(0.4)
            sim.burst("BTCUSDT", 1)
            assert json.loads((await recv_text(ws, 1))[0])["t"] == 2

    asyncio.run(run())


def test_malformed_frames_arrive_between_normal_trades(sim: SimulatorClient) -> None:
    async def run() -> None:
        async with aiohttp.ClientSession() as s, \
                s.ws_connect(sim.ws_url + "/stream?streams=btcusdt@trade", max_msg_size=0) as ws:
            sim.burst("BTCUSDT", 2)
            sent = sim.send_malformed(["garbage", "truncated", "binary", "oversized"], size=200_000)
            assert sent["connections"] == 1 and sent["frames"] == 4
            sim.burst("BTCUSDT", 2)
            msgs = await recv_quiet(ws, 0.5)
            kinds = [m.type for m in msgs]
            assert kinds.count(aiohttp.WSMsgType.BINARY) == 1
            texts = [m.data for m in msgs if m.type == aiohttp.WSMsgType.TEXT]
            good, bad = [], []
            for t in texts:
                try:
                    good.append(json.loads(t)["data"]["t"])
                except (ValueError, KeyError, TypeError):
                    bad.append(t)
            assert good == [1, 2, 3, 4]  # nothing else lost
            assert len(bad) == 3  # garbage, truncated JSON, oversized
            oversized = [t for t in bad if len(t) == 200_000]
            assert len(oversized) == 1 and "t" not in json.loads(oversized[0])["data"]
            unparseable = 0
            for t in bad:
                try:
                    json.loads(t)
                except ValueError:
                    unparseable += 1
            assert unparseable == 2

    asyncio.run(run())
    assert sim.stats()["ws"]["malformed_frames_sent"] == 4


def test_server_shutdown_event_raw_and_combined(sim: SimulatorClient) -> None:
    async def run() -> None:
        async with aiohttp.ClientSession() as s:
            comb = await s.ws_connect(sim.ws_url + "/stream?streams=btcusdt@trade")
            raw = await s.ws_connect(sim.ws_url + "/ws/btcusdt@trade")
            assert sim.server_shutdown(close_after_s=0.3)["connections"] == 2
            c = json.loads((await recv_text(comb, 1))[0])
            r = json.loads((await recv_text(raw, 1))[0])
            assert list(c) == list(SHUTDOWN_FIXTURE[1]) and c["stream"] == "!serverShutdown"
            assert list(c["data"]) == list(SHUTDOWN_FIXTURE[0]) and c["data"]["e"] == "serverShutdown"
            assert list(r) == list(SHUTDOWN_FIXTURE[0]) and abs(r["E"] - time.time() * 1000) < 5000
            for ws in (comb, raw):
                async with asyncio.timeout(3):
                    msg = await ws.receive()
                assert msg.type == aiohttp.WSMsgType.CLOSE and msg.data == 1001
                await ws.close()

    asyncio.run(run())


def test_server_pings_and_pong_timeout(sim: SimulatorClient) -> None:
    sim.configure(ping_interval=0.3, pong_timeout=0.8)

    async def run() -> None:
        async with aiohttp.ClientSession() as s:
            # autoping client: answers pings with the payload, so the connection stays up
            async with s.ws_connect(sim.ws_url + "/ws/btcusdt@trade") as ws:
                assert await recv_quiet(ws, 1.5) == []
                assert not ws.closed
            # silent client: never pongs -> closed 1008 like Binance's "Pong timeout"
            async with s.ws_connect(sim.ws_url + "/ws/btcusdt@trade", autoping=False) as ws:
                async with asyncio.timeout(3):
                    first = await ws.receive()
                    assert first.type == aiohttp.WSMsgType.PING and first.data
                    while (msg := await ws.receive()).type == aiohttp.WSMsgType.PING:
                        pass
                assert msg.type == aiohttp.WSMsgType.CLOSE and msg.data == 1008

    asyncio.run(run())
    st = sim.stats()
    assert st["ws"]["pings_sent"] >= 3 and st["connections"]["closed_pong_timeout"] == 1


def test_connection_max_age_closes(sim: SimulatorClient) -> None:
    sim.configure(max_connection_age=0.5)  # Binance: 24 h

    async def run() -> None:
        async with aiohttp.ClientSession() as s, s.ws_connect(sim.ws_url + "/stream?streams=btcusdt@trade") as ws:
            async with asyncio.timeout(3):
                msg = await ws.receive()
            assert msg.type == aiohttp.WSMsgType.CLOSE

    asyncio.run(run())
    assert sim.stats()["connections"]["closed_max_age"] == 1


# ------------------------------------------------------------------------------------------ REST faults
def test_rest_faults_then_back_to_normal(sim: SimulatorClient) -> None:
    info = sim.base_url + "/api/v3/exchangeInfo"
    sim.rest_fault("429", path="/api/v3/exchangeInfo", count=2, retry_after=7)
    for _ in range(2):
        status, headers, body = http_get(info)
        assert status == 429 and headers["Retry-After"] == "7" and json.loads(body)["code"] == -1003
        assert "X-MBX-USED-WEIGHT-1M" in headers
    assert http_get(info)[0] == 200

    sim.rest_fault("418", retry_after=120)
    status, headers, body = http_get(info)
    assert status == 418 and headers["Retry-After"] == "120" and "banned" in json.loads(body)["msg"]

    sim.rest_fault("5xx", status=503, duration_s=0.4)
    assert http_get(info)[0] == 503
    assert http_get(sim.base_url + "/api/v3/depth?symbol=BTCUSDT")[0] == 503  # "*" = every REST path
    time.sleep(0.5)
    assert http_get(info)[0] == 200

    sim.rest_fault("garbage")
    status, _, body = http_get(info)
    assert status == 200
    with pytest.raises(ValueError):
        json.loads(body)

    sim.rest_fault("empty", path="/api/v3/exchangeInfo")
    assert json.loads(http_get(info)[2])["symbols"] == []
    assert len(json.loads(http_get(info)[2])["symbols"]) == 3

    sim.rest_fault("5xx", status=502, path="/api/v3/depth")
    assert http_get(info)[0] == 200  # other paths unaffected
    assert http_get(sim.base_url + "/api/v3/depth?symbol=BTCUSDT")[0] == 502

    sim.rest_fault("timeout", hang_s=2.0)
    with pytest.raises((TimeoutError, urllib.error.URLError)):
        urllib.request.urlopen(info, timeout=0.5).read()
    assert http_get(info)[0] == 200

    async def handshake_faults() -> None:
        async with aiohttp.ClientSession() as s:
            sim.rest_fault("429", path="/stream", retry_after=3)  # a WS handshake only when named
            with pytest.raises(aiohttp.WSServerHandshakeError) as exc:
                await s.ws_connect(sim.ws_url + "/stream?streams=btcusdt@trade")
            assert exc.value.status == 429 and exc.value.headers["Retry-After"] == "3"
            sim.rest_fault("5xx", status=500)  # "*" leaves WebSocket handshakes alone
            async with s.ws_connect(sim.ws_url + "/stream?streams=btcusdt@trade") as ws:
                assert not ws.closed
            sim.clear_rest_faults()

    asyncio.run(handshake_faults())

    st = sim.stats()
    assert st["faults"] == []
    assert st["rest"]["faulted"]["/stream"] == 1
    assert st["rest"]["faulted"]["/api/v3/exchangeInfo"] == 7  # 429 x2, 418, 503, garbage, empty, timeout
    assert st["rest"]["calls"]["/api/v3/exchangeInfo"] == 12


def test_weight_limit_answers_429_with_retry_after(sim: SimulatorClient) -> None:
    sim.configure(weight_limit=50)
    info = sim.base_url + "/api/v3/exchangeInfo"
    assert http_get(info)[0] == 200 and http_get(info)[0] == 200
    status, headers, body = http_get(info)
    assert status == 429 and 1 <= int(headers["Retry-After"]) <= 60
    assert headers["X-MBX-USED-WEIGHT-1M"] == "40" and json.loads(body)["code"] == -1003
    assert sim.stats()["rest"]["rate_limited"] == 1


def test_control_rejects_bad_input(sim: SimulatorClient) -> None:
    with pytest.raises(SimulatorError) as exc:
        sim.rest_fault("teapot")
    assert exc.value.status == 400
    with pytest.raises(SimulatorError) as exc:
        sim.burst("NOPEUSDT", 1)
    assert exc.value.status == 404
    sim.add_symbol("HALTUSDT", "HALT", "USDT", status="HALT")
    with pytest.raises(SimulatorError) as exc:
        sim.burst("HALTUSDT", 1)
    assert exc.value.status == 409
    with pytest.raises(SimulatorError) as exc:
        sim._post("/_sim/trades/rate", rate=1, symbl="BTCUSDT")  # typo in a field name
    assert exc.value.status == 400


def test_sigterm_exits_cleanly_with_open_connection() -> None:
    proc, base_url = start_simulator_process()
    try:
        sim = SimulatorClient(base_url)

        async def run() -> None:
            async with aiohttp.ClientSession() as s, s.ws_connect(sim.ws_url + "/ws/btcusdt@trade") as ws:
                proc.send_signal(signal.SIGTERM)
                async with asyncio.timeout(5):
                    msg = await ws.receive()
                assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)

        asyncio.run(run())
        assert proc.wait(5) == 0
    finally:
        stop_simulator_process(proc)
