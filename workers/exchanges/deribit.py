"""Deribit market data: pure JSON-RPC parsers and message/name builders.

Why it looks like this (fixtures/ws/SOURCES.md section 4, research/exchange-quirks.md A.5):
- everything is JSON-RPC 2.0 on ``wss://www.deribit.com/ws/api/v2``; data arrives as
  ``{"method":"subscription","params":{"channel","data"}}`` notifications.
- prices and amounts are JSON *numbers*: they are parsed with ``parse_float=str`` so the exact
  token is kept (a float round trip would change it); integers stay ints (ids, times) and are
  turned into decimal text only where a decimal field takes them (``open_interest: 559791310``).
- after ``public/set_heartbeat`` the server sends ``heartbeat{type:test_request}``; it must be
  answered with ``public/test`` or the connection is closed at once.
- book: ``type: snapshot`` then ``change`` frames with ``prev_change_id`` == previous
  ``change_id``; entries ``[action, price, amount]``. Grouped books (``book.I.group.depth.int``)
  are full ``[price, amount]`` snapshots on every push, without ``type``.
- ``raw`` channels need an authorised connection: public collection uses ``100ms``.
"""

from __future__ import annotations

import json
import re
from typing import Any, Iterable, Sequence

from shared.marketdata import BookMsg, Level, Ticker, Trade, VolatilityIndex
from shared.symbols import canonical

from .base import (
    SymbolMap, entry_or, symbol_entry as _entry,
    ExchangeAdapter, KeepAlive, ParseResult, RestPoll, WsFeed, md_markets, unsupported_channels, with_topic,
)

EXCHANGE = "deribit"
WS_URL = "wss://www.deribit.com/ws/api/v2"
HEARTBEAT_INTERVAL = 30  # s; Deribit accepts >= 10 and recommends 30-60
#: JSON-RPC id of our ``public/test`` answers (their responses are ignored like any result)
TEST_REQUEST_ID = 9099

#: native instrument / index name -> (canonical BASE-QUOTE, market) for one connection
Symbols = SymbolMap

_IGNORED = ParseResult()
_IGNORED_DATA = ParseResult(data=True)
_GARBAGE = ParseResult(parse_errors=1)
_MALFORMED = ParseResult(data=True, parse_errors=1)
_REJECTED = ParseResult(data=True, rejected=1)
_SHARED = frozenset(map(id, (_IGNORED, _IGNORED_DATA, _GARBAGE, _MALFORMED, _REJECTED)))

_NUM_RE = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?\Z")
_TRADE_ID_RE = re.compile(r"[A-Za-z0-9_-]{1,64}\Z")
_ACTIONS = frozenset({"new", "change", "delete"})


def _reject_constant(token: str) -> Any:
    raise ValueError(f"non-finite number {token}")


def _loads(raw: str | bytes) -> Any:
    """Exact number tokens for floats, ints kept, NaN/Infinity refused."""
    return json.loads(raw, parse_float=str, parse_constant=_reject_constant)


def _num(v: Any) -> str | None:
    """A decimal as text: a float token (already text), or an int; None when neither."""
    if type(v) is str:
        return v if len(v) <= 64 and _NUM_RE.match(v) else None
    if type(v) is int:
        return str(v)
    return None


def _unum(v: Any) -> str | None:
    """A non-negative decimal as text (amounts, sizes)."""
    s = _num(v)
    return None if s is None or s[0] == "-" else s


def _opt_num(d: dict, key: str, unsigned: bool = False) -> str | None:
    """An optional number: "" when absent or null, None when present but not a number."""
    v = d.get(key)
    if v is None:
        return ""
    return _unum(v) if unsigned else _num(v)


def _ts(v: Any) -> bool:
    return type(v) is int and v >= 0


# ---------------------------------------------------------------- WebSocket

