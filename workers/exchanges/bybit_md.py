"""Bybit v5 public market data: parsers of one category connection (spot or linear), the ticker
merger, and subscribe / URL builders.

Wire rules (fixtures/ws/SOURCES.md section 5, research/exchange-quirks.md A.4):
- One connection per category: ``wss://stream.bybit.com/v5/public/{spot|linear|inverse|option}``.
- Subscribe ``{"op":"subscribe","args":[topics]}``: spot takes at most 10 args per request; the
  ``args`` of one connection total at most 21,000 characters. Keep-alive: send ``{"op":"ping"}``
  every 20 s (the server cuts a connection after 10 min without ping or data).
- Acks and pongs differ per category: spot ``ret_msg: "subscribe"``, linear ``ret_msg: ""``,
  option/spread ``{"success", "conn_id", "data": {"failTopics", "successTopics"}, "type":
  "COMMAND_RESP"}`` and pong ``{"op": "pong", "args": [ts]}``. ``success: false`` is a failure.
- Pushes ``{"topic", "type": snapshot|delta, "ts", "data", ...}``; prices/sizes are strings,
  timestamps integers (ms), key order differs per category (never relied on).
- ``orderbook.{depth}.{symbol}``: snapshot then deltas (``u`` = update id, delta ``u`` = previous
  + 1); a snapshot at any time, and any message with ``u`` == 1 (service restart), replaces the
  book. Sequence rules are applied by the book engine, not here.
- ``tickers.{symbol}``: linear/inverse send a snapshot then deltas holding only the changed
  fields, so a parser object (:class:`BybitParser`, with a :class:`BybitTickerMerger`) keeps
  the last full ticker per symbol; spot tickers are snapshots only.
- ``allLiquidation.{symbol}``: ``S`` is the side of the liquidated POSITION (Buy = a long was
  liquidated), so the liquidation order's side is the opposite.
- ``kline.{interval}.{symbol}`` (spot and linear; intervals 1 3 5 15 30 60 120 240 360 720 D W M,
  pushed every 1-60 s): ``data`` is a list of candles that name no symbol (the topic does);
  ``confirm`` true = the candle's final update.
- Long/short account ratio: REST ``GET /v5/market/account-ratio`` (linear, inverse; periods 5min
  15min 30min 1h 4h 1d): ``buyRatio`` / ``sellRatio`` = shares of holders long / short, newest
  first. The long/short ratio itself is not sent: it is buyRatio / sellRatio (Bybit's definition).
"""

from __future__ import annotations

from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation
from typing import Any, Callable, Sequence

import orjson

from shared.marketdata import BookMsg, Funding, Kline, Level, Liquidation, LongShortRatio, OpenInterest, Ticker

from .base import (
    SymbolMap, entry_or, symbol_entry as _entry,
    KeepAlive, ParseResult, RestPoll, WsFeed, interval_and_period_problem, md_markets, short_repr,
    unsupported_channels, with_topic,
)
from .okx_md import (
    TradeRow, is_decimal_str, is_safe_id, ms_int, opt_decimal, rest_envelope, rest_trade_rows, seq_int, trade_from_row,
)

EXCHANGE = "bybit"

WS_BASE = "wss://stream.bybit.com/v5/public/"
CATEGORIES = ("spot", "linear", "inverse", "option")
#: our market -> Bybit category of a connection
CATEGORY_OF_MARKET = {"spot": "spot", "perp": "linear"}

#: the JSON keep-alive, every PING_INTERVAL seconds
PING = '{"op":"ping"}'
PING_INTERVAL = 20.0
#: spot: at most 10 args per subscribe request (docs)
SPOT_MAX_ARGS_PER_REQUEST = 10
#: other categories: no documented cap per request; batches keep one refusal small
MAX_ARGS_PER_REQUEST = 100
#: total characters of the subscribed args of one connection (docs)
MAX_ARGS_CHARS = 21_000
ORDERBOOK_DEPTHS = {"spot": (1, 50, 200, 1000), "linear": (1, 50, 200, 1000),
                    "inverse": (1, 50, 200, 1000), "option": (25, 100)}
#: Bybit kline interval -> ours (Kline.interval); D/W/M candles start at UTC boundaries
KLINE_INTERVALS = {"1": "1m", "3": "3m", "5": "5m", "15": "15m", "30": "30m", "60": "1h", "120": "2h",
                   "240": "4h", "360": "6h", "720": "12h", "D": "1d", "W": "1w", "M": "1M"}
INTERVAL_OF = {v: k for k, v in KLINE_INTERVALS.items()}

