"""Local Binance simulator: REST + WebSocket with the real payload shapes, scriptable at run time.

Run it with ``python -m collector.simulator --port 0`` (or ``collector simulate``); it prints
``SIMULATOR READY http://127.0.0.1:<port>`` once it listens. Binance endpoints:

- ``GET /api/v3/exchangeInfo`` (weight 20), ``GET /api/v3/depth`` (weight by limit),
  ``GET /api/v3/ping``, ``GET /api/v3/time``, ``GET /fapi/v1/exchangeInfo`` (USDⓈ-M, weight 1);
  every answer carries ``X-MBX-USED-WEIGHT-1M`` (rolling minute; 429 + Retry-After past the limit).
- WebSocket ``/stream?streams=a/b`` (payloads wrapped ``{"stream","data"}``), ``/ws/<stream>`` and
  ``/ws`` (bare payloads); SUBSCRIBE / UNSUBSCRIBE / LIST_SUBSCRIPTIONS / SET_PROPERTY / GET_PROPERTY;
  more than 5 incoming messages in a second -> close 1008; more than 1024 streams -> error; a server
  ping every ``--ping-interval`` s that must be answered (with its payload) within a minute.

Control endpoints (JSON in/out) live under ``/_sim/``; ``collector.simulator.client`` wraps them.

Market data (``md.py``, ``md_server.py``): Binance spot + USDⓈ-M streams on this port, OKX and Bybit
on their venue ports, Deribit (``--exchanges deribit``, not part of ``all``) on its own; scripted
under ``/_sim/md/`` on each of those ports.

``--exchanges binance,okx,...|all`` serves several exchanges from one process, each on its own port
(exchanges share paths: Binance and MEXC both answer ``/api/v3/exchangeInfo``): the instrument lists
of ``listings.VENUES`` with their recorded body shapes, scripted per port under ``/_sim/listings/``
(one status vocabulary: pre_trading | trading | halted | delisted), ``/_sim/rest/fault``,
``/_sim/stats``; ``GET /_sim/ports`` on every port, and a second stdout line
``SIMULATOR PORTS {"okx": "http://127.0.0.1:..."}`` give the exchange -> URL map.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import re
import signal
import socket
import sys
import time
from typing import Any, Awaitable, Callable

import orjson
from aiohttp import WSMsgType, web

from collector.simulator import md_server
from collector.simulator.listings import EXCHANGES, NORMAL, VENUES, BinanceListings, Mode, PushClient, Venue
from collector.simulator.control import (
    JSON_CT, NUM, OPT_STR, Spec as _Spec, fields as _fields, json_body as _body, json_response as _json,
)
from collector.simulator.state import (
    MAX_FILLER,
    MAX_SYMBOL_LEN,
    SimConfig,
    SimError,
    SimState,
    now_ms,
    split_symbol,
)

log = logging.getLogger("collector.simulator")

STATE_KEY: web.AppKey[SimState] = web.AppKey("sim_state", SimState)
MAX_STREAM_NAME = 1024
_ID_RE = re.compile(r"^[A-Za-z0-9]{1,36}$")
_METHODS = "`SUBSCRIBE`, `UNSUBSCRIBE`, `LIST_SUBSCRIPTIONS`, `SET_PROPERTY`, `GET_PROPERTY`"


def _binance_error(code: int, msg: str, status: int = 400, headers: dict[str, str] | None = None) -> web.Response:
    return _json({"code": code, "msg": msg}, status=status, headers=headers)


# ---------------------------------------------------------------------------------------- REST
def _weight_headers(state: SimState, family: str) -> dict[str, str]:
    used = str(state.used_weight(family))
    return {"X-MBX-USED-WEIGHT": used, "X-MBX-USED-WEIGHT-1M": used}


def _charge(state: SimState, path: str, weight: int) -> tuple[web.Response | None, dict[str, str]]:
    """Charge request weight; a 429 answer when the rolling minute is full (as Binance does)."""
    family = state.weight_family(path)
    ok, used, retry_after = state.charge_weight(family, weight)
    headers = {"X-MBX-USED-WEIGHT": str(used), "X-MBX-USED-WEIGHT-1M": str(used)}
    if ok:
        return None, headers
    limit = state.weight_limit(family)
    headers["Retry-After"] = str(retry_after)
    return _binance_error(
        -1003, f"Too much request weight used; current limit is {limit} request weight per 1 MINUTE. "
        "Please use WebSocket Streams for live updates to avoid polling the API.", 429, headers), headers


async def _fault_response(state: SimState, request: web.Request, fault: Any) -> web.StreamResponse | None:
    """The scripted answer for a faulted request, or None to continue normally."""
    family = state.weight_family(request.path)
    headers = _weight_headers(state, family)
    if fault.kind == "429":
        headers["Retry-After"] = str(fault.retry_after)
        return _binance_error(
            -1003, f"Too much request weight used; current limit is {state.weight_limit(family)} request "
            "weight per 1 MINUTE. Please use WebSocket Streams for live updates to avoid polling the API.",
            429, headers)
    if fault.kind == "418":
        headers["Retry-After"] = str(fault.retry_after)
        until = now_ms() + fault.retry_after * 1000
        return _binance_error(
            -1003, f"Way too much request weight used; IP banned until {until}. "
            "Please use WebSocket Streams for live updates to avoid bans.", 418, headers)
    if fault.kind == "403":
        # the WAF's answer to a violated rate limit: not a JSON envelope
        return web.Response(text="<html><head><title>403 Forbidden</title></head><body><h1>403 Forbidden"
                            "</h1></body></html>", status=403, content_type="text/html", headers=headers)
    if fault.kind == "5xx":
        if fault.body is not None:
            return web.Response(text=fault.body, status=fault.status, headers=headers)
        if fault.status in (502, 504):  # what the load balancer in front says
            return web.Response(text=f"<html><body><h1>{fault.status} Gateway error</h1></body></html>",
                                status=fault.status, content_type="text/html", headers=headers)
        if fault.status == 503:
            return _binance_error(-1008, "Server is currently overloaded with other requests. "
                                  "Please try again in a few minutes.", 503, headers)
        return _binance_error(-1000, "An unknown error occurred while processing the request.",
                              fault.status, headers)
    if fault.kind == "garbage":
        body = fault.body if fault.body is not None else "<html><head><title>Bad Gateway</title></head> \x00{{{"
        return web.Response(body=body.encode(), status=200, headers={"Content-Type": JSON_CT, **headers})
    if fault.kind == "timeout":
        # hang longer than the client's timeout, then answer normally (if anyone still listens)
        await asyncio.sleep(fault.hang_s)
        return None
    if fault.kind == "empty":
        request["sim_empty"] = True
        return None
    if fault.kind == "truncate":
        request["sim_drop_fraction"] = fault.fraction or 0.5
        return None
    return None


@web.middleware
async def _rest_middleware(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                           ) -> web.StreamResponse:
    path = request.path
    if path.startswith("/_sim/"):
        try:
            return await handler(request)
        except SimError as exc:
            return _json({"ok": False, "error": exc.message}, status=exc.status)
    state = request.app[STATE_KEY]
    is_ws = path in ("/stream", "/ws") or path.startswith("/ws/")
    if not is_ws:
        state.count_rest_call(path)
    fault = state.take_fault(path, rest=not is_ws)
    if fault is not None:
        resp = await _fault_response(state, request, fault)
        if resp is not None:
            return resp
    return await handler(request)


async def _exchange_info(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    market = "usdm" if request.path.startswith("/fapi/") else "spot"
    rejected, headers = _charge(state, request.path, 1 if market == "usdm" else 20)
    if rejected:
        return rejected
    q = request.query
    symbols: list[str] | None = None
    if "symbol" in q and "symbols" in q:
        return _binance_error(-1101, "Parameter 'symbol' and 'symbols' cannot be sent together.", headers=headers)
    if "symbol" in q:
        symbols = [q["symbol"]]
    elif "symbols" in q:
        try:
            parsed = orjson.loads(q["symbols"])
        except orjson.JSONDecodeError:
            parsed = None
        if not isinstance(parsed, list) or not all(isinstance(s, str) for s in parsed) or not parsed:
            return _binance_error(-1100, "Illegal characters found in parameter 'symbols'; legal range is "
                                  "'^\\[(\"[A-Z0-9-_.]{1,20}\"(,\"[A-Z0-9-_.]{1,20}\"){0,}){0,1}\\]$'.",
                                  headers=headers)
        symbols = parsed
    try:
        body = state.exchange_info_body(market, symbols=symbols, status=q.get("symbolStatus"),
                                        empty=bool(request.get("sim_empty")),
                                        drop_fraction=float(request.get("sim_drop_fraction", 0.0)))
    except SimError:
        return _binance_error(-1121, "Invalid symbol.", headers=headers)
    return web.Response(body=body, headers={"Content-Type": JSON_CT, **headers})


def _depth_weight(limit: int) -> int:
    if limit <= 100:
        return 5
    if limit <= 500:
        return 25
    if limit <= 1000:
        return 50
    return 250


async def _depth(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    q = request.query
    raw_limit = q.get("limit", "100")
    if not raw_limit.isdigit() or len(raw_limit) > 20:
        return _binance_error(-1100, "Illegal characters found in parameter 'limit'; legal range is "
                              "'^[0-9]{1,20}$'.", headers=_weight_headers(state, "spot"))
    limit = min(max(int(raw_limit), 1), 5000)  # Binance truncates above 5000
    rejected, headers = _charge(state, request.path, _depth_weight(limit))
    if rejected:
        return rejected
    symbol = q.get("symbol")
    if not symbol:
        return _binance_error(-1102, "Mandatory parameter 'symbol' was not sent, was empty/null, or malformed.",
                              headers=headers)
    md = request.app.get(md_server.MD_KEY)   # the books the depth streams move
    try:
        body = (md.depth_body("spot", symbol, limit, empty=bool(request.get("sim_empty"))) if md is not None
                else state.depth_body(symbol, limit, empty=bool(request.get("sim_empty"))))
    except SimError:
        return _binance_error(-1121, "Invalid symbol.", headers=headers)
    return web.Response(body=body, headers={"Content-Type": JSON_CT, **headers})


async def _ping(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    rejected, headers = _charge(state, request.path, 1)
    return rejected or web.Response(body=b"{}", headers={"Content-Type": JSON_CT, **headers})


async def _time(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    rejected, headers = _charge(state, request.path, 1)
    return rejected or _json({"serverTime": now_ms()}, headers=headers)


# ---------------------------------------------------------------------------------------- WebSocket
def _valid_id(rid: Any) -> bool:
    if rid is None:
        return True
    if isinstance(rid, bool):
        return False
    if isinstance(rid, int):
        return -(2 ** 63) <= rid < 2 ** 63
    return isinstance(rid, str) and _ID_RE.match(rid) is not None


def _handle_control(state: SimState, conn: Any, data: str) -> None:
    """One JSON control message, answered the way Binance's stream servers answer."""
    state.counters["control_messages"] += 1

    def error(code: int, msg: str, rid: Any = ..., ) -> None:
        state.counters["control_errors"] += 1
        reply: dict[str, Any] = {"code": code, "msg": msg}
        if rid is not ...:
            reply["id"] = rid
        state.send_control_frame(conn, reply)

    try:
        req = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        error(3, f"Invalid JSON: expected value at line {exc.lineno} column {exc.colno}")
        return
    if not isinstance(req, dict):
        error(2, "Invalid request: expected a JSON object at line 1 column 1")
        return
    if "method" not in req:
        error(2, f"Invalid request: missing field `method` at line 1 column {len(data)}")
        return
    rid = req.get("id", ...)
    if rid is ... or not _valid_id(rid):
        error(2, "Invalid request: request ID must be an unsigned integer")
        return
    method, params = req.get("method"), req.get("params")
    if method in ("SUBSCRIBE", "UNSUBSCRIBE"):
        if (not isinstance(params, list) or not all(isinstance(p, str) and 0 < len(p) <= MAX_STREAM_NAME
                                                     for p in params)):
            error(2, "Invalid request: params must be a list of stream names", rid)
            return
        if method == "SUBSCRIBE":
            new = {p for p in params if p not in conn.streams}
            if len(conn.streams) + len(new) > state.config.max_streams:
                error(2, f"Invalid request: too many streams; at most {state.config.max_streams} "
                      "streams per connection", rid)
                return
            state.subscribe(conn, list(dict.fromkeys(params)))
        else:
            state.unsubscribe(conn, params)
        state.send_control_frame(conn, {"result": None, "id": rid})
    elif method == "LIST_SUBSCRIPTIONS":
        state.send_control_frame(conn, {"result": list(conn.streams), "id": rid})
    elif method in ("SET_PROPERTY", "GET_PROPERTY"):
        if not isinstance(params, list) or not params or not isinstance(params[0], str):
            error(2, "Invalid request: property name must be a string", rid)
            return
        if params[0] != "combined":
            error(0, "Unknown property", rid)
            return
        if method == "GET_PROPERTY":
            state.send_control_frame(conn, {"result": conn.combined, "id": rid})
            return
        if len(params) != 2 or not isinstance(params[1], bool):
            error(1, "Invalid value type: expected Boolean", rid)
            return
        conn.combined = params[1]
        state.send_control_frame(conn, {"result": None, "id": rid})
    else:
        error(2, f"Invalid request: unknown variant `{method}`, expected one of {_METHODS} at line 1 column 28",
              rid)


