"""Instrument-list ("listings") endpoints of twelve more exchanges, with their recorded body shapes.

Pure state and rendering, no HTTP: ``server.py`` serves each ``Venue`` on its own port (exchanges share
paths: Binance and MEXC both answer ``/api/v3/exchangeInfo``). Binance itself stays in ``state.py``
(``SimState``); ``BinanceListings`` gives it the same scripting interface as the venues here.

Every venue starts with the rows of its recorded fixture (``data/*.json``, copies of
``../shared/fixtures/rest``), served verbatim. Symbols added later are deep copies of a recorded row of
the same kind with the identity fields (symbol, base, quote, ids) and the status fields replaced.

Scripting uses one vocabulary for every exchange -- ``pre_trading | trading | halted | delisted`` --
mapped to each exchange's own representation by ``STATUS_MAP`` (sources in ``data/SOURCES.md``).
``REMOVE`` means the exchange drops the symbol from its list instead of showing a delisted status.
A ``raw_status`` can be given instead to put any exchange-specific value on the wire.

Bodies are cached: each row's encoding until that row changes, each rendered list until anything on
the venue changes, so ~3000 symbols per exchange cost one ``join`` per change, not per request.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
import json
from collections import Counter
from importlib import resources
from typing import Any, Callable, Iterable, Mapping
from urllib.parse import unquote

import orjson

from collector.simulator.state import (
    FaultBook,
    MAX_FILLER,
    SimError,
    keep_rows,
    now_ms,
)

PRE, TRD, HLT, DEL = "pre_trading", "trading", "halted", "delisted"
NORMALIZED = (PRE, TRD, HLT, DEL)
#: the exchange removes a delisted symbol from its list (no delisted status on the wire)
REMOVE = "(removed)"

#: every exchange the simulator can serve, in the order ``--exchanges all`` starts them
EXCHANGES = ("binance", "coinbase", "kraken", "okx", "bybit", "kucoin", "gate", "bitget", "htx", "mexc",
             "bingx", "phemex", "whitebit")

#: normalized status -> the exchange's raw status, per exchange and market ("spot" | "perp").
#: Multi-field exchanges name their primary field here; the other fields they set are in each
#: venue's ``build`` and in data/SOURCES.md.
STATUS_MAP: dict[str, dict[str, dict[str, str]]] = {
    "binance": {"spot": {PRE: "BREAK", TRD: "TRADING", HLT: "HALT", DEL: REMOVE},
                "perp": {PRE: "PENDING_TRADING", TRD: "TRADING", HLT: "BREAK", DEL: "CLOSE"}},
    "coinbase": {"spot": {PRE: "online", TRD: "online", HLT: "offline", DEL: "delisted"}},
    "kraken": {"spot": {PRE: "post_only", TRD: "online", HLT: "cancel_only", DEL: REMOVE}},
    "okx": {"spot": {PRE: "preopen", TRD: "live", HLT: "suspend", DEL: REMOVE},
            "perp": {PRE: "preopen", TRD: "live", HLT: "suspend", DEL: REMOVE}},
    # Bybit's statuses are PreLaunch, Trading, Delivering, Closed; Closed is delisted, so the
    # nearest to "halted" is Delivering (trading stopped on the way out)
    "bybit": {"spot": {PRE: "PreLaunch", TRD: "Trading", HLT: "Delivering", DEL: REMOVE},
              "perp": {PRE: "PreLaunch", TRD: "Trading", HLT: "Delivering", DEL: REMOVE}},
    "kucoin": {"spot": {PRE: "false", TRD: "true", HLT: "false", DEL: REMOVE}},
    "gate": {"spot": {PRE: "untradable", TRD: "tradable", HLT: "untradable", DEL: REMOVE}},
    "bitget": {"spot": {PRE: "gray", TRD: "online", HLT: "halt", DEL: REMOVE}},
    "htx": {"spot": {PRE: "pre-online", TRD: "online", HLT: "suspend", DEL: "offline"}},
    "mexc": {"spot": {PRE: "2", TRD: "1", HLT: "2", DEL: "3"}},
    "bingx": {"spot": {PRE: "5", TRD: "1", HLT: "25", DEL: "0"}},
    "phemex": {"spot": {PRE: "Suspended", TRD: "Listed", HLT: "Suspended", DEL: "Delisted"},
               "perp": {PRE: "Suspended", TRD: "Listed", HLT: "Suspended", DEL: "Delisted"}},
    "whitebit": {"spot": {PRE: "false", TRD: "true", HLT: "false", DEL: REMOVE},
                 "perp": {PRE: "false", TRD: "true", HLT: "false", DEL: REMOVE}},
}

MAX_BODY_CACHE = 256          # rendered lists kept per venue (query variants, Bybit pages)
MAX_LISTINGS = 50_000         # rows per venue, all markets
HOUR_MS = 3_600_000
_ROWS = "@@SIM_ROWS@@"        # placeholder spliced out of an envelope
_ROWS2 = "@@SIM_ROWS_2@@"


def normalize_raw(exchange: str, market: str, raw: str) -> str | None:
    """The normalized status ``raw`` stands for in STATUS_MAP (trading, halted, delisted, pre_trading
    tried in that order where two share a raw value), else None."""
    tables = STATUS_MAP[exchange]
    table = tables.get(market) or tables.get("perp") or {}  # Phemex inverse rows read like its perps
    for status in (TRD, HLT, DEL, PRE):
        if table.get(status) == raw:
            return status
    return None


def _load(name: str) -> Any:
    return json.loads(resources.files("collector.simulator").joinpath("data", name).read_bytes())


def _clone(obj: Any) -> Any:
    """A deep copy (orjson round trip: several times faster than copy.deepcopy on these rows)."""
    return orjson.loads(orjson.dumps(obj))


def _fresh(template: dict[str, Any]) -> dict[str, Any]:
    """A new row from a template: its own top level, nested values shared with the template.

    Builders only ever replace top-level keys, never mutate nested values, so sharing is safe and
    keeps ~3000 rows per exchange small (a deep copy per row cost ~4x the memory).
    """
    return dict(template)


def _splice(envelope: dict[str, Any], rows: bytes, rows2: bytes | None = None) -> bytes:
    """``envelope`` encoded with the placeholder(s) replaced by pre-encoded arrays (key order kept)."""
    out = orjson.dumps(envelope).replace(b'"' + _ROWS.encode() + b'"', rows, 1)
    if rows2 is not None:
        out = out.replace(b'"' + _ROWS2.encode() + b'"', rows2, 1)
    return out


class Mode:
    """How one request is answered: normally, with an empty list, or with a truncated list."""

    __slots__ = ("empty", "drop_fraction")

    def __init__(self, empty: bool = False, drop_fraction: float = 0.0) -> None:
        self.empty = empty
        self.drop_fraction = drop_fraction

    @property
    def normal(self) -> bool:
        return not self.empty and self.drop_fraction <= 0

    def cut(self, rows: list[Any]) -> list[Any]:
        return [] if self.empty else keep_rows(rows, self.drop_fraction)


NORMAL = Mode()


class Row:
    """One symbol of one market; ``obj`` is the dict that goes on the wire (``alt``: other versions)."""

    __slots__ = ("market", "native", "base", "quote", "status", "raw", "obj", "alt", "ident",
                 "created_ms", "updated_ms", "opened_ms", "enc")

    def __init__(self, market: str, native: str, base: str, quote: str, ident: int) -> None:
        self.market, self.native, self.base, self.quote, self.ident = market, native, base, quote, ident
        self.status: str | None = None     # normalized; None when set through a raw status we cannot name
        self.raw = ""
        self.obj: dict[str, Any] = {}
        self.alt: dict[str, dict[str, Any]] = {}
        self.created_ms = self.updated_ms = now_ms()
        self.opened_ms: int | None = None
        self.enc: dict[str, bytes] = {}

    def public(self, served: bool) -> dict[str, Any]:
        return {"market": self.market, "symbol": self.native, "base": self.base, "quote": self.quote,
                "status": self.status, "raw_status": self.raw, "served_by_default": served,
                "created_ms": self.created_ms, "updated_ms": self.updated_ms}


def _check_text(name: str, value: Any, max_len: int = 64) -> str:
    if not isinstance(value, str) or not value or len(value) > max_len:
        raise SimError(400, f"{name} must be a non-empty string of at most {max_len} characters")
    return value


def _split_pair(symbol: str) -> tuple[str, str] | None:
    for sep in ("-", "/", "_"):
        if sep in symbol:
            base, _, quote = symbol.partition(sep)
            if base and quote:
                return base.upper(), quote.upper()
    return None


# ============================================================================ venue base
Handler = Callable[[Mapping[str, str], Mode], tuple[int, bytes]]


class PushClient:
    """One WebSocket client of a venue's push channel. ``send`` queues a text frame (never blocks;
    the server closes a client that cannot keep up), ``close`` drops the connection."""

    __slots__ = ("conn_id", "send", "close", "subs")

    def __init__(self, conn_id: str, send: Callable[[str], None], close: Callable[[], None]) -> None:
        self.conn_id = conn_id
        self.send = send
        self.close = close
        self.subs: set[str] = set()


class Venue(ABC):
    """One simulated exchange's instrument lists: rows, scripting, faults, counters and rendering."""

    name = ""
    markets: tuple[str, ...] = ("spot",)
    #: markets that exist on the wire but cannot be scripted (Phemex inverse perpetuals)
    static_markets: tuple[str, ...] = ()
    #: WebSocket paths of the venue's instrument push channel (none: REST only)
    ws_paths: tuple[str, ...] = ()

    def __init__(self) -> None:
        self.route_handlers = self.routes()
        self.push_clients: set[PushClient] = set()
        self.reset()

    # ------------------------------------------------------------------ push channel (optional)
    def ws_message(self, client: PushClient, text: str) -> None:
        """A text frame from a push client (subscribe, ping ...); answers through ``client.send``."""

    def on_row_changed(self, row: Row) -> None:
        """A row was added or changed status: push it to the subscribed clients."""

    def drop_push_clients(self) -> int:
        clients = list(self.push_clients)
        for c in clients:
            c.close()
        self.push_clients.clear()
        self.pushes_dropped_conns += len(clients)
        return len(clients)

    # ------------------------------------------------------------------ subclass hooks
    @abstractmethod
    def routes(self) -> dict[str, Handler]:
        ...

    @abstractmethod
    def seed(self) -> Iterable[tuple[str, str, str, str, dict[str, Any], dict[str, dict[str, Any]]]]:
        """(market, native, base, quote, obj, alt objs) of every recorded row, in body order."""
        ...

    @abstractmethod
    def native(self, market: str, base: str, quote: str) -> str:
        ...

    @abstractmethod
    def build(self, row: Row, kind: str, raw: str) -> None:
        """Set ``row.obj`` (and ``row.alt``) for normalized ``kind`` with wire status ``raw``."""
        ...

    @abstractmethod
    def raw_of(self, market: str, obj: dict[str, Any]) -> str:
        ...

    def served(self, row: Row) -> bool:
        """Whether the default request of the row's market lists it."""
        return True

    def error(self, kind: str, status: int) -> bytes:
        """The exchange's error envelope for a faulted request (kind: 429 | 418 | 403 | 5xx)."""
        return orjson.dumps({"code": status, "msg": "error"})

    # ------------------------------------------------------------------ state
    def reset(self) -> dict[str, Any]:
        """Back to the recorded rows: no added symbols, no faults, zero counters."""
        self.rows: dict[tuple[str, str], Row] = {}
        self.next_ident = 1
        self.faults = FaultBook()
        self.rest_calls: Counter[str] = Counter()
        self.rest_faulted: Counter[str] = Counter()
        self.renders = 0
        self.cache_hits = 0
        self.pushes = 0
        self.pushes_dropped_conns = 0
        self.started_ms = now_ms()
        self._body_cache: dict[Any, Any] = {}
        for market, native, base, quote, obj, alt in self.seed():
            row = self._new_row(market, native, base, quote)
            row.obj, row.alt = obj, alt
            row.raw = self.raw_of(market, obj)
            row.status = self.normalize(market, row.raw)
            row.opened_ms = row.created_ms if row.status == TRD else None
            self.rows[(market, native)] = row
        return {"ok": True, "exchange": self.name, "listed": self.listed_counts(), "visible_at_ms": now_ms()}

    def _new_row(self, market: str, native: str, base: str, quote: str) -> Row:
        row = Row(market, native, base, quote, self.next_ident)
        self.next_ident += 1
        return row

    def _changed(self, row: Row | None = None) -> None:
        if row is not None:
            row.enc.clear()
            row.updated_ms = now_ms()
        self._body_cache.clear()

    def normalize(self, market: str, raw: str) -> str | None:
        """The normalized status a raw value stands for in STATUS_MAP, else None.

        Where two statuses share a raw value (MEXC "2" = pre_trading and halted) the first of
        trading, halted, delisted, pre_trading wins.
        """
        return normalize_raw(self.name, market, raw)

    def _market(self, market: str) -> str:
        if market in ("swap", "linear", "futures", "usdm", "perpetual"):
            market = "perp"
        if market not in self.markets:
            raise SimError(400, f"{self.name} markets are {list(self.markets)}; {market!r} is not one")
        return market

    def _raw_for(self, market: str, status: str | None, raw_status: str | None) -> tuple[str | None, str]:
        if raw_status is not None:
            raw_status = _check_text("raw_status", raw_status)
            return self.normalize(market, raw_status), raw_status
        if status not in NORMALIZED:
            raise SimError(400, f"status must be one of {list(NORMALIZED)} (or give raw_status)")
        return status, STATUS_MAP[self.name][market][status]

    def find(self, symbol: str, market: str) -> Row:
        row = self.rows.get((market, symbol))
        if row is None:
            pair = _split_pair(symbol)
            if pair is not None:
                row = self.rows.get((market, self.native(market, *pair)))
                if row is None:
                    row = next((r for r in self.rows.values()
                                if r.market == market and (r.base.upper(), r.quote.upper()) == pair), None)
        if row is None:
            raise SimError(404, f"{self.name} {market} symbol {symbol!r} is not listed")
        return row

    def _answer(self, row: Row, **extra: Any) -> dict[str, Any]:
        present = (row.market, row.native) in self.rows
        return {"ok": True, "exchange": self.name, **row.public(present and self.served(row)),
                "listed": present, **extra, "visible_at_ms": now_ms()}

    def add(self, base: str, quote: str, status: str | None = TRD, market: str = "spot",
            symbol: str | None = None, raw_status: str | None = None) -> dict[str, Any]:
        market = self._market(market)
        base, quote = _check_text("base", base).upper(), _check_text("quote", quote).upper()
        kind, raw = self._raw_for(market, status, raw_status)
        if raw == REMOVE:
            raise SimError(400, f"{self.name} drops delisted {market} symbols; add it in another status")
        native = self.native(market, base, quote) if symbol is None else _check_text("symbol", symbol, 20_000)
        if (market, native) in self.rows:
            raise SimError(409, f"{self.name} {market} symbol {native!r} already listed")
        if len(self.rows) >= MAX_LISTINGS:
            raise SimError(409, f"at most {MAX_LISTINGS} symbols per exchange")
        row = self._new_row(market, native, base, quote)
        self._apply(row, kind, raw)
        self.rows[(market, native)] = row
        self._changed()
        self.on_row_changed(row)
        return self._answer(row)

    def _apply(self, row: Row, kind: str | None, raw: str) -> None:
        if kind == TRD and row.opened_ms is None:
            row.opened_ms = now_ms()
        self.build(row, kind or self.normalize(row.market, raw) or TRD, raw)
        row.status, row.raw = kind, raw

    def set_status(self, symbol: str, market: str = "spot", status: str | None = None,
                   raw_status: str | None = None) -> dict[str, Any]:
        market = self._market(market)
        row = self.find(_check_text("symbol", symbol, 20_000), market)
        kind, raw = self._raw_for(market, status, raw_status)
        previous, previous_raw = row.status, row.raw
        if raw == REMOVE:
            del self.rows[(market, row.native)]
            row.status, row.raw = kind, raw
            self._changed()
        else:
            self._apply(row, kind, raw)
            self._changed(row)
            self.on_row_changed(row)
        return self._answer(row, previous_status=previous, previous_raw_status=previous_raw)

    def remove(self, symbol: str, market: str = "spot") -> dict[str, Any]:
        market = self._market(market)
        row = self.find(_check_text("symbol", symbol, 20_000), market)
        del self.rows[(market, row.native)]
        self._changed()
        return {"ok": True, "exchange": self.name, "market": market, "symbol": row.native,
                "listed": False, "visible_at_ms": now_ms()}

    def add_filler(self, count: int, quote: str = "USDT", market: str = "spot") -> dict[str, Any]:
        """Many trading symbols (SIM00001...), so the list has a realistic size."""
        market = self._market(market)
        quote = _check_text("quote", quote, 16).upper()
        if not isinstance(count, int) or isinstance(count, bool) or not 0 < count <= MAX_FILLER:
            raise SimError(400, f"count must be 1..{MAX_FILLER}")
        if len(self.rows) + count > MAX_LISTINGS:
            raise SimError(409, f"at most {MAX_LISTINGS} symbols per exchange")
        raw = STATUS_MAP[self.name][market][TRD]
        added, i = 0, 0
        while added < count:
            i += 1
            base = f"SIM{i:05d}"
            native = self.native(market, base, quote)
            if (market, native) in self.rows:
                continue
            row = self._new_row(market, native, base, quote)
            self._apply(row, TRD, raw)
            self.rows[(market, native)] = row
            added += 1
        self._changed()
        return {"ok": True, "exchange": self.name, "market": market, "added": added,
                "listed": self.listed_counts(), "visible_at_ms": now_ms()}

    def list_rows(self, market: str | None = None) -> list[dict[str, Any]]:
        if market is not None and market not in self.static_markets:
            market = self._market(market)
        return [r.public(self.served(r)) for r in self.rows.values() if market is None or r.market == market]

    def listed_counts(self) -> dict[str, int]:
        counts: Counter[str] = Counter(r.market for r in self.rows.values())
        return {m: counts.get(m, 0) for m in self.markets + self.static_markets}

    def status_map(self) -> dict[str, Any]:
        return {"exchange": self.name, "markets": list(self.markets), "map": STATUS_MAP[self.name],
                "remove": REMOVE}

    # ------------------------------------------------------------------ requests
    def path_key(self, path: str) -> str:
        """A bounded name for a request path (stats must not grow with hostile URLs)."""
        return path if path in self.route_handlers else "other"

    def stats(self) -> dict[str, Any]:
        return {"exchange": self.name, "now_ms": now_ms(), "started_ms": self.started_ms,
                "listed": self.listed_counts(),
                "rest": {"calls": dict(self.rest_calls), "faulted": dict(self.rest_faulted)},
                "faults": self.faults.public(),
                "cache": {"renders": self.renders, "hits": self.cache_hits},
                "push": {"clients": len(self.push_clients), "pushes": self.pushes,
                         "dropped_connections": self.pushes_dropped_conns}}

    def _enc(self, row: Row, variant: str = "", encode: Callable[[Row], bytes] | None = None) -> bytes:
        data = row.enc.get(variant)
        if data is None:
            data = encode(row) if encode is not None else orjson.dumps(row.obj)
            # a right-sized copy: orjson's own result keeps ~8 kB of slack, x3000 rows per exchange
            data = bytes(memoryview(data))
            row.enc[variant] = data
        return data

    def _array(self, key: Any, select: Callable[[], list[Row]], mode: Mode, variant: str = "",
               encode: Callable[[Row], bytes] | None = None, brackets: bytes = b"[]") -> bytes:
        """The encoded list for ``key`` (cached until the venue changes; faulted modes bypass)."""
        if mode.normal:
            cached = self._body_cache.get(key)
            if cached is not None:
                self.cache_hits += 1
                return cached
        rows = mode.cut(select())
        data = (brackets[:1] + b",".join(self._enc(r, variant, encode) for r in rows) + brackets[1:])
        if mode.normal:
            self.renders += 1
            if len(self._body_cache) >= MAX_BODY_CACHE:
                self._body_cache.clear()
            self._body_cache[key] = data
        return data

    def _market_rows(self, *markets: str) -> Callable[[], list[Row]]:
        return lambda: [r for r in self.rows.values() if r.market in markets and self.served(r)]


