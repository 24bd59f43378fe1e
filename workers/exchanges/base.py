"""The exchange adapter interface.

An adapter is small and mostly declarative: endpoints, limits, keep-alive policy, how to name
streams and build connection URLs / subscribe messages, and *pure* parse functions from a raw
message to normalized events. Everything with state or time in it (connections, reconnects,
backoff, keep-alive timers, stale watchdog, rotation, pacing, REST budget, retries, circuit
breaking) lives once in ``workers.transport``; a new exchange is a new adapter module only.

Parse functions never raise on bad input on purpose: they return a :class:`ParseResult` that
counts what was wrong (``parse_errors`` for malformed frames, ``rejected`` for hostile symbols).
The transport still guards every call, so a parser bug costs one frame, not the connection.
"""

from __future__ import annotations

import importlib
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Iterable, Sequence, Mapping

from shared.events import InstrumentInfo, WireEvent
from shared.marketdata import BookMsg

if TYPE_CHECKING:
    from shared.settings import ExchangeSettings


@dataclass(frozen=True, slots=True)
class KeepAlive:
    """Who keeps a WebSocket connection alive, and how.

    - ``server_pings``: the server sends protocol ping frames; the transport answers with pongs
      echoing the payload (aiohttp autoping). Application-level server pings (e.g. ``{"ping":ts}``)
      are answered through :attr:`ParseResult.replies` instead.
    - ``client_ping``: the client must ping every ``interval`` seconds; ``text_ping`` set = send
      that text message, else a protocol ping frame with ``frame_payload``.
    Client pings go through the connection's send pacing (some exchanges count them).
    """

    server_pings: bool = True
    client_ping: bool = False
    interval: float = 20.0
    text_ping: str | None = None
    frame_payload: bytes = b""


@dataclass(slots=True)
class ParseResult:
    """What one raw WebSocket message turned into."""

    #: normalized wire events to hand to the publisher channel
    events: list[WireEvent] = field(default_factory=list)
    #: the frame carried market data (freshness, "first data" during rotation overlap)
    data: bool = False
    #: the server announced it will close this connection: rotate (with overlap) now
    rotate: bool = False
    #: messages to send back on the same connection (application-level pongs)
    replies: list[str] = field(default_factory=list)
    #: items refused because a symbol was hostile or unknown
    rejected: int = 0
    #: malformed / garbage frames (or items)
    parse_errors: int = 0
    #: an error reported by the exchange itself (kept as last_error; never a secret)
    error: str | None = None
    #: order-book messages for the worker's book engine (sequence rules applied there)
    books: list[BookMsg] = field(default_factory=list)
    #: instruments pushed by a listing channel (a partial update: only what the frame carried)
    instruments: list[InstrumentInfo] = field(default_factory=list)
    #: the subscription (stream / topic / channel, as the feed subscribed it) the frame belongs to,
    #: set by market-data parsers: the transport tracks freshness per subscription with it
    topic: str | None = None


def with_topic(res: ParseResult, topic: str, shared: frozenset[int] = frozenset()) -> ParseResult:
    """``res`` marked as data of ``topic``; parsers hand out shared constant results, so one whose
    ``id`` is in ``shared`` is copied first (a shared result is never mutated)."""
    if id(res) in shared:
        res = ParseResult(events=[], data=res.data, rotate=res.rotate, replies=list(res.replies),
                          rejected=res.rejected, parse_errors=res.parse_errors, error=res.error)
    res.topic = topic
    return res


@dataclass(frozen=True, slots=True)
class RestPoll:
    """A market-data REST request: polled every ``interval`` seconds (open interest, long/short
    ratios) or fetched on demand (book snapshots, ``interval`` 0). ``parse(body, rx_ns, rx_ms)``
    is pure: the parsed JSON body -> events and/or book messages."""

    url: str
    weight: int
    interval: float
    parse: Callable[[Any, int, int], ParseResult]
    #: what it is, for logs and stats (``open_interest BTCUSDT``)
    label: str = ""


#: native symbol -> (canonical BASE-QUOTE, market): the configured symbols of one connection
SymbolMap = Mapping[str, tuple[str, str]]


def symbol_entry(symbols: SymbolMap, native: Any) -> tuple[str, str] | None | bool:
    """``symbols[native]``; None = unknown (reject it); False = not even a string (malformed)."""
    if type(native) is not str:
        return False
    return symbols.get(native)