#: the USDⓈ-M WebSocket routes (2026 split); one simulated server answers them all
USDM_ROUTES = ("/public", "/market")

async def _ws_handler(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE_KEY]
    path = request.path
    usdm_route = ""
    for route in USDM_ROUTES:  # USDⓈ-M routed endpoints: /public/..., /market/...
        if path.startswith(route + "/"):
            path = path[len(route):]
            usdm_route = route
            break
    if path.rstrip("/") == "/stream":
        combined = True
        streams = [s for s in request.query.get("streams", "").split("/") if s]
    else:
        combined = False
        streams = [s for s in path[len("/ws"):].split("/") if s]
    streams = list(dict.fromkeys(streams))
    if len(streams) > state.config.max_streams or any(len(s) > MAX_STREAM_NAME for s in streams):
        state.counters["ws_rejected"] += 1
        return _binance_error(-1102, f"Too many streams requested: {len(streams)} > "
                              f"{state.config.max_streams} per connection.", 400)
    ws = web.WebSocketResponse(autoping=False, compress=False, max_msg_size=1024 * 1024, timeout=3.0)
    if not ws.can_prepare(request).ok:
        state.counters["ws_rejected"] += 1
        return web.Response(status=400, text="WebSocket upgrade expected")
    await ws.prepare(request)
    transport = request.transport
    if transport is None:
        return ws
    peer = request.remote or "?"
    conn = state.register(ws, transport, path, combined, streams, peer)
    conn.route = usdm_route  # market data: "" = spot streams, "/public" | "/market" = USDⓈ-M
    try:
        while True:
            msg = await ws.receive()
            kind = msg.type
            if kind in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR):
                break
            if conn.closing:
                continue
            if conn.over_rate(time.monotonic(), state.config.max_incoming_per_second):
                # Binance: "A connection that goes beyond the limit will be disconnected"
                state.close_conn(conn, 1008, "Too many requests", "closed_rate_limit")
                continue
            if kind == WSMsgType.TEXT:
                try:
                    _handle_control(state, conn, msg.data)
                except Exception:  # noqa: BLE001 - one bad message must not kill the server side
                    log.exception("control message handling failed")
            elif kind == WSMsgType.BINARY:
                state.counters["control_messages"] += 1
                state.counters["control_errors"] += 1
                state.send_control_frame(conn, {"code": 3, "msg": "Invalid JSON: expected value at line 1 column 1"})
            elif kind == WSMsgType.PING:
                state.on_ping(conn, msg.data)
            elif kind == WSMsgType.PONG:
                state.on_pong(conn, msg.data)
    except ConnectionError:
        pass
    finally:
        state.unregister(conn)
        if not conn.closing:
            conn.closing = True
            if not ws.closed:
                try:
                    await asyncio.wait_for(ws.close(), 2.0)
                except Exception:  # noqa: BLE001
                    transport.abort()
    return ws


