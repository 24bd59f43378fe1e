"""Binance spot + USDⓈ-M futures market data: pure WebSocket/REST parsers and name/URL builders.

Why a separate module: :mod:`workers.exchanges.binance` is the trades/listings adapter; this
module turns every other public channel into the normalized types of :mod:`shared.marketdata`
(and :class:`BookMsg` for the book engine), without state, I/O or time.

Wire facts relied on (fixtures/ws/SOURCES.md sections 1-2, research/exchange-quirks.md A.1-A.2):
- combined streams wrap payloads in ``{"stream","data"}``; ``/ws/<stream>`` sends them bare.
- spot partial depth ``<s>@depth<N>`` is ``{lastUpdateId,bids,asks}`` with no symbol and no time:
  the symbol only lives in the stream name. On futures it is a ``depthUpdate`` with ``U/u/pu``.
- spot ``bookTicker`` has no ``e``; futures has ``e/E/T``.
- futures ``@trade`` with ``X`` != MARKET (insurance fund, ADL) is not a market trade.
- spot ``@aggTrade`` (aggregate id ``a``, contiguous per symbol) is its own tape, ``agg_trade``,
  beside ``@trade``; USD-M ``@aggTrade`` is the perp ``trade`` tape (no public ``@trade`` route).
- 2026 frames add ``st``, ``ps``, ``nq``, ``ap`` (futures): ignored.
- USD-M is routed: ``/public`` (depth, bookTicker) and ``/market`` (everything else).
"""

from __future__ import annotations

import re
from typing import Any, Callable, NamedTuple, Sequence

import orjson

from shared.marketdata import (
    Bbo, BookMsg, Funding, Kline, Level, Liquidation, LongShortRatio, OpenInterest, Ticker, Trade,
)
from shared.symbols import is_safe_native_symbol

from .base import KeepAlive, ParseResult, RestPoll, WsFeed, md_markets, unsupported_channels, with_topic
from .base import SymbolMap, entry_or, symbol_entry as _entry

EXCHANGE = "binance"

SPOT_WS_BASE = "wss://stream.binance.com:9443"
USDM_WS_BASE = "wss://fstream.binance.com"
SPOT_REST_BASE = "https://api.binance.com"
USDM_REST_BASE = "https://fapi.binance.com"

#: native symbol -> (canonical BASE-QUOTE, market) for one connection
Symbols = SymbolMap

# Shared read-only results (the transport never mutates a ParseResult).
_IGNORED = ParseResult()
_IGNORED_DATA = ParseResult(data=True)
_GARBAGE = ParseResult(parse_errors=1)
_MALFORMED = ParseResult(data=True, parse_errors=1)
_REJECTED = ParseResult(data=True, rejected=1)
_SHUTDOWN = ParseResult(rotate=True)
_SHARED = frozenset(map(id, (_IGNORED, _IGNORED_DATA, _GARBAGE, _MALFORMED, _REJECTED, _SHUTDOWN)))

_MAX_STREAM_NAME = 200
#: ``btcusdt@depth20@100ms`` / ``ethusdt@depth5``: a top-N book, not a diff
_PARTIAL_DEPTH_RE = re.compile(r"@depth(?:5|10|20)(?:@\d{1,4}ms)?\Z")
#: kline intervals Binance offers (spot adds 1s); anything else never reaches a stream key
KLINE_INTERVALS = frozenset({"1s", "1m", "3m", "5m", "15m", "30m", "1h", "2h", "4h", "6h", "8h", "12h",
                             "1d", "3d", "1w", "1M"})
#: periods of the /futures/data statistics endpoints
STAT_PERIODS = frozenset({"5m", "15m", "30m", "1h", "2h", "4h", "6h", "12h", "1d"})


# ---------------------------------------------------------------- small validators

def _udec(v: Any) -> bool:
    """An unsigned plain decimal string as Binance sends prices and quantities."""
    return (type(v) is str and 0 < len(v) <= 64 and v.isascii() and v[0] != "." and v[-1] != "."
            and v.replace(".", "", 1).isdigit())


def _sdec(v: Any) -> bool:
    """A decimal that may be negative (funding rate, price change)."""
    return type(v) is str and _udec(v[1:] if v[:1] == "-" else v)


def _ts(v: Any) -> bool:
    return type(v) is int and v >= 0


def _levels(raw: Any) -> list[Level] | None:
    """``[["price","qty"], ...]`` -> list of (price, qty); None if any entry is malformed."""
    if type(raw) is not list:
        return None
    out: list[Level] = []
    for lv in raw:
        # (older frames carried a third, ignored element)
        if type(lv) is not list or len(lv) < 2 or not _udec(lv[0]) or not _udec(lv[1]):
            return None
        out.append((lv[0], lv[1]))
    return out


def _error_text(msg: dict) -> str:
    code, text = msg.get("code"), msg.get("msg")
    text = text[:200] if isinstance(text, str) else repr(text)[:200]
    return f"binance error {code if type(code) is int else '?'}: {text}"


def _rest_body(body: Any, kind: type) -> tuple[Any, ParseResult | None]:
    """A REST body decoded and checked to be a ``kind`` (dict or list): (body, None), or (None, the
    result to return: malformed, or Binance's ``{"code", "msg"}`` error)."""
    ok, body = _loads(body)
    if not ok:
        return None, _MALFORMED
    if type(body) is dict and "code" in body and "msg" in body:
        return None, ParseResult(error=_error_text(body))
    if type(body) is not kind:
        return None, _MALFORMED
    return body, None


