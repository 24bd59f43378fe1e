"""OKX listing detection: ``GET https://www.okx.com/api/v5/public/instruments?instType=SPOT`` (spot)
and ``...?instType=SWAP`` (perpetual swaps, market ``perp``).

Body (fixtures/rest/SOURCES.md 4): ``{"code": "0", "msg": "", "data": [...]}``; ``code`` is a
string, anything but ``"0"`` is an error (``"50011"`` = rate limit), even with HTTP 200.

Names: ``instId`` (``BTC-USDT``, swaps ``BTC-USDT-SWAP``). On announcement an instrument appears
with ``state: preopen`` and only ``instType``, ``instId``, ``listTime``, ``state`` filled: every
other field is ``""`` (``instIdCode: null``) until shortly before ``listTime``. So the canonical
pair comes from ``instId`` and the other fields only cross-check it when they are filled:
spot ``baseCcy``/``quoteCcy``; swaps ``instFamily``/``uly`` (``BTC-USD`` for the inverse
``BTC-USD-SWAP``; ``ctValCcy``/``settleCcy`` would read ``USD``/``BTC`` there, so they are not used).

Status ``state``: live (trading); preopen (pre-trading, becomes live at ``listTime``); post_only
(swap listing phase, orders rest: pre-trading); suspend, test (cannot be traded), rebase,
settling (halted). Expired/settled instruments disappear from the list.

Rate limit: 20 requests / 2 s per IP and instType; 429 or code 50011 when exceeded.
"""

from __future__ import annotations

import re
from typing import Any, Sequence

import orjson

from shared.events import HALTED, PRE_TRADING, TRADING, InstrumentInfo
from shared.symbols import canonical, is_safe_native_symbol, split_canonical

from .base import (
    ExchangeAdapter, InstrumentList, InstrumentsFormatError, InstrumentsRequest, KeepAlive, ParseResult,
    WsFeed, collect_instruments, short_repr,
)

STATUS_MAP = {
    "live": TRADING,
    "preopen": PRE_TRADING,
    "post_only": PRE_TRADING,
    "suspend": HALTED,
    "test": HALTED,
    "rebase": HALTED,
    "settling": HALTED,
}
#: a state OKX adds later is not "trading" until we know what it means
UNKNOWN_STATUS = HALTED

#: our market -> OKX instType
INST_TYPES = {"spot": "SPOT", "perp": "SWAP"}

_RAW_STATUS_RE = re.compile(r"[a-z_]{1,32}\Z")

TRADE_PAGES = {
    "spot": "https://www.okx.com/trade-spot/{native}",
    "perp": "https://www.okx.com/trade-swap/{native}",
}


#: OKX instType -> our market (the push channel's ``arg.instType`` names the rows' market)
MARKET_OF_INST_TYPE = {v: k for k, v in INST_TYPES.items()}

_IGNORED = ParseResult()
_PONG = ParseResult()
_GARBAGE = ParseResult(parse_errors=1)
_ROTATE = ParseResult(rotate=True)


