"""REST client against a real aiohttp server on 127.0.0.1: budget, 429/418, retries, breaker."""

from __future__ import annotations

import asyncio
import time
from email.utils import formatdate
from typing import Awaitable, Callable

import pytest

from tests.conftest import serve_app
from aiohttp import web

from shared.settings import ExchangeSettings
from shared.states import CircuitState
from workers.transport.breaker import CircuitBreaker
from workers.transport.rest import (
    CircuitOpenError,
    RestBanned,
    RestClient,
    RestHttpError,
    RestInvalidJson,
    RestServerError,
    RestTimeout,
    parse_retry_after,
)

Behavior = Callable[[web.Request, int], Awaitable[web.Response]]
URL = "https://api.binance.com/api/v3/exchangeInfo"


class RestServer:
    def __init__(self, behavior: Behavior) -> None:
        self.behavior = behavior
        self.requests: list[tuple[float, float, str]] = []  # (monotonic, wall, path_qs)
        self._runner: web.AppRunner | None = None
        self.port = 0

    async def start(self) -> "RestServer":
        app = web.Application()
        app.router.add_route("GET", "/{tail:.*}", self._handler)
        self._runner, self.port = await serve_app(app)
        return self

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handler(self, request: web.Request) -> web.Response:
        n = len(self.requests)
        self.requests.append((time.monotonic(), time.time(), str(request.rel_url)))
        return await self.behavior(request, n)


def ok(body: str = '{"symbols":[]}', **headers: str) -> web.Response:
    return web.Response(text=body, content_type="application/json", headers=headers)


def status(code: int, **headers: str) -> web.Response:
    return web.Response(status=code, text='{"code":-1,"msg":"x"}', content_type="application/json",
                        headers=headers)


def run(coro: Awaitable[None], timeout: float = 20.0) -> None:
    asyncio.run(asyncio.wait_for(coro, timeout))


async def with_client(behavior: Behavior, body: Callable[[RestServer, RestClient], Awaitable[None]],
                      client_kw: dict | None = None, **cfg_kw) -> None:
    server = await RestServer(behavior).start()
    cfg = ExchangeSettings(rest_url=server.base, **{"rest_timeout": 2.0, "rest_max_retries": 3, **cfg_kw})
    client = RestClient("binance", cfg, **{"weight_limit": 6000, "weight_header": "X-MBX-USED-WEIGHT-1M",
                                          "retry_initial": 0.05, "retry_max": 0.2, **(client_kw or {})})
    try:
        await body(server, client)
    finally:
        await client.close()
        await server.stop()


# ---------------------------------------------------------------------------------------------

def test_success_reads_used_weight_and_keeps_path_and_query() -> None:
    async def behavior(request, n):
        return ok('{"symbols":[{"symbol":"BTCUSDT"}]}', **{"X-MBX-USED-WEIGHT-1M": "1234"})

    async def body(server, client):
        before = time.time_ns() // 1_000_000
        resp = await client.get_json(URL + "?symbolStatus=TRADING&x=1", weight=20)
        assert resp.status == 200
        assert resp.body == {"symbols": [{"symbol": "BTCUSDT"}]}
        assert resp.received_at_ms >= before
        # the override replaced scheme+host+port only
        assert server.requests[0][2] == "/api/v3/exchangeInfo?symbolStatus=TRADING&x=1"
        assert client.used_weight == 1234
        st = client.stats()
        assert (st["rest_calls"], st["rest_errors"], st["circuit"]) == (1, 0, "CLOSED")

    run(with_client(behavior, body))


def test_weight_budget_waits_for_next_window() -> None:
    async def behavior(request, n):
        # the exchange says this IP already used 75 of 100 in this window
        return ok(**{"X-MBX-USED-WEIGHT-1M": "75"})

    m0 = time.monotonic()

    def wall() -> float:
        return time.monotonic() - m0 + 0.3  # starts 0.3 s into a 1 s window

    async def body(server, client):
        await client.get_json(URL, weight=5)
        assert client.used_weight == 75
        await client.get_json(URL, weight=20)  # 75 + 20 > 80 (80% of 100): must wait
        assert client.budget_waits == 1
        (t1, _, _), (t2, _, _) = server.requests
        assert t2 - m0 + 0.3 >= 1.0  # not sent before the next window began
        assert t2 - t1 >= 0.5

    run(with_client(behavior, body, client_kw={"weight_limit": 100, "weight_window": 1.0, "wall_clock": wall}))


def test_429_retry_after_pauses_all_requests() -> None:
    async def behavior(request, n):
        if n == 0:
            return status(429, **{"Retry-After": "1"})
        return ok()

    async def body(server, client):
        first = asyncio.create_task(client.get_json(URL))
        await asyncio.sleep(0.2)
        second = asyncio.create_task(client.get_json(URL))  # another caller during the pause
        r1, r2 = await asyncio.gather(first, second)
        assert r1.status == r2.status == 200
        t0 = server.requests[0][0]
        assert len(server.requests) == 3
        assert all(t - t0 >= 0.95 for t, _, _ in server.requests[1:])
        assert client.rate_limited == 1 and client.breaker.state is CircuitState.CLOSED

    run(with_client(behavior, body))