def _merge(results: list[ParseResult]) -> ParseResult:
    out = ParseResult(data=True)
    for r in results:
        out.events.extend(r.events)
        out.books.extend(r.books)
        out.rejected += r.rejected
        out.parse_errors += r.parse_errors
        out.rotate = out.rotate or r.rotate
    return out


def _loads(raw: Any) -> tuple[bool, Any]:
    """(ok, value): text/bytes are decoded, anything else is taken as already parsed."""
    if isinstance(raw, (str, bytes, bytearray, memoryview)):
        try:
            return True, orjson.loads(raw)
        except orjson.JSONDecodeError:
            return False, None
    return True, raw


# ---------------------------------------------------------------- WebSocket

def parse_message(raw: str | bytes, symbols: Symbols, rx_ns: int, rx_ms: int, *,
                  stream: str | None = None) -> ParseResult:
    """Pure: one Binance market-data frame -> normalized events / book messages.

    ``symbols`` maps native (``BTCUSDT``) -> (canonical, market); the market (spot | perp)
    is the connection's. ``stream`` names the stream of a raw ``/ws/<stream>`` connection
    (needed only for the symbol-less spot partial depth); combined frames carry their own.
    """
    if not isinstance(raw, (str, bytes, bytearray, memoryview)):
        return _GARBAGE
    ok, msg = _loads(raw)
    if not ok:
        return _GARBAGE
    if type(msg) is dict:
        if "stream" in msg and "data" in msg:
            name = msg["stream"]
            if type(name) is not str or len(name) > _MAX_STREAM_NAME:
                return _MALFORMED
            res = _payload(msg["data"], name, symbols, rx_ns, rx_ms)
            return with_topic(res, name, _SHARED) if res.data else res
        if "e" in msg or "lastUpdateId" in msg or ("u" in msg and "s" in msg):
            res = _payload(msg, stream, symbols, rx_ns, rx_ms)
            return with_topic(res, stream, _SHARED) if res.data and stream is not None else res
        if "id" in msg and "result" in msg:
            return _IGNORED  # SUBSCRIBE ack / LIST_SUBSCRIPTIONS reply
        if "code" in msg and "msg" in msg:
            return ParseResult(error=_error_text(msg))
        return _GARBAGE
    if type(msg) is list:  # bare all-market array (``/ws/!markPrice@arr``)
        return _payload(msg, stream, symbols, rx_ns, rx_ms)
    return _GARBAGE


def _payload(data: Any, stream: str | None, symbols: Symbols, rx_ns: int, rx_ms: int) -> ParseResult:
    if type(data) is dict:
        return _one(data, stream, symbols, rx_ns, rx_ms)
    if type(data) is list:  # ``!markPrice@arr``, ``!ticker@arr``: one object per symbol
        return _merge([_one(d, stream, symbols, rx_ns, rx_ms) if type(d) is dict else _MALFORMED
                       for d in data])
    return _MALFORMED


def _one(d: dict, stream: str | None, symbols: Symbols, rx_ns: int, rx_ms: int) -> ParseResult:
    e = d.get("e")
    handler = _HANDLERS.get(e) if type(e) is str else None
    if handler is not None:
        return handler(d, stream, symbols, rx_ns, rx_ms)
    if e is None:
        if "lastUpdateId" in d:
            return _spot_partial_depth(d, stream, symbols, rx_ns, rx_ms)
        if "u" in d and "b" in d and "a" in d:
            return _book_ticker(d, stream, symbols, rx_ns, rx_ms)
        return _MALFORMED
    if e == "serverShutdown":
        return _SHUTDOWN
    # another event type (miniTicker, contractInfo, ...): market data we do not normalize
    return _IGNORED_DATA if type(e) is str else _MALFORMED


def _trade(d: dict, stream: str | None, symbols: Symbols, rx_ns: int, rx_ms: int, *,
           agg: bool = False) -> ParseResult:
    native = d.get("s")
    entry = entry_or(symbols, native, _MALFORMED, _REJECTED)
    if type(entry) is ParseResult:
        return entry
    x = d.get("X")
    if x is not None and x != "MARKET":
        return _IGNORED_DATA  # futures insurance-fund / ADL fill: not a market trade
    tid = d.get("a" if agg else "t")
    price, qty, ts, maker = d.get("p"), d.get("q"), d.get("T"), d.get("m")
    if type(tid) is not int or not _ts(ts) or type(maker) is not bool or not _udec(price) or not _udec(qty):
        return _MALFORMED
    symbol, market = entry
    trade = Trade(exchange=EXCHANGE, market=market, symbol=symbol, native_symbol=native,
                  trade_id=str(tid), price=price, qty=qty,
                  side="sell" if maker else "buy",  # m = buyer is maker, so the taker sold
                  ts_exchange=ts, ts_receive=rx_ms, stream_type=trade_stream_type(market, agg))
    return ParseResult(events=[trade.to_wire(rx_ns)], data=True)


def _agg_trade(d: dict, stream: str | None, symbols: Symbols, rx_ns: int, rx_ms: int) -> ParseResult:
    return _trade(d, stream, symbols, rx_ns, rx_ms, agg=True)


def _event_ts(d: dict) -> int:
    """Transaction time ``T`` where sent (futures), else event time ``E``, else 0."""
    t = d.get("T")
    if _ts(t):
        return t
    e = d.get("E")
    return e if _ts(e) else 0