def parse_message(raw: str | bytes, symbols: Symbols, rx_ns: int, rx_ms: int) -> ParseResult:
    """Pure: one Deribit frame -> normalized events, book messages, replies or an error text."""
    if not isinstance(raw, (str, bytes, bytearray)):
        return _GARBAGE
    try:
        msg = _loads(raw)
    except (ValueError, RecursionError):  # JSONDecodeError is a ValueError
        return _GARBAGE
    if type(msg) is not dict:
        return _GARBAGE
    method = msg.get("method")
    if method == "subscription":
        params = msg.get("params")
        if type(params) is not dict or type(params.get("channel")) is not str:
            return _MALFORMED
        channel = params["channel"]
        res = _notification(channel, params.get("data"), symbols, rx_ns, rx_ms)
        return with_topic(res, channel, _SHARED) if len(channel) <= 200 else res
    if method == "heartbeat":
        params = msg.get("params")
        kind = params.get("type") if type(params) is dict else None
        if kind == "test_request":
            return ParseResult(replies=[public_test_message(TEST_REQUEST_ID)])
        return _IGNORED if kind == "heartbeat" else _GARBAGE
    if "error" in msg:
        return ParseResult(error=_error_text(msg["error"]))
    if "result" in msg and "id" in msg:
        return _IGNORED  # subscribe / set_heartbeat / public/test responses
    return _GARBAGE


def _error_text(err: Any) -> str:
    if type(err) is not dict:
        return f"deribit error ?: {repr(err)[:200]}"
    code, message, data = err.get("code"), err.get("message"), err.get("data")
    text = message[:200] if type(message) is str else repr(message)[:200]
    if data is not None:
        text += f" ({repr(data)[:200]})"
    return f"deribit error {code if type(code) is int else '?'}: {text}"


def _notification(channel: str, data: Any, symbols: Symbols, rx_ns: int, rx_ms: int) -> ParseResult:
    kind = channel.partition(".")[0]
    if kind == "trades":
        return _trades(data, symbols, rx_ns, rx_ms)
    if kind == "book":
        return _book(data, symbols, rx_ms)
    if kind == "ticker":
        return _ticker(data, symbols, rx_ns, rx_ms)
    if kind == "deribit_volatility_index":
        return _volatility(data, symbols, rx_ns, rx_ms)
    return _IGNORED_DATA  # a channel we subscribe to but do not normalize (quote, chart, ...)


def _trades(data: Any, symbols: Symbols, rx_ns: int, rx_ms: int) -> ParseResult:
    if type(data) is not list:
        return _MALFORMED
    out = ParseResult(data=True)
    for t in data:
        if type(t) is not dict:
            out.parse_errors += 1
            continue
        native = t.get("instrument_name")
        entry = _entry(symbols, native)
        if entry is None:
            out.rejected += 1
            continue
        tid, price, amount = t.get("trade_id"), _num(t.get("price")), _unum(t.get("amount"))
        if type(tid) is int:
            tid = str(tid)
        side, ts = t.get("direction"), t.get("timestamp")
        if (entry is False or type(tid) is not str or not _TRADE_ID_RE.match(tid) or price is None
                or amount is None or side not in ("buy", "sell") or not _ts(ts)):
            out.parse_errors += 1
            continue
        symbol, market = entry
        # direction is the taker's side
        trade = Trade(exchange=EXCHANGE, market=market, symbol=symbol, native_symbol=native, trade_id=tid,
                      price=price, qty=amount, side=side, ts_exchange=ts, ts_receive=rx_ms)
        out.events.append(trade.to_wire(rx_ns))
    return out


def _book_side(raw: Any) -> list[Level] | None:
    """``[action, price, amount]`` (delete -> qty "0") or grouped ``[price, amount]``."""
    if type(raw) is not list:
        return None
    out: list[Level] = []
    for e in raw:
        if type(e) is not list:
            return None
        if len(e) == 3:
            action = e[0]
            if action not in _ACTIONS:
                return None
            price = _num(e[1])
            qty = "0" if action == "delete" else _unum(e[2])
        elif len(e) == 2:
            price, qty = _num(e[0]), _unum(e[1])
        else:
            return None
        if price is None or qty is None:
            return None
        out.append((price, qty))
    return out