def entry_or(symbols: SymbolMap, native: Any, malformed: "ParseResult", rejected: "ParseResult"
             ) -> "tuple[str, str] | ParseResult":
    """``symbols[native]``, or the parser's result to return instead: ``malformed`` when ``native``
    is not even a string, ``rejected`` when it is unknown (hostile, or not configured)."""
    entry = symbol_entry(symbols, native)
    if entry is False:
        return malformed
    return rejected if entry is None else entry  # type: ignore[return-value]


class InstrumentList(list):
    """``list[InstrumentInfo]`` plus how many entries were rejected (hostile or invalid names)."""

    rejected: int = 0

    def __init__(self, items: Sequence[InstrumentInfo] = (), rejected: int = 0) -> None:
        super().__init__(items)
        self.rejected = rejected


#: a raw status string safe to keep: an unexpected but harmless one maps to the exchange's
#: "unknown" status; only unsafe text drops the row
SAFE_RAW_STATUS_RE = re.compile(r"[A-Za-z0-9_.-]{1,32}")


#: returned by a row parser for a row that is fine but not part of this snapshot (another market)
SKIP: Any = object()


def collect_instruments(rows: Iterable[Any], make: Callable[[Any], Any]) -> InstrumentList:
    """``make(row)`` for every row: an InstrumentInfo is kept, None (a refused row) is counted in
    ``.rejected``, :data:`SKIP` (a row of another market) is passed over."""
    out: list[InstrumentInfo] = []
    rejected = 0
    for row in rows:
        info = make(row)
        if info is None:
            rejected += 1
        elif info is not SKIP:
            out.append(info)
    return InstrumentList(out, rejected)


def short_repr(value: Any) -> str:
    """A bounded printable form of an envelope field for error messages."""
    text = value if isinstance(value, str) else repr(value)
    return text[:80]


class InstrumentsFormatError(ValueError):
    """An instruments response that is not the expected shape (nothing in it can be trusted)."""


@dataclass(frozen=True, slots=True)
class InstrumentsRequest:
    """One request of an instruments poll. Every request of the same ``market`` (and every page
    of each, see :meth:`ExchangeAdapter.next_instruments_page`) together make that market's full
    snapshot; if any of them fails, no snapshot of that market is sent for that poll."""

    market: str
    url: str
    weight: int = 1


class NotSupported(TypeError):
    """The adapter does not implement this part (e.g. trades on a listings-only adapter)."""


class WsFeed:
    """What the WebSocket transport (``workers.transport.ws.WsManager``) needs to run connections:
    where to connect, how to subscribe and keep alive, limits, and the pure frame parser.

    An :class:`ExchangeAdapter` is the feed of its trade streams; other channels of the same
    exchange (a listing push channel, a second host) are small extra ``WsFeed`` classes.
    """

    #: lower-case exchange name, as in the settings (``exchanges.<name>``)
    name: ClassVar[str] = ""
    #: what the feed carries, for logs (``trades``, ``contractInfo`` ...)
    label: ClassVar[str] = "trades"
    default_ws_base: ClassVar[str] = ""
    keepalive: ClassVar[KeepAlive] = KeepAlive()
    #: the channel can be silent for hours (listing pushes): liveness is proven by protocol
    #: ping/pong every ``keepalive.interval`` instead of data, and the stale watchdog is off
    quiet: ClassVar[bool] = False
    #: the exchange's hard limit; the effective value is min(this, settings)
    max_streams_per_connection: ClassVar[int] = 100
    #: outgoing messages per second per connection the exchange tolerates (settings may lower it)
    max_send_rate: ClassVar[float] = 5.0
    #: a forced connection lifetime, seconds (None = none known)
    max_connection_lifetime: ClassVar[float | None] = None
    #: single-subscription resubscribes per connection per second (exchanges count (un)subscribe
    #: ops: OKX 480/h) and their burst
    resubscribe_rate: ClassVar[float] = 1.0
    resubscribe_burst: ClassVar[float] = 5.0
    #: new connections per second for the whole exchange (IP limits: OKX 3/s, Binance 300/5 min);
    #: 0 = not limited
    connect_rate: ClassVar[float] = 0.0

    def ws_url(self, streams: Sequence[str]) -> str:
        """The URL of a connection carrying ``streams`` (at default bases; the transport
        applies the URL override)."""
        raise NotSupported(f"{type(self).__name__} does not implement this")

    def subscribe_messages(self, streams: Sequence[str]) -> list[str]:
        """Messages to send after connecting (none when the URL names the streams)."""
        return []

    def parse_ws_message(self, raw: str | bytes, rx_ns: int, rx_ms: int) -> ParseResult:
        """Pure: one raw message -> events and flags. ``rx_ns`` monotonic ns, ``rx_ms`` epoch ms."""
        raise NotSupported(f"{type(self).__name__} does not implement this")

    # ---- per-subscription control (market-data feeds) ----
    def resubscribe_messages(self, streams: Sequence[str]) -> list[str] | None:
        """Messages that unsubscribe and subscribe ``streams`` again on a live connection (the
        exchange then resends what a new subscription gets, e.g. a book snapshot); None = the
        exchange cannot (resubscribing then means reconnecting the connection carrying them)."""
        return None

    def watch_topic(self, stream: str) -> bool:
        """Whether ``stream`` carries data often enough that silence means a broken subscription
        (book diffs, tickers, klines, mark price). Event-driven streams (trades, liquidations)
        can be silent for hours on a quiet market: False. Parsers must set ParseResult.topic."""
        return False

    def book_stream(self, market: str, native: str) -> str | None:
        """The stream carrying the order book of ``native`` on ``market`` (resubscribed to resync
        it), or None when this feed does not carry it."""
        return None


