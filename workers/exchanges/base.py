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

import re
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Iterable, Sequence

from shared.events import InstrumentInfo, WireEvent
from shared.marketdata import BookMsg


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
