"""Gate.io spot: listing detection from ``GET /api/v4/spot/currency_pairs`` (listings only).

Operational rules (fixtures/rest/SOURCES.md §7, research/exchange-quirks.md A.9, A.17):
- Host ``https://api.gateio.ws/api/v4``; the body is a bare array of pairs (no envelope);
  errors come as an object ``{"label": "...", "message": "..."}``.
- ``id`` ``BTC_USDT``, ``base``/``quote``; ``trade_status`` untradable | buyable | sellable |
  tradable; ``buy_start``/``sell_start`` unix seconds (0 = none); ``delisting_time`` seconds
  (documented, often absent).
- Public endpoints: 200 requests / 10 s per endpoint per IP; no weight header.
"""

from __future__ import annotations

from typing import Any

from shared.events import DELISTED, HALTED, PRE_TRADING, TRADING, InstrumentInfo
from shared.symbols import canonical, is_safe_native_symbol, split_canonical

from .base import (
    ExchangeAdapter, InstrumentList, InstrumentsFormatError, InstrumentsRequest,
    SAFE_RAW_STATUS_RE, collect_instruments,
)


TRADE_PAGE = "https://www.gate.com/trade/{base}_{quote}"


def gate_status(raw_status: str, row: dict) -> str:
    """Normalized status of one pair.

    ``untradable`` covers both "not open yet" and "closed for good": a scheduled start
    (``buy_start``/``sell_start`` > 0) means a listing on its way (A.17: pre-listing = untradable
    with a start time), a ``delisting_time`` means gone, anything else is a halt. One-sided
    trading (``buyable``/``sellable``, e.g. a pair winding down) is not full trading: halted.
    """
    if raw_status == "tradable":
        return TRADING
    if raw_status == "untradable":
        if _positive(row.get("delisting_time")):
            return DELISTED
        if _positive(row.get("buy_start")) or _positive(row.get("sell_start")):
            return PRE_TRADING
        return HALTED
    # buyable / sellable, and any status Gate adds later: not trading until we know better
    return HALTED


def _positive(value: Any) -> bool:
    """A timestamp that is set: a positive int, or a string of digits that is not all zeros."""
    if type(value) is int:
        return value > 0
    if isinstance(value, str) and 0 < len(value) <= 20 and value.isascii() and value.isdigit():
        return int(value) > 0
    return False


class GateSpot(ExchangeAdapter):
    name = "gate"
    market = "spot"
    default_rest_base = "https://api.gateio.ws"
    rest_weight_limit = 200
    rest_weight_window = 10.0
    supports_trades = False

    CURRENCY_PAIRS_PATH = "/api/v4/spot/currency_pairs"

    def native_symbol(self, canonical_symbol: str) -> str:
        base, quote = split_canonical(canonical_symbol)
        return f"{base}_{quote}"

    def instruments_requests(self) -> list[InstrumentsRequest]:
        return [InstrumentsRequest("spot", self.default_rest_base + self.CURRENCY_PAIRS_PATH, 1)]

    def parse_instruments(self, market: str, body: Any) -> InstrumentList:
        if not isinstance(body, list):
            raise InstrumentsFormatError(f"currency_pairs body is not a list{_error_hint(body)}")
        return collect_instruments(body, lambda row: self._instrument(market, row))

    def _instrument(self, market: str, row: Any) -> InstrumentInfo | None:
        if not isinstance(row, dict):
            return None
        native, raw_status = row.get("id"), row.get("trade_status")
        if not is_safe_native_symbol(native) or not isinstance(raw_status, str):
            return None
        if not SAFE_RAW_STATUS_RE.fullmatch(raw_status):
            return None
        pair = canonical(row.get("base"), row.get("quote"))
        if pair is None:
            return None
        base, quote = split_canonical(pair)
        if native.upper() != f"{base}_{quote}":
            return None  # the name and its parts disagree: trust neither
        return InstrumentInfo(
            native_symbol=native, symbol=pair, base=base, quote=quote, market=market,
            status=gate_status(raw_status, row), raw_status=raw_status,
            url=TRADE_PAGE.format(base=base, quote=quote),
        )


def _error_hint(body: Any) -> str:
    """': <label>' for Gate's error object, so the log says why (bounded, never a secret)."""
    if isinstance(body, dict):
        label = body.get("label")
        if isinstance(label, str):
            return f" (error {label[:64]!r})"
    return ""