# ============================================================================ helpers for builders
def _future_ms(offset: int = HOUR_MS) -> int:
    return now_ms() + offset


# ============================================================================ Coinbase
class Coinbase(Venue):
    """Exchange API ``GET /products``: a bare array; status + four booleans + auction_mode."""

    name = "coinbase"

    def __init__(self) -> None:
        self.data = _load("coinbase_products.json")
        self.template = next(r for r in self.data if r["id"] == "BTC-USD")
        super().__init__()

    def routes(self) -> dict[str, Handler]:
        return {"/products": self._products}

    def seed(self) -> Iterable[Any]:
        for r in self.data:
            yield "spot", r["id"], r["base_currency"], r["quote_currency"], _clone(r), {}

    def native(self, market: str, base: str, quote: str) -> str:
        return f"{base}-{quote}"

    def raw_of(self, market: str, obj: dict[str, Any]) -> str:
        return str(obj.get("status"))

    def build(self, row: Row, kind: str, raw: str) -> None:
        obj = row.obj or _fresh(self.template)
        obj.update(id=row.native, base_currency=row.base, quote_currency=row.quote, display_name=row.native)
        obj.update(status=raw, trading_disabled=kind != TRD, auction_mode=kind == PRE,
                   cancel_only=False, post_only=False, limit_only=False)
        row.obj = obj

    def error(self, kind: str, status: int) -> bytes:
        msg = {"429": "Public rate limit exceeded", "403": "Forbidden", "418": "I'm a teapot"}.get(
            kind, "Internal server error")
        return orjson.dumps({"message": msg})

    def _products(self, q: Mapping[str, str], mode: Mode) -> tuple[int, bytes]:
        return 200, self._array("products", self._market_rows("spot"), mode)