# ---------------------------------------------------------------------------------------- control




def _control_routes() -> list[web.RouteDef]:
    def post(path: str, spec: _Spec, action: Callable[[SimState, dict[str, Any]], dict[str, Any]]) -> web.RouteDef:
        async def handler(request: web.Request) -> web.Response:
            args = _fields(await _body(request), spec)
            return _json(action(request.app[STATE_KEY], args))
        return web.post(path, handler)

    async def stats(request: web.Request) -> web.Response:
        return _json(request.app[STATE_KEY].stats())

    async def symbols(request: web.Request) -> web.Response:
        market = request.query.get("market", "spot")
        return _json({"symbols": request.app[STATE_KEY].list_symbols(market)})

    async def get_config(request: web.Request) -> web.Response:
        return _json(request.app[STATE_KEY].apply_config({}))

    async def set_config(request: web.Request) -> web.Response:
        return _json(request.app[STATE_KEY].apply_config(await _body(request)))

    return [
        web.get("/_sim/stats", stats),
        web.get("/_sim/symbols", symbols),
        web.get("/_sim/config", get_config),
        web.post("/_sim/config", set_config),
        post("/_sim/reset", {"drop_connections": ((bool,), True)},
             lambda s, a: s.reset(a["drop_connections"])),
        post("/_sim/symbols/add",
             {"symbol": ((str,), ...), "base": ((str,), ...), "quote": ((str,), ...),
              "status": ((str,), "TRADING"), "market": ((str,), "spot")},
             lambda s, a: s.add_symbol(**a)),
        post("/_sim/symbols/status", {"symbol": ((str,), ...), "status": ((str,), ...), "market": ((str,), "spot")},
             lambda s, a: s.set_symbol_status(**a)),
        post("/_sim/symbols/remove", {"symbol": ((str,), ...), "market": ((str,), "spot")},
             lambda s, a: s.remove_symbol(**a)),
        post("/_sim/symbols/filler", {"count": ((int,), ...), "quote": ((str,), "USDT"), "market": ((str,), "spot")},
             lambda s, a: s.add_filler_symbols(**a)),
        post("/_sim/trades/rate", {"rate": (NUM, ...), "symbol": OPT_STR},
             lambda s, a: s.set_rate(**a)),
        post("/_sim/trades/burst", {"symbol": ((str,), ...), "count": ((int,), 1)},
             lambda s, a: s.burst(**a)),
        post("/_sim/trades/duplicate", {"enabled": ((bool,), True)},
             lambda s, a: s.set_duplicate(a["enabled"])),
        post("/_sim/trades/firehose",
             {"symbols": ((list,), None), "count": ((int,), None), "batch": ((int,), 200)},
             lambda s, a: s.start_firehose(**a)),
        post("/_sim/trades/firehose/stop", {}, lambda s, a: s.stop_firehose()),
        post("/_sim/ws/drop", {}, lambda s, a: {"ok": True, "dropped": s.drop_connections()}),
        post("/_sim/ws/stall", {"seconds": (NUM, None)}, lambda s, a: s.stall(a["seconds"])),
        post("/_sim/ws/unstall", {}, lambda s, a: s.unstall()),
        post("/_sim/ws/malformed",
             {"kinds": ((list,), None), "count": ((int,), 1), "size": ((int,), 5 * 1024 * 1024)},
             lambda s, a: s.send_malformed(**a)),
        post("/_sim/ws/shutdown", {"close_after_s": (NUM, None)},
             lambda s, a: s.server_shutdown(a["close_after_s"])),
        post("/_sim/rest/fault",
             {"kind": ((str,), ...), "path": ((str,), "*"), "count": ((int,), None),
              "duration_s": (NUM, None), "retry_after": ((int,), 60), "status": ((int,), 503),
              "hang_s": (NUM, 30.0), "body": OPT_STR, "fraction": (NUM, None)},
             lambda s, a: s.add_fault(**a)),
        post("/_sim/rest/clear", {"path": OPT_STR}, lambda s, a: s.clear_faults(a["path"])),
    ]


