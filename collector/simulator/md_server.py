"""aiohttp side of the simulator's market data (state and frames: ``md.py``).

``attach(app, name, ...)`` adds the market-data routes of one exchange to its existing app;
``build_md_app(name, ...)`` builds the app of an exchange served for market data only (Deribit).

- Binance (``attach`` on the Binance app): streams of ``/stream``, ``/ws/...`` (spot) and the USDⓈ-M
  routes ``/public/...``, ``/market/...`` (subscribed through the existing handler and ``SimState``;
  the engine reads ``state.stream_subs``); REST ``/fapi/v1/depth``, ``/fapi/v1/openInterest``,
  ``/futures/data/{topLongShortPositionRatio,topLongShortAccountRatio,globalLongShortAccountRatio}``;
  ``/api/v3/depth`` is served by ``server._depth`` from the same books.
- OKX (``attach`` on the OKX venue app): ``/ws/v5/public`` is the venue's handler, whose
  ``ws_message`` is wrapped so market-data args go to the engine and ``instruments`` args to the
  venue; ``/ws/v5/business`` (candles, ``trades-all``: one fill per frame, the same fills and ids
  as REST history-trades); REST ``/api/v5/market/books``,
  ``/api/v5/rubik/stat/contracts/long-short-account-ratio`` (venue faults apply to both).
- Bybit (``attach`` on the Bybit venue app): ``/v5/public/spot``, ``/v5/public/linear`` (klines
  included); REST ``/v5/market/account-ratio`` (venue faults apply).
- Deribit (``build_md_app``): ``/ws/api/v2`` JSON-RPC, ``/_sim/stats``, ``/_sim/reset``, ``/_sim/ports``.
- Trade history (gap fill), from each engine's bounded history (``MdConfig.trade_history``; an
  instrument keeps trading while unsubscribed, ``idle_trades``): Binance ``/api/v3/historicalTrades``
  (the spot ``@trade`` tape), ``/api/v3/aggTrades``, ``/fapi/v1/aggTrades``; OKX
  ``/api/v5/market/history-trades``; Bybit ``/v5/market/recent-trade``; Deribit
  ``/api/v2/public/get_last_trades_by_instrument[_and_time]``.

Controls on every market-data port (JSON in/out; ``SimulatorClient.md_*``):
``GET /_sim/md/stats``, ``GET /_sim/md/trades``, ``GET|POST /_sim/md/config``, ``POST /_sim/md/rate``, ``/_sim/md/gap``,
``/_sim/md/checksum`` (OKX), ``/_sim/md/silence``, ``/_sim/md/drop``, ``/_sim/md/reset``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any, Awaitable, Callable

import orjson
from aiohttp import WSMsgType, web

from collector.simulator.listings import NORMAL
from collector.simulator.md import (
    LONG_SHORT_KINDS, MAX_TOPIC_RATE, STAT_PERIODS, TICK_S, USDM_DEPTH_LIMITS, BinanceMd, BybitMd, DeribitMd, MdClient, MdConfig,
    MdEngine, OkxMd,
)
from collector.simulator.control import (
    JSON_CT, NUM, OPT_STR, Spec as _Spec, fields as _fields, json_body as _body, json_response as _json,
)
from collector.simulator.state import SimError

log = logging.getLogger("collector.simulator")

#: exchanges served for market data only (their own port, no listing venue)
MD_ONLY_EXCHANGES = ("deribit",)
#: exchanges with market data
MD_EXCHANGES = ("binance", "okx", "bybit", "deribit")
BYBIT_ACCOUNT_RATIO_PATH = "/v5/market/account-ratio"
MD_KEY: web.AppKey[MdEngine] = web.AppKey("sim_md", MdEngine)
__all__ = ["MD_ONLY_EXCHANGES", "MD_EXCHANGES", "MD_KEY", "MAX_TOPIC_RATE", "MdConfig", "attach", "build_md_app"]
_MD_PORTS_KEY: web.AppKey[dict[str, str]] = web.AppKey("sim_md_ports", dict)
#: frames queued per market-data client before the server cuts it (a client that stopped reading)
MD_QUEUE_MAX = 4096
OKX_BOOKS_PATH = "/api/v5/market/books"
OKX_RUBIK_PATH = "/api/v5/rubik/stat/contracts/long-short-account-ratio"


# ---------------------------------------------------------------------------------------- controls


def _control_routes() -> list[web.RouteDef]:
    def post(path: str, spec: _Spec, action: Callable[[MdEngine, dict[str, Any]], dict[str, Any]]) -> web.RouteDef:
        async def handler(request: web.Request) -> web.Response:
            return _json(action(request.app[MD_KEY], _fields(await _body(request), spec)))
        return web.post(path, handler)

    async def stats(request: web.Request) -> web.Response:
        return _json(request.app[MD_KEY].stats())

    async def trades(request: web.Request) -> web.Response:
        # read-only: the trade tape of every instrument (fault tests count what was sent)
        engine = request.app[MD_KEY]
        return _json({"exchange": engine.name, "instruments": {
            f"{i.market}:{i.native}": {"first_id": i.first_trade_id, "last_id": i.trade_id, "trades": i.trades}
            for i in list(engine.instruments.values())[:2000]}})

    async def get_config(request: web.Request) -> web.Response:
        return _json(request.app[MD_KEY].apply_config({}))

    async def set_config(request: web.Request) -> web.Response:
        return _json(request.app[MD_KEY].apply_config(await _body(request)))

    return [
        web.get("/_sim/md/stats", stats),
        web.get("/_sim/md/trades", trades),
        web.get("/_sim/md/config", get_config),
        web.post("/_sim/md/config", set_config),
        post("/_sim/md/rate", {"rate": (NUM, ...), "channel": OPT_STR, "symbol": OPT_STR},
             lambda e, a: e.set_rate(**a)),
        post("/_sim/md/gap", {"symbol": ((str,), ...), "market": OPT_STR, "count": ((int,), 1)},
             lambda e, a: e.inject_gap(**a)),
        post("/_sim/md/checksum", {"symbol": ((str,), ...), "market": OPT_STR},
             lambda e, a: e.bad_checksum(**a)),
        post("/_sim/md/silence",
             {"channel": ((str,), ...), "symbol": ((str,), ...), "market": OPT_STR, "enabled": ((bool,), True)},
             lambda e, a: e.silence(**a)),
        post("/_sim/md/drop", {}, lambda e, a: {"ok": True, "dropped": e.drop()}),
        post("/_sim/md/reset", {"drop_connections": ((bool,), True)}, lambda e, a: e.reset(a["drop_connections"])),
    ]


# ---------------------------------------------------------------------------------------- the clock
def _add_clock(app: web.Application, engine: MdEngine) -> None:
    """Run ``engine.tick`` every TICK_S while the app runs."""
    tasks: list[asyncio.Task[None]] = []

    async def run() -> None:
        last = time.monotonic()
        while True:
            await asyncio.sleep(TICK_S)
            now = time.monotonic()
            dt, last = min(now - last, 1.0), now   # no catch-up burst after a long pause
            try:
                engine.tick(dt)
            except Exception:   # noqa: BLE001 - the market must keep moving
                log.exception("%s market-data tick failed", engine.name)

    async def start(_app: web.Application) -> None:
        tasks.append(asyncio.get_running_loop().create_task(run()))

    async def stop(_app: web.Application) -> None:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        tasks.clear()
        engine.drop()

    app.on_startup.append(start)
    app.on_shutdown.append(stop)


# ---------------------------------------------------------------------------------------- WebSocket
def _ws_route(kind: str, on_text: Callable[[Any, MdClient, str], None]
              ) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """A market-data WebSocket endpoint: text frames in (``on_text``), queued text frames out."""

    async def handler(request: web.Request) -> web.StreamResponse:
        engine = request.app[MD_KEY]
        if len(engine.clients) >= engine.config.max_clients:
            engine.counters["rejected_connections"] += 1
            return web.Response(status=429, text="too many connections")
        ws = web.WebSocketResponse(autoping=True, heartbeat=None, max_msg_size=64 * 1024, timeout=3.0)
        if not ws.can_prepare(request).ok:
            return web.Response(status=400, text="WebSocket upgrade expected")
        await ws.prepare(request)
        queue: asyncio.Queue[str | None] = asyncio.Queue(MD_QUEUE_MAX)

        def send(text: str) -> None:
            try:
                queue.put_nowait(text)
            except asyncio.QueueFull:
                engine.counters["closed_slow_consumer"] += 1
                close()

        def close() -> None:
            engine.remove_client(client)
            if request.transport is not None:
                request.transport.abort()

        async def writer() -> None:
            while (text := await queue.get()) is not None:
                await ws.send_str(text)

        client = MdClient(f"{id(ws) & 0xFFFFFFFF:08x}", kind, send, close)
        engine.add_client(client)
        write_task = asyncio.create_task(writer())
        try:
            async for msg in ws:
                if msg.type == WSMsgType.TEXT:
                    engine.counters["messages_in"] += 1
                    try:
                        on_text(engine, client, msg.data)
                    except Exception:   # noqa: BLE001 - one bad message must not kill the connection
                        log.exception("%s market-data request failed", engine.name)
                elif msg.type in (WSMsgType.ERROR, WSMsgType.CLOSE):
                    break
        except ConnectionError:
            pass
        finally:
            engine.remove_client(client)
            write_task.cancel()
            await asyncio.gather(write_task, return_exceptions=True)
        return ws

    return handler


def _wrap_okx_public(venue: Any, engine: OkxMd) -> None:
    """Route ``/ws/v5/public`` requests by channel: ``instruments`` stays with the venue, every
    market-data channel goes to the engine (answered on the same connection)."""
    venue_message = venue.ws_message

    def ws_message(client: Any, text: str) -> None:
        if text != "ping":
            try:
                req = json.loads(text)
            except ValueError:
                req = None
            if isinstance(req, dict) and req.get("op") in ("subscribe", "unsubscribe") and isinstance(
                    req.get("args"), list):
                listing_args, md_args = [], []
                for a in req["args"]:
                    (listing_args if isinstance(a, dict) and a.get("channel") == "instruments" else md_args).append(a)
                if md_args:
                    engine.handle_args(client, "public", req["op"], md_args)
                    if not listing_args:
                        return
                    text = json.dumps({"op": req["op"], "args": listing_args}, separators=(",", ":"))
        venue_message(client, text)

    venue.ws_message = ws_message


# ---------------------------------------------------------------------------------------- Binance REST
def _binance_error(code: int, msg: str, status: int = 400, headers: dict[str, str] | None = None) -> web.Response:
    return _json({"code": code, "msg": msg}, status=status, headers=headers)


def _charge(state: Any, weight: int) -> tuple[web.Response | None, dict[str, str]]:
    """USDⓈ-M request weight (rolling minute, 429 past the limit), as ``server._charge`` does."""
    ok, used, retry_after = state.charge_weight("fapi", weight)
    headers = {"X-MBX-USED-WEIGHT": str(used), "X-MBX-USED-WEIGHT-1M": str(used)}
    if ok:
        return None, headers
    headers["Retry-After"] = str(retry_after)
    return _binance_error(
        -1003, f"Too much request weight used; current limit is {state.weight_limit('fapi')} request weight "
        "per 1 MINUTE. Please use WebSocket Streams for live updates to avoid polling the API.", 429, headers), headers


def _usdm_depth_weight(limit: int) -> int:
    return 2 if limit <= 50 else {100: 5, 500: 10, 1000: 20}[limit]


async def _fapi_depth(request: web.Request) -> web.Response:
    engine: BinanceMd = request.app[MD_KEY]   # type: ignore[assignment]
    state = engine.state
    q = request.query
    raw_limit = q.get("limit", "500")
    if not raw_limit.isdigit() or len(raw_limit) > 10:
        return _binance_error(-1100, "Illegal characters found in parameter 'limit'; legal range is '^[0-9]{1,20}$'.")
    limit = int(raw_limit)
    if limit not in USDM_DEPTH_LIMITS:
        return _binance_error(-1130, "Data sent for parameter 'limit' is not valid.")
    rejected, headers = _charge(state, _usdm_depth_weight(limit))
    if rejected:
        return rejected
    symbol = q.get("symbol")
    if not symbol:
        return _binance_error(-1102, "Mandatory parameter 'symbol' was not sent, was empty/null, or malformed.",
                              headers=headers)
    try:
        body = engine.depth_body("usdm", symbol, limit, empty=bool(request.get("sim_empty")))
    except SimError:
        return _binance_error(-1121, "Invalid symbol.", headers=headers)
    return web.Response(body=body, headers={"Content-Type": JSON_CT, **headers})


async def _fapi_open_interest(request: web.Request) -> web.Response:
    engine: BinanceMd = request.app[MD_KEY]   # type: ignore[assignment]
    rejected, headers = _charge(engine.state, 1)
    if rejected:
        return rejected
    symbol = request.query.get("symbol")
    if not symbol:
        return _binance_error(-1102, "Mandatory parameter 'symbol' was not sent, was empty/null, or malformed.",
                              headers=headers)
    try:
        body = engine.open_interest_body(symbol)
    except SimError:
        return _binance_error(-1121, "Invalid symbol.", headers=headers)
    return web.Response(body=body, headers={"Content-Type": JSON_CT, **headers})


async def _futures_data(request: web.Request) -> web.Response:
    engine: BinanceMd = request.app[MD_KEY]   # type: ignore[assignment]
    rejected, headers = _charge(engine.state, 1)   # own IP limit on Binance; visible in the budget here
    if rejected:
        return rejected
    q = request.query
    symbol, period = q.get("symbol"), q.get("period")
    if not symbol or not period:
        name = "symbol" if not symbol else "period"
        return _binance_error(-1102, f"Mandatory parameter '{name}' was not sent, was empty/null, or malformed.",
                              headers=headers)
    if period not in STAT_PERIODS:
        return _binance_error(-1120, "Invalid interval.", headers=headers)
    raw_limit = q.get("limit", "30")
    if not raw_limit.isdigit() or not 1 <= int(raw_limit[:6]) <= 500:
        return _binance_error(-1130, "Data sent for parameter 'limit' is not valid.", headers=headers)
    try:
        body = engine.long_short_body(request.path, symbol, period, int(raw_limit))
    except SimError:
        return _binance_error(-1121, "Invalid symbol.", headers=headers)
    return web.Response(body=body, headers={"Content-Type": JSON_CT, **headers})


# ---------------------------------------------------------------------------------------- trade history REST
def _binance_trades_route(path: str, family: str, weight: int, market: str, agg: bool
                          ) -> Callable[[web.Request], Awaitable[web.Response]]:
    """``/api/v3/historicalTrades`` (spot tape), ``/api/v3/aggTrades``, ``/fapi/v1/aggTrades``:
    ``fromId`` (inclusive) and ``limit`` (<= 1000) over the engine's bounded history."""

    async def handler(request: web.Request) -> web.Response:
        engine: BinanceMd = request.app[MD_KEY]   # type: ignore[assignment]
        state = engine.state
        ok, used, retry_after = state.charge_weight(family, weight)
        headers = {"X-MBX-USED-WEIGHT": str(used), "X-MBX-USED-WEIGHT-1M": str(used)}
        if not ok:
            headers["Retry-After"] = str(retry_after)
            return _binance_error(-1003, f"Too much request weight used; current limit is "
                                  f"{state.weight_limit(family)} request weight per 1 MINUTE.", 429, headers)
        q = request.query
        symbol = q.get("symbol")
        if not symbol:
            return _binance_error(-1102, "Mandatory parameter 'symbol' was not sent, was empty/null, or malformed.",
                                  headers=headers)
        raw_limit, raw_from = q.get("limit", "500"), q.get("fromId")
        for name, raw in (("limit", raw_limit), ("fromId", raw_from)):
            if raw is not None and (not raw.isdigit() or len(raw) > 19):
                return _binance_error(-1100, f"Illegal characters found in parameter '{name}'; legal range is "
                                      "'^[0-9]{1,20}$'.", headers=headers)
        limit = int(raw_limit)
        if not 1 <= limit <= 1000:
            return _binance_error(-1130, "Data sent for parameter 'limit' is not valid.", headers=headers)
        from_id = int(raw_from) if raw_from is not None else None
        try:
            body = (engine.agg_trades_body(market, symbol, from_id, limit) if agg
                    else engine.historical_trades_body(symbol, from_id, limit))
        except SimError:
            return _binance_error(-1121, "Invalid symbol.", headers=headers)
        return web.Response(body=body, headers={"Content-Type": JSON_CT, **headers})

    return handler


