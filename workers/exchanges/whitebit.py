"""WhiteBIT spot and perpetuals: listing detection from ``GET /api/v4/public/markets`` (listings only).

Operational rules (fixtures/rest/SOURCES.md §13, research/exchange-quirks.md A.15, A.17):
- Bare array of markets (no envelope); an error is an object (``{"success":false,...}`` or
  ``{"code":..,"message":..}``).
- ``name`` ``BTC_USDT`` (futures ``BTC_PERP``), ``stock``/``money`` base/quote (futures rows say
  ``money:"USDT"``; ccxt also maps a ``"PERP"`` money code to USDT); ``type`` spot | futures
  (ccxt also handles ``tradfiFutures``). One body holds both markets, so the same URL is
  requested once per market (spot, perp) and each request keeps its own market's rows.
- No status enum: ``tradesEnabled`` (bool) is the state, kept as raw_status "true"/"false".
  ``delistedAt`` (undocumented, null or a time) with trading disabled = delisted.
- 2000 requests / 10 s; the response is cached for 1 s (polling faster gains nothing).
"""

from __future__ import annotations

from typing import Any

from shared.events import DELISTED, HALTED, TRADING, InstrumentInfo
from shared.symbols import canonical, is_safe_native_symbol, split_canonical

from .base import (
    ExchangeAdapter, InstrumentList, InstrumentsFormatError, InstrumentsRequest, SKIP,
    collect_instruments,
)

#: market -> the ``type`` values of its rows
MARKET_TYPES: dict[str, frozenset[str]] = {
    "spot": frozenset({"spot"}),
    "perp": frozenset({"futures", "tradfiFutures"}),
}

SPOT_PAGE = "https://whitebit.com/trade/{base}-{quote}"
PERP_PAGE = "https://whitebit.com/futures/{base}_{quote}"


def whitebit_status(trades_enabled: bool, row: dict) -> str:
    """Trading when ``tradesEnabled``; otherwise delisted when ``delistedAt`` is set, else
    halted (a market listed but not open yet looks the same as a suspended one)."""
    if trades_enabled:
        return TRADING
    if row.get("delistedAt") not in (None, "", 0):
        return DELISTED
    return HALTED


class WhitebitAdapter(ExchangeAdapter):
    name = "whitebit"
    market = "spot"
    default_rest_base = "https://whitebit.com"
    rest_weight_limit = 2000
    rest_weight_window = 10.0
    supports_trades = False

    MARKETS_PATH = "/api/v4/public/markets"

    def native_symbol(self, canonical_symbol: str) -> str:
        base, quote = split_canonical(canonical_symbol)
        return f"{base}_{quote}"

    def instruments_requests(self) -> list[InstrumentsRequest]:
        url = self.default_rest_base + self.MARKETS_PATH
        return [InstrumentsRequest("spot", url, 1), InstrumentsRequest("perp", url, 1)]

    def parse_instruments(self, market: str, body: Any) -> InstrumentList:
        types = MARKET_TYPES.get(market)
        if types is None:
            raise InstrumentsFormatError(f"whitebit has no {market[:16]!r} instruments")
        if not isinstance(body, list):
            raise InstrumentsFormatError("markets body is not a list")
        def make(row: Any) -> Any:
            if not isinstance(row, dict):
                return None
            if row.get("type") not in types:
                return SKIP  # another market's row (or a market type not polled)
            return self._instrument(market, row)

        return collect_instruments(body, make)

    def _instrument(self, market: str, row: dict) -> InstrumentInfo | None:
        native, enabled = row.get("name"), row.get("tradesEnabled")
        if not is_safe_native_symbol(native) or type(enabled) is not bool:
            return None
        money = row.get("money")
        if market == "perp" and money == "PERP":
            money = "USDT"  # older futures rows name the quote "PERP"; they are USDT-margined
        pair = canonical(row.get("stock"), money)
        if pair is None:
            return None
        base, quote = split_canonical(pair)
        if market == "spot":
            expected, url = f"{base}_{quote}", SPOT_PAGE.format(base=base, quote=quote)
        else:
            expected, url = f"{base}_PERP", PERP_PAGE.format(base=base, quote=quote)
        if native.upper() != expected:
            return None  # the name and its parts disagree: trust neither
        return InstrumentInfo(
            native_symbol=native, symbol=pair, base=base, quote=quote, market=market,
            status=whitebit_status(enabled, row), raw_status="true" if enabled else "false", url=url,
        )