REST_BASE = "https://api.bybit.com"
ACCOUNT_RATIO_PATH = "/v5/market/account-ratio"
#: account-ratio period -> ours (LongShortRatio.period)
ACCOUNT_RATIO_PERIODS = {"5min": "5m", "15min": "15m", "30min": "30m", "1h": "1h", "4h": "4h", "1d": "1d"}
ACCOUNT_RATIO_PERIOD_OF = {v: k for k, v in ACCOUNT_RATIO_PERIODS.items()}
#: decimals of the computed long/short ratio (buyRatio / sellRatio); Bybit's shares have 4
RATIO_PLACES = Decimal("0.0001")

_IGNORED = ParseResult()
_IGNORED_DATA = ParseResult(data=True)
_GARBAGE = ParseResult(parse_errors=1)
_MALFORMED_DATA = ParseResult(data=True, parse_errors=1)
_REJECTED = ParseResult(data=True, rejected=1)
_SHARED = frozenset(map(id, (_IGNORED, _IGNORED_DATA, _GARBAGE, _MALFORMED_DATA, _REJECTED)))



# ---- builders ----

def ws_url(category: str) -> str:
    """The public stream URL of a category (spot, linear, inverse, option)."""
    if category not in CATEGORIES:
        raise ValueError(f"bybit: unknown category {category!r}")
    return WS_BASE + category


def trade_topic(native: str) -> str:
    return f"publicTrade.{native}"


#: trade rows: WebSocket publicTrade and REST recent-trade spell the fields differently
WS_TRADE = TradeRow("i", "p", "v", "S", "T", {"Buy": "buy", "Sell": "sell"})
REST_TRADE = TradeRow("execId", "price", "size", "side", "time", {"Buy": "buy", "Sell": "sell"})


def orderbook_topic(native: str, depth: int = 50) -> str:
    return f"orderbook.{depth}.{native}"


def ticker_topic(native: str) -> str:
    return f"tickers.{native}"


def kline_topic(native: str, interval: str) -> str:
    """``kline.{bybit interval}.{symbol}`` for one of our intervals (``1h`` -> ``kline.60.BTCUSDT``)."""
    bybit = INTERVAL_OF.get(interval)
    if bybit is None:
        raise ValueError(f"bybit: no kline interval {interval!r} (have {', '.join(INTERVAL_OF)})")
    return f"kline.{bybit}.{native}"


def account_ratio_url(native: str, period: str = "5m", category: str = "linear", limit: int = 1) -> str:
    """GET /v5/market/account-ratio for one symbol; ``period`` in our spelling (5m, 1h ...)."""
    bybit = ACCOUNT_RATIO_PERIOD_OF.get(period)
    if bybit is None:
        raise ValueError(f"bybit: account-ratio period must be one of {', '.join(ACCOUNT_RATIO_PERIOD_OF)}")
    return f"{REST_BASE}{ACCOUNT_RATIO_PATH}?category={category}&symbol={native}&period={bybit}&limit={limit}"


def liquidation_topic(native: str) -> str:
    """``allLiquidation`` (linear and inverse only); the legacy ``liquidation`` topic is superseded."""
    return f"allLiquidation.{native}"


def args_chars(topics: Sequence[str]) -> int:
    """Characters ``topics`` take in a connection's args (counted as the JSON array, which is
    at least what Bybit counts)."""
    return len(orjson.dumps(list(topics)))


def split_connections(topics: Sequence[str], max_chars: int = MAX_ARGS_CHARS) -> list[list[str]]:
    """Topics grouped into connections whose args stay within ``max_chars`` each."""
    groups: list[list[str]] = []
    group: list[str] = []
    size = 2
    for topic in topics:
        cost = len(orjson.dumps(topic)) + 1
        if cost + 2 > max_chars:
            raise ValueError("bybit: one topic is longer than a connection's args limit")
        if group and size + cost > max_chars:
            groups.append(group)
            group, size = [], 2
        group.append(topic)
        size += cost
    if group:
        groups.append(group)
    return groups


def subscribe_messages(topics: Sequence[str], category: str, op: str = "subscribe",
                       req_id_prefix: str | None = None) -> list[str]:
    """(Un)subscribe requests for ONE connection of ``category``; spot requests carry at most
    10 args. Raises ValueError when the topics exceed the per-connection args limit (use
    :func:`split_connections` first)."""
    if category not in CATEGORIES:
        raise ValueError(f"bybit: unknown category {category!r}")
    if args_chars(topics) > MAX_ARGS_CHARS:
        raise ValueError(f"bybit: args exceed {MAX_ARGS_CHARS} characters for one connection")
    per_request = SPOT_MAX_ARGS_PER_REQUEST if category == "spot" else MAX_ARGS_PER_REQUEST
    out = []
    for n, start in enumerate(range(0, len(topics), per_request)):
        request: dict[str, Any] = {"op": op, "args": list(topics[start:start + per_request])}
        if req_id_prefix is not None:
            request["req_id"] = f"{req_id_prefix}{n}"
        out.append(orjson.dumps(request).decode())
    return out