# ---------------------------------------------------------------------------------------- listings
def _listing_routes() -> list[web.RouteDef]:
    """Scripting in one vocabulary on every exchange's port (Binance: through ``BinanceListings``)."""

    def post(path: str, spec: _Spec, action: Callable[[Any, dict[str, Any]], dict[str, Any]]) -> web.RouteDef:
        async def handler(request: web.Request) -> web.Response:
            args = _fields(await _body(request), spec)
            return _json(action(request.app[LISTINGS_KEY], args))
        return web.post(path, handler)

    async def listings(request: web.Request) -> web.Response:
        target = request.app[LISTINGS_KEY]
        market = request.query.get("market")
        return _json({"exchange": target.name, "listings": target.list_rows(market)})

    async def status_map(request: web.Request) -> web.Response:
        return _json(request.app[LISTINGS_KEY].status_map())

    async def ports(request: web.Request) -> web.Response:
        return _json({"exchange": request.app[LISTINGS_KEY].name, "ports": request.app[PORTS_KEY]})

    return [
        web.get("/_sim/listings", listings),
        web.get("/_sim/status-map", status_map),
        web.get("/_sim/ports", ports),
        post("/_sim/listings/add",
             {"base": ((str,), ...), "quote": ((str,), ...), "status": ((str,), "trading"),
              "market": ((str,), "spot"), "symbol": OPT_STR, "raw_status": OPT_STR},
             lambda t, a: t.add(**a)),
        post("/_sim/listings/status",
             {"symbol": ((str,), ...), "market": ((str,), "spot"), "status": OPT_STR, "raw_status": OPT_STR},
             lambda t, a: t.set_status(**a)),
        post("/_sim/listings/remove", {"symbol": ((str,), ...), "market": ((str,), "spot")},
             lambda t, a: t.remove(**a)),
        post("/_sim/listings/filler",
             {"count": ((int,), ...), "quote": ((str,), "USDT"), "market": ((str,), "spot")},
             lambda t, a: t.add_filler(**a)),
    ]