# ============================================================================ Kraken
_KRAKEN_CODES = {"USD": "ZUSD", "EUR": "ZEUR", "GBP": "ZGBP", "JPY": "ZJPY", "CAD": "ZCAD",
                 "BTC": "XXBT", "XBT": "XXBT", "ETH": "XETH"}


class Kraken(Venue):
    """``GET /0/public/AssetPairs``: ``{"error":[],"result":{PAIR:{...}}}`` -- an object keyed by pair."""

    name = "kraken"

    def __init__(self) -> None:
        self.data = _load("kraken_asset_pairs.json")
        self.template = self.data["result"]["0GEUR"]  # a newer, unprefixed pair
        super().__init__()

    def routes(self) -> dict[str, Handler]:
        return {"/0/public/AssetPairs": self._pairs}

    def seed(self) -> Iterable[Any]:
        for key, r in self.data["result"].items():
            base, _, quote = r["wsname"].partition("/")
            yield "spot", key, base, quote, _clone(r), {}

    def native(self, market: str, base: str, quote: str) -> str:
        return f"{base}{quote}"

    def raw_of(self, market: str, obj: dict[str, Any]) -> str:
        return str(obj.get("status"))

    def build(self, row: Row, kind: str, raw: str) -> None:
        obj = row.obj or _fresh(self.template)
        quote_code = _KRAKEN_CODES.get(row.quote, row.quote)
        if not row.obj:
            obj.update(altname=row.native, wsname=f"{row.base}/{row.quote}", base=row.base, quote=quote_code,
                       fee_volume_currency=quote_code)
        obj["status"] = raw
        row.obj = obj

    def error(self, kind: str, status: int) -> bytes:
        msg = {"429": "EGeneral:Too many requests", "403": "EGeneral:Permission denied",
               "418": "EGeneral:Too many requests"}.get(kind, "EService:Unavailable")
        return orjson.dumps({"error": [msg]})

    def _pairs(self, q: Mapping[str, str], mode: Mode) -> tuple[int, bytes]:
        def encode(row: Row) -> bytes:
            return orjson.dumps(row.native) + b":" + orjson.dumps(row.obj)

        pair = q.get("pair")
        if pair:
            wanted = set(pair.split(",")[:100])
            rows = [r for r in self.rows.values() if r.native in wanted or r.obj.get("altname") in wanted]
            if len(rows) < len(wanted):
                return 200, orjson.dumps({"error": ["EQuery:Unknown asset pair"]})
            data = b"{" + b",".join(self._enc(r, "kv", encode) for r in mode.cut(rows)) + b"}"
        else:
            data = self._array("pairs", self._market_rows("spot"), mode, "kv", encode, b"{}")
        return 200, _splice({"error": [], "result": _ROWS}, data)


