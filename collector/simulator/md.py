"""Market data of the exchange simulator: books, trades, tickers, klines, funding, open interest,
liquidations, rendered in each exchange's real frame shapes (tests/fixtures/ws, SOURCES.md).

No HTTP here: ``md_server.py`` feeds the engines subscriptions and text frames and runs ``tick``.

Model. Per exchange + market + native symbol an :class:`Instrument` holds a random-walk order book
(:class:`BookSim`, integer price ticks -> integer quantity units, a fixed number of levels per side),
the exchange's book sequence numbers and 24 h statistics. Prices and quantities are integers
formatted exactly (no float on the wire path), in the exchange's style (Binance spot pads to 8
decimals, OKX strips trailing zeros, Deribit sends JSON number tokens).

Every subscribed (market, symbol, channel) is a *topic*; each topic produces updates at its rate
(default 5/s, per channel / symbol overrides, at most ``MAX_TOPIC_RATE``) within a per-exchange
budget (``max_updates_per_s``). One update is rendered once and written to every subscriber.
A book moves when its book channel is due (or, when nobody reads the book, when another channel of
the instrument is due), so the REST snapshots of Binance / OKX are consistent with the stream:

- Binance spot: diff ``U`` = previous ``u`` + 1; ``/api/v3/depth`` ``lastUpdateId`` = last ``u``.
- Binance USD-M: diff ``pu`` = previous ``u``; ``U`` jumps; ``/fapi/v1/depth`` ``lastUpdateId`` =
  the next diff's ``U`` (as in the recorded sync sequence: the first applied event starts at it).
- OKX ``books``: snapshot (``prevSeqId`` -1) on subscribe, then ``prevSeqId`` = previous ``seqId``;
  ``checksum`` 0 unless ``okx_checksum`` (then the real signed CRC32 of the top 25 levels).
- Bybit ``orderbook.50``: snapshot on subscribe, delta ``u`` = previous ``u`` + 1.
- Deribit ``book``: snapshot on subscribe, ``prev_change_id`` = previous ``change_id``.

Scripting: :meth:`MdEngine.inject_gap` makes the next book update of a symbol follow an update
that is generated and applied but never sent (a lost message: the sequence skips);
:meth:`OkxMd.bad_checksum` sends one update with a wrong checksum; :meth:`MdEngine.silence` keeps a
channel/symbol subscribed (acked) but silent; :meth:`MdEngine.drop` cuts every market-data connection.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import hashlib
import json
import logging
import math
import random
import re
import time
import uuid
import zlib
from bisect import bisect_left, insort
from collections import Counter, deque
from dataclasses import asdict, dataclass, replace
from typing import Any, Callable

import orjson

from collector.simulator.state import USD_LIKE, USD_PRICES, SimError, now_ms
from collector.simulator.wsframes import TradeTape, text_frame

log = logging.getLogger("collector.simulator")

#: seconds between two ticks of an engine (rates above 1/TICK_S cannot be honoured)
TICK_S = 0.05
MAX_TOPIC_RATE = 20.0
MAX_RATE_OVERRIDES = 1000
MAX_SILENCED = 1000
MAX_PARSE_CACHE = 100_000
MAX_BOOK_LEVELS = 1000
MAX_TRADE_HISTORY = 100_000
TAPE_MASK = TradeTape.SIZE - 1
#: idle trades generated per instrument per tick at most (a long pause is not caught up)
MAX_IDLE_TRADES_PER_TICK = 20
HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS
FUNDING_MS = 8 * HOUR_MS

# a JSON number token kept as written (Deribit); orjson.Fragment exists since orjson 3.10
_Fragment: Callable[[bytes], Any] = getattr(orjson, "Fragment", lambda b: float(b))


@dataclass
class MdConfig:
    """Market-data knobs; all can be changed at run time (POST /_sim/md/config)."""

    #: updates per second of every channel of every symbol (overrides: :meth:`MdEngine.set_rate`)
    rate: float = 5.0
    #: topic updates per second per exchange, all topics together (the CPU bound)
    max_updates_per_s: float = 5000.0
    #: levels per side of a simulated book (Bybit books are 50: the orderbook.50 topic)
    book_levels: int = 100
    #: OKX books carry the real CRC32 checksum instead of 0 (production sends 0 since 2026-06-23)
    okx_checksum: bool = False
    #: Deribit: > 0 replaces the heartbeat interval a client asks for (fast tests); 0 = as asked
    heartbeat_interval: float = 0.0
    max_instruments: int = 5000
    #: subscriptions per connection (venues; Binance keeps its own 1024 streams limit)
    max_subscriptions: int = 2000
    #: market-data WebSocket connections per port (venues)
    max_clients: int = 512
    #: trades kept per instrument for the REST trade-history endpoints (older ones are gone: a
    #: collector's gap fill that reaches past them gets the ``trade_gap`` marker path)
    trade_history: int = 2000
    #: an instrument whose trades were subscribed once keeps trading while nobody is subscribed
    #: (a dropped collector misses those trades and fills them from REST), at the channel's rate
    idle_trades: bool = True

    def update(self, values: dict[str, Any]) -> None:
        for key, value in values.items():
            if not hasattr(self, key):
                raise SimError(400, f"unknown md config field {key!r}")
            current = getattr(self, key)
            if isinstance(current, bool):
                if not isinstance(value, bool):
                    raise SimError(400, f"md config field {key!r} needs a bool")
                setattr(self, key, value)
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise SimError(400, f"md config field {key!r} needs a number")
            new = type(current)(value)
            if not math.isfinite(new) or new < 0:
                raise SimError(400, f"md config field {key!r} must be a finite number >= 0")
            if key == "rate" and new > MAX_TOPIC_RATE:
                raise SimError(400, f"rate must be 0..{MAX_TOPIC_RATE}")
            if key == "book_levels" and not 5 <= new <= MAX_BOOK_LEVELS:
                raise SimError(400, f"book_levels must be 5..{MAX_BOOK_LEVELS}")
            if key == "trade_history" and not 1 <= new <= MAX_TRADE_HISTORY:
                raise SimError(400, f"trade_history must be 1..{MAX_TRADE_HISTORY}")
            setattr(self, key, new)


# ============================================================================ number formatting
def fixed(units: int, dec: int) -> str:
    """``units`` * 10^-dec as exact fixed-point text."""
    neg = units < 0
    s = str(-units if neg else units)
    if dec:
        s = s.rjust(dec + 1, "0")
        s = s[:-dec] + "." + s[-dec:]
    return "-" + s if neg else s


def _styled(units: int, dec: int, style: str) -> str:
    if style == "pad8":
        return fixed(units * 10 ** (8 - dec), 8) if dec <= 8 else fixed(units, dec)
    s = fixed(units, dec)
    if style == "fixed" or "." not in s:
        return s + (".0" if style == "num" and "." not in s else "")
    s = s.rstrip("0")
    if s.endswith("."):
        s = s[:-1] if style == "strip" else s + "0"
    return s


class Fmt:
    """How one instrument's prices and quantities look on the wire.

    A price is ``ticks`` * ``tick`` units of 10^-``pd``; a quantity is units of 10^-``qd``.
    style: pad8 (Binance spot), fixed (Binance USD-M, Bybit), strip (OKX), num (Deribit tokens)."""

    __slots__ = ("pd", "tick", "qd", "style")

    def __init__(self, pd: int, tick: int, qd: int, style: str) -> None:
        self.pd, self.tick, self.qd, self.style = pd, tick, qd, style

    def px(self, ticks: int) -> str:
        return _styled(ticks * self.tick, self.pd, self.style)

    def qty(self, units: int) -> str:
        return _styled(units, self.qd, self.style)

    def price_float(self, ticks: int) -> float:
        return ticks * self.tick / 10 ** self.pd

    def qty_float(self, units: int) -> float:
        return units / 10 ** self.qd


def base_price(base: str, quote: str) -> float:
    """A plausible starting price of ``base`` in ``quote`` (1.0 for unknown coins)."""
    b = USD_PRICES.get(base.upper(), 1.0)
    if quote.upper() in USD_LIKE:
        return b
    q = USD_PRICES.get(quote.upper())
    return b / q if q else b


def _clamp(v: int, lo: int, hi: int) -> int:
    return max(lo, min(hi, v))


def float_text(x: float, dec: int, style: str = "fixed") -> str:
    """A derived statistic (volume in quote units ...) as decimal text in ``style``."""
    return _styled(round(x * 10 ** dec), dec, style)


# ============================================================================ book
Change = tuple[int, int, bool]   # (price ticks, new qty units (0 = removed), level existed before)


class BookSim:
    """A random-walk limit order book: ``depth`` levels per side, never crossed."""

    __slots__ = ("bids", "asks", "bk", "ak")

    def __init__(self, rng: random.Random, mid: int, depth: int, qty: Callable[[], int]) -> None:
        self.bids: dict[int, int] = {}
        self.asks: dict[int, int] = {}
        p = mid
        for _ in range(depth):
            p -= 1 if rng.random() < 0.8 else 2
            if p <= 0:
                break
            self.bids[p] = qty()
        p = mid
        for _ in range(depth):
            p += 1 if rng.random() < 0.8 else 2
            self.asks[p] = qty()
        self.bk = sorted(self.bids)   # ascending: best bid last
        self.ak = sorted(self.asks)   # ascending: best ask first

    @property
    def best_bid(self) -> int:
        return self.bk[-1] if self.bk else 0

    @property
    def best_ask(self) -> int:
        return self.ak[0] if self.ak else 0

    def depth(self) -> tuple[int, int]:
        return len(self.bk), len(self.ak)

    def _set(self, bid: bool, price: int, units: int, changes: dict[int, bool]) -> None:
        book, keys = (self.bids, self.bk) if bid else (self.asks, self.ak)
        if price not in changes:
            changes[price] = price in book
        if units <= 0:
            if book.pop(price, None) is not None:
                del keys[bisect_left(keys, price)]
        else:
            if price not in book:
                insort(keys, price)
            book[price] = units

    def step(self, rng: random.Random, qty: Callable[[], int]) -> tuple[list[Change], list[Change]]:
        """Change 1-3 things; returns (bid changes best first, ask changes best first)."""
        cb: dict[int, bool] = {}
        ca: dict[int, bool] = {}
        for _ in range(rng.randint(1, 3)):
            r = rng.random()
            bid = rng.random() < 0.5
            keys = self.bk if bid else self.ak
            if len(keys) < 3:
                continue
            if r < 0.65:   # a resting size changes, mostly near the top
                i = min(int(rng.expovariate(0.25)), len(keys) - 1)
                self._set(bid, keys[-1 - i] if bid else keys[i], qty(), cb if bid else ca)
            elif r < 0.85:  # a level goes away, another appears behind the worst (depth kept)
                i = rng.randint(1, len(keys) - 1)
                self._set(bid, keys[-1 - i] if bid else keys[i], 0, cb if bid else ca)
                worst = keys[0] if bid else keys[-1]
                new = worst - rng.randint(1, 2) if bid else worst + rng.randint(1, 2)
                if new > 0:
                    self._set(bid, new, qty(), cb if bid else ca)
            elif rng.random() < 0.5 and len(self.ak) > 2:   # price up: best ask taken, a bid steps in
                a0 = self.ak[0]
                self._set(False, a0, 0, ca)
                self._set(True, a0, qty(), cb)
                self._set(True, self.bk[0], 0, cb)
                self._set(False, self.ak[-1] + rng.randint(1, 2), qty(), ca)
            elif len(self.bk) > 2:                           # price down
                b0 = self.bk[-1]
                self._set(True, b0, 0, cb)
                self._set(False, b0, qty(), ca)
                self._set(False, self.ak[-1], 0, ca)
                low = self.bk[0] - rng.randint(1, 2)
                if low > 0:
                    self._set(True, low, qty(), cb)
        bids = [(p, self.bids.get(p, 0), ex) for p, ex in sorted(cb.items(), reverse=True)
                if ex or p in self.bids]
        asks = [(p, self.asks.get(p, 0), ex) for p, ex in sorted(ca.items()) if ex or p in self.asks]
        return bids, asks

    def top(self, n: int) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
        """(bids best first, asks best first), ``n`` levels at most each."""
        bids = [(p, self.bids[p]) for p in reversed(self.bk[-n:])] if n > 0 else []
        asks = [(p, self.asks[p]) for p in self.ak[:n]] if n > 0 else []
        return bids, asks


def okx_checksum(bids: list[tuple[str, str]], asks: list[tuple[str, str]]) -> int:
    """OKX's signed CRC32 of the top 25 levels, ``bid:size:ask:size`` interleaved (SOURCES.md 3)."""
    bids, asks = bids[:25], asks[:25]
    parts: list[str] = []
    for i in range(max(len(bids), len(asks))):
        if i < len(bids):
            parts.extend(bids[i])
        if i < len(asks):
            parts.extend(asks[i])
    crc = zlib.crc32(":".join(parts).encode())
    return crc - (1 << 32) if crc >= (1 << 31) else crc


