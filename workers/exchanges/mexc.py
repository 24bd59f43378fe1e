"""MEXC spot: listing detection from ``GET /api/v3/exchangeInfo`` (listings only).

Operational rules (fixtures/rest/SOURCES.md §10, research/exchange-quirks.md A.12, A.16, A.17):
- Body ``{"timezone":..,"serverTime":..,"rateLimits":[],"exchangeFilters":[],"symbols":[...]}``;
  errors are ``{"code":..,"msg":..}``.
- ``symbol`` ``BTCUSDT``, ``baseAsset``/``quoteAsset``; ``status`` is a string code: "1" online,
  "2" pause, "3" offline (bodies of ~2022 said "ENABLED"). ``isSpotTradingAllowed`` is about
  API trading, not the listing state, and ``tradeSideType`` (1 all, 2 buy only, 3 sell only,
  4 closed) is not part of the status either: the status follows ``status`` alone.
- Each IP-limited endpoint has its own 500 weight / 10 s; exchangeInfo weighs 10. 429 with
  Retry-After, then 418 IP bans (2 min to 3 days, Retry-After); 403 is the WAF blocking the IP
  (no duration published): both stop all REST for this exchange.
"""

from __future__ import annotations

from typing import Any

from shared.events import DELISTED, HALTED, TRADING, InstrumentInfo
from shared.symbols import canonical, is_safe_native_symbol, split_canonical

from .base import (
    ExchangeAdapter, InstrumentList, InstrumentsFormatError, InstrumentsRequest,
    SAFE_RAW_STATUS_RE, collect_instruments, short_repr,
)

STATUS_MAP = {
    "1": TRADING,
    "2": HALTED,       # pause
    "3": DELISTED,     # offline
    "ENABLED": TRADING,   # older bodies
}
#: a status MEXC adds later is not "trading" until we know what it means
UNKNOWN_STATUS = HALTED


TRADE_PAGE = "https://www.mexc.com/exchange/{base}_{quote}"


class MexcSpot(ExchangeAdapter):
    name = "mexc"
    market = "spot"
    default_rest_base = "https://api.mexc.com"
    rest_weight_limit = 500
    rest_weight_window = 10.0
    # 418: documented IP ban (Retry-After given); 403: WAF block, no published length
    rest_ban_statuses = {418: 120.0, 403: 600.0}
    supports_trades = False

    EXCHANGE_INFO_PATH = "/api/v3/exchangeInfo"
    EXCHANGE_INFO_WEIGHT = 10

    def native_symbol(self, canonical_symbol: str) -> str:
        base, quote = split_canonical(canonical_symbol)
        return base + quote

    def instruments_requests(self) -> list[InstrumentsRequest]:
        return [InstrumentsRequest("spot", self.default_rest_base + self.EXCHANGE_INFO_PATH,
                                   self.EXCHANGE_INFO_WEIGHT)]

    def parse_instruments(self, market: str, body: Any) -> InstrumentList:
        if not isinstance(body, dict) or not isinstance(body.get("symbols"), list):
            hint = ""
            if isinstance(body, dict) and "code" in body:
                hint = f" (mexc error {short_repr(body.get('code'))}: {short_repr(body.get('msg'))})"
            raise InstrumentsFormatError("exchangeInfo body has no 'symbols' list" + hint)
        return collect_instruments(body["symbols"], lambda row: self._instrument(market, row))

    def _instrument(self, market: str, row: Any) -> InstrumentInfo | None:
        if not isinstance(row, dict):
            return None
        native, raw_status = row.get("symbol"), row.get("status")
        if type(raw_status) is int:
            raw_status = str(raw_status)  # documented as a string; tolerate the number
        if not is_safe_native_symbol(native) or not isinstance(raw_status, str):
            return None
        if not SAFE_RAW_STATUS_RE.fullmatch(raw_status):
            return None
        pair = canonical(row.get("baseAsset"), row.get("quoteAsset"))
        if pair is None:
            return None
        base, quote = split_canonical(pair)
        if native.upper() != base + quote:
            return None  # the name and its parts disagree: trust neither
        return InstrumentInfo(
            native_symbol=native, symbol=pair, base=base, quote=quote, market=market,
            status=STATUS_MAP.get(raw_status, UNKNOWN_STATUS), raw_status=raw_status,
            url=TRADE_PAGE.format(base=base, quote=quote),
        )

