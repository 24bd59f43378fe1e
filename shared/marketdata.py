"""Normalized market-data events (issue 4): one type per data type of the seeds.

Every type shares ``exchange, market, symbol (canonical BASE-QUOTE), native_symbol, ts_exchange,
ts_receive`` (integer ms; ``ts_exchange`` 0 when the exchange sends no time) and is published to
``md:{type}:{exchange}:{market}:{symbol}`` (:func:`shared.events.md_stream_key`). Prices,
quantities, rates and ratios are decimal strings exactly as the exchange sent them (never floats);
a field the exchange did not send is ``""``. Book levels are JSON text ``[["price","qty"], ...]``.

Dedup keys are the natural id of each type (what two receptions of the same exchange message,
e.g. during a rotation overlap or on two HA nodes, have in common):

==================  =================================================================
type                dedup key (after ``{prefix}:{exchange}:{market}:{native}``)
==================  =================================================================
trade               trade id
agg_trade           aggregate id (Binance spot ``@aggTrade``; prefix ``at``)
trade_gap           from/to id + from/to time (in the trade stream)
book                book sequence (top-N snapshot taken after that update)
book_delta          sequence of the update
book_gap            last good sequence + reason + exchange time
bbo                 update id, else exchange time
ticker              exchange time (+ sequence where sent)
kline               interval + open time + ``c`` when closed, else the event time
funding             next funding time + exchange time
open_interest       exchange time
liquidation         exchange time + side + price + qty
long_short_*        period + timestamp
volatility_index    exchange time
==================  =================================================================

:class:`BookMsg` is not published: it is what a parser hands to the worker's book engine
(``workers/book.py``), which applies each exchange's sequence rule and publishes ``book`` /
``book_delta`` / ``book_gap`` events.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import ClassVar

import orjson

from shared.events import Trade, WireEvent, md_stream_key

__all__ = [
    "Trade", "TradeGap", "BookTop", "BookDelta", "BookGap", "Bbo", "Ticker", "Kline", "Funding", "OpenInterest",
    "Liquidation", "LongShortRatio", "VolatilityIndex", "BookMsg", "Level", "levels_json", "MD_TYPES",
]

Level = tuple[str, str]  # (price, qty) as the exchange sent them

#: exchanges whose book sequence only grows per symbol (Binance ``u``, Deribit ``change_id``):
#: their ``book`` / ``book_delta`` events carry it as ``mono_id`` (cross-node dedup by the stream's
#: high-watermark). OKX and Bybit sequences can restart (service restarts), so not theirs.
MONO_BOOK_SEQ_EXCHANGES = frozenset({"binance", "deribit"})


def levels_json(levels: list[Level] | list[list[str]]) -> str:
    """``[["price","qty"], ...]`` as compact JSON text."""
    return orjson.dumps(levels).decode()


@dataclass(slots=True)
class _MdEvent:
    """Common part; subclasses set TYPE, PREFIX and implement ``_body`` / ``_natural_id``."""

    exchange: str
    market: str          # spot | perp | future | option | index
    symbol: str          # canonical BASE-QUOTE
    native_symbol: str
    ts_exchange: int     # ms; 0 = the exchange sent no time
    ts_receive: int      # ms, when the collector received the frame

    TYPE: ClassVar[str] = ""
    PREFIX: ClassVar[str] = ""

    def stream_key(self) -> str:
        return md_stream_key(self.TYPE, self.exchange, self.market, self.symbol)

    def dedup_key(self) -> str:
        return f"{self.PREFIX}:{self.exchange}:{self.market}:{self.native_symbol}:{self._natural_id()}"

    def _natural_id(self) -> str:
        return str(self.ts_exchange)

    def _body(self) -> list[str]:
        return []

    def fields(self) -> list[str]:
        return [
            "type", self.TYPE,
            "exchange", self.exchange,
            "market", self.market,
            "symbol", self.symbol,
            "native_symbol", self.native_symbol,
            *self._body(),
            "ts_exchange", str(self.ts_exchange),
            "ts_receive", str(self.ts_receive),
        ]

    def _mono_id(self) -> str | None:
        """The natural id when it only grows within the stream (see shared.events), else None."""
        return None

    def to_wire(self, rx_ns: int | None = None) -> WireEvent:
        wire = [self.stream_key(), self.dedup_key(), self.TYPE, self.fields(),
                time.monotonic_ns() if rx_ns is None else rx_ns]
        mono = self._mono_id()
        if mono is not None:
            wire.append(mono)
        return wire


@dataclass(slots=True)
class BookTop(_MdEvent):
    """The local book's best ``depth`` levels per side after update ``seq``."""

    seq: int = 0
    depth: int = 0
    bids: list[Level] = field(default_factory=list)   # best first (price descending)
    asks: list[Level] = field(default_factory=list)   # best first (price ascending)

    TYPE: ClassVar[str] = "book"
    PREFIX: ClassVar[str] = "b"

    def _natural_id(self) -> str:
        return str(self.seq)

    def _mono_id(self) -> str | None:
        return str(self.seq) if self.seq > 0 and self.exchange in MONO_BOOK_SEQ_EXCHANGES else None

    def _body(self) -> list[str]:
        return ["seq", str(self.seq), "depth", str(self.depth),
                "bids", levels_json(self.bids), "asks", levels_json(self.asks)]