def _depth_update(d: dict, stream: str | None, symbols: Symbols, rx_ns: int, rx_ms: int) -> ParseResult:
    native = d.get("s")
    entry = entry_or(symbols, native, _MALFORMED, _REJECTED)
    if type(entry) is ParseResult:
        return entry
    symbol, market = entry
    first, last, pu = d.get("U"), d.get("u"), d.get("pu")
    bids, asks = _levels(d.get("b")), _levels(d.get("a"))
    partial = stream is not None and _PARTIAL_DEPTH_RE.search(stream) is not None
    if type(first) is not int or type(last) is not int or bids is None or asks is None:
        return _MALFORMED
    if pu is not None and type(pu) is not int:
        return _MALFORMED
    if market != "spot" and pu is None:
        return _MALFORMED  # a futures diff cannot be chained without pu
    book = BookMsg(exchange=EXCHANGE, market=market, symbol=symbol, native_symbol=native,
                   snapshot=partial, seq=last, bids=bids, asks=asks, ts_exchange=_event_ts(d),
                   ts_receive=rx_ms, prev_seq=pu if market != "spot" else None, first_seq=first)
    return ParseResult(books=[book], data=True)


def _spot_partial_depth(d: dict, stream: str | None, symbols: Symbols, rx_ns: int, rx_ms: int) -> ParseResult:
    if stream is None:
        return _MALFORMED  # no symbol anywhere: cannot be attributed
    prefix = stream.partition("@")[0]
    if not prefix.isascii():
        return _REJECTED
    native = prefix.upper()
    entry = symbols.get(native)
    if entry is None:
        return _REJECTED
    seq = d.get("lastUpdateId")
    bids, asks = _levels(d.get("bids")), _levels(d.get("asks"))
    if type(seq) is not int or bids is None or asks is None:
        return _MALFORMED
    symbol, market = entry
    book = BookMsg(exchange=EXCHANGE, market=market, symbol=symbol, native_symbol=native, snapshot=True,
                   seq=seq, bids=bids, asks=asks, ts_exchange=0, ts_receive=rx_ms)
    return ParseResult(books=[book], data=True)


def _book_ticker(d: dict, stream: str | None, symbols: Symbols, rx_ns: int, rx_ms: int) -> ParseResult:
    native = d.get("s")
    entry = entry_or(symbols, native, _MALFORMED, _REJECTED)
    if type(entry) is ParseResult:
        return entry
    u, b, bq, a, aq = d.get("u"), d.get("b"), d.get("B"), d.get("a"), d.get("A")
    if type(u) is not int or not (_udec(b) and _udec(bq) and _udec(a) and _udec(aq)):
        return _MALFORMED
    symbol, market = entry
    ev = Bbo(exchange=EXCHANGE, market=market, symbol=symbol, native_symbol=native,
             ts_exchange=_event_ts(d), ts_receive=rx_ms,
             bid_price=b, bid_qty=bq, ask_price=a, ask_qty=aq, update_id=u)
    return ParseResult(events=[ev.to_wire(rx_ns)], data=True)


def _kline(d: dict, stream: str | None, symbols: Symbols, rx_ns: int, rx_ms: int) -> ParseResult:
    k = d.get("k")
    if type(k) is not dict:
        return _MALFORMED
    native = d.get("s", k.get("s"))
    entry = entry_or(symbols, native, _MALFORMED, _REJECTED)
    if type(entry) is ParseResult:
        return entry
    interval, t0, t1, n, closed, ts = k.get("i"), k.get("t"), k.get("T"), k.get("n"), k.get("x"), d.get("E")
    o, h, lo, c, v, q = k.get("o"), k.get("h"), k.get("l"), k.get("c"), k.get("v"), k.get("q")
    if (interval not in KLINE_INTERVALS or not _ts(t0) or not _ts(t1) or type(n) is not int
            or type(closed) is not bool or not _ts(ts)
            or not all(_udec(x) for x in (o, h, lo, c, v, q))):
        return _MALFORMED
    symbol, market = entry
    ev = Kline(exchange=EXCHANGE, market=market, symbol=symbol, native_symbol=native, ts_exchange=ts,
               ts_receive=rx_ms, interval=interval, open_time=t0, close_time=t1, open=o, high=h, low=lo,
               close=c, volume=v, quote_volume=q, trades=n, closed=closed)
    return ParseResult(events=[ev.to_wire(rx_ns)], data=True)


def _opt(d: dict, key: str) -> str | None:
    """An optional unsigned decimal: "" when absent, None when present but malformed."""
    v = d.get(key)
    if v is None:
        return ""
    return v if _udec(v) else None


def _ticker(d: dict, stream: str | None, symbols: Symbols, rx_ns: int, rx_ms: int) -> ParseResult:
    native = d.get("s")
    entry = entry_or(symbols, native, _MALFORMED, _REJECTED)
    if type(entry) is ParseResult:
        return entry
    ts = d.get("E")
    c, o, h, lo, v, q, pct = d.get("c"), d.get("o"), d.get("h"), d.get("l"), d.get("v"), d.get("q"), d.get("P")
    # futures 24hrTicker has no best bid/ask
    bid, bid_q, ask, ask_q = _opt(d, "b"), _opt(d, "B"), _opt(d, "a"), _opt(d, "A")
    if (not _ts(ts) or not all(_udec(x) for x in (c, o, h, lo, v, q)) or not _sdec(pct)
            or None in (bid, bid_q, ask, ask_q)):
        return _MALFORMED
    symbol, market = entry
    ev = Ticker(exchange=EXCHANGE, market=market, symbol=symbol, native_symbol=native, ts_exchange=ts,
                ts_receive=rx_ms, last=c, open=o, high=h, low=lo, volume=v, quote_volume=q, change_pct=pct,
                bid_price=bid, bid_qty=bid_q, ask_price=ask, ask_qty=ask_q)
    return ParseResult(events=[ev.to_wire(rx_ns)], data=True)