# ============================================================================ OKX
class Okx(Venue):
    """``GET /api/v5/public/instruments?instType=SPOT|SWAP``: preopen rows carry "" for every number."""

    name = "okx"
    markets = ("spot", "perp")

    def __init__(self) -> None:
        self.spot = _load("okx_instruments_spot.json")
        self.swap = _load("okx_instruments_swap.json")
        self.templates = {
            ("spot", "live"): next(r for r in self.spot["data"] if r["instId"] == "ETH-USDT"),
            ("spot", "preopen"): next(r for r in self.spot["data"] if r["state"] == "preopen"),
            ("perp", "live"): next(r for r in self.swap["data"] if r["instId"] == "BTC-USDT-SWAP"),
            ("perp", "preopen"): next(r for r in self.swap["data"] if r["state"] == "preopen"),
        }
        super().__init__()

    ws_paths = ("/ws/v5/public",)
    #: OKX instType <-> our market
    INST_TYPES = {"SPOT": "spot", "SWAP": "perp"}

    def routes(self) -> dict[str, Handler]:
        return {"/api/v5/public/instruments": self._instruments}

    # ---- the public ``instruments`` channel: full list on subscribe, then every change ----
    def ws_message(self, client: PushClient, text: str) -> None:
        if text == "ping":
            client.send("pong")
            return
        try:
            req = json.loads(text)
        except ValueError:
            client.send(json.dumps({"event": "error", "code": "60012", "msg": f"Invalid request: {text[:100]}",
                                    "connId": client.conn_id}))
            return
        op = req.get("op") if isinstance(req, dict) else None
        args = req.get("args") if isinstance(req, dict) else None
        if op not in ("subscribe", "unsubscribe") or not isinstance(args, list):
            client.send(json.dumps({"event": "error", "code": "60012", "msg": f"Invalid request: {text[:100]}",
                                    "connId": client.conn_id}))
            return
        for arg in args:
            inst_type = arg.get("instType") if isinstance(arg, dict) else None
            if not isinstance(arg, dict) or arg.get("channel") != "instruments" or inst_type not in (
                    "SPOT", "MARGIN", "SWAP", "FUTURES", "OPTION"):
                client.send(json.dumps({"event": "error", "code": "60018",
                                        "msg": f"Wrong URL or channel:{arg}, args or instType doesn't exist.",
                                        "connId": client.conn_id}))
                continue
            client.send(json.dumps({"event": op, "arg": {"channel": "instruments", "instType": inst_type},
                                    "connId": client.conn_id}))
            if op == "unsubscribe":
                client.subs.discard(inst_type)
                continue
            client.subs.add(inst_type)
            market = self.INST_TYPES.get(inst_type)
            rows = [r.obj for r in self.rows.values() if r.market == market] if market else []
            client.send(self._push_text(inst_type, rows))
            self.pushes += 1

    def on_row_changed(self, row: Row) -> None:
        inst_type = "SPOT" if row.market == "spot" else "SWAP"
        text = None
        for client in list(self.push_clients):
            if inst_type in client.subs:
                text = text or self._push_text(inst_type, [row.obj])
                client.send(text)
                self.pushes += 1

    @staticmethod
    def _push_text(inst_type: str, rows: list[dict[str, Any]]) -> str:
        return json.dumps({"arg": {"channel": "instruments", "instType": inst_type}, "data": rows},
                          separators=(",", ":"))

    def seed(self) -> Iterable[Any]:
        for market, body in (("spot", self.spot), ("perp", self.swap)):
            for r in body["data"]:
                parts = r["instId"].split("-")
                yield market, r["instId"], parts[0], parts[1], _clone(r), {}

    def native(self, market: str, base: str, quote: str) -> str:
        return f"{base}-{quote}" if market == "spot" else f"{base}-{quote}-SWAP"

    def raw_of(self, market: str, obj: dict[str, Any]) -> str:
        return str(obj.get("state"))

    def build(self, row: Row, kind: str, raw: str) -> None:
        blank = kind == PRE
        was_blank = not row.obj or row.obj.get("instIdCode") is None
        if blank or was_blank:
            # docs: a preopen instrument has only instType/instId/listTime/state; numbers arrive later
            obj = _fresh(self.templates[(row.market, "preopen" if blank else "live")])
            obj["instId"] = row.native
            if not blank:
                if row.market == "spot":
                    obj.update(baseCcy=row.base, quoteCcy=row.quote, tradeQuoteCcyList=[row.quote])
                else:
                    family = f"{row.base}-{row.quote}"
                    obj.update(uly=family, instFamily=family, settleCcy=row.quote, ctValCcy=row.base)
                obj["instIdCode"] = 1_500_000_000 + row.ident
                obj["contTdSwTime"] = ""
            obj["listTime"] = str(_future_ms() if blank else (row.opened_ms or now_ms()))
        else:
            obj = row.obj
        obj["state"] = raw
        row.obj = obj

    def error(self, kind: str, status: int) -> bytes:
        if kind in ("429", "418", "403"):
            return orjson.dumps({"code": "50011", "msg": "Too Many Requests", "data": []})
        return orjson.dumps({"code": "50001", "msg": "Service temporarily unavailable. Please try again later.",
                             "data": []})

    def _instruments(self, q: Mapping[str, str], mode: Mode) -> tuple[int, bytes]:
        inst_type = q.get("instType")
        if not inst_type:
            return 400, orjson.dumps({"code": "50014", "msg": "Parameter instType can not be empty.",
                                      "data": []})
        market = {"SPOT": "spot", "SWAP": "perp"}.get(inst_type)
        if market is None:
            if inst_type in ("MARGIN", "FUTURES", "OPTION", "EVENTS"):
                return 200, _splice({"code": "0", "msg": "", "data": _ROWS}, b"[]")
            return 400, orjson.dumps({"code": "51000", "msg": "Parameter instType error", "data": []})
        inst_id = q.get("instId")
        if inst_id:
            rows = [r for r in self.rows.values() if r.market == market and r.native == inst_id]
            data = b"[" + b",".join(self._enc(r) for r in mode.cut(rows)) + b"]"
        else:
            data = self._array(("instruments", market), self._market_rows(market), mode)
        return 200, _splice({"code": "0", "msg": "", "data": _ROWS}, data)