@dataclass(slots=True)
class BookDelta(_MdEvent):
    """One applied update: absolute quantities, ``"0"``-like quantity = level removed.
    ``snapshot`` = "1" when it replaces the whole book (first message after a (re)sync)."""

    seq: int = 0
    prev_seq: int = 0         # the sequence it continues (exchange's own field where it has one)
    snapshot: bool = False
    bids: list[Level] = field(default_factory=list)
    asks: list[Level] = field(default_factory=list)

    TYPE: ClassVar[str] = "book_delta"
    PREFIX: ClassVar[str] = "bd"

    def _natural_id(self) -> str:
        return str(self.seq)

    def _mono_id(self) -> str | None:
        return str(self.seq) if self.seq > 0 and self.exchange in MONO_BOOK_SEQ_EXCHANGES else None

    def _body(self) -> list[str]:
        return ["seq", str(self.seq), "prev_seq", str(self.prev_seq), "snapshot", "1" if self.snapshot else "0",
                "bids", levels_json(self.bids), "asks", levels_json(self.asks)]


@dataclass(slots=True)
class BookGap(_MdEvent):
    """Marker: the local book of this symbol lost continuity and is being resynced.

    Published into the stream the book is published to (``stream_type`` book or book_delta), so
    a consumer reading that stream sees it in order. ``reason``: gap | checksum | reset | stale.
    ``last_seq`` = last good sequence, ``got_seq`` = the sequence that broke it (0 = unknown)."""

    reason: str = "gap"
    last_seq: int = 0
    got_seq: int = 0
    stream_type: str = "book"

    TYPE: ClassVar[str] = "book_gap"
    PREFIX: ClassVar[str] = "bg"

    def stream_key(self) -> str:
        return md_stream_key(self.stream_type, self.exchange, self.market, self.symbol)

    def _natural_id(self) -> str:
        return f"{self.last_seq}:{self.reason}:{self.got_seq}:{self.ts_exchange}"

    def _body(self) -> list[str]:
        return ["reason", self.reason, "last_seq", str(self.last_seq), "got_seq", str(self.got_seq)]


@dataclass(slots=True)
class TradeGap(_MdEvent):
    """Marker: trades of this symbol are missing between two bounds and could not be filled from
    the exchange's REST history (too old, too many pages, endpoint error; Bybit serves only the
    most recent trades). Published into the symbol's trade stream (``stream_type``: trade, or
    agg_trade for Binance spot aggregates), in order with its trades.

    Bounds are exclusive: the trades after ``from_id`` / ``from_ts`` (the last one we have) and
    before ``to_id`` / ``to_ts`` (the first one we have again) may be missing. An id is "" where the
    exchange's ids are not ordered (Bybit) or unknown; a time is 0 when unknown. ``reason``:
    too_old | max_pages | error | not_covered | stopped."""

    reason: str = "error"
    from_id: str = ""
    to_id: str = ""
    from_ts: int = 0
    to_ts: int = 0
    stream_type: str = "trade"

    TYPE: ClassVar[str] = "trade_gap"
    PREFIX: ClassVar[str] = "tg"

    def stream_key(self) -> str:
        return md_stream_key(self.stream_type, self.exchange, self.market, self.symbol)

    def dedup_key(self) -> str:
        # aggregate ids are not trade ids: a marker of the agg_trade tape has keys of its own
        prefix = self.PREFIX if self.stream_type == "trade" else f"{self.PREFIX}-{self.stream_type}"
        return f"{prefix}:{self.exchange}:{self.market}:{self.native_symbol}:{self._natural_id()}"

    def _natural_id(self) -> str:
        return f"{self.from_id}:{self.to_id}:{self.from_ts}:{self.to_ts}"

    def _body(self) -> list[str]:
        return ["reason", self.reason, "from_id", self.from_id, "to_id", self.to_id,
                "from_ts", str(self.from_ts), "to_ts", str(self.to_ts)]