def _mark_price(d: dict, stream: str | None, symbols: Symbols, rx_ns: int, rx_ms: int) -> ParseResult:
    native = d.get("s")
    entry = entry_or(symbols, native, _MALFORMED, _REJECTED)
    if type(entry) is ParseResult:
        return entry
    ts, mark, index, rate, nxt = d.get("E"), d.get("p"), d.get("i", ""), d.get("r"), d.get("T")
    # dated contracts send r "" and T 0
    if (not _ts(ts) or not _ts(nxt) or not _udec(mark) or not (index == "" or _udec(index))
            or not (rate == "" or _sdec(rate))):
        return _MALFORMED
    symbol, market = entry
    ev = Funding(exchange=EXCHANGE, market=market, symbol=symbol, native_symbol=native, ts_exchange=ts,
                 ts_receive=rx_ms, funding_rate=rate, next_funding_time=nxt, mark_price=mark, index_price=index)
    return ParseResult(events=[ev.to_wire(rx_ns)], data=True)


def _force_order(d: dict, stream: str | None, symbols: Symbols, rx_ns: int, rx_ms: int) -> ParseResult:
    o = d.get("o")
    if type(o) is not dict:
        return _MALFORMED
    native = o.get("s")
    entry = entry_or(symbols, native, _MALFORMED, _REJECTED)
    if type(entry) is ParseResult:
        return entry
    side, price, qty = o.get("S"), o.get("p"), o.get("q")
    ts = o.get("T", d.get("E"))
    if side not in ("BUY", "SELL") or not _udec(price) or not _udec(qty) or not _ts(ts):
        return _MALFORMED
    symbol, market = entry
    ev = Liquidation(exchange=EXCHANGE, market=market, symbol=symbol, native_symbol=native, ts_exchange=ts,
                     ts_receive=rx_ms, side=side.lower(),
                     # the liquidation order sells when a long is closed
                     position_side="long" if side == "SELL" else "short",
                     price=price, qty=qty,
                     sampled=True)  # only the latest liquidation per symbol per second is pushed
    return ParseResult(events=[ev.to_wire(rx_ns)], data=True)


_Handler = Callable[[dict, "str | None", Symbols, int, int], ParseResult]
_HANDLERS: dict[str, _Handler] = {
    "trade": _trade,
    "aggTrade": _agg_trade,
    "depthUpdate": _depth_update,
    "bookTicker": _book_ticker,
    "kline": _kline,
    "24hrTicker": _ticker,
    "markPriceUpdate": _mark_price,
    "forceOrder": _force_order,
}


# ---------------------------------------------------------------- REST parsers

def parse_depth_snapshot(body: Any, native: str, symbols: Symbols, rx_ms: int) -> ParseResult:
    """``/api/v3/depth`` or ``/fapi/v1/depth`` body (parsed or raw) for ``native`` -> a snapshot
    :class:`BookMsg` with ``seq = lastUpdateId`` (the body names no symbol; the request did)."""
    entry = symbols.get(native) if type(native) is str else None
    if entry is None:
        return _REJECTED
    body, failed = _rest_body(body, dict)
    if failed is not None:
        return failed
    seq = body.get("lastUpdateId")
    bids, asks = _levels(body.get("bids")), _levels(body.get("asks"))
    if type(seq) is not int or bids is None or asks is None:
        return _MALFORMED
    symbol, market = entry
    book = BookMsg(exchange=EXCHANGE, market=market, symbol=symbol, native_symbol=native, snapshot=True,
                   seq=seq, bids=bids, asks=asks, ts_exchange=_event_ts(body), ts_receive=rx_ms)
    return ParseResult(books=[book], data=True)


def parse_open_interest(body: Any, symbols: Symbols, rx_ns: int, rx_ms: int) -> ParseResult:
    """``/fapi/v1/openInterest`` -> :class:`OpenInterest` (contracts = base units on USD-M)."""
    body, failed = _rest_body(body, dict)
    if failed is not None:
        return failed
    native = body.get("symbol")
    entry = entry_or(symbols, native, _MALFORMED, _REJECTED)
    if type(entry) is ParseResult:
        return entry
    oi, ts = body.get("openInterest"), body.get("time")
    if not _udec(oi) or not _ts(ts):
        return _MALFORMED
    symbol, market = entry
    ev = OpenInterest(exchange=EXCHANGE, market=market, symbol=symbol, native_symbol=native, ts_exchange=ts,
                      ts_receive=rx_ms, open_interest=oi)
    return ParseResult(events=[ev.to_wire(rx_ns)], data=True)


#: LongShortRatio.kind -> /futures/data endpoint
LONG_SHORT_PATHS = {
    "top_position": "/futures/data/topLongShortPositionRatio",
    "top_account": "/futures/data/topLongShortAccountRatio",
    "global_account": "/futures/data/globalLongShortAccountRatio",
}


def _stat_ts(v: Any) -> int | None:
    """The statistics ``timestamp``: a digit string in the docs, an int in live bodies."""
    if _ts(v):
        return v
    if type(v) is str and 0 < len(v) <= 20 and v.isascii() and v.isdigit():
        return int(v)
    return None