# ============================================================================ Bybit
class Bybit(Venue):
    """``GET /v5/market/instruments-info?category=spot|linear``.

    Spot lists ``Trading`` only (docs: "Spot has Trading only") and does not paginate. Linear returns
    ``Trading`` by default, ``PreLaunch`` contracts only with ``status=PreLaunch``, 500 per page
    (``limit`` 1..1000) with ``nextPageCursor`` ("" on the last page).
    """

    name = "bybit"
    markets = ("spot", "perp")

    def __init__(self) -> None:
        self.spot = _load("bybit_instruments_spot.json")
        self.linear = _load("bybit_instruments_linear.json")
        self.spot_template = self.spot["result"]["list"][0]
        self.linear_template = next(r for r in self.linear["result"]["list"] if r["status"] == "Trading")
        self.prelaunch_template = next(r for r in self.linear["result"]["list"] if r["status"] == "PreLaunch")
        super().__init__()

    def routes(self) -> dict[str, Handler]:
        return {"/v5/market/instruments-info": self._instruments}

    def seed(self) -> Iterable[Any]:
        for market, body in (("spot", self.spot), ("perp", self.linear)):
            for r in body["result"]["list"]:
                yield market, r["symbol"], r["baseCoin"], r["quoteCoin"], _clone(r), {}

    def native(self, market: str, base: str, quote: str) -> str:
        return f"{base}{quote}"

    def raw_of(self, market: str, obj: dict[str, Any]) -> str:
        return str(obj.get("status"))

    def served(self, row: Row) -> bool:
        return row.raw == "Trading"

    def build(self, row: Row, kind: str, raw: str) -> None:
        if row.market == "spot":
            obj = row.obj or _fresh(self.spot_template)
            if not row.obj:
                obj.update(symbolId=10_000 + row.ident, symbol=row.native, baseCoin=row.base, quoteCoin=row.quote)
        else:
            obj = row.obj or _fresh(self.linear_template)
            if not row.obj:
                obj.update(symbol=row.native, symbolId=10_000 + row.ident, baseCoin=row.base,
                           quoteCoin=row.quote, settleCoin=row.quote)
            if kind == PRE:
                start = _future_ms()
                info = _clone(self.prelaunch_template["preListingInfo"])
                info["curAuctionPhase"] = "NotStarted"
                for i, phase in enumerate(info["phases"]):
                    phase["startTime"] = str(start + i * 300_000)
                    phase["endTime"] = str(start + (i + 1) * 300_000) if phase["endTime"] else ""
                obj.update(launchTime=str(start), isPreListing=True, preListingInfo=info, copyTrading="none")
            else:
                obj.update(isPreListing=False, preListingInfo=None)
                if kind == TRD:
                    obj["launchTime"] = str(row.opened_ms or now_ms())
        obj["status"] = raw
        row.obj = obj

    def _envelope(self, code: int, msg: str) -> bytes:
        return orjson.dumps({"retCode": code, "retMsg": msg, "result": {}, "retExtInfo": {}, "time": now_ms()})

    def error(self, kind: str, status: int) -> bytes:
        if kind == "403":
            return b"access too frequent"  # the IP ban answer is not a JSON envelope
        if kind in ("429", "418"):
            return self._envelope(10006, "Too many visits!")
        return self._envelope(10016, "Server error.")

    def _instruments(self, q: Mapping[str, str], mode: Mode) -> tuple[int, bytes]:
        category = q.get("category")
        if category not in ("spot", "linear", "inverse", "option"):
            return 200, self._envelope(10001, "params error: Category is invalid")
        status = q.get("status")
        if status is not None and status not in ("PreLaunch", "Trading", "Delivering", "Closed"):
            return 200, self._envelope(10001, "params error: status is invalid")
        symbol = q.get("symbol")
        if category == "spot":
            # spot: Trading only, no pagination (limit/cursor ignored)
            if status not in (None, "Trading"):
                rows_bytes = b"[]"
            elif symbol:
                rows_bytes = b"[" + b",".join(self._enc(r) for r in mode.cut(
                    [r for r in self.rows.values() if r.market == "spot" and r.native == symbol
                     and r.raw == "Trading"])) + b"]"
            else:
                rows_bytes = self._array(("spot",), self._market_rows("spot"), mode)
            body = {"retCode": 0, "retMsg": "OK", "result": {"category": "spot", "list": _ROWS},
                    "retExtInfo": {}, "time": now_ms()}
            return 200, _splice(body, rows_bytes)
        raw_limit = q.get("limit", "500")
        if not raw_limit.isdigit() or not 1 <= int(raw_limit) <= 1000:
            return 200, self._envelope(10001, "params error: limit must be in [1, 1000]")
        limit = int(raw_limit)
        start = 0
        if q.get("cursor"):
            start_or_none = self._decode_cursor(q["cursor"])
            if start_or_none is None:
                return 200, self._envelope(10001, "params error: cursor is invalid")
            start = start_or_none
        wanted = status or "Trading"

        def select() -> list[Row]:
            if category != "linear":
                return []
            return [r for r in self.rows.values() if r.market == "perp" and r.raw == wanted
                    and (not symbol or r.native == symbol)]

        key = ("linear", category, wanted, symbol, limit, start)
        cached = self._body_cache.get(key) if mode.normal else None
        if cached is None:
            rows = [r for r in mode.cut(select()) if r.ident > start]
            page, more = rows[:limit], len(rows) > limit
            cursor = self._encode_cursor(page[0], page[-1]) if more else ""
            cached = (b"[" + b",".join(self._enc(r) for r in page) + b"]", cursor)
            if mode.normal:
                self.renders += 1
                if len(self._body_cache) >= MAX_BODY_CACHE:
                    self._body_cache.clear()
                self._body_cache[key] = cached
        else:
            self.cache_hits += 1
        rows_bytes, cursor = cached
        body = {"retCode": 0, "retMsg": "OK",
                "result": {"category": category, "list": _ROWS, "nextPageCursor": cursor},
                "retExtInfo": {}, "time": now_ms()}
        return 200, _splice(body, rows_bytes)

    @staticmethod
    def _encode_cursor(first: Row, last: Row) -> str:
        # shaped like Bybit's ("first%3DBTCUSDT%26last%3DBIOUSDT"); opaque to clients either way
        return f"first%3D{first.native}%26last%3D{last.native}%26pos%3D{last.ident}"

    @staticmethod
    def _decode_cursor(cursor: str) -> int | None:
        text = cursor
        for _ in range(3):  # the token may arrive encoded once, twice or not at all
            if "%" not in text:
                break
            text = unquote(text)
        fields = dict(part.partition("=")[::2] for part in text.split("&"))
        pos = fields.get("pos", "")
        return int(pos) if pos.isdigit() and len(pos) < 12 else None


# ============================================================================ KuCoin
class Kucoin(Venue):
    """``GET /api/v2/symbols``: ``enableTrading`` plus the call-auction fields of a new listing."""

    name = "kucoin"
    _AUCTION = ("callauctionPriceFloor", "callauctionPriceCeiling", "callauctionFirstStageStartTime",
                "callauctionSecondStageStartTime", "callauctionThirdStageStartTime", "tradingStartTime")

    def __init__(self) -> None:
        self.data = _load("kucoin_symbols_v2.json")
        self.template = self.data["data"][0]
        self.auction = next(r for r in self.data["data"] if r["callauctionIsEnabled"])
        super().__init__()

    def routes(self) -> dict[str, Handler]:
        return {"/api/v2/symbols": self._symbols}

    def seed(self) -> Iterable[Any]:
        for r in self.data["data"]:
            yield "spot", r["symbol"], r["baseCurrency"], r["quoteCurrency"], _clone(r), {}

    def native(self, market: str, base: str, quote: str) -> str:
        return f"{base}-{quote}"

    def raw_of(self, market: str, obj: dict[str, Any]) -> str:
        return "true" if obj.get("enableTrading") is True else "false"

    def build(self, row: Row, kind: str, raw: str) -> None:
        obj = row.obj or _fresh(self.template)
        usd_like = row.quote in ("USDT", "USDC", "USD", "DAI", "TUSD", "PYUSD", "USD1")
        obj.update(symbol=row.native, name=row.native, baseCurrency=row.base, quoteCurrency=row.quote,
                   feeCurrency=row.quote, market="USDS" if usd_like else "ALTS", enableTrading=raw == "true")
        if kind == PRE:
            # a scheduled listing: call auction announced, trading starts in an hour
            start = _future_ms()
            obj.update(callauctionIsEnabled=True, callauctionPriceFloor=self.auction["callauctionPriceFloor"],
                       callauctionPriceCeiling=self.auction["callauctionPriceCeiling"],
                       callauctionFirstStageStartTime=start - 600_000,
                       callauctionSecondStageStartTime=start - 300_000,
                       callauctionThirdStageStartTime=start - 60_000, tradingStartTime=start)
        else:
            obj["callauctionIsEnabled"] = False
            for key in self._AUCTION:
                obj[key] = None
        row.obj = obj

    def error(self, kind: str, status: int) -> bytes:
        if kind in ("429", "418", "403"):
            return orjson.dumps({"code": "429000", "msg": "Too Many Requests"})
        return orjson.dumps({"code": "500000", "msg": "Internal Server Error"})

    def _symbols(self, q: Mapping[str, str], mode: Mode) -> tuple[int, bytes]:
        wanted = q.get("market")
        if wanted:
            rows = [r for r in self.rows.values() if r.obj.get("market") == wanted]
            data = b"[" + b",".join(self._enc(r) for r in mode.cut(rows)) + b"]"
        else:
            data = self._array("symbols", self._market_rows("spot"), mode)
        return 200, _splice({"code": "200000", "data": _ROWS}, data)


