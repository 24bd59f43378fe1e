"""Everything the exchange simulator knows and does, independent of HTTP routing.

``SimState`` is a plain class: the aiohttp app in ``server.py`` calls it, and a test can drive an
in-process app through it too. All methods run on the event loop thread (no locking).

Trade model: each spot symbol has one ``Feed`` whose trade ids run 1, 2, 3... without gaps.
A trade is *generated* when its id is assigned and *delivered* when its frame was handed to the
transport of at least one open connection subscribed to ``<symbol>@trade`` (frames still sitting
in a socket buffer when a connection is dropped abruptly are lost, as they would be for real).
Generation happens in one place (``emit``), so every subscriber sees ids in increasing order.
"""

from __future__ import annotations

import asyncio
import copy
import json
import logging
import math
import os
import random
import time
from collections import Counter, deque
from dataclasses import asdict, dataclass, field, replace
from importlib import resources
from typing import Any

import orjson

from collector.simulator.wsframes import OP_BINARY, OP_PING, OP_PONG, TradeTape, text_frame, ws_frame

log = logging.getLogger("collector.simulator")

MARKETS = ("spot", "usdm")
DEFAULT_SYMBOLS = ("BTCUSDT", "ETHUSDT", "BNBBTC")
#: quote assets recognised when a bare native symbol like XRPUSDT has to be split (longest first)
KNOWN_QUOTES = ("FDUSD", "USDT", "USDC", "TUSD", "BUSD", "USD1", "BTC", "ETH", "BNB", "EUR",
                "TRY", "BRL", "JPY", "DAI")
#: rough USD prices so generated trades look plausible
USD_PRICES = {"BTC": 83000.0, "ETH": 3000.0, "BNB": 600.0, "SOL": 150.0, "XRP": 0.5,
              "DOGE": 0.15, "TON": 3.0, "BCC": 300.0}
USD_LIKE = {"USDT", "USDC", "FDUSD", "TUSD", "BUSD", "USD1", "DAI", "USD"}

MAX_SYMBOL_LEN = 20_000       # long enough to script "10 kB hostile symbol" tests
MAX_BURST = 50_000            # one synchronous write; bigger runs belong to the firehose
MAX_FAULTS = 100
MAX_FILLER = 20_000
MAX_MALFORMED_SIZE = 16 * 1024 * 1024  # well under slow_consumer_bytes, so it cannot trip that guard
MAX_TRACKED_IDS = 1_000_000   # per symbol; beyond this only counters are kept
FIREHOSE_HIGH_WATER = 256 * 1024  # bytes queued on a connection before the firehose waits
FAULT_KINDS = ("429", "418", "403", "5xx", "timeout", "garbage", "empty", "truncate")
WEIGHT_WINDOW_S = 60