def _book(data: Any, symbols: Symbols, rx_ms: int) -> ParseResult:
    if type(data) is not dict:
        return _MALFORMED
    native = data.get("instrument_name")
    entry = entry_or(symbols, native, _MALFORMED, _REJECTED)
    if type(entry) is ParseResult:
        return entry
    kind, ts, change_id, prev = data.get("type"), data.get("timestamp"), data.get("change_id"), data.get("prev_change_id")
    bids, asks = _book_side(data.get("bids")), _book_side(data.get("asks"))
    if (type(change_id) is not int or not _ts(ts) or bids is None or asks is None
            or (prev is not None and type(prev) is not int)):
        return _MALFORMED
    if kind == "snapshot":
        snapshot = True
    elif kind == "change":
        if prev is None:
            return _MALFORMED  # a change cannot be chained without prev_change_id
        snapshot = False
    elif kind is None:
        snapshot = prev is None  # grouped book: a full snapshot on every push
    else:
        return _MALFORMED
    symbol, market = entry
    book = BookMsg(exchange=EXCHANGE, market=market, symbol=symbol, native_symbol=native, snapshot=snapshot,
                   seq=change_id, bids=bids, asks=asks, ts_exchange=ts, ts_receive=rx_ms,
                   prev_seq=None if snapshot else prev)
    return ParseResult(books=[book], data=True)


def _ticker(data: Any, symbols: Symbols, rx_ns: int, rx_ms: int) -> ParseResult:
    if type(data) is not dict:
        return _MALFORMED
    native = data.get("instrument_name")
    entry = entry_or(symbols, native, _MALFORMED, _REJECTED)
    if type(entry) is ParseResult:
        return entry
    ts, stats = data.get("timestamp"), data.get("stats")
    if stats is None:
        stats = {}
    if not _ts(ts) or type(stats) is not dict:
        return _MALFORMED
    # Deribit sends null for what it has no value of (no trade yet, no funding on futures)
    f = {
        "last": _opt_num(data, "last_price"),
        "high": _opt_num(stats, "high"),
        "low": _opt_num(stats, "low"),
        "volume": _opt_num(stats, "volume", True),
        "quote_volume": _opt_num(stats, "volume_usd", True),
        "change_pct": _opt_num(stats, "price_change"),
        "bid_price": _opt_num(data, "best_bid_price"),
        "bid_qty": _opt_num(data, "best_bid_amount", True),
        "ask_price": _opt_num(data, "best_ask_price"),
        "ask_qty": _opt_num(data, "best_ask_amount", True),
        "mark_price": _opt_num(data, "mark_price"),
        "index_price": _opt_num(data, "index_price"),
        "open_interest": _opt_num(data, "open_interest", True),
    }
    # funding_8h is the rate over 8 h (comparable with other venues' 8-hourly rates);
    # current_funding is the instantaneous one, used when funding_8h is not sent
    f8, cur = _opt_num(data, "funding_8h"), _opt_num(data, "current_funding")
    if None in f.values() or f8 is None or cur is None:
        return _MALFORMED
    symbol, market = entry
    ev = Ticker(exchange=EXCHANGE, market=market, symbol=symbol, native_symbol=native, ts_exchange=ts,
                ts_receive=rx_ms, funding_rate=f8 or cur, **f)
    return ParseResult(events=[ev.to_wire(rx_ns)], data=True)


def _volatility(data: Any, symbols: Symbols, rx_ns: int, rx_ms: int) -> ParseResult:
    if type(data) is not dict:
        return _MALFORMED
    native = data.get("index_name")
    entry = entry_or(symbols, native, _MALFORMED, _REJECTED)
    if type(entry) is ParseResult:
        return entry
    ts, value = data.get("timestamp"), _unum(data.get("volatility"))
    if not _ts(ts) or value is None:
        return _MALFORMED
    symbol, market = entry
    ev = VolatilityIndex(exchange=EXCHANGE, market=market, symbol=symbol, native_symbol=native,
                         ts_exchange=ts, ts_receive=rx_ms, value=value)
    return ParseResult(events=[ev.to_wire(rx_ns)], data=True)