# ============================================================================ Gate
class Gate(Venue):
    """``GET /api/v4/spot/currency_pairs``: bare array; ``trade_status`` + ``buy_start``/``sell_start`` (s)."""

    name = "gate"

    def __init__(self) -> None:
        self.data = _load("gate_currency_pairs.json")
        self.template = self.data[0]
        super().__init__()

    def routes(self) -> dict[str, Handler]:
        return {"/api/v4/spot/currency_pairs": self._pairs}

    def seed(self) -> Iterable[Any]:
        for r in self.data:
            yield "spot", r["id"], r["base"], r["quote"], _clone(r), {}

    def native(self, market: str, base: str, quote: str) -> str:
        return f"{base}_{quote}"

    def raw_of(self, market: str, obj: dict[str, Any]) -> str:
        return str(obj.get("trade_status"))

    def build(self, row: Row, kind: str, raw: str) -> None:
        obj = row.obj or _fresh(self.template)
        obj.update(id=row.native, base=row.base, base_name=row.base, quote=row.quote, quote_name=row.quote,
                   trade_url=f"https://www.gate.com/trade/{row.native}", trade_status=raw)
        if kind == PRE:
            start = _future_ms() // 1000  # seconds on Gate
            obj.update(buy_start=start, sell_start=start)
        elif kind == TRD and row.opened_ms is not None:
            opened = row.opened_ms // 1000
            obj.update(buy_start=min(obj.get("buy_start") or opened, opened),
                       sell_start=min(obj.get("sell_start") or opened, opened))
        row.obj = obj

    def error(self, kind: str, status: int) -> bytes:
        if kind in ("429", "418", "403"):
            return orjson.dumps({"label": "TOO_MANY_REQUESTS", "message": "Request Rate limit Exceeded"})
        return orjson.dumps({"label": "SERVER_ERROR", "message": "Internal server error"})

    def _pairs(self, q: Mapping[str, str], mode: Mode) -> tuple[int, bytes]:
        return 200, self._array("pairs", self._market_rows("spot"), mode)


# ============================================================================ Bitget
class Bitget(Venue):
    """``GET /api/v2/spot/public/symbols``: ``{"code":"00000",...,"data":[...]}``; status online|gray|halt."""

    name = "bitget"

    def __init__(self) -> None:
        self.data = _load("bitget_spot_symbols_v2.json")
        self.template = self.data["data"][0]
        super().__init__()

    def routes(self) -> dict[str, Handler]:
        return {"/api/v2/spot/public/symbols": self._symbols}

    def seed(self) -> Iterable[Any]:
        for r in self.data["data"]:
            yield "spot", r["symbol"], r["baseCoin"], r["quoteCoin"], _clone(r), {}

    def native(self, market: str, base: str, quote: str) -> str:
        return f"{base}{quote}"

    def raw_of(self, market: str, obj: dict[str, Any]) -> str:
        return str(obj.get("status"))

    def build(self, row: Row, kind: str, raw: str) -> None:
        obj = row.obj or _fresh(self.template)
        if not row.obj:
            obj.update(openTime="", offTime="")
        obj.update(symbol=row.native, baseCoin=row.base, quoteCoin=row.quote, status=raw)
        obj["offTime"] = str(now_ms()) if kind == HLT else ""
        row.obj = obj

    def error(self, kind: str, status: int) -> bytes:
        if kind in ("429", "418", "403"):
            return orjson.dumps({"code": "429", "msg": "Too Many Requests", "requestTime": now_ms(), "data": None})
        return orjson.dumps({"code": "40725", "msg": "service return an error", "requestTime": now_ms(),
                             "data": None})

    def _symbols(self, q: Mapping[str, str], mode: Mode) -> tuple[int, bytes]:
        symbol = q.get("symbol")
        if symbol:
            rows = [r for r in self.rows.values() if r.native == symbol]
            data = b"[" + b",".join(self._enc(r) for r in mode.cut(rows)) + b"]"
        else:
            data = self._array("symbols", self._market_rows("spot"), mode)
        return 200, _splice({"code": "00000", "msg": "success", "requestTime": now_ms(), "data": _ROWS}, data)


# ============================================================================ HTX
class Htx(Venue):
    """``GET /v2/settings/common/symbols`` (current; incremental with ``ts``) and the older
    ``GET /v1/common/symbols`` (deprecated, still answered): one state, two row shapes."""

    name = "htx"

    def __init__(self) -> None:
        self.v1 = _load("htx_common_symbols_v1.json")
        self.v2 = _load("htx_settings_symbols_v2.json")
        self.v1_template = next(r for r in self.v1["data"] if r["symbol"] == "btcusdt")
        self.v2_template = next(r for r in self.v2["data"] if r["sc"] == "btcusdt")
        self.v2_pre_template = next(r for r in self.v2["data"] if r["state"] == "pre-online")
        super().__init__()

    def routes(self) -> dict[str, Handler]:
        return {"/v2/settings/common/symbols": self._v2, "/v1/common/symbols": self._v1}

    def seed(self) -> Iterable[Any]:
        v1 = {r["symbol"]: r for r in self.v1["data"]}
        done = set()
        for r in self.v2["data"]:
            alt = {"v1": _clone(v1[r["sc"]])} if r["sc"] in v1 else {}
            done.add(r["sc"])
            yield "spot", r["sc"], r["bc"].upper(), r["qc"].upper(), _clone(r), alt
        for sym, r in v1.items():
            if sym not in done:
                yield "spot", sym, r["base-currency"].upper(), r["quote-currency"].upper(), {}, {"v1": _clone(r)}

    def reset(self) -> dict[str, Any]:
        out = super().reset()
        for row in self.rows.values():  # rows recorded in only one version get the other built
            if not row.obj:
                row.raw = str(row.alt["v1"].get("state", ""))
                row.status = self.normalize("spot", row.raw)
            if not row.obj or "v1" not in row.alt:
                recorded_v2, recorded_v1 = row.obj, _clone(row.alt["v1"]) if "v1" in row.alt else None
                self.build(row, row.status or TRD, row.raw)
                row.obj = recorded_v2 or row.obj  # recorded versions stay verbatim
                if recorded_v1 is not None:
                    row.alt["v1"] = recorded_v1
        return out

    def native(self, market: str, base: str, quote: str) -> str:
        return f"{base}{quote}".lower()

    def raw_of(self, market: str, obj: dict[str, Any]) -> str:
        return str(obj.get("state", ""))

    def build(self, row: Row, kind: str, raw: str) -> None:
        b, q = row.base.lower(), row.quote.lower()
        if not row.obj or (kind == PRE) != ("castate" in row.obj):
            obj = _fresh(self.v2_pre_template if kind == PRE else self.v2_template)
            obj.update(sc=row.native, bc=b, qc=q, bcdn=row.base, qcdn=row.quote, dn=f"{row.base}/{row.quote}",
                       p=[], tags="")
            if kind == PRE:
                toa = _future_ms()
                obj.update(toa=toa, ca1oa=toa - HOUR_MS, ca2oa=toa - 600_000)
            elif row.opened_ms is not None:
                obj["toa"] = row.opened_ms
            row.obj = obj
        row.obj.update(state=raw, te=raw == "online")
        v1 = row.alt.get("v1")
        if v1 is None:
            v1 = _fresh(self.v1_template)
            v1.update({"base-currency": b, "quote-currency": q, "symbol": row.native, "tags": ""})
            row.alt["v1"] = v1
        v1.update({"state": raw, "api-trading": "enabled" if raw == "online" else "disabled"})

    def error(self, kind: str, status: int) -> bytes:
        if kind in ("429", "418", "403"):
            return orjson.dumps({"status": "error", "err-code": "too-many-request",
                                 "err-msg": "Too many requests", "data": None})
        return orjson.dumps({"status": "error", "err-code": "base-system-error",
                             "err-msg": "System error", "data": None})

    def _v2(self, q: Mapping[str, str], mode: Mode) -> tuple[int, bytes]:
        since = q.get("ts")
        if since:
            if not since.isdigit() or len(since) > 15:
                return 200, orjson.dumps({"status": "error", "err-code": "invalid-parameter",
                                          "err-msg": "invalid ts", "data": None})
            rows = [r for r in self.rows.values() if r.updated_ms > int(since)]
            data = b"[" + b",".join(self._enc(r) for r in mode.cut(rows)) + b"]"
            return 200, _splice({"status": "ok", "data": _ROWS, "ts": str(now_ms()), "full": 0}, data)
        data = self._array("v2", self._market_rows("spot"), mode)
        return 200, _splice({"status": "ok", "data": _ROWS, "ts": str(now_ms()), "full": 1}, data)

    def _v1(self, q: Mapping[str, str], mode: Mode) -> tuple[int, bytes]:
        data = self._array("v1", self._market_rows("spot"), mode, "v1", lambda r: orjson.dumps(r.alt["v1"]))
        return 200, _splice({"status": "ok", "data": _ROWS}, data)