# ---- ticker merge ----

#: Bybit ticker field -> Ticker attribute (kept per symbol; other fields are dropped, bounding
#: the cache). price24hPcnt is handled apart (a fraction, published as a percentage).
_TICKER_FIELDS = {
    "lastPrice": "last", "prevPrice24h": "open", "highPrice24h": "high", "lowPrice24h": "low",
    "volume24h": "volume", "turnover24h": "quote_volume", "bid1Price": "bid_price",
    "bid1Size": "bid_qty", "ask1Price": "ask_price", "ask1Size": "ask_qty", "markPrice": "mark_price",
    "indexPrice": "index_price", "fundingRate": "funding_rate", "openInterest": "open_interest",
}
_KEPT = (*_TICKER_FIELDS, "price24hPcnt", "nextFundingTime", "openInterestValue")
#: what a tickers topic is published as: Ticker, and (linear) OpenInterest when the open interest
#: changed, Funding when the funding rate or time changed (deltas carry only changed fields)
TICKER_TYPES = frozenset({"ticker", "open_interest", "funding"})
_TICKER_ONLY = frozenset({"ticker"})


class BybitTickerMerger:
    """Last full ticker per symbol, so a delta (only the changed fields) becomes a full Ticker.

    Bounded: only symbols of the configured map get an entry (others are rejected before),
    entries hold only the fields we publish, and at most ``max_symbols`` entries are kept (the
    oldest is dropped; its next delta is then skipped until a snapshot comes)."""

    def __init__(self, max_symbols: int) -> None:
        self.max_symbols = max(1, max_symbols)
        self._last: dict[str, dict[str, str]] = {}

    def __len__(self) -> int:
        return len(self._last)

    def merge(self, native: str, snapshot: bool, fields: dict[str, str]) -> dict[str, str] | None:
        """The merged fields after this message; None for a delta with no snapshot before it."""
        if snapshot:
            self._last.pop(native, None)
            if len(self._last) >= self.max_symbols:
                self._last.pop(next(iter(self._last)))
            self._last[native] = fields
            return fields
        last = self._last.get(native)
        if last is None:
            return None
        last.update(fields)
        return last

    def clear(self) -> None:
        """Forget everything (a new connection starts with snapshots)."""
        self._last.clear()


def _ticker_fields(d: dict) -> dict[str, str] | None:
    """The kept fields present in ``d`` after validation; None if any is malformed."""
    out = {}
    for key in _KEPT:
        if key in d:
            value = d[key]
            if key == "nextFundingTime":
                if value != "" and ms_int(value) is None:
                    return None
            elif opt_decimal(value) is None:
                return None
            out[key] = "" if value is None else value
    return out


def _pct(fraction: str) -> str:
    """Bybit's price24hPcnt is a fraction (0.023333 = 2.3333 %); Ticker.change_pct is a
    percentage as Binance sends it. Shifted by two decimal places exactly (no float)."""
    if fraction == "":
        return ""
    try:
        return format(Decimal(fraction).scaleb(2), "f")
    except InvalidOperation:
        return ""


# ---- parsing ----

class BybitParser:
    """The parser of one category connection: the symbol map plus the ticker merge state.
    ``ticker_types``: which of :data:`TICKER_TYPES` the tickers topics are published as."""

    def __init__(self, symbols: SymbolMap, ticker_types: frozenset[str] = _TICKER_ONLY) -> None:
        self.symbols = symbols
        self.tickers = BybitTickerMerger(len(symbols))
        self.ticker_types = ticker_types

    def parse(self, raw: str | bytes, rx_ns: int, rx_ms: int) -> ParseResult:
        return parse_message(raw, self.symbols, rx_ns, rx_ms, self.tickers, self.ticker_types)


