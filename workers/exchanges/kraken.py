"""Kraken spot listing detection: ``GET https://api.kraken.com/0/public/AssetPairs``.

Body (fixtures/rest/SOURCES.md 3): ``{"error": [], "result": {<pair>: {...}, ...}}`` -- ``result``
is an object keyed by pair name, not a list. Errors come as HTTP 200 with a non-empty ``error``
array (``EAPI:Rate limit exceeded``, ``EService:Unavailable``, ...).

Names: the key (``XXBTZUSD``; newer pairs ``0GEUR``) is the native symbol (what the REST API takes);
``wsname`` (``XBT/USD``) is the human form and gives the canonical pair, with Kraken's own asset
codes translated: ``XBT`` -> ``BTC``, ``XDG`` -> ``DOGE``. ``base``/``quote`` are in legacy asset codes
(``XXBT``, ``ZUSD``, ``XETH``; newer assets unprefixed: ``0G``); they are used only when ``wsname``
is missing, and only through an explicit table (a generic "drop a leading X/Z" would mangle a new
four-letter asset that starts with X or Z).

Status ``status``: online (trading); cancel_only, reduce_only, maintenance (halted); post_only
(orders rest, nothing matches: the first phase of a new Kraken market, so pre-trading);
limit_only (orders match: trading); work_in_progress (being set up: pre-trading); delisted.

Rate limit: Kraken publishes no per-IP figure for public calls in the pages read; about one
request per second is the usual guidance, and a listing poll needs one request per 5 s.
"""

from __future__ import annotations

import re
from typing import Any

from shared.events import DELISTED, HALTED, PRE_TRADING, TRADING, InstrumentInfo
from shared.symbols import canonical, is_safe_native_symbol, split_canonical

from .base import (
    ExchangeAdapter, InstrumentList, InstrumentsFormatError, InstrumentsRequest,
    collect_instruments,
)

STATUS_MAP = {
    "online": TRADING,
    "limit_only": TRADING,
    "post_only": PRE_TRADING,
    "work_in_progress": PRE_TRADING,
    "cancel_only": HALTED,
    "reduce_only": HALTED,
    "maintenance": HALTED,
    "delisted": DELISTED,
}
#: a status Kraken adds later is not "trading" until we know what it means
UNKNOWN_STATUS = HALTED

#: Kraken's spelling of an asset (wsname form) -> the usual code
ASSET_ALIASES = {"XBT": "BTC", "XDG": "DOGE"}
#: legacy prefixed asset codes of the ``base``/``quote`` fields -> the usual code
LEGACY_ASSETS = {
    "XXBT": "BTC", "XETH": "ETH", "XLTC": "LTC", "XXRP": "XRP", "XXLM": "XLM", "XXMR": "XMR",
    "XZEC": "ZEC", "XETC": "ETC", "XREP": "REP", "XMLN": "MLN", "XXDG": "DOGE", "XXTZ": "XTZ",
    "ZUSD": "USD", "ZEUR": "EUR", "ZGBP": "GBP", "ZCAD": "CAD", "ZJPY": "JPY", "ZAUD": "AUD",
}

_RAW_STATUS_RE = re.compile(r"[a-z_]{1,32}\Z")

TRADE_PAGE = "https://pro.kraken.com/app/trade/{base}-{quote}"


def kraken_asset(code: str) -> str:
    """A Kraken asset code (legacy ``XXBT``, wsname ``XBT`` or plain ``0G``) -> the usual code."""
    code = code.upper()
    code = LEGACY_ASSETS.get(code, code)
    return ASSET_ALIASES.get(code, code)


class Kraken(ExchangeAdapter):
    name = "kraken"
    market = "spot"
    default_rest_base = "https://api.kraken.com"
    rest_weight_limit = 10
    rest_weight_window = 10.0
    supports_trades = False

    ASSET_PAIRS_PATH = "/0/public/AssetPairs"

    def instruments_requests(self) -> list[InstrumentsRequest]:
        return [InstrumentsRequest("spot", self.default_rest_base + self.ASSET_PAIRS_PATH, 1)]

    def parse_instruments(self, market: str, body: Any) -> InstrumentList:
        if not isinstance(body, dict):
            raise InstrumentsFormatError("AssetPairs body is not an object")
        errors = body.get("error")
        if errors:
            first = errors[0] if isinstance(errors, list) else errors
            raise InstrumentsFormatError(f"kraken error: {str(first)[:200]}")
        result = body.get("result")
        if not isinstance(result, dict):
            raise InstrumentsFormatError("AssetPairs body has no 'result' object")
        return collect_instruments(result.items(), lambda kv: _instrument(market, kv[0], kv[1]))


def _instrument(market: str, native: Any, row: Any) -> InstrumentInfo | None:
    if not is_safe_native_symbol(native) or not isinstance(row, dict):
        return None
    raw_status = row.get("status")
    if not isinstance(raw_status, str) or not _RAW_STATUS_RE.match(raw_status):
        return None
    wsname = row.get("wsname")
    if wsname is not None:
        if not isinstance(wsname, str) or wsname.count("/") != 1:
            return None
        base_code, quote_code = wsname.split("/")
    else:
        base_code, quote_code = row.get("base"), row.get("quote")
        if not isinstance(base_code, str) or not isinstance(quote_code, str):
            return None
    if not (base_code.isascii() and quote_code.isascii()):
        return None  # str.upper() would turn some non-ASCII letters into ASCII ones ("ß" -> "SS")
    pair = canonical(kraken_asset(base_code), kraken_asset(quote_code))
    if pair is None:
        return None
    base, quote = split_canonical(pair)
    return InstrumentInfo(
        native_symbol=native, symbol=pair, base=base, quote=quote, market=market,
        status=STATUS_MAP.get(raw_status, UNKNOWN_STATUS), raw_status=raw_status,
        url=TRADE_PAGE.format(base=base.lower(), quote=quote.lower()),
    )
