"""OKX v5 market data: pure parsers of ``/ws/v5/public`` and ``/ws/v5/business`` frames, REST
order-book and long/short-ratio parsers, and subscribe / URL builders.

Wire rules (fixtures/ws/SOURCES.md section 3, research/exchange-quirks.md A.3):
- Every push is ``{"arg": {"channel", "instId" | "instType"}, ["action",] "data": [...]}``;
  numbers and timestamps are strings (``ts`` in ms) except book ``seqId`` / ``prevSeqId`` /
  ``checksum`` (JSON integers).
- Control frames: ``{"event": "subscribe" | "unsubscribe", ...}`` acks (one per arg, ignored),
  ``{"event": "error", "code", "msg"}`` -> :attr:`ParseResult.error`, ``{"event": "notice",
  "code": "64008"}`` ~30-60 s before a service-upgrade disconnect -> ``rotate``. The keep-alive is a
  text ``ping`` answered by a text ``pong`` (the server cuts a connection idle for 30 s).
- Candles, ``trades-all`` and mark/index candles live on ``/ws/v5/business``; the rest on
  ``/ws/v5/public``. At most 480 (un)subscribe ops per connection per hour, 3 connects/s per IP,
  ``args`` of one request <= 64 KB.
- Books: ``books`` sends a snapshot (``prevSeqId`` -1) then updates (``prevSeqId`` == previous
  ``seqId``); ``books5`` and ``bbo-tbt`` are snapshots on every push. ``checksum`` is always 0 in
  production since 2026-06-23 (0 here also means "not sent"); the sequence rule is applied by
  the book engine (``workers/book.py``), not here.

Decisions:
- ``mark-price`` pushes are market data but produce no event (a Funding without a rate would only
  pollute the funding stream; the mark price is not needed elsewhere yet).
- ``liquidation-orders`` are flagged ``sampled``: OKX says the channel "doesn't represent the total
  number of liquidations".
- An event without an exchange time whose dedup key would contain that time (an OKX candle still
  open, a 2021-style ``funding-rate`` push without ``ts``) gets no dedup key: deduplicating on
  ``...:0`` would drop every later update of the same candle / funding period.

Everything here is pure: garbage counts as ``parse_errors``, a native symbol missing from the
symbol map as ``rejected``; nothing raises on bad input.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Mapping, Sequence

import orjson

from shared.marketdata import (
    Bbo, BookMsg, Funding, Kline, Level, Liquidation, LongShortRatio, OpenInterest, Ticker, Trade,
)
from shared.events import WireEvent
from shared.symbols import canonical

from .base import (
    SymbolMap,
    KeepAlive, ParseResult, RestPoll, WsFeed, interval_and_period_problem, md_markets, short_repr,
    unsupported_channels, with_topic,
)

EXCHANGE = "okx"

PUBLIC_WS_URL = "wss://ws.okx.com:8443/ws/v5/public"
BUSINESS_WS_URL = "wss://ws.okx.com:8443/ws/v5/business"
REST_BASE = "https://www.okx.com"

#: the text keep-alive; the server answers ``pong``. OKX closes a connection that receives
#: nothing for 30 s, so ping after this many idle seconds
PING = "ping"
PING_INTERVAL = 20.0
#: total ``args`` of one (un)subscribe request, bytes
MAX_ARGS_BYTES = 64 * 1024
#: (un)subscribe/login requests per connection per hour
MAX_OPS_PER_HOUR = 480

BOOKS_PATH = "/api/v5/market/books"
#: ``sz`` of GET /market/books (docs: max 400); 40 requests / 2 s per IP
BOOKS_MAX_DEPTH = 400
LONG_SHORT_ACCOUNT_RATIO_PATH = "/api/v5/rubik/stat/contracts/long-short-account-ratio"
#: rubik period -> our spelling (docs: 5m / 1H / 1D); 5 requests / 2 s per IP
RUBIK_PERIODS = {"5m": "5m", "1H": "1h", "1D": "1d"}

#: notice code announcing a service-upgrade disconnect
NOTICE_RECONNECT = "64008"

# ---- shared results (read-only by contract) ----
_IGNORED = ParseResult()
_IGNORED_DATA = ParseResult(data=True)
_GARBAGE = ParseResult(parse_errors=1)
_MALFORMED_DATA = ParseResult(data=True, parse_errors=1)
_REJECTED = ParseResult(data=True, rejected=1)
_ROTATE = ParseResult(rotate=True)
_SHARED = frozenset(map(id, (_IGNORED, _IGNORED_DATA, _GARBAGE, _MALFORMED_DATA, _REJECTED, _ROTATE)))


# ---- small validators (shared with bybit_md) ----

_DECIMAL_RE = re.compile(r"-?[0-9]{1,40}(?:\.[0-9]{1,40})?\Z")
_ID_RE = re.compile(r"[A-Za-z0-9_.:-]{1,64}\Z")


def is_decimal_str(value: Any) -> bool:
    """A plain decimal string as exchanges send prices/sizes ("30218.8", "-0.0001", "0")."""
    return type(value) is str and len(value) <= 64 and _DECIMAL_RE.match(value) is not None


def opt_decimal(value: Any) -> str | None:
    """An optional decimal field: missing or ``""`` -> ``""``; a decimal -> itself; else None."""
    if value is None or value == "":
        return ""
    return value if is_decimal_str(value) else None


def ms_int(value: Any) -> int | None:
    """Milliseconds sent as a digit string or an int, else None."""
    if type(value) is int:
        return value if 0 <= value < 10**15 else None
    if type(value) is str and 0 < len(value) <= 15 and value.isascii() and value.isdigit():
        return int(value)
    return None


def seq_int(value: Any) -> int | None:
    """A JSON integer (not a bool), bounded to 64 bits."""
    return value if type(value) is int and -(2**63) <= value < 2**63 else None


def is_safe_id(value: Any) -> bool:
    return type(value) is str and _ID_RE.match(value) is not None


@dataclass(frozen=True, slots=True)
class TradeRow:
    """Where a venue's trade row (string-typed: OKX, Bybit) keeps each field, and how it spells the
    taker's side."""

    trade_id: str
    price: str
    qty: str
    side: str
    ts: str
    sides: Mapping[str, str]   # the venue's side value -> buy | sell