def parse_long_short_ratio(body: Any, kind: str, period: str, symbols: Symbols, rx_ns: int,
                           rx_ms: int) -> ParseResult:
    """A ``/futures/data/*LongShort*Ratio`` body (list of samples) -> :class:`LongShortRatio` each.

    ``kind`` (top_position | top_account | global_account) and ``period`` are the request's."""
    if kind not in LONG_SHORT_PATHS or period not in STAT_PERIODS:
        raise ValueError(f"bad long/short kind or period: {kind!r} {period!r}")
    body, failed = _rest_body(body, list)
    if failed is not None:
        return failed
    out = ParseResult(data=True)
    for row in body:
        if type(row) is not dict:
            out.parse_errors += 1
            continue
        native = row.get("symbol")
        entry = _entry(symbols, native)
        if entry is None:
            out.rejected += 1
            continue
        ratio = row.get("longShortRatio")
        # COIN-M position ratios say longPosition/shortPosition
        long_pct = row.get("longAccount", row.get("longPosition"))
        short_pct = row.get("shortAccount", row.get("shortPosition"))
        ts = _stat_ts(row.get("timestamp"))
        if entry is False or ts is None or not all(_udec(x) for x in (ratio, long_pct, short_pct)):
            out.parse_errors += 1
            continue
        symbol, market = entry
        ev = LongShortRatio(exchange=EXCHANGE, market=market, symbol=symbol, native_symbol=native,
                            ts_exchange=ts, ts_receive=rx_ms, kind=kind, period=period, ratio=ratio,
                            long_pct=long_pct, short_pct=short_pct)
        out.events.append(ev.to_wire(rx_ns))
    return out


# ---------------------------------------------------------------- builders

#: channel -> stream-name suffix (``{native_lower}{suffix}``)
_STREAM_SUFFIX = {
    "trade": "@trade",
    "aggTrade": "@aggTrade",
    "depth": "@depth@100ms",
    "bookTicker": "@bookTicker",
    "ticker": "@ticker",
    "markPrice": "@markPrice@1s",
    "forceOrder": "@forceOrder",
}
CHANNELS = (*_STREAM_SUFFIX, "kline", "depth_partial")


def stream_name(native: str, channel: str, *, interval: str = "1m", levels: int = 20) -> str:
    """The stream of ``channel`` for one symbol: ``btcusdt@trade``, ``btcusdt@kline_1m``,
    ``btcusdt@depth20@100ms`` (``depth_partial``). Raises ValueError on a bad argument."""
    if not is_safe_native_symbol(native) or "@" in native:
        raise ValueError(f"unsafe native symbol {native[:40]!r}")
    low = native.lower()
    if channel == "kline":
        if interval not in KLINE_INTERVALS:
            raise ValueError(f"unknown kline interval {interval!r}")
        return f"{low}@kline_{interval}"
    if channel == "depth_partial":
        if levels not in (5, 10, 20):
            raise ValueError(f"partial depth levels must be 5, 10 or 20, not {levels!r}")
        return f"{low}@depth{levels}@100ms"
    suffix = _STREAM_SUFFIX.get(channel)
    if suffix is None:
        raise ValueError(f"unknown channel {channel!r} (known: {', '.join(CHANNELS)})")
    return low + suffix


def usdm_route(stream: str) -> str:
    """USD-M route of a stream: ``public`` for book data (depth, bookTicker), ``market`` for the
    rest. (The route of ``@trade`` is not documented; ``market`` is assumed.)"""
    name, _, kind = stream.partition("@")
    if name == "!bookTicker" or kind.startswith(("depth", "rpiDepth", "bookTicker")):
        return "public"
    return "market"


def usdm_ws_url(streams: Sequence[str], base: str = USDM_WS_BASE) -> str:
    """Combined-stream URL on the route the streams share. Mixing routes is an error: a stream
    on the wrong route is ACKed and then silent."""
    routes = {usdm_route(s) for s in streams}
    if len(routes) != 1:
        raise ValueError(f"streams must share one route, got {sorted(routes) or 'none'}")
    return f"{base}/{routes.pop()}/stream?streams={'/'.join(streams)}"


def usdm_ws_urls(streams: Sequence[str], base: str = USDM_WS_BASE) -> dict[str, str]:
    """route -> combined-stream URL, one per route the streams need."""
    by_route: dict[str, list[str]] = {}
    for s in streams:
        by_route.setdefault(usdm_route(s), []).append(s)
    return {route: usdm_ws_url(group, base) for route, group in by_route.items()}


def spot_ws_url(streams: Sequence[str], base: str = SPOT_WS_BASE) -> str:
    if not streams:
        raise ValueError("no streams")
    return f"{base}/stream?streams={'/'.join(streams)}"


class RestCall(NamedTuple):
    """One REST request and the weight it costs against the per-IP budget."""

    url: str
    weight: int


SPOT_DEPTH_LIMIT_MAX = 5000
USDM_DEPTH_LIMITS = (5, 10, 20, 50, 100, 500, 1000)


def spot_depth_weight(limit: int) -> int:
    """``/api/v3/depth``: 1-100 -> 5, 101-500 -> 25, 501-1000 -> 50, 1001-5000 -> 250."""
    if type(limit) is not int or not 1 <= limit <= SPOT_DEPTH_LIMIT_MAX:
        raise ValueError(f"spot depth limit must be 1..5000, not {limit!r}")
    if limit <= 100:
        return 5
    if limit <= 500:
        return 25
    if limit <= 1000:
        return 50
    return 250