# ============================================================================ instrument
#: one trade of the REST history: (id text, ordered number: Binance aggregate id / OKX tradeId /
#: Deribit trade_seq, price ticks, qty units, buyer is taker, time ms)
TradeRecord = tuple[str, int, int, int, bool, int]


class Instrument:
    """One simulated instrument of one exchange: book, sequence, statistics, candles."""

    def __init__(self, exchange: str, market: str, native: str, base: str, quote: str, fmt: Fmt,
                 price: float, rng: random.Random, levels: int, lot: int = 1, typical: int = 0,
                 seq0: int = 1_000_000) -> None:
        self.exchange, self.market, self.native, self.base, self.quote = exchange, market, native, base, quote
        self.fmt = fmt
        self.rng = rng
        self.lot = max(1, lot)
        units_per_coin = 10 ** fmt.qd
        self.typical = max(self.lot, typical or int(2000.0 / max(price, 1e-9) * units_per_coin))
        mid = max(levels * 3, round(price * 10 ** fmt.pd / fmt.tick))
        self.book = BookSim(rng, mid, levels, self.qty)
        self.levels = levels
        self.seq = seq0            # last book sequence generated (exchange's own id)
        self.nxt = seq0 + 1        # Binance USD-M: U of the next diff
        self.sent_seq = 0          # last book sequence written to at least one subscriber
        self.cs = seq0 * 3         # Bybit cross sequence
        self.gap_pending = 0
        self.gaps_injected = 0
        self.bad_checksum_pending = 0
        self.bad_checksums = 0
        self.updates = 0           # book updates generated
        self.stepped_tick = -1
        # statistics (price ticks, quantity units)
        self.open = self.high = self.low = self.last = (self.book.best_bid + self.book.best_ask) // 2
        self.last_qty = self.lot
        self.volume = 0
        self.quote_volume = 0.0
        self.trades = 0
        self.trade_id = rng.randint(10 ** 8, 10 ** 9)
        self.first_trade_id = self.trade_id + 1
        self.agg_id = rng.randint(10 ** 7, 10 ** 8)
        self.trade_seq = rng.randint(10 ** 6, 10 ** 7)
        self.created_ms = now_ms()
        self.klines: dict[int, list[Any]] = {}
        self.oi = self.typical * rng.randint(500, 5000)
        self.funding_bp = rng.randint(-30, 120)   # rate in 1e-6 units
        self.ticker_state: dict[str, str] | None = None   # Bybit linear: last state pushed
        self.vol_index = 50.0 + rng.random() * 30
        #: published (and idle) trades for the REST history: TradeRecord, oldest first, bounded
        self.trade_history: deque[TradeRecord] | None = None

    def qty(self) -> int:
        units = int(self.typical * self.rng.expovariate(1.0))
        return max(self.lot, units // self.lot * self.lot)

    def trade(self) -> tuple[int, int, int, bool]:
        """One taker trade at the touch: (trade id, price ticks, qty units, buyer is taker)."""
        buy = self.rng.random() < 0.5
        price = (self.book.best_ask if buy else self.book.best_bid) or self.last
        q = max(self.lot, self.qty() // 4 // self.lot * self.lot)
        self.trade_id += 1
        self.last, self.last_qty = price, q
        self.high, self.low = max(self.high, price), min(self.low, price)
        self.volume += q
        self.quote_volume += self.fmt.price_float(price) * self.fmt.qty_float(q)
        self.trades += 1
        for k in self.klines.values():
            if not k[11]:
                k[2], k[3], k[4] = max(k[2], price), min(k[3], price), price
                k[5] += q
                k[6] += self.fmt.price_float(price) * self.fmt.qty_float(q)
                k[7] += 1
                k[9] = self.trade_id
        return self.trade_id, price, q, buy

    def kline(self, interval_ms: int, now: int) -> list[Any]:
        """The candle of ``interval_ms`` to push now: [open_time, o, h, l, c, vol units, quote,
        trades, first id, last id, close_time, closed]. A candle whose time is up is pushed once
        more with closed=True; the next push starts the new one."""
        start = now - now % interval_ms
        k = self.klines.get(interval_ms)
        if k is not None and k[11]:
            k = None
        if k is not None and k[0] < start:
            k[11] = True
            return k
        if k is None:
            p = self.last
            k = [start, p, p, p, p, 0, 0.0, 0, self.trade_id + 1, self.trade_id, start + interval_ms - 1, False]
            self.klines[interval_ms] = k
        self.trade()   # the candle moves with a trade (not published on its own)
        return k

    def change(self, decimals: int, percent: bool = True) -> str:
        """24 h change (percent, or a fraction) with ``decimals`` decimals, signed."""
        if not self.open:
            return fixed(0, decimals)
        scale = (100 if percent else 1) * 10 ** decimals
        return fixed(round((self.last - self.open) * scale / self.open), decimals)

    def mark(self) -> int:
        return (self.book.best_bid + self.book.best_ask) // 2 or self.last

    def funding_rate(self, decimals: int = 8, style: str = "fixed") -> str:
        """The funding rate as a fraction (micro-units that drift a little on every call)."""
        self.funding_bp = _clamp(self.funding_bp + self.rng.randint(-2, 2), -750, 750)
        return _styled(self.funding_bp * 10 ** (decimals - 6), decimals, style)

    def open_interest(self) -> int:
        self.oi = max(self.typical, self.oi + self.rng.randint(-3, 3) * self.typical)
        return self.oi

    def public(self) -> dict[str, Any]:
        nb, na = self.book.depth()
        return {"market": self.market, "symbol": self.native, "seq": self.seq, "sent_seq": self.sent_seq,
                "updates": self.updates, "gaps_injected": self.gaps_injected,
                "gap_pending": self.gap_pending, "bad_checksums": self.bad_checksums,
                "best_bid": self.fmt.px(self.book.best_bid), "best_ask": self.fmt.px(self.book.best_ask),
                "levels": [nb, na]}


def _next_funding(now: int) -> int:
    return now - now % FUNDING_MS + FUNDING_MS


def _h01(*parts: Any) -> float:
    """A deterministic number in [0, 1) from ``parts`` (statistics that must repeat per request)."""
    digest = hashlib.blake2b(":".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2 ** 64


# ============================================================================ engine base
Key = tuple[str, str, str]   # (market, native symbol, channel)


class MdClient:
    """A market-data WebSocket client of a venue port (``send`` queues a text frame, never blocks)."""

    __slots__ = ("conn_id", "kind", "send", "close", "hb_interval", "hb_next", "hb_waiting", "opened")

    def __init__(self, conn_id: str, kind: str, send: Callable[[str], None], close: Callable[[], None]) -> None:
        self.conn_id, self.kind, self.send, self.close = conn_id, kind, send, close
        self.hb_interval = 0.0
        self.hb_next = 0.0
        self.hb_waiting: float | None = None
        self.opened = time.monotonic()


class MdEngine(ABC):
    """Common part: instruments, rates, budget, silence, gaps, counters, tick."""

    name = ""
    #: the channel whose updates move a book (and carry its sequence)
    book_channel = ""
    #: the channel carrying trades (idle trades are generated for it while nobody subscribes)
    trade_channel = ""

    def __init__(self, config: MdConfig | None = None, seed: int | None = None) -> None:
        self.initial_config = replace(config) if config else MdConfig()
        self.seed = seed
        self.clients: set[MdClient] = set()
        self._reset_state()

    def _reset_state(self) -> None:
        self.config = replace(self.initial_config)
        self.rng = random.Random(f"{self.seed}:md:{self.name}" if self.seed is not None else None)
        self.instruments: dict[tuple[str, str], Instrument] = {}
        self.rates: dict[tuple[str, str], float] = {}
        self.carry: dict[Key, float] = {}
        self.silenced: set[tuple[str, str, str]] = set()   # (market or "*", symbol, channel)
        self.sent: Counter[str] = Counter()
        self.generated: Counter[str] = Counter()
        self.counters: Counter[str] = Counter()
        self.budget = 0.0
        self.tick_no = 0
        self._book_driven: set[tuple[str, str]] = set()
        self.started_ms = now_ms()
        #: instruments with a trade history (bounded by max_instruments) and their idle carry
        self._traded: dict[tuple[str, str], Instrument] = {}
        self._idle_carry: dict[tuple[str, str], float] = {}

    # ---------------------------------------------------------------- subclass hooks
    @abstractmethod
    def active(self) -> dict[Key, dict[str, list[Any]]]:
        """Subscribed topics now: key -> subscription name -> subscribers."""
        ...

    @abstractmethod
    def emit(self, key: Key, targets: dict[str, list[Any]], now: int) -> None:
        """Send the due frames of ``key`` to its subscribers."""

    @abstractmethod
    def make_instrument(self, market: str, native: str) -> Instrument | None:
        """A new instrument, or None when the exchange does not list it."""
        ...

    def drop(self) -> int:
        """Cut every market-data connection (no close frame); returns how many."""
        clients = list(self.clients)
        for c in clients:
            c.close()
        self.clients.clear()
        self.counters["dropped"] += len(clients)
        return len(clients)

    # ---------------------------------------------------------------- instruments
    def instrument(self, market: str, native: str) -> Instrument | None:
        inst = self.instruments.get((market, native))
        if inst is None:
            if len(self.instruments) >= self.config.max_instruments:
                self.counters["instruments_full"] += 1
                return None
            inst = self.make_instrument(market, native)
            if inst is not None:
                self.instruments[(market, native)] = inst
        return inst

    def find(self, symbol: str, market: str | None = None) -> Instrument:
        """The instrument named ``symbol`` (created if listed); ``market`` when the name is ambiguous."""
        if not isinstance(symbol, str) or not 0 < len(symbol) <= 64:
            raise SimError(400, "symbol must be a non-empty string of at most 64 characters")
        markets = [market] if market else self.markets_of(symbol)
        for m in markets:
            inst = self.instrument(m, symbol)
            if inst is not None:
                return inst
        raise SimError(404, f"{self.name}: no market-data instrument {symbol!r}"
                       + (f" in market {market!r}" if market else ""))

    def markets_of(self, symbol: str) -> list[str]:
        """Markets a bare symbol may belong to (first match wins)."""
        return sorted({m for m, s in self.instruments if s == symbol})

    # ---------------------------------------------------------------- scripting
    def rate_for(self, channel: str, symbol: str) -> float:
        if self.rates:
            for k in ((channel, symbol), ("*", symbol), (channel, "*")):
                r = self.rates.get(k)
                if r is not None:
                    return r
        return self.config.rate

    def set_rate(self, rate: float, channel: str | None = None, symbol: str | None = None) -> dict[str, Any]:
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 <= rate <= MAX_TOPIC_RATE:
            raise SimError(400, f"rate must be 0..{MAX_TOPIC_RATE} updates/s")
        for name, v in (("channel", channel), ("symbol", symbol)):
            if v is not None and (not isinstance(v, str) or not 0 < len(v) <= 64):
                raise SimError(400, f"{name} must be a short string")
        if channel is None and symbol is None:
            self.config.rate = float(rate)
            self.rates.clear()
        else:
            if len(self.rates) >= MAX_RATE_OVERRIDES:
                raise SimError(409, f"at most {MAX_RATE_OVERRIDES} rate overrides")
            self.rates[(channel or "*", symbol or "*")] = float(rate)
        return {"ok": True, "rate": float(rate), "channel": channel, "symbol": symbol,
                "default_rate": self.config.rate, "overrides": len(self.rates)}

    def silence(self, channel: str, symbol: str, market: str | None = None, enabled: bool = True) -> dict[str, Any]:
        for name, v in (("channel", channel), ("symbol", symbol)):
            if not isinstance(v, str) or not 0 < len(v) <= 64:
                raise SimError(400, f"{name} must be a non-empty string of at most 64 characters")
        key = (market or "*", symbol, channel)
        if enabled:
            if len(self.silenced) >= MAX_SILENCED and key not in self.silenced:
                raise SimError(409, f"at most {MAX_SILENCED} silenced channels")
            self.silenced.add(key)
        else:
            self.silenced.discard(key)
        return {"ok": True, "channel": channel, "symbol": symbol, "market": market, "silenced": enabled}

    def is_silenced(self, key: Key) -> bool:
        if not self.silenced:
            return False
        market, symbol, channel = key
        return (market, symbol, channel) in self.silenced or ("*", symbol, channel) in self.silenced

    def inject_gap(self, symbol: str, market: str | None = None, count: int = 1) -> dict[str, Any]:
        if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= 100:
            raise SimError(400, "count must be 1..100")
        inst = self.find(symbol, market)
        inst.gap_pending += count
        inst.gaps_injected += count
        return {"ok": True, "market": inst.market, "symbol": inst.native, "seq": inst.seq,
                "gap_pending": inst.gap_pending}

    def bad_checksum(self, symbol: str, market: str | None = None) -> dict[str, Any]:
        raise SimError(400, f"{self.name} books carry no checksum")

    def apply_config(self, values: dict[str, Any]) -> dict[str, Any]:
        self.config.update(values)
        return {"ok": True, "config": asdict(self.config)}

    def reset(self, drop_connections: bool = True) -> dict[str, Any]:
        """Back to the start: no instruments, default rates, no silence, zero counters."""
        dropped = self.drop() if drop_connections else 0
        self._reset_state()
        return {"ok": True, "exchange": self.name, "dropped": dropped}

    # ---------------------------------------------------------------- the clock
    def tick(self, dt: float) -> None:
        """Advance by ``dt`` seconds: every due topic produces one update."""
        self.tick_no += 1
        cfg = self.config
        self.budget = min(self.budget + cfg.max_updates_per_s * dt, max(cfg.max_updates_per_s, 1.0))
        self._housekeeping()
        active = self.active()
        if self._traded and self.config.idle_trades:
            self._idle_trades(active, dt)
        if not active:
            self.carry.clear()
            return
        self._book_driven = {(k[0], k[1]) for k in active if k[2] == self.book_channel}
        keys = list(active)
        start = self.tick_no % len(keys)   # rotate: a short budget starves nobody for long
        carry, new_carry = self.carry, {}
        now = now_ms()
        rng = self.rng
        for key in keys[start:] + keys[:start]:
            c = carry.get(key)
            if c is None:
                c = rng.random()   # random phase: topics spread over the ticks
            c += self.rate_for(key[2], key[1]) * dt
            if c >= 1.0:
                if self.budget >= 1.0:
                    self.budget -= 1.0
                    c = min(c - 1.0, 1.0)
                    self.generated[key[2]] += 1
                    try:
                        self.emit(key, active[key], now)
                    except Exception:   # noqa: BLE001 - one broken topic must not stop the others
                        self.counters["emit_errors"] += 1
                        if self.counters["emit_errors"] <= 5:
                            log.exception("%s: market-data update of %s failed", self.name, key)
                else:
                    c = 1.0
                    self.counters["throttled"] += 1
            new_carry[key] = c
        self.carry = new_carry

    def _housekeeping(self) -> None:
        """Per tick work besides topics (heartbeats ...)."""

    # ---------------------------------------------------------------- trade history (REST)
    def new_trade(self, inst: Instrument, now: int) -> TradeRecord:
        """One trade of ``inst`` with the exchange's ids, kept in its REST history."""
        tid, price, q, buy = inst.trade()
        return self.keep_trade(inst, tid, price, q, buy, now)

    def keep_trade(self, inst: Instrument, tid: int, price: int, q: int, buy: bool, now: int) -> TradeRecord:
        """Keep a trade ``inst`` already made in its REST history."""
        rec = self.trade_record(inst, tid, price, q, buy, now)
        hist = inst.trade_history
        if hist is None or hist.maxlen != self.config.trade_history:
            hist = inst.trade_history = deque(hist or (), maxlen=self.config.trade_history)
            self._traded[(inst.market, inst.native)] = inst
        hist.append(rec)
        self.counters["trades_recorded"] += 1
        return rec

    def trade_record(self, inst: Instrument, tid: int, price: int, q: int, buy: bool, now: int) -> TradeRecord:
        """The exchange's ids of a new trade (default: the instrument's trade id)."""
        return (str(tid), tid, price, q, buy, now)

    def _idle_trades(self, active: dict[Key, dict[str, list[Any]]], dt: float) -> None:
        """Instruments whose trade channel nobody reads now keep trading (into the history only)."""
        now = now_ms()
        for mk, inst in self._traded.items():
            if self.trades_read(mk, active):
                self._idle_carry.pop(mk, None)
                continue
            c = self._idle_carry.get(mk, 0.0) + self.rate_for(self.trade_channel, mk[1]) * dt
            n = min(int(c), MAX_IDLE_TRADES_PER_TICK)
            self._idle_carry[mk] = min(c - n, 1.0)
            for _ in range(n):
                self.new_trade(inst, now)
                self.counters["idle_trades"] += 1

    def trades_read(self, mk: tuple[str, str], active: dict[Key, dict[str, list[Any]]]) -> bool:
        """Someone subscribes to the trades of instrument ``mk`` (then it trades on that clock)."""
        return (mk[0], mk[1], self.trade_channel) in active

    def history(self, market: str, native: str) -> list[TradeRecord]:
        inst = self.instruments.get((market, native))
        return list(inst.trade_history) if inst is not None and inst.trade_history else []

    def advance(self, inst: Instrument) -> None:
        """Move a book nobody reads through its book channel (once per tick), so prices move and
        REST snapshots stay consistent with what a later subscription will see."""
        if (inst.market, inst.native) in self._book_driven or inst.stepped_tick == self.tick_no:
            return
        inst.stepped_tick = self.tick_no
        self.book_update(inst, send=False)

    @abstractmethod
    def book_update(self, inst: Instrument, send: bool = True) -> Any:
        """One book update (exchange-specific ids); returns what the renderer needs."""
        ...

    def step_book(self, inst: Instrument) -> tuple[Any, bool]:
        """Step the book for a book-channel update, first generating and dropping the updates
        of an injected gap. Returns (update, sendable)."""
        while inst.gap_pending:
            inst.gap_pending -= 1
            self.book_update(inst, send=False)
            self.counters["gap_updates_skipped"] += 1
        inst.stepped_tick = self.tick_no
        return self.book_update(inst), True

    # ---------------------------------------------------------------- stats
    def stats(self) -> dict[str, Any]:
        return {
            "exchange": self.name,
            "now_ms": now_ms(),
            "started_ms": self.started_ms,
            "clients": len(self.clients),
            "frames_sent": dict(self.sent),
            "updates_generated": dict(self.generated),
            "topics": len(self.carry),
            "books": {f"{i.market}:{i.native}": i.public() for i in list(self.instruments.values())[:2000]},
            "instruments": len(self.instruments),
            "silenced": [list(k) for k in sorted(self.silenced)][:200],
            "rate_overrides": {f"{c}|{s}": r for (c, s), r in list(self.rates.items())[:200]},
            "counters": dict(self.counters),
            "config": asdict(self.config),
        }


# ============================================================================ venue engine (own subscriptions)
class VenueMd(MdEngine):
    """An engine whose clients subscribe through it (OKX, Bybit, Deribit): a subscription registry."""

    def __init__(self, config: MdConfig | None = None, seed: int | None = None) -> None:
        self.topics: dict[Key, dict[str, dict[Any, None]]] = {}
        self.client_topics: dict[Any, set[tuple[Key, str]]] = {}
        super().__init__(config, seed)

    def alive(self, client: Any) -> bool:
        return True

    def add_client(self, client: MdClient) -> None:
        self.clients.add(client)
        self.counters["connections"] += 1

    def remove_client(self, client: Any) -> None:
        self.clients.discard(client)
        for key, name in self.client_topics.pop(client, ()):
            names = self.topics.get(key)
            if names is None:
                continue
            subs = names.get(name)
            if subs is not None:
                subs.pop(client, None)
                if not subs:
                    del names[name]
            if not names:
                del self.topics[key]

    def sub_count(self, client: Any) -> int:
        return len(self.client_topics.get(client, ()))

    def add_sub(self, client: Any, key: Key, name: str) -> bool:
        """Register; False when the client already had it."""
        mine = self.client_topics.setdefault(client, set())
        if (key, name) in mine:
            return False
        mine.add((key, name))
        self.topics.setdefault(key, {}).setdefault(name, {})[client] = None
        return True

    def remove_sub(self, client: Any, key: Key, name: str) -> bool:
        mine = self.client_topics.get(client)
        if not mine or (key, name) not in mine:
            return False
        mine.discard((key, name))
        names = self.topics.get(key, {})
        names.get(name, {}).pop(client, None)
        if name in names and not names[name]:
            del names[name]
        if key in self.topics and not names:
            del self.topics[key]
        return True

    def drop(self) -> int:
        clients = set(self.clients) | set(self.client_topics)
        for c in clients:
            c.close()
            self.remove_client(c)
        self.counters["dropped"] += len(clients)
        return len(clients)

    def active(self) -> dict[Key, dict[str, list[Any]]]:
        dead = [c for c in self.client_topics if not self.alive(c)]
        for c in dead:
            self.remove_client(c)
        return {key: {name: list(subs) for name, subs in names.items()} for key, names in self.topics.items()}

    def deliver(self, key: Key, targets: dict[str, list[Any]], render: Callable[[str], str]) -> None:
        """``render(name)`` to every subscriber under each name (nothing while silenced)."""
        if self.is_silenced(key):
            self.counters["silenced_updates"] += 1
            return
        n = 0
        for name, clients in targets.items():
            text = render(name)
            for c in clients:
                c.send(text)
                n += 1
        self.sent[key[2]] += n

    def send_one(self, client: Any, channel: str, text: str) -> None:
        client.send(text)
        self.sent[channel] += 1

    def stats(self) -> dict[str, Any]:
        out = super().stats()
        out["clients"] = len(self.clients | set(self.client_topics))
        out["subscriptions"] = sum(len(v) for v in self.client_topics.values())
        return out


# ============================================================================ Binance
BINANCE_KLINES = {"1s": 1000, "1m": 60_000, "3m": 180_000, "5m": 300_000, "15m": 900_000, "30m": 1_800_000,
                  "1h": HOUR_MS, "2h": 2 * HOUR_MS, "4h": 4 * HOUR_MS, "6h": 6 * HOUR_MS, "8h": 8 * HOUR_MS,
                  "12h": 12 * HOUR_MS, "1d": DAY_MS, "3d": 3 * DAY_MS, "1w": 7 * DAY_MS}
_BINANCE_CH = {"aggTrade": "aggTrade", "depth": "depth", "depth@100ms": "depth", "depth@500ms": "depth",
               "depth@1000ms": "depth", "bookTicker": "bookTicker", "ticker": "ticker",
               "markPrice": "markPrice", "markPrice@1s": "markPrice", "forceOrder": "forceOrder"}
#: channel -> markets serving it; USD-M: the route (public | market) it lives on (2026 split)
BINANCE_SPOT_CHANNELS = frozenset({"aggTrade", "depth", "bookTicker", "ticker"})
BINANCE_USDM_ROUTE = {"depth": "/public", "bookTicker": "/public", "aggTrade": "/market", "ticker": "/market",
                      "markPrice": "/market", "forceOrder": "/market"}
USDM_DEPTH_LIMITS = (5, 10, 20, 50, 100, 500, 1000)
LONG_SHORT_KINDS = {"/futures/data/topLongShortPositionRatio": "top_position",
                    "/futures/data/topLongShortAccountRatio": "top_account",
                    "/futures/data/globalLongShortAccountRatio": "global_account"}
STAT_PERIODS = {"5m": 300_000, "15m": 900_000, "30m": 1_800_000, "1h": HOUR_MS, "2h": 2 * HOUR_MS,
                "4h": 4 * HOUR_MS, "6h": 6 * HOUR_MS, "12h": 12 * HOUR_MS, "1d": DAY_MS}


def parse_binance_stream(stream: str) -> tuple[str, str] | None:
    """``btcusdt@depth@100ms`` -> ("BTCUSDT", "depth"); None for a stream that is not market data
    here (``@trade`` is the trade tape of ``state.py``)."""
    sym, sep, rest = stream.partition("@")
    if not sep or not sym or len(sym) > 32 or not sym.isascii() or not sym.isalnum() or sym != sym.lower():
        return None
    ch = _BINANCE_CH.get(rest)
    if ch is None and rest.startswith("kline_") and rest[6:] in BINANCE_KLINES:
        ch = rest
    return (sym.upper(), ch) if ch else None


class BinanceMd(MdEngine):
    """Binance spot + USDⓈ-M market data on the Binance port (streams subscribed via ``SimState``)."""

    name = "binance"
    book_channel = "depth"
    trade_channel = "aggTrade"

    def __init__(self, state: Any, config: MdConfig | None = None, seed: int | None = None) -> None:
        self.state = state
        self._parsed: dict[str, tuple[str, str] | None] = {}
        super().__init__(config, seed)
        self._record_spot_tape()

    # ---- instruments: the symbols the Binance state lists
    def make_instrument(self, market: str, native: str) -> Instrument | None:
        listing = self.state.listings.get(market, {}).get(native)
        if listing is None:
            return None
        price = base_price(listing.base, listing.quote)
        mag = math.floor(math.log10(price))
        pd = _clamp(5 - mag, 0, 8)
        if market == "spot":
            fmt = Fmt(pd, 1, _clamp(mag + 1, 0, 8), "pad8")
            seq0 = self.rng.randint(10 ** 9, 10 ** 10)
        else:
            fmt = Fmt(pd, 1, _clamp(mag - 1, 0, 3), "fixed")
            seq0 = self.rng.randint(10 ** 11, 10 ** 12)
        return Instrument(self.name, market, native, listing.base, listing.quote, fmt, price, self.rng,
                          self.config.book_levels, seq0=seq0)

    def markets_of(self, symbol: str) -> list[str]:
        return [m for m in ("spot", "usdm") if symbol in self.state.listings.get(m, {})]

    def _parse(self, stream: str) -> tuple[str, str] | None:
        try:
            return self._parsed[stream]
        except KeyError:
            pass
        if len(self._parsed) >= MAX_PARSE_CACHE:
            self._parsed.clear()
        p = self._parsed[stream] = parse_binance_stream(stream)
        return p

    def active(self) -> dict[Key, dict[str, list[Any]]]:
        out: dict[Key, dict[str, list[Any]]] = {}
        listings = self.state.listings
        for stream, conns in self.state.stream_subs.items():
            p = self._parse(stream)
            if p is None:
                continue
            native, ch = p
            base_ch = "kline" if ch.startswith("kline_") else ch
            for c in conns:
                route = getattr(c, "route", "")
                if not route:
                    if base_ch not in BINANCE_SPOT_CHANNELS and base_ch != "kline":
                        continue
                    market = "spot"
                elif BINANCE_USDM_ROUTE.get(base_ch, "/market") == route:
                    market = "usdm"   # a stream on the wrong route is acked and stays silent (real)
                else:
                    continue
                if native not in listings[market] or not c.alive():
                    continue
                out.setdefault((market, native, ch), {}).setdefault(stream, []).append(c)
        return out

    def drop(self) -> int:
        n = 0
        for conn in list(self.state.conns.values()):
            if any(self._parse(s) for s in conn.streams):
                conn.closing = True
                conn.transport.abort()
                self.state.unregister(conn)
                n += 1
        self.state.counters["ws_dropped"] += n
        self.counters["dropped"] += n
        return n

    # ---- trades: the aggregate id is the ordered number; f = l = the trade id
    def trade_record(self, inst: Instrument, tid: int, price: int, q: int, buy: bool, now: int) -> TradeRecord:
        inst.agg_id += 1
        return (str(tid), inst.agg_id, price, q, buy, now)

    def agg_trades_body(self, market: str, native: str, from_id: int | None, limit: int) -> bytes:
        """``/api/v3/aggTrades`` / ``/fapi/v1/aggTrades``: aggregate trades from ``from_id`` (inclusive,
        oldest first; the most recent ``limit`` without it) out of the bounded history."""
        if (market, native) not in self.instruments and native not in self.state.listings.get(market, {}):
            raise SimError(400, "Invalid symbol.")
        rows = self.history(market, native)
        rows = [r for r in rows if r[1] >= from_id][:limit] if from_id is not None else rows[-limit:]
        inst = self.instruments.get((market, native))
        out = []
        for tid, agg, price, q, buy, ts in rows:
            assert inst is not None
            d: dict[str, Any] = {"a": agg, "p": inst.fmt.px(price), "q": inst.fmt.qty(q), "f": int(tid),
                                 "l": int(tid), "T": ts, "m": not buy}
            if market == "spot":
                d["M"] = True
            out.append(d)
        return orjson.dumps(out)

    # ---- the spot ``@trade`` tape of ``SimState``: its REST history
    def _record_spot_tape(self) -> None:
        """Keep a bounded history of the spot trade tape (``SimState.emit``, ids 1, 2, 3 ...) for
        ``/api/v3/historicalTrades``: each emitted batch as (first id, count, time, tape index or
        None when nothing was written: then the entry is taken by id)."""
        state = self.state
        if state is None or not hasattr(state, "emit") or getattr(state, "_md_tape_recorded", False):
            return
        emit = state.emit
        self._tape_batches: dict[str, deque[list[Any]]] = {}

        def recorded_emit(feed: Any, count: int) -> tuple[int, int, bool]:
            # the tape is built lazily (costly for thousands of filler symbols): never force it here
            tape = feed._tape
            cursor = tape.cursor if tape is not None else 0
            first, last, delivered = emit(feed, count)
            batches = self._tape_batches.get(feed.symbol)
            if batches is None:
                # only symbols somebody subscribed to (the history is for their gap fills)
                if not delivered or len(self._tape_batches) >= self.config.max_instruments:
                    return first, last, delivered
                batches = self._tape_batches[feed.symbol] = deque()
            batches.append([first, count, now_ms(), cursor if delivered else None])
            keep = self.config.trade_history
            total = sum(b[1] for b in batches)
            while batches and total - batches[0][1] >= keep:
                total -= batches.popleft()[1]
            if total > keep:   # trim the oldest batch from its start
                b = batches[0]
                cut = total - keep
                b[0] += cut
                b[1] -= cut
                if b[3] is not None:
                    b[3] = (b[3] + cut) & (TAPE_MASK)
            return first, last, delivered

        state.emit = recorded_emit
        state._md_tape_recorded = True

    def historical_trades_body(self, native: str, from_id: int | None, limit: int) -> bytes:
        """``/api/v3/historicalTrades``: the spot tape's trades from ``from_id`` (inclusive), oldest
        first, out of the bounded history; the most recent ``limit`` without ``from_id``."""
        feed = self.state.feeds.get(native) if self.state is not None else None
        if feed is None or native not in self.state.listings.get("spot", {}):
            raise SimError(400, "Invalid symbol.")
        batches = list(getattr(self, "_tape_batches", {}).get(native, ()))
        entries: list[tuple[int, int, int]] = []   # (id, time, tape index)
        mask = feed.tape.SIZE - 1
        for first, count, ts, cursor in batches:
            for k in range(count):
                entries.append((first + k, ts, (cursor + k) & mask if cursor is not None else (first + k) & mask))
        entries = [e for e in entries if e[0] >= from_id][:limit] if from_id is not None else entries[-limit:]
        tape = feed.tape
        out = []
        for tid, ts, j in entries:
            parts = tape.mids[j].split('"')   # ,"p":"<price>","q":"<qty>","T":
            price, qty = parts[3], parts[7]
            out.append({"id": tid, "price": price, "qty": qty, "quoteQty": f"{float(price) * float(qty):.8f}",
                        "time": ts, "isBuyerMaker": tape.tails[j].startswith(',"m":true'), "isBestMatch": True})
        return orjson.dumps(out)

    # ---- the book
    def book_update(self, inst: Instrument, send: bool = True) -> Any:
        bids, asks = inst.book.step(self.rng, inst.qty)
        inst.updates += 1
        if inst.market == "spot":
            first = inst.seq + 1
            inst.seq += self.rng.randint(1, 3)
            return first, inst.seq, None, bids, asks
        first, prev = inst.nxt, inst.seq
        inst.seq = first + self.rng.randint(0, 5)
        inst.nxt = inst.seq + 1 + self.rng.randint(0, 20)
        return first, inst.seq, prev, bids, asks

    def depth_body(self, market: str, native: str, limit: int, empty: bool = False) -> bytes:
        """REST depth consistent with the stream (spot ``/api/v3/depth``, USD-M ``/fapi/v1/depth``)."""
        inst = self.instrument(market, native)
        if inst is None:
            # instrument table full: a book of its own (nobody can stream it anyway)
            inst = self.make_instrument(market, native)
        if inst is None:
            raise SimError(400, "Invalid symbol.")
        fmt = inst.fmt
        bids, asks = inst.book.top(0 if empty else limit)
        b = [[fmt.px(p), fmt.qty(q)] for p, q in bids]
        a = [[fmt.px(p), fmt.qty(q)] for p, q in asks]
        if market == "spot":
            return orjson.dumps({"lastUpdateId": inst.seq, "bids": b, "asks": a})
        now = now_ms()
        return orjson.dumps({"lastUpdateId": inst.nxt, "E": now, "T": now, "bids": b, "asks": a})

    def open_interest_body(self, native: str) -> bytes:
        inst = self.instrument("usdm", native)
        if inst is None:
            raise SimError(400, "Invalid symbol.")
        return orjson.dumps({"symbol": native, "openInterest": inst.fmt.qty(inst.open_interest()),
                             "time": now_ms()})

    def long_short_body(self, path: str, native: str, period: str, limit: int) -> bytes:
        """``/futures/data/*LongShort*Ratio``: samples oldest first, the same values on every call."""
        if native not in self.state.listings["usdm"]:
            raise SimError(400, "Invalid symbol.")
        kind = LONG_SHORT_KINDS[path]
        step = STAT_PERIODS[period]
        last = now_ms() // step * step - step
        rows = []
        for i in range(limit - 1, -1, -1):
            ts = last - i * step
            long_share = 0.35 + 0.3 * _h01(native, kind, period, ts)
            long_s, short_s = f"{long_share:.4f}", f"{1 - long_share:.4f}"
            rows.append({"symbol": native, "longShortRatio": f"{long_share / (1 - long_share):.4f}",
                         "longAccount": long_s, "shortAccount": short_s, "timestamp": ts})
        return orjson.dumps(rows)

    # ---- frames
    def emit(self, key: Key, targets: dict[str, list[Any]], now: int) -> None:
        market, native, ch = key
        inst = self.instrument(market, native)
        if inst is None:
            return
        spot = market == "spot"
        fmt = inst.fmt
        if ch == "depth":
            (first, last, prev, bids, asks), _ = self.step_book(inst)
            d: dict[str, Any] = {"e": "depthUpdate", "E": now}
            if not spot:
                d["T"] = now
            d.update(s=native, U=first, u=last)
            if not spot:
                d["pu"] = prev
            d["b"] = [[fmt.px(p), fmt.qty(q)] for p, q, _ex in bids]
            d["a"] = [[fmt.px(p), fmt.qty(q)] for p, q, _ex in asks]
            if self._write(key, targets, orjson.dumps(d)):
                inst.sent_seq = last
            return
        self.advance(inst)
        book = inst.book
        if ch == "bookTicker":
            bb, ba = book.best_bid, book.best_ask
            vals = {"u": inst.seq, "s": native, "b": fmt.px(bb), "B": fmt.qty(book.bids.get(bb, 0)),
                    "a": fmt.px(ba), "A": fmt.qty(book.asks.get(ba, 0))}
            d = vals if spot else {"e": "bookTicker", **vals, "T": now, "E": now}
        elif ch == "aggTrade":
            rec = self.new_trade(inst, now)
            tid, price, q, buy = int(rec[0]), rec[2], rec[3], rec[4]
            if spot:
                d = {"e": "aggTrade", "E": now, "s": native, "a": inst.agg_id, "p": fmt.px(price),
                     "q": fmt.qty(q), "f": tid, "l": tid, "T": now, "m": not buy, "M": True}
            else:
                d = {"e": "aggTrade", "E": now, "a": inst.agg_id, "s": native, "p": fmt.px(price),
                     "q": fmt.qty(q), "nq": fmt.qty(q), "f": tid, "l": tid, "T": now, "m": not buy, "st": 1}
        elif ch == "ticker":
            if self.rng.random() < 0.5:
                inst.trade()
            d = self._ticker(inst, now, spot)
        elif ch.startswith("kline_"):
            interval = ch[6:]
            k = inst.kline(BINANCE_KLINES[interval], now)
            quote_dec = 8 if spot else fmt.pd + fmt.qd
            d = {"e": "kline", "E": now, "s": native, "k": {
                "t": k[0], "T": k[10], "s": native, "i": interval, "f": k[8], "L": k[9],
                "o": fmt.px(k[1]), "c": fmt.px(k[4]), "h": fmt.px(k[2]), "l": fmt.px(k[3]),
                "v": fmt.qty(k[5]), "n": k[7], "x": k[11], "q": f"{k[6]:.{quote_dec}f}",
                "V": fmt.qty(k[5] // 2), "Q": f"{k[6] / 2:.{quote_dec}f}", "B": "0"}}
        elif ch == "markPrice":
            mark = inst.mark()
            mp = _styled(mark * fmt.tick, fmt.pd, "pad8")
            d = {"e": "markPriceUpdate", "E": now, "s": native, "p": mp, "ap": mp,
                 "P": _styled((mark - 2) * fmt.tick, fmt.pd, "pad8"),
                 "i": _styled((mark + 1) * fmt.tick, fmt.pd, "pad8"),
                 "r": inst.funding_rate(8), "T": _next_funding(now), "st": 1}
        elif ch == "forceOrder":
            _tid, price, q, buy = inst.trade()
            side = "BUY" if buy else "SELL"
            d = {"e": "forceOrder", "E": now, "o": {
                "s": native, "S": side, "o": "LIMIT", "f": "IOC", "q": fmt.qty(q), "p": fmt.px(price),
                "ap": fmt.px(price), "X": "FILLED", "l": fmt.qty(q), "z": fmt.qty(q), "T": now,
                "ps": native, "st": 1}}
        else:
            return
        self._write(key, targets, orjson.dumps(d))

    def _ticker(self, inst: Instrument, now: int, spot: bool) -> dict[str, Any]:
        fmt, book = inst.fmt, inst.book
        quote_dec = 8 if spot else 2
        w = inst.quote_volume / fmt.qty_float(inst.volume) if inst.volume else fmt.price_float(inst.last)
        d: dict[str, Any] = {"e": "24hrTicker", "E": now, "s": inst.native,
                             "p": _styled((inst.last - inst.open) * fmt.tick, fmt.pd, fmt.style),
                             "P": inst.change(3), "w": f"{w:.{fmt.pd if not spot else 8}f}"}
        if spot:
            d["x"] = fmt.px(inst.open)
        d.update(c=fmt.px(inst.last), Q=fmt.qty(inst.last_qty))
        if spot:
            bb, ba = book.best_bid, book.best_ask
            d.update(b=fmt.px(bb), B=fmt.qty(book.bids.get(bb, 0)), a=fmt.px(ba), A=fmt.qty(book.asks.get(ba, 0)))
        d.update(o=fmt.px(inst.open), h=fmt.px(inst.high), l=fmt.px(inst.low), v=fmt.qty(inst.volume),
                 q=f"{inst.quote_volume:.{quote_dec}f}", O=now - DAY_MS, C=now, F=inst.first_trade_id,
                 L=inst.trade_id, n=inst.trades)
        return d

    def _write(self, key: Key, targets: dict[str, list[Any]], payload: bytes) -> bool:
        """Write one payload to every subscriber (combined connections get the wrapper)."""
        if self.is_silenced(key):
            self.counters["silenced_updates"] += 1
            return False
        if self.state.stalled:
            self.counters["stalled_updates"] += 1
            return False
        raw_frame: bytes | None = None
        n = 0
        for stream, conns in targets.items():
            comb_frame: bytes | None = None
            for conn in conns:
                if conn.combined:
                    if comb_frame is None:
                        comb_frame = text_frame(b'{"stream":' + orjson.dumps(stream) + b',"data":' + payload + b"}")
                    frame = comb_frame
                else:
                    if raw_frame is None:
                        raw_frame = text_frame(payload)
                    frame = raw_frame
                if conn.write(frame):
                    conn.frames_out += 1
                    n += 1
        self.sent[key[2]] += n
        return n > 0


# ============================================================================ OKX
OKX_CANDLES = {"1m": 60_000, "3m": 180_000, "5m": 300_000, "15m": 900_000, "30m": 1_800_000, "1H": HOUR_MS,
               "2H": 2 * HOUR_MS, "4H": 4 * HOUR_MS, "6Hutc": 6 * HOUR_MS, "12Hutc": 12 * HOUR_MS,
               "1Dutc": DAY_MS}
OKX_PUBLIC = frozenset({"trades", "books", "books5", "bbo-tbt", "tickers", "funding-rate", "open-interest",
                        "liquidation-orders"})
#: /ws/v5/business besides candles: one fill per push
OKX_BUSINESS = frozenset({"trades-all"})
#: channels carrying the trade tape (every fill of an instrument goes to both)
OKX_TRADE_CHANNELS = ("trades-all", "trades")
OKX_PERP_ONLY = frozenset({"funding-rate", "open-interest"})
OKX_INST_TYPES = ("SPOT", "MARGIN", "SWAP", "FUTURES", "OPTION")
RUBIK_PERIODS = {"5m": 300_000, "1H": HOUR_MS, "1D": DAY_MS}


def _okx_market(inst_id: str) -> str | None:
    parts = inst_id.split("-")
    if len(parts) == 2 and all(parts):
        return "spot"
    if len(parts) == 3 and parts[2] == "SWAP" and parts[0] and parts[1]:
        return "perp"
    return None


class OkxMd(VenueMd):
    """OKX v5 public + business market data on the OKX port (instruments = the OKX venue's rows)."""

    name = "okx"
    book_channel = "books"
    trade_channel = "trades-all"

    def __init__(self, venue: Any, config: MdConfig | None = None, seed: int | None = None) -> None:
        self.venue = venue
        super().__init__(config, seed)
        self._liq_cursor = 0

    def alive(self, client: Any) -> bool:
        return isinstance(client, MdClient) or client in self.venue.push_clients

    def make_instrument(self, market: str, native: str) -> Instrument | None:
        row = self.venue.rows.get((market, native))
        if row is None:
            return None
        price = base_price(row.base, row.quote)
        mag = math.floor(math.log10(price))
        if market == "spot":
            fmt, typical = Fmt(_clamp(5 - mag, 0, 8), 1, 8, "strip"), 0
        else:
            fmt, typical = Fmt(_clamp(5 - mag, 0, 8), 1, 0, "strip"), 60
        return Instrument(self.name, market, native, row.base, row.quote, fmt, price, self.rng,
                          self.config.book_levels, typical=typical, seq0=self.rng.randint(10 ** 9, 10 ** 10))

    def markets_of(self, symbol: str) -> list[str]:
        m = _okx_market(symbol)
        return [m] if m else []

    # ---- requests (``kind``: public | business)
    def request(self, client: Any, kind: str, text: str) -> None:
        """One text frame of a market-data connection."""
        if text == "ping":
            client.send("pong")
            return
        try:
            req = json.loads(text)
        except ValueError:
            req = None
        op = req.get("op") if isinstance(req, dict) else None
        args = req.get("args") if isinstance(req, dict) else None
        if op not in ("subscribe", "unsubscribe") or not isinstance(args, list):
            self._error(client, "60012", f"Invalid request: {text[:100]}")
            return
        self.handle_args(client, kind, op, args)

    def _error(self, client: Any, code: str, msg: str) -> None:
        self.counters["errors_sent"] += 1
        client.send(json.dumps({"event": "error", "code": code, "msg": msg, "connId": _conn_id(client)},
                               separators=(",", ":")))

    def handle_args(self, client: Any, kind: str, op: str, args: list[Any]) -> None:
        for arg in args:
            key = self._key(kind, arg)
            if key is None:
                self._error(client, "60018", f"Wrong URL or channel:{_short(arg)}, args or instType doesn't exist.")
                continue
            name = key[2]
            if op == "subscribe" and self.sub_count(client) >= self.config.max_subscriptions:
                self._error(client, "60014", "Too many subscriptions on this connection")
                continue
            echo = {"channel": arg["channel"]}
            echo.update({k: arg[k] for k in ("instId", "instType") if k in arg})
            client.send(json.dumps({"event": op, "arg": echo, "connId": _conn_id(client)}, separators=(",", ":")))
            if op == "unsubscribe":
                self.remove_sub(client, key, name)
                continue
            self.add_sub(client, key, name)
            if name == "books" and not self.is_silenced(key):
                inst = self.instrument(key[0], key[1])
                if inst is not None:
                    self.send_one(client, name, self._book_frame(inst, "snapshot", None))

    def _key(self, kind: str, arg: Any) -> Key | None:
        if not isinstance(arg, dict):
            return None
        channel = arg.get("channel")
        if not isinstance(channel, str) or len(channel) > 32:
            return None
        if channel == "liquidation-orders":
            t = arg.get("instType")
            return ("type", t, channel) if kind == "public" and t in OKX_INST_TYPES else None
        if kind == "public":
            if channel not in OKX_PUBLIC:
                return None
        elif channel not in OKX_BUSINESS and not (channel.startswith("candle") and channel[6:] in OKX_CANDLES):
            return None
        inst_id = arg.get("instId")
        if not isinstance(inst_id, str) or len(inst_id) > 64:
            return None
        market = _okx_market(inst_id)
        if market is None or (channel in OKX_PERP_ONLY and market != "perp"):
            return None
        if (market, inst_id) not in self.venue.rows:
            return None
        return market, inst_id, channel

    # ---- the book
    def book_update(self, inst: Instrument, send: bool = True) -> Any:
        bids, asks = inst.book.step(self.rng, inst.qty)
        inst.updates += 1
        prev = inst.seq
        inst.seq += self.rng.randint(1, 3)
        return prev, bids, asks

    def bad_checksum(self, symbol: str, market: str | None = None) -> dict[str, Any]:
        inst = self.find(symbol, market)
        inst.bad_checksum_pending += 1
        return {"ok": True, "market": inst.market, "symbol": inst.native, "seq": inst.seq}

    def _checksum(self, inst: Instrument) -> int:
        fmt = inst.fmt
        bids, asks = inst.book.top(25)
        return okx_checksum([(fmt.px(p), fmt.qty(q)) for p, q in bids], [(fmt.px(p), fmt.qty(q)) for p, q in asks])

    def _book_frame(self, inst: Instrument, action: str, update: Any) -> str:
        fmt = inst.fmt
        if update is None:   # snapshot
            bids, asks = inst.book.top(inst.levels)
            b = [[fmt.px(p), fmt.qty(q), "0", str(1 + q % 5)] for p, q in bids]
            a = [[fmt.px(p), fmt.qty(q), "0", str(1 + q % 5)] for p, q in asks]
            prev = -1
        else:
            prev, bids_c, asks_c = update
            b = [[fmt.px(p), fmt.qty(q), "0", str(1 + q % 5) if q else "0"] for p, q, _ex in bids_c]
            a = [[fmt.px(p), fmt.qty(q), "0", str(1 + q % 5) if q else "0"] for p, q, _ex in asks_c]
        checksum = self._checksum(inst) if self.config.okx_checksum else 0
        if update is not None and inst.bad_checksum_pending:
            inst.bad_checksum_pending -= 1
            inst.bad_checksums += 1
            checksum = (checksum or self._checksum(inst)) ^ 0x5A5A5A
        data = {"asks": a, "bids": b, "ts": str(now_ms()), "checksum": checksum, "prevSeqId": prev, "seqId": inst.seq}
        return orjson.dumps({"arg": {"channel": "books", "instId": inst.native}, "action": action,
                             "data": [data]}).decode()

    def books_body(self, inst_id: str | None, size: str | None, empty: bool = False) -> tuple[int, bytes]:
        """GET /api/v5/market/books: the same book and ``seqId`` the stream is at."""
        if not inst_id:
            return 400, orjson.dumps({"code": "50014", "msg": "Parameter instId can not be empty.", "data": []})
        market = _okx_market(inst_id) if len(inst_id) <= 64 else None
        inst = self.instrument(market, inst_id) if market else None
        if inst is None:
            return 200, orjson.dumps({"code": "51001", "msg": "Instrument ID doesn't exist.", "data": []})
        if size is None or size == "":
            n = 1
        elif size.isdigit() and len(size) < 6 and 1 <= int(size) <= 400:
            n = int(size)
        else:
            return 200, orjson.dumps({"code": "51000", "msg": "Parameter sz error", "data": []})
        fmt = inst.fmt
        bids, asks = inst.book.top(0 if empty else n)
        return 200, orjson.dumps({"code": "0", "msg": "", "data": [{
            "asks": [[fmt.px(p), fmt.qty(q), "0", str(1 + q % 5)] for p, q in asks],
            "bids": [[fmt.px(p), fmt.qty(q), "0", str(1 + q % 5)] for p, q in bids],
            "ts": str(now_ms()), "seqId": inst.seq}]})

    def history_trades_body(self, query: Any) -> tuple[int, bytes]:
        """GET /api/v5/market/history-trades (``type=1``: by tradeId): trades older than ``after``
        (newer than ``before``), newest first, at most ``limit`` (<= 100), from the bounded history."""
        inst_id = query.get("instId")
        if not inst_id:
            return 400, orjson.dumps({"code": "50014", "msg": "Parameter instId can not be empty.", "data": []})
        market = _okx_market(inst_id) if len(inst_id) <= 64 else None
        if market is None or (market, inst_id) not in self.venue.rows:
            return 200, orjson.dumps({"code": "51001", "msg": "Instrument ID doesn't exist.", "data": []})
        cursors = {}
        for name in ("after", "before", "limit"):
            v = query.get(name)
            if v is not None and (not v.isdigit() or len(v) > 19):
                return 200, orjson.dumps({"code": "51000", "msg": f"Parameter {name} error", "data": []})
            cursors[name] = int(v) if v is not None else None
        if query.get("type", "1") != "1":
            return 200, orjson.dumps({"code": "51000", "msg": "Parameter type error", "data": []})
        limit = cursors["limit"] if cursors["limit"] is not None else 100
        if not 1 <= limit <= 100:
            return 200, orjson.dumps({"code": "51000", "msg": "Parameter limit error", "data": []})
        after, before = cursors["after"], cursors["before"]
        rows = [r for r in reversed(self.history(market, inst_id))
                if (after is None or r[1] < after) and (before is None or r[1] > before)][:limit]
        inst = self.instruments[(market, inst_id)] if rows else None
        data = [{"instId": inst_id, "side": "buy" if buy else "sell", "sz": inst.fmt.qty(q), "px": inst.fmt.px(price),
                 "source": "0", "tradeId": tid, "ts": str(ts)} for tid, _n, price, q, buy, ts in rows if inst]
        return 200, orjson.dumps({"code": "0", "msg": "", "data": data})

    def long_short_body(self, ccy: str | None, period: str | None) -> tuple[int, bytes]:
        """GET rubik long-short-account-ratio: ``[ts, ratio]`` rows, newest first."""
        if not ccy:
            return 400, orjson.dumps({"code": "50014", "msg": "Parameter ccy can not be empty.", "data": []})
        period = period or "5m"
        step = RUBIK_PERIODS.get(period)
        if step is None or len(ccy) > 20 or not ccy.isalnum():
            return 200, orjson.dumps({"code": "51000", "msg": "Parameter period error" if step is None
                                      else "Parameter ccy error", "data": []})
        last = now_ms() // step * step
        rows = [[str(last - i * step), f"{0.6 + 1.4 * _h01('okx', ccy, period, last - i * step):.2f}"]
                for i in range(24)]
        return 200, orjson.dumps({"code": "0", "data": rows, "msg": ""})

    # ---- frames
    def emit(self, key: Key, targets: dict[str, list[Any]], now: int) -> None:
        market, native, ch = key
        if ch == "liquidation-orders":
            self._liquidations(key, targets, now)
            return
        inst = self.instrument(market, native)
        if inst is None:
            return
        if ch == "books":
            update, _ = self.step_book(inst)
            text = self._book_frame(inst, "update", update)
            if not self.is_silenced(key):
                inst.sent_seq = inst.seq
            self.deliver(key, targets, lambda _n: text)
            return
        self.advance(inst)
        if ch in OKX_TRADE_CHANNELS:
            # one fill, to the instrument's trades-all AND trades subscribers (one tape)
            self._tape(inst, inst.trade(), now, force=True)
            return
        fmt, book, ts = inst.fmt, inst.book, str(now)
        arg = {"channel": ch, "instId": native}
        inst_type = "SPOT" if market == "spot" else "SWAP"
        data: list[Any]
        if ch in ("books5", "bbo-tbt"):
            bids, asks = book.top(5 if ch == "books5" else 1)
            item = {"asks": [[fmt.px(p), fmt.qty(q), "0", str(1 + q % 5)] for p, q in asks],
                    "bids": [[fmt.px(p), fmt.qty(q), "0", str(1 + q % 5)] for p, q in bids]}
            if ch == "books5":
                item["instId"] = native
            item["ts"] = ts
            if ch == "bbo-tbt":
                item["seqId"] = inst.seq
            data = [item]
        elif ch == "tickers":
            if self.rng.random() < 0.5:
                self._tape(inst, inst.trade(), now)
            bb, ba = book.best_bid, book.best_ask
            quote_vol = inst.quote_volume if market == "spot" else fmt.qty_float(inst.volume)
            data = [{"instType": inst_type, "instId": native, "last": fmt.px(inst.last),
                     "lastSz": fmt.qty(inst.last_qty), "askPx": fmt.px(ba), "askSz": fmt.qty(book.asks.get(ba, 0)),
                     "bidPx": fmt.px(bb), "bidSz": fmt.qty(book.bids.get(bb, 0)), "open24h": fmt.px(inst.open),
                     "high24h": fmt.px(inst.high), "low24h": fmt.px(inst.low), "sodUtc0": fmt.px(inst.open),
                     "sodUtc8": fmt.px(inst.open), "volCcy24h": float_text(quote_vol, 4, "strip"),
                     "vol24h": fmt.qty(inst.volume), "ts": ts}]
        elif ch == "funding-rate":
            nxt = _next_funding(now)
            data = [{"instType": "SWAP", "instId": native, "method": "current_period",
                     "fundingRate": inst.funding_rate(10, "strip"),
                     "fundingTime": str(nxt), "nextFundingTime": str(nxt + FUNDING_MS), "ts": ts}]
        elif ch == "open-interest":
            oi = inst.open_interest()   # contracts of 0.01 coin
            data = [{"instType": "SWAP", "instId": native, "oi": fmt.qty(oi), "oiCcy": _styled(oi, 2, "strip"),
                     "oiUsd": float_text(oi / 100 * fmt.price_float(inst.mark()), 2, "strip"), "ts": ts}]
        elif ch.startswith("candle"):
            before = inst.trade_id
            k = inst.kline(OKX_CANDLES[ch[6:]], now)
            if inst.trade_id != before:   # the candle moved with a fill: at the touch, so its side shows
                self._tape(inst, (inst.trade_id, inst.last, inst.last_qty, inst.last == book.best_ask), now)
            vol = k[5]
            quote = float_text(k[6], 2, "strip")   # spot volCcy = quote units; swap volCcy = coins
            data = [[str(k[0]), fmt.px(k[1]), fmt.px(k[2]), fmt.px(k[3]), fmt.px(k[4]), fmt.qty(vol),
                     quote if market == "spot" else _styled(vol, 2, "strip"), quote, "1" if k[11] else "0"]]
        else:
            return
        text = orjson.dumps({"arg": arg, "data": data}).decode()
        self.deliver(key, targets, lambda _n: text)

    # ---- the trade tape: every fill that moves an instrument is one tradeId (ids contiguous per
    # instrument), kept for REST history-trades and pushed one per frame to ``trades-all`` (and, one
    # taker order of one fill here, to ``trades`` with ``count`` 1). A fill made by another channel's
    # clock (a ticker or candle that moved, a liquidation) is on the tape too: otherwise its id
    # would be a hole in the live tape that no reconnect explains.
    def trades_read(self, mk: tuple[str, str], active: dict[Key, dict[str, list[Any]]]) -> bool:
        return any((mk[0], mk[1], ch) in active for ch in OKX_TRADE_CHANNELS)

    def rate_for(self, channel: str, symbol: str) -> float:
        """One tape, two channel names: a rate set on ``trades`` or ``trades-all`` drives both."""
        if channel in OKX_TRADE_CHANNELS and self.rates:
            other = OKX_TRADE_CHANNELS[1] if channel == OKX_TRADE_CHANNELS[0] else OKX_TRADE_CHANNELS[0]
            for k in ((channel, symbol), (other, symbol), ("*", symbol), (channel, "*"), (other, "*")):
                r = self.rates.get(k)
                if r is not None:
                    return r
        return super().rate_for(channel, symbol)

    def _tape(self, inst: Instrument, made: tuple[int, int, int, bool], now: int, force: bool = False) -> None:
        """Record fill ``made`` (id, price ticks, qty units, buyer is taker) and push it. An
        instrument nobody ever read trades of keeps no history (``force``: its trade channel is due)."""
        if not force and inst.trade_history is None and not any(
                (inst.market, inst.native, ch) in self.topics for ch in OKX_TRADE_CHANNELS):
            return
        tid, _num, price, q, buy, ts = self.keep_trade(inst, *made, now)
        fmt = inst.fmt
        row = {"instId": inst.native, "tradeId": tid, "px": fmt.px(price), "sz": fmt.qty(q),
               "side": "buy" if buy else "sell"}
        for ch in OKX_TRADE_CHANNELS:
            key = (inst.market, inst.native, ch)
            names = self.topics.get(key)
            if not names:
                continue
            # trades-all (docs): {instId, tradeId, px, sz, side, source, ts}; trades adds count
            extra = {"source": "0", "ts": str(ts)} if ch == "trades-all" else {"ts": str(ts), "count": "1"}
            text = orjson.dumps({"arg": {"channel": ch, "instId": inst.native}, "data": [{**row, **extra}]}).decode()
            self.deliver(key, {n: list(subs) for n, subs in names.items()}, lambda _n: text)

    def _liquidations(self, key: Key, targets: dict[str, list[Any]], now: int) -> None:
        """One liquidation per update, round-robin over the perpetuals in use (SWAP only)."""
        if key[1] != "SWAP":
            return
        perps = [i for (m, _s), i in self.instruments.items() if m == "perp"]
        if not perps:
            row = next((r for (m, s), r in self.venue.rows.items() if m == "perp"), None)
            inst = self.instrument("perp", row.native) if row is not None else None
            if inst is None:
                return
            perps = [inst]
        self._liq_cursor = (self._liq_cursor + 1) % len(perps)
        inst = perps[self._liq_cursor]
        made = inst.trade()
        self._tape(inst, made, now)   # a liquidation order's fill is a trade like any other
        _tid, price, q, buy = made
        family = f"{inst.base}-{inst.quote}"
        text = orjson.dumps({"arg": {"channel": "liquidation-orders", "instType": "SWAP"}, "data": [{
            "details": [{"bkLoss": "0", "bkPx": inst.fmt.px(price), "ccy": "", "posSide": "short" if buy else "long",
                         "side": "buy" if buy else "sell", "sz": inst.fmt.qty(q), "ts": str(now)}],
            "instFamily": family, "instId": inst.native, "instType": "SWAP", "uly": family}]}).decode()
        self.deliver(key, targets, lambda _n: text)


def _conn_id(client: Any) -> str:
    return str(getattr(client, "conn_id", "00000000"))


def _short(value: Any) -> str:
    try:
        return json.dumps(value, separators=(",", ":"))[:200]
    except (TypeError, ValueError):
        return "?"


# ============================================================================ Bybit
BYBIT_CATEGORIES = {"spot": "spot", "linear": "perp"}   # category -> venue market
_BYBIT_TOPIC_RE = re.compile(r"(publicTrade|tickers|allLiquidation|orderbook\.(?:1|50|200|1000)|kline\.(?:1|3|5|15|30|60|120|240|360|720|D|W|M))"
                             r"\.([A-Z0-9]{1,32})\Z")
#: kline interval -> candle length in ms (W and M approximated as 7 and 30 days, from the epoch)
BYBIT_KLINES = {"1": 60_000, "3": 180_000, "5": 300_000, "15": 900_000, "30": 1_800_000, "60": HOUR_MS,
                "120": 2 * HOUR_MS, "240": 4 * HOUR_MS, "360": 6 * HOUR_MS, "720": 12 * HOUR_MS, "D": DAY_MS,
                "W": 7 * DAY_MS, "M": 30 * DAY_MS}
#: GET /v5/market/account-ratio: period -> its length in ms
BYBIT_RATIO_PERIODS = {"5min": 300_000, "15min": 900_000, "30min": 1_800_000, "1h": HOUR_MS, "4h": 4 * HOUR_MS,
                       "1d": DAY_MS}
BYBIT_SPOT_MAX_ARGS = 10


class BybitMd(VenueMd):
    """Bybit v5 public spot + linear market data (``/v5/public/spot|linear`` on the Bybit port)."""

    name = "bybit"
    book_channel = "orderbook.50"
    trade_channel = "publicTrade"

    def __init__(self, venue: Any, config: MdConfig | None = None, seed: int | None = None) -> None:
        self.venue = venue
        super().__init__(config, seed)

    # ---- trades: spot execIds are numeric strings, linear ones UUIDs (not ordered)
    def trade_record(self, inst: Instrument, tid: int, price: int, q: int, buy: bool, now: int) -> TradeRecord:
        exec_id = (str(2_290_000_000_000_000_000 + tid) if inst.market == "spot"
                   else str(uuid.UUID(int=self.rng.getrandbits(128), version=4)))
        return (exec_id, tid, price, q, buy, now)

    def recent_trade_body(self, query: Any) -> tuple[int, bytes]:
        """GET /v5/market/recent-trade: only the most recent ``limit`` trades (spot <= 60, linear
        <= 1000), newest first; no paging (as on Bybit)."""
        category, symbol, raw_limit = query.get("category"), query.get("symbol"), query.get("limit")

        def error(code: int, msg: str) -> tuple[int, bytes]:
            return 200, orjson.dumps({"retCode": code, "retMsg": msg, "result": {}, "retExtInfo": {},
                                      "time": now_ms()})

        market = BYBIT_CATEGORIES.get(category or "")
        if market is None:
            return error(10001, "params error: category invalid")
        if not symbol or (market, symbol) not in self.venue.rows:
            return error(10001, "params error: symbol invalid")
        most = 60 if category == "spot" else 1000
        if raw_limit is not None and (not raw_limit.isdigit() or not 1 <= int(raw_limit[:6]) <= most):
            return error(10001, "params error: limit invalid")
        limit = int(raw_limit) if raw_limit is not None else (60 if category == "spot" else 500)
        rows = list(reversed(self.history(category, symbol)))[:limit]   # engine key: the category
        inst = self.instruments.get((category, symbol))
        out = [{"execId": eid, "symbol": symbol, "price": inst.fmt.px(price), "size": inst.fmt.qty(q),
                "side": "Buy" if buy else "Sell", "time": str(ts), "isBlockTrade": False}
               for eid, _n, price, q, buy, ts in rows if inst is not None]
        return 200, orjson.dumps({"retCode": 0, "retMsg": "OK", "result": {"category": category, "list": out},
                                  "retExtInfo": {}, "time": now_ms()})

    def make_instrument(self, market: str, native: str) -> Instrument | None:
        row = self.venue.rows.get((BYBIT_CATEGORIES.get(market, ""), native))
        if row is None:
            return None
        price = base_price(row.base, row.quote)
        mag = math.floor(math.log10(price))
        qd = _clamp(mag + 2, 0, 6) if market == "spot" else _clamp(mag - 1, 0, 3)
        fmt = Fmt(_clamp(5 - mag, 0, 8), 1, qd, "fixed")
        return Instrument(self.name, market, native, row.base, row.quote, fmt, price, self.rng, 50,
                          seq0=self.rng.randint(10 ** 6, 10 ** 8))

    def markets_of(self, symbol: str) -> list[str]:
        return [c for c, m in BYBIT_CATEGORIES.items() if (m, symbol) in self.venue.rows]

    def _ack(self, client: MdClient, op: str, success: bool, msg: str, req_id: Any) -> None:
        d: dict[str, Any] = {"success": success, "ret_msg": msg, "conn_id": client.conn_id}
        if req_id is not None or client.kind == "linear":
            d["req_id"] = req_id if isinstance(req_id, str) else ("" if req_id is None else str(req_id))
        d["op"] = op
        client.send(json.dumps(d, separators=(",", ":")))

    def request(self, client: MdClient, text: str) -> None:
        category = client.kind
        try:
            req = json.loads(text)
        except ValueError:
            req = None
        if not isinstance(req, dict):
            self._ack(client, "", False, "Invalid request: not a JSON object", None)
            return
        op, req_id = req.get("op"), req.get("req_id")
        if req_id is not None and not (isinstance(req_id, str) and len(req_id) <= 64):
            req_id = None
        if op == "ping":
            self._ack(client, "ping", True, "pong", req_id)
            return
        args = req.get("args")
        if op not in ("subscribe", "unsubscribe") or not isinstance(args, list) or not args:
            self._ack(client, str(op)[:32] if isinstance(op, str) else "", False,
                      "Invalid request: unknown op or empty args", req_id)
            return
        if category == "spot" and len(args) > BYBIT_SPOT_MAX_ARGS:
            self._ack(client, op, False, f"args size >{BYBIT_SPOT_MAX_ARGS}", req_id)
            return
        keys = []
        for topic in args:
            key = self._key(category, topic)
            if key is None:
                self.counters["errors_sent"] += 1
                self._ack(client, op, False, f"Invalid topic: {str(topic)[:100]}", req_id)
                return
            keys.append((key, topic))
        if op == "subscribe" and self.sub_count(client) + len(keys) > self.config.max_subscriptions:
            self._ack(client, op, False, "too many topics on this connection", req_id)
            return
        self._ack(client, op, True, "subscribe" if category == "spot" and op == "subscribe" else "", req_id)
        for key, topic in keys:
            if op == "unsubscribe":
                self.remove_sub(client, key, topic)
                continue
            self.add_sub(client, key, topic)
            if self.is_silenced(key):
                continue
            inst = self.instrument(key[0], key[1])
            if inst is None:
                continue
            if key[2] == "orderbook.50":
                self.send_one(client, key[2], self._book_frame(inst, topic, None))
            elif key[2] == "tickers" and category == "linear":
                if inst.ticker_state is None:
                    inst.ticker_state = self._linear_ticker(inst)
                self.send_one(client, key[2], self._ticker_frame(topic, "snapshot", inst.ticker_state, inst))

    def _key(self, category: str, topic: Any) -> Key | None:
        if not isinstance(topic, str):
            return None
        m = _BYBIT_TOPIC_RE.match(topic)
        if m is None:
            return None
        channel, native = m.group(1), m.group(2)
        if channel.startswith("orderbook."):
            # every depth Bybit offers (1/50/200/1000) is served from the one simulated book; the
            # frames carry the topic each client subscribed to
            channel = self.book_channel
        if channel == "allLiquidation" and category != "linear":
            return None
        if (BYBIT_CATEGORIES[category], native) not in self.venue.rows:
            return None
        return category, native, channel

    def book_update(self, inst: Instrument, send: bool = True) -> Any:
        bids, asks = inst.book.step(self.rng, inst.qty)
        inst.updates += 1
        inst.seq += 1
        inst.cs += self.rng.randint(1, 5)
        return bids, asks

    def _book_frame(self, inst: Instrument, topic: str, update: Any) -> str:
        fmt, now = inst.fmt, now_ms()
        if update is None:
            bids, asks = inst.book.top(50)
            b = [[fmt.px(p), fmt.qty(q)] for p, q in bids]
            a = [[fmt.px(p), fmt.qty(q)] for p, q in asks]
            kind = "snapshot"
        else:
            b = [[fmt.px(p), fmt.qty(q)] for p, q, _ex in update[0]]
            a = [[fmt.px(p), fmt.qty(q)] for p, q, _ex in update[1]]
            kind = "delta"
        data = {"s": inst.native, "b": b, "a": a, "u": inst.seq, "seq": inst.cs}
        if inst.market == "spot":
            return orjson.dumps({"topic": topic, "ts": now, "type": kind, "data": data}).decode()
        return orjson.dumps({"topic": topic, "type": kind, "ts": now, "data": data, "cts": now - 2}).decode()

    def _linear_ticker(self, inst: Instrument) -> dict[str, str]:
        fmt, book = inst.fmt, inst.book
        bb, ba = book.best_bid, book.best_ask
        mark = inst.mark()
        oi = inst.open_interest()
        return {"symbol": inst.native, "tickDirection": "PlusTick" if inst.last >= inst.open else "MinusTick",
                "price24hPcnt": inst.change(6, percent=False),
                "lastPrice": fmt.px(inst.last), "prevPrice24h": fmt.px(inst.open), "highPrice24h": fmt.px(inst.high),
                "lowPrice24h": fmt.px(inst.low), "prevPrice1h": fmt.px(inst.open), "markPrice": fmt.px(mark),
                "indexPrice": fmt.px(mark + 1), "openInterest": fmt.qty(oi),
                "openInterestValue": f"{fmt.qty_float(oi) * fmt.price_float(mark):.2f}",
                "turnover24h": f"{inst.quote_volume:.4f}", "volume24h": fmt.qty(inst.volume),
                "nextFundingTime": str(_next_funding(now_ms())), "fundingRate": inst.funding_rate(6, "strip"),
                "bid1Price": fmt.px(bb), "bid1Size": fmt.qty(book.bids.get(bb, 0)),
                "ask1Price": fmt.px(ba), "ask1Size": fmt.qty(book.asks.get(ba, 0))}

    def _ticker_frame(self, topic: str, kind: str, data: dict[str, str], inst: Instrument) -> str:
        inst.cs += 1
        return orjson.dumps({"topic": topic, "type": kind, "data": data, "cs": inst.cs, "ts": now_ms()}).decode()

    def emit(self, key: Key, targets: dict[str, list[Any]], now: int) -> None:
        category, native, ch = key
        inst = self.instrument(category, native)
        if inst is None:
            return
        if ch == "orderbook.50":
            update, _ = self.step_book(inst)
            if not self.is_silenced(key):
                inst.sent_seq = inst.seq
            self.deliver(key, targets, lambda topic: self._book_frame(inst, topic, update))
            return
        self.advance(inst)
        fmt = inst.fmt
        if ch == "publicTrade":
            exec_id, _n, price, q, buy, _ts = self.new_trade(inst, now)
            if category == "spot":
                item: dict[str, Any] = {"i": exec_id, "T": now, "p": fmt.px(price),
                                        "v": fmt.qty(q), "S": "Buy" if buy else "Sell", "s": native, "BT": False}
            else:
                item = {"T": now, "s": native, "S": "Buy" if buy else "Sell", "v": fmt.qty(q), "p": fmt.px(price),
                        "L": "PlusTick" if buy else "MinusTick",
                        "i": exec_id, "BT": False, "seq": inst.cs}
            if category == "spot":
                self.deliver(key, targets, lambda topic: orjson.dumps(
                    {"topic": topic, "ts": now, "type": "snapshot", "data": [item]}).decode())
            else:
                self.deliver(key, targets, lambda topic: orjson.dumps(
                    {"topic": topic, "type": "snapshot", "ts": now, "data": [item]}).decode())
        elif ch == "tickers":
            if self.rng.random() < 0.5:
                inst.trade()
            if category == "spot":
                inst.cs += 1
                data = {"symbol": native, "lastPrice": fmt.px(inst.last), "highPrice24h": fmt.px(inst.high),
                        "lowPrice24h": fmt.px(inst.low), "prevPrice24h": fmt.px(inst.open),
                        "volume24h": fmt.qty(inst.volume), "turnover24h": f"{inst.quote_volume:.8f}",
                        "price24hPcnt": inst.change(4, percent=False),
                        "usdIndexPrice": fmt.px(inst.mark())}
                cs = inst.cs
                self.deliver(key, targets, lambda topic: orjson.dumps(
                    {"topic": topic, "ts": now, "type": "snapshot", "cs": cs, "data": data}).decode())
                return
            new = self._linear_ticker(inst)
            old = inst.ticker_state
            inst.ticker_state = new
            if old is None:
                text_kind, data = "snapshot", new
            else:
                text_kind = "delta"
                data = {"symbol": native, **{k: v for k, v in new.items() if k != "symbol" and old.get(k) != v}}
            inst.cs += 1
            cs = inst.cs
            self.deliver(key, targets, lambda topic: orjson.dumps(
                {"topic": topic, "type": text_kind, "data": data, "cs": cs, "ts": now}).decode())
        elif ch == "allLiquidation":
            _tid, price, q, buy = inst.trade()
            item = {"T": now, "s": native, "S": "Sell" if buy else "Buy", "v": fmt.qty(q), "p": fmt.px(price)}
            self.deliver(key, targets, lambda topic: orjson.dumps(
                {"topic": topic, "type": "snapshot", "ts": now, "data": [item]}).decode())
        elif ch.startswith("kline."):
            interval = ch[6:]
            k = inst.kline(BYBIT_KLINES[interval], now)
            candle = {"start": k[0], "end": k[10], "interval": interval, "open": fmt.px(k[1]), "close": fmt.px(k[4]),
                      "high": fmt.px(k[2]), "low": fmt.px(k[3]), "volume": fmt.qty(k[5]),
                      "turnover": float_text(k[6], 4), "confirm": bool(k[11]), "timestamp": now}
            self.deliver(key, targets, lambda topic: orjson.dumps(
                {"topic": topic, "data": [candle], "ts": now, "type": "snapshot"}).decode())

    # ---- REST
    def account_ratio_body(self, query: Any) -> tuple[int, bytes]:
        """GET /v5/market/account-ratio: ``limit`` rows of {symbol, buyRatio, sellRatio, timestamp},
        newest first, the same values for the same period start on every request."""
        category, symbol, period = query.get("category"), query.get("symbol"), query.get("period")
        raw_limit = query.get("limit", "50")

        def error(code: int, msg: str) -> tuple[int, bytes]:
            return 200, orjson.dumps({"retCode": code, "retMsg": msg, "result": {}, "retExtInfo": {},
                                      "time": now_ms()})

        if category not in ("linear", "inverse"):
            return error(10001, "category only support linear or inverse")
        if not symbol or ("perp", symbol) not in self.venue.rows:
            return error(10001, "params error: symbol invalid")
        step = BYBIT_RATIO_PERIODS.get(period or "")
        if step is None:
            return error(10001, "params error: period invalid")
        if not raw_limit.isdigit() or not 1 <= int(raw_limit[:6]) <= 500:
            return error(10001, "params error: limit invalid")
        last = now_ms() // step * step
        rows = []
        for i in range(int(raw_limit)):
            ts = last - i * step
            buy = 3000 + int(4000 * _h01("bybit", symbol, period, ts))   # share of holders long, 1e-4 units
            rows.append({"symbol": symbol, "buyRatio": _styled(buy, 4, "strip"),
                         "sellRatio": _styled(10_000 - buy, 4, "strip"), "timestamp": str(ts)})
        return 200, orjson.dumps({"retCode": 0, "retMsg": "OK", "result": {"list": rows, "nextPageCursor": ""},
                                  "retExtInfo": {}, "time": now_ms()})


# ============================================================================ Deribit
_DERIBIT_INST_RE = re.compile(
    r"(?P<base>[A-Z0-9]{1,10})(?:_(?P<quote>[A-Z0-9]{1,10}))?"
    r"(?P<kind>-PERPETUAL|-[0-9]{1,2}[A-Z]{3}[0-9]{2})?\Z")
DERIBIT_INDEXES = frozenset({"btc_usd", "eth_usd"})
DERIBIT_INTERVALS = frozenset({"100ms", "agg2"})
DERIBIT_VERSION = "1.2.26"
#: JSON-RPC error codes (docs.deribit.com)
RPC_PARSE, RPC_METHOD, RPC_PARAMS = -32700, -32601, -32602
RAW_NEEDS_AUTH = 13778


def deribit_instrument(name: str) -> tuple[str, str, str] | None:
    """(market, base, quote) of a Deribit instrument name we simulate: ``BTC-PERPETUAL`` (inverse,
    USD), ``SOL_USDC-PERPETUAL`` (linear), ``BTC-27JUN25`` (future), ``BTC_USDC`` (spot)."""
    if not isinstance(name, str) or len(name) > 64:
        return None
    m = _DERIBIT_INST_RE.match(name)
    if m is None:
        return None
    kind, quote = m["kind"], m["quote"]
    if kind is None:
        return ("spot", m["base"], quote) if quote else None
    market = "perp" if kind == "-PERPETUAL" else "future"
    return market, m["base"], quote or "USD"


class DeribitMd(VenueMd):
    """Deribit JSON-RPC market data on its own port (``/ws/api/v2``)."""

    name = "deribit"
    book_channel = "book"
    trade_channel = "trades"

    # ---- trades: trade_seq (per instrument, no holes) is the ordered number
    def trade_record(self, inst: Instrument, tid: int, price: int, q: int, buy: bool, now: int) -> TradeRecord:
        inst.trade_seq += 1
        return (str(tid), inst.trade_seq, price, q, buy, now)

    def last_trades_body(self, query: Any, by_time: bool) -> dict[str, Any]:
        """``public/get_last_trades_by_instrument[_and_time]`` result from the bounded history:
        ``{"trades": [...], "has_more"}``; bounds inclusive (``start_seq``/``end_seq`` or
        ``start_timestamp``/``end_timestamp``), ``count`` <= 1000, ``sorting`` asc | desc | default."""
        name = query.get("instrument_name")
        parsed = deribit_instrument(name) if name else None
        if parsed is None:
            raise SimError(400, "instrument_name: invalid")
        nums: dict[str, int | None] = {}
        keys = ("start_timestamp", "end_timestamp") if by_time else ("start_seq", "end_seq")
        for k in (*keys, "count"):
            v = query.get(k)
            if v is not None and (not v.isdigit() or len(v) > 19):
                raise SimError(400, f"{k}: invalid")
            nums[k] = int(v) if v is not None else None
        if by_time and (nums[keys[0]] is None or nums[keys[1]] is None):
            raise SimError(400, "start_timestamp and end_timestamp are required")
        count = nums["count"] or 10
        if not 1 <= count <= 1000:
            raise SimError(400, "count: must be 1..1000")
        sorting = query.get("sorting", "default")
        lo, hi = nums[keys[0]], nums[keys[1]]
        field = 5 if by_time else 1
        rows = [r for r in self.history(parsed[0], name)
                if (lo is None or r[field] >= lo) and (hi is None or r[field] <= hi)]
        if sorting != "asc":
            rows.reverse()
        page, more = rows[:count], len(rows) > count
        inst = self.instruments.get((parsed[0], name))
        trades = []
        for tid, seq, price, q, buy, ts in page:
            assert inst is not None
            px = _Fragment(inst.fmt.px(price).encode())
            trades.append({"timestamp": ts, "price": px, "amount": _Fragment(inst.fmt.qty(q).encode()),
                           "direction": "buy" if buy else "sell", "index_price": px, "instrument_name": name,
                           "trade_seq": seq, "mark_price": px, "tick_direction": 0 if buy else 2, "trade_id": tid})
        return {"trades": trades, "has_more": more}

    def make_instrument(self, market: str, native: str) -> Instrument | None:
        if market == "index":
            if native not in DERIBIT_INDEXES:
                return None
            base, quote = native.split("_")
            fmt = Fmt(2, 1, 0, "num")
            return Instrument(self.name, market, native, base.upper(), quote.upper(), fmt, 60.0, self.rng, 5)
        parsed = deribit_instrument(native)
        if parsed is None or parsed[0] != market:
            return None
        _m, base, quote = parsed
        price = base_price(base, quote)
        mag = math.floor(math.log10(price))
        inverse = quote == "USD"
        if inverse:   # amounts in USD, multiples of 10; tick 0.5 on BTC, 0.05 on ETH
            fmt, lot, typical = Fmt(_clamp(5 - mag, 0, 8), 5, 1, "num"), 100, 50_000
        else:
            fmt, lot, typical = Fmt(_clamp(5 - mag, 0, 8), 1, _clamp(mag + 1, 0, 6), "num"), 1, 0
        return Instrument(self.name, market, native, base, quote, fmt, price, self.rng, self.config.book_levels,
                          lot=lot, typical=typical, seq0=self.rng.randint(10 ** 10, 10 ** 11))

    def markets_of(self, symbol: str) -> list[str]:
        if symbol in DERIBIT_INDEXES:
            return ["index"]
        parsed = deribit_instrument(symbol)
        return [parsed[0]] if parsed else []

    # ---- JSON-RPC
    def _reply(self, client: MdClient, rid: Any, result: Any = None, error: tuple[int, str] | None = None) -> None:
        us = time.time_ns() // 1000
        d: dict[str, Any] = {"jsonrpc": "2.0"}
        if rid is not None:
            d["id"] = rid
        if error is not None:
            d["error"] = {"message": error[1], "code": error[0]}
            self.counters["errors_sent"] += 1
        else:
            d["result"] = result
        d.update(usIn=us, usOut=us + 7, usDiff=7, testnet=False)
        client.send(json.dumps(d, separators=(",", ":")))

    def request(self, client: MdClient, text: str) -> None:
        try:
            req = json.loads(text)
        except ValueError:
            self._reply(client, None, error=(RPC_PARSE, "Parse error"))
            return
        if not isinstance(req, dict):
            self._reply(client, None, error=(-32600, "Invalid Request"))
            return
        rid, method, params = req.get("id"), req.get("method"), req.get("params") or {}
        if not (rid is None or (isinstance(rid, int) and not isinstance(rid, bool)) or
                (isinstance(rid, str) and len(rid) <= 64)):
            rid = None
        if not isinstance(params, dict):
            self._reply(client, rid, error=(RPC_PARAMS, "Invalid params"))
            return
        if method in ("public/subscribe", "public/unsubscribe"):
            self._subscribe(client, rid, method == "public/subscribe", params.get("channels"))
        elif method == "public/set_heartbeat":
            interval = params.get("interval")
            if isinstance(interval, bool) or not isinstance(interval, (int, float)) or not 10 <= interval <= 3600:
                self._reply(client, rid, error=(RPC_PARAMS, "Invalid params"))
                return
            client.hb_interval = self.config.heartbeat_interval or float(interval)
            client.hb_next = time.monotonic() + client.hb_interval
            client.hb_waiting = None
            self._reply(client, rid, "ok")
        elif method == "public/disable_heartbeat":
            client.hb_interval, client.hb_waiting = 0.0, None
            self._reply(client, rid, "ok")
        elif method == "public/test":
            client.hb_waiting = None
            self.counters["test_requests_answered"] += 1
            self._reply(client, rid, {"version": DERIBIT_VERSION})
        elif method == "public/get_time":
            self._reply(client, rid, now_ms())
        elif method == "public/hello":
            self._reply(client, rid, {"version": DERIBIT_VERSION})
        else:
            self._reply(client, rid, error=(RPC_METHOD, "Method not found"))

    def _subscribe(self, client: MdClient, rid: Any, subscribe: bool, channels: Any) -> None:
        if (not isinstance(channels, list) or not channels or len(channels) > 500
                or not all(isinstance(c, str) and 0 < len(c) <= 128 for c in channels)):
            self._reply(client, rid, error=(RPC_PARAMS, "Invalid params"))
            return
        if subscribe and any(c.endswith(".raw") for c in channels):
            self._reply(client, rid, error=(RAW_NEEDS_AUTH, "raw_subscriptions_not_available_for_unauthorized"))
            return
        done: list[str] = []
        snapshots: list[tuple[Instrument, str]] = []
        for name in dict.fromkeys(channels):
            key = self._key(name)
            if key is None:
                continue
            if not subscribe:
                if self.remove_sub(client, key, name):
                    done.append(name)
                continue
            if self.sub_count(client) >= self.config.max_subscriptions:
                break
            self.add_sub(client, key, name)
            done.append(name)
            if key[2] == "book" and not self.is_silenced(key):
                inst = self.instrument(key[0], key[1])
                if inst is not None:
                    snapshots.append((inst, name))
        # the response lists the channels in another order than asked (as the real one does)
        self._reply(client, rid, sorted(done))
        for inst, name in snapshots:
            self.send_one(client, "book", self._notification(name, self._book_data(inst, None)))

    def _key(self, name: str) -> Key | None:
        parts = name.split(".")
        if len(parts) == 2 and parts[0] == "deribit_volatility_index":
            return ("index", parts[1], "deribit_volatility_index") if parts[1] in DERIBIT_INDEXES else None
        if len(parts) != 3 or parts[0] not in ("trades", "book", "ticker") or parts[2] not in DERIBIT_INTERVALS:
            return None
        parsed = deribit_instrument(parts[1])
        return (parsed[0], parts[1], parts[0]) if parsed else None

    def _housekeeping(self) -> None:
        now = time.monotonic()
        for c in list(self.clients):
            if not c.hb_interval or now < c.hb_next:
                continue
            if c.hb_waiting is not None:   # the previous test_request was not answered: cut
                self.counters["closed_heartbeat"] += 1
                c.close()
                self.remove_client(c)
                continue
            c.hb_waiting = now
            c.hb_next = now + c.hb_interval
            self.counters["test_requests_sent"] += 1
            c.send('{"jsonrpc":"2.0","method":"heartbeat","params":{"type":"test_request"}}')

    # ---- frames
    @staticmethod
    def _notification(channel: str, data: Any) -> str:
        return orjson.dumps({"jsonrpc": "2.0", "method": "subscription",
                             "params": {"channel": channel, "data": data}}).decode()

    def book_update(self, inst: Instrument, send: bool = True) -> Any:
        bids, asks = inst.book.step(self.rng, inst.qty)
        inst.updates += 1
        prev = inst.seq
        inst.seq += self.rng.randint(1, 200)
        return prev, bids, asks

    def _book_data(self, inst: Instrument, update: Any) -> dict[str, Any]:
        fmt = inst.fmt

        def num(text: str) -> Any:
            return _Fragment(text.encode())

        d: dict[str, Any]
        if update is None:
            bids, asks = inst.book.top(inst.levels)
            d = {"type": "snapshot", "timestamp": now_ms(), "instrument_name": inst.native, "change_id": inst.seq,
                 "bids": [["new", num(fmt.px(p)), num(fmt.qty(q))] for p, q in bids],
                 "asks": [["new", num(fmt.px(p)), num(fmt.qty(q))] for p, q in asks]}
            return d

        def entry(p: int, q: int, existed: bool) -> list[Any]:
            action = "delete" if q == 0 else ("change" if existed else "new")
            return [action, num(fmt.px(p)), num(fmt.qty(q))]

        prev, bids_c, asks_c = update
        return {"type": "change", "timestamp": now_ms(), "prev_change_id": prev, "instrument_name": inst.native,
                "change_id": inst.seq, "bids": [entry(*c) for c in bids_c], "asks": [entry(*c) for c in asks_c]}

    def emit(self, key: Key, targets: dict[str, list[Any]], now: int) -> None:
        market, native, ch = key
        inst = self.instrument(market, native)
        if inst is None:
            return
        fmt = inst.fmt

        def num(text: str) -> Any:
            return _Fragment(text.encode())

        if ch == "book":
            update, _ = self.step_book(inst)
            data: Any = self._book_data(inst, update)
            if not self.is_silenced(key):
                inst.sent_seq = inst.seq
        elif ch == "deribit_volatility_index":
            inst.vol_index = min(max(inst.vol_index + self.rng.uniform(-0.3, 0.3), 20.0), 200.0)
            data = {"timestamp": now, "volatility": num(_styled(round(inst.vol_index * 100), 2, "num")),
                    "index_name": native}
        else:
            self.advance(inst)
            if ch == "trades":
                tid, seq, price, q, buy, _ts = self.new_trade(inst, now)
                mark = num(fmt.px(inst.mark()))
                item = {"timestamp": now, "price": num(fmt.px(price)), "amount": num(fmt.qty(q)),
                        "direction": "buy" if buy else "sell", "index_price": mark, "instrument_name": native,
                        "trade_seq": seq, "mark_price": mark, "tick_direction": 0 if buy else 2}
                if inst.quote == "USD":
                    item["contracts"] = num(_styled(q // 100, 0, "num"))
                item["trade_id"] = tid
                data = [item]
            else:   # ticker
                if self.rng.random() < 0.5:
                    inst.trade()
                book = inst.book
                bb, ba, mark = book.best_bid, book.best_ask, inst.mark()
                if inst.quote == "USD":   # inverse: amounts are USD
                    vol_usd = fmt.qty_float(inst.volume)
                    vol = vol_usd / max(fmt.price_float(mark), 1e-9)
                else:
                    vol, vol_usd = fmt.qty_float(inst.volume), inst.quote_volume
                data = {"timestamp": now, "state": "open",
                        "stats": {"high": num(fmt.px(inst.high)), "low": num(fmt.px(inst.low)),
                                  "price_change": num(_styled(round((inst.last - inst.open) * 10 ** 6 / inst.open), 4, "num")),
                                  "volume": num(float_text(vol, 8, "num")),
                                  "volume_usd": num(float_text(vol_usd, 1, "num"))},
                        "index_price": num(fmt.px(mark)), "instrument_name": native,
                        "last_price": num(fmt.px(inst.last)), "settlement_price": num(fmt.px(inst.open)),
                        "min_price": num(fmt.px(mark * 99 // 100)), "max_price": num(fmt.px(mark * 101 // 100)),
                        "open_interest": num(fmt.qty(inst.open_interest())), "mark_price": num(fmt.px(mark)),
                        "best_ask_price": num(fmt.px(ba)), "best_bid_price": num(fmt.px(bb)),
                        "estimated_delivery_price": num(fmt.px(mark)),
                        "best_ask_amount": num(fmt.qty(book.asks.get(ba, 0))),
                        "best_bid_amount": num(fmt.qty(book.bids.get(bb, 0)))}
                if market == "perp":
                    rate = float(inst.funding_rate(8))   # Deribit prints floats: 1.742e-05
                    data["interest_value"] = num(repr(rate * 3))
                    data["current_funding"] = num("0.0")
                    data["funding_8h"] = num(repr(rate))
        self.deliver(key, targets, lambda name: self._notification(name, data))