# ---------------------------------------------------------------- builders

def _request(method: str, params: dict, msg_id: int) -> str:
    return json.dumps({"jsonrpc": "2.0", "id": msg_id, "method": method, "params": params},
                      separators=(",", ":"))


def subscribe_message(channels: Sequence[str], msg_id: int = 1) -> str:
    """``public/subscribe`` for ``channels`` (the response lists them in another order)."""
    return _request("public/subscribe", {"channels": list(channels)}, msg_id)


def unsubscribe_message(channels: Sequence[str], msg_id: int = 3) -> str:
    """``public/unsubscribe`` for ``channels``."""
    return _request("public/unsubscribe", {"channels": list(channels)}, msg_id)


def set_heartbeat_message(interval: int = HEARTBEAT_INTERVAL, msg_id: int = 2) -> str:
    """``public/set_heartbeat``: from then on unanswered test_requests close the connection."""
    if type(interval) is not int or interval < 10:
        raise ValueError(f"heartbeat interval must be an int >= 10, not {interval!r}")
    return _request("public/set_heartbeat", {"interval": interval}, msg_id)


def public_test_message(msg_id: int = TEST_REQUEST_ID) -> str:
    """``public/test``: the answer to a heartbeat test_request."""
    return _request("public/test", {}, msg_id)


_PAIR = r"(?P<base>[A-Z0-9]{1,20})(?:_(?P<quote>[A-Z0-9]{1,20}))?"
_DATE = r"[0-9]{1,2}[A-Z]{3}[0-9]{2}"
_PERP_RE = re.compile(rf"{_PAIR}-PERPETUAL\Z")
_FUTURE_RE = re.compile(rf"{_PAIR}-{_DATE}\Z")
_OPTION_RE = re.compile(rf"{_PAIR}-{_DATE}-[0-9]{{1,12}}(?:d[0-9]{{1,8}})?-[CP]\Z")
_SPOT_RE = re.compile(r"(?P<base>[A-Z0-9]{1,20})_(?P<quote>[A-Z0-9]{1,20})\Z")
_INDEX_RE = re.compile(r"(?P<base>[a-z0-9]{1,20})_(?P<quote>[a-z0-9]{1,20})\Z")
_INTERVALS = frozenset({"100ms", "agg2", "raw"})


def _match(name: Any) -> tuple[str, re.Match[str]] | None:
    if type(name) is not str or len(name) > 64:
        return None
    for market, rx in (("perp", _PERP_RE), ("future", _FUTURE_RE), ("option", _OPTION_RE), ("spot", _SPOT_RE)):
        m = rx.match(name)
        if m is not None:
            return market, m
    return None


def instrument_market(name: str) -> str | None:
    """perp (``BTC-PERPETUAL``), future (``BTC-27JUN25``), option (``BTC-27JUN25-100000-C``),
    spot (``BTC_USDC``); None for anything else (combos, hostile text)."""
    got = _match(name)
    return got[0] if got else None


def canonical_symbol(name: str) -> str | None:
    """``BTC-PERPETUAL`` -> BTC-USD (inverse, USD-settled), ``SOL_USDC-PERPETUAL`` -> SOL-USDC.
    Futures and options map to the same pair (their native name keeps them apart)."""
    got = _match(name)
    if got is None:
        return None
    m = got[1]
    return canonical(m["base"], m["quote"] or "USD")


def symbol_entry(name: str) -> tuple[str, str] | None:
    """The ``symbols`` map entry of an instrument or volatility index name (``btc_usd`` ->
    (BTC-USD, index)); None when it is not one."""
    if type(name) is str:
        m = _INDEX_RE.match(name)
        if m is not None:
            pair = canonical(m["base"], m["quote"])
            return (pair, "index") if pair else None
    market = instrument_market(name)
    pair = canonical_symbol(name) if market else None
    return (pair, market) if market and pair else None


