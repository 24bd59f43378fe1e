"""BingX spot: listing detection from ``GET /openApi/spot/v1/common/symbols`` (listings only).

Operational rules (fixtures/rest/SOURCES.md §11, research/exchange-quirks.md A.13, A.17):
- Envelope ``{"code":0,"msg":"","debugMsg":"","data":{"symbols":[...]}}``; ``code`` is an int,
  0 = success, anything else is an error envelope.
- ``symbol`` ``BTC-USDT`` (no separate base/quote fields: split on the hyphen); ``status`` an
  int: 0 offline, 1 online, 5 pre-open, 25 trading suspended. ``timeOnline`` (ms) is the
  opening time of a pre-open pair.
- Market API group: 500 requests / 10 s and 1000 / min per IP (the tighter long-run rate,
  1000 / min, is the budget).
"""

from __future__ import annotations

from typing import Any

from shared.events import DELISTED, HALTED, PRE_TRADING, TRADING, InstrumentInfo
from shared.symbols import canonical, is_safe_native_symbol, split_canonical

from .base import (
    ExchangeAdapter, InstrumentList, InstrumentsFormatError, InstrumentsRequest,
    collect_instruments, short_repr,
)

STATUS_MAP = {
    0: DELISTED,      # offline
    1: TRADING,       # online
    5: PRE_TRADING,   # pre-open
    25: HALTED,       # trading suspended
}
#: a status BingX adds later is not "trading" until we know what it means
UNKNOWN_STATUS = HALTED
#: bound on the status number (keeps raw_status short)
_MAX_STATUS = 1_000_000

TRADE_PAGE = "https://bingx.com/en/spot/{base}{quote}"


class BingxSpot(ExchangeAdapter):
    name = "bingx"
    market = "spot"
    default_rest_base = "https://open-api.bingx.com"
    rest_weight_limit = 1000
    rest_weight_window = 60.0
    supports_trades = False

    SYMBOLS_PATH = "/openApi/spot/v1/common/symbols"

    def native_symbol(self, canonical_symbol: str) -> str:
        return canonical_symbol  # BingX spells pairs BASE-QUOTE too

    def instruments_requests(self) -> list[InstrumentsRequest]:
        return [InstrumentsRequest("spot", self.default_rest_base + self.SYMBOLS_PATH, 1)]

    def parse_instruments(self, market: str, body: Any) -> InstrumentList:
        if not isinstance(body, dict):
            raise InstrumentsFormatError("symbols body is not an object")
        code = body.get("code")
        if type(code) is not int or code != 0:
            raise InstrumentsFormatError(f"bingx error envelope (code {short_repr(code)}: {short_repr(body.get('msg'))})")
        data = body.get("data")
        rows = data.get("symbols") if isinstance(data, dict) else None
        if not isinstance(rows, list):
            raise InstrumentsFormatError("symbols body has no 'data.symbols' list")
        return collect_instruments(rows, lambda row: self._instrument(market, row))

    def _instrument(self, market: str, row: Any) -> InstrumentInfo | None:
        if not isinstance(row, dict):
            return None
        native, raw_status = row.get("symbol"), row.get("status")
        # bool is an int in Python: true/false is not a status code
        if not is_safe_native_symbol(native) or type(raw_status) is not int:
            return None
        if not 0 <= raw_status <= _MAX_STATUS:
            return None
        parts = native.split("-")
        if len(parts) != 2:
            return None
        pair = canonical(parts[0], parts[1])
        if pair is None:
            return None
        base, quote = split_canonical(pair)
        return InstrumentInfo(
            native_symbol=native, symbol=pair, base=base, quote=quote, market=market,
            status=STATUS_MAP.get(raw_status, UNKNOWN_STATUS), raw_status=str(raw_status),
            url=TRADE_PAGE.format(base=base, quote=quote),
        )