class SimError(Exception):
    """A control request that cannot be done; ``status`` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def _load_data(name: str) -> Any:
    return json.loads(resources.files("collector.simulator").joinpath("data", name).read_bytes())


@dataclass
class SimConfig:
    """Limits and timings; every field can be changed at run time (POST /_sim/config)."""

    #: incoming WS messages (text, binary, ping, pong) per rolling second before close 1008; 0 = off
    max_incoming_per_second: int = 5
    #: streams per connection (URL + SUBSCRIBE)
    max_streams: int = 1024
    #: server ping frame every N s (Binance spot: 20); 0 = never
    ping_interval: float = 20.0
    #: close 1008 when a ping stays unanswered this long (Binance: 1 min); 0 = never
    pong_timeout: float = 60.0
    #: close a connection after this age (Binance: 24 h); 0 = never
    max_connection_age: float = 86400.0
    #: REST weight per rolling minute for /api (spot) and /fapi; 0 = not enforced
    weight_limit: int = 6000
    fapi_weight_limit: int = 2400
    #: a connection with more bytes than this queued is cut (slow consumer)
    slow_consumer_bytes: int = 64 * 1024 * 1024
    #: trades/s per TRADING spot symbol at start and after reset
    trade_rate: float = 0.0

    def update(self, values: dict[str, Any]) -> None:
        for key, value in values.items():
            if not hasattr(self, key):
                raise SimError(400, f"unknown config field {key!r}")
            current = getattr(self, key)
            try:
                new = type(current)(value)
            except (TypeError, ValueError):
                raise SimError(400, f"config field {key!r} needs a {type(current).__name__}") from None
            if (isinstance(new, float) and not math.isfinite(new)) or new < 0:
                raise SimError(400, f"config field {key!r} must be a finite number >= 0")
            setattr(self, key, new)


class DeliveredIds:
    """Delivered trade ids of one symbol as compact ranges; ids arrive in increasing order."""

    def __init__(self, max_tracked: int = MAX_TRACKED_IDS) -> None:
        self.max_tracked = max_tracked
        self.count = 0
        self.first: int | None = None
        self.last: int | None = None
        self.ranges: list[list[int]] = []
        self.tracked = 0
        self.truncated = False

    def add(self, a: int, b: int) -> None:
        self.count += b - a + 1
        if self.first is None:
            self.first = a
        self.last = b
        if self.truncated:
            return
        room = self.max_tracked - self.tracked
        if b - a + 1 > room:
            b = a + room - 1
            self.truncated = True
            if b < a:
                return
        if self.ranges and self.ranges[-1][1] + 1 == a:
            self.ranges[-1][1] = b
        else:
            self.ranges.append([a, b])
        self.tracked += b - a + 1


class WeightWindow:
    """Request weight used in the rolling last minute, in one-second buckets (bounded: 60)."""

    def __init__(self) -> None:
        self.buckets: deque[list[int]] = deque()

    def _prune(self, now: float) -> None:
        sec = int(now)
        while self.buckets and self.buckets[0][0] <= sec - WEIGHT_WINDOW_S:
            self.buckets.popleft()

    def used(self, now: float) -> int:
        self._prune(now)
        return sum(w for _, w in self.buckets)

    def add(self, now: float, weight: int) -> int:
        self._prune(now)
        sec = int(now)
        if self.buckets and self.buckets[-1][0] == sec:
            self.buckets[-1][1] += weight
        else:
            self.buckets.append([sec, weight])
        return sum(w for _, w in self.buckets)

    def retry_after(self, now: float, need: int, limit: int) -> int:
        """Whole seconds until ``need`` more weight fits under ``limit``."""
        excess = self.used(now) + need - limit
        for sec, w in self.buckets:
            excess -= w
            if excess <= 0:
                return max(1, math.ceil(sec + WEIGHT_WINDOW_S - now))
        return WEIGHT_WINDOW_S


@dataclass
class RestFault:
    id: int
    kind: str
    path: str                  # exact request path, or "*" for every REST path
    remaining: int | None      # requests left, None = until `until`
    until: float | None        # monotonic deadline, None = until `remaining` hits 0
    retry_after: int = 60
    status: int = 503
    hang_s: float = 30.0
    body: str | None = None
    created_ms: int = 0
    hits: int = 0
    fraction: float | None = None  # kind "truncate": share of the list's rows to drop

    def expired(self, now: float) -> bool:
        return (self.remaining is not None and self.remaining <= 0) or (
            self.until is not None and now >= self.until)

    def public(self, now: float) -> dict[str, Any]:
        d = asdict(self)
        d.pop("until")
        d["seconds_left"] = None if self.until is None else round(max(0.0, self.until - now), 3)
        return d


def check_fraction(kind: str, fraction: Any) -> float | None:
    """The drop fraction of a "truncate" fault (default 0.5); None for other kinds."""
    if kind != "truncate":
        return None
    fraction = 0.5 if fraction is None else fraction
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction <= 1:
        raise SimError(400, "fraction (share of rows to drop) must be in (0, 1]")
    return float(fraction)


class FaultBook:
    """Scripted REST faults (for N requests or S seconds): the Binance state's and every venue's."""

    def __init__(self, kinds: tuple[str, ...] = FAULT_KINDS) -> None:
        self.kinds = kinds
        self.faults: list[RestFault] = []
        self.next_id = 1

    def add(self, kind: str, path: str = "*", count: int | None = None, duration_s: float | None = None,
            retry_after: int = 60, status: int = 503, hang_s: float = 30.0, body: str | None = None,
            fraction: float | None = None) -> dict[str, Any]:
        if kind not in self.kinds:
            raise SimError(400, f"kind must be one of {self.kinds}")
        if not isinstance(path, str) or not (path == "*" or path.startswith("/")) or len(path) > 200:
            raise SimError(400, "path must be '*' or an absolute request path")
        if count is not None and (not isinstance(count, int) or count < 1):
            raise SimError(400, "count must be a positive integer")
        if duration_s is not None and (not isinstance(duration_s, (int, float)) or not 0 < duration_s <= 86400):
            raise SimError(400, "duration_s must be in (0, 86400]")
        if count is None and duration_s is None:
            count = 1
        if kind == "5xx" and not (isinstance(status, int) and 500 <= status <= 599):
            raise SimError(400, "status must be 500..599 for kind 5xx")
        if not isinstance(retry_after, int) or retry_after < 0:
            raise SimError(400, "retry_after must be a non-negative integer (seconds)")
        if not isinstance(hang_s, (int, float)) or not 0 <= hang_s <= 600:
            raise SimError(400, "hang_s must be in [0, 600]")
        if body is not None and (not isinstance(body, str) or len(body) > 1_000_000):
            raise SimError(400, "body must be a string of at most 1 MB")
        fraction = check_fraction(kind, fraction)
        now = time.monotonic()
        self.prune(now)
        if len(self.faults) >= MAX_FAULTS:
            raise SimError(409, f"at most {MAX_FAULTS} active faults")
        fault = RestFault(id=self.next_id, kind=kind, path=path, remaining=count,
                          until=None if duration_s is None else now + float(duration_s),
                          retry_after=retry_after, status=status, hang_s=float(hang_s), body=body,
                          created_ms=now_ms(), fraction=fraction)
        self.next_id += 1
        self.faults.append(fault)
        return {"ok": True, "fault": fault.public(now), "visible_at_ms": now_ms()}

    def prune(self, now: float) -> None:
        if self.faults:
            self.faults = [f for f in self.faults if not f.expired(now)]

    def take(self, path: str, key: str | None = None, wildcard: bool = True) -> RestFault | None:
        """The fault hitting this request (one use consumed), or None. A fault names the request
        path (or its ``key``), or is ``*`` — which hits only when ``wildcard`` (REST, not a
        WebSocket handshake)."""
        if not self.faults:
            return None
        self.prune(time.monotonic())
        for f in self.faults:
            if f.path == path or (key is not None and f.path == key) or (f.path == "*" and wildcard):
                f.hits += 1
                if f.remaining is not None:
                    f.remaining -= 1
                return replace(f)
        return None

    def clear(self, path: str | None = None) -> dict[str, Any]:
        before = len(self.faults)
        self.faults = [] if path is None else [f for f in self.faults if f.path != path]
        return {"ok": True, "cleared": before - len(self.faults), "visible_at_ms": now_ms()}

    def public(self) -> list[dict[str, Any]]:
        now = time.monotonic()
        self.prune(now)
        return [f.public(now) for f in self.faults]


def keep_rows(rows: list[Any], drop_fraction: float) -> list[Any]:
    """``rows`` minus their tail share ``drop_fraction`` (a cut-off list; at least one row goes)."""
    if drop_fraction <= 0 or not rows:
        return rows
    keep = min(len(rows) - 1, math.floor(len(rows) * (1.0 - drop_fraction)))
    return rows[:max(keep, 0)]


#: the USDⓈ-M listing push stream
CONTRACT_INFO_STREAM = "!contractInfo"


class Listing:
    """One symbol as served by exchangeInfo; ``obj`` is the exact dict that goes on the wire."""

    __slots__ = ("market", "symbol", "base", "quote", "obj", "created_ms", "updated_ms")

    def __init__(self, market: str, symbol: str, base: str, quote: str, obj: dict[str, Any]) -> None:
        self.market, self.symbol, self.base, self.quote, self.obj = market, symbol, base, quote, obj
        self.created_ms = self.updated_ms = now_ms()

    @property
    def status(self) -> str:
        return self.obj["status"]

    def public(self) -> dict[str, Any]:
        return {"market": self.market, "symbol": self.symbol, "base": self.base, "quote": self.quote,
                "status": self.status, "created_ms": self.created_ms, "updated_ms": self.updated_ms}


class Feed:
    """The trade tape of one spot symbol."""

    def __init__(self, symbol: str, price: float, tick: float, step: float, seed: str | None,
                 rate: float) -> None:
        self.symbol = symbol
        self.stream = f"{symbol.lower()}@trade"
        self._tape_args = (price, tick, step, seed)
        self._tape: TradeTape | None = None
        self.tick = tick
        self.next_id = 1
        self.generated = 0
        self.rate = rate
        self.carry = 0.0
        self.delivered = DeliveredIds()
        self.frames_written = 0  # every frame on every connection, duplicates included
        self.book_update_id = 1_000_000

    @property
    def tape(self) -> TradeTape:
        # built on first use: 4096 formatted entries cost ~15 ms, too much for 20k filler symbols
        if self._tape is None:
            price, tick, step, seed = self._tape_args
            self._tape = TradeTape(self.symbol, self.stream, price, tick, step, random.Random(seed))
        return self._tape

    def public(self, listing: Listing | None) -> dict[str, Any]:
        d = self.delivered
        return {
            "listed": listing is not None,
            "status": listing.status if listing else None,
            "stream": self.stream,
            "rate": self.rate,
            "generated": self.generated,
            "next_id": self.next_id,
            "delivered": d.count,
            "first_delivered_id": d.first,
            "last_delivered_id": d.last,
            "delivered_ranges": d.ranges,
            "ranges_truncated": d.truncated,
            "frames_written": self.frames_written,
        }


class Conn:
    """One accepted WebSocket connection (the aiohttp handler owns the read side)."""

    def __init__(self, cid: int, ws: Any, transport: asyncio.Transport, path: str, combined: bool,
                 peer: str) -> None:
        self.id = cid
        self.ws = ws
        self.transport = transport
        self.path = path
        self.combined = combined
        self.peer = peer
        self.streams: dict[str, None] = {}  # insertion-ordered set (LIST_SUBSCRIPTIONS order)
        self.msg_times: deque[float] = deque()
        self.connected_at = time.monotonic()
        self.connected_ms = now_ms()
        self.next_ping_at = 0.0
        self.ping_payload = b""
        self.ping_outstanding_since: float | None = None
        self.closing = False
        self.frames_out = 0
        self.trades_out = 0
        self.messages_in = 0

    def alive(self) -> bool:
        return not self.closing and not self.transport.is_closing()

    def write(self, data: bytes) -> bool:
        if not self.alive():
            return False
        self.transport.write(data)
        return True

    def buffered(self) -> int:
        try:
            return self.transport.get_write_buffer_size()
        except Exception:  # noqa: BLE001 - a closed transport may refuse
            return 0

    def over_rate(self, now: float, limit: int) -> bool:
        """Count one incoming message; True when more than ``limit`` arrived within 1 s."""
        self.messages_in += 1
        if limit <= 0:
            return False
        times = self.msg_times
        times.append(now)
        while times and now - times[0] >= 1.0:
            times.popleft()
        return len(times) > limit

    def public(self, now: float) -> dict[str, Any]:
        return {"id": self.id, "path": self.path, "combined": self.combined, "peer": self.peer,
                "streams": len(self.streams), "age_s": round(now - self.connected_at, 3),
                "frames_out": self.frames_out, "trades_out": self.trades_out,
                "messages_in": self.messages_in, "buffered_bytes": self.buffered()}


@dataclass
class FirehoseRun:
    symbols: list[str]
    count: int | None
    batch: int
    started: float = field(default_factory=time.monotonic)
    finished: float | None = None
    emitted: int = 0

    def public(self) -> dict[str, Any]:
        end = self.finished if self.finished is not None else time.monotonic()
        elapsed = max(end - self.started, 1e-9)
        return {"running": self.finished is None, "symbols": self.symbols, "count": self.count,
                "batch": self.batch, "emitted": self.emitted, "elapsed_s": round(elapsed, 3),
                "trades_per_s": round(self.emitted / elapsed, 1)}


def split_symbol(spec: str) -> tuple[str, str, str]:
    """``BTCUSDT`` / ``BTC-USDT`` / ``BTC/USDT`` -> (native, base, quote)."""
    spec = spec.strip()
    for sep in ("-", "/", "_"):
        if sep in spec:
            base, _, quote = spec.partition(sep)
            base, quote = base.upper(), quote.upper()
            if base and quote:
                return base + quote, base, quote
    native = spec.upper()
    for quote in KNOWN_QUOTES:
        if native.endswith(quote) and len(native) > len(quote):
            return native, native[: -len(quote)], quote
    raise ValueError(f"cannot split {spec!r} into base and quote; write it as BASE-QUOTE")


def _initial_price(base: str, quote: str) -> float:
    b = USD_PRICES.get(base.upper(), 1.0)
    if quote.upper() in USD_LIKE:
        return b
    q = USD_PRICES.get(quote.upper())
    return b / q if q else b


def _filter(obj: dict[str, Any], ftype: str, key: str, default: float) -> float:
    for f in obj.get("filters", ()):
        if f.get("filterType") == ftype:
            try:
                return float(f[key])
            except (KeyError, TypeError, ValueError):
                return default
    return default


class SimState:
    """Listings, trade feeds, connections, faults and counters of one simulated Binance."""

    def __init__(self, symbols: list[str] | tuple[str, ...] = DEFAULT_SYMBOLS,
                 futures_symbols: list[str] | tuple[str, ...] = (), seed: int | None = None,
                 config: SimConfig | None = None, parent_pid: int | None = None) -> None:
        self._spot_data = _load_data("binance_spot_exchange_info.json")
        self._usdm_data = _load_data("binance_usdm_exchange_info.json")
        self._spot_templates = {o["symbol"]: o for o in self._spot_data["symbols"]}
        self._usdm_templates = {o["symbol"]: o for o in self._usdm_data["symbols"]}
        self.initial_spot = [split_symbol(s) for s in symbols]
        self.initial_usdm = [split_symbol(s) for s in futures_symbols]
        self.seed = seed
        self.initial_config = replace(config) if config else SimConfig()
        self.parent_pid = parent_pid
        self.stop_event: asyncio.Event | None = None  # set when the parent process is gone
        self._tasks: list[asyncio.Task[Any]] = []
        self._aux_tasks: set[asyncio.Task[Any]] = set()
        self._next_conn_id = 1
        self.conns: dict[int, Conn] = {}
        self.stream_subs: dict[str, set[Conn]] = {}
        self._firehose_task: asyncio.Task[Any] | None = None
        self._reset_everything()

    # ------------------------------------------------------------------ reset / setup
    def _reset_everything(self) -> None:
        self.config = replace(self.initial_config)
        self.rng = random.Random(self.seed)
        self.listings: dict[str, dict[str, Listing]] = {m: {} for m in MARKETS}
        self._body_cache: dict[str, bytes | None] = {m: None for m in MARKETS}
        self.feeds: dict[str, Feed] = {}
        self.duplicate = False
        self._stalled = False
        self._stall_until: float | None = None
        self.fault_book = FaultBook(FAULT_KINDS)
        self.rest_calls: Counter[str] = Counter()
        self.rest_faulted: Counter[str] = Counter()
        self.rest_rate_limited = 0
        self.weights = {"spot": WeightWindow(), "fapi": WeightWindow()}
        self.counters: Counter[str] = Counter()
        self.firehose: FirehoseRun | None = None
        self.started_ms = now_ms()
        for native, base, quote in self.initial_spot:
            self._add_listing("spot", native, base, quote, "TRADING")
        for native, base, quote in self.initial_usdm:
            self._add_listing("usdm", native, base, quote, "TRADING")

    def reset(self, drop_connections: bool = True) -> dict[str, Any]:
        """Back to the start-up state: listings, config, ids from 1, no faults, zero counters."""
        self.stop_firehose()
        dropped = self.drop_connections() if drop_connections else 0
        self._reset_everything()
        return {"ok": True, "dropped": dropped}

    # ------------------------------------------------------------------ listings
    def _spot_template(self, symbol: str, quote: str) -> dict[str, Any]:
        if symbol in self._spot_templates and symbol != "BCCBTC":
            return self._spot_templates[symbol]  # recorded object, served as recorded
        if quote.upper() in ("BTC", "ETH", "BNB"):
            return self._spot_templates["BCCBTC"]
        return self._spot_templates["BTCUSDT"]

    def _build_obj(self, market: str, symbol: str, base: str, quote: str, status: str) -> dict[str, Any]:
        if market == "spot":
            obj = copy.deepcopy(self._spot_template(symbol, quote))
            obj.update(symbol=symbol, status=status, baseAsset=base, quoteAsset=quote)
            return obj
        template = "MBLUSDT" if status == "PENDING_TRADING" else "BTCUSDT"
        obj = copy.deepcopy(self._usdm_templates[template])
        obj.update(symbol=symbol, pair=symbol, status=status, baseAsset=base, quoteAsset=quote,
                   marginAsset=quote)
        if status != "PENDING_TRADING":
            obj["onboardDate"] = now_ms()
        return obj

    def _add_listing(self, market: str, symbol: str, base: str, quote: str, status: str) -> Listing:
        listing = Listing(market, symbol, base, quote, self._build_obj(market, symbol, base, quote, status))
        self.listings[market][symbol] = listing
        self._body_cache[market] = None
        if market == "spot" and symbol not in self.feeds:
            price = _initial_price(base, quote)
            tick = _filter(listing.obj, "PRICE_FILTER", "tickSize", 0.01)
            # keep ~4 significant decimals of movement even for cheap coins on a coarse template
            tick = min(tick, 10 ** math.floor(math.log10(price)) / 10_000) if price > 0 else tick
            step = _filter(listing.obj, "LOT_SIZE", "stepSize", 0.00001)
            seed = f"{self.seed}:{symbol}" if self.seed is not None else None
            self.feeds[symbol] = Feed(symbol, price, tick, step, seed, self.config.trade_rate)
        return listing

    @staticmethod
    def _check_market(market: str) -> str:
        if market not in MARKETS:
            raise SimError(400, f"market must be one of {MARKETS}")
        return market

    @staticmethod
    def _check_text(name: str, value: Any, max_len: int = MAX_SYMBOL_LEN) -> str:
        if not isinstance(value, str) or not value or len(value) > max_len:
            raise SimError(400, f"{name} must be a non-empty string of at most {max_len} characters")
        return value

    def add_symbol(self, symbol: str, base: str, quote: str, status: str = "TRADING",
                   market: str = "spot") -> dict[str, Any]:
        market = self._check_market(market)
        symbol = self._check_text("symbol", symbol)
        base, quote = self._check_text("base", base), self._check_text("quote", quote)
        status = self._check_text("status", status, 64)
        if symbol in self.listings[market]:
            raise SimError(409, f"{market} symbol {symbol!r} already listed")
        listing = self._add_listing(market, symbol, base, quote, status)
        self._push_contract_info(listing)
        return {"ok": True, **listing.public(), "visible_at_ms": now_ms()}

    def set_symbol_status(self, symbol: str, status: str, market: str = "spot") -> dict[str, Any]:
        market = self._check_market(market)
        status = self._check_text("status", status, 64)
        listing = self.listings[market].get(symbol)
        if listing is None:
            raise SimError(404, f"{market} symbol {symbol!r} is not listed")
        previous = listing.status
        listing.obj["status"] = status
        if market == "usdm" and previous == "PENDING_TRADING" and status != "PENDING_TRADING":
            listing.obj["contractType"] = "PERPETUAL"
            listing.obj["onboardDate"] = now_ms()
        listing.updated_ms = now_ms()
        self._body_cache[market] = None
        self._push_contract_info(listing)
        return {"ok": True, **listing.public(), "previous_status": previous, "visible_at_ms": now_ms()}

    def remove_symbol(self, symbol: str, market: str = "spot") -> dict[str, Any]:
        market = self._check_market(market)
        listing = self.listings[market].pop(symbol, None)
        if listing is None:
            raise SimError(404, f"{market} symbol {symbol!r} is not listed")
        self._body_cache[market] = None
        # the feed (and its id counter) stays: a relisted symbol continues its ids
        return {"ok": True, "market": market, "symbol": symbol, "visible_at_ms": now_ms()}

    def add_filler_symbols(self, count: int, quote: str = "USDT", market: str = "spot") -> dict[str, Any]:
        """Many synthetic TRADING symbols, so exchangeInfo has a realistic size (~3000 on Binance)."""
        market = self._check_market(market)
        if not isinstance(count, int) or not 0 < count <= MAX_FILLER:
            raise SimError(400, f"count must be 1..{MAX_FILLER}")
        added, i = 0, 0
        while added < count:
            i += 1
            base = f"SIM{i:05d}"
            if base + quote in self.listings[market]:
                continue
            self._add_listing(market, base + quote, base, quote, "TRADING")
            added += 1
        return {"ok": True, "added": added, "listed": len(self.listings[market]), "visible_at_ms": now_ms()}

    def list_symbols(self, market: str = "spot") -> list[dict[str, Any]]:
        return [lst.public() for lst in self.listings[self._check_market(market)].values()]

    # ------------------------------------------------------------------ REST bodies
    def exchange_info_body(self, market: str, symbols: list[str] | None = None,
                           status: str | None = None, empty: bool = False, drop_fraction: float = 0.0) -> bytes:
        """The exchangeInfo body; raises SimError(-1121 style) for an unknown requested symbol.

        ``drop_fraction`` > 0 serves a truncated list (the tail share of the symbols missing).
        """
        listings = self.listings[market]
        if empty:
            sym_bytes = b"[]"
        elif drop_fraction > 0 and symbols is None and status is None:
            sym_bytes = orjson.dumps([lst.obj for lst in keep_rows(list(listings.values()), drop_fraction)])
        elif symbols is None and status is None:
            cached = self._body_cache[market]
            if cached is None:
                cached = orjson.dumps([lst.obj for lst in listings.values()])
                self._body_cache[market] = cached
            sym_bytes = cached
        else:
            chosen = listings.values() if symbols is None else []
            if symbols is not None:
                missing = [s for s in symbols if s not in listings]
                if missing:
                    raise SimError(400, "Invalid symbol.")
                chosen = [listings[s] for s in symbols]
            sym_bytes = orjson.dumps([lst.obj for lst in chosen if status is None or lst.status == status])
        src = self._spot_data if market == "spot" else self._usdm_data
        head: dict[str, Any] = {"timezone": src["timezone"], "serverTime": now_ms()}
        if market == "usdm":
            head["futuresType"] = src["futuresType"]
        head["rateLimits"] = src["rateLimits"]
        head["exchangeFilters"] = src["exchangeFilters"]
        if market == "usdm":
            head["assets"] = src["assets"]
        # splice the cached symbols array in: key order stays timezone, serverTime, ..., symbols
        tail = b"}"
        if "sors" in src:  # spot's optional smart-order-routing block follows the symbols
            tail = b',"sors":' + orjson.dumps(src["sors"]) + b"}"
        return orjson.dumps(head)[:-1] + b',"symbols":' + sym_bytes + tail

    def depth_body(self, symbol: str, limit: int, empty: bool = False) -> bytes:
        feed = self.feeds.get(symbol)
        if feed is None or symbol not in self.listings["spot"]:
            raise SimError(400, "Invalid symbol.")
        feed.book_update_id += self.rng.randint(1, 40)
        price, tick = feed.tape.last_price, feed.tick
        levels = 0 if empty else limit
        bids, asks = [], []
        for i in range(levels):
            bids.append([f"{max(price - (i + 1) * tick, tick):.8f}", f"{self.rng.uniform(0.001, 5):.8f}"])
            asks.append([f"{price + i * tick + tick:.8f}", f"{self.rng.uniform(0.001, 5):.8f}"])
        return orjson.dumps({"lastUpdateId": feed.book_update_id, "bids": bids, "asks": asks})

    # ------------------------------------------------------------------ REST accounting / faults
    @staticmethod
    def path_key(path: str) -> str:
        """A bounded name for a request path (stats must not grow with hostile URLs)."""
        if path in KNOWN_REST_PATHS:
            return path
        if path.startswith("/ws/"):
            return "/ws"
        return "other"

    def count_rest_call(self, path: str) -> None:
        self.rest_calls[self.path_key(path)] += 1

    def weight_family(self, path: str) -> str:
        return "fapi" if path.startswith("/fapi/") else "spot"

    def weight_limit(self, family: str) -> int:
        return self.config.fapi_weight_limit if family == "fapi" else self.config.weight_limit

    def charge_weight(self, family: str, weight: int) -> tuple[bool, int, int]:
        """(allowed, used weight now, retry_after seconds) for a request costing ``weight``."""
        window, limit = self.weights[family], self.weight_limit(family)
        now = time.monotonic()
        if limit > 0 and window.used(now) + weight > limit:
            self.rest_rate_limited += 1
            return False, window.used(now), window.retry_after(now, weight, limit)
        return True, window.add(now, weight), 0

    def used_weight(self, family: str) -> int:
        return self.weights[family].used(time.monotonic())

    def add_fault(self, kind: str, path: str = "*", count: int | None = None,
                  duration_s: float | None = None, retry_after: int = 60, status: int = 503,
                  hang_s: float = 30.0, body: str | None = None, fraction: float | None = None) -> dict[str, Any]:
        return self.fault_book.add(kind, path, count, duration_s, retry_after, status, hang_s, body, fraction)

    def take_fault(self, path: str, rest: bool) -> RestFault | None:
        """The fault that applies to this request (consuming one use), or None.

        ``*`` faults hit REST paths only; a WebSocket handshake path is hit only when named.
        """
        key = self.path_key(path)
        fault = self.fault_book.take(path, key=key, wildcard=rest)
        if fault is not None:
            self.rest_faulted[key] += 1
        return fault

    def clear_faults(self, path: str | None = None) -> dict[str, Any]:
        out = self.fault_book.clear(path)
        out.pop("visible_at_ms")
        return out

    # ------------------------------------------------------------------ trades
    def _live_subscribers(self, stream: str) -> list[Conn]:
        subs = self.stream_subs.get(stream)
        if not subs:
            return []
        return [c for c in subs if c.alive()]

    def emit(self, feed: Feed, count: int) -> tuple[int, int, bool]:
        """Generate ``count`` trades of ``feed`` and write them to every live subscriber.

        Returns (first id, last id, delivered?). While stalled, trades are generated (the market
        keeps trading) but nothing is written.
        """
        first = feed.next_id
        last = first + count - 1
        feed.next_id = last + 1
        feed.generated += count
        if self.stalled:
            return first, last, False
        live = self._live_subscribers(feed.stream)
        if not live:
            return first, last, False
        need_raw = any(not c.combined for c in live)
        need_comb = any(c.combined for c in live)
        raw, comb = feed.tape.encode(first, count, now_ms(), need_raw, need_comb)
        copies = 2 if self.duplicate else 1
        if copies == 2:
            # whole batch twice (A B C A B C): a downstream dedup window has to cover a batch
            raw = raw * 2 if raw is not None else None
            comb = comb * 2 if comb is not None else None
        for c in live:
            c.transport.write(comb if c.combined else raw)  # type: ignore[arg-type]
            c.frames_out += count * copies
            c.trades_out += count * copies
        feed.frames_written += count * copies * len(live)
        feed.delivered.add(first, last)
        return first, last, True

    def _feed_for(self, symbol: str) -> Feed:
        listing = self.listings["spot"].get(symbol)
        feed = self.feeds.get(symbol)
        if listing is None or feed is None:
            raise SimError(404, f"spot symbol {symbol!r} is not listed")
        if listing.status != "TRADING":
            raise SimError(409, f"spot symbol {symbol!r} is {listing.status}, not TRADING")
        return feed

    def set_rate(self, rate: float, symbol: str | None = None) -> dict[str, Any]:
        if not isinstance(rate, (int, float)) or not 0 <= rate <= 1_000_000:
            raise SimError(400, "rate must be 0..1000000 trades/s")
        if symbol is None:
            targets = [self.feeds[s] for s in self.listings["spot"] if s in self.feeds]
        else:
            if symbol not in self.feeds or symbol not in self.listings["spot"]:
                raise SimError(404, f"spot symbol {symbol!r} is not listed")
            targets = [self.feeds[symbol]]
        for feed in targets:
            feed.rate = float(rate)
            feed.carry = 0.0
        return {"ok": True, "rate": float(rate), "symbols": [f.symbol for f in targets]}

    def burst(self, symbol: str, count: int) -> dict[str, Any]:
        if not isinstance(count, int) or not 1 <= count <= MAX_BURST:
            raise SimError(400, f"count must be 1..{MAX_BURST} (use the firehose for more)")
        feed = self._feed_for(symbol)
        first, delivered = feed.next_id, False
        remaining = count
        while remaining:
            n = min(remaining, 5000)
            _, _, ok = self.emit(feed, n)
            delivered = delivered or ok
            remaining -= n
        return {"ok": True, "symbol": symbol, "first_id": first, "last_id": feed.next_id - 1,
                "delivered": delivered}

    def set_duplicate(self, enabled: bool) -> dict[str, Any]:
        self.duplicate = bool(enabled)
        return {"ok": True, "duplicate": self.duplicate}

    async def _rate_loop(self) -> None:
        last = time.monotonic()
        while True:
            busy = any(f.rate > 0 for f in self.feeds.values())
            await asyncio.sleep(0.005 if busy else 0.05)
            now = time.monotonic()
            dt, last = min(now - last, 1.0), now  # cap catch-up after a long pause
            if not busy:
                continue
            try:
                self._rate_tick(dt)
            except Exception:  # noqa: BLE001 - keep generating; a bug here must not stop the market
                log.exception("trade rate tick failed")

    def _rate_tick(self, dt: float) -> None:
        for symbol, feed in list(self.feeds.items()):
            if feed.rate <= 0:
                continue
            listing = self.listings["spot"].get(symbol)
            if listing is None or listing.status != "TRADING":
                feed.carry = 0.0
                continue
            due = feed.carry + feed.rate * dt
            n = int(due)
            feed.carry = due - n
            if n:
                self.emit(feed, n)

    def start_firehose(self, symbols: list[str] | None = None, count: int | None = None,
                       batch: int = 200) -> dict[str, Any]:
        """Emit trades as fast as the subscribers read them (paced by their socket buffers)."""
        if symbols is None:
            symbols = [s for s, lst in self.listings["spot"].items() if lst.status == "TRADING"]
        if not isinstance(symbols, list) or not symbols:
            raise SimError(400, "symbols must be a non-empty list")
        for s in symbols:
            self._feed_for(s)
        if count is not None and (not isinstance(count, int) or count < 1):
            raise SimError(400, "count must be a positive integer")
        if not isinstance(batch, int) or not 1 <= batch <= 10_000:
            raise SimError(400, "batch must be 1..10000")
        self.stop_firehose()
        run = FirehoseRun(symbols=list(symbols), count=count, batch=batch)
        self.firehose = run
        self._firehose_task = asyncio.get_running_loop().create_task(self._run_firehose(run))
        return {"ok": True, "firehose": run.public()}

    def stop_firehose(self) -> dict[str, Any]:
        if self._firehose_task is not None:
            self._firehose_task.cancel()
            self._firehose_task = None
        if self.firehose is not None and self.firehose.finished is None:
            self.firehose.finished = time.monotonic()
        return {"ok": True, "firehose": self.firehose.public() if self.firehose else None}

    async def _run_firehose(self, run: FirehoseRun) -> None:
        try:
            while run.count is None or run.emitted < run.count:
                if self.stalled:
                    await asyncio.sleep(0.01)
                    continue
                progressed = False
                for symbol in run.symbols:
                    feed = self.feeds.get(symbol)
                    listing = self.listings["spot"].get(symbol)
                    if feed is None or listing is None or listing.status != "TRADING":
                        continue
                    if not self._live_subscribers(feed.stream):
                        continue  # nobody reads: do not burn ids
                    n = run.batch if run.count is None else min(run.batch, run.count - run.emitted)
                    if n <= 0:
                        break
                    self.emit(feed, n)
                    run.emitted += n
                    progressed = True
                if not progressed:
                    await asyncio.sleep(0.005)
                    continue
                await self._await_drain(run.symbols)
        finally:
            run.finished = time.monotonic()

    async def _await_drain(self, symbols: list[str]) -> None:
        """Wait while any subscriber of these symbols has more than the high-water mark queued."""
        await asyncio.sleep(0)
        while True:
            worst = 0
            for symbol in symbols:
                feed = self.feeds.get(symbol)
                if feed is not None:
                    for c in self._live_subscribers(feed.stream):
                        worst = max(worst, c.buffered())
            if worst <= FIREHOSE_HIGH_WATER:
                return
            await asyncio.sleep(0.0005)

    # ------------------------------------------------------------------ connections
    def register(self, ws: Any, transport: asyncio.Transport, path: str, combined: bool,
                 streams: list[str], peer: str) -> Conn:
        conn = Conn(self._next_conn_id, ws, transport, path, combined, peer)
        self._next_conn_id += 1
        conn.next_ping_at = time.monotonic() + self.config.ping_interval
        self.conns[conn.id] = conn
        self.counters["ws_accepted"] += 1
        self.subscribe(conn, streams)
        return conn

    def unregister(self, conn: Conn) -> None:
        self.conns.pop(conn.id, None)
        for stream in conn.streams:
            subs = self.stream_subs.get(stream)
            if subs is not None:
                subs.discard(conn)
                if not subs:
                    del self.stream_subs[stream]

    def subscribe(self, conn: Conn, streams: list[str]) -> None:
        for s in streams:
            conn.streams[s] = None
            self.stream_subs.setdefault(s, set()).add(conn)

    def unsubscribe(self, conn: Conn, streams: list[str]) -> None:
        for s in streams:
            if conn.streams.pop(s, 0) is None:
                subs = self.stream_subs.get(s)
                if subs is not None:
                    subs.discard(conn)
                    if not subs:
                        del self.stream_subs[s]

    def _push_contract_info(self, listing: Listing) -> None:
        """USDⓈ-M ``!contractInfo``: one frame per listing or status change, to every connection
        subscribed to it (the docs example's shape, brackets left out as on a status-only change)."""
        if listing.market != "usdm":
            return
        subs = self.stream_subs.get(CONTRACT_INFO_STREAM)
        if not subs:
            return
        obj = listing.obj
        payload = {"e": "contractInfo", "E": now_ms(), "s": listing.symbol, "ps": obj.get("pair", listing.symbol),
                   "ct": obj.get("contractType", ""), "dt": obj.get("deliveryDate", 4133404800000),
                   "ot": obj.get("onboardDate", 0), "cs": obj["status"]}
        self.counters["contract_info_pushes"] += 1
        for conn in list(subs):
            self.send_control_frame(conn, {"stream": CONTRACT_INFO_STREAM, "data": payload} if conn.combined
                                    else payload)

    def send_control_frame(self, conn: Conn, obj: Any) -> None:
        """A reply to a WS control message (nothing leaves while stalled)."""
        if not self.stalled:
            if conn.write(text_frame(orjson.dumps(obj))):
                conn.frames_out += 1

    def on_pong(self, conn: Conn, payload: bytes) -> None:
        # Binance wants the ping payload echoed; an unsolicited pong does not keep a connection alive
        if conn.ping_outstanding_since is not None and payload == conn.ping_payload:
            conn.ping_outstanding_since = None

    def on_ping(self, conn: Conn, payload: bytes) -> None:
        if not self.stalled:
            conn.write(ws_frame(OP_PONG, payload[:125]))

    def drop_connections(self) -> int:
        """Abort every WebSocket connection: no close frame, the TCP connection just ends."""
        n = 0
        for conn in list(self.conns.values()):
            conn.closing = True
            conn.transport.abort()
            self.unregister(conn)
            n += 1
        self.counters["ws_dropped"] += n
        return n

    def close_conn(self, conn: Conn, code: int, reason: str, counter: str | None = None) -> None:
        """Close with a close frame (from any task); aborts if the handshake does not finish."""
        if conn.closing:
            return
        conn.closing = True
        self.unregister(conn)
        if counter:
            self.counters[counter] += 1
        task = asyncio.get_running_loop().create_task(self._close_ws(conn, code, reason))
        self._aux_tasks.add(task)
        task.add_done_callback(self._aux_tasks.discard)

    @staticmethod
    async def _close_ws(conn: Conn, code: int, reason: str) -> None:
        try:
            await asyncio.wait_for(conn.ws.close(code=code, message=reason.encode()[:120]), 3.0)
        except Exception:  # noqa: BLE001 - slow or dead peer: cut it
            pass
        finally:
            if not conn.transport.is_closing():
                conn.transport.abort()

    # ------------------------------------------------------------------ stall / malformed / shutdown
    @property
    def stalled(self) -> bool:
        if self._stalled and self._stall_until is not None and time.monotonic() >= self._stall_until:
            self._unstall()
        return self._stalled

    def stall(self, seconds: float | None = None) -> dict[str, Any]:
        if seconds is not None and (not isinstance(seconds, (int, float)) or not 0 < seconds <= 86400):
            raise SimError(400, "seconds must be in (0, 86400] or null (until unstall)")
        self._stalled = True
        self._stall_until = None if seconds is None else time.monotonic() + float(seconds)
        for conn in self.conns.values():
            conn.ping_outstanding_since = None  # no pings go out, so none can be missed
        self.counters["stalls"] += 1
        return {"ok": True, "stalled": True, "seconds": seconds, "at_ms": now_ms()}

    def _unstall(self) -> None:
        self._stalled = False
        self._stall_until = None
        now = time.monotonic()
        for conn in self.conns.values():
            conn.ping_outstanding_since = None
            conn.next_ping_at = min(conn.next_ping_at, now + self.config.ping_interval)

    def unstall(self) -> dict[str, Any]:
        was = self._stalled
        self._unstall()
        return {"ok": True, "stalled": False, "was_stalled": was, "at_ms": now_ms()}

    def send_malformed(self, kinds: list[str] | None = None, count: int = 1,
                       size: int = 5 * 1024 * 1024) -> dict[str, Any]:
        """Write broken frames to every connection, between its normal frames."""
        kinds = kinds or ["garbage", "truncated", "binary", "oversized"]
        valid = ("garbage", "truncated", "binary", "oversized")
        if not isinstance(kinds, list) or any(k not in valid for k in kinds):
            raise SimError(400, f"kinds must be a list drawn from {valid}")
        if not isinstance(count, int) or not 1 <= count <= 100:
            raise SimError(400, "count must be 1..100")
        if not isinstance(size, int) or not 64 <= size <= MAX_MALFORMED_SIZE:
            raise SimError(400, f"size must be 64..{MAX_MALFORMED_SIZE} bytes")
        if self.stalled:
            return {"ok": True, "connections": 0, "frames": 0, "stalled": True}
        sample = (b'{"e":"trade","E":1790649901913,"s":"BTCUSDT","t":6720857582,'
                  b'"p":"83034.29000000","q":"0.00062000","T":1790649901913,"m":true,"M":true}')
        raw_frames: list[bytes] = []
        comb_frames: list[bytes] = []
        for kind in kinds:
            if kind == "garbage":
                f = text_frame("<html><body>502 Bad Gateway \u2603</body></html> }{".encode())
                raw, comb = f, f
            elif kind == "truncated":
                wrapped = b'{"stream":"btcusdt@trade","data":' + sample + b"}"
                raw, comb = text_frame(sample[: len(sample) // 2]), text_frame(wrapped[: len(wrapped) // 2])
            elif kind == "binary":
                raw = comb = ws_frame(OP_BINARY, bytes(self.rng.getrandbits(8) for _ in range(64)))
            else:
                head = b'{"stream":"btcusdt@trade","data":{"e":"trade","pad":"'
                tail = b'"}}'
                f = text_frame(head + b"x" * max(0, size - len(head) - len(tail)) + tail)
                raw = comb = f
            raw_frames += [raw] * count
            comb_frames += [comb] * count
        raw_b, comb_b = b"".join(raw_frames), b"".join(comb_frames)
        n = 0
        for conn in list(self.conns.values()):
            if conn.write(comb_b if conn.combined else raw_b):
                conn.frames_out += len(raw_frames)
                n += 1
        self.counters["malformed_frames_sent"] += n * len(raw_frames)
        return {"ok": True, "connections": n, "frames": len(raw_frames), "kinds": kinds}

    def server_shutdown(self, close_after_s: float | None = None) -> dict[str, Any]:
        """Send Binance's ``serverShutdown`` event to every connection; optionally close them later."""
        if close_after_s is not None and (not isinstance(close_after_s, (int, float)) or not 0 <= close_after_s <= 3600):
            raise SimError(400, "close_after_s must be in [0, 3600] or null")
        if self.stalled:
            return {"ok": True, "connections": 0, "stalled": True}
        event = b'{"e":"serverShutdown","E":' + str(now_ms()).encode() + b"}"
        raw_f = text_frame(event)
        comb_f = text_frame(b'{"stream":"!serverShutdown","data":' + event + b"}")
        targets = []
        for conn in list(self.conns.values()):
            if conn.write(comb_f if conn.combined else raw_f):
                conn.frames_out += 1
                targets.append(conn)
        self.counters["shutdown_events_sent"] += len(targets)
        if close_after_s is not None and targets:
            task = asyncio.get_running_loop().create_task(self._close_later(targets, float(close_after_s)))
            self._aux_tasks.add(task)
            task.add_done_callback(self._aux_tasks.discard)
        return {"ok": True, "connections": len(targets), "close_after_s": close_after_s}

    async def _close_later(self, conns: list[Conn], delay: float) -> None:
        await asyncio.sleep(delay)
        for conn in conns:
            self.close_conn(conn, 1001, "Server shutdown", "closed_server_shutdown")

    # ------------------------------------------------------------------ housekeeping
    async def _housekeeping_loop(self) -> None:
        last_parent_check = 0.0
        while True:
            await asyncio.sleep(0.1)
            now = time.monotonic()
            try:
                self._housekeeping_tick(now)
            except Exception:  # noqa: BLE001 - pings and limits must keep running
                log.exception("housekeeping tick failed")
            if self.parent_pid and now - last_parent_check >= 1.0:
                last_parent_check = now
                if os.getppid() != self.parent_pid:
                    log.warning("parent process %s is gone; stopping", self.parent_pid)
                    if self.stop_event is not None:
                        self.stop_event.set()

    def _housekeeping_tick(self, now: float) -> None:
        """Slow consumers, connection age, pong timeouts, server pings."""
        stalled = self.stalled  # also expires a timed stall
        cfg = self.config
        for conn in list(self.conns.values()):
            if conn.closing:
                continue
            if conn.buffered() > cfg.slow_consumer_bytes:
                conn.closing = True
                conn.transport.abort()
                self.unregister(conn)
                self.counters["closed_slow_consumer"] += 1
                continue
            if cfg.max_connection_age > 0 and now - conn.connected_at >= cfg.max_connection_age:
                self.close_conn(conn, 1000, "Connection max age reached", "closed_max_age")
                continue
            if stalled:
                continue
            if (cfg.pong_timeout > 0 and conn.ping_outstanding_since is not None
                    and now - conn.ping_outstanding_since > cfg.pong_timeout):
                self.close_conn(conn, 1008, "Pong timeout", "closed_pong_timeout")
                continue
            if cfg.ping_interval > 0 and now >= conn.next_ping_at:
                conn.ping_payload = str(now_ms()).encode()
                if conn.write(ws_frame(OP_PING, conn.ping_payload)):
                    self.counters["pings_sent"] += 1
                    if conn.ping_outstanding_since is None:
                        conn.ping_outstanding_since = now
                conn.next_ping_at = now + cfg.ping_interval

    def apply_config(self, values: dict[str, Any]) -> dict[str, Any]:
        old_interval = self.config.ping_interval
        self.config.update(values)
        if self.config.ping_interval != old_interval:
            now = time.monotonic()
            for conn in self.conns.values():
                conn.next_ping_at = now + self.config.ping_interval
        return {"ok": True, "config": asdict(self.config)}

    async def start(self) -> None:
        """Start the background loops (trade rates, pings and limits)."""
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._rate_loop()), loop.create_task(self._housekeeping_loop())]

    async def stop(self) -> None:
        """Stop background work and close every connection (used on shutdown)."""
        self.stop_firehose()
        for task in self._tasks + list(self._aux_tasks):
            task.cancel()
        for task in self._tasks + list(self._aux_tasks):
            try:
                await task
            except (asyncio.CancelledError, Exception):  # noqa: BLE001
                pass
        self._tasks = []
        for conn in list(self.conns.values()):
            conn.closing = True
            try:
                await asyncio.wait_for(conn.ws.close(code=1001, message=b"Server shutting down"), 1.0)
            except Exception:  # noqa: BLE001
                pass
            if not conn.transport.is_closing():
                conn.transport.abort()
            self.unregister(conn)

    # ------------------------------------------------------------------ stats
    def stats(self) -> dict[str, Any]:
        now = time.monotonic()
        faults = self.fault_book.public()
        symbols = {}
        for symbol, feed in self.feeds.items():
            listing = self.listings["spot"].get(symbol)
            if listing is not None or feed.generated:
                symbols[symbol] = feed.public(listing)
        conns = [c.public(now) for c in self.conns.values()]
        return {
            "now_ms": now_ms(),
            "started_ms": self.started_ms,
            "symbols": symbols,
            "listed": {m: len(self.listings[m]) for m in MARKETS},
            "connections": {
                "open": len(self.conns),
                "accepted": self.counters["ws_accepted"],
                "dropped": self.counters["ws_dropped"],
                "closed_rate_limit": self.counters["closed_rate_limit"],
                "closed_slow_consumer": self.counters["closed_slow_consumer"],
                "closed_pong_timeout": self.counters["closed_pong_timeout"],
                "closed_max_age": self.counters["closed_max_age"],
                "closed_server_shutdown": self.counters["closed_server_shutdown"],
                "list": conns[:200],
            },
            "ws": {
                "stalled": self.stalled,
                "stall_seconds_left": (None if not self._stalled or self._stall_until is None
                                       else round(max(0.0, self._stall_until - now), 3)),
                "duplicate": self.duplicate,
                "control_messages": self.counters["control_messages"],
                "control_errors": self.counters["control_errors"],
                "pings_sent": self.counters["pings_sent"],
                "malformed_frames_sent": self.counters["malformed_frames_sent"],
                "shutdown_events_sent": self.counters["shutdown_events_sent"],
                "rejected_handshakes": self.counters["ws_rejected"],
            },
            "rest": {
                "calls": dict(self.rest_calls),
                "faulted": dict(self.rest_faulted),
                "rate_limited": self.rest_rate_limited,
                "used_weight_1m": {fam: self.used_weight(fam) for fam in self.weights},
            },
            "faults": faults,
            "firehose": self.firehose.public() if self.firehose else None,
            "config": asdict(self.config),
        }


KNOWN_REST_PATHS = frozenset({
    "/api/v3/exchangeInfo", "/api/v3/depth", "/api/v3/ping", "/api/v3/time",
    "/fapi/v1/exchangeInfo", "/fapi/v1/ping", "/fapi/v1/time",
    "/stream", "/ws",
})