OKX_HISTORY_TRADES_PATH = "/api/v5/market/history-trades"
BYBIT_RECENT_TRADE_PATH = "/v5/market/recent-trade"
DERIBIT_TRADES_PATHS = {"/api/v2/public/get_last_trades_by_instrument": False,
                        "/api/v2/public/get_last_trades_by_instrument_and_time": True}


async def _deribit_last_trades(request: web.Request) -> web.Response:
    """JSON-RPC over HTTP GET, as Deribit serves its public methods."""
    engine: DeribitMd = request.app[MD_KEY]   # type: ignore[assignment]
    us = time.time_ns() // 1000
    try:
        result = engine.last_trades_body(request.query, DERIBIT_TRADES_PATHS[request.path])
    except SimError as exc:
        engine.counters["errors_sent"] += 1
        return web.Response(status=400, content_type="application/json", text=json.dumps(
            {"jsonrpc": "2.0", "error": {"message": "Invalid params", "data": {"reason": exc.message}, "code": -32602},
             "usIn": us, "usOut": us + 5, "usDiff": 5, "testnet": False}, separators=(",", ":")))
    body = orjson.dumps({"jsonrpc": "2.0", "result": result, "usIn": us, "usOut": us + 9, "usDiff": 9,
                         "testnet": False})
    return web.Response(body=body, headers={"Content-Type": JSON_CT})