def parse_message(raw: str | bytes, symbols: SymbolMap, rx_ns: int, rx_ms: int,
                  tickers: BybitTickerMerger | None = None,
                  ticker_types: frozenset[str] = _TICKER_ONLY) -> ParseResult:
    """One Bybit frame -> events, book messages and flags. Pure except for ``tickers`` (the merge
    state); without it a ticker delta cannot be completed and is skipped."""
    if not isinstance(raw, (str, bytes)):
        return _GARBAGE
    try:
        msg = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return _GARBAGE
    if type(msg) is not dict:
        return _GARBAGE
    topic = msg.get("topic")
    if topic is None:
        return _parse_control(msg)
    if type(topic) is not str:
        return _GARBAGE
    res = _parse_topic(msg, topic, symbols, rx_ns, rx_ms, tickers, ticker_types)
    return with_topic(res, topic, _SHARED) if res.data and len(topic) <= 200 else res


def _parse_topic(msg: dict, topic: str, symbols: SymbolMap, rx_ns: int, rx_ms: int,
                 tickers: BybitTickerMerger | None, ticker_types: frozenset[str]) -> ParseResult:
    kind, _, rest = topic.partition(".")
    if kind == "publicTrade":
        return _parse_trades(msg, symbols, rx_ns, rx_ms)
    if kind == "orderbook":
        return _parse_book(msg, symbols, rx_ms)
    if kind == "tickers":
        return _parse_ticker(msg, symbols, rx_ns, rx_ms, tickers, ticker_types)
    if kind == "allLiquidation":
        return _parse_all_liquidation(msg, symbols, rx_ns, rx_ms)
    if kind == "liquidation":
        return _parse_legacy_liquidation(msg, symbols, rx_ns, rx_ms)
    if kind == "kline":
        return _parse_kline(msg, rest, symbols, rx_ns, rx_ms)
    return _IGNORED_DATA  # another public topic (lt, insurance ...): market data we do not normalize


def _parse_control(msg: dict) -> ParseResult:
    """Acks, pongs, command responses; only an explicit failure is an error."""
    success = msg.get("success")
    if success is False:
        return ParseResult(error=f"bybit error ({short_repr(msg.get('op'))}): {short_repr(msg.get('ret_msg'))}")
    data = msg.get("data")
    if type(data) is dict and data.get("failTopics"):
        return ParseResult(error=f"bybit error: failed topics {short_repr(data.get('failTopics'))}")
    if success is True or "op" in msg:
        return _IGNORED  # subscribe acks (all categories), pongs ("ret_msg":"pong" / "op":"pong")
    return _GARBAGE


def _parse_trades(msg: dict, symbols: SymbolMap, rx_ns: int, rx_ms: int) -> ParseResult:
    data = msg.get("data")
    if type(data) is not list:
        return _MALFORMED_DATA
    events, rejected, errors = [], 0, 0
    for d in data:
        if type(d) is not dict:
            errors += 1
            continue
        entry = _entry(symbols, d.get("s"))
        if entry is False:
            errors += 1
            continue
        if entry is None:
            rejected += 1
            continue
        # S is the taker's side; BT (block trade) and RPI flags are not distinguished
        ev = trade_from_row(d, WS_TRADE, EXCHANGE, d["s"], entry, rx_ns, rx_ms)
        if ev is None:
            errors += 1
        else:
            events.append(ev)
    return ParseResult(events=events, data=True, rejected=rejected, parse_errors=errors)


def _levels(raw: Any) -> list[Level] | None:
    if type(raw) is not list:
        return None
    out: list[Level] = []
    for lvl in raw:
        if type(lvl) is not list or len(lvl) != 2 or not is_decimal_str(lvl[0]) or not is_decimal_str(lvl[1]):
            return None  # a book with a skipped level would be wrong: refuse the message
        out.append((lvl[0], lvl[1]))
    return out


def _parse_book(msg: dict, symbols: SymbolMap, rx_ms: int) -> ParseResult:
    d, kind, ts = msg.get("data"), msg.get("type"), ms_int(msg.get("ts"))
    if type(d) is not dict:
        return _MALFORMED_DATA
    entry = entry_or(symbols, d.get("s"), _MALFORMED_DATA, _REJECTED)
    if type(entry) is ParseResult:
        return entry
    bids, asks, u = _levels(d.get("b")), _levels(d.get("a")), seq_int(d.get("u"))
    if bids is None or asks is None or u is None or ts is None or kind not in ("snapshot", "delta"):
        return _MALFORMED_DATA
    book = BookMsg(exchange=EXCHANGE, market=entry[1], symbol=entry[0], native_symbol=d["s"],
                   # u == 1: the service restarted and this message is a full book
                   snapshot=kind == "snapshot" or u == 1, seq=u, bids=bids, asks=asks,
                   ts_exchange=ts, ts_receive=rx_ms)
    return ParseResult(books=[book], data=True)