# ============================================================================ MEXC
class Mexc(Venue):
    """``GET /api/v3/exchangeInfo`` (MEXC): status "1" online, "2" pause, "3" offline + tradeSideType."""

    name = "mexc"

    def __init__(self) -> None:
        self.data = _load("mexc_exchange_info.json")
        self.template = self.data["symbols"][0]
        super().__init__()

    def routes(self) -> dict[str, Handler]:
        return {"/api/v3/exchangeInfo": self._info}

    def seed(self) -> Iterable[Any]:
        for r in self.data["symbols"]:
            yield "spot", r["symbol"], r["baseAsset"], r["quoteAsset"], _clone(r), {}

    def native(self, market: str, base: str, quote: str) -> str:
        return f"{base}{quote}"

    def raw_of(self, market: str, obj: dict[str, Any]) -> str:
        return str(obj.get("status"))

    def build(self, row: Row, kind: str, raw: str) -> None:
        obj = row.obj or _fresh(self.template)
        obj.update(symbol=row.native, baseAsset=row.base, quoteAsset=row.quote, fullName=row.base, status=raw,
                   tradeSideType="1" if raw == "1" else "4", isSpotTradingAllowed=raw == "1")
        row.obj = obj

    def error(self, kind: str, status: int) -> bytes:
        if kind in ("429", "418", "403"):
            return orjson.dumps({"code": 429, "msg": "Too Many Requests"})
        return orjson.dumps({"code": 500, "msg": "Internal error"})

    def _info(self, q: Mapping[str, str], mode: Mode) -> tuple[int, bytes]:
        head = {"timezone": self.data["timezone"], "serverTime": now_ms(), "rateLimits": [],
                "exchangeFilters": [], "symbols": _ROWS}
        wanted: set[str] | None = None
        if q.get("symbol"):
            wanted = {q["symbol"]}
        elif q.get("symbols"):
            wanted = set(q["symbols"].split(",")[:100])
        if wanted is not None:
            rows = [r for r in self.rows.values() if r.native in wanted]
            if not rows:
                return 400, orjson.dumps({"code": -1121, "msg": "Invalid symbol."})
            return 200, _splice(head, b"[" + b",".join(self._enc(r) for r in mode.cut(rows)) + b"]")
        return 200, _splice(head, self._array("symbols", self._market_rows("spot"), mode))


# ============================================================================ BingX
class Bingx(Venue):
    """``GET /openApi/spot/v1/common/symbols``: status 0 offline, 1 online, 5 pre-open, 25 suspended."""

    name = "bingx"

    def __init__(self) -> None:
        self.data = _load("bingx_spot_symbols.json")
        self.template = self.data["data"]["symbols"][0]
        super().__init__()

    def routes(self) -> dict[str, Handler]:
        return {"/openApi/spot/v1/common/symbols": self._symbols}

    def seed(self) -> Iterable[Any]:
        for r in self.data["data"]["symbols"]:
            base, _, quote = r["symbol"].partition("-")
            yield "spot", r["symbol"], base, quote, _clone(r), {}

    def native(self, market: str, base: str, quote: str) -> str:
        return f"{base}-{quote}"

    def raw_of(self, market: str, obj: dict[str, Any]) -> str:
        return str(obj.get("status"))

    def build(self, row: Row, kind: str, raw: str) -> None:
        obj = row.obj or _fresh(self.template)
        try:
            code: int | str = int(raw)
        except ValueError:
            code = raw  # a scripted odd value goes on the wire as given
        obj.update(symbol=row.native, status=code, apiStateBuy=raw == "1", apiStateSell=raw == "1")
        if kind == PRE:
            obj["timeOnline"] = _future_ms()
        elif kind == TRD and row.opened_ms is not None and obj.get("timeOnline", 0) > row.opened_ms:
            obj["timeOnline"] = row.opened_ms
        obj["offTime"] = now_ms() if kind in (HLT, DEL) else 0
        row.obj = obj

    def error(self, kind: str, status: int) -> bytes:
        if kind in ("429", "418", "403"):
            return orjson.dumps({"code": 100410, "msg": "The request frequency is too high", "debugMsg": ""})
        return orjson.dumps({"code": 100500, "msg": "Internal system error", "debugMsg": ""})

    def _symbols(self, q: Mapping[str, str], mode: Mode) -> tuple[int, bytes]:
        symbol = q.get("symbol")
        if symbol:
            rows = [r for r in self.rows.values() if r.native == symbol]
            data = b"[" + b",".join(self._enc(r) for r in mode.cut(rows)) + b"]"
        else:
            data = self._array("symbols", self._market_rows("spot"), mode)
        return 200, _splice({"code": 0, "msg": "", "debugMsg": "", "data": {"symbols": _ROWS}}, data)


# ============================================================================ Phemex
class Phemex(Venue):
    """``GET /public/products`` (and the docs' ``/exchange/public/cfg/v2/products``): one body, two lists --
    ``products`` (spot ``sBTCUSDT`` rows and inverse perpetuals) and ``perpProductsV2`` (USDT perps)."""

    name = "phemex"
    markets = ("spot", "perp")
    static_markets = ("inverse",)

    def __init__(self) -> None:
        self.data = _load("phemex_products.json")
        self.spot_template = next(r for r in self.data["data"]["products"] if r["symbol"] == "sBTCUSDT")
        self.perp_template = self.data["data"]["perpProductsV2"][0]
        super().__init__()

    def routes(self) -> dict[str, Handler]:
        return {"/public/products": self._products, "/exchange/public/cfg/v2/products": self._products}

    def seed(self) -> Iterable[Any]:
        for r in self.data["data"]["products"]:
            if r["type"] == "Spot":
                yield "spot", r["symbol"], r["baseCurrency"], r["quoteCurrency"], _clone(r), {}
            else:
                base, _, quote = r["displaySymbol"].partition(" / ")
                yield "inverse", r["symbol"], base, quote, _clone(r), {}
        for r in self.data["data"]["perpProductsV2"]:
            yield "perp", r["symbol"], r["baseCurrency"], r["quoteCurrency"], _clone(r), {}

    def native(self, market: str, base: str, quote: str) -> str:
        return f"s{base}{quote}" if market == "spot" else f"{base}{quote}"

    def raw_of(self, market: str, obj: dict[str, Any]) -> str:
        return str(obj.get("status"))

    def build(self, row: Row, kind: str, raw: str) -> None:
        b, q, pair = row.base, row.quote, f"{row.base}{row.quote}"
        if row.obj:
            obj = row.obj
        elif row.market == "spot":
            obj = _fresh(self.spot_template)
            obj.update(code=100_000 + row.ident, displaySymbol=f"{b} / {q}", quoteCurrency=q, baseCurrency=b,
                       baseTickSize=f"0.000001 {b}", maxBaseOrderSize=f"1000 {b}",
                       minOrderValue=f"10 {q}", maxOrderValue=f"5,000,000 {q}",
                       description=f"{pair} is a {b}/{q} spot trading pair. Minimum order value is 1 {q}")
        else:
            obj = _fresh(self.perp_template)
            obj.update(code=200_000 + row.ident, displaySymbol=f"{b} / {q}", indexSymbol=f".{pair}",
                       markSymbol=f".M{pair}", fundingRateSymbol=f".{pair}FR",
                       fundingRate8hSymbol=f".{pair}FR8H", contractUnderlyingAssets=b, settleCurrency=q,
                       quoteCurrency=q, baseCurrency=b, majorSymbol=False,
                       description=(f"{b}/{q} perpetual contracts are priced on the .{pair} Index. Each contract "
                                    f"is worth 1 {b}. Funding fees are paid and received every 8 hours at UTC "
                                    "time: 00:00, 08:00 and 16:00."))
        obj.update(symbol=row.native, status=raw)
        if not row.obj:
            obj["listTime"] = _future_ms() if kind == PRE else now_ms()
        elif kind == TRD and row.opened_ms is not None and obj.get("listTime", 0) > row.opened_ms:
            obj["listTime"] = row.opened_ms
        row.obj = obj

    def error(self, kind: str, status: int) -> bytes:
        if kind in ("429", "418", "403"):
            return orjson.dumps({"code": 429, "msg": "Too many requests", "data": None})
        return orjson.dumps({"code": 500, "msg": "Internal error", "data": None})

    def _products(self, q: Mapping[str, str], mode: Mode) -> tuple[int, bytes]:
        products = self._array("products", self._market_rows("inverse", "spot"), mode)
        perps = self._array("perpProductsV2", self._market_rows("perp"), mode)
        checksum = self._body_cache.get("md5") if mode.normal else None
        if checksum is None:
            # changes whenever the product set changes (what clients use md5Checksum for)
            checksum = hashlib.md5(products + perps, usedforsecurity=False).hexdigest()
            if mode.normal:
                self._body_cache["md5"] = checksum
        data = dict(self.data["data"])
        data.update(products=_ROWS, perpProductsV2=_ROWS2, md5Checksum=checksum)
        return 200, _splice({"code": 0, "msg": "", "data": data}, products, perps)


