"""The normalized event model, stream keys and dedup keys.

Every event crosses the worker -> publisher channel as a *wire event*, a 5-element list::

    [stream_key, dedup_key | None, stream_class, [field, value, field, value, ...], rx_ns]

- ``stream_key``: the Redis stream it is XADDed to (scheme below);
- ``dedup_key``: the natural key the publisher deduplicates on within its window (None = never);
- ``stream_class``: ``listing``, ``trade``, ... (selects the rate limit and MAXLEN);
- fields: flat field/value strings, exactly what lands in the stream entry;
- ``rx_ns``: ``time.monotonic_ns()`` when the frame carrying it was received (CLOCK_MONOTONIC is
  machine-wide, so the publisher can measure receipt -> XADD-acknowledged latency). Not stored.
- optional 6th element ``mono_id``: the event's natural id when it only grows within its stream
  (a decimal string or int: trade id, book sequence). The publisher writes the event only when it
  is above the stream's high-watermark in Redis, atomically with the XADD, so two HA nodes put it
  in the stream once (collector/redis_scripts.py). Events without one keep the dedup-key window.

Stream keys:
- ``events:raw`` - listing lifecycle events (Node A raw-event format plus extra fields);
- ``md:{type}:{exchange}:{market}:{symbol}`` - market data, e.g. ``md:trade:binance:spot:BTC-USDT``.

Prices and quantities are decimal strings exactly as the exchange sent them, never floats.
Times are integer milliseconds since the epoch.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from shared.exchanges import format_score_weight, format_tier, resolve_score_weight, resolve_tier

LISTING_STREAM = "events:raw"

#: normalized listing statuses (every exchange's own status maps onto one of these)
PRE_TRADING = "pre_trading"
TRADING = "trading"
HALTED = "halted"
DELISTED = "delisted"
STATUSES = (PRE_TRADING, TRADING, HALTED, DELISTED)

#: listing lifecycle event names
EV_PRE_LISTING = "pre_listing"
EV_LISTING = "listing"
EV_STATUS_CHANGE = "status_change"
EV_DELISTING = "delisting"

WireEvent = list  # [stream, dedup, class, fields, rx_ns] or [..., rx_ns, mono_id]

#: exchanges whose trade ids only grow within a symbol (Binance trade/aggTrade ids, OKX tradeId,
#: the simulator's Binance): their trades carry the id as ``mono_id``. Bybit's are UUIDs, Deribit's
#: are "ETH-123" strings; those keep the keyed in-memory dedup only
MONO_TRADE_ID_EXCHANGES = frozenset({"binance", "okx"})

#: trade tape stream types -> dedup-key prefix. ``agg_trade``: Binance spot ``@aggTrade``, published
#: beside the ``@trade`` tape; its ids are aggregate ids, not trade ids, so its keys are its own
TRADE_STREAM_TYPES: dict[str, str] = {"trade": "t", "agg_trade": "at"}


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def md_stream_key(data_type: str, exchange: str, market: str, symbol: str) -> str:
    """``md:{type}:{exchange}:{market}:{symbol}``; callers pass validated parts only."""
    return f"md:{data_type}:{exchange}:{market}:{symbol}"


@dataclass(slots=True)
class Trade:
    """One public trade. ``side`` is the taker's side: ``buy`` or ``sell``."""

    exchange: str
    market: str          # spot | perp | future | option
    symbol: str          # canonical BASE-QUOTE
    native_symbol: str   # as the exchange spells it
    trade_id: str
    price: str
    qty: str
    side: str
    ts_exchange: int     # ms, exchange's trade time
    ts_receive: int      # ms, when the collector received the frame
    #: "" = the live WebSocket stream; "rest" = filled in from the exchange's REST trade history
    #: after a reconnect (the field is only written when set, so live trades keep their shape)
    source: str = ""
    #: the tape it belongs to (a key of TRADE_STREAM_TYPES): its stream type, ``type`` field, stream
    #: class and dedup prefix. ``agg_trade``: ``trade_id`` is the aggregate id
    stream_type: str = "trade"

    TYPE = "trade"

    def stream_key(self) -> str:
        return md_stream_key(self.stream_type, self.exchange, self.market, self.symbol)

    def dedup_key(self) -> str:
        # KeyError for a stream type that is not a trade tape (a programming error)
        prefix = TRADE_STREAM_TYPES[self.stream_type]
        return f"{prefix}:{self.exchange}:{self.market}:{self.native_symbol}:{self.trade_id}"

    def fields(self) -> list[str]:
        return [
            "type", self.stream_type,
            "exchange", self.exchange,
            "market", self.market,
            "symbol", self.symbol,
            "native_symbol", self.native_symbol,
            "trade_id", self.trade_id,
            "price", self.price,
            "qty", self.qty,
            "side", self.side,
            "ts_exchange", str(self.ts_exchange),
            "ts_receive", str(self.ts_receive),
        ] + (["source", self.source] if self.source else [])

    def to_wire(self, rx_ns: int) -> WireEvent:
        wire = [self.stream_key(), self.dedup_key(), self.stream_type, self.fields(), rx_ns]
        # trades of exchanges whose ids grow per symbol (Binance aggregate ids too) carry the id as
        # the natural monotonic id (cross-node dedup by the stream's high-watermark). REST-filled
        # ones too: the gap filler holds a symbol's live trades back until its fill is out, so fills
        # are in id order (a late fill that cannot be, workers/gapfill.py, strips the id again)
        if self.exchange in MONO_TRADE_ID_EXCHANGES and self.trade_id.isdigit():
            wire.append(self.trade_id)
        return wire