#: exchange -> module with its market-data declarations: ``market_data_feeds(cfg)``,
#: ``market_data_polls(cfg)``, ``book_snapshot_request(market, native, cfg)``,
#: ``market_data_problem(cfg)`` and ``book_rest_budget(cfg)``
MARKET_DATA_MODULES: dict[str, str] = {
    "binance": "workers.exchanges.binance_md",
    "okx": "workers.exchanges.okx_md",
    "bybit": "workers.exchanges.bybit_md",
    "deribit": "workers.exchanges.deribit",
}


class ExchangeAdapter(WsFeed):
    """Base class of every exchange adapter. Subclasses set the class attributes and implement
    :meth:`native_symbol`, :meth:`trade_stream`, :meth:`ws_url`, :meth:`parse_ws_message`,
    :meth:`instruments_requests` and :meth:`parse_instruments`.

    An instance is built for the configured canonical symbols (it needs them to map native
    symbols in trade frames back to ``BASE-QUOTE``).
    """

    #: the market the adapter's trade streams belong to (spot | perp | future | option)
    market: ClassVar[str] = "spot"
    default_rest_base: ClassVar[str] = ""
    #: REST weight budget per ``rest_weight_window`` seconds (0 = not tracked)
    rest_weight_limit: ClassVar[int] = 0
    rest_weight_window: ClassVar[float] = 60.0
    #: response header carrying the weight used in the current window (None = not sent)
    rest_used_weight_header: ClassVar[str | None] = None
    #: HTTP statuses that mean "this IP is banned: stop ALL REST until the stated time", with the
    #: ban length in seconds used when no Retry-After comes (Binance 418, Bybit 403). Never mutated.
    rest_ban_statuses: ClassVar[dict[int, float]] = {}
    #: whether this adapter implements trade streams (listings-only adapters say False)
    supports_trades: ClassVar[bool] = True
    #: whether this adapter implements instruments polling (market-data-only adapters say False)
    supports_listings: ClassVar[bool] = True

    def __init__(self, symbols: Sequence[str] = ()) -> None:
        self.symbols: list[str] = list(dict.fromkeys(symbols))
        #: native symbol -> canonical, for the configured symbols (trade frames name natives)
        self.canonical_by_native: dict[str, str] = (
            {self.native_symbol(s): s for s in self.symbols} if self.supports_trades else {})

    # ---- symbols and streams ----
    def native_symbol(self, canonical: str) -> str:
        """The exchange's spelling of a canonical ``BASE-QUOTE`` symbol."""
        raise NotSupported(f"{type(self).__name__} does not implement this")

    def trade_stream(self, canonical: str) -> str:
        """The stream (channel) name carrying trades of one symbol."""
        raise NotSupported(f"{type(self).__name__} does not implement this")

    def trade_streams(self) -> list[str]:
        return [self.trade_stream(s) for s in self.symbols]

    # ---- listing push channels ----
    def listing_feeds(self) -> list[tuple[WsFeed, list[str]]]:
        """(feed, streams) of every instrument push channel, run beside the instruments poll.
        Their frames carry :attr:`ParseResult.instruments` (partial updates, never a full list)."""
        return []

    # ---- REST instruments (listing detection) ----
    def instruments_requests(self) -> list[InstrumentsRequest]:
        """(market, url, weight) of every request that lists the exchange's instruments."""
        raise NotSupported(f"{type(self).__name__} does not implement this")

    def next_instruments_page(self, request: InstrumentsRequest, body: Any) -> InstrumentsRequest | None:
        """The request for the next page after ``body`` (cursor pagination), or None when done."""
        return None

    def parse_instruments(self, market: str, body: Any) -> InstrumentList:
        """Pure: a parsed instruments response -> the instruments in it.

        Entries with hostile or invalid names are left out and counted in ``.rejected``.
        Raises :class:`InstrumentsFormatError` when the body is not an instruments list at all
        (then nothing must be concluded from it, e.g. no "everything was delisted").
        """
        raise NotSupported(f"{type(self).__name__} does not implement this")

    # ---- market data (declared by the exchange's market-data module) ----
    def _md_module(self) -> Any:
        path = MARKET_DATA_MODULES.get(self.name)
        if path is None:
            raise NotSupported(f"{self.name or type(self).__name__}: no market data")
        return importlib.import_module(path)

    @property
    def supports_market_data(self) -> bool:
        return self.name in MARKET_DATA_MODULES

    def market_data_problem(self, cfg: "ExchangeSettings") -> str | None:
        """One line ``<setting>: why`` when the market-data settings cannot work here, else None."""
        return self._md_module().market_data_problem(cfg)

    def market_data_feeds(self, cfg: "ExchangeSettings") -> list[tuple[WsFeed, list[str]]]:
        """(feed, streams) of every market-data WebSocket the settings ask for (one WsManager each)."""
        return self._md_module().market_data_feeds(cfg)

    def market_data_polls(self, cfg: "ExchangeSettings") -> list[RestPoll]:
        """The periodic market-data REST requests (open interest, long/short ratios)."""
        return self._md_module().market_data_polls(cfg)

    def book_snapshot_request(self, market: str, native: str, cfg: "ExchangeSettings") -> RestPoll | None:
        """The REST depth snapshot of one book (Binance, OKX without WS snapshot), or None."""
        return self._md_module().book_snapshot_request(market, native, cfg)

    def book_rest_budget(self, cfg: "ExchangeSettings") -> tuple[int, float]:
        """(weight of the heaviest snapshot request, weight per second snapshots may use)."""
        return self._md_module().book_rest_budget(cfg)