def trade_from_row(d: dict, row: TradeRow, exchange: str, native: str, entry: tuple[str, str], rx_ns: int,
                   rx_ms: int, source: str = "") -> WireEvent | None:
    """One trade row -> a Trade wire event, or None when a field is missing or malformed."""
    trade_id, price, qty, ts = d.get(row.trade_id), d.get(row.price), d.get(row.qty), ms_int(d.get(row.ts))
    raw_side = d.get(row.side)
    side = row.sides.get(raw_side) if type(raw_side) is str else None
    if not is_safe_id(trade_id) or not is_decimal_str(price) or not is_decimal_str(qty) or side is None or ts is None:
        return None
    return Trade(exchange=exchange, market=entry[1], symbol=entry[0], native_symbol=native, trade_id=trade_id,
                 price=price, qty=qty, side=side, ts_exchange=ts, ts_receive=rx_ms, source=source).to_wire(rx_ns)


def rest_trade_rows(rows: list, row: TradeRow, symbol_key: str, exchange: str, native: str,
                    entry: tuple[str, str], rx_ns: int, rx_ms: int) -> ParseResult:
    """A REST trade-history page of ``native`` -> Trade events (``source`` rest) in the page's
    order; rows naming another instrument are rejected, malformed ones counted."""
    out = ParseResult(data=True)
    for d in rows:
        if type(d) is not dict:
            out.parse_errors += 1
            continue
        if d.get(symbol_key, native) != native:
            out.rejected += 1
            continue
        ev = trade_from_row(d, row, exchange, native, entry, rx_ns, rx_ms, source="rest")
        if ev is None:
            out.parse_errors += 1
        else:
            out.events.append(ev)
    return out


#: OKX trade rows (WebSocket ``trades-all`` / ``trades`` and REST history-trades): side is the taker's
OKX_TRADE = TradeRow("tradeId", "px", "sz", "side", "ts", {"buy": "buy", "sell": "sell"})


def no_dedup_without_time(wire: list, ts_exchange: int) -> list:
    """Drop the dedup key of an event whose natural id would be built on a missing time."""
    if ts_exchange == 0:
        wire[1] = None
    return wire


# ---- symbols ----

def market_of(inst_id: str) -> str | None:
    """Our market of an OKX instrument id: ``BTC-USDT`` spot, ``BTC-USDT-SWAP`` perp,
    ``BTC-USD-250328`` future, ``BTC-USD-250328-90000-C`` option; None for anything else."""
    if type(inst_id) is not str:
        return None
    parts = inst_id.split("-")
    if len(parts) == 2:
        return "spot"
    if len(parts) == 3:
        if parts[2] == "SWAP":
            return "perp"
        if len(parts[2]) == 6 and parts[2].isdigit():
            return "future"
    if len(parts) == 5 and parts[4] in ("C", "P"):
        return "option"
    return None


def symbol_map(inst_ids: Sequence[str]) -> dict[str, tuple[str, str]]:
    """native -> (canonical BASE-QUOTE, market) for configured instrument ids; ids that are
    not a recognisable OKX instrument are left out."""
    out: dict[str, tuple[str, str]] = {}
    for inst_id in inst_ids:
        market = market_of(inst_id)
        if market is None:
            continue
        base, quote = inst_id.split("-")[:2]
        pair = canonical(base, quote)
        if pair is not None:
            out[inst_id] = (pair, market)
    return out


# ---- builders ----

def is_business_channel(channel: str) -> bool:
    """Candles (trade, mark and index price) and ``trades-all`` are served on /ws/v5/business."""
    return (channel.startswith("candle") or channel.startswith("mark-price-candle")
            or channel.startswith("index-candle") or channel == "trades-all")


def ws_url(channel: str) -> str:
    """The URL of the connection a channel lives on (public vs business)."""
    return BUSINESS_WS_URL if is_business_channel(channel) else PUBLIC_WS_URL


def channel_args(channel: str, inst_ids: Sequence[str]) -> list[dict[str, str]]:
    """``[{"channel": c, "instId": i}, ...]`` for per-instrument channels."""
    return [{"channel": channel, "instId": inst_id} for inst_id in inst_ids]


def liquidation_args(inst_types: Sequence[str] = ("SWAP",)) -> list[dict[str, str]]:
    """``liquidation-orders`` is subscribed per instType (SWAP, FUTURES, MARGIN, OPTION)."""
    return [{"channel": "liquidation-orders", "instType": t} for t in inst_types]