def usdm_depth_weight(limit: int) -> int:
    """``/fapi/v1/depth``: 5/10/20/50 -> 2, 100 -> 5, 500 -> 10, 1000 -> 20."""
    if limit not in USDM_DEPTH_LIMITS or type(limit) is not int:
        raise ValueError(f"futures depth limit must be one of {USDM_DEPTH_LIMITS}, not {limit!r}")
    if limit <= 50:
        return 2
    return {100: 5, 500: 10, 1000: 20}[limit]


def _check_native(native: str) -> None:
    if not is_safe_native_symbol(native) or not native.isalnum():
        raise ValueError(f"unsafe native symbol {str(native)[:40]!r}")


def depth_request(native: str, market: str, limit: int = 1000) -> RestCall:
    """The depth snapshot request of ``native`` (spot: ``/api/v3/depth``, perp: ``/fapi/v1/depth``)."""
    _check_native(native)
    if market == "spot":
        return RestCall(f"{SPOT_REST_BASE}/api/v3/depth?symbol={native}&limit={limit}", spot_depth_weight(limit))
    if market in ("perp", "future"):
        return RestCall(f"{USDM_REST_BASE}/fapi/v1/depth?symbol={native}&limit={limit}", usdm_depth_weight(limit))
    raise ValueError(f"unknown market {market!r}")


def open_interest_request(native: str) -> RestCall:
    _check_native(native)
    return RestCall(f"{USDM_REST_BASE}/fapi/v1/openInterest?symbol={native}", 1)


def long_short_request(native: str, kind: str, period: str, limit: int = 1) -> RestCall:
    """A /futures/data long/short ratio request. These endpoints have their own IP limit
    (1000 requests / 5 min); 1 weight is charged to keep them visible in the budget."""
    _check_native(native)
    path = LONG_SHORT_PATHS.get(kind)
    if path is None or period not in STAT_PERIODS or type(limit) is not int or not 1 <= limit <= 500:
        raise ValueError(f"bad long/short request: {kind!r} {period!r} {limit!r}")
    return RestCall(f"{USDM_REST_BASE}{path}?symbol={native}&period={period}&limit={limit}", 1)


# ---------------------------------------------------------------- REST trade history (gap fill)
#
# Which tape a Binance trade stream feeds: spot ``@trade`` -> ``trade``, spot ``@aggTrade`` ->
# ``agg_trade``, USD-M ``@aggTrade`` -> ``trade`` (the perp tape is made of aggregates).
#
# After a reconnect the trades missed meanwhile are fetched by id, ascending, ``fromId`` inclusive:
# - spot ``<s>@trade`` (what we publish on spot): ``GET /api/v3/historicalTrades`` (weight 25,
#   limit <= 1000; rows ``{id, price, qty, quoteQty, time, isBuyerMaker, isBestMatch}``);
# - spot ``@aggTrade``: ``GET /api/v3/aggTrades`` (weight 4) and USD-M ``@aggTrade`` (what we
#   publish on perp): ``GET /fapi/v1/aggTrades`` (weight 20), limit <= 1000; rows ``{a, p, q, f, l,
#   T, m[, M]}``. Trade ids and aggregate ids both run without holes per symbol.

#: rows per page of the trade history endpoints (their maximum)
TRADES_PAGE_LIMIT = 1000


def trade_stream_type(market: str, agg: bool) -> str:
    """The stream type of a trade of ``market`` from ``@aggTrade`` (``agg``) or ``@trade``."""
    return "agg_trade" if agg and market == "spot" else "trade"


def trades_history_request(native: str, market: str, from_id: int, limit: int = TRADES_PAGE_LIMIT, *,
                           agg: bool) -> RestCall:
    """One page of trades from ``from_id`` (inclusive, oldest first). ``agg``: aggregate trades
    (USD-M always: it has no public historicalTrades without an API key)."""
    _check_native(native)
    if type(from_id) is not int or from_id < 0 or type(limit) is not int or not 1 <= limit <= TRADES_PAGE_LIMIT:
        raise ValueError(f"bad trade history request: fromId {from_id!r} limit {limit!r}")
    query = f"symbol={native}&fromId={from_id}&limit={limit}"
    if market == "spot":
        if agg:
            return RestCall(f"{SPOT_REST_BASE}/api/v3/aggTrades?{query}", 4)
        return RestCall(f"{SPOT_REST_BASE}/api/v3/historicalTrades?{query}", 25)
    if market in ("perp", "future"):
        return RestCall(f"{USDM_REST_BASE}/fapi/v1/aggTrades?{query}", 20)
    raise ValueError(f"unknown market {market!r}")


def parse_rest_trades(body: Any, native: str, symbols: Symbols, rx_ns: int, rx_ms: int, *,
                      agg: bool) -> ParseResult:
    """A historicalTrades / aggTrades page -> Trade events (``source`` rest), in the body's order
    (oldest first). Same trade ids, sides, stream and dedup keys as the WebSocket trades of the
    stream (spot aggregates: the ``agg_trade`` tape)."""
    entry = symbols.get(native) if type(native) is str else None
    if entry is None:
        return _REJECTED
    body, failed = _rest_body(body, list)
    if failed is not None:
        return failed
    symbol, market = entry
    out = ParseResult(data=True)
    stream_type = trade_stream_type(market, agg)
    keys = ("a", "p", "q", "T", "m") if agg else ("id", "price", "qty", "time", "isBuyerMaker")
    for row in body:
        if type(row) is not dict:
            out.parse_errors += 1
            continue
        tid, price, qty, ts, maker = (row.get(k) for k in keys)
        if type(tid) is not int or not _ts(ts) or type(maker) is not bool or not _udec(price) or not _udec(qty):
            out.parse_errors += 1
            continue
        out.events.append(Trade(exchange=EXCHANGE, market=market, symbol=symbol, native_symbol=native,
                                trade_id=str(tid), price=price, qty=qty, side="sell" if maker else "buy",
                                ts_exchange=ts, ts_receive=rx_ms, source="rest",
                                stream_type=stream_type).to_wire(rx_ns))
    return out


