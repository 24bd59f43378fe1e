"""Bitget spot (API v2): listing detection from ``GET /api/v2/spot/public/symbols`` (listings only).

Operational rules (fixtures/rest/SOURCES.md §8a, research/exchange-quirks.md A.10, A.17):
- v2 only: the v1 ``/api/spot/v1/public/products`` is offline since 2025-11-28.
- Envelope ``{"code":"00000","msg":"success","requestTime":ms,"data":[...]}``; ``code`` is a
  string and ``"00000"`` is success, anything else is an error envelope.
- ``symbol`` ``BTCUSDT``, ``baseCoin``/``quoteCoin``; ``status`` online | gray (grey-scale, not
  open yet) | halt | offline; ``offTime`` ms string or "".
- 20 requests/s per IP; no weight header.
- USDT-M contracts (``/api/v2/mix/market/contracts``) are not polled: there is no recorded body
  for them in fixtures/rest (SOURCES.md documents spot only).
"""

from __future__ import annotations

from typing import Any

from shared.events import DELISTED, HALTED, PRE_TRADING, TRADING, InstrumentInfo
from shared.symbols import canonical, is_safe_native_symbol, split_canonical

from .base import (
    ExchangeAdapter, InstrumentList, InstrumentsFormatError, InstrumentsRequest,
    SAFE_RAW_STATUS_RE, collect_instruments, short_repr,
)

STATUS_MAP = {
    "online": TRADING,
    "gray": PRE_TRADING,   # grey-scale: listed, trading not open yet
    "halt": HALTED,
    "offline": DELISTED,
}
#: a status Bitget adds later is not "trading" until we know what it means
UNKNOWN_STATUS = HALTED


TRADE_PAGE = "https://www.bitget.com/spot/{base}{quote}"


class BitgetSpot(ExchangeAdapter):
    name = "bitget"
    market = "spot"
    default_rest_base = "https://api.bitget.com"
    rest_weight_limit = 20
    rest_weight_window = 1.0
    supports_trades = False

    SYMBOLS_PATH = "/api/v2/spot/public/symbols"

    def native_symbol(self, canonical_symbol: str) -> str:
        base, quote = split_canonical(canonical_symbol)
        return base + quote

    def instruments_requests(self) -> list[InstrumentsRequest]:
        return [InstrumentsRequest("spot", self.default_rest_base + self.SYMBOLS_PATH, 1)]

    def parse_instruments(self, market: str, body: Any) -> InstrumentList:
        if not isinstance(body, dict):
            raise InstrumentsFormatError("symbols body is not an object")
        code = body.get("code")
        if code != "00000":
            raise InstrumentsFormatError(f"bitget error envelope (code {short_repr(code)}: {short_repr(body.get('msg'))})")
        rows = body.get("data")
        if not isinstance(rows, list):
            raise InstrumentsFormatError("symbols body has no 'data' list")
        return collect_instruments(rows, lambda row: self._instrument(market, row))

    def _instrument(self, market: str, row: Any) -> InstrumentInfo | None:
        if not isinstance(row, dict):
            return None
        native, raw_status = row.get("symbol"), row.get("status")
        if not is_safe_native_symbol(native) or not isinstance(raw_status, str):
            return None
        if not SAFE_RAW_STATUS_RE.fullmatch(raw_status):
            return None
        pair = canonical(row.get("baseCoin"), row.get("quoteCoin"))
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