# ---------------------------------------------------------------------------------------- app
PORTS_KEY: web.AppKey[dict[str, str]] = web.AppKey("sim_ports", dict)
LISTINGS_KEY: web.AppKey[Any] = web.AppKey("sim_listings", object)
VENUE_KEY: web.AppKey[Venue] = web.AppKey("sim_venue", Venue)


def build_app(state: SimState, ports: dict[str, str] | None = None) -> web.Application:
    """The aiohttp application serving Binance's endpoints and the /_sim/ controls for ``state``.

    ``ports``: the exchange -> base URL map of a multi-exchange run (``GET /_sim/ports``).
    """
    app = web.Application(middlewares=[_rest_middleware], client_max_size=1024 * 1024)
    app[STATE_KEY] = state
    app[LISTINGS_KEY] = BinanceListings(state)
    app[PORTS_KEY] = ports if ports is not None else {}
    app.add_routes([
        web.get("/api/v3/exchangeInfo", _exchange_info),
        web.get("/api/v3/depth", _depth),
        web.get("/api/v3/ping", _ping),
        web.get("/api/v3/time", _time),
        web.get("/fapi/v1/exchangeInfo", _exchange_info),
        web.get("/fapi/v1/ping", _ping),
        web.get("/fapi/v1/time", _time),
        web.get("/stream", _ws_handler),
        web.get("/ws", _ws_handler),
        web.get("/ws/{streams:.+}", _ws_handler),
        *(web.get(f"{route}{p}", _ws_handler) for route in USDM_ROUTES
          for p in ("/stream", "/ws", "/ws/{streams:.+}")),
        *_control_routes(),
        *_listing_routes(),
    ])

    async def on_startup(_app: web.Application) -> None:
        await state.start()

    async def on_shutdown(_app: web.Application) -> None:
        await state.stop()

    app.on_startup.append(on_startup)
    app.on_shutdown.append(on_shutdown)
    return app