def symbol_map(names: Iterable[str]) -> dict[str, tuple[str, str]]:
    """native -> (canonical, market) for the names that are valid (others are left out)."""
    out: dict[str, tuple[str, str]] = {}
    for n in names:
        e = symbol_entry(n)
        if e is not None:
            out[n] = e
    return out


def _channel(kind: str, instrument: str, interval: str) -> str:
    if instrument_market(instrument) is None:
        raise ValueError(f"not a Deribit instrument name: {str(instrument)[:40]!r}")
    if interval not in _INTERVALS:
        raise ValueError(f"unknown interval {interval!r}")
    return f"{kind}.{instrument}.{interval}"


def trades_channel(instrument: str, interval: str = "100ms") -> str:
    return _channel("trades", instrument, interval)


def book_channel(instrument: str, interval: str = "100ms") -> str:
    return _channel("book", instrument, interval)


def ticker_channel(instrument: str, interval: str = "100ms") -> str:
    return _channel("ticker", instrument, interval)


def volatility_channel(index_name: str) -> str:
    """``deribit_volatility_index.btc_usd`` (Deribit offers btc_usd and eth_usd)."""
    if type(index_name) is not str or _INDEX_RE.match(index_name) is None:
        raise ValueError(f"not an index name: {str(index_name)[:40]!r}")
    return f"deribit_volatility_index.{index_name}"


# ---------------------------------------------------------------- REST trade history (gap fill)
#
# ``GET /api/v2/public/get_last_trades_by_instrument_and_time?instrument_name=&start_timestamp=
# &end_timestamp=&count=&sorting=asc`` (JSON-RPC over HTTP): ``{"result": {"trades": [...],
# "has_more": bool}}``, count <= 1000, both bounds inclusive. Trade rows are the WebSocket
# ``trades`` items (same ``trade_id``). The gap is bounded by time: our trade events carry the
# trade id and time, not ``trade_seq``; overlaps at the bounds are dropped by the publisher's dedup.
# The HTTP client decodes the body with float numbers: a price is printed back with ``repr``,
# the shortest text of the same double, which is how Deribit's encoder writes it.

REST_BASE = "https://www.deribit.com"
TRADES_BY_TIME_PATH = "/api/v2/public/get_last_trades_by_instrument_and_time"
TRADES_PAGE_COUNT = 1000


def trades_by_time_url(instrument: str, start_ms: int, end_ms: int, count: int = TRADES_PAGE_COUNT) -> str:
    """Trades of ``instrument`` with ``start_ms <= timestamp <= end_ms``, oldest first."""
    if symbol_entry(instrument) is None:
        raise ValueError(f"not a deribit instrument: {str(instrument)[:40]!r}")
    if not (_ts(start_ms) and _ts(end_ms) and start_ms <= end_ms):
        raise ValueError(f"bad time range {start_ms!r}..{end_ms!r}")
    if type(count) is not int or not 1 <= count <= TRADES_PAGE_COUNT:
        raise ValueError(f"count must be 1..{TRADES_PAGE_COUNT}")
    return (f"{REST_BASE}{TRADES_BY_TIME_PATH}?instrument_name={instrument}&start_timestamp={start_ms}"
            f"&end_timestamp={end_ms}&count={count}&sorting=asc")


def _rest_num(v: Any) -> Any:
    return repr(v) if type(v) is float and v == v and v not in (float("inf"), float("-inf")) else v