def trade_stream_native(stream: str) -> tuple[str, bool] | None:
    """(native symbol, aggregate?) of a trade stream (``btcusdt@trade`` / ``@aggTrade``), else None."""
    name, _, kind = stream.partition("@")
    if kind not in ("trade", "aggTrade") or not name.isascii() or not name.isalnum():
        return None
    return name.upper(), kind == "aggTrade"


# ---------------------------------------------------------------- market-data runtime glue
#
# What the worker's market-data runner needs (declared per exchange, see base.MARKET_DATA_MODULES):
# spot = one feed on stream.binance.com; USD-M = two feeds, /public (depth, bookTicker) and
# /market (the rest), because a stream on the wrong route is ACKed and then silent. Streams are
# named in the URL (combined streams); SUBSCRIBE/UNSUBSCRIBE resubscribe one stream live.

#: normalized types per market
MD_SUPPORTED: dict[str, tuple[str, ...]] = {
    "spot": ("trade", "agg_trade", "book", "bbo", "ticker", "kline"),
    "perp": ("trade", "book", "bbo", "ticker", "kline", "funding", "open_interest", "liquidation", "long_short"),
}
#: channel -> stream kind per market (USD-M trades: aggTrade, whose route is documented; spot has
#: both tapes, the aggregates as their own type)
_MD_STREAMS = {
    "spot": {"trade": "trade", "agg_trade": "aggTrade", "book": "depth", "bbo": "bookTicker", "ticker": "ticker"},
    "perp": {"trade": "aggTrade", "book": "depth", "bbo": "bookTicker", "ticker": "ticker",
             "funding": "markPrice", "liquidation": "forceOrder"},
}
#: spot REST weight budget (per IP, per minute); snapshots may use this share of it per second
REST_WEIGHT_LIMIT, REST_WEIGHT_WINDOW = 6000, 60.0
SNAPSHOT_SHARE = 0.4
#: /futures/data/* have their own IP limit: 1000 requests / 5 min; polls stay below 2.5/s
LONG_SHORT_MAX_RATE = 2.5


def _md_markets(cfg: Any) -> list[str]:
    return md_markets(cfg, MD_SUPPORTED)


def md_symbols(cfg: Any, market: str) -> dict[str, tuple[str, str]]:
    """native (``BTCUSDT``) -> (canonical, market) for the configured symbols on ``market``."""
    out: dict[str, tuple[str, str]] = {}
    for sym in cfg.symbols:
        base, _, quote = sym.partition("-")
        out.setdefault(base + quote, (sym, market))
    return out


def market_data_problem(cfg: Any) -> str | None:
    """``setting: why`` when the market-data settings ask for something Binance does not have."""
    markets = _md_markets(cfg)
    hint = ("agg_trade is spot only: USDⓈ-M trades are aggregates already (trade)"
            if "agg_trade" in (cfg.channels or ()) else "")
    problem = unsupported_channels(cfg, EXCHANGE, MD_SUPPORTED, hint)
    if problem is not None:
        return problem
    have = {c for m in markets for c in MD_SUPPORTED[m]}
    if "perp" in markets and "kline" in cfg.md_channels(have) and "1s" in cfg.kline_intervals:
        return "kline_intervals: 1s klines exist on binance spot only"
    return None


def _streams(native: str, market: str, channels: list[str], intervals: list[str]) -> list[str]:
    out = []
    for c in channels:
        if c == "kline":
            out.extend(stream_name(native, "kline", interval=i) for i in intervals
                       if not (market != "spot" and i == "1s"))
        elif c in _MD_STREAMS[market]:
            out.append(stream_name(native, _MD_STREAMS[market][c]))
    return out


def market_data_feeds(cfg: Any) -> list[tuple[WsFeed, list[str]]]:
    """(feed, streams): spot on stream.binance.com; USD-M on fstream /public and /market."""
    feeds: list[tuple[WsFeed, list[str]]] = []
    for market in _md_markets(cfg):
        channels = cfg.md_channels(MD_SUPPORTED[market])
        symbols = md_symbols(cfg, market)
        streams = [st for native in symbols for st in _streams(native, market, channels, cfg.kline_intervals)]
        if not streams:
            continue
        if market == "spot":
            feeds.append((BinanceMdFeed("spot", symbols, None, "book" in channels), streams))
            continue
        by_route: dict[str, list[str]] = {}
        for st in streams:
            by_route.setdefault(usdm_route(st), []).append(st)
        for route in ("public", "market"):
            if by_route.get(route):
                feeds.append((BinanceMdFeed("perp", symbols, route, route == "public" and "book" in channels),
                              by_route[route]))
    for feed, streams in feeds:
        # liquidations alone can be silent for minutes and Binance's pings never reach the reader:
        # such a connection is watched by our own ping/pong instead of the stale timeout
        feed.quiet = all(st.endswith("@forceOrder") for st in streams)
    return feeds


