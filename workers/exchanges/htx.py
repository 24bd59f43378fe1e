"""HTX (Huobi) spot: listing detection from ``GET /v2/settings/common/symbols`` (listings only).

Operational rules (fixtures/rest/SOURCES.md §9, research/exchange-quirks.md A.11, A.17):
- The current list is v2 ``/v2/settings/common/symbols``: HTX labels ``/v1/common/symbols``
  "V1, deprecated". Envelope ``{"status":"ok","data":[...],"ts":"<ms>","full":1}``; errors are
  ``{"status":"error","err-code":...,"err-msg":...}``.
- v2 short keys: ``sc`` symbol (lower case, ``btcusdt``), ``bc``/``qc`` base/quote, ``state``
  unknown | not-online | pre-online | online | suspend | offline | transfer-board | fuse,
  ``te`` trade enabled, ``toa`` trade-open-at (ms).
- Asked with ``ts`` the endpoint returns only the rows changed since then (``full`` 0): never
  asked that way here, and a body that says ``full: 0`` is refused (a partial list must never
  pass for the full one).
- Rows of the deprecated v1 shape (``symbol``, ``base-currency``, ``quote-currency``, ``state``)
  are read too, so a v1 body served in its place still parses.
- No published per-IP limit for this endpoint in the sources read (about 10 requests/s per IP
  for public calls [unverified]); responses carry ``X-HB-RateLimit-Requests-Remain`` (a
  remaining count, not a used weight, so it is not read).
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
    "pre-online": PRE_TRADING,
    "not-online": PRE_TRADING,    # listed, never opened yet
    "suspend": HALTED,
    "fuse": HALTED,               # circuit breaker
    "transfer-board": HALTED,     # moving between boards
    "offline": DELISTED,
    "unknown": HALTED,
}
#: a state HTX adds later is not "trading" until we know what it means
UNKNOWN_STATUS = HALTED


TRADE_PAGE = "https://www.htx.com/trade/{base}_{quote}"


class HtxSpot(ExchangeAdapter):
    name = "htx"
    market = "spot"
    default_rest_base = "https://api.huobi.pro"
    rest_weight_limit = 10
    rest_weight_window = 1.0
    supports_trades = False

    SYMBOLS_PATH = "/v2/settings/common/symbols"

    def native_symbol(self, canonical_symbol: str) -> str:
        base, quote = split_canonical(canonical_symbol)
        return (base + quote).lower()

    def instruments_requests(self) -> list[InstrumentsRequest]:
        return [InstrumentsRequest("spot", self.default_rest_base + self.SYMBOLS_PATH, 1)]

    def parse_instruments(self, market: str, body: Any) -> InstrumentList:
        if not isinstance(body, dict):
            raise InstrumentsFormatError("symbols body is not an object")
        if body.get("status") != "ok":
            raise InstrumentsFormatError(
                f"htx error envelope (status {short_repr(body.get('status'))}, "
                f"err-code {short_repr(body.get('err-code'))}: {short_repr(body.get('err-msg'))})")
        if "full" in body and body["full"] != 1:
            raise InstrumentsFormatError("htx symbols body is an incremental update (full != 1)")
        rows = body.get("data")
        if not isinstance(rows, list):
            raise InstrumentsFormatError("symbols body has no 'data' list")
        return collect_instruments(rows, lambda row: self._instrument(market, row))

    def _instrument(self, market: str, row: Any) -> InstrumentInfo | None:
        if not isinstance(row, dict):
            return None
        if "sc" in row:       # v2
            native, base_code, quote_code = row.get("sc"), row.get("bc"), row.get("qc")
        else:                 # deprecated v1 shape
            native, base_code, quote_code = row.get("symbol"), row.get("base-currency"), row.get("quote-currency")
        raw_status = row.get("state")
        if not is_safe_native_symbol(native) or not isinstance(raw_status, str):
            return None
        if not SAFE_RAW_STATUS_RE.fullmatch(raw_status):
            return None
        pair = canonical(base_code, quote_code)
        if pair is None:
            return None
        base, quote = split_canonical(pair)
        if native.upper() != base + quote:
            return None  # the name and its parts disagree: trust neither
        return InstrumentInfo(
            native_symbol=native, symbol=pair, base=base, quote=quote, market=market,
            status=STATUS_MAP.get(raw_status, UNKNOWN_STATUS), raw_status=raw_status,
            url=TRADE_PAGE.format(base=base.lower(), quote=quote.lower()),
        )