def parse_rest_trades(body: Any, symbols: Symbols, rx_ns: int, rx_ms: int) -> tuple[ParseResult, bool]:
    """A get_last_trades_by_instrument(_and_time) body -> (Trade events with ``source`` rest in the
    body's order, has_more)."""
    if isinstance(body, (str, bytes, bytearray)):
        try:
            body = _loads(body)
        except (ValueError, RecursionError):
            return _GARBAGE, False
    if type(body) is not dict:
        return _GARBAGE, False
    if "error" in body:
        return ParseResult(error=_error_text(body["error"])), False
    result = body.get("result")
    trades = result.get("trades") if type(result) is dict else None
    if type(trades) is not list:
        return _GARBAGE, False
    rows = [{**t, "price": _rest_num(t.get("price")), "amount": _rest_num(t.get("amount"))}
            if type(t) is dict else t for t in trades]
    res = _trades(rows, symbols, rx_ns, rx_ms)
    for ev in res.events:
        ev[3] += ["source", "rest"]   # the same fields Trade(source="rest") writes
    return res, result.get("has_more") is True


def trade_stream_native(stream: str) -> str | None:
    """The instrument of a ``trades.<instrument>.<interval>`` channel, else None."""
    parts = stream.split(".")
    return parts[1] if len(parts) == 3 and parts[0] == "trades" and parts[1] else None


# ---------------------------------------------------------------- market-data runtime glue
#
# One feed on /ws/api/v2: ``public/set_heartbeat`` (30 s) then ``public/subscribe`` in chunks;
# test_requests are answered through ParseResult.replies. Streams are channel names (the topic
# the parser reports). Funding and open interest arrive in the ticker; the volatility index
# (btc_usd, eth_usd) follows the configured symbols' base currency.

MD_SUPPORTED: dict[str, tuple[str, ...]] = {
    "spot": ("trade", "book", "ticker", "volatility_index"),
    "perp": ("trade", "book", "ticker", "volatility_index"),
}
#: currencies with a DVOL index
VOLATILITY_CURRENCIES = ("BTC", "ETH")
#: channels per public/subscribe request
SUBSCRIBE_CHUNK = 100


def _md_markets(cfg: Any) -> list[str]:
    # default: perpetuals only (Deribit's spot books are small; ask for them with markets: [spot])
    return md_markets(cfg, MD_SUPPORTED, default=("perp",))


def md_native(symbol: str, market: str) -> str | None:
    """``BTC-USD`` perp -> ``BTC-PERPETUAL`` (inverse); ``SOL-USDC`` perp -> ``SOL_USDC-PERPETUAL``;
    ``BTC-USDC`` spot -> ``BTC_USDC``; None where Deribit has no such name (USD spot)."""
    base, _, quote = symbol.partition("-")
    if market == "perp":
        name = f"{base}-PERPETUAL" if quote == "USD" else f"{base}_{quote}-PERPETUAL"
    elif market == "spot" and quote != "USD":
        name = f"{base}_{quote}"
    else:
        return None
    return name if symbol_entry(name) == (symbol, market) else None


def md_symbols(cfg: Any) -> dict[str, tuple[str, str]]:
    out: dict[str, tuple[str, str]] = {}
    for market in _md_markets(cfg):
        for sym in cfg.symbols:
            native = md_native(sym, market)
            if native is not None:
                out.setdefault(native, (sym, market))
    for ccy in _vol_currencies(cfg):
        name = f"{ccy.lower()}_usd"
        entry = symbol_entry(name)
        if entry is not None:
            out[name] = entry
    return out


def _vol_currencies(cfg: Any) -> list[str]:
    if not any("volatility_index" in cfg.md_channels(MD_SUPPORTED[m]) for m in _md_markets(cfg)):
        return []
    bases = dict.fromkeys(sym.partition("-")[0] for sym in cfg.symbols)
    return [b for b in bases if b in VOLATILITY_CURRENCIES]


def market_data_problem(cfg: Any) -> str | None:
    markets = _md_markets(cfg)
    problem = unsupported_channels(cfg, EXCHANGE, MD_SUPPORTED, hint="funding and open interest are in the ticker",
                                   default=("perp",))
    if problem is not None:
        return problem
    named = [sym for sym in cfg.symbols if any(md_native(sym, m) for m in markets)]
    if cfg.symbols and not named and not _vol_currencies(cfg):
        return (f"symbols: none is a deribit instrument on {'/'.join(markets)} "
                f"(perp: BTC-USD, ETH-USD, SOL-USDC ...; spot: BTC-USDC ...)")
    return None