_GARBAGE = b"<html><head><title>Bad Gateway</title></head> \x00{{{"


async def _venue_fault(venue: Venue, request: web.Request, fault: Any) -> web.StreamResponse | None:
    """The scripted answer for a faulted listing request, or None to answer (maybe altered) normally."""
    headers: dict[str, str] = {}
    if fault.kind in ("429", "418", "403"):
        if fault.kind != "403":  # a ban answer (Bybit 403) announces no time: wait per the docs
            headers["Retry-After"] = str(fault.retry_after)
        body = venue.error(fault.kind, int(fault.kind))
        ctype = JSON_CT if body[:1] in (b"{", b"[") else "text/plain; charset=utf-8"
        return web.Response(body=body, status=int(fault.kind), headers={"Content-Type": ctype, **headers})
    if fault.kind == "5xx":
        if fault.body is not None:
            return web.Response(text=fault.body, status=fault.status)
        if fault.status in (502, 504):  # what the load balancer in front says
            return web.Response(text=f"<html><body><h1>{fault.status} Gateway error</h1></body></html>",
                                status=fault.status, content_type="text/html")
        return web.Response(body=venue.error("5xx", fault.status), status=fault.status,
                            headers={"Content-Type": JSON_CT})
    if fault.kind == "garbage":
        body = fault.body.encode() if fault.body is not None else _GARBAGE
        return web.Response(body=body, status=200, headers={"Content-Type": JSON_CT})
    if fault.kind == "timeout":
        await asyncio.sleep(fault.hang_s)  # longer than the client waits; then a normal answer
        return None
    if fault.kind == "empty":
        request["sim_mode"] = Mode(empty=True)
    elif fault.kind == "truncate":
        request["sim_mode"] = Mode(drop_fraction=fault.fraction or 0.5)
    return None


@web.middleware
async def _venue_middleware(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                            ) -> web.StreamResponse:
    if request.path.startswith("/_sim/"):
        try:
            return await handler(request)
        except SimError as exc:
            return _json({"ok": False, "error": exc.message}, status=exc.status)
    venue = request.app[VENUE_KEY]
    key = venue.path_key(request.path)
    venue.rest_calls[key] += 1
    if key != "other":
        fault = venue.faults.take(request.path)
        if fault is not None:
            venue.rest_faulted[key] += 1
            resp = await _venue_fault(venue, request, fault)
            if resp is not None:
                return resp
    return await handler(request)


async def _venue_rest(request: web.Request) -> web.Response:
    venue = request.app[VENUE_KEY]
    status, body = venue.route_handlers[request.path](request.query, request.get("sim_mode", NORMAL))
    return web.Response(body=body, status=status, headers={"Content-Type": JSON_CT})


#: frames queued per push client before the server gives up on it (a client that stopped reading)
PUSH_QUEUE_MAX = 4096


async def _venue_ws_handler(request: web.Request) -> web.StreamResponse:
    """A venue's instrument push channel: text frames in (``venue.ws_message``), pushes out."""
    venue = request.app[VENUE_KEY]
    ws = web.WebSocketResponse(autoping=True, heartbeat=None, max_msg_size=64 * 1024, timeout=3.0)
    if not ws.can_prepare(request).ok:
        return web.Response(status=400, text="WebSocket upgrade expected")
    await ws.prepare(request)
    queue: asyncio.Queue[str | None] = asyncio.Queue(PUSH_QUEUE_MAX)

    def send(text: str) -> None:
        try:
            queue.put_nowait(text)
        except asyncio.QueueFull:
            close()

    def close() -> None:
        venue.push_clients.discard(client)
        if request.transport is not None:
            request.transport.abort()

    async def writer() -> None:
        while (text := await queue.get()) is not None:
            await ws.send_str(text)

    client = PushClient(f"{id(ws) & 0xFFFFFFFF:08x}", send, close)
    venue.push_clients.add(client)
    write_task = asyncio.create_task(writer())
    try:
        async for msg in ws:
            if msg.type == WSMsgType.TEXT:
                venue.ws_message(client, msg.data)
            elif msg.type in (WSMsgType.ERROR, WSMsgType.CLOSE):
                break
    except ConnectionError:
        pass
    finally:
        venue.push_clients.discard(client)
        write_task.cancel()
        await asyncio.gather(write_task, return_exceptions=True)
    return ws


