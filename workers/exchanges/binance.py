"""Binance spot: combined-stream trades and ``/api/v3/exchangeInfo`` instruments.

Operational rules (docs, see research/exchange-quirks.md A.1):
- WS ``wss://stream.binance.com:9443/stream?streams=a/b``: payloads wrapped in
  ``{"stream":..,"data":..}``; ``/ws/<stream>`` sends them bare (both are accepted).
- The server pings every 20 s and wants a pong echoing the payload within 1 min; client pings
  are NOT sent: every incoming message, pings and pongs included, counts toward 5 msgs/s.
- At most 1024 streams per connection; a connection lives 24 h; ``serverShutdown`` announces
  a maintenance cut (rotate now).
- REST weight 6000/min per IP, header ``X-MBX-USED-WEIGHT-1M``; 429 then 418 bans, both with
  ``Retry-After``. exchangeInfo weight 20.

USDⓈ-M futures instruments (research/exchange-quirks.md A.2, fixtures/rest/SOURCES.md 1b):
``GET https://fapi.binance.com/fapi/v1/exchangeInfo`` (weight 1, 2400/min on its own host),
``status`` PENDING_TRADING -> TRADING -> (PRE_)SETTLING / (PRE_)DELIVERING -> DELIVERED / CLOSE.
A contract not listed yet has ``contractType: ""``; dated contracts are named ``PAIR_YYMMDD``.
:class:`Binance` (spot + USDⓈ-M instrument polls) is the adapter for the ``binance`` worker.
"""

from __future__ import annotations

import re
from typing import Any, Sequence

import orjson

from shared.events import DELISTED, HALTED, PRE_TRADING, TRADING, InstrumentInfo, Trade
from shared.symbols import canonical, is_safe_native_symbol, split_canonical

from .base import (
    ExchangeAdapter, InstrumentList, InstrumentsFormatError, InstrumentsRequest, KeepAlive,
    ParseResult, SKIP, WsFeed, collect_instruments,
)



def _is_decimal(s: str) -> bool:
    """A plain decimal string as Binance sends prices and quantities ("83034.29000000").

    (Cheaper than a regex on the hot path; ``isascii`` keeps out unicode digits like "²".)
    """
    return (0 < len(s) <= 64 and s.isascii() and s[0] != "." and s[-1] != "."
            and s.replace(".", "", 1).isdigit())

STATUS_MAP = {
    "TRADING": TRADING,
    "PRE_TRADING": PRE_TRADING,
    "AUCTION_MATCH": PRE_TRADING,
    "BREAK": HALTED,
    "HALT": HALTED,
    "END_OF_DAY": HALTED,
    "POST_TRADING": HALTED,
    "CANCEL_ONLY": HALTED,
}
#: a status Binance adds later is not "trading" until we know what it means
UNKNOWN_STATUS = HALTED

_RAW_STATUS_RE = re.compile(r"[A-Z_]{1,32}")

TRADE_PAGE = "https://www.binance.com/en/trade/{base}_{quote}"

#: USDⓈ-M contract status (``status``; ``contractStatus`` in older bodies and ``cs`` on the
#: ``!contractInfo`` stream) -> normalized
FUTURES_STATUS_MAP = {
    "PENDING_TRADING": PRE_TRADING,
    "TRADING": TRADING,
    "PRE_SETTLE": HALTED,
    "SETTLING": HALTED,
    "PRE_DELIVERING": HALTED,
    "DELIVERING": HALTED,
    "BREAK": HALTED,  # seen on TradFi perps in a recorded body
    "DELIVERED": DELISTED,
    "CLOSE": DELISTED,
}
#: contract types that never expire; every other non-empty type is a dated future
PERPETUAL_TYPES = frozenset({"PERPETUAL", "TRADIFI_PERPETUAL"})
FUTURES_PAGE = "https://www.binance.com/en/futures/{native}"

# Results shared by every frame of one kind (read-only by contract: the transport never mutates).
_IGNORED = ParseResult()
_IGNORED_DATA = ParseResult(data=True)
_GARBAGE = ParseResult(parse_errors=1)
_MALFORMED_DATA = ParseResult(data=True, parse_errors=1)
_REJECTED = ParseResult(data=True, rejected=1)
_SHUTDOWN = ParseResult(rotate=True)


