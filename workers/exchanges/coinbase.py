"""Coinbase (Exchange API) listing detection: ``GET https://api.exchange.coinbase.com/products``.

Why this endpoint (fixtures/rest/SOURCES.md 2a): it is the one that lists trading pairs;
``/v2/currencies`` lists fiat currencies only, with no pairs and no status.

- Body: a bare JSON array of products; ``id`` (``BTC-USD``), ``base_currency``, ``quote_currency``.
  ``id`` is split on ``-`` rather than trusting ``base_currency`` (ccxt does the same: rows like
  ``BTCAUCTION-USD`` carry ``base_currency: BTC``, and "BTC listed" would be a false alert).
- Status: ``status`` online | offline | internal | delisted, plus at most one of the booleans
  ``trading_disabled``, ``cancel_only``, ``post_only``, ``limit_only``, and ``auction_mode``.
  A new Coinbase market opens in phases (auction / post-only: orders rest, nothing matches;
  then limit-only: orders match; then full trading), so auction and post-only are pre-trading
  and limit-only is trading. ``raw_status`` is ``status`` plus the restricting flag, e.g.
  ``online:post_only``.
- Rate limit: public endpoints 10 requests/s per IP (bursts to 15); 429 on excess. No weight header.
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
    "offline": HALTED,
    "internal": HALTED,  # not open to the public
    "delisted": DELISTED,
}
#: a status Coinbase adds later is not "trading" until we know what it means
UNKNOWN_STATUS = HALTED

#: restricting flags of an ``online`` product, strongest first, and what each means
FLAG_STATUS = (
    ("trading_disabled", HALTED),
    ("cancel_only", HALTED),
    ("auction_mode", PRE_TRADING),
    ("post_only", PRE_TRADING),
    ("limit_only", TRADING),
)

_RAW_STATUS_RE = re.compile(r"[a-z_]{1,32}\Z")

TRADE_PAGE = "https://www.coinbase.com/advanced-trade/spot/{native}"


class Coinbase(ExchangeAdapter):
    name = "coinbase"
    market = "spot"
    default_rest_base = "https://api.exchange.coinbase.com"
    rest_weight_limit = 10
    rest_weight_window = 1.0
    supports_trades = False

    PRODUCTS_PATH = "/products"

    def instruments_requests(self) -> list[InstrumentsRequest]:
        return [InstrumentsRequest("spot", self.default_rest_base + self.PRODUCTS_PATH, 1)]

    def parse_instruments(self, market: str, body: Any) -> InstrumentList:
        if not isinstance(body, list):
            # errors come as {"message": "..."}
            raise InstrumentsFormatError("products body is not a list")
        return collect_instruments(body, lambda row: _instrument(market, row))


def _instrument(market: str, row: Any) -> InstrumentInfo | None:
    if not isinstance(row, dict):
        return None
    native, raw = row.get("id"), row.get("status")
    if not is_safe_native_symbol(native) or not isinstance(raw, str) or not _RAW_STATUS_RE.match(raw):
        return None
    parts = native.split("-")
    if len(parts) != 2:
        return None
    pair = canonical(parts[0], parts[1])
    if pair is None:
        return None
    base, quote = split_canonical(pair)
    quote_currency = row.get("quote_currency")
    if quote_currency is not None and (not isinstance(quote_currency, str) or quote_currency.upper() != quote):
        return None  # the name and its parts disagree: trust neither
    status = STATUS_MAP.get(raw, UNKNOWN_STATUS)
    raw_status = raw
    for flag, flag_status in FLAG_STATUS:
        value = row.get(flag, False)
        if value is True:
            raw_status = f"{raw}:{flag}"
            if status == TRADING:
                status = flag_status
            break
        if value is not False and value is not None:
            return None  # a flag that is not a boolean: the row cannot be read
    return InstrumentInfo(
        native_symbol=native, symbol=pair, base=base, quote=quote, market=market,
        status=status, raw_status=raw_status, url=TRADE_PAGE.format(native=native),
    )