class OkxInstrumentsFeed(WsFeed):
    """The public ``instruments`` channel (research A.3): the full list of an instType right after
    subscribing, then a push whenever an instrument is added or changes state (preopen -> live,
    suspend ...). Rows have the REST shape. Each push is handled as a partial update (an instrument
    missing from a push says nothing), so only the poll can conclude a delisting.

    Keep-alive: OKX closes a connection that receives nothing for 30 s; a text ``ping`` every 20 s
    gets a text ``pong`` back, which keeps it open and feeds the stale watchdog."""

    name = "okx"
    label = "instruments"
    default_ws_base = "wss://ws.okx.com:8443"
    keepalive = KeepAlive(server_pings=False, client_ping=True, interval=20.0, text_ping="ping")
    max_streams_per_connection = 16
    # 480 subscribe/unsubscribe ops per hour per connection; pings are not counted
    max_send_rate = 3.0

    def ws_url(self, streams: Sequence[str]) -> str:
        return f"{self.default_ws_base}/ws/v5/public"

    def subscribe_messages(self, streams: Sequence[str]) -> list[str]:
        args = [{"channel": "instruments", "instType": t} for t in streams]
        return [orjson.dumps({"op": "subscribe", "args": args}).decode()]

    def parse_ws_message(self, raw: str | bytes, rx_ns: int, rx_ms: int) -> ParseResult:
        if raw == "pong":
            return _PONG
        if not isinstance(raw, str):
            return _GARBAGE
        try:
            msg = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return _GARBAGE
        if type(msg) is not dict:
            return _GARBAGE
        event = msg.get("event")
        if event is not None:
            if event in ("subscribe", "unsubscribe", "channel-conn-count"):
                return _IGNORED
            if event == "notice":
                return _ROTATE  # 64008: service upgrade, this connection closes in ~30-60 s
            if event == "error":
                return ParseResult(error=f"okx error {short_repr(msg.get('code'))}: {short_repr(msg.get('msg'))}")
            return _IGNORED
        arg, data = msg.get("arg"), msg.get("data")
        if type(arg) is not dict or arg.get("channel") != "instruments" or type(data) is not list:
            return _GARBAGE
        inst_type = arg.get("instType")
        market = MARKET_OF_INST_TYPE.get(inst_type) if isinstance(inst_type, str) else None
        if market is None:
            return ParseResult(data=True)  # an instType we do not track (MARGIN, OPTION ...)
        got = collect_instruments(data, lambda row: _instrument(market, inst_type, row))
        return ParseResult(data=True, instruments=list(got), rejected=got.rejected)


class Okx(ExchangeAdapter):
    name = "okx"
    market = "spot"
    default_rest_base = "https://www.okx.com"
    rest_weight_limit = 20
    rest_weight_window = 2.0
    supports_trades = False

    INSTRUMENTS_PATH = "/api/v5/public/instruments"

    def listing_feeds(self) -> list[tuple[WsFeed, list[str]]]:
        return [(OkxInstrumentsFeed(), list(INST_TYPES.values()))]

    def instruments_requests(self) -> list[InstrumentsRequest]:
        return [
            InstrumentsRequest(market, f"{self.default_rest_base}{self.INSTRUMENTS_PATH}?instType={inst_type}", 1)
            for market, inst_type in INST_TYPES.items()
        ]

    def parse_instruments(self, market: str, body: Any) -> InstrumentList:
        inst_type = INST_TYPES.get(market)
        if inst_type is None:
            raise ValueError(f"okx: no instruments market {market!r}")
        if not isinstance(body, dict):
            raise InstrumentsFormatError("instruments body is not an object")
        code = body.get("code")
        if code != "0":
            msg = body.get("msg")
            raise InstrumentsFormatError(
                f"okx error {str(code)[:20]}: {msg[:200] if isinstance(msg, str) else ''}")
        data = body.get("data")
        if not isinstance(data, list):
            raise InstrumentsFormatError("instruments body has no 'data' list")
        return collect_instruments(data, lambda row: _instrument(market, inst_type, row))


def _instrument(market: str, inst_type: str, row: Any) -> InstrumentInfo | None:
    if not isinstance(row, dict) or row.get("instType", inst_type) != inst_type:
        return None
    native, raw_status = row.get("instId"), row.get("state")
    if not is_safe_native_symbol(native) or not isinstance(raw_status, str) or not _RAW_STATUS_RE.match(raw_status):
        return None
    parts = native.split("-")
    if inst_type == "SWAP":
        if len(parts) != 3 or parts[2] != "SWAP":
            return None
        # filled rows name the same pair in instFamily and uly; pre-open rows leave them ""
        checks = [row.get("instFamily"), row.get("uly")]
    else:
        if len(parts) != 2:
            return None
        base_ccy, quote_ccy = row.get("baseCcy"), row.get("quoteCcy")
        checks = [f"{base_ccy}-{quote_ccy}" if base_ccy or quote_ccy else ""]
    pair = canonical(parts[0], parts[1])
    if pair is None:
        return None
    for named in checks:
        if named is None or named == "":
            continue
        if not isinstance(named, str) or named.upper() != pair:
            return None  # the name and its parts disagree: trust neither
    base, quote = split_canonical(pair)
    return InstrumentInfo(
        native_symbol=native, symbol=pair, base=base, quote=quote, market=market,
        status=STATUS_MAP.get(raw_status, UNKNOWN_STATUS), raw_status=raw_status,
        url=TRADE_PAGES[market].format(native=native.lower()),
    )