def _parse_ticker(msg: dict, symbols: SymbolMap, rx_ns: int, rx_ms: int,
                  tickers: BybitTickerMerger | None, ticker_types: frozenset[str] = _TICKER_ONLY) -> ParseResult:
    d, kind, ts = msg.get("data"), msg.get("type"), ms_int(msg.get("ts"))
    cs = msg.get("cs", 0)
    if type(d) is not dict:
        return _MALFORMED_DATA
    entry = entry_or(symbols, d.get("symbol"), _MALFORMED_DATA, _REJECTED)
    if type(entry) is ParseResult:
        return entry
    fields = _ticker_fields(d)
    if fields is None or ts is None or kind not in ("snapshot", "delta") or seq_int(cs) is None:
        return _MALFORMED_DATA
    native = d["symbol"]
    if tickers is not None:
        merged = tickers.merge(native, kind == "snapshot", fields)
    else:
        merged = fields if kind == "snapshot" else None
    if merged is None:
        return _IGNORED_DATA  # a delta before any snapshot: nothing complete to publish
    next_funding = ms_int(merged.get("nextFundingTime", "")) or 0
    events = []
    if "ticker" in ticker_types:
        values = {attr: merged.get(key, "") for key, attr in _TICKER_FIELDS.items()}
        ticker = Ticker(exchange=EXCHANGE, market=entry[1], symbol=entry[0], native_symbol=native, ts_exchange=ts,
                        ts_receive=rx_ms, change_pct=_pct(merged.get("price24hPcnt", "")),
                        next_funding_time=next_funding, seq=cs, **values)
        events.append(ticker.to_wire(rx_ns))
    # a delta names only what changed: open interest / funding events are published on change
    if ("open_interest" in ticker_types and ("openInterest" in fields or "openInterestValue" in fields)
            and merged.get("openInterest")):
        events.append(OpenInterest(
            exchange=EXCHANGE, market=entry[1], symbol=entry[0], native_symbol=native, ts_exchange=ts,
            ts_receive=rx_ms, open_interest=merged["openInterest"],   # contracts (base coin on linear)
            open_interest_value=merged.get("openInterestValue", "")).to_wire(rx_ns))
    if ("funding" in ticker_types and ("fundingRate" in fields or "nextFundingTime" in fields)
            and merged.get("fundingRate")):
        events.append(Funding(
            exchange=EXCHANGE, market=entry[1], symbol=entry[0], native_symbol=native, ts_exchange=ts,
            ts_receive=rx_ms, funding_rate=merged["fundingRate"], next_funding_time=next_funding,
            mark_price=merged.get("markPrice", ""), index_price=merged.get("indexPrice", "")).to_wire(rx_ns))
    return ParseResult(events=events, data=True)


def _liquidation(entry: tuple[str, str], native: str, position: Any, price: Any, qty: Any, ts: int | None,
                 rx_ns: int, rx_ms: int) -> list | None:
    if position not in ("Buy", "Sell") or not is_decimal_str(price) or not is_decimal_str(qty) or ts is None:
        return None
    # S/side names the liquidated position: Buy = a long was liquidated, closed by a SELL order
    long = position == "Buy"
    return Liquidation(exchange=EXCHANGE, market=entry[1], symbol=entry[0], native_symbol=native, ts_exchange=ts,
                       ts_receive=rx_ms, side="sell" if long else "buy", position_side="long" if long else "short",
                       price=price, qty=qty).to_wire(rx_ns)


def _parse_all_liquidation(msg: dict, symbols: SymbolMap, rx_ns: int, rx_ms: int) -> ParseResult:
    data = msg.get("data")
    if type(data) is not list:
        return _MALFORMED_DATA
    events, rejected, errors = [], 0, 0
    for d in data:
        entry = _entry(symbols, d.get("s")) if type(d) is dict else False
        if entry is False:
            errors += 1
            continue
        if entry is None:
            rejected += 1
            continue
        wire = _liquidation(entry, d["s"], d.get("S"), d.get("p"), d.get("v"), ms_int(d.get("T")), rx_ns, rx_ms)
        if wire is None:
            errors += 1
        else:
            events.append(wire)
    return ParseResult(events=events, data=True, rejected=rejected, parse_errors=errors)


def _parse_legacy_liquidation(msg: dict, symbols: SymbolMap, rx_ns: int, rx_ms: int) -> ParseResult:
    """Superseded ``liquidation.{symbol}`` (one object, long field names). Its ``side`` is read
    like allLiquidation's ``S`` (the liquidated position), as its later docs worded it; early docs
    called it the order side."""
    d = msg.get("data")
    if type(d) is not dict:
        return _MALFORMED_DATA
    entry = entry_or(symbols, d.get("symbol"), _MALFORMED_DATA, _REJECTED)
    if type(entry) is ParseResult:
        return entry
    wire = _liquidation(entry, d["symbol"], d.get("side"), d.get("price"), d.get("size"),
                        ms_int(d.get("updatedTime")), rx_ns, rx_ms)
    if wire is None:
        return _MALFORMED_DATA
    return ParseResult(events=[wire], data=True)