# ---------------------------------------------------------------------------------------- wiring
def attach(app: web.Application, name: str, *, state: Any = None, venue: Any = None,
           config: MdConfig | None = None, seed: int | None = None) -> MdEngine | None:
    """Add ``name``'s market-data routes to its existing app (None when it has no market data)."""
    engine: MdEngine
    if name == "binance":
        engine = BinanceMd(state, config, seed)
        app.add_routes([
            web.get("/fapi/v1/depth", _fapi_depth),
            web.get("/fapi/v1/openInterest", _fapi_open_interest),
            web.get("/fapi/v1/aggTrades", _binance_trades_route("/fapi/v1/aggTrades", "fapi", 20, "usdm", True)),
            web.get("/api/v3/aggTrades", _binance_trades_route("/api/v3/aggTrades", "spot", 4, "spot", True)),
            web.get("/api/v3/historicalTrades",
                    _binance_trades_route("/api/v3/historicalTrades", "spot", 25, "spot", False)),
            *(web.get(path, _futures_data) for path in LONG_SHORT_KINDS),
        ])
    elif name == "okx":
        okx = OkxMd(venue, config, seed)
        engine = okx
        _wrap_okx_public(venue, okx)
        # the venue's own REST table: its middleware then counts and faults these paths too
        venue.route_handlers[OKX_BOOKS_PATH] = lambda q, mode: okx.books_body(q.get("instId"), q.get("sz"),
                                                                              empty=mode.empty)
        venue.route_handlers[OKX_RUBIK_PATH] = lambda q, mode: okx.long_short_body(q.get("ccy"), q.get("period"))
        venue.route_handlers[OKX_HISTORY_TRADES_PATH] = lambda q, mode: okx.history_trades_body(q)

        async def rest(request: web.Request) -> web.Response:
            status, body = venue.route_handlers[request.path](request.query, request.get("sim_mode", NORMAL))
            return web.Response(body=body, status=status, headers={"Content-Type": JSON_CT})

        app.add_routes([
            web.get(OKX_BOOKS_PATH, rest),
            web.get(OKX_RUBIK_PATH, rest),
            web.get(OKX_HISTORY_TRADES_PATH, rest),
            web.get("/ws/v5/business", _ws_route("business", lambda e, c, t: e.request(c, "business", t))),
        ])
    elif name == "bybit":
        bybit = BybitMd(venue, config, seed)
        engine = bybit
        # in the venue's REST table, so its middleware counts and faults the route like the others
        venue.route_handlers[BYBIT_ACCOUNT_RATIO_PATH] = lambda q, mode: bybit.account_ratio_body(q)

        async def bybit_rest(request: web.Request) -> web.Response:
            status, body = venue.route_handlers[request.path](request.query, request.get("sim_mode", NORMAL))
            return web.Response(body=body, status=status, headers={"Content-Type": JSON_CT})

        app.add_routes([web.get(f"/v5/public/{category}", _ws_route(category, lambda e, c, t: e.request(c, t)))
                        for category in ("spot", "linear")])
        app.add_routes([web.get(BYBIT_ACCOUNT_RATIO_PATH, bybit_rest)])
        venue.route_handlers[BYBIT_RECENT_TRADE_PATH] = lambda q, mode: bybit.recent_trade_body(q)
        app.add_routes([web.get(BYBIT_RECENT_TRADE_PATH, bybit_rest)])
    else:
        return None
    app[MD_KEY] = engine
    app.add_routes(_control_routes())
    _add_clock(app, engine)
    return engine


