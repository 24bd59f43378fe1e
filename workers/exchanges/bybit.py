"""Bybit v5 listing detection: ``GET https://api.bybit.com/v5/market/instruments-info``
for ``category=spot`` (spot) and ``category=linear`` (USDT/USDC perpetuals, market ``perp``).

Body (fixtures/rest/SOURCES.md 5): ``{"retCode": 0, "retMsg": "OK", "result": {"category": ..,
"list": [...], "nextPageCursor": ..}, ...}``; any ``retCode`` but 0 is an error (``10006`` = too
many visits), even with HTTP 200.

Why two linear requests: the linear list returns only ``Trading`` contracts unless asked with
``status=PreLaunch``, and pre-market contracts are the earliest listing signal. Both lists (and
every page of each) are merged into ONE perp snapshot by the runtime. Linear pages with a cursor
(``limit`` up to 1000; follow ``nextPageCursor`` until it is empty); spot does not page. The
cursor is an opaque token: it is sent back URL-encoded, as the official SDK and ccxt do.

Names: ``symbol`` (``BTCUSDT``; USDC perps ``BTCPERP``), ``baseCoin``/``quoteCoin``. Dated linear
futures (``contractType: LinearFutures``) are not perpetuals: left out of the perp snapshot.

Status ``status``: PreLaunch (pre-trading), Trading, Settling / Delivering (halted, on the way
out), Closed (delisted). Spot only ever shows ``Trading``: spot listings appear already trading.

Rate limit: 600 requests / 5 s per IP over all of api.bybit.com. Beyond that Bybit answers HTTP
403 "access too frequent" and the IP must stay away for at least 10 minutes, so 403 is a ban
status: no request at all for 600 s.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from shared.events import DELISTED, HALTED, PRE_TRADING, TRADING, InstrumentInfo
from shared.symbols import canonical, is_safe_native_symbol, split_canonical

from .base import (
    ExchangeAdapter, InstrumentList, InstrumentsFormatError, InstrumentsRequest, SKIP,
    collect_instruments,
)

STATUS_MAP = {
    "PreLaunch": PRE_TRADING,
    "Trading": TRADING,
    "Settling": HALTED,
    "Delivering": HALTED,
    "Closed": DELISTED,
}
#: a status Bybit adds later is not "trading" until we know what it means
UNKNOWN_STATUS = HALTED

#: our market -> Bybit category
CATEGORIES = {"spot": "spot", "perp": "linear"}
#: linear contract types that are dated, not perpetual (skipped in the perp snapshot; anything
#: else, including a missing or new type, is read as a perpetual rather than risk missing one)
DATED_TYPES = frozenset({"LinearFutures", "InverseFutures"})

#: a cursor longer than this is not one (bounds the next URL)
MAX_CURSOR_LEN = 512

_RAW_STATUS_RE = re.compile(r"[A-Za-z]{1,32}\Z")

SPOT_PAGE = "https://www.bybit.com/trade/spot/{base}/{quote}"
PERP_PAGE = "https://www.bybit.com/trade/usdt/{native}"
USDC_PERP_PAGE = "https://www.bybit.com/trade/futures/usdc/{native}"


class Bybit(ExchangeAdapter):
    name = "bybit"
    market = "spot"
    default_rest_base = "https://api.bybit.com"
    rest_weight_limit = 600
    rest_weight_window = 5.0
    #: 403 "access too frequent": stop and wait >= 10 min (docs: v5/rate-limit)
    rest_ban_statuses = {403: 600.0}
    supports_trades = False

    INSTRUMENTS_PATH = "/v5/market/instruments-info"
    LINEAR_PAGE_LIMIT = 1000

    def instruments_requests(self) -> list[InstrumentsRequest]:
        url = self.default_rest_base + self.INSTRUMENTS_PATH
        linear = f"{url}?category=linear&limit={self.LINEAR_PAGE_LIMIT}"
        return [
            InstrumentsRequest("spot", f"{url}?category=spot", 1),
            InstrumentsRequest("perp", linear, 1),
            InstrumentsRequest("perp", f"{linear}&status=PreLaunch", 1),
            # the default list holds Trading only: without this a halted (Delivering) contract
            # would vanish and, after the confirmation polls, be reported as delisted
            InstrumentsRequest("perp", f"{linear}&status=Delivering", 1),
        ]

    def next_instruments_page(self, request: InstrumentsRequest, body: Any) -> InstrumentsRequest | None:
        """The same request with ``cursor=<nextPageCursor>``; None when the cursor is empty.

        Only called on a body :meth:`parse_instruments` accepted (the cursor was checked there)."""
        if request.market != "perp":
            return None  # spot does not page (docs: limit/cursor ignored): a cursor would loop
        cursor = _next_cursor(body)
        if not cursor:
            return None
        parts = urlsplit(request.url)
        query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != "cursor"]
        query.append(("cursor", cursor))
        url = urlunsplit((parts.scheme, parts.netloc, parts.path, urlencode(query), parts.fragment))
        return InstrumentsRequest(request.market, url, request.weight)

    def parse_instruments(self, market: str, body: Any) -> InstrumentList:
        category = CATEGORIES.get(market)
        if category is None:
            raise ValueError(f"bybit: no instruments market {market!r}")
        if not isinstance(body, dict):
            raise InstrumentsFormatError("instruments-info body is not an object")
        ret_code = body.get("retCode")
        if ret_code != 0 or isinstance(ret_code, bool):
            msg = body.get("retMsg")
            raise InstrumentsFormatError(
                f"bybit error {str(ret_code)[:20]}: {msg[:200] if isinstance(msg, str) else ''}")
        result = body.get("result")
        if not isinstance(result, dict) or not isinstance(result.get("list"), list):
            raise InstrumentsFormatError("instruments-info body has no 'result.list'")
        if result.get("category", category) != category:
            raise InstrumentsFormatError(f"instruments-info for category {str(result.get('category'))[:20]!r}, "
                                         f"expected {category!r}")
        cursor = result.get("nextPageCursor")
        if cursor is not None and (not isinstance(cursor, str) or len(cursor) > MAX_CURSOR_LEN
                                   or not cursor.isascii() or not cursor.isprintable()):
            # a page we cannot follow: the snapshot would be partial, so none at all
            raise InstrumentsFormatError("instruments-info has an unusable nextPageCursor")
        def make(row: Any) -> Any:
            if market == "perp" and isinstance(row, dict) and _is_dated(row.get("contractType")):
                return SKIP  # a dated future: not in the perp snapshot, and nothing wrong with it
            return _instrument(market, row)

        return collect_instruments(result["list"], make)


def _is_dated(contract_type: Any) -> bool:
    return isinstance(contract_type, str) and contract_type in DATED_TYPES


def _next_cursor(body: Any) -> str:
    result = body.get("result") if isinstance(body, dict) else None
    cursor = result.get("nextPageCursor") if isinstance(result, dict) else None
    return cursor if isinstance(cursor, str) else ""


def _instrument(market: str, row: Any) -> InstrumentInfo | None:
    if not isinstance(row, dict):
        return None
    native, raw_status = row.get("symbol"), row.get("status")
    if not is_safe_native_symbol(native) or not isinstance(raw_status, str) or not _RAW_STATUS_RE.match(raw_status):
        return None
    pair = canonical(row.get("baseCoin"), row.get("quoteCoin"))
    if pair is None:
        return None
    base, quote = split_canonical(pair)
    if not native.upper().startswith(base):
        return None  # the name and its parts disagree: trust neither
    if market == "spot":
        url = SPOT_PAGE.format(base=base, quote=quote)
    else:
        url = (PERP_PAGE if quote == "USDT" else USDC_PERP_PAGE).format(native=native)
    return InstrumentInfo(
        native_symbol=native, symbol=pair, base=base, quote=quote, market=market,
        status=STATUS_MAP.get(raw_status, UNKNOWN_STATUS), raw_status=raw_status, url=url,
    )