@dataclass(slots=True)
class Bbo(_MdEvent):
    """Best bid / offer (Binance bookTicker, OKX bbo-tbt)."""

    bid_price: str = ""
    bid_qty: str = ""
    ask_price: str = ""
    ask_qty: str = ""
    update_id: int = 0   # 0 = none sent

    TYPE: ClassVar[str] = "bbo"
    PREFIX: ClassVar[str] = "q"

    def _natural_id(self) -> str:
        return f"u{self.update_id}" if self.update_id else str(self.ts_exchange)

    def _body(self) -> list[str]:
        return ["bid_price", self.bid_price, "bid_qty", self.bid_qty, "ask_price", self.ask_price,
                "ask_qty", self.ask_qty, "update_id", str(self.update_id)]


@dataclass(slots=True)
class Ticker(_MdEvent):
    """Rolling 24 h statistics and, where the exchange's ticker carries them (Bybit linear,
    Deribit perpetuals), mark/index price, funding and open interest."""

    last: str = ""
    open: str = ""
    high: str = ""
    low: str = ""
    volume: str = ""          # base units (contracts where the exchange counts so)
    quote_volume: str = ""
    change_pct: str = ""
    bid_price: str = ""
    bid_qty: str = ""
    ask_price: str = ""
    ask_qty: str = ""
    mark_price: str = ""
    index_price: str = ""
    funding_rate: str = ""
    next_funding_time: int = 0
    open_interest: str = ""
    seq: int = 0              # exchange's sequence where sent (Bybit cs), else 0

    TYPE: ClassVar[str] = "ticker"
    PREFIX: ClassVar[str] = "tk"

    def _natural_id(self) -> str:
        return f"{self.ts_exchange}:{self.seq}"

    def _body(self) -> list[str]:
        return ["last", self.last, "open", self.open, "high", self.high, "low", self.low,
                "volume", self.volume, "quote_volume", self.quote_volume, "change_pct", self.change_pct,
                "bid_price", self.bid_price, "bid_qty", self.bid_qty, "ask_price", self.ask_price,
                "ask_qty", self.ask_qty, "mark_price", self.mark_price, "index_price", self.index_price,
                "funding_rate", self.funding_rate, "next_funding_time", str(self.next_funding_time),
                "open_interest", self.open_interest, "seq", str(self.seq)]


@dataclass(slots=True)
class Kline(_MdEvent):
    """One candle update; ``closed`` True on the final update of its interval."""

    interval: str = ""        # 1m, 5m, 1h ... (the exchange's spelling normalized to this form)
    open_time: int = 0
    close_time: int = 0
    open: str = ""
    high: str = ""
    low: str = ""
    close: str = ""
    volume: str = ""
    quote_volume: str = ""
    trades: int = 0
    closed: bool = False

    TYPE: ClassVar[str] = "kline"
    PREFIX: ClassVar[str] = "k"

    def stream_key(self) -> str:
        # one stream per interval: md:kline_1m:binance:spot:BTC-USDT
        return md_stream_key(f"kline_{self.interval}", self.exchange, self.market, self.symbol)

    def _natural_id(self) -> str:
        return f"{self.interval}:{self.open_time}:{'c' if self.closed else self.ts_exchange}"

    def _body(self) -> list[str]:
        return ["interval", self.interval, "open_time", str(self.open_time), "close_time", str(self.close_time),
                "open", self.open, "high", self.high, "low", self.low, "close", self.close,
                "volume", self.volume, "quote_volume", self.quote_volume, "trades", str(self.trades),
                "closed", "1" if self.closed else "0"]


@dataclass(slots=True)
class Funding(_MdEvent):
    """Funding rate (current / predicted for the next funding time) with mark and index price."""

    funding_rate: str = ""
    next_funding_time: int = 0
    mark_price: str = ""
    index_price: str = ""

    TYPE: ClassVar[str] = "funding"
    PREFIX: ClassVar[str] = "f"

    def _natural_id(self) -> str:
        return f"{self.next_funding_time}:{self.ts_exchange}"

    def _body(self) -> list[str]:
        return ["funding_rate", self.funding_rate, "next_funding_time", str(self.next_funding_time),
                "mark_price", self.mark_price, "index_price", self.index_price]