def subscribe_messages(args: Sequence[Mapping[str, str]], op: str = "subscribe",
                       max_args_bytes: int = MAX_ARGS_BYTES) -> list[str]:
    """(Un)subscribe requests carrying ``args``, each request's ``args`` at most
    ``max_args_bytes`` of JSON. Few big requests: each one counts toward 480 ops/hour."""
    messages: list[str] = []
    chunk: list[bytes] = []
    size = 2  # the brackets
    for arg in args:
        encoded = orjson.dumps(dict(arg))
        if len(encoded) + 2 > max_args_bytes:
            raise ValueError(f"okx: one subscribe arg is larger than {max_args_bytes} bytes")
        if chunk and size + len(encoded) + 1 > max_args_bytes:
            messages.append(_request(op, chunk))
            chunk, size = [], 2
        size += len(encoded) + (1 if chunk else 0)
        chunk.append(encoded)
    if chunk:
        messages.append(_request(op, chunk))
    return messages


def _request(op: str, encoded_args: list[bytes]) -> str:
    return '{"op":%s,"args":[%s]}' % (orjson.dumps(op).decode(), b",".join(encoded_args).decode())


def books_url(inst_id: str, depth: int = BOOKS_MAX_DEPTH) -> str:
    """GET /api/v5/market/books: the REST snapshot (with ``seqId``) the book engine splices WS
    updates onto once OKX withdraws the initial WS snapshot."""
    return f"{REST_BASE}{BOOKS_PATH}?instId={inst_id}&sz={max(1, min(depth, BOOKS_MAX_DEPTH))}"


def long_short_account_ratio_url(ccy: str, period: str = "5m") -> str:
    """GET rubik long-short-account-ratio for a currency (all its futures and perps)."""
    if period not in RUBIK_PERIODS:
        raise ValueError(f"okx: rubik period must be one of {sorted(RUBIK_PERIODS)}")
    return f"{REST_BASE}{LONG_SHORT_ACCOUNT_RATIO_PATH}?ccy={ccy}&period={period}"


# ---- candle intervals ----

_UNIT_MS = {"s": 1000, "m": 60_000, "H": 3_600_000, "D": 86_400_000, "W": 7 * 86_400_000}
_UNIT_NAME = {"s": "s", "m": "m", "H": "h", "D": "d", "W": "w", "M": "M"}
_UTC8 = timezone(timedelta(hours=8))
#: OKX bar -> (our interval, length in ms or None for months, months, tz of the bar boundaries).
#: Bars of 6H and up without ``utc`` start at UTC+8 boundaries: they differ from the UTC bars of
#: the same length, so they are named ``..._utc8``.
CANDLE_BARS: dict[str, tuple[str, int | None, int, timezone]] = {}
for _bar in ("1s", "1m", "3m", "5m", "15m", "30m", "1H", "2H", "4H", "6H", "12H", "1D", "2D", "3D", "5D",
             "1W", "1M", "3M"):
    _n, _u = int(_bar[:-1]), _bar[-1]
    _utc8 = _u in "DWM" or (_u == "H" and _n >= 6)
    CANDLE_BARS[_bar] = (f"{_n}{_UNIT_NAME[_u]}" + ("_utc8" if _utc8 else ""),
                         _n * _UNIT_MS[_u] if _u != "M" else None, _n if _u == "M" else 0,
                         _UTC8 if _utc8 else timezone.utc)
    if _utc8:
        CANDLE_BARS[_bar + "utc"] = (f"{_n}{_UNIT_NAME[_u]}", _n * _UNIT_MS[_u] if _u != "M" else None,
                                     _n if _u == "M" else 0, timezone.utc)
del _bar, _n, _u, _utc8
INTERVAL_TO_BAR = {v[0]: k for k, v in CANDLE_BARS.items()}


def candle_channel(interval: str) -> str:
    """``candle<bar>`` for one of our intervals (``1m`` -> candle1m, ``1d`` -> candle1Dutc,
    ``1d_utc8`` -> candle1D)."""
    bar = INTERVAL_TO_BAR.get(interval)
    if bar is None:
        raise ValueError(f"okx: no candle channel for interval {interval!r}")
    return "candle" + bar