def md_markets(cfg: Any, supported: Mapping[str, Any], default: Sequence[str] = ("spot", "perp")) -> list[str]:
    """The configured markets (``default`` when unset) that the exchange has market data on."""
    wanted = cfg.markets if cfg.markets is not None else default
    return [m for m in wanted if m in supported]


def unsupported_channels(cfg: Any, exchange: str, supported: Mapping[str, Any], hint: str = "",
                         default: Sequence[str] = ("spot", "perp")) -> str | None:
    """``channels: ... not available ...`` when configured channels are not in ``supported``
    (market -> channel names) for the configured markets, else None."""
    markets = md_markets(cfg, supported, default)
    have = {c for m in markets for c in supported[m]}
    missing = [c for c in (cfg.channels or ()) if c not in have]
    if not missing:
        return None
    return (f"channels: {', '.join(missing)} not available on {exchange} {'/'.join(markets)} "
            f"(available: {', '.join(sorted(have))}{'; ' + hint if hint else ''})")


def interval_and_period_problem(cfg: Any, exchange: str, wanted: set[str], markets: Sequence[str],
                                intervals: Mapping[str, Any], periods: Mapping[str, Any]) -> str | None:
    """A one-line error when configured kline intervals or the long/short period are not among the
    exchange's (``intervals`` / ``periods``: our spelling -> theirs), for the channels ``wanted``."""
    if "kline" in wanted:
        bad = [i for i in cfg.kline_intervals if i not in intervals]
        if bad:
            return f"kline_intervals: {', '.join(bad)} not available on {exchange}"
    if "long_short" in wanted and "perp" in markets and cfg.long_short_period not in periods:
        return f"long_short_period: {exchange} has {', '.join(periods)} only"
    return None