def test_418_hard_stop_until_retry_after() -> None:
    async def behavior(request, n):
        if n == 0:
            return status(418, **{"Retry-After": "1"})
        return ok()

    async def body(server, client):
        with pytest.raises(RestBanned):
            await client.get_json(URL)
        assert len(server.requests) == 1  # no retry after a ban
        with pytest.raises(RestBanned):
            await client.get_json(URL)  # refused locally
        assert len(server.requests) == 1
        await asyncio.sleep(1.05)
        resp = await client.get_json(URL)
        assert resp.status == 200 and len(server.requests) == 2
        assert client.bans == 1

    run(with_client(behavior, body))


def test_418_without_retry_after_bans_for_default() -> None:
    async def behavior(request, n):
        return status(418)

    async def body(server, client):
        with pytest.raises(RestBanned) as info:
            await client.get_json(URL)
        assert 119 <= info.value.until - time.monotonic() <= 120.5

    run(with_client(behavior, body))


def test_5xx_retried_with_backoff_then_success() -> None:
    async def behavior(request, n):
        return [status(500), status(503)][n] if n < 2 else ok()

    async def body(server, client):
        resp = await client.get_json(URL)
        assert resp.status == 200
        assert len(server.requests) == 3
        (t0, _, _), (t1, _, _), (t2, _, _) = server.requests
        assert t1 - t0 >= 0.025 and t2 - t1 >= 0.05  # 0.05 then 0.1, each jittered down to half
        assert client.retries == 2 and client.errors == 2 and client.calls == 3
        assert client.breaker.consecutive_failures == 0

    run(with_client(behavior, body))


def test_5xx_gives_up_after_max_retries() -> None:
    async def behavior(request, n):
        return status(502)

    async def body(server, client):
        with pytest.raises(RestServerError):
            await client.get_json(URL)
        assert len(server.requests) == 3  # 1 + rest_max_retries=2

    run(with_client(behavior, body, rest_max_retries=2))


@pytest.mark.parametrize("code", [400, 403, 404])
def test_4xx_not_retried(code: int) -> None:
    async def behavior(request, n):
        return status(code)

    async def body(server, client):
        with pytest.raises(RestHttpError) as info:
            await client.get_json(URL)
        assert info.value.status == code
        assert len(server.requests) == 1

    run(with_client(behavior, body))


def test_invalid_json_not_retried_and_counted() -> None:
    async def behavior(request, n):
        return ok("{not json")

    async def body(server, client):
        with pytest.raises(RestInvalidJson):
            await client.get_json(URL)
        assert len(server.requests) == 1
        assert client.invalid_json == 1 and client.errors == 1

    run(with_client(behavior, body))


def test_timeout_retried_then_raised() -> None:
    async def behavior(request, n):
        await asyncio.sleep(1.0)
        return ok()

    async def body(server, client):
        t0 = time.monotonic()
        with pytest.raises(RestTimeout):
            await client.get_json(URL)
        assert len(server.requests) == 2  # 1 + rest_max_retries=1
        assert time.monotonic() - t0 < 1.5  # each attempt was cut at rest_timeout, not served

    run(with_client(behavior, body, rest_timeout=0.2, rest_max_retries=1))


def test_breaker_opens_after_threshold_and_half_opens_after_recovery() -> None:
    mode = {"fail": True}

    async def behavior(request, n):
        return status(404) if mode["fail"] else ok()

    async def body(server, client):
        for _ in range(2):
            with pytest.raises(RestHttpError):
                await client.get_json(URL)
        assert client.stats()["circuit"] == "OPEN"
        with pytest.raises(CircuitOpenError):
            await client.get_json(URL)
        assert len(server.requests) == 2  # refused without a request
        await asyncio.sleep(0.35)
        # HALF_OPEN: one trial, which fails -> OPEN again
        with pytest.raises(RestHttpError):
            await client.get_json(URL)
        assert client.stats()["circuit"] == "OPEN" and len(server.requests) == 3
        await asyncio.sleep(0.35)
        mode["fail"] = False
        resp = await client.get_json(URL)
        assert resp.status == 200 and client.stats()["circuit"] == "CLOSED"

    run(with_client(behavior, body, breaker_threshold=2, breaker_recovery=0.3))


def test_breaker_half_open_lets_exactly_one_trial() -> None:
    now = [0.0]
    b = CircuitBreaker("x", threshold=3, recovery=10.0, clock=lambda: now[0])
    for _ in range(2):
        b.record_failure()
    assert b.state is CircuitState.CLOSED and b.allow()
    b.record_failure()
    assert b.state is CircuitState.OPEN and not b.allow()
    now[0] = 9.9
    assert not b.allow()
    now[0] = 10.0
    assert b.allow() and b.state is CircuitState.HALF_OPEN
    assert not b.allow()  # a second caller while the trial runs
    b.record_success()
    assert b.state is CircuitState.CLOSED and b.allow()


def test_parse_retry_after() -> None:
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after(" 2.5 ") == 2.5
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    assert parse_retry_after("-5") == 0.0
    assert parse_retry_after("999999999") == 3 * 24 * 3600.0
    d = parse_retry_after(formatdate(time.time() + 30, usegmt=True))
    assert d is not None and 28 <= d <= 31