def market_data_feeds(cfg: Any) -> list[tuple[WsFeed, list[str]]]:
    streams: list[str] = []
    books = False
    for market in _md_markets(cfg):
        channels = cfg.md_channels(MD_SUPPORTED[market])
        books = books or "book" in channels
        for sym in cfg.symbols:
            native = md_native(sym, market)
            if native is None:
                continue
            for c in channels:
                if c == "trade":
                    streams.append(trades_channel(native))
                elif c == "book":
                    streams.append(book_channel(native))
                elif c == "ticker":
                    streams.append(ticker_channel(native))
    streams.extend(volatility_channel(f"{ccy.lower()}_usd") for ccy in _vol_currencies(cfg))
    streams = list(dict.fromkeys(streams))
    return [(DeribitMdFeed(md_symbols(cfg), books), streams)] if streams else []


def market_data_polls(cfg: Any) -> list[RestPoll]:
    return []


def book_snapshot_request(market: str, native: str, cfg: Any) -> RestPoll | None:
    return None   # a (re)subscribe starts with a snapshot


def book_rest_budget(cfg: Any) -> tuple[int, float, float]:
    return 1, 1.0, 1.0


class DeribitMdFeed(WsFeed):
    """Deribit JSON-RPC market data. Liveness: the server's heartbeat every 30 s (and our
    answers to its test_requests); no client pings."""

    name = "deribit"
    label = "md"
    default_ws_base = "wss://www.deribit.com"
    keepalive = KeepAlive(server_pings=False, client_ping=False, interval=float(HEARTBEAT_INTERVAL))
    max_streams_per_connection = 500
    # credit-based limits (~20 requests/s sustained): stay far below
    max_send_rate = 5.0
    resubscribe_rate = 1.0
    #: about 32 connections per IP
    connect_rate = 1.0

    def __init__(self, symbols: Symbols, books: bool = False) -> None:
        self.symbols = symbols
        self.books = books
        self._msg_id = 100

    def _next_id(self) -> int:
        self._msg_id += 1
        return self._msg_id

    def ws_url(self, streams: Sequence[str]) -> str:
        return WS_URL

    def subscribe_messages(self, streams: Sequence[str]) -> list[str]:
        out = [set_heartbeat_message(HEARTBEAT_INTERVAL, self._next_id())]
        for i in range(0, len(streams), SUBSCRIBE_CHUNK):
            out.append(subscribe_message(streams[i:i + SUBSCRIBE_CHUNK], self._next_id()))
        return out

    def resubscribe_messages(self, streams: Sequence[str]) -> list[str] | None:
        return [unsubscribe_message(streams, self._next_id()), subscribe_message(streams, self._next_id())]

    def parse_ws_message(self, raw: str | bytes, rx_ns: int, rx_ms: int) -> ParseResult:
        return parse_message(raw, self.symbols, rx_ns, rx_ms)

    def watch_topic(self, stream: str) -> bool:
        # the ticker carries mark/index prices (they move all the time); DVOL is pushed each second
        return stream.startswith(("ticker.", "deribit_volatility_index."))

    def book_stream(self, market: str, native: str) -> str | None:
        entry = self.symbols.get(native)
        # the DVOL index (market "index") shares the symbol map but has no book
        if not self.books or entry is None or entry[1] != market or market not in MD_SUPPORTED:
            return None
        return book_channel(native)


class Deribit(ExchangeAdapter):
    """The ``deribit`` worker's adapter: market data only. Trades come from its market-data feed's
    ``trades`` channel (``market_data: true``); there is no listings source (``listings`` is
    ignored and no instruments poll runs)."""

    name = "deribit"
    market = "perp"
    default_ws_base = "wss://www.deribit.com"
    default_rest_base = "https://www.deribit.com"
    supports_trades = False
    supports_listings = False