@web.middleware
async def _md_middleware(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                         ) -> web.StreamResponse:
    try:
        return await handler(request)
    except SimError as exc:
        return _json({"ok": False, "error": exc.message}, status=exc.status)


def build_md_app(name: str, ports: dict[str, str] | None = None, config: MdConfig | None = None,
                 seed: int | None = None) -> web.Application:
    """The app of an exchange served for market data only (``MD_ONLY_EXCHANGES``), on its own port."""
    if name != "deribit":
        raise ValueError(f"no market-data-only exchange {name!r}")
    app = web.Application(middlewares=[_md_middleware], client_max_size=1024 * 1024)
    engine = DeribitMd(config, seed)
    app[MD_KEY] = engine
    app[_MD_PORTS_KEY] = ports if ports is not None else {}

    async def stats(request: web.Request) -> web.Response:
        return _json(request.app[MD_KEY].stats())

    async def reset(request: web.Request) -> web.Response:
        args = _fields(await _body(request), {"drop_connections": ((bool,), True)})
        return _json(request.app[MD_KEY].reset(args["drop_connections"]))

    async def ports_handler(request: web.Request) -> web.Response:
        return _json({"exchange": name, "ports": request.app[_MD_PORTS_KEY]})

    app.add_routes([
        web.get("/ws/api/v2", _ws_route("deribit", lambda e, c, t: e.request(c, t))),
        *(web.get(path, _deribit_last_trades) for path in DERIBIT_TRADES_PATHS),
        web.get("/_sim/stats", stats),
        web.post("/_sim/reset", reset),
        web.get("/_sim/ports", ports_handler),
        *_control_routes(),
    ])
    _add_clock(app, engine)
    return app