def build_listing_app(venue: Venue, ports: dict[str, str] | None = None) -> web.Application:
    """One exchange's instrument-list endpoints and its /_sim/ controls, for its own port."""
    app = web.Application(middlewares=[_venue_middleware], client_max_size=1024 * 1024)
    app[VENUE_KEY] = venue
    app[LISTINGS_KEY] = venue
    app[PORTS_KEY] = ports if ports is not None else {}

    def post(path: str, spec: _Spec, action: Callable[[Venue, dict[str, Any]], dict[str, Any]]) -> web.RouteDef:
        async def handler(request: web.Request) -> web.Response:
            return _json(action(request.app[VENUE_KEY], _fields(await _body(request), spec)))
        return web.post(path, handler)

    async def stats(request: web.Request) -> web.Response:
        return _json(request.app[VENUE_KEY].stats())

    app.add_routes([web.get(path, _venue_rest) for path in venue.route_handlers])
    app.add_routes([web.get(path, _venue_ws_handler) for path in venue.ws_paths])
    app.add_routes([
        web.get("/_sim/stats", stats),
        post("/_sim/ws/drop", {}, lambda v, a: {"ok": True, "dropped": v.drop_push_clients()}),
        post("/_sim/reset", {"drop_connections": ((bool,), True)}, lambda v, a: v.reset()),
        post("/_sim/rest/fault",
             {"kind": ((str,), ...), "path": ((str,), "*"), "count": ((int,), None),
              "duration_s": (NUM, None), "retry_after": ((int,), 60), "status": ((int,), 503),
              "hang_s": (NUM, 30.0), "body": OPT_STR, "fraction": (NUM, None)},
             lambda v, a: v.faults.add(**a)),
        post("/_sim/rest/clear", {"path": OPT_STR}, lambda v, a: v.faults.clear(a["path"])),
        *_listing_routes(),
    ])
    return app


# ---------------------------------------------------------------------------------------- CLI
def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="collector simulate",
                                description="Local exchange simulator: Binance REST + WebSocket, and the "
                                "instrument lists of 12 more exchanges (one port each); scriptable via /_sim/.")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8900, help="port; 0 picks a free one (default 8900)")
    p.add_argument("--exchanges", default=None,
                   help=f"comma list of exchanges to serve, each on its own port, or 'all' ({','.join(EXCHANGES)}); "
                   f"market data only: {','.join(md_server.MD_ONLY_EXCHANGES)} (e.g. all,deribit); "
                   "default: binance only, on --port")
    p.add_argument("--base-port", type=int, default=None,
                   help="with --exchanges: the i-th exchange listens on BASE+i; 0 = free ports (default: --port)")
    p.add_argument("--filler", type=int, default=0,
                   help="trading filler symbols added to the spot list of every served exchange (default 0)")
    p.add_argument("--symbols", default="BTCUSDT,ETHUSDT,BNBBTC",
                   help="comma list of native spot symbols (BTCUSDT) or BASE-QUOTE")
    p.add_argument("--futures-symbols", default="", help="comma list of USDⓈ-M symbols (default none)")
    p.add_argument("--ping-interval", type=float, default=20.0, help="server WS ping every N s (0 = never)")
    p.add_argument("--trade-rate", type=float, default=0.0, help="trades/s per TRADING spot symbol (default 0)")
    p.add_argument("--md-rate", type=float, default=5.0,
                   help="market-data updates/s per channel per symbol (default 5; /_sim/md/rate changes it)")
    p.add_argument("--weight-limit", type=int, default=6000, help="REST weight per minute, 0 = unlimited")
    p.add_argument("--max-incoming-per-second", type=int, default=5,
                   help="incoming WS messages per second before close 1008 (0 = unlimited)")
    p.add_argument("--seed", type=int, default=None, help="seed for prices/quantities (deterministic tapes)")
    p.add_argument("--parent-pid", type=int, default=None, help="exit when this parent process goes away")
    p.add_argument("--no-uvloop", action="store_true", help="use the stock asyncio loop even if uvloop is installed")
    p.add_argument("--log-level", default="WARNING")
    args = p.parse_args(argv)
    if not 0 <= args.port <= 65535:
        p.error("--port must be 0..65535")
    for name in ("ping_interval", "trade_rate"):
        if getattr(args, name) < 0:
            p.error(f"--{name.replace('_', '-')} must be >= 0")
    if not 0 <= args.md_rate <= md_server.MAX_TOPIC_RATE:
        p.error(f"--md-rate must be 0..{md_server.MAX_TOPIC_RATE}")
    if not 0 <= args.filler <= MAX_FILLER:
        p.error(f"--filler must be 0..{MAX_FILLER}")
    args.multi = args.exchanges is not None
    if args.multi:
        names = [n.strip().lower() for n in args.exchanges.split(",") if n.strip()]
        names = [x for n in names for x in (EXCHANGES if n == "all" else (n,))]
        unknown = [n for n in names if n not in EXCHANGES + md_server.MD_ONLY_EXCHANGES]
        if unknown or not names:
            p.error(f"--exchanges: unknown {unknown or 'empty list'}; choose from "
                    f"{','.join(EXCHANGES + md_server.MD_ONLY_EXCHANGES)} or 'all'")
        args.exchange_list = list(dict.fromkeys(names))
        base = args.port if args.base_port is None else args.base_port
        if base and not 1 <= base <= 65536 - len(args.exchange_list):
            p.error("--base-port (or --port) leaves no room for one port per exchange")
        args.port_list = [base + i if base else 0 for i in range(len(args.exchange_list))]
    else:
        if args.base_port is not None:
            p.error("--base-port needs --exchanges")
        args.exchange_list = ["binance"]
        args.port_list = [args.port]
    try:
        args.symbol_list = [s for s in args.symbols.split(",") if s.strip()]
        args.futures_list = [s for s in args.futures_symbols.split(",") if s.strip()]
        for s in args.symbol_list + args.futures_list:
            split_symbol(s)
            if len(s) > MAX_SYMBOL_LEN:
                raise ValueError(f"symbol too long: {s[:40]}...")
    except ValueError as exc:
        p.error(str(exc))
    return args