def _parse_kline(msg: dict, rest: str, symbols: SymbolMap, rx_ns: int, rx_ms: int) -> ParseResult:
    """``kline.{interval}.{symbol}``: the candles carry no symbol, so the topic names it."""
    bybit_interval, _, native = rest.partition(".")
    interval = KLINE_INTERVALS.get(bybit_interval)
    entry = _entry(symbols, native)
    data, ts = msg.get("data"), ms_int(msg.get("ts"))
    if interval is None or not native or type(data) is not list or ts is None:
        return _MALFORMED_DATA
    if entry is None:
        return _REJECTED
    events, errors = [], 0
    for d in data:
        if type(d) is not dict:
            errors += 1
            continue
        start, end, confirm = ms_int(d.get("start")), ms_int(d.get("end")), d.get("confirm")
        prices = [d.get(k) for k in ("open", "high", "low", "close", "volume")]
        turnover = opt_decimal(d.get("turnover"))
        if (start is None or end is None or type(confirm) is not bool or turnover is None
                or d.get("interval", bybit_interval) != bybit_interval or not all(map(is_decimal_str, prices))):
            errors += 1
            continue
        events.append(Kline(
            exchange=EXCHANGE, market=entry[1], symbol=entry[0], native_symbol=native, ts_exchange=ts,
            ts_receive=rx_ms, interval=interval, open_time=start, close_time=end, open=prices[0],
            high=prices[1], low=prices[2], close=prices[3], volume=prices[4], quote_volume=turnover,
            closed=confirm).to_wire(rx_ns))   # no trade count is sent: trades stays 0
    return ParseResult(events=events, data=True, parse_errors=errors)


def _rest_result(body: Any) -> tuple[dict | None, str | None]:
    """(result, error) of a Bybit v5 REST body: ``{"retCode": 0, "retMsg": "OK", "result": {...}}``."""
    return rest_envelope(body, EXCHANGE, "retCode", 0, "retMsg", "result", dict)


def _rest_list(body: Any) -> tuple[list | None, ParseResult | None]:
    """(``result.list``, None), or (None, the result to return: the exchange's error or garbage)."""
    result, error = _rest_result(body)
    if error is not None:
        return None, ParseResult(error=error)
    rows = result.get("list") if result is not None else None
    return (rows, None) if type(rows) is list else (None, _GARBAGE)


def long_short_ratio(buy: str, sell: str) -> str:
    """buyRatio / sellRatio to 4 decimals (half-even), exact decimal arithmetic; "" when sell is 0."""
    try:
        b, s = Decimal(buy), Decimal(sell)
        return "" if s == 0 else format((b / s).quantize(RATIO_PLACES, rounding=ROUND_HALF_EVEN), "f")
    except InvalidOperation:
        return ""


def parse_rest_account_ratio(body: Any, symbols: SymbolMap, period: str, rx_ns: int, rx_ms: int) -> ParseResult:
    """GET /v5/market/account-ratio -> :class:`LongShortRatio` (kind ``global_account``: shares of
    all holders), oldest first. ``period`` is the request's, in our spelling (5m, 1h ...)."""
    if period not in ACCOUNT_RATIO_PERIOD_OF:
        raise ValueError(f"bybit: account-ratio period must be one of {', '.join(ACCOUNT_RATIO_PERIOD_OF)}")
    rows, failed = _rest_list(body)
    if failed is not None:
        return failed
    out = ParseResult(data=True)
    for row in reversed(rows):
        entry = _entry(symbols, row.get("symbol")) if type(row) is dict else False
        if entry is None:
            out.rejected += 1
            continue
        buy, sell = (row.get("buyRatio"), row.get("sellRatio")) if entry else (None, None)
        ts = ms_int(row.get("timestamp")) if entry else None
        if entry is False or ts is None or not is_decimal_str(buy) or not is_decimal_str(sell):
            out.parse_errors += 1
            continue
        out.events.append(LongShortRatio(
            exchange=EXCHANGE, market=entry[1], symbol=entry[0], native_symbol=row["symbol"], ts_exchange=ts,
            ts_receive=rx_ms, kind="global_account", period=period, ratio=long_short_ratio(buy, sell),
            long_pct=buy, short_pct=sell).to_wire(rx_ns))
    return out