@dataclass(slots=True)
class OpenInterest(_MdEvent):
    open_interest: str = ""   # contracts / base units as the exchange reports
    open_interest_value: str = ""   # in quote currency where sent
    #: in base-currency units where the exchange reports them besides contracts (OKX ``oiCcy``)
    open_interest_ccy: str = ""

    TYPE: ClassVar[str] = "open_interest"
    PREFIX: ClassVar[str] = "oi"

    def _body(self) -> list[str]:
        return ["open_interest", self.open_interest, "open_interest_value", self.open_interest_value,
                "open_interest_ccy", self.open_interest_ccy]


@dataclass(slots=True)
class Liquidation(_MdEvent):
    """A liquidation. ``side`` is the side of the liquidation *order* (sell = a long was closed);
    ``position_side`` long | short names the liquidated position. ``sampled`` True where the
    exchange only pushes a sample (Binance: the latest per symbol per second)."""

    side: str = ""
    position_side: str = ""
    price: str = ""
    qty: str = ""
    sampled: bool = False

    TYPE: ClassVar[str] = "liquidation"
    PREFIX: ClassVar[str] = "lq"

    def _natural_id(self) -> str:
        return f"{self.ts_exchange}:{self.side}:{self.price}:{self.qty}"

    def _body(self) -> list[str]:
        return ["side", self.side, "position_side", self.position_side, "price", self.price, "qty", self.qty,
                "sampled", "1" if self.sampled else "0"]


@dataclass(slots=True)
class LongShortRatio(_MdEvent):
    """A long/short ratio sample. ``kind``: top_position (top traders by position), top_account,
    global_account (all accounts); it names the stream type ``long_short_{kind}``."""

    kind: str = "global_account"
    period: str = ""
    ratio: str = ""
    long_pct: str = ""        # long share (0..1) where sent
    short_pct: str = ""

    TYPE: ClassVar[str] = "long_short"
    PREFIX: ClassVar[str] = "ls"

    def stream_key(self) -> str:
        return md_stream_key(f"long_short_{self.kind}", self.exchange, self.market, self.symbol)

    def dedup_key(self) -> str:
        return (f"{self.PREFIX}:{self.kind}:{self.exchange}:{self.market}:{self.native_symbol}:"
                f"{self.period}:{self.ts_exchange}")

    def _body(self) -> list[str]:
        return ["kind", self.kind, "period", self.period, "ratio", self.ratio, "long_pct", self.long_pct,
                "short_pct", self.short_pct]


@dataclass(slots=True)
class VolatilityIndex(_MdEvent):
    """Deribit DVOL-style index (``market`` = index, ``symbol`` e.g. BTC-USD)."""

    value: str = ""

    TYPE: ClassVar[str] = "volatility_index"
    PREFIX: ClassVar[str] = "vi"

    def _body(self) -> list[str]:
        return ["value", self.value]


#: every published market-data type name (kline and long_short streams add a suffix)
MD_TYPES = ("trade", "agg_trade", "trade_gap", "book", "book_delta", "book_gap", "bbo", "ticker", "kline", "funding",
            "open_interest", "liquidation", "long_short", "volatility_index")


@dataclass(slots=True)
class BookMsg:
    """A parsed order-book message, before the exchange's sequence rule is applied.

    - ``snapshot``: replaces the book (Binance REST depth, OKX/Bybit ``snapshot``, Deribit ``type: snapshot``);
      otherwise a diff with absolute quantities (a zero quantity removes the level).
    - ``seq``: the sequence this message brings the book to (Binance ``u`` / ``lastUpdateId``,
      OKX ``seqId``, Deribit ``change_id``, Bybit ``u``).
    - ``prev_seq``: the sequence it continues where the exchange says so (Binance futures ``pu``,
      OKX ``prevSeqId``, Deribit ``prev_change_id``), else None.
    - ``first_seq``: first update id in the message (Binance ``U``), else None.
    - ``checksum``: the exchange's checksum of the book after this message (OKX; 0 = not sent).
    - Deribit ``[action, price, amount]`` entries are given as (price, amount) with amount "0" for delete.
    """

    exchange: str
    market: str
    symbol: str
    native_symbol: str
    snapshot: bool
    seq: int
    bids: list[Level]
    asks: list[Level]
    ts_exchange: int = 0
    ts_receive: int = 0
    prev_seq: int | None = None
    first_seq: int | None = None
    checksum: int | None = None