@dataclass(slots=True)
class InstrumentInfo:
    """One instrument as an exchange lists it, normalized (carried in ``instruments`` messages)."""

    native_symbol: str
    symbol: str          # canonical BASE-QUOTE
    base: str
    quote: str
    market: str          # spot | perp | ...
    status: str          # one of STATUSES
    raw_status: str      # the exchange's own status string
    url: str             # the exchange's trade page for it

    def to_wire(self) -> dict[str, str]:
        return {
            "symbol": self.symbol, "base": self.base, "quote": self.quote, "market": self.market,
            "status": self.status, "raw_status": self.raw_status, "url": self.url,
        }


def listing_event(
    *,
    exchange: str,
    native_symbol: str,
    info: dict[str, Any],
    event: str,
    source: str,
    detected_at: int,
    node_id: str,
    previous_status: str | None = None,
    raw_text: str | None = None,
    tier: str | int | None = None,
    score_weight: str | float | None = None,
) -> WireEvent:
    """A listing-lifecycle wire event for ``events:raw``.

    Node A fields (source, source_type, exchange, symbol, event, raw_text, url, detected_at,
    node_id) keep their meaning: ``symbol`` is the base asset, as in Node A's examples. Added:
    market, pair (canonical BASE-QUOTE), native_symbol, base, quote, status, raw_status,
    previous_status, tier and score_weight (strings, e.g. ``"1"`` and ``"1.5"``; None = Node A's
    value for ``exchange`` from :mod:`shared.exchanges`, ``""`` for an exchange without one).
    """
    if tier is None:
        tier = resolve_tier(exchange)
    if score_weight is None:
        score_weight = resolve_score_weight(exchange)
    tier_s = tier if isinstance(tier, str) else format_tier(tier)
    weight_s = score_weight if isinstance(score_weight, str) else format_score_weight(score_weight)
    base, quote, market = info["base"], info["quote"], info["market"]
    pair = info["symbol"]
    status = info["status"]
    if raw_text is None:
        raw_text = _RAW_TEXT.get(event, "{base}/{quote} {event}").format(
            base=base, quote=quote, event=event, status=info.get("raw_status", ""), market=market,
            prev=previous_status or "",
        )
    fields = [
        "source", source,
        "source_type", "exchange",
        "exchange", exchange,
        "symbol", base,
        "event", event,
        "raw_text", raw_text,
        "url", info.get("url", ""),
        "detected_at", str(detected_at),
        "node_id", node_id,
        "market", market,
        "pair", pair,
        "native_symbol", native_symbol,
        "base", base,
        "quote", quote,
        "status", status,
        "raw_status", info.get("raw_status", ""),
        "previous_status", previous_status or "",
        "tier", tier_s,
        "score_weight", weight_s,
    ]
    dedup = f"l:{exchange}:{market}:{native_symbol}:{event}:{status}"
    return [LISTING_STREAM, dedup, "listing", fields, time.monotonic_ns()]


_RAW_TEXT = {
    EV_LISTING: "New trading pair {base}/{quote} available ({market})",
    EV_PRE_LISTING: "New pair {base}/{quote} listed, not yet trading: {status} ({market})",
    EV_STATUS_CHANGE: "{base}/{quote} status changed {prev} -> {status} ({market})",
    EV_DELISTING: "{base}/{quote} delisted ({market})",
}


def fields_to_dict(fields: list[str]) -> dict[str, str]:
    return dict(zip(fields[0::2], fields[1::2]))