# ---- market-data runtime glue (see base.MARKET_DATA_MODULES) ----
#
# One feed per category (spot, linear); topics are the subscription names the frames carry.
# Funding rate and open interest arrive inside the linear ticker: besides the Ticker they are
# published as Funding / OpenInterest events when they change (one tickers topic serves all three).
# The long/short account ratio is a REST poll per linear symbol.

MD_SUPPORTED: dict[str, tuple[str, ...]] = {
    "spot": ("trade", "book", "ticker", "kline"),
    "perp": ("trade", "book", "ticker", "kline", "funding", "open_interest", "liquidation", "long_short"),
}
#: REST budget: 600 requests / 5 s per IP; no depth snapshots are fetched (WS snapshots)
_NO_REST = (1, 1.0, 1.0)
#: account-ratio polls stay below this many requests per second (the IP's 120/s is shared with
#: the instruments poll; the ratio only changes once per period)
LONG_SHORT_MAX_RATE = 2.0


def _md_markets(cfg: Any) -> list[str]:
    return md_markets(cfg, MD_SUPPORTED)


def md_native(symbol: str, market: str) -> str:
    """``BTC-USDT`` -> ``BTCUSDT``; a USDC perpetual is ``BTCPERP`` (linear category)."""
    base, _, quote = symbol.partition("-")
    if market == "perp" and quote == "USDC":
        return f"{base}PERP"
    return base + quote


def md_symbols(cfg: Any, market: str) -> dict[str, tuple[str, str]]:
    out: dict[str, tuple[str, str]] = {}
    for sym in cfg.symbols:
        out.setdefault(md_native(sym, market), (sym, market))
    return out


def book_depth_for(category: str, depth: int) -> int:
    """The orderbook topic depth: the smallest one covering ``depth``, else the deepest."""
    depths = ORDERBOOK_DEPTHS[category]
    return next((d for d in depths if d >= depth), depths[-1])


def market_data_problem(cfg: Any) -> str | None:
    problem = unsupported_channels(cfg, EXCHANGE, MD_SUPPORTED)
    if problem is not None:
        return problem
    markets = _md_markets(cfg)
    wanted = {c for m in markets for c in cfg.md_channels(MD_SUPPORTED[m])}
    return interval_and_period_problem(cfg, EXCHANGE, wanted, markets, INTERVAL_OF, ACCOUNT_RATIO_PERIOD_OF)


def market_data_feeds(cfg: Any) -> list[tuple[WsFeed, list[str]]]:
    feeds: list[tuple[WsFeed, list[str]]] = []
    for market in _md_markets(cfg):
        category = CATEGORY_OF_MARKET[market]
        channels = cfg.md_channels(MD_SUPPORTED[market])
        symbols = md_symbols(cfg, market)
        depth = book_depth_for(category, cfg.book_depth)
        ticker_types = TICKER_TYPES.intersection(channels)
        topics: list[str] = []
        for native in symbols:
            for c in channels:
                if c == "trade":
                    topics.append(trade_topic(native))
                elif c == "book":
                    topics.append(orderbook_topic(native, depth))
                elif c == "liquidation":
                    topics.append(liquidation_topic(native))
                elif c == "kline":
                    topics.extend(kline_topic(native, i) for i in cfg.kline_intervals if i in INTERVAL_OF)
            if ticker_types:   # ticker, funding and open interest share the tickers topic
                topics.append(ticker_topic(native))
        if topics:
            feeds.append((BybitMdFeed(category, symbols, depth if "book" in channels else None,
                                      frozenset(ticker_types)), topics))
    return feeds


def market_data_polls(cfg: Any) -> list[RestPoll]:
    """The long/short account ratio (all holders), one request per linear symbol, newest sample."""
    if "perp" not in _md_markets(cfg) or "long_short" not in cfg.md_channels(MD_SUPPORTED["perp"]):
        return []
    period = cfg.long_short_period
    if period not in ACCOUNT_RATIO_PERIOD_OF:
        return []
    symbols = md_symbols(cfg, "perp")
    interval = max(cfg.rest_poll_interval, len(symbols) / LONG_SHORT_MAX_RATE)
    return [RestPoll(account_ratio_url(native, period), 1, interval, _ls_parser(symbols, period),
                     f"long_short_global_account {native}") for native in symbols]


def _ls_parser(symbols: SymbolMap, period: str) -> Callable[[Any, int, int], ParseResult]:
    return lambda body, rx_ns, rx_ms: parse_rest_account_ratio(body, symbols, period, rx_ns, rx_ms)