def futures_info(native: Any, pair: str, raw_status: Any, contract_type: Any) -> InstrumentInfo | None:
    """A USDⓈ-M contract (REST row or ``!contractInfo`` push) as an InstrumentInfo, or None when
    a part is unsafe or the name and the pair disagree."""
    if (not is_safe_native_symbol(native) or not isinstance(raw_status, str)
            or not _RAW_STATUS_RE.fullmatch(raw_status) or not isinstance(contract_type, str)):
        return None
    base, quote = split_canonical(pair)
    name, dated, _ = native.upper().partition("_")
    if name != base + quote:
        return None  # the name and its parts disagree: trust neither
    if contract_type:
        market = "perp" if contract_type in PERPETUAL_TYPES else "future"
    else:
        # not listed yet: Binance leaves contractType empty; a dated one is PAIR_YYMMDD
        market = "future" if dated else "perp"
    return InstrumentInfo(
        native_symbol=native, symbol=pair, base=base, quote=quote, market=market,
        status=FUTURES_STATUS_MAP.get(raw_status, UNKNOWN_STATUS), raw_status=raw_status,
        url=FUTURES_PAGE.format(native=native),
    )


#: USDⓈ-M quote assets, longest first; a ``!contractInfo`` push names only the pair (``ps``),
#: so its base/quote come from the quote suffix
FUTURES_QUOTES = ("FDUSD", "USDT", "USDC", "BUSD", "BTC", "ETH", "BNB")


def split_futures_pair(pair: Any) -> str | None:
    """``BTCUSDT`` -> ``BTC-USDT`` by a known quote suffix; None when no known quote ends it."""
    if not isinstance(pair, str) or not 2 <= len(pair) <= 40:
        return None
    for quote in FUTURES_QUOTES:
        if pair.endswith(quote) and len(pair) > len(quote):
            return canonical(pair[:-len(quote)], quote)
    return None


class BinanceContractInfoFeed(WsFeed):
    """USDⓈ-M ``!contractInfo``: pushed when a contract is listed, changes status (settlement,
    delivery) or its brackets change (docs: "Contract Info Stream"; research A.2). On the
    ``/market`` route since the 2026 URL split. One frame = one contract:
    ``{"e":"contractInfo","E":..,"s":"IOTAUSDT","ps":"IOTAUSDT","ct":"PERPETUAL","dt":..,"ot":..,
    "cs":"TRADING","bks":[..]}``. ``bks`` (bracket) updates repeat an unchanged status: the
    publisher's state makes those no-ops. Event-driven, so quiet for hours: liveness by ping/pong.
    """

    name = "binance"
    label = "contractInfo"
    default_ws_base = "wss://fstream.binance.com"
    # Binance pings every 3 min and wants a pong within 10; our own ping every 60 s proves the
    # connection (unsolicited pings are allowed; 10 incoming msgs/s per connection)
    keepalive = KeepAlive(server_pings=True, client_ping=False, interval=60.0)
    quiet = True
    max_streams_per_connection = 1024
    max_send_rate = 10.0
    max_connection_lifetime = 24 * 3600.0
    STREAM = "!contractInfo"

    def ws_url(self, streams: Sequence[str]) -> str:
        return f"{self.default_ws_base}/market/ws/{'/'.join(streams)}"

    def parse_ws_message(self, raw: str | bytes, rx_ns: int, rx_ms: int) -> ParseResult:
        if not isinstance(raw, str):
            return _GARBAGE
        try:
            msg = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return _GARBAGE
        if type(msg) is not dict:
            return _GARBAGE
        if type(msg.get("data")) is dict and "stream" in msg:
            msg = msg["data"]
        e = msg.get("e")
        if e == "contractInfo":
            return self._contract(msg)
        if e == "serverShutdown":
            return _SHUTDOWN
        if "id" in msg and "result" in msg:
            return _IGNORED
        if "code" in msg and "msg" in msg:
            return ParseResult(error=_error_text(msg))
        return _IGNORED_DATA if isinstance(e, str) else _GARBAGE

    @staticmethod
    def _contract(d: dict) -> ParseResult:
        if d.get("st", 1) != 1:
            return _IGNORED_DATA  # a COIN-M contract on a mixed stream (2026 "st" = 2): not ours
        pair = split_futures_pair(d.get("ps"))
        info = futures_info(d.get("s"), pair, d.get("cs"), d.get("ct", "")) if pair is not None else None
        if info is None:
            return _REJECTED
        return ParseResult(data=True, instruments=[info])