def _listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(1024)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


async def _watch_parent(parent_pid: int, stop: asyncio.Event) -> None:
    while not stop.is_set():
        await asyncio.sleep(1.0)
        if os.getppid() != parent_pid:
            log.warning("parent process %s is gone; stopping", parent_pid)
            stop.set()


async def _serve(state: SimState | None, args: argparse.Namespace) -> int:
    ports: dict[str, str] = {}
    socks: list[socket.socket] = []
    for name, port in zip(args.exchange_list, args.port_list):
        try:
            socks.append(_listen(args.host, port))
        except OSError as exc:
            for s in socks:
                s.close()
            print(f"simulator: cannot listen on {args.host}:{port} ({name}): {exc}", file=sys.stderr, flush=True)
            return 1
    shown = "127.0.0.1" if args.host in ("0.0.0.0", "") else (f"[{args.host}]" if ":" in args.host else args.host)
    for name, sock in zip(args.exchange_list, socks):
        ports[name] = f"http://{shown}:{sock.getsockname()[1]}"
    runners: list[web.AppRunner] = []
    md_config = md_server.MdConfig(rate=args.md_rate)
    for name, sock in zip(args.exchange_list, socks):
        if name == "binance":
            assert state is not None
            app = build_app(state, ports)
            md_server.attach(app, name, state=state, config=md_config, seed=args.seed)
        elif name in md_server.MD_ONLY_EXCHANGES:
            app = md_server.build_md_app(name, ports, md_config, args.seed)
        else:
            venue = VENUES[name]()
            if args.filler:
                venue.add_filler(args.filler)
            app = build_listing_app(venue, ports)
            md_server.attach(app, name, venue=venue, config=md_config, seed=args.seed)
        # long request lines: a combined-stream URL with 1024 streams is ~16 kB
        runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=1.0,
                               max_line_size=65536)
        await runner.setup()
        await web.SockSite(runner, sock).start()
        runners.append(runner)
    stop = asyncio.Event()
    if state is not None:
        state.stop_event = stop
    watcher = None
    if args.parent_pid and state is None:  # SimState watches the parent itself when Binance runs
        watcher = asyncio.get_running_loop().create_task(_watch_parent(args.parent_pid, stop))
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"SIMULATOR READY {ports[args.exchange_list[0]]}", flush=True)
    if args.multi:
        print(f"SIMULATOR PORTS {orjson.dumps(ports).decode()}", flush=True)
    # nothing more on stdout: a parent that stops reading the pipe must never block us
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass
    await stop.wait()
    log.info("simulator stopping")
    if watcher is not None:
        watcher.cancel()
    for runner in runners:
        await runner.cleanup()
    return 0


def cli_main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m collector.simulator`` / ``collector simulate``; returns the exit code."""
    args = _parse_args(argv)
    logging.basicConfig(level=getattr(logging, str(args.log_level).upper(), logging.WARNING),
                        stream=sys.stderr, format="%(asctime)s simulator %(levelname)s %(message)s")
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("simulator bound to %s: it has no authentication; keep it off public networks", args.host)
    state = None
    if "binance" in args.exchange_list:
        config = SimConfig(ping_interval=args.ping_interval, trade_rate=args.trade_rate,
                           weight_limit=args.weight_limit, max_incoming_per_second=args.max_incoming_per_second)
        state = SimState(symbols=args.symbol_list, futures_symbols=args.futures_list, seed=args.seed,
                         config=config, parent_pid=args.parent_pid)
        if args.filler:
            state.add_filler_symbols(args.filler)
    runner_factory: Any = asyncio.run
    if not args.no_uvloop:
        try:
            import uvloop  # optional: faster event loop when installed

            runner_factory = uvloop.run
        except ImportError:
            pass
    try:
        return runner_factory(_serve(state, args))
    except KeyboardInterrupt:
        return 0