def book_snapshot_request(market: str, native: str, cfg: Any) -> RestPoll | None:
    return None   # every (re)subscribe of an orderbook topic starts with a snapshot


def book_rest_budget(cfg: Any) -> tuple[int, float, float]:
    return _NO_REST


class BybitMdFeed(WsFeed):
    """The public stream of one category. Stateful parser: the linear ticker merger."""

    name = "bybit"
    default_ws_base = "wss://stream.bybit.com"
    # the server cuts a connection after 10 min without ping or data; ping every 20 s
    keepalive = KeepAlive(server_pings=False, client_ping=True, interval=PING_INTERVAL, text_ping=PING)
    # 21,000 characters of args per connection: 400 topics of up to ~50 characters
    max_streams_per_connection = 400
    max_send_rate = 5.0
    resubscribe_rate = 1.0
    #: 500 connections per 5 minutes per domain
    connect_rate = 1.0

    def __init__(self, category: str, symbols: SymbolMap, book_depth: int | None = None,
                 ticker_types: frozenset[str] = _TICKER_ONLY) -> None:
        self.category = category
        self.symbols = symbols
        self.book_depth = book_depth
        self.market = "spot" if category == "spot" else "perp"
        self.label = f"md {category}"
        self.parser = BybitParser(symbols, ticker_types)

    def ws_url(self, streams: Sequence[str]) -> str:
        return ws_url(self.category)

    def subscribe_messages(self, streams: Sequence[str]) -> list[str]:
        return subscribe_messages(streams, self.category)

    def resubscribe_messages(self, streams: Sequence[str]) -> list[str] | None:
        return (subscribe_messages(streams, self.category, op="unsubscribe")
                + subscribe_messages(streams, self.category))

    def parse_ws_message(self, raw: str | bytes, rx_ns: int, rx_ms: int) -> ParseResult:
        return self.parser.parse(raw, rx_ns, rx_ms)

    def watch_topic(self, stream: str) -> bool:
        # tickers change with every mark/index price move; books, trades, liquidations are events
        return stream.startswith("tickers.")

    def book_stream(self, market: str, native: str) -> str | None:
        if self.book_depth is None or market != self.market or native not in self.symbols:
            return None
        return orderbook_topic(native, self.book_depth)


# ---- REST trade history (gap fill) ----
#
# GET /v5/market/recent-trade?category=&symbol=&limit=: only the most RECENT trades, newest first
# (spot limit 1..60, linear/inverse 1..1000); no cursor, no older page. Rows ``{execId, symbol,
# price, size, side, time (ms string), isBlockTrade[, seq, isRPITrade]}``; ``execId`` is the
# WebSocket trade's ``i``. Trade ids are not ordered (linear: UUIDs), so a gap is bounded by time:
# what the page covers is filled, the rest of the gap gets a marker.

TRADES_REST_BASE = "https://api.bybit.com"
RECENT_TRADE_PATH = "/v5/market/recent-trade"
#: the largest page per category (docs)
RECENT_TRADE_LIMITS = {"spot": 60, "linear": 1000, "inverse": 1000}


def recent_trade_url(category: str, native: str, limit: int | None = None) -> str:
    """The most recent trades of ``native`` (the category's largest page by default)."""
    most = RECENT_TRADE_LIMITS.get(category)
    if most is None:
        raise ValueError(f"bybit: no recent-trade category {category!r}")
    if not is_safe_id(native) or not native.isalnum():
        raise ValueError(f"bybit: bad symbol {str(native)[:40]!r}")
    limit = most if limit is None else limit
    if type(limit) is not int or not 1 <= limit <= most:
        raise ValueError(f"bybit: recent-trade limit must be 1..{most} on {category}")
    return f"{TRADES_REST_BASE}{RECENT_TRADE_PATH}?category={category}&symbol={native}&limit={limit}"


def parse_rest_trades(body: Any, native: str, symbols: SymbolMap, rx_ns: int, rx_ms: int) -> ParseResult:
    """recent-trade body -> Trade events (``source`` rest), in the body's order (newest first)."""
    entry = symbols.get(native) if type(native) is str else None
    if entry is None:
        return ParseResult(rejected=1)
    rows, failed = _rest_list(body)
    if failed is not None:
        return failed
    return rest_trade_rows(rows, REST_TRADE, "symbol", EXCHANGE, native, entry, rx_ns, rx_ms)


def trade_stream_native(stream: str) -> str | None:
    """The symbol of a ``publicTrade.<symbol>`` topic, else None."""
    kind, _, native = stream.partition(".")
    return native if kind == "publicTrade" and native else None