# ============================================================================ WhiteBIT
class Whitebit(Venue):
    """``GET /api/v4/public/markets``: bare array of spot (``BTC_USDT``) and futures (``BTC_PERP``) rows."""

    name = "whitebit"
    markets = ("spot", "perp")

    def __init__(self) -> None:
        self.data = _load("whitebit_markets.json")
        self.spot_template = next(r for r in self.data if r["name"] == "BTC_USDT")
        self.perp_template = next(r for r in self.data if r["name"] == "BTC_PERP")
        super().__init__()

    def routes(self) -> dict[str, Handler]:
        return {"/api/v4/public/markets": self._markets}

    def seed(self) -> Iterable[Any]:
        for r in self.data:
            yield ("perp" if r["type"] == "futures" else "spot"), r["name"], r["stock"], r["money"], _clone(r), {}

    def native(self, market: str, base: str, quote: str) -> str:
        return f"{base}_{quote}" if market == "spot" else f"{base}_PERP"

    def raw_of(self, market: str, obj: dict[str, Any]) -> str:
        return "true" if obj.get("tradesEnabled") is True else "false"

    def build(self, row: Row, kind: str, raw: str) -> None:
        obj = row.obj or _fresh(self.spot_template if row.market == "spot" else self.perp_template)
        obj.update(name=row.native, stock=row.base, money=row.quote, tradesEnabled=raw == "true")
        row.obj = obj

    def error(self, kind: str, status: int) -> bytes:
        if kind in ("429", "418", "403"):
            return orjson.dumps({"code": 0, "message": "Too many requests"})
        return orjson.dumps({"code": 0, "message": "Internal error"})

    def _markets(self, q: Mapping[str, str], mode: Mode) -> tuple[int, bytes]:
        return 200, self._array("markets", self._market_rows("spot", "perp"), mode)


VENUES: dict[str, Callable[[], Venue]] = {
    "coinbase": Coinbase, "kraken": Kraken, "okx": Okx, "bybit": Bybit, "kucoin": Kucoin, "gate": Gate,
    "bitget": Bitget, "htx": Htx, "mexc": Mexc, "bingx": Bingx, "phemex": Phemex, "whitebit": Whitebit,
}


# ============================================================================ Binance facade
class BinanceListings:
    """The venue scripting interface on top of ``SimState`` (Binance keeps its own REST and faults)."""

    name = "binance"
    markets = ("spot", "perp")

    def __init__(self, state: Any) -> None:
        self.state = state

    @staticmethod
    def _market(market: str) -> str:
        if market in ("usdm", "swap", "linear", "futures", "perpetual"):
            market = "perp"
        if market not in ("spot", "perp"):
            raise SimError(400, f"binance markets are ['spot', 'perp']; {market!r} is not one")
        return market

    @staticmethod
    def _sim_market(market: str) -> str:
        return "usdm" if market == "perp" else "spot"

    def _raw_for(self, market: str, status: str | None, raw_status: str | None) -> tuple[str | None, str]:
        if raw_status is not None:
            raw_status = _check_text("raw_status", raw_status)
            return self.normalize(market, raw_status), raw_status
        if status not in NORMALIZED:
            raise SimError(400, f"status must be one of {list(NORMALIZED)} (or give raw_status)")
        return status, STATUS_MAP["binance"][market][status]

    def normalize(self, market: str, raw: str) -> str | None:
        return normalize_raw("binance", market, raw)

    def _native(self, symbol: str, market: str) -> str:
        listings = self.state.listings[self._sim_market(market)]
        if symbol in listings:
            return symbol
        pair = _split_pair(symbol)
        return pair[0] + pair[1] if pair is not None else symbol

    def _answer(self, market: str, native: str, kind: str | None, raw: str, **extra: Any) -> dict[str, Any]:
        listing = self.state.listings[self._sim_market(market)].get(native)
        return {"ok": True, "exchange": "binance", "market": market, "symbol": native,
                "base": listing.base if listing else None, "quote": listing.quote if listing else None,
                "status": kind, "raw_status": raw, "served_by_default": listing is not None,
                "listed": listing is not None, **extra, "visible_at_ms": now_ms()}

    def add(self, base: str, quote: str, status: str | None = TRD, market: str = "spot",
            symbol: str | None = None, raw_status: str | None = None) -> dict[str, Any]:
        market = self._market(market)
        base, quote = _check_text("base", base).upper(), _check_text("quote", quote).upper()
        kind, raw = self._raw_for(market, status, raw_status)
        if raw == REMOVE:
            raise SimError(400, f"binance drops delisted {market} symbols; add it in another status")
        native = symbol if symbol is not None else base + quote
        self.state.add_symbol(native, base, quote, status=raw, market=self._sim_market(market))
        return self._answer(market, native, kind, raw)

    def set_status(self, symbol: str, market: str = "spot", status: str | None = None,
                   raw_status: str | None = None) -> dict[str, Any]:
        market = self._market(market)
        native = self._native(_check_text("symbol", symbol, 20_000), market)
        kind, raw = self._raw_for(market, status, raw_status)
        listing = self.state.listings[self._sim_market(market)].get(native)
        if listing is None:
            raise SimError(404, f"binance {market} symbol {symbol!r} is not listed")
        previous_raw = listing.status
        if raw == REMOVE:
            self.state.remove_symbol(native, market=self._sim_market(market))
        else:
            self.state.set_symbol_status(native, raw, market=self._sim_market(market))
        return self._answer(market, native, kind, raw, previous_status=self.normalize(market, previous_raw),
                            previous_raw_status=previous_raw)

    def remove(self, symbol: str, market: str = "spot") -> dict[str, Any]:
        market = self._market(market)
        native = self._native(_check_text("symbol", symbol, 20_000), market)
        self.state.remove_symbol(native, market=self._sim_market(market))
        return {"ok": True, "exchange": "binance", "market": market, "symbol": native, "listed": False,
                "visible_at_ms": now_ms()}

    def add_filler(self, count: int, quote: str = "USDT", market: str = "spot") -> dict[str, Any]:
        market = self._market(market)
        out = self.state.add_filler_symbols(count, quote=quote, market=self._sim_market(market))
        return {**out, "exchange": "binance", "market": market}

    def list_rows(self, market: str | None = None) -> list[dict[str, Any]]:
        markets = [self._market(market)] if market is not None else ["spot", "perp"]
        out = []
        for m in markets:
            for item in self.state.list_symbols(self._sim_market(m)):
                out.append({**item, "market": m, "raw_status": item["status"],
                            "status": self.normalize(m, item["status"]), "served_by_default": True})
        return out

    def status_map(self) -> dict[str, Any]:
        return {"exchange": "binance", "markets": ["spot", "perp"], "map": STATUS_MAP["binance"],
                "remove": REMOVE}