class BinanceSpot(ExchangeAdapter):
    name = "binance"
    market = "spot"
    default_rest_base = "https://api.binance.com"
    default_ws_base = "wss://stream.binance.com:9443"
    keepalive = KeepAlive(server_pings=True, client_ping=False, interval=20.0)
    max_streams_per_connection = 1024
    max_send_rate = 5.0
    rest_weight_limit = 6000
    rest_weight_window = 60.0
    rest_used_weight_header = "X-MBX-USED-WEIGHT-1M"
    max_connection_lifetime = 24 * 3600.0

    EXCHANGE_INFO_PATH = "/api/v3/exchangeInfo"
    EXCHANGE_INFO_WEIGHT = 20
    FUTURES_REST_BASE = "https://fapi.binance.com"
    FUTURES_EXCHANGE_INFO_PATH = "/fapi/v1/exchangeInfo"
    FUTURES_EXCHANGE_INFO_WEIGHT = 1
    #: 418 = IP banned (after ignored 429s); Retry-After says for how long (2 min to 3 days)
    rest_ban_statuses = {418: 120.0}

    def native_symbol(self, canonical_symbol: str) -> str:
        base, quote = split_canonical(canonical_symbol)
        return base + quote

    def trade_stream(self, canonical_symbol: str) -> str:
        return self.native_symbol(canonical_symbol).lower() + "@trade"

    def ws_url(self, streams: Sequence[str]) -> str:
        return f"{self.default_ws_base}/stream?streams={'/'.join(streams)}"

    # ---- WebSocket messages ----
    def parse_ws_message(self, raw: str | bytes, rx_ns: int, rx_ms: int) -> ParseResult:
        if not isinstance(raw, str):
            return _GARBAGE  # Binance JSON streams never send binary frames
        try:
            msg = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return _GARBAGE
        if type(msg) is not dict:
            return _GARBAGE
        data = msg.get("data")
        if type(data) is dict and "stream" in msg:
            return self._parse_payload(data, rx_ns, rx_ms, wrapped=True)
        if "data" in msg and "stream" in msg:
            return _MALFORMED_DATA  # a wrapper around something that is not an object
        if "e" in msg:
            return self._parse_payload(msg, rx_ns, rx_ms, wrapped=False)
        if "id" in msg and "result" in msg:
            return _IGNORED  # reply to SUBSCRIBE / LIST_SUBSCRIPTIONS
        if "code" in msg and "msg" in msg:
            return ParseResult(error=_error_text(msg))
        return _GARBAGE

    def _parse_payload(self, d: dict, rx_ns: int, rx_ms: int, *, wrapped: bool) -> ParseResult:
        e = d.get("e")
        if e == "trade":
            return self._parse_trade(d, rx_ns, rx_ms)
        if e == "serverShutdown":
            return _SHUTDOWN
        # another stream type (depth, bookTicker without "e", ...): market data, not ours
        return _IGNORED_DATA if (wrapped or isinstance(e, str)) else _GARBAGE

    def _parse_trade(self, d: dict, rx_ns: int, rx_ms: int) -> ParseResult:
        native = d.get("s")
        if type(native) is not str:
            return _MALFORMED_DATA
        symbol = self.canonical_by_native.get(native)
        if symbol is None:
            # hostile (``*``, spaces, braces, 10 kB, unicode) or simply not configured: never
            # let it near a stream key
            return _REJECTED
        trade_id, price, qty, ts, maker = d.get("t"), d.get("p"), d.get("q"), d.get("T"), d.get("m")
        if (type(trade_id) is not int or type(ts) is not int or type(maker) is not bool
                or type(price) is not str or type(qty) is not str
                or not _is_decimal(price) or not _is_decimal(qty)):
            return _MALFORMED_DATA
        trade = Trade(
            exchange=self.name, market=self.market, symbol=symbol, native_symbol=native,
            trade_id=str(trade_id), price=price, qty=qty,
            # m = buyer is the maker, so the taker sold
            side="sell" if maker else "buy",
            ts_exchange=ts, ts_receive=rx_ms,
        )
        return ParseResult(events=[trade.to_wire(rx_ns)], data=True)

    # ---- REST instruments ----
    def instruments_requests(self) -> list[InstrumentsRequest]:
        return [InstrumentsRequest("spot", self.default_rest_base + self.EXCHANGE_INFO_PATH,
                                   self.EXCHANGE_INFO_WEIGHT)]

    def futures_instruments_request(self) -> InstrumentsRequest:
        """The USDⓈ-M perpetuals poll (``perp``). Dated contracts come in the same body and are
        left out of it: a snapshot carries one market (a ``future`` request with the same URL
        would list them)."""
        return InstrumentsRequest("perp", self.FUTURES_REST_BASE + self.FUTURES_EXCHANGE_INFO_PATH,
                                  self.FUTURES_EXCHANGE_INFO_WEIGHT)

    def parse_instruments(self, market: str, body: Any) -> InstrumentList:
        if market in ("perp", "future"):
            return self.parse_futures_instruments(market, body)
        if not isinstance(body, dict) or not isinstance(body.get("symbols"), list):
            raise InstrumentsFormatError("exchangeInfo body has no 'symbols' list")
        return collect_instruments(body["symbols"], lambda row: self._instrument(market, row))

    def parse_futures_instruments(self, market: str, body: Any) -> InstrumentList:
        """USDⓈ-M ``/fapi/v1/exchangeInfo`` -> the contracts of ``market`` (``perp``: perpetuals,
        ``future``: dated). Contracts of the other market are skipped, not counted as rejected."""
        if not isinstance(body, dict) or not isinstance(body.get("symbols"), list):
            raise InstrumentsFormatError("futures exchangeInfo body has no 'symbols' list")
        futures_type = body.get("futuresType")
        if futures_type is not None and futures_type != "U_MARGINED":
            # a COIN-M body (dapi) or something else routed here: none of it is ours
            raise InstrumentsFormatError(f"futures exchangeInfo is not USD-M ({str(futures_type)[:20]!r})")
        def make(row: Any) -> Any:
            got = self._futures_instrument(row)
            return SKIP if got is not None and got.market != market else got

        return collect_instruments(body["symbols"], make)

    def _futures_instrument(self, row: Any) -> InstrumentInfo | None:
        if not isinstance(row, dict):
            return None
        pair = canonical(row.get("baseAsset"), row.get("quoteAsset"))
        if pair is None:
            return None
        return futures_info(row.get("symbol"), pair, row.get("status", row.get("contractStatus")),
                            row.get("contractType", ""))

    def _instrument(self, market: str, row: Any) -> InstrumentInfo | None:
        if not isinstance(row, dict):
            return None
        native, base_asset, quote_asset = row.get("symbol"), row.get("baseAsset"), row.get("quoteAsset")
        raw_status = row.get("status")
        if not is_safe_native_symbol(native) or not isinstance(raw_status, str):
            return None
        pair = canonical(base_asset, quote_asset)
        if pair is None:
            return None
        base, quote = split_canonical(pair)
        if native.upper() != base + quote:
            return None  # the name and its parts disagree: trust neither
        if not _RAW_STATUS_RE.fullmatch(raw_status):
            return None
        return InstrumentInfo(
            native_symbol=native, symbol=pair, base=base, quote=quote, market=market,
            status=STATUS_MAP.get(raw_status, UNKNOWN_STATUS), raw_status=raw_status,
            url=TRADE_PAGE.format(base=base, quote=quote),
        )


class Binance(BinanceSpot):
    """The ``binance`` worker's adapter: spot trades, and instrument polls of spot AND USDⓈ-M
    perpetuals (two markets, two snapshots).

    Both hosts sit behind one REST client: one weight budget (the spot 6000/min, the stricter
    2400/min of fapi is far above what 1 weight per poll needs) and one ban: a 418 from either
    host stops both, which is the safe reading of an IP ban.
    """

    def instruments_requests(self) -> list[InstrumentsRequest]:
        return [*super().instruments_requests(), self.futures_instruments_request()]

    def listing_feeds(self) -> list[tuple[WsFeed, list[str]]]:
        return [(BinanceContractInfoFeed(), [BinanceContractInfoFeed.STREAM])]


def _error_text(msg: dict) -> str:
    code = msg.get("code")
    text = msg.get("msg")
    text = text[:200] if isinstance(text, str) else repr(text)[:200]
    return f"binance error {code if isinstance(code, int) else '?'}: {text}"