def market_data_polls(cfg: Any) -> list[RestPoll]:
    """USD-M open interest and the three long/short ratios, per perp symbol."""
    if "perp" not in _md_markets(cfg):
        return []
    channels = cfg.md_channels(MD_SUPPORTED["perp"])
    symbols = md_symbols(cfg, "perp")
    polls: list[RestPoll] = []
    if "open_interest" in channels:
        for native in symbols:
            call = open_interest_request(native)
            polls.append(RestPoll(call.url, call.weight, cfg.rest_poll_interval,
                                  _oi_parser(symbols), f"open_interest {native}"))
    if "long_short" in channels:
        period = cfg.long_short_period
        n = len(symbols) * len(LONG_SHORT_PATHS)
        # stay under the statistics endpoints' own IP limit however many symbols are configured
        interval = max(cfg.rest_poll_interval, n / LONG_SHORT_MAX_RATE)
        for native in symbols:
            for kind in LONG_SHORT_PATHS:
                call = long_short_request(native, kind, period, limit=1)
                polls.append(RestPoll(call.url, call.weight, interval, _ls_parser(kind, period, symbols),
                                      f"long_short_{kind} {native}"))
    return polls


def _oi_parser(symbols: Symbols) -> Callable[[Any, int, int], ParseResult]:
    return lambda body, rx_ns, rx_ms: parse_open_interest(body, symbols, rx_ns, rx_ms)


def _ls_parser(kind: str, period: str, symbols: Symbols) -> Callable[[Any, int, int], ParseResult]:
    return lambda body, rx_ns, rx_ms: parse_long_short_ratio(body, kind, period, symbols, rx_ns, rx_ms)


def snapshot_limit(market: str, depth: int) -> int:
    """The REST depth ``limit`` covering a local book of ``depth`` levels (spot: 1-5000; USD-M:
    the smallest allowed value >= depth, at most 1000)."""
    if market == "spot":
        return max(1, min(SPOT_DEPTH_LIMIT_MAX, depth))
    return next((lim for lim in USDM_DEPTH_LIMITS if lim >= depth), USDM_DEPTH_LIMITS[-1])


def book_snapshot_request(market: str, native: str, cfg: Any) -> RestPoll | None:
    """The depth snapshot a Binance book is synced from (weight by limit)."""
    if market not in MD_SUPPORTED:
        return None
    symbols = md_symbols(cfg, market)
    if native not in symbols:
        return None
    call = depth_request(native, market, snapshot_limit(market, cfg.book_depth))
    return RestPoll(call.url, call.weight, 0.0,
                    lambda body, rx_ns, rx_ms: parse_depth_snapshot(body, native, symbols, rx_ms),
                    f"depth {market} {native}")


def book_rest_budget(cfg: Any) -> tuple[int, float, float]:
    """(weight of the heaviest snapshot, weight/s snapshots may use, burst): 40 % of the IP's
    weight per second, a quarter of the minute's budget at once (a start-up sync of many books
    must never eat the listing polls' share)."""
    weights = [depth_request("BTCUSDT", m, snapshot_limit(m, cfg.book_depth)).weight for m in _md_markets(cfg)]
    rate = REST_WEIGHT_LIMIT / REST_WEIGHT_WINDOW * SNAPSHOT_SHARE
    return max(weights or [1]), rate, REST_WEIGHT_LIMIT * 0.25


class BinanceMdFeed(WsFeed):
    """One Binance market-data connection group: spot, or one USD-M route (public | market).

    Keep-alive by the server's ping frames (aiohttp answers them). Binance counts every incoming
    control message (spot 5/s, USD-M 10/s): the transport paces sends below that."""

    name = "binance"
    # (interval: our protocol pings when the feed is quiet; unsolicited pings are allowed)
    keepalive = KeepAlive(server_pings=True, client_ping=False, interval=30.0)
    max_streams_per_connection = 1024
    max_connection_lifetime = 24 * 3600.0
    resubscribe_rate = 1.0
    #: 300 connection attempts per 5 minutes per IP
    connect_rate = 1.0

    def __init__(self, market: str, symbols: Symbols, route: str | None = None, books: bool = False) -> None:
        self.market = market
        self.symbols = symbols
        self.route = route
        self.books = books
        self.label = f"md {market}" + (f" {route}" if route else "")
        self.max_send_rate = 5.0 if market == "spot" else 10.0
        self.default_ws_base = SPOT_WS_BASE if market == "spot" else USDM_WS_BASE
        self._req_id = 0

    def ws_url(self, streams: Sequence[str]) -> str:
        return spot_ws_url(streams) if self.market == "spot" else usdm_ws_url(streams)

    def parse_ws_message(self, raw: str | bytes, rx_ns: int, rx_ms: int) -> ParseResult:
        return parse_message(raw, self.symbols, rx_ns, rx_ms)

    def _control(self, method: str, streams: Sequence[str]) -> str:
        self._req_id += 1
        return orjson.dumps({"method": method, "params": list(streams), "id": self._req_id}).decode()

    def resubscribe_messages(self, streams: Sequence[str]) -> list[str] | None:
        return [self._control("UNSUBSCRIBE", streams), self._control("SUBSCRIBE", streams)]

    def watch_topic(self, stream: str) -> bool:
        # pushed on a clock whatever the activity: mark price every 1 s, klines every 1-2 s,
        # the rolling 24 h ticker every 1 s; diffs, trades and liquidations are event-driven
        kind = stream.partition("@")[2]
        return kind.startswith(("markPrice", "kline_")) or kind == "ticker"

    def book_stream(self, market: str, native: str) -> str | None:
        if not self.books or market != self.market or native not in self.symbols:
            return None
        return stream_name(native, "depth")