def _close_time(open_time: int, length_ms: int | None, months: int, tz: timezone) -> int:
    if length_ms is not None:
        return open_time + length_ms - 1
    start = datetime.fromtimestamp(open_time / 1000, tz)
    month0 = start.month - 1 + months
    end = start.replace(year=start.year + month0 // 12, month=month0 % 12 + 1)
    return int(end.timestamp() * 1000) - 1


# ---- WebSocket frames ----

def parse_message(raw: str | bytes, symbols: SymbolMap, rx_ns: int, rx_ms: int) -> ParseResult:
    """Pure: one OKX public/business frame -> events, book messages and flags."""
    if raw == "pong" or raw == b"pong":
        return _IGNORED
    if not isinstance(raw, (str, bytes)):
        return _GARBAGE
    try:
        msg = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return _GARBAGE
    if type(msg) is not dict:
        return _GARBAGE
    event = msg.get("event")
    if event is not None:
        return _parse_event(msg, event)
    arg, data = msg.get("arg"), msg.get("data")
    if type(arg) is not dict or type(data) is not list:
        return _GARBAGE
    channel = arg.get("channel")
    if type(channel) is not str:
        return _GARBAGE
    if channel == "liquidation-orders":
        inst_type = arg.get("instType")
        res = _parse_liquidations(data, symbols, rx_ns, rx_ms)
        return with_topic(res, f"{channel}:{inst_type}", _SHARED) if type(inst_type) is str else res
    res = _parse_channel(msg, arg, data, channel, symbols, rx_ns, rx_ms)
    native = arg.get("instId")
    # the subscription the frame belongs to, as the feed names it: ``channel:instId``
    return with_topic(res, f"{channel}:{native}", _SHARED) if res.data and type(native) is str else res


def _parse_channel(msg: dict, arg: dict, data: list, channel: str, symbols: SymbolMap, rx_ns: int,
                   rx_ms: int) -> ParseResult:
    handler = _HANDLERS.get(channel)
    if handler is None:
        if channel.startswith("candle"):
            handler = _CANDLE_HANDLERS.get(channel)
            if handler is None:
                return _MALFORMED_DATA  # a bar OKX does not have
        else:
            return _IGNORED_DATA  # market data of a channel we do not normalize (mark-price ...)
    native = arg.get("instId")
    if type(native) is not str:
        return _MALFORMED_DATA
    entry = symbols.get(native)
    if entry is None:
        return _REJECTED  # hostile or not configured: never near a stream key
    out = _Out()
    for item in data:
        handler(out, msg, item, native, entry, channel, rx_ns, rx_ms)
    return out.result()


def _parse_event(msg: dict, event: Any) -> ParseResult:
    if event == "error" or (type(event) is str and event.endswith("-error")):
        return ParseResult(error=f"okx error {short_repr(msg.get('code'))}: {short_repr(msg.get('msg'))}")
    if event == "notice":
        return _ROTATE if msg.get("code") == NOTICE_RECONNECT else _IGNORED
    if type(event) is str:
        return _IGNORED  # subscribe / unsubscribe acks, channel-conn-count ...
    return _GARBAGE


class _Out:
    """Accumulates what the items of one frame turn into."""

    __slots__ = ("events", "books", "rejected", "errors")

    def __init__(self) -> None:
        self.events: list = []
        self.books: list[BookMsg] = []
        self.rejected = 0
        self.errors = 0

    def result(self) -> ParseResult:
        return ParseResult(events=self.events, books=self.books, data=True, rejected=self.rejected,
                           parse_errors=self.errors)


Handler = Callable[[_Out, dict, Any, str, tuple[str, str], str, int, int], None]


def _trade(out: _Out, msg: dict, d: Any, native: str, entry: tuple[str, str], channel: str,
           rx_ns: int, rx_ms: int) -> None:
    if type(d) is not dict:
        out.errors += 1
        return
    # side is the taker's side. ``trades-all`` (what we subscribe) is one fill per row, like REST
    # history-trades; a ``trades`` row aggregates the fills of one taker order (``count``, tradeId =
    # the last fill's id) and is still parsed the same way
    ev = trade_from_row(d, OKX_TRADE, EXCHANGE, native, entry, rx_ns, rx_ms)
    if ev is None:
        out.errors += 1
    else:
        out.events.append(ev)


def _levels(raw: Any) -> list[Level] | None:
    """``[[px, sz, "0", count], ...]`` -> ``[(px, sz), ...]``; None if any level is bad (a book
    with a silently skipped level would be wrong, so the whole message is refused)."""
    if type(raw) is not list:
        return None
    out: list[Level] = []
    for lvl in raw:
        if type(lvl) is not list or len(lvl) < 2 or not is_decimal_str(lvl[0]) or not is_decimal_str(lvl[1]):
            return None
        out.append((lvl[0], lvl[1]))
    return out


def _book(out: _Out, msg: dict, d: Any, native: str, entry: tuple[str, str], channel: str,
          rx_ns: int, rx_ms: int) -> None:
    if type(d) is not dict:
        out.errors += 1
        return
    if channel == "books5":
        snapshot = True  # every push is the full 5-level book
    else:
        action = msg.get("action")
        if action not in ("snapshot", "update"):
            out.errors += 1
            return
        snapshot = action == "snapshot"
    bids, asks = _levels(d.get("bids", [])), _levels(d.get("asks", []))
    ts = ms_int(d.get("ts"))
    seq = seq_int(d.get("seqId", 0))
    prev = d.get("prevSeqId")
    prev_seq = seq_int(prev) if prev is not None else (-1 if snapshot else None)
    checksum = seq_int(d.get("checksum", 0))
    if (bids is None or asks is None or ts is None or seq is None or checksum is None
            or (prev is not None and prev_seq is None)):
        out.errors += 1
        return
    out.books.append(BookMsg(exchange=EXCHANGE, market=entry[1], symbol=entry[0], native_symbol=native,
                             snapshot=snapshot, seq=seq, bids=bids, asks=asks, ts_exchange=ts,
                             ts_receive=rx_ms, prev_seq=prev_seq, checksum=checksum))


def _bbo(out: _Out, msg: dict, d: Any, native: str, entry: tuple[str, str], channel: str,
         rx_ns: int, rx_ms: int) -> None:
    if type(d) is not dict:
        out.errors += 1
        return
    bids, asks = _levels(d.get("bids", [])), _levels(d.get("asks", []))
    ts, seq = ms_int(d.get("ts")), seq_int(d.get("seqId", 0))
    if bids is None or asks is None or ts is None or seq is None or seq < 0:
        out.errors += 1
        return
    bid = bids[0] if bids else ("", "")
    ask = asks[0] if asks else ("", "")
    out.events.append(Bbo(exchange=EXCHANGE, market=entry[1], symbol=entry[0], native_symbol=native,
                          ts_exchange=ts, ts_receive=rx_ms, bid_price=bid[0], bid_qty=bid[1],
                          ask_price=ask[0], ask_qty=ask[1], update_id=seq).to_wire(rx_ns))


_TICKER_FIELDS = ("last", "open24h", "high24h", "low24h", "vol24h", "volCcy24h", "bidPx", "bidSz",
                  "askPx", "askSz")


def _ticker(out: _Out, msg: dict, d: Any, native: str, entry: tuple[str, str], channel: str,
            rx_ns: int, rx_ms: int) -> None:
    if type(d) is not dict:
        out.errors += 1
        return
    ts = ms_int(d.get("ts"))
    values = [opt_decimal(d.get(k)) for k in _TICKER_FIELDS]
    if ts is None or None in values:
        out.errors += 1
        return
    last, open_, high, low, vol, vol_ccy, bid_px, bid_sz, ask_px, ask_sz = values
    market = entry[1]
    out.events.append(Ticker(
        exchange=EXCHANGE, market=market, symbol=entry[0], native_symbol=native, ts_exchange=ts,
        ts_receive=rx_ms, last=last, open=open_, high=high, low=low,
        # vol24h: base units on spot, contracts on derivatives; volCcy24h: quote units on spot but
        # BASE units on derivatives, so it is no quote volume there
        volume=vol, quote_volume=vol_ccy if market == "spot" else "",
        bid_price=bid_px, bid_qty=bid_sz, ask_price=ask_px, ask_qty=ask_sz,
    ).to_wire(rx_ns))


def _funding(out: _Out, msg: dict, d: Any, native: str, entry: tuple[str, str], channel: str,
             rx_ns: int, rx_ms: int) -> None:
    if type(d) is not dict:
        out.errors += 1
        return
    # every field is optional: a 2021 push has no fundingRate, older ones no ts/nextFundingTime
    rate = opt_decimal(d.get("fundingRate"))
    funding_time = d.get("fundingTime")
    ts_raw = d.get("ts")
    next_time = ms_int(funding_time) if funding_time not in (None, "") else 0
    ts = ms_int(ts_raw) if ts_raw not in (None, "") else 0
    if rate is None or next_time is None or ts is None:
        out.errors += 1
        return
    # fundingRate is charged at fundingTime: that is the next funding time (nextFundingTime is
    # the settlement after it)
    wire = Funding(exchange=EXCHANGE, market=entry[1], symbol=entry[0], native_symbol=native,
                   ts_exchange=ts, ts_receive=rx_ms, funding_rate=rate,
                   next_funding_time=next_time).to_wire(rx_ns)
    out.events.append(no_dedup_without_time(wire, ts))


def _open_interest(out: _Out, msg: dict, d: Any, native: str, entry: tuple[str, str], channel: str,
                   rx_ns: int, rx_ms: int) -> None:
    if type(d) is not dict:
        out.errors += 1
        return
    ts = ms_int(d.get("ts"))
    oi, oi_ccy, oi_usd = opt_decimal(d.get("oi")), opt_decimal(d.get("oiCcy")), opt_decimal(d.get("oiUsd"))
    if ts is None or oi is None or oi_ccy is None or oi_usd is None or oi == "":
        out.errors += 1
        return
    out.events.append(OpenInterest(
        exchange=EXCHANGE, market=entry[1], symbol=entry[0], native_symbol=native, ts_exchange=ts,
        ts_receive=rx_ms,
        open_interest=oi,             # contracts
        open_interest_value=oi_usd,   # USD (current docs; older pushes lack it)
        open_interest_ccy=oi_ccy,     # coin units, e.g. BTC
    ).to_wire(rx_ns))


def _candle_handler(bar: tuple[str, int | None, int, timezone]) -> Handler:
    interval, length_ms, months, tz = bar

    def handle(out: _Out, msg: dict, d: Any, native: str, entry: tuple[str, str], channel: str,
               rx_ns: int, rx_ms: int) -> None:
        # [ts, o, h, l, c, vol, volCcy, volCcyQuote, confirm]; rows without confirm are open
        if type(d) is not list or len(d) < 6:
            out.errors += 1
            return
        open_time = ms_int(d[0])
        fields = [d[i] for i in range(1, 6)]
        quote = d[7] if len(d) >= 9 else (d[6] if len(d) >= 7 and entry[1] == "spot" else "")
        confirm = d[8] if len(d) >= 9 else "0"
        if (open_time is None or not all(is_decimal_str(f) for f in fields)
                or opt_decimal(quote) is None or confirm not in ("0", "1")):
            out.errors += 1
            return
        closed = confirm == "1"
        wire = Kline(
            exchange=EXCHANGE, market=entry[1], symbol=entry[0], native_symbol=native,
            ts_exchange=0,  # OKX sends no event time with a candle
            ts_receive=rx_ms, interval=interval, open_time=open_time,
            close_time=_close_time(open_time, length_ms, months, tz),
            open=fields[0], high=fields[1], low=fields[2], close=fields[3], volume=fields[4],
            quote_volume=quote, closed=closed,
        ).to_wire(rx_ns)
        # a closed candle dedups on interval+open time; an open one has no natural id
        out.events.append(wire if closed else no_dedup_without_time(wire, 0))

    return handle


def _parse_liquidations(data: list, symbols: SymbolMap, rx_ns: int, rx_ms: int) -> ParseResult:
    """``liquidation-orders`` (subscribed per instType): one item per instrument, ``details[]``
    holds its liquidations. ``side`` is the liquidation ORDER's side; ``posSide`` long/short
    names the position (``net`` in one-way mode: derived from the order side)."""
    out = _Out()
    for item in data:
        if type(item) is not dict or type(item.get("details")) is not list:
            out.errors += 1
            continue
        native = item.get("instId")
        if type(native) is not str:
            out.errors += 1
            continue
        entry = symbols.get(native)
        if entry is None:
            out.rejected += 1
            continue
        for det in item["details"]:
            if type(det) is not dict:
                out.errors += 1
                continue
            side, pos_side = det.get("side"), det.get("posSide")
            px, sz, ts = det.get("bkPx"), det.get("sz"), ms_int(det.get("ts"))
            if (side not in ("buy", "sell") or not is_decimal_str(px) or not is_decimal_str(sz)
                    or ts is None or pos_side not in ("long", "short", "net", "", None)):
                out.errors += 1
                continue
            if pos_side not in ("long", "short"):
                pos_side = "long" if side == "sell" else "short"  # selling closes a long
            out.events.append(Liquidation(
                exchange=EXCHANGE, market=entry[1], symbol=entry[0], native_symbol=native,
                ts_exchange=ts, ts_receive=rx_ms, side=side, position_side=pos_side, price=px, qty=sz,
                sampled=True,  # OKX: not every liquidation is pushed
            ).to_wire(rx_ns))
    return out.result()


_HANDLERS: dict[str, Handler] = {
    "trades": _trade,
    "trades-all": _trade,
    "books": _book,
    "books5": _book,
    "books-l2-tbt": _book,
    "books50-l2-tbt": _book,
    "bbo-tbt": _bbo,
    "tickers": _ticker,
    "funding-rate": _funding,
    "open-interest": _open_interest,
}


#: candle<bar> -> its handler (built once)
_CANDLE_HANDLERS: dict[str, Handler] = {"candle" + bar: _candle_handler(v) for bar, v in CANDLE_BARS.items()}


# ---- REST ----

def rest_envelope(body: Any, exchange: str, code_key: str, ok_code: Any, msg_key: str, payload_key: str,
                  payload_type: type) -> tuple[Any, str | None]:
    """(payload, error) of a venue's REST envelope ``{code, msg, payload}`` (bytes/str or parsed):
    (payload, None) when the code is ``ok_code`` and the payload a ``payload_type``; (None, the
    venue's error text) on another code; (None, None) when it is not such an envelope."""
    if isinstance(body, (str, bytes)):
        try:
            body = orjson.loads(body)
        except orjson.JSONDecodeError:
            return None, None
    if type(body) is not dict:
        return None, None
    code = body.get(code_key)
    if code != ok_code:
        return None, f"{exchange} error {short_repr(code)}: {short_repr(body.get(msg_key))}"
    payload = body.get(payload_key)
    return (payload, None) if type(payload) is payload_type else (None, None)


def _rest_body(body: Any) -> tuple[list | None, str | None]:
    """(data, error) of an OKX REST body: ``{"code": "0", "msg": "", "data": [...]}``."""
    return rest_envelope(body, EXCHANGE, "code", "0", "msg", "data", list)


def parse_rest_books(body: Any, inst_id: str, symbols: SymbolMap, rx_ms: int) -> ParseResult:
    """GET /api/v5/market/books -> one BookMsg snapshot (``seq`` = ``seqId``, ``prev_seq`` -1).

    Shape per the OKX docs (no recorded fixture): ``{"code":"0","msg":"","data":[{"asks":
    [[px,sz,"0",count]...], "bids": [...], "ts": "ms", "seqId": int}]}``."""
    entry = symbols.get(inst_id) if type(inst_id) is str else None
    if entry is None:
        return ParseResult(rejected=1)
    data, error = _rest_body(body)
    if error is not None:
        return ParseResult(error=error)
    if not data or type(data[0]) is not dict:
        return _GARBAGE
    d = data[0]
    bids, asks = _levels(d.get("bids")), _levels(d.get("asks"))
    ts, seq = ms_int(d.get("ts")), seq_int(d.get("seqId"))
    if bids is None or asks is None or ts is None or seq is None:
        return _GARBAGE
    return ParseResult(data=True, books=[BookMsg(
        exchange=EXCHANGE, market=entry[1], symbol=entry[0], native_symbol=inst_id, snapshot=True,
        seq=seq, bids=bids, asks=asks, ts_exchange=ts, ts_receive=rx_ms, prev_seq=-1, checksum=0)])


def parse_rest_long_short_account_ratio(body: Any, native: str, symbols: SymbolMap, period: str,
                                        rx_ns: int, rx_ms: int) -> ParseResult:
    """rubik long-short-account-ratio -> LongShortRatio (kind global_account), oldest first.

    Rows are ``[ts, ratio]`` strings, newest first (docs). The ratio is per currency over all of
    its futures and perps; it is published under ``native`` (the configured instrument it is
    attributed to, e.g. ``BTC-USDT-SWAP``)."""
    entry = symbols.get(native) if type(native) is str else None
    our_period = RUBIK_PERIODS.get(period)
    if entry is None:
        return ParseResult(rejected=1)
    if our_period is None:
        raise ValueError(f"okx: rubik period must be one of {sorted(RUBIK_PERIODS)}")
    data, error = _rest_body(body)
    if error is not None:
        return ParseResult(error=error)
    if data is None:
        return _GARBAGE
    events, errors = [], 0
    for row in reversed(data):
        ts = ms_int(row[0]) if type(row) is list and len(row) >= 2 else None
        if ts is None or not is_decimal_str(row[1]):
            errors += 1
            continue
        events.append(LongShortRatio(
            exchange=EXCHANGE, market=entry[1], symbol=entry[0], native_symbol=native, ts_exchange=ts,
            ts_receive=rx_ms, kind="global_account", period=our_period, ratio=row[1]).to_wire(rx_ns))
    return ParseResult(events=events, data=True, parse_errors=errors)


# ---- REST trade history (gap fill) ----
#
# GET /api/v5/market/history-trades?instId=&type=1&after=<tradeId>&limit=100: trades with a
# tradeId below ``after``, newest first, at most 100 per page, 20 requests / 2 s per IP (docs);
# the last 3 months are kept. tradeIds are numeric strings that grow per instrument (compared as
# integers, not assumed contiguous). Rows: ``{instId, side, sz, px, tradeId, ts[, source]}``.

HISTORY_TRADES_PATH = "/api/v5/market/history-trades"
HISTORY_TRADES_LIMIT = 100


def history_trades_url(inst_id: str, after: int | None = None, limit: int = HISTORY_TRADES_LIMIT) -> str:
    """One page of ``inst_id``'s trades older than tradeId ``after`` (None = the newest)."""
    if market_of(inst_id) is None or not is_safe_id(inst_id):
        raise ValueError(f"okx: bad instId {str(inst_id)[:40]!r}")
    if type(limit) is not int or not 1 <= limit <= HISTORY_TRADES_LIMIT:
        raise ValueError(f"okx: history-trades limit must be 1..{HISTORY_TRADES_LIMIT}")
    url = f"{REST_BASE}{HISTORY_TRADES_PATH}?instId={inst_id}&type=1&limit={limit}"
    if after is not None:
        if type(after) is not int or after < 0:
            raise ValueError(f"okx: bad tradeId cursor {after!r}")
        url += f"&after={after}"
    return url


def parse_rest_trades(body: Any, inst_id: str, symbols: SymbolMap, rx_ns: int, rx_ms: int) -> ParseResult:
    """history-trades / trades body -> Trade events (``source`` rest) in the body's order (newest
    first); rows of another instrument are rejected."""
    entry = symbols.get(inst_id) if type(inst_id) is str else None
    if entry is None:
        return ParseResult(rejected=1)
    data, error = _rest_body(body)
    if error is not None:
        return ParseResult(error=error)
    if data is None:
        return _GARBAGE
    return rest_trade_rows(data, OKX_TRADE, "instId", EXCHANGE, inst_id, entry, rx_ns, rx_ms)


#: the channel our ``trade`` data type is collected from: one fill per row (the public ``trades``
#: channel aggregates fills per taker order, so its ids skip and its rows would not match the
#: fills REST history-trades returns to a gap fill)
TRADE_CHANNEL = "trades-all"
#: channels whose rows are trades (``trades`` kept readable: harmless if an old subscription lingers)
TRADE_CHANNELS = frozenset({TRADE_CHANNEL, "trades"})


def trade_stream_native(stream: str) -> str | None:
    """The instId of a ``trades-all:<instId>`` (or ``trades:<instId>``) stream, else None."""
    channel, _, inst_id = stream.partition(":")
    return inst_id if channel in TRADE_CHANNELS and inst_id else None


# ---- market-data runtime glue (see base.MARKET_DATA_MODULES) ----
#
# One /ws/v5/public feed (books, bbo-tbt, tickers, funding-rate, open-interest, liquidation-orders)
# and one /ws/v5/business feed (trades-all, candles). A stream is named
# ``channel:instId`` (``liquidation-orders:SWAP`` for the per-instType channel): exactly the topic
# the parser reports. Few large subscribe requests; resubscribing one stream costs 2 of the 480
# ops per connection-hour, so it is paced at 150 per hour.

MD_SUPPORTED: dict[str, tuple[str, ...]] = {
    "spot": ("trade", "book", "bbo", "ticker", "kline"),
    "perp": ("trade", "book", "bbo", "ticker", "kline", "funding", "open_interest", "liquidation", "long_short"),
}
_MD_CHANNELS = {"book": "books", "bbo": "bbo-tbt", "ticker": "tickers",
                "funding": "funding-rate", "open_interest": "open-interest"}
#: our long/short period -> rubik's
RUBIK_PERIOD_OF = {v: k for k, v in RUBIK_PERIODS.items()}
#: rubik allows 5 requests / 2 s per IP: polls stay below 2/s
LONG_SHORT_MAX_RATE = 2.0
#: GET /market/books: 40 requests / 2 s per IP; snapshots stay well below (the instruments poll
#: shares the client's 20 / 2 s budget)
SNAPSHOT_RATE = 4.0


def _md_markets(cfg: Any) -> list[str]:
    return md_markets(cfg, MD_SUPPORTED)


def md_native(symbol: str, market: str) -> str:
    """``BTC-USDT`` spot -> ``BTC-USDT``; perp -> ``BTC-USDT-SWAP``."""
    return symbol if market == "spot" else f"{symbol}-SWAP"


def md_symbols(cfg: Any) -> dict[str, tuple[str, str]]:
    """native -> (canonical, market) over every selected market (natives differ per market)."""
    return {md_native(sym, m): (sym, m) for m in _md_markets(cfg) for sym in cfg.symbols}


def _wanted(cfg: Any) -> set[str]:
    return {c for m in _md_markets(cfg) for c in cfg.md_channels(MD_SUPPORTED[m])}


def market_data_problem(cfg: Any) -> str | None:
    markets = _md_markets(cfg)
    problem = unsupported_channels(cfg, EXCHANGE, MD_SUPPORTED)
    if problem is not None:
        return problem
    return interval_and_period_problem(cfg, EXCHANGE, _wanted(cfg), markets, INTERVAL_TO_BAR, RUBIK_PERIOD_OF)


def market_data_feeds(cfg: Any) -> list[tuple[WsFeed, list[str]]]:
    symbols = md_symbols(cfg)
    public: list[str] = []
    business: list[str] = []
    books = False
    for market in _md_markets(cfg):
        channels = cfg.md_channels(MD_SUPPORTED[market])
        books = books or "book" in channels
        for sym in cfg.symbols:
            native = md_native(sym, market)
            for c in channels:
                if c == "kline":
                    business.extend(f"{candle_channel(i)}:{native}" for i in cfg.kline_intervals)
                elif c == "trade":
                    business.append(f"{TRADE_CHANNEL}:{native}")
                elif c in _MD_CHANNELS:
                    public.append(f"{_MD_CHANNELS[c]}:{native}")
        if market == "perp" and "liquidation" in channels and cfg.symbols:
            # one stream for every swap: frames about other instruments are counted as rejected
            public.append("liquidation-orders:SWAP")
    feeds: list[tuple[WsFeed, list[str]]] = []
    if public:
        feeds.append((OkxMdFeed(symbols, business=False, books=books), public))
    if business:
        feeds.append((OkxMdFeed(symbols, business=True), business))
    return feeds


def market_data_polls(cfg: Any) -> list[RestPoll]:
    """Rubik long/short account ratio: one request per currency, attributed to each of the
    configured swaps of that currency."""
    if "perp" not in _md_markets(cfg) or "long_short" not in cfg.md_channels(MD_SUPPORTED["perp"]):
        return []
    period = RUBIK_PERIOD_OF.get(cfg.long_short_period)
    if period is None:
        return []
    symbols = md_symbols(cfg)
    by_ccy: dict[str, list[str]] = {}
    for sym in cfg.symbols:
        by_ccy.setdefault(sym.partition("-")[0], []).append(md_native(sym, "perp"))
    interval = max(cfg.rest_poll_interval, len(by_ccy) / LONG_SHORT_MAX_RATE)
    return [RestPoll(long_short_account_ratio_url(ccy, period), 1, interval,
                     _ls_parser(natives, symbols, period), f"long_short {ccy}")
            for ccy, natives in by_ccy.items()]


def _ls_parser(natives: list[str], symbols: SymbolMap, period: str) -> Callable[[Any, int, int], ParseResult]:
    def parse(body: Any, rx_ns: int, rx_ms: int) -> ParseResult:
        out = ParseResult(data=True)
        for native in natives:
            r = parse_rest_long_short_account_ratio(body, native, symbols, period, rx_ns, rx_ms)
            out.events.extend(r.events)
            out.parse_errors += r.parse_errors
            out.rejected += r.rejected
            out.error = out.error or r.error
        return out
    return parse


def book_snapshot_request(market: str, native: str, cfg: Any) -> RestPoll | None:
    """GET /market/books (only used with ``book_ws_snapshot: false``)."""
    symbols = md_symbols(cfg)
    if native not in symbols or symbols[native][1] != market:
        return None
    return RestPoll(books_url(native, cfg.book_depth), 1, 0.0,
                    lambda body, rx_ns, rx_ms: parse_rest_books(body, native, symbols, rx_ms),
                    f"books {native}")


def book_rest_budget(cfg: Any) -> tuple[int, float, float]:
    return 1, SNAPSHOT_RATE, 2 * SNAPSHOT_RATE


class OkxMdFeed(WsFeed):
    """An OKX public (or business: trades-all, candles) market-data connection group. Both paths
    have the same limits (3 connects/s per IP, 480 ops per connection-hour, 64 KB of args) and
    the same keep-alive (cut after 30 s without a push: text ping when idle)."""

    name = "okx"
    default_ws_base = "wss://ws.okx.com:8443"
    # the server cuts a connection idle for 30 s: text ping every 20 s, answered by text pong
    keepalive = KeepAlive(server_pings=False, client_ping=True, interval=PING_INTERVAL, text_ping=PING)
    max_streams_per_connection = 500
    max_send_rate = 3.0
    resubscribe_rate = 150 / 3600
    resubscribe_burst = 5.0
    #: 3 connection requests per second per IP
    connect_rate = 2.0

    def __init__(self, symbols: SymbolMap, business: bool = False, books: bool = False) -> None:
        self.symbols = symbols
        self.business = business
        self.books = books
        self.label = "md business" if business else "md public"

    def ws_url(self, streams: Sequence[str]) -> str:
        return BUSINESS_WS_URL if self.business else PUBLIC_WS_URL

    @staticmethod
    def _args(streams: Sequence[str]) -> list[dict[str, str]]:
        out = []
        for st in streams:
            channel, _, name = st.partition(":")
            out.append({"channel": channel, "instType" if channel == "liquidation-orders" else "instId": name})
        return out

    def subscribe_messages(self, streams: Sequence[str]) -> list[str]:
        return subscribe_messages(self._args(streams))

    def resubscribe_messages(self, streams: Sequence[str]) -> list[str] | None:
        args = self._args(streams)
        return subscribe_messages(args, op="unsubscribe") + subscribe_messages(args)

    def parse_ws_message(self, raw: str | bytes, rx_ns: int, rx_ms: int) -> ParseResult:
        return parse_message(raw, self.symbols, rx_ns, rx_ms)

    def watch_topic(self, stream: str) -> bool:
        # candles are pushed every second or so whatever the activity; the rest is event-driven
        # (trades-all only when something trades; books send a keep-alive only about once a
        # minute; funding every 30-90 s)
        return stream.startswith("candle")

    def book_stream(self, market: str, native: str) -> str | None:
        entry = self.symbols.get(native)
        if not self.books or self.business or entry is None or entry[1] != market:
            return None
        return f"books:{native}"
